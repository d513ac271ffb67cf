"""Realise a plan's precisions in an exported graph, node by node, with onnxruntime's tools.

Order of work, on one exported float32 graph:

1. **Fusion** (``onnxruntime.transformers.optimizer.optimize_model``, the python
   fusions only; ONNX Runtime applies its own graph optimisations when a session
   starts): embedding + LayerNorm, skip + LayerNorm, bias + GELU and attention. When
   every layer gives Q, K and V one precision that the packed ``Attention`` operator
   can hold (fp32 or dynamic int8), attention fuses into ``Attention`` (one QKV GEMM,
   quantizable as ``QAttention``); otherwise into ``MultiHeadAttention``, which keeps
   Q, K and V as separate MatMuls so each keeps its own precision. Layers the fuser
   cannot match (MPNet's relative position bias) stay unfused, and the count says so.
2. **Static int8** (``int8(activations=True)``): ``quantize_static`` with activation
   ranges calibrated on real pairs, on exactly those MatMuls.
3. **Dynamic int8**: ``quantize_dynamic(nodes_to_quantize=…)`` on exactly the plan's
   int8 MatMuls (and packed ``Attention`` nodes), per-channel or not as each asks.
4. **int4**: ``MatMulNBitsQuantizer`` (symmetric, the plan's block size) on exactly
   the plan's int4 MatMuls; every other MatMul is excluded by name.

Linears on 2-D inputs export as ``Gemm``; those the plan quantizes are first
rewritten as MatMul + Add (:func:`~relcomp.export.graph.gemm_to_matmul`), as the
quantizers take MatMul only. Every difference from the plan is returned as a note.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relcomp.artifacts import EMBEDDINGS
from relcomp.compression.actions import FP16, FP32, Int4, Int8, PrecisionAction
from relcomp.export.graph import (
    ATTENTION_OPS,
    attention_nodes,
    gemm_to_matmul,
    linear_nodes,
    op_counts,
    quiet_tools,
)
from relcomp.models.adapters import LayerModules
from relcomp.registry import Registry

__all__ = [
    "ORT_HANDLERS",
    "OrtRealisation",
    "QuantizationGroups",
    "precision_label",
    "realise_for_ort",
]

logger = logging.getLogger(__name__)

_FLOAT = 1  # onnx.TensorProto.FLOAT


def precision_label(action: PrecisionAction | None) -> str:
    """How a Linear runs in ONNX Runtime: ``fp32``, ``int8(…)``, ``int4(…)``.

    fp16 runs as fp32 on ONNX Runtime's CPU provider (see the bundle's notes).

    Example:
        >>> precision_label(Int8(per_channel=False)), precision_label(FP16()), precision_label(None)
        ('int8(per_channel=False)', 'fp32', 'fp32')
    """
    if action is None or isinstance(action, FP32 | FP16):
        return "fp32"
    return str(action)


@dataclasses.dataclass
class QuantizationGroups:
    """The graph's nodes by the onnxruntime pass that quantizes them, and its options."""

    dynamic: dict[bool, list[str]] = dataclasses.field(
        default_factory=lambda: defaultdict(list)
    )  # per_channel → nodes
    static: dict[bool, list[str]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    int4: dict[int, list[str]] = dataclasses.field(
        default_factory=lambda: defaultdict(list)
    )  # block size → nodes


OrtHandler = Callable[[QuantizationGroups, str, PrecisionAction], None]
#: Precision action name → how its nodes are realised in ONNX Runtime (which pass
#: quantizes them, with which options), as :data:`relcomp.compression.HANDLERS` does for torch.
ORT_HANDLERS: Registry[OrtHandler] = Registry("ONNX Runtime precision handler")


@ORT_HANDLERS.register("int8")
def _int8_nodes(groups: QuantizationGroups, node: str, action: PrecisionAction) -> None:
    assert isinstance(action, Int8)
    # int8(activations=True) needs calibrated ranges: quantize_static; else quantize_dynamic
    (groups.static if action.activations else groups.dynamic)[action.per_channel].append(node)


@ORT_HANDLERS.register("int4")
def _int4_nodes(groups: QuantizationGroups, node: str, action: PrecisionAction) -> None:
    assert isinstance(action, Int4)
    groups.int4[action.block_size].append(node)


@ORT_HANDLERS.register("fp32", "fp16")
def _float_nodes(groups: QuantizationGroups, node: str, action: PrecisionAction) -> None:
    """Nothing to do: fp16 runs as fp32 on ONNX Runtime's CPU provider."""


@dataclasses.dataclass
class OrtRealisation:
    """The realised graph and what was done to it."""

    model: Any
    modules: dict[str, str]
    nodes: dict[str, list[str]]
    fusion: dict[str, int]
    notes: list[str]
    attention: str


def _packed_attention_ok(label: str) -> bool:
    return label == "fp32" or (label.startswith("int8") and "activations=True" not in label)


def _choose_attention(
    layers: Sequence[LayerModules], labels: Mapping[str, str]
) -> tuple[bool, list[str]]:
    """Whether the packed ``Attention`` operator can honour every layer's Q/K/V precisions."""
    mixed = []
    for layer in layers:
        qkv = [labels[layer.query], labels[layer.key], labels[layer.value]]
        if len(set(qkv)) > 1 or not _packed_attention_ok(qkv[0]):
            mixed.append(f"layer {layer.index}: {'/'.join(qkv)}")
    return not mixed, mixed


def _optimize(
    model: Any, packed: bool, layers: Sequence[LayerModules], notes: list[str]
) -> tuple[Any, dict[str, int]]:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.use_multi_head_attention = not packed
    try:
        with quiet_tools():
            optimized = optimize_model(
                model,
                model_type="bert",
                num_heads=0,  # 0: read each layer's heads from the graph (pruned layers differ)
                hidden_size=0,
                optimization_options=options,
                opt_level=0,
            )
    except Exception as error:  # the fuser is heuristic; an unfused graph still runs
        notes.append(f"graph optimisation failed and was skipped ({type(error).__name__}: {error})")
        return model, {}
    fused_model = optimized.model
    if not any(entry.domain == "com.microsoft" for entry in fused_model.opset_import):
        import onnx

        # the fused operators live in onnxruntime's domain; tools that run onnx's own
        # shape inference (the quantizers) need it declared
        fused_model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    statistics = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    fused = sum(statistics.get(op, 0) for op in ATTENTION_OPS)
    if fused < len(layers):
        notes.append(
            f"attention fused in {fused} of {len(layers)} layers: onnxruntime's fuser does not "
            "recognise the others' attention pattern; they run as separate operators"
        )
    for ops, what in (
        (("SkipLayerNormalization", "LayerNormalization"), "LayerNorm"),
        (("BiasGelu", "FastGelu", "Gelu"), "GELU (the activation is not GELU, or not matched)"),
    ):
        if not any(statistics.get(op) for op in ops):
            notes.append(f"no {what} fusion applied")
    return fused_model, statistics


class _Feeds:
    """A calibration data reader over prepared input dicts."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds = [dict(feed) for feed in feeds]
        self._iterator = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = iter(self._feeds)


def _save(model: Any, path: Path) -> Path:
    import onnx

    onnx.save_model(model, os.fspath(path))
    return path


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(os.fspath(path))


def realise_for_ort(
    model: Any,
    *,
    linears: Mapping[str, Any],
    layers: Sequence[LayerModules],
    precisions: Mapping[str, PrecisionAction],
    work_dir: str | os.PathLike[str],
    optimize: bool = True,
    calibration_feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
    reduce_range: bool = False,
    int8_weight_type: str = "uint8",
    int4_accuracy_level: int | None = None,
    embeddings: str = "fp32",
    word_embeddings_shape: tuple[int, int] | None = None,
    separate_qkv: bool = False,
) -> OrtRealisation:
    """Fuse and quantize an exported float32 graph as ``precisions`` says.

    Args:
        model: the exported ``onnx.ModelProto`` (float32).
        linears: the torch model's Linears, by module name (to find their nodes).
        layers: the torch model's layers (to tell fused attention nodes apart).
        precisions: ``{Linear name: Int8 | Int4 | FP16 | FP32}``; absent Linears stay fp32.
        work_dir: a scratch folder for the quantizers' intermediate files.
        optimize: run onnxruntime's transformer fusions first.
        calibration_feeds: input dicts for static int8 (``int8(activations=True)``).
        reduce_range: 7-bit weights for int8 (for CPUs without VNNI, whose u8×s8 dot
            product can saturate).
        int8_weight_type: ``uint8`` (default: symmetric weights stored with zero point
            128, the plan's grid, run by the u8×u8 kernel, which cannot saturate; as in
            optimum's AVX2 preset) or ``int8`` (the u8×s8 kernel: faster with VNNI, but it
            can saturate without it).
        int4_accuracy_level: ``MatMulNBits``' ``accuracy_level``: ``None`` (default)
            computes in float32 from the int4 weights; 4 quantizes activations to int8
            (faster with VNNI; slower than float32 on the AVX2-only CI machine).
        embeddings: ``fp32`` (the plan's view: embeddings are not Linears) or ``int8``
            (the word-embedding table quantized by ``quantize_dynamic``: the fused
            ``EmbedLayerNormalization`` becomes ``QEmbedLayerNormalization``, or the
            ``Gather`` of an unfused graph a quantized Gather).
        word_embeddings_shape: the word-embedding table's shape, to find its ``Gather``.
        separate_qkv: fuse attention as ``MultiHeadAttention`` even where the packed
            ``Attention`` operator could hold every layer: Q, K and V stay separate
            MatMuls outside the attention operator, so that
            :func:`~relcomp.export.remove_padding.remove_padding` can run them on real
            tokens only.

    Returns:
        The realised graph, the precision each Linear runs at, the nodes of each
        precision, the fusion counts and the notes.
    """
    if embeddings not in EMBEDDINGS:
        raise ValueError(f"embeddings must be 'fp32' or 'int8', got {embeddings!r}")
    if int8_weight_type not in ("int8", "uint8"):
        raise ValueError(f"int8_weight_type must be 'int8' or 'uint8', got {int8_weight_type!r}")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    labels = {name: precision_label(precisions.get(name)) for name in linears}
    before = linear_nodes(model, linears)
    missing = [name for name in linears if name not in before]
    for name in missing:
        if labels[name] != "fp32":
            notes.append(
                f"{name}: no MatMul/Gemm node found in the graph; {labels[name]} not applied"
            )
            labels[name] = "fp32"

    packed, mixed = _choose_attention(layers, labels)
    attention = "none"
    fusion: dict[str, int] = {}
    if optimize:
        if packed and separate_qkv:
            packed = False
            notes.append(
                "attention fused as MultiHeadAttention (Q, K, V stay separate MatMuls), as "
                "asked: their projections can then run on real tokens only"
            )
        elif not packed:
            notes.append(
                "attention fused as MultiHeadAttention (Q, K, V stay separate MatMuls) because "
                f"the packed Attention operator cannot hold {'; '.join(mixed[:4])}"
                + (f" and {len(mixed) - 4} more layers" if len(mixed) > 4 else "")
            )
        model, fusion = _optimize(model, packed, layers, notes)
        attention = (
            "Attention"
            if fusion.get("Attention")
            else "MultiHeadAttention"
            if fusion.get("MultiHeadAttention")
            else "none"
        )
    else:
        notes.append("graph optimisation off: no attention / LayerNorm / GELU fusion")

    after = linear_nodes(model, linears)
    fused_attention = attention_nodes(model, layers)
    by_op = {node.name: node.op_type for node in model.graph.node}

    # -- group the nodes by what the plan asks ------------------------------------------------
    groups = QuantizationGroups()
    dynamic, static, int4 = groups.dynamic, groups.static, groups.int4
    node_label: dict[str, str] = {}
    module_nodes: dict[str, str] = {}
    for layer in layers:
        node = fused_attention.get(layer.index)
        if node is None or by_op.get(node) != "Attention":
            continue
        for name in (layer.query, layer.key, layer.value):
            module_nodes[name] = node
    for name, node in after.items():
        module_nodes[name] = node
    for name in linears:
        if name not in module_nodes and labels[name] != "fp32":
            notes.append(f"{name}: its node did not survive fusion; {labels[name]} not applied")
            labels[name] = "fp32"
    gemms = [
        module_nodes[name]
        for name in linears
        if name in module_nodes
        and labels[name] != "fp32"
        and by_op.get(module_nodes[name]) == "Gemm"
    ]
    if gemms:
        renamed = gemm_to_matmul(model, gemms)
        for name, node in list(module_nodes.items()):
            if node in renamed:
                module_nodes[name] = renamed[node]
        left = sorted(set(gemms) - set(renamed))
        for node in left:
            notes.append(f"{node}: a Gemm with alpha/beta/transA cannot become a MatMul; kept fp32")
        for name in linears:
            if module_nodes.get(name) in left:
                labels[name] = "fp32"
    for name in linears:
        action = precisions.get(name)
        node = module_nodes.get(name)
        if node is None or labels[name] == "fp32":
            continue
        node_label.setdefault(node, labels[name])
        if action is not None:
            ORT_HANDLERS.get(action.name)(groups, node, action)

    # -- quantize ---------------------------------------------------------------------------
    step = 0

    def next_path() -> Path:
        nonlocal step
        step += 1
        return work / f"step{step}.onnx"

    if any(static.values()):
        # the calibrator only measures tensors whose type is known; onnx's own shape
        # inference does not know the fused operators, onnxruntime's symbolic one does
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        with quiet_tools():
            model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    current = _save(model, next_path())
    if any(static.values()):
        if not calibration_feeds:
            raise ValueError(
                "int8(activations=True) needs calibration pairs for static quantization"
            )
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        weight_type = _weight_type(int8_weight_type)
        for per_channel, nodes in static.items():
            target = next_path()
            with quiet_tools():
                quantize_static(
                    os.fspath(current),
                    os.fspath(target),
                    _Feeds(calibration_feeds),
                    quant_format=QuantFormat.QOperator,
                    op_types_to_quantize=["MatMul"],
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=weight_type,
                    nodes_to_quantize=sorted(set(nodes)),
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={
                        "WeightSymmetric": True,
                        "ActivationSymmetric": False,
                        # fused operators are outside onnx's shape inference: their
                        # outputs' type is float, say so
                        "DefaultTensorType": _FLOAT,
                    },
                )
            current = target
        notes.append(
            f"static int8 on {sum(len(set(v)) for v in static.values())} MatMuls: activation "
            f"ranges calibrated by onnxruntime (MinMax) on {len(calibration_feeds)} batches of real pairs"
        )
    if any(dynamic.values()):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for per_channel, nodes in dynamic.items():
            target = next_path()
            with quiet_tools():
                quantize_dynamic(
                    os.fspath(current),
                    os.fspath(target),
                    op_types_to_quantize=["MatMul", "Attention"],
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    weight_type=_weight_type(int8_weight_type),
                    nodes_to_quantize=sorted(set(nodes)),
                    extra_options={
                        "WeightSymmetric": True,
                        "MatMulConstBOnly": True,
                        "DefaultTensorType": _FLOAT,
                    },
                )
            current = target
    if int8_weight_type == "uint8" and (any(dynamic.values()) or any(static.values())):
        notes.append(
            "int8 weights stored as uint8 on a symmetric grid (zero point 128), so ONNX "
            "Runtime runs its u8×u8 kernel: its u8×s8 kernel can saturate on x86 CPUs "
            "without VNNI"
        )
    if embeddings == "int8":
        current = _quantize_embeddings(current, next_path(), word_embeddings_shape, notes)
    model = _load(current)
    if any(int4.values()):
        quantizer_class = _nbits_quantizer()
        for block_size, nodes in int4.items():
            chosen = set(nodes)
            others = [
                node.name
                for node in model.graph.node
                if node.op_type == "MatMul" and node.name not in chosen
            ]
            quantizer = quantizer_class(
                model,
                bits=4,
                block_size=block_size,
                is_symmetric=True,
                accuracy_level=int4_accuracy_level,
                nodes_to_include=sorted(chosen),
                nodes_to_exclude=others,
            )
            with quiet_tools():
                quantizer.process()
            model = quantizer.model.model
        notes.append(
            "int4 by onnxruntime's MatMulNBits quantizer (symmetric blocks, the grid "
            "relcomp's torch simulation uses); "
            + (
                "float32 compute: int4 saves size, not time, on CPUs without VNNI"
                if int4_accuracy_level is None
                else f"accuracy_level={int4_accuracy_level}"
            )
        )
    _check_counts(model, dynamic, static, int4, by_op, notes)
    nodes_by_label: dict[str, list[str]] = defaultdict(list)
    for node, label in node_label.items():
        nodes_by_label[label].append(node)
    nodes_by_label["fp32"] = sorted(
        {module_nodes[name] for name in linears if labels[name] == "fp32" and name in module_nodes}
    )
    return OrtRealisation(
        model=model,
        modules=labels,
        nodes={label: sorted(nodes) for label, nodes in nodes_by_label.items()},
        fusion=fusion,
        notes=notes,
        attention=attention,
    )


def _nbits_quantizer() -> Any:
    """``MatMulNBitsQuantizer``, imported without the root-logger set-up its module does."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    finally:  # the module calls logging.basicConfig(level=INFO) on import
        root.handlers[:] = handlers
        root.setLevel(level)
    return MatMulNBitsQuantizer


def _weight_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if name == "uint8" else QuantType.QInt8


#: The node that dequantizes an int8 word-embedding table (see :func:`_quantize_embeddings`).
EMBEDDINGS_DEQUANTIZE_NODE = "relcomp/word_embeddings/DequantizeLinear"


def _quantize_embeddings(
    current: Path, target: Path, shape: tuple[int, int] | None, notes: list[str]
) -> Path:
    """int8 word embeddings, one scale per row (token): a ``DequantizeLinear`` (axis 0)
    feeds the table to whatever read it (the fused ``EmbedLayerNormalization`` or a
    ``Gather``), so the graph around it is unchanged.

    onnxruntime's own ``quantize_dynamic`` of the embedding node keeps one scale for
    the whole 30,522 × 384 table, which cost the 70 %-pruned reranker about 0.75
    nDCG@10 points; a scale per row keeps every token's vector to within half a step
    of its own range. ONNX Runtime folds the constant ``DequantizeLinear`` once, at
    load, when the session sets ``session.disable_quant_qdq`` (relcomp's sessions
    do); without it, it dequantizes the table on every call (≈ 10–20 ms here).
    """
    import onnx
    from onnx import numpy_helper

    graph = _load(current)
    tables = [
        init
        for init in graph.graph.initializer
        if shape is not None and tuple(init.dims) == tuple(shape)
    ]
    if len(tables) != 1:
        notes.append(
            f"embeddings: {len(tables)} tables of shape {shape} in the graph, not one; "
            "they stay fp32"
        )
        return current
    if not any(e.domain in ("", "ai.onnx") and e.version >= 13 for e in graph.opset_import):
        notes.append("embeddings: per-row int8 needs ONNX opset ≥ 13; they stay fp32")
        return current
    table = tables[0]
    weights = numpy_helper.to_array(table).astype(np.float32)
    absmax = np.abs(weights).max(axis=1)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    quantized = np.clip(np.round(weights / scale[:, None]), -127, 127).astype(np.int8)
    name = table.name
    graph.graph.initializer.remove(table)
    graph.graph.initializer.extend(
        [
            numpy_helper.from_array(quantized, f"{name}_int8"),
            numpy_helper.from_array(scale, f"{name}_scale"),
            numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{name}_zero_point"),
        ]
    )
    node = onnx.helper.make_node(
        "DequantizeLinear",
        [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"],
        [name],
        axis=0,
        name=EMBEDDINGS_DEQUANTIZE_NODE,
    )
    graph.graph.node.insert(0, node)
    _save(graph, target)
    notes.append(
        f"word embeddings int8 with one scale per row ({name}): outside the plan, which "
        "covers Linear layers only; ONNX Runtime dequantizes the table once at load with "
        "session.disable_quant_qdq=1 (relcomp sets it), on every call without"
    )
    return target


def _check_counts(
    model: Any,
    dynamic: Mapping[bool, list[str]],
    static: Mapping[bool, list[str]],
    int4: Mapping[int, list[str]],
    by_op: Mapping[str, str],
    notes: list[str],
) -> None:
    """Say so when the graph holds fewer quantized nodes than the plan asked for."""
    counts = op_counts(model)
    dynamic_nodes = {node for nodes in dynamic.values() for node in nodes}
    wanted_attention = sum(1 for node in dynamic_nodes if by_op.get(node) == "Attention")
    wanted_matmul = len(dynamic_nodes) - wanted_attention
    checks = (
        ("dynamic int8 MatMuls", wanted_matmul, counts.get("MatMulInteger", 0)),
        ("dynamic int8 Attention nodes", wanted_attention, counts.get("QAttention", 0)),
        (
            "static int8 MatMuls",
            len({node for nodes in static.values() for node in nodes}),
            counts.get("QLinearMatMul", 0),
        ),
        (
            "int4 MatMuls",
            len({node for nodes in int4.values() for node in nodes}),
            counts.get("MatMulNBits", 0),
        ),
    )
    for what, wanted, got in checks:
        if got < wanted:
            message = f"the plan asks for {wanted} {what}; onnxruntime's quantizer made {got}"
            notes.append(message)
            logger.warning("%s", message)
