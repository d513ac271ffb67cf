"""What an explanation costs: one forward, AttnLRP, gradient × input and captum's LIG-50.

    python benchmarks/attribution_cost.py --output benchmarks/results/attribution_cost.json

minilm-l6-reranker, 32 real scifact test pairs (query, judged-relevant document), max
length 256, batch 32, 2 threads. The systems are interleaved (A B C D A B C D …) after a
warm-up; each figure is the median of ``--repeats`` runs. Also BiLRP with
all-MiniLM-L6-v2: one pair, ``BiLRP.attribute`` (one forward-mode pass over the shorter
text's token copies, one backward pass over the longer text's) against the
per-dimension reference (one backward per embedding dimension and side)::

    python benchmarks/attribution_cost.py --bilrp-only --output benchmarks/results/bilrp_cost.json

``--lxt`` adds LXT's efficient AttnLRP (the AttnLRP authors' package) as a peer in the
same interleaved run; it is a benchmark-only peer, set up outside relcomp's environment
by ``benchmarks/peers/setup_lxt.sh``::

    bash benchmarks/peers/setup_lxt.sh
    PYTHONPATH=.peers/lxt python benchmarks/attribution_cost.py --lxt --skip-bilrp \
        --lig-repeats 2 --output benchmarks/results/attribution_cost.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

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
from relcomp.attribution import BiLRP, TokenLRP, get_method
from relcomp.evaluation import load_beir, sample_queries
from relcomp.models import load_model


def scifact_pairs(n: int) -> tuple[list[str], list[str]]:
    dataset = load_beir(beir_path("scifact"), "test")
    queries, documents = [], []
    for query_id in sample_queries(dataset.split_queries, n):
        judged = dataset.qrels[query_id]
        best = max(sorted(judged), key=lambda doc: judged[doc])
        queries.append(dataset.query_text(query_id))
        documents.append(dataset.document_text(best))
    return queries, documents


def timed(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lig-steps", type=int, default=50)
    parser.add_argument(
        "--lig-repeats",
        type=int,
        default=None,
        help="rounds that also time LIG (default: all); LIG is ~60x the rest",
    )
    parser.add_argument("--skip-bilrp", action="store_true")
    parser.add_argument(
        "--lxt",
        action="store_true",
        help="also time LXT's efficient AttnLRP (the `lxt` package must be importable; "
        "benchmark-only, never a relcomp dependency)",
    )
    parser.add_argument(
        "--bilrp-only",
        action="store_true",
        help="time BiLRP batched against per dimension only (JSON: bilrp and _meta)",
    )
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.markdown:
        print(markdown(read_results(args.markdown)))
        return
    if not args.output:
        parser.error("--output is required (or --markdown FILE.json)")
    set_threads(2)
    if args.bilrp_only:
        payload = {
            "bilrp": bilrp_cost(args.repeats),
            "_meta": {"repeats": args.repeats, "machine": machine()},
        }
        print(f"wrote {write_json(args.output, payload)}")
        return

    model = load_model(reranker_path(), max_length=args.max_length)
    queries, documents = scifact_pairs(args.pairs)
    attnlrp = TokenLRP(model, "AttnLRP")
    gradient = TokenLRP(model, "Gradient")
    lig = get_method("ig")(model, n_steps=args.lig_steps)

    def forward() -> None:
        model.score(queries, documents, batch_size=args.pairs, show_progress_bar=False)

    systems: dict[str, Callable[[], Any]] = {
        "forward_s": forward,
        "attnlrp_s": lambda: attnlrp.attribute(
            queries, documents, batch_size=args.pairs, show_progress_bar=False
        ),
        "gradient_x_input_s": lambda: gradient.attribute(
            queries, documents, batch_size=args.pairs, show_progress_bar=False
        ),
        "lig_s": lambda: lig.attribute(
            queries, documents, batch_size=args.pairs, show_progress_bar=False
        ),
    }
    if args.lxt:
        systems["lxt_attnlrp_s"] = lxt_attnlrp(model, queries, documents)
    for name, run in systems.items():  # warm-up (LIG's costs minutes: 4 pairs will do)
        if name == "lig_s":
            lig.attribute(queries[:4], documents[:4], batch_size=4, show_progress_bar=False)
        else:
            run()
    lig_repeats = args.repeats if args.lig_repeats is None else args.lig_repeats
    if not 1 <= lig_repeats <= args.repeats:
        raise SystemExit(f"--lig-repeats must be between 1 and --repeats, got {lig_repeats}")
    samples: dict[str, list[float]] = {name: [] for name in systems}
    for round_ in range(args.repeats):
        for name, run in systems.items():
            if name == "lig_s" and round_ >= lig_repeats:
                continue
            samples[name].append(timed(run))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    forward_s = medians["forward_s"]
    rows = [(name, value, value / forward_s) for name, value in medians.items()]
    print(f"{args.pairs} scifact pairs, max length {args.max_length}, median of {args.repeats}")
    print_table(rows, ("system", "seconds", "x forward"))
    ratios = {
        **(
            {
                "lxt_over_forward": medians["lxt_attnlrp_s"] / forward_s,
                "attnlrp_over_lxt": medians["attnlrp_s"] / medians["lxt_attnlrp_s"],
            }
            if "lxt_attnlrp_s" in medians
            else {}
        ),
        "attnlrp_over_forward": medians["attnlrp_s"] / forward_s,
        "lig_over_attnlrp": medians["lig_s"] / medians["attnlrp_s"],
        "gradient_x_input_over_forward": medians["gradient_x_input_s"] / forward_s,
    }
    if "lxt_over_forward" in ratios:
        print(
            f"LXT's AttnLRP = {ratios['lxt_over_forward']:.2f}x one forward; relcomp's "
            f"AttnLRP = {ratios['attnlrp_over_lxt']:.2f}x LXT's"
        )
    print(
        f"AttnLRP = {ratios['attnlrp_over_forward']:.2f}x one forward (target <= 2.0); "
        f"LIG-{args.lig_steps} = {ratios['lig_over_attnlrp']:.1f}x AttnLRP (target >= 40)"
    )
    payload: dict[str, Any] = {
        **medians,
        **ratios,
        "samples": samples,
        "_meta": {
            "model": str(model.path.name),
            "pairs": args.pairs,
            "max_length": args.max_length,
            "repeats": args.repeats,
            "lig_repeats": lig_repeats,
            "lig_steps": args.lig_steps,
            "machine": machine(),
        },
    }
    if not args.skip_bilrp:
        payload["bilrp"] = bilrp_cost(args.repeats)
    print(f"wrote {write_json(args.output, payload)}")


def lxt_attnlrp(model: Any, queries: list[str], documents: list[str]) -> Callable[[], Any]:
    """LXT's efficient AttnLRP on its own copy of the reranker (see ``_lxt``)."""
    from _lxt import lxt_peer, lxt_relevance

    peer = lxt_peer(model)
    return lambda: lxt_relevance(peer, model.tokenize(queries, documents))[0]


