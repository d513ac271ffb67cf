"""Re-ranking a first-stage run with a model that scores (query, document) pairs."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from relcomp.errors import RelcompError
from relcomp.evaluation._common import Run, ranked
from relcomp.evaluation.beir import BeirDataset

__all__ = ["PairScorer", "candidate_pairs", "rerank"]

logger = logging.getLogger(__name__)


@runtime_checkable
class PairScorer(Protocol):
    """What re-ranking needs: one score per (query, document) pair (cross- or bi-encoder)."""

    def score(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray: ...


def candidate_pairs(run: Mapping[str, Mapping[str, float]], depth: int) -> list[tuple[str, str]]:
    """``(query id, document id)`` for each query's top-``depth`` documents, in run order.

    Candidates are taken by relcomp's ranking rule (higher score first, ties by
    document id ascending).

    Example:
        >>> candidate_pairs({"q1": {"d1": 0.1, "d2": 0.9, "d3": 0.5}}, depth=2)
        [('q1', 'd2'), ('q1', 'd3')]
    """
    if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or depth < 1:
        raise RelcompError(f"depth must be a positive integer, got {depth!r}")
    return [
        (qid, doc_id) for qid, scores in run.items() for doc_id, _ in ranked(scores, int(depth))
    ]


def rerank(
    model: PairScorer,
    dataset: BeirDataset,
    run: Mapping[str, Mapping[str, float]],
    depth: int = 100,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
) -> Run:
    """Re-score each query's top-``depth`` candidates with ``model.score``.

    All (query, document) pairs of all queries are scored in one call, so the
    model batches across queries and one progress bar covers the whole job.
    Documents are ``"title text"`` (:meth:`BeirDataset.document_text`). The
    returned run holds only the re-scored candidates; documents below ``depth``
    are dropped, and a query with no candidates keeps an empty ranking.

    Args:
        model: anything with ``score(queries, documents, batch_size, show_progress_bar)``.
        dataset: the collection the run was made on.
        run: the first-stage run.
        depth: how many candidates per query to re-score.
        batch_size: pairs per forward pass.
        show_progress_bar: passed to the model; ``None`` follows the logger level.

    Returns:
        The re-ranked run ``{query id: {document id: model score}}``.

    Example:
        >>> from pathlib import Path
        >>> class Overlap:
        ...     def score(self, queries, documents, batch_size=32, show_progress_bar=None):
        ...         return np.array([len(set(q.split()) & set(d.split())) for q, d in zip(queries, documents)], dtype=np.float32)
        >>> corpus = {"d1": ("", "a dog"), "d2": ("", "a cat sat")}
        >>> toy = BeirDataset("toy", Path("toy"), "test", corpus, {"q1": "cat sat"}, {"q1": {"d2": 1}})
        >>> rerank(Overlap(), toy, {"q1": {"d1": 2.0, "d2": 1.0}}, depth=2)
        {'q1': {'d1': 0.0, 'd2': 2.0}}
    """
    pairs = candidate_pairs(run, depth)
    missing_queries = sorted({qid for qid in run if qid not in dataset.queries})
    if missing_queries:
        raise RelcompError(
            f"the run has {len(missing_queries)} query id(s) not in {dataset.name}, e.g. {missing_queries[:3]}"
        )
    missing_documents = sorted({doc_id for _, doc_id in pairs if doc_id not in dataset.corpus})
    if missing_documents:
        raise RelcompError(
            f"the run has {len(missing_documents)} document id(s) not in {dataset.name}, "
            f"e.g. {missing_documents[:3]}"
        )
    reranked: Run = {qid: {} for qid in run}
    if not pairs:
        return reranked
    logger.info("re-ranking %d pairs (%d queries, depth %d)", len(pairs), len(run), depth)
    scores = np.asarray(
        model.score(
            [dataset.queries[qid] for qid, _ in pairs],
            [dataset.document_text(doc_id) for _, doc_id in pairs],
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
        ),
        dtype=np.float64,
    ).reshape(-1)
    if scores.shape[0] != len(pairs):
        raise RelcompError(f"the model returned {scores.shape[0]} scores for {len(pairs)} pairs")
    for (qid, doc_id), score in zip(pairs, scores.tolist(), strict=True):
        reranked[qid][doc_id] = score
    return reranked
