"""W8A8 activation scales on dev data: per tensor against LRP-QViT's clipped channel-wise.

Every Linear gets int8 weights (one scale per row) and int8 inputs. The inputs' scales
are calibrated on 64 (query, best document) pairs of the calibration split (nfcorpus
dev, scifact train): one per tensor (min–max, relcomp's default), or one per channel
for the inputs that come from a LayerNorm (queries, keys, values, FFN input) with each
channel's range clipped at ``clip`` times its RMS (``none``: min–max per channel).
Measured on BM25's top-10 for 32 other queries of the same split: Kendall's tau of
each query's ranking against fp32 (mean), and the score error (RMS over the fp32
scores' standard deviation). No test query is used: this is where the default clip is
chosen.

    python benchmarks/activation_quantization.py --output benchmarks/results/activation_quantization.json
"""

from __future__ import annotations

import argparse
import time
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
from relcomp.compression import compress_
from relcomp.compression.planners import calibration_statistics, make_plan
from relcomp.evaluation import load_beir
from relcomp.models import load_model
from relcomp.models.loading import DEFAULT_RETRIEVER
from relcomp.pipeline import calibration_pairs

SPLITS = {"scifact": "train", "nfcorpus": "dev"}
CLIPS: tuple[float | None, ...] = (None, 32.0, 16.0, 8.0, 4.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output")
    parser.add_argument("--models", nargs="+", default=[str(reranker_path()), DEFAULT_RETRIEVER])
    parser.add_argument("--datasets", nargs="+", default=["nfcorpus", "scifact"])
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.markdown:
        print(markdown(read_results(args.markdown)))
        return
    if not args.output:
        parser.error("--output is required (or --markdown FILE.json)")
    set_threads(args.threads)
    payload: dict[str, Any] = {
        "_meta": {
            "machine": machine(),
            "calibration": {d: f"{s} ({args.calibration} pairs)" for d, s in SPLITS.items()},
            "measured_on": f"BM25 top-{args.depth} of {args.queries} other queries of the same split",
            "max_length": MAX_LENGTH["quick"],
        }
    }
    rows = []
    started = time.time()
    for model_path in args.models:
        model = load_model(model_path)
        model.max_length = min(model.max_length, MAX_LENGTH["quick"][model.kind])
        channelwise = make_plan(
            model,
            "mixed-precision",
            {"bits_per_weight": 9},
            importance="uniform",
            ladder=("int8",),
            activations=True,
        )
        weight_only = {"_default": "int8"}
        tensor_wise = {"_default": "int8(activations=True)"}
        for dataset_name in args.datasets:
            dataset = load_beir(beir_path(dataset_name), SPLITS[dataset_name])
            pairs = calibration_pairs(dataset, args.calibration)
            statistics = calibration_statistics(model, pairs)
            groups = evaluation_groups(dataset, {q for q, _ in pairs}, args.queries, args.depth)
            reference = scores_of(model, groups)
            results: dict[str, dict[str, float]] = {}
            configs: list[tuple[str, Any, dict[str, Any]]] = [
                ("W8 (weights only)", weight_only, {}),
                ("W8A8 per tensor", tensor_wise, {}),
                *(
                    (
                        f"W8A8 channel-wise, clip {'none' if c is None else f'{c:g}×RMS'}",
                        channelwise,
                        {"channel_clip": c},
                    )
                    for c in CLIPS
                ),
            ]
            for label, plan, options in configs:
                with compress_(model, plan, statistics=statistics, **options):
                    results[label] = compare(reference, scores_of(model, groups))
                rows.append(
                    [
                        result_key(model),
                        dataset_name,
                        label,
                        f"{results[label]['kendall_tau']:.4f}",
                        f"{results[label]['score_error']:.4f}",
                    ]
                )
            payload.setdefault(result_key(model), {})[dataset_name] = results
            write_json(args.output, payload)
    payload["_meta"]["wall_s"] = round(time.time() - started, 1)
    write_json(args.output, payload)
    print_table(rows, ["model", "data", "activations", "Kendall tau vs fp32", "score error"])


def markdown(payloads: list[dict[str, Any]]) -> str:
    """Kendall's tau / score error against fp32, a column per activation setting."""
    rows: list[list[str]] = []
    settings: list[str] = []
    for payload in payloads:
        splits = {d: s.split()[0] for d, s in payload["_meta"]["calibration"].items()}
        for model, datasets in payload.items():
            if model == "_meta":
                continue
            for dataset, found in datasets.items():
                settings += [s for s in found if s not in settings]
                rows.append(
                    [
                        model,
                        f"{dataset} {splits.get(dataset, '')}".strip(),
                        *(
                            f"{found[s]['kendall_tau']:.3f} / {found[s]['score_error']:.3f}"
                            if s in found
                            else "–"
                            for s in settings
                        ),
                    ]
                )
    width = 2 + len(settings)
    rows = [row + ["–"] * (width - len(row)) for row in rows]
    return markdown_table(["model", "data", *settings], rows)


if __name__ == "__main__":
    main()
