"""Quantization-aware recovery: train the student through the rounding its export will do.

A recovered model distilled in fp32 and then quantized pays the quantization on top
(on the 70 %-pruned reranker, dynamic int8 cost ~1.5 nDCG@10 points that recovery had
just won back). Training through the quantizer lets the weights settle where rounding
hurts least. :class:`QuantizationAware` installs, reversibly, what ONNX Runtime will
compute for each Linear the plan quantizes:

* the weights rounded as the export stores them
  (:func:`~relcomp.compression.weight_quantizer`: int8 on onnxruntime's grid, int4
  blocks, fp16);
* for dynamic int8 (``int8`` without ``activations=True``), the input rounded as
  ``DynamicQuantizeLinear`` does at run time: one asymmetric uint8 scale per tensor,
  from its minimum and maximum (zero always included).

Both with straight-through gradients, so the optimizer updates the fp32 master
weights, which are what the export then quantizes. Statically calibrated int8
(``activations=True``) and non-precision actions are refused: their rounding depends
on calibration data the training loop does not have.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from relcomp.artifacts import CompressionPlan
from relcomp.compression.actions import FP32, Int8, PlanError
from relcomp.compression.quantize import fake_quantize_dynamic_uint8
from relcomp.compression.resolve import ModelStructure, resolve_on_structure
from relcomp.compression.torch_realise import weight_quantizer
from relcomp.models import RankingModel

__all__ = ["QuantizationAware", "quantization_actions"]

logger = logging.getLogger(__name__)


class _StraightThrough(nn.Module):
    """A weight parametrization: the quantized value forward, the identity backward."""

    def __init__(self, quantize: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]):
        super().__init__()
        self.quantize = quantize

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            rounded = self.quantize(weight.detach(), None)
        return weight + (rounded - weight).detach()


def _dynamic_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (fake_quantize_dynamic_uint8(args[0]), *args[1:])


def quantization_actions(plan: CompressionPlan, model: RankingModel) -> dict[str, Any]:
    """``{Linear name: precision action}`` of what ``plan`` quantizes in ``model``.

    Raises:
        PlanError: the plan holds an action quantization-aware training cannot
            simulate (structure, sparsity, statically calibrated int8).
    """
    resolved = resolve_on_structure(plan, ModelStructure.of(model))
    chosen: dict[str, Any] = {}
    for module, actions in resolved.items():
        for action in actions:
            if isinstance(action, FP32):
                continue
            if action.category != "precision":
                raise PlanError(
                    f"quantization-aware recovery simulates precision only; {action} on "
                    f"{module!r} is not a precision action"
                )
            if isinstance(action, Int8) and action.activations:
                raise PlanError(
                    f"quantization-aware recovery simulates dynamic int8 only; {action} on "
                    f"{module!r} needs calibrated activation scales"
                )
            chosen[module] = action
    return chosen


class QuantizationAware:
    """Install ``plan``'s rounding on ``model`` for training; ``remove()`` takes it off.

    After removal the model holds its (trained) fp32 weights, as the export expects.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> before = model.encode(["a cat"])
        >>> with QuantizationAware(model, CompressionPlan(model.name, (("_default", "int8"),))):
        ...     bool((model.encode(["a cat"]) == before).all())
        False
        >>> bool((model.encode(["a cat"]) == before).all())
        True
    """

    def __init__(self, model: RankingModel, plan: CompressionPlan):
        self.model = model
        self.actions = quantization_actions(plan, model)
        modules = dict(model.model.named_modules())
        self._parametrized: list[nn.Module] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        for name, action in self.actions.items():
            module = modules[name]
            quantize = weight_quantizer(action)
            if quantize is not None:
                parametrize.register_parametrization(module, "weight", _StraightThrough(quantize))
                self._parametrized.append(module)
            if isinstance(action, Int8):
                self._hooks.append(module.register_forward_pre_hook(_dynamic_input))
        counts = Counter(str(action) for action in self.actions.values())
        logger.info(
            "quantization-aware training on %s: %s",
            model.name,
            ", ".join(f"{name} × {count}" for name, count in sorted(counts.items())) or "nothing",
        )

    def remove(self) -> None:
        """Take the rounding off; the module keeps its trained fp32 weights."""
        for module in self._parametrized:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        for hook in self._hooks:
            hook.remove()
        self._parametrized, self._hooks = [], []

    def __enter__(self) -> QuantizationAware:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
