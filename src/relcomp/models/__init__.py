"""Model adapters: rerankers and retrievers behind one scoring protocol."""

from __future__ import annotations

from relcomp.models.adapters import (
    ADAPTERS,
    ArchitectureAdapter,
    LayerModules,
    adapter_for,
    supported_model_types,
)
from relcomp.models.base import ModelKind, RankingModel, Scorer
from relcomp.models.bi_encoder import BiEncoder
from relcomp.models.cross_encoder import CrossEncoder
from relcomp.models.loading import (
    DEFAULT_RETRIEVER,
    default_retriever_path,
    detect_kind,
    load_model,
    resolve_model_path,
)
from relcomp.models.onnx_backend import (
    OnnxBiEncoder,
    OnnxCrossEncoder,
    is_bundle,
    load_bundle,
)
from relcomp.models.saving import copy_model_files, save_model

__all__ = [
    "ADAPTERS",
    "DEFAULT_RETRIEVER",
    "ArchitectureAdapter",
    "BiEncoder",
    "CrossEncoder",
    "LayerModules",
    "ModelKind",
    "OnnxBiEncoder",
    "OnnxCrossEncoder",
    "RankingModel",
    "Scorer",
    "adapter_for",
    "copy_model_files",
    "default_retriever_path",
    "detect_kind",
    "is_bundle",
    "load_bundle",
    "load_model",
    "resolve_model_path",
    "save_model",
    "supported_model_types",
]