def bilrp_cost(repeats: int) -> dict[str, float]:
    retriever = load_model("all-MiniLM-L6-v2")
    queries, documents = scifact_pairs(1)
    bilrp = BiLRP(retriever)
    batched = lambda: bilrp.attribute(queries[0], documents[0])  # noqa: E731
    per_dimension = lambda: bilrp.attribute_per_dimension(queries[0], documents[0])  # noqa: E731
    batched()
    times: dict[str, list[float]] = {"batched_s": [], "per_dimension_s": []}
    for _ in range(max(1, repeats // 2)):
        times["batched_s"].append(timed(batched))
        times["per_dimension_s"].append(timed(per_dimension))
    result = {name: statistics.median(values) for name, values in times.items()}
    result["speedup"] = result["per_dimension_s"] / result["batched_s"]
    tokens = retriever.tokenize([queries[0], documents[0]])["attention_mask"].sum(1).tolist()
    result["tokens"] = tokens
    print_table(
        [
            ("BiLRP batched", result["batched_s"]),
            ("BiLRP per dimension", result["per_dimension_s"]),
        ],
        ("system", "seconds"),
    )
    print(f"BiLRP batched is {result['speedup']:.1f}x faster than per dimension (target >= 20)")
    return result


_SYSTEMS = {
    "forward_s": "forward (inference)",
    "attnlrp_s": "AttnLRP (relcomp)",
    "gradient_x_input_s": "gradient × input, frozen weights",
    "lxt_attnlrp_s": "AttnLRP (LXT 2.1, efficient mode, the peer)",
    "lig_s": "captum LIG, 50 steps",
}


def markdown(payloads: list[dict[str, Any]]) -> str:
    """Seconds per batch and the ratio to one forward pass; for a ``--bilrp-only`` file,
    BiLRP against the per-dimension reference."""
    tables = []
    for payload in payloads:
        if "bilrp" in payload:
            found = payload["bilrp"]
            query, document = found["tokens"]
            tables.append(
                markdown_table(
                    ["query / document tokens", "BiLRP.attribute (s)", "per dimension (s)", "×"],
                    [
                        [
                            f"{query} / {document}",
                            f"{found['batched_s']:.2f}",
                            f"{found['per_dimension_s']:.1f}",
                            f"{found['speedup']:.1f}",
                        ]
                    ],
                )
            )
            continue
        forward = payload["forward_s"]
        rows = [
            [label, f"{payload[key]:.2f}", f"{payload[key] / forward:.2f}"]
            for key, label in _SYSTEMS.items()
            if key in payload
        ]
        tables.append(markdown_table(["system", "seconds", "× one forward"], rows))
    return "\n\n".join(tables)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
