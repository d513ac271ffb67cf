"""``relcomp``: the command line.

Each verb is one step of the flow in :mod:`relcomp.pipeline`: ``_add_<verb>`` declares
its arguments (shared groups below; the names a user may type are listed from the
registries they resolve through), ``_cmd_<verb>`` runs it. Errors caused by the user's input (a
bad file, argument or model) print one message and exit with status 2, with no
traceback and no partial output file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from relcomp import __version__
from relcomp._table import format_table
from relcomp.errors import RelcompError

__all__ = ["main"]

logger = logging.getLogger("relcomp")

EXIT_USER_ERROR = 2
EXIT_GATE_FAILED = 3

Verbs = Any  # argparse's subparsers action (a private class)


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


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text}")
    return value


def _listed(names: Iterable[str], default: str | None = None) -> str:
    """``a (default), b or c``: a registry's names for a help text.

    Help lists come from the registries so that they cannot drift from what the verbs
    accept; the names themselves are checked where they are resolved, whose error
    lists the valid ones.
    """
    shown = [f"{name} (default)" if name == default else name for name in names]
    return ", ".join(shown[:-1]) + " or " + shown[-1] if len(shown) > 1 else "".join(shown)


# -- argument groups several verbs share --------------------------------------------------
def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars"
    )
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug messages")


def _add_model(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("-m", "--model", required=True, help=help)


def _add_max_length(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--max-length", type=_positive_int, default=None, help=help)


def _add_batch_size(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--batch-size", type=_positive_int, default=default)


def _add_first_stage(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--first-stage", default=None, help=help)


def _add_planning(parser: argparse.ArgumentParser, method_required: bool) -> None:
    """``--method`` and ``--importance``, listed from the planner and importance registries."""
    from relcomp.compression.importance import IMPORTANCE
    from relcomp.compression.planners import PLANNERS

    default = None if method_required else "mixed-precision"
    parser.add_argument(
        "--method",
        required=method_required,
        default=default,
        help=_listed(PLANNERS.names(), default),
    )
    parser.add_argument(
        "--importance",
        default="relevance",
        help=_listed(IMPORTANCE.names(), "relevance"),
    )


def _add_embeddings(
    parser: argparse.ArgumentParser, help: str, default: str | None = "fp32"
) -> None:
    from relcomp.artifacts import EMBEDDINGS

    parser.add_argument("--embeddings", choices=EMBEDDINGS, default=default, help=help)


def _add_first_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--first-token",
        action="store_true",
        help="cross-encoders: export the last layer at the first token only (the same scores, "
        "1.1-1.2x faster; ignored, with a note, for bi-encoders)",
    )
    parser.add_argument(
        "--remove-padding",
        action="store_true",
        help="run the token-wise operators (Linears, LayerNorms, GELU) on real tokens only, "
        "attention on the padded batch (the same scores in fp32; faster the more a batch is "
        "padded)",
    )


def _add_resume(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-resume", action="store_true", help="run every step again, ignoring OUT_DIR"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="relcomp",
        description="Explain neural retrievers and rerankers with LRP, and compress them by what matters.",
    )
    parser.add_argument("--version", action="version", version=f"relcomp {__version__}")
    global_verbosity = parser.add_mutually_exclusive_group()
    global_verbosity.add_argument(
        "-q",
        "--quiet",
        dest="global_quiet",
        action="store_true",
        help="only warnings and errors, no progress bars (any verb)",
    )
    global_verbosity.add_argument(
        "-v", "--verbose", dest="global_verbose", action="store_true", help="debug messages"
    )
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    for add in (
        _add_evaluate,
        _add_explain,
        _add_relevance,
        _add_patch,
        _add_plan,
        _add_export,
        _add_report,
        _add_compress,
        _add_recover,
        _add_index,
        _add_demo,
    ):
        add(verbs)
    return parser


def _add_recover(verbs: Verbs) -> None:
    from relcomp.recovery import LOSSES

    recover = verbs.add_parser(
        "recover",
        help="distil a compressed model back toward its teacher on a collection's train/dev "
        "queries and corpus pseudo-queries (never test)",
    )
    recover.add_argument(
        "-m", "--model", required=True, help="the student: a model folder (e.g. a pruned one)"
    )
    recover.add_argument("--teacher", required=True, help="the uncompressed model")
    recover.add_argument("-d", "--data", required=True, type=Path, help="BEIR folder")
    recover.add_argument("--steps", required=True, type=_positive_int, help="optimizer steps")
    recover.add_argument(
        "--plan", type=Path, default=None, help="prune the student physically by this plan first"
    )
    recover.add_argument(
        "--batch-size", type=_positive_int, default=4, help="queries per step (default: 4)"
    )
    recover.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (5e-5)")
    recover.add_argument(
        "--max-length", type=_positive_int, default=128, help="input length in training (128)"
    )
    recover.add_argument(
        "--candidates", type=_positive_int, default=8, help="BM25 candidates per query (8)"
    )
    recover.add_argument(
        "--candidate-depth",
        type=_positive_int,
        default=None,
        help="draw the candidates from BM25's top-N: half its top, half from the ranks "
        "below (default: its top --candidates); for a re-ranker that serves deep lists",
    )
    recover.add_argument(
        "--pseudo",
        type=int,
        default=None,
        help="pseudo-queries drawn from the corpus (default: as many as train/dev queries)",
    )
    recover.add_argument(
        "--loss",
        default=None,
        choices=LOSSES.names(),
        help="listwise-kl (cross-encoders, default), margin-mse, embedding (bi-encoders)",
    )
    recover.add_argument("--temperature", type=float, default=None, help="of the loss's softmax")
    recover.add_argument(
        "--hidden-weight",
        type=float,
        default=0.0,
        help="also match each kept layer's hidden states to the teacher layer it came from, "
        "with this weight (default 0: off; costs one teacher forward pass per step)",
    )
    recover.add_argument(
        "--similarity-weight",
        type=float,
        default=1.0,
        help="bi-encoders: weight of the in-batch similarity KL next to the embedding "
        "distance (default 1; 400 = 1/temperature² at the default 0.05: an unscaled KL)",
    )
    recover.add_argument(
        "--label-weight",
        type=float,
        default=0.0,
        help="also teach the judged-relevant candidates (train/dev qrels, pseudo-queries' "
        "source documents; never test), with this weight (default 0: distillation only)",
    )
    recover.add_argument(
        "--gate-queries",
        type=int,
        default=50,
        help="dev/train queries kept out and evaluated at each checkpoint (default: 50)",
    )
    recover.add_argument(
        "--checkpoint-every", type=_positive_int, default=200, help="steps between checkpoints"
    )
    recover.add_argument(
        "--quantize",
        default=None,
        help="quantization-aware: train through the rounding of this precision (int8, int4, "
        "fp16), the one the model will be exported with",
    )
    recover.add_argument("--device", default=None, help="cuda to train on a GPU (default: cpu)")
    recover.add_argument("--seed", type=int, default=13, help="data order and dropout (13)")
    recover.add_argument("-o", "--output", type=Path, required=True, help="the model folder")
    _add_verbosity(recover)
    recover.set_defaults(command=_cmd_recover)


def _cmd_recover(args: argparse.Namespace) -> None:
    from relcomp.pipeline import recover

    result = recover(
        args.model,
        args.teacher,
        args.data,
        args.output,
        steps=args.steps,
        plan=args.plan,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=args.max_length,
        candidates=args.candidates,
        candidate_depth=args.candidate_depth,
        pseudo=args.pseudo,
        loss=args.loss,
        temperature=args.temperature,
        hidden_weight=args.hidden_weight,
        similarity_weight=args.similarity_weight,
        label_weight=args.label_weight,
        gate_queries=args.gate_queries,
        checkpoint_every=args.checkpoint_every,
        quantize=args.quantize,
        device=args.device,
        seed=args.seed,
        show_progress_bar=not args.quiet,
    )
    log = result.log
    print(
        f"recovered {log.student} toward {log.teacher}: {log.steps} steps, "
        f"{log.pairs_seen} pairs, {log.seconds:.0f} s on {log.device}"
    )
    first, last = log.checkpoints[0], log.checkpoints[-1]
    rows = [
        (name.removeprefix("gate_"), first[name], last[name])
        for name in first
        if name != "step" and name in last
    ]
    _print_table(rows, ("measure", "before", "after"))
    print(f"wrote {result.output_dir}")


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(level)
    if not args.verbose:
        # bm25s sets its logger to DEBUG whenever it is imported (possibly later than
        # now), so its notices are filtered at the handler, not by the logger's level.
        for handler in logging.getLogger().handlers:
            handler.addFilter(_not_bm25s_debug)
        import transformers

        transformers.logging.set_verbosity_error()


def _not_bm25s_debug(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name.partition(".")[0] != "bm25s"


def _print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    print(format_table(rows, header))


def _add_ray(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="score pairs and encode documents on Ray: 'local' (the default when the option is "
        "given: this machine, loopback only), 'auto' or host:port; $RELCOMP_RAY when absent. "
        "Needs the ray extra (pip install 'relcomp[ray]')",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="Ray actors, one model copy each (default: every CPU of the cluster)",
    )


def _add_evaluate(verbs: Verbs) -> None:
    evaluate = verbs.add_parser(
        "evaluate", help="retrieval quality of a model (or BM25) on a BEIR collection"
    )
    _add_model(evaluate, "'bm25', a model folder or a hub id")
    evaluate.add_argument("-d", "--data", required=True, type=Path, help="BEIR folder")
    evaluate.add_argument("--split", default="test", help="qrels split (default: test)")
    _add_first_stage(
        evaluate,
        "'bm25' or a bi-encoder to re-rank; default: BM25 for cross-encoders, exhaustive retrieval for bi-encoders",
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
    _add_max_length(evaluate, "longest input in tokens")
    _add_batch_size(evaluate, 32)
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
    evaluate.add_argument(
        "--index",
        type=Path,
        default=None,
        help="retrieve through this index.json (relcomp index); a model folder holding one uses it",
    )
    _add_ray(evaluate)
    _add_verbosity(evaluate)
    evaluate.set_defaults(command=_cmd_evaluate)


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
        index=args.index,
        ray=args.ray,
        workers=args.workers,
    )
    system = (
        report.model
        if report.first_stage is None
        else f"{report.model} (re-ranking {report.first_stage} top-{report.depth})"
    )
    if args.plan:
        system += f" with plan {args.plan}"
    if report.settings.get("index"):
        system += f" through index {report.settings['index']}"
    print(f"{system} on {report.dataset}/{report.split}, {report.n_queries} queries")
    _print_table([(name, value) for name, value in report.measures.items()], ("measure", "value"))
    if report.truncation.get("inputs"):
        print(
            f"truncated: {report.truncation.get('truncated', 0)} of {report.truncation['inputs']} inputs to {report.max_length} tokens"
        )
    print(f"tie rate in top-10: {report.tie_rate:.4f}")
    if report.by_depth:
        print(f"had it re-ranked only the {report.first_stage} top-k (the same scores):")
        depths = {**report.by_depth, str(report.depth): report.measures}
        _print_table(
            [(k, *(f"{v:.4f}" for v in measures.values())) for k, measures in depths.items()],
            ("k", *report.measures),
        )
    if args.output:
        path = report.save(args.output / "quality.json")
        print(f"wrote {path}")


def _add_explain(verbs: Verbs) -> None:
    from relcomp.attribution import method_names

    explain = verbs.add_parser("explain", help="token relevance of one (query, passage) pair")
    _add_model(explain)
    explain.add_argument("-q", "--query", required=True)
    explain.add_argument("-p", "--passage", required=True)
    explain.add_argument(
        "--method",
        default="attnlrp",
        help=_listed(method_names(), "attnlrp"),
    )
    _add_max_length(explain)
    explain.add_argument("--top", type=_positive_int, default=8, help="words to print per side")
    explain.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="write OUT_DIR/explanation.json and OUT_DIR/explanation.html (+ figures/*.png)",
    )
    # -q is --query here: only the long form of --quiet
    verbosity = explain.add_mutually_exclusive_group()
    verbosity.add_argument("--quiet", action="store_true")
    verbosity.add_argument("-v", "--verbose", action="store_true")
    explain.set_defaults(command=_cmd_explain)


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
        from relcomp.reports import write_explanation_report

        # The page first: if its figures fail, no explanation.json is left without it.
        page = write_explanation_report(args.output, [explanation], model=args.model)
        path = atomic_write_json(args.output / "explanation.json", explanation.to_dict())
        print(f"wrote {path}")
        print(f"wrote {page}")


def _add_relevance(verbs: Verbs) -> None:
    relevance = verbs.add_parser("relevance", help="component relevance over calibration pairs")
    _add_model(relevance)
    relevance.add_argument("-d", "--data", required=True, type=Path)
    relevance.add_argument(
        "--split", default="dev", help="calibration split: dev or train, never test"
    )
    relevance.add_argument(
        "--calibration", type=_positive_int, default=256, help="number of calibration pairs"
    )
    relevance.add_argument("--method", default="attnlrp", help="attnlrp (default), cp-lrp, epsilon")
    relevance.add_argument(
        "--contrast",
        action="store_true",
        help="explain each pair's margin over its hard negative (BM25's highest-ranked "
        "document not judged relevant): what orders the documents",
    )
    _add_max_length(relevance)
    _add_batch_size(relevance, 16)
    relevance.add_argument("-o", "--output", type=Path, required=True)
    _add_verbosity(relevance)
    relevance.set_defaults(command=_cmd_relevance)


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
        contrast=args.contrast,
    )
    layers = relevance.by_kind("layer")
    attention = relevance.by_kind("attention")
    mlp = relevance.by_kind("mlp")
    rows = [
        (name, float(layers[name][0]), float(attention[name][0]), float(mlp[name][0]))
        for name in layers
    ]
    explained = "margin over a hard negative" if args.contrast else "score"
    print(
        f"{relevance.method} component relevance of the {explained} over "
        f"{relevance.n_pairs} pairs (mean |R|)"
    )
    _print_table(rows, ("layer", "residual", "attention", "mlp"))
    path = relevance.save(args.output / "component_relevance.json")
    print(f"wrote {path}")


def _add_patch(verbs: Verbs) -> None:
    from relcomp.attribution.corruption import CORRUPTIONS

    patch = verbs.add_parser("patch", help="RelP and AtP against exact activation patching")
    _add_model(patch)
    patch.add_argument("-d", "--data", required=True, type=Path)
    patch.add_argument("--split", default="test")
    patch.add_argument("--pairs", type=_positive_int, default=64)
    patch.add_argument("--corruption", choices=CORRUPTIONS.names(), default="doc-terms")
    _add_max_length(patch)
    patch.add_argument(
        "--residual-positions",
        type=_positive_int,
        default=None,
        help="patch the residual stream at this many random positions per pair (default: all)",
    )
    patch.add_argument("-o", "--output", type=Path, required=True)
    _add_verbosity(patch)
    patch.set_defaults(command=_cmd_patch)


def _cmd_patch(args: argparse.Namespace) -> None:
    from relcomp._io import atomic_write_json
    from relcomp.pipeline import patch

    payload = patch(
        args.model,
        args.data,
        split=args.split,
        max_length=args.max_length,
        pairs=args.pairs,
        corruption=args.corruption,
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


def _add_plan(verbs: Verbs) -> None:
    plan = verbs.add_parser("plan", help="a compression plan from component relevance and a budget")
    _add_model(plan)
    plan.add_argument(
        "--relevance", type=Path, default=None, help="component_relevance.json (relcomp relevance)"
    )
    _add_planning(plan, method_required=True)
    plan.add_argument(
        "--budget",
        required=True,
        help="name=value (bits_per_weight=6, size_mb=40, params_removed=0.3, sparsity=0.5), 40MB, 6bits or 0.3",
    )
    plan.add_argument(
        "--within",
        default=None,
        help="prune-structured: the importance that picks the heads and neurons inside each "
        "layer (e.g. wanda), --importance setting how many each layer loses",
    )
    plan.add_argument(
        "--rank",
        type=_positive_int,
        default=None,
        help="r-sparse: the rank of the low-rank path the small activations take (default 16)",
    )
    plan.add_argument(
        "--activations",
        action="store_true",
        help="mixed-precision: int8 Linears quantize their inputs too (W8A8), channel-wise "
        "after a LayerNorm; simulated in torch (relcomp evaluate --plan needs -d for scales)",
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
    _add_verbosity(plan)
    plan.set_defaults(command=_cmd_plan)


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
        within=args.within,
        rank=args.rank,
        activations=args.activations,
    )
    achieved = result.achieved
    print(f"{result.method}: budget {dict(result.budget)}")
    _print_table(
        [(key, value) for key, value in achieved.items() if isinstance(value, int | float)],
        ("achieved", "value"),
    )
    output = args.output if args.output.suffix == ".json" else args.output / "plan.json"
    print(f"wrote {result.save(output)}")


def _add_export(verbs: Verbs) -> None:
    from relcomp.export import EXPORTERS

    export = verbs.add_parser(
        "export", help="an ONNX Runtime bundle of a model, its plan realised, parity checked"
    )
    _add_model(export, "a model folder or a hub id")
    export.add_argument(
        "--plan", type=Path, default=None, help="a plan.json to realise (default: fp32 as is)"
    )
    export.add_argument("-o", "--output", type=Path, required=True, help="the bundle folder")
    export.add_argument(
        "--max-ndcg-loss",
        type=_non_negative_float,
        default=None,
        help="quality gate: most nDCG@10 points lost on -d's dev/train split (needs -d)",
    )
    export.add_argument(
        "-d",
        "--data",
        type=Path,
        default=None,
        help="BEIR folder for the gate, parity and calibration (default parity: the demo collection)",
    )
    export.add_argument(
        "--variant", default=None, help="names onnx/model_<variant>.onnx (default: from the plan)"
    )
    export.add_argument(
        "--split", default=None, help="dev (default) or train for gate, parity and calibration"
    )
    export.add_argument(
        "--queries", type=_positive_int, default=100, help="gate queries (default: 100)"
    )
    export.add_argument(
        "--depth", type=_positive_int, default=30, help="BM25 candidates per query (default: 30)"
    )
    export.add_argument(
        "--parity-queries", type=_positive_int, default=20, help="parity queries (default: 20)"
    )
    export.add_argument(
        "--calibration",
        type=_positive_int,
        default=64,
        help="pairs calibrating int8(activations=True) (default: 64)",
    )
    _add_max_length(export)
    _add_embeddings(export, "word embeddings: fp32 as the plan (default) or int8 as well")
    _add_first_token(export)
    export.add_argument(
        "--exporter", choices=EXPORTERS, default=EXPORTERS[0], help=f"default: {EXPORTERS[0]}"
    )
    export.add_argument(
        "--no-optimize", action="store_true", help="no attention / LayerNorm / GELU fusion"
    )
    _add_batch_size(export, 32)
    _add_verbosity(export)
    export.set_defaults(command=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> None:
    from relcomp.export import QualityGateError
    from relcomp.pipeline import export

    try:
        bundle = export(
            args.model,
            args.output,
            plan=args.plan,
            data_dir=args.data,
            max_ndcg_loss=args.max_ndcg_loss,
            split=args.split,
            queries=args.queries,
            depth=args.depth,
            parity_queries=args.parity_queries,
            calibration=args.calibration,
            max_length=args.max_length,
            embeddings=args.embeddings,
            first_token=args.first_token,
            remove_padding=args.remove_padding,
            exporter=args.exporter,
            optimize=not args.no_optimize,
            variant=args.variant,
            batch_size=args.batch_size,
            show_progress_bar=not args.quiet,
        )
    except QualityGateError as error:
        print(f"relcomp export: {error}; no bundle written", file=sys.stderr)
        raise SystemExit(EXIT_GATE_FAILED) from None
    _print_export(bundle)
    print(f"wrote {args.output}")


def _print_export(bundle: Any) -> None:
    parity = bundle.parity
    source = parity["source"]
    rows: list[tuple[str, Any]] = [
        ("onnx file", bundle.onnx_file),
        ("size (MB)", round(bundle.size_mb, 2)),
        ("fp32 export (MB)", round(bundle.fp32_size_bytes / 1e6, 2)),
        ("exporter / attention", f"{bundle.exporter} / {bundle.fusion.get('attention_operator')}"),
        (
            f"parity ({parity['n_queries']} queries of {source['dataset']}/{source['split']})",
            f"{parity['n_pairs']} pairs",
        ),
        ("  max |Δscore|", parity["max_abs_diff"]),
        ("  mean |Δscore|", parity["mean_abs_diff"]),
        (
            "  Kendall τ (mean / min)",
            f"{parity['kendall_tau']:.4f} / {parity['kendall_tau_min']:.4f}",
        ),
        ("  top-10 overlap", parity["top10_overlap"]),
        (
            "  tie rate (torch / onnx)",
            f"{parity['tie_rate_reference']:.4f} / {parity['tie_rate_candidate']:.4f}",
        ),
    ]
    if bundle.gate:
        gate = bundle.gate
        rows.append(
            (
                f"gate ({gate['dataset']}/{gate['split']}, {gate['n_queries']} queries)",
                f"nDCG@10 {gate['reference']:.4f} → {gate['candidate']:.4f}, "
                f"{gate['loss_points']:.2f} points lost (≤ {gate['max_ndcg_loss']:g}): passed",
            )
        )
    print(f"{bundle.model} → {bundle.model_kind} bundle ({bundle.variant})")
    _print_table(rows, ("export", "value"))
    if bundle.notes:
        print("notes:")
        for note in bundle.notes:
            print(f"  - {note}")


def _add_report(verbs: Verbs) -> None:
    report = verbs.add_parser(
        "report", help="rebuild OUT_DIR/report.html from a compress run's JSON files"
    )
    report.add_argument(
        "run_dir", type=Path, metavar="OUT_DIR", help="a relcomp compress output folder"
    )
    _add_verbosity(report)
    report.set_defaults(command=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> None:
    from relcomp.reports import write_report

    print(f"wrote {write_report(args.run_dir)}")


def _print_compression(result: Any) -> None:
    """The quality / size / speed table of a compress run, then where its files are."""
    from relcomp.artifacts import INDEX_QUALITY_FILE, NDCG_AT_10

    quality = result.quality
    reference, compressed = quality["reference"], quality["compressed"]
    print(
        f"{quality['model']} on {quality['dataset']}/{quality['split']}, "
        f"{quality['n_queries']} queries ({quality['protocol']} protocol)"
    )
    rows: list[tuple[Any, ...]] = []
    for measure in quality["measures"]:
        difference = quality["difference"][measure]
        rows.append(
            (
                measure,
                reference["measures"][measure],
                compressed["measures"][measure],
                difference["delta"],
                difference["p_value"],
            )
        )
    rows.append(("size (MB)", reference["size_mb"], compressed["size_mb"], "", ""))
    for label, key in (("latency p50 (ms)", "p50"), ("latency p95 (ms)", "p95")):
        rows.append((label, reference["latency_ms"][key], compressed["latency_ms"][key], "", ""))
    rows.append(("pairs/s (batch 32)", reference["pairs_per_s"], compressed["pairs_per_s"], "", ""))
    _print_table(rows, ("", reference["name"], compressed["name"], "Δ", "p (paired t)"))
    candidates = quality.get("candidates") or []
    if len(candidates) > 1:
        split = candidates[0].get("split", "")
        print(f"\nplans tried (nDCG@10 on {split}; the smallest that passed the gate is kept):")
        _print_table(
            [
                (
                    c["name"] + (" (kept)" if c.get("chosen") else ""),
                    c["size_mb"],
                    c["latency_ms"],
                    c[NDCG_AT_10.lower()],
                    c["loss_points"],
                    {True: "passed", False: "failed"}.get(c.get("passed"), "no gate"),
                )
                for c in candidates
            ],
            ("plan", "MB", "p50 ms", NDCG_AT_10, "points lost", "gate"),
        )
    gate = quality.get("gate")
    if gate and gate.get("kind") == "agreement":
        print(
            f"quality gate: agreement with the uncompressed model on {gate['n_queries']} "
            f"{gate['split']}: top-10 overlap {gate['top10_overlap']:.3f} (at least "
            f"{gate['min_overlap']:g}), Kendall tau {gate['kendall_tau']:.3f} (at least "
            f"{gate['min_tau']:g}): passed"
        )
    elif gate:
        print(
            f"quality gate: {gate['loss_points']:.2f} nDCG@10 points lost on "
            f"{gate['split']} (at most {gate['max_ndcg_loss']:g}): passed"
        )
    index_file = Path(result.output_dir) / INDEX_QUALITY_FILE
    if index_file.is_file():
        index = json.loads(index_file.read_text(encoding="utf-8"))
        settings, measures = index["index"], index["measures"]
        print(
            f"index: {settings['precision']}, {settings['dims']} dims, rescore x"
            f"{settings['rescore']}: {index['bytes_per_document']['index']:g} bytes per document "
            f"(float32: {index['bytes_per_document']['float32']:g}), nDCG@10 "
            f"{measures['float32'][NDCG_AT_10]:.4f} -> {measures['index'][NDCG_AT_10]:.4f} "
            "against the float index"
        )
    print(f"bundle: {result.output_dir}")
    print(f"report: {result.report if result.report else result.output_dir / 'quality.json'}")


def _run_flow(command: str, flow: Any) -> None:
    from relcomp.export import QualityGateError

    try:
        result = flow()
    except QualityGateError as error:
        print(f"relcomp {command}: {error}", file=sys.stderr)
        raise SystemExit(EXIT_GATE_FAILED) from None
    _print_compression(result)


def _add_compress(verbs: Verbs) -> None:
    from relcomp.evaluation import DEFAULT_MIN_OVERLAP, DEFAULT_MIN_TAU, PROTOCOLS

    compress = verbs.add_parser(
        "compress",
        help="the whole flow: relevance, plan, ONNX export, quality gate, evaluation, report",
    )
    _add_model(compress, "a model folder or a hub id")
    compress.add_argument("-d", "--data", required=True, type=Path, help="BEIR folder")
    compress.add_argument(
        "--budget",
        required=True,
        nargs="+",
        help="bits_per_weight=6, size_mb=40, params_removed=0.3, sparsity=0.5; or 40MB, 6bits, "
        "0.3. Several budgets: each is planned, exported, gated and timed, and the smallest "
        "bundle that passes the gate is kept (the report plots them all)",
    )
    _add_planning(compress, method_required=False)
    _add_embeddings(
        compress,
        "word embeddings in the bundle: fp32 or int8 (default: int8 with --quantize int8 or "
        "int4, else fp32 as the plan)",
        default=None,
    )
    _add_first_token(compress)
    compress.add_argument(
        "--max-ndcg-loss",
        type=_non_negative_float,
        default=0.5,
        help="quality gate: most nDCG@10 points lost on the dev/train split (default: 0.5); "
        "a collection with no dev/train split is gated on agreement instead (below)",
    )
    compress.add_argument(
        "--min-agreement-overlap",
        type=float,
        default=DEFAULT_MIN_OVERLAP,
        help="quality gate of a collection with no dev/train split: least mean top-10 "
        f"overlap with the uncompressed model on corpus pseudo-queries, 0..1 "
        f"(default: {DEFAULT_MIN_OVERLAP:g})",
    )
    compress.add_argument(
        "--min-agreement-tau",
        type=float,
        default=DEFAULT_MIN_TAU,
        help="and its least mean Kendall tau over each pseudo-query's candidates, -1..1 "
        f"(default: {DEFAULT_MIN_TAU:g})",
    )
    compress.add_argument(
        "--no-gate", action="store_true", help="skip the quality gate (not recommended)"
    )
    compress.add_argument(
        "--protocol",
        default="quick",
        choices=tuple(PROTOCOLS),
        help="quick: 100 queries, top-30, 256 tokens (default); full: all queries, top-100",
    )
    compress.add_argument("--split", default="test", help="the reported split (default: test)")
    compress.add_argument(
        "--calibration-split",
        default=None,
        help="dev (default) or train; never the reported split. Without either, corpus "
        "pseudo-queries (pseudo-queries)",
    )
    compress.add_argument(
        "--calibration", type=_positive_int, default=64, help="calibration pairs (default: 64)"
    )
    compress.add_argument(
        "--queries", type=_positive_int, default=None, help="judged queries per split"
    )
    compress.add_argument("--depth", type=_positive_int, default=None, help="first-stage depth")
    _add_max_length(compress, "longest input in tokens")
    _add_first_stage(
        compress,
        "'bm25' or a bi-encoder; default: BM25 for cross-encoders, exhaustive for bi-encoders",
    )
    compress.add_argument(
        "--explanations", type=int, default=3, help="(query, top document) pairs to explain"
    )
    _add_resume(compress)
    compress.add_argument(
        "--recover",
        type=_positive_int,
        default=None,
        metavar="STEPS",
        help="after structural compression, distil the pruned model back toward the "
        "original for STEPS steps on train/dev and corpus pseudo-queries (never test)",
    )
    compress.add_argument(
        "--recovery-max-length",
        type=_positive_int,
        default=128,
        help="input length while recovering (default: 128)",
    )
    compress.add_argument(
        "--recovery-hidden-weight",
        type=float,
        default=0.0,
        help="with --recover, also match each kept layer's hidden states to the original's, "
        "with this weight (default 0: off; see relcomp recover --hidden-weight)",
    )
    compress.add_argument(
        "--recovery-similarity-weight",
        type=float,
        default=1.0,
        help="with --recover and a bi-encoder, the weight of the in-batch similarity KL "
        "(default 1; see relcomp recover --similarity-weight)",
    )
    compress.add_argument(
        "--recovery-label-weight",
        type=float,
        default=0.0,
        help="with --recover, also teach the judged-relevant candidates of the train/dev "
        "queries, with this weight (default 0: off; see relcomp recover --label-weight)",
    )
    compress.add_argument(
        "--recovery-candidate-depth",
        type=_positive_int,
        default=None,
        metavar="N",
        help="with --recover, draw each recovery query's candidates from BM25's top-N, half "
        "its top and half deeper (default: its top 8; see relcomp recover --candidate-depth)",
    )
    compress.add_argument(
        "--recovery-pseudo",
        type=int,
        default=None,
        metavar="N",
        help="with --recover, N corpus pseudo-queries beside the train/dev queries "
        "(default: as many as those)",
    )
    compress.add_argument(
        "--quantize",
        default=None,
        help="then quantize: a precision everywhere (int8, int4, fp16) or a bits budget "
        "(6bits, mixed precision planned on the recovered model)",
    )
    compress.add_argument(
        "--quantization-aware",
        action="store_true",
        help="with --recover and a --quantize precision, recover through that precision's "
        "rounding instead of in fp32",
    )
    _add_compress_index(compress)
    compress.add_argument("-o", "--output", type=Path, required=True, help="the run folder")
    _add_ray(compress)
    _add_verbosity(compress)
    compress.set_defaults(command=_cmd_compress)


def _add_compress_index(compress: argparse.ArgumentParser) -> None:
    """``relcomp index``'s settings, for the bundle ``compress`` makes (bi-encoders)."""
    from relcomp.index import DIMENSION_SELECTIONS, PRECISIONS

    index = compress.add_argument_group(
        "index (bi-encoders)",
        "after the gate, build the bundle's corpus index and measure it against the float index",
    )
    index.add_argument(
        "--index", default=None, metavar="PRECISION", help=f"{', '.join(PRECISIONS)}"
    )
    index.add_argument(
        "--index-dims",
        type=int,
        default=None,
        help="coordinates to keep, 1..dimension (default: all)",
    )
    index.add_argument(
        "--index-rescore", type=int, default=1, help="rescore R x k candidates (default 1: none)"
    )
    index.add_argument(
        "--index-dim-selection",
        default="relevance",
        help=f"how --index-dims are chosen: {', '.join(n for n in DIMENSION_SELECTIONS if n != 'all')}",
    )


