"""factorise_physically: low_rank as two real Linears, computing what compress_ simulates."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from relcomp.artifacts import CompressionPlan
from relcomp.compression import (
    LowRankLinear,
    PlanError,
    compress_,
    factorise_physically,
    parameter_count,
    prune_physically,
)
from relcomp.export.convert import export_onnx
from tests.compression.test_realise import outputs


def ffn_plan(model, action: str = "low_rank(rank=8)") -> CompressionPlan:
    return CompressionPlan(model.name, [(layer.ffn_in, action) for layer in model.layer_modules()])


@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
@pytest.mark.parametrize("precision", [None, "int8", "int4(block_size=16)", "fp16"])
def test_factorised_model_computes_what_compress_simulates(tiny_model, kind, precision):
    model = tiny_model("bert", kind)
    plan = ffn_plan(model)
    if precision is not None:
        plan = CompressionPlan(
            model.name, [*plan.entries, *((m, precision) for m, _ in plan.entries)]
        )
    with compress_(model, plan):
        simulated = outputs(model)
    factorised = factorise_physically(model, plan)
    np.testing.assert_allclose(outputs(factorised), simulated, atol=2e-5, rtol=1e-4)
    assert factorised.cache_key != model.cache_key
    assert "factorised-" in factorised.variant


def test_factorising_removes_weights_for_real(tiny_model):
    model = tiny_model("bert")
    factorised = factorise_physically(model, ffn_plan(model))
    layers = model.layer_modules()
    replaced = factorised.model.get_submodule(layers[0].ffn_in)
    assert isinstance(replaced, LowRankLinear) and replaced.rank == 8
    rows, columns = replaced.out_features, replaced.in_features  # 64 × 32
    saved = len(layers) * (rows * columns - 8 * (rows + columns))
    assert parameter_count(model) - parameter_count(factorised) == saved
    # the original is untouched
    assert type(model.model.get_submodule(layers[0].ffn_in)).__name__ == "Linear"


def test_factorise_after_physical_pruning_keeps_names(tiny_model):
    model = tiny_model("bert", "bi-encoder")
    layers = model.layer_modules()
    plan = CompressionPlan(
        model.name,
        [
            ("_default", "prune_neurons(ratio=0.5)"),
            *((layer.ffn_out, "low_rank(rank=4)") for layer in layers),
        ],
    )
    with compress_(model, plan):
        simulated = outputs(model)
    smaller = factorise_physically(prune_physically(model, plan), plan)
    np.testing.assert_allclose(outputs(smaller), simulated, atol=2e-5, rtol=1e-4)
    assert smaller.model.get_submodule(layers[0].ffn_out).in_features == 32


def test_factorise_refuses_what_it_cannot_do(tiny_model):
    model = tiny_model("bert")
    with pytest.raises(PlanError, match="no low_rank entry"):
        factorise_physically(model, CompressionPlan(model.name, {"_default": "int8"}))
    with (
        compress_(model, {"_default": "int8"}),
        pytest.raises(PlanError, match="compressed in place"),
    ):
        factorise_physically(model, ffn_plan(model))


def test_factorised_model_exports_two_matmuls_and_matches_torch(tiny_model, tmp_path):
    model = tiny_model("bert")
    factorised = factorise_physically(model, ffn_plan(model, "low_rank(rank=4)"))
    paths = {}
    for name, candidate in (("dense", model), ("factorised", factorised)):
        paths[name] = tmp_path / f"{name}.onnx"
        export_onnx(candidate, paths[name], exporter="torch")
    counts = {
        name: sum(node.op_type in ("MatMul", "Gemm") for node in onnx.load(path).graph.node)
        for name, path in paths.items()
    }
    assert counts["factorised"] == counts["dense"] + len(model.layer_modules())
    assert paths["factorised"].stat().st_size < paths["dense"].stat().st_size
    batch = factorised.tokenizer(
        ["what is a cat", "what causes rain"],
        ["A cat is a small animal.", "Rain falls from clouds."],
        padding=True,
        return_tensors="np",
    )
    session = ort.InferenceSession(str(paths["factorised"]), providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
    (logits,) = session.run(["logits"], feeds)
    expected = factorised.score(
        ["what is a cat", "what causes rain"],
        ["A cat is a small animal.", "Rain falls from clouds."],
        show_progress_bar=False,
    )
    np.testing.assert_allclose(logits.reshape(-1), expected, atol=1e-4)
