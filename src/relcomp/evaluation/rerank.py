"""Re-ranking a first-stage run with a model that scores (query, document) pairs."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from relcomp.checks import require_finite
from relcomp.errors import RelcompError
from relcomp.evaluation._common import Run, progress_enabled, ranked
from relcomp.evaluation.beir import BeirDataset
from relcomp.evaluation.cache import Cache
from relcomp.evaluation.executor import ChunkExecutor, ChunkTask

__all__ = ["PairScorer", "PairScoring", "candidate_pairs", "rerank"]

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
    *,
    use_cache: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    chunk_size: int = 1024,
    executor: ChunkExecutor | None = None,
) -> Run:
    """Re-score each query's top-``depth`` candidates with ``model.score``.

    The pairs of all queries are scored together, longest first, so the model
    batches across queries and one progress bar covers the whole job. Documents
    are ``"title text"`` (:meth:`BeirDataset.document_text`). The returned run
    holds only the re-scored candidates; documents below ``depth`` are dropped,
    and a query with no candidates keeps an empty ranking.

    With ``use_cache`` and a model that has a ``cache_key``, scores are saved in the
    on-disk cache every ``chunk_size`` pairs: an interrupted re-ranking (30,000
    pairs is an hour on 2 cores) resumes where it stopped, and a repeated one costs
    nothing. The model's truncation tally is kept with the scores and added back
    when they are read, so truncation is reported either way.

    Args:
        model: anything with ``score(queries, documents, batch_size, show_progress_bar)``.
        dataset: the collection the run was made on.
        run: the first-stage run.
        depth: how many candidates per query to re-score.
        batch_size: pairs per forward pass.
        show_progress_bar: passed to the model; ``None`` follows the logger level.
        use_cache: save and read scores in the on-disk cache (keyed by
            ``model.cache_key``, the collection and the pairs).
        cache_dir: the cache folder (``$RELCOMP_CACHE_DIR`` by default).
        chunk_size: pairs per saved chunk when caching.
        executor: where the chunks are scored (:mod:`relcomp.evaluation.executor`);
            ``None`` scores them here. With an executor the pairs are always scored
            in chunks, cached or not, so the scores equal the cached path's exactly.

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
    queries = [dataset.queries[qid] for qid, _ in pairs]
    documents = [dataset.document_text(doc_id) for _, doc_id in pairs]
    identity = getattr(model, "cache_key", None)
    cacheable = use_cache and isinstance(identity, str) and bool(identity)
    if cacheable or executor is not None:
        scores = _cached_scores(
            model, identity if cacheable else None, dataset, pairs, queries, documents,
            batch_size, show_progress_bar, cache_dir, chunk_size, executor,
        )  # fmt: skip
    else:
        scores = _scores(model, queries, documents, batch_size, show_progress_bar)
    require_finite(scores, f"{getattr(model, 'name', 'the model')}: re-ranking scores")
    for (qid, doc_id), score in zip(pairs, scores.tolist(), strict=True):
        reranked[qid][doc_id] = score
    return reranked


def _scores(
    model: PairScorer,
    queries: Sequence[str],
    documents: Sequence[str],
    batch_size: int,
    show_progress_bar: bool | None,
) -> np.ndarray:
    scores = np.asarray(
        model.score(queries, documents, batch_size=batch_size, show_progress_bar=show_progress_bar),
        dtype=np.float64,
    ).reshape(-1)
    if scores.shape[0] != len(queries):
        raise RelcompError(f"the model returned {scores.shape[0]} scores for {len(queries)} pairs")
    return scores


class PairScoring(ChunkTask):
    """Re-ranking as chunked work: a chunk is its (query, document) texts.

    ``run`` scores them with ``model.score`` and returns the inputs the model
    truncated meanwhile (its ``truncation`` tally, when it keeps one).
    """

    def __init__(self, queries: Sequence[str], documents: Sequence[str], batch_size: int) -> None:
        self.queries = queries
        self.documents = documents
        self.batch_size = batch_size

    def payload(self, indices: Sequence[int]) -> Any:
        return (
            [self.queries[i] for i in indices],
            [self.documents[i] for i in indices],
            self.batch_size,
        )

    @staticmethod
    def run(model: Any, payload: Any) -> tuple[np.ndarray, Mapping[str, int]]:
        queries, documents, batch_size = payload
        tally: Any = getattr(model, "truncation", None)
        before = Counter(tally) if isinstance(tally, Counter) else Counter()
        values = _scores(model, queries, documents, batch_size, False)
        after = Counter(tally) if isinstance(tally, Counter) else Counter()
        return values, after - before


def _cached_scores(
    model: PairScorer,
    identity: str | None,
    dataset: BeirDataset,
    pairs: Sequence[tuple[str, str]],
    queries: Sequence[str],
    documents: Sequence[str],
    batch_size: int,
    show_progress_bar: bool | None,
    cache_dir: str | os.PathLike[str] | None,
    chunk_size: int,
    executor: ChunkExecutor | None = None,
) -> np.ndarray:
    """Scores saved chunk by chunk (longest pairs first, as ``score`` batches them).

    ``identity`` ``None`` computes the same chunks without reading or writing the cache.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise RelcompError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    order = np.argsort(
        [-(len(q) + len(d)) for q, d in zip(queries, documents, strict=True)], kind="stable"
    )
    chunks = [order[i : i + chunk_size].tolist() for i in range(0, len(order), chunk_size)]
    digest = hashlib.sha256("\n".join(f"{q}\t{d}" for q, d in pairs).encode("utf-8"))
    material = {
        "model": identity,
        **dataset.corpus_identity(),
        **dataset.queries_identity(),
        "pairs": digest.hexdigest()[:32],
        "text": "title text",
    }
    tally: Any = getattr(model, "truncation", None)

    def snapshot() -> Counter[str]:
        return Counter(tally) if isinstance(tally, Counter) else Counter()

    task = PairScoring(queries, documents, batch_size)

    def compute(index: Sequence[int]) -> tuple[np.ndarray, Mapping[str, int]]:
        return task.run(model, task.payload(index))

    def map_chunks(todo: Sequence[Sequence[int]]) -> Any:
        assert executor is not None
        return executor.map(model, task, todo)

    bar = None
    if progress_enabled(show_progress_bar):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), desc="Re-ranking pairs", unit="pair")
    try:
        cache = Cache(cache_dir, enabled=identity is not None)
        cache_before = snapshot()
        scores, total = cache.chunked(
            "rerank", material, chunks, None if executor is not None else compute,
            length=len(pairs), on_chunk=bar.update if bar is not None else None,
            map_chunks=map_chunks if executor is not None else None,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    if isinstance(tally, Counter):
        # Chunks computed now are already in the model's tally; add the ones read back.
        computed = snapshot() - cache_before
        tally.update(total - computed)
    return scores
