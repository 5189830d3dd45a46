"""ONNX Runtime as the offline compiler, so that the atc gate runs on every machine.

Graph optimisation (level ``all``, with the optimised model saved so the Conv+BN folding can be
verified), fp16 conversion, int8 static post-training quantisation calibrated on a ``CalibrationSet``
(synthetic images, or the first images of ``--bm-dataset``), and ``OrtRunner``: a callable batch -> raw tensors named like ``forward_raw``, which is
what the precision family compares.

Providers are taken from ``onnxruntime.get_available_providers()``, never
``get_all_providers()`` (which lists CANN on a CPU-only build, anchors.md section 7), and a
session whose requested provider is missing from ``session.get_providers()`` is reported as
a silent CPU fallback.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel
from torch import Tensor, nn

from ..data.calibration import SYNTHETIC_CALIBRATION_IMAGES, CalibrationSet, synthetic_calibration
from ..precision.dump import Dump
from .export import INPUT_NAME, ExportedModel, load_checked, run_in_batches
from .layers import LayerMap, exposed, layer_tensors
from .providers import ORT_PROVIDER_PACKAGES, ORT_PROVIDERS

CPU_PROVIDER = ORT_PROVIDERS["cpu"]
ORT_PRECISIONS = ("fp32", "fp16", "int8")
OPTIMIZATION_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
DEFAULT_CALIBRATION_IMAGES = SYNTHETIC_CALIBRATION_IMAGES
PER_CHANNEL_MIN_OPSET = 13  # DequantizeLinear gained its per-channel axis in opset 13
INT8_RECIPE = "qdq-conv-minmax-w7"  # in the cached file's name: change it when quantize_int8 changes


class OrtProviderError(RuntimeError):
    """A requested execution provider this onnxruntime build cannot run; names the package to install."""


def create_session(
    path: Path,
    provider: str = CPU_PROVIDER,
    optimization: str = "all",
    optimized_model_path: Path | None = None,
    provider_options: Mapping[str, str] | None = None,
) -> ort.InferenceSession:
    """An InferenceSession on ``provider`` (CPU as the fallback for nodes it cannot take).

    Args:
        path: the ONNX file.
        provider: an execution provider name, which must be in ``get_available_providers()``.
        optimization: a key of ``OPTIMIZATION_LEVELS``.
        optimized_model_path: where ONNX Runtime saves the graph after optimisation, if given.
        provider_options: options of ``provider``, e.g. CANN's ``device_id`` and ``precision_mode``
            (anchors.md section 7).

    Raises:
        OrtProviderError: the provider is not available in this onnxruntime build.
    """
    available = ort.get_available_providers()
    if provider not in available:
        package = ORT_PROVIDER_PACKAGES.get(provider, "onnxruntime")
        raise OrtProviderError(f"{provider} not in onnxruntime.get_available_providers() {available}; install {package} instead of onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    requested = (provider, dict(provider_options or {}))
    providers = [requested] if provider == CPU_PROVIDER else [requested, CPU_PROVIDER]
    return ort.InferenceSession(str(path), options, providers=providers)


def cpu_fallback(session: ort.InferenceSession, provider: str) -> str | None:
    """None if ``provider`` is active in ``session``, else the message that it silently fell back to the CPU."""
    active = session.get_providers()
    if provider in active:
        return None
    return f"{provider} was requested but the session runs on {active}: ONNX Runtime fell back to the CPU without an error"


def _replace_atomically(write: Callable[[Path], None], out_path: Path) -> Path:
    """Write through ``write`` to a temporary sibling, check it, then rename it to ``out_path``."""
    out_path = Path(out_path)
    tmp = out_path.with_name(f"{out_path.stem}.{os.getpid()}.tmp.onnx")
    try:
        write(tmp)
        load_checked(tmp)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def optimize_model(path: Path, out_path: Path, level: str = "all") -> Path:
    """Save the graph ONNX Runtime's CPU provider runs after optimisation at ``level``.

    ``all`` includes layout transforms (NCHWc) tied to this machine's CPU: the saved file is
    for inspection (which nodes were fused) rather than for another machine. ``basic`` gives
    a portable graph with constants folded and Conv+BatchNormalization fused.
    """
    return _replace_atomically(lambda tmp: create_session(path, CPU_PROVIDER, level, tmp), out_path)


def nodes_of_type(model: onnx.ModelProto | Path, op_type: str) -> list[str]:
    """Names (or first outputs) of the nodes of ``op_type``, e.g. BatchNormalization left unfused."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    return [node.name or node.output[0] for node in proto.graph.node if node.op_type == op_type]


