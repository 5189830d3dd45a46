"""Load weights: our safetensors files and official AdelaiDet checkpoints, never executing pickles."""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

# Old AdelaiDet files spell the centre-ness predictor `centerness` (renamed in commit 281ee24).
RENAMES = ((".fcos_head.centerness.", ".fcos_head.ctrness."),)


class WeightsError(Exception):
    """A weight file that cannot be used, with the file and what is wrong in the message."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a ``.pth`` checkpoint (bare or ``{"model": ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found; pass an existing file with --bm-weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # weights_only refuses arbitrary pickled code: a checkpoint is data, not a program.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
        raise WeightsError(f"{path}: cannot read weights ({type(exc).__name__}: {exc}); the file may be truncated or not a checkpoint") from exc
    if isinstance(loaded, Mapping) and "model" in loaded and isinstance(loaded["model"], Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping):
        raise WeightsError(f"{path}: expected a state_dict or {{'model': state_dict}}, got {type(loaded).__name__}")
    return {k: v for k, v in loaded.items() if isinstance(v, Tensor)}


def adapt_official_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Apply the documented renames; every other key must match the model as it is."""
    out = {}
    for key, value in state.items():
        for old, new in RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def check_compatible(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Raise WeightsError naming the first missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise WeightsError(f"{source}: missing key {key!r} (expected shape {list(tensor.shape)}); was the file made for this --bm-model config?")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{source}: key {key!r} has shape {list(state[key].shape)}, the model expects {list(tensor.shape)}; "
                "was the file made for this --bm-model config and norm?"
            )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise WeightsError(f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all); was the file made for this --bm-model config?")


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a weight file into ``model`` strictly, after the official-checkpoint renames."""
    state = adapt_official_keys(read_state_dict(path))
    expected = model.state_dict()
    # A BN-trained file loads into a FrozenBN model: the step counter is the only extra state.
    state = {k: v for k, v in state.items() if k in expected or not k.endswith("num_batches_tracked")}
    check_compatible(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model
