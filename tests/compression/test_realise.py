"""compress_: each action changes the model as it says, and remove() restores it bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relcomp.artifacts import CompressionPlan
from relcomp.compression import (
    ACTIONS,
    HANDLERS,
    active_compression,
    calibrate,
    calibration_features,
    collect_activation_statistics,
    compress_,
    fake_quantize_int4,
    fake_quantize_int8,
)
from tests.fixtures import DOCUMENTS, QUERIES

PAIRS_Q = [QUERIES[0], QUERIES[1], QUERIES[2], QUERIES[4]]
PAIRS_D = [DOCUMENTS[0], DOCUMENTS[2], DOCUMENTS[3], DOCUMENTS[5]]


def outputs(model) -> np.ndarray:
    """Scores for a cross-encoder, embeddings for a bi-encoder (more numbers to compare)."""
    if model.kind == "cross-encoder":
        return model.score(PAIRS_Q, PAIRS_D, show_progress_bar=False)
    return model.encode([*PAIRS_Q, *PAIRS_D], show_progress_bar=False)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.model.state_dict().items()}


def every_action_plan(model) -> CompressionPlan:
    first, second = model.layer_modules()
    return CompressionPlan(
        model.name,
        [
            ("_default", "int8(activations=True)"),
            (r"re:.*layer\.0\..*", "int4(block_size=16)"),
            (first.value, "int8(per_channel=False)"),
            (second.ffn_out, "low_rank(rank=8)"),
            (second.query, "prune_weights(ratio=0.5)"),
            (second.key, "fp16"),
            (second.value, "fp32"),
            ("_default", "sparsify(threshold=0.05)"),
            (first.layer, "prune_heads(1)"),
            (second.layer, "prune_neurons(ratio=0.25)"),
        ],
    )


def test_every_action_type_has_a_handler():
    assert HANDLERS.names() == ACTIONS.names()


@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet"])
def test_remove_restores_outputs_bit_for_bit(tiny_model, family, kind):
    model = tiny_model(family, kind)
    before, weights = outputs(model), state(model)
    key = model.cache_key
    batches = calibration_features(model, PAIRS_Q, PAIRS_D)
    statistics = collect_activation_statistics(model, batches, show_progress_bar=False)
    with compress_(model, every_action_plan(model), statistics=statistics) as handle:
        assert active_compression(model) is handle
        assert model.variant == handle.variant and model.variant.startswith("fp32|plan-")
        assert model.cache_key != key
        during = outputs(model)
        assert not np.allclose(during, before, atol=1e-3)
    assert model.variant == "fp32" and model.cache_key == key
    assert active_compression(model) is None
    np.testing.assert_array_equal(outputs(model), before)
    for name, tensor in model.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    assert all(not m._forward_pre_hooks for m in model.model.modules())
    handle.remove()  # idempotent
    np.testing.assert_array_equal(outputs(model), before)


@pytest.mark.parametrize(
    "action",
    [
        "fp16",
        "int8(per_channel=True)",
        "int8(per_channel=False)",
        "int8(per_channel=True, activations=True)",
        "int4(block_size=16)",
        "prune_weights(ratio=0.5)",
        "sparsify(threshold=0.5)",
        "low_rank(rank=4)",
    ],
)
def test_each_linear_action_alone_is_reversible(tiny_model, action):
    model = tiny_model("bert")
    before = outputs(model)
    scales = {name: 0.05 for name in model.named_linears()}
    handle = compress_(model, {"_default": action}, activation_scales=scales)
    changed = outputs(model)
    handle.remove()
    assert not np.array_equal(changed, before)
    np.testing.assert_array_equal(outputs(model), before)


@pytest.mark.parametrize("action", ["prune_heads(0,2)", "prune_neurons(ratio=0.5)"])
def test_each_structural_action_alone_is_reversible(tiny_model, action):
    model = tiny_model("bert", "bi-encoder")
    before = outputs(model)
    with compress_(model, {"_default": action}):
        assert not np.array_equal(outputs(model), before)
    np.testing.assert_array_equal(outputs(model), before)


def relative_error(model, action) -> float:
    names = [n for n in model.named_linears() if "encoder" in n]
    original = {n: model.model.get_submodule(n).weight.detach().clone() for n in names}
    with compress_(model, {"_default": action}):
        errors = [
            float(
                (model.model.get_submodule(n).weight.detach() - original[n]).norm()
                / original[n].norm()
            )
            for n in names
        ]
    return max(errors)


def test_int8_error_is_small_and_int4_larger(tiny_model):
    model = tiny_model("bert")
    fp16 = relative_error(model, "fp16")
    int8 = relative_error(model, "int8")
    int8_tensor = relative_error(model, "int8(per_channel=False)")
    int4 = relative_error(model, "int4(block_size=16)")
    assert fp16 < 1e-3 < int8 < 0.01
    assert int8 <= int8_tensor
    assert 5 * int8 < int4 < 0.15


def test_fake_quantizers_use_the_grid_they_promise():
    torch.manual_seed(0)
    weight = torch.randn(8, 48)
    int8 = fake_quantize_int8(weight)
    # onnxruntime's symmetric int8 grid: scale = max|w| / 127.5, levels -128..127
    steps = int8 / (weight.abs().amax(1, keepdim=True) / 127.5)
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    assert steps.min() >= -128 - 1e-3 and steps.max() <= 127 + 1e-3
    int4 = fake_quantize_int4(weight, block_size=16)
    for block in range(3):
        part = slice(16 * block, 16 * (block + 1))
        # ONNX Runtime's MatMulNBits grid: scale = (value of largest magnitude) / -8
        block_weight = weight[:, part]
        extreme = block_weight.gather(1, block_weight.abs().argmax(1, keepdim=True))
        levels = int4[:, part] / (extreme / -8)
        assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert levels.min() >= -8 - 1e-4 and levels.max() <= 7 + 1e-4
        assert torch.allclose(levels.min(1).values, torch.full((8,), -8.0))
    # columns restricts blocks to the kept inputs, as physical pruning would
    keep = torch.ones(48, dtype=torch.bool)
    keep[::3] = False
    pruned = weight.clone()
    pruned[:, ~keep] = 0
    masked = fake_quantize_int4(pruned, 16, columns=keep)
    assert torch.equal(masked[:, keep], fake_quantize_int4(weight[:, keep], 16))
    assert torch.equal(masked[:, ~keep], torch.zeros(8, 16))


def capture_input(model, name):
    captured = []
    module = model.model.get_submodule(name)
    hook = module.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
    return captured, hook


def test_sparsify_zeroes_small_inputs_and_statistics_predict_how_many(tiny_model):
    model = tiny_model("bert")
    name = model.layer_modules()[1].ffn_in
    batches = calibration_features(model, PAIRS_Q, PAIRS_D)
    statistics = collect_activation_statistics(model, batches, [name], show_progress_bar=False)
    threshold = statistics[name].quantile(0.4)
    with compress_(model, {name: f"sparsify(threshold={threshold})"}):
        captured, hook = capture_input(model, name)
        model.model(**batches[0])
        hook.remove()
    x = captured[0][batches[0]["attention_mask"].bool()]
    nonzero = x[x != 0]
    assert nonzero.abs().min() >= threshold
    assert float((x == 0).float().mean()) == pytest.approx(0.4, abs=0.02)
    plan = CompressionPlan(model.name, {name: f"sparsify(threshold={threshold})"})
    estimate = plan.estimate(model, statistics)
    share = model.model.get_submodule(name).weight.numel() / sum(
        s.stored_weights for s in estimate.linears.values()
    )
    assert estimate.activation_sparsity == pytest.approx(0.4 * share, rel=0.05)
    assert plan.estimate(model).activation_sparsity is None  # needs statistics to tell


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("threshold", [0.12, 1 / 3, 0.5123456789, 2.0, 1e-3, 0.0])
def test_the_sparsity_mask_is_exactly_strict_less_than_the_threshold(dtype, threshold):
    from relcomp.compression.torch_realise import _drop_small

    at = torch.tensor(threshold, dtype=dtype)
    edges = [at, torch.nextafter(at, torch.zeros_like(at)), torch.nextafter(at, at + 1)]
    x = torch.cat(
        [
            torch.randn(2000, generator=torch.Generator().manual_seed(0)).to(dtype),
            *(torch.stack([e, -e]) for e in edges),
            torch.tensor([0.0, -0.0, float("inf"), float("-inf")], dtype=dtype),
        ]
    )
    expected = torch.where(x.abs() < threshold, torch.zeros_like(x), x)
    assert torch.equal(_drop_small(x, threshold), expected)
    assert _drop_small(x, threshold).dtype == dtype


def test_activation_quantization_rounds_to_the_calibrated_grid(tiny_model):
    model = tiny_model("bert")
    name = model.layer_modules()[0].ffn_out
    batches = calibration_features(model, PAIRS_Q, PAIRS_D)
    scales = calibrate(model, batches, [name], percentile=99.0)
    scale = scales[name]
    with compress_(model, {name: "int8(activations=True)"}, activation_scales=scales):
        captured, hook = capture_input(model, name)
        model.model(**batches[0])
        hook.remove()
    levels = captured[0] / scale
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.abs().max() == pytest.approx(127)  # the top 1 % is clipped


def test_prune_weights_uses_wanda_scores_when_given_statistics(tiny_model):
    model = tiny_model("bert")
    name = model.layer_modules()[0].ffn_out
    linear = model.model.get_submodule(name)
    original = linear.weight.detach().clone()
    batches = calibration_features(model, PAIRS_Q, PAIRS_D)
    statistics = collect_activation_statistics(model, batches, [name], show_progress_bar=False)
    norm = statistics[name].channel_norm
    with compress_(model, {name: "prune_weights(ratio=0.25)"}, statistics=statistics):
        wanda = linear.weight.detach().clone()
    with compress_(model, {name: "prune_weights(ratio=0.25)"}):
        magnitude = linear.weight.detach().clone()
    for pruned, score in ((wanda, original.abs() * norm), (magnitude, original.abs())):
        dropped = pruned == 0
        assert (dropped.sum(1) == 16).all()  # 25 % of 64 inputs in every row
        kept_min = torch.where(dropped, math.inf, score).amin(1)
        dropped_max = torch.where(dropped, score, -math.inf).amax(1)
        assert (dropped_max <= kept_min).all()
    assert not torch.equal(wanda == 0, magnitude == 0)


def test_low_rank_is_the_truncated_svd(tiny_model):
    model = tiny_model("bert")
    name = model.layer_modules()[0].ffn_in
    linear = model.model.get_submodule(name)
    original = linear.weight.detach().double()
    u, s, vh = torch.linalg.svd(original, full_matrices=False)
    best = (u[:, :5] * s[:5]) @ vh[:5]
    with compress_(model, {name: "low_rank(rank=5)"}):
        singular = torch.linalg.svdvals(linear.weight.detach().double())
        assert (singular[5:] < 1e-5).all() and (singular[:5] > 0.1).all()
        assert torch.allclose(linear.weight.double(), best, atol=1e-5)


def test_statistics_leave_padding_out(tiny_model):
    model = tiny_model("distilbert", "bi-encoder")
    batches = calibration_features(model, PAIRS_Q, PAIRS_D, batch_size=8)
    layer = model.layer_modules()[0]
    statistics = collect_activation_statistics(
        model, batches, [layer.query, layer.ffn_out], show_progress_bar=False
    )
    tokens = int(sum(b["attention_mask"].sum() for b in batches))
    assert statistics[layer.query].tokens == tokens
    assert statistics[layer.query].count == tokens * 32
    # channel norms equal a direct computation over the non-padding tokens
    captured, hook = capture_input(model, layer.ffn_out)
    with torch.inference_mode():
        for batch in batches:
            model.model(**batch)
    hook.remove()
    x = torch.cat([c[b["attention_mask"].bool()] for c, b in zip(captured, batches, strict=True)])
    assert torch.allclose(statistics[layer.ffn_out].channel_norm, x.norm(dim=0), rtol=1e-5)
    magnitudes = x.abs().flatten().double()
    for q in (0.1, 0.5, 0.9, 0.999):
        exact = float(torch.quantile(magnitudes, q))
        assert statistics[layer.ffn_out].quantile(q) == pytest.approx(exact, rel=0.03)
    assert statistics[layer.ffn_out].share_below(float(magnitudes.median())) == pytest.approx(
        0.5, abs=0.01
    )
    assert statistics[layer.ffn_out].quantile(1.0) == pytest.approx(float(magnitudes.max()))


def test_variant_depends_on_calibration(tiny_model):
    model = tiny_model("bert")
    plan = {"_default": "int8(activations=True)"}
    names = list(model.named_linears())
    with compress_(model, plan, activation_scales=dict.fromkeys(names, 0.05)) as one:
        pass
    with compress_(model, plan, activation_scales=dict.fromkeys(names, 0.1)) as two:
        pass
    with compress_(model, plan, activation_scales=dict.fromkeys(names, 0.05)) as three:
        pass
    assert one.variant != two.variant and one.variant == three.variant
