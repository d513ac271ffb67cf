"""Parity figures and the quality gate, on stub scorers and the demo collection."""

from __future__ import annotations

import numpy as np
import pytest

from relcomp.artifacts import ParityReport
from relcomp.data import demo_path
from relcomp.export import (
    QualityGateError,
    check_parity,
    gate_split,
    parity_groups,
    quality_gate,
)
from tests.export.test_bundle import _Oracle


class _Table:
    """Scores from a fixed table of document texts, optionally transformed."""

    cache_key = "table"

    def __init__(self, name: str, scores: dict[str, float]) -> None:
        self.name = name
        self.scores = scores

    def score(self, queries, documents, batch_size=32, show_progress_bar=None):
        return np.array([self.scores[d] for d in documents], dtype=np.float32)


DOCS = [f"doc{i}" for i in range(12)]
GROUPS = {"q1": ("query one", DOCS), "q2": ("query two", DOCS[:5])}


def test_identical_models_have_perfect_parity() -> None:
    model = _Table("m", {d: float(i) for i, d in enumerate(DOCS)})
    report = check_parity(model, model, GROUPS, source={"dataset": "toy"})
    assert isinstance(report, ParityReport)
    assert (report.max_abs_diff, report.mean_abs_diff) == (0.0, 0.0)
    assert report.kendall_tau == pytest.approx(1.0) and report.top10_overlap == 1.0
    assert report.n_queries == 2 and report.n_pairs == 17
    assert ParityReport.from_json(report.to_json()) == report
    assert report.source == {"dataset": "toy"}


def test_a_reversed_ranking_is_measured() -> None:
    reference = _Table("ref", {d: float(i) for i, d in enumerate(DOCS)})
    reversed_ = _Table("rev", {d: -float(i) for i, d in enumerate(DOCS)})
    report = check_parity(reference, reversed_, GROUPS)
    assert report.kendall_tau == pytest.approx(-1.0)
    assert report.kendall_tau_min == pytest.approx(-1.0)
    assert report.max_abs_diff == pytest.approx(22.0)
    # q1: the top 10 of 12 share 8 documents; q2 has only 5, all shared
    assert report.per_query["q1"]["top10_overlap"] == pytest.approx(0.8)
    assert report.top10_overlap == pytest.approx(0.9)


def test_ties_are_counted_for_each_model() -> None:
    reference = _Table("ref", {d: float(i) for i, d in enumerate(DOCS)})
    flat = _Table("flat", {d: float(i // 4) for i, d in enumerate(DOCS)})
    report = check_parity(reference, flat, {"q1": GROUPS["q1"]})
    assert report.tie_rate_reference == 0.0
    assert report.tie_rate_candidate > 0.5
    assert 0.0 < report.kendall_tau < 1.0


def test_parity_needs_groups() -> None:
    model = _Table("m", {})
    with pytest.raises(ValueError, match="at least one group"):
        check_parity(model, model, {})
    with pytest.raises(ValueError, match="non-empty list"):
        check_parity(model, model, {"q": ("query", [])})


def test_parity_groups_come_from_a_development_split(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    groups, source = parity_groups(demo_path(), queries=5, depth=4)
    assert source["split"] == "train" and source["depth"] == 4
    assert 0 < len(groups) <= 5
    assert all(len(documents) <= 4 for _, documents in groups.values())
    with pytest.raises(ValueError, match="never looks at the test split"):
        parity_groups(demo_path(), "test")


def test_gate_split_prefers_dev_then_train(tmp_path) -> None:
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    for split in ("train", "test"):
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n")
    assert gate_split(root) == "train"
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n")
    assert gate_split(root) == "dev"
    assert gate_split(root, "train") == "train"
    with pytest.raises(ValueError, match="no split 'validation'"):
        gate_split(root, "validation")
    (root / "qrels" / "dev.tsv").unlink()
    (root / "qrels" / "train.tsv").unlink()
    with pytest.raises(ValueError, match="no dev or train split"):
        gate_split(root)


def test_quality_gate_passes_equal_models_and_fails_a_worse_one(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    oracle = _Oracle("train")
    result = quality_gate(oracle, oracle, demo_path(), max_ndcg_loss=0.0, queries=8, depth=10)
    assert result.passed and result.loss_points == 0.0 and result.split == "train"
    assert result.summary()["n_queries"] == 8

    class Inverted(_Oracle):
        def score(self, queries, documents, batch_size=32, show_progress_bar=None):
            return -super().score(queries, documents)

    with pytest.raises(QualityGateError, match=r"lost \d+\.\d\d points .* at most 1 allowed"):
        quality_gate(oracle, Inverted("train"), demo_path(), max_ndcg_loss=1, queries=8, depth=10)
    with pytest.raises(ValueError, match="max_ndcg_loss"):
        quality_gate(oracle, oracle, demo_path(), max_ndcg_loss=-1)
    with pytest.raises(ValueError, match="test split"):
        quality_gate(oracle, oracle, demo_path(), max_ndcg_loss=1, split="test")
