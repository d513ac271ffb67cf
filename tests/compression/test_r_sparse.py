"""R-Sparse: small inputs through a low-rank weight instead of dropped; planned at equal compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relcomp.artifacts import CompressionPlan
from relcomp.compression import (
    PlanError,
    Sparsify,
    calibration_features,
    collect_activation_statistics,
    compress_,
    estimate_size,
    parse_action,
)
from relcomp.compression.importance import importance_scores
from relcomp.compression.planners import make_plan, r_sparse_plan, sparsify_plan
from relcomp.compression.size import weight_bytes
from tests.compression.test_realise import PAIRS_D, PAIRS_Q, outputs


def _module_io(model, name, batch):
    """The input of Linear ``name`` before any hook, and its output after all of them."""
    seen = {}
    module = model.model.get_submodule(name)
    handles = [
        module.register_forward_pre_hook(
            lambda m, args: seen.update(x=args[0].detach()), prepend=True
        ),
        module.register_forward_hook(lambda m, args, output: seen.update(y=output.detach())),
    ]
    try:
        model.model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return seen["x"], seen["y"]


@pytest.fixture
def ffn(tiny_model):
    model = tiny_model("bert")
    name = model.layer_modules()[1].ffn_in
    batches = calibration_features(model, PAIRS_Q, PAIRS_D)
    statistics = collect_activation_statistics(model, batches, show_progress_bar=False)
    return model, name, batches, statistics


def test_action_string_round_trips_and_rejects_a_bad_rank():
    action = parse_action("sparsify(threshold=0.2, rank=8)")
    assert action == Sparsify(0.2, rank=8)
    assert parse_action(str(action)) == action
    assert str(parse_action("sparsify(threshold=0.2)")) == "sparsify(threshold=0.2)"
    with pytest.raises(PlanError, match="rank must be at least 1, got 0"):
        parse_action("sparsify(threshold=0.2, rank=0)")
    with pytest.raises(PlanError, match="rank must be an integer"):
        parse_action("sparsify(threshold=0.2, rank=2.5)")


def test_output_is_sparse_product_plus_low_rank_residual(ffn):
    """Against an independent float64 computation of ``W·S(x) + L_r(W)·(x − S(x)) + b``."""
    model, name, batches, statistics = ffn
    linear = model.model.get_submodule(name)
    weight, bias = linear.weight.detach().double(), linear.bias.detach().double()
    threshold = statistics[name].quantile(0.5)
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    low_rank = (u[:, :4] * s[:4]) @ vh[:4]
    with compress_(model, {name: f"sparsify(threshold={threshold}, rank=4)"}):
        x, y = _module_io(model, name, batches[0])
    x = x.double()
    large = torch.where(x.abs() < threshold, torch.zeros_like(x), x)
    expected = large @ weight.T + (x - large) @ low_rank.T + bias
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)


def test_full_rank_keeps_the_output_and_any_rank_beats_dropping(ffn):
    model, name, batches, statistics = ffn
    linear = model.model.get_submodule(name)
    threshold = statistics[name].quantile(0.6)
    _, dense = _module_io(model, name, batches[0])
    full = min(linear.weight.shape)
    with compress_(model, {name: f"sparsify(threshold={threshold}, rank={full})"}):
        _, exact = _module_io(model, name, batches[0])
    torch.testing.assert_close(exact, dense, atol=1e-5, rtol=1e-4)
    errors = {}
    for rank in (None, 2, 8):
        action = Sparsify(threshold, rank=rank)
        with compress_(model, {name: str(action)}):
            _, y = _module_io(model, name, batches[0])
        errors[rank] = float((y - dense).norm())
    assert errors[8] < errors[2] < errors[None]


def test_r_sparse_is_reversible_and_leaves_no_hook(tiny_model):
    model = tiny_model("bert", "bi-encoder")
    before = outputs(model)
    with compress_(model, {"_default": "sparsify(threshold=0.3, rank=3)"}):
        assert not np.array_equal(outputs(model), before)
    np.testing.assert_array_equal(outputs(model), before)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.model.modules())


def test_factors_take_the_module_precision(ffn):
    """Under int8 the low-rank path uses int8 factors: its output moves, but only a little."""
    model, name, batches, statistics = ffn
    threshold = statistics[name].quantile(0.5)
    with compress_(model, {name: f"sparsify(threshold={threshold}, rank=4)"}):
        _, fp32 = _module_io(model, name, batches[0])
    plan = CompressionPlan(
        model.name, [(name, "int8"), (name, f"sparsify(threshold={threshold}, rank=4)")]
    )
    with compress_(model, plan):
        _, int8 = _module_io(model, name, batches[0])
    assert not torch.equal(int8, fp32)
    assert float((int8 - fp32).norm() / fp32.norm()) < 0.02


def test_size_counts_the_factors_and_sparsity_pays_for_them(ffn):
    model, name, _, statistics = ffn
    linear = model.model.get_submodule(name)
    rows, columns = linear.weight.shape
    dense = weight_bytes(rows, columns, "fp32")
    r_sparse = weight_bytes(rows, columns, "sparsify(threshold=0.1, rank=4)")
    assert r_sparse[0] == dense[0] + 4 * 4 * (rows + columns)
    assert r_sparse[2] == dense[2] + 4 * (rows + columns)
    threshold = statistics[name].quantile(0.5)
    teal = estimate_size(
        model, CompressionPlan(model.name, {name: f"sparsify(threshold={threshold})"}), statistics
    )
    rs = estimate_size(
        model,
        CompressionPlan(model.name, {name: f"sparsify(threshold={threshold}, rank=4)"}),
        statistics,
    )
    total = sum(s.shape[0] * s.shape[1] for s in teal.linears.values())
    assert teal.activation_sparsity - rs.activation_sparsity == pytest.approx(
        4 * (rows + columns) / total
    )
    assert rs.size_mb > teal.size_mb


def test_planner_meets_the_budget_at_equal_compute(ffn):
    model, _, _, statistics = ffn
    uniform = importance_scores(model, "uniform")
    teal = sparsify_plan(model, uniform, {"sparsity": 0.4}, statistics=statistics)
    rs = r_sparse_plan(model, uniform, {"sparsity": 0.4}, statistics=statistics, rank=2)
    assert teal.method == "sparsify/uniform" and rs.method == "r-sparse/uniform"
    assert rs.achieved["sparsity"] == pytest.approx(0.4, abs=0.03)
    assert teal.achieved["sparsity"] == pytest.approx(0.4, abs=0.03)
    thresholds = {
        kind: {m: parse_action(a).threshold for m, a in plan.entries}
        for kind, plan in (("teal", teal), ("rs", rs))
    }
    # each input is thresholded further under R-Sparse, to pay for its low-rank path
    assert thresholds["rs"]["classifier"] == thresholds["teal"]["classifier"]
    assert all(
        thresholds["rs"][m] > thresholds["teal"][m] for m in thresholds["teal"] if m != "classifier"
    )
    ranks = {m: parse_action(a).rank for m, a in rs.entries}
    # the one-logit classifier's factors would outweigh it: plain TEAL there
    assert ranks.pop("classifier") is None
    assert set(ranks.values()) == {2}


def test_make_plan_takes_r_sparse_and_refuses_rank_elsewhere(ffn):
    model, _, _, statistics = ffn
    plan = make_plan(
        model, "r-sparse", {"sparsity": 0.3}, importance="magnitude", statistics=statistics, rank=3
    )
    assert plan.method == "r-sparse/magnitude"
    assert {parse_action(a).rank for m, a in plan.entries if m != "classifier"} == {3}
    with pytest.raises(PlanError, match="rank=3 is an option of r-sparse, not of mixed-precision"):
        make_plan(model, "mixed-precision", {"bits_per_weight": 6}, importance="magnitude", rank=3)
    with pytest.raises(PlanError, match="rank must be a positive integer"):
        make_plan(
            model,
            "r-sparse",
            {"sparsity": 0.3},
            importance="uniform",
            statistics=statistics,
            rank=0,
        )
