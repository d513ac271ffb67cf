"""Compressing a retriever's corpus index: precision, dimensions chosen by relevance, rescoring.

all-MiniLM-L6-v2, exhaustive dense retrieval over the whole corpus of scifact and
nfcorpus, every test query, max length 256 (the full protocol of
../shared/BENCHMARKS.md). Each system is an index over the same cached corpus
embeddings (:mod:`relcomp.index`): float32, float16, int8 (ranges from the corpus
embeddings), binary (sign bits, Hamming search), binary and int8 with rescoring, and
``d`` in {256, 192, 128, 64} coordinates chosen by relevance (train/dev queries,
hard negatives from the float index), first, random, variance or PCA (a rotation),
stored as float32 and as binary. Reported per system: index bytes, p50 / p95 query
latency (batch 1, 2 threads, systems interleaved; search only, and with the query's
encoding), nDCG@10, R@100 and paired t-test p against float32 (ranx, through
``paired_test``).

Usage::

    python benchmarks/index_compression.py --output benchmarks/results/index_compression.json
    python benchmarks/index_compression.py --markdown benchmarks/results/index_compression.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from _common import MAX_LENGTH, beir_path, machine, set_threads, write_json
from relcomp.evaluation import evaluate_run, load_beir, paired_test, sample_queries
from relcomp.index import (
    CompressedIndex,
    calibration_vectors,
    check_calibration_split,
    encode_queries,
    make_index_settings,
    normalised_corpus,
)
from relcomp.models import load_model

COLLECTIONS = ("scifact", "nfcorpus")
DIMS = (256, 192, 128, 64)
SELECTIONS = ("relevance", "first", "random", "variance", "pca")
BLIND = ("first", "random", "variance", "pca")
AXIS_ALIGNED = ("first", "random", "variance")
MEASURES = ("nDCG@10", "R@100")
DEPTH = 100


def systems() -> list[dict[str, Any]]:
    """Every index measured: a label and the settings :func:`make_index_settings` takes."""
    rows: list[dict[str, Any]] = [
        {"label": "float32", "precision": "float32"},
        {"label": "float16", "precision": "float16"},
        {"label": "int8", "precision": "int8"},
        {"label": "int8 + rescore x4 (float32)", "precision": "int8", "rescore": 4},
        {"label": "binary", "precision": "binary"},
    ]
    for factor in (4, 10):
        for vectors in ("index", "int8"):
            rows.append(
                {
                    "label": f"binary + rescore x{factor} ({'binary' if vectors == 'index' else vectors})",
                    "precision": "binary",
                    "rescore": factor,
                    "rescore_with": vectors,
                }
            )
    for precision in ("float32", "binary"):
        for d in DIMS:
            for selection in SELECTIONS:
                rows.append(
                    {
                        "label": f"{precision} d={d} {selection}",
                        "precision": precision,
                        "dims": d,
                        "dim_selection": selection,
                    }
                )
    return rows


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_collection(name: str, model: Any, args: argparse.Namespace) -> dict[str, Any]:
    root = beir_path(name)
    dataset = load_beir(root, "test")
    calibration_split = check_calibration_split(root, None, "test")
    calibration_set = load_beir(root, calibration_split)
    query_ids = list(dataset.split_queries)
    documents = normalised_corpus(model, dataset, show_progress_bar=True)
    queries = encode_queries(
        model, [dataset.queries[q] for q in query_ids], show_progress_bar=False
    )
    calibration = calibration_vectors(
        model, calibration_set, documents, negatives=args.negatives, show_progress_bar=False
    )
    doc_ids = dataset.sorted_doc_ids
    specs = systems()
    indexes: list[CompressedIndex] = []
    rows: list[dict[str, Any]] = []
    per_query: list[dict[str, dict[str, float]]] = []
    for spec in specs:
        options = {k: v for k, v in spec.items() if k != "label"}
        settings, projection = make_index_settings(
            model, documents, calibration=calibration, seed=args.seed, **options
        )
        index = CompressedIndex(settings, documents, projection)
        found, scores = index.search(queries, DEPTH)
        run = {
            qid: {doc_ids[r]: float(s) for r, s in zip(row, score, strict=True)}
            for qid, row, score in zip(query_ids, found.tolist(), scores.tolist(), strict=True)
        }
        means, values = evaluate_run(dataset.qrels, run, MEASURES, query_ids=query_ids)
        indexes.append(index)
        per_query.append(values)
        total = index.index_bytes + index.rescore_bytes
        rows.append(
            {
                "label": spec["label"],
                "precision": settings.precision,
                "dims": settings.kept,
                "selection": settings.selection,
                "rescore": settings.rescore,
                "rescore_with": settings.rescore_with if settings.rescore > 1 else None,
                "bytes_per_doc_index": index.index_bytes / index.size,
                "bytes_per_doc_rescore": index.rescore_bytes / index.size,
                "index_bytes": index.index_bytes,
                "total_bytes": total,
                **{m: means[m] for m in MEASURES},
            }
        )
        print(f"{name}: {spec['label']}: nDCG@10 {means['nDCG@10']:.4f}", flush=True)
    reference = rows[0]
    for row, values in zip(rows, per_query, strict=True):
        row["compression"] = reference["index_bytes"] / row["index_bytes"]
        row["compression_total"] = reference["index_bytes"] / row["total_bytes"]
        for m in MEASURES:
            row[f"retention_{m}"] = row[m] / reference[m]
        test = paired_test(per_query[0], values, MEASURES)
        row["p"] = test["p_values"]
    latency = measure_latency(model, dataset, indexes, args)
    for row, figures in zip(rows, latency["systems"], strict=True):
        row.update(figures)
    return {
        "n_queries": len(query_ids),
        "n_documents": len(doc_ids),
        "calibration": {
            "split": calibration_split,
            "queries": int(calibration.queries.shape[0]),
            "negatives": args.negatives,
        },
        "encode_p50_ms": latency["encode_p50_ms"],
        "rows": rows,
        "targets": targets(rows, per_query),
    }


def measure_latency(
    model: Any, dataset: Any, indexes: Sequence[CompressedIndex], args: argparse.Namespace
) -> dict[str, Any]:
    """Batch-1 latency, systems interleaved per query; query encoding timed alongside."""
    ids = sample_queries(dataset.split_queries, args.latency_queries)
    texts = [dataset.queries[q] for q in ids]
    for text in texts[:5]:  # warm-up
        vector = encode_queries(model, [text], show_progress_bar=False)
        for index in indexes:
            index.search(vector, DEPTH)
    encode_times: list[list[float]] = [[] for _ in texts]
    search_times: list[list[list[float]]] = [[[] for _ in texts] for _ in indexes]
    for _ in range(args.repeats):
        for position, text in enumerate(texts):
            start = time.perf_counter()
            vector = encode_queries(model, [text], show_progress_bar=False)
            encode_times[position].append(time.perf_counter() - start)
            for number, index in enumerate(indexes):
                start = time.perf_counter()
                index.search(vector, DEPTH)
                search_times[number][position].append(time.perf_counter() - start)
    encode_median = [statistics.median(times) for times in encode_times]
    results = []
    for per_system in search_times:
        flat = [t for times in per_system for t in times]
        medians = [statistics.median(times) for times in per_system]
        with_encoding = [e + s for e, s in zip(encode_median, medians, strict=True)]
        results.append(
            {
                "search_p50_ms": 1000 * _percentile(flat, 50),
                "search_p95_ms": 1000 * _percentile(flat, 95),
                "with_encoding_p50_ms": 1000 * _percentile(with_encoding, 50),
            }
        )
    return {"encode_p50_ms": 1000 * _percentile(encode_median, 50), "systems": results}


def targets(
    rows: list[dict[str, Any]], per_query: list[dict[str, dict[str, float]]]
) -> dict[str, Any]:
    """The issue's three targets, each with its figure and a verdict."""
    by_label = {row["label"]: i for i, row in enumerate(rows)}
    int8 = rows[by_label["int8"]]
    binary_rows = [
        row
        for row in rows
        if row["precision"] == "binary" and row["rescore"] > 1 and row["dims"] == rows[0]["dims"]
    ]
    result: dict[str, Any] = {
        "int8": {
            "retention_nDCG@10": int8["retention_nDCG@10"],
            "compression": int8["compression"],
            "met": int8["retention_nDCG@10"] >= 0.99 and int8["compression"] >= 4,
        },
        "binary_rescore": [
            {
                "label": row["label"],
                "retention_nDCG@10": row["retention_nDCG@10"],
                "compression_index": row["compression"],
                "compression_total": row["compression_total"],
                "met_index_bytes": row["retention_nDCG@10"] >= 0.96 and row["compression"] >= 24,
                "met_total_bytes": row["retention_nDCG@10"] >= 0.96
                and row["compression_total"] >= 24,
            }
            for row in binary_rows
        ],
        "relevance_dims": [],
    }
    full = rows[0]["nDCG@10"]
    for precision in ("float32", "binary"):
        for d in DIMS:
            relevance = by_label[f"{precision} d={d} relevance"]
            entry: dict[str, Any] = {
                "precision": precision,
                "dims": d,
                "relevance_nDCG@10": rows[relevance]["nDCG@10"],
                "loss_relevance": full - rows[relevance]["nDCG@10"],
            }
            # Against every blind rule (PCA included), and against the axis-aligned ones
            # only (PCA is a rotation, not a choice of dimensions).
            for key, pool in (("best_blind", BLIND), ("best_selection", AXIS_ALIGNED)):
                blind = max(
                    pool, key=lambda s, d=d: rows[by_label[f"{precision} d={d} {s}"]]["nDCG@10"]
                )
                best = by_label[f"{precision} d={d} {blind}"]
                loss_blind = full - rows[best]["nDCG@10"]
                test = paired_test(per_query[best], per_query[relevance], ["nDCG@10"])
                entry[key] = {
                    "name": blind,
                    "nDCG@10": rows[best]["nDCG@10"],
                    "loss": loss_blind,
                    "p_relevance_vs_it": test["p_values"]["nDCG@10"],
                    "met": entry["loss_relevance"] <= 0.5 * max(loss_blind, 0.0),
                }
            result["relevance_dims"].append(entry)
    return result


