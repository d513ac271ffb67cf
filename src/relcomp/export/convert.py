"""torch → ONNX: optimum-onnx where it can express the model, ``torch.onnx.export`` otherwise.

Both trace the in-memory model with the TorchScript exporter, so physically pruned
models (fewer heads, per-layer FFN widths) and forward hooks installed by
:func:`relcomp.compression.compress_` (activation sparsity) are traced as they run.
The graph's inputs are ``input_ids``, ``attention_mask`` and, for models whose
tokenizer makes them, ``token_type_ids``, with dynamic batch and sequence axes; its
output is ``logits`` (cross-encoders) or ``last_hidden_state`` (bi-encoders): what
optimum's ``ORTModelForSequenceClassification`` / ``ORTModelForFeatureExtraction``
and so sentence-transformers' ONNX backend read.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch

from relcomp.errors import RelcompError
from relcomp.export.graph import quiet_tools
from relcomp.models.base import RankingModel

__all__ = ["EXPORTERS", "OUTPUT_NAMES", "export_onnx", "graph_inputs"]

logger = logging.getLogger(__name__)

Exporter = Literal["auto", "optimum", "torch"]
EXPORTERS: tuple[str, ...] = ("auto", "optimum", "torch")
#: The graph output each kind of model exposes.
OUTPUT_NAMES: dict[str, str] = {"cross-encoder": "logits", "bi-encoder": "last_hidden_state"}
_TASKS = {"cross-encoder": "text-classification", "bi-encoder": "feature-extraction"}
#: Default ONNX opset of the torch.onnx path (what optimum uses for BERT-like encoders).
DEFAULT_OPSET = 18


def graph_inputs(model: RankingModel) -> list[str]:
    """The inputs the exported graph takes: the tokenizer's model inputs the model accepts."""
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in getattr(model.tokenizer, "model_input_names", []):
        import inspect

        if "token_type_ids" in inspect.signature(model.model.forward).parameters:
            names.append("token_type_ids")
    return names


def export_onnx(
    model: RankingModel,
    path: str | os.PathLike[str],
    *,
    exporter: Exporter = "auto",
    opset: int | None = None,
) -> tuple[str, list[str]]:
    """Export ``model.model`` (as it is in memory) to one ONNX file at ``path``.

    Args:
        model: a torch relcomp model (pruned or with torch-side edits applied).
        path: the ``.onnx`` file to write.
        exporter: ``optimum``, ``torch``, or ``auto`` (optimum, then ``torch.onnx.export``
            when optimum cannot express the model).
        opset: ONNX opset; each exporter's default when ``None``.

    Returns:
        ``(exporter used, notes)``; the notes say why optimum was not used, if it wasn't.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    path = Path(path)
    notes: list[str] = []
    if exporter in ("auto", "optimum"):
        try:
            _export_with_optimum(model, path, opset)
            return "optimum", notes
        except Exception as error:  # optimum raises many kinds; the fallback says which
            if exporter == "optimum":
                raise RelcompError(f"optimum cannot export {model.name}: {error}") from error
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            notes.append(f"exported with torch.onnx.export: optimum could not ({reason[:200]})")
            logger.warning("%s", notes[-1])
    _export_with_torch(model, path, opset or DEFAULT_OPSET)
    return "torch.onnx", notes


def _export_with_optimum(model: RankingModel, path: Path, opset: int | None) -> None:
    import onnx
    from optimum.exporters.onnx import onnx_export_from_model

    with tempfile.TemporaryDirectory(prefix="relcomp-optimum-") as scratch, quiet_tools():
        onnx_export_from_model(
            model.model,
            scratch,
            task=_TASKS[model.kind],
            opset=opset,
            do_validation=False,
        )
        exported = Path(scratch) / "model.onnx"
        graph = onnx.load(os.fspath(exported), load_external_data=False).graph
        inputs = [node.name for node in graph.input]
        outputs = [node.name for node in graph.output]
        wanted = OUTPUT_NAMES[model.kind]
        if not {"input_ids", "attention_mask"} <= set(inputs) or wanted not in outputs:
            raise RelcompError(
                f"optimum's graph has inputs {inputs} and outputs {outputs}; relcomp needs "
                f"input_ids, attention_mask and {wanted!r}"
            )
        if any(Path(scratch).glob("*.onnx_data")) or any(Path(scratch).glob("*.data")):
            onnx.save_model(onnx.load(os.fspath(exported)), os.fspath(path))
        else:
            shutil.move(os.fspath(exported), os.fspath(path))


def _dummy_features(model: RankingModel) -> dict[str, torch.Tensor]:
    texts = ["a query about cells", "a document about proteins and cells"]
    if model.kind == "cross-encoder":
        batch = model.tokenizer(
            [texts[0]] * 2, [texts[1], texts[0]], padding=True, return_tensors="pt"
        )
    else:
        batch = model.tokenizer(texts, padding=True, return_tensors="pt")
    return {name: batch[name] for name in graph_inputs(model) if name in batch}


def _export_with_torch(model: RankingModel, path: Path, opset: int) -> None:
    features = _dummy_features(model)
    names = list(features)
    output = OUTPUT_NAMES[model.kind]
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in names}
    axes[output] = (
        {0: "batch_size"}
        if model.kind == "cross-encoder"
        else {
            0: "batch_size",
            1: "sequence_length",
        }
    )
    torch_model: Any = model.model
    previous = torch_model.config.return_dict
    torch_model.config.return_dict = False  # a tuple: the first output is the one named
    try:
        with torch.no_grad(), quiet_tools():
            torch.onnx.export(
                torch_model,
                (),
                os.fspath(path),
                kwargs=features,
                input_names=names,
                output_names=[output],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        torch_model.config.return_dict = previous
