"""``drop_layers``: simulated, physical, saved, exported and loaded models all give one score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from relcomp.artifacts import CompressionPlan
from relcomp.compression import (
    DropLayers,
    PlanError,
    compress_,
    estimate_size,
    parse_action,
    plan_after_pruning,
    prune_physically,
    resolve_plan,
)
from relcomp.models import load_model, save_model
from tests.fixtures import DOCUMENTS, QUERIES

PAIRS = (list(QUERIES), list(DOCUMENTS[: len(QUERIES)]))


def test_the_action_parses_and_prints_back() -> None:
    action = parse_action("drop_layers(2, 0)")
    assert action == DropLayers((0, 2)) and str(action) == "drop_layers(0,2)"
    assert action.structural
    with pytest.raises(PlanError, match="repeat"):
        parse_action("drop_layers(1,1)")


@pytest.mark.parametrize("family", ["minilm", "distilbert", "mpnet"])
@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
def test_simulated_physical_saved_and_loaded_agree(
    tiny_model: Any, tmp_path: Path, family: str, kind: str
) -> None:
    model = tiny_model(family, kind)
    before = model.score(*PAIRS)
    plan = CompressionPlan("m", {"_default": "drop_layers(0)"})
    with compress_(model, plan):
        simulated = model.score(*PAIRS)
    np.testing.assert_array_equal(model.score(*PAIRS), before)  # removed: bit for bit
    smaller = prune_physically(model, plan)
    assert len(smaller.layer_modules()) == len(model.layer_modules()) - 1
    np.testing.assert_allclose(smaller.score(*PAIRS), simulated, atol=1e-6)
    assert not np.allclose(simulated, before, atol=1e-4)  # the layer mattered
    loaded = load_model(save_model(smaller, tmp_path / "dropped"))
    np.testing.assert_allclose(loaded.score(*PAIRS), simulated, atol=1e-6)


def test_heads_pruned_in_a_kept_layer_survive_the_renumbering(
    tiny_model: Any, tmp_path: Path
) -> None:
    model = tiny_model("minilm")
    structure_name = model.layer_modules()[2].layer
    plan = CompressionPlan("m", {structure_name: "prune_heads(1,2)", "_default": "drop_layers(0)"})
    smaller = prune_physically(model, plan)
    assert {int(k): sorted(v) for k, v in smaller.model.config.pruned_heads.items()} == {1: [1, 2]}
    loaded = load_model(save_model(smaller, tmp_path / "dropped"))
    np.testing.assert_allclose(loaded.score(*PAIRS), smaller.score(*PAIRS), atol=1e-6)


def test_a_plan_for_the_rest_follows_the_renumbered_layers(tiny_model: Any) -> None:
    model = tiny_model("minilm")
    layers = model.layer_modules()
    rest = CompressionPlan(
        "m", {layers[2].ffn_out: "int4", layers[0].ffn_out: "fp16", "_default": "int8"}
    )
    moved = plan_after_pruning(rest, model, CompressionPlan("m", {"_default": "drop_layers(0)"}))
    entries = dict(moved.entries)
    assert entries[layers[1].ffn_out] == "int4(block_size=32)"  # layer 2 is layer 1 now
    assert layers[2].ffn_out not in entries  # there is no layer 2 any more
    assert "fp16" not in entries.values()  # layer 0 went with what the plan said of it


def test_export_realises_dropped_layers(tiny_model: Any, tmp_path: Path) -> None:
    from relcomp.export import export_bundle

    model = tiny_model("minilm")
    plan = CompressionPlan("m", (("_default", "drop_layers(1)"), ("_default", "int8")))
    bundle = export_bundle(model, tmp_path / "bundle", plan=plan)
    assert any("1 whole layers" in note for note in bundle.notes)
    with compress_(model, plan):
        simulated = model.score(*PAIRS)
    exported = load_model(tmp_path / "bundle").score(*PAIRS)
    assert np.corrcoef(exported, simulated)[0, 1] > 0.99


def test_size_and_bad_plans(tiny_model: Any) -> None:
    model = tiny_model("minilm")
    whole = estimate_size(model, CompressionPlan("m", {}))
    dropped = estimate_size(model, CompressionPlan("m", {"_default": "drop_layers(0,1)"}))
    per_layer = sum(
        model.named_linears()[n].weight.numel() + model.named_linears()[n].bias.numel()
        for n in model.layer_modules()[0].linears().values()
    )
    assert (whole.size_mb - dropped.size_mb) * 1e6 == pytest.approx(2 * per_layer * 4, rel=1e-6)
    with pytest.raises(PlanError, match="every layer"):
        resolve_plan(CompressionPlan("m", {"_default": "drop_layers(0,1,2)"}), model)
    with pytest.raises(PlanError, match="do not exist"):
        resolve_plan(CompressionPlan("m", {"_default": "drop_layers(7)"}), model)
    with pytest.raises(PlanError, match="layer list"):
        resolve_plan(
            CompressionPlan("m", {model.layer_modules()[0].layer: "drop_layers(0)"}), model
        )


def test_the_planner_drops_the_least_important_layers(tiny_model: Any) -> None:
    from relcomp.budgets import parse_budget_text
    from relcomp.compression.planners import make_plan

    model = tiny_model("minilm")  # 3 layers
    layer_list = model.layer_modules()[0].layer.rsplit(".", 1)[0]
    blind = make_plan(model, "drop-layers", {"layers_dropped": 1}, importance="uniform")
    assert blind.entries == ((layer_list, "drop_layers(2)"),)  # no information: the top layer
    assert parse_budget_text("2", "drop-layers") == {"layers_dropped": 2.0}
    scored = make_plan(model, "drop-layers", {"layers_dropped": 2}, importance="random", seed=3)
    assert len(DropLayers.parse(scored.entries[0][1]).layers) == 2  # type: ignore[attr-defined]
    with pytest.raises(PlanError, match="drop 1 to 2"):
        make_plan(model, "drop-layers", {"layers_dropped": 3}, importance="uniform")
    with pytest.raises(PlanError, match=r"layers_dropped=1\.5"):
        make_plan(model, "drop-layers", {"layers_dropped": 1.5}, importance="uniform")
