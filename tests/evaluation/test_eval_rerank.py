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


class _Counting:
    """Scores a pair by the length of its document; counts pairs and 'truncations'."""

    cache_key = "counting-v1"

    def __init__(self, fail_after: int | None = None) -> None:
        from collections import Counter

        self.truncation: Counter[str] = Counter()
        self.scored = 0
        self.fail_after = fail_after

    def score(self, queries, documents, batch_size=32, show_progress_bar=None):
        if self.fail_after is not None and self.scored >= self.fail_after:
            raise KeyboardInterrupt
        self.scored += len(queries)
        self.truncation["inputs"] += len(queries)
        self.truncation["truncated"] += sum(len(d) > 30 for d in documents)
        return np.array([len(d) + len(q) / 100 for q, d in zip(queries, documents, strict=True)])


def test_cached_rerank_resumes_after_an_interruption(toy_path: Path, tmp_path: Path) -> None:
    dataset = load_beir(toy_path)
    first_stage = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0, "d4": 0.5}, "q2": {"d2": 1.0, "d4": 1.0}}
    fresh = _Counting()
    expected = rerank(fresh, dataset, first_stage, depth=4, show_progress_bar=False)

    interrupted = _Counting(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        rerank(
            interrupted, dataset, first_stage, depth=4, show_progress_bar=False,
            use_cache=True, cache_dir=tmp_path, chunk_size=2,
        )  # fmt: skip
    assert interrupted.scored == 2  # one chunk of two pairs finished and was saved

    resumed = _Counting()
    run = rerank(
        resumed, dataset, first_stage, depth=4, show_progress_bar=False,
        use_cache=True, cache_dir=tmp_path, chunk_size=2,
    )  # fmt: skip
    assert run == expected
    assert resumed.scored == 4  # the other two chunks only
    assert resumed.truncation == fresh.truncation  # the saved chunk's tally is added back

    again = _Counting()
    assert rerank(
        again, dataset, first_stage, depth=4, show_progress_bar=False,
        use_cache=True, cache_dir=tmp_path, chunk_size=2,
    ) == expected  # fmt: skip
    assert again.scored == 0 and again.truncation == fresh.truncation


def test_cached_rerank_keys_on_the_model_and_the_pairs(toy_path: Path, tmp_path: Path) -> None:
    dataset = load_beir(toy_path)
    options = {"show_progress_bar": False, "use_cache": True, "cache_dir": tmp_path}
    rerank(_Counting(), dataset, {"q1": {"d1": 1.0, "d2": 0.5}}, depth=2, **options)
    other_pairs = _Counting()
    rerank(other_pairs, dataset, {"q1": {"d1": 1.0, "d3": 0.5}}, depth=2, **options)
    assert other_pairs.scored == 2
    other_model = _Counting()
    other_model.cache_key = "counting-v2"
    rerank(other_model, dataset, {"q1": {"d1": 1.0, "d2": 0.5}}, depth=2, **options)
    assert other_model.scored == 2


def test_rerank_without_a_cache_key_is_not_cached(toy_path: Path, tmp_path: Path) -> None:
    class Anonymous(_Counting):
        cache_key = None

    dataset = load_beir(toy_path)
    for _ in range(2):
        model = Anonymous()
        rerank(
            model, dataset, {"q1": {"d1": 1.0}}, depth=1, show_progress_bar=False,
            use_cache=True, cache_dir=tmp_path,
        )  # fmt: skip
        assert model.scored == 1
    assert not (tmp_path / "scores").exists()


def test_a_damaged_score_cache_is_recomputed(toy_path: Path, tmp_path: Path, caplog) -> None:
    dataset = load_beir(toy_path)
    options = {"show_progress_bar": False, "use_cache": True, "cache_dir": tmp_path}
    first = rerank(_Counting(), dataset, {"q1": {"d1": 1.0, "d2": 0.5}}, depth=2, **options)
    (entry,) = (tmp_path / "scores").glob("*.npz")
    entry.write_bytes(b"not a zip file")
    model = _Counting()
    assert rerank(model, dataset, {"q1": {"d1": 1.0, "d2": 0.5}}, depth=2, **options) == first
    assert model.scored == 2
    assert "unreadable cache entry" in caplog.text
