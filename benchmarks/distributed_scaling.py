"""Re-ranking on Ray: the same real scifact pairs scored in-process, by 1 and 2 actors, and on two nodes.

The reranker (256 tokens) re-scores a fixed set of scifact test pairs (BM25 top-16 of
32 seeded queries, 512 pairs) in chunks of 64, as ``relcomp evaluate`` does:

* **in-process**, torch on 1 and on 2 threads (today's path, no Ray);
* **Ray, local**, 1 and 2 actors of 1 CPU each (``--ray local --workers N``);
* **Ray, 2 nodes**, a cluster of two 1-CPU nodes simulated on this machine
  (``ray.cluster_utils.Cluster``), one actor per node.

For each: wall time of the re-ranking (actors already holding the model; their start
is ``start s``), the speed-up over one actor in wall time and in CPU time (one actor's
CPU seconds over the busiest actor's: the wall-time speed-up had every actor a core of
its own), the CPU seconds each actor spent, the share of a core the actors got while
computing (CPU over wall: below 100 % when other jobs hold the cores), the time Ray
adds (wall minus the busiest actor's compute time), the 1-minute load average at the
end, and the largest score difference from the in-process path. CPU per pair, from the 2-actor run, sizes
bigger jobs (docs/benchmarks/distributed_scaling.md).

    python benchmarks/distributed_scaling.py --output benchmarks/results/distributed_scaling.json
    python benchmarks/distributed_scaling.py --markdown benchmarks/results/distributed_scaling.json
    python benchmarks/distributed_scaling.py --capacity benchmarks/results/distributed_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

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
from relcomp.evaluation import bm25_retrieve, load_beir, rerank, sample_queries
from relcomp.evaluation.executor import InProcess
from relcomp.models import load_model

HEADER = [
    "system",
    "workers",
    "wall s",
    "pairs/s",
    "speed-up",
    "speed-up (CPU)",
    "start s",
    "CPU s per actor",
    "core share",
    "Ray adds s",
    "load (1 min)",
    "max abs Δscore",
]


class LoadSampler:
    """The 1-minute load average, sampled every second while a block runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(1.0)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])


def _pairs(queries: int, depth: int) -> tuple[Any, Any]:
    dataset = load_beir(beir_path("scifact"), "test")
    ids = sample_queries(dataset.split_queries, queries)
    run = bm25_retrieve(dataset, ids, depth=depth, show_progress_bar=False)
    return dataset, run


def _flat(run: dict[str, dict[str, float]]) -> dict[tuple[str, str], float]:
    return {(q, d): s for q, docs in run.items() for d, s in docs.items()}


def _max_diff(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> float:
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    return max(abs(fa[k] - fb[k]) for k in fa)


def _measure(
    system: str, model: Any, dataset: Any, run: Any, args: argparse.Namespace, executor: Any
) -> tuple[dict[str, Any], Any]:
    start_s = executor.start(model) if hasattr(executor, "start") else 0.0
    before = {k: dict(v) for k, v in getattr(executor, "stats", {}).items()}
    with LoadSampler() as load:
        started = time.perf_counter()
        scores = rerank(
            model, dataset, run, depth=args.depth, batch_size=32, use_cache=False,
            chunk_size=args.chunk_size, executor=executor, show_progress_bar=False,
        )  # fmt: skip
        wall = time.perf_counter() - started
    actors = []
    for name, stats in sorted(getattr(executor, "stats", {}).items()):
        done = before.get(name, {})
        actors.append(
            {
                "chunks": int(stats["chunks"] - done.get("chunks", 0)),
                "cpu_s": round(stats["cpu_s"] - done.get("cpu_s", 0.0), 2),
                "busy_s": round(stats["busy_s"] - done.get("busy_s", 0.0), 2),
            }
        )
    busiest = max((a["busy_s"] for a in actors), default=wall)
    row = {
        "system": system,
        "workers": len(actors),
        "wall_s": round(wall, 2),
        "start_s": round(start_s, 2),
        "actors": actors,
        "ray_overhead_s": round(wall - busiest, 2) if actors else None,
        "load_1min_end": round(load.samples[-1], 2),
        "load_1min_mean": round(sum(load.samples) / len(load.samples), 2),
    }
    return row, scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--markdown", type=Path, help="print a result file's table as markdown")
    parser.add_argument(
        "--capacity", type=Path, help="print the capacity plan a result file's CPU per pair gives"
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    if args.capacity:
        print(capacity(json.loads(args.capacity.read_text())))
        return 0
    if args.output is None:
        parser.error("--output is required")
    set_threads(2)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray
    import torch
    from ray.cluster_utils import Cluster

    from relcomp.distributed import RayExecutor

    started = time.perf_counter()
    dataset, run = _pairs(args.queries, args.depth)
    model = load_model(reranker_path(), max_length=args.max_length)
    pairs = sum(len(docs) for docs in run.values())
    rows: list[dict[str, Any]] = []
    reference = None
    for threads in (1, 2):
        torch.set_num_threads(threads)
        row, scores = _measure(
            f"in-process, {threads} thread(s)", model, dataset, run, args, InProcess()
        )
        rows.append(row)
        reference = reference or scores
        row["max_abs_diff"] = _max_diff(scores, reference)
    torch.set_num_threads(2)
    for workers in (1, 2):
        with RayExecutor("local", workers=workers) as executor:
            row, scores = _measure("Ray, local", model, dataset, run, args, executor)
        row["max_abs_diff"] = _max_diff(scores, reference)
        rows.append(row)
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 256 * 2**20}
    )
    try:
        cluster.add_node(num_cpus=1, object_store_memory=256 * 2**20)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        with RayExecutor(cluster.address, workers=2) as executor:
            row, scores = _measure("Ray, 2 nodes (simulated)", model, dataset, run, args, executor)
            row["nodes"] = len({info["node"] for info in executor.actor_info()})
        row["max_abs_diff"] = _max_diff(scores, reference)
        rows.append(row)
    finally:
        ray.shutdown()
        cluster.shutdown()
    one_actor = next(r for r in rows if r["system"] == "Ray, local" and r["workers"] == 1)
    for row in rows:
        row["pairs_per_s"] = round(pairs / row["wall_s"], 2)
        row["speedup_vs_1_actor"] = round(one_actor["wall_s"] / row["wall_s"], 2)
    two = next(r for r in rows if r["system"] == "Ray, local" and r["workers"] == 2)
    cpu_per_pair = sum(a["cpu_s"] for a in two["actors"]) / pairs
    payload = {
        "_meta": {
            "model": relative(reranker_path()),
            "data": relative(beir_path("scifact")) + " (test)",
            "queries": args.queries,
            "depth": args.depth,
            "pairs": pairs,
            "chunk_size": args.chunk_size,
            "max_length": args.max_length,
            "ray": ray.__version__,
            "cpu_s_per_pair": round(cpu_per_pair, 4),
            "machine": machine(),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "command": command_line(),
        },
        "rows": rows,
    }
    write_json(args.output, payload)
    print_table([_cells(row, one_actor) for row in rows], HEADER)
    print(f"CPU per pair (2 actors): {cpu_per_pair * 1000:.0f} ms")
    return 0


