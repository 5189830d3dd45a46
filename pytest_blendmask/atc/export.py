"""Export the raw network (``forward_raw``) to ONNX, checked and cached by content.

Only the device part is exported: ``bases`` and, per FPN level, logits, box regression,
centre-ness and attention features, named and ordered as ``forward_raw`` returns them
(AdelaiDet's export order). Decode, NMS, ROIAlign and mask paste stay on the host
(blendmask_spec.md section 10), so the exported graph holds no RoiAlign and no NMS.

The TorchScript exporter (``dynamo=False``) is used on purpose: it writes opset 11 natively
(what ATC handles best), needs no onnxscript, and with ``TrainingMode.PRESERVE`` keeps each
BatchNormalization node instead of folding it into the conv at export time, so that the
folding done by ONNX Runtime and by ATC's ConvBatchnormFusionPass is what gets tested.
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from google.protobuf.message import DecodeError
from torch import Tensor, nn

from ..cache_dir import cache_root
from ..model.fingerprint import code_digest, model_description, weights_digest

OPSETS = (11, 17)
INPUT_NAME = "input"
BATCH_AXIS_NAME = "batch"
# Bump when the export recipe changes, so that files cached by an older recipe are not reused.
EXPORT_RECIPE_VERSION = 1
# Resize/Upsample driven by a scale factor instead of an explicit size break some converters
# (TensorRT "scales_input.is_weights()", AdelaiDet issue #83).
_RESIZE_OPS = ("Resize", "Upsample")


class ExportError(Exception):
    """An ONNX file that could not be written or read, with the file and the fix in the message."""


@dataclass(frozen=True)
class ExportedModel:
    """One exported ONNX file and how it was made.

    ``export_seconds`` is None when the file came from the cache.
    """

    path: Path
    opset: int
    dynamic_batch: bool
    input_shape: tuple[int | str, int, int, int]  # (1 or "batch", 3, H, W)
    output_names: tuple[str, ...]
    export_seconds: float | None

    @property
    def batch_limit(self) -> int | None:
        """The only batch size a static export accepts (1), None for a dynamic-batch export."""
        return None if self.dynamic_batch else 1


class _RawOutputs(nn.Module):
    """``forward_raw`` as a tuple, because the TorchScript exporter cannot name dict outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model.forward_raw(images).values())


def default_cache_dir() -> Path:
    """``onnx`` under ``cache_dir.cache_root()`` (``$BM_CACHE_DIR``, else ``.bm_cache``)."""
    return cache_root() / "onnx"


