from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ttest_rel

from relcomp.artifacts import QualityReport
from relcomp.errors import RelcompError
from relcomp.evaluation import (
    BeirDataset,
    compare_runs,
    evaluate_run,
    paired_test,
    parse_measures,
    quality_report,
    rerank,
    tie_rate,
)

QRELS = {
    "q1": {"d1": 2, "d2": 1, "d5": 1},  # graded, one relevant document never retrieved
    "q2": {"d3": 1},
    "q3": {"d4": 1},  # absent from the run: counts as 0
    "q4": {"d6": 0, "d7": 1},  # a grade-0 judgement is not relevant
}
RUN = {
    "q1": {"d2": 0.9, "d9": 0.8, "d1": 0.7, "d8": 0.6},
    "q2": {"d4": 0.5, "d3": 0.5, "d7": 0.1},  # tie: relcomp ranks d3 before d4
    "q4": {"d6": 3.0, "d5": 2.0, "d7": 1.0},
    "q9": {"d1": 1.0},  # not judged: ignored
}


def _log2(x: float) -> float:
    return math.log(x, 2)


# By hand. nDCG (trec_eval / ir_measures): gain = grade, discount log2(rank + 1).
# q1 ranks d2 (1), d9 (0), d1 (2), d8 (0): DCG = 1/log2(2) + 2/log2(4); ideal grades 2, 1, 1.
Q1_NDCG = (1 / _log2(2) + 2 / _log2(4)) / (2 / _log2(2) + 1 / _log2(3) + 1 / _log2(4))
EXPECTED = {
    "q1": {"nDCG@10": Q1_NDCG, "RR@10": 1.0, "R@100": 2 / 3},
    "q2": {"nDCG@10": 1.0, "RR@10": 1.0, "R@100": 1.0},
    "q3": {"nDCG@10": 0.0, "RR@10": 0.0, "R@100": 0.0},
    # d7 at rank 3: DCG = 1/log2(4), ideal 1/log2(2).
    "q4": {"nDCG@10": (1 / _log2(4)) / 1.0, "RR@10": 1 / 3, "R@100": 1.0},
}


def test_measures_match_hand_computation() -> None:
    means, per_query = evaluate_run(QRELS, RUN)
    assert set(per_query) == {"q1", "q2", "q3", "q4"}
    for qid, expected in EXPECTED.items():
        for name, value in expected.items():
            assert per_query[qid][name] == pytest.approx(value, abs=1e-9), (qid, name)
    for name in ("nDCG@10", "RR@10", "R@100"):
        hand_mean = sum(EXPECTED[qid][name] for qid in EXPECTED) / 4
        assert means[name] == pytest.approx(hand_mean, abs=1e-9), name
    assert list(means) == ["nDCG@10", "RR@10", "R@100"]


def test_ties_follow_relcomp_rule_for_every_measure() -> None:
    # d4 and d3 tie; trec_eval would put d4 (greater id) first and give RR 0.5.
    _, per_query = evaluate_run(
        {"q2": {"d3": 1}}, {"q2": {"d4": 0.5, "d3": 0.5}}, ["RR@10", "nDCG@10"]
    )
    assert per_query["q2"] == {"RR@10": 1.0, "nDCG@10": 1.0}
    _, per_query = evaluate_run(
        {"q2": {"d4": 1}}, {"q2": {"d4": 0.5, "d3": 0.5}}, ["RR@10", "nDCG@10"]
    )
    assert per_query["q2"]["RR@10"] == 0.5
    assert per_query["q2"]["nDCG@10"] == pytest.approx(1 / _log2(3), abs=1e-12)


def test_user_spelling_is_kept_and_aliases_both_reported() -> None:
    means, per_query = evaluate_run(QRELS, RUN, ["Recall@100", "R@100", "MRR@10"])
    assert list(means) == ["Recall@100", "R@100", "MRR@10"]
    assert means["Recall@100"] == means["R@100"]
    assert per_query["q4"]["MRR@10"] == pytest.approx(1 / 3)


def test_other_measures_and_rel_thresholds() -> None:
    # With rel=2, only q1's d1 is relevant among q1's judgements.
    _, per_query = evaluate_run({"q1": QRELS["q1"]}, RUN, ["RR(rel=2)@10", "P@2"])
    assert per_query["q1"]["RR(rel=2)@10"] == pytest.approx(1 / 3)
    assert per_query["q1"]["P@2"] == pytest.approx(0.5)


