"""Compression quality: nDCG@10 against size for relevance-driven plans and blind baselines.

For each model, dataset and planner family (mixed precision, structured and
unstructured pruning, TEAL's ``sparsify`` and R-Sparse's ``r-sparse``, whose budget is
the same share of multiply-adds saved), every importance source plans under the
same budgets; each plan is applied (``compress_``, or ``prune_physically`` for head
and neuron pruning) and evaluated on the test split. Calibration (component
relevance, Taylor scores, activation statistics) uses dev/train queries only
(nfcorpus dev, scifact train). The uncompressed model is the row ``reference``.

    python benchmarks/compression_quality.py --protocol quick --datasets scifact \\
        --families mixed-precision prune-structured --methods relevance uniform magnitude \\
        --output benchmarks/results/compression_quality.json

Writes ``{"<model>": {"<dataset>": {"<family>": [{"budget", "method", "ndcg@10",
"size_mb"}, …]}}, "_meta": {"protocol", "machine", "claims"}}`` (rewritten after every
row, so a stopped run keeps its rows and ``--resume`` runs only the missing ones), a
table, and one PNG per dataset and family beside the JSON. Target (the project's
claim, checked in ``_meta.claims`` per budget): at equal size, the relevance plan loses
at most half the nDCG@10 that the best blind baseline loses. The quick sweep judges a
budget once every blind baseline ran there; ``--protocol full`` confirms the sweep's best
plans (e.g. ``--levels 1 --methods relevance taylor``), so it judges against the blind
plans that ran and lists them in each verdict (``blind_run``). ``--markdown FILE…``
prints the table of every budget, and ``--summary FILE…`` the verdicts counted per model
and family; both read result files and run nothing.

``--recover STEPS`` asks which choice recovers best: each structured plan (budgets 30 /
50 / 70 % of the parameters removed; ``--levels 1`` is 50 %) is pruned physically and
distilled back toward the uncompressed model with :func:`relcomp.recovery.recover` for
the same ``STEPS`` on the same data (the collection's train/dev queries and corpus
pseudo-queries, never test; the teacher's scores cached once), then evaluated. Each
row keeps its nDCG@10 before recovery and the recovery's log (steps, pairs seen,
seconds, held-out loss); verdicts compare the methods that ran, with a paired test
against the best blind one. Checkpoints go to ``--recover-work``, so a stopped run
resumes mid-recovery.

    python benchmarks/compression_quality.py --datasets scifact --families prune-structured \
        --levels 1 --methods relevance taylor magnitude random --recover 300 \
        --output benchmarks/results/compression_quality_reranker_recovered.json

``--ray [ADDRESS]`` (and ``--workers N``) evaluates each (plan, collection) cell as a
Ray task (:mod:`relcomp.distributed`): relevance, statistics and plans are computed
here once, the model and statistics go to the object store once, and each row is
written as its report arrives, so ``--resume`` works as without Ray.

Relevance-driven methods: ``relevance`` (AttnLRP component relevance, net relevance
per Linear), ``relevance-l1`` (the same relevance, each Linear, head and neuron read by
the absolute relevance through it), ``relp`` and ``relp-l1`` (relevance patching on
queries of the same calibration split, document terms corrupted), and ``margin``
(AttnLRP relevance of each calibration pair's margin over its hard negative, BM25's
highest-ranked document not judged relevant: only what orders the documents counts).
Each is checked against the claim on its own. ``source+within`` (``relevance-l1+wanda``,
``taylor+wanda``…), for structured pruning only, takes ECoFLaP's two steps: ``source``
sets how many heads and neurons each layer loses, ``within`` picks which; ``wanda``
alone scores heads and neurons by ``|W|·‖X‖``. The claim compares against the best
blind plan measured at a budget, two-step ones included. A bi-encoder is evaluated two
ways (rows carry ``retrieval``): dense retrieval over the whole corpus and re-ranking
of BM25's candidates.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import logging
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import (
    MAX_LENGTH,
    add_ray_options,
    beir_path,
    machine,
    print_table,
    reranker_path,
    set_threads,
    write_json,
)
from relcomp.artifacts import CompressionPlan, QualityReport
from relcomp.attribution.corruption import build_pairs
from relcomp.attribution.patching import RelevancePatching
from relcomp.compression import compress_, estimate_size, prune_physically
from relcomp.compression.planners import PRECISION_LADDER, calibration_statistics, make_plan
from relcomp.evaluation import load_beir, paired_test
from relcomp.models import RankingModel, load_model
from relcomp.models.loading import DEFAULT_RETRIEVER, default_retriever_path
from relcomp.pipeline import calibration_pairs, component_relevance, evaluate
from relcomp.recovery import RecoveryData, RecoveryLog, recover, recovery_data

logger = logging.getLogger("compression_quality")

CALIBRATION_SPLIT = {"scifact": "train", "nfcorpus": "dev"}
BUDGETS: dict[str, list[dict[str, float]]] = {
    "mixed-precision": [{"bits_per_weight": b} for b in (4.5, 5.0, 6.0)],
    "prune-structured": [{"params_removed": r} for r in (0.1, 0.2, 0.3)],
    "prune-unstructured": [{"params_removed": r} for r in (0.3, 0.5, 0.7)],
    "sparsify": [{"sparsity": s} for s in (0.3, 0.5, 0.7)],
    "r-sparse": [{"sparsity": s} for s in (0.3, 0.5, 0.7)],
}


#: Structured budgets with ``--recover``: recovery is what makes the larger ones usable.
RECOVERY_BUDGETS: dict[str, list[dict[str, float]]] = {
    "prune-structured": [{"params_removed": r} for r in (0.3, 0.5, 0.7)],
}


@dataclasses.dataclass(frozen=True)
class Recovery:
    """``--recover``: the same steps on the same data for every plan of a collection."""

    data: RecoveryData
    steps: int
    work: Path
    max_length: int = 128

    def run(
        self, student: RankingModel, teacher: RankingModel, plan: Any
    ) -> tuple[RankingModel, RecoveryLog]:
        """``student`` distilled toward ``teacher``; checkpoints in a folder of its own."""
        digest = hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True).encode()).hexdigest()
        return recover(
            student,
            teacher,
            self.data,
            steps=self.steps,
            max_length=self.max_length,
            checkpoint_dir=self.work / digest[:16],
            show_progress_bar=False,
        )


#: Planner options per family. int4 with blocks of 32 everywhere (5 bits per weight)
#: loses nothing measurable on the reranker, so the precision ladder starts coarser.
PLAN_OPTIONS: dict[str, dict[str, Any]] = {
    "mixed-precision": {"ladder": ("int4(block_size=128)", *map(str, PRECISION_LADDER))},
    # R-Sparse's low-rank path: rank 16 of 384 costs 5–8 % of a Linear's multiply-adds,
    # which its thresholds pay for (the budget is compute saved, as for sparsify)
    "r-sparse": {"rank": 16},
}


def evaluate_plan(
    model: RankingModel,
    plan: Any,
    settings: dict[str, Any],
    statistics: Any,
    recovery: Recovery | None = None,
) -> Any:
    """The quality of ``model`` under ``plan`` (restored afterwards).

    With ``recovery`` (structural plans only): the pruned model's report, the recovered
    model's and the recovery's log.
    """
    structural, rest = plan.split_structural()
    if recovery is not None:
        if rest.entries or not structural.entries:
            raise SystemExit("--recover: only structural plans (prune-structured) are recovered")
        pruned = prune_physically(model, structural)
        before = evaluate(pruned, **settings)
        recovered, log = recovery.run(pruned, model, plan)
        return before, evaluate(recovered, **settings), log
    if structural.entries:
        pruned = prune_physically(model, structural)
        assert pruned.cache_key != model.cache_key
        with compress_(pruned, rest, statistics=statistics) if rest.entries else _nothing():
            return evaluate(pruned, **settings)
    with compress_(model, plan, statistics=statistics):
        assert model.variant != "fp32"  # caches key on model.cache_key, which holds the variant
        return evaluate(model, **settings)


def evaluate_cells(
    model: RankingModel,
    cells: Iterator[tuple[str, str, str, Any, list[dict[str, Any]]]],
    data: Path,
    quick: bool,
    statistics: Any,
    args: argparse.Namespace,
) -> Iterator[tuple[tuple[str, str, str, Any, list[dict[str, Any]]], QualityReport, float]]:
    """``(cell, its report, seconds)`` for each cell: here in turn, or as Ray tasks (``--ray``).

    On Ray the model and the calibration statistics go to the object store once; each
    task applies its plan to its own copy and evaluates it; reports come back in the
    order they finish, and the caller writes each row as it arrives.
    """
    from relcomp.distributed import ray_setting

    address = ray_setting(args.ray)
    recovery = getattr(args, "recovery", None)
    if address is None:
        for cell in cells:
            tic = time.time()
            _, _, retrieval, plan, _ = cell
            yield (
                cell,
                evaluate_plan(model, plan, settings(data, retrieval, quick), statistics, recovery),
                (time.time() - tic),
            )
        return
    import sys

    import ray
    from ray import cloudpickle

    from relcomp.distributed import RayExecutor

    if __name__ != "__main__":  # imported (by the tests): workers cannot import this script
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    todo = list(cells)
    with RayExecutor(address, args.workers) as executor:
        executor.connect()
        model_ref, statistics_ref = ray.put(model), ray.put(statistics)
        arguments = [
            (model_ref, plan, settings(data, retrieval, quick), statistics_ref, recovery)
            for _, _, retrieval, plan, _ in todo
        ]
        for index, (report, seconds) in executor.map_tasks(timed_cell, arguments):
            yield todo[index], report, seconds


def timed_cell(
    model: RankingModel,
    plan: Any,
    settings: dict[str, Any],
    statistics: Any,
    recovery: Recovery | None = None,
) -> tuple[Any, float]:
    """One sweep cell, as a Ray task runs it: its report(s) and its seconds."""
    tic = time.time()
    return evaluate_plan(model, plan, settings, statistics, recovery), time.time() - tic


def by_depth(report: QualityReport) -> dict[str, float]:
    """nDCG@10 had the re-ranker seen only the first stage's top-k (``{"30": …}``)."""
    return {k: measures["nDCG@10"] for k, measures in report.by_depth.items()}


