"""Real BEIR collections from ../shared/assets (run with ``-m slow``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from relcomp.evaluation import (
    bm25_retrieve,
    evaluate_run,
    load_beir,
    quality_report,
    rerank,
    sample_queries,
)

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = Path(os.environ.get("RELCOMP_ASSETS", REPO_ROOT.parent / "shared" / "assets"))


def _collection(name: str) -> Path:
    path = ASSETS / "beir" / name
    if not (path / "corpus.jsonl").is_file():
        pytest.skip(f"BEIR {name} not found under {ASSETS} (set RELCOMP_ASSETS)")
    return path


def test_scifact_loads_quickly_and_completely() -> None:
    started = time.perf_counter()
    dataset = load_beir(_collection("scifact"), "test")
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0, f"loading scifact took {elapsed:.2f}s"
    # The published BEIR counts (DATASETS.md).
    assert (len(dataset.corpus), len(dataset.queries), len(dataset.split_queries)) == (
        5183,
        1109,
        300,
    )
    assert sum(len(docs) for docs in dataset.qrels.values()) == 339


def test_nfcorpus_splits() -> None:
    path = _collection("nfcorpus")
    counts = {
        split: len(load_beir(path, split).split_queries) for split in ("test", "dev", "train")
    }
    assert counts == {"test": 323, "dev": 324, "train": 2590}
    grades = {g for docs in load_beir(path, "test").qrels.values() for g in docs.values()}
    assert grades == {1, 2}


def test_bm25_scifact_matches_beir(tmp_path: Path) -> None:
    dataset = load_beir(_collection("scifact"), "test")
    run = bm25_retrieve(dataset, depth=100, cache_dir=tmp_path)
    means, per_query = evaluate_run(dataset.qrels, run)
    assert len(per_query) == 300
    # BEIR publishes 0.665 (Elasticsearch BM25); bm25s without a stemmer gives 0.662.
    assert means["nDCG@10"] == pytest.approx(0.665, abs=0.02)
    assert means["R@100"] > 0.85
    # The cache answers the second time, identically.
    started = time.perf_counter()
    assert bm25_retrieve(dataset, depth=100, cache_dir=tmp_path) == run
    assert time.perf_counter() - started < 1.0


def test_bm25_nfcorpus_matches_the_reference_figure(tmp_path: Path) -> None:
    dataset = load_beir(_collection("nfcorpus"), "test")
    means, _ = evaluate_run(dataset.qrels, bm25_retrieve(dataset, depth=100, cache_dir=tmp_path))
    # assets/MODELS.md: bm25s, English stopwords, "title text": 0.306 (BEIR's Elasticsearch: 0.325).
    assert means["nDCG@10"] == pytest.approx(0.306, abs=0.01)


def test_quick_protocol_is_paired(tmp_path: Path) -> None:
    """Quick protocol: 100 seeded test queries, BM25 top-30; re-ranking by BM25's own scores is a no-op."""
    dataset = load_beir(_collection("scifact"), "test")
    query_ids = sample_queries(dataset.split_queries, 100)
    assert query_ids == sample_queries(reversed(list(dataset.split_queries)), 100)
    candidates = bm25_retrieve(dataset, query_ids, depth=30, cache_dir=tmp_path)

    class SameScores:
        def score(self, queries, documents, batch_size=32, show_progress_bar=None):
            import numpy as np

            return np.array([lookup[(q, d)] for q, d in zip(queries, documents, strict=True)])

    lookup = {
        (dataset.queries[qid], dataset.document_text(doc)): score
        for qid, docs in candidates.items()
        for doc, score in docs.items()
    }
    reranked = rerank(SameScores(), dataset, candidates, depth=30)
    first = quality_report("bm25", dataset, candidates, query_ids=query_ids, depth=30)
    second = quality_report("bm25-reranked", dataset, reranked, query_ids=query_ids, depth=30)
    assert first.n_queries == second.n_queries == 100
    assert first.measures == second.measures


def test_rerank_with_the_real_retriever(tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 re-ranking BM25's top-10 on 30 sampled scifact queries: sane quality."""
    import torch

    from relcomp.models import load_model

    torch.set_num_threads(2)
    dataset = load_beir(_collection("scifact"), "test")
    query_ids = sample_queries(dataset.split_queries, 30)
    candidates = bm25_retrieve(dataset, query_ids, depth=10, cache_dir=tmp_path)
    model = load_model("all-MiniLM-L6-v2", max_length=256)
    reranked = rerank(model, dataset, candidates, depth=10, show_progress_bar=False)
    assert {qid: set(docs) for qid, docs in reranked.items()} == {
        qid: set(docs) for qid, docs in candidates.items()
    }
    bm25_means, _ = evaluate_run(dataset.qrels, candidates, query_ids=query_ids)
    model_means, _ = evaluate_run(dataset.qrels, reranked, query_ids=query_ids)
    # MODELS.md: re-ranking BM25's candidates, all-MiniLM-L6-v2 is on a par with BM25.
    assert model_means["nDCG@10"] > 0.45
    assert abs(model_means["nDCG@10"] - bm25_means["nDCG@10"]) < 0.15
