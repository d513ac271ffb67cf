"""Physical low rank: what factorising the FFN Linears buys in time and size, and costs in fidelity.

Every FFN Linear (``intermediate.dense``, 384 → 1536, and ``output.dense``, 1536 → 384,
in each of the 6 layers) becomes a :class:`~relcomp.compression.LowRankLinear` of rank
``r`` (its truncated SVD, :func:`~relcomp.compression.factorise_physically`), the
"low-rank part usable on its own as a real FFN replacement" of R-Sparse. For each model
(the cross-encoder minilm-l6-reranker and the retriever all-MiniLM-L6-v2) and rank,
one process, the systems interleaved after a warm-up (../shared/BENCHMARKS.md):

* parameters and size (fp32, bytes as stored would be: :func:`estimate_size`);
* throughput in pairs/s at batch 32 (median of ``--repeats`` calls on the same real
  BM25 pairs of the test split), in torch and in ONNX Runtime (``relcomp export`` of
  the plan: two MatMuls per factorised Linear), and ORT's latency at batch 1 (p50);
* fidelity on dev data (nfcorpus dev): Kendall's tau of BM25's top-10 ranking of 32
  dev queries against the fp32 model, and the score error, as in
  ``activation_quantization.py``. No fine-tuning follows the factorisation, so this is
  the cost of the SVD alone.

    python benchmarks/low_rank.py --output benchmarks/results/low_rank.json
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    MAX_LENGTH,
    add_markdown_option,
    beir_path,
    machine,
    markdown_table,
    print_table,
    read_results,
    reranker_path,
    result_key,
    set_threads,
    write_json,
)
from _fidelity import compare, evaluation_groups, scores_of
from relcomp.artifacts import CompressionPlan
from relcomp.compression import estimate_size, factorise_physically, parameter_count
from relcomp.evaluation import load_beir
from relcomp.export import export_bundle
from relcomp.models import load_model
from relcomp.models.loading import DEFAULT_RETRIEVER
from speed_size import set_system_threads, time_systems, timing_pairs

logger = logging.getLogger("low_rank")

FFN = r"re:.*encoder\.layer\.\d+\.(intermediate|output)\.dense"
RANKS = (256, 128, 64)

HEADER = [
    "model",
    "system",
    "params (M)",
    "MB",
    "torch pairs/s",
    "vs fp32",
    "ORT pairs/s",
    "vs fp32",
    "ORT p50 ms (batch 1)",
    "Kendall tau",
    "score error",
]


def run_model(
    model_path: str, args: argparse.Namespace, folder: Path
) -> tuple[str, list[dict[str, Any]]]:
    model = load_model(model_path)
    model.max_length = min(model.max_length, MAX_LENGTH["quick"][model.kind])
    dev = load_beir(beir_path(args.fidelity_dataset), "dev")
    groups = evaluation_groups(dev, set(), args.queries, args.depth)
    reference_scores = scores_of(model, groups)
    rows: list[dict[str, Any]] = []
    systems: dict[str, Any] = {}
    for rank in (None, *args.ranks):
        label = "fp32" if rank is None else f"FFN rank {rank}"
        if rank is None:
            plan = CompressionPlan(model.name, ())
            torch_model = model
        else:
            plan = CompressionPlan(model.name, {FFN: f"low_rank(rank={rank})"})
            torch_model = factorise_physically(model, plan)
        bundle_dir = folder / f"{model.kind}-{rank or 'fp32'}"
        bundle = export_bundle(model, bundle_dir, plan=plan if rank else None)
        systems[f"torch {label}"] = torch_model
        ort = load_model(bundle_dir, max_length=model.max_length)
        set_system_threads(ort, args.threads)
        systems[f"ORT {label}"] = ort
        fidelity = (
            {"kendall_tau": 1.0, "score_error": 0.0}
            if rank is None
            else compare(reference_scores, scores_of(torch_model, groups))
        )
        rows.append(
            {
                "system": label,
                "rank": rank,
                "parameters": parameter_count(torch_model),
                "size_mb": estimate_size(model, plan).size_mb,
                "onnx_mb": bundle.size_bytes / 1e6,
                **fidelity,
            }
        )
    queries, documents = timing_pairs(args.timing_dataset, 32, 30)
    timings = time_systems(systems, queries, documents, args.repeats, args.latency_pairs)
    for row in rows:
        for engine in ("torch", "ORT"):
            timing = timings[f"{engine} {row['system']}"]
            row[f"{engine}_pairs_per_s"] = timing["pairs_per_s"]
            row[f"{engine}_p50_ms"] = timing["p50_ms"]
    return result_key(model), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output")
    parser.add_argument("--models", nargs="+", default=[str(reranker_path()), DEFAULT_RETRIEVER])
    parser.add_argument("--ranks", nargs="+", type=int, default=list(RANKS))
    parser.add_argument("--fidelity-dataset", default="nfcorpus")
    parser.add_argument("--timing-dataset", default="scifact")
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--latency-pairs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.markdown:
        print(markdown(read_results(args.markdown)))
        return
    if not args.output:
        parser.error("--output is required (or --markdown FILE.json)")
    if args.latency_pairs < 1:
        parser.error(f"--latency-pairs: at least 1, got {args.latency_pairs}")
    if any(rank < 1 for rank in args.ranks):
        parser.error(f"--ranks: every rank must be at least 1, got {args.ranks}")
    set_threads(args.threads)
    started = time.time()
    payload: dict[str, Any] = {
        "_meta": {
            "machine": machine(),
            "modules": FFN,
            "timing": f"{args.timing_dataset} test BM25 pairs, batch 32, median of "
            f"{args.repeats}, {args.threads} threads, systems interleaved",
            "fidelity": f"BM25 top-{args.depth} of {args.queries} {args.fidelity_dataset} "
            "dev queries against fp32",
            "max_length": MAX_LENGTH["quick"],
        }
    }
    table = []
    with tempfile.TemporaryDirectory(prefix="relcomp-low-rank-") as tmp:
        for model_path in args.models:
            name, rows = run_model(model_path, args, Path(tmp))
            payload[name] = rows
            reference = rows[0]
            for row in rows:
                table.append(
                    [
                        name,
                        row["system"],
                        f"{row['parameters'] / 1e6:.2f}",
                        f"{row['size_mb']:.1f}",
                        f"{row['torch_pairs_per_s']:.1f}",
                        f"{row['torch_pairs_per_s'] / reference['torch_pairs_per_s']:.2f}×",
                        f"{row['ORT_pairs_per_s']:.1f}",
                        f"{row['ORT_pairs_per_s'] / reference['ORT_pairs_per_s']:.2f}×",
                        f"{row['ORT_p50_ms']:.1f}",
                        f"{row['kendall_tau']:.3f}",
                        f"{row['score_error']:.3f}",
                    ]
                )
            write_json(args.output, payload)
    payload["_meta"]["wall_s"] = round(time.time() - started, 1)
    write_json(args.output, payload)
    print_table(table, HEADER)


def markdown(payloads: list[dict[str, Any]]) -> str:
    """A line per (model, rank): size, throughput in torch and ONNX Runtime against fp32,
    ONNX Runtime's latency, and fidelity to fp32."""
    rows = []
    for payload in payloads:
        for model, systems in payload.items():
            if model == "_meta":
                continue
            fp32 = next(s for s in systems if s["rank"] is None)
            for s in systems:
                rows.append(
                    [
                        model,
                        s["system"],
                        f"{s['parameters'] / 1e6:.2f}",
                        f"{s['size_mb']:.1f}",
                        f"{s['torch_pairs_per_s']:.1f}",
                        f"{s['torch_pairs_per_s'] / fp32['torch_pairs_per_s']:.2f}×",
                        f"{s['ORT_pairs_per_s']:.1f}",
                        f"{s['ORT_pairs_per_s'] / fp32['ORT_pairs_per_s']:.2f}×",
                        f"{s['ORT_p50_ms']:.1f}",
                        f"{s['kendall_tau']:.3f}",
                        f"{s['score_error']:.3f}",
                    ]
                )
    return markdown_table(HEADER, rows)


if __name__ == "__main__":
    main()
