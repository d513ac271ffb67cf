"""Run an exported encoder's token-wise work on real tokens only ("remove padding").

A batch of pairs is padded to its longest member: at 512 tokens, 32 real reranking
pairs are a fifth (scifact) to a third (nfcorpus) padding, and every Linear, LayerNorm and GELU
of every layer computes those padded rows and throws them away. Only attention mixes
positions, so only attention needs the padded ``[batch, sequence, hidden]`` layout.

:func:`remove_padding` rewrites a realised ONNX graph (fused, quantized or not) so
that the hidden state travels *packed*, as ``[1, tokens, hidden]`` holding the
unmasked positions only:

* it is packed once, after the embeddings (``EmbedLayerNormalization``'s output), by
  a ``Gather`` of the positions where ``attention_mask`` is set;
* every token-wise operator downstream (MatMul / MatMulInteger / MatMulNBits on
  weights, DynamicQuantizeLinear, bias and residual adds, SkipLayerNormalization,
  GELU, …) runs on the packed tensor as it is;
* an operator that mixes positions or reads the layout (attention, Reshape, Slice,
  Shape, the pooler's Gather, mean pooling) gets the tensor scattered back to
  ``[batch, sequence, hidden]`` (padded positions hold a copy of a real token: they
  are masked as keys, and their outputs are dropped when packed again), and a fused
  attention operator's output is packed again for the token-wise work after it.

The result is the same computation on fewer rows: float graphs give the same scores to
rounding (tested to 1e-5). Under dynamic int8 the per-tensor activation scales are
taken over real tokens only, no longer over padding too, so int8 scores move slightly
(and no longer depend on how much padding the batch has). ONNX Runtime's own
packed-attention kernels (``RemovePadding``, ``PackedMultiHeadAttention``) are CUDA
only; this rewrite uses standard operators and runs on any execution provider.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["PaddingRemoval", "remove_padding"]

#: Operators that compute each row independently, by the input positions that may carry
#: token rows (``None``: every input). Other inputs must be weights or scalars.
_TOKENWISE: dict[str, frozenset[int] | None] = {
    **dict.fromkeys(
        ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits"),
        frozenset({0}),
    ),
    **dict.fromkeys(("Add", "Sub", "Mul", "Div"), None),
    **dict.fromkeys(
        (
            "Cast",
            "Gelu",
            "FastGelu",
            "BiasGelu",
            "Erf",
            "Tanh",
            "Relu",
            "Sigmoid",
            "LayerNormalization",
            "SimplifiedLayerNormalization",
            "DynamicQuantizeLinear",
            "QuantizeLinear",
            "DequantizeLinear",
        ),
        frozenset({0}),
    ),
    **dict.fromkeys(
        ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"), frozenset({0, 1})
    ),
}
#: Operators whose weight inputs may be of any rank (other token-wise operators take
#: only scalars and vectors beside their token inputs: a constant with a sequence axis
#: would broadcast against the padded layout only).
_WEIGHTED = frozenset(
    ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits")
)
#: Fused attention operators: they mix positions; their output is a token tensor.
_ATTENTION = frozenset(("Attention", "QAttention", "MultiHeadAttention"))
#: Where the hidden state starts: the fused embeddings' first output, else (embeddings
#: the fuser cannot match, e.g. RoBERTa's position ids) the embeddings' LayerNorm.
_SOURCE = "EmbedLayerNormalization"
_EMBEDDINGS_SCOPE = "/embeddings/LayerNorm/"
_PREFIX = "relcomp/remove_padding"


@dataclasses.dataclass(frozen=True)
class PaddingRemoval:
    """What :func:`remove_padding` did: the rewritten model, or why it left the graph alone.

    Attributes:
        model: the ONNX model (the input itself when nothing was done).
        packed_nodes: operators that now run on real tokens only.
        scatters: how many times the packed state is laid out as a padded batch again.
        note: one line for the bundle's notes.
    """

    model: Any
    packed_nodes: int
    scatters: int
    note: str


def remove_padding(model: Any, *, mask_input: str = "attention_mask") -> PaddingRemoval:
    """Rewrite ``model`` (an ``onnx.ModelProto``) to run its token-wise operators on real tokens.

    Applies to graphs that take ``mask_input`` and whose embeddings end in one
    ``EmbedLayerNormalization`` (onnxruntime's fusion) or one LayerNorm in an
    ``/embeddings/LayerNorm/`` scope (TorchScript's node names); any other graph (MPNet's,
    whose embeddings fuse into a ``SkipLayerNormalization``) is returned unchanged with a
    note saying why. The gain is largest on fused graphs,
    where each attention operator's output is packed again; in an unfused graph the
    token-wise work between attention and the next Reshape stays padded. The model is
    modified in place.
    """
    from onnx import TensorProto, helper

    graph = model.graph
    if mask_input not in {entry.name for entry in graph.input}:
        return PaddingRemoval(model, 0, 0, f"padding kept: the graph has no {mask_input!r} input")
    sources = [node for node in graph.node if node.op_type == _SOURCE] or [
        node
        for node in graph.node
        if node.op_type == "LayerNormalization" and _EMBEDDINGS_SCOPE in node.name
    ]
    if len(sources) != 1:
        return PaddingRemoval(
            model,
            0,
            0,
            f"padding kept: {len(sources)} embedding outputs found, not one (a fused "
            f"{_SOURCE}, else a LayerNormalization in the {_EMBEDDINGS_SCOPE!r} scope)",
        )
    source = sources[0].output[0]

    ranks: dict[str, int] = {init.name: len(init.dims) for init in graph.initializer}
    weights = set(ranks)
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    ranks[node.output[0]] = len(attribute.t.dims)
                    weights.add(node.output[0])
    # scalars and vectors that do not depend on the batch: safe beside a packed tensor
    small = {name for name in weights if ranks[name] <= 1} | {""}

    prelude: list[Any] = []
    initializers: list[Any] = []  # added to the graph only if it is rewritten
    ints = TensorProto.INT64

    def constant(name: str, values: list[int], dims: list[int] | None = None) -> str:
        tensor = helper.make_tensor(
            f"{_PREFIX}/{name}", ints, [len(values)] if dims is None else dims, values
        )
        initializers.append(tensor)
        return tensor.name

    def add(into: list[Any], op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        into.append(helper.make_node(op, inputs, [output], name=f"{_PREFIX}/{output}", **attrs))
        return output

    # positions of real tokens in the flattened batch, and where each padded position reads
    flat = add(
        prelude, "Reshape", [mask_input, constant("minus_one", [-1])], f"{_PREFIX}/mask_flat"
    )
    real = add(prelude, "Cast", [flat], f"{_PREFIX}/mask_bool", to=TensorProto.BOOL)
    nonzero = add(prelude, "NonZero", [real], f"{_PREFIX}/nonzero")
    index = add(prelude, "Reshape", [nonzero, f"{_PREFIX}/minus_one"], f"{_PREFIX}/token_index")
    count = add(prelude, "Cast", [real], f"{_PREFIX}/mask_int", to=ints)
    cumsum = add(
        prelude, "CumSum", [count, constant("scalar_zero", [0], dims=[])], f"{_PREFIX}/cumsum"
    )
    zero = constant("zero", [0])
    rank = add(prelude, "Sub", [cumsum, constant("one", [1])], f"{_PREFIX}/packed_row")
    # a padded position reads row 0 (a real token): finite, masked as a key, dropped after
    layout = add(prelude, "Where", [real, rank, zero], f"{_PREFIX}/padded_rows")
    mask_shape = add(prelude, "Shape", [mask_input], f"{_PREFIX}/mask_shape")
    padded_shape = add(
        prelude, "Concat", [mask_shape, f"{_PREFIX}/minus_one"], f"{_PREFIX}/padded_shape", axis=0
    )
    axes = constant("axis0", [0])

    packed: dict[str, str] = {}  # padded name → packed name
    padded_tokens = {source}  # token tensors in the padded layout (fused attention outputs)
    unpacked: set[str] = set()
    nodes: list[Any] = []
    packed_nodes = scatters = 0

    def pack(name: str, into: list[Any]) -> str:
        if name not in packed:
            rows = add(into, "Flatten", [name], f"{_PREFIX}/{name}/rows", axis=2)
            gathered = add(into, "Gather", [rows, index], f"{_PREFIX}/{name}/gathered", axis=0)
            packed[name] = add(into, "Unsqueeze", [gathered, axes], f"{_PREFIX}/{name}/packed")
        return packed[name]

    def unpack(name: str, into: list[Any]) -> None:
        nonlocal scatters
        if name in unpacked or name in padded_tokens:
            return
        rows = add(into, "Flatten", [packed[name]], f"{_PREFIX}/{name}/packed_rows", axis=2)
        spread = add(into, "Gather", [rows, layout], f"{_PREFIX}/{name}/spread", axis=0)
        into.append(
            helper.make_node(
                "Reshape", [spread, padded_shape], [name], name=f"{_PREFIX}/{name}/padded"
            )
        )
        unpacked.add(name)
        scatters += 1

    def is_token(name: str) -> bool:
        return name in padded_tokens or name in packed

    for node in graph.node:
        inputs = list(node.input)
        tokens = [i for i, name in enumerate(inputs) if name and is_token(name)]
        if not tokens:
            nodes.append(node)
            if all(name in small for name in inputs) and node.op_type in _TOKENWISE:
                small.update(node.output)  # e.g. an activation scale times a weight scale
            continue
        allowed = _TOKENWISE.get(node.op_type, frozenset())
        rowwise = node.op_type in _TOKENWISE and all(
            (allowed is None or i in allowed)
            if i in tokens
            else (inputs[i] in small or (node.op_type in _WEIGHTED and inputs[i] in weights))
            for i in range(len(inputs))
        )
        if rowwise:
            for i in tokens:
                inputs[i] = (
                    pack(inputs[i], nodes) if inputs[i] in padded_tokens else packed[inputs[i]]
                )
            outputs = list(node.output)
            for o, name in enumerate(outputs):
                if node.op_type == "DynamicQuantizeLinear" and o > 0:
                    small.add(name)  # the per-tensor scale and zero point
                elif name:
                    packed[name] = outputs[o] = f"{_PREFIX}/{name}/packed"
            del node.input[:]
            node.input.extend(inputs)
            del node.output[:]
            node.output.extend(outputs)
            nodes.append(node)
            packed_nodes += 1
            continue
        for i in tokens:
            unpack(inputs[i], nodes)
        nodes.append(node)
        if node.op_type in _ATTENTION:
            padded_tokens.add(node.output[0])
    for output in graph.output:
        if output.name in packed:
            unpack(output.name, nodes)
    if not packed_nodes:
        return PaddingRemoval(model, 0, 0, "padding kept: no token-wise operator found")
    graph.initializer.extend(initializers)
    del graph.node[:]
    graph.node.extend(prelude + nodes)
    # shapes recorded for the padded tensors that are now only produced packed
    stale = [info for info in graph.value_info if info.name in packed and info.name not in unpacked]
    for info in stale:
        graph.value_info.remove(info)
    note = (
        f"padding removed: {packed_nodes} token-wise operators run on real tokens only; the "
        f"hidden state is laid out as a padded batch {scatters} times (for attention and "
        "the layout-reading operators)"
    )
    return PaddingRemoval(model, packed_nodes, scatters, note)
