"""The quality gate: refuse a compressed model that loses more nDCG@10 than allowed.

Both models are evaluated alike (:func:`~relcomp.evaluation.evaluate_scorer`: a
re-ranker re-ranks BM25's candidates, a bi-encoder retrieves exhaustively) on the
same seeded sample of queries from a *development* split (``dev``, else ``train``;
never ``test``, whose figures are the ones reported), and the loss is the
reference's nDCG@10 minus the candidate's, in points (1 point = 0.01 nDCG).

This module owns the gate's split (:func:`gate_split`), its allowance
(:func:`check_max_ndcg_loss`) and its loss (:meth:`GateResult.compare`); the
export and the compress flow both use them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

from relcomp.artifacts import QualityReport
from relcomp.errors import RelcompError
from relcomp.evaluation.beir import load_beir
from relcomp.evaluation.metrics import NDCG_AT_10
from relcomp.evaluation.rerank import PairScorer
from relcomp.evaluation.sampling import development_split, sample_queries
from relcomp.evaluation.systems import evaluate_scorer

__all__ = [
    "GATE_MEASURE",
    "GateResult",
    "QualityGateError",
    "check_max_ndcg_loss",
    "gate_split",
    "quality_gate",
]

logger = logging.getLogger(__name__)

GATE_MEASURE = NDCG_AT_10


class QualityGateError(RelcompError):
    """A compressed model lost more quality than allowed; the message gives the loss."""

    def __init__(self, message: str, result: GateResult) -> None:
        super().__init__(message)
        self.result = result


@dataclasses.dataclass(frozen=True)
class GateResult:
    """What the gate measured: both reports, the loss in points and the allowance."""

    reference: QualityReport
    candidate: QualityReport
    split: str
    loss_points: float
    max_ndcg_loss: float

    @classmethod
    def compare(
        cls,
        reference: QualityReport,
        candidate: QualityReport,
        split: str,
        max_ndcg_loss: float,
    ) -> GateResult:
        """The gate's verdict on two reports of the same queries: the loss in points.

        Example:
            >>> report = lambda ndcg: QualityReport("m", "d", "dev", {"nDCG@10": ndcg}, {}, 1)
            >>> round(GateResult.compare(report(0.5), report(0.49), "dev", 0.5).loss_points, 6)
            1.0
        """
        loss = 100.0 * (reference.measures[GATE_MEASURE] - candidate.measures[GATE_MEASURE])
        return cls(reference, candidate, split, loss, float(max_ndcg_loss))

    @property
    def passed(self) -> bool:
        # a NaN loss compares False, but say so: a gate never passes on a non-finite number
        return math.isfinite(self.loss_points) and self.loss_points <= self.max_ndcg_loss + 1e-9

    def summary(self) -> dict[str, Any]:
        """The figures as plain JSON values (what the bundle records)."""
        return {
            "measure": GATE_MEASURE,
            "dataset": self.reference.dataset,
            "split": self.split,
            "n_queries": self.reference.n_queries,
            "first_stage": self.reference.first_stage,
            "depth": self.reference.depth,
            "reference": self.reference.measures[GATE_MEASURE],
            "candidate": self.candidate.measures[GATE_MEASURE],
            "loss_points": self.loss_points,
            "max_ndcg_loss": self.max_ndcg_loss,
            "passed": self.passed,
        }


def check_max_ndcg_loss(max_ndcg_loss: float) -> float:
    """The gate's allowance in nDCG@10 points, refused unless a finite number ≥ 0.

    Example:
        >>> check_max_ndcg_loss(-1)
        Traceback (most recent call last):
        ...
        ValueError: max_ndcg_loss must be a number of points >= 0, got -1
    """
    if (
        isinstance(max_ndcg_loss, bool)
        or not isinstance(max_ndcg_loss, int | float)
        or not math.isfinite(max_ndcg_loss)
        or max_ndcg_loss < 0
    ):
        raise ValueError(f"max_ndcg_loss must be a number of points >= 0, got {max_ndcg_loss!r}")
    return float(max_ndcg_loss)


def gate_split(data_dir: str | os.PathLike[str], split: str | None = None) -> str:
    """The development split to check on: ``split`` if given, else ``dev``, else ``train``.

    ``test`` is refused: the gate must not look at the queries whose figures are reported.

    Example:
        >>> from relcomp.data import demo_path
        >>> gate_split(demo_path())
        'train'
    """
    return development_split(
        data_dir,
        split,
        purpose="for the quality gate",
        refusal="the quality gate never looks at the test split (its figures are the "
        "reported ones); use dev or train",
    )


def quality_gate(
    reference: PairScorer,
    candidate: PairScorer,
    data_dir: str | os.PathLike[str],
    *,
    max_ndcg_loss: float,
    split: str | None = None,
    queries: int | None = 100,
    depth: int = 30,
    batch_size: int = 32,
    seed: int = 13,
    show_progress_bar: bool | None = None,
) -> GateResult:
    """Check that ``candidate`` loses at most ``max_ndcg_loss`` nDCG@10 points against ``reference``.

    Args:
        reference: the uncompressed model.
        candidate: the compressed one (e.g. an ONNX bundle loaded with ``load_model``).
        data_dir: a BEIR folder.
        max_ndcg_loss: the allowance in nDCG@10 points (0.5 = 0.005 nDCG).
        split: ``dev``/``train``; ``None`` takes ``dev`` if present, else ``train``.
        queries: a seeded sample of this many judged queries (all when ``None``).
        depth: BM25 candidates per query that a re-ranker re-ranks (a bi-encoder
            retrieves exhaustively, as everywhere else in relcomp).
        batch_size: pairs per forward pass.
        seed: the query sample's seed.
        show_progress_bar: passed to the models.

    Returns:
        The :class:`GateResult` when the candidate passes.

    Raises:
        QualityGateError: the loss exceeds the allowance; the message gives both.

    Example:
        >>> result = quality_gate(reference, candidate, "../shared/assets/beir/nfcorpus",
        ...                       max_ndcg_loss=0.5)  # doctest: +SKIP
        >>> result.split, round(result.loss_points, 2)  # doctest: +SKIP
        ('dev', 0.12)
    """
    max_ndcg_loss = check_max_ndcg_loss(max_ndcg_loss)
    split = gate_split(data_dir, split)
    dataset = load_beir(data_dir, split)
    query_ids = (
        sample_queries(dataset.split_queries, queries, seed=seed)
        if queries
        else list(dataset.split_queries)
    )
    reports = [
        evaluate_scorer(
            model,
            dataset,
            query_ids,
            depth=depth,
            batch_size=batch_size,
            measures=[GATE_MEASURE],
            # the candidates' scores are not cached: an unfinished bundle's are never read again
            cache_scores=False,
            show_progress_bar=show_progress_bar,
            settings={"queries": queries, "sample_seed": seed, "purpose": "quality gate"},
        )
        for model in (reference, candidate)
    ]
    before = reports[0].measures[GATE_MEASURE]
    after = reports[1].measures[GATE_MEASURE]
    result = GateResult.compare(reports[0], reports[1], split, max_ndcg_loss)
    candidates = f"BM25 top-{depth}" if reports[0].first_stage else "exhaustive retrieval"
    where = f"{dataset.name}/{split}, {reports[0].n_queries} queries, {candidates}"
    if not result.passed:
        raise QualityGateError(
            f"quality gate failed: nDCG@10 lost {result.loss_points:.2f} points "
            f"({before:.4f} → {after:.4f}) on {where}; at most {max_ndcg_loss:g} allowed "
            "(--max-ndcg-loss)",
            result,
        )
    logger.info(
        "quality gate passed: nDCG@10 %.4f → %.4f (%+.2f points lost, %.2f allowed) on %s",
        before,
        after,
        result.loss_points,
        max_ndcg_loss,
        where,
    )
    return result