# -- output ------------------------------------------------------------------------------------
def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def markdown(payload: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """The result file's tables as markdown (one result file, or a list holding one)."""
    if not isinstance(payload, Mapping):
        [payload] = payload
    lines: list[str] = []
    for name in COLLECTIONS:
        if name not in payload:
            continue
        block = payload[name]
        lines += [
            f"### {name} (test: {block['n_queries']} queries, {block['n_documents']} documents; "
            f"query encoding p50 {block['encode_p50_ms']:.1f} ms)",
            "",
            "| index | bytes/doc searched | + rescore vectors | × smaller (searched / total) | nDCG@10 | % of float32 | p | R@100 | p | search p50 ms | with encoding p50 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in block["rows"]:
            lines.append(
                f"| {row['label']} | {row['bytes_per_doc_index']:g} | {row['bytes_per_doc_rescore']:g} | "
                f"{row['compression']:.1f} / {row['compression_total']:.1f} | {row['nDCG@10']:.4f} | "
                f"{100 * row['retention_nDCG@10']:.1f} | {_p(row['p']['nDCG@10'])} | {row['R@100']:.4f} | "
                f"{_p(row['p']['R@100'])} | {row['search_p50_ms']:.2f} | {row['with_encoding_p50_ms']:.2f} |"
            )
        goals = block["targets"]
        lines += ["", f"**Targets, {name}**", ""]
        int8 = goals["int8"]
        lines.append(
            f"- int8 ≥ 99 % of float32 nDCG@10 at 4× smaller: {100 * int8['retention_nDCG@10']:.1f} % at "
            f"{int8['compression']:.0f}× — {'met' if int8['met'] else 'missed'}"
        )
        for row in goals["binary_rescore"]:
            lines.append(
                f"- {row['label']} ≥ 96 % at ≥ 24×: {100 * row['retention_nDCG@10']:.1f} % at "
                f"{row['compression_index']:.0f}× searched, {row['compression_total']:.1f}× with its "
                f"rescoring vectors — {'met' if row['met_total_bytes'] else 'met on searched bytes only' if row['met_index_bytes'] else 'missed'}"
            )
        lines += [
            "",
            "| relevance dims | d | relevance nDCG@10 | loss | best blind (any) | its loss | p | ≤ half? | best axis-aligned | its loss | p | ≤ half? |",
            "|---|---:|---:|---:|---|---:|---:|---|---|---:|---:|---|",
        ]
        for row in goals["relevance_dims"]:
            cells = []
            for key in ("best_blind", "best_selection"):
                other = row[key]
                cells.append(
                    f"{other['name']} ({other['nDCG@10']:.4f}) | {other['loss']:.4f} | "
                    f"{_p(other['p_relevance_vs_it'])} | {'met' if other['met'] else 'missed'}"
                )
            lines.append(
                f"| {row['precision']} | {row['dims']} | {row['relevance_nDCG@10']:.4f} | "
                f"{row['loss_relevance']:.4f} | {cells[0]} | {cells[1]} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the results JSON here")
    parser.add_argument(
        "--markdown", type=Path, help="print this results JSON as markdown and exit"
    )
    parser.add_argument("--collections", nargs="+", default=list(COLLECTIONS))
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--negatives", type=int, default=10)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    if args.markdown:
        import json

        print(markdown(json.loads(args.markdown.read_text())))
        return
    if not args.output:
        parser.error("--output FILE.json is needed (or --markdown FILE.json)")
    set_threads(2)
    import faiss

    faiss.omp_set_num_threads(2)
    started = time.time()
    model = load_model("all-MiniLM-L6-v2", max_length=MAX_LENGTH["full"]["bi-encoder"])
    payload: dict[str, Any] = {
        "_meta": {
            "protocol": "full: all test queries, dense retrieval over the whole corpus, max length 256, depth 100",
            "model": "all-MiniLM-L6-v2",
            "calibration": "relevance from train/dev queries (dev, else train) with 10 hard negatives "
            "each from the float index; int8 ranges from corpus embeddings; never test queries",
            "search": "faiss-cpu exact flat indexes (IndexFlatIP, IndexScalarQuantizer fp16/8bit, "
            "IndexBinaryFlat); sign bits by sentence-transformers quantize_embeddings",
            "timing": f"batch 1, {args.latency_queries} seeded test queries x {args.repeats} repeats, "
            "systems interleaved per query, after a warm-up; 2 threads (torch and faiss); "
            "'with encoding' = per-query median encoding + median search, p50 over queries",
            "significance": "two-sided paired t-test (ranx) against float32 over all test queries",
            "bytes": "codes only: bytes/doc x documents; rescore vectors counted separately",
            "machine": machine(),
            "versions": {
                package: version(package)
                for package in (
                    "faiss-cpu",
                    "sentence-transformers",
                    "numpy",
                    "ranx",
                    "ir_measures",
                )
            },
        }
    }
    for name in args.collections:
        payload[name] = run_collection(name, model, args)
        payload["_meta"]["wall_s"] = round(time.time() - started, 1)
        write_json(args.output, payload)
    print(markdown(payload))


if __name__ == "__main__":
    main()
