"""The ``quality.json`` of a compress run: two systems, their paired difference, the gate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relcomp.artifacts import (
    PlanCandidate,
    PlansTried,
    QualityComparison,
    QualityReport,
    SpeedReport,
    SystemQuality,
    SystemSpeed,
)
from relcomp.errors import RelcompError
from relcomp.evaluation.metrics import NDCG_AT_10, paired_test

__all__ = ["quality_comparison"]


def _side(
    name: str, report: QualityReport, size_bytes: int, speed: SystemSpeed | None
) -> SystemQuality:
    per_measure: dict[str, dict[str, float]] = {measure: {} for measure in report.measures}
    for query_id, values in report.per_query.items():
        for measure, value in values.items():
            per_measure.setdefault(measure, {})[query_id] = float(value)
    return SystemQuality(
        name=name,
        model=report.model,
        measures={k: float(v) for k, v in report.measures.items()},
        per_query=per_measure,
        size_mb=size_bytes / 1e6,
        latency_ms=({"p50": speed.latency_p50_ms, "p95": speed.latency_p95_ms} if speed else None),
        pairs_per_s=speed.pairs_per_s if speed else None,
        tie_rate=report.tie_rate,
        truncation=dict(report.truncation),
        by_depth={
            k: {m: float(v) for m, v in measures.items()} for k, measures in report.by_depth.items()
        },
    )


def quality_comparison(
    reference: QualityReport,
    compressed: QualityReport,
    *,
    names: tuple[str, str],
    sizes: tuple[int, int],
    speed: SpeedReport | None,
    protocol: str,
    gate: Mapping[str, Any] | None,
    budget: str,
    alpha: float = 0.05,
    provenance: Mapping[str, Any] | None = None,
    candidates: PlansTried | None = None,
) -> QualityComparison:
    """The ``quality.json`` of a compress run: both systems, their paired difference, the gate.

    ``names`` are the two systems' display names, ``sizes`` their stored bytes, ``speed``
    the timing of systems ``reference`` and ``compressed``.
    ``difference[measure]`` is compressed minus reference, with the two-sided paired t
    test's p-value over the same queries (ranx, :func:`relcomp.evaluation.paired_test`)
    and ``significant`` at ``alpha``. ``candidates`` lists every compressed system
    tried (one per plan) with its size, batch-1 p50 latency, nDCG@10 and whether it
    passed the gate: the compressed model alone (on ``split``), or, when ``candidates``
    is given (``evaluation/candidates.json`` of the plans tried step), every plan with
    its quality on the gate split, and ``candidates_reference`` the reference there.
    """
    if set(reference.per_query) != set(compressed.per_query):
        raise RelcompError(
            "the reference and the compressed model were not evaluated on the same queries"
        )
    measures = list(reference.measures)
    test = paired_test(reference.per_query, compressed.per_query, measures)
    difference = {
        measure: {
            "delta": float(compressed.measures[measure] - reference.measures[measure]),
            "p_value": float(test["p_values"][measure]),
            "significant": bool(test["p_values"][measure] < alpha),
        }
        for measure in measures
    }
    systems = speed.systems if speed is not None else {}
    reference_side = _side(names[0], reference, sizes[0], systems.get("reference"))
    compressed_side = _side(names[1], compressed, sizes[1], systems.get("compressed"))
    headline = NDCG_AT_10 if NDCG_AT_10 in measures else measures[0]
    alone = PlanCandidate(
        name=names[1],
        budget=budget,
        size_mb=sizes[1] / 1e6,
        latency_ms=(compressed_side.latency_ms or {}).get("p50"),
        ndcg_at_10=compressed_side.measures[headline],
        passed=bool(gate["passed"]) if gate is not None else None,
        split=reference.split,
        chosen=True,
    )
    return QualityComparison(
        model=reference.model,
        dataset=reference.dataset,
        split=reference.split,
        protocol=protocol,
        n_queries=reference.n_queries,
        first_stage=reference.first_stage,
        depth=reference.depth,
        max_length=reference.max_length,
        measures=tuple(measures),
        reference=reference_side,
        compressed=compressed_side,
        difference=difference,
        significance={"test": test["test"], "alpha": alpha, "n_queries": test["n_queries"]},
        gate=dict(gate) if gate is not None else None,
        candidates=candidates.candidates if candidates is not None else (alone,),
        candidates_reference=candidates.reference if candidates is not None else None,
        provenance=dict(provenance or {}),
    )
