from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from relcomp.errors import RelcompError
from relcomp.evaluation import (
    bm25_retrieve,
    dense_retrieve,
    encode_corpus,
    load_beir,
    retrieve,
    top_k,
)
from relcomp.registry import UnknownNameError

# Document texts of the toy folder (conftest), as first stages see them ("title text").
D1 = "Cats Cats purr when they are happy."
D2 = "Dogs bark at the postman."
D3 = "Purring Why do cats purr? Nobody knows for sure."
D4 = "Fish swim in the sea."
Q1, Q2, Q3 = "why do cats purr", "barking dogs", "fish"

VECTORS = {
    D1: [1.0, 0.0],
    D2: [0.0, 1.0],
    D3: [1.0, 0.0],  # ties with D1 for q1
    D4: [0.5, 0.5],
    Q1: [1.0, 0.0],
    Q2: [0.0, 2.0],
    Q3: [0.2, 0.3],
}


def _brute_force(row: np.ndarray, k: int) -> list[int]:
    clean = np.where(np.isnan(row), -np.inf, row)
    return sorted(range(row.size), key=lambda i: (-clean[i], i))[:k]


@pytest.mark.parametrize("seed", range(20))
def test_top_k_matches_a_full_stable_sort(seed: int) -> None:
    rng = np.random.RandomState(seed)
    scores = rng.randint(0, 4, size=(5, 37)).astype(np.float32)  # many ties
    for k in (1, 3, 10, 37, 50):
        indices, values = top_k(scores, k)
        for row, row_indices, row_values in zip(scores, indices, values, strict=True):
            assert row_indices.tolist() == _brute_force(row, k)
            assert row_values.tolist() == row[row_indices].tolist()


def test_top_k_one_dimensional_zero_and_nan() -> None:
    indices, values = top_k(np.array([0.5, np.nan, 0.9, 0.5]), 3)
    assert indices.tolist() == [2, 0, 3]
    assert values.tolist() == [0.9, 0.5, 0.5]
    indices, _ = top_k(np.array([np.nan, 1.0, np.nan]), 3)
    assert indices.tolist() == [1, 0, 2]
    assert top_k(np.array([1.0, 2.0]), 0)[0].shape == (0,)
    with pytest.raises(ValueError):
        top_k(np.zeros((2, 2, 2)), 1)


def test_dense_retrieval_top_k_and_tie_rule(toy_path: Path, fake_encoder) -> None:
    dataset = load_beir(toy_path)
    model = fake_encoder(VECTORS, similarity_name="dot")
    run = dense_retrieve(model, dataset, depth=3, show_progress_bar=False)
    assert list(run) == ["q1", "q2"]  # the split's judged queries by default
    assert list(run["q1"].items()) == [("d1", 1.0), ("d3", 1.0), ("d4", 0.5)]
    assert list(run["q2"].items()) == [("d2", 2.0), ("d4", 1.0), ("d1", 0.0)]
    # Depth 1 keeps the lower id of the two tied documents.
    assert dense_retrieve(model, dataset, ["q1"], depth=1) == {"q1": {"d1": 1.0}}
    # Any query can be asked for, judged or not; depth beyond the corpus keeps all.
    run = dense_retrieve(model, dataset, ["q3"], depth=10)
    assert list(run["q3"]) == ["d2", "d4", "d1", "d3"]


def test_cosine_normalises_and_dot_does_not(toy_path: Path, fake_encoder) -> None:
    dataset = load_beir(toy_path)
    vectors = dict(VECTORS)
    vectors[D2] = [0.0, 10.0]  # a long vector wins under dot, not under cosine
    vectors[Q1] = [1.0, 0.2]
    dot = dense_retrieve(fake_encoder(vectors, "dot", "a"), dataset, ["q1"], depth=4)
    cosine = dense_retrieve(fake_encoder(vectors, "cosine", "b"), dataset, ["q1"], depth=4)
    assert next(iter(dot["q1"])) == "d2"
    assert dot["q1"]["d2"] == pytest.approx(2.0)
    assert list(cosine["q1"])[:2] == ["d1", "d3"]
    assert cosine["q1"]["d1"] == pytest.approx(1.0 / math.hypot(1.0, 0.2), rel=1e-6)
    assert cosine["q1"]["d2"] == pytest.approx(0.2 / math.hypot(1.0, 0.2), rel=1e-6)


