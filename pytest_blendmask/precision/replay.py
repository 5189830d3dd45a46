"""Local error by replay: what each module adds by itself, on the reference's own inputs.

The accumulated error of a module's output (``compare.py``) mixes the rounding of every
module before it with the module's own; where it first crosses a fixed line is not where a
fault started. Replay separates the two. During one reference forward (CPU, float32), a
forward hook on every module call hands that call's inputs to each *replayer*: a model that
runs the same module (``get_submodule(name)``) on those inputs, in its own precision, on its
own device. The replayer's output against the reference's is the module's *local* error.

Two replayers matter: the device under test (its device copy, in the target's precision)
and the noise floor (the reference model itself, or its half copy, in the precision the
target emulates, always on the CPU; ``precision/floor.py``). A module whose local error on
the device is many times its floor's adds error that rounding does not explain.

Containers. Entries are named as the dump names them (``name#k``, output suffixes),
containers included. A container is replayed with each module it calls returning the
reference's recorded output of that call (cast to the replayer's dtype where it casts),
so its local error is that of its *own* code, the functional code between its children
(the FPN's upsample-add, the basis module's sum), which no child's replay covers: the
larger of its outputs' error and that of the inputs its callees receive (relative to each
tensor's reference, scaled to the output's norm). Each operation is thus replayed about
once, and a replay costs about one forward, not one per level of nesting.

Memory. A call's inputs live while its hook runs; the replay outputs are reduced to two
norms per output at once; a copy of a module's output is kept only until the module that
called it has been replayed (a container's direct callees, the working set of one call).
Modules that change their input in place (``inplace=True``) get a copy of their inputs from
a pre-hook; any other module that changes an input tensor in place is an error that names it,
because its replay would start from the wrong values. Input lists, tuples and dicts are kept
as they came in, so a module that appends to its input list (torchvision's FPN extra blocks)
replays from the list it was given. The root is not replayed.
"""
from __future__ import annotations

import math
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .dump import ROOT_NAME, entry_name, flatten_output



@dataclass(frozen=True)
class Callee:
    """One call a module made to another during the reference forward: what went in and came out."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any


@dataclass(frozen=True)
class Replayed:
    """A replayer's answer: the module's output, and the largest relative L2 error of the inputs
    its callees received against the reference's (0 for a module that calls none)."""

    output: Any
    callee_input_error: float


# A replayer: (module name, args, kwargs, callees) -> Replayed: that module run its own way,
# each callee returning its recorded reference output instead of computing it.
Replayer = Callable[[str, tuple[Any, ...], dict[str, Any], Sequence[Callee]], Replayed]


class ReplayError(RuntimeError):
    """A forward that cannot be replayed as recorded; the message names the module."""


@dataclass(frozen=True)
class LocalError:
    """One output of one module call, replayed: ``error_norm`` is ||replay - reference||_2,
    ``reference_norm`` ||reference||_2, over ``numel`` elements (NaN norms when the replay's
    shape differs or it produced NaN/Inf where the reference did not). ``inputs`` names the
    entries whose tensors the call took as inputs (none for the model's own input): the
    reference forward's data flow, which says where accumulated error came from. Two fields
    speak for a compiled graph, whose tensor can stand for several entries: ``covers`` names
    entries computed inside this one's tensor (a conv fused into the norm after it), and
    ``aliases`` the entries that return the same tensor (a container handing on its child's
    output: the same value, computed once)."""

    name: str
    module: str
    module_type: str
    numel: int
    reference_norm: float
    error_norm: float
    inputs: tuple[str, ...] = ()
    covers: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    error_dot: float = math.nan  # <replay - reference, reference>: what of the error is a change of scale

    @property
    def gain(self) -> float:
        """<d - r, r> / ||r||^2: the output's scale error, the least-squares ``g`` of ``d = (1 + g) r + e``
        with ``e`` orthogonal to ``r`` (0 when r is 0). Rounding is nearly orthogonal to the value it
        rounds, a wrong scale is not."""
        if self.reference_norm == 0.0:
            return 0.0
        return self.error_dot / self.reference_norm ** 2

    @property
    def relative_error(self) -> float:
        """||replay - reference|| / ||reference||: the module's local relative L2 error (0 when both are 0)."""
        if self.error_norm == 0.0:
            return 0.0
        return self.error_norm / self.reference_norm if self.reference_norm > 0 else math.inf


