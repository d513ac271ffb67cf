"""ONNX bundles as relcomp models: the same ``score`` / ``encode`` protocol, run by ONNX Runtime.

A bundle is a folder written by :func:`relcomp.export.export_bundle`: the
sentence-transformers layout (config, tokenizer, pooling files) with
``onnx/model_<variant>.onnx`` and a ``relcomp_bundle.json`` marker
(:data:`~relcomp.artifacts.EXPORT_BUNDLE_FILE`). :func:`relcomp.models.load_model`
recognises the marker and returns an :class:`OnnxCrossEncoder` or
:class:`OnnxBiEncoder`, which are a :class:`~relcomp.models.CrossEncoder` /
:class:`~relcomp.models.BiEncoder` whose ``model`` is an ONNX Runtime session behind
the call signature of a transformers model (:class:`OnnxRuntimeModule`). Tokenisation,
truncation counting, pooling, normalisation and similarity are the torch classes'
own code, so a bundle scores exactly the inputs the torch model would.

Attribution and compression need the torch modules; asking an ONNX model for them
raises a :class:`~relcomp.errors.RelcompError` that says so.

Example:
    >>> from relcomp.models import load_model
    >>> model = load_model("runs/bundle")  # doctest: +SKIP
    >>> model.intra_op_num_threads = 2  # doctest: +SKIP
    >>> model.score(["what is a cat"], ["a cat is an animal"])  # doctest: +SKIP
    array([1.234], dtype=float32)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from relcomp._io import file_digest
from relcomp.artifacts import EXPORT_BUNDLE_FILE, ExportBundle
from relcomp.checks import check_weights_finite
from relcomp.errors import ModelLoadError, RelcompError
from relcomp.models.adapters import LayerModules, adapter_for
from relcomp.models.base import ModelKind, RankingModel
from relcomp.models.bi_encoder import BiEncoder
from relcomp.models.cross_encoder import CrossEncoder

__all__ = [
    "OnnxBiEncoder",
    "OnnxCrossEncoder",
    "OnnxRuntimeModule",
    "is_bundle",
    "load_bundle",
    "onnx_session",
]

_OUTPUT_OF_KIND: dict[str, str] = {"cross-encoder": "logits", "bi-encoder": "last_hidden_state"}


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder written by :func:`relcomp.export.export_bundle`."""
    return (Path(path) / EXPORT_BUNDLE_FILE).is_file()


