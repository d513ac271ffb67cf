"""The lossless speed levers of an exported cross-encoder, each measured against the same base.

On the reranker pruned by relevance (``prune-structured``, ``--params-removed``),
exported to ONNX Runtime, one process, 2 threads, the systems interleaved
(../shared/BENCHMARKS.md), on the same real test pairs (BM25 candidates):

* **first token** — the last layer's queries, attention output and feed-forward block
  at the first token only (``export_bundle(first_token=True)``), against the full
  last layer; on the unpruned fp32 model and on the pruned int8 one;
* **int4 compute** — ``MatMulNBits`` with int8 compute (``accuracy_level=4``) against
  float compute (the default);
* **static int8** — calibrated activation scales (``int8(activations=True)``,
  ``QLinearMatMul``) against dynamic int8 (``MatMulInteger``);
* **remove padding** — the token-wise operators (Linears, LayerNorms, GELU) on the
  batch's real tokens only, attention on the padded layout
  (``export_bundle(remove_padding=True)``), alone and with the first-token last layer.

``--timing-dataset`` picks the collection the timing pairs come from (scifact by
default); the share of padding in the timing batch is recorded, since the last lever's
gain grows with it.

Parity is each system's largest score difference from the torch model it was
exported from, and Kendall's τ of the timing pairs' scores, so a lever that is fast
but not lossless shows it.

    python benchmarks/speed_levers.py --output benchmarks/results/speed_levers.json
    python benchmarks/speed_levers.py --markdown benchmarks/results/speed_levers.json
    python benchmarks/speed_levers.py --max-length 512 --timing-dataset nfcorpus \
        --output benchmarks/results/speed_levers_padding.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    beir_path,
    command_line,
    machine,
    print_table,
    relative,
    reranker_path,
    set_threads,
    write_json,
)
from relcomp.artifacts import CompressionPlan
from relcomp.compression import prune_physically
from relcomp.evaluation import load_beir
from relcomp.export import export_bundle
from relcomp.models import load_model
from relcomp.pipeline import calibration_pairs, component_relevance, plan
from speed_size import set_system_threads, time_systems, timing_pairs

HEADER = [
    "system",
    "lever",
    "pairs/s (batch 32)",
    "vs base",
    "vs torch fp32",
    "p50 ms (batch 1)",
    "max abs Δscore",
    "Kendall τ",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params-removed",
        type=float,
        nargs="+",
        default=[0.5],
        help="pruning levels; the first gets every lever, the others int8 with and without "
        "the first-token last layer",
    )
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument(
        "--timing-dataset",
        choices=("scifact", "nfcorpus"),
        default="scifact",
        help="the collection whose test queries and BM25 candidates are timed",
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--markdown", type=Path, help="print a result file's table as markdown")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    if args.output is None:
        parser.error("--output is required to run the benchmark")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_threads(args.threads)
    started = time.perf_counter()
    model = load_model(reranker_path(), max_length=args.max_length)
    scifact = beir_path("scifact")
    relevance = component_relevance(model, scifact, split="train", calibration=64)
    pruned_models = {
        share: prune_physically(
            model,
            plan(model, "prune-structured", {"params_removed": share}, relevance=relevance),
        )
        for share in args.params_removed
    }
    first, *others = args.params_removed
    pruned = pruned_models[first]
    calibration = calibration_pairs(load_beir(scifact, "train"), 64)

    def with_default(action: str) -> CompressionPlan:
        return CompressionPlan(model.name, {"_default": action})

    variants: list[tuple[str, str, Any, dict[str, Any] | None]] = [
        ("torch fp32", "base", model, None),
        ("fp32", "base", model, {}),
        ("fp32", "first token", model, {"first_token": True}),
        ("fp32", "remove padding", model, {"remove_padding": True}),
        (
            "fp32",
            "first token + remove padding",
            model,
            {"first_token": True, "remove_padding": True},
        ),
        ("pruned + int8", "base", pruned, {"plan": with_default("int8")}),
        (
            "pruned + int8",
            "first token",
            pruned,
            {"plan": with_default("int8"), "first_token": True},
        ),
        (
            "pruned + int8",
            "first token + remove padding",
            pruned,
            {"plan": with_default("int8"), "first_token": True, "remove_padding": True},
        ),
        (
            "pruned + int8",
            "static int8",
            pruned,
            {"plan": with_default("int8(activations=True)"), "calibration_pairs": calibration},
        ),
        ("pruned + int4", "base", pruned, {"plan": with_default("int4")}),
        (
            "pruned + int4",
            "int8 compute (accuracy_level=4)",
            pruned,
            {"plan": with_default("int4"), "int4_accuracy_level": 4},
        ),
    ]
    for share in others:
        label = f"pruned {100 * share:g}% + int8"
        variants += [
            (label, "base", pruned_models[share], {"plan": with_default("int8")}),
            (
                label,
                "first token",
                pruned_models[share],
                {"plan": with_default("int8"), "first_token": True},
            ),
            (
                label,
                "first token + remove padding",
                pruned_models[share],
                {"plan": with_default("int8"), "first_token": True, "remove_padding": True},
            ),
        ]
    variants = [
        (
            f"pruned {100 * first:g}% {system.split(' ', 1)[1]}"
            if system.startswith("pruned +")
            else system,
            *rest,
        )
        for system, *rest in variants
    ]
    queries, documents = timing_pairs(args.timing_dataset, 32, 30)
    lengths = [
        len(ids)
        for ids in model.tokenizer(queries, documents, truncation=True, max_length=args.max_length)[
            "input_ids"
        ]
    ]
    padding = 1 - sum(lengths) / (len(lengths) * max(lengths))
    systems: dict[str, Any] = {}
    parity: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="relcomp-levers-") as scratch:
        for number, (system, lever, source, options) in enumerate(variants):
            name = f"{system} | {lever}"
            notes: list[str] = []
            if (
                options is None
            ):  # the model as trained, in torch: the speed every row is read against
                systems[name] = source
            else:
                bundle = export_bundle(source, Path(scratch) / str(number), **options)
                systems[name] = load_model(Path(scratch) / str(number), max_length=args.max_length)
                set_system_threads(systems[name], args.threads)
                notes = list(bundle.notes)
            reference = source.score(queries, documents)
            scores = systems[name].score(queries, documents)
            parity[name] = {
                "max_abs_diff": float(np.abs(scores - reference).max()),
                "kendall_tau": float(kendalltau(scores, reference).statistic),
                "notes": notes,
            }
        timing = time_systems(systems, queries, documents, args.repeats, 16)
    rows = []
    for system, lever, _, _ in variants:
        name = f"{system} | {lever}"
        base = timing[f"{system} | base"]["pairs_per_s"]
        rows.append(
            {
                "system": system,
                "lever": lever,
                "pairs_per_s": timing[name]["pairs_per_s"],
                "vs_base": timing[name]["pairs_per_s"] / base,
                "vs_torch": timing[name]["pairs_per_s"]
                / timing["torch fp32 | base"]["pairs_per_s"],
                "p50_ms": timing[name]["p50_ms"],
                **{k: v for k, v in parity[name].items()},
            }
        )
    payload = {
        "_meta": {
            "model": relative(reranker_path()),
            "params_removed": args.params_removed,
            "max_length": args.max_length,
            "repeats": args.repeats,
            "threads": args.threads,
            "pairs": len(queries),
            "timing_dataset": args.timing_dataset,
            "padding_share": round(padding, 4),
            "machine": machine(),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "command": command_line(),
        },
        "rows": rows,
    }
    write_json(args.output, payload)
    print_table([_cells(row) for row in rows], HEADER)
    return 0


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        row["system"],
        row["lever"],
        f"{row['pairs_per_s']:.1f}",
        f"{row['vs_base']:.2f}×",
        f"{row['vs_torch']:.2f}×",
        f"{row['p50_ms']:.1f}",
        f"{row['max_abs_diff']:.2g}",
        f"{row['kendall_tau']:.4f}",
    ]


def markdown(payloads: list[dict[str, Any]] | dict[str, Any]) -> str:
    """The result files' table as markdown."""
    if isinstance(payloads, dict):
        payloads = [payloads]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for payload in payloads:
        lines += ["| " + " | ".join(_cells(row)) + " |" for row in payload["rows"]]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
