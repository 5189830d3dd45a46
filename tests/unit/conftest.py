"""Shared set-up of the unit tests."""
# pytester's in-process runs drop every module first imported inside them, and torch,
# torchvision and onnxruntime crash when their C extensions are imported a second time:
# importing them here, before any run, keeps one copy shared by all runs.
import onnxruntime  # noqa: F401
import torch  # noqa: F401
import torchvision  # noqa: F401
import pytest  # noqa: E402

from pytest_blendmask.precision import c_kernels  # noqa: E402


@pytest.fixture
def fresh_kernels(tmp_path, monkeypatch):
    """The C kernels looked up again, built into an empty cache root; the process's own are restored after."""
    monkeypatch.setenv("BM_CACHE_DIR", str(tmp_path))
    c_kernels.load.cache_clear()
    yield tmp_path
    c_kernels.load.cache_clear()
