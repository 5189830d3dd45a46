"""Target spec string -> target object: the one place a spec's kind is decided.

Adding a kind of target (say a TVM runtime) is one module with a ``Target`` subclass that
has ``FORMS`` and a ``parse(text)`` classmethod, and one line in ``KINDS``.
"""
from __future__ import annotations

from .base import Target
from .eager import EagerTarget
from .om import OmTarget
from .ort import OrtTarget

KINDS: tuple[type[Target], ...] = (EagerTarget, OrtTarget, OmTarget)

_FORMS = [kind.FORMS for kind in KINDS]
TARGET_FORMS = ", ".join(_FORMS[:-1]) + " or " + _FORMS[-1]


def parse_target(spec: str) -> Target:
    """Parse a target spec string; ValueError lists the accepted forms and the value."""
    text = spec.strip()
    for kind in KINDS:
        target = kind.parse(text)  # type: ignore[attr-defined]
        if target is not None:
            return target
    raise ValueError(f"expected {TARGET_FORMS}; got {spec!r}")
