"""One system's quality on a set of queries: its first stage, its re-ranking, its report.

A system is ``"bm25"`` alone, a bi-encoder retrieving exhaustively, or any scorer
re-ranking a first stage's candidates (BM25 unless told otherwise). Every quality
figure relcomp reports goes through :func:`evaluate_scorer`, so the evaluation a
user runs, the compress flow's evaluation and the quality gate measure alike.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from relcomp.artifacts import QualityReport
from relcomp.evaluation._common import Run
from relcomp.evaluation.beir import BeirDataset
from relcomp.evaluation.executor import ChunkExecutor
from relcomp.evaluation.first_stage import encode_corpus, retrieve
from relcomp.evaluation.metrics import DEFAULT_MEASURES
from relcomp.evaluation.report import quality_report
from relcomp.evaluation.rerank import PairScorer, candidate_pairs, rerank
from relcomp.models import BiEncoder, RankingModel, load_model

__all__ = ["BM25", "evaluate_scorer", "load_first_stage", "rerank_with_corpus_embeddings"]

logger = logging.getLogger(__name__)

#: The lexical first stage's name.
BM25 = "bm25"


def load_first_stage(first_stage: str | os.PathLike[str] | RankingModel) -> str | BiEncoder:
    """A first stage: ``"bm25"`` stays a name, a bi-encoder is loaded; anything else is refused.

    Example:
        >>> load_first_stage("BM25")
        'bm25'
    """
    if isinstance(first_stage, RankingModel):
        stage: Any = first_stage
    elif str(first_stage).lower() == BM25:
        return BM25
    else:
        stage = load_model(first_stage)
    if isinstance(stage, BiEncoder):
        return stage
    raise ValueError(f"--first-stage must be 'bm25' or a bi-encoder, got a {type(stage).__name__}")


def evaluate_scorer(
    scorer: str | PairScorer,
    dataset: BeirDataset,
    query_ids: Sequence[str],
    *,
    first_stage: str | os.PathLike[str] | RankingModel | None = None,
    depth: int = 100,
    batch_size: int = 32,
    measures: Sequence[str] = DEFAULT_MEASURES,
    use_cache: bool = True,
    cache_scores: bool | None = None,
    show_progress_bar: bool | None = None,
    settings: Mapping[str, Any] | None = None,
    exhaustive: Callable[..., Run] | None = None,
    executor: ChunkExecutor | None = None,
) -> QualityReport:
    """The quality of ``scorer`` on ``query_ids`` of ``dataset``.

    Args:
        scorer: ``"bm25"``, a bi-encoder, or any model with ``score(queries, documents)``.
        dataset: the split evaluated.
        query_ids: the queries evaluated.
        first_stage: ``"bm25"``, a bi-encoder (name or model), or ``None``: exhaustive
            retrieval for a bi-encoder, BM25 for anything else.
        depth: first-stage depth (and retrieval depth).
        batch_size: pairs or texts per forward pass.
        measures: ir_measures names.
        use_cache: read and write the on-disk caches of runs, scores and embeddings.
        cache_scores: cache the re-ranking's scores too (default: ``use_cache``).
        show_progress_bar: tqdm bars.
        settings: recorded in the report (what chose the queries, …).
        exhaustive: a bi-encoder's exhaustive retrieval done another way, e.g. through
            a compressed index (``exhaustive(model, dataset, query_ids, depth, **options)``).
        executor: where re-ranking scores and corpus embeddings are computed, chunk by
            chunk (:mod:`relcomp.evaluation.executor`); ``None`` computes them here.
            Either way the chunks land in the same cache and the figures are equal.
    """
    options: dict[str, Any] = {"show_progress_bar": show_progress_bar, "use_cache": use_cache}
    own = {**options, "use_cache": use_cache if cache_scores is None else cache_scores}
    chunked: dict[str, Any] = {"executor": executor} if executor is not None else {}
    # The model counts truncated inputs over its life; this report gives this evaluation's.
    tally_before = dict(scorer.truncation) if isinstance(scorer, RankingModel) else {}
    if first_stage is None and scorer != BM25 and not isinstance(scorer, BiEncoder):
        first_stage = BM25  # a re-ranker re-ranks BM25 unless told otherwise
    candidates: Mapping[str, Mapping[str, float]] | None = None  # what a re-ranker re-scored
    if exhaustive is not None and first_stage is None and isinstance(scorer, BiEncoder):
        run = exhaustive(scorer, dataset, query_ids, depth, batch_size=batch_size, **own)
        name, stage_name = scorer.name, None
    elif scorer == BM25 or first_stage is None:  # a first stage on its own: BM25 or exhaustive
        assert isinstance(scorer, str | BiEncoder)
        run = retrieve(
            scorer,
            dataset,
            query_ids,
            depth,
            batch_size=batch_size,
            **(options if scorer == BM25 else {**own, **chunked}),
        )
        name, stage_name = scorer if isinstance(scorer, str) else scorer.name, None
    else:
        assert not isinstance(scorer, str)
        stage = load_first_stage(first_stage)
        candidates = retrieve(
            stage,
            dataset,
            query_ids,
            depth,
            batch_size=batch_size,
            **options,
            **({} if isinstance(stage, str) else chunked),
        )
        if isinstance(scorer, BiEncoder):
            run = rerank_with_corpus_embeddings(
                scorer, dataset, candidates, depth, batch_size, **own, **chunked
            )
        else:
            run = rerank(
                scorer,
                dataset,
                candidates,
                depth=depth,
                batch_size=batch_size,
                **own,
                **chunked,
            )
        name = str(getattr(scorer, "name", type(scorer).__name__))
        stage_name = stage if isinstance(stage, str) else stage.name
    truncation = (
        {key: count - tally_before.get(key, 0) for key, count in scorer.truncation.items()}
        if isinstance(scorer, RankingModel)
        else {}
    )
    if isinstance(scorer, RankingModel) and truncation.get("truncated"):
        logger.warning("%s: %s", scorer.name, scorer.truncation_summary(truncation))
    return quality_report(
        name,
        dataset,
        run,
        measures=measures,
        query_ids=query_ids,
        first_stage=stage_name,
        depth=depth,
        max_length=scorer.max_length if isinstance(scorer, RankingModel) else None,
        truncation=truncation,
        candidates=candidates,
        settings=settings,
    )


def rerank_with_corpus_embeddings(
    model: BiEncoder,
    dataset: Any,
    candidates: Mapping[str, Mapping[str, float]],
    depth: int,
    batch_size: int = 32,
    **options: Any,
) -> dict[str, dict[str, float]]:
    """Re-rank candidates with a bi-encoder from its (cached) corpus embeddings.

    Scores equal ``model.score(query, document)``; the corpus is encoded once per
    model and collection and read from the cache afterwards.
    """
    documents = encode_corpus(model, dataset, batch_size=batch_size, **options)
    row_of = {doc_id: row for row, doc_id in enumerate(dataset.sorted_doc_ids)}
    query_ids = list(candidates)
    queries = model.encode_queries(
        [dataset.query_text(q) for q in query_ids],
        batch_size=batch_size,
        show_progress_bar=options.get("show_progress_bar"),
    )  # queries are few: encoded here
    run = {}
    for query_id, vector in zip(query_ids, queries, strict=True):
        doc_ids = [doc_id for _, doc_id in candidate_pairs({query_id: candidates[query_id]}, depth)]
        rows = documents[[row_of[doc_id] for doc_id in doc_ids]]
        scores = model.similarity(np.broadcast_to(vector, rows.shape), rows)
        run[query_id] = dict(zip(doc_ids, scores.tolist(), strict=True))
    return run
