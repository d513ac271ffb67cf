"""A compress run's output folder, which remembers its steps so that a run resumes.

* :class:`RunFolder` — ``OUT_DIR`` and its manifest ``run.json``: which step wrote
  which files, under which settings, with which sha256. A step whose files are all
  present, unchanged and made under the same settings is skipped on the next run
  (:meth:`RunFolder.step`, the one way a step resumes); a step's settings include
  the sha256 of what it was made from, so changing one step re-runs every step after it.
* :func:`install_bundle` / :func:`remove_bundle` — the ONNX bundle is exported into a
  temporary folder inside ``OUT_DIR`` (:func:`staging_folder`) and moved in file by
  file, its marker ``relcomp_bundle.json`` last; a failure on the way, or a failed
  quality gate, removes every file of it.

:mod:`relcomp.pipeline` says *what* the flow does, step by step; this module says
how a step's files are kept. Every file is written atomically (:mod:`relcomp._io`):
an interrupted run leaves complete files of the steps it finished, and nothing
half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from relcomp._io import atomic_write_json, file_digest
from relcomp.artifacts import EXPORT_BUNDLE_FILE, Artifact
from relcomp.errors import RelcompError

__all__ = [
    "MANIFEST",
    "RunFolder",
    "folder_identity",
    "install_bundle",
    "remove_bundle",
    "staging_folder",
]

logger = logging.getLogger(__name__)

A = TypeVar("A", bound=Artifact)

#: The manifest of a run folder.
MANIFEST = "run.json"
MANIFEST_VERSION = 1


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
        if not self.manifest and not (self.path / MANIFEST).is_file():
            return  # nothing recorded yet: a run that fails before its first step leaves no file
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
