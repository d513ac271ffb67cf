"""``relcomp``: the command line.

Each verb is one step of the flow in :mod:`relcomp.pipeline`. Errors caused by the
user's input (a bad file, argument or model) print one message and exit with
status 2, with no traceback and no partial output file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relcomp import __version__
from relcomp._table import format_table
from relcomp.errors import RelcompError

__all__ = ["main"]

logger = logging.getLogger("relcomp")

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER_ERROR, f"relcomp: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars"
    )
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug messages")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="relcomp",
        description="Explain neural retrievers and rerankers with LRP, and compress them by what matters.",
    )
    parser.add_argument("--version", action="version", version=f"relcomp {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    evaluate = verbs.add_parser(
        "evaluate", help="retrieval quality of a model (or BM25) on a BEIR collection"
    )
    evaluate.add_argument("-m", "--model", required=True, help="'bm25', a model folder or a hub id")
    evaluate.add_argument("-d", "--data", required=True, type=Path, help="BEIR folder")
    evaluate.add_argument("--split", default="test", help="qrels split (default: test)")
    evaluate.add_argument(
        "--first-stage",
        default=None,
        help="'bm25' or a bi-encoder to re-rank; default: BM25 for cross-encoders, exhaustive retrieval for bi-encoders",
    )
    evaluate.add_argument(
        "--depth", type=_positive_int, default=100, help="first-stage depth (default: 100)"
    )
    evaluate.add_argument(
        "--queries",
        type=_positive_int,
        default=None,
        help="a fixed, seeded sample of N judged queries",
    )
    evaluate.add_argument(
        "--max-length", type=_positive_int, default=None, help="longest input in tokens"
    )
    evaluate.add_argument("--batch-size", type=_positive_int, default=32)
    evaluate.add_argument(
        "--measures",
        nargs="+",
        default=None,
        help="ir_measures names (default: nDCG@10 RR@10 R@100)",
    )
    evaluate.add_argument(
        "--no-cache", action="store_true", help="recompute first stages and embeddings"
    )
    evaluate.add_argument(
        "--plan", type=Path, default=None, help="a plan.json to simulate in torch"
    )
    evaluate.add_argument(
        "--calibration-split",
        default=None,
        help="calibration data for the plan's activation statistics (default: dev, else train)",
    )
    evaluate.add_argument(
        "-o", "--output", type=Path, default=None, help="write OUT_DIR/quality.json"
    )
    _common(evaluate)

    explain = verbs.add_parser("explain", help="token relevance of one (query, passage) pair")
    explain.add_argument("-m", "--model", required=True)
    explain.add_argument("-q", "--query", required=True)
    explain.add_argument("-p", "--passage", required=True)
    explain.add_argument(
        "--method", default="attnlrp", help="attnlrp (default), cp-lrp, ig, saliency, …"
    )
    explain.add_argument("--max-length", type=_positive_int, default=None)
    explain.add_argument("--top", type=_positive_int, default=8, help="words to print per side")
    explain.add_argument(
        "-o", "--output", type=Path, default=None, help="write OUT_DIR/explanation.json"
    )
    verbosity = explain.add_mutually_exclusive_group()
    verbosity.add_argument("--quiet", action="store_true")
    verbosity.add_argument("-v", "--verbose", action="store_true")

    relevance = verbs.add_parser("relevance", help="component relevance over calibration pairs")
    relevance.add_argument("-m", "--model", required=True)
    relevance.add_argument("-d", "--data", required=True, type=Path)
    relevance.add_argument(
        "--split", default="dev", help="calibration split: dev or train, never test"
    )
    relevance.add_argument(
        "--calibration", type=_positive_int, default=256, help="number of calibration pairs"
    )
    relevance.add_argument("--method", default="attnlrp", help="attnlrp (default), cp-lrp, epsilon")
    relevance.add_argument("--max-length", type=_positive_int, default=None)
    relevance.add_argument("--batch-size", type=_positive_int, default=16)
    relevance.add_argument("-o", "--output", type=Path, required=True)
    _common(relevance)
    patch = verbs.add_parser("patch", help="RelP and AtP against exact activation patching")
    patch.add_argument("-m", "--model", required=True)
    patch.add_argument("-d", "--data", required=True, type=Path)
    patch.add_argument("--split", default="test")
    patch.add_argument("--pairs", type=_positive_int, default=64)
    patch.add_argument("--corruption", choices=("doc-terms", "query-terms"), default="doc-terms")
    patch.add_argument("--max-length", type=_positive_int, default=None)
    patch.add_argument(
        "--residual-positions",
        type=_positive_int,
        default=None,
        help="patch the residual stream at this many random positions per pair (default: all)",
    )
    patch.add_argument("-o", "--output", type=Path, required=True)
    _common(patch)

    plan = verbs.add_parser("plan", help="a compression plan from component relevance and a budget")
    plan.add_argument("-m", "--model", required=True)
    plan.add_argument(
        "--relevance", type=Path, default=None, help="component_relevance.json (relcomp relevance)"
    )
    plan.add_argument(
        "--method",
        required=True,
        help="mixed-precision, prune-structured, prune-unstructured or sparsify",
    )
    plan.add_argument(
        "--budget",
        required=True,
        help="name=value (bits_per_weight=6, size_mb=40, params_removed=0.3, sparsity=0.5), 40MB, 6bits or 0.3",
    )
    plan.add_argument(
        "--importance",
        default="relevance",
        help="relevance (default), uniform, random, magnitude, taylor",
    )
    plan.add_argument(
        "-d", "--data", type=Path, default=None, help="BEIR folder for calibration pairs"
    )
    plan.add_argument(
        "--calibration-split", default=None, help="dev (default) or train; never test"
    )
    plan.add_argument("--calibration", type=_positive_int, default=64)
    plan.add_argument("--seed", type=int, default=13)
    plan.add_argument("-o", "--output", type=Path, required=True, help="the plan's JSON file")
    _common(plan)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(level)
    if not args.verbose:
        import transformers

        transformers.logging.set_verbosity_error()


def _print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    print(format_table(rows, header))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from relcomp.evaluation import DEFAULT_MEASURES
    from relcomp.pipeline import evaluate

    report = evaluate(
        args.model,
        args.data,
        split=args.split,
        first_stage=args.first_stage,
        depth=args.depth,
        queries=args.queries,
        max_length=args.max_length,
        batch_size=args.batch_size,
        measures=args.measures or DEFAULT_MEASURES,
        use_cache=not args.no_cache,
        show_progress_bar=not args.quiet,
        plan=args.plan,
        calibration_split=args.calibration_split,
    )
    system = (
        report.model
        if report.first_stage is None
        else f"{report.model} (re-ranking {report.first_stage} top-{report.depth})"
    )
    if args.plan:
        system += f" with plan {args.plan}"
    print(f"{system} on {report.dataset}/{report.split}, {report.n_queries} queries")
    _print_table([(name, value) for name, value in report.measures.items()], ("measure", "value"))
    if report.truncation.get("inputs"):
        print(
            f"truncated: {report.truncation.get('truncated', 0)} of {report.truncation['inputs']} inputs to {report.max_length} tokens"
        )
    print(f"tie rate in top-10: {report.tie_rate:.4f}")
    if args.output:
        path = report.save(args.output / "quality.json")
        print(f"wrote {path}")


def _cmd_explain(args: argparse.Namespace) -> None:
    from relcomp.pipeline import explain

    explanation = explain(
        args.model, args.query, args.passage, method=args.method, max_length=args.max_length
    )
    print(
        f"{explanation.method}: score {explanation.score:.4f}, conservation error {explanation.conservation_error:.4f}"
    )
    for segment, label in ((0, "query"), (1, "passage")):
        print(f"top {label} words:")
        _print_table(explanation.top_words(segment, args.top), ("word", "relevance"))
    if args.output:
        from relcomp._io import atomic_write_json

        payload = explanation.to_dict()
        path = atomic_write_json(args.output / "explanation.json", payload)
        print(f"wrote {path}")


def _cmd_relevance(args: argparse.Namespace) -> None:
    from relcomp.pipeline import component_relevance

    relevance = component_relevance(
        args.model,
        args.data,
        split=args.split,
        calibration=args.calibration,
        method=args.method,
        max_length=args.max_length,
        batch_size=args.batch_size,
        show_progress_bar=not args.quiet,
    )
    layers = relevance.by_kind("layer")
    attention = relevance.by_kind("attention")
    mlp = relevance.by_kind("mlp")
    rows = [
        (name, float(layers[name][0]), float(attention[name][0]), float(mlp[name][0]))
        for name in layers
    ]
    print(f"{relevance.method} component relevance over {relevance.n_pairs} pairs (mean |R|)")
    _print_table(rows, ("layer", "residual", "attention", "mlp"))
    path = relevance.save(args.output / "component_relevance.json")
    print(f"wrote {path}")


def _cmd_patch(args: argparse.Namespace) -> None:
    from relcomp._io import atomic_write_json
    from relcomp.attribution.patching import run_patching

    payload = run_patching(
        args.model,
        args.data,
        pairs=args.pairs,
        corruption=args.corruption,
        split=args.split,
        max_length=args.max_length,
        residual_positions=args.residual_positions,
        show_progress_bar=not args.quiet,
    )
    rows = [
        (kind, values["atp_pearson"], values["relp_pearson"], values["n"])
        for kind, values in payload["correlations"].items()
    ]
    print(f"{args.corruption}: correlation with activation patching ({payload['counts']})")
    _print_table(rows, ("component", "AtP Pearson", "RelP Pearson", "n"))
    print(f"wrote {atomic_write_json(args.output / 'patching.json', payload)}")


def _cmd_plan(args: argparse.Namespace) -> None:
    from relcomp.pipeline import plan

    result = plan(
        args.model,
        args.method,
        args.budget,
        relevance=args.relevance,
        importance=args.importance,
        data_dir=args.data,
        calibration_split=args.calibration_split,
        calibration=args.calibration,
        seed=args.seed,
    )
    achieved = result.achieved
    print(f"{result.method}: budget {dict(result.budget)}")
    _print_table(
        [(key, value) for key, value in achieved.items() if isinstance(value, int | float)],
        ("achieved", "value"),
    )
    output = args.output if args.output.suffix == ".json" else args.output / "plan.json"
    print(f"wrote {result.save(output)}")


_COMMANDS = {
    "evaluate": _cmd_evaluate,
    "explain": _cmd_explain,
    "relevance": _cmd_relevance,
    "plan": _cmd_plan,
    "patch": _cmd_patch,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    try:
        _COMMANDS[args.verb](args)
    except (RelcompError, ValueError, OSError) as error:
        message = str(error).strip() or type(error).__name__
        print(f"relcomp {args.verb}: error: {message}", file=sys.stderr)
        if args.verbose:
            raise
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("relcomp: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
