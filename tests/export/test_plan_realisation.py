"""A plan's precisions and pruning are visible in the exported graph, node by node."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch

from relcomp.artifacts import ExportBundle
from relcomp.compression import PlanError, compress_, fake_quantize_int4, prune_physically
from relcomp.export import (
    EXPORT_BUNDLE_FILE,
    CompressionPlan,
    export_bundle,
    linear_nodes,
    module_of_node,
    op_counts,
)
from relcomp.models import load_model
from tests.export.conftest import GROUPS
from tests.fixtures import DOCUMENTS, QUERIES

PAIRS_Q = list(QUERIES)
PAIRS_D = list(DOCUMENTS[: len(QUERIES)])


def _graph(path):
    bundle = ExportBundle.load(path / EXPORT_BUNDLE_FILE)
    return bundle, onnx.load(str(path / bundle.onnx_file))


def _reference(tiny_model_path, family="minilm", kind="cross-encoder"):
    return load_model(tiny_model_path(family, kind, bias_std=0.1))


def test_module_of_node_reads_torch_scopes() -> None:
    assert module_of_node("/bert/encoder/layer.11/output/dense/MatMul") == (
        "bert.encoder.layer.11.output.dense"
    )
    assert module_of_node("/classifier/Gemm") == "classifier"
    assert module_of_node("MatMul_12") is None


def test_mixed_plan_counts_quantized_nodes(tiny_model_path, bundles) -> None:
    reference = _reference(tiny_model_path)
    layers = reference.layer_modules()
    entries = {
        "_default": "int8",
        layers[0].ffn_in: "int4(block_size=16)",
        layers[1].ffn_out: "int4(block_size=32)",
        layers[2].attention_output: "fp32",
        "classifier": "fp32",
        layers[1].query: "int8(per_channel=False)",
    }
    path = bundles("minilm", plan=entries)
    bundle, graph = _graph(path)
    counts = collections.Counter(op_counts(graph))
    linears = reference.named_linears()
    wanted = collections.Counter(
        {"int4": 2, "fp32": 2, "int8": len(linears) - 4}  # q/k/v + dense layers + pooler
    )
    realised = collections.Counter(label.split("(")[0] for label in bundle.modules.values())
    assert realised == wanted
    assert bundle.modules[layers[1].query] == "int8(per_channel=False)"
    # Layer 1's Q/K/V differ (per-tensor vs per-channel): attention fuses as
    # MultiHeadAttention and every int8 Linear is its own MatMulInteger.
    assert bundle.fusion["attention_operator"] == "MultiHeadAttention"
    assert counts["MatMulNBits"] == 2
    assert counts["MatMulInteger"] == wanted["int8"]
    assert counts.get("QAttention", 0) == 0
    # fp32 ones stay float MatMul / Gemm, under their own names
    float_nodes = linear_nodes(graph, linears)
    assert set(float_nodes) == {layers[2].attention_output, "classifier"}
    assert any("MultiHeadAttention" in note for note in bundle.notes)
    [int4_node] = bundle.nodes["int4(block_size=16)"]
    assert module_of_node(int4_node) == layers[0].ffn_in


def test_uniform_int8_packs_attention_into_qattention(tiny_model_path, bundles) -> None:
    reference = _reference(tiny_model_path)
    path = bundles("minilm", plan={"_default": "int8"})
    bundle, graph = _graph(path)
    counts = op_counts(graph)
    n_layers = len(reference.layer_modules())
    assert bundle.fusion["attention_operator"] == "Attention"
    assert counts["QAttention"] == n_layers
    # attention output, FFN in and out per layer, the pooler (a Gemm made MatMul), the classifier
    assert counts["MatMulInteger"] == 3 * n_layers + 2
    assert "MatMul" not in counts and "Gemm" not in counts
    assert bundle.size_bytes < 0.6 * bundle.fp32_size_bytes  # the embeddings stay float
    candidate = load_model(path)
    # int8 changes scores a little, not the ranking much
    got, expected = candidate.score(PAIRS_Q, PAIRS_D), reference.score(PAIRS_Q, PAIRS_D)
    assert np.abs(got - expected).max() < 0.2 * np.abs(expected).max() + 0.05


def _dequantize_nbits(graph, node):
    """The float weight (out × in) a MatMulNBits node holds: symmetric (zero point 8), signed scales."""
    from onnx import helper, numpy_helper

    initializers = {init.name: numpy_helper.to_array(init) for init in graph.graph.initializer}
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, block = attributes["K"], attributes["N"], attributes["block_size"]
    packed = initializers[node.input[1]].reshape(n, -1)
    scales = initializers[node.input[2]].reshape(n, -1)
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)[:, :k]
    steps = np.repeat(scales, block, axis=1)[:, :k]
    return (codes.astype(np.float32) - 8.0) * steps, steps


def test_int4_weights_are_the_plan_s_blocks(tiny_model_path, bundles) -> None:
    reference = _reference(tiny_model_path)
    entries = {"_default": "int4(block_size=16)"}
    path = bundles("minilm", plan=entries, int4_accuracy_level=None)
    _, graph = _graph(path)
    nodes = [node for node in graph.graph.node if node.op_type == "MatMulNBits"]
    assert len(nodes) == len(reference.named_linears())
    assert {dict((a.name, a.i) for a in node.attribute)["block_size"] for node in nodes} == {16}
    linears = reference.named_linears()
    for node in nodes:
        weight = linears[module_of_node(node.name)].weight.detach().numpy()
        dequantized, steps = _dequantize_nbits(graph, node)
        # relcomp's torch simulation uses onnxruntime's grid: the same int4 weights.
        simulated = fake_quantize_int4(torch.from_numpy(weight).float(), block_size=16).numpy()
        np.testing.assert_allclose(dequantized, simulated, rtol=1e-6, atol=1e-7)
        assert np.all(np.abs(dequantized - weight) <= np.abs(steps) + 1e-6)
    expected = reference.score(PAIRS_Q, PAIRS_D)
    with compress_(reference, entries):
        simulated_scores = reference.score(PAIRS_Q, PAIRS_D)
    exported_scores = load_model(path).score(PAIRS_Q, PAIRS_D)
    np.testing.assert_allclose(exported_scores, simulated_scores, rtol=1e-4, atol=1e-4)
    assert not np.allclose(exported_scores, expected, atol=1e-6)  # it is quantized


def test_static_int8_needs_and_uses_calibration(tiny_model_path, tmp_path) -> None:
    reference = _reference(tiny_model_path)
    layer = reference.layer_modules()[0]
    plan = CompressionPlan(
        reference.name, {layer.ffn_out: "int8(activations=True)", layer.ffn_in: "int8"}
    )
    with pytest.raises(PlanError, match="calibration pairs"):
        export_bundle(reference, tmp_path / "refused", plan=plan)
    assert not (tmp_path / "refused").exists()
    pairs = list(zip(QUERIES, DOCUMENTS, strict=False))
    bundle = export_bundle(reference, tmp_path / "static", plan=plan, calibration_pairs=pairs)
    graph = onnx.load(str(tmp_path / "static" / bundle.onnx_file))
    counts = op_counts(graph)
    assert counts["QLinearMatMul"] == 1 and counts["MatMulInteger"] == 1
    [static_node] = bundle.nodes["int8(per_channel=True, activations=True)"]
    assert module_of_node(static_node) == layer.ffn_out
    assert any("static int8" in note for note in bundle.notes)


def test_structurally_pruned_export_matches_the_pruned_torch_model(
    tiny_model_path, tmp_path
) -> None:
    reference = _reference(tiny_model_path)
    layers = reference.layer_modules()
    plan = CompressionPlan(
        reference.name,
        {
            layers[0].layer: "prune_heads(0,2)",
            layers[2].layer: "prune_heads(5)",
            layers[0].ffn_in: "prune_neurons(ratio=0.5)",
            layers[1].ffn_in: "prune_neurons(ratio=0.25)",
        },
    )
    pruned = prune_physically(reference, plan)
    bundle = export_bundle(reference, tmp_path / "pruned", plan=plan, parity_groups=GROUPS)
    candidate = load_model(tmp_path / "pruned")
    np.testing.assert_allclose(
        candidate.score(PAIRS_Q, PAIRS_D), pruned.score(PAIRS_Q, PAIRS_D), atol=2e-5, rtol=1e-4
    )
    graph = onnx.load(str(tmp_path / "pruned" / bundle.onnx_file))
    found = linear_nodes(graph, pruned.named_linears())
    assert layers[0].ffn_in in found  # the pruned (narrower) Linear is what the graph holds
    assert (
        bundle.fp32_size_bytes
        < 0.97
        * ExportBundle.load(_fp32(tiny_model_path, tmp_path) / EXPORT_BUNDLE_FILE).fp32_size_bytes
    )
    assert any("structured pruning" in note and "FFN widths" in note for note in bundle.notes)
    # parity is measured against the unpruned torch model, as shipped
    parity = bundle.parity
    assert parity["n_queries"] == len(GROUPS) and parity["max_abs_diff"] > 0
    assert (tmp_path / "pruned" / "parity.json").is_file()
    assert (tmp_path / "pruned" / "plan.json").is_file()


def _fp32(tiny_model_path, tmp_path):
    out = tmp_path / "fp32"
    if not out.exists():
        export_bundle(_reference(tiny_model_path), out)
    return out


def test_torch_side_actions_are_realised_and_noted(tiny_model_path, tmp_path) -> None:
    reference = _reference(tiny_model_path)
    layers = reference.layer_modules()
    entries = {
        layers[0].query: "prune_weights(ratio=0.5)",
        layers[1].ffn_in: "low_rank(rank=8)",
        layers[2].ffn_out: "sparsify(threshold=0.05)",
        layers[0].value: "fp16",
    }
    bundle = export_bundle(
        reference, tmp_path / "torch-side", plan=CompressionPlan(reference.name, entries)
    )
    candidate = load_model(tmp_path / "torch-side")
    with compress_(reference, entries):
        simulated = reference.score(PAIRS_Q, PAIRS_D)
    np.testing.assert_allclose(candidate.score(PAIRS_Q, PAIRS_D), simulated, atol=1e-4, rtol=1e-4)
    text = " ".join(bundle.notes)
    for action in ("prune_weights", "low_rank", "sparsify", "fp16"):
        assert action in text
    assert "no speed" in text
    assert reference.variant == "fp32"  # the torch-side edits were undone


def test_low_rank_is_factorised_in_the_graph_with_its_other_actions(
    tiny_model_path, tmp_path
) -> None:
    reference = _reference(tiny_model_path)
    layers = reference.layer_modules()
    plan = CompressionPlan(
        reference.name,
        [
            (layers[0].ffn_in, "low_rank(rank=8)"),
            (layers[0].ffn_in, "int8"),
            (layers[0].ffn_in, "sparsify(threshold=0.05)"),
            (layers[1].ffn_out, "low_rank(rank=4)"),
        ],
    )
    bundle = export_bundle(reference, tmp_path / "factorised", plan=plan)
    _, graph = _graph(tmp_path / "factorised")
    scopes = collections.Counter(
        module_of_node(node.name)
        for node in graph.graph.node
        if node.op_type in ("MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul")
    )
    for module in (layers[0].ffn_in, layers[1].ffn_out):
        assert scopes[module + ".down"] == scopes[module + ".up"] == 1
        assert scopes[module] == 0
    # the int8 moved to both factors, in the graph and in the bundle's record
    for factor in ("down", "up"):
        assert bundle.modules[f"{layers[0].ffn_in}.{factor}"].startswith("int8")
        assert bundle.modules[f"{layers[1].ffn_out}.{factor}"] == "fp32"
    text = " ".join(bundle.notes)
    assert "factorised for real" in text and "rank 4, 8" in text
    candidate = load_model(tmp_path / "factorised")
    with compress_(reference, plan):
        simulated = reference.score(PAIRS_Q, PAIRS_D)
    np.testing.assert_allclose(candidate.score(PAIRS_Q, PAIRS_D), simulated, atol=2e-2)
    fp32 = _fp32(tiny_model_path, tmp_path)
    assert bundle.fp32_size_bytes < ExportBundle.load(fp32 / EXPORT_BUNDLE_FILE).fp32_size_bytes


def test_r_sparse_low_rank_path_is_traced_into_the_graph(tiny_model_path, tmp_path) -> None:
    reference = _reference(tiny_model_path)
    layers = reference.layer_modules()
    plan = CompressionPlan(
        reference.name,
        [(layers[1].ffn_in, "sparsify(threshold=0.2, rank=4)"), (layers[1].ffn_in, "int8")],
    )
    bundle = export_bundle(reference, tmp_path / "r-sparse", plan=plan)
    with compress_(reference, plan):
        simulated = reference.score(PAIRS_Q, PAIRS_D)
    with compress_(reference, {layers[1].ffn_in: "sparsify(threshold=0.2)"}):
        teal = reference.score(PAIRS_Q, PAIRS_D)
    exported = load_model(tmp_path / "r-sparse").score(PAIRS_Q, PAIRS_D)
    np.testing.assert_allclose(exported, simulated, atol=2e-2)
    assert np.abs(exported - simulated).max() < np.abs(teal - simulated).max()
    assert bundle.modules[layers[1].ffn_in].startswith("int8")
    assert any("R-Sparse's low-rank path on 1 of them" in note for note in bundle.notes)


def test_a_plan_naming_an_unknown_module_writes_nothing(tiny_model_path, tmp_path) -> None:
    reference = _reference(tiny_model_path)
    plan = CompressionPlan(reference.name, {"bert.encoder.layer.9.output.dense": "int8"})
    with pytest.raises(PlanError, match="unknown module"):
        export_bundle(reference, tmp_path / "out", plan=plan)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []
