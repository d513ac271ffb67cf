"""Carry out a plan in torch, reversibly: ``compress_(model, plan)``.

One handler per action type (registered in :data:`HANDLERS`) edits a working copy
of each Linear it touches; edits compose in a fixed order whatever the plan's order
(:data:`~relcomp.compression.resolve.CATEGORY_ORDER`: heads and neurons, unstructured
pruning, low rank, precision, activation sparsity):

* ``prune_heads`` / ``prune_neurons``: zero the rows (and biases) and columns that
  physical pruning would remove, so outputs match the pruned model;
* ``drop_layers``: a forward hook gives each dropped layer's input back as its
  output, so the residual stream passes the layer by, as in the smaller model;
* ``prune_weights``: zero the lowest-scoring weights of each row (``|W|``, or Wanda's
  ``|W|·‖X‖`` when activation statistics are given);
* ``low_rank``: a truncated SVD, computed once, stored as two factors;
* ``fp16`` / ``int8`` / ``int4``: fake quantization of the weight (of each factor
  under ``low_rank``), computed once;
* ``int8(activations=True)`` and ``sparsify``: forward pre-hooks on the Linear's input;
  ``sparsify(rank=…)`` (R-Sparse) adds a forward hook that sends the inputs under the
  threshold through a rank-``rank`` SVD of the finished weight (its factors at the
  module's precision), computed once.

The finished weights replace the parameters' data; the original tensors are kept by
the :class:`CompressionHandle` (and through it by the model, so they are never
lost), and ``remove()`` puts them back: outputs are then bit-for-bit what they were.
While a handle is active, ``model.variant`` names the plan, so caches keyed by
``model.cache_key`` never mix compressed and original scores.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from relcomp.artifacts import CompressionPlan
from relcomp.compression.actions import (
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
)
from relcomp.compression.quantize import (
    fake_quantize_activations,
    fake_quantize_fp16,
    fake_quantize_int4,
    fake_quantize_int8,
)
from relcomp.compression.resolve import (
    CATEGORY_ORDER,
    LinearKeep,
    ModelStructure,
    dropped_layers,
    resolve_on_structure,
    structural_masks,
)
from relcomp.compression.statistics import ActivationStatistics, activation_scales
from relcomp.models.base import RankingModel
from relcomp.registry import Registry, UnknownNameError

__all__ = [
    "HANDLERS",
    "CompressionHandle",
    "LinearEdit",
    "Realisation",
    "active_compression",
    "compress_",
    "weight_quantizer",
]

logger = logging.getLogger(__name__)

#: Part of every compressed variant's name: bumped when the simulation rounds differently
#: (2: int8 weights on onnxruntime's grid, max|w| / 127.5), so cached scores never mix.
SIMULATION_VERSION = "2"

#: Default clip of channel-wise activation ranges, in RMS of the channel (see
#: :meth:`~relcomp.compression.ActivationStatistics.channel_ranges`): none, min–max per
#: channel. On dev data (benchmarks/activation_quantization.py) clipping at 16 or 32×RMS
#: changed no scale and 8×RMS or less cost more than it saved, as per-tensor clipping does.
CHANNEL_CLIP: float | None = None

Handler = Callable[["Realisation", str, Action], None]
#: Action name → the function that carries it out in torch.
HANDLERS: Registry[Handler] = Registry("compression handler")

# Each model's active handle: it holds the original weights while the model lives.
_ACTIVE: weakref.WeakKeyDictionary[RankingModel, CompressionHandle] = weakref.WeakKeyDictionary()


def handler(action_type: type[Action]) -> Callable[[Handler], Handler]:
    """Register the torch handler of an action type."""
    return HANDLERS.register(action_type.name)


@dataclasses.dataclass
class LinearEdit:
    """A working copy of one Linear's parameters, and the input transforms to install."""

    name: str
    module: nn.Linear
    weight: torch.Tensor
    bias: torch.Tensor | None
    keep: LinearKeep
    factors: tuple[torch.Tensor, torch.Tensor] | None = None
    input_transforms: list[tuple[int, Callable[[torch.Tensor], torch.Tensor]]] = dataclasses.field(
        default_factory=list
    )
    weight_changed: bool = False
    bias_changed: bool = False
    #: R-Sparse: ``(threshold, left, right)``; inputs under the threshold go through
    #: ``left @ right`` instead of the weight.
    residual: tuple[float, torch.Tensor, torch.Tensor] | None = None

    def map_weights(
        self, function: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    ) -> None:
        """Apply ``function(matrix, columns)`` to the weight, or to each low-rank factor.

        ``columns`` is the bool mask of kept inputs for the matrix that sees the
        module's inputs, ``None`` for the left factor.
        """
        if self.factors is not None:
            left, right = self.factors
            self.factors = (function(left, None), function(right, self.keep.columns))
        else:
            self.weight = function(self.weight, self.keep.columns)
        self.weight_changed = True

    def final_weight(self) -> torch.Tensor:
        if self.factors is None:
            return self.weight
        left, right = self.factors
        return (left.double() @ right.double()).to(self.weight.dtype)


class Realisation:
    """What handlers work on: the model's structure and a working copy of each Linear."""

    def __init__(
        self,
        model: RankingModel,
        structure: ModelStructure,
        resolved: Mapping[str, list[Action]],
        statistics: Mapping[str, ActivationStatistics] | None,
        scales: Mapping[str, float],
    ) -> None:
        self.model = model
        self.structure = structure
        self.resolved = resolved
        self.statistics = statistics or {}
        self.scales = dict(scales)
        self.keep = structural_masks(resolved, structure)
        self.edits: dict[str, LinearEdit] = {}
        #: per-input-channel scales of ``int8(activations=True, channelwise=True)``
        self.channel_scales: dict[str, torch.Tensor] = {}
        #: layers the residual stream passes by (``drop_layers``), by module name
        self.skipped_layers: list[str] = []

    def linear(self, name: str) -> LinearEdit:
        """The working copy of a Linear, made on first use."""
        if name not in self.edits:
            module = self.structure.linears[name]
            keep = self.keep.get(name, LinearKeep())
            device = module.weight.device
            self.edits[name] = LinearEdit(
                name=name,
                module=module,
                weight=module.weight.detach().clone(),
                bias=module.bias.detach().clone() if module.bias is not None else None,
                keep=LinearKeep(
                    rows=keep.rows.to(device) if keep.rows is not None else None,
                    columns=keep.columns.to(device) if keep.columns is not None else None,
                ),
            )
        return self.edits[name]


# -- handlers: structure ------------------------------------------------------------------
def _zero_pruned(edit: LinearEdit) -> None:
    if edit.keep.rows is not None:
        edit.weight[~edit.keep.rows] = 0.0
        if edit.bias is not None:
            edit.bias[~edit.keep.rows] = 0.0
            edit.bias_changed = True
    if edit.keep.columns is not None:
        edit.weight[:, ~edit.keep.columns] = 0.0
    edit.weight_changed = True


@handler(PruneHeads)
def _prune_heads(realisation: Realisation, module: str, action: Action) -> None:
    layer = realisation.structure.layer_of(module)
    for name in (layer.query, layer.key, layer.value, layer.attention_output):
        _zero_pruned(realisation.linear(name))


@handler(PruneNeurons)
def _prune_neurons(realisation: Realisation, module: str, action: Action) -> None:
    layer = realisation.structure.layer_of(module)
    for name in (layer.ffn_in, layer.ffn_out):
        _zero_pruned(realisation.linear(name))


@handler(DropLayers)
def _drop_layers(realisation: Realisation, module: str, action: Action) -> None:
    for layer in dropped_layers({module: [action]}, realisation.structure):
        realisation.skipped_layers.append(layer.layer)


def _skip_layer(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> Any:
    """A dropped layer's output is its input: what the model gives once the layer is gone."""
    hidden = args[0] if args else next(iter(kwargs.values()))
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden


# -- handlers: weights -----------------------------------------------------------------------
@handler(PruneWeights)
def _prune_weights(realisation: Realisation, module: str, action: Action) -> None:
    assert isinstance(action, PruneWeights)
    edit = realisation.linear(module)
    columns = (
        edit.keep.columns
        if edit.keep.columns is not None
        else torch.ones(edit.weight.shape[1], dtype=torch.bool, device=edit.weight.device)
    )
    kept = edit.weight[:, columns]
    count = math.floor(action.ratio * kept.shape[1])
    if count == 0:
        return
    score = kept.abs().double()
    stats = realisation.statistics.get(module)
    if stats is not None:
        if stats.in_features != edit.weight.shape[1]:
            raise PlanError(
                f"activation statistics of {module!r} have {stats.in_features} input channels, "
                f"the module {edit.weight.shape[1]}: collect them on this model"
            )
        score = score * stats.channel_norm.double().to(score.device)[columns]
    drop = torch.topk(score, count, dim=1, largest=False).indices
    kept = kept.scatter(1, drop, 0.0)
    edit.weight[:, columns] = kept
    edit.weight_changed = True


def svd_factors(
    weight: torch.Tensor, keep: LinearKeep, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(left, right)``, ``out × rank`` and ``rank × in``: the best rank-``rank``
    approximation of ``weight`` over its kept rows and columns (zero elsewhere)."""
    rows = (
        keep.rows
        if keep.rows is not None
        else torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    )
    columns = (
        keep.columns
        if keep.columns is not None
        else torch.ones(weight.shape[1], dtype=torch.bool, device=weight.device)
    )
    kept = weight[rows][:, columns].double()
    u, s, vh = torch.linalg.svd(kept, full_matrices=False)
    root = s[:rank].sqrt()
    rank = root.numel()  # at most the kept matrix's smaller side
    left = weight.new_zeros(weight.shape[0], rank)
    right = weight.new_zeros(rank, weight.shape[1])
    left[rows] = (u[:, :rank] * root).to(left.dtype)
    right[:, columns] = (root[:, None] * vh[:rank]).to(right.dtype)
    return left, right


@handler(LowRank)
def _low_rank(realisation: Realisation, module: str, action: Action) -> None:
    assert isinstance(action, LowRank)
    edit = realisation.linear(module)
    edit.factors = svd_factors(edit.weight, edit.keep, action.rank)
    edit.weight_changed = True


@handler(FP32)
def _fp32(realisation: Realisation, module: str, action: Action) -> None:
    """Full precision: nothing to do (an explicit entry keeps a module out of ``_default``)."""


WeightQuantizer = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def weight_quantizer(action: Action) -> WeightQuantizer | None:
    """``function(matrix, columns)`` that fake-quantizes a weight matrix as ``action``
    stores it (``columns``: the kept inputs, for int4's blocks); ``None`` for fp32.

    Example:
        >>> quantize = weight_quantizer(Int8())
        >>> quantize(torch.tensor([[1.0, -0.5, 0.3]]), None)
        tensor([[ 0.9961, -0.5020,  0.2980]])
    """
    if isinstance(action, FP16):
        return lambda matrix, columns: fake_quantize_fp16(matrix)
    if isinstance(action, Int8):
        return lambda matrix, columns: fake_quantize_int8(matrix, action.per_channel)
    if isinstance(action, Int4):
        return lambda matrix, columns: fake_quantize_int4(matrix, action.block_size, columns)
    return None


def _quantize_weights(realisation: Realisation, module: str, action: Action) -> None:
    quantize = weight_quantizer(action)
    assert quantize is not None
    realisation.linear(module).map_weights(quantize)


@handler(FP16)
def _fp16(realisation: Realisation, module: str, action: Action) -> None:
    _quantize_weights(realisation, module, action)
    edit = realisation.linear(module)
    if edit.bias is not None:
        edit.bias = fake_quantize_fp16(edit.bias)
        edit.bias_changed = True


@handler(Int8)
def _int8(realisation: Realisation, module: str, action: Action) -> None:
    assert isinstance(action, Int8)
    _quantize_weights(realisation, module, action)
    if action.activations:
        scale: float | torch.Tensor = (
            realisation.channel_scales[module] if action.channelwise else realisation.scales[module]
        )
        realisation.linear(module).input_transforms.append(
            (1, lambda x: fake_quantize_activations(x, scale))
        )


@handler(Int4)
def _int4(realisation: Realisation, module: str, action: Action) -> None:
    _quantize_weights(realisation, module, action)


@handler(Sparsify)
def _sparsify(realisation: Realisation, module: str, action: Action) -> None:
    assert isinstance(action, Sparsify)
    threshold = action.threshold
    edit = realisation.linear(module)
    edit.input_transforms.append((0, lambda x: _drop_small(x, threshold)))
    if action.rank is None:
        return
    # R-Sparse: the factors approximate the weight the large inputs meet (pruned and
    # rounded already: sparsity comes last), and are stored at the module's precision.
    left, right = svd_factors(edit.final_weight(), edit.keep, action.rank)
    precision = next(
        (a for a in realisation.resolved.get(module, []) if isinstance(a, PrecisionAction)), None
    )
    quantize = weight_quantizer(precision) if precision is not None else None
    if quantize is not None:
        left, right = quantize(left, None), quantize(right, edit.keep.columns)
    edit.residual = (threshold, left, right)


# -- the handle ---------------------------------------------------------------------------
class CompressionHandle:
    """An applied plan: the original tensors and hooks, and how to undo them.

    Works as a context manager; ``remove()`` is idempotent.

    Attributes:
        model: the compressed model.
        plan: the plan realised.
        resolved: ``{module: actions}`` as carried out.
        variant: ``model.variant`` while the handle is active.
    """

    def __init__(
        self,
        model: RankingModel,
        plan: CompressionPlan,
        resolved: dict[str, list[Action]],
        swaps: list[tuple[torch.Tensor, torch.Tensor]],
        hooks: list[torch.utils.hooks.RemovableHandle],
        previous_variant: str,
        variant: str,
    ) -> None:
        self.model = model
        self.plan = plan
        self.resolved = resolved
        self._swaps = swaps
        self._hooks = hooks
        self._previous_variant = previous_variant
        self.variant = variant

    @property
    def active(self) -> bool:
        return _ACTIVE.get(self.model) is self

    def remove(self) -> None:
        """Restore the original weights, drop the hooks and the variant."""
        if not self.active:
            return
        with torch.no_grad():
            for parameter, original in reversed(self._swaps):
                parameter.data = original
        for hook in self._hooks:
            hook.remove()
        self._swaps.clear()
        self._hooks.clear()
        self.model.variant = self._previous_variant
        del _ACTIVE[self.model]
        logger.info("removed compression %s from %s", self.variant, self.model.name)

    def __enter__(self) -> CompressionHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"CompressionHandle({self.model.name!r}, variant={self.variant!r}, {state})"


def active_compression(model: RankingModel) -> CompressionHandle | None:
    """The handle of the plan currently applied to ``model``, if any."""
    return _ACTIVE.get(model)


def compress_(
    model: RankingModel,
    plan: CompressionPlan | Mapping[str, str],
    *,
    statistics: Mapping[str, ActivationStatistics] | None = None,
    activation_scales: Mapping[str, float] | None = None,
    percentile: float = 100.0,
    channel_clip: float | None = CHANNEL_CLIP,
) -> CompressionHandle:
    """Apply ``plan`` to ``model`` in place (fake quantization and masks); undo with the handle.

    Args:
        model: a relcomp model; one plan at a time (remove the previous handle first).
        plan: a :class:`~relcomp.artifacts.CompressionPlan`, or a ``{pattern: action}``
            mapping for a quick experiment.
        statistics: activation statistics (:func:`collect_activation_statistics`):
            Wanda norms for ``prune_weights``, and clipped scales for
            ``int8(activations=True)`` where ``activation_scales`` gives none.
        activation_scales: ``{Linear name: scale}`` (:func:`calibrate`).
        percentile: where activation scales are clipped when read from ``statistics``
            (see :func:`~relcomp.compression.activation_scales`).
        channel_clip: ``int8(activations=True, channelwise=True)``: each input
            channel's range is its ``max |x|`` over ``statistics``, clipped at this many
            times its RMS (``None``: not clipped); see
            :meth:`~relcomp.compression.ActivationStatistics.channel_ranges`.

    Returns:
        The :class:`CompressionHandle`; ``handle.remove()`` (or leaving its ``with``
        block) restores the model bit for bit.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> before = model.encode(["a cat"])
        >>> with compress_(model, {"_default": "int4(block_size=32)"}) as handle:
        ...     model.variant == handle.variant != "fp32"
        True
        >>> bool((model.encode(["a cat"]) == before).all()), model.variant
        (True, 'fp32')
    """
    if not isinstance(plan, CompressionPlan):
        plan = CompressionPlan(model=model.name, entries=tuple(dict(plan).items()))
    previous = active_compression(model)
    if previous is not None:
        raise PlanError(
            f"{model.name} is already compressed ({previous.variant}); remove that handle first"
        )
    structure = ModelStructure.of(model)
    resolved = resolve_on_structure(plan, structure)
    scales = _activation_scales(resolved, statistics, activation_scales, percentile)
    channel_scales = _channel_scales(resolved, statistics, channel_clip)
    for actions in resolved.values():
        for action in actions:
            try:
                HANDLERS.get(action.name)
            except UnknownNameError:
                raise PlanError(f"{action} has no torch handler; it cannot be simulated") from None
    realisation = Realisation(model, structure, resolved, statistics, scales)
    realisation.channel_scales = channel_scales
    with torch.no_grad():
        for category in CATEGORY_ORDER:
            for module, actions in resolved.items():
                for action in actions:
                    if action.category == category:
                        HANDLERS.get(action.name)(realisation, module, action)
    swaps, hooks = _install(realisation)
    variant = f"{model.variant}|plan-{_digest(plan, realisation)}"
    handle = CompressionHandle(model, plan, resolved, swaps, hooks, model.variant, variant)
    model.variant = variant
    _ACTIVE[model] = handle
    counts = Counter(action.name for actions in resolved.values() for action in actions)
    logger.info(
        "compressed %s with plan %s: %s",
        model.name,
        plan.fingerprint(),
        ", ".join(f"{name} × {count}" for name, count in sorted(counts.items())) or "nothing",
    )
    return handle


def _channel_scales(
    resolved: Mapping[str, list[Action]],
    statistics: Mapping[str, ActivationStatistics] | None,
    clip: float | None,
) -> dict[str, torch.Tensor]:
    """Per-channel input scales (range / 127) of the ``channelwise`` int8 modules."""
    needed = [
        module
        for module, actions in resolved.items()
        if any(isinstance(a, Int8) and a.channelwise for a in actions)
    ]
    missing = [m for m in needed if statistics is None or m not in statistics]
    if missing:
        raise PlanError(
            f"int8(activations=True, channelwise=True) needs activation statistics for "
            f"{len(missing)} module(s), e.g. {missing[0]!r}: pass "
            "statistics=collect_activation_statistics(model, batches)"
        )
    scales = {}
    for module in needed:
        assert statistics is not None
        ranges = statistics[module].channel_ranges(clip)
        scales[module] = torch.where(ranges > 0, ranges / 127, torch.ones_like(ranges))
    return scales


def _activation_scales(
    resolved: Mapping[str, list[Action]],
    statistics: Mapping[str, ActivationStatistics] | None,
    given: Mapping[str, float] | None,
    percentile: float,
) -> dict[str, float]:
    needed = [
        module
        for module, actions in resolved.items()
        if any(isinstance(a, Int8) and a.activations and not a.channelwise for a in actions)
    ]
    scales: dict[str, float] = {}
    missing = []
    for module in needed:
        if given is not None and module in given:
            scales[module] = float(given[module])
        elif statistics is not None and module in statistics:
            scales[module] = activation_scales({module: statistics[module]}, percentile)[module]
        else:
            missing.append(module)
    if missing:
        raise PlanError(
            f"int8(activations=True) needs calibrated activation scales for {len(missing)} "
            f"module(s), e.g. {missing[0]!r}: pass activation_scales=calibrate(model, batches) "
            "or statistics=collect_activation_statistics(model, batches)"
        )
    bad = {m: s for m, s in scales.items() if not (math.isfinite(s) and s > 0)}
    if bad:
        raise PlanError(f"activation scales must be positive and finite, got {bad}")
    return scales


def _install(
    realisation: Realisation,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.utils.hooks.RemovableHandle]]:
    swaps: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks: list[torch.utils.hooks.RemovableHandle] = []
    with torch.no_grad():
        for edit in realisation.edits.values():
            module = edit.module
            if edit.weight_changed:
                swaps.append((module.weight, module.weight.data))
                module.weight.data = edit.final_weight().to(module.weight.dtype)
            if edit.bias_changed and module.bias is not None and edit.bias is not None:
                swaps.append((module.bias, module.bias.data))
                module.bias.data = edit.bias.to(module.bias.dtype)
            if edit.residual is not None:
                # registered first, so that it sees the input before any transform
                hooks += _residual_hooks(module, *edit.residual)
            if edit.input_transforms:
                transforms = [fn for _, fn in sorted(edit.input_transforms, key=lambda t: t[0])]
                hooks.append(module.register_forward_pre_hook(_input_hook(transforms)))
    for name in realisation.skipped_layers:
        layer = realisation.structure.modules[name]
        hooks.append(layer.register_forward_hook(_skip_layer, with_kwargs=True))
    return swaps, hooks


def _drop_small(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``x`` with every entry of magnitude below ``threshold`` set to zero (TEAL).

    One pass of ``hardshrink``, which zeroes ``|x| <= lambd``, instead of three
    (``abs``, compare, ``where``): a third of the time on a 2-core CPU, where the masks
    of 38 Linear inputs otherwise cost as much as the matrix products. ``lambd`` is the
    largest value of ``x``'s dtype below ``threshold`` (as the comparison rounds it), so
    the result is exactly ``torch.where(x.abs() < threshold, 0, x)``.
    """
    if threshold <= 0:
        return x
    return nn.functional.hardshrink(x, _below(threshold, x.dtype))


@functools.lru_cache(maxsize=256)
def _below(threshold: float, dtype: torch.dtype) -> float:
    rounded = torch.tensor(threshold, dtype=dtype)
    return float(torch.nextafter(rounded, torch.zeros_like(rounded)).item())


def _residual_hooks(
    module: nn.Module, threshold: float, left: torch.Tensor, right: torch.Tensor
) -> list[torch.utils.hooks.RemovableHandle]:
    """R-Sparse's low-rank path: ``output + left·right·(x where |x| < threshold)``."""
    inputs: list[torch.Tensor] = []

    def keep_input(module: nn.Module, args: tuple[Any, ...]) -> None:
        inputs.append(args[0])

    def add_low_rank(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
        x = inputs.pop()
        small = torch.where(x.abs() < threshold, x, torch.zeros_like(x))
        factors = (right.to(x.dtype), left.to(x.dtype))
        return output + nn.functional.linear(nn.functional.linear(small, factors[0]), factors[1])

    return [
        module.register_forward_pre_hook(keep_input),
        module.register_forward_hook(add_low_rank),
    ]


def _input_hook(transforms: list[Callable[[torch.Tensor], torch.Tensor]]) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        for transform in transforms:
            x = transform(x)
        return (x, *args[1:])

    return hook


def _digest(plan: CompressionPlan, realisation: Realisation) -> str:
    """The plan's fingerprint, plus the calibration data that changes its outputs."""
    digest = hashlib.sha256(plan.fingerprint().encode())
    digest.update(SIMULATION_VERSION.encode())  # cached scores never mix two roundings
    digest.update(json.dumps(sorted(realisation.scales.items())).encode())
    for module, channel_scales in sorted(realisation.channel_scales.items()):
        digest.update(module.encode() + channel_scales.cpu().numpy().tobytes())
    for module, actions in sorted(realisation.resolved.items()):
        if any(isinstance(a, PruneWeights) for a in actions) and module in realisation.statistics:
            norm = realisation.statistics[module].channel_norm
            digest.update(module.encode() + norm.cpu().numpy().tobytes())
    return digest.hexdigest()[:12]
