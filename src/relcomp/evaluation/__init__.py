"""Evaluation: BEIR data, first stages, re-ranking, measures and significance.

The flow of a quality check, top to bottom::

    dataset = load_beir(path, "test")                       # validated BEIR split
    query_ids = sample_queries(dataset.split_queries, 100)  # quick protocol (or all)
    candidates = bm25_retrieve(dataset, query_ids, depth=30)  # cached on disk
    run = rerank(model, dataset, candidates, depth=30)
    report = quality_report(model.name, dataset, run, query_ids=query_ids, first_stage="bm25", depth=30)

Every run is ``{query id: {document id: score}}``, ranked by one rule everywhere:
higher score first, equal scores by document id ascending.
"""

from __future__ import annotations

from relcomp.evaluation._common import Qrels, Run, ranked
from relcomp.evaluation.beir import BeirDataset, available_splits, load_beir
from relcomp.evaluation.cache import Cache, default_cache_dir
from relcomp.evaluation.comparison import quality_comparison
from relcomp.evaluation.first_stage import (
    FIRST_STAGES,
    BM25Settings,
    bm25_retrieve,
    dense_retrieve,
    encode_corpus,
    retrieve,
    top_k,
)
from relcomp.evaluation.gate import (
    DEFAULT_MIN_OVERLAP,
    DEFAULT_MIN_TAU,
    GATE_MEASURE,
    GateResult,
    QualityGateError,
    agreement_gate,
    agreement_queries,
    check_agreement_thresholds,
    check_max_ndcg_loss,
    gate_split,
    quality_gate,
)
from relcomp.evaluation.metrics import (
    DEFAULT_MEASURES,
    compare_runs,
    evaluate_run,
    paired_test,
    parse_measures,
    tie_rate,
)
from relcomp.evaluation.protocol import PROTOCOLS, Protocol, resolve_protocol
from relcomp.evaluation.report import quality_report
from relcomp.evaluation.rerank import candidate_pairs, rerank
from relcomp.evaluation.sampling import (
    PSEUDO_SPLIT,
    calibration_dataset,
    calibration_pairs,
    calibration_triples,
    development_split,
    parity_groups,
    pseudo_query_dataset,
    sample_queries,
)
from relcomp.evaluation.speed import keep_freed_memory, measure_speed, model_size_bytes
from relcomp.evaluation.systems import (
    BM25,
    evaluate_scorer,
    load_first_stage,
    rerank_with_corpus_embeddings,
)

__all__ = [
    "BM25",
    "DEFAULT_MEASURES",
    "DEFAULT_MIN_OVERLAP",
    "DEFAULT_MIN_TAU",
    "FIRST_STAGES",
    "GATE_MEASURE",
    "PROTOCOLS",
    "PSEUDO_SPLIT",
    "BM25Settings",
    "BeirDataset",
    "Cache",
    "GateResult",
    "Protocol",
    "Qrels",
    "QualityGateError",
    "Run",
    "agreement_gate",
    "agreement_queries",
    "available_splits",
    "bm25_retrieve",
    "calibration_dataset",
    "calibration_pairs",
    "calibration_triples",
    "candidate_pairs",
    "check_agreement_thresholds",
    "check_max_ndcg_loss",
    "compare_runs",
    "default_cache_dir",
    "dense_retrieve",
    "development_split",
    "encode_corpus",
    "evaluate_run",
    "evaluate_scorer",
    "gate_split",
    "keep_freed_memory",
    "load_beir",
    "load_first_stage",
    "measure_speed",
    "model_size_bytes",
    "paired_test",
    "parity_groups",
    "parse_measures",
    "pseudo_query_dataset",
    "quality_comparison",
    "quality_gate",
    "quality_report",
    "ranked",
    "rerank",
    "rerank_with_corpus_embeddings",
    "resolve_protocol",
    "retrieve",
    "sample_queries",
    "tie_rate",
    "top_k",
]
