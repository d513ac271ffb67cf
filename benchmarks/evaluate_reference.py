"""Reference quality: BM25, all-MiniLM-L6-v2 and the minilm-l6-reranker on scifact and nfcorpus test.

Prints nDCG@10 / RR@10 / R@100 beside the published or independently measured
figures and the reranker's throughput (pairs/s at batch 32, 2 threads).

    python benchmarks/evaluate_reference.py --output benchmarks/results/evaluate_reference.json

``--protocol full`` (default): all test queries, BM25 top-100, reranker max length 512
(as BENCHMARKS.md fixes). ``--protocol quick``: 100 seeded queries, top-30, max length 256.
``--rerank-depth`` / ``--rerank-max-length`` override the reranker's settings (MODELS.md's
independent figure is depth 30, max length 256, all queries).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _common import (
    add_markdown_option,
    beir_path,
    machine,
    markdown_table,
    print_table,
    read_results,
    reranker_path,
    set_threads,
    write_json,
)
from relcomp.models import load_model
from relcomp.pipeline import evaluate

# Published (BEIR, MTEB) and independently measured (assets/MODELS.md) nDCG@10.
REFERENCE = {
    "scifact": {
        "bm25": 0.665,
        "all-MiniLM-L6-v2": 0.645,
        "all-MiniLM-L6-v2 rerank": 0.661,
        "minilm-l6-reranker": 0.626,
    },
    "nfcorpus": {
        "bm25": 0.325,
        "all-MiniLM-L6-v2": 0.316,
        "all-MiniLM-L6-v2 rerank": 0.315,
        "minilm-l6-reranker": 0.317,
    },
}
SOURCE = {
    "bm25": "BEIR paper (Elasticsearch BM25)",
    "all-MiniLM-L6-v2": "MTEB",
    "all-MiniLM-L6-v2 rerank": "assets/MODELS.md (bm25s top-30, 256)",
    "minilm-l6-reranker": "assets/MODELS.md (bm25s top-30, 256)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output")
    parser.add_argument("--protocol", choices=("quick", "full"), default="full")
    parser.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument("--rerank-depth", type=int, default=None)
    parser.add_argument("--rerank-max-length", type=int, default=None)
    parser.add_argument("--skip-reranker", action="store_true")
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.markdown:
        print(markdown(read_results(args.markdown)))
        return
    if not args.output:
        parser.error("--output is required (or --markdown FILE.json)")
    set_threads(2)
    quick = args.protocol == "quick"
    queries = 100 if quick else None
    depth = 30 if quick else 100
    rerank_depth = args.rerank_depth or depth
    rerank_length = args.rerank_max_length or (256 if quick else 512)

    retriever = load_model("all-MiniLM-L6-v2")
    reranker = None if args.skip_reranker else load_model(reranker_path(), max_length=rerank_length)
    results: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    rows = []
    for dataset in args.datasets:
        data = beir_path(dataset)
        # (system, model, first stage, depth): the scorers share this loop's inputs.
        systems: list[tuple[str, Any, str | None, int]] = [
            ("bm25", "bm25", None, depth),
            ("all-MiniLM-L6-v2", retriever, None, depth),
            ("all-MiniLM-L6-v2 rerank", retriever, "bm25", rerank_depth),
        ]
        if reranker is not None:
            systems.append(("minilm-l6-reranker", reranker, "bm25", rerank_depth))
        results[dataset] = {}
        for system, model, first_stage, system_depth in systems:
            start = time.perf_counter()
            report = evaluate(
                model, data, first_stage=first_stage, depth=system_depth, queries=queries
            )
            elapsed = time.perf_counter() - start
            results[dataset][system] = {
                **report.measures,
                "n_queries": report.n_queries,
                "depth": report.depth,
                "max_length": report.max_length,
                "truncated": dict(report.truncation),
                "seconds": elapsed,
            }
            reference = REFERENCE[dataset][system]
            ndcg = report.measures["nDCG@10"]
            rows.append(
                (
                    dataset,
                    system,
                    ndcg,
                    reference,
                    ndcg - reference,
                    report.measures["RR@10"],
                    report.measures["R@100"],
                    f"{elapsed:.0f}s",
                )
            )
            print_table(
                rows[-1:],
                ("dataset", "system", "nDCG@10", "reference", "diff", "RR@10", "R@100", "time"),
            )
    if reranker is not None:
        timings = throughput(reranker, beir_path(args.datasets[0]))
    print()
    print_table(
        rows, ("dataset", "system", "nDCG@10", "reference", "diff", "RR@10", "R@100", "time")
    )
    if timings:
        print(
            f"\nreranker throughput at batch 32, max length {rerank_length}: {timings['pairs_per_s']:.1f} pairs/s"
        )
    payload = {
        **results,
        "_meta": {
            "protocol": args.protocol,
            "rerank_depth": rerank_depth,
            "rerank_max_length": rerank_length,
            "reference": REFERENCE,
            "reference_source": SOURCE,
            "reranker_throughput": timings,
            "machine": machine(),
        },
    }
    print(f"wrote {write_json(args.output, payload)}")


def throughput(model: Any, data: Any, pairs: int = 256, repeats: int = 5) -> dict[str, float]:
    """Median pairs/s at batch 32 over ``repeats`` runs of the same real (query, doc) pairs."""
    import statistics

    from relcomp.evaluation import bm25_retrieve, load_beir, sample_queries

    dataset = load_beir(data, "test")
    query_ids = sample_queries(dataset.split_queries, 32)
    run = bm25_retrieve(dataset, query_ids, depth=8)
    texts = [(dataset.query_text(q), dataset.document_text(d)) for q in query_ids for d in run[q]][
        :pairs
    ]
    queries, documents = [q for q, _ in texts], [d for _, d in texts]
    model.score(queries[:32], documents[:32], batch_size=32, show_progress_bar=False)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.score(queries, documents, batch_size=32, show_progress_bar=False)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "pairs": len(texts),
        "median_s": median,
        "pairs_per_s": len(texts) / median,
        "repeats": repeats,
    }


def markdown(payloads: list[dict[str, Any]]) -> str:
    """The reference table of result files: a line per (collection, system), nDCG@10
    beside the published or independently measured figure."""
    rows = []
    for payload in payloads:
        meta = payload["_meta"]
        for dataset, systems in payload.items():
            if dataset == "_meta":
                continue
            for system, found in systems.items():
                reference = meta["reference"][dataset][system]
                rows.append(
                    [
                        dataset,
                        _system_label(system, found),
                        f"{found['nDCG@10']:.4f}",
                        f"{reference:.3f} ({_SHORT_SOURCE[system]})",
                        f"{found['nDCG@10'] - reference:+.3f}",
                        f"{found['RR@10']:.4f}",
                        f"{found['R@100']:.4f}",
                        str(found["n_queries"]),
                    ]
                )
    header = ["collection", "system", "nDCG@10", "reference", "Δ", "RR@10", "R@100", "queries"]
    return markdown_table(header, rows)


_SHORT_SOURCE = {
    "bm25": "BEIR",
    "all-MiniLM-L6-v2": "MTEB",
    "all-MiniLM-L6-v2 rerank": "MODELS.md, top-30",
    "minilm-l6-reranker": "MODELS.md, top-30, 256",
}


def _system_label(system: str, found: dict[str, Any]) -> str:
    depth, length = found["depth"], found["max_length"]
    return {
        "bm25": "BM25",
        "all-MiniLM-L6-v2": "all-MiniLM-L6-v2, exhaustive",
        "all-MiniLM-L6-v2 rerank": f"all-MiniLM-L6-v2 re-ranking BM25 top-{depth}",
        "minilm-l6-reranker": f"minilm-l6-reranker re-ranking BM25 top-{depth}, {length} tokens",
    }.get(system, system)


if __name__ == "__main__":
    main()
