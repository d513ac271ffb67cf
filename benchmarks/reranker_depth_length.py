"""Why the reranker loses under the full protocol: input length and list depth apart.

The full protocol re-ranks BM25's top-100 at 512 tokens. Scores of those pairs, read from
relcomp's re-ranking cache (made by ``evaluate_reference.py --protocol full``; computed
otherwise, about an hour per collection here), are restricted to BM25's top-30, so the
same scores give nDCG@10 at depth 30 and at depth 100, both at 512 tokens.

    python benchmarks/reranker_depth_length.py --output benchmarks/results/reranker_depth_length.json
"""

from __future__ import annotations

import argparse
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
from relcomp.evaluation import bm25_retrieve, load_beir, quality_report, rerank
from relcomp.evaluation._common import ranked
from relcomp.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output")
    parser.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.markdown:
        print(markdown(read_results(args.markdown)))
        return
    if not args.output:
        parser.error("--output is required (or --markdown FILE.json)")
    set_threads(2)
    model = load_model(reranker_path(), max_length=512)
    results: dict[str, Any] = {}
    rows = []
    for name in args.datasets:
        dataset = load_beir(beir_path(name), "test")
        query_ids = list(dataset.split_queries)
        candidates = bm25_retrieve(dataset, query_ids, depth=100, show_progress_bar=False)
        run = rerank(model, dataset, candidates, depth=100, use_cache=True)
        results[name] = {}
        for depth in (30, 100):
            kept = {q: {d for d, _ in ranked(candidates[q], depth)} for q in query_ids}
            sub = {q: {d: s for d, s in run[q].items() if d in kept[q]} for q in query_ids}
            report = quality_report(
                "minilm-l6-reranker", dataset, sub, ["nDCG@10", "RR@10"], query_ids=query_ids
            )
            results[name][f"depth {depth}, 512 tokens"] = dict(report.measures)
            rows.append((name, depth, 512, report.measures["nDCG@10"], report.measures["RR@10"]))
    print_table(rows, ("dataset", "depth", "max length", "nDCG@10", "RR@10"))
    print(f"wrote {write_json(args.output, {**results, '_meta': {'machine': machine()}})}")


def markdown(payloads: list[dict[str, Any]]) -> str:
    """nDCG@10 and RR@10 of the same 512-token scores, re-ranking BM25's top-30 and top-100."""
    rows = []
    for payload in payloads:
        for dataset, settings in payload.items():
            if dataset == "_meta":
                continue
            for setting, measures in settings.items():
                depth, length = setting.removeprefix("depth ").split(", ")
                rows.append(
                    [
                        dataset,
                        depth,
                        length.removesuffix(" tokens"),
                        f"{measures['nDCG@10']:.4f}",
                        f"{measures['RR@10']:.4f}",
                    ]
                )
    return markdown_table(["collection", "depth", "max length", "nDCG@10", "RR@10"], rows)


if __name__ == "__main__":
    main()
