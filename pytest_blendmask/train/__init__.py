"""Training of the shipped BlendMask weights: FCOS target assignment, losses and the loop.

``python -m pytest_blendmask.train --help`` runs it; see ``loop.train``.
"""
from .assign import Targets, assign
from .loop import TrainConfig, export_state, make_trainable, train

__all__ = ["TrainConfig", "Targets", "assign", "export_state", "make_trainable", "train"]
