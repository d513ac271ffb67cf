"""The machinery under :func:`relcomp.pipeline.compress`: a run folder that remembers its steps.

:func:`relcomp.pipeline.compress` reads top to bottom as the flow it runs; this module
holds what it needs and a reader need not see first:

* :class:`RunFolder` — ``OUT_DIR`` and its manifest ``run.json``: which step wrote
  which files, under which settings, with which sha256. A step whose files are all
  present, unchanged and made under the same settings is skipped on the next run
  (resume); a step's settings include the sha256 of what it was made from, so
  changing one step re-runs every step after it.
* :func:`install_bundle` / :func:`remove_bundle` — the ONNX bundle is exported into a
  temporary folder inside ``OUT_DIR`` and moved in file by file, its marker
  ``relcomp_bundle.json`` last; a failure on the way, or a failed quality gate,
  removes every file of it.
* :func:`measure_speed` — latency p50 / p95 at batch 1 and pairs/s at batch 32 of
  several systems, interleaved, on the same real pairs (BENCHMARKS.md's rules).
* :func:`quality_comparison` — the ``quality.json`` that ``relcomp report`` reads.

Every file is written atomically (:mod:`relcomp._io`): an interrupted run leaves
complete files of the steps it finished, and nothing half-written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from relcomp._io import atomic_write_json, file_digest
from relcomp.artifacts import EXPORT_BUNDLE_FILE, Artifact, QualityReport
from relcomp.errors import RelcompError

__all__ = [
    "MANIFEST",
    "PROTOCOLS",
    "Protocol",
    "RunFolder",
    "folder_identity",
    "install_bundle",
    "measure_speed",
    "model_size_bytes",
    "quality_comparison",
    "remove_bundle",
    "resolve_protocol",
]

logger = logging.getLogger(__name__)

A = TypeVar("A", bound=Artifact)

#: The manifest of a run folder.
MANIFEST = "run.json"
MANIFEST_VERSION = 1


# -- protocols -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Protocol:
    """How much of a collection the flow evaluates (BENCHMARKS.md's protocols).

    ``queries`` ``None`` means every judged query; ``max_length`` ``None`` the model's
    own limit; ``cross_encoder_max_length`` overrides it for rerankers (the full
    protocol reads rerankers at 512 tokens, retrievers at 256). ``repeats`` are the
    timing repeats; the parity check runs on ``parity_queries`` queries of the
    calibration split with their BM25 top-``parity_depth``.
    """

    name: str
    queries: int | None
    depth: int
    max_length: int | None
    cross_encoder_max_length: int | None = None
    repeats: int = 5
    parity_queries: int = 16
    parity_depth: int = 20

    def max_length_for(self, kind: str) -> int | None:
        if kind == "cross-encoder" and self.cross_encoder_max_length is not None:
            return self.cross_encoder_max_length
        return self.max_length


#: ``quick`` and ``full`` as in BENCHMARKS.md; ``demo`` is the embedded default's: every
#: query of the small shipped collection, 128 tokens (all-MiniLM-L6-v2's training length;
#: it halves the cost of encoding the corpus twice), fewer timing repeats.
PROTOCOLS: dict[str, Protocol] = {
    "quick": Protocol("quick", queries=100, depth=30, max_length=256),
    "full": Protocol(
        "full",
        queries=None,
        depth=100,
        max_length=256,
        cross_encoder_max_length=512,
        parity_queries=20,
        parity_depth=30,
    ),
    "demo": Protocol(
        "demo",
        queries=None,
        depth=30,
        max_length=128,
        repeats=3,
        parity_queries=8,
        parity_depth=10,
    ),
}


def resolve_protocol(name: str) -> Protocol:
    """The :class:`Protocol` called ``name``, with an error listing the valid names.

    Example:
        >>> resolve_protocol("quick").depth
        30
    """
    try:
        return PROTOCOLS[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown protocol {name!r}; valid protocols: {', '.join(PROTOCOLS)}"
        ) from None


# -- the run folder ----------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as JSON would give them back, so a saved and a fresh copy compare equal."""
    plain: dict[str, Any] = json.loads(json.dumps(settings, sort_keys=True, default=str))
    return plain


class RunFolder:
    """``OUT_DIR`` of a compress run: its files, and the manifest that lets a run resume.

    Args:
        path: the output folder: new, empty, or the folder of an earlier run (it holds
            ``run.json``); any other non-empty folder is refused.
        resume: reuse the files of steps done before under the same settings; with
            ``False`` every step runs again (and overwrites its files).

    Example:
        >>> import tempfile
        >>> run = RunFolder(tempfile.mkdtemp())
        >>> settings = {"seed": 13}
        >>> run.done("hello", settings)
        False
        >>> _ = (run.path / "hello.txt").write_text("hi")
        >>> run.record("hello", settings, ["hello.txt"])
        >>> run.done("hello", settings), run.done("hello", {"seed": 14})
        (True, False)
    """

    def __init__(self, path: str | os.PathLike[str], resume: bool = True) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise RelcompError(f"{self.path}: the output exists and is not a folder")
        if self.path.is_dir() and any(self.path.iterdir()) and not (self.path / MANIFEST).is_file():
            raise RelcompError(
                f"{self.path}: the folder is not empty and holds no {MANIFEST}, so it is not "
                "a relcomp compress run; choose a new or empty output folder"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self.resume = resume
        self.manifest = self._read_manifest() if resume else {}

    def _read_manifest(self) -> dict[str, Any]:
        file = self.path / MANIFEST
        if not file.is_file():
            return {}
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            logger.warning("%s: unreadable (%s); every step runs again", file, error)
            return {}
        if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
            logger.warning("%s: not a version %d manifest; every step runs again", file, 1)
            return {}
        steps = data.get("steps")
        return steps if isinstance(steps, dict) else {}

    def _write_manifest(self) -> None:
        atomic_write_json(
            self.path / MANIFEST,
            {"kind": "relcomp_run", "version": MANIFEST_VERSION, "steps": self.manifest},
        )

    def done(self, step: str, settings: Mapping[str, Any]) -> bool:
        """Whether ``step`` already ran under ``settings`` and its files are intact."""
        entry = self.manifest.get(step)
        if not self.resume or not isinstance(entry, dict):
            return False
        if entry.get("settings") != _plain(settings):
            logger.info("%s: settings changed since the last run; running it again", step)
            return False
        for name, digest in entry.get("files", {}).items():
            file = self.path / name
            if not file.is_file() or _sha256(file) != digest:
                logger.info("%s: %s is missing or changed; running it again", step, name)
                return False
        return True

    def record(self, step: str, settings: Mapping[str, Any], files: Sequence[str]) -> None:
        """Note that ``step`` wrote ``files`` (relative to the folder) under ``settings``."""
        self.manifest[step] = {
            "settings": _plain(settings),
            "files": {name: _sha256(self.path / name) for name in files},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self._write_manifest()

    def step(
        self,
        step: str,
        settings: Mapping[str, Any],
        make: Callable[[], Sequence[str]],
        *,
        what: str | None = None,
    ) -> bool:
        """Run ``step`` unless it already ran under ``settings``; the one way a step resumes.

        ``make`` writes the step's files (each atomically) and returns their names,
        relative to the folder; they are recorded under ``settings``. Before it runs,
        the files of the step's last run are deleted, so none outlives the settings
        it was made under.

        Args:
            step: the step's name in the manifest.
            settings: everything that changes the step's files (later steps include
                this step's :meth:`digest` in theirs).
            make: writes the files; called only when the step must run.
            what: how the log names the files when they are reused (their names by default).

        Returns:
            Whether ``make`` ran (``False``: the files of the last run are reused).

        Example:
            >>> import tempfile
            >>> run = RunFolder(tempfile.mkdtemp())
            >>> def make():
            ...     _ = (run.path / "a.txt").write_text("a")
            ...     return ["a.txt"]
            >>> run.step("a", {"n": 1}, make), run.step("a", {"n": 1}, make)
            (True, False)
        """
        if self.done(step, settings):
            logger.info("  reusing %s", what or ", ".join(self.files(step)))
            return False
        self.forget(step)
        self.record(step, settings, make())
        return True

    def artifact(
        self,
        step: str,
        settings: Mapping[str, Any],
        name: str,
        kind: type[A],
        make: Callable[[], A],
    ) -> A:
        """The artifact of a one-file step: loaded if done under ``settings``, else made and saved.

        Example:
            >>> import tempfile
            >>> from relcomp.artifacts import QualityReport
            >>> run = RunFolder(tempfile.mkdtemp())
            >>> make = lambda: QualityReport("m", "d", "test", {"RR@10": 1.0}, {}, 0)
            >>> run.artifact("eval", {}, "q.json", QualityReport, make).measures
            {'RR@10': 1.0}
            >>> run.done("eval", {})
            True
        """
        made: list[A] = []

        def save() -> list[str]:
            made.append(make())
            made[0].save(self.path / name)
            return [name]

        self.step(step, settings, save)
        return made[0] if made else kind.load(self.path / name)

    def files(self, step: str) -> list[str]:
        """The files ``step`` wrote on its last recorded run."""
        entry = self.manifest.get(step)
        return list(entry.get("files", {})) if isinstance(entry, dict) else []

    def digest(self, step: str) -> str:
        """One sha256 over the files of ``step``: what later steps' settings depend on."""
        entry = self.manifest.get(step)
        if not isinstance(entry, dict):
            raise RelcompError(f"step {step!r} has not run in {self.path}")
        return hashlib.sha256(json.dumps(entry["files"], sort_keys=True).encode()).hexdigest()

    def forget(self, *steps: str, delete: bool = True) -> None:
        """Drop ``steps`` from the manifest, deleting their files unless ``delete`` is false."""
        for step in steps:
            entry = self.manifest.pop(step, None)
            if delete and isinstance(entry, dict):
                remove_bundle(self.path, list(entry.get("files", {})))
        self._write_manifest()
        _remove_empty_folders(self.path)


def folder_identity(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a BEIR folder's contents for resuming: its path, its files' sizes and SHA-256."""
    root = Path(data_dir).resolve()
    files = [root / "corpus.jsonl", root / "queries.jsonl", *sorted(root.glob("qrels/*.tsv"))]
    return {
        "data": str(root),
        "files": {
            str(p.relative_to(root)): [p.stat().st_size, file_digest(p)]
            for p in files
            if p.is_file()
        },
    }


def _remove_empty_folders(root: Path) -> None:
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds when empty


# -- the bundle inside the run folder ------------------------------------------------------
def install_bundle(staging: Path, run: RunFolder, keep: Sequence[str] = ()) -> list[str]:
    """Move an exported bundle from ``staging`` into the run folder; return its files.

    Files named in ``keep`` (relative paths, e.g. ``plan.json``, which the plan step
    already wrote) are left where they are and not moved. The bundle's marker
    (``relcomp_bundle.json``) moves last, so a folder holding the marker holds the
    whole bundle; if anything fails on the way, every file moved so far is removed.
    """
    names = sorted(
        str(path.relative_to(staging))
        for path in staging.rglob("*")
        if path.is_file() and str(path.relative_to(staging)) not in keep
    )
    if EXPORT_BUNDLE_FILE not in names:
        raise RelcompError(f"{staging}: the export wrote no {EXPORT_BUNDLE_FILE}")
    names.remove(EXPORT_BUNDLE_FILE)
    names.append(EXPORT_BUNDLE_FILE)
    moved: list[str] = []
    try:
        for name in names:
            target = run.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target)
            moved.append(name)
    except BaseException:
        remove_bundle(run.path, moved)
        raise
    return names


def remove_bundle(folder: Path, files: Sequence[str]) -> None:
    """Delete the bundle's ``files`` from ``folder``, the marker first, then empty folders.

    The marker goes first so that a folder holding it always holds the whole bundle,
    even when the deletion is interrupted.
    """
    ordered = sorted(files, key=lambda name: name != EXPORT_BUNDLE_FILE)
    for name in ordered:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    _remove_empty_folders(folder)


@contextlib.contextmanager
def staging_folder(run: RunFolder, name: str) -> Iterator[Path]:
    """A temporary folder inside the run folder (same file system, so moves are renames)."""
    staging = run.path / f".{name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def model_size_bytes(model: Any) -> int:
    """Bytes of a model's weights as stored: the ONNX file (+ external data) or torch weights.

    For a torch model, the ``*.safetensors`` files of its folder (``*.bin`` when there
    are none); for an ONNX model, its ``.onnx`` file and any ``.onnx_data`` /
    ``.onnx.data`` beside it.
    """
    onnx_path = getattr(model, "onnx_path", None)
    if onnx_path is not None:
        onnx_path = Path(onnx_path)
        extra = [
            p
            for p in onnx_path.parent.iterdir()
            if p.name.startswith(onnx_path.name) and p != onnx_path
        ]
        return onnx_path.stat().st_size + sum(p.stat().st_size for p in extra)
    folder = Path(model.path)
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not weights:
        raise RelcompError(f"{folder}: no *.safetensors or *.bin weights to measure")
    return sum(p.stat().st_size for p in weights)


# -- speed -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _threads(systems: Mapping[str, Any], threads: int) -> Iterator[None]:
    """Run every system on ``threads`` threads (torch and ONNX Runtime), restored afterwards."""
    import torch

    previous_torch = torch.get_num_threads()
    previous_ort = {
        name: model.intra_op_num_threads
        for name, model in systems.items()
        if hasattr(model, "intra_op_num_threads")
    }
    torch.set_num_threads(threads)
    for name in previous_ort:
        systems[name].intra_op_num_threads = threads
    try:
        yield
    finally:
        torch.set_num_threads(previous_torch)
        for name, value in previous_ort.items():
            systems[name].intra_op_num_threads = value


def measure_speed(
    systems: Mapping[str, Any],
    queries: Sequence[str],
    documents: Sequence[str],
    *,
    batch_size: int = 32,
    latency_pairs: int = 32,
    repeats: int = 5,
    threads: int = 2,
    show_progress_bar: bool | None = None,
) -> dict[str, dict[str, Any]]:
    """Latency at batch 1 and throughput at ``batch_size`` of each system, interleaved.

    BENCHMARKS.md's rules: one process, the same real pairs for every system, the
    systems interleaved (A B A B …) after a warm-up, ``threads`` threads each.
    Latency: one (query, document) pair per call, over the first ``latency_pairs``
    pairs; p50 and p95 in ms. Throughput: the first ``batch_size`` pairs in one call,
    the median of ``repeats`` calls, in pairs/s.

    Args:
        systems: ``{name: model}``; each has ``score(queries, documents, batch_size, …)``.
        queries: query of each pair.
        documents: document of each pair.
        batch_size: pairs per call for throughput.
        latency_pairs: how many single-pair calls per system for latency.
        repeats: calls per system for throughput.
        threads: torch / ONNX Runtime intra-op threads.
        show_progress_bar: a tqdm bar over the measurements.

    Returns:
        ``{name: {"latency_ms": {"p50", "p95"}, "pairs_per_s", "batch_size", "threads", …}}``.

    Example:
        >>> class Slow:
        ...     def score(self, q, d, batch_size=32, show_progress_bar=None):
        ...         return np.zeros(len(q))
        >>> result = measure_speed({"a": Slow()}, ["q"] * 4, ["d"] * 4, batch_size=4, repeats=2)
        >>> sorted(result["a"])
        ['batch_size', 'latency_ms', 'latency_pairs', 'pairs_per_s', 'repeats', 'threads']
    """
    from tqdm.auto import tqdm

    from relcomp.models.base import progress_enabled

    if len(queries) != len(documents) or not queries:
        raise ValueError("measure_speed needs as many queries as documents, at least one")
    batch_q, batch_d = list(queries[:batch_size]), list(documents[:batch_size])
    single = list(zip(queries[:latency_pairs], documents[:latency_pairs], strict=True))
    latencies: dict[str, list[float]] = {name: [] for name in systems}
    batches: dict[str, list[float]] = {name: [] for name in systems}
    total = len(systems) * (len(single) + repeats + 1)
    with (
        _threads(systems, threads),
        tqdm(
            total=total,
            desc="timing",
            disable=not progress_enabled(show_progress_bar),
            leave=False,
        ) as bar,
    ):
        for model in systems.values():  # warm-up: first calls allocate and compile
            model.score(batch_q[:2], batch_d[:2], batch_size=2, show_progress_bar=False)
            bar.update(1)
        for query, document in single:
            for name, model in systems.items():
                started = time.perf_counter()
                model.score([query], [document], batch_size=1, show_progress_bar=False)
                latencies[name].append(time.perf_counter() - started)
                bar.update(1)
        for _ in range(repeats):
            for name, model in systems.items():
                started = time.perf_counter()
                model.score(batch_q, batch_d, batch_size=len(batch_q), show_progress_bar=False)
                batches[name].append(time.perf_counter() - started)
                bar.update(1)
    return {
        name: {
            "latency_ms": {
                "p50": float(np.percentile(latencies[name], 50) * 1000),
                "p95": float(np.percentile(latencies[name], 95) * 1000),
            },
            "pairs_per_s": float(len(batch_q) / statistics.median(batches[name])),
            "batch_size": len(batch_q),
            "latency_pairs": len(single),
            "repeats": repeats,
            "threads": threads,
        }
        for name in systems
    }


# -- quality.json ------------------------------------------------------------------------------
def _side(
    name: str, report: QualityReport, size_bytes: int, speed: Mapping[str, Any] | None
) -> dict[str, Any]:
    per_measure: dict[str, dict[str, float]] = {measure: {} for measure in report.measures}
    for query_id, values in report.per_query.items():
        for measure, value in values.items():
            per_measure.setdefault(measure, {})[query_id] = float(value)
    return {
        "name": name,
        "model": report.model,
        "measures": {k: float(v) for k, v in report.measures.items()},
        "per_query": per_measure,
        "size_mb": size_bytes / 1e6,
        "latency_ms": dict(speed["latency_ms"]) if speed else None,
        "pairs_per_s": float(speed["pairs_per_s"]) if speed else None,
        "tie_rate": report.tie_rate,
        "truncation": dict(report.truncation),
        "by_depth": {
            k: {m: float(v) for m, v in measures.items()} for k, measures in report.by_depth.items()
        },
    }


def quality_comparison(
    reference: QualityReport,
    compressed: QualityReport,
    *,
    names: tuple[str, str],
    sizes: tuple[int, int],
    speed: Mapping[str, Mapping[str, Any]] | None,
    protocol: str,
    gate: Mapping[str, Any] | None,
    budget: str,
    alpha: float = 0.05,
    provenance: Mapping[str, Any] | None = None,
    candidates: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``quality.json`` of a compress run: both systems, their paired difference, the gate.

    ``names`` are the two systems' display names, ``sizes`` their stored bytes, ``speed``
    :func:`measure_speed`'s result keyed ``reference`` and ``compressed``.
    ``difference[measure]`` is compressed minus reference, with the two-sided paired t
    test's p-value over the same queries (ranx, :func:`relcomp.evaluation.paired_test`)
    and ``significant`` at ``alpha``. ``candidates`` lists every compressed system
    tried (one per plan) with its size, batch-1 p50 latency, nDCG@10 and whether it
    passed the gate: the compressed model alone (on ``split``), or, when ``candidates``
    is given (``evaluation/candidates.json`` of the plans tried step), every plan with
    its quality on the gate split, and ``candidates_reference`` the reference there.
    """
    from relcomp.evaluation import paired_test

    if set(reference.per_query) != set(compressed.per_query):
        raise RelcompError(
            "the reference and the compressed model were not evaluated on the same queries"
        )
    measures = list(reference.measures)
    test = paired_test(reference.per_query, compressed.per_query, measures)
    difference = {
        measure: {
            "delta": float(compressed.measures[measure] - reference.measures[measure]),
            "p_value": float(test["p_values"][measure]),
            "significant": bool(test["p_values"][measure] < alpha),
        }
        for measure in measures
    }
    speed = speed or {}
    reference_side = _side(names[0], reference, sizes[0], speed.get("reference"))
    compressed_side = _side(names[1], compressed, sizes[1], speed.get("compressed"))
    ndcg = next((m for m in measures if m.lower() == "ndcg@10"), measures[0])
    return {
        "kind": "quality_comparison",
        "version": 1,
        "model": reference.model,
        "dataset": reference.dataset,
        "split": reference.split,
        "protocol": protocol,
        "n_queries": reference.n_queries,
        "first_stage": reference.first_stage,
        "depth": reference.depth,
        "max_length": reference.max_length,
        "measures": measures,
        "reference": reference_side,
        "compressed": compressed_side,
        "difference": difference,
        "significance": {"test": test["test"], "alpha": alpha, "n_queries": test["n_queries"]},
        "gate": dict(gate) if gate is not None else None,
        "candidates": (
            [dict(c) for c in candidates["candidates"]]
            if candidates is not None
            else [
                {
                    "name": names[1],
                    "budget": budget,
                    "size_mb": compressed_side["size_mb"],
                    "latency_ms": (compressed_side["latency_ms"] or {}).get("p50"),
                    "ndcg@10": compressed_side["measures"][ndcg],
                    "passed": bool(gate["passed"]) if gate is not None else None,
                    "split": reference.split,
                    "chosen": True,
                }
            ]
        ),
        "candidates_reference": dict(candidates["reference"]) if candidates is not None else None,
        "provenance": dict(provenance or {}),
    }