def per_query(report: QualityReport) -> dict[str, float]:
    """nDCG@10 per query: what the paired test of the claim needs."""
    return {qid: round(values["nDCG@10"], 6) for qid, values in report.per_query.items()}


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """nDCG@10 against size; against activation sparsity where the size does not change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_sparsity = all(r["budget"] is None or "sparsity" in r["budget"] for r in rows)

    def x(row: dict[str, Any]) -> float:
        if by_sparsity:
            return 0.0 if row["budget"] is None else float(row["budget"]["sparsity"])
        return float(row["size_mb"])

    figure, axes = plt.subplots(figsize=(5, 3.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((x(r), r["ndcg@10"]) for r in rows if r["method"] == method)
        style = "*" if method == "reference" else "o-"
        axes.plot([p[0] for p in points], [p[1] for p in points], style, label=method)
    axes.set_xlabel(
        "activation sparsity (share of multiply-adds saved)" if by_sparsity else "size (MB)"
    )
    axes.set_ylabel("nDCG@10")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_family(
    rows: list[dict[str, Any]],
    model: str,
    dataset: str,
    family: str,
    retrieval: str,
    output: Path,
) -> None:
    """The PNG of one family's rows under one retrieval, named after ``output``."""
    plot(
        [r for r in rows if _retrieval(r) == retrieval],
        f"{model} / {dataset} / {family} ({retrieval})",
        output.with_name(
            f"{output.stem}_{dataset}_{family}{'' if retrieval == 'bm25' else '_' + retrieval}.png"
        ),
    )