def onnx_session(onnx_path: str | os.PathLike[str], intra_op_num_threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session; ``intra_op_num_threads=None`` lets ONNX Runtime choose.

    Graph optimisation is ORT's full level (``ORT_ENABLE_ALL``); the offline fusions of
    the export are already in the file. Constant ``DequantizeLinear`` nodes are folded
    at load (``session.disable_quant_qdq``), which int8 word embeddings rely on.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    # Fold constant DequantizeLinear nodes at load (per-row int8 word embeddings are
    # dequantized once, not on every call). relcomp writes no QDQ graphs, so the QDQ
    # fusions this also turns off have nothing to act on.
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    if intra_op_num_threads is not None:
        if intra_op_num_threads < 1:
            raise ValueError(f"intra_op_num_threads must be at least 1, got {intra_op_num_threads}")
        options.intra_op_num_threads = int(intra_op_num_threads)
    options.log_severity_level = 3  # errors only: ORT's notices are not the user's business
    try:
        return ort.InferenceSession(
            os.fspath(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own exception types
        raise ModelLoadError(f"{onnx_path}: ONNX Runtime cannot load it: {error}") from None


class OnnxRuntimeModule(nn.Module):
    """An ONNX Runtime session that answers like a transformers model.

    ``module(input_ids=…, attention_mask=…, token_type_ids=…)`` returns an object with
    one attribute, ``output_name`` (``logits`` or ``last_hidden_state``), as a CPU
    float32 tensor. Inputs the graph does not take are dropped; ``token_type_ids``
    that the graph takes but the caller did not give are zeros.
    """

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        config: Any,
        output_name: str,
        intra_op_num_threads: int | None = None,
    ) -> None:
        super().__init__()
        self.onnx_path = Path(onnx_path)
        self.config = config
        self.output_name = output_name
        self._threads = intra_op_num_threads
        self.session = onnx_session(self.onnx_path, intra_op_num_threads)
        self.input_names = [node.name for node in self.session.get_inputs()]
        outputs = [node.name for node in self.session.get_outputs()]
        if output_name not in outputs:
            raise ModelLoadError(
                f"{self.onnx_path}: the graph has outputs {outputs}, expected {output_name!r}"
            )

    @property
    def intra_op_num_threads(self) -> int | None:
        return self._threads

    @intra_op_num_threads.setter
    def intra_op_num_threads(self, value: int | None) -> None:
        if value != self._threads:
            self.session = onnx_session(self.onnx_path, value)
            self._threads = value

    def forward(self, **features: Any) -> SimpleNamespace:
        feeds: dict[str, np.ndarray] = {}
        reference = features.get("input_ids")
        if reference is None:
            raise ValueError("the ONNX model needs input_ids")
        for name in self.input_names:
            value = features.get(name)
            if value is None:
                if name != "token_type_ids":
                    raise ValueError(f"the ONNX model needs the input {name!r}")
                value = torch.zeros_like(torch.as_tensor(reference))
            feeds[name] = _as_int64(value)
        [output] = self.session.run([self.output_name], feeds)
        return SimpleNamespace(**{self.output_name: torch.from_numpy(np.asarray(output))})


def onnx_initializers(onnx_path: str | os.PathLike[str]) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, array)`` of every floating-point initializer (weight) of an ONNX file."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(os.fspath(onnx_path)).graph
    except Exception as error:  # onnx raises its own exception types (DecodeError…)
        raise ModelLoadError(f"{onnx_path}: cannot read the ONNX file: {error}") from None
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    for tensor in graph.initializer:
        if tensor.data_type in floats:
            yield tensor.name, numpy_helper.to_array(tensor)


def _as_int64(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value, dtype=np.int64)


class _OnnxModel:
    """What ONNX bundles share: identity, threads, and refusals of torch-only work."""

    backend = "onnx"
    name: str
    path: Path
    model: Any
    max_length: int
    variant: str
    kind: Any

    bundle: ExportBundle

    @property
    def onnx_path(self) -> Path:
        return Path(self.model.onnx_path)

    @property
    def intra_op_num_threads(self) -> int | None:
        """ONNX Runtime's intra-op threads (``None``: its default); settable."""
        threads: int | None = self.model.intra_op_num_threads
        return threads

    @intra_op_num_threads.setter
    def intra_op_num_threads(self, value: int | None) -> None:
        self.model.intra_op_num_threads = value

    @property
    def cache_key(self) -> str:
        """Identifies the scores: the ONNX files (name, SHA-256), settings and variant."""
        digest = hashlib.sha256()
        identity = f"{self.kind}|onnx|{self.path.resolve()}|{self.max_length}|{self.variant}|{self._identity()}"
        digest.update(identity.encode())
        for file in sorted(self.onnx_path.parent.glob(f"{self.onnx_path.name}*")):
            digest.update(f"{file.name}:{file_digest(file)}".encode())
        return f"{self.kind}-onnx-{digest.hexdigest()[:16]}"

    def _identity(self) -> str:
        return ""

    def _torch_only(self, what: str) -> NoReturn:
        raise RelcompError(
            f"{self.name} is an ONNX bundle: {what} needs the torch model; load the model the "
            f"bundle was exported from ({self.bundle.model})"
        )

    def layer_modules(self) -> list[LayerModules]:
        self._torch_only("attribution and compression")

    def named_linears(self) -> dict[str, nn.Linear]:
        self._torch_only("attribution and compression")


class OnnxCrossEncoder(_OnnxModel, CrossEncoder):
    """A reranker bundle run by ONNX Runtime; scores as :class:`~relcomp.models.CrossEncoder`."""


class OnnxBiEncoder(_OnnxModel, BiEncoder):
    """A retriever bundle run by ONNX Runtime; encodes as :class:`~relcomp.models.BiEncoder`."""

    def _identity(self) -> str:
        return BiEncoder._identity(self)


def load_bundle(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    kind: ModelKind | None = None,
    device: str | torch.device | None = None,
    max_length: int | None = None,
    intra_op_num_threads: int | None = None,
) -> RankingModel:
    """Load an ONNX bundle as an :class:`OnnxCrossEncoder` or :class:`OnnxBiEncoder`.

    Args:
        path: the bundle folder (it holds ``relcomp_bundle.json``).
        name: what to call the model (the path by default).
        kind: checked against the bundle's kind when given.
        device: only the CPU (``None`` or ``"cpu"``): bundles run on ONNX Runtime's CPU provider.
        max_length: longest input in tokens; the length the bundle was exported with by default.
        intra_op_num_threads: ONNX Runtime's intra-op threads (settable later).

    Raises:
        ModelLoadError: the bundle is incomplete or its ONNX file cannot be loaded.
    """
    from transformers import AutoConfig, AutoTokenizer

    folder = Path(path)
    bundle = ExportBundle.load(folder / EXPORT_BUNDLE_FILE)
    if kind is not None and kind != bundle.model_kind:
        raise ModelLoadError(f"{folder}: the bundle holds a {bundle.model_kind}, not a {kind}")
    if device is not None and torch.device(device).type != "cpu":
        raise ModelLoadError(
            f"{folder}: ONNX bundles run on ONNX Runtime's CPU provider; got device {device!r}"
        )
    onnx_path = folder / bundle.onnx_file
    if not onnx_path.is_file():
        raise ModelLoadError(f"{folder}: the bundle's ONNX file {bundle.onnx_file} is missing")
    try:
        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"{folder}: cannot read the bundle's config or tokenizer: {error}"
        ) from None
    adapter = adapter_for(config.model_type)
    check_weights_finite(onnx_initializers(onnx_path), onnx_path)
    module = OnnxRuntimeModule(
        onnx_path, config, _OUTPUT_OF_KIND[bundle.model_kind], intra_op_num_threads
    )
    limit = int(max_length or bundle.max_length)
    label = name if name is not None else os.fspath(path)
    variant = f"onnx-{bundle.variant}"
    model: RankingModel
    if bundle.model_kind == "cross-encoder":
        model = OnnxCrossEncoder(label, folder, module, tokenizer, adapter, limit, variant=variant)
    else:
        from relcomp.models.st_files import sentence_transformers_settings

        settings = sentence_transformers_settings(folder)
        settings.pop("max_length", None)
        model = OnnxBiEncoder(
            label, folder, module, tokenizer, adapter, limit, variant=variant, **settings
        )
    model.bundle = bundle
    return model
