"""A compiled ONNX graph layer by layer: its tensors named back to the model's modules.

The TorchScript exporter names each node after the chain of module calls it was traced in,
``/backbone/bottom_up/res2/res2.0/conv1/Conv``: one path component per call, each the
module's name relative to its caller (``res2.0`` under ``res2``; ``fcos_head`` directly
under the root, because ``forward_raw`` calls ``proposal_generator.fcos_head`` without
calling ``proposal_generator``), and a repeated call gets ``_k`` (``top_layer_2`` is the
third call of ``top_layer``). ``node_modules`` resolves each component against the
model's ``named_modules`` (the shortest qualified name below the caller that ends with it,
the ``_k`` stripped when the name itself is unknown) and numbers each module's calls in
graph order, which is the dump's ``name#k``.

``layer_tensors`` pairs every entry of the reference's dump with the graph tensor that holds
it: an entry that shares its tensor with an earlier one (a ``Conv2dNorm`` returns its norm's
output, a ``Sequential`` its last child's) gets that entry's tensor; any other is an output
of its own call's nodes (a tensor they produce that a node outside them reads, or a graph
output) with the entry's shape, when exactly one has it. Entries left unpaired (no node of
their own, or two candidates of one shape) are reported, not guessed. The derived graphs
(``fp16``, ``int8``) keep the tensor names of the nodes that survive optimisation (ONNX
Runtime's Conv+BN fusion gives the fused conv the BN's output name), so the pairing made on
the fp32 export serves them; a name a derived graph lost is not exposed there.

Two uses: ``layered_outputs`` runs a graph with the paired tensors as extra outputs (the
accumulated error per layer), and ``local_errors`` runs, for each paired tensor, the part of
the graph that computes it from the tensors of earlier entries, fed the reference's own
values (its local error, as ``precision/replay.py`` measures it for eager targets). The
graph that is timed is never the marked one.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
from torch import Tensor

from ..precision.dump import Dump, DumpEntry
from ..precision.replay import LocalError, deviation
from .export import INPUT_NAME

_CALL_SUFFIX = re.compile(r"(?P<base>.+)_(?P<k>\d+)")
_NUMPY = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.DOUBLE: np.float64}


@dataclass(frozen=True)
class ModuleCall:
    """One call of a module in the graph: its qualified name, its call index and its nodes' outputs."""

    module: str
    call: int
    outputs: tuple[str, ...]  # tensors its nodes produce that something outside them reads, in graph order


@dataclass(frozen=True)
class LayerMap:
    """Dump entry name -> graph tensor name, for the entries a graph exposes; the entries it computes
    inside another's tensor (``absorbed``: a conv fused with the norm after it); and the ones it
    does not expose (``unpaired``, with why)."""

    tensors: dict[str, str]
    unpaired: dict[str, str]
    absorbed: dict[str, str] = field(default_factory=dict)



def _resolve(caller: str, component: str, modules: Sequence[str]) -> str | None:
    def below(name: str) -> str | None:
        found = [q for q in modules if (q == name or q.endswith("." + name)) and (not caller or q.startswith(caller + "."))]
        return min(found, key=len, default=None)

    resolved = below(component)
    if resolved is None and (m := _CALL_SUFFIX.fullmatch(component)):
        resolved = below(m["base"])
    return resolved


def node_modules(graph: onnx.GraphProto, modules: Sequence[str]) -> list[tuple[str, int] | None]:
    """Per node, the (module, call index) of the innermost module call it was traced in; None for
    a node outside any module or in a scope that names no module of ``modules``."""
    scope_of: dict[str, tuple[str, int] | None] = {}
    calls: dict[str, int] = {}
    found: list[tuple[str, int] | None] = []
    for node in graph.node:
        parts = node.name.split("/")
        scope = "/".join(parts[:-1])
        if scope not in scope_of:
            module = ""
            for component in parts[1:-1]:
                module = _resolve(module, component, modules) if module is not None else None
            if module:
                scope_of[scope] = (module, calls.get(module, 0))
                calls[module] = calls.get(module, 0) + 1
            else:
                scope_of[scope] = None
        found.append(scope_of[scope])
    return found


