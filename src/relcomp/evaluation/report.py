"""From a run to a :class:`~relcomp.artifacts.QualityReport`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from relcomp.artifacts import QualityReport
from relcomp.checks import require_finite
from relcomp.evaluation._common import Run
from relcomp.evaluation.beir import BeirDataset
from relcomp.evaluation.metrics import DEFAULT_MEASURES, evaluate_run, tie_rate
from relcomp.evaluation.rerank import candidate_pairs

__all__ = ["SHALLOWER_DEPTHS", "quality_report", "shallower"]

#: The re-ranking depths a re-ranker's report also gives (those below its own depth).
SHALLOWER_DEPTHS = (10, 20, 30, 50)


def shallower(
    run: Mapping[str, Mapping[str, float]],
    candidates: Mapping[str, Mapping[str, float]],
    depth: int,
) -> Run:
    """A re-ranked run cut to what re-ranking only the first stage's top-``depth`` gives.

    Each query keeps the documents of ``run`` that are among its top-``depth`` in
    ``candidates`` (the first stage's run; the pairs :func:`candidate_pairs` gives), with their
    re-ranked scores. A re-ranker scores each pair on its own, so this is the run a
    re-ranking at that depth would have produced.

    Example:
        >>> first = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}}
        >>> shallower({"q1": {"d1": 0.1, "d2": 0.5, "d3": 0.9}}, first, depth=2)
        {'q1': {'d1': 0.1, 'd2': 0.5}}
    """
    kept = set(candidate_pairs(candidates, depth))
    return {
        qid: {doc_id: score for doc_id, score in scores.items() if (qid, doc_id) in kept}
        for qid, scores in run.items()
    }


def quality_report(
    model: str,
    dataset: BeirDataset,
    run: Mapping[str, Mapping[str, float]],
    measures: Iterable[str] = DEFAULT_MEASURES,
    *,
    query_ids: Iterable[str] | None = None,
    first_stage: str | None = None,
    depth: int | None = None,
    max_length: int | None = None,
    truncation: Mapping[str, int] | None = None,
    settings: Mapping[str, Any] | None = None,
    tie_k: int = 10,
    candidates: Mapping[str, Mapping[str, float]] | None = None,
) -> QualityReport:
    """Evaluate a run on a dataset's split and package the result as a :class:`QualityReport`.

    Args:
        model: the system's name as reported (a model name, ``"bm25"``…).
        dataset: the collection; its ``qrels`` are the judgements.
        run: the system's run.
        measures: ir_measures names; the report keeps them as given.
        query_ids: evaluate on these judged queries only (a quick-protocol sample);
            every judged query of the split by default.
        first_stage: what produced the candidates a reranker saw (``"bm25"``), if any.
        depth: the re-ranking or retrieval depth.
        max_length: the model's maximum input length.
        truncation: the model's truncation counter (``{"inputs", "truncated"}``).
        settings: anything else worth recording (protocol, seed, batch size…).
        tie_k: the cut-off of the tie rate (top-10).
        candidates: the first stage's run, when ``run`` re-ranks it to ``depth``: the
            report's ``by_depth`` then gives the measures at each of
            :data:`SHALLOWER_DEPTHS` below ``depth`` (see :func:`shallower`).

    Returns:
        The report: mean and per-query measures, number of queries, tie rate and,
        with ``candidates``, the measures at shallower re-ranking depths.

    Example:
        >>> from pathlib import Path
        >>> corpus = {"d1": ("", "a"), "d2": ("", "b")}
        >>> toy = BeirDataset("toy", Path("toy"), "test", corpus, {"q1": "a"}, {"q1": {"d1": 1}})
        >>> report = quality_report("bm25", toy, {"q1": {"d2": 1.0, "d1": 1.0}}, ["RR@10"])
        >>> report.measures, report.n_queries, report.tie_rate
        ({'RR@10': 1.0}, 1, 1.0)
    """
    ids = None if query_ids is None else list(query_ids)
    measures = list(measures)
    for query_id, scores in run.items():  # a NaN would rank anywhere and report a perfect nDCG
        require_finite(list(scores.values()), f"{model}: scores of query {query_id!r}")
    means, per_query = evaluate_run(dataset.qrels, run, measures, query_ids=ids)
    evaluated = list(per_query)
    by_depth = {}
    if candidates is not None and depth is not None:
        for k in SHALLOWER_DEPTHS:
            if k < depth:
                cut = shallower(run, candidates, k)
                at_k, _ = evaluate_run(dataset.qrels, cut, measures, query_ids=evaluated)
                by_depth[str(k)] = at_k
    return QualityReport(
        model=model,
        dataset=dataset.name,
        split=dataset.split,
        measures=means,
        per_query=per_query,
        n_queries=len(evaluated),
        first_stage=first_stage,
        depth=depth,
        max_length=max_length,
        tie_rate=tie_rate(run, tie_k, query_ids=evaluated),
        truncation=dict(truncation or {}),
        settings=dict(settings or {}),
        by_depth=by_depth,
    )
