"""The flow's steps on tiny models and a toy collection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relcomp.evaluation import (
    bm25_retrieve,
    candidate_pairs,
    load_beir,
    rerank,
    rerank_with_corpus_embeddings,
)
from relcomp.pipeline import (
    calibration_pairs,
    calibration_triples,
    evaluate,
)
from tests.fixtures import DOCUMENTS, QUERIES


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    folder = tmp_path / "toy"
    (folder / "qrels").mkdir(parents=True)
    rows = [{"_id": f"d{i}", "title": "", "text": text} for i, text in enumerate(DOCUMENTS)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    queries = [{"_id": f"q{i}", "text": text} for i, text in enumerate(QUERIES)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t{1 + i % 2}\n" for i in range(len(QUERIES))
    )
    (folder / "qrels" / "test.tsv").write_text(qrels)
    (folder / "qrels" / "dev.tsv").write_text(qrels)
    return folder


def test_bi_encoder_rerank_from_corpus_embeddings_equals_scoring_pairs(
    tiny_model, toy: Path, tmp_path: Path
) -> None:
    model = tiny_model("bert", "bi-encoder")
    dataset = load_beir(toy, "test")
    candidates = bm25_retrieve(dataset, depth=5, use_cache=False, show_progress_bar=False)
    fast = rerank_with_corpus_embeddings(model, dataset, candidates, 5, use_cache=False)
    slow = rerank(model, dataset, candidates, depth=5, show_progress_bar=False)
    assert fast.keys() == slow.keys()
    for query_id in slow:
        assert fast[query_id].keys() == slow[query_id].keys()
        for doc_id, score in slow[query_id].items():
            assert fast[query_id][doc_id] == pytest.approx(score, abs=1e-5)


def test_evaluate_counts_queries_and_keeps_settings(
    tiny_model, toy: Path, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    report = evaluate(
        tiny_model("bert", "cross-encoder"), toy, depth=4, queries=3, show_progress_bar=False
    )
    assert report.n_queries == 3 and report.first_stage == "bm25" and report.depth == 4
    assert set(report.measures) == {"nDCG@10", "RR@10", "R@100"}


def test_evaluate_gives_shallower_depths_from_the_same_scores(
    tiny_model, toy: Path, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    corpus = toy / "corpus.jsonl"
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    words = {w for query in QUERIES for w in (query.split()[0], query.split()[-1])}
    more = [  # each query's first and last word added to every document: deeper pools
        {"_id": f"{r['_id']}-{w}", "title": "", "text": f"{w} {r['text']}"}
        for w in sorted(words)
        for r in rows
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows + more))
    model = tiny_model("bert", "cross-encoder")
    deep = evaluate(model, toy, depth=12, show_progress_bar=False)
    shallow = evaluate(model, toy, depth=10, show_progress_bar=False)
    assert list(deep.by_depth) == ["10"] and shallow.by_depth == {}
    assert deep.by_depth["10"] == pytest.approx(shallow.measures, abs=1e-6)
    candidates = bm25_retrieve(load_beir(toy, "test"), depth=12, use_cache=False)
    assert max(map(len, candidates.values())) > 10  # the cut to 10 removes candidates


def test_calibration_pairs_take_the_most_relevant_judged_document(toy: Path) -> None:
    dataset = load_beir(toy, "dev")
    pairs = calibration_pairs(dataset, 4)
    assert len(pairs) == 4
    for query, document in pairs:
        index = QUERIES.index(query)
        assert document == DOCUMENTS[index]


def test_calibration_triples_add_bm25s_best_non_relevant_document(
    toy: Path, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    dataset = load_beir(toy, "dev")
    triples = calibration_triples(dataset, 4)
    assert [(q, d) for q, d, _ in triples] == calibration_pairs(dataset, 4)
    run = bm25_retrieve(dataset, depth=100, show_progress_bar=False)
    for query, positive, negative in triples:
        query_id = f"q{QUERIES.index(query)}"
        ranking = [dataset.document_text(d) for q, d in candidate_pairs(run, 100) if q == query_id]
        assert negative == next(text for text in ranking if text != positive)


def test_calibration_triples_say_which_queries_have_no_negative(
    toy: Path, monkeypatch, tmp_path: Path, caplog
) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    dataset = load_beir(toy, "dev")
    run = bm25_retrieve(dataset, depth=1, show_progress_bar=False)
    # With depth 1, a query whose top document is its judged one has no negative.
    without = [q for q, d in candidate_pairs(run, 1) if dataset.qrels[q].get(d, 0) > 0]
    assert without  # the Berlin query at least
    with caplog.at_level("WARNING"):
        triples = calibration_triples(dataset, len(QUERIES), depth=1)
    assert len(triples) == len(QUERIES) - len(without)
    assert f"{len(without)} of {len(QUERIES)} calibration queries" in caplog.text


def test_evaluate_simulates_a_plan_and_restores_the_model(
    tiny_model, toy: Path, monkeypatch, tmp_path: Path
) -> None:
    import numpy as np

    from relcomp.artifacts import CompressionPlan

    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model("bert", "cross-encoder")
    before = model.score(QUERIES, DOCUMENTS[: len(QUERIES)])
    plan = CompressionPlan(model.name, {"_default": "prune_weights(ratio=0.5)"}, method="manual")
    plan_file = plan.save(tmp_path / "plan.json")
    reference = evaluate(model, toy, depth=4, show_progress_bar=False)
    compressed = evaluate(model, toy, depth=4, plan=plan_file, show_progress_bar=False)
    assert compressed.settings["plan"]["variant"] != "fp32"
    assert compressed.per_query != reference.per_query or compressed.measures == reference.measures
    assert np.array_equal(before, model.score(QUERIES, DOCUMENTS[: len(QUERIES)]))
    assert model.variant == "fp32"


def test_plan_calibration_never_uses_the_evaluated_split(tiny_model, toy: Path) -> None:
    from relcomp.artifacts import CompressionPlan
    from relcomp.pipeline import apply_plan

    model = tiny_model("bert", "cross-encoder")
    plan = CompressionPlan(model.name, {"_default": "prune_weights(ratio=0.5)"})
    with (
        pytest.raises(ValueError, match="evaluated split"),
        apply_plan(model, plan, toy, split="test"),
    ):
        pass


def test_each_evaluation_reports_its_own_truncation(
    tiny_model, toy: Path, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model("bert", "cross-encoder")
    monkeypatch.setattr(model, "max_length", 8)  # every pair is longer; the model is shared
    first = evaluate(model, toy, depth=3, use_cache=False, show_progress_bar=False)
    second = evaluate(model, toy, depth=3, use_cache=False, show_progress_bar=False)
    assert first.truncation["truncated"] > 0
    assert second.truncation == first.truncation  # not the model's running total
    assert model.truncation["inputs"] == 2 * first.truncation["inputs"]
