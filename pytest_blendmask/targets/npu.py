"""The torch_npu probe and the environment variables that change how an NPU runs."""
from __future__ import annotations

import functools
import importlib
import os

# Environment variables that change how torch_npu runs (anchors.md section 6): the task
# queue level changes overlap and peak memory, the allocator config changes fragmentation,
# the visible devices renumber cards, and launch blocking turns the task queue off.
NPU_ENV_KNOBS = (
    "TASK_QUEUE_ENABLE",
    "PYTORCH_NPU_ALLOC_CONF",
    "ASCEND_RT_VISIBLE_DEVICES",
    "ASCEND_LAUNCH_BLOCKING",
)

NPU_INSTALL_HINT = (
    "install CANN 8.x, `source /usr/local/Ascend/ascend-toolkit/set_env.sh` "
    "and `pip install pytest-blendmask[npu]`"
)


@functools.lru_cache(maxsize=None)
def probe_torch_npu() -> str | None:
    """None if torch_npu imports and sees an NPU, else why not (cached for the process)."""
    try:
        importlib.import_module("torch_npu")
    except (ImportError, OSError, RuntimeError) as exc:
        # Without CANN sourced the import fails with ImportError (libhccl.so) or OSError;
        # a broken CANN can raise RuntimeError. All of them mean "no NPU here".
        return f"torch_npu not importable: {exc}; {NPU_INSTALL_HINT}"
    import torch

    if not torch.npu.is_available():
        return "torch_npu imported but torch.npu.is_available() is False (no NPU driver or card visible)"
    return None


def npu_environment() -> dict[str, str | None]:
    """The NPU environment knobs as set in this process (None where unset)."""
    return {name: os.environ.get(name) for name in NPU_ENV_KNOBS}