def _cells(row: dict[str, Any], one_actor: dict[str, Any]) -> list[str]:
    actors = row["actors"]
    busiest = max((a["cpu_s"] for a in actors), default=0.0)
    share = sum(a["cpu_s"] for a in actors) / max(sum(a["busy_s"] for a in actors), 1e-9)
    return [
        row["system"],
        str(row["workers"]) if actors else "–",
        f"{row['wall_s']:.1f}",
        f"{row['pairs_per_s']:.1f}",
        f"{row['speedup_vs_1_actor']:.2f}×",
        f"{one_actor['actors'][0]['cpu_s'] / busiest:.2f}×" if actors else "–",
        f"{row['start_s']:.1f}" if actors else "–",
        " / ".join(f"{a['cpu_s']:.1f}" for a in actors) if actors else "–",
        f"{share:.0%}" if actors else "–",
        f"{row['ray_overhead_s']:.1f}" if actors else "–",
        f"{row['load_1min_end']:.2f}",
        f"{row['max_abs_diff']:.1g}" if row["max_abs_diff"] else "0",
    ]


def markdown(payloads: list[dict[str, Any]] | dict[str, Any]) -> str:
    """The result files' table as markdown."""
    if isinstance(payloads, dict):
        payloads = [payloads]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for payload in payloads:
        one = _one_actor(payload["rows"])
        lines += ["| " + " | ".join(_cells(row, one)) + " |" for row in payload["rows"]]
    return "\n".join(lines)


def _one_actor(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return next(r for r in rows if r["system"] == "Ray, local" and r["workers"] == 1)


#: MS MARCO passage dev: 6,980 queries, each re-ranking a top-1000.
MSMARCO_DEV_PAIRS = 6_980 * 1_000
#: One quick-protocol sweep cell: 100 queries, BM25 top-30.
SWEEP_CELL_PAIRS = 100 * 30
SWEEP_CELLS = 100
CORES = (8, 32, 128)


def capacity(payloads: list[dict[str, Any]] | dict[str, Any]) -> str:
    """Capacity plan from the measured CPU per pair: hours for big jobs on 8, 32 and 128 cores.

    One actor per core, each at the measured CPU cost per pair (2-actor run); the
    sweep's cells are indivisible, so a cluster with more cores than cells waits for
    the slowest round.
    """
    if isinstance(payloads, dict):
        payloads = [payloads]
    per_pair = payloads[0]["_meta"]["cpu_s_per_pair"]
    cell_s = SWEEP_CELL_PAIRS * per_pair
    header = ["job", "CPU hours", *(f"{cores} cores" for cores in CORES)]
    msmarco = MSMARCO_DEV_PAIRS * per_pair
    sweep = SWEEP_CELLS * cell_s
    rows = [
        [
            f"MS MARCO dev re-ranking ({MSMARCO_DEV_PAIRS / 1e6:.2f} M pairs)",
            f"{msmarco / 3600:.0f}",
            *(_duration(msmarco / cores) for cores in CORES),
        ],
        [
            f"{SWEEP_CELLS}-cell sweep ({SWEEP_CELL_PAIRS:,} pairs a cell)",
            f"{sweep / 3600:.1f}",
            *(_duration(-(-SWEEP_CELLS // cores) * cell_s) for cores in CORES),
        ],
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


if __name__ == "__main__":
    raise SystemExit(main())
