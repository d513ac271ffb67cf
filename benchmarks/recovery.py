"""Does recovery give back what structural pruning cost? Pruned, recovered and reference quality.

For one model and one training collection: AttnLRP component relevance on train
pairs → ``prune-structured`` at ``params_removed`` → ``prune_physically`` →
:func:`relcomp.recovery.recover` on the collection's train/dev queries and corpus
pseudo-queries (never test) → nDCG@10 on the *test* queries of both collections
(the one recovered on, and the other one: in-domain adaptation must not hide an
out-of-domain loss), for the uncompressed reference, the pruned model before
recovery and after. Paired t tests (ranx) against the reference on the same queries
and candidates.

Quick protocol by default (100 seeded test queries, BM25 top-30, 256 tokens;
BENCHMARKS.md). Resumable: the recovery checkpoints into ``--work`` and every
re-ranking is cached.

    python benchmarks/recovery.py --model reranker --train scifact --steps 1000 \\
        --output benchmarks/results/recovery_reranker_scifact.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    beir_path,
    command_line,
    machine,
    relative,
    reranker_path,
    set_threads,
    write_json,
)
from relcomp.artifacts import CompressionPlan
from relcomp.compression import parameter_count, prune_physically
from relcomp.evaluation import paired_test
from relcomp.models import load_model, save_model
from relcomp.pipeline import component_relevance, evaluate, plan
from relcomp.recovery import recover, recovery_data

MEASURE = "nDCG@10"
COLLECTIONS = ("scifact", "nfcorpus")


def _student_label(path: str) -> str:
    """A saved student's name in the work folder: its folder, or the one above a ``recovered/``."""
    folder = Path(path)
    return folder.parent.name if folder.name == "recovered" else folder.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("reranker", "retriever"), default="reranker")
    parser.add_argument("--train", choices=COLLECTIONS, default="scifact")
    parser.add_argument(
        "--method", choices=("prune-structured", "drop-layers"), default="prune-structured"
    )
    parser.add_argument(
        "--params-removed", type=float, default=0.5, help="prune-structured's budget"
    )
    parser.add_argument("--layers-dropped", type=int, default=2, help="drop-layers' budget")
    parser.add_argument("--importance", default="relevance")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128, help="recovery input length")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument(
        "--candidate-depth",
        type=int,
        default=None,
        help="draw the candidates from BM25's top-N (half its top, half deeper)",
    )
    parser.add_argument("--pseudo", type=int, default=None)
    parser.add_argument(
        "--queries",
        type=int,
        default=100,
        help="test queries (quick: 100; 0: train and save the model only, for speed_size's "
        "--recovered rows, which evaluate it on the full protocol)",
    )
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--eval-max-length", type=int, default=256)
    parser.add_argument(
        "--quantize",
        default=None,
        help="quantization-aware recovery through this precision (int8): the student trains "
        "through the export's rounding; the torch figures are its fp32 weights",
    )
    parser.add_argument(
        "--hidden-weight",
        type=float,
        default=0.0,
        help="weight of hidden-state matching for the layers the plan keeps (0: off)",
    )
    parser.add_argument(
        "--similarity-weight",
        type=float,
        default=1.0,
        help="retriever: weight of the in-batch similarity KL next to the embedding distance "
        "(400 = 1/temperature²: an unscaled KL)",
    )
    parser.add_argument(
        "--label-weight",
        type=float,
        default=0.0,
        help="weight of the supervised term on judged-relevant candidates (train/dev qrels, "
        "pseudo-queries' source documents; 0: off, distillation only)",
    )
    parser.add_argument(
        "--student",
        default=None,
        help="start from this saved model (a recovered folder, or the teacher itself for the "
        "uncompressed reference given the same data) instead of pruning the teacher",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("runs/recovery"))
    parser.add_argument("--output", type=Path)
    parser.add_argument("--markdown", type=Path, help="print a result file's table as markdown")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text(encoding="utf-8"))))
        return 0
    if args.output is None:
        parser.error("--output is required to run the benchmark")
    if args.queries < 0:
        parser.error(f"--queries must be 0 (no evaluation) or more, got {args.queries}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_threads(args.threads)
    started = time.perf_counter()

    path = reranker_path() if args.model == "reranker" else "all-MiniLM-L6-v2"
    teacher = load_model(path)
    train_dir = beir_path(args.train)
    structured = args.method == "prune-structured"
    budget = (
        {"params_removed": args.params_removed}
        if structured
        else {"layers_dropped": args.layers_dropped}
    )
    work = args.work / (
        f"{args.model}-{args.train}-"
        + (
            f"from-{_student_label(args.student)}"
            if args.student
            else f"{args.importance}-"
            + (f"{args.params_removed:g}" if structured else f"drop{args.layers_dropped}")
        )
        + (f"-qat-{args.quantize}" if args.quantize else "")
        + (f"-depth{args.candidate_depth}" if args.candidate_depth else "")
        + (f"-c{args.candidates}" if args.candidates != 8 else "")
        + (f"-hidden{args.hidden_weight:g}" if args.hidden_weight else "")
        + (f"-sim{args.similarity_weight:g}" if args.similarity_weight != 1.0 else "")
        + (f"-label{args.label_weight:g}" if args.label_weight else "")
        + (f"-len{args.max_length}" if args.max_length != 128 else "")
    )
    work.mkdir(parents=True, exist_ok=True)

    if args.student:
        pruned = load_model(args.student)
    else:
        relevance: Any = None
        if args.importance == "relevance":
            relevance = work / "component_relevance.json"
            if not relevance.is_file():
                component_relevance(teacher, train_dir, split="train", calibration=64).save(
                    relevance
                )
        the_plan = plan(
            teacher,
            args.method,
            budget,
            relevance=relevance,
            importance=args.importance,
            data_dir=train_dir,
            calibration_split="train",
        )
        the_plan.save(work / "plan.json")
        pruned = prune_physically(teacher, the_plan)

    set_up = time.perf_counter()
    data = recovery_data(
        teacher,
        train_dir,
        candidates=args.candidates,
        candidate_depth=args.candidate_depth,
        pseudo=args.pseudo,
        max_length=args.max_length,
    )
    data_seconds = time.perf_counter() - set_up
    recovered, log = recover(
        pruned,
        teacher,
        data,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=args.max_length,
        hidden_weight=args.hidden_weight,
        similarity_weight=args.similarity_weight,
        label_weight=args.label_weight,
        device=args.device,
        checkpoint_dir=work,
        quantize=(
            CompressionPlan(pruned.name, (("_default", args.quantize),)) if args.quantize else None
        ),
    )
    log.save(work / "recovery_log.json")
    save_model(recovered, work / "recovered")
    set_threads(args.threads)

    systems = {"reference": teacher, "pruned": pruned, "recovered": recovered}
    results: dict[str, Any] = {}
    for collection in COLLECTIONS if args.queries else ():
        reports = {
            name: evaluate(
                model,
                beir_path(collection),
                split="test",
                queries=args.queries,
                depth=args.depth,
                max_length=args.eval_max_length,
            )
            for name, model in systems.items()
        }
        reference = reports["reference"]
        results[collection] = {}
        for name, report in reports.items():
            test = paired_test(reference.per_query, report.per_query, [MEASURE])
            results[collection][name] = {
                MEASURE: report.measures[MEASURE],
                "RR@10": report.measures.get("RR@10"),
                "loss_points": 100 * (reference.measures[MEASURE] - report.measures[MEASURE]),
                "p_value": test["p_values"][MEASURE] if name != "reference" else None,
                "n_queries": report.n_queries,
            }
    payload = {
        "_meta": {
            "protocol": (
                "not evaluated"
                if not args.queries
                else "quick"
                if args.queries == 100 and args.depth == 30
                else "custom"
            ),
            "queries": args.queries,
            "depth": args.depth,
            "eval_max_length": args.eval_max_length,
            "model": relative(path),
            "train_collection": args.train,
            "plan": {
                **(
                    {"student": relative(args.student)}
                    if args.student
                    else {"method": args.method, "importance": args.importance, **budget}
                ),
                "parameters": {
                    "reference": parameter_count(teacher),
                    "pruned": parameter_count(pruned),
                },
            },
            "recovery": {
                "steps": log.steps,
                "batch_size": log.batch_size,
                "lr": log.lr,
                "max_length": log.max_length,
                "pairs_seen": log.pairs_seen,
                "seconds": log.seconds,
                "data_seconds": round(data_seconds, 1),
                "device": log.device,
                "quantization_aware": args.quantize,
                "candidate_depth": args.candidate_depth,
                "hidden_weight": args.hidden_weight,
                "similarity_weight": args.similarity_weight,
                "label_weight": args.label_weight,
                "data": {**dict(log.data), "collection": relative(log.data["collection"])},
                "heldout_loss": [dict(c) for c in log.checkpoints],
            },
            "machine": machine(),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "command": command_line(),
        },
        "results": results,
    }
    write_json(args.output, payload)
    print(markdown([payload]))
    return 0


HEADER = ["trained on", "model", "evaluated on", "system", MEASURE, "points lost", "p", "queries"]


def _rows(payload: dict[str, Any]) -> list[list[str]]:
    meta = payload["_meta"]
    plan = meta["plan"]
    model = Path(meta["model"]).name
    rows = []
    for collection, systems in payload["results"].items():
        for system, figures in systems.items():
            label = {
                "reference": "uncompressed",
                "pruned": _plan_label(plan),
                "recovered": f"… + {meta['recovery']['steps']} recovery steps"
                + (
                    f" ({meta['recovery']['quantization_aware']}-aware)"
                    if meta["recovery"].get("quantization_aware")
                    else ""
                )
                + (
                    f" (candidates from BM25 top-{meta['recovery']['candidate_depth']})"
                    if meta["recovery"].get("candidate_depth")
                    else ""
                )
                + (
                    f" (hidden-state matching × {meta['recovery']['hidden_weight']:g})"
                    if meta["recovery"].get("hidden_weight")
                    else ""
                )
                + (
                    f" (judged positives × {meta['recovery']['label_weight']:g})"
                    if meta["recovery"].get("label_weight")
                    else ""
                ),
            }[system]
            rows.append(
                [
                    meta["train_collection"],
                    model,
                    collection,
                    label,
                    f"{figures[MEASURE]:.4f}",
                    "–" if figures["p_value"] is None else f"{figures['loss_points']:+.2f}",
                    "–" if figures["p_value"] is None else f"{figures['p_value']:.3f}",
                    str(figures["n_queries"]),
                ]
            )
    return rows


def _plan_label(plan: dict[str, Any]) -> str:
    if "student" in plan:
        return f"{_student_label(plan['student'])} (the starting model)"
    if plan.get("method", "prune-structured") == "drop-layers":
        return f"{plan['importance']}: {plan['layers_dropped']} layers dropped"
    return f"{plan['importance']} {100 * plan['params_removed']:g} % pruned"


def markdown(payloads: list[dict[str, Any]] | dict[str, Any]) -> str:
    """The result files' table (one row per collection and system), as markdown."""
    if isinstance(payloads, dict):
        payloads = [payloads]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for payload in payloads:
        lines += ["| " + " | ".join(row) + " |" for row in _rows(payload)]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
