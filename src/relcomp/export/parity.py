"""Parity: does the exported model score and rank like the model it came from?

:func:`check_parity` scores the same groups of (query, candidates) with both models
and measures the score error (max and mean ``|Δscore|``) and the ranking agreement
(Kendall's τ-b within each group, top-10 overlap, tie rates). :func:`parity_groups`
makes the groups from real data: a seeded sample of a BEIR split's queries, each with
its BM25 candidates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from relcomp.artifacts import ParityReport
from relcomp.checks import require_finite, require_finite_tree
from relcomp.models.base import Scorer, truncation_since

__all__ = ["ParityGroups", "check_parity"]

#: ``{query id: (query text, [candidate document texts])}``
ParityGroups = Mapping[str, tuple[str, Sequence[str]]]


def _ranking(scores: np.ndarray) -> list[int]:
    """Candidate indices by score, higher first, ties by index (relcomp's ranking rule)."""
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))


def check_parity(
    reference: Scorer,
    candidate: Scorer,
    groups: ParityGroups,
    *,
    batch_size: int = 32,
    k: int = 10,
    show_progress_bar: bool | None = None,
    source: Mapping[str, Any] | None = None,
) -> ParityReport:
    """Score error and ranking agreement of ``candidate`` against ``reference``.

    Args:
        reference: the model as trained (torch, fp32).
        candidate: the model as shipped (an ONNX bundle loaded with ``load_model``).
        groups: ``{query id: (query, [documents])}``; every group is one ranking.
        batch_size: pairs per forward pass.
        k: the cut-off of the overlap and of the tie rate.
        show_progress_bar: passed to both models.
        source: where the groups came from (dataset, split), recorded in the report.

    Returns:
        A :class:`~relcomp.artifacts.ParityReport`.

    Example:
        >>> class Length:
        ...     name, cache_key = "length", "length"
        ...     def score(self, queries, documents, batch_size=32, show_progress_bar=None):
        ...         return np.array([len(d) for d in documents], dtype=np.float32)
        >>> report = check_parity(Length(), Length(), {"q1": ("q", ["a", "bbb", "cc"])})
        >>> report.max_abs_diff, round(report.kendall_tau, 6), report.top10_overlap
        (0.0, 1.0, 1.0)
    """
    from scipy.stats import kendalltau

    from relcomp.evaluation import tie_rate

    if not groups:
        raise ValueError("parity needs at least one group of (query, documents)")
    query_ids = list(groups)
    queries: list[str] = []
    documents: list[str] = []
    for query_id in query_ids:
        query, docs = groups[query_id]
        if isinstance(docs, str) or not docs:
            raise ValueError(f"parity group {query_id!r} must hold a non-empty list of documents")
        queries.extend([query] * len(docs))
        documents.extend(docs)
    before = [dict(getattr(model, "truncation", None) or {}) for model in (reference, candidate)]
    ref, cand = (
        np.asarray(
            model.score(
                queries, documents, batch_size=batch_size, show_progress_bar=show_progress_bar
            ),
            dtype=np.float64,
        )
        for model in (reference, candidate)
    )
    for model, scores in ((reference, ref), (candidate, cand)):
        require_finite(scores, f"parity: scores of {getattr(model, 'name', type(model).__name__)}")
    difference = np.abs(ref - cand)
    per_query: dict[str, dict[str, float]] = {}
    taus: list[float] = []
    overlaps: list[float] = []
    runs: tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]] = ({}, {})
    start = 0
    for query_id in query_ids:
        size = len(groups[query_id][1])
        r, c = ref[start : start + size], cand[start : start + size]
        start += size
        runs[0][query_id] = {f"{i:06d}": float(v) for i, v in enumerate(r)}
        runs[1][query_id] = {f"{i:06d}": float(v) for i, v in enumerate(c)}
        top_r, top_c = set(_ranking(r)[:k]), set(_ranking(c)[:k])
        overlap = len(top_r & top_c) / len(top_r)
        overlaps.append(overlap)
        entry = {
            "top10_overlap" if k == 10 else f"top{k}_overlap": overlap,
            "max_abs_diff": float(np.abs(r - c).max()),
        }
        if size >= 2:
            # both rank every candidate equal: they agree (τ-b is undefined there)
            both_flat = np.ptp(r) == 0 and np.ptp(c) == 0
            tau = 1.0 if both_flat else float(kendalltau(r, c).statistic)
            if math.isfinite(tau):
                taus.append(tau)
                entry["tau"] = tau
        per_query[query_id] = entry
    report = ParityReport(
        reference=str(getattr(reference, "name", type(reference).__name__)),
        candidate=str(getattr(candidate, "name", type(candidate).__name__)),
        n_queries=len(query_ids),
        n_pairs=len(queries),
        max_abs_diff=float(difference.max()),
        mean_abs_diff=float(difference.mean()),
        kendall_tau=float(np.mean(taus)) if taus else 1.0,
        kendall_tau_min=float(np.min(taus)) if taus else 1.0,
        top10_overlap=float(np.mean(overlaps)),
        tie_rate_reference=tie_rate(runs[0], k),
        tie_rate_candidate=tie_rate(runs[1], k),
        per_query=per_query,
        source={**(source or {}), **_truncation(reference, candidate, before)},
    )
    # a parity check never passes on a non-finite figure
    require_finite_tree(report.to_dict(), "parity")
    return report


def _truncation(
    reference: Scorer, candidate: Scorer, before: Sequence[Mapping[str, int]]
) -> dict[str, Any]:
    """``{"truncation": {side: counts}}`` for the models that count truncated inputs (not BM25)."""
    counted = {
        side: truncation_since(model, tally, f"parity, {side}")
        for side, model, tally in zip(
            ("reference", "candidate"), (reference, candidate), before, strict=True
        )
        if hasattr(model, "truncation")
    }
    return {"truncation": counted} if counted else {}
