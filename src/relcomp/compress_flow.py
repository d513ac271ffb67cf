"""The steps of ``relcomp compress``: what was asked (:class:`CompressOptions`) and the flow (:class:`CompressFlow`).

:func:`relcomp.pipeline.compress` checks its arguments into one :class:`CompressOptions`,
then calls the :class:`CompressFlow` steps in order; each step writes its artifact into
the run folder and is resumed through :meth:`RunFolder.step
<relcomp.run_folder.RunFolder.step>`. The verbs the steps call (``evaluate``, ``plan``…)
stay in :mod:`relcomp.pipeline` and come in as :class:`FlowVerbs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from relcomp.artifacts import (
    EMBEDDINGS,
    AgreementGate,
    ComponentRelevance,
    CompressionPlan,
    PlanCandidate,
    PlansTried,
    QualityReport,
    ReferencePoint,
    SpeedReport,
    TokenRelevance,
)
from relcomp.budgets import budget_label, budget_text, parse_budget_text
from relcomp.checks import check_output_location
from relcomp.compression import plan_after_pruning
from relcomp.evaluation import (
    BM25,
    dense_retrieve,
    load_beir,
    load_first_stage,
    rerank,
    retrieve,
    sample_queries,
)
from relcomp.evaluation.comparison import quality_comparison
from relcomp.evaluation.executor import ChunkExecutor
from relcomp.evaluation.gate import (
    DEFAULT_MIN_OVERLAP,
    DEFAULT_MIN_TAU,
    GateResult,
    QualityGateError,
    agreement_gate,
    agreement_queries,
    check_agreement_thresholds,
    check_max_ndcg_loss,
)
from relcomp.evaluation.metrics import NDCG_AT_10
from relcomp.evaluation.protocol import Protocol
from relcomp.evaluation.sampling import (
    PSEUDO_SPLIT,
    calibration_dataset,
    calibration_pairs,
    parity_groups,
)
from relcomp.evaluation.speed import measure_speed, model_size_bytes
from relcomp.models import BiEncoder, RankingModel, load_model
from relcomp.run_folder import RunFolder, folder_identity, install_bundle, staging_folder

__all__ = [
    "FLOW_STEPS",
    "CompressFlow",
    "CompressOptions",
    "CompressResult",
    "FlowVerbs",
    "parse_quantize",
]

logger = logging.getLogger(__name__)

#: Steps of the flow, in order (the progress messages count them).
FLOW_STEPS = (
    "component relevance",
    "plans tried",
    "plan",
    "recovery",
    "export",
    "quality gate",
    "index",
    "evaluation",
    "speed",
    "explanations",
    "report",
)


@dataclasses.dataclass(frozen=True)
class CompressResult:
    """What :func:`compress` made: the run folder, the report, and the figures it shows.

    Attributes:
        output_dir: the run folder (an ONNX bundle that ``load_model`` loads, plus JSON).
        report: ``report.html``, or ``None`` when the report was not asked for.
        quality: the ``quality.json`` payload (reference vs compressed, gate, difference).
        seconds: wall time of this call.
    """

    output_dir: Path
    report: Path | None
    quality: Mapping[str, Any]
    seconds: float


@dataclasses.dataclass(frozen=True)
class FlowVerbs:
    """The verbs of :mod:`relcomp.pipeline` that the steps call, handed in by ``compress``.

    ``pipeline`` imports this module for :func:`relcomp.pipeline.compress`; taking the
    verbs as a value instead of importing them keeps the import one way (no circle,
    tests/test_layering.py), and a test that replaces ``pipeline.evaluate`` replaces
    it for the flow too.
    """

    load_scorer: Callable[..., RankingModel | str]
    component_relevance: Callable[..., ComponentRelevance]
    plan: Callable[..., CompressionPlan]
    evaluate: Callable[..., QualityReport]
    recover: Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class CompressOptions:
    """What :func:`compress` was asked for, checked once (see :func:`compress` for each field).

    ``budgets`` are parsed (:func:`parse_budget_text`) and ``protocol`` resolved
    (:func:`~relcomp.evaluation.resolve_protocol`); the rest is as given.

    Example:
        >>> from relcomp.evaluation import resolve_protocol
        >>> CompressOptions("m", "d", ({"bits_per_weight": 6.0},), "o", threads=0,
        ...                 protocol=resolve_protocol("quick"))
        Traceback (most recent call last):
        ...
        ValueError: threads must be ≥ 1, got 0
    """

    model: str | RankingModel
    data_dir: str | os.PathLike[str]
    budgets: tuple[Mapping[str, float], ...]
    output_dir: str | os.PathLike[str]
    protocol: Protocol
    method: str = "mixed-precision"
    importance: str = "relevance"
    #: None: int8 when ``quantize`` is an integer precision (int8, int4), else fp32
    embeddings: str | None = None
    max_ndcg_loss: float | None = 0.5
    min_agreement_overlap: float = DEFAULT_MIN_OVERLAP
    min_agreement_tau: float = DEFAULT_MIN_TAU
    split: str = "test"
    calibration_split: str | None = None
    calibration: int = 64
    queries: int | None = None
    depth: int | None = None
    max_length: int | None = None
    first_stage: str | None = None
    explanations: int = 3
    report: bool = True
    resume: bool = True
    threads: int = 2
    recover: int | None = None
    quantize: str | None = None
    recovery_max_length: int = 128
    quantization_aware: bool = False
    recovery_hidden_weight: float = 0.0
    recovery_similarity_weight: float = 1.0
    recovery_label_weight: float = 0.0
    recovery_candidate_depth: int | None = None
    recovery_pseudo: int | None = None
    first_token: bool = False
    remove_padding: bool = False
    show_progress_bar: bool | None = None
    index: str | None = None
    index_dims: int | None = None
    index_rescore: int = 1
    index_dim_selection: str = "relevance"
    ray: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.max_ndcg_loss is not None:
            check_max_ndcg_loss(self.max_ndcg_loss)
        check_agreement_thresholds(self.min_agreement_overlap, self.min_agreement_tau)
        if self.recover is not None:
            from relcomp.recovery import DEFAULT_CANDIDATES, RecoverySettings

            RecoverySettings(
                steps=self.recover,
                max_length=self.recovery_max_length,
                hidden_weight=self.recovery_hidden_weight,
                similarity_weight=self.recovery_similarity_weight,
                label_weight=self.recovery_label_weight,
            )
            if len(self.budgets) > 1:
                raise ValueError(
                    "--recover takes one budget: several budgets would each need their own "
                    "recovery, which compress does not run yet"
                )
            depth = self.recovery_candidate_depth
            if depth is not None and (isinstance(depth, bool) or depth < DEFAULT_CANDIDATES):
                raise ValueError(
                    f"--recovery-candidate-depth must be at least {DEFAULT_CANDIDATES} (the "
                    f"candidates per recovery query, drawn from BM25's top-N), got {depth!r}"
                )
            if self.recovery_pseudo is not None and self.recovery_pseudo < 0:
                raise ValueError(
                    f"--recovery-pseudo must be 0 or more pseudo-queries, got {self.recovery_pseudo}"
                )
        else:
            for flag, given in (
                ("--recovery-hidden-weight", bool(self.recovery_hidden_weight)),
                ("--recovery-similarity-weight", self.recovery_similarity_weight != 1.0),
                ("--recovery-label-weight", bool(self.recovery_label_weight)),
                ("--recovery-candidate-depth", self.recovery_candidate_depth is not None),
                ("--recovery-pseudo", self.recovery_pseudo is not None),
            ):
                if given:
                    raise ValueError(f"{flag} shapes recovery: give --recover STEPS too")
        if self.quantize is not None:
            parse_quantize(self.quantize)
        if self.explanations < 0:
            raise ValueError(f"explanations must be ≥ 0, got {self.explanations}")
        if self.threads < 1:
            raise ValueError(f"threads must be ≥ 1, got {self.threads}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be ≥ 1, got {self.workers}")
        if self.embeddings is None:
            object.__setattr__(self, "embeddings", embeddings_for(self.quantize))
            if self.embeddings == "int8":
                logger.info(
                    "--quantize %s: the word embeddings are int8 too (--embeddings fp32 "
                    "keeps them fp32)",
                    self.quantize,
                )
        if self.embeddings not in EMBEDDINGS:
            raise ValueError(f"embeddings must be 'fp32' or 'int8', got {self.embeddings!r}")
        self._check_index()

    def _check_index(self) -> None:
        """The index settings a user typed, before any model is loaded (the model's are checked by the flow)."""
        from relcomp.errors import IndexSettingsError
        from relcomp.index import DIMENSION_SELECTIONS, check_index_settings
        from relcomp.index.build import default_rescore_with

        if self.index is None:
            if self.index_dims is not None or self.index_rescore != 1:
                raise IndexSettingsError(
                    "--index-dims and --index-rescore shape an index: give --index PRECISION too"
                )
            return
        check_index_settings(self.index, self.index_rescore, default_rescore_with(self.index))
        DIMENSION_SELECTIONS.get(self.index_dim_selection)
        if self.index_dims is not None and (
            isinstance(self.index_dims, bool) or self.index_dims < 1
        ):
            raise IndexSettingsError(
                f"--index-dims must be between 1 and the model's dimension, got {self.index_dims!r}"
            )


class CompressFlow:
    """The steps of :func:`compress`, one method each, in the order they run.

    Each step writes its artifact into the run folder as soon as it is made and is
    resumed through :meth:`RunFolder.step <relcomp.run_folder.RunFolder.step>`: its settings
    include the digest of what it was made from, so changing one step re-runs every
    step after it.

    1. :meth:`component_relevance` (AttnLRP) over calibration pairs →
       ``component_relevance.json``;
    2. :meth:`plans_tried`, with several budgets: each is planned, exported, gated
       (calibration split) and timed beside the reference; the smallest bundle that
       passes the gate is kept, the others deleted → ``evaluation/candidates.json``;
    3. :meth:`plan` under the (chosen) budget → ``plan.json``;
    4. :meth:`export` → ``onnx/model_<variant>.onnx``, tokenizer and config files,
       ``parity.json``, ``relcomp_bundle.json`` (the folder is then a bundle that
       ``load_model`` and sentence-transformers load);
    5. :meth:`quality_gate`: nDCG@10 of the torch fp32 reference and of the bundle on
       the calibration split → ``evaluation/gate_*.json`` (after a recovery, also the
       pruned model before it → ``evaluation/gate_pruned.json``); with no dev or train
       split, their agreement on corpus pseudo-queries → ``evaluation/gate_agreement.json``;
    5b. :meth:`index` (a bi-encoder, with ``index``): its compressed corpus index and its
       quality against the float index → ``index.json``, ``index_quality.json``;
    6. :meth:`evaluation` of both on the reported split (same queries, same
       candidates) → ``evaluation/<split>_reference.json``, ``…_compressed.json``;
    7. :meth:`speed`: latency p50/p95 at batch 1, pairs/s at batch 32, on real pairs
       → ``evaluation/speed.json``;
    8. :meth:`explanations`: AttnLRP token relevance of the reference's top document
       for the first evaluated queries → ``explanations/NN.json``;
    9. :meth:`report`: ``quality.json`` and ``report.html`` with ``figures/*.png``.

    Args:
        options: what the run was asked for. The data is read (a bad folder or a
            missing split fails here, before the run folder is made), the run folder
            opened and the reference model loaded at construction.
    """

    def __init__(self, options: CompressOptions, verbs: FlowVerbs) -> None:
        self.options = options
        self.verbs = verbs
        self.started = time.perf_counter()
        self.evaluated = load_beir(options.data_dir, options.split)
        self.calibration_data = calibration_dataset(
            options.data_dir, options.calibration_split, options.split
        )
        #: no judged dev or train split: calibration on corpus pseudo-queries, agreement gate
        self.pseudo = self.calibration_data.split == PSEUDO_SPLIT
        if self.pseudo:
            self._check_pseudo_calibration()
        self.dataset_name = _dataset_name(options.data_dir)
        check_output_location(options.output_dir)
        self.progress = _FlowProgress()
        self.reference = self._load_reference()
        from relcomp.compression.planners import check_budget

        for parsed in options.budgets:  # an impossible budget fails before relevance is computed
            check_budget(self.reference, options.method, parsed)
        if options.index is not None:  # a cross-encoder has no index; dims fit the model
            self._check_index_model()
        if options.recover is not None:  # a weight this kind of model does not take fails here
            from relcomp.recovery import RecoverySettings

            RecoverySettings(
                steps=options.recover,
                similarity_weight=options.recovery_similarity_weight,
            ).for_model(self.reference.kind)
        # made only once the inputs are known to be good: a failed start leaves no folder
        self.run = RunFolder(options.output_dir, resume=options.resume)
        protocol = options.protocol
        exhaustive = isinstance(self.reference, BiEncoder) and options.first_stage is None
        depth = options.depth
        if depth is None:  # exhaustive retrieval keeps the top-100, so that R@100 is R@100
            depth = max(protocol.depth, 100) if exhaustive else protocol.depth
        self.depth = depth
        self.evaluation_settings: dict[str, Any] = {
            "first_stage": options.first_stage,
            "depth": depth,
            "queries": options.queries if options.queries is not None else protocol.queries,
            "show_progress_bar": options.show_progress_bar,
        }
        self.data_identity = folder_identity(options.data_dir)
        # what later steps read from earlier ones
        self.relevance: ComponentRelevance | None = None
        self.budget: dict[str, float] = dict(options.budgets[0])
        self.gate_reports: tuple[QualityReport, QualityReport] | None = None  # plans tried's
        self.compressed: Any = None  # the ONNX bundle, once exported
        #: what export compresses: the reference, or the recovered model
        self.source: RankingModel = self.reference
        #: the structural plan recovery started from (the pruned model it trained), if any
        self.pruned_by: CompressionPlan | None = None
        #: gate-split nDCG@10 of the reference, of the pruned model before recovery and of
        #: the bundle after it, once the gate measured them (recovery runs only)
        self.recovery_gate: dict[str, Any] | None = None
        #: where evaluations compute their chunks (a Ray pool under --ray); never in settings
        self.executor: ChunkExecutor | None = None
        self.names: tuple[str, str] = ("fp32 (torch)", "")
        logger.info(
            "compressing %s (%s, max length %d) on %s, budget %s, %s protocol",
            self.reference.name,
            self.reference.kind,
            self.reference.max_length,
            self.dataset_name,
            " | ".join(budget_text(b) for b in options.budgets),
            protocol.name,
        )

    def _check_pseudo_calibration(self) -> None:
        """What a collection with no dev or train split cannot do, refused before any model loads."""
        options = self.options
        if len(options.budgets) > 1:
            raise ValueError(
                f"{options.data_dir} has no dev or train split: several budgets are chosen "
                "between by nDCG@10 on judged development queries, which it lacks; give one "
                "budget (its gate then checks agreement with the uncompressed model)"
            )
        if options.index_dims is not None and (
            options.index_dim_selection.strip().lower() == "relevance"
        ):
            raise ValueError(
                f"{options.data_dir} has no dev or train split for --index-dims' relevance "
                "selection to calibrate on; choose the dimensions by a blind rule "
                "(--index-dim-selection)"
            )
        gate = self.agreement_data  # a corpus too small to gate on fails here
        logger.info(
            "%s has no dev or train split: relevance, plans and recovery calibrate on corpus "
            "pseudo-queries, and the gate checks agreement with the uncompressed model on "
            "%d other pseudo-queries (top-10 overlap ≥ %g, Kendall τ ≥ %g); %s queries are "
            "only evaluated",
            self.calibration_data.name,
            len(gate.split_queries),
            options.min_agreement_overlap,
            options.min_agreement_tau,
            options.split,
        )

    @functools.cached_property
    def agreement_data(self) -> Any:
        """The agreement gate's pseudo-queries (a collection with no dev or train split)."""
        options = self.options
        queries = options.queries if options.queries is not None else options.protocol.queries
        return agreement_queries(
            options.data_dir,
            queries,
            evaluated=options.split,
            corpus_documents=len(self.evaluated.corpus),
        )

    def _load_reference(self) -> RankingModel:
        """The uncompressed torch model, fp32, at the protocol's input length."""
        reference = self.verbs.load_scorer(self.options.model)
        if not isinstance(reference, RankingModel):
            raise ValueError("compress needs a neural model, not bm25")
        if self.options.max_length is not None:
            reference.max_length = self.options.max_length
        elif (limit := self.options.protocol.max_length_for(reference.kind)) is not None:
            reference.max_length = min(reference.max_length, limit)
        return reference

    def _check_index_model(self) -> None:
        from relcomp.index import encode_queries, require_bi_encoder
        from relcomp.index.dimensions import check_dims

        require_bi_encoder(self.reference)
        if self.options.index_dims is not None:
            probe = encode_queries(self.reference, ["dimension probe"], show_progress_bar=False)
            check_dims(self.options.index_dims, int(probe.shape[1]))

    @property
    def calibration_split(self) -> str:
        return str(self.calibration_data.split)

    @functools.cached_property
    def calibration_pairs(self) -> list[tuple[str, str]]:
        return calibration_pairs(self.calibration_data, self.options.calibration)

    @functools.cached_property
    def timing_pairs(self) -> list[tuple[str, str]]:
        """Real pairs of the reported split for timing (queries only, no judgement used)."""
        return calibration_pairs(self.evaluated, min(32, len(self.evaluated.split_queries)))

    # -- 1. component relevance ------------------------------------------------------------
    def component_relevance(self) -> ComponentRelevance | None:
        """AttnLRP relevance on calibration pairs (never on the reported split), if planned by it."""
        options = self.options
        self.progress(
            "component relevance", f"{options.calibration} pairs of {self.calibration_split}"
        )
        if options.importance.strip().lower() != "relevance":
            logger.info("  skipped: the %s baseline needs no relevance", options.importance)
            self.run.forget("relevance")
            return None
        settings = {
            "model": self.reference.cache_key,
            **self.data_identity,
            "split": self.calibration_split,
            "calibration": options.calibration,
            "method": "attnlrp",
        }
        self.relevance = self.run.artifact(
            "relevance",
            settings,
            "component_relevance.json",
            ComponentRelevance,
            lambda: _named(
                self.verbs.component_relevance(
                    self.reference,
                    options.data_dir,
                    split=self.calibration_split,
                    calibration=options.calibration,
                    show_progress_bar=options.show_progress_bar,
                ),
                self.dataset_name,
            ),
        )
        return self.relevance

    # -- 2. plans tried -------------------------------------------------------------------
    def plans_tried(self) -> tuple[dict[str, float], PlansTried | None]:
        """With several budgets, each planned, exported, gated and timed; the smallest that passes kept.

        Every bundle is exported into a temporary folder of the run, evaluated on the
        gate split (the reference once), then all are timed with the reference,
        interleaved on the same pairs. The smallest bundle that passes the gate (the
        smallest overall without a gate; on equal size the better nDCG@10) becomes
        the run's plan and bundle; the others are deleted. On a re-run with the same
        settings ``evaluation/candidates.json`` is read back and nothing is exported.

        Returns:
            The chosen budget, and every plan tried (``None`` with one budget).

        Raises:
            QualityGateError: no candidate passed the gate (``candidates.json`` stays).
        """
        budgets = self.options.budgets
        if len(budgets) == 1:
            self.progress("plans tried", "one budget")
            self.run.forget("candidates")
            return dict(budgets[0]), None
        self.progress(
            "plans tried", f"{len(budgets)} budgets, the smallest bundle that passes the gate"
        )
        settings = {
            "plans": [self._plan_settings(b) for b in budgets],
            "export": self._bundle_settings(),
            "gate": self.options.max_ndcg_loss,
            "data": self.data_identity,
            "evaluation": _plain_settings(self.evaluation_settings),
            "repeats": self.options.protocol.repeats,
            "threads": self.options.threads,
        }
        with contextlib.ExitStack() as staging:
            kept: dict[str, Any] = {}
            self.run.step(
                "candidates", settings, lambda: self._try_budgets(staging, kept), what=_CANDIDATES
            )
            tried = PlansTried.load(self.run.path / _CANDIDATES)
            chosen = self._chosen_candidate(tried)
            budget = dict(chosen.budget_values or {})
            if kept:  # made now: the chosen bundle is still staged
                self._install(budget, kept["plan"], kept["staged"])
                self.gate_reports = kept["gate_reports"]
        logger.info("  kept %s (%.1f MB)", chosen.name, chosen.size_mb)
        return budget, tried

    def _try_budgets(self, staging: contextlib.ExitStack, kept: dict[str, Any]) -> list[str]:
        """Plan, export, gate and time every budget; write ``candidates.json``; return its files.

        ``kept`` receives the plan, staged bundle and gate reports of the chosen
        candidate (of the nearest miss when none passed). ``staging`` holds the
        temporary folders open until the chosen bundle is installed.
        """
        options = self.options
        budgets = options.budgets
        split = self.calibration_split
        # every plan first: an impossible budget fails before any export
        plans = [self._make_plan(budget) for budget in budgets]
        reference_gate = self._evaluate(self.reference, split)
        tried: list[tuple[dict[str, float], CompressionPlan, Path, Any, GateResult]] = []
        for number, (budget, the_plan) in enumerate(zip(budgets, plans, strict=True), 1):
            label = _candidate_label(budget, options.embeddings)
            logger.info("  plan %d of %d: %s", number, len(budgets), label)
            staged = (
                staging.enter_context(staging_folder(self.run, f"candidate-{number}")) / "bundle"
            )
            self._export_to(the_plan, staged)
            bundle = load_model(staged, max_length=self.reference.max_length)
            verdict = GateResult.compare(
                reference_gate,
                self._evaluate(bundle, split),
                split,
                options.max_ndcg_loss or 0.0,
            )
            logger.info("  %s: %.2f nDCG@10 points lost on %s", label, verdict.loss_points, split)
            tried.append((dict(budget), the_plan, staged, bundle, verdict))
        del bundle
        systems = {"reference": self.reference} | {
            f"plan-{n}": t[3] for n, t in enumerate(tried, 1)
        }
        speed = self._measure_speed(systems)
        candidates = [
            PlanCandidate(
                name=_candidate_label(budget, options.embeddings),
                budget=f"{the_plan.method}: {budget_text(budget)}",
                budget_values=budget,
                achieved=dict(the_plan.achieved),
                size_mb=model_size_bytes(model) / 1e6,
                latency_ms=speed[f"plan-{number}"].latency_p50_ms,
                pairs_per_s=speed[f"plan-{number}"].pairs_per_s,
                ndcg_at_10=verdict.candidate.measures[NDCG_AT_10],
                split=split,
                loss_points=verdict.loss_points,
                passed=None if options.max_ndcg_loss is None else verdict.passed,
                chosen=False,
            )
            for number, (budget, the_plan, _, model, verdict) in enumerate(tried, 1)
        ]
        eligible = [i for i, c in enumerate(candidates) if c.passed is not False]
        # the smallest that passed (the better nDCG@10 on equal size), or the nearest miss
        # when none did (its reports go with the error)
        keep = (
            min(eligible, key=lambda i: (candidates[i].size_mb, -candidates[i].ndcg_at_10))
            if eligible
            else None
        )
        if keep is not None:
            candidates[keep] = dataclasses.replace(candidates[keep], chosen=True)
        nearest = min(range(len(candidates)), key=lambda i: tried[i][4].loss_points)
        _, the_plan, staged, _, verdict = tried[nearest if keep is None else keep]
        report = verdict.candidate
        files = [_CANDIDATES]
        if keep is None:
            for name, made in zip(_NEAREST_MISS, (reference_gate, report), strict=True):
                made.save(self.run.path / name)
            files += _NEAREST_MISS
        else:
            kept.update(plan=the_plan, staged=staged, gate_reports=(reference_gate, report))
        reference_point = ReferencePoint(
            name="fp32 (torch)",
            size_mb=model_size_bytes(self.reference) / 1e6,
            latency_ms=speed["reference"].latency_p50_ms,
            pairs_per_s=speed["reference"].pairs_per_s,
            ndcg_at_10=reference_gate.measures[NDCG_AT_10],
            split=split,
        )
        PlansTried(split, reference_point, tuple(candidates)).save(self.run.path / _CANDIDATES)
        return files  # the ONNX Runtime sessions of the bundles close as `tried` goes

    def _chosen_candidate(self, tried: PlansTried) -> PlanCandidate:
        """The candidate marked chosen, or a :class:`QualityGateError` naming every loss."""
        chosen = tried.chosen()
        if chosen is not None:
            return chosen
        self._withdraw_bundle()
        self.run.forget("plan", "gate")  # an earlier run's plan is not what this run tried
        losses = "; ".join(f"{c.name}: {c.loss_points:.2f}" for c in tried.candidates)
        reports = tuple(QualityReport.load(self.run.path / name) for name in _NEAREST_MISS)
        nearest = min(c.loss_points or 0.0 for c in tried.candidates)
        max_ndcg_loss = self.options.max_ndcg_loss
        raise QualityGateError(
            f"quality gate failed for every budget tried, nDCG@10 points lost on "
            f"{self.dataset_name}/{self.calibration_split}: {losses}; at most "
            f"{max_ndcg_loss:g} allowed (--max-ndcg-loss). No bundle was kept; "
            f"{_CANDIDATES} lists them. Try larger budgets.",
            GateResult(
                reports[0], reports[1], self.calibration_split, nearest, max_ndcg_loss or 0.0
            ),
        )

    # -- 3. the plan ----------------------------------------------------------------------
    def plan(self, budget: Mapping[str, float]) -> CompressionPlan:
        """A plan under ``budget`` → ``plan.json``."""
        self.budget = dict(budget)
        self.progress("plan", f"{self.options.method} under {budget_text(budget)}")
        the_plan = self.run.artifact(
            "plan",
            self._plan_settings(budget),
            "plan.json",
            CompressionPlan,
            lambda: self._make_plan(budget),
        )
        logger.info("  achieved %s", _achieved_text(the_plan))
        return the_plan

    def _plan_settings(self, budget: Mapping[str, float]) -> dict[str, Any]:
        return {
            "model": self.reference.cache_key,
            "relevance": self.run.digest("relevance") if self.relevance else None,
            "method": self.options.method,
            "budget": dict(budget),
            "importance": self.options.importance,
            "calibration": self.options.calibration,
            "calibration_split": self.calibration_split,
        }

    def _make_plan(self, budget: Mapping[str, float]) -> CompressionPlan:
        return self.verbs.plan(
            self.reference,
            self.options.method,
            budget,
            relevance=self.relevance,
            importance=self.options.importance,
            data_dir=self.options.data_dir,
            calibration_split=self.calibration_split,
            calibration=self.options.calibration,
        )

    # -- 3b. recovery ------------------------------------------------------------------------
    def recovery(self, the_plan: CompressionPlan) -> CompressionPlan:
        """Prune physically, distil back toward the reference, then the plan export realises.

        Without ``recover`` the plan is returned as it is (with ``quantize`` added).
        With it, the plan's heads, neurons and layers are removed from a copy of the
        reference, which is distilled on the collection's train/dev queries (the
        gate's queries left out) and corpus pseudo-queries → ``recovered/`` (a model
        folder with ``recovery_log.json``); export then takes that model, and the
        returned plan holds what is left to realise on it (``quantize``). A checkpoint
        (``.recovered.recovery/``) lets an interrupted run resume mid-training.
        """
        options = self.options
        if options.recover is None:
            self.run.forget("recovery", _GATE_BEFORE_RECOVERY)
            return self._with_quantization(the_plan, self.reference)
        structural, rest = the_plan.split_structural()
        if not structural.entries:
            raise ValueError(
                f"--recover follows structural compression (prune-structured, drop-layers); "
                f"the {options.method} plan removes nothing to recover from"
            )
        self.progress("recovery", f"{options.recover} steps toward the reference")
        aware = self._quantization_aware_precision()
        settings = {
            "plan": self.run.digest("plan"),
            "steps": options.recover,
            "max_length": options.recovery_max_length,
            "data": self.data_identity,
            "gate": [self.calibration_split, self.evaluation_settings["queries"]],
            **({"quantization_aware": aware} if aware else {}),
            # named only when used, so runs made before the option existed still resume
            **(
                {"hidden_weight": options.recovery_hidden_weight}
                if options.recovery_hidden_weight
                else {}
            ),
            **(
                {"similarity_weight": options.recovery_similarity_weight}
                if options.recovery_similarity_weight != 1.0
                else {}
            ),
            **(
                {"label_weight": options.recovery_label_weight}
                if options.recovery_label_weight
                else {}
            ),
            **(
                {"candidate_depth": options.recovery_candidate_depth}
                if options.recovery_candidate_depth is not None
                else {}
            ),
            **({"pseudo": options.recovery_pseudo} if options.recovery_pseudo is not None else {}),
        }
        folder = self.run.path / "recovered"

        steps = options.recover

        def make() -> list[str]:
            from relcomp.compression import prune_physically

            gate_queries = self.evaluation_settings["queries"]
            split_queries = self.calibration_data.split_queries
            # the gate's queries never train: its pseudo-queries' documents are left out too
            if self.pseudo:
                excluded = list(self.agreement_data.split_queries)
            elif gate_queries:
                excluded = sample_queries(split_queries, gate_queries)
            else:
                excluded = list(split_queries)
            self.verbs.recover(
                prune_physically(self.reference, structural),
                self.reference,
                options.data_dir,
                folder,
                steps=steps,
                max_length=options.recovery_max_length,
                exclude=excluded,
                gate_queries=0,  # the flow's own gate judges the exported model afterwards
                quantize=aware,
                hidden_weight=options.recovery_hidden_weight,
                similarity_weight=options.recovery_similarity_weight,
                label_weight=options.recovery_label_weight,
                candidate_depth=options.recovery_candidate_depth,
                pseudo=options.recovery_pseudo,
                show_progress_bar=options.show_progress_bar,
            )
            return sorted(
                str(p.relative_to(self.run.path)) for p in folder.rglob("*") if p.is_file()
            )

        self.run.step("recovery", settings, make, what=f"the recovered model in {folder}")
        self.pruned_by = structural
        student = load_model(folder, max_length=self.reference.max_length)
        self.source = student
        moved = plan_after_pruning(rest, self.reference, structural)
        return self._with_quantization(moved, student)

    def _quantization_aware_precision(self) -> str | None:
        """The precision recovery trains through: ``--quantize``'s, when it is one action
        the training loop can simulate (not a bits budget, not calibrated int8)."""
        options = self.options
        if not (options.quantize and options.quantization_aware):
            return None
        kind, value = parse_quantize(options.quantize)
        if kind != "action" or value.needs_data:
            logger.info(
                "recovery trains in fp32: quantization-aware training simulates one "
                "uncalibrated precision, not %s",
                options.quantize,
            )
            return None
        return str(value)

    def _recovery_provenance(self) -> dict[str, Any]:
        """What ``quality.json`` says of recovery and quantization (nothing when neither ran)."""
        extra: dict[str, Any] = {}
        if self.options.quantize:
            extra["quantize"] = self.options.quantize
        from relcomp.recovery import RECOVERY_LOG_FILE

        log_file = self.run.path / "recovered" / RECOVERY_LOG_FILE
        if self.options.recover and log_file.is_file():
            from relcomp.artifacts import RecoveryLog

            log = RecoveryLog.load(log_file)
            extra["recovery"] = {
                "steps": log.steps,
                "pairs_seen": log.pairs_seen,
                "seconds": log.seconds,
                "device": log.device,
                "max_length": log.max_length,
                "loss": log.loss,
                "heldout_loss": [log.checkpoints[0].get("heldout_loss"), log.final_heldout_loss],
                "hidden_weight": log.hidden_weight,
                "similarity_weight": log.similarity_weight,
                "label_weight": log.label_weight,
                "data": dict(log.data),
            }
            if self.recovery_gate is not None:  # "after" is the exported bundle the gate judged
                extra["recovery"]["gate"] = dict(self.recovery_gate)
        return extra

    def _with_quantization(self, the_plan: CompressionPlan, model: RankingModel) -> CompressionPlan:
        """``the_plan`` with ``quantize`` added: one action everywhere, or a mixed-precision plan."""
        quantize = self.options.quantize
        if quantize is None:
            return the_plan
        kind, value = parse_quantize(quantize)
        if kind == "action":
            extra: tuple[tuple[str, str], ...] = (("_default", str(value)),)
        else:
            relevance = self.verbs.component_relevance(
                model,
                self.options.data_dir,
                split=self.calibration_split,
                calibration=self.options.calibration,
                show_progress_bar=self.options.show_progress_bar,
            )
            mixed = self.verbs.plan(model, "mixed-precision", value, relevance=relevance)
            extra = tuple(mixed.entries)
        return dataclasses.replace(
            the_plan, entries=(*the_plan.entries, *extra), method=f"{the_plan.method}+{quantize}"
        )

    # -- 4. export ------------------------------------------------------------------------
    def export(self, the_plan: CompressionPlan) -> None:
        """The ONNX Runtime bundle of ``the_plan``, exported beside and moved into the run folder."""
        self.progress("export", "ONNX Runtime bundle")

        def make() -> list[str]:
            with staging_folder(self.run, "bundle") as staging:
                self._export_to(the_plan, staging / "bundle")
                return install_bundle(staging / "bundle", self.run, keep=("plan.json",))

        self.run.step(
            "export", self._export_settings(), make, what=f"the bundle in {self.run.path}"
        )
        self.compressed = load_model(self.run.path, max_length=self.reference.max_length)
        label = _candidate_label(self.budget, self.options.embeddings)
        self.names = ("fp32 (torch)", f"{label} (ONNX Runtime)")

    def _bundle_settings(self) -> dict[str, Any]:
        return {
            "model": self.reference.cache_key,
            "max_length": self.reference.max_length,
            "calibration": self.options.calibration,
            "calibration_split": self.calibration_split,
            "embeddings": self.options.embeddings,
            **({"first_token": True} if self.options.first_token else {}),
            **({"remove_padding": True} if self.options.remove_padding else {}),
        }

    def _export_settings(self) -> dict[str, Any]:
        return {
            **self._bundle_settings(),
            "plan": self.run.digest("plan"),
            **({"recovery": self.run.digest("recovery")} if self.options.recover else {}),
            **({"quantize": self.options.quantize} if self.options.quantize else {}),
        }

    def _export_to(self, the_plan: CompressionPlan, folder: Path) -> None:
        from relcomp.export import export_bundle

        options = self.options
        groups, _ = parity_groups(
            options.data_dir,
            self.calibration_split,
            queries=min(options.protocol.parity_queries, len(self.calibration_data.split_queries)),
            depth=min(self.depth, options.protocol.parity_depth),
            show_progress_bar=options.show_progress_bar,
        )
        export_bundle(
            self.source,
            folder,
            plan=the_plan,
            calibration_pairs=self.calibration_pairs,
            parity_groups=groups,
            explain_against=self.reference,
            embeddings=options.embeddings,
            first_token=options.first_token,
            remove_padding=options.remove_padding,
            show_progress_bar=options.show_progress_bar,
        )

    def _install(
        self, budget: Mapping[str, float], the_plan: CompressionPlan, staged: Path
    ) -> None:
        """Make ``staged`` (a bundle of ``the_plan``) the run's plan and bundle."""
        self.run.artifact(
            "plan", self._plan_settings(budget), "plan.json", CompressionPlan, lambda: the_plan
        )
        self.run.forget("export")  # an earlier plan's bundle, even one made under these settings
        self.run.step(
            "export",
            self._export_settings(),
            lambda: install_bundle(staged, self.run, keep=("plan.json",)),
        )

    # -- 5. the quality gate ----------------------------------------------------------------
    def quality_gate(self) -> dict[str, Any] | None:
        """nDCG@10 lost on the calibration split, never on the reported one; fails the run past the allowance."""
        max_ndcg_loss = self.options.max_ndcg_loss
        if max_ndcg_loss is None:
            self.progress("quality gate", "skipped (no --max-ndcg-loss)")
            self.run.forget("gate")
            return None
        if self.pseudo:
            return self._agreement_gate()
        split = self.calibration_split
        self.progress("quality gate", f"≤ {max_ndcg_loss:g} nDCG@10 points lost on {split}")
        gate_reference, gate_compressed = self._evaluate_both("gate", split, self.gate_reports)
        result = GateResult.compare(gate_reference, gate_compressed, split, max_ndcg_loss)
        gate = result.summary()
        logger.info("  nDCG@10 %.4f → %.4f", gate["reference"], gate["candidate"])
        before = self._gate_before_recovery(split)
        if before is not None:
            self.recovery_gate = {
                "measure": NDCG_AT_10,
                "split": split,
                "n_queries": before.n_queries,
                "reference": gate["reference"],
                "before": before.measures[NDCG_AT_10],
                "after": gate["candidate"],
            }
        if not result.passed:
            self._fail_gate(
                f"quality gate failed: the compressed model lost {result.loss_points:.2f} "
                f"nDCG@10 points on {self.dataset_name}/{result.split} ({gate['reference']:.4f} → "
                f"{gate['candidate']:.4f}, {gate['n_queries']} queries); at most "
                f"{max_ndcg_loss:g} allowed (--max-ndcg-loss). The bundle was removed; "
                "try a larger budget.",
                result,
            )
        return gate

    def _gate_before_recovery(self, split: str) -> QualityReport | None:
        """The pruned model, before recovery, on the gate's queries and candidates.

        The one evaluation recovery adds to the flow (the gate measures the reference and
        the recovered bundle already), made only when recovery ran; saved as
        ``evaluation/gate_pruned.json`` and reused while the plan and the gate's settings
        stay the same.
        """
        if self.pruned_by is None:
            self.run.forget(_GATE_BEFORE_RECOVERY)
            return None
        pruned_by = self.pruned_by
        settings = {
            "reference": self.reference.cache_key,
            "plan": self.run.digest("plan"),
            **self.data_identity,
            "split": split,
            "max_length": self.reference.max_length,
            **_plain_settings(self.evaluation_settings),
        }

        def make() -> list[str]:
            from relcomp.compression import prune_physically

            pruned = prune_physically(self.reference, pruned_by)
            self._evaluate(pruned, split).save(self.run.path / _GATE_PRUNED)
            return [_GATE_PRUNED]

        self.run.step(_GATE_BEFORE_RECOVERY, settings, make)
        report = QualityReport.load(self.run.path / _GATE_PRUNED)
        logger.info(
            "  nDCG@10 of the pruned model before recovery: %.4f", report.measures[NDCG_AT_10]
        )
        return report

    def _agreement_gate(self) -> dict[str, Any]:
        """Top-10 overlap and Kendall τ with the reference on pseudo-queries → ``gate_agreement.json``.

        A collection with no dev or train split has no judgements the gate may read, so
        the bundle must rank as the uncompressed model does on corpus pseudo-queries
        (:func:`~relcomp.evaluation.agreement_gate`; none of them trained recovery),
        or it is removed as after a failed nDCG@10 gate.
        """
        options = self.options
        data = self.agreement_data
        min_overlap, min_tau = options.min_agreement_overlap, options.min_agreement_tau
        self.progress(
            "quality gate",
            f"agreement with the uncompressed model on {len(data.split_queries)} pseudo-queries: "
            f"top-10 overlap ≥ {min_overlap:g}, Kendall τ ≥ {min_tau:g}",
        )
        settings = {
            "reference": self.reference.cache_key,
            "bundle": self.run.digest("export"),
            **self.data_identity,
            "split": data.split,
            "gate_queries": sorted(data.split_queries),
            "max_length": self.reference.max_length,
            "first_stage": options.first_stage,
            "depth": self.depth,
            "min_overlap": min_overlap,
            "min_tau": min_tau,
        }

        def make() -> list[str]:
            agreement_gate(
                self.reference,
                self.compressed,
                data,
                min_overlap=min_overlap,
                min_tau=min_tau,
                first_stage=options.first_stage,
                depth=self.depth,
                show_progress_bar=options.show_progress_bar,
                executor=self.executor,
            ).save(self.run.path / _AGREEMENT)
            return [_AGREEMENT]

        self.run.step("gate", settings, make)
        result = AgreementGate.load(self.run.path / _AGREEMENT)
        logger.info(
            "  top-10 overlap %.3f, Kendall τ %.3f (worst query %.3f) on %d pseudo-queries",
            result.top10_overlap,
            result.kendall_tau,
            result.kendall_tau_min,
            result.n_queries,
        )
        if not result.passed:
            self._fail_gate(
                f"quality gate failed: the compressed model ranks unlike the uncompressed one on "
                f"{result.n_queries} pseudo-queries of {self.dataset_name} (top-10 overlap "
                f"{result.top10_overlap:.3f}, at least {min_overlap:g} asked "
                f"(--min-agreement-overlap); Kendall τ {result.kendall_tau:.3f}, at least "
                f"{min_tau:g} asked (--min-agreement-tau)). The bundle was removed; try a "
                "larger budget or more recovery steps.",
                result,
            )
        return result.summary()

    def _fail_gate(self, message: str, result: GateResult | AgreementGate) -> NoReturn:
        """Remove the bundle a gate refused (:meth:`_withdraw_bundle`), then raise."""
        self.compressed = None  # close the ONNX Runtime session before its file goes
        self._withdraw_bundle()
        raise QualityGateError(message, result)

    def _withdraw_bundle(self) -> None:
        """After a failed gate: delete the bundle and everything made from it (see :func:`compress`)."""
        self.run.forget("export", "index", "evaluation", "speed")
        for name in ("quality.json", "report.html"):
            with contextlib.suppress(FileNotFoundError):
                (self.run.path / name).unlink()
        figures = self.run.path / "figures"
        if figures.is_dir():
            for png in figures.glob("*.png"):
                png.unlink()
            with contextlib.suppress(OSError):
                figures.rmdir()

    # -- 5b. the index --------------------------------------------------------------------
    def index(self) -> Mapping[str, Any] | None:
        """A retriever's compressed corpus index for the bundle → ``index.json``, ``index_quality.json``.

        With ``index`` (a precision), the bundle's corpus embeddings are stored at that
        precision, ``index_dims`` of them kept (chosen by ``index_dim_selection``, relevance
        on calibration queries, never the reported split) and ``index_rescore`` × the
        candidates rescored (:func:`relcomp.index.build_index`). The index is measured
        against the same bundle's float index on the evaluation's split and queries. The
        run folder, a bundle, then carries ``index.json``: ``relcomp evaluate -m`` on it
        retrieves through the index. Without ``index`` an earlier run's index is removed.

        Returns:
            ``index_quality.json``'s content, or ``None`` without ``index``.
        """
        from relcomp.artifacts import INDEX_QUALITY_FILE, INDEX_SETTINGS_FILE

        options = self.options
        if options.index is None:
            self.progress("index", "skipped (no --index)")
            self.run.forget("index")
            return None
        precision = options.index
        dims = "all dimensions" if options.index_dims is None else f"{options.index_dims} dims"
        self.progress(
            "index",
            f"{options.index}, {dims}, rescore ×{options.index_rescore}, on {options.split}",
        )
        by_relevance = (
            options.index_dims is not None
            and options.index_dim_selection.strip().lower() == "relevance"
        )
        settings = {
            "bundle": self.run.digest("export"),
            **self.data_identity,
            "split": options.split,
            "queries": self.evaluation_settings["queries"],
            "precision": options.index,
            "dims": options.index_dims,
            "dim_selection": options.index_dim_selection,
            "rescore": options.index_rescore,
            "calibration_split": self.calibration_split if by_relevance else None,
        }

        def make() -> list[str]:
            from relcomp.index import build_index

            with staging_folder(self.run, "index") as staging:
                result = build_index(
                    self.compressed,
                    options.data_dir,
                    precision=precision,
                    dims=options.index_dims,
                    dim_selection=options.index_dim_selection,
                    rescore=options.index_rescore,
                    split=options.split,
                    calibration_split=settings["calibration_split"],
                    queries=self.evaluation_settings["queries"],
                    show_progress_bar=options.show_progress_bar,
                    output=staging,
                )
                # index.json last: a bundle holding it is a bundle with a complete index
                names = sorted(
                    (p.name for p in result.paths), key=lambda n: n == INDEX_SETTINGS_FILE
                )
                for name in names:
                    os.replace(staging / name, self.run.path / name)
            return names

        self.run.step("index", settings, make)
        quality: dict[str, Any] = json.loads(
            (self.run.path / INDEX_QUALITY_FILE).read_text(encoding="utf-8")
        )
        measures = quality["measures"]
        logger.info(
            "  %g bytes per document (float32: %g), nDCG@10 %.4f → %.4f",
            quality["bytes_per_document"]["index"],
            quality["bytes_per_document"]["float32"],
            measures["float32"][NDCG_AT_10],
            measures["index"][NDCG_AT_10],
        )
        return quality

    # -- 6. evaluation ----------------------------------------------------------------------
    def evaluation(self) -> tuple[QualityReport, QualityReport]:
        """Reference and bundle on the reported split: same queries, same candidates."""
        split = self.options.split
        self.progress("evaluation", f"{split} split, torch fp32 and the ONNX bundle")
        return self._evaluate_both("evaluation", split)

    def _evaluate(self, model: RankingModel, split: str) -> QualityReport:
        report: QualityReport = _named(
            self.verbs.evaluate(
                model,
                self.options.data_dir,
                split=split,
                executor=self.executor,
                **self.evaluation_settings,
            ),
            self.dataset_name,
        )
        return report

    def _evaluate_both(
        self,
        step: str,
        split: str,
        known: tuple[QualityReport, QualityReport] | None = None,
    ) -> tuple[QualityReport, QualityReport]:
        """Both models on one split, or their saved reports.

        Saved as ``evaluation/<gate or split>_reference.json`` and ``…_compressed.json``;
        reused when the bundle, the data and the evaluation settings are those of the
        last run. ``known``: reports already made for these models under these settings
        (the plans tried step gated the chosen bundle), saved instead of evaluating again.
        """
        prefix = "gate" if step == "gate" else split
        files = [f"evaluation/{prefix}_reference.json", f"evaluation/{prefix}_compressed.json"]
        settings = {
            "reference": self.reference.cache_key,
            "bundle": self.run.digest("export"),
            **self.data_identity,
            "split": split,
            "max_length": self.reference.max_length,
            **_plain_settings(self.evaluation_settings),
        }

        made: list[QualityReport] = []

        def make() -> list[str]:
            made.extend(
                known
                or [self._evaluate(model, split) for model in (self.reference, self.compressed)]
            )
            for report, name in zip(made, files, strict=True):
                report.save(self.run.path / name)
            return files

        self.run.step(step, settings, make)
        if not made:
            made.extend(QualityReport.load(self.run.path / name) for name in files)
        return made[0], made[1]

    # -- 7. speed -------------------------------------------------------------------------
    def speed(self) -> SpeedReport:
        """Latency and throughput of both, interleaved on real pairs of the reported split."""
        options = self.options
        self.progress(
            "speed",
            f"latency at batch 1, throughput at batch 32, {options.threads} thread(s)",
        )
        settings = {
            "bundle": self.run.digest("export"),
            "split": options.split,
            "repeats": options.protocol.repeats,
            "threads": options.threads,
            "max_length": self.reference.max_length,
        }

        def make() -> list[str]:
            self._measure_speed({"reference": self.reference, "compressed": self.compressed}).save(
                self.run.path / _SPEED
            )
            return [_SPEED]

        self.run.step("speed", settings, make)
        return SpeedReport.load(self.run.path / _SPEED)

    def _measure_speed(self, systems: Mapping[str, Any]) -> SpeedReport:
        """Systems timed interleaved on real pairs of the reported split."""
        return SpeedReport.from_dict(
            measure_speed(
                systems,
                [q for q, _ in self.timing_pairs],
                [d for _, d in self.timing_pairs],
                repeats=self.options.protocol.repeats,
                threads=self.options.threads,
                show_progress_bar=self.options.show_progress_bar,
            )
        )

    # -- 8. explanations ------------------------------------------------------------------
    def explanations(self, reference_report: QualityReport) -> None:
        """AttnLRP token relevance of the reference's top document for the first queries."""
        options = self.options
        self.progress(
            "explanations", f"AttnLRP on {options.explanations} (query, top document) pairs"
        )
        settings = {
            "model": self.reference.cache_key,
            **self.data_identity,
            "split": options.split,
            "n": options.explanations,
            **_plain_settings(self.evaluation_settings),
        }

        def make() -> list[str]:
            top = _top_pairs(
                self.reference,
                self.evaluated,
                reference_report,
                options.explanations,
                options.first_stage,
                self.depth,
            )
            written = []
            explained = _explain_pairs(self.reference, top, options.show_progress_bar)
            for number, explanation in enumerate(explained, 1):
                written.append(f"explanations/{number:02d}.json")
                explanation.save(self.run.path / written[-1])
            return written

        self.run.step("explanations", settings, make)

    # -- 9. the report --------------------------------------------------------------------
    def report(
        self,
        reports: tuple[QualityReport, QualityReport],
        speed: SpeedReport,
        gate: Mapping[str, Any] | None,
        tried: PlansTried | None,
    ) -> CompressResult:
        """``quality.json`` (always written again) and ``report.html``."""
        options = self.options
        self.progress("report", "quality.json and report.html")
        quality = quality_comparison(
            reports[0],
            reports[1],
            names=self.names,
            sizes=(model_size_bytes(self.reference), model_size_bytes(self.compressed)),
            speed=speed,
            protocol=options.protocol.name,
            gate=gate,
            budget=f"{options.method}: {budget_text(self.budget)}",
            provenance={
                "data_dir": str(self.evaluated.path),
                "calibration_split": self.calibration_split,
                "calibration_pairs": options.calibration,
                "importance": options.importance,
                "embeddings": options.embeddings,
                "relcomp": _relcomp_version(),
                **self._recovery_provenance(),
            },
            candidates=tried,
        )
        quality.save(self.run.path / "quality.json")
        report_path = None
        if options.report:
            from relcomp.reports import write_report

            report_path = write_report(self.run.path)
        seconds = time.perf_counter() - self.started
        logger.info("done in %.0f s: %s", seconds, report_path or self.run.path / "quality.json")
        return CompressResult(self.run.path, report_path, quality.to_dict(), seconds)


#: Every plan tried with several budgets, for the report's Pareto plots.
_CANDIDATES = "evaluation/candidates.json"
#: The agreement gate's file (a collection with no dev or train split).
_AGREEMENT = "evaluation/gate_agreement.json"
#: The speed step's file.
_SPEED = "evaluation/speed.json"
#: The step that measures the pruned model before recovery on the gate split, and its file.
_GATE_BEFORE_RECOVERY = "gate before recovery"
_GATE_PRUNED = "evaluation/gate_pruned.json"
#: Gate reports of the reference and of the plan that came nearest, when every plan failed.
_NEAREST_MISS = ["evaluation/plans_tried_reference.json", "evaluation/plans_tried_nearest.json"]


class _FlowProgress:
    """Logs ``[n/8] step: detail`` as the flow moves on."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, name: str, detail: str) -> None:
        number = FLOW_STEPS.index(name) + 1
        logger.info(
            "[%d/%d] %s: %s (%.0f s)",
            number,
            len(FLOW_STEPS),
            name,
            detail,
            time.perf_counter() - self.started,
        )


def embeddings_for(quantize: str | None) -> str:
    """The word embeddings ``--quantize`` implies when ``--embeddings`` is not given.

    An integer precision everywhere (``int8``, ``int4``) quantizes the word-embedding
    table to int8 too (one scale per row): it is a fifth of a pruned MiniLM's
    parameters, and left in fp32 it keeps the bundle under 2× smaller. fp16, a bits
    budget or no ``--quantize`` keep it fp32, as the plan.

    Example:
        >>> embeddings_for("int8"), embeddings_for("fp16"), embeddings_for("6bits"), embeddings_for(None)
        ('int8', 'fp32', 'fp32', 'fp32')
    """
    from relcomp.compression import Int4, Int8

    if quantize is None:
        return "fp32"
    kind, what = parse_quantize(quantize)
    return "int8" if kind == "action" and isinstance(what, Int4 | Int8) else "fp32"


def parse_quantize(text: str) -> tuple[str, Any]:
    """``--quantize``: one precision action everywhere (``int8``) or a bits budget (``6bits``).

    Example:
        >>> parse_quantize("int8"), parse_quantize("6bits")
        (('action', Int8(per_channel=True, activations=False, channelwise=False)), ('budget', {'bits_per_weight': 6.0}))
    """
    from relcomp.compression import PrecisionAction, parse_action

    cleaned = text.strip().lower()
    if cleaned.endswith(("bits", "bit")) or cleaned.startswith("bits_per_weight"):
        return "budget", parse_budget_text(text, "mixed-precision")
    action = parse_action(text)
    if not isinstance(action, PrecisionAction):
        raise ValueError(
            f"--quantize {text!r}: give a precision (int8, int4, fp16, int8(activations=True)) "
            "or a bits budget (6bits)"
        )
    return "action", action


def _dataset_name(data_dir: str | os.PathLike[str]) -> str:
    from relcomp.data import DEMO_NAME, demo_path

    folder = Path(data_dir).resolve()
    with contextlib.suppress(FileNotFoundError):
        if folder == demo_path():
            return DEMO_NAME
    return folder.name


def _plain_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluation settings that change results (progress bars do not)."""
    return {key: value for key, value in settings.items() if key != "show_progress_bar"}


def _candidate_label(budget: Mapping[str, float], embeddings: str) -> str:
    """``6 bits/weight`` (+ ``, int8 embeddings``): the plan's method is in plan.json."""
    label = budget_label(budget)
    return label + (", int8 embeddings" if embeddings == "int8" else "")


def _achieved_text(the_plan: CompressionPlan) -> str:
    shown = ("size_mb", "bits_per_weight", "params_removed", "sparsity")
    return ", ".join(
        f"{key}={float(the_plan.achieved[key]):.3g}" for key in shown if key in the_plan.achieved
    )


def _relcomp_version() -> str:
    from relcomp import __version__

    return __version__


def _named(artifact: Any, dataset_name: str) -> Any:
    """The artifact with the collection called ``dataset_name`` (the demo's folder is ``demo``)."""
    if isinstance(artifact, QualityReport):
        return dataclasses.replace(artifact, dataset=dataset_name)
    return dataclasses.replace(artifact, source={**artifact.source, "dataset": dataset_name})


def _explain_pairs(
    model: RankingModel, pairs: Sequence[tuple[str, str]], show_progress_bar: bool | None = None
) -> list[TokenRelevance]:
    """AttnLRP token relevance of each pair, as :func:`explain` gives it, in one batched call."""
    from relcomp.attribution import get_method

    if not pairs:
        return []
    return list(
        get_method("attnlrp")(model).attribute(
            [query for query, _ in pairs],
            [document for _, document in pairs],
            batch_size=len(pairs),
            show_progress_bar=show_progress_bar,
        )
    )


def _top_pairs(
    model: RankingModel,
    dataset: Any,
    report: QualityReport,
    n: int,
    first_stage: str | None,
    depth: int,
) -> list[tuple[str, str]]:
    """(query, document the model ranks first) for the first ``n`` evaluated queries."""
    if n == 0:
        return []
    query_ids = sorted(report.per_query)[:n]
    if first_stage is None and isinstance(model, BiEncoder):
        run = dense_retrieve(model, dataset, query_ids, depth=1, show_progress_bar=False)
    else:
        stage = load_first_stage(first_stage or BM25)
        candidates = retrieve(stage, dataset, query_ids, depth, show_progress_bar=False)
        run = rerank(model, dataset, candidates, depth=depth, show_progress_bar=False)
    pairs = []
    for query_id in query_ids:
        if run.get(query_id):
            best = max(sorted(run[query_id]), key=lambda doc_id: run[query_id][doc_id])
            pairs.append((dataset.query_text(query_id), dataset.document_text(best)))
    return pairs
