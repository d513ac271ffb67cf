"""Compression: a plan is data, and ``compress_`` carries it out in torch, reversibly.

* :class:`~relcomp.artifacts.CompressionPlan` — an ordered ``{pattern: action}``
  map with the budget it was made for and what it achieved;
* :mod:`~relcomp.compression.actions` — the action grammar (``int8(per_channel=True)``,
  ``prune_heads(0,3)``…) and its registry;
* :func:`compress_` — fake quantization, masks, low rank, activation sparsity, all
  undone by the returned handle; :func:`prune_physically` — a smaller copy;
  :func:`factorise_physically` — ``low_rank`` Linears replaced by their two factors;
* :func:`estimate_size` — stored bytes, bits per weight, parameters removed;
* :func:`collect_activation_statistics` / :func:`calibrate` — what planners and
  activation quantization need to know about the data.

Example:
    >>> from relcomp.models import load_model
    >>> model = load_model("all-MiniLM-L6-v2")
    >>> plan = CompressionPlan(model.name, {"_default": "int8"}, method="uniform")
    >>> round(estimate_size(model, plan).size_mb, 1)
    58.5
    >>> with compress_(model, plan):
    ...     vectors = model.encode(["a cat"])
"""

from __future__ import annotations

from relcomp.artifacts import COMPRESSION_BUDGETS, CompressionPlan
from relcomp.compression.actions import (
    ACTIONS,
    FP16,
    FP32,
    Action,
    DropLayers,
    Int4,
    Int8,
    LowRank,
    PlanError,
    PrecisionAction,
    PruneHeads,
    PruneNeurons,
    PruneWeights,
    Sparsify,
    parse_action,
)
from relcomp.compression.factorise import LowRankLinear, factorise_physically
from relcomp.compression.prune import (
    apply_pruned_ffn_widths,
    load_pruned_model,
    parameter_count,
    plan_after_pruning,
    prune_physically,
    repair_pruned_heads,
)
from relcomp.compression.quantize import (
    fake_quantize_activations,
    fake_quantize_dynamic_uint8,
    fake_quantize_fp16,
    fake_quantize_int4,
    fake_quantize_int8,
)
from relcomp.compression.resolve import (
    ModelStructure,
    check_budget,
    head_counts,
    neuron_counts,
    resolve_plan,
    structural_masks,
)
from relcomp.compression.size import (
    LinearSize,
    SizeEstimate,
    estimate_size,
    matrix_bytes,
    weight_bytes,
    weight_bytes_table,
)
from relcomp.compression.statistics import (
    ActivationStatistics,
    activation_scales,
    calibrate,
    calibration_features,
    collect_activation_statistics,
)
from relcomp.compression.torch_realise import (
    HANDLERS,
    CompressionHandle,
    active_compression,
    compress_,
)

__all__ = [
    "ACTIONS",
    "COMPRESSION_BUDGETS",
    "FP16",
    "FP32",
    "HANDLERS",
    "Action",
    "ActivationStatistics",
    "CompressionHandle",
    "CompressionPlan",
    "DropLayers",
    "Int4",
    "Int8",
    "LinearSize",
    "LowRank",
    "LowRankLinear",
    "ModelStructure",
    "PlanError",
    "PrecisionAction",
    "PruneHeads",
    "PruneNeurons",
    "PruneWeights",
    "SizeEstimate",
    "Sparsify",
    "activation_scales",
    "active_compression",
    "apply_pruned_ffn_widths",
    "calibrate",
    "calibration_features",
    "check_budget",
    "collect_activation_statistics",
    "compress_",
    "estimate_size",
    "factorise_physically",
    "fake_quantize_activations",
    "fake_quantize_dynamic_uint8",
    "fake_quantize_fp16",
    "fake_quantize_int4",
    "fake_quantize_int8",
    "head_counts",
    "load_pruned_model",
    "matrix_bytes",
    "neuron_counts",
    "parameter_count",
    "parse_action",
    "plan_after_pruning",
    "prune_physically",
    "repair_pruned_heads",
    "resolve_plan",
    "structural_masks",
    "weight_bytes",
    "weight_bytes_table",
]
