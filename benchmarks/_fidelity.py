"""Fidelity to fp32 on dev data: Kendall's tau of each query's ranking and the score error.

Shared by the benchmarks that choose a setting on the calibration split without touching
test queries (``activation_quantization.py``, ``low_rank.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import kendalltau

from relcomp.evaluation import bm25_retrieve
from relcomp.evaluation.rerank import candidate_pairs


def evaluation_groups(
    dataset: Any, calibration: set[str], queries: int, depth: int
) -> list[tuple[str, list[str]]]:
    """(query, BM25's top-``depth`` documents) for the first ``queries`` judged queries
    (by id) whose text is not a calibration query."""
    chosen = [q for q in sorted(dataset.qrels) if dataset.query_text(q) not in calibration]
    chosen = chosen[:queries]
    run = bm25_retrieve(dataset, chosen, depth=depth, show_progress_bar=False)
    groups: dict[str, list[str]] = {}
    for query_id, doc_id in candidate_pairs(run, depth):
        groups.setdefault(query_id, []).append(dataset.document_text(doc_id))
    return [(dataset.query_text(q), docs) for q, docs in groups.items() if len(docs) > 1]


def scores_of(model: Any, groups: list[tuple[str, list[str]]]) -> list[np.ndarray]:
    queries = [q for q, docs in groups for _ in docs]
    documents = [d for _, docs in groups for d in docs]
    flat = model.score(queries, documents, show_progress_bar=False)
    out, start = [], 0
    for _, docs in groups:
        out.append(np.asarray(flat[start : start + len(docs)]))
        start += len(docs)
    return out


def compare(reference: list[np.ndarray], other: list[np.ndarray]) -> dict[str, float]:
    taus = [kendalltau(a, b).statistic for a, b in zip(reference, other, strict=True)]
    ref, new = np.concatenate(reference), np.concatenate(other)
    return {
        "kendall_tau": float(np.nanmean(taus)),
        "score_error": float(np.sqrt(np.mean((new - ref) ** 2)) / (ref.std() or 1.0)),
    }
