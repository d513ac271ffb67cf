"""Retrieval measures through ir_measures, tie rates, and paired significance through ranx.

Measures are named as ir_measures names them (``nDCG@10``, ``RR@10``, ``R@100``,
``P(rel=2)@5``…); the name a user typed is kept as the key of every result.
ir_measures' defaults apply: nDCG uses the graded judgements as gains; RR and R
count a document as relevant when its grade is at least 1.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ir_measures
import numpy as np

from relcomp.artifacts import NDCG_AT_10
from relcomp.errors import RelcompError
from relcomp.evaluation._common import Qrels, ranked
from relcomp.registry import Registry

__all__ = [
    "DEFAULT_MEASURES",
    "NDCG_AT_10",
    "SIGNIFICANCE_TESTS",
    "compare_runs",
    "evaluate_run",
    "paired_test",
    "parse_measures",
    "tie_rate",
]

logger = logging.getLogger(__name__)

DEFAULT_MEASURES: tuple[str, ...] = (NDCG_AT_10, "RR@10", "R@100")


def parse_measures(measures: Iterable[str | Any]) -> dict[str, Any]:
    """``{name as typed: ir_measures measure}``, with a clear error for a name that does not parse.

    Example:
        >>> parse_measures(["nDCG@10", "R@100"])
        {'nDCG@10': nDCG@10, 'R@100': R@100}
        >>> parse_measures(["nDCG@ten"])
        Traceback (most recent call last):
        ...
        relcomp.errors.RelcompError: cannot parse the measure 'nDCG@ten' ...
    """
    if isinstance(measures, str):
        measures = [measures]
    parsed: dict[str, Any] = {}
    for measure in measures:
        if not isinstance(measure, str):
            parsed[str(measure)] = measure
            continue
        try:
            parsed[measure] = ir_measures.parse_measure(measure.strip())
        except Exception as error:  # ir_measures raises ValueError, NameError, SyntaxError…
            raise RelcompError(
                f"cannot parse the measure {measure!r} ({error}); write measures as ir_measures "
                "does, e.g. nDCG@10, RR@10, R@100, P@10, AP, nDCG(rel=2)@10"
            ) from None
    if not parsed:
        raise RelcompError("no measures given")
    return parsed


def _ranking_scores(scores: Mapping[str, float]) -> dict[str, float]:
    """Scores that spell out relcomp's ranking (score desc, ties by document id asc).

    ir_measures' providers break score ties each their own way (pytrec_eval by
    document id descending, others by input order), so the same run could give
    nDCG and RR computed over two different rankings. Passing rank-derived scores
    makes every measure see the one ranking relcomp retrieved or re-ranked; for a
    run without ties this changes nothing.
    """
    items = ranked(scores)
    n = len(items)
    return {doc_id: float(n - position) for position, (doc_id, _) in enumerate(items)}


def evaluate_run(
    qrels: Qrels,
    run: Mapping[str, Mapping[str, float]],
    measures: Iterable[str | Any] = DEFAULT_MEASURES,
    *,
    query_ids: Iterable[str] | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query values of each measure, over every judged query.

    Queries are those of ``qrels`` (or ``query_ids``, which must all be judged). A
    judged query with no result in the run scores 0 on every measure, and counts in
    the mean; queries of the run that are not judged are ignored. Each query is
    evaluated on the ranking relcomp defines (higher score first, ties by document
    id ascending), whichever ir_measures provider computes the measure.

    Args:
        qrels: ``{query id: {document id: grade}}``.
        run: ``{query id: {document id: score}}``.
        measures: ir_measures measure names (or objects).
        query_ids: evaluate over these judged queries only (a sample).

    Returns:
        ``(means, per_query)``: ``{measure: mean}`` and ``{query id: {measure: value}}``,
        keyed by the measure names as given.

    Raises:
        RelcompError: a measure that does not parse, or a query id with no judgements.

    Example:
        >>> qrels = {"q1": {"d1": 1}, "q2": {"d9": 1}}
        >>> means, per_query = evaluate_run(qrels, {"q1": {"d2": 2.0, "d1": 1.0}}, ["RR@10"])
        >>> means, per_query
        ({'RR@10': 0.25}, {'q1': {'RR@10': 0.5}, 'q2': {'RR@10': 0.0}})
    """
    parsed = parse_measures(measures)
    if query_ids is None:
        evaluated = list(qrels)
    else:
        evaluated = list(dict.fromkeys(query_ids))
        unjudged = [qid for qid in evaluated if qid not in qrels]
        if unjudged:
            raise RelcompError(
                f"{len(unjudged)} query id(s) have no judgements, e.g. {unjudged[:3]}"
            )
    if not evaluated:
        raise RelcompError("there are no judged queries to evaluate")

    eval_qrels = {qid: {doc: int(grade) for doc, grade in qrels[qid].items()} for qid in evaluated}
    eval_run = {qid: _ranking_scores(run[qid]) for qid in evaluated if run.get(qid)}
    per_query: dict[str, dict[str, float]] = {qid: dict.fromkeys(parsed, 0.0) for qid in evaluated}
    names_of: dict[Any, list[str]] = {}
    for name, measure in parsed.items():
        names_of.setdefault(measure, []).append(name)
    if eval_run:
        for metric in ir_measures.iter_calc(list(names_of), eval_qrels, eval_run):
            if metric.query_id in per_query:
                for name in names_of[metric.measure]:
                    per_query[metric.query_id][name] = float(metric.value)
    missing = len(evaluated) - len(eval_run)
    if missing:
        logger.info(
            "%d of %d judged queries have no results; they count as 0", missing, len(evaluated)
        )
    means = {}
    for name, measure in parsed.items():
        aggregator = measure.aggregator()
        for qid in evaluated:
            aggregator.add(per_query[qid][name])
        means[name] = float(aggregator.result())
    return means, per_query


