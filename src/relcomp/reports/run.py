"""Reading a ``relcomp compress`` output folder, for the report.

A run folder holds, as the compress flow writes them:

========================================  ========  ==============================================
file                                      needed    what it is
========================================  ========  ==============================================
``quality.json``                          yes       reference vs compressed quality, size, latency
                                                    (``kind: quality_comparison``)
``plan.json``                             yes       the :class:`~relcomp.artifacts.CompressionPlan`
``component_relevance.json``              no        the :class:`~relcomp.artifacts.ComponentRelevance`
                                                    the plan was made from
``explanations/*.json``                   no        :class:`~relcomp.artifacts.TokenRelevance` (or
                                                    :class:`~relcomp.artifacts.TokenInteractions`)
``relcomp_bundle.json``, ``parity.json``  no        the ONNX bundle's description and its parity
                                                    against torch (in the folder, ``onnx/`` or
                                                    ``bundle/``)
``run.json``                              no        the flow's manifest: each step's settings and
                                                    when it finished
``index.json``, ``index_quality.json``    no        a retriever's compressed corpus index
                                                    (:class:`~relcomp.artifacts.IndexSettings`) and
                                                    its bytes and quality against the float index
                                                    (in the folder, ``onnx/`` or ``bundle/``)
========================================  ========  ==============================================

A missing needed file, or any file that is present but malformed, raises
:class:`~relcomp.errors.DataFormatError` naming it. ``quality.json`` is read as a
:class:`~relcomp.artifacts.QualityComparison`; keys an older file lacks (latency,
candidates, gate…) read as ``None`` and the report says "not measured".
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relcomp.artifacts import (
    INDEX_QUALITY_FILE,
    INDEX_SETTINGS_FILE,
    ComponentRelevance,
    CompressionPlan,
    IndexSettings,
    QualityComparison,
    TokenInteractions,
    TokenRelevance,
)
from relcomp.errors import DataFormatError, RelcompError

__all__ = ["QUALITY_KIND", "CompressionRun", "load_run"]

#: The ``kind`` of the quality comparison the compress flow writes.
QUALITY_KIND = QualityComparison.KIND

#: Where the export step may have put its bundle description and parity figures.
_BUNDLE_FOLDERS = (".", "onnx", "bundle")


@dataclasses.dataclass(frozen=True)
class CompressionRun:
    """Everything a compression report shows, read from one run folder."""

    folder: Path
    quality: QualityComparison
    plan: CompressionPlan
    relevance: ComponentRelevance | None
    explanations: tuple[TokenRelevance, ...]
    interactions: tuple[TokenInteractions, ...]
    bundle: Mapping[str, Any] | None
    parity: Mapping[str, Any] | None
    manifest: Mapping[str, Any] | None
    files: tuple[Path, ...]
    index: IndexSettings | None = None
    index_quality: Mapping[str, Any] | None = None


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DataFormatError(path, None, f"cannot read: {error.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFormatError(path, error.lineno, f"invalid JSON: {error.msg}") from None


def _read_object(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataFormatError(path, None, "expected a JSON object")
    return data


def _find_bundle_file(folder: Path, name: str) -> Path | None:
    for sub in _BUNDLE_FOLDERS:
        path = folder / sub / name
        if path.is_file():
            return path
    return None


def load_run(run_dir: str | os.PathLike[str]) -> CompressionRun:
    """Read and check a compress output folder (see the module docstring for its files).

    Raises:
        DataFormatError: a needed file is missing, or a file present is malformed;
            the message names the file.
        RelcompError: ``run_dir`` is not a folder.

    Example:
        >>> import tempfile, pathlib
        >>> load_run(pathlib.Path(tempfile.mkdtemp()))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        relcomp.errors.DataFormatError: ...quality.json: missing; a relcomp compress output folder holds quality.json and plan.json (and component_relevance.json, explanations/)
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        raise RelcompError(f"{folder}: not a folder (expected a relcomp compress output folder)")
    files: list[Path] = []
    for name in ("quality.json", "plan.json"):
        if not (folder / name).is_file():
            raise DataFormatError(
                folder / name,
                None,
                "missing; a relcomp compress output folder holds quality.json and plan.json "
                "(and component_relevance.json, explanations/)",
            )
    quality_path = folder / "quality.json"
    quality = QualityComparison.from_dict(_read_object(quality_path), source=quality_path)
    files.append(quality_path)
    plan = CompressionPlan.load(folder / "plan.json")
    files.append(folder / "plan.json")

    relevance = None
    if (folder / "component_relevance.json").is_file():
        relevance = ComponentRelevance.load(folder / "component_relevance.json")
        files.append(folder / "component_relevance.json")

    explanations: list[TokenRelevance] = []
    interactions: list[TokenInteractions] = []
    for path in sorted((folder / "explanations").glob("*.json")):
        data = _read_object(path)
        kind = data.get("kind")
        if kind == TokenInteractions.KIND:
            interactions.append(TokenInteractions.from_dict(data, source=path))
        else:
            explanations.append(TokenRelevance.from_dict(data, source=path))
        files.append(path)

    bundle = parity = None
    bundle_path = _find_bundle_file(folder, "relcomp_bundle.json")
    if bundle_path is not None:
        bundle = _read_object(bundle_path)
        files.append(bundle_path)
    parity_path = _find_bundle_file(folder, "parity.json")
    if parity_path is not None:
        parity = _read_object(parity_path)
        files.append(parity_path)
    elif bundle is not None and isinstance(bundle.get("parity"), Mapping):
        parity = bundle["parity"]

    # run.json is the compress flow's own manifest; the flow itself shrugs off an
    # unreadable one (and runs every step again), so the report does too.
    manifest = None
    if (folder / "run.json").is_file():
        recorded: Any
        try:
            recorded = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            recorded = None
        if isinstance(recorded, dict) and isinstance(recorded.get("steps"), dict):
            manifest = recorded
            files.append(folder / "run.json")

    index = index_quality = None
    index_path = _find_bundle_file(folder, INDEX_SETTINGS_FILE)
    if index_path is not None:
        index = IndexSettings.load(index_path)
        files.append(index_path)
        quality_file = index_path.parent / INDEX_QUALITY_FILE
        if quality_file.is_file():
            index_quality = _read_object(quality_file)
            files.append(quality_file)

    return CompressionRun(
        folder=folder,
        quality=quality,
        plan=plan,
        relevance=relevance,
        explanations=tuple(explanations),
        interactions=tuple(interactions),
        bundle=bundle,
        parity=parity,
        manifest=manifest,
        files=tuple(files),
        index=index,
        index_quality=index_quality,
    )