def model_fingerprint(model: nn.Module, input_hw: tuple[int, int], opset: int, dynamic_batch: bool) -> str:
    """SHA-256 over everything that decides the exported file's content.

    Weights (every state_dict tensor's name, dtype, shape and bytes), the model config, the
    model's code (``model.fingerprint.code_digest``: an edited forward must be exported again),
    the input size, the opset, the batch mode, the torch version (the exporter's output
    changes with it) and the export recipe version.
    """
    parts = (weights_digest(model), model_description(model), code_digest(model), input_hw, opset, dynamic_batch,
             torch.__version__, EXPORT_RECIPE_VERSION)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message: the exporter and checker append graph dumps."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def load_checked(path: Path) -> onnx.ModelProto:
    """Load an ONNX file after ``onnx.checker`` (full check, shape inference included).

    Raises:
        ExportError: the file is missing, truncated, not ONNX or invalid; the message names
            the file and says to delete it so that it is exported again.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: ONNX file not found; export the model first (export_onnx)")
    try:
        # The path form lets the checker handle files of any size, external data included.
        onnx.checker.check_model(str(path), full_check=True)
        return onnx.load(str(path))
    except (onnx.checker.ValidationError, DecodeError, OSError) as exc:
        raise ExportError(
            f"{path}: not a valid ONNX model ({type(exc).__name__}: {_first_line(exc)}); the file is truncated or "
            f"corrupt: delete it (rm '{path}') and run again to re-export it"
        ) from exc


def _atomic_export(wrapper: nn.Module, example: Tensor, path: Path, opset: int, output_names: Sequence[str], dynamic_batch: bool) -> None:
    """Export to a temporary sibling, check it, then rename it into place.

    A crash or a concurrent xdist worker therefore never leaves a half-written file under
    the cached name.
    """
    axes = {name: {0: BATCH_AXIS_NAME} for name in (INPUT_NAME, *output_names)} if dynamic_batch else None
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.onnx")
    try:
        with warnings.catch_warnings():
            # dynamo=False is deliberate (module docstring), so its deprecation notices are noise.
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            # PRESERVE on an eval-mode model exports inference ops; constant folding is then
            # safe, which the exporter cannot tell and warns about.
            warnings.filterwarnings("ignore", message=".*constant folding be turned off.*")
            # GroupNorm's "more than 1 value per channel" check reads the traced shape; the
            # dynamic-batch unit test runs another batch size to prove nothing else got baked in.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.functional")
            torch.onnx.export(
                wrapper,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                dynamic_axes=axes,
                training=torch.onnx.TrainingMode.PRESERVE,
                do_constant_folding=True,
            )
        load_checked(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_onnx(
    model: nn.Module,
    input_hw: tuple[int, int],
    opset: int = 11,
    dynamic_batch: bool = False,
    cache_dir: Path | None = None,
) -> ExportedModel:
    """Export ``model.forward_raw`` for a ``[N, 3, H, W]`` input, or reuse the cached file.

    Args:
        model: a BlendMask (anything with ``forward_raw`` returning a dict of tensors), eval mode.
        input_hw: (H, W) of the network input, multiples of 32; fixed in the graph.
        opset: ONNX opset, one of ``OPSETS``.
        dynamic_batch: a symbolic batch axis on the input and every output, else batch 1.
        cache_dir: where files are cached by ``model_fingerprint``; ``default_cache_dir()`` when None.

    Returns:
        ExportedModel: the checked file; ``export_seconds`` is None on a cache hit.

    Raises:
        ValueError: unsupported opset or input size, or a model in training mode.
        ExportError: the exporter failed, or the cached file is corrupt (the message says to delete it).
    """
    if opset not in OPSETS:
        raise ValueError(f"opset: expected one of {OPSETS}; got {opset}")
    height, width = input_hw
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise ValueError(f"input_hw: expected positive multiples of 32 (the model pads to /32); got {input_hw}")
    if model.training:
        # TrainingMode.PRESERVE would export training-mode BatchNormalization.
        raise ValueError("export_onnx: the model is in training mode; call model.eval() first")
    batch: int | str = BATCH_AXIS_NAME if dynamic_batch else 1
    mode = "dynamic" if dynamic_batch else "static"
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"blendmask-{model_fingerprint(model, input_hw, opset, dynamic_batch)[:16]}-op{opset}-{mode}-{height}x{width}.onnx"
    seconds: float | None = None
    if path.exists():
        output_names = tuple(o.name for o in load_checked(path).graph.output)
    else:
        example = torch.zeros(1, 3, height, width)
        with torch.no_grad():
            output_names = tuple(model.forward_raw(example))
        start = time.perf_counter()
        try:
            _atomic_export(_RawOutputs(model).eval(), example, path, opset, output_names, dynamic_batch)
        except ExportError:
            raise
        except Exception as exc:  # the exporter raises many types (unsupported operator, tracer errors)
            raise ExportError(f"torch.onnx.export of the raw network failed at opset {opset} ({mode} batch): {type(exc).__name__}: {_first_line(exc)}") from exc
        seconds = time.perf_counter() - start
    return ExportedModel(path, opset, dynamic_batch, (batch, 3, height, width), output_names, seconds)


def scale_factor_resizes(model: onnx.ModelProto) -> list[str]:
    """Names of the Resize/Upsample nodes whose output size comes from a scale factor.

    A Resize has inputs (X, roi, scales, sizes); it follows an explicit size only when its
    ``sizes`` input is present and non-empty. Upsample (opset < 10) always takes scales.
    """
    found = []
    for node in model.graph.node:
        if node.op_type not in _RESIZE_OPS:
            continue
        has_sizes = node.op_type == "Resize" and len(node.input) >= 4 and node.input[3] != ""
        if not has_sizes:
            found.append(node.name or node.output[0])
    return found


def run_in_batches(run: Callable[[Tensor], dict[str, Tensor]], batch: Tensor, batch_limit: int | None) -> dict[str, Tensor]:
    """Run ``run`` on slices of at most ``batch_limit`` images and concatenate the outputs.

    Static-batch exports and static OMs take batch 1; this lets them answer a multi-image
    batch the same way a dynamic-batch model does.
    """
    if batch_limit is None or batch.shape[0] <= batch_limit:
        return run(batch)
    parts = [run(chunk) for chunk in batch.split(batch_limit)]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
