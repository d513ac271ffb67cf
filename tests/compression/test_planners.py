"""Planners: every plan meets its budget, relevance decides what is kept, plans realise."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from relcomp.artifacts import CompressionPlan
from relcomp.attribution import ComponentLRP
from relcomp.compression import (
    PlanError,
    compress_,
    estimate_size,
    prune_physically,
)
from relcomp.compression.importance import IMPORTANCE, importance_scores
from relcomp.compression.planners import (
    PLANNERS,
    allocate_ratios,
    calibration_statistics,
    make_plan,
    parse_budget,
)
from relcomp.models import load_model
from tests.fixtures import DOCUMENTS, QUERIES

SOURCES = ("relevance", "uniform", "random", "magnitude", "taylor", "wanda")
CALIBRATION = list(zip(QUERIES[:4], DOCUMENTS[:4], strict=True))
BUDGETS = {
    "mixed-precision": {"bits_per_weight": 7.0},
    "prune-structured": {"params_removed": 0.3},
    "prune-unstructured": {"params_removed": 0.5},
    "sparsify": {"sparsity": 0.4},
    "r-sparse": {"sparsity": 0.4},
}


@pytest.fixture(scope="module")
def setting(tiny_model_path: Any) -> dict[str, Any]:
    """A tiny cross-encoder, its component relevance and activation statistics (made once)."""
    model = load_model(tiny_model_path("bert", "cross-encoder"))
    relevance = ComponentLRP(model, "AttnLRP").attribute(
        list(QUERIES[:4]), list(DOCUMENTS[:4]), batch_size=4, show_progress_bar=False
    )
    return {
        "model": model,
        "relevance": relevance,
        "statistics": calibration_statistics(model, CALIBRATION),
    }


def plan_for(setting: dict[str, Any], family: str, source: str, **kwargs: Any) -> CompressionPlan:
    budget = kwargs.pop("budget", BUDGETS[family])
    if family == "r-sparse":
        kwargs.setdefault("rank", 2)  # the tiny model's Linears are 32 wide
    return make_plan(
        setting["model"],
        family,
        budget,
        importance=source,
        relevance=setting["relevance"],
        calibration=CALIBRATION,
        **kwargs,
    )


def test_registries_name_every_planner_and_source():
    assert PLANNERS.names() == [
        "drop-layers",
        "mixed-precision",
        "prune-structured",
        "prune-unstructured",
        "r-sparse",
        "sparsify",
    ]
    assert IMPORTANCE.names() == [
        "magnitude",
        "random",
        "relevance",
        "relevance-l1",
        "taylor",
        "uniform",
        "wanda",
    ]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("family", list(BUDGETS))
def test_plan_meets_budget_within_one_module(setting, family, source):
    model = setting["model"]
    plan = plan_for(setting, family, source)
    estimate = estimate_size(model, plan, setting["statistics"])
    assert plan.achieved == estimate.achieved()
    assert plan.method.startswith(f"{family}/")
    linears = dict(model.named_linears())
    total = sum(m.weight.numel() for m in linears.values())
    if family == "mixed-precision":
        # below the budget by less than the largest single upgrade (int4 → int8 of one module)
        largest = max(m.weight.numel() * 4 + 4 * m.out_features for m in linears.values())
        weights_bits = estimate.bits_per_weight * total
        assert estimate.bits_per_weight <= 7.0
        assert 7.0 * total - weights_bits <= 8 * largest
    elif family == "prune-structured":
        head = max(4 * m.in_features * m.in_features // 4 for m in linears.values())
        assert 0.3 <= estimate.params_removed <= 0.3 + head / total
    elif family == "prune-unstructured":
        rows = sum(m.out_features for m in linears.values())
        assert estimate.params_removed == pytest.approx(0.5, abs=rows / total)
    else:
        assert estimate.activation_sparsity == pytest.approx(0.4, abs=0.02)


def test_plans_record_their_importance(setting):
    plan = plan_for(setting, "mixed-precision", "relevance")
    assert plan.method == "mixed-precision/relevance(AttnLRP)"
    assert plan.relevance["method"] == "AttnLRP"
    assert plan_for(setting, "mixed-precision", "random", seed=3).relevance == {
        "importance": "random",
        "seed": 3,
    }


def test_random_importance_is_seeded(setting):
    same = [plan_for(setting, "prune-structured", "random", seed=5) for _ in range(2)]
    other = plan_for(setting, "prune-structured", "random", seed=6)
    assert same[0].entries == same[1].entries
    assert other.entries != same[0].entries


@pytest.mark.parametrize("family", list(BUDGETS))
def test_plans_round_trip_through_json(setting, family):
    plan = plan_for(setting, family, "relevance")
    assert CompressionPlan.from_json(plan.to_json()) == plan


def _bits(action: str) -> int:
    return {"int4": 4, "int8": 8, "fp16": 16, "fp32": 32}[action.split("(")[0]]


def test_most_relevant_linear_keeps_at_least_the_bits_of_the_least(setting):
    model = setting["model"]
    scores = importance_scores(model, "relevance", setting["relevance"])
    density = {n: scores.linears[n] / m.weight.numel() for n, m in model.named_linears().items()}
    for budget in (5.5, 7.0, 10.0):
        bits = {
            name: _bits(action)
            for name, action in plan_for(
                setting, "mixed-precision", "relevance", budget={"bits_per_weight": budget}
            ).entries
        }
        most, least = max(density, key=density.get), min(density, key=density.get)
        assert bits[most] >= bits[least]
        assert len(set(bits.values())) > 1 or budget == 5.5


def test_least_relevant_heads_and_neurons_are_pruned(setting):
    model = setting["model"]
    plan = plan_for(setting, "prune-structured", "relevance")
    heads = setting["relevance"].by_kind("head")
    neurons = setting["relevance"].by_kind("neuron")
    pruned_neurons: dict[str, set[int]] = {}
    for pattern, action in plan.actions():
        layer = pattern.rsplit(".", 2)[
            0
        ]  # '….layer.0.attention.self', '….layer.0.intermediate.dense'
        if action.name == "prune_neurons":
            pruned_neurons[layer] = set(action.indices or ())
        if action.name == "prune_heads":
            values = heads[layer]
            kept = [values[h] for h in range(len(values)) if h not in action.heads]
            assert max(values[list(action.heads)]) <= min(kept)
    assert pruned_neurons
    # globally, every pruned neuron (normalised) scores at most what every kept neuron scores
    mean = np.concatenate(list(neurons.values())).mean()
    gone = [neurons[layer][i] / mean for layer, idx in pruned_neurons.items() for i in idx]
    kept = [
        neurons[layer][i] / mean
        for layer in neurons
        for i in range(len(neurons[layer]))
        if i not in pruned_neurons.get(layer, set())
    ]
    assert max(gone) <= min(kept) + 1e-12
    assert model.layer_modules()  # the model is untouched by planning
    assert model.variant == "fp32"


def test_uniform_structured_pruning_removes_the_same_share_per_layer(setting):
    plan = plan_for(setting, "prune-structured", "uniform")
    counts = [len(a.indices or ()) for _, a in plan.actions() if a.name == "prune_neurons"]
    assert len(counts) == 2 and len(set(counts)) == 1
    assert plan.method == "prune-structured/uniform"


def test_wanda_scores_weights_by_their_inputs_norms(setting):
    model, statistics = setting["model"], setting["statistics"]
    scores = importance_scores(model, "wanda", calibration=CALIBRATION)
    given = importance_scores(model, "wanda", statistics=statistics)
    for name, linear in model.named_linears().items():
        norms = statistics[name].channel_norm.double()
        expected = float((linear.weight.detach().abs().double() * norms).sum())
        assert scores.linears[name] == pytest.approx(expected, rel=1e-9)
        assert given.linears[name] == pytest.approx(expected, rel=1e-9)
    layer = next(iter(scores.neurons))
    ffn_in = f"{layer}.intermediate.dense"
    ffn_out = f"{layer}.output.dense"
    linears = model.named_linears()
    neuron = (
        linears[ffn_in].weight.detach().abs().double() * statistics[ffn_in].channel_norm.double()
    ).sum(dim=1) + (
        linears[ffn_out].weight.detach().abs().double() * statistics[ffn_out].channel_norm.double()
    ).sum(dim=0)
    np.testing.assert_allclose(scores.neurons[layer], neuron.numpy(), rtol=1e-9)
    with pytest.raises(PlanError, match="'wanda' needs calibration"):
        importance_scores(model, "wanda")


@pytest.mark.parametrize("counts", ["relevance", "uniform"])
def test_within_keeps_each_layers_count_and_picks_by_the_local_scores(setting, counts):
    model = setting["model"]
    alone = plan_for(setting, "prune-structured", counts)
    two_step = plan_for(setting, "prune-structured", counts, within="wanda")
    local = importance_scores(model, "wanda", statistics=setting["statistics"])
    suffix = "" if counts == "uniform" else "(AttnLRP)"
    assert two_step.method == f"prune-structured/{counts}{suffix}+wanda-within"
    assert two_step.relevance["within"] == {"importance": "wanda"}
    assert two_step.achieved == alone.achieved  # same counts per layer, so the same size

    def chosen(plan: CompressionPlan) -> dict[str, tuple[int, ...]]:
        return {
            pattern: tuple(sorted(a.heads if a.name == "prune_heads" else a.indices or ()))
            for pattern, a in plan.actions()
        }

    assert {p: len(i) for p, i in chosen(two_step).items()} == {
        p: len(i) for p, i in chosen(alone).items()
    }
    for pattern, indices in chosen(two_step).items():
        layer = pattern.rsplit(".", 2)[0]
        values = (local.heads if pattern.endswith("attention.self") else local.neurons)[layer]
        kept = [values[i] for i in range(len(values)) if i not in indices]
        assert max(values[list(indices)]) <= min(kept)
    with pytest.raises(PlanError, match="within='wanda' is an option of prune-structured"):
        plan_for(setting, "prune-unstructured", "relevance", within="wanda")


def test_unstructured_ratios_are_higher_where_relevance_is_lower(setting):
    model = setting["model"]
    scores = importance_scores(model, "relevance", setting["relevance"])
    plan = plan_for(setting, "prune-unstructured", "relevance")
    ratios = {p: a.ratio for p, a in plan.actions()}
    density = {n: scores.linears[n] / m.weight.numel() for n, m in model.named_linears().items()}
    assert ratios[min(density, key=density.get)] > ratios[max(density, key=density.get)]
    assert all(0.0 <= r <= 0.95 for r in ratios.values())


def test_allocate_ratios_keeps_the_weighted_mean():
    ratios = allocate_ratios(
        {"a": 0.0, "b": 1.0, "c": 50.0}, {"a": 10, "b": 1000, "c": 30}, 0.9, 0.4
    )
    mean = (ratios["a"] * 10 + ratios["b"] * 1000 + ratios["c"] * 30) / 1040
    assert mean == pytest.approx(0.9, abs=1e-9)
    assert ratios["a"] <= 0.95
    flat = allocate_ratios({"a": 2.0, "b": 4.0}, {"a": 1, "b": 2}, 0.3, 0.2)
    assert flat == pytest.approx({"a": 0.3, "b": 0.3})


@pytest.mark.parametrize("family", list(BUDGETS))
def test_compress_accepts_every_plan_and_the_model_still_scores(setting, family):
    model = setting["model"]
    before = model.score(list(QUERIES[:3]), list(DOCUMENTS[:3]), show_progress_bar=False)
    for source in ("relevance", "magnitude"):
        plan = plan_for(setting, family, source)
        with compress_(model, plan, statistics=setting["statistics"]):
            assert model.variant != "fp32"
            scores = model.score(list(QUERIES[:3]), list(DOCUMENTS[:3]), show_progress_bar=False)
            assert np.isfinite(scores).all()
            assert not np.array_equal(scores, before)
    after = model.score(list(QUERIES[:3]), list(DOCUMENTS[:3]), show_progress_bar=False)
    assert np.array_equal(after, before)


def test_prune_physically_accepts_structured_plans(setting):
    model = setting["model"]
    for source in ("relevance", "uniform", "taylor"):
        plan = plan_for(setting, "prune-structured", source)
        pruned = prune_physically(model, plan)
        removed = 1 - sum(m.weight.numel() for m in pruned.named_linears().values()) / sum(
            m.weight.numel() for m in model.named_linears().values()
        )
        assert removed == pytest.approx(plan.achieved["params_removed"], abs=1e-6)
        assert pruned.cache_key != model.cache_key
        with compress_(model, plan):
            masked = model.score(list(QUERIES[:3]), list(DOCUMENTS[:3]), show_progress_bar=False)
        smaller = pruned.score(list(QUERIES[:3]), list(DOCUMENTS[:3]), show_progress_bar=False)
        np.testing.assert_allclose(smaller, masked, atol=1e-4)


def test_bi_encoders_plan_too(tiny_model):
    model = tiny_model("bert", "bi-encoder")
    relevance = ComponentLRP(model, "AttnLRP").attribute(
        list(QUERIES[:2]), list(DOCUMENTS[:2]), batch_size=2, show_progress_bar=False
    )
    plan = make_plan(model, "mixed-precision", "bits_per_weight=6", relevance=relevance)
    assert plan.achieved["bits_per_weight"] <= 6
    taylor = make_plan(
        model, "prune-structured", {"params_removed": 0.2}, "taylor", calibration=CALIBRATION
    )
    with compress_(model, taylor):
        assert np.isfinite(model.encode(["a cat"], show_progress_bar=False)).all()


@pytest.mark.parametrize(
    ("family", "budget", "message"),
    [
        ("mixed-precision", {"bits_per_weight": 2}, "impossible budget bits_per_weight=2"),
        ("mixed-precision", {"size_mb": 0.001}, "impossible budget size_mb"),
        ("mixed-precision", {"params_removed": 0.2}, "takes one budget of bits_per_weight"),
        ("prune-structured", {"params_removed": 1.0}, "impossible budget params_removed=1"),
        ("prune-structured", {"params_removed": 0.99}, "impossible budget params_removed=0.99"),
        ("prune-unstructured", {"params_removed": 1.0}, "impossible budget params_removed=1"),
        ("sparsify", {"sparsity": 0.99}, "impossible budget sparsity=0.99"),
    ],
)
def test_impossible_budgets_fail_with_one_clear_error(setting, family, budget, message):
    with pytest.raises(PlanError, match=message.replace("(", r"\(")):
        plan_for(setting, family, "magnitude", budget=budget)


def test_bad_names_and_missing_inputs_are_plan_errors(setting):
    model = setting["model"]
    with pytest.raises(PlanError, match="did you mean 'mixed-precision'"):
        make_plan(model, "mixed-precisoin", {"bits_per_weight": 6})
    with pytest.raises(PlanError, match="Valid names: magnitude"):
        make_plan(model, "mixed-precision", {"bits_per_weight": 6}, importance="gradient")
    with pytest.raises(PlanError, match="needs a ComponentRelevance"):
        make_plan(model, "mixed-precision", {"bits_per_weight": 6})
    with pytest.raises(PlanError, match="needs calibration"):
        make_plan(model, "sparsify", {"sparsity": 0.3}, importance="uniform")
    with pytest.raises(PlanError, match="unknown budget"):
        parse_budget("bits=3")
    assert math.isclose(parse_budget("bits_per_weight=6.5")["bits_per_weight"], 6.5)


def test_relevance_reads_linears_by_net_or_absolute_relevance(setting, caplog):
    model, relevance = setting["model"], setting["relevance"]
    default = IMPORTANCE.get("relevance-l1")(model, relevance=relevance)
    assert default.source == "relevance-l1(AttnLRP)"
    total = IMPORTANCE.get("relevance")(model, relevance=relevance)
    absolute, net = relevance.by_kind("linear_l1"), relevance.by_kind("linear")
    assert default.linears == {name: float(values.sum()) for name, values in absolute.items()}
    assert total.linears == {name: float(values.sum()) for name, values in net.items()}
    assert default.relevance["linear_reading"] == "linear_l1"
    # heads and neurons: by the absolute relevance of each of their tokens
    for kind, scores_of in (("head", "heads"), ("neuron", "neurons")):
        for layer, values in relevance.by_kind(f"{kind}_l1").items():
            np.testing.assert_array_equal(getattr(default, scores_of)[layer], values)
            net_values = np.abs(relevance.by_kind(kind)[layer])
            np.testing.assert_array_equal(getattr(total, scores_of)[layer], net_values)
            assert np.all(values >= net_values - 1e-12)  # |Σ r| ≤ Σ |r|, pair by pair
    # An artifact from before the l1 kinds existed is read by net relevance, and says so.
    older = type(relevance)(
        model=relevance.model,
        method=relevance.method,
        n_pairs=relevance.n_pairs,
        components={k: v for k, v in relevance.components.items() if not k.endswith("_l1")},
    )
    with caplog.at_level("WARNING"):
        fallback = IMPORTANCE.get("relevance")(model, relevance=older, linear_reading="l1")
    assert fallback.linears == total.linears and "no 'linear_l1' components" in caplog.text
    assert fallback.heads.keys() == total.heads.keys()
    for layer, heads in total.heads.items():
        np.testing.assert_array_equal(fallback.heads[layer], heads)
    assert "no 'head_l1' components" in caplog.text
    with pytest.raises(PlanError, match="linear_reading must be"):
        IMPORTANCE.get("relevance")(model, relevance=relevance, linear_reading="signed")


def test_a_coarser_ladder_reaches_below_five_bits(setting):
    ladder = ("int4(block_size=128)", "int4(block_size=32)", "int8", "fp16", "fp32")
    with pytest.raises(PlanError, match=r"int4\(block_size=32\) everywhere"):
        plan_for(setting, "mixed-precision", "relevance", budget={"bits_per_weight": 4.95})
    plan = plan_for(
        setting, "mixed-precision", "relevance", budget={"bits_per_weight": 4.95}, ladder=ladder
    )
    actions = {action for _, action in plan.entries}
    assert "int4(block_size=128)" in actions
    assert plan.achieved["bits_per_weight"] <= 4.95
    # the most relevant weight per byte leaves the coarse blocks first
    scores = importance_scores(setting["model"], "relevance", setting["relevance"])
    linears = setting["model"].named_linears()
    density = {n: scores.linears[n] / m.weight.numel() for n, m in linears.items()}
    entries = dict(plan.entries)
    assert entries[max(density, key=density.get)] != "int4(block_size=128)"


@pytest.mark.parametrize(
    ("ladder", "message"),
    [
        (("int8", "int4"), "must go from coarse to fine"),
        (("int4", "prune_neurons(ratio=0.3)"), "takes precisions only"),
        ((), "ladder is empty"),
    ],
)
def test_bad_ladders_fail_with_one_clear_error(setting, ladder, message):
    with pytest.raises(PlanError, match=message):
        plan_for(setting, "mixed-precision", "relevance", ladder=ladder)