def _cmd_compress(args: argparse.Namespace) -> None:
    from relcomp.pipeline import compress

    if args.explanations < 0:
        raise ValueError(f"--explanations must be 0 or more, got {args.explanations}")
    _run_flow(
        "compress",
        lambda: compress(
            args.model,
            args.data,
            args.budget,
            args.output,
            method=args.method,
            importance=args.importance,
            embeddings=args.embeddings,
            first_token=args.first_token,
            remove_padding=args.remove_padding,
            max_ndcg_loss=None if args.no_gate else args.max_ndcg_loss,
            min_agreement_overlap=args.min_agreement_overlap,
            min_agreement_tau=args.min_agreement_tau,
            protocol=args.protocol,
            split=args.split,
            calibration_split=args.calibration_split,
            calibration=args.calibration,
            queries=args.queries,
            depth=args.depth,
            max_length=args.max_length,
            first_stage=args.first_stage,
            explanations=args.explanations,
            resume=not args.no_resume,
            recover=args.recover,
            quantize=args.quantize,
            recovery_max_length=args.recovery_max_length,
            quantization_aware=args.quantization_aware,
            recovery_hidden_weight=args.recovery_hidden_weight,
            recovery_similarity_weight=args.recovery_similarity_weight,
            recovery_label_weight=args.recovery_label_weight,
            recovery_candidate_depth=args.recovery_candidate_depth,
            recovery_pseudo=args.recovery_pseudo,
            show_progress_bar=not args.quiet,
            index=args.index,
            index_dims=args.index_dims,
            index_rescore=args.index_rescore,
            index_dim_selection=args.index_dim_selection,
            ray=args.ray,
            workers=args.workers,
        ),
    )


