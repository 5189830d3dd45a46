"""The exported ONNX model in ONNX Runtime: CPU in fp32, fp16 or int8 (static PTQ), or the CANN/CUDA providers."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..atc.providers import ORT_PROVIDER_PACKAGES, ORT_PROVIDERS
from ..dtypes import Dtype
from .base import LoadContext, Need, Runner, Target

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..atc.ort import OrtRunner
    from ..precision.dump import Dump
    from ..precision.floor import Forward
    from ..precision.replay import LocalError

_QUALIFIERS = {provider: short for short, provider in ORT_PROVIDERS.items()}
# ONNX Runtime runs on device 0 of its provider unless told otherwise.
_DEVICES = {ORT_PROVIDERS["cpu"]: "cpu", ORT_PROVIDERS["cann"]: "npu:0", ORT_PROVIDERS["cuda"]: "cuda:0"}
_ORT_RE = re.compile(r"ort(?::(?P<opt>fp16|int8|cann|cuda))?")
EXPORT_OPSET = 11
# The CPU emulation of each graph precision: the floor (precision/floor.py). ONNX Runtime's
# fp16 conversion turns every operator to fp16, as model.half() does.
_FLOORS = {"fp32": "fp64", "fp16": "half", "int8": "int8"}


@dataclass(frozen=True)
class OrtTarget(Target):
    """ONNX Runtime over the model's dynamic-batch export, converted to ``dtype`` on the CPU provider."""

    FORMS: ClassVar[str] = "ort[:fp16|int8|cann|cuda]"
    compiled: ClassVar[bool] = True

    dtype: Dtype = "fp32"
    provider: str = ORT_PROVIDERS["cpu"]

    @classmethod
    def parse(cls, text: str) -> OrtTarget | None:
        m = _ORT_RE.fullmatch(text)
        if m is None:
            return None
        opt = m["opt"]
        if opt in ORT_PROVIDERS:
            return cls(provider=ORT_PROVIDERS[opt])
        return cls(dtype=opt or "fp32")

    @property
    def id(self) -> str:
        if self.provider != ORT_PROVIDERS["cpu"]:
            return f"ort:{_QUALIFIERS[self.provider]}"
        return "ort" if self.dtype == "fp32" else f"ort:{self.dtype}"

    @property
    def device(self) -> str:
        return _DEVICES[self.provider]

    @property
    def floor(self) -> str:
        return _FLOORS[self.dtype]

    def local_errors(self, runner: OrtRunner, reference: nn.Module, forward: Forward, batch: Tensor,
                     reference_dump: Dump) -> tuple[LocalError, ...]:
        """Each paired tensor of the graph recomputed from the reference's values of the tensors it
        reads (``atc/layers.py``): functional code between two recorded modules counts toward the next."""
        from ..atc.layers import local_errors

        graph, layers = runner.layers(reference_dump)
        return local_errors(graph, layers, reference_dump, batch, self.provider)

    def layer_dump(self, runner: OrtRunner, batch: Tensor, reference_dump: Dump) -> Dump:
        """The graph run with every tensor paired to a reference entry as an extra output (``atc/layers.py``)."""
        from ..atc.layers import layered_dump

        graph, layers = runner.layers(reference_dump)
        return layered_dump(graph, layers, reference_dump, batch, self.provider)

    def skip_reason(self, need: Need = "run") -> str | None:
        try:
            import onnxruntime
        except ImportError as exc:
            return f"onnxruntime not installed: {exc}; `pip install onnxruntime`"
        # get_available_providers, not get_all_providers: the latter lists providers this
        # build merely knows about, not the ones it can run.
        available = onnxruntime.get_available_providers()
        if self.provider in available:
            return None
        package = ORT_PROVIDER_PACKAGES.get(self.provider, "onnxruntime")
        return (
            f"ONNX Runtime provider {self.provider} not in get_available_providers() {available}; "
            f"install {package} instead of onnxruntime"
        )

    def load(self, model: nn.Module, context: LoadContext) -> Runner:
        from ..atc.export import export_onnx
        from ..atc.ort import build_ort_runner

        exported = export_onnx(model, context.input_hw, opset=EXPORT_OPSET, dynamic_batch=True, cache_dir=context.cache_dir)
        return build_ort_runner(exported, precision=self.dtype, provider=self.provider, model=model,
                                calibration=context.calibration)
