"""Quantization-aware recovery: the torch twin rounds as ONNX Runtime's int8 graph does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from relcomp.artifacts import CompressionPlan, RecoveryLog
from relcomp.compression import PlanError, fake_quantize_dynamic_uint8
from relcomp.export import export_bundle
from relcomp.models import load_model
from relcomp.recovery import QuantizationAware, recovery_data
from tests.fixtures import DOCUMENTS, QUERIES
from tests.recovery.test_recovery import pruned_student, run, write_collection

INT8 = {"_default": "int8"}


def plan_for(model: Any, entries: dict[str, str] = INT8) -> CompressionPlan:
    return CompressionPlan(model.name, tuple(entries.items()))


def test_dynamic_rounding_is_onnx_dynamicquantizelinear() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "scale", "zero"])
    graph = helper.make_graph(
        [node],
        "dql",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [
            helper.make_tensor_value_info("y", TensorProto.UINT8, [None]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("zero", TensorProto.UINT8, []),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString())
    for seed, shift in enumerate((-3.0, 0.0, 2.5)):
        x = np.random.default_rng(seed).normal(shift, 2.0, 4096).astype(np.float32)
        y, scale, zero = session.run(None, {"x": x})
        onnx_values = (y.astype(np.float32) - np.float32(zero)) * scale
        ours = fake_quantize_dynamic_uint8(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(ours, onnx_values)


@pytest.mark.parametrize(
    "module",
    [
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.1.output.dense",
        "classifier",
    ],
)
def test_the_twin_rounds_like_the_int8_bundle(tiny_model: Any, tmp_path: Path, module: str) -> None:
    # One quantized Linear at a time: its twin matches the exported MatMulInteger to
    # float rounding. (With every Linear quantized the two still agree in law, not to
    # the bit: a 1e-7 difference that moves one value across a rounding boundary
    # becomes a whole uint8 step, and the next layers' rounding carries it on.)
    model = tiny_model("minilm")
    queries, documents = list(QUERIES[:4]) * 2, list(DOCUMENTS[:8])
    plan = plan_for(model, {module: "int8"})
    export_bundle(model, tmp_path / "bundle", plan=plan, optimize=False)
    onnx_scores = load_model(tmp_path / "bundle").score(queries, documents)
    fp32 = model.score(queries, documents)
    with QuantizationAware(model, plan):
        twin = model.score(queries, documents)
    assert np.abs(fp32 - onnx_scores).max() > 1e-3  # the rounding is visible …
    np.testing.assert_allclose(twin, onnx_scores, atol=1e-5)  # … and the twin has it


def test_removal_restores_the_model_and_gradients_reach_the_fp32_weights(
    tiny_model: Any,
) -> None:
    model = tiny_model("minilm")
    weights = {k: v.clone() for k, v in model.model.state_dict().items()}
    before = model.score(list(QUERIES[:3]), list(DOCUMENTS[:3]))
    aware = QuantizationAware(model, plan_for(model))
    linear = next(m for m in model.model.modules() if isinstance(m, torch.nn.Linear))
    assert parametrize.is_parametrized(linear, "weight")
    original = linear.parametrizations.weight.original
    features = model.tokenize(list(QUERIES[:2]), list(DOCUMENTS[:2]))
    model.forward_scores(features).sum().backward()
    assert original.grad is not None and original.grad.abs().sum() > 0
    aware.remove()
    assert not any(parametrize.is_parametrized(m) for m in model.model.modules())
    state = model.model.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    np.testing.assert_array_equal(model.score(list(QUERIES[:3]), list(DOCUMENTS[:3])), before)


def test_plans_it_cannot_simulate_are_refused(tiny_model: Any) -> None:
    model = tiny_model("minilm")
    with pytest.raises(PlanError, match="dynamic int8 only"):
        QuantizationAware(model, plan_for(model, {"_default": "int8(activations=True)"}))
    with pytest.raises(PlanError, match="precision only"):
        QuantizationAware(model, plan_for(model, {"_default": "prune_neurons(ratio=0.5)"}))


def test_quantization_aware_recovery_trains_the_fp32_weights_through_int8(
    tiny_model: Any, tmp_path: Path
) -> None:
    teacher = tiny_model("minilm")
    collection = write_collection(tmp_path / "collection")
    student = pruned_student(teacher)
    data = recovery_data(teacher, collection, candidates=4, pseudo=4)
    plan = plan_for(student)
    recovered, log = run(
        student, teacher, data, lr=1e-3, temperature=0.1, checkpoint_every=10, quantize=plan
    )
    # the loss measured on held-out groups is the quantized twin's, and it falls
    first, last = log.checkpoints[0]["heldout_loss"], log.checkpoints[-1]["heldout_loss"]
    assert last < 0.75 * first, log.checkpoints
    assert CompressionPlan.from_json(json.dumps(log.quantization_aware)) == plan
    assert RecoveryLog.from_json(log.to_json()) == log
    # what comes back is an ordinary fp32 model: no parametrization left on it
    assert not any(parametrize.is_parametrized(m) for m in recovered.model.modules())
    plain, _ = run(student, teacher, data, lr=1e-3, temperature=0.1, checkpoint_every=10)
    assert not all(
        torch.equal(a, b)
        for a, b in zip(recovered.model.parameters(), plain.model.parameters(), strict=True)
    )
    with pytest.raises(PlanError, match="dynamic int8 only"):
        run(
            student,
            teacher,
            data,
            quantize=plan_for(student, {"_default": "int8(activations=True)"}),
        )