def _add_demo(verbs: Verbs) -> None:
    demo = verbs.add_parser(
        "demo",
        help="the whole flow on all-MiniLM-L6-v2 and the shipped demo collection, offline",
    )
    demo.add_argument(
        "-o", "--output", type=Path, default=Path("relcomp-demo"), help="default: ./relcomp-demo"
    )
    _add_resume(demo)
    _add_verbosity(demo)
    demo.set_defaults(command=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> None:
    from relcomp.pipeline import demo

    _run_flow(
        "demo",
        lambda: demo(args.output, resume=not args.no_resume, show_progress_bar=not args.quiet),
    )


def _add_index(verbs: Verbs) -> None:
    from relcomp.index import DIMENSION_SELECTIONS, PRECISIONS, RESCORE_WITH

    index = verbs.add_parser(
        "index", help="compress a retriever's corpus index: precision, dimensions, rescoring"
    )
    index.add_argument("-m", "--model", required=True, help="a bi-encoder folder, bundle or hub id")
    index.add_argument("-d", "--data", required=True, type=Path, help="BEIR folder")
    index.add_argument(
        "--precision", default="float32", help=f"{', '.join(PRECISIONS)} (default: float32)"
    )
    index.add_argument(
        "--dims", type=int, default=None, help="coordinates to keep, 1..dimension (default: all)"
    )
    index.add_argument(
        "--dim-selection",
        default="relevance",
        help=f"how --dims are chosen: {', '.join(n for n in DIMENSION_SELECTIONS if n != 'all')} (pca rotates)",
    )
    index.add_argument(
        "--rescore", type=int, default=1, help="rescore R x k candidates (default 1: none)"
    )
    index.add_argument(
        "--rescore-with",
        default=None,
        help=f"{', '.join(RESCORE_WITH)}: document vectors rescoring reads (default: int8 for binary, else float32)",
    )
    index.add_argument(
        "--split", default="test", help="split the index is measured on (default: test)"
    )
    index.add_argument(
        "--calibration-split", default=None, help="relevance's queries (default: dev, else train)"
    )
    index.add_argument(
        "--calibration", type=Path, default=None, help="reuse dims and ranges of this index.json"
    )
    index.add_argument(
        "--negatives", type=int, default=10, help="hard negatives per calibration query"
    )
    index.add_argument("--seed", type=int, default=13, help="random selection's seed")
    index.add_argument(
        "--max-length", type=_positive_int, default=None, help="longest input in tokens"
    )
    index.add_argument("--batch-size", type=_positive_int, default=32)
    index.add_argument("--no-cache", action="store_true", help="encode the corpus again")
    index.add_argument("-o", "--output", type=Path, required=True, help="folder for index.json")
    _add_verbosity(index)
    index.set_defaults(command=_cmd_index)


def _cmd_index(args: argparse.Namespace) -> None:
    from relcomp.index import build_index

    result = build_index(
        args.model,
        args.data,
        precision=args.precision,
        dims=args.dims,
        dim_selection=args.dim_selection,
        rescore=args.rescore,
        rescore_with=args.rescore_with,
        split=args.split,
        calibration_split=args.calibration_split,
        calibration=args.calibration,
        negatives=args.negatives,
        seed=args.seed,
        max_length=args.max_length,
        batch_size=args.batch_size,
        use_cache=not args.no_cache,
        show_progress_bar=not args.quiet,
        output=args.output,
    )
    quality, settings = result.quality, result.settings
    print(
        f"{settings.model}: {settings.precision} index, {settings.kept} of {settings.dimension} "
        f"dims ({settings.selection}), rescore x{settings.rescore} with {settings.rescore_with}; "
        f"{quality['dataset']}/{quality['split']}, {quality['n_queries']} queries"
    )
    per_doc = quality["bytes_per_document"]
    rows = [
        (
            "bytes / document",
            f"{per_doc['float32']:g}",
            f"{per_doc['index']:g}"
            + (f" + {per_doc['rescore']:g} to rescore" if per_doc["rescore"] else ""),
        ),
        *(
            (
                m,
                f"{quality['measures']['float32'][m]:.4f}",
                f"{quality['measures']['index'][m]:.4f}",
            )
            for m in quality["measures"]["index"]
        ),
    ]
    _print_table(rows, ("", "float32", "index"))
    for path in result.paths:
        print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.quiet = args.quiet or args.global_quiet
    args.verbose = args.verbose or args.global_verbose
    if args.quiet and args.verbose:
        parser.error("-q/--quiet and -v/--verbose exclude each other")
    _configure_logging(args)
    try:
        from relcomp.checks import cleared_on_failure
        from relcomp.preflight import check_arguments

        check_arguments(args)  # bad arguments fail here, before any work or any output
        with cleared_on_failure(getattr(args, "output", None)):  # no empty folder left
            args.command(args)
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
