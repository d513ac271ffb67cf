from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from relcomp.errors import RelcompError
from relcomp.evaluation import candidate_pairs, load_beir, rerank


def test_candidates_follow_the_ranking_rule() -> None:
    run = {"q1": {"d3": 0.5, "d2": 0.9, "d1": 0.5}, "q2": {"d4": 1.0}}
    assert candidate_pairs(run, 2) == [("q1", "d2"), ("q1", "d1"), ("q2", "d4")]
    with pytest.raises(RelcompError, match="depth"):
        candidate_pairs(run, 0)


def test_rerank_scores_all_pairs_in_one_call(toy_path: Path, fake_scorer) -> None:
    dataset = load_beir(toy_path)
    first_stage = {
        "q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0, "d4": 0.5},  # d4 is below the depth
        "q2": {"d2": 1.0, "d4": 1.0},
        "q3": {},
    }
    table = {
        ("why do cats purr", "Purring Why do cats purr? Nobody knows for sure."): 5.0,
        ("why do cats purr", "Cats Cats purr when they are happy."): 4.0,
        ("barking dogs", "Dogs bark at the postman."): 2.5,
    }
    scorer = fake_scorer(table)
    run = rerank(scorer, dataset, first_stage, depth=3, batch_size=7, show_progress_bar=False)

    assert len(scorer.calls) == 1
    queries, documents, batch_size = scorer.calls[0]
    assert batch_size == 7
    assert queries == ["why do cats purr"] * 3 + ["barking dogs"] * 2
    assert documents[:3] == [dataset.document_text(d) for d in ("d1", "d2", "d3")]
    assert documents[3:] == [dataset.document_text(d) for d in ("d2", "d4")]  # tie: d2 before d4
    assert run == {"q1": {"d1": 4.0, "d2": 0.0, "d3": 5.0}, "q2": {"d2": 2.5, "d4": 0.0}, "q3": {}}
    assert all(isinstance(score, float) for scores in run.values() for score in scores.values())


def test_rerank_with_nothing_to_score_does_not_call_the_model(toy_path: Path, fake_scorer) -> None:
    scorer = fake_scorer({})
    assert rerank(scorer, load_beir(toy_path), {"q1": {}}, depth=10) == {"q1": {}}
    assert scorer.calls == []


def test_rerank_rejects_unknown_ids(toy_path: Path, fake_scorer) -> None:
    dataset = load_beir(toy_path)
    with pytest.raises(RelcompError, match="query id"):
        rerank(fake_scorer({}), dataset, {"q9": {"d1": 1.0}})
    with pytest.raises(RelcompError, match="document id"):
        rerank(fake_scorer({}), dataset, {"q1": {"d9": 1.0}})


def test_rerank_checks_the_number_of_scores(toy_path: Path) -> None:
    class Broken:
        def score(self, queries, documents, batch_size=32, show_progress_bar=None):
            return np.zeros(len(queries) + 1, dtype=np.float32)

    with pytest.raises(RelcompError, match="3 scores for 2 pairs"):
        rerank(Broken(), load_beir(toy_path), {"q1": {"d1": 1.0, "d2": 0.5}})
