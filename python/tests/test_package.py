"""The package as pip installs it: the wheel `cargo xtask python` builds with maturin."""

import importlib.metadata
import os
import pathlib
import sys
import sysconfig

import pytest

import knnblend


@pytest.mark.skipif(
    os.environ.get("KNNBLEND_EXPECT_WHEEL") != "1",
    reason="run by `cargo xtask python`, which installs the wheel first",
)
def test_the_installed_wheel_is_what_is_imported():
    here = pathlib.Path(knnblend.__file__).resolve().parent
    site = pathlib.Path(sysconfig.get_paths()["purelib"]).resolve()
    assert here.parent == site, f"knnblend imported from {here}, not from {site}"
    assert importlib.metadata.version("knnblend") == "0.1.0"
    files = {f.name for f in here.iterdir()}
    # maturin names an abi3 module `*.abi3.so`; the stubs and their marker ship with it.
    assert "_knnblend.abi3.so" in files, files
    assert {"__init__.pyi", "py.typed", "bench.py"} <= files, files
    assert sys.prefix != sys.base_prefix, "the tests run in target/venv"


def test_public_names_exist():
    for name in knnblend.__all__:
        assert hasattr(knnblend, name), name
    assert knnblend.MAX_K >= 8
    assert knnblend.METRIC_L2 == 1 and knnblend.METRIC_INNER_PRODUCT == 0


def test_the_bench_runs_every_row(tmp_path, capsys):
    """`python -m knnblend.bench` at a small size: the peer line, the alternating and the cold
    rows and the CPU line, each with a finite ratio."""
    if os.environ.get("CI") not in ("true", "1"):
        pytest.importorskip("faiss")
    from knnblend import bench

    bench.main(["--shapes", "v1-30k", "--queries", "64", "--audio-seconds", "0.2",
                "--sweep-mib", "1", "--cache", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.startswith("peer: faiss-cpu "), out
    rows = [line for line in out.splitlines() if line.startswith("v1-30k")]
    labels = [line.split("faiss")[0].split(None, 1)[1].strip() for line in rows]
    assert labels == ["batch  1", "batch  1 machine", "batch 16", "batch 32", "batch  1 cold", "batch 16 cold",
                      "CPU per second of audio (paced, 16 frames per 160 ms):"], labels
    for line in rows:
        ratio = float(line.split(" = ")[1].split("x")[0])
        assert 0 < ratio < float("inf"), line
