"""knnblend against PyPI faiss-cpu on faiss-written indexes of RVC's shapes."""

import math
import os

import numpy as np
import pytest

import knnblend

faiss = pytest.importorskip("faiss") if os.environ.get("CI") not in ("true", "1") else __import__("faiss")

FLT_MAX = np.float32(3.4028235e38)


def rvc_like(n, d, seed):
    """Clustered vectors like ContentVec frames (RVC's feature banks are far from uniform)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(8, n // 50), d)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return x.astype(np.float32)


def build(tmp_path, d, n, metric, name, sparse=False, seed=0):
    """An RVC index written by faiss: IVF{n_ivf},Flat with RVC's list rule, or (sparse) most
    lists left empty, which faiss writes as `sprs` inverted lists."""
    x = rvc_like(n, d, seed)
    n_ivf = min(int(16 * math.sqrt(n)), n // 39)
    mt = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    index = faiss.index_factory(d, f"IVF{n_ivf},Flat", mt)
    index.train(x)
    if sparse:
        # Keep the vectors of a few lists only: more than half of the lists are empty.
        _, assign = index.quantizer.search(x, 1)
        keep = np.isin(assign[:, 0], np.arange(n_ivf // 4))
        x = x[keep]
    index.add(x)
    path = str(tmp_path / f"{name}.index")
    faiss.write_index(index, path)
    with open(path, "rb") as f:
        body = f.read()
    assert (b"sprs" in body) == sparse
    return path, x


SHAPES = [
    ("v2", 768, 4000, "l2"),
    ("v1", 256, 4000, "l2"),
    ("v2ip", 768, 3000, "ip"),
    ("v1ip", 256, 3000, "ip"),
]


@pytest.mark.parametrize("name,d,n,metric", SHAPES)
@pytest.mark.parametrize("nprobe", [1, 4])
def test_search_equals_faiss(tmp_path, name, d, n, metric, nprobe):
    path, x = build(tmp_path, d, n, metric, name)
    fx = faiss.read_index(path)
    kx = knnblend.read_index(path)
    assert (kx.d, kx.ntotal, kx.nlist, kx.metric_type) == (fx.d, fx.ntotal, fx.nlist, fx.metric_type)
    fx.nprobe = nprobe
    kx.nprobe = nprobe
    q = rvc_like(200, d, seed=99)
    fd, fi = fx.search(q, 8)
    kd, ki = kx.search(q, 8)
    assert kd.dtype == np.float32 and ki.dtype == np.int64
    assert kd.shape == fd.shape and ki.shape == fi.shape
    assert kd.flags.c_contiguous and ki.flags.c_contiguous
    same = (ki == fi).all(axis=1)
    # Near-ties aside: a differing row must differ only where distances tie to float rounding.
    for r in np.nonzero(~same)[0]:
        np.testing.assert_allclose(kd[r], fd[r], rtol=1e-5, atol=1e-4)
    assert same.mean() >= 0.98, f"only {same.mean():.1%} of rows have faiss's ids"
    np.testing.assert_allclose(kd, fd, rtol=1e-5, atol=1e-3)


def test_sparse_lists_read_and_search(tmp_path):
    """faiss writes mostly-empty lists as `sprs`; knnblend reads them with the same vectors."""
    path, x = build(tmp_path, 768, 4000, "l2", "sprs", sparse=True)
    fx, kx = faiss.read_index(path), knnblend.read_index(path)
    assert kx.ntotal == fx.ntotal == len(x)
    np.testing.assert_array_equal(kx.reconstruct_n(0, kx.ntotal), fx.reconstruct_n(0, fx.ntotal))
    # Queries from the stored frames land in non-empty lists: the results are faiss's.
    q = x[:100] + np.float32(0.01)
    fd, fi = fx.search(q, 8)
    kd, ki = kx.search(q, 8)
    assert (ki == fi).all(axis=1).mean() >= 0.98
    np.testing.assert_allclose(kd, fd, rtol=1e-5, atol=1e-3)


def test_an_empty_nearest_list_is_passed_over(tmp_path):
    """Where faiss differs on purpose: when a query's nearest centroid has an empty list,
    faiss probes it anyway and returns no neighbours (ids -1, which makes RVC skip the blend
    of that frame); knnblend probes the nearest non-empty lists, so the frame is blended.
    The oracle is an exact scan (float64) of the nearest non-empty list."""
    path, x = build(tmp_path, 256, 4000, "l2", "sprs_empty", sparse=True)
    fx, kx = faiss.read_index(path), knnblend.read_index(path)
    ivf = faiss.extract_index_ivf(fx)
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist).astype(np.float64)
    sizes = np.array([ivf.invlists.list_size(l) for l in range(ivf.nlist)])
    _, assign = ivf.quantizer.search(x, 1)
    # Queries from the empty lists' centroids: their nearest list is empty.
    empty = np.flatnonzero(sizes == 0)
    assert len(empty) > ivf.nlist // 2
    q = (centroids[empty[:20]] + 1e-3).astype(np.float32)
    fd, fi = fx.search(q, 8)
    assert (fi == -1).all(), "faiss probes the empty list and finds nothing"
    kd, ki = kx.search(q, 8)
    assert (ki[:, 0] >= 0).all(), "knnblend probes the nearest non-empty list"
    d2 = ((q[:, None, :].astype(np.float64) - centroids[None]) ** 2).sum(-1)
    d2[:, sizes == 0] = np.inf
    for row, lst in enumerate(d2.argmin(axis=1)):
        members = np.flatnonzero(assign[:, 0] == lst)
        dist = ((x[members].astype(np.float64) - q[row]) ** 2).sum(-1)
        order = np.argsort(dist, kind="stable")[:8]
        found = len(order)
        assert set(ki[row, :found]) == set(members[order]), row
        np.testing.assert_allclose(kd[row, :found], dist[order], rtol=1e-4)
        # A list shorter than k ends with faiss's sentinels.
        assert (ki[row, found:] == -1).all() and (kd[row, found:] == FLT_MAX).all()


def test_short_lists_give_faiss_sentinels(tmp_path):
    x = rvc_like(400, 256, seed=2)
    index = faiss.index_factory(256, "IVF40,Flat")  # about 10 vectors per list: fewer than k
    index.train(x)
    index.add(x)
    path = str(tmp_path / "short.index")
    faiss.write_index(index, path)
    kx, fx = knnblend.read_index(path), faiss.read_index(path)
    k = knnblend.MAX_K
    q = rvc_like(20, 256, seed=5)
    kd, ki = kx.search(q, k)
    fd, fi = fx.search(q, k)
    assert (ki == -1).any(), "a list this short must leave slots empty"
    np.testing.assert_array_equal(ki == -1, fi == -1)
    assert (kd[ki == -1] == FLT_MAX).all()
    assert (fd[fi == -1] == FLT_MAX).all()


def test_reconstruct_equals_faiss(tmp_path):
    path, _ = build(tmp_path, 256, 3000, "l2", "rec")
    kx, fx = knnblend.read_index(path), faiss.read_index(path)
    np.testing.assert_array_equal(kx.reconstruct_n(0, kx.ntotal), fx.reconstruct_n(0, fx.ntotal))
    fx.make_direct_map()
    for i in (0, 17, kx.ntotal - 1):
        np.testing.assert_array_equal(kx.reconstruct(i), fx.reconstruct(i))


@pytest.mark.parametrize("factory", ["IVF16,PQ32x4fs", "IVF16,PQ32x4fsr", "IVF16,PQ32x4fs,RFlat"])
def test_fastscan_reconstruct_equals_faiss(tmp_path, factory):
    """reconstruct of an IVF-PQ FastScan index: the exact vectors with RFlat (faiss's
    `reconstruct_n`), otherwise faiss's own decoding of the codes it stored. faiss-cpu 1.15.1
    crashes the interpreter in `reconstruct` of an unrefined FastScan index, so that oracle is
    rebuilt from faiss's parts: the list each vector was added to, `pq.compute_codes` of the
    residual, `pq.decode` plus the centroid."""
    x = rvc_like(2000, 256, 3)
    index = faiss.index_factory(256, factory)
    index.train(x)
    index.add(x)
    path = str(tmp_path / "fs.index")
    faiss.write_index(index, path)
    kx, fx = knnblend.read_index(path), faiss.read_index(path)
    mine = kx.reconstruct_n(0, kx.ntotal)
    if "RFlat" in factory:
        np.testing.assert_array_equal(mine, fx.reconstruct_n(0, fx.ntotal))
        np.testing.assert_array_equal(mine, x)
    else:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(fx))
        _, assign = ivf.quantizer.search(x, 1)
        centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)[assign[:, 0]]
        residual = x - centroids if ivf.by_residual else x
        decoded = ivf.pq.decode(ivf.pq.compute_codes(residual))
        np.testing.assert_array_equal(mine, decoded + centroids if ivf.by_residual else decoded)
        assert not np.array_equal(mine, x), "an unrefined index holds codes, not the vectors"
    for i in (0, 999, kx.ntotal - 1):
        np.testing.assert_array_equal(kx.reconstruct(i), mine[i])


def rvc_realtime_step(index, big_npy, feats, index_rate):
    """RVC's realtime retrieval step, as RVC writes it (infer/lib/rtrvc.py)."""
    npy = feats.astype("float32")
    score, ix = index.search(npy, k=8)
    if (ix >= 0).all():
        weight = np.square(1 / score)
        weight /= weight.sum(axis=1, keepdims=True)
        npy = np.sum(big_npy[ix] * np.expand_dims(weight, axis=2), axis=1)
        return npy * index_rate + (1 - index_rate) * feats
    return feats


