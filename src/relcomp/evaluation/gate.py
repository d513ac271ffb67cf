"""The quality gate: refuse a compressed model that loses more nDCG@10 than allowed.

Both models are evaluated alike (:func:`~relcomp.evaluation.evaluate_scorer`: a
re-ranker re-ranks BM25's candidates, a bi-encoder retrieves exhaustively) on the
same seeded sample of queries from a *development* split (``dev``, else ``train``;
never ``test``, whose figures are the ones reported), and the loss is the
reference's nDCG@10 minus the candidate's, in points (1 point = 0.01 nDCG).

This module owns the gate's split (:func:`gate_split`), its allowance
(:func:`check_max_ndcg_loss`) and its loss (:meth:`GateResult.compare`); the
export and the compress flow both use them.

A collection with no dev or train split has no judgements the gate may use (test's
are the reported ones). There the gate checks *agreement* with the uncompressed model
instead (:func:`agreement_gate`): on seeded corpus pseudo-queries
(:func:`agreement_queries`), both models rank the same candidates, and the compressed
one passes when the mean top-10 overlap reaches :data:`DEFAULT_MIN_OVERLAP` and the
mean Kendall τ :data:`DEFAULT_MIN_TAU` (:func:`check_agreement_thresholds`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

from relcomp.artifacts import AgreementGate, QualityReport
from relcomp.errors import RelcompError
from relcomp.evaluation._common import ranked
from relcomp.evaluation.beir import BeirDataset, load_beir
from relcomp.evaluation.executor import ChunkExecutor
from relcomp.evaluation.first_stage import retrieve
from relcomp.evaluation.metrics import NDCG_AT_10
from relcomp.evaluation.rerank import PairScorer
from relcomp.evaluation.sampling import (
    MIN_PSEUDO_QUERIES,
    development_split,
    pseudo_query_dataset,
    sample_queries,
)
from relcomp.evaluation.systems import BM25, evaluate_scorer, load_first_stage
from relcomp.models import BiEncoder, RankingModel
from relcomp.models.base import Scorer

__all__ = [
    "AGREEMENT_SEED",
    "DEFAULT_MIN_OVERLAP",
    "DEFAULT_MIN_TAU",
    "GATE_MEASURE",
    "GateResult",
    "QualityGateError",
    "agreement_gate",
    "agreement_queries",
    "check_agreement_thresholds",
    "check_max_ndcg_loss",
    "gate_split",
    "quality_gate",
]

logger = logging.getLogger(__name__)

GATE_MEASURE = NDCG_AT_10
#: The agreement gate's least mean top-10 overlap with the uncompressed model: on
#: average at least 8 of the reference's top-10 candidates stay in the top-10.
DEFAULT_MIN_OVERLAP = 0.8
#: The agreement gate's least mean Kendall τ over each query's candidates. An int8
#: bundle against its own torch twin reads τ 0.92–0.95 (docs/benchmarks/recovery.md):
#: 0.7 leaves rounding and near ties room and still fails a reshuffled ranking.
DEFAULT_MIN_TAU = 0.7
#: Seeds the agreement gate's pseudo-queries: another drawing than calibration's (13).
AGREEMENT_SEED = 31


class QualityGateError(RelcompError):
    """A compressed model lost more quality than allowed; the message gives the loss."""

    def __init__(self, message: str, result: GateResult | AgreementGate) -> None:
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
        """The figures as plain JSON values (what the bundle records).

        It has no ``kind``: that key marks the agreement gate's summary
        (:meth:`AgreementGate.summary <relcomp.artifacts.AgreementGate.summary>`,
        ``"kind": "agreement"``), so every file written before it stays as it was.
        """
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


def check_agreement_thresholds(min_overlap: float, min_tau: float) -> tuple[float, float]:
    """The agreement gate's minimums: top-10 overlap in [0, 1], Kendall τ in [-1, 1].

    Example:
        >>> check_agreement_thresholds(0.8, 0.7)
        (0.8, 0.7)
        >>> check_agreement_thresholds(1.01, 0.7)
        Traceback (most recent call last):
        ...
        ValueError: min_agreement_overlap must be a share between 0 and 1, got 1.01
    """
    for name, value, low in (
        ("min_agreement_overlap", min_overlap, 0.0),
        ("min_agreement_tau", min_tau, -1.0),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not low <= value <= 1.0
        ):
            what = "a share between 0 and 1" if low == 0 else "a Kendall tau between -1 and 1"
            raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(min_overlap), float(min_tau)


def agreement_queries(
    data_dir: str | os.PathLike[str],
    queries: int | None,
    *,
    evaluated: str = "test",
    corpus_documents: int | None = None,
    seed: int = AGREEMENT_SEED,
) -> BeirDataset:
    """The agreement gate's pseudo-queries: the collection seen through them alone.

    ``queries`` of them (100 when ``None``), seeded by ``seed`` (another drawing than
    calibration's), and never more than half of the corpus' documents, so that
    recovery, which leaves the gate's source documents out, keeps the other half.

    Example:
        >>> from relcomp.data import demo_path
        >>> gate = agreement_queries(demo_path(), 5)
        >>> gate.split, len(gate.split_queries)
        ('pseudo-queries', 5)
    """
    if corpus_documents is None:
        corpus_documents = len(load_beir(data_dir, evaluated).corpus)
    wanted = min(queries or 100, max(corpus_documents // 2, MIN_PSEUDO_QUERIES // 2))
    return pseudo_query_dataset(
        data_dir, wanted, seed, evaluated=evaluated, minimum=MIN_PSEUDO_QUERIES // 2
    )


def agreement_gate(
    reference: RankingModel,
    candidate: Scorer,
    dataset: BeirDataset,
    *,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    min_tau: float = DEFAULT_MIN_TAU,
    first_stage: str | os.PathLike[str] | RankingModel | None = None,
    depth: int = 30,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    executor: ChunkExecutor | None = None,
) -> AgreementGate:
    """How closely ``candidate`` ranks like ``reference`` on ``dataset``'s (pseudo-)queries.

    The candidates are those the nDCG gate would re-rank: the first stage's top-``depth``
    (BM25 for a re-ranker by default), or, for a bi-encoder with no first stage, the
    reference's own exhaustive top-``depth``. Both models score every candidate; the
    overlap of their top-10 and Kendall's τ-b of their scores are taken per query as an
    export's parity takes them (:func:`relcomp.export.check_parity`), then averaged. A
    query with fewer than two candidates is left out.

    Args:
        reference: the uncompressed model.
        candidate: the compressed one (an ONNX bundle loaded with ``load_model``).
        dataset: the gate's queries (:func:`agreement_queries`), never the reported split's.
        min_overlap: the least mean top-10 overlap that passes, in [0, 1].
        min_tau: the least mean Kendall τ that passes, in [-1, 1].
        first_stage: ``"bm25"``, a bi-encoder, or ``None`` (as :func:`evaluate_scorer`).
        depth: candidates per query.
        batch_size: pairs per forward pass.
        show_progress_bar: tqdm bars.
        executor: where the reference's corpus embeddings are computed (exhaustive retrieval).

    Returns:
        The :class:`~relcomp.artifacts.AgreementGate`, passed or not (the caller decides
        what a failure does).

    Example:
        >>> gate = agreement_gate(reference, bundle, agreement_queries(data, 100))  # doctest: +SKIP
        >>> gate.passed, round(gate.top10_overlap, 2), round(gate.kendall_tau, 2)  # doctest: +SKIP
        (True, 0.97, 0.91)
    """
    from relcomp.export.parity import check_parity

    min_overlap, min_tau = check_agreement_thresholds(min_overlap, min_tau)
    query_ids = list(dataset.split_queries)
    options: dict[str, Any] = {"show_progress_bar": show_progress_bar}
    if first_stage is None and isinstance(reference, BiEncoder):
        stage: str | BiEncoder = reference  # the reference's own exhaustive top-k
        chunked = {"executor": executor} if executor is not None else {}
        run = retrieve(
            reference, dataset, query_ids, depth, batch_size=batch_size, **options, **chunked
        )
        stage_name = None
    else:
        stage = load_first_stage(first_stage or BM25)
        run = retrieve(stage, dataset, query_ids, depth, batch_size=batch_size, **options)
        stage_name = stage if isinstance(stage, str) else stage.name
    groups = {
        query_id: (
            dataset.query_text(query_id),
            [dataset.document_text(doc_id) for doc_id, _ in ranked(run[query_id], depth)],
        )
        for query_id in query_ids
        if len(run.get(query_id) or {}) >= 2
    }
    if not groups:
        raise RelcompError(
            f"{dataset.name}: no agreement-gate pseudo-query has two candidates to rank"
        )
    if len(groups) < len(query_ids):
        logger.info(
            "%d of %d agreement-gate pseudo-queries have fewer than 2 candidates and are left out",
            len(query_ids) - len(groups),
            len(query_ids),
        )
    parity = check_parity(
        reference, candidate, groups, batch_size=batch_size, show_progress_bar=show_progress_bar
    )
    return AgreementGate(
        reference=parity.reference,
        candidate=parity.candidate,
        dataset=dataset.name,
        split=dataset.split,
        n_queries=len(groups),
        first_stage=stage_name,
        depth=depth,
        top10_overlap=parity.top10_overlap,
        kendall_tau=parity.kendall_tau,
        kendall_tau_min=parity.kendall_tau_min,
        min_overlap=min_overlap,
        min_tau=min_tau,
        queries={query_id: groups[query_id][0] for query_id in groups},
        per_query={
            query_id: {key: value for key, value in entry.items() if key != "max_abs_diff"}
            for query_id, entry in parity.per_query.items()
        },
    )