def merge_into(output: Path, files: list[str]) -> None:
    """Add the rows of ``files`` to ``output`` (its own rows win), recheck claims, redraw PNGs.

    For runs split across processes (one method or level apart, each into its own
    file): the result is what one run into ``output`` would have written.
    """
    if not output.exists():
        raise SystemExit(f"--merge: no such file {output}")
    base = json.loads(output.read_text())
    payload = merge([base, *(json.loads(Path(f).read_text()) for f in files)])
    earlier = base.get("_meta", {}).get("merged", [])
    meta = {
        **base.get("_meta", {}),
        "merged": list(dict.fromkeys([*earlier, *(Path(f).name for f in files)])),
    }
    payload["_meta"] = meta
    meta["claims"] = claims(payload)
    write_json(output, payload)
    for model, dataset, family, retrieval, rows in groups(payload):
        if any(r["method"] != "reference" for r in rows):
            plot_family(rows, model, dataset, family, retrieval, output)
    print(markdown([payload]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output")
    parser.add_argument(
        "--markdown",
        nargs="+",
        metavar="JSON",
        help="print the table of these result files as markdown (docs/benchmarks/) and exit (runs nothing)",
    )
    parser.add_argument(
        "--summary",
        nargs="+",
        metavar="JSON",
        help="print, per model and family, how relevance fared over every judged budget "
        "of these result files and exit (runs nothing)",
    )
    parser.add_argument("--protocol", choices=("quick", "full"), default="quick")
    parser.add_argument("--models", nargs="+", default=[str(reranker_path())])
    parser.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument("--families", nargs="+", default=list(BUDGETS))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["relevance", "relevance-l1", "uniform", "random", "magnitude", "taylor"],
    )
    parser.add_argument("--calibration", type=int, default=64, help="calibration pairs")
    parser.add_argument(
        "--levels",
        nargs="+",
        type=int,
        default=[0, 1, 2],
        help="which of each family's three budgets to run (0: the smallest)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows already in --output and run only the missing ones",
    )
    parser.add_argument(
        "--backfill-depths",
        action="store_true",
        help="with --resume: re-evaluate finished BM25 rows that lack ndcg@10_by_depth "
        "(rows written before it existed); their scores come from the on-disk cache "
        "when it has them, and must come out the same",
    )
    parser.add_argument(
        "--depths",
        nargs="+",
        metavar="JSON",
        help="print, per budget and method of these result files, nDCG@10 at each "
        "re-ranking depth, and exit (runs nothing)",
    )
    parser.add_argument(
        "--recovery-table",
        nargs="+",
        metavar="JSON",
        help="print, per method of these --recover result files, nDCG@10 before and after "
        "recovery and the paired test against relevance, and exit (runs nothing)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="add these result files' rows to --output, recheck claims, redraw PNGs and exit",
    )
    parser.add_argument(
        "--recover",
        type=int,
        metavar="STEPS",
        help="recover each structured plan for STEPS steps before evaluating it "
        "(budgets 30/50/70 %%; see the module doc)",
    )
    parser.add_argument(
        "--recover-work",
        type=Path,
        help="recovery checkpoints (default: a folder beside --output)",
    )
    add_ray_options(
        parser,
        "evaluate each (plan, collection) cell as a Ray task (relevance and statistics are "
        "computed here once)",
        "Ray tasks at once (default: every CPU)",
    )
    args = parser.parse_args()
    if args.merge:
        if not args.output:
            parser.error("--merge needs --output, the file the rows are added to")
        merge_into(Path(args.output), args.merge)
        return
    if args.markdown:
        print(markdown([json.loads(Path(f).read_text()) for f in args.markdown]))
        return
    if args.summary:
        print(summary([json.loads(Path(f).read_text()) for f in args.summary]))
        return
    if args.depths:
        print(depth_markdown([json.loads(Path(f).read_text()) for f in args.depths]))
        return
    if args.recovery_table:
        print(recovery_markdown([json.loads(Path(f).read_text()) for f in args.recovery_table]))
        return
    if args.backfill_depths and not args.resume:
        parser.error("--backfill-depths works on the rows of --output: add --resume")
    if not args.output:
        parser.error("--output is required (unless --markdown)")
    if not set(args.levels) <= {0, 1, 2}:
        raise SystemExit(f"--levels takes 0, 1 and 2, got {args.levels}")
    two_step = [m for m in args.methods if split_method(m)[1]]
    if two_step and set(args.families) != {"prune-structured"}:
        raise SystemExit(
            f"--methods {' '.join(two_step)}: 'source+within' methods are prune-structured "
            f"only; run them with --families prune-structured"
        )
    if args.recover is not None:
        if args.recover <= 0:
            raise SystemExit(f"--recover takes a positive number of steps, got {args.recover}")
        if set(args.families) != {"prune-structured"}:
            raise SystemExit(
                f"--recover: only prune-structured plans are recovered, got --families "
                f"{' '.join(args.families)}; add --families prune-structured"
            )
        if args.backfill_depths:
            raise SystemExit("--recover cannot --backfill-depths: its rows are new models")
    budgets = RECOVERY_BUDGETS if args.recover else BUDGETS
    set_threads(args.threads)
    quick = args.protocol == "quick"
    output = Path(args.output)
    payload: dict[str, Any] = {}
    if args.resume and output.exists():
        payload = json.loads(output.read_text())
        if "results" in payload:  # the layout before the model keys moved to the top
            payload = {**payload.pop("results"), "_meta": payload}
        protocol = payload.get("_meta", {}).get("protocol")
        if protocol != args.protocol:
            raise SystemExit(
                f"--resume: {output} holds the {protocol} protocol, not {args.protocol}"
            )
        steps = payload.get("_meta", {}).get("recovery", {}).get("steps")
        if steps != args.recover:
            raise SystemExit(
                f"--resume: {output} holds rows recovered for {steps} steps, not {args.recover}"
            )
    meta = payload.setdefault("_meta", {})
    meta.update(
        protocol=args.protocol,
        machine=machine(),
        budgets=budgets,
        plan_options=PLAN_OPTIONS,
        calibration={d: f"{s} ({args.calibration} pairs)" for d, s in CALIBRATION_SPLIT.items()},
    )
    table = []
    started = time.time()
    for model_path in args.models:
        model = load_model(model_path)
        model.max_length = min(model.max_length, MAX_LENGTH[args.protocol][model.kind])
        for dataset in args.datasets:
            data = beir_path(dataset)
            split = CALIBRATION_SPLIT[dataset]
            retrievals = RETRIEVALS[model.kind]
            pairs = calibration_pairs(load_beir(data, split), args.calibration)
            relevance = {
                "attnlrp": component_relevance(
                    model, data, split=split, calibration=args.calibration, show_progress_bar=False
                )
            }
            wanted = {
                RELEVANCE_METHODS[base][0]
                for base, _ in map(split_method, args.methods)
                if base in RELEVANCE_METHODS
            }
            if "relp" in wanted:
                relevance["relp"] = relp_relevance(model, data, split, args.calibration)
            if "attnlrp-margin" in wanted:
                relevance["attnlrp-margin"] = component_relevance(
                    model,
                    data,
                    split=split,
                    calibration=args.calibration,
                    show_progress_bar=False,
                    contrast=True,
                )
            statistics = calibration_statistics(model, pairs)
            if args.recover:
                args.recovery = Recovery(
                    recovery_data(model, data, max_length=Recovery.max_length),
                    args.recover,
                    args.recover_work or output.with_name(f"{output.stem}_recovery"),
                )
                meta["recovery"] = {
                    "steps": args.recover,
                    "max_length": Recovery.max_length,
                    "data": "the collection's train/dev queries and as many corpus "
                    "pseudo-queries, BM25 top-8 each (relcomp.recovery.recovery_data)",
                }
            size = estimate_size(model, CompressionPlan(model.name, ()))
            per_family = payload.setdefault(model_key(model_path), {}).setdefault(dataset, {})
            for retrieval in retrievals:
                reference_report = evaluate(model, **settings(data, retrieval, quick))
                reference = float(reference_report.measures["nDCG@10"])
                for family in args.families:
                    rows = per_family.setdefault(family, [])
                    rows[:] = [
                        r
                        for r in rows
                        if not (r["method"] == "reference" and _retrieval(r) == retrieval)
                    ]
                    rows.insert(
                        0,
                        {
                            "budget": None,
                            "method": "reference",
                            "retrieval": retrieval,
                            "ndcg@10": reference,
                            "size_mb": size.size_mb,
                            "per_query": per_query(reference_report),
                            "ndcg@10_by_depth": by_depth(reference_report),
                        },
                    )
                    table.append(
                        [
                            model.name,
                            dataset,
                            retrieval,
                            family,
                            "-",
                            "reference",
                            f"{reference:.4f}",
                            f"{size.size_mb:.1f}",
                        ]
                    )
            write_json(output, payload)

            def cells(
                per_family: Any = per_family,
                model: Any = model,
                relevance: Any = relevance,
                pairs: Any = pairs,
                statistics: Any = statistics,
                dataset: str = dataset,
                retrievals: Any = retrievals,
            ) -> Iterator[tuple[str, str, str, Any, list[dict[str, Any]]]]:
                """The cells still to run, each planned here; finished ones go to the table."""
                for family, budget, method, retrieval in itertools.product(
                    args.families, args.levels, args.methods, retrievals
                ):
                    done = [
                        r
                        for r in per_family[family]
                        if r["method"] == method
                        and r["budget"] == budgets[family][budget]
                        and _retrieval(r) == retrieval
                    ]
                    if done and not (
                        args.backfill_depths
                        and retrieval == "bm25"
                        and "ndcg@10_by_depth" not in done[0]
                    ):
                        row = done[0]
                        table.append(
                            [
                                model.name,
                                dataset,
                                retrieval,
                                family,
                                ",".join(f"{k}={v:g}" for k, v in row["budget"].items()),
                                method,
                                f"{row['ndcg@10']:.4f}",
                                f"{row['size_mb']:.1f}",
                            ]
                        )
                        continue
                    base, within = split_method(method)
                    source, importance = RELEVANCE_METHODS.get(base, ("attnlrp", base))
                    plan = make_plan(
                        model,
                        family,
                        budgets[family][budget],
                        importance=importance,
                        relevance=relevance[source],
                        calibration=pairs,
                        within=within,
                        statistics=statistics,
                        **PLAN_OPTIONS.get(family, {}),
                    )
                    yield family, method, retrieval, plan, done

            for (family, method, retrieval, plan, done), found, seconds in evaluate_cells(
                model, cells(), data, quick, statistics, args
            ):
                recovered: dict[str, Any] = {}
                if args.recover:
                    before, report, log = found
                    recovered = {"ndcg@10_before_recovery": float(before.measures["nDCG@10"])}
                    recovered["recovery"] = {
                        "steps": log.steps,
                        "pairs_seen": log.pairs_seen,
                        "seconds": log.seconds,
                        "device": log.device,
                        "max_length": log.max_length,
                        "heldout_loss": [dict(c) for c in log.checkpoints],
                    }
                else:
                    report = found
                score = float(report.measures["nDCG@10"])
                row = {
                    "budget": dict(plan.budget),
                    "method": method,
                    "retrieval": retrieval,
                    "plan_method": plan.method,
                    "ndcg@10": score,
                    "size_mb": plan.achieved["size_mb"],
                    "achieved": dict(plan.achieved),
                    "per_query": per_query(report),
                    "ndcg@10_by_depth": by_depth(report),
                    **recovered,
                }
                if done:  # --backfill-depths: the same scores, read back from the cache
                    if abs(score - done[0]["ndcg@10"]) > 1e-9:
                        raise SystemExit(
                            f"--backfill-depths: {family} {method} {plan.budget} now scores "
                            f"{score:.6f}, not the {done[0]['ndcg@10']:.6f} in {output}: the "
                            f"plan or the model changed; rerun the row instead"
                        )
                    per_family[family].remove(done[0])
                per_family[family].append(row)
                table.append(
                    [
                        model.name,
                        dataset,
                        retrieval,
                        family,
                        ",".join(f"{k}={v:g}" for k, v in plan.budget.items()),
                        method,
                        f"{score:.4f}",
                        f"{row['size_mb']:.1f}",
                    ]
                )
                logger.warning(
                    "%s %s %s %s → %.4f (%.0f s)",
                    retrieval,
                    family,
                    plan.budget,
                    method,
                    score,
                    seconds,
                )
                meta["wall_s"] = round(time.time() - started, 1)
                meta["claims"] = claims(payload)
                write_json(output, payload)
                plot_family(per_family[family], model.name, dataset, family, retrieval, output)
    print_table(
        table, ["model", "dataset", "retrieval", "family", "budget", "method", "nDCG@10", "size MB"]
    )
    meta["claims"] = claims(payload)
    write_json(output, payload)
    print_table(
        [
            [
                c["model"],
                c["dataset"],
                c["retrieval"],
                c["family"],
                c["budget"],
                c["relevance_method"],
                f"{c['relevance_loss']:+.4f}",
                f"{c['best_blind']} {c['best_blind_loss']:+.4f}",
                "yes" if c["met"] else "no",
                "-" if c["p_value"] is None else f"{c['p_value']:.3f}",
            ]
            for c in meta["claims"]
        ],
        [
            "model",
            "dataset",
            "retrieval",
            "family",
            "budget",
            "relevance plan",
            "relevance loss",
            "best blind loss",
            "claim met",
            "p",
        ],
    )


BLIND = ("uniform", "random", "magnitude", "taylor")

#: How each kind of model ranks: a cross-encoder re-ranks BM25's candidates; a
#: bi-encoder both retrieves densely over the whole corpus and re-ranks BM25's.
RETRIEVALS = {"cross-encoder": ("bm25",), "bi-encoder": ("dense", "bm25")}


#: The relevance-driven methods: which component relevance, read how (``importance``).
#: ``relp``: relevance patching (doc-terms corruption) instead of AttnLRP.
RELEVANCE_METHODS = {
    "relevance": ("attnlrp", "relevance"),
    "relevance-l1": ("attnlrp", "relevance-l1"),
    "relp": ("relp", "relevance"),
    "relp-l1": ("relp", "relevance-l1"),
    "margin": ("attnlrp-margin", "relevance"),
}


def relp_relevance(model: RankingModel, data: Path, split: str, n: int) -> Any:
    """RelP component relevance on ``n`` calibration pairs (document terms corrupted)."""
    pairs, _ = build_pairs(model, load_beir(data, split), n, "doc-terms")
    return RelevancePatching(model).component_relevance(
        pairs, source={"dataset": data.name, "split": split, "corruption": "doc-terms"}
    )


def split_method(method: str) -> tuple[str, str | None]:
    """``relevance-l1+wanda`` → ``("relevance-l1", "wanda")``: the source that sets how many
    heads and neurons each layer loses, and the one that picks them inside the layer."""
    base, _, within = method.partition("+")
    return base, within or None


def model_key(model_path: str) -> str:
    """A model's key in the results: its folder's name; the installed retriever by its name."""
    if Path(model_path).resolve() == default_retriever_path().resolve():
        return DEFAULT_RETRIEVER
    return Path(model_path).name


def is_relevance(method: str) -> bool:
    """Whether a method's plan is driven by relevance (its per-layer step, when two-step)."""
    return split_method(method)[0] in RELEVANCE_METHODS


def settings(data: Path, retrieval: str, quick: bool) -> dict[str, Any]:
    """``evaluate`` arguments for one retrieval mode under the protocol."""
    return {
        "data_dir": data,
        "first_stage": None if retrieval == "dense" else retrieval,
        "depth": 30 if quick and retrieval == "bm25" else 100,
        "queries": 100 if quick else None,
        "show_progress_bar": False,
    }


def _retrieval(row: dict[str, Any]) -> str:
    """Rows written before bi-encoders ran have no ``retrieval``: they re-ranked BM25."""
    return row.get("retrieval", "bm25")


def _paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Paired t test (ranx) of two rows' nDCG@10 over the same queries."""
    if "per_query" not in a or "per_query" not in b:
        return {"p_value": None, "queries": None}
    test = paired_test(
        {q: {"nDCG@10": v} for q, v in a["per_query"].items()},
        {q: {"nDCG@10": v} for q, v in b["per_query"].items()},
    )
    return {"p_value": test["p_values"]["nDCG@10"], "queries": test["n_queries"]}


def claims(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's claim per (model, dataset, family, budget).

    Loss is reference nDCG@10 minus the plan's (negative: the plan scored higher). The
    claim holds when the relevance plan loses at most half of what the best blind
    baseline loses; when the best blind baseline loses nothing, the relevance plan
    must lose nothing either. The quick protocol (the sweep) judges a budget once every
    blind baseline has run there. The full protocol confirms the sweep's best plans, so
    it judges against the blind plans that ran, and each verdict lists them
    (``blind_run``); so do recovered sweeps (``--recover``), which run chosen methods.
    """
    meta = payload.get("_meta", {})
    # the full protocol and recovered sweeps run chosen methods: judge against those run
    confirmation = meta.get("protocol") == "full" or bool(meta.get("recovery"))
    found = []
    for model, dataset, family, retrieval, rows in groups(payload):
        found += _claims_of(rows, model, dataset, family, retrieval, confirmation)
    return found


def groups(payload: dict[str, Any]) -> Iterator[tuple[str, str, str, str, list[dict[str, Any]]]]:
    """``(model, dataset, family, retrieval, rows)`` for each group of comparable rows."""
    for model, datasets in payload.items():
        if model.startswith("_"):
            continue
        for dataset, families in datasets.items():
            for family, all_rows in families.items():
                for retrieval in dict.fromkeys(map(_retrieval, all_rows)):
                    rows = [r for r in all_rows if _retrieval(r) == retrieval]
                    yield model, dataset, family, retrieval, rows


def _claims_of(
    rows: list[dict[str, Any]],
    model: str,
    dataset: str,
    family: str,
    retrieval: str,
    confirmation: bool = False,
) -> list[dict[str, Any]]:
    """Each relevance reading against the best blind baseline, per budget of ``rows``."""
    found = []
    reference = next((r["ndcg@10"] for r in rows if r["method"] == "reference"), None)
    if reference is None:
        return found
    budgets = list(
        {
            json.dumps(r["budget"], sort_keys=True): r["budget"]
            for r in rows
            if is_relevance(r["method"])
        }.values()
    )
    for budget in budgets:
        at = {r["method"]: r for r in rows if r["budget"] == budget}
        # every blind plan measured at this budget competes, two-step ones included
        blind = {m: reference - r["ndcg@10"] for m, r in at.items() if not is_relevance(m)}
        if not (blind if confirmation else all(m in at for m in BLIND)):
            continue
        best = min(blind, key=lambda m: blind[m])
        allowed = max(blind[best], 0.0) / 2
        for method in (m for m in at if is_relevance(m)):
            loss = reference - at[method]["ndcg@10"]
            found.append(
                {
                    "model": model,
                    "dataset": dataset,
                    "retrieval": retrieval,
                    "family": family,
                    "budget": ",".join(f"{k}={v:g}" for k, v in budget.items()),
                    "relevance_method": method,
                    "relevance_loss": loss,
                    "relevance_size_mb": at[method]["size_mb"],
                    "best_blind": best,
                    "best_blind_loss": blind[best],
                    "best_blind_size_mb": at[best]["size_mb"],
                    "met": loss <= allowed + 1e-9,
                    "blind_run": sorted(blind),
                    **_paired(at[method], at[best]),
                }
            )
    return found


def markdown(payloads: list[dict[str, Any]]) -> str:
    """One markdown table of result files: a line per budget, a column per method.

    Files are merged first (runs split across processes, e.g. one method apart, read
    as one), so each claim compares every method measured at a budget. The best
    nDCG@10 of a line is bold; the last column gives each relevance method's claim and
    the p-value of its paired test against the best blind baseline.
    """
    merged = merge(payloads)
    verdicts = claims(merged)
    lines = []
    measured: set[str] = set()
    for model, dataset, family, retrieval, rows in groups(merged):
        lines += _markdown_lines(rows, verdicts, model, dataset, family, retrieval)
        measured |= {r["method"] for r in rows if r["method"] != "reference"}
    present = list(dict.fromkeys(m for line in lines for m in line if m in measured))
    methods = [
        *(m for m in RELEVANCE_METHODS if m in present),
        *(m for m in present if is_relevance(m) and m not in RELEVANCE_METHODS),
        *(m for m in BLIND if m in present),
        *(m for m in present if not is_relevance(m) and m not in BLIND),
    ]
    header = [
        "model",
        "data",
        "retrieval",
        "family",
        "budget",
        "MB",
        "reference",
        *methods,
        "claim",
    ]
    return _markdown_table(header, [[line.get(h, "–") for h in header] for line in lines])


def recovery_markdown(payloads: list[dict[str, Any]]) -> str:
    """Recovered sweeps (``--recover``): each method before and after recovery, as markdown.

    A line per (budget, method): nDCG@10 of the pruned model before recovery and after,
    the points lost against the uncompressed model after recovery, the paired test of
    the recovered model against the relevance plan's (which choice recovers better), the
    held-out distillation loss at the end and the recovery's seconds.
    """
    merged = merge(payloads)
    header = ["model", "data", "budget", "method", "before recovery", "after recovery"]
    header += ["points lost", "p vs relevance", "held-out loss", "steps", "seconds"]
    table = []
    for model, dataset, _family, _retrieval, rows in groups(merged):
        reference = next((r for r in rows if r["method"] == "reference"), None)
        recovered = [r for r in rows if "recovery" in r]
        if reference is None or not recovered:
            continue
        for row in recovered:
            relevance = next(
                (
                    r
                    for r in recovered
                    if r["method"] == "relevance" and r["budget"] == row["budget"]
                ),
                None,
            )
            p = (
                None
                if relevance is None or relevance is row
                else _paired(relevance, row)["p_value"]
            )
            heldout = row["recovery"]["heldout_loss"]
            table.append(
                [
                    model,
                    dataset,
                    ",".join(f"{k}={v:g}" for k, v in row["budget"].items()),
                    row["method"],
                    f"{row['ndcg@10_before_recovery']:.4f}",
                    f"{row['ndcg@10']:.4f}",
                    f"{100 * (reference['ndcg@10'] - row['ndcg@10']):+.2f}",
                    "–" if p is None else f"{p:.3f}",
                    f"{heldout[-1]['heldout_loss']:.4f}" if heldout else "–",
                    str(row["recovery"]["steps"]),
                    f"{row['recovery']['seconds']:.0f}",
                ]
            )
    return _markdown_table(header, table)


def depth_markdown(payloads: list[dict[str, Any]]) -> str:
    """nDCG@10 by re-ranking depth, a line per (budget, method), as a markdown table.

    The shallower depths come from the same scores (``ndcg@10_by_depth``); the last
    depth is the row's own. The loss columns are each depth's drop from the
    reference at that depth. Rows without shallower depths (dense retrieval, rows
    written before they were recorded) are left out.
    """
    merged = merge(payloads)
    depths = sorted(
        {int(k) for *_, rows in groups(merged) for r in rows for k in r.get("ndcg@10_by_depth", {})}
    )
    header = ["model", "data", "family", "budget", "method"]
    header += [f"@{k}" for k in depths] + ["@full"]
    header += [f"loss @{k}" for k in depths] + ["loss @full"]
    table = []
    for model, dataset, family, retrieval, rows in groups(merged):
        if retrieval != "bm25":
            continue
        reference = next((r for r in rows if r["method"] == "reference"), None)
        if reference is None or not reference.get("ndcg@10_by_depth"):
            continue
        base = [reference["ndcg@10_by_depth"].get(str(k)) for k in depths]
        base.append(reference["ndcg@10"])
        for row in rows:
            if not row.get("ndcg@10_by_depth"):
                continue
            at = [row["ndcg@10_by_depth"].get(str(k)) for k in depths] + [row["ndcg@10"]]
            budget = row["budget"] or {}
            table.append(
                [
                    model,
                    dataset,
                    family,
                    ",".join(f"{k}={v:g}" for k, v in budget.items()) or "-",
                    row["method"],
                    *("–" if v is None else f"{v:.4f}" for v in at),
                    *(
                        "–" if v is None or b is None or row is reference else f"{b - v:.4f}"
                        for v, b in zip(at, base, strict=True)
                    ),
                ]
            )
    return _markdown_table(header, table)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    table = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in table)


#: A loss smaller than this (nDCG@10) is no loss to save: "met" there says little.
REAL_LOSS = 0.01
#: Below this p-value a difference between two plans counts as significant.
SIGNIFICANT = 0.05


def summary(payloads: list[dict[str, Any]]) -> str:
    """Per model and family, the verdicts over every judged budget, as a markdown table.

    A budget of one dataset and retrieval is one cell; its relevance side is the best
    relevance reading measured there (the one that keeps most nDCG@10), compared with the
    best blind plan. Columns: cells judged; cells where the claim holds, all of them and
    those where the best blind plan lost at least ``REAL_LOSS`` (where there was
    something to save); cells where relevance keeps more or less than the best blind
    plan, and how many of those differences are significant (paired t test,
    p < ``SIGNIFICANT``); and the median and range of the difference in nDCG@10.
    """
    best: dict[tuple[str, ...], dict[str, Any]] = {}
    for c in claims(merge(payloads)):
        cell = (c["model"], c["family"], c["dataset"], c["retrieval"], c["budget"])
        if cell not in best or c["relevance_loss"] < best[cell]["relevance_loss"]:
            best[cell] = c
    by_family: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (model, family, *_), c in best.items():
        by_family.setdefault((model, family), []).append(c)
    header = [
        "model",
        "family",
        "budgets judged",
        "claim met",
        f"met where blind lost ≥ {REAL_LOSS:g}",
        f"relevance ahead (p < {SIGNIFICANT:g})",
        f"relevance behind (p < {SIGNIFICANT:g})",
        "relevance − best blind, nDCG@10: median [min, max]",
    ]
    table = []
    for (model, family), cells in by_family.items():
        gaps = sorted(c["best_blind_loss"] - c["relevance_loss"] for c in cells)
        real = [c for c in cells if c["best_blind_loss"] >= REAL_LOSS]
        ahead = [c for c in cells if c["relevance_loss"] < c["best_blind_loss"]]
        behind = [c for c in cells if c["relevance_loss"] > c["best_blind_loss"]]
        table.append(
            [
                model,
                family,
                str(len(cells)),
                str(sum(c["met"] for c in cells)),
                f"{sum(c['met'] for c in real)} of {len(real)}",
                f"{len(ahead)} ({sum(map(_significant, ahead))})",
                f"{len(behind)} ({sum(map(_significant, behind))})",
                f"{statistics.median(gaps):+.4f} [{gaps[0]:+.4f}, {gaps[-1]:+.4f}]",
            ]
        )
    return _markdown_table(header, table)


def _significant(verdict: dict[str, Any]) -> bool:
    return verdict["p_value"] is not None and verdict["p_value"] < SIGNIFICANT


def merge(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """The rows of several result files as one payload (the first file's row wins a tie)."""
    protocols = {p.get("_meta", {}).get("protocol") for p in payloads}
    if len(protocols) > 1:
        raise SystemExit(
            f"cannot merge results of different protocols: {sorted(map(str, protocols))}"
        )
    merged: dict[str, Any] = {"_meta": {"protocol": protocols.pop() if protocols else None}}
    steps = {p.get("_meta", {}).get("recovery", {}).get("steps") for p in payloads}
    if len(steps) > 1:
        raise SystemExit(
            "cannot merge results recovered for different steps (none: not recovered): "
            f"{sorted(map(str, steps))}"
        )
    recovery = next(
        (p["_meta"]["recovery"] for p in payloads if p.get("_meta", {}).get("recovery")), None
    )
    if recovery:
        merged["_meta"]["recovery"] = recovery
    for payload in payloads:
        for model, datasets in payload.items():
            if model.startswith("_"):
                continue
            for dataset, families in datasets.items():
                for family, rows in families.items():
                    into = (
                        merged.setdefault(model, {}).setdefault(dataset, {}).setdefault(family, [])
                    )
                    for row in rows:
                        key = (row["method"], row["budget"], _retrieval(row))
                        if all((r["method"], r["budget"], _retrieval(r)) != key for r in into):
                            into.append(row)
    return merged


def _markdown_lines(
    rows: list[dict[str, Any]],
    verdicts: list[dict[str, Any]],
    model: str,
    dataset: str,
    family: str,
    retrieval: str,
) -> list[dict[str, str]]:
    """The table's cells per budget of ``rows``, keyed by column."""
    reference = next((r for r in rows if r["method"] == "reference"), None)
    budgets: list[dict[str, float]] = []
    for row in rows:
        if row["budget"] and row["budget"] not in budgets:
            budgets.append(row["budget"])
    lines = []
    for budget in sorted(budgets, key=lambda b: sorted(b.items())):
        at = {r["method"]: r for r in rows if r["budget"] == budget}
        label = ",".join(f"{k}={v:g}" for k, v in budget.items())
        best = max(r["ndcg@10"] for r in at.values())
        found = [
            c
            for c in verdicts
            if (c["model"], c["dataset"], c["retrieval"], c["family"], c["budget"])
            == (model, dataset, retrieval, family, label)
        ]
        claim = "; ".join(
            f"{c['relevance_method']} {'met' if c['met'] else 'missed'}"
            + ("" if c["p_value"] is None else f" (p {c['p_value']:.2f})")
            for c in found
        )
        lines.append(
            {
                "model": model,
                "data": dataset,
                "retrieval": retrieval,
                "family": family,
                "budget": label,
                "MB": f"{next(iter(at.values()))['size_mb']:.1f}",
                "reference": "–" if reference is None else f"{reference['ndcg@10']:.4f}",
                "claim": claim or "blind baselines pending",
                **{
                    m: (
                        f"**{r['ndcg@10']:.4f}**" if r["ndcg@10"] == best else f"{r['ndcg@10']:.4f}"
                    )
                    for m, r in at.items()
                },
            }
        )
    return lines


if __name__ == "__main__":
    main()