def module_calls(graph: onnx.GraphProto, modules: Sequence[str]) -> dict[tuple[str, int], ModuleCall]:
    """(module, call) -> its ``ModuleCall``, for every module call that has nodes of its own."""
    owners = node_modules(graph, modules)
    readers: dict[str, set[tuple[str, int] | None]] = {}
    for node, owner in zip(graph.node, owners):
        for name in node.input:
            readers.setdefault(name, set()).add(owner)
    graph_outputs = {o.name for o in graph.output}
    outputs: dict[tuple[str, int], list[str]] = {}
    for node, owner in zip(graph.node, owners):
        if owner is None:
            continue
        for name in node.output:
            if name in graph_outputs or readers.get(name, set()) - {owner}:
                outputs.setdefault(owner, []).append(name)
    return {key: ModuleCall(key[0], key[1], tuple(names)) for key, names in outputs.items()}


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int | str, ...]]:
    # ONNX's own inference loses shapes after the GroupNorm reshapes; ORT's symbolic one does not.
    inferred = SymbolicShapeInference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.output]
    return {
        info.name: tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in info.type.tensor_type.shape.dim)
        for info in infos
    }


def _same_shape(graph_shape: tuple[int | str, ...] | None, dump_shape: tuple[int, ...]) -> bool:
    # The batch axis may be symbolic in a dynamic-batch export.
    return graph_shape is not None and len(graph_shape) == len(dump_shape) and tuple(graph_shape[1:]) == dump_shape[1:]


def layer_tensors(model: onnx.ModelProto, reference: Dump) -> LayerMap:
    """Pair each entry of ``reference`` (a ``full`` dump of the model's forward) with the tensor of
    ``model`` (its fp32 export) that holds it (module doc)."""
    modules = sorted({entry.module for entry in reference})
    calls = module_calls(model.graph, modules)
    shapes = _shapes(model)
    tensors: dict[str, str] = {}
    unpaired: dict[str, str] = {}
    by_data: dict[int, str] = {}
    for entry in reference:
        shared = by_data.get(id(entry.data)) if entry.data is not None else None
        if shared is not None:
            tensors[entry.name] = shared
            continue
        call = calls.get((entry.module, entry.call))
        candidates = [name for name in call.outputs if _same_shape(shapes.get(name), entry.shape)] if call else []
        if len(candidates) == 1:
            tensors[entry.name] = candidates[0]
            if entry.data is not None:
                by_data[id(entry.data)] = candidates[0]
        elif call is None:
            unpaired[entry.name] = "its module call has no node of its own in the graph"
        else:
            unpaired[entry.name] = f"{len(candidates)} outputs of its call have its shape {entry.shape}"
    return LayerMap(tensors, unpaired)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _as_read(name: str, consumers: dict[str, list[onnx.NodeProto]]) -> str:
    """``name``, or the tensor its readers get where a quantised graph quantises it first (Q then DQ):
    a module's output as the rest of the graph sees it."""
    quantize = consumers.get(name, [])
    if len(quantize) == 1 and quantize[0].op_type == "QuantizeLinear":
        dequantize = consumers.get(quantize[0].output[0], [])
        if len(dequantize) == 1 and dequantize[0].op_type == "DequantizeLinear":
            return dequantize[0].output[0]
    return name


def _absorber(tensor: str, kept: set[str], consumers: dict[str, list[onnx.NodeProto]]) -> str | None:
    """The one kept tensor downstream of ``tensor`` in the source graph that the first kept tensors on every path reduce to, if one."""
    found: set[str] = set()
    stack, seen = [tensor], {tensor}
    while stack:
        for node in consumers.get(stack.pop(), []):
            for out in node.output:
                if out in kept:
                    found.add(out)
                elif out not in seen:
                    seen.add(out)
                    stack.append(out)
    return found.pop() if len(found) == 1 else None


def exposed(layers: LayerMap, source: onnx.ModelProto, derived: onnx.ModelProto) -> LayerMap:
    """``layers`` (made on the fp32 ``source``) as the ``derived`` graph (optimised, converted,
    quantised) exposes them: the tensors it still produces, as its readers see them (after a
    quantise-dequantise pair); an entry whose tensor was fused away is ``absorbed`` by the one
    kept tensor it now flows into, or left unpaired."""
    if derived is source:
        return layers
    produced = {name for node in derived.graph.node for name in node.output}
    derived_readers = _consumers(derived.graph)
    kept_source = {tensor for tensor in layers.tensors.values() if tensor in produced}
    tensors = {e: _as_read(t, derived_readers) for e, t in layers.tensors.items() if t in kept_source}
    absorbed: dict[str, str] = {}
    unpaired = dict(layers.unpaired)
    source_readers = _consumers(source.graph)
    for entry, tensor in layers.tensors.items():
        if tensor in kept_source:
            continue
        into = _absorber(tensor, kept_source, source_readers)
        if into is None:
            unpaired[entry] = "optimised away in this graph"
        else:
            absorbed[entry] = _as_read(into, derived_readers)
    return LayerMap(tensors, unpaired, absorbed)


def _value_info(name: str, elem_type: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, None)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    return {info.name: info.type.tensor_type.elem_type for info in infos}


