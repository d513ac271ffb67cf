"""Speed and size: torch fp32, ONNX Runtime fp32, ORT uniform int8 (optimum's AVX2 preset), relcomp plans.

For each model (the cross-encoder minilm-l6-reranker and the retriever all-MiniLM-L6-v2),
one process on one machine, 2 threads, the systems interleaved:

* ``torch fp32`` — the model as trained;
* ``ORT fp32`` — ``relcomp export`` without a plan;
* ``ORT int8 (optimum avx2)`` — the peer a user would pick: optimum's plain export, then
  ``ORTQuantizer`` with ``AutoQuantizationConfig.avx2(is_static=False, per_channel=True)``;
* ``relcomp …`` — plans from component relevance (AttnLRP on dev/train calibration
  pairs, :func:`relcomp.pipeline.component_relevance`) and :func:`make_plan` at several
  budgets: mixed precision; structured pruning + int8; their combination. relcomp
  bundles quantize the word embeddings to int8 as well (``--embeddings``), as the peer
  does; this is outside the plan and said in each bundle's notes.

Measured (rules of ../shared/BENCHMARKS.md): size in MB (bytes of the model files as
stored, external data counted); throughput in pairs/s at batch 32 (median of
``--repeats`` ≥ 5 calls on the same real pairs); latency p50 / p95 in ms at batch 1;
nDCG@10 on the test split of each collection, re-ranking the same BM25 candidates
(quick: 100 seeded queries, top-30, 256 tokens; full: all queries, top-100, 512
tokens for the cross-encoder and 256 for the retriever), with a paired t test against
torch fp32.

    python benchmarks/speed_size.py --protocol quick --output benchmarks/results/speed_size.json
    python benchmarks/speed_size.py --models reranker --plans none --first-token \
        --recovered "pruned 70% + recovery + int8=scifact:runs/r70-scifact,nfcorpus:runs/r70-nf" \
        --output benchmarks/results/speed_size_recovered.json
    python benchmarks/speed_size.py --smoke --models reranker --datasets scifact --output /tmp/s.json

Writes ``{"<model>": [{"system", "size_mb", "pairs_per_s", "p50_ms", "p95_ms",
"ndcg@10": {"<dataset>": …}, …}], "_meta": {…}}`` and prints a table and, for the
best relcomp plan of each model, every target met or missed with its figure:
≤ 0.5 nDCG@10 points lost on both collections, ≥ 4× smaller than fp32, ≥ 2.5× torch
fp32 throughput (≥ 3× for recovered plans), ≥ 1.4× the int8 peer's throughput (≥ 2×
for recovered plans), less loss than the int8 peer at
equal or smaller size. ``--smoke`` (few queries, short inputs, 2 repeats) only checks
that everything runs: its figures follow no protocol.

``--recovered NAME=[DATASET:]FOLDER[,DATASET:FOLDER]`` adds a row for recovered models
(``relcomp recover`` or ``benchmarks/recovery.py`` folders, ``recovery_log.json``
inside), exported with int8 on every Linear: each collection is scored by the model
recovered on it where one is given (a model serves the collection it was recovered
on), and the row is timed on the first; a folder named in several rows is exported
once, so its scores are computed once. Its JSON adds ``recovery`` (per folder: the
collection, steps, pairs seen, wall seconds, device, quantization-aware plan).
``--plans none`` leaves out the unrecovered plans; ``--first-token`` exports every
relcomp bundle with its last layer at the first token only (cross-encoders);
``--remove-padding`` runs every relcomp bundle's token-wise operators on the batch's real
tokens only (``export_bundle(remove_padding=True)``). The reference systems (torch, ORT
fp32, the optimum peer) are exported as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    MAX_LENGTH,
    add_markdown_option,
    add_ray_options,
    beir_path,
    display_name,
    machine,
    markdown_table,
    model_label,
    print_table,
    read_results,
    relative,
    reranker_path,
    set_threads,
    write_json,
)
from relcomp.artifacts import EXPORT_BUNDLE_FILE, CompressionPlan
from relcomp.compression import parameter_count
from relcomp.compression.planners import make_plan
from relcomp.evaluation import (
    bm25_retrieve,
    keep_freed_memory,
    load_beir,
    paired_test,
    quality_report,
    ranked,
    rerank,
    sample_queries,
)
from relcomp.export import export_bundle, onnx_size
from relcomp.models import RankingModel, load_model
from relcomp.pipeline import component_relevance, executor_for

logger = logging.getLogger("speed_size")

MODELS = {"reranker": lambda: str(reranker_path()), "retriever": lambda: "all-MiniLM-L6-v2"}
#: The calibration split of each collection (never test).
CALIBRATION_SPLIT = {"scifact": "train", "nfcorpus": "dev"}
TORCH = "torch fp32"
ORT_FP32 = "ORT fp32"
PEER = "ORT int8 (optimum avx2)"
#: A pause before each timed call: ONNX Runtime's and OpenMP's worker threads spin for
#: a while after a call, and on 2 cores that slows whichever system runs next (a torch
#: call right after an ORT call measured 2-10x slower here).
PAUSE_S = 0.1


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    queries: int | None
    depth: int
    max_length: dict[str, int]
    repeats: int
    latency_pairs: int
    calibration: int


PROTOCOLS = {
    "quick": Protocol("quick", 100, 30, MAX_LENGTH["quick"], 5, 32, 64),
    "full": Protocol("full", None, 100, MAX_LENGTH["full"], 7, 64, 128),
    "smoke": Protocol("smoke", 4, 8, {"cross-encoder": 128, "bi-encoder": 128}, 2, 4, 8),
}

#: The relcomp plans: (system name, [(planner, budget)]); several planners combine.
PLANS: list[tuple[str, list[tuple[str, dict[str, float]]]]] = [
    ("relcomp mixed-precision 5 bits", [("mixed-precision", {"bits_per_weight": 5.0})]),
    ("relcomp mixed-precision 6 bits", [("mixed-precision", {"bits_per_weight": 6.0})]),
    ("relcomp pruned 15% + int8", [("prune-structured", {"params_removed": 0.15})]),
    ("relcomp pruned 30% + int8", [("prune-structured", {"params_removed": 0.3})]),
    ("relcomp pruned 50% + int8", [("prune-structured", {"params_removed": 0.5})]),
    (
        "relcomp pruned 30% + mixed 5 bits",
        [
            ("prune-structured", {"params_removed": 0.3}),
            ("mixed-precision", {"bits_per_weight": 5.0}),
        ],
    ),
]
SMOKE_PLANS = [PLANS[0], PLANS[3], PLANS[5]]


# -- systems ------------------------------------------------------------------------------
def relcomp_plan(
    model: RankingModel, parts: list[tuple[str, dict[str, float]]], relevance: Any
) -> CompressionPlan:
    """One plan from several planners; structured pruning alone gets int8 everywhere else."""
    entries: list[tuple[str, str]] = []
    methods = []
    for planner, budget in parts:
        plan = make_plan(model, planner, budget, importance="relevance", relevance=relevance)
        entries.extend(plan.entries)
        methods.append(plan.method)
    if all(planner == "prune-structured" for planner, _ in parts):
        entries.append(("_default", "int8"))
    return CompressionPlan(model.name, tuple(entries), method="+".join(methods))


@dataclasses.dataclass(frozen=True)
class Recovered:
    """``--recovered``: a row's name and the recovered model folder for each collection."""

    name: str
    folders: dict[str, Path]  # dataset → folder; "" for every dataset without its own

    @classmethod
    def parse(cls, text: str) -> Recovered:
        name, sep, spec = text.rpartition("=")
        if not sep or not name.strip() or not spec:
            raise argparse.ArgumentTypeError(
                f"--recovered {text!r}: give NAME=FOLDER or NAME=DATASET:FOLDER,DATASET:FOLDER"
            )
        folders: dict[str, Path] = {}
        for part in spec.split(","):
            dataset, colon, folder = part.partition(":")
            key, path = (dataset, Path(folder)) if colon else ("", Path(dataset))
            if not (path / "config.json").is_file():
                raise argparse.ArgumentTypeError(f"--recovered: {path} is not a model folder")
            folders[key] = path
        label = name.strip()
        return cls(label if label.startswith("relcomp") else f"relcomp {label}", folders)

    def folder_for(self, dataset: str) -> Path:
        return (
            self.folders.get(dataset) or self.folders.get("") or next(iter(self.folders.values()))
        )

    def recovery_info(self) -> dict[str, Any]:
        from relcomp.artifacts import RecoveryLog
        from relcomp.recovery import RECOVERY_LOG_FILE

        info = {}
        for key, folder in self.folders.items():
            # relcomp recover writes the log into the folder; benchmarks/recovery.py beside it
            log_file = next(
                (f for f in (folder / RECOVERY_LOG_FILE, folder.parent / RECOVERY_LOG_FILE)
                 if f.is_file()),
                folder / RECOVERY_LOG_FILE,
            )  # fmt: skip
            if not log_file.is_file():
                info[key or "all"] = {"folder": relative(folder), "log": "none"}
                continue
            log = RecoveryLog.load(log_file)
            info[key or "all"] = {
                "folder": relative(folder),
                "collection": Path(str(log.data.get("collection", ""))).name,
                "steps": log.steps,
                "pairs_seen": log.pairs_seen,
                "seconds": log.seconds,
                "device": log.device,
                "max_length": log.max_length,
                "quantization_aware": (
                    [list(e) for e in log.quantization_aware["entries"]]
                    if log.quantization_aware
                    else None
                ),
            }
        return info