def convert_fp16(path: Path, out_path: Path) -> Path:
    """An fp16 copy of the model with float32 inputs and outputs.

    The graph is optimised at level ``basic`` first, so BatchNormalization is folded into the
    convolutions in float32 (as ATC's ConvBatchnormFusionPass does before lowering precision)
    rather than folded later from rounded fp16 statistics.
    """
    def write(tmp: Path) -> None:
        basic = tmp.with_name(tmp.stem + ".basic.onnx")
        try:
            optimize_model(path, basic, "basic")
            half = OnnxModel(convert_float_to_float16(onnx.load(str(basic)), keep_io_types=True))
            # The converter appends the input casts at the end of the node list; onnx.checker
            # (rightly) wants nodes in topological order.
            half.topological_sort()
            onnx.save(half.model, str(tmp))
        finally:
            basic.unlink(missing_ok=True)

    return _replace_atomically(write, out_path)


def calibration_batches(model: nn.Module, image_hw: tuple[int, int], calibration: CalibrationSet | None = None) -> Iterator[np.ndarray]:
    """The images of ``calibration`` at ``image_hw``, each preprocessed by ``model`` into a [1, 3, H, W] batch.

    The synthetic training stream by default (``synthetic_calibration``): calibration must not
    see the evaluation images.
    """
    for image in (calibration or synthetic_calibration()).images(image_hw):
        batch, _ = model.preprocess([image])
        yield batch.numpy()


class CalibrationReader(CalibrationDataReader):
    """onnxruntime's calibration reader over ``calibration_batches``."""

    def __init__(self, model: nn.Module, image_hw: tuple[int, int], calibration: CalibrationSet | None = None, input_name: str = INPUT_NAME) -> None:
        self._batches = calibration_batches(model, image_hw, calibration)
        self._input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def _default_opset(model: onnx.ModelProto) -> int:
    return next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


def quantize_int8(path: Path, out_path: Path, reader: CalibrationDataReader) -> Path:
    """Static int8 post-training quantisation of the convolutions: QDQ, per-channel int8 weights, uint8 activations.

    ``quant_pre_process`` runs first (shape inference and basic optimisation, which folds BN),
    as onnxruntime recommends; activation ranges come from MinMax calibration over ``reader``.
    Only Conv is quantised, as Ascend's AMCT does for cube operators: GroupNorm's affine Mul/Add
    stay float (quantising them per channel fails, their weights being rank 1). A model below
    opset 13 is converted to 13 first, because per-channel DequantizeLinear needs its ``axis``.

    Weights get 7 bits (``reduce_range``), ONNX Runtime's remedy for x86 CPUs without VNNI,
    whose u8s8 kernels add products pairwise in saturating int16: with 8-bit weights, on such a
    CPU, the lite model's stem lost 13 % (random init) and up to a 5 % gain (shipped weights)
    where quantisation itself costs 2 %, which the floor gates reported (tests/unit/
    test_floor_faults.py). The CPU stand-in for an int8 NPU must not add its own kernel's loss.
    """
    def write(tmp: Path) -> None:
        prepared = tmp.with_name(tmp.stem + ".pre.onnx")
        try:
            # ORT's symbolic shape inference costs 10x the rest here, and quantising Conv needs
            # only the weights' shapes, which ONNX's own inference keeps.
            quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
            proto = onnx.load(str(prepared))
            if _default_opset(proto) < PER_CHANNEL_MIN_OPSET:
                onnx.save(onnx.version_converter.convert_version(proto, PER_CHANNEL_MIN_OPSET), str(prepared))
            quantize_static(
                str(prepared), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=True, op_types_to_quantize=["Conv"],
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                reduce_range=True,
            )
        finally:
            prepared.unlink(missing_ok=True)

    return _replace_atomically(write, out_path)


