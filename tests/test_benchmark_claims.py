"""The compression-quality benchmark's claim check: which plans compete, and the verdict."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def quality() -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("compression_quality")
    finally:
        sys.path.remove(str(BENCHMARKS))


def rows(**scores: float) -> dict[str, Any]:
    budget = {"params_removed": 0.3}
    found = [{"budget": None, "method": "reference", "ndcg@10": 0.60, "size_mb": 90.0}]
    found += [
        {
            "budget": budget,
            "method": m.replace("_", "-").replace("--", "+"),
            "ndcg@10": v,
            "size_mb": 78.0,
        }
        for m, v in scores.items()
    ]
    return {"_meta": {"protocol": "quick"}, "m": {"d": {"prune-structured": found}}}


BLIND = {"uniform": 0.20, "random": 0.48, "magnitude": 0.26, "taylor": 0.56}


def test_the_relevance_plan_may_lose_half_of_the_best_blind_loss(quality):
    [met] = quality.claims(rows(relevance=0.585, **BLIND))
    assert met["best_blind"] == "taylor" and met["met"]  # loses 0.015 ≤ 0.04 / 2
    [missed] = quality.claims(rows(relevance=0.57, **BLIND))
    assert not missed["met"]


def test_two_step_blind_plans_compete_and_two_step_relevance_plans_are_judged(quality):
    payload = rows(relevance=0.585, relevance_l1__wanda=0.595, taylor__wanda=0.58, **BLIND)
    verdicts = {c["relevance_method"]: c for c in quality.claims(payload)}
    assert set(verdicts) == {"relevance", "relevance-l1+wanda"}
    assert {c["best_blind"] for c in verdicts.values()} == {"taylor+wanda"}
    assert not verdicts["relevance"]["met"] and verdicts["relevance-l1+wanda"]["met"]
    header = quality.markdown([payload]).splitlines()[0]
    assert header.index("relevance-l1+wanda") < header.index("uniform")
    assert header.index("taylor |") < header.index("taylor+wanda")


def test_no_verdict_until_every_blind_baseline_ran(quality):
    assert quality.claims(rows(relevance=0.59, uniform=0.2, taylor=0.56)) == []


def test_methods_split_into_their_two_steps(quality):
    assert quality.split_method("relevance-l1+wanda") == ("relevance-l1", "wanda")
    assert quality.split_method("taylor") == ("taylor", None)
    assert quality.is_relevance("relp+wanda") and not quality.is_relevance("uniform+wanda")


def test_any_relevance_reading_sets_a_budget_to_judge(quality):
    [verdict] = quality.claims(rows(relevance_l1=0.59, **BLIND))
    assert verdict["relevance_method"] == "relevance-l1" and verdict["met"]


def test_the_full_protocol_confirms_against_the_blind_plans_that_ran(quality):
    payload = rows(relevance=0.585, taylor=0.56)
    assert quality.claims(payload) == []  # the quick sweep waits for every baseline
    payload["_meta"]["protocol"] = "full"
    [verdict] = quality.claims(payload)
    assert verdict["best_blind"] == "taylor" and verdict["blind_run"] == ["taylor"]
    assert verdict["met"]


def test_the_summary_counts_each_budget_once_by_its_best_relevance_reading(quality):
    payload = rows(relevance=0.50, relevance_l1=0.585, **BLIND)  # taylor loses 0.04
    other = rows(relevance=0.50, **{**BLIND, "taylor": 0.60})  # taylor loses nothing
    other["m"]["d2"] = other["m"].pop("d")
    table = quality.summary([payload, other]).splitlines()
    assert len(table) == 3
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:3] == ["m", "prune-structured", "2"]
    assert cells[3] == "1"  # relevance-l1 met on d; relevance missed on d2
    assert cells[4] == "1 of 1"  # only d had a loss to save
    assert cells[5] == "1 (0)" and cells[6] == "1 (0)"  # no per_query rows: no p
    assert cells[7] == "-0.0375 [-0.1000, +0.0250]"


def test_the_installed_retriever_keeps_its_name_when_passed_as_a_folder(quality):
    from relcomp.models.loading import default_retriever_path

    assert quality.model_key(str(default_retriever_path())) == "all-MiniLM-L6-v2"
    assert quality.model_key("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
    assert quality.model_key("../shared/assets/models/minilm-l6-reranker") == "minilm-l6-reranker"


def test_the_depth_table_gives_each_plans_loss_at_each_depth(quality):
    payload = rows(relevance=0.50, taylor=0.56)
    found = payload["m"]["d"]["prune-structured"]
    for row, shallow in zip(
        found, ({"10": 0.55, "30": 0.61}, {"10": 0.53, "30": 0.57}, {}), strict=True
    ):
        if shallow:
            row["ndcg@10_by_depth"] = shallow
    lines = [
        line.strip("| ").split(" | ") for line in quality.depth_markdown([payload]).splitlines()
    ]
    assert lines[0][5:] == ["@10", "@30", "@full", "loss @10", "loss @30", "loss @full"]
    reference, relevance = (line[4:] for line in lines[2:])
    assert reference == ["reference", "0.5500", "0.6100", "0.6000", "–", "–", "–"]
    assert relevance == ["relevance", "0.5300", "0.5700", "0.5000", "0.0200", "0.0400", "0.1000"]
    assert len(lines) == 4  # taylor's row has no shallower depths: left out