def _session(model: onnx.ModelProto, provider: str) -> ort.InferenceSession:
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    return ort.InferenceSession(model.SerializeToString(), providers=providers)


def _to_torch(value: np.ndarray) -> Tensor:
    return torch.from_numpy(np.asarray(value, dtype=np.float32))


def layered_dump(model: onnx.ModelProto, layers: LayerMap, reference: Dump, batch: Tensor, provider: str) -> Dump:
    """``model`` run on ``batch`` with every paired tensor as an extra graph output: a ``full`` dump
    named as ``reference``'s entries (those ``layers`` pairs), holding the graph's values."""
    names = list(dict.fromkeys(layers.tensors.values()))
    types = _elem_types(model)
    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    existing = {o.name for o in model.graph.output}
    marked.graph.output.extend(_value_info(name, types.get(name, onnx.TensorProto.FLOAT)) for name in names if name not in existing)
    raw = _session(marked, provider).run(names, {INPUT_NAME: np.ascontiguousarray(batch.float().numpy())})
    values = {name: _to_torch(value) for name, value in zip(names, raw)}
    dtypes = {name: str(value.dtype) for name, value in zip(names, raw)}
    entries = tuple(
        DumpEntry(e.name, e.module, e.module_type, e.call, e.output, dtypes[tensor], tuple(values[tensor].shape), values[tensor])
        for e in reference if (tensor := layers.tensors.get(e.name)) is not None
    )
    return Dump("full", entries)


def _subgraph(model: onnx.ModelProto, output: str, boundary: set[str], types: dict[str, int]) -> tuple[onnx.ModelProto, list[str]]:
    """The nodes computing ``output`` back to the ``boundary`` tensors, as a model whose inputs are
    the boundary tensors it reads."""
    producer = {name: index for index, node in enumerate(model.graph.node) for name in node.output}
    initializers = {init.name for init in model.graph.initializer}
    needed: set[int] = set()
    inputs: list[str] = []
    stack = [output]
    seen = {output}
    while stack:
        name = stack.pop()
        if name != output and (name in boundary or name not in producer):
            if name not in initializers and name:
                inputs.append(name)
            continue
        index = producer[name]
        if index in needed:
            continue
        needed.add(index)
        for source in model.graph.node[index].input:
            if source and source not in seen:
                seen.add(source)
                stack.append(source)
    nodes = [node for index, node in enumerate(model.graph.node) if index in needed]
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes, f"local:{output}", [_value_info(name, types.get(name, onnx.TensorProto.FLOAT)) for name in inputs],
        [_value_info(output, types.get(output, onnx.TensorProto.FLOAT))],
        [init for init in model.graph.initializer if init.name in used],
    )
    sub = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return sub, inputs


def local_errors(model: onnx.ModelProto, layers: LayerMap, reference: Dump, batch: Tensor, provider: str) -> tuple[LocalError, ...]:
    """Each paired tensor recomputed by ``model`` from the reference's values of the tensors it
    reads (earlier entries, the input), against the reference's value: one ``LocalError`` per
    tensor, named after the first entry it holds (the innermost module: a container returning
    it computed nothing more), the others its aliases, the entries fused into it its covers, in
    dump order."""
    by_name = reference.by_name()
    boundary = set(layers.tensors.values()) | {INPUT_NAME}
    holder: dict[str, str] = {}
    for name, tensor in layers.tensors.items():
        holder.setdefault(tensor, name)  # the first entry in dump order: the innermost module, which computed it
    types = _elem_types(model)
    feeds: dict[str, Tensor] = {layers.tensors[name]: by_name[name].data for name in layers.tensors}
    feeds[INPUT_NAME] = batch
    order = {name: index for index, name in enumerate(by_name)}
    errors: list[LocalError] = []
    for tensor, name in sorted(holder.items(), key=lambda item: order[item[1]]):
        entry = by_name[name]
        sub, inputs = _subgraph(model, tensor, boundary - {tensor}, types)
        feed = {
            source: np.ascontiguousarray(feeds[source].numpy().astype(_NUMPY.get(types.get(source, 1), np.float32)))
            for source in inputs
        }
        (value,) = _session(sub, provider).run([tensor], feed)
        reference_norm, error_norm, error_dot = deviation(_to_torch(value), entry.data)
        errors.append(LocalError(name, entry.module, entry.module_type, entry.data.numel(), reference_norm, error_norm,
                                 tuple(holder[source] for source in inputs if source in holder),
                                 tuple(e for e, held in layers.absorbed.items() if held == tensor),
                                 tuple(e for e, held in layers.tensors.items() if held == tensor and e != name), error_dot))
    return tuple(errors)

