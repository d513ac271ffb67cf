"""RelP and AtP against exact activation patching, on scifact test pairs.

    python benchmarks/relp_vs_patching.py --pairs 16 --output benchmarks/results/relp_vs_patching_reranker.json
    python benchmarks/relp_vs_patching.py --model all-MiniLM-L6-v2 --pairs 16 --output benchmarks/results/relp_vs_patching_retriever.json
    python benchmarks/relp_vs_patching.py --model all-MiniLM-L6-v2 --pairs 64 --corruptions query-terms \
        --residual-positions 0 --output benchmarks/results/relp_vs_patching_retriever_query64.json

(16 pairs: what fits in ~15 minutes per model on 2 busy cores; 64 pairs of the
reranker take about 50 minutes. ``--extra-composites`` adds RelP with AttnLRP's rules.)

Pairs: a seeded sample of ``--pairs`` scifact *test* queries, each with its
best-judged document, corrupted by ``doc-terms`` and by ``query-terms``
(:mod:`relcomp.attribution.corruption`), max length 256. Metric: the cross-encoder's
logit, or the retriever's cosine similarity. Components: every attention head,
attention block output and MLP output per layer, and the residual stream per layer
at ``--residual-positions`` random positions per pair (all positions when 0).
Correlations are pooled over pairs and components of each type.

Timing (BENCHMARKS.md): one clean forward, AtP and RelP interleaved on
``--timing-pairs`` pairs after a warm-up, median of ``--repeats``, 2 threads;
activation patching is timed once, in the correlation run. Costs are also given in
clean-forward equivalents. Targets: RelP r >= 0.9 on MLP outputs and the residual
stream, RelP not worse than AtP on attention outputs, RelP <= 3 forward passes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

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
from relcomp.attribution.corruption import build_pairs
from relcomp.attribution.patching import (
    COMPONENT_KINDS,
    AttributionPatching,
    RelevancePatching,
    clean_forward,
    run_patching,
)
from relcomp.evaluation import load_beir
from relcomp.models import load_model

CORRUPTIONS = ("doc-terms", "query-terms")


def timed(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def time_methods(model: Any, pairs: list[Any], repeats: int, batch_size: int) -> dict[str, Any]:
    """Clean forward, AtP and RelP interleaved on the same pairs; medians of ``repeats``."""
    atp = AttributionPatching(model, batch_size=batch_size)
    relp = RelevancePatching(model, batch_size=batch_size)
    systems: dict[str, Callable[[], Any]] = {
        "clean_forward_s": lambda: clean_forward(model, pairs, batch_size),
        "atp_s": lambda: atp.attribute(pairs, show_progress_bar=False),
        "relp_s": lambda: relp.attribute(pairs, show_progress_bar=False),
    }
    for run in systems.values():  # warm-up
        run()
    samples: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(repeats):
        for name, run in systems.items():
            samples[name].append(timed(run))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    forward = medians["clean_forward_s"]
    return {
        **medians,
        "atp_forward_equivalents": medians["atp_s"] / forward,
        "relp_forward_equivalents": medians["relp_s"] / forward,
        "pairs": len(pairs),
        "batch_size": batch_size,
        "repeats": repeats,
        "samples": samples,
    }


def timings_with_exact(
    model: Any, data: Any, args: argparse.Namespace, exact_per_pair: dict[str, float]
) -> dict[str, Any]:
    """Interleaved timings, with activation patching's seconds per pair in forward passes."""
    timing_pairs, _ = build_pairs(
        model, load_beir(data, "test"), args.timing_pairs, args.corruptions[0]
    )
    timings = time_methods(model, timing_pairs, args.repeats, batch_size=8)
    forward_per_pair = timings["clean_forward_s"] / timings["pairs"]
    timings["activation_patching_s_per_pair"] = exact_per_pair
    timings["activation_patching_forward_equivalents"] = {
        corruption: value / forward_per_pair for corruption, value in exact_per_pair.items()
    }
    return timings


