"""knnblend.Runtime: background loads, crossfaded swaps, failures that keep the old index."""

import numpy as np
import pytest

import knnblend
from test_faiss_parity import build, faiss, rvc_like


def test_runtime_loads_blends_swaps_and_keeps_serving_on_failure(tmp_path):
    a, _ = build(tmp_path, 256, 3000, "l2", "a", seed=1)
    b, _ = build(tmp_path, 256, 3000, "l2", "b", seed=2)
    rt = knnblend.Runtime(slots=2, max_dim=768, crossfade_seconds=0.0)
    frames = rvc_like(16, 256, seed=9)
    # Nothing serves yet: frames are copied.
    np.testing.assert_array_equal(rt.blend(frames), frames)
    info = rt.load(0, a).wait(timeout=60)
    assert info["d"] == 256 and info["ntotal"] == 3000
    assert rt.status(0)["state"] == "ready"
    # The runtime's blend equals the index's own blend of the same file.
    got = rt.blend(frames, slot=0)
    np.testing.assert_allclose(got, knnblend.read_index(a).blend(frames), rtol=1e-6, atol=1e-6)
    # A bad file fails with the library's message and slot 0 keeps serving index a.
    bad = tmp_path / "bad.index"
    bad.write_bytes(b"not an index")
    with pytest.raises(ValueError):
        rt.load(0, bad).wait(timeout=60)
    st = rt.status(0)
    assert st["state"] == "failed" and st["error"] and str(st["index"]["path"]).endswith("a.index")
    np.testing.assert_allclose(rt.blend(frames, slot=0), got, rtol=1e-6, atol=1e-6)
    # A new index in the slot serves after the swap (crossfade 0: at the next block).
    rt.load(0, b).wait(timeout=60)
    rt.blend(frames, slot=0)
    np.testing.assert_allclose(rt.blend(frames, slot=0), knnblend.read_index(b).blend(frames), rtol=1e-6, atol=1e-6)
    t = rt.telemetry()
    assert t["queries"] >= 16 * 4 and t["serving"] is not None
    rt.unload(0)
    with pytest.raises(ValueError):
        rt.blend(frames, slot=5)
    with pytest.raises(ValueError):
        knnblend.Runtime(slots=0)


def test_swap_crossfades(tmp_path):
    a, _ = build(tmp_path, 256, 3000, "l2", "xa", seed=1)
    b, _ = build(tmp_path, 256, 3000, "l2", "xb", seed=2)
    rt = knnblend.Runtime(slots=2, max_dim=256, crossfade_seconds=0.05)
    frames = rvc_like(16, 256, seed=9)
    rt.load(0, a).wait(timeout=60)
    rt.load(1, b).wait(timeout=60)
    ya = knnblend.read_index(a).blend(frames)
    yb = knnblend.read_index(b).blend(frames)
    for _ in range(4):
        rt.blend(frames, slot=0)
    first = rt.blend(frames, slot=1)
    # Mid-fade the output lies between index a's and index b's, at neither end.
    assert not np.allclose(first, ya, atol=1e-5) and not np.allclose(first, yb, atol=1e-5)
    for _ in range(400):
        last = rt.blend(frames, slot=1)
    np.testing.assert_allclose(last, yb, rtol=1e-5, atol=1e-5)
