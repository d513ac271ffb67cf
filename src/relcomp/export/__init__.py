"""Export: a model and its compression plan, realised for ONNX Runtime, checked, shipped.

* :func:`export_bundle` — prune in torch, export (optimum-onnx, or ``torch.onnx``),
  fuse (onnxruntime's transformer optimiser), quantize node by node as the plan says
  (``quantize_dynamic`` / ``quantize_static`` / ``MatMulNBits``), optionally run the
  token-wise operators on real tokens only (:func:`remove_padding`), measure parity, run
  the quality gate, and only then move the sentence-transformers-layout folder into
  place;
* :func:`check_parity` / :func:`parity_groups` — score error and ranking agreement
  against the torch model, on real pairs (:class:`~relcomp.artifacts.ParityReport`);
* :func:`quality_gate` — nDCG@10 loss on a dev split against an allowance
  (:class:`QualityGateError` when exceeded).

A bundle loads back with :func:`relcomp.models.load_model` (ONNX Runtime behind the
usual ``score`` / ``encode``) and with sentence-transformers::

    CrossEncoder(OUT, backend="onnx", model_kwargs={"file_name": "onnx/model_<variant>.onnx"})

Example:
    >>> from relcomp.models import load_model
    >>> model = load_model("all-MiniLM-L6-v2")  # doctest: +SKIP
    >>> plan = CompressionPlan(model.name, {"_default": "int8"}, method="uniform")  # doctest: +SKIP
    >>> bundle = export_bundle(model, "runs/minilm-int8", plan=plan)  # doctest: +SKIP
    >>> load_model("runs/minilm-int8").encode(["a cat"]).shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

from relcomp.artifacts import EXPORT_BUNDLE_FILE, CompressionPlan, ExportBundle, ParityReport

# The gate and the parity data are evaluation's (pipeline.export hands them to
# export_bundle); their names stay importable from here.
from relcomp.evaluation.gate import GateResult, QualityGateError, gate_split, quality_gate
from relcomp.evaluation.sampling import parity_groups
from relcomp.export.bundle import PARITY_FILE, PLAN_FILE, default_variant, export_bundle
from relcomp.export.convert import EXPORTERS, export_onnx
from relcomp.export.graph import linear_nodes, module_of_node, onnx_size, op_counts
from relcomp.export.ort_realise import (
    ORT_HANDLERS,
    OrtRealisation,
    precision_label,
    realise_for_ort,
)
from relcomp.export.parity import ParityGroups, check_parity
from relcomp.export.remove_padding import PaddingRemoval, remove_padding

__all__ = [
    "EXPORTERS",
    "EXPORT_BUNDLE_FILE",
    "ORT_HANDLERS",
    "PARITY_FILE",
    "PLAN_FILE",
    "CompressionPlan",
    "ExportBundle",
    "GateResult",
    "OrtRealisation",
    "PaddingRemoval",
    "ParityGroups",
    "ParityReport",
    "QualityGateError",
    "check_parity",
    "default_variant",
    "export_bundle",
    "export_onnx",
    "gate_split",
    "linear_nodes",
    "module_of_node",
    "onnx_size",
    "op_counts",
    "parity_groups",
    "precision_label",
    "quality_gate",
    "realise_for_ort",
    "remove_padding",
]
