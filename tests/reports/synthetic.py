"""Synthetic artifacts and compress run folders for the report tests (real artifact classes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from relcomp.artifacts import ComponentRelevance, CompressionPlan, TokenInteractions, TokenRelevance

SECTION_TITLES = (
    "Summary",
    "Quality, size and latency",
    "Plans tried: quality against size and latency",
    "The plan",
    "Component relevance",
    "Token explanations",
    "Parity of the exported model",
    "Provenance",
)


def make_explanation(
    query: str = "how many people live in berlin?",
    document: str = "Berlin has a population of 3,520,031 registered inhabitants.",
    side: str = "pair",
    seed: int = 0,
) -> TokenRelevance:
    """A TokenRelevance whose words are the texts' words, with seeded relevance."""
    rng = np.random.default_rng(seed)
    query_words, document_words = query.split(), document.split()
    words = ("[CLS]", *query_words, "[SEP]", *document_words, "[SEP]")
    segments = (-1, *[0] * len(query_words), -1, *[1] * len(document_words), -1)
    relevance = tuple(float(v) for v in rng.normal(0, 0.2, len(words)))
    return TokenRelevance(
        method="AttnLRP",
        query=query,
        document=document,
        score=float(sum(relevance)) + 0.05,
        tokens=words,
        relevance=relevance,
        segment=segments,
        words=words,
        word_relevance=relevance,
        word_segment=segments,
        conservation_error=0.05,
        side=side,
    )


def make_interactions(
    query: str = "cat food", document: str = "what cats eat"
) -> TokenInteractions:
    q, d = query.split(), document.split()
    matrix = np.arange(len(q) * len(d), dtype=float).reshape(len(q), len(d)) / 10 - 0.2
    return TokenInteractions(
        method="BiLRP",
        query=query,
        document=document,
        score=float(matrix.sum()),
        query_tokens=tuple(q),
        document_tokens=tuple(d),
        interactions=matrix,
        conservation_error=0.0,
    )


def make_relevance(n_layers: int = 2, n_heads: int = 4, model: str = "tiny") -> ComponentRelevance:
    rng = np.random.default_rng(1)

    def entry(values: np.ndarray) -> dict[str, Any]:
        return {"mean_abs": np.abs(values).tolist(), "mean_signed": values.tolist(), "count": 8}

    layers = [f"bert.encoder.layer.{i}" for i in range(n_layers)]
    return ComponentRelevance(
        model=model,
        method="AttnLRP",
        n_pairs=8,
        components={
            "layer": {name: entry(rng.normal(size=1)) for name in layers},
            "head": {name: entry(rng.normal(0, 0.1, n_heads)) for name in layers},
            "attention": {name: entry(rng.normal(size=1)) for name in layers},
            "mlp": {name: entry(rng.normal(size=1)) for name in layers},
        },
        source={"dataset": "toy", "split": "dev", "pairs": 8, "seed": 13},
    )


def make_quality(
    model: str = "tiny-reranker",
    *,
    candidates: bool = True,
    gate: bool = True,
    latency: bool = True,
) -> dict[str, Any]:
    def side(name: str, ndcg: float, size: float, p50: float, at10: float) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": name,
            "measures": {"nDCG@10": ndcg, "RR@10": ndcg + 0.05, "R@100": 0.9},
            "per_query": {"nDCG@10": {"q1": ndcg, "q2": ndcg}},
            "size_mb": size,
            "by_depth": {"10": {"nDCG@10": at10, "RR@10": at10, "R@100": 0.5}},
        }
        if latency:
            entry["latency_ms"] = {"p50": p50, "p95": p50 * 1.4}
            entry["pairs_per_s"] = 1000 / p50
        return entry

    quality: dict[str, Any] = {
        "kind": "quality_comparison",
        "version": 1,
        "model": model,
        "dataset": "scifact",
        "split": "test",
        "protocol": "quick",
        "n_queries": 100,
        "measures": ["nDCG@10", "RR@10", "R@100"],
        "depth": 30,
        "reference": side("fp32 (torch)", 0.6617, 90.9, 12.0, 0.6402),
        "compressed": side("int8 (onnx)", 0.6577, 23.4, 5.1, 0.6398),
        "difference": {
            "nDCG@10": {"delta": -0.004, "p_value": 0.31, "significant": False},
            "RR@10": {"delta": -0.002, "p_value": 0.62, "significant": False},
            "R@100": {"delta": 0.0, "p_value": 1.0, "significant": False},
        },
        "significance": {"test": "t-test", "alpha": 0.05, "n_queries": 100},
        "gate": (
            {"max_ndcg_loss": 0.5, "split": "train", "loss_points": 0.2, "passed": True}
            if gate
            else None
        ),
    }
    if candidates:
        quality["candidates"] = [
            {"name": "int8", "budget": "8bits", "size_mb": 23.4, "latency_ms": 5.1,
             "ndcg@10": 0.6577, "passed": True},
            {"name": "mixed 6 bits", "budget": "6bits", "size_mb": 17.9, "latency_ms": 5.6,
             "ndcg@10": 0.6521, "passed": True},
            {"name": "int4", "budget": "4bits", "size_mb": 12.2, "latency_ms": 6.3,
             "ndcg@10": 0.6101, "passed": False},
        ]  # fmt: skip
    return quality


