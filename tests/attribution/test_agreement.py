"""Explanation parity: identical models agree fully, a pruned model less, bad input is refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from relcomp.artifacts import CompressionPlan
from relcomp.attribution.agreement import explanation_agreement, token_agreement
from relcomp.compression import prune_physically
from relcomp.errors import RelcompError
from tests.fixtures import DOCUMENTS, QUERIES


def test_token_agreement_against_a_hand_computed_case() -> None:
    reference = np.array([4.0, 3.0, 2.0, 1.0])
    candidate = np.array([3.0, 4.0, 1.0, 2.0])  # ranks (2,1,4,3) against (1,2,3,4): rho 0.6
    figures = token_agreement(reference, candidate, k=2)
    assert figures["spearman"] == pytest.approx(0.6)
    assert figures["top_k_overlap"] == 1.0
    assert token_agreement(reference, -reference, k=2)["top_k_overlap"] == 0.0
    with pytest.raises(RelcompError, match="not finite"):
        token_agreement(reference, np.array([1.0, np.nan, 0.0, 0.0]))
    with pytest.raises(RelcompError, match="same tokens"):
        token_agreement(reference, reference[:3])


@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
def test_a_model_agrees_with_itself_and_a_pruned_copy_less(tiny_model: Any, kind: str) -> None:
    model = tiny_model("minilm", kind)
    queries, documents = list(QUERIES[:3]), list(DOCUMENTS[:3])
    same = explanation_agreement(model, model, queries, documents)
    assert same["spearman"] == pytest.approx(1.0) and same["top_k_overlap"] == 1.0
    pruned = prune_physically(
        model, CompressionPlan("m", {"_default": "prune_neurons(ratio=0.75)"})
    )
    moved = explanation_agreement(model, pruned, queries, documents)
    assert moved["n_pairs"] == 3 and len(moved["per_pair"]) == 3
    assert moved["spearman"] < 0.99


def test_another_max_length_is_refused(tiny_model: Any) -> None:
    model, other = tiny_model("minilm"), tiny_model("minilm")
    other.max_length = 8
    with pytest.raises(RelcompError, match="tokenize a pair differently"):
        explanation_agreement(model, other, [QUERIES[0]], [DOCUMENTS[0]])