def test_empty_rankings_count_as_zero() -> None:
    means, per_query = evaluate_run(
        {"q1": {"d1": 1}, "q2": {"d2": 1}}, {"q1": {}, "q2": {"d2": 1.0}}, ["RR@10"]
    )
    assert per_query == {"q1": {"RR@10": 0.0}, "q2": {"RR@10": 1.0}}
    assert means == {"RR@10": 0.5}
    means, _ = evaluate_run({"q1": {"d1": 1}}, {}, ["nDCG@10", "R@100"])
    assert means == {"nDCG@10": 0.0, "R@100": 0.0}


def test_query_subset() -> None:
    means, per_query = evaluate_run(QRELS, RUN, ["RR@10"], query_ids=["q4", "q3"])
    assert set(per_query) == {"q3", "q4"}
    assert means["RR@10"] == pytest.approx((0 + 1 / 3) / 2)
    with pytest.raises(RelcompError, match="no judgements"):
        evaluate_run(QRELS, RUN, ["RR@10"], query_ids=["q9"])


@pytest.mark.parametrize("bad", ["nDCG@ten", "Foo@10", "nDCG(rel=)@10"])
def test_unparseable_measure(bad: str) -> None:
    with pytest.raises(RelcompError, match=rf"cannot parse the measure '{bad[:4]}"):
        parse_measures([bad])
    with pytest.raises(RelcompError):
        evaluate_run(QRELS, RUN, [bad])


def test_no_judged_queries() -> None:
    with pytest.raises(RelcompError, match="no judged queries"):
        evaluate_run({}, RUN)


def test_tie_rate() -> None:
    # q1: no ties (0/3); q2: one tie among 2 adjacent pairs; q4: 0/2; q9: a single document.
    assert tie_rate(RUN) == pytest.approx((0 + 1 / 2 + 0) / 3)
    assert tie_rate({"q": {f"d{i}": 1.0 for i in range(20)}}) == 1.0
    # Only the top-k counts: the tie sits at ranks 3 and 4.
    assert tie_rate({"q": {"a": 3.0, "b": 2.0, "c": 1.0, "d": 1.0}}, k=3) == 0.0
    assert tie_rate({"q": {"a": 3.0, "b": 2.0, "c": 1.0, "d": 1.0}}, k=4) == pytest.approx(1 / 3)
    assert tie_rate({}) == 0.0
    assert tie_rate(RUN, query_ids=["q2"]) == 0.5


def test_paired_student_t_test_matches_scipy() -> None:
    rng = np.random.RandomState(0)
    a_values, b_values = rng.rand(40), rng.rand(40) * 0.8
    per_query_a = {f"q{i}": {"nDCG@10": float(v), "RR@10": 0.5} for i, v in enumerate(a_values)}
    per_query_b = {f"q{i}": {"nDCG@10": float(v), "RR@10": 0.5} for i, v in enumerate(b_values)}
    result = paired_test(per_query_a, per_query_b)
    assert result["test"] == "student"
    assert result["n_queries"] == 40
    expected = ttest_rel(a_values, b_values).pvalue
    assert result["p_values"]["nDCG@10"] == pytest.approx(expected, rel=1e-9)
    assert result["p_values"]["RR@10"] == 1.0  # identical systems
    assert result["mean_a"]["nDCG@10"] == pytest.approx(a_values.mean())


def test_paired_fisher_test() -> None:
    per_query_a = {f"q{i}": {"RR@10": 1.0} for i in range(30)}
    per_query_b = {f"q{i}": {"RR@10": 0.0 if i % 3 else 1.0} for i in range(30)}
    result = paired_test(per_query_a, per_query_b, test="permutation", n_permutations=2000)
    assert result["test"] == "fisher"
    assert result["p_values"]["RR@10"] < 0.01


def test_paired_test_needs_the_same_queries() -> None:
    with pytest.raises(RelcompError, match="same queries"):
        paired_test({"q1": {"m": 1.0}}, {"q2": {"m": 1.0}})
    with pytest.raises(RelcompError, match="significance test"):
        paired_test({"q1": {"m": 1.0}}, {"q1": {"m": 1.0}}, test="wilcoxon-ish")


