"""Shared set-up for the benchmark scripts: asset paths, threads, JSON output, tables."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from relcomp._io import atomic_write_json
from relcomp._table import format_table

REPO = Path(__file__).resolve().parents[1]

#: Longest input, in tokens, per protocol and kind of model (../shared/BENCHMARKS.md).
MAX_LENGTH: dict[str, dict[str, int]] = {
    "quick": {"cross-encoder": 256, "bi-encoder": 256},
    "full": {"cross-encoder": 512, "bi-encoder": 256},
}


def assets_dir() -> Path:
    """``../shared/assets`` relative to the repo, or ``$RELCOMP_ASSETS``."""
    path = Path(os.environ.get("RELCOMP_ASSETS", REPO.parent / "shared" / "assets"))
    if not path.is_dir():
        raise SystemExit(f"assets folder not found: {path} (set RELCOMP_ASSETS)")
    return path


def reranker_path() -> Path:
    return assets_dir() / "models" / "minilm-l6-reranker"


def beir_path(name: str) -> Path:
    return assets_dir() / "beir" / name


def relative(text: str | os.PathLike[str]) -> str:
    """``text`` with an absolute path made relative to the repo: results files hold no machine path."""
    path = Path(text)
    return os.path.relpath(path, REPO) if path.is_absolute() else str(text)


def display_name(model: Any) -> str:
    """A model's name for results files: paths relative to the repo, never a machine path."""
    return relative(str(model.name))


def command_line() -> str:
    """The command that is running, its paths relative to the repo."""
    return " ".join(relative(word) if word.startswith("/") else word for word in sys.argv)


def result_key(model: Any) -> str:
    """A model's key in a results file: the last part of its name (a folder's, or a hub id's)."""
    return str(model.name).rstrip("/").rsplit("/", 1)[-1]


def set_threads(threads: int = 2) -> None:
    """Pin torch to ``threads`` and show relcomp's progress bars and INFO messages."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("relcomp").setLevel(logging.INFO)
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    return atomic_write_json(path, payload)


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    print(format_table(rows, header))


def dumps(payload: Any) -> str:
    return json.dumps(payload, indent=2)


def add_markdown_option(parser: Any) -> None:
    """``--markdown FILE.json…``: print the results table as markdown and run nothing."""
    parser.add_argument(
        "--markdown",
        nargs="+",
        metavar="FILE.json",
        help="print the table of these result files as markdown (docs/benchmarks/) and run nothing",
    )


def add_ray_options(parser: Any, what: str, workers: str) -> None:
    """``--ray [ADDRESS]`` and ``--workers N`` (see ``relcomp evaluate --ray``)."""
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help=f"{what} on Ray: 'local', 'auto' or host:port ($RELCOMP_RAY when absent)",
    )
    parser.add_argument("--workers", type=int, default=None, help=workers)


def read_results(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    return [json.loads(Path(path).read_text(encoding="utf-8")) for path in paths]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are written as they are given (format numbers first)."""
    table = [list(header), ["---"] * len(header), *([str(c) for c in row] for row in rows)]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in table)


def model_label(name: str) -> str:
    """``../shared/assets/models/minilm-l6-reranker`` → ``minilm-l6-reranker``."""
    return str(name).rstrip("/").rsplit("/", 1)[-1]