def retime(model: Any, data: Any, args: argparse.Namespace) -> None:
    """``--timing-only``: new timings into an existing result file."""
    path = Path(args.output)
    if not path.is_file():
        raise SystemExit(f"--timing-only: {path} does not exist; run the full benchmark first")
    payload = json.loads(path.read_text())
    exact = payload["_meta"]["timings"]["activation_patching_s_per_pair"]
    timings = timings_with_exact(model, data, args, exact)
    payload["_meta"]["timings"] = timings
    payload["_meta"]["timings_machine"] = machine()
    print(
        f"timing on {timings['pairs']} pairs (median of {args.repeats}, interleaved): "
        f"clean forward {timings['clean_forward_s']:.2f} s, AtP {timings['atp_s']:.2f} s "
        f"({timings['atp_forward_equivalents']:.2f} fwd), RelP {timings['relp_s']:.2f} s "
        f"({timings['relp_forward_equivalents']:.2f} fwd; target <= 3)"
    )
    print(f"wrote {write_json(args.output, payload)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: assets/models/minilm-l6-reranker")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--output")
    parser.add_argument("--details", default=None, help="also write every run_patching payload")
    parser.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=CORRUPTIONS)
    parser.add_argument("--residual-positions", type=int, default=8, help="0: every position")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32, help="patched copies per pass")
    parser.add_argument("--timing-pairs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--extra-composites",
        nargs="*",
        default=["AttnLRP"],
        help="more LRP rule sets to compare with the default RelP rules",
    )
    parser.add_argument(
        "--timing-only",
        action="store_true",
        help="re-time forward / AtP / RelP on a quiet machine and update --output's timings "
        "(the correlations and activation patching's time stay as they were)",
    )
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.markdown:
        print(markdown(read_results(args.markdown)))
        return
    if not args.output:
        parser.error("--output is required (or --markdown FILE.json)")
    set_threads(2)

    model = load_model(args.model or reranker_path(), max_length=args.max_length)
    data = beir_path("scifact")
    if args.timing_only:
        retime(model, data, args)
        return
    residual_positions = args.residual_positions or None
    results: dict[str, Any] = {}
    details: dict[str, Any] = {}
    rows = []
    for corruption in args.corruptions:
        started = time.perf_counter()
        payload = run_patching(
            model,
            load_beir(data, "test"),
            pairs=args.pairs,
            corruption=corruption,
            residual_positions=residual_positions,
            batch_size=args.batch_size,
            extra_composites=args.extra_composites,
        )
        payload["wall_s"] = time.perf_counter() - started
        details[corruption] = payload
        results[corruption] = payload["correlations"]
        estimates = [
            key.removesuffix("_pearson")
            for key in payload["correlations"]["mlp"]
            if key.endswith("_pearson")
        ]
        for kind in COMPONENT_KINDS:
            entry = payload["correlations"][kind]
            rows.append(
                (
                    corruption,
                    kind,
                    entry["n"],
                    *(entry[f"{name}_pearson"] for name in estimates),
                    *(entry[f"{name}_spearman"] for name in estimates),
                )
            )
        print(
            f"{corruption}: {payload['counts']['pairs_used']} pairs used, "
            f"{payload['counts']['pairs_skipped']} skipped {payload['counts']['skipped']}, "
            f"{payload['wall_s']:.0f} s"
        )

    exact_per_pair = {
        corruption: payload["timings"]["activation_patching_s"] / payload["counts"]["pairs_used"]
        for corruption, payload in details.items()
    }
    timings = timings_with_exact(model, data, args, exact_per_pair)

    print(f"\n{model.name}: {args.pairs} scifact test pairs, max length {args.max_length}")
    print_table(
        rows,
        (
            "corruption",
            "component",
            "n",
            *(f"{name} r" for name in estimates),
            *(f"{name} rho" for name in estimates),
        ),
    )
    print(
        f"\ntiming on {timings['pairs']} pairs (median of {args.repeats}, interleaved): "
        f"clean forward {timings['clean_forward_s']:.2f} s, AtP {timings['atp_s']:.2f} s "
        f"({timings['atp_forward_equivalents']:.2f} fwd), RelP {timings['relp_s']:.2f} s "
        f"({timings['relp_forward_equivalents']:.2f} fwd; target <= 3)"
    )
    for corruption, value in exact_per_pair.items():
        print(
            f"activation patching ({corruption}): {value:.1f} s per pair = "
            f"{timings['activation_patching_forward_equivalents'][corruption]:.0f} forward passes"
        )
    for corruption, correlations in results.items():
        checks = {
            "RelP r >= 0.9 on mlp": (correlations["mlp"]["relp_pearson"] or -1) >= 0.9,
            "RelP r >= 0.9 on residual": (correlations["residual"]["relp_pearson"] or -1) >= 0.9,
            "RelP >= AtP on attention": (correlations["attention"]["relp_pearson"] or -1)
            >= (correlations["attention"]["atp_pearson"] or -1),
        }
        print(
            corruption
            + ": "
            + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in checks.items())
        )

    payload_out = {
        **results,
        "_meta": {
            "model": display_name(model),
            "kind": model.kind,
            "protocol": {
                "dataset": "scifact",
                "split": "test",
                "pairs": args.pairs,
                "seed": 13,
                "max_length": args.max_length,
                "residual_positions": residual_positions,
                "corruptions": args.corruptions,
                "relp_composite": next(iter(details.values()))["relp_composite"],
                "metric": next(iter(details.values()))["metric"],
            },
            "counts": {c: d["counts"] for c, d in details.items()},
            "wall_s": {c: d["wall_s"] for c, d in details.items()},
            "timings": timings,
            "machine": machine(),
            "details": args.details,
        },
    }
    if args.details:
        print(f"wrote {write_json(args.details, details)}")
    print(f"wrote {write_json(args.output, payload_out)}")


_COMPONENTS = {
    "head": "heads",
    "attention": "attention outputs",
    "mlp": "MLP outputs",
    "residual": "residual stream",
}


def markdown(payloads: list[dict[str, Any]]) -> str:
    """Pearson r against exact activation patching, AtP / RelP (the higher in bold), then
    the cost of each in clean-forward equivalents."""
    rows, costs = [], []
    for payload in payloads:
        meta = payload["_meta"]
        model = model_label(meta["model"])
        for corruption in meta["protocol"]["corruptions"]:
            cells = []
            for component in _COMPONENTS:
                found = payload[corruption][component]
                atp, relp = found["atp_pearson"], found["relp_pearson"]
                cells.append(
                    f"**{atp:.3f}** / {relp:.3f}" if atp > relp else f"{atp:.3f} / **{relp:.3f}**"
                )
            rows.append([model, corruption, str(meta["protocol"]["pairs"]), *cells])
        timings = meta["timings"]
        costs.append(
            [
                model,
                f"{timings['atp_forward_equivalents']:.2f}",
                f"{timings['relp_forward_equivalents']:.2f}",
                str(timings["pairs"]),
                str(timings["repeats"]),
            ]
        )
    header = ["model", "corruption", "pairs", *_COMPONENTS.values()]
    cost_header = ["model", "AtP", "RelP", "pairs", "repeats"]
    return markdown_table(header, rows) + "\n\n" + markdown_table(cost_header, costs)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
