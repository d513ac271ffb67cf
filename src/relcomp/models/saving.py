"""Saving a torch model as a folder that :func:`relcomp.models.load_model` and sentence-transformers load."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from relcomp._io import atomic_directory
from relcomp.models.base import RankingModel

__all__ = ["WEIGHT_SUFFIXES", "copy_model_files", "save_model"]

#: Files that hold weights; a saved model writes its own, never the source's.
WEIGHT_SUFFIXES = frozenset(
    {
        ".safetensors",
        ".bin",
        ".pt",
        ".pth",
        ".h5",
        ".msgpack",
        ".ckpt",
        ".onnx",
        ".onnx_data",
        ".ot",
        ".gguf",
    }
)
# A bundle's own files: a torch model saved from it is not a bundle.
_BUNDLE_FILES = ("relcomp_bundle.json", "plan.json", "parity.json")
_SKIPPED_DIRECTORIES = frozenset({"onnx", "openvino", ".git", ".cache", "__pycache__"})


def copy_model_files(source: Path, target: Path, skip: Iterable[str] = ()) -> None:
    """The source folder's config, tokenizer and sentence-transformers files, not its weights.

    Args:
        source: a model folder.
        target: where the files go (created as needed).
        skip: file names to leave out as well (a bundle's own marker files, say).
    """
    skipped = set(skip)
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if any(part in _SKIPPED_DIRECTORIES or part.startswith(".") for part in relative.parts):
            continue
        if path.is_dir():
            (target / relative).mkdir(parents=True, exist_ok=True)
            continue
        weights_index = relative.name.endswith((".safetensors.index.json", ".bin.index.json"))
        if path.suffix in WEIGHT_SUFFIXES or relative.name in skipped or weights_index:
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / relative)  # not copy2: sources may be read-only


def save_model(
    model: RankingModel,
    folder: str | os.PathLike[str],
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model`` (torch) as a model folder: weights, config, tokenizer, sentence-transformers files.

    The folder is written under a temporary name and renamed, so it is complete or
    absent. Structural changes (pruned heads, per-layer FFN widths, dropped layers)
    are in the config, so ``load_model(folder)`` gives the same scores back; a
    bi-encoder's ``sentence_bert_config.json`` records the model's ``max_length``.
    ``extra_files`` (name → text) are written into the folder before it is renamed
    into place, so they are there exactly when the model is.

    Example:
        >>> import tempfile
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> saved = save_model(model, tempfile.mkdtemp() + "/copy")
        >>> load_model(saved).encode(["a cat"]).shape
        (1, 384)
    """
    import json

    if not hasattr(model.model, "save_pretrained"):
        raise TypeError(f"{model.name} is not a torch model (an ONNX bundle is already saved)")
    target = Path(folder)
    with atomic_directory(target) as staging:
        copy_model_files(model.path, staging, skip=_BUNDLE_FILES)
        torch_model: Any = model.model
        torch_model.save_pretrained(staging, safe_serialization=True)
        model.tokenizer.save_pretrained(staging)
        st_config = staging / "sentence_bert_config.json"
        if model.kind == "bi-encoder" and st_config.is_file():
            settings = json.loads(st_config.read_text(encoding="utf-8"))
            settings["max_seq_length"] = model.max_length
            st_config.write_text(json.dumps(settings, indent=2), encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
    return target
