"""The quality gate: refuse a compressed model that loses more nDCG@10 than allowed.

Both models re-rank the same BM25 candidates of the same seeded sample of queries
from a *development* split (``dev``, else ``train``; never ``test``, whose figures
are the ones reported), and the loss is the reference's nDCG@10 minus the
candidate's, in points (1 point = 0.01 nDCG).

The gate is a quality check, the evaluation stage's job; it lives here because the
export flow runs it before a bundle is allowed to exist. It reads
:mod:`relcomp.evaluation` lazily, at call time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

from relcomp.artifacts import QualityReport
from relcomp.errors import RelcompError
from relcomp.models.base import Scorer

__all__ = ["GATE_MEASURE", "GateResult", "QualityGateError", "gate_split", "quality_gate"]

logger = logging.getLogger(__name__)

GATE_MEASURE = "nDCG@10"


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


def gate_split(data_dir: str | os.PathLike[str], split: str | None = None) -> str:
    """The development split to check on: ``split`` if given, else ``dev``, else ``train``.

    ``test`` is refused: the gate must not look at the queries whose figures are reported.

    Example:
        >>> from relcomp.data import demo_path
        >>> gate_split(demo_path())
        'train'
    """
    from relcomp.evaluation import available_splits
    from relcomp.evaluation.beir import same_split

    if split is not None and same_split(data_dir, split, "test"):
        raise ValueError(
            "the quality gate never looks at the test split (its figures are the reported "
            "ones); use dev or train"
        )
    splits = available_splits(data_dir)
    if split is not None:
        if split not in splits:
            raise ValueError(
                f"{data_dir}: no split {split!r} (splits: {', '.join(splits) or 'none'})"
            )
        return split
    for candidate in ("dev", "train"):
        if candidate in splits:
            return candidate
    raise ValueError(
        f"{data_dir}: no dev or train split for the quality gate (splits: {', '.join(splits) or 'none'})"
    )


def quality_gate(
    reference: Scorer,
    candidate: Scorer,
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
        depth: BM25 candidates per query that both models re-rank.
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
    from relcomp.evaluation import (
        bm25_retrieve,
        load_beir,
        quality_report,
        rerank,
        sample_queries,
    )

    if isinstance(max_ndcg_loss, bool) or not math.isfinite(max_ndcg_loss) or max_ndcg_loss < 0:
        raise ValueError(f"max_ndcg_loss must be a number of points >= 0, got {max_ndcg_loss!r}")
    split = gate_split(data_dir, split)
    dataset = load_beir(data_dir, split)
    query_ids = (
        sample_queries(dataset.split_queries, queries, seed=seed)
        if queries
        else list(dataset.split_queries)
    )
    candidates = bm25_retrieve(dataset, query_ids, depth=depth, show_progress_bar=show_progress_bar)
    reports = []
    for model in (reference, candidate):
        run = rerank(
            model,
            dataset,
            candidates,
            depth=depth,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
        )
        reports.append(
            quality_report(
                str(getattr(model, "name", type(model).__name__)),
                dataset,
                run,
                [GATE_MEASURE],
                query_ids=query_ids,
                first_stage="bm25",
                depth=depth,
                candidates=candidates,
                settings={"queries": queries, "sample_seed": seed, "purpose": "quality gate"},
            )
        )
    before = reports[0].measures[GATE_MEASURE]
    after = reports[1].measures[GATE_MEASURE]
    result = GateResult(
        reference=reports[0],
        candidate=reports[1],
        split=split,
        loss_points=100.0 * (before - after),
        max_ndcg_loss=float(max_ndcg_loss),
    )
    where = f"{dataset.name}/{split}, {reports[0].n_queries} queries, BM25 top-{depth}"
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
