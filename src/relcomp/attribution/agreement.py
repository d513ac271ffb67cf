"""Explanation parity: does a compressed model rank for the same reasons as the original?

Scores can agree while the evidence behind them moves. For each (query, document)
pair both models are explained with the same method (AttnLRP by default), and their
token relevances are compared:

* **Spearman's ρ** over the pair's tokens (special tokens left out): does the
  compressed model order the evidence as the reference does?
* **top-k overlap**: the share of the reference's ``k`` most relevant tokens that are
  also among the compressed model's ``k`` most relevant.

A compressed ONNX bundle is explained through its torch twin (the same plan realised
in torch, before export): ONNX Runtime has no backward pass.

Example:
    >>> import numpy as np
    >>> reference = np.array([0.9, 0.1, 0.5, -0.2])
    >>> round(token_agreement(reference, reference * 2, k=2)["spearman"], 3)
    1.0
    >>> token_agreement(reference, reference[::-1].copy(), k=2)["top_k_overlap"]
    0.0
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from relcomp.errors import RelcompError

__all__ = ["explanation_agreement", "token_agreement"]

logger = logging.getLogger(__name__)


def token_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> dict[str, float]:
    """Spearman's ρ and top-``k`` overlap of two relevance vectors over the same tokens."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape or reference.ndim != 1:
        raise RelcompError(
            f"token relevances must cover the same tokens: shapes {reference.shape} and {candidate.shape}"
        )
    if not (np.isfinite(reference).all() and np.isfinite(candidate).all()):
        raise RelcompError("a token relevance is not finite; explanation parity cannot be measured")
    k = min(k, reference.size)
    top_reference = set(np.argsort(-reference, kind="stable")[:k].tolist())
    top_candidate = set(np.argsort(-candidate, kind="stable")[:k].tolist())
    if np.ptp(reference) == 0 or np.ptp(candidate) == 0:
        rho = 1.0 if np.array_equal(reference, candidate) else 0.0
    else:
        rho = float(spearmanr(reference, candidate).statistic)
    return {"spearman": rho, "top_k_overlap": len(top_reference & top_candidate) / k}


def explanation_agreement(
    reference: Any,
    candidate: Any,
    queries: Sequence[str],
    documents: Sequence[str],
    *,
    method: str = "attnlrp",
    k: int = 10,
) -> dict[str, Any]:
    """Token-relevance agreement of two torch models on the same pairs.

    Args:
        reference: the uncompressed model.
        candidate: the compressed model (torch: physically pruned, recovered, or under
            a ``compress_`` handle), with the same tokenizer and ``max_length``.
        queries: one query per pair.
        documents: one document per pair.
        method: an attribution method name (:func:`relcomp.attribution.get_method`).
        k: the size of the top-k token sets compared.

    Returns:
        ``{"method", "k", "n_pairs", "spearman", "top_k_overlap", "per_pair": [...]}``:
        means over pairs, and each pair's figures.
    """
    from relcomp.attribution import get_method

    if len(queries) != len(documents) or not queries:
        raise RelcompError("explanation parity needs one or more (query, document) pairs")
    explain_reference = get_method(method)(reference)
    explain_candidate = get_method(method)(candidate)
    per_pair = []
    for query, document in zip(queries, documents, strict=True):
        [ours] = explain_reference.attribute([query], [document])
        [theirs] = explain_candidate.attribute([query], [document])
        if ours.tokens != theirs.tokens:
            raise RelcompError(
                "the two models tokenize a pair differently (another tokenizer or max length); "
                "explanation parity compares the same tokens"
            )
        keep = [i for i, segment in enumerate(ours.segment) if segment >= 0]
        figures = token_agreement(
            np.asarray(ours.relevance)[keep], np.asarray(theirs.relevance)[keep], k=k
        )
        per_pair.append({"query": query[:80], **{key: round(v, 6) for key, v in figures.items()}})
    return {
        "method": method,
        "k": k,
        "n_pairs": len(per_pair),
        "spearman": float(np.mean([p["spearman"] for p in per_pair])),
        "top_k_overlap": float(np.mean([p["top_k_overlap"] for p in per_pair])),
        "per_pair": per_pair,
    }
