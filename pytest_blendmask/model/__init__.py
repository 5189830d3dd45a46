"""BlendMask in PyTorch and torchvision ops (see ../shared/blendmask_spec.md).

Shape letters used in the docstrings of this package:
N images, C classes, F FPN channels, K bases, A attention size (14), R pooler resolution (56),
M detected instances, L FPN levels; H, W network-input size; h, w one level's size.
"""
from .blendmask import BlendMask, build_model
from .configs import CONFIG_NAMES, NORMS, ModelConfig, get_config
from .protocol import DetectionModel, GatedModel, ModelProtocolError, TensorModel, is_detector, probe
from .weights import WeightsError, load_weights

__all__ = [
    "BlendMask", "build_model", "CONFIG_NAMES", "NORMS", "ModelConfig", "get_config", "WeightsError", "load_weights",
    "DetectionModel", "GatedModel", "ModelProtocolError", "TensorModel", "is_detector", "probe",
]
