"""The ATC-compiled ``.om`` model, run through ais_bench on an Ascend NPU.

Compiling needs only ``atc`` (a CANN toolkit host without an NPU compiles fine); running
needs ais_bench and an NPU. ``OmTarget.compile`` is the one place an .om is compiled.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..dtypes import Dtype
from .base import LoadContext, Need, Runner, Target
from .ort import EXPORT_OPSET

if TYPE_CHECKING:
    from torch import nn

    from ..atc.atc import AtcResult
    from ..atc.export import ExportedModel

ATC_HINT = "install CANN 8.x and `source /usr/local/Ascend/ascend-toolkit/set_env.sh`"
# ATC's default precision mode: float32 operators are compiled to float16 where supported.
PRECISION_MODE = "allow_fp32_to_fp16"
OM_DEVICE = "npu:0"  # ais_bench runs on device 0 unless told otherwise


@dataclass(frozen=True)
class OmTarget(Target):
    """The static-batch ONNX export compiled by ATC with ``allow_fp32_to_fp16``, judged as fp16."""

    FORMS: ClassVar[str] = "om"
    compiled: ClassVar[bool] = True

    dtype: Dtype = "fp16"

    @classmethod
    def parse(cls, text: str) -> OmTarget | None:
        return cls() if text == "om" else None

    @property
    def id(self) -> str:
        return "om"

    @property
    def device(self) -> str:
        return OM_DEVICE

    def skip_reason(self, need: Need = "run") -> str | None:
        if shutil.which("atc") is None:
            return f"`atc` not on PATH; {ATC_HINT}"
        if need == "compile":
            return None
        from ..atc.om import ais_bench_reason

        return ais_bench_reason()

    def compile(self, exported: ExportedModel, soc_version: str) -> AtcResult:
        """Compile ``exported`` next to it for ``soc_version``; raises with ATC's log lines on failure."""
        from ..atc.atc import AtcOptions, compile_om

        options = AtcOptions(soc_version, precision_mode=PRECISION_MODE)
        result = compile_om(exported.path, exported.path.with_suffix(""), tuple(exported.input_shape[2:]), options)
        result.raise_for_failure()
        return result

    def load(self, model: nn.Module, context: LoadContext) -> Runner:
        from ..atc.export import export_onnx
        from ..atc.om import OmRunner

        exported = export_onnx(model, context.input_hw, opset=EXPORT_OPSET, dynamic_batch=False, cache_dir=context.cache_dir)
        compiled = self.compile(exported, context.soc_version)
        return OmRunner(str(compiled.om_path), exported.output_names)