def tie_rate(
    run: Mapping[str, Mapping[str, float]], k: int = 10, *, query_ids: Iterable[str] | None = None
) -> float:
    """Share of adjacent pairs in each query's top-``k`` with exactly equal scores, averaged.

    A query with fewer than two results has no adjacent pair and is left out of the
    average; a run with no such query has a tie rate of 0.

    Example:
        >>> tie_rate({"q1": {"a": 1.0, "b": 1.0, "c": 0.5}, "q2": {"a": 2.0, "b": 1.0}})
        0.25
    """
    ids = (
        list(run) if query_ids is None else [qid for qid in dict.fromkeys(query_ids) if qid in run]
    )
    rates = []
    for qid in ids:
        top = [score for _, score in ranked(run[qid], k)]
        if len(top) < 2:
            continue
        ties = sum(1 for first, second in itertools.pairwise(top) if first == second)
        rates.append(ties / (len(top) - 1))
    return float(np.mean(rates)) if rates else 0.0


# -- significance ---------------------------------------------------------------------
SIGNIFICANCE_TESTS: Registry[str] = Registry("significance test")
SIGNIFICANCE_TESTS.register("student", "t-test", "paired-t")("student")
SIGNIFICANCE_TESTS.register("fisher", "permutation", "randomization")("fisher")


def _ranx_test(
    test: str, n_permutations: int, seed: int
) -> Callable[[np.ndarray, np.ndarray], float]:
    # ranx takes seconds to import (numba): only pay for it when a test is asked for.
    from ranx.statistical_tests import fisher_randomization_test, paired_student_t_test

    if test == "student":
        return lambda a, b: float(paired_student_t_test(a, b)[0])
    return lambda a, b: float(
        fisher_randomization_test(a, b, n_permutations=n_permutations, random_seed=seed)[0]
    )


