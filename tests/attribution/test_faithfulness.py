"""Faithfulness: deletion curves, AOPC, ΔA^F and rank drop, checked against a leave-one-out oracle."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from relcomp.artifacts import TokenRelevance
from relcomp.attribution.baselines import Random
from relcomp.attribution.faithfulness import (
    DocumentWords,
    FaithfulnessResult,
    delete_words,
    deletion_curves,
    document_words,
    faithfulness,
    rank_drop,
)
from relcomp.attribution.tokens import DOCUMENT
from tests.fixtures import DOCUMENTS, LONG_DOCUMENT, QUERIES

# (query, relevant document) pairs of the tiny fixtures' little world.
PAIRS = [(QUERIES[i], DOCUMENTS[j]) for i, j in [(0, 0), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]]


def _explain(model: Any, method: Any = None) -> list[TokenRelevance]:
    method = method or Random(model, seed=0)
    return method.attribute([q for q, _ in PAIRS], [d for _, d in PAIRS])


def _oracle(
    model: Any, explanations: list[TokenRelevance], sign: float = 1.0
) -> list[TokenRelevance]:
    """Relevance of each document word = the score lost when that word alone is removed."""
    result = []
    for explanation, words in zip(explanations, document_words(model, explanations), strict=True):
        variants = [words.without([i]) for i in range(len(words))]
        lost = explanation.score - model.score([words.query] * len(variants), variants)
        values = iter(sign * lost)
        relevance = tuple(
            float(next(values)) if segment == DOCUMENT else 0.0
            for segment in explanation.word_segment
        )
        result.append(dataclasses.replace(explanation, method="Oracle", word_relevance=relevance))
    return result


def test_delete_words_collapses_whitespace_and_keeps_neighbours_apart():
    assert delete_words("a  big cat", [(3, 6)]) == "a cat"
    assert delete_words("cat, dog", [(3, 4)]) == "cat dog"
    assert delete_words("3,520", [(1, 2)]) == "3 520"
    assert delete_words("big cat", [(0, 3)]) == "cat"
    assert delete_words("big cat", [(4, 7), (0, 3)]) == ""
    assert delete_words("big\ncat", []) == "big\ncat"


def test_document_words_are_the_explanations_words(tiny_model):
    model = tiny_model("bert")
    explanations = _explain(model)
    for explanation, words in zip(explanations, document_words(model, explanations), strict=True):
        expected = [
            w
            for w, s in zip(explanation.words, explanation.word_segment, strict=True)
            if s == DOCUMENT
        ]
        assert [words.text[a:b] for a, b in words.spans] == expected
        assert words.text == explanation.document
        assert isinstance(words, DocumentWords)
        assert words.most_relevant_first()[0] == int(np.argmax(words.relevance))


def test_a_truncated_document_is_cut_where_the_model_stopped_reading(tiny_model):
    model = tiny_model("bert")
    [explanation] = Random(model).attribute([QUERIES[0]], [LONG_DOCUMENT])
    [words] = document_words(model, [explanation])
    assert len(words.text) < len(LONG_DOCUMENT) and LONG_DOCUMENT.startswith(words.text)
    assert model.score([QUERIES[0]], [words.text])[0] == pytest.approx(explanation.score, abs=1e-5)


def test_explanations_of_another_tokenisation_are_refused(tiny_model):
    model = tiny_model("bert")
    [explanation] = Random(model).attribute([QUERIES[1]], [DOCUMENTS[2]])
    broken = dataclasses.replace(explanation, words=("x",) * len(explanation.words))
    with pytest.raises(ValueError, match="tokenises"):
        document_words(model, [broken])


@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
def test_curves_start_at_the_full_score_and_end_at_the_empty_document(tiny_model, kind):
    model = tiny_model("bert", kind)
    explanations = _explain(model)
    curves = deletion_curves(model, explanations)
    scores = np.asarray([e.score for e in explanations])
    np.testing.assert_allclose(curves.morf[:, 0], scores, atol=1e-5)
    np.testing.assert_allclose(curves.lerf[:, 0], scores, atol=1e-5)
    np.testing.assert_allclose(curves.keep[:, -1], scores, atol=1e-5)
    empty = model.score([q for q, _ in PAIRS], [""] * len(PAIRS))
    for curve in (curves.morf[:, -1], curves.lerf[:, -1], curves.keep[:, 0], curves.empty):
        np.testing.assert_allclose(curve, empty, atol=1e-5)
    result = FaithfulnessResult.from_curves(curves, "Random")
    assert result.morf_curve[0] == pytest.approx(scores.mean(), abs=1e-5)
    assert len(result.morf_curve) == len(result.lerf_curve) == 11


def test_every_variant_is_scored_in_one_batched_call(tiny_model, monkeypatch):
    model = tiny_model("bert")
    explanations = _explain(model)
    calls: list[int] = []
    score = model.score

    def counting(queries: Any, documents: Any, **kwargs: Any) -> np.ndarray:
        calls.append(len(queries))
        assert len(set(zip(queries, documents, strict=True))) == len(queries)  # no duplicates
        return score(queries, documents, **kwargs)

    monkeypatch.setattr(model, "score", counting)
    deletion_curves(model, explanations, batch_size=64)
    assert len(calls) == 1
    # full and empty documents are shared by the three orders: far fewer than 3 × 11 per pair
    assert calls[0] < len(PAIRS) * 3 * 11


def test_the_leave_one_out_oracle_beats_random(tiny_model):
    model = tiny_model("bert")
    random_explanations = _explain(model)
    oracle = faithfulness(model, _oracle(model, random_explanations))
    random = faithfulness(model, random_explanations)
    assert oracle.aopc_comprehensiveness > random.aopc_comprehensiveness
    assert oracle.aopc_sufficiency < random.aopc_sufficiency
    assert oracle.delta_af > random.delta_af
    assert oracle.delta_af > 0
    assert oracle.n_pairs == len(PAIRS) and oracle.method == "Oracle"


def test_delta_af_changes_sign_with_the_relevance(tiny_model):
    model = tiny_model("bert")
    explanations = _explain(model)
    oracle = faithfulness(model, _oracle(model, explanations))
    anti = faithfulness(model, _oracle(model, explanations, sign=-1.0))
    assert oracle.delta_af > 0 > anti.delta_af
    # Reversing the relevance swaps the MoRF and LeRF curves exactly.
    assert anti.delta_af == pytest.approx(-oracle.delta_af, rel=1e-9)
    np.testing.assert_allclose(anti.morf_curve, oracle.lerf_curve)


def test_faithfulness_result_dict_has_the_agreed_keys(tiny_model):
    model = tiny_model("bert")
    result = faithfulness(model, _explain(model)[:2], fractions=(0.0, 0.5, 1.0))
    data = result.to_dict()
    assert {
        "aopc_comprehensiveness",
        "aopc_sufficiency",
        "delta_af",
        "morf_curve",
        "lerf_curve",
        "n_pairs",
    } <= set(data)
    assert data["n_pairs"] == 2 and len(data["morf_curve"]) == 3
    assert data["fractions"] == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="increase"):
        faithfulness(model, _explain(model)[:1], fractions=(0.5, 0.2))


def test_rank_drop_counts_candidates_scored_higher(tiny_model):
    model = tiny_model("bert")
    explanations = _oracle(model, _explain(model))
    candidates = [list(DOCUMENTS) for _ in PAIRS]  # includes each pair's own document
    result = rank_drop(model, explanations, candidates, ks=(1, 3, 100))
    for explanation, initial, pool in zip(
        explanations, result.initial_ranks, candidates, strict=True
    ):
        others = [d for d in pool if d != explanation.document]
        scores = model.score([explanation.query] * len(others), others)
        assert initial == 1 + int(np.sum(scores > explanation.score))
    # Removing every word leaves the empty document; ranks can only be 1..len(others) + 1.
    assert all(1 <= rank <= len(DOCUMENTS) for rank in result.ranks[100])
    changes = result.mean_rank_change
    assert set(changes) == {1, 3, 100}
    # The oracle removes the word whose loss costs most, its reverse the one that costs
    # least: per pair, the oracle's document ends at least as low.
    anti = rank_drop(model, _oracle(model, _explain(model), sign=-1.0), candidates, ks=(1,))
    assert all(o >= a for o, a in zip(result.ranks[1], anti.ranks[1], strict=True))
    assert changes[1] >= anti.mean_rank_change[1]
    assert result.to_dict()["mean_rank_change"]["3"] == changes[3]
    with pytest.raises(ValueError, match="one candidate list per explanation"):
        rank_drop(model, explanations, candidates[:1])


def test_a_shared_memo_scores_each_pair_once_across_methods(tiny_model, monkeypatch):
    model = tiny_model("bert")
    first, second = _explain(model), _explain(model, Random(model, seed=1))
    candidates = [list(DOCUMENTS) for _ in PAIRS]
    expected = [
        faithfulness(model, first).to_dict(),
        faithfulness(model, second).to_dict(),
        rank_drop(model, first, candidates).to_dict(),
        rank_drop(model, second, candidates).to_dict(),
    ]
    scored: list[tuple[str, str]] = []
    score = model.score

    def counting(queries: Any, documents: Any, **kwargs: Any) -> np.ndarray:
        scored.extend(zip(queries, documents, strict=True))
        return score(queries, documents, **kwargs)

    monkeypatch.setattr(model, "score", counting)
    memo: dict[tuple[str, str], float] = {}
    shared = [
        faithfulness(model, first, memo=memo).to_dict(),
        faithfulness(model, second, memo=memo).to_dict(),
        rank_drop(model, first, candidates, memo=memo).to_dict(),
        rank_drop(model, second, candidates, memo=memo).to_dict(),
    ]
    # The same figures (up to float32 rounding: a pair may share a batch with others).
    for ours, theirs in zip(shared, expected, strict=True):
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, str):
                assert ours[key] == value
            elif isinstance(value, dict):
                assert ours[key].keys() == value.keys()
                for inner, figures in value.items():
                    np.testing.assert_allclose(ours[key][inner], figures, rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_allclose(ours[key], value, rtol=1e-5, atol=1e-6)
    assert len(scored) == len(set(scored)) == len(memo)  # every pair scored once in all