def make_run_folder(
    folder: Path,
    *,
    model: str = "tiny-reranker",
    query: str = "how many people live in berlin?",
    document: str = "Berlin has a population of 3,520,031 registered inhabitants.",
    pattern: str = "re:.*attention.*",
    candidates: bool = True,
    bundle: bool = True,
    explanations: bool = True,
    relevance: bool = True,
) -> Path:
    """A compress output folder as the compress flow writes it, with tiny values."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "quality.json").write_text(
        json.dumps(make_quality(model, candidates=candidates)), encoding="utf-8"
    )
    CompressionPlan(
        model=model,
        entries=((pattern, "int8"), ("_default", "int4(block_size=32)")),
        method="mixed-precision",
        budget={"bits_per_weight": 6},
        achieved={"size_mb": 17.9, "bits_per_weight": 6.0, "params_removed": 0.0},
        relevance={"method": "AttnLRP", "dataset": "toy", "split": "dev"},
    ).save(folder / "plan.json")
    if relevance:
        make_relevance(model=model).save(folder / "component_relevance.json")
    if explanations:
        make_explanation(query, document).save(folder / "explanations" / "pair_1.json")
        make_interactions().save(folder / "explanations" / "pair_2_interactions.json")
    if bundle:
        # As the export step writes them (relcomp_bundle.json: an export_bundle artifact),
        # in the run folder itself, which is then a sentence-transformers-style bundle.
        bundle_payload = {
            "kind": "export_bundle",
            "version": 1,
            "model": model,
            "model_kind": "cross-encoder",
            "family": "bert",
            "variant": "int8",
            "onnx_file": "onnx/model_int8.onnx",
            "exporter": "optimum",
            "size_bytes": 23_400_000,
            "fp32_size_bytes": 90_900_000,
            "max_length": 256,
            "plan": {"entries": [[pattern, "int8"]]},
            "modules": {"bert.encoder.layer.0.attention.self.query": "int8", "classifier": "fp32",
                        "bert.encoder.layer.0.output.dense": "int8"},
            "nodes": {"int8": ["MatMul_1", "MatMul_2"], "fp32": ["Gemm_3"]},
            "fusion": {"Attention": 2},
            "notes": [f"{model} keeps its classifier in fp32"],
            "parity": {},
            "gate": {},
            "versions": {"onnxruntime": "1.23.0", "optimum-onnx": "0.1.0"},
        }  # fmt: skip
        (folder / "relcomp_bundle.json").write_text(json.dumps(bundle_payload), encoding="utf-8")
        (folder / "parity.json").write_text(
            json.dumps(
                {
                    "kind": "parity_report",
                    "version": 1,
                    "reference": "torch fp32",
                    "candidate": "onnx int8",
                    "n_queries": 8,
                    "n_pairs": 240,
                    "max_abs_diff": 0.012,
                    "mean_abs_diff": 0.003,
                    "kendall_tau": 0.97,
                    "kendall_tau_min": 0.91,
                    "top10_overlap": 0.98,
                    "tie_rate_reference": 0.0,
                    "tie_rate_candidate": 0.0,
                    "per_query": {"q1": {"tau": 0.97}},
                    "source": {"split": "dev"},
                }
            ),
            encoding="utf-8",
        )
        (folder / "run.json").write_text(
            json.dumps(
                {
                    "kind": "relcomp_run",
                    "version": 1,
                    "steps": {
                        "relevance": {"settings": {}, "files": {}, "finished": "2025-01-02T10:00:00+0000"},
                        "export": {"settings": {}, "files": {}, "finished": "2025-01-02T10:05:00+0000"},
                    },
                }
            ),
            encoding="utf-8",
        )  # fmt: skip
    return folder