def paired_test(
    per_query_a: Mapping[str, Mapping[str, float]],
    per_query_b: Mapping[str, Mapping[str, float]],
    measures: Iterable[str] | None = None,
    *,
    test: str = "student",
    n_permutations: int = 10_000,
    seed: int = 42,
) -> dict[str, Any]:
    """Paired significance of the difference between two systems, per measure, through ranx.

    Works on the per-query values of :func:`evaluate_run`, so the test sees exactly
    the figures reported. Both systems must have been evaluated on the same queries.

    Args:
        per_query_a: ``{query id: {measure: value}}`` of system A.
        per_query_b: the same for system B.
        measures: which measures to test; all the shared ones by default.
        test: ``student`` (two-sided paired t test) or ``fisher`` (randomisation test).
        n_permutations: permutations of the Fisher test.
        seed: the Fisher test's random seed. ranx draws the permutations in parallel
            numba threads, so its p-value varies slightly from run to run even with a
            fixed seed (about ±0.01 at 10,000 permutations); the t test is exact.

    Returns:
        ``{"test", "n_queries", "p_values": {measure: p}, "mean_a", "mean_b"}``. When the
        two systems agree on every query, p is 1.

    Example:
        >>> a = {"q1": {"RR@10": 1.0}, "q2": {"RR@10": 0.5}, "q3": {"RR@10": 1.0}}
        >>> b = {"q1": {"RR@10": 0.5}, "q2": {"RR@10": 0.25}, "q3": {"RR@10": 0.5}}
        >>> result = paired_test(a, b)
        >>> result["n_queries"], round(result["p_values"]["RR@10"], 4)
        (3, 0.0377)
    """
    test_name = SIGNIFICANCE_TESTS.get(test)
    if set(per_query_a) != set(per_query_b):
        only_a = sorted(set(per_query_a) - set(per_query_b))
        only_b = sorted(set(per_query_b) - set(per_query_a))
        raise RelcompError(
            f"a paired test needs the same queries in both systems; only in A: {only_a[:3]} "
            f"({len(only_a)}), only in B: {only_b[:3]} ({len(only_b)})"
        )
    query_ids = sorted(per_query_a)
    if not query_ids:
        raise RelcompError("a paired test needs at least one query")
    shared = [m for m in per_query_a[query_ids[0]] if m in per_query_b[query_ids[0]]]
    names = shared if measures is None else list(measures)
    run_test = _ranx_test(test_name, n_permutations, seed)
    p_values: dict[str, float] = {}
    mean_a: dict[str, float] = {}
    mean_b: dict[str, float] = {}
    for name in names:
        try:
            a = np.array([per_query_a[qid][name] for qid in query_ids], dtype=np.float64)
            b = np.array([per_query_b[qid][name] for qid in query_ids], dtype=np.float64)
        except KeyError:
            raise RelcompError(f"measure {name!r} is missing from the per-query values") from None
        # scipy's t test is undefined (NaN) when the systems never differ.
        p_values[name] = 1.0 if np.array_equal(a, b) else run_test(a, b)
        mean_a[name] = float(a.mean())
        mean_b[name] = float(b.mean())
    return {
        "test": test_name,
        "n_queries": len(query_ids),
        "p_values": p_values,
        "mean_a": mean_a,
        "mean_b": mean_b,
    }


def compare_runs(
    qrels: Qrels,
    run_a: Mapping[str, Mapping[str, float]],
    run_b: Mapping[str, Mapping[str, float]],
    measures: Iterable[str] = DEFAULT_MEASURES,
    *,
    query_ids: Iterable[str] | None = None,
    test: str = "student",
    n_permutations: int = 10_000,
    seed: int = 42,
) -> dict[str, Any]:
    """Evaluate two runs on the same judged queries and test their difference (see :func:`paired_test`).

    Example:
        >>> qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
        >>> better = {q: {f"d{i}": 1.0} for i, q in enumerate(qrels, 1)}
        >>> worse = {"q1": {"x": 2.0, "d1": 1.0}, "q2": {"x": 2.0, "d2": 1.0}, "q3": {"x": 3.0, "y": 2.0, "d3": 1.0}}
        >>> result = compare_runs(qrels, better, worse, ["RR@10"])
        >>> result["mean_a"], round(result["mean_b"]["RR@10"], 4), round(result["p_values"]["RR@10"], 4)
        ({'RR@10': 1.0}, 0.4444, 0.0099)
    """
    names = list(parse_measures(measures))
    ids = None if query_ids is None else list(query_ids)
    _, per_query_a = evaluate_run(qrels, run_a, names, query_ids=ids)
    _, per_query_b = evaluate_run(qrels, run_b, names, query_ids=ids)
    return paired_test(
        per_query_a, per_query_b, names, test=test, n_permutations=n_permutations, seed=seed
    )
