"""How faithful each attribution method is: AOPC comprehensiveness / sufficiency and ΔA^F.

    python benchmarks/faithfulness.py --pairs 200 --output benchmarks/results/faithfulness_reranker.json
    python benchmarks/faithfulness.py --model all-MiniLM-L6-v2 --pairs 200 \
        --output benchmarks/results/faithfulness_minilm.json

(query, judged-relevant document) pairs from scifact and nfcorpus *test* (half each,
fixed seeded sample), max length 256. Every method is measured the same way: the
document's words are deleted most-relevant-first (MoRF) and least-relevant-first
(LeRF) in steps of 10 %, and the model re-scores every variant. For a bi-encoder the
explained score is the similarity. Also the IR-native rank drop: how far the relevant
document falls among its BM25 top-30 after deleting its top-k words.

``--methods … lxt`` adds LXT's AttnLRP (the AttnLRP authors' package) as a
benchmark-only peer for the cross-encoder; ``--resume`` keeps the methods already
measured in ``--output``::

    bash benchmarks/peers/setup_lxt.sh
    PYTHONPATH=.peers/lxt python benchmarks/faithfulness.py --pairs 200 --methods lxt \
        --resume --output benchmarks/results/faithfulness_reranker.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _common import (
    add_markdown_option,
    beir_path,
    display_name,
    machine,
    markdown_table,
    model_label,
    print_table,
    read_results,
    reranker_path,
    set_threads,
    write_json,
)
from relcomp.attribution import get_method
from relcomp.attribution.faithfulness import ScoreMemo, faithfulness, rank_drop
from relcomp.evaluation import bm25_retrieve, load_beir, sample_queries
from relcomp.models import load_model

METHODS = (
    "attnlrp",
    "cp-lrp",
    "ig",
    "input-x-gradient",
    "saliency",
    "attention",
    "rollout",
    "random",
)


def relevant_pairs(name: str, n: int, depth: int = 30) -> list[tuple[str, str, list[str]]]:
    """``n`` (query, relevant document, other BM25 candidates) triples from a test split."""
    dataset = load_beir(beir_path(name), "test")
    query_ids = sample_queries(dataset.split_queries, n)
    run = bm25_retrieve(dataset, query_ids, depth=depth, show_progress_bar=False)
    triples = []
    for query_id in query_ids:
        judged = dataset.qrels[query_id]
        best = max(sorted(judged), key=lambda doc: judged[doc])
        others = [dataset.document_text(doc) for doc in run.get(query_id, {}) if doc != best]
        triples.append((dataset.query_text(query_id), dataset.document_text(best), others))
    return triples


def attributor(method: str) -> Any:
    """relcomp's method of that name, or ``lxt``: LXT's AttnLRP as a peer (``_lxt``)."""
    if method == "lxt":
        from _lxt import LxtAttnLRP

        return LxtAttnLRP
    return get_method(method)


def _resumed(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The methods a stopped run of the same settings already measured."""
    previous = json.loads(path.read_text())
    before = previous.pop("_meta", {})
    for key in ("model", "kind", "pairs", "max_length"):
        if before.get(key) != meta[key]:
            raise SystemExit(
                f"--resume: {path} was made with {key}={before.get(key)!r}, "
                f"this run has {key}={meta[key]!r}; use another --output"
            )
    return previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="default: the minilm-l6-reranker cross-encoder"
    )
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument(
        "--rank-drop-pairs", type=int, default=50, help="pairs for the rank-drop figure"
    )
    parser.add_argument("--output")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the methods already in --output (same model, pairs and length); run the rest",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (1: two models side by side)"
    )
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.markdown:
        print(markdown(read_results(args.markdown)))
        return
    if not args.output:
        parser.error("--output is required (or --markdown FILE.json)")
    set_threads(args.threads)
    model = load_model(args.model or reranker_path(), max_length=args.max_length)
    half = args.pairs // 2
    triples = relevant_pairs("scifact", half) + relevant_pairs("nfcorpus", args.pairs - half)
    queries = [q for q, _, _ in triples]
    documents = [d for _, d, _ in triples]
    results: dict[str, Any] = {}
    meta = {
        "model": display_name(model),
        "kind": model.kind,
        "pairs": len(triples),
        "max_length": args.max_length,
        "machine": machine(),
    }
    rows = []
    if args.resume and Path(args.output).exists():
        results = _resumed(Path(args.output), meta)
        for method, kept in results.items():
            rows.append(
                (
                    method,
                    kept["aopc_comprehensiveness"],
                    kept["aopc_sufficiency"],
                    kept["delta_af"],
                    kept["delta_af_normalized"],
                    f"{kept['attribution_s']:.0f}s (kept)",
                )
            )
        print(f"resumed from {args.output}: kept {', '.join(results) or 'nothing'}")
    memo: ScoreMemo = {}  # one model: the full / empty documents and candidates scored once
    for method in args.methods:
        if method in results:
            continue
        start = time.perf_counter()
        explanations = attributor(method)(model).attribute(queries, documents, batch_size=16)
        attribution_s = time.perf_counter() - start
        result = faithfulness(model, explanations, batch_size=64, memo=memo)
        drop = rank_drop(
            model,
            explanations[: args.rank_drop_pairs],
            [others for _, _, others in triples[: args.rank_drop_pairs]],
            batch_size=64,
            memo=memo,
        )
        results[method] = {
            **result.to_dict(),
            "rank_drop": drop.to_dict(),
            "attribution_s": attribution_s,
        }
        rows.append(
            (
                method,
                result.aopc_comprehensiveness,
                result.aopc_sufficiency,
                result.delta_af,
                result.delta_af_normalized,
                f"{attribution_s:.0f}s",
            )
        )
        print_table(rows[-1:], ("method", "AOPC comp.", "AOPC suff.", "dA^F", "dA^F norm.", "time"))
        # Written after every method, so a stopped run keeps what it measured.
        write_json(args.output, {**results, "_meta": {**meta, "complete": False}})
    print()
    print(
        f"{model.name}: {len(triples)} pairs (scifact + nfcorpus test), max length {args.max_length}"
    )
    print_table(
        rows, ("method", "AOPC comp. (higher)", "AOPC suff. (lower)", "dA^F", "dA^F norm.", "time")
    )
    results["_meta"] = {**meta, "complete": True}
    print(f"wrote {write_json(args.output, results)}")


