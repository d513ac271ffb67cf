"""The files a model folder is described by: JSON configs and sentence-transformers' settings.

Read by both the torch loader (:mod:`relcomp.models.loading`) and the ONNX Runtime
one (:mod:`relcomp.models.onnx_backend`), which therefore need not import each other.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from relcomp.errors import ModelLoadError, UnsupportedArchitectureError

__all__ = ["read_model_json", "sentence_transformers_settings"]

logger = logging.getLogger(__name__)


def read_model_json(path: Path) -> Any:
    """A model file's JSON, or a :class:`~relcomp.errors.ModelLoadError` naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path}: cannot read model file: {error}") from None


def sentence_transformers_settings(path: Path) -> dict[str, Any]:
    """Pooling, normalisation, similarity, prompts and max length from the ST files."""
    settings: dict[str, Any] = {"pooling": "mean", "normalize": False, "similarity_name": "cosine"}
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        logger.warning("%s has no modules.json: using mean pooling without normalisation", path)
        return settings
    for module in read_model_json(modules_file):
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            pooling = read_model_json(path / module["path"] / "config.json")
            modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
            if modes == ["pooling_mode_mean_tokens"]:
                settings["pooling"] = "mean"
            elif modes == ["pooling_mode_cls_token"]:
                settings["pooling"] = "cls"
            else:
                raise UnsupportedArchitectureError(
                    f"{path}: pooling {modes} is not supported (relcomp supports mean and CLS pooling)"
                )
        elif kind.endswith("Normalize"):
            settings["normalize"] = True
        elif not kind.endswith("Transformer"):
            raise UnsupportedArchitectureError(
                f"{path}: sentence-transformers module {kind!r} is not supported "
                "(relcomp supports Transformer → Pooling → Normalize)"
            )
    st_config_file = path / "config_sentence_transformers.json"
    if st_config_file.is_file():
        st_config = read_model_json(st_config_file)
        if st_config.get("similarity_fn_name") in {"dot", "dot_product"}:
            settings["similarity_name"] = "dot"
        prompts = st_config.get("prompts") or {}
        settings["query_prompt"] = prompts.get("query", "")
        settings["document_prompt"] = prompts.get("document", prompts.get("passage", ""))
    bert_config_file = path / "sentence_bert_config.json"
    if bert_config_file.is_file():
        settings["max_length"] = read_model_json(bert_config_file).get("max_seq_length")
    return settings