@pytest.mark.parametrize("name,d,n,metric", SHAPES[:2])
def test_rvc_realtime_step_with_knnblend_swapped_in(tmp_path, name, d, n, metric):
    path, _ = build(tmp_path, d, n, metric, name)
    feats = rvc_like(32, d, seed=7)  # one block of frames
    fx = faiss.read_index(path)
    with_faiss = rvc_realtime_step(fx, fx.reconstruct_n(0, fx.ntotal), feats, 0.75)
    kx = knnblend.read_index(path)
    with_knnblend = rvc_realtime_step(kx, kx.reconstruct_n(0, kx.ntotal), feats, 0.75)
    np.testing.assert_allclose(with_knnblend, with_faiss, rtol=1e-4, atol=1e-4)
    assert not np.allclose(with_faiss, feats), "the step must change the features"
    # knnblend's own blend is the same formula, done in the library.
    np.testing.assert_allclose(kx.blend(feats, k=8, ratio=0.75), with_faiss, rtol=1e-4, atol=1e-4)


def test_blend_never_nans_on_exact_matches(tmp_path):
    path, _ = build(tmp_path, 256, 3000, "l2", "exact")
    kx = knnblend.read_index(path)
    stored = kx.reconstruct_n(0, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        rvc = rvc_realtime_step(kx, kx.reconstruct_n(0, kx.ntotal), stored, 0.75)
    assert np.isnan(rvc).any(), "RVC's numpy formula NaNs on exact matches (the control)"
    out = kx.blend(stored, ratio=0.75)
    assert np.isfinite(out).all()


def test_out_arrays_are_written_in_place(tmp_path):
    path, _ = build(tmp_path, 256, 3000, "l2", "inplace")
    kx = knnblend.read_index(path)
    q = rvc_like(16, 256, seed=3)
    D = np.empty((16, 8), np.float32)
    I = np.empty((16, 8), np.int64)
    d2, i2 = kx.search(q, 8, D=D, I=I)
    assert d2 is D and i2 is I
    out = np.empty_like(q)
    assert kx.blend(q, out=out) is out
    np.testing.assert_array_equal(out, kx.blend(q))


def test_bad_inputs_raise(tmp_path):
    path, _ = build(tmp_path, 256, 3000, "l2", "bad")
    kx = knnblend.read_index(path)
    q = rvc_like(4, 256, seed=1)
    with pytest.raises(ValueError, match="d = 256"):
        kx.search(rvc_like(4, 768, seed=1), 8)
    with pytest.raises(TypeError, match="dtype"):
        kx.search(q.astype(np.complex64), 8)
    with pytest.raises(ValueError, match="outside"):
        kx.search(q, 0)
    with pytest.raises(ValueError, match="outside"):
        kx.search(q, knnblend.MAX_K + 1)
    with pytest.raises(ValueError, match="2-d"):
        kx.search(q[0], 8)
    with pytest.raises(ValueError, match="C-contiguous"):
        kx.search(q, 8, D=np.empty((8, 4), np.float32).T, I=np.empty((4, 8), np.int64))
    with pytest.raises(ValueError, match="nprobe"):
        kx.nprobe = 0
    # faiss converts float64 and non-contiguous queries; so does knnblend.
    np.testing.assert_array_equal(kx.search(q.astype(np.float64), 8)[1], kx.search(q, 8)[1])
    qt = np.asfortranarray(q)
    np.testing.assert_array_equal(kx.search(qt, 8)[1], kx.search(q, 8)[1])
    # A NaN row blends to itself and never crashes the search.
    qn = q.copy()
    qn[1, 3] = np.nan
    out = kx.blend(qn)
    assert np.isnan(out[1, 3]) and np.isfinite(np.delete(out, 1, axis=0)).all()
    kx.search(qn, 8)
    with pytest.raises(OSError, match="no-such"):
        knnblend.read_index(tmp_path / "no-such.index")
    garbage = tmp_path / "garbage.index"
    garbage.write_bytes(b"IwFl" + b"\x00" * 64)
    with pytest.raises(ValueError):
        knnblend.read_index(garbage)


def test_the_one_step_search_is_the_checked_path(tmp_path):
    """The common call (C-contiguous float32, no outputs given) takes one native step; it
    returns what the checked path writes, and declines everything else to that path."""
    path, _ = build(tmp_path, 256, 3000, "l2", "one-step")
    kx = knnblend.read_index(path)
    q = rvc_like(40, 256, seed=3)
    D, I = kx.search(q, 8)
    D2, I2 = np.empty((40, 8), np.float32), np.empty((40, 8), np.int64)
    kx.search(q, 8, D=D2, I=I2)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (40, 8)
    assert D.flags.c_contiguous and I.flags.c_contiguous and D.flags.writeable
    np.testing.assert_array_equal(D, D2)
    np.testing.assert_array_equal(I, I2)
    for declined in (q.astype(np.float64), q[::2], np.asfortranarray(q), q[:, :128].copy(),
                     q[0], [list(q[0])]):
        assert kx._ix.search_new(declined, 8) is None
    assert kx._ix.search_new(q, 0) is None and kx._ix.search_new(q, knnblend.MAX_K + 1) is None
    np.testing.assert_array_equal(kx.search(q[::2], 8)[1], I[::2])
    with pytest.raises(ValueError, match="outside"):
        kx.search(q, -1)
    D0, I0 = kx.search(q[:0], 8)
    assert D0.shape == I0.shape == (0, 8)


def test_trained_only_index_is_refused(tmp_path):
    x = rvc_like(2000, 256, seed=0)
    index = faiss.index_factory(256, "IVF32,Flat")
    index.train(x)
    path = str(tmp_path / "trained.index")
    faiss.write_index(index, path)
    with pytest.raises(ValueError, match="no vectors"):
        knnblend.read_index(path)


def test_repr_names_the_index(tmp_path):
    path, _ = build(tmp_path, 256, 3000, "l2", "repr")
    r = repr(knnblend.read_index(path))
    assert "IVF-Flat" in r and "d=256" in r


def test_search_spins_no_threads(tmp_path):
    path, _ = build(tmp_path, 768, 4000, "l2", "threads")
    kx = knnblend.read_index(path)
    q = rvc_like(64, 768, seed=4)
    before = len(os.listdir("/proc/self/task"))
    kx.search(q, 8)
    kx.blend(q)
    assert len(os.listdir("/proc/self/task")) == before


def test_search_and_blend_release_the_gil(tmp_path):
    """While one thread searches, another runs Python code throughout the call. Were the GIL
    held, the other thread could run only before the call starts or after it returns, never
    across most of it."""
    import threading
    import time

    path, _ = build(tmp_path, 768, 4000, "l2", "gil")
    kx = knnblend.read_index(path)
    q = np.repeat(rvc_like(100, 768, seed=4), 60, axis=0)  # long calls: about 0.1-1 s each

    for call in (lambda: kx.search(q, 8), lambda: kx.blend(q)):
        window = []
        started = threading.Event()

        def work():
            started.set()
            t0 = time.perf_counter()
            call()
            window.extend([t0, time.perf_counter()])

        t = threading.Thread(target=work)
        ticks = []
        t.start()
        started.wait()
        while t.is_alive():
            ticks.append(time.perf_counter())
        t.join()
        t0, t1 = window
        inside = [x for x in ticks if t0 < x < t1]
        assert t1 - t0 > 0.02, "the call was too short to tell"
        assert inside and max(inside) - min(inside) > 0.5 * (t1 - t0), (
            f"the other thread ran for {max(inside, default=t0) - min(inside, default=t0):.3f} s "
            f"of a {t1 - t0:.3f} s call: the GIL was held"
        )
