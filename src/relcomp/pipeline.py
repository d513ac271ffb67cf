"""The flow, readable top to bottom: load → (relevance → plan → compress → export) → evaluate → report.

Each function here is one step a user can run on its own (the CLI verbs call them);
each returns or writes the artifact of its step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
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
    "apply_plan",
    "component_relevance",
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

    Example:
        >>> report = evaluate("bm25", "src/relcomp/data/scifact-demo", queries=5)  # doctest: +SKIP
    """
    parse_measures(measures)  # fail on a bad measure before any expensive work
    dataset = load_beir(data_dir, split)
    query_ids = (
        sample_queries(dataset.split_queries, queries) if queries else list(dataset.split_queries)
    )
    scorer = load_scorer(model, max_length)
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
    if (
        first_stage is None
        and isinstance(scorer, RankingModel)
        and not isinstance(scorer, BiEncoder)
    ):
        first_stage = BM25
    if scorer == BM25:
        run = bm25_retrieve(dataset, query_ids, depth=depth, **options)
        name, stage_name = BM25, None
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
            )
        name, stage_name = scorer.name, stage if isinstance(stage, str) else stage.name
    truncation = dict(scorer.truncation) if isinstance(scorer, RankingModel) else {}
    if isinstance(scorer, RankingModel) and truncation.get("truncated"):
        logger.warning("%s: %s", scorer.name, scorer.truncation_summary())
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
        settings={
            "queries": queries,
            "batch_size": batch_size,
            "sample_seed": 13 if queries else None,
        },
    )


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
_RATIO_BUDGET = {"sparsify": "sparsity"}  # the other planners read a bare ratio as params_removed


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
) -> CompressionPlan:
    """A compression plan under ``budget``, driven by relevance (or a blind baseline).

    Args:
        model: the model to compress (folder, hub id or loaded model).
        method: ``mixed-precision``, ``prune-structured``, ``prune-unstructured`` or ``sparsify``.
        budget: see :func:`parse_budget_text`, or a dict.
        relevance: a ``component_relevance.json`` (from ``relcomp relevance``) or artifact.
        importance: ``relevance`` (default), ``uniform``, ``random``, ``magnitude``, ``taylor``.
        data_dir: a BEIR folder for calibration pairs (Taylor scores, Wanda and TEAL
            statistics); its dev split (else train) is used, never test.
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
    return make_plan(
        scorer, method, parsed, importance, relevance=artifact, calibration=pairs, seed=seed
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
) -> ComponentRelevance:
    """Component relevance aggregated over calibration pairs (query, judged-relevant document).

    Calibration pairs come from ``split`` (dev or train), never from the split that is
    reported: passing ``split="test"`` is refused.
    """
    from relcomp.attribution import ComponentLRP

    if split == "test":
        raise ValueError("calibration pairs must not come from the test split; use dev or train")
    dataset = load_beir(data_dir, split)
    pairs = calibration_pairs(dataset, calibration)
    scorer = load_scorer(model, max_length)
    if not isinstance(scorer, RankingModel):
        raise ValueError("component relevance needs a neural model, not bm25")
    composite = {"attnlrp": "AttnLRP", "cp-lrp": "CP-LRP", "epsilon": "Epsilon"}.get(
        method.lower(), method
    )
    return ComponentLRP(scorer, composite).attribute(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        source={"dataset": dataset.name, "split": split, "pairs": len(pairs), "seed": 13},
    )


def calibration_pairs(dataset: Any, n: int, seed: int = 13) -> list[tuple[str, str]]:
    """A fixed, seeded sample of ``n`` (query, most relevant judged document) pairs."""
    query_ids = sample_queries(dataset.split_queries, n, seed=seed)
    pairs = []
    for query_id in query_ids:
        judged = dataset.qrels[query_id]
        best = max(sorted(judged), key=lambda doc_id: judged[doc_id])
        if judged[best] > 0:
            pairs.append((dataset.query_text(query_id), dataset.document_text(best)))
    if not pairs:
        raise ValueError(
            f"{dataset.name}/{dataset.split}: no judged-relevant pairs to calibrate on"
        )
    return pairs