def test_dense_retrieval_uses_query_and_document_encoders(toy_path: Path, fake_encoder) -> None:
    class Prompted(fake_encoder):
        def encode_queries(self, texts, **kwargs):
            self.sides.append("query")
            return self.encode(texts, **kwargs)

        def encode_documents(self, texts, **kwargs):
            self.sides.append("document")
            return self.encode(texts, **kwargs)

    model = Prompted(VECTORS)
    model.sides = []
    dense_retrieve(model, load_beir(toy_path), depth=2, use_cache=False)
    assert model.sides == ["document", "query"]


def test_dense_retrieval_errors(toy_path: Path, fake_encoder) -> None:
    dataset = load_beir(toy_path)
    with pytest.raises(RelcompError, match="cosine and dot"):
        dense_retrieve(fake_encoder(VECTORS, "euclidean"), dataset)
    with pytest.raises(RelcompError, match="depth"):
        dense_retrieve(fake_encoder(VECTORS), dataset, depth=0)
    with pytest.raises(RelcompError, match="not in toy"):
        dense_retrieve(fake_encoder(VECTORS), dataset, ["q9"])

    class WrongShape(fake_encoder):
        def encode(self, texts, batch_size=32, show_progress_bar=None):
            return np.zeros((len(texts) + 1, 2), dtype=np.float32)

    with pytest.raises(RelcompError, match="shape"):
        encode_corpus(WrongShape(VECTORS), dataset, use_cache=False)


def test_bm25_on_a_toy_corpus(toy_path: Path) -> None:
    dataset = load_beir(toy_path)
    run = bm25_retrieve(dataset, depth=10, show_progress_bar=False)
    # q1 "why do cats purr": stopwords go, "cats" and "purr" match d1 and d3 only.
    assert set(run["q1"]) == {"d1", "d3"}
    # q2 "barking dogs": no stemmer, so only "dogs" matches (d2); "barking" matches nothing.
    assert list(run["q2"]) == ["d2"]
    assert all(score > 0 for scores in run.values() for score in scores.values())
    scores = list(run["q1"].values())
    assert scores == sorted(scores, reverse=True)
    assert bm25_retrieve(dataset, ["q1"], depth=1) == {"q1": dict(list(run["q1"].items())[:1])}


def test_bm25_query_with_no_known_term_retrieves_nothing(
    tmp_path: Path, beir_writer, to_jsonl
) -> None:
    queries = to_jsonl([{"_id": "q1", "text": "zebra"}, {"_id": "q2", "text": "the of and"}])
    root = beir_writer(
        tmp_path / "b",
        queries=queries,
        qrels={"test": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td1\t1\n"},
    )
    assert bm25_retrieve(load_beir(root), depth=5) == {"q1": {}, "q2": {}}


def test_retrieve_by_name_or_model(toy_path: Path, fake_encoder) -> None:
    dataset = load_beir(toy_path)
    assert retrieve("BM25", dataset, depth=5) == bm25_retrieve(dataset, depth=5)
    model = fake_encoder(VECTORS)
    assert retrieve(model, dataset, depth=2) == dense_retrieve(model, dataset, depth=2)
    with pytest.raises(UnknownNameError, match="did you mean 'bm25'"):
        retrieve("bm26", dataset)
    with pytest.raises(RelcompError, match="a first stage is a name"):
        retrieve(42, dataset)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["bm25l", "bm25+", "robertson"])
def test_bm25_variants_retrieve_only_matching_documents(toy_path: Path, method: str) -> None:
    # bm25l and bm25+ give every document a score, matching or not; only matches count.
    run = bm25_retrieve(load_beir(toy_path), depth=10, method=method)
    assert set(run["q1"]) == {"d1", "d3"}
    assert list(run["q2"]) == ["d2"]