#: Method names as the tables print them.
_LABELS = {
    "AttnLRP": "AttnLRP",
    "AttnLRP (LXT)": "AttnLRP (LXT 2.1, the peer)",
    "CP-LRP": "CP-LRP",
    "IntegratedGradients": "Integrated Gradients (LIG, 50 steps)",
    "Saliency": "Saliency (L2)",
    "Attention": "Attention (last layer)",
    "Random": "Random",
    "InputXGradient": "InputXGradient",
}


def markdown(payloads: list[dict[str, Any]]) -> str:
    """A line per method, most ΔA^F first: AOPC, ΔA^F, rank drop and attribution time."""
    rows = []
    for payload in payloads:
        found = [v for k, v in payload.items() if k != "_meta"]
        for result in sorted(found, key=lambda r: -r["delta_af"]):
            drop = result.get("rank_drop", {}).get("mean_rank_change", {})
            rows.append(
                [
                    model_label(payload["_meta"]["model"]),
                    _LABELS.get(result["method"], result["method"]),
                    f"{result['aopc_comprehensiveness']:.3f}",
                    f"{result['aopc_sufficiency']:.3f}",
                    f"{result['delta_af']:.3f}",
                    " / ".join(f"{drop[k]:.2f}" for k in sorted(drop, key=int)) or "–",
                    f"{result['attribution_s']:.0f} s",
                ]
            )
    header = [
        "model",
        "method",
        "AOPC comp. ↑",
        "AOPC suff. ↓",
        "ΔA^F ↑",
        "rank drop k = 1 / 3 / 5 / 10 ↑",
        "attribution time",
    ]
    return markdown_table(header, rows)


if __name__ == "__main__":
    main()