def optimum_peer(model: RankingModel, folder: Path) -> RankingModel:
    """optimum's export, then ``ORTQuantizer`` with the AVX2 dynamic preset, as a bundle."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    # the plain optimum export (no relcomp fusion), in relcomp's bundle layout for scoring
    bundle = export_bundle(model, folder, variant="optimum", optimize=False)
    onnx_dir = folder / "onnx"
    source = folder / bundle.onnx_file
    shutil.copyfile(folder / "config.json", onnx_dir / "config.json")  # ORTQuantizer reads it
    quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name=source.name)
    config = AutoQuantizationConfig.avx2(is_static=False, per_channel=True)
    quantizer.quantize(quantization_config=config, save_dir=onnx_dir, file_suffix="qint8_avx2")
    quantized = onnx_dir / f"{source.stem}_qint8_avx2.onnx"
    source.unlink()
    for leftover in ("ort_config.json", "config.json"):
        (onnx_dir / leftover).unlink(missing_ok=True)
    replaced = dataclasses.replace(
        bundle,
        variant="qint8_avx2",
        onnx_file=f"onnx/{quantized.name}",
        size_bytes=onnx_size(quantized),
        notes=("optimum export + ORTQuantizer, AutoQuantizationConfig.avx2(dynamic, per_channel)",),
    )
    replaced.save(folder / EXPORT_BUNDLE_FILE)
    return load_model(folder, max_length=model.max_length)


def torch_size(model: RankingModel) -> int:
    files = sorted(model.path.glob("*.safetensors")) or sorted(model.path.glob("*.bin"))
    return sum(file.stat().st_size for file in files)


# -- timing -------------------------------------------------------------------------------
def set_system_threads(model: Any, threads: int) -> None:
    if hasattr(model, "intra_op_num_threads"):
        model.intra_op_num_threads = threads


def time_systems(
    systems: dict[str, Any],
    queries: list[str],
    documents: list[str],
    repeats: int,
    latency_pairs: int,
    batch_size: int = 32,
) -> dict[str, dict[str, float]]:
    """Throughput at batch 32 and latency at batch 1, the systems interleaved after a warm-up."""
    batch_q, batch_d = queries[:batch_size], documents[:batch_size]
    single = list(zip(queries[:latency_pairs], documents[:latency_pairs], strict=True))
    batch_times: dict[str, list[float]] = {name: [] for name in systems}
    single_times: dict[str, list[float]] = {name: [] for name in systems}
    with keep_freed_memory():
        for model in systems.values():  # warm-up, which also grows the kept heap to its peak
            model.score(batch_q, batch_d, batch_size=batch_size, show_progress_bar=False)
            model.score(batch_q[:1], batch_d[:1], batch_size=1, show_progress_bar=False)
        for _ in range(repeats):
            for name, model in systems.items():
                time.sleep(PAUSE_S)
                tic = time.perf_counter()
                model.score(batch_q, batch_d, batch_size=batch_size, show_progress_bar=False)
                batch_times[name].append(time.perf_counter() - tic)
        for query, document in single:
            for name, model in systems.items():
                time.sleep(PAUSE_S)
                tic = time.perf_counter()
                model.score([query], [document], batch_size=1, show_progress_bar=False)
                single_times[name].append(time.perf_counter() - tic)
    return {
        name: {
            "pairs_per_s": len(batch_q) / statistics.median(batch_times[name]),
            "p50_ms": 1000 * float(np.percentile(single_times[name], 50)),
            "p95_ms": 1000 * float(np.percentile(single_times[name], 95)),
            "batch_s": [round(t, 4) for t in batch_times[name]],
        }
        for name in systems
    }


# -- quality ------------------------------------------------------------------------------
def quality(
    systems: dict[str, Any], dataset_name: str, protocol: Protocol, executor: Any = None
) -> tuple[dict[str, float], dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """nDCG@10 of every system re-ranking the same BM25 candidates of the same test queries.

    ``executor`` (``--ray``): the pairs are scored on Ray, in chunks, the same scores.
    The full protocol saves scores in relcomp's score cache (keyed by the weights' or
    ONNX files' digests), so a stopped run resumes where it stopped. The last value
    returned is each system's nDCG@10 at shallower re-ranking depths (the same scores,
    BM25's top-k only).
    """
    dataset = load_beir(beir_path(dataset_name), "test")
    query_ids = (
        sample_queries(dataset.split_queries, protocol.queries)
        if protocol.queries
        else list(dataset.split_queries)
    )
    candidates = bm25_retrieve(dataset, query_ids, depth=protocol.depth, show_progress_bar=False)
    means: dict[str, float] = {}
    per_query: dict[str, dict[str, Any]] = {}
    by_depth: dict[str, Any] = {}
    for name, model in systems.items():
        tic = time.time()
        run = rerank(
            model,
            dataset,
            candidates,
            depth=protocol.depth,
            show_progress_bar=False,
            executor=executor,
            use_cache=protocol.name == "full",
        )
        report = quality_report(
            name,
            dataset,
            run,
            ["nDCG@10"],
            query_ids=query_ids,
            first_stage="bm25",
            depth=protocol.depth,
            candidates=candidates,
        )
        means[name] = float(report.measures["nDCG@10"])
        per_query[name] = dict(report.per_query)
        by_depth[name] = {k: m["nDCG@10"] for k, m in report.by_depth.items()}
        logger.info(
            "%s on %s: nDCG@10 %.4f (%.0f s)", name, dataset_name, means[name], time.time() - tic
        )
    setting = {"queries": len(query_ids), "first_stage": "bm25", "depth": protocol.depth}
    return means, per_query, setting, by_depth


def timing_pairs(dataset_name: str, n: int, depth: int) -> tuple[list[str], list[str]]:
    """``n`` real (query, BM25 candidate) pairs from the test split, the same for every system.

    Up to 8 candidates a query, from a seeded sample of queries that is doubled until it
    gives ``n`` pairs (some nfcorpus queries have fewer than 8 BM25 hits, or none).
    """
    dataset = load_beir(beir_path(dataset_name), "test")
    sample = max(2, n // 8 + 1)
    while True:
        query_ids = sample_queries(dataset.split_queries, sample, seed=7)
        run = bm25_retrieve(dataset, query_ids, depth=depth, show_progress_bar=False)
        queries, documents = [], []
        for query_id in query_ids:
            for doc_id, _ in ranked(run[query_id], 8):
                queries.append(dataset.query_text(query_id))
                documents.append(dataset.document_text(doc_id))
        if len(queries) >= n:
            return queries[:n], documents[:n]
        if sample >= len(dataset.split_queries):
            raise ValueError(
                f"{dataset_name} test: {len(queries)} BM25 pairs from every query, fewer than "
                f"the {n} a timing batch needs"
            )
        sample = min(2 * sample, len(dataset.split_queries))


# -- targets ------------------------------------------------------------------------------
def targets(
    rows: list[dict[str, Any]], datasets: list[str], reference: str = TORCH
) -> dict[str, Any]:
    """Each target for each relcomp plan; the best plan is the one meeting most.

    Speed and size are against torch fp32; quality losses against ``reference`` (torch
    fp32, or ORT fp32 when torch fp32 was not scored: ``--skip-quality``).
    """
    by_name = {row["system"]: row for row in rows}
    torch_row, fp32_row, peer_row = by_name[TORCH], by_name[ORT_FP32], by_name[PEER]
    quality_row = by_name[reference]
    fp32_mb = torch_row["size_mb"]
    results = {}
    for row in rows:
        if not row["system"].startswith("relcomp"):
            continue
        losses = {
            d: 100 * (quality_row["ndcg@10"][d] - row["ndcg@10"][d])
            for d in datasets
            if d in row["ndcg@10"]
        }
        # the peer's quality may be left out (--skip-quality): its check is then not measured
        peer_losses = {
            d: 100 * (quality_row["ndcg@10"][d] - peer_row["ndcg@10"][d])
            for d in losses
            if d in peer_row["ndcg@10"]
        }
        checks = {
            "loss ≤ 0.5 nDCG@10 points on every collection": (
                max(losses.values()) <= 0.5,
                ", ".join(f"{d} {v:+.2f}" for d, v in losses.items()),
            ),
            "≥ 4× smaller than fp32": (
                fp32_mb / row["size_mb"] >= 4,
                f"{fp32_mb / row['size_mb']:.2f}× ({row['size_mb']:.1f} MB vs {fp32_mb:.1f} MB)",
            ),
            # ≥ 3× and ≥ 2×: the recovery targets (structure removed, then distilled back)
            **{
                f"≥ {factor:g}× {label} throughput": (
                    row["pairs_per_s"] / other["pairs_per_s"] >= factor,
                    f"{row['pairs_per_s'] / other['pairs_per_s']:.2f}×",
                )
                for factor, label, other in (
                    (2.5, "torch fp32", torch_row),
                    (1.4, "int8 peer", peer_row),
                    (3, "torch fp32", torch_row),
                    (2, "int8 peer", peer_row),
                )
            },
            "less loss than the int8 peer at equal or smaller size": (
                (
                    row["size_mb"] <= peer_row["size_mb"]
                    and all(losses[d] < peer_losses[d] for d in losses)
                )
                if len(peer_losses) == len(losses)
                else None,
                f"size {row['size_mb']:.1f} vs {peer_row['size_mb']:.1f} MB; loss "
                + ", ".join(
                    f"{d} {losses[d]:+.2f} vs "
                    + (f"{peer_losses[d]:+.2f}" if d in peer_losses else "the peer not scored")
                    for d in losses
                ),
            ),
        }
        results[row["system"]] = {
            "met": sum(ok is True for ok, _ in checks.values()),
            "checks": {
                name: {"met": ok, "figure": figure} for name, (ok, figure) in checks.items()
            },
            "speedup_vs_ort_fp32": row["pairs_per_s"] / fp32_row["pairs_per_s"],
        }
    best = max(
        results,
        key=lambda name: (results[name]["met"], by_name[name]["pairs_per_s"]),
        default=None,
    )
    return {"best": best, "plans": results}


def _verdict(met: bool | None, yes: str, no: str) -> str:
    """A target's verdict; ``None``: not measured (the peer's quality left out)."""
    return "not measured" if met is None else yes if met else no


# -- main ---------------------------------------------------------------------------------
def run_model(
    key: str,
    args: argparse.Namespace,
    protocol: Protocol,
    work: Path,
    payload: dict[str, Any],
    save: Callable[[], None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    model = load_model(MODELS[key]() if key in MODELS else key)
    model.max_length = min(model.max_length, protocol.max_length[model.kind])
    name = display_name(model)
    folder = work / Path(name).name
    shutil.rmtree(folder, ignore_errors=True)
    plans = [] if args.plans == "none" else SMOKE_PLANS if args.smoke else PLANS
    relevance = None
    if plans:
        calibration_data = args.calibration_data
        logger.info("%s: component relevance on %s", name, calibration_data)
        relevance = component_relevance(
            model,
            beir_path(calibration_data),
            split=CALIBRATION_SPLIT[calibration_data],
            calibration=protocol.calibration,
            max_length=model.max_length,
            show_progress_bar=False,
        )
    systems: dict[str, Any] = {TORCH: model}
    info: dict[str, dict[str, Any]] = {TORCH: {"size_bytes": torch_size(model)}}
    tic = time.time()
    export_bundle(model, folder / "fp32")
    systems[ORT_FP32] = load_model(folder / "fp32", max_length=model.max_length)
    systems[PEER] = optimum_peer(model, folder / "peer")
    # every relcomp bundle, planned or recovered, is exported with the same levers
    relcomp_export = functools.partial(
        export_bundle,
        embeddings=args.embeddings,
        first_token=args.first_token and model.kind == "cross-encoder",
        remove_padding=args.remove_padding,
    )
    for system, parts in plans:
        plan = relcomp_plan(model, parts, relevance)
        out = folder / system.replace(" ", "_").replace("%", "pc").replace("+", "and")
        bundle = relcomp_export(model, out, plan=plan)
        systems[system] = load_model(out, max_length=model.max_length)
        info[system] = {
            "plan": {"method": plan.method, "achieved": dict(make_achieved(model, plan))},
            "notes": list(bundle.notes),
            "attention": bundle.fusion.get("attention_operator"),
        }
    per_dataset: dict[str, dict[str, Any]] = {}  # recovered rows: the model for each dataset
    # a folder named by several rows is exported once: its bundle, and its cached scores, serve each
    exported: dict[Path, tuple[Any, Any, Any]] = {}
    for row in args.recovered or []:
        bundles: dict[Path, Any] = {}
        for index, source in enumerate(row.folders.values()):
            key = source.resolve()
            if key not in exported:
                student = load_model(source)
                student.max_length = model.max_length
                plan = CompressionPlan(
                    student.name, (("_default", "int8"),), method="recovered+int8"
                )
                out = folder / f"recovered-{len(per_dataset)}-{index}"
                bundle = relcomp_export(student, out, plan=plan)
                loaded = load_model(out, max_length=model.max_length)
                exported[key] = (student, bundle, loaded)
            student, bundle, bundles[source] = exported[key]
            if index == 0:
                systems[row.name] = bundles[source]
                info[row.name] = {
                    "plan": {
                        "method": "recovered+int8",
                        "parameters": parameter_count(student),
                        "reference_parameters": parameter_count(model),
                    },
                    "notes": list(bundle.notes),
                    "attention": bundle.fusion.get("attention_operator"),
                    "recovery": row.recovery_info(),
                }
        per_dataset[row.name] = {
            dataset: bundles[row.folder_for(dataset)] for dataset in args.datasets
        }
    logger.info("%s: %d systems exported in %.0f s", name, len(systems), time.time() - tic)
    for system, model_or_bundle in systems.items():
        if system != TORCH:
            info.setdefault(system, {})["size_bytes"] = model_or_bundle.bundle.size_bytes
        set_system_threads(model_or_bundle, args.threads)
    queries, documents = timing_pairs(args.datasets[0], 32, protocol.depth)
    timing = time_systems(systems, queries, documents, protocol.repeats, protocol.latency_pairs)
    rows = []
    for system in systems:
        rows.append(
            {
                "system": system,
                "size_mb": info[system]["size_bytes"] / 1e6,
                "pairs_per_s": timing[system]["pairs_per_s"],
                "p50_ms": timing[system]["p50_ms"],
                "p95_ms": timing[system]["p95_ms"],
                "ndcg@10": {},
                "p_value_vs_torch": {},
                "batch_s": timing[system]["batch_s"],
                **{k: v for k, v in info[system].items() if k != "size_bytes"},
            }
        )
    payload[name] = rows  # saved after each collection: a stopped run keeps its figures
    meta: dict[str, Any] = {"model": name, "kind": model.kind, "max_length": model.max_length}
    payload["_meta"].setdefault("models", {})[name] = meta
    reference = quality_reference(args.skip_quality)
    meta["quality_reference"] = reference
    if args.skip_quality:
        meta["not_scored"] = list(args.skip_quality)
    for dataset in args.datasets:
        scored = {
            name: per_dataset[name][dataset] if name in per_dataset else system
            for name, system in systems.items()
            if name not in args.skip_quality
        }
        means, per_query, setting, by_depth = quality(
            scored, dataset, protocol, getattr(args, "executor", None)
        )
        meta[f"evaluation_{dataset}"] = setting
        for row in rows:
            if row["system"] not in means:
                continue
            row["ndcg@10"][dataset] = means[row["system"]]
            row.setdefault("ndcg@10_by_depth", {})[dataset] = by_depth[row["system"]]
            if row["system"] != reference:
                test = paired_test(per_query[reference], per_query[row["system"]], ["nDCG@10"])
                # the key keeps its name; _meta's quality_reference says against what
                row["p_value_vs_torch"][dataset] = test["p_values"]["nDCG@10"]
        save()
    return rows, meta


def quality_reference(skipped: list[str]) -> str:
    """The system losses and p values are taken against: torch fp32 unless not scored."""
    for system in (TORCH, ORT_FP32):
        if system not in skipped:
            return system
    raise SystemExit(
        "--skip-quality: at least one of torch fp32 and ORT fp32 must be scored "
        "(the uncompressed reference that losses are measured against)"
    )


def make_achieved(model: RankingModel, plan: CompressionPlan) -> dict[str, Any]:
    try:
        return dict(plan.with_achieved(model).achieved)
    except Exception as error:  # an estimate is a nicety, never a reason to stop
        return {"error": str(error)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="the results JSON")
    parser.add_argument("--protocol", choices=("quick", "full"), default="quick")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["reranker", "retriever"],
        help="reranker, retriever or a path",
    )
    parser.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument(
        "--calibration-data",
        choices=sorted(CALIBRATION_SPLIT),
        default="nfcorpus",
        help="collection whose dev/train split calibrates relevance (default: nfcorpus dev)",
    )
    parser.add_argument("--embeddings", choices=("fp32", "int8"), default="int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="a quick check that it all runs")
    parser.add_argument(
        "--work-dir", default=None, help="where bundles go (default: a folder beside --output)"
    )
    parser.add_argument(
        "--recovered",
        nargs="+",
        type=Recovered.parse,
        metavar="NAME=[DATASET:]FOLDER[,...]",
        help="rows for recovered model folders, exported with int8 (see the module doc)",
    )
    parser.add_argument(
        "--plans",
        choices=("all", "none"),
        default="all",
        help="none: only the reference systems and the --recovered rows",
    )
    parser.add_argument(
        "--first-token",
        action="store_true",
        help="relcomp bundles run a cross-encoder's last layer at the first token only",
    )
    parser.add_argument(
        "--remove-padding",
        action="store_true",
        help="relcomp bundles run their token-wise operators on real tokens only",
    )
    parser.add_argument(
        "--skip-quality",
        nargs="+",
        default=[],
        choices=(TORCH, ORT_FP32, PEER),
        metavar="SYSTEM",
        help=f"time and size these systems but do not score their quality ({TORCH!r} or "
        f"{ORT_FP32!r}: losses are then against the other, whose scores equal torch's "
        "within the export's parity tolerance; the full protocol's torch fp32 scoring takes "
        f"about 1.5 hours on 2 cores. {PEER!r}: the target 'less loss than the peer' then "
        "reads 'not measured')",
    )
    add_ray_options(
        parser, "score the quality part's pairs (timing always runs here)", "Ray actors"
    )
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.markdown:
        print(markdown(read_results(args.markdown)))
        return
    if not args.output:
        parser.error("--output is required (or --markdown FILE.json)")
    quality_reference(args.skip_quality)  # checked before any work
    with executor_for(args.ray, args.workers) as executor:
        args.executor = executor
        run(args)


def run(args: argparse.Namespace) -> None:
    """The benchmark itself (``main`` parses the command line and sets up Ray)."""
    set_threads(args.threads)
    logger.setLevel(logging.INFO)
    protocol = PROTOCOLS["smoke" if args.smoke else args.protocol]
    output = Path(args.output)
    work = Path(args.work_dir) if args.work_dir else output.with_name(f"{output.stem}_bundles")
    payload: dict[str, Any] = {
        "_meta": {
            "protocol": dataclasses.asdict(protocol),
            "machine": {**machine(), "ort_threads": args.threads},
            "datasets": args.datasets,
            "calibration": f"{args.calibration_data}/{CALIBRATION_SPLIT[args.calibration_data]}",
            "embeddings_in_relcomp_bundles": args.embeddings,
            "candidates": "BM25 (bm25s) top-k of the test split, the same for every system",
            "timing": (
                f"{args.threads} threads, systems interleaved, warm-up, batch 32 median of "
                f"{protocol.repeats}, batch 1 over {protocol.latency_pairs} pairs, "
                f"{PAUSE_S} s pause before each timed call (spinning worker threads), "
                "glibc malloc keeping freed memory (relcomp.evaluation.keep_freed_memory: "
                "torch re-faulted its activations on every call otherwise)"
            ),
            "note": "smoke run: figures follow no protocol" if args.smoke else "",
            "first_token_in_relcomp_bundles": bool(args.first_token),
            "padding_removed_in_relcomp_bundles": bool(args.remove_padding),
        }
    }
    started = time.time()

    def save() -> None:
        payload["_meta"]["wall_s"] = round(time.time() - started, 1)
        write_json(output, payload)

    table = []
    for key in args.models:
        rows, meta = run_model(key, args, protocol, work, payload, save)
        verdict = targets(rows, args.datasets, meta["quality_reference"])
        payload["_meta"].setdefault("targets", {})[meta["model"]] = verdict
        save()
        for row in rows:
            table.append(
                [
                    meta["model"],
                    row["system"],
                    f"{row['size_mb']:.1f}",
                    f"{row['pairs_per_s']:.1f}",
                    f"{row['p50_ms']:.1f}",
                    f"{row['p95_ms']:.1f}",
                    *(_ndcg(row, d) for d in args.datasets),
                ]
            )
        print_table(
            table[-len(rows) :],
            ["model", "system", "MB", "pairs/s", "p50 ms", "p95 ms", *args.datasets],
        )
        best = verdict["best"]
        if best is not None:
            print(f"\nbest relcomp plan for {meta['model']}: {best}")
            for target, check in verdict["plans"][best]["checks"].items():
                print(f"  {_verdict(check['met'], 'met   ', 'MISSED')} {target}: {check['figure']}")
    save()
    print(f"\nwrote {output} ({time.time() - started:.0f} s)")
    if not os.environ.get("SPEED_SIZE_KEEP_BUNDLES"):
        shutil.rmtree(work, ignore_errors=True)


def _depth_table(
    meta: dict[str, Any], model: str, systems: list[dict[str, Any]], datasets: list[str]
) -> str:
    """nDCG@10 had each system re-ranked only BM25's top-k (the same scores), and its
    loss against the quality reference at each depth; empty for files without it."""
    reference = meta.get("models", {}).get(model, {}).get("quality_reference", TORCH)
    by_name = {s["system"]: s for s in systems}
    if not any(s.get("ndcg@10_by_depth") for s in systems) or reference not in by_name:
        return ""
    base = by_name[reference]
    rows = []
    for dataset in datasets:
        depth = meta.get("models", {}).get(model, {}).get(f"evaluation_{dataset}", {}).get("depth")
        for s in systems:
            found = s.get("ndcg@10_by_depth", {}).get(dataset)
            if found is None or dataset not in s["ndcg@10"]:
                continue
            at = {**found, str(depth): s["ndcg@10"][dataset]}
            ref_at = {**base["ndcg@10_by_depth"][dataset], str(depth): base["ndcg@10"][dataset]}
            cells = [
                f"{at[k]:.4f}" + ("" if s is base else f" ({100 * (at[k] - ref_at[k]):+.2f})")
                for k in sorted(at, key=int)
            ]
            rows.append([dataset, s["system"], *cells])
            header = ["data", "system", *(f"top-{k}" for k in sorted(at, key=int))]
    if not rows:
        return ""
    return (
        f"{model_label(model)}, nDCG@10 by re-ranking depth (BM25's top-k re-ranked; in "
        f"brackets, points against {reference}):\n\n" + markdown_table(header, rows)
    )


def _ndcg(row: dict[str, Any], dataset: str) -> str:
    value = row["ndcg@10"].get(dataset)
    return "not scored" if value is None else f"{value:.4f}"


def markdown(payloads: list[dict[str, Any]]) -> str:
    """A line per system: size, throughput, latency and nDCG@10 per collection; then,
    per plan, each target with its figure."""
    tables = []
    for payload in payloads:
        datasets = payload["_meta"]["datasets"]
        for model, systems in payload.items():
            if model == "_meta":
                continue
            rows = [
                [
                    s["system"],
                    f"{s['size_mb']:.1f}",
                    f"{s['pairs_per_s']:.1f}",
                    f"{s['p50_ms']:.1f}",
                    f"{s['p95_ms']:.1f}",
                    *(_ndcg(s, d) for d in datasets),
                ]
                for s in systems
            ]
            header = ["system", "MB", "pairs/s", "p50 ms", "p95 ms"]
            header += [f"nDCG@10 {d}" for d in datasets]
            tables.append(f"{model_label(model)}:\n\n" + markdown_table(header, rows))
            depth_table = _depth_table(payload["_meta"], model, systems, datasets)
            if depth_table:
                tables.append(depth_table)
            targets = payload["_meta"].get("targets", {}).get(model)
            if targets:
                checks = [
                    [plan, check, _verdict(found["met"], "met", "**missed**"), found["figure"]]
                    for plan, verdict in targets["plans"].items()
                    for check, found in verdict["checks"].items()
                ]
                tables.append(
                    f"{model_label(model)}, targets (the benchmark's pick: {targets['best']}):\n\n"
                    + markdown_table(["plan", "target", "verdict", "figure"], checks)
                )
    return "\n\n".join(tables)


if __name__ == "__main__":
    main()
