"""Clipped channel-wise activation quantization (LRP-QViT) for post-LayerNorm inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relcomp.artifacts import CompressionPlan
from relcomp.compression import (
    PlanError,
    calibration_features,
    collect_activation_statistics,
    compress_,
    parse_action,
)
from relcomp.compression.planners import make_plan
from relcomp.export import export_bundle
from tests.compression.test_realise import PAIRS_D, PAIRS_Q, capture_input, outputs


@pytest.fixture
def outlier_model(tiny_model):
    """A tiny BERT whose first layer's attention LayerNorm has one outlier channel, as
    BERT-family models do: it sets the per-tensor step of every other channel."""
    model = tiny_model("bert")
    layer = model.layer_modules()[0]
    norm = model.model.get_submodule(
        layer.ffn_in.replace("intermediate.dense", "attention.output.LayerNorm")
    )
    with torch.no_grad():
        norm.weight[3] *= 40.0
    batches = calibration_features(model, PAIRS_Q, PAIRS_D)
    statistics = collect_activation_statistics(model, batches, show_progress_bar=False)
    return model, layer.ffn_in, batches, statistics


def _output_error(model, name, batches, statistics, action):
    module = model.model.get_submodule(name)
    seen = []
    hook = module.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    model.model(**batches[0])
    with compress_(model, {name: action}, statistics=statistics):
        model.model(**batches[0])
    hook.remove()
    dense, quantized = seen
    return float((quantized - dense).norm() / dense.norm())


def test_each_channel_has_its_own_grid(outlier_model):
    model, name, batches, statistics = outlier_model
    with compress_(
        model, {name: "int8(activations=True, channelwise=True)"}, statistics=statistics
    ):
        captured, hook = capture_input(model, name)
        model.model(**batches[0])
        hook.remove()
    x = captured[0][batches[0]["attention_mask"].bool()]
    scales = statistics[name].channel_ranges() / 127
    levels = x / scales
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    # min-max per channel over the calibration data: every channel reaches its own ±127
    reached = levels.abs().amax(0)
    assert (reached <= 127 + 1e-3).all() and (reached > 120).float().mean() > 0.5


def test_channelwise_beats_per_tensor_on_an_outlier_channel(outlier_model):
    model, name, batches, statistics = outlier_model
    per_tensor = _output_error(model, name, batches, statistics, "int8(activations=True)")
    channelwise = _output_error(
        model, name, batches, statistics, "int8(activations=True, channelwise=True)"
    )
    assert channelwise < per_tensor / 3


def test_channelwise_needs_statistics_and_restores_the_model(outlier_model):
    model, name, _, statistics = outlier_model
    action = "int8(activations=True, channelwise=True)"
    with pytest.raises(PlanError, match="channelwise=True\\) needs activation statistics"):
        compress_(model, {name: action})
    before = outputs(model)
    with compress_(model, {name: action}, statistics=statistics) as handle:
        assert not np.array_equal(outputs(model), before)
        variant = handle.variant
    # the clip changes the scales, so the variant that caches key on
    with compress_(model, {name: action}, statistics=statistics, channel_clip=2.0) as other:
        assert other.variant != variant
    np.testing.assert_array_equal(outputs(model), before)


def test_planner_quantizes_int8_inputs_channelwise_after_layer_norms(outlier_model):
    model, _, _, statistics = outlier_model
    plan = make_plan(
        model,
        "mixed-precision",
        {"bits_per_weight": 10},
        importance="uniform",
        ladder=("int8",),  # every Linear int8, whatever its scales cost on 32-wide rows
        activations=True,
    )
    assert plan.method == "mixed-precision/uniform+a8"
    actions = {m: parse_action(a) for m, a in plan.entries}
    for layer in model.layer_modules():
        for name in (layer.query, layer.key, layer.value, layer.ffn_in):
            assert actions[name].activations and actions[name].channelwise, name
        for name in (layer.attention_output, layer.ffn_out):
            assert actions[name].activations and not actions[name].channelwise, name
    with compress_(model, plan, statistics=statistics):
        assert np.isfinite(outputs(model)).all()
    weight_only = make_plan(
        model, "mixed-precision", {"bits_per_weight": 10}, importance="uniform", ladder=("int8",)
    )
    assert {a for _, a in weight_only.entries} == {"int8(per_channel=True)"}


def test_export_refuses_channelwise_and_writes_nothing(outlier_model, tmp_path):
    model, name, _, _ = outlier_model
    plan = CompressionPlan(model.name, {name: "int8(activations=True, channelwise=True)"})
    with pytest.raises(PlanError, match="simulated in torch only"):
        export_bundle(
            model,
            tmp_path / "out",
            plan=plan,
            calibration_pairs=list(zip(PAIRS_Q, PAIRS_D, strict=True)),
        )
    assert not (tmp_path / "out").exists()
