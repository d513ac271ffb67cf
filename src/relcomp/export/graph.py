"""Reading and small rewrites of exported ONNX graphs: which node computes which Linear.

The TorchScript exporter (used by optimum and by ``torch.onnx.export(dynamo=False)``)
names each node by the scope of the module that produced it:
``bert.encoder.layer.0.attention.self.query`` becomes the node
``/bert/encoder/layer.0/attention/self/query/MatMul``. :func:`module_of_node` reads the
module back; :func:`linear_nodes` maps every ``nn.Linear`` of the model to its
``MatMul`` (3-D inputs) or ``Gemm`` (2-D inputs, e.g. the pooler) node and checks the
weight's shape, so a plan's module names become the node names ONNX Runtime's
quantizers take.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relcomp.models.adapters import LayerModules

__all__ = [
    "ATTENTION_OPS",
    "QUANTIZED_OPS",
    "attention_nodes",
    "gemm_to_matmul",
    "linear_nodes",
    "module_of_node",
    "onnx_size",
    "op_counts",
]

#: Fused attention operators of onnxruntime's transformer optimiser.
ATTENTION_OPS = ("Attention", "MultiHeadAttention")
#: Operators that carry quantized weights in a realised graph.
QUANTIZED_OPS = (
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "QAttention",
    "QLinearMatMul",
    "QGemm",
    "MatMulNBits",
)


def module_of_node(node_name: str) -> str | None:
    """The module (as in ``named_modules()``) whose scope a TorchScript-exported node is in.

    Example:
        >>> module_of_node("/bert/encoder/layer.0/attention/self/query/MatMul")
        'bert.encoder.layer.0.attention.self.query'
        >>> module_of_node("Attention_0") is None
        True
    """
    if not node_name.startswith("/"):
        return None
    scope, _, _ = node_name[1:].rpartition("/")
    return scope.replace("/", ".") or None


def _initializers(model: Any) -> dict[str, Any]:
    return {init.name: init for init in model.graph.initializer}


def _attribute(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def linear_nodes(model: Any, linears: Mapping[str, Any]) -> dict[str, str]:
    """``{Linear module name: node name}`` for the MatMul / Gemm node that computes each Linear.

    A node counts only when its scope names the module and its weight is an
    initializer of the Linear's shape (``in × out`` for MatMul; ``out × in`` for Gemm
    with ``transB=1``). Linears without such a node (fused into an ``Attention``
    operator, or absent) are missing from the result.
    """
    initializers = _initializers(model)
    found: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        module = module_of_node(node.name)
        linear = linears.get(module) if module is not None else None
        if linear is None or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        dims = tuple(initializers[node.input[1]].dims)
        out_features, in_features = tuple(linear.weight.shape)
        if node.op_type == "Gemm" and _attribute(node, "transB", 0):
            expected = (out_features, in_features)
        else:
            expected = (in_features, out_features)
        if dims == expected and module not in found:
            found[str(module)] = node.name
    return found


def _consumers(model: Any) -> dict[str, list[Any]]:
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    return consumers


def attention_nodes(model: Any, layers: Sequence[LayerModules]) -> dict[int, str]:
    """``{layer index: fused attention node}``: the layer whose attention-output Linear reads it.

    onnxruntime's fuser names its nodes ``Attention_0``…, in no particular relation to
    the layers; the node whose output (within three nodes) reaches a layer's
    attention-output MatMul is that layer's attention.
    """
    consumers = _consumers(model)
    output_of = {layer.attention_output: layer.index for layer in layers}
    found: dict[int, str] = {}
    for node in model.graph.node:
        if node.op_type not in ATTENTION_OPS:
            continue
        frontier, seen = list(node.output), set()
        for _ in range(3):
            following = []
            for tensor in frontier:
                for consumer in consumers.get(tensor, []):
                    if consumer.name in seen:
                        continue
                    seen.add(consumer.name)
                    module = module_of_node(consumer.name)
                    if consumer.op_type in ("MatMul", "Gemm") and module in output_of:
                        found.setdefault(output_of[module], node.name)
                    following.extend(consumer.output)
            frontier = following
    return found


def gemm_to_matmul(model: Any, node_names: Iterable[str]) -> dict[str, str]:
    """Rewrite Gemm nodes as ``MatMul`` + ``Add`` in place; ``{old name: new MatMul name}``.

    ONNX Runtime's dynamic quantizer and ``MatMulNBits`` take MatMul nodes only; a
    Linear applied to 2-D inputs (a pooler, a classifier) exports as Gemm. The new
    MatMul keeps the module's scope (``/bert/pooler/dense/MatMul``) so
    :func:`linear_nodes` still finds it. Gemms with ``alpha``/``beta`` other than 1 or
    ``transA`` are left alone (not in the result).
    """
    import onnx
    from onnx import numpy_helper

    wanted = set(node_names)
    initializers = _initializers(model)
    renamed: dict[str, str] = {}
    new_nodes = []
    for node in model.graph.node:
        if node.op_type != "Gemm" or node.name not in wanted:
            new_nodes.append(node)
            continue
        plain = (
            _attribute(node, "alpha", 1.0) == 1.0
            and _attribute(node, "beta", 1.0) == 1.0
            and not _attribute(node, "transA", 0)
            and node.input[1] in initializers
        )
        if not plain:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if _attribute(node, "transB", 0):
            weight = np.ascontiguousarray(weight.T)
        weight_name = f"{node.input[1]}_as_matmul"
        model.graph.initializer.append(numpy_helper.from_array(weight, weight_name))
        scope = node.name[: -len("Gemm")] if node.name.endswith("Gemm") else f"{node.name}/"
        matmul_name = f"{scope}MatMul"
        has_bias = len(node.input) > 2 and node.input[2] != ""
        matmul_output = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        new_nodes.append(
            onnx.helper.make_node(
                "MatMul", [node.input[0], weight_name], [matmul_output], name=matmul_name
            )
        )
        if has_bias:
            new_nodes.append(
                onnx.helper.make_node(
                    "Add", [matmul_output, node.input[2]], [node.output[0]], name=f"{scope}Add"
                )
            )
        renamed[node.name] = matmul_name
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    used = {name for node in model.graph.node for name in node.input}
    unused = [init for init in model.graph.initializer if init.name not in used]
    for init in unused:
        model.graph.initializer.remove(init)
    return renamed


def op_counts(model: Any) -> dict[str, int]:
    """``{op type: count}`` over the graph's nodes."""
    return dict(collections.Counter(node.op_type for node in model.graph.node))


def onnx_size(path: str | os.PathLike[str]) -> int:
    """Bytes of an ONNX file as stored, its external data files included."""
    import onnx

    path = Path(path)
    model = onnx.load(os.fspath(path), load_external_data=False)
    locations = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            for entry in init.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations)


@contextlib.contextmanager
def quiet_tools() -> Iterator[None]:
    """Silence warnings and log records below ERROR while export tools run.

    The torch tracer warns about Python control flow every encoder has, and
    onnxruntime's quantizers log every node a plan leaves alone on purpose.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)
