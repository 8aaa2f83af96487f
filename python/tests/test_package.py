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