def _map_tensors(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        mapped = [_map_tensors(item, fn) for item in value]
        return type(value)(mapped) if not hasattr(value, "_fields") else type(value)(*mapped)
    if isinstance(value, Mapping):
        return {key: _map_tensors(item, fn) for key, item in value.items()}
    return value


def _versions(value: Any) -> list[int]:
    """Version counters of the tensors in ``value`` (-1 for inference tensors, which have none)."""
    versions: list[int] = []
    _map_tensors(value, lambda t: versions.append(-1 if t.is_inference() else t._version) or t)
    return versions


def deviation(replayed: Tensor, reference: Tensor) -> tuple[float, float, float]:
    """(||r||, ||d - r||, <d - r, r>) of a replayed ``d`` against its ``reference`` ``r``, in float32
    (a norm's last digits do not move a ratio). The error and the product are NaN when the shapes
    differ or NaN/Inf sit elsewhere than the reference's; elsewhere they cover the finite positions."""
    reference_norm = float(torch.linalg.vector_norm(reference))
    if replayed.shape != reference.shape:
        return reference_norm, math.nan, math.nan
    diff = replayed.to("cpu", torch.float32) - reference
    error_norm = float(torch.linalg.vector_norm(diff))
    if math.isfinite(error_norm) and math.isfinite(reference_norm):
        return reference_norm, error_norm, float(torch.vdot(diff.flatten(), reference.flatten()))
    finite = torch.isfinite(reference)
    if not torch.equal(finite, torch.isfinite(replayed.cpu())):
        return float(torch.linalg.vector_norm(reference[finite])), math.nan, math.nan
    kept, diff = reference[finite], diff[finite]
    return float(torch.linalg.vector_norm(kept)), float(torch.linalg.vector_norm(diff)), float(torch.vdot(diff, kept))


class _Hooks:
    """The hooks of one replayed forward: inputs in, local errors out, per replayer."""

    def __init__(self, replayers: Mapping[str, Replayer]) -> None:
        self.replayers = replayers
        self.calls: Counter[str] = Counter()
        self.rows: dict[str, list[tuple[Any, ...]]] = {label: [] for label in replayers}
        # id(tensor) -> (the tensor, the (module, call, suffix) whose output it last was)
        self.producers: dict[int, tuple[weakref.ref, tuple[str, int, str]]] = {}
        self.saved: dict[int, list[tuple[tuple[Any, ...], dict[str, Any], list[int]]]] = {}
        self.frames: list[list[Callee]] = []  # per active call: the calls it made
        # A replayer may run the reference's own modules (the floor does): their hooks stay quiet meanwhile.
        self.replaying = False

    def pre(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self.replaying:
                return
            # Lists and dicts are rebuilt, so that one the module appends to is replayed as it came in;
            # tensors of an `inplace` module are copied, and any other's are checked after the call.
            cloned = getattr(module, "inplace", False)
            args, kwargs = _map_tensors((args, kwargs), (lambda t: t.clone()) if cloned else (lambda t: t))
            self.saved.setdefault(id(module), []).append((args, kwargs, None if cloned else _versions((args, kwargs))))
            self.frames.append([])

        return hook

    def post(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if self.replaying:
                return
            saved_args, saved_kwargs, versions = self.saved[id(module)].pop()
            callees = self.frames.pop()
            if versions is not None and _versions((saved_args, saved_kwargs)) != versions:
                raise ReplayError(
                    f"{name} ({type(module).__name__}) changed its input in place and has no `inplace` attribute: "
                    "its replay would start from the changed values; give it `inplace = True` (its inputs are then copied before each call)"
                )
            call = self.calls[name]
            self.calls[name] += 1
            inputs = tuple(self._producers((args, kwargs)))
            reference = list(flatten_output(output))
            for label, replayer in self.replayers.items():
                self.replaying = True
                try:
                    answer = replayer(name, saved_args, saved_kwargs, callees)
                finally:
                    self.replaying = False
                replayed = dict(flatten_output(answer.output))
                for suffix, tensor in reference:
                    ref_norm, error_norm, error_dot = (deviation(replayed[suffix], tensor) if suffix in replayed
                                                       else (math.nan, math.nan, math.nan))
                    if answer.callee_input_error:
                        error_norm = max(error_norm, answer.callee_input_error * ref_norm)  # NaN stays NaN
                    self.rows[label].append(
                        (name, call, suffix, type(module).__name__, tensor.numel(), ref_norm, error_norm, inputs, error_dot)
                    )
            for suffix, tensor in reference:
                self.producers[id(tensor)] = (weakref.ref(tensor), (name, call, suffix))
            if self.frames:  # the caller is replayed too: keep this call (copies: later in-place changes excluded)
                self.frames[-1].append(Callee(name, *_map_tensors((saved_args, saved_kwargs, output), lambda t: t.clone())))

        return hook

    def _producers(self, value: Any) -> list[tuple[str, int, str]]:
        found: list[tuple[str, int, str]] = []

        def look(t: Tensor) -> Tensor:
            ref, key = self.producers.get(id(t), (None, None))
            if ref is not None and ref() is t and key not in found:
                found.append(key)
            return t

        _map_tensors(value, look)
        return found

    def _name(self, key: tuple[str, int, str]) -> str:
        module, call, suffix = key
        return entry_name(module, call, self.calls[module], suffix)

    def result(self) -> dict[str, tuple[LocalError, ...]]:
        return {
            label: tuple(
                LocalError(self._name((module, call, suffix)), module, kind, numel, ref, err,
                           tuple(self._name(key) for key in inputs), error_dot=dot)
                for module, call, suffix, kind, numel, ref, err, inputs, dot in rows
            )
            for label, rows in self.rows.items()
        }


def replay(
    model: nn.Module,
    forward: Callable[[nn.Module], Any],
    replayers: Mapping[str, Replayer],
    exclude: Callable[[str], bool] = lambda name: False,
) -> dict[str, tuple[LocalError, ...]]:
    """Run ``forward(model)`` on the CPU in float32 and replay every module call with each replayer.

    Args:
        model: the reference model (its root is not replayed, as the dump does not record it).
        forward: the call to make, e.g. ``lambda m: m.forward_raw(batch)``.
        replayers: label -> replayer (module doc); each gets the call's own inputs.
        exclude: module names not to replay (they still run).

    Returns:
        label -> local errors, in the order the module calls finished (the dump's order).

    Raises:
        ReplayError: a module without ``inplace`` changed its input in place.
    """
    hooks = _Hooks(replayers)
    handles = []
    for name, module in model.named_modules():
        if not name or name == ROOT_NAME or exclude(name):
            continue
        handles.append(module.register_forward_pre_hook(hooks.pre(name), with_kwargs=True))
        handles.append(module.register_forward_hook(hooks.post(name), with_kwargs=True))
    try:
        # no_grad, not inference_mode: the version counters tell when an input changed in place.
        with torch.no_grad():
            forward(model)
    finally:
        for handle in handles:
            handle.remove()
    return hooks.result()


def _input_error(received: Any, recorded: Any) -> float:
    """The largest relative L2 error of the floating-point tensors ``received`` against ``recorded``."""
    worst = 0.0
    pairs = zip(flatten_output(received), flatten_output(recorded))
    for (_, got), (_, want) in pairs:
        reference_norm, error_norm, _ = deviation(got, want)
        if math.isnan(error_norm):
            return math.nan
        if error_norm:
            worst = max(worst, error_norm / reference_norm if reference_norm > 0 else math.inf)
    return worst


@contextmanager
def _returning(model: nn.Module, callees: Sequence[Callee], move: Callable[[Tensor], Tensor]) -> Iterator[list[float]]:
    """Within the block, each module of ``model`` named in ``callees`` returns its recorded outputs,
    in order, instead of computing them, and its hooks do not run: a hook that changes an output
    (the int8 floor's quantisation, a test's fault) belongs to that module's own replay, not
    to its caller's again. The list yielded collects the relative error of the inputs each
    such call received."""
    queues: dict[str, list[Callee]] = {}
    for callee in callees:
        queues.setdefault(callee.name, []).append(callee)
    errors: list[float] = []
    patched = []
    for name, queue in queues.items():
        module = model.get_submodule(name)

        def forward(*args: Any, _name: str = name, _queue: list[Callee] = queue, **kwargs: Any) -> Any:
            if not _queue:
                raise ReplayError(f"{_name} was called more often in the replay than in the reference forward: "
                                  "the two took different code paths")
            recorded = _queue.pop(0)
            errors.append(_input_error((args, kwargs), (recorded.args, recorded.kwargs)))
            return _map_tensors(recorded.output, move)

        patched.append((module, module.__dict__.get("forward"), module._forward_pre_hooks, module._forward_hooks))
        module.forward = forward
        module._forward_pre_hooks, module._forward_hooks = OrderedDict(), OrderedDict()
    try:
        yield errors
    finally:
        for module, previous, pre_hooks, hooks in patched:
            module._forward_pre_hooks, module._forward_hooks = pre_hooks, hooks
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def module_replayer(
    model: nn.Module, device: str, run_context: Callable[[], Any], cast: torch.dtype | None = None
) -> Replayer:
    """A replayer running ``model``'s submodule of the same name on ``device`` inside
    ``run_context()`` (e.g. an autocast), the inputs and the callees' recorded outputs copied
    there (cast to ``cast`` if given, floating-point ones only). The copy protects the
    reference's tensors from in-place modules."""
    target = torch.device(device)

    def move(t: Tensor) -> Tensor:
        dtype = cast if cast is not None and t.is_floating_point() else t.dtype
        return t.to(target, dtype, copy=True)

    def run(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], callees: Sequence[Callee]) -> Replayed:
        module = model.get_submodule(name)
        device_args, device_kwargs = _map_tensors((args, kwargs), move)
        with torch.inference_mode(), run_context(), _returning(model, callees, move) as input_errors:
            output = module(*device_args, **device_kwargs)
        host = _map_tensors(output, lambda t: t.detach().to("cpu", torch.float32) if t.is_floating_point() else t)
        return Replayed(host, max(input_errors, default=0.0, key=lambda e: math.inf if math.isnan(e) else e))

    return run
