"""What the command line checks before a verb does any work.

:func:`check_arguments` looks at a parsed command line and refuses, with one
message, what would otherwise fail only after the expensive steps: an output that
cannot be written, a model path that does not exist, a split that is not a split of
the collection, a budget, planner or importance source that does not parse. It
creates nothing, so a refused run leaves the disk as it found it. The library
functions check the same things again where they need them; this is the early copy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from relcomp.checks import check_model_argument, check_output_location
from relcomp.compression.importance import IMPORTANCE
from relcomp.compression.planners import PLANNERS
from relcomp.distributed.settings import RAY_ENV, ray_setting, require_ray
from relcomp.errors import OutputLocationError, RelcompError
from relcomp.evaluation.beir import check_split
from relcomp.pipeline import parse_budget_text

__all__ = ["check_arguments"]

_BM25 = "bm25"


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse a command line whose arguments cannot work, before the verb starts.

    Example:
        >>> args = argparse.Namespace(verb="evaluate", model="./no-such-model", output=None)
        >>> check_arguments(args)
        Traceback (most recent call last):
        ...
        relcomp.errors.ModelLoadError: ./no-such-model: no such model folder
    """
    verb = getattr(args, "verb", None)
    if hasattr(args, "ray"):
        if ray_setting(args.ray) is not None:
            require_ray("--ray" if args.ray is not None else RAY_ENV)
        elif getattr(args, "workers", None) is not None:
            raise RelcompError(f"--workers needs --ray (or {RAY_ENV}): workers are Ray actors")
    output = getattr(args, "output", None)
    if output is not None:
        plan_file = verb == "plan" and Path(output).suffix == ".json"
        check_output_location(output, folder=not plan_file)
    run_dir = getattr(args, "run_dir", None)
    if run_dir is not None:
        if not Path(run_dir).is_dir():
            raise OutputLocationError(f"{run_dir}: no such run folder")
        check_output_location(run_dir)
    for attribute in ("model", "first_stage"):
        value = getattr(args, attribute, None)
        if value is not None and str(value).lower() != _BM25:
            check_model_argument(value)
    data = getattr(args, "data", None)
    if data is not None and Path(data).is_dir():
        for attribute in ("split", "calibration_split"):
            split = getattr(args, attribute, None)
            if split is not None:
                check_split(data, split)
    if verb in ("plan", "compress"):
        method = str(args.method)
        PLANNERS.get(method)
        IMPORTANCE.get(args.importance)
        if getattr(args, "within", None) is not None:
            IMPORTANCE.get(args.within)
        budgets = args.budget if isinstance(args.budget, list) else [args.budget]
        for budget in budgets:
            parse_budget_text(budget, method)