def test_compare_runs_evaluates_both_on_all_judged_queries() -> None:
    worse = {qid: dict(scores) for qid, scores in RUN.items()}
    worse["q1"] = {"d9": 1.0, "d2": 0.5}  # RR 0.5 instead of 1
    result = compare_runs(QRELS, RUN, worse, ["RR@10"])
    assert result["n_queries"] == 4
    assert result["mean_a"]["RR@10"] == pytest.approx((1 + 1 + 0 + 1 / 3) / 4)
    assert result["mean_b"]["RR@10"] == pytest.approx((0.5 + 1 + 0 + 1 / 3) / 4)
    assert 0.0 < result["p_values"]["RR@10"] <= 1.0


def test_quality_report() -> None:
    corpus = {doc: ("", doc) for doc in ("d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8", "d9")}
    queries = {qid: qid for qid in ("q1", "q2", "q3", "q4", "q9")}
    dataset = BeirDataset("toy", Path("toy"), "test", corpus, queries, QRELS)
    report = quality_report(
        "fake",
        dataset,
        RUN,
        first_stage="bm25",
        depth=30,
        max_length=256,
        truncation={"inputs": 10, "truncated": 1},
        settings={"protocol": "quick"},
    )
    assert isinstance(report, QualityReport)
    assert (report.model, report.dataset, report.split) == ("fake", "toy", "test")
    assert report.n_queries == 4
    assert report.measures["RR@10"] == pytest.approx((1 + 1 + 0 + 1 / 3) / 4)
    assert report.per_query["q1"]["nDCG@10"] == pytest.approx(Q1_NDCG)
    # q1, q2, q4 have at least two results; q3 none; q9 is not evaluated.
    assert report.tie_rate == pytest.approx((0 + 0.5 + 0) / 3)
    assert (report.first_stage, report.depth, report.max_length) == ("bm25", 30, 256)
    assert report.truncation == {"inputs": 10, "truncated": 1}
    assert QualityReport.from_json(report.to_json()) == report

    sampled = quality_report("fake", dataset, RUN, ["RR@10"], query_ids=["q2"])
    assert sampled.n_queries == 1
    assert sampled.measures == {"RR@10": 1.0}
    assert sampled.tie_rate == 0.5


class _Overlap:
    """A pair scorer: shared words, then a tiny length term so scores rarely tie."""

    def score(self, queries, documents, batch_size=32, show_progress_bar=None):
        return np.array(
            [
                len(set(q.split()) & set(d.split())) + 1e-3 * len(d)
                for q, d in zip(queries, documents, strict=True)
            ]
        )


def test_by_depth_is_what_re_ranking_fewer_candidates_gives() -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    corpus = {f"d{i}": ("", " ".join(rng.choice(words, 6 + i % 5))) for i in range(80)}
    queries = {f"q{i}": " ".join(rng.choice(words, 3)) for i in range(7)}
    qrels = {qid: {f"d{j}": 1 + j % 2 for j in rng.choice(80, 6, replace=False)} for qid in queries}
    dataset = BeirDataset("toy", Path("toy"), "test", corpus, queries, qrels)
    # A first stage that disagrees with the re-ranker, so depth matters.
    first = {qid: {doc: float(rng.random()) for doc in corpus} for qid in queries}
    deep = rerank(_Overlap(), dataset, first, depth=60)
    report = quality_report("overlap", dataset, deep, depth=60, candidates=first)
    assert list(report.by_depth) == ["10", "20", "30", "50"]
    for k in (10, 20, 30, 50):
        direct = quality_report("overlap", dataset, rerank(_Overlap(), dataset, first, depth=k))
        assert report.by_depth[str(k)] == pytest.approx(direct.measures)
    assert len({round(m["nDCG@10"], 6) for m in report.by_depth.values()}) > 1
    assert QualityReport.from_json(report.to_json()) == report
    # Without the first stage's run (or at depth 10) there is nothing shallower to give.
    assert quality_report("overlap", dataset, deep, depth=60).by_depth == {}
    assert quality_report("overlap", dataset, deep, depth=10, candidates=first).by_depth == {}