@dataclass
class OrtRunner:
    """A compiled ONNX model as a target: ``runner(batch)`` -> raw tensors named like ``forward_raw``.

    ``fallback`` is None, or the message that the requested provider silently fell back to the CPU.
    ``source_path`` is the fp32 export ``model_path`` was derived from (itself for fp32): its
    scope names pair the graph's tensors with the model's modules (``atc/layers.py``).
    """

    session: ort.InferenceSession
    provider: str
    precision: str
    model_path: Path
    batch_limit: int | None
    source_path: Path | None = None
    output_names: tuple[str, ...] = field(init=False)
    fallback: str | None = field(init=False)
    _layers: tuple[int, onnx.ModelProto, LayerMap] | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.fallback = cpu_fallback(self.session, self.provider)

    def edited(self, edit: Callable[[onnx.ModelProto], None], path: Path) -> OrtRunner:
        """A runner over a copy of this graph, saved at ``path`` after ``edit`` changed it in place.

        The seam through which a test puts a fault into the device's graph only: the fp32 export
        its layers are named from, the reference and the floor are not touched.
        """
        graph = onnx.load(str(self.model_path))
        edit(graph)
        onnx.save(graph, str(path))
        return OrtRunner(create_session(path, self.provider), self.provider, self.precision, path, self.batch_limit,
                         self.source_path or self.model_path)

    def layers(self, reference: Dump) -> tuple[onnx.ModelProto, LayerMap]:
        """This graph and its tensors paired with ``reference``'s entries (``atc/layers.py``), made once per reference dump."""
        if self._layers is None or self._layers[0] != id(reference):
            graph = onnx.load(str(self.model_path))
            source = graph if self.source_path in (None, self.model_path) else onnx.load(str(self.source_path))
            self._layers = (id(reference), graph, exposed(layer_tensors(source, reference), source, graph))
        return self._layers[1], self._layers[2]

    def _run(self, batch: Tensor) -> dict[str, Tensor]:
        feed = {INPUT_NAME: np.ascontiguousarray(batch.detach().cpu().float().numpy())}
        return {name: torch.from_numpy(np.asarray(value, dtype=np.float32)) for name, value in zip(self.output_names, self.session.run(None, feed))}

    def __call__(self, batch: Tensor) -> dict[str, Tensor]:
        """Run a normalised ``[N, 3, H, W]`` batch; a static batch-1 model runs it image by image."""
        return run_in_batches(self._run, batch, self.batch_limit)


def compiled_model_path(exported: ExportedModel, precision: str, calibration: CalibrationSet | None = None) -> Path:
    """Where the fp16/int8 derivative of ``exported`` is cached: next to it, named by what makes it
    (for int8 the recipe and the calibration set's name)."""
    if precision == "fp32":
        return exported.path
    suffix = "fp16" if precision == "fp16" else f"int8-{INT8_RECIPE}-{(calibration or synthetic_calibration()).name}"
    return exported.path.with_name(f"{exported.path.stem}.{suffix}.onnx")


def build_ort_runner(
    exported: ExportedModel,
    precision: str = "fp32",
    provider: str = CPU_PROVIDER,
    model: nn.Module | None = None,
    calibration: CalibrationSet | None = None,
    provider_options: Mapping[str, str] | None = None,
) -> OrtRunner:
    """An ``OrtRunner`` for ``exported`` at ``precision`` on ``provider``, converting (and caching) as needed.

    Args:
        exported: the fp32 export.
        precision: ``fp32``, ``fp16`` or ``int8``.
        provider: an ONNX Runtime execution provider name.
        model: the PyTorch model, whose ``preprocess`` prepares the int8 calibration images
            (required for int8 only).
        calibration: the int8 calibration set; the synthetic training stream when None.
        provider_options: passed to ``create_session``.

    Raises:
        ValueError: unknown precision, or int8 without ``model``.
        OrtProviderError: the provider is not available here.
    """
    if precision not in ORT_PRECISIONS:
        raise ValueError(f"precision: expected one of {ORT_PRECISIONS}; got {precision!r}")
    path = compiled_model_path(exported, precision, calibration)
    if path.exists():
        load_checked(path)
    elif precision == "fp16":
        convert_fp16(exported.path, path)
    elif precision == "int8":
        if model is None:
            raise ValueError("int8 needs the PyTorch model: its preprocess prepares the calibration images")
        quantize_int8(exported.path, path, CalibrationReader(model, exported.input_shape[2:], calibration))
    session = create_session(path, provider, provider_options=provider_options)
    return OrtRunner(session, provider, precision, path, exported.batch_limit, exported.path)
