"""Physical pruning: a new, smaller model without the pruned heads and FFN neurons.

Heads go through transformers' own ``prune_heads`` (every family relcomp supports
has it), which records them in ``config.pruned_heads``; a saved model reloads with
stock ``from_pretrained``, which prunes the same heads again before loading. MPNet's
``prune_heads`` forgets the relative position bias, which the encoder computes once
for all heads of all layers; relcomp adds a forward pre-hook to each pruned MPNet
attention module that keeps the bias of the remaining heads
(:func:`repair_pruned_heads`, which :func:`load_pruned_model` also applies).

FFN neurons are removed by slicing the FFN's input Linear (rows and bias) and output
Linear (columns). When every layer keeps the same number of neurons, the config's
FFN width (``intermediate_size``, DistilBERT's ``hidden_dim``) is updated and the
model round-trips through stock ``save_pretrained`` / ``from_pretrained``. A stock
config cannot describe layers of different widths, so then the widths are written
to ``config.pruned_intermediate_sizes`` (saved with the config) and the model loads
through :func:`load_pruned_model`, which builds the model from its config, reshapes
the FFNs and loads the weights. An ONNX export traces the in-memory model, whatever
its widths.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from relcomp.artifacts import CompressionPlan
from relcomp.compression.actions import PlanError, PruneHeads
from relcomp.compression.resolve import (
    ModelStructure,
    dropped_layers,
    resolve_on_structure,
    structural_masks,
)
from relcomp.compression.torch_realise import active_compression
from relcomp.models.base import RankingModel
from relcomp.models.pruned import (
    FFN_WIDTH_KEY,
    KEPT_LAYERS_KEY,
    apply_pruned_ffn_widths,
    linear_at,
    load_pruned_model,
    repair_pruned_heads,
    replace_module,
)

__all__ = [
    "FFN_WIDTH_KEY",
    "apply_pruned_ffn_widths",
    "load_pruned_model",
    "parameter_count",
    "plan_after_pruning",
    "prune_physically",
    "repair_pruned_heads",
]

logger = logging.getLogger(__name__)

_WIDTH_FIELDS = ("intermediate_size", "hidden_dim")


def parameter_count(model: RankingModel | nn.Module) -> int:
    """Number of parameters of a model (shared tensors once).

    Example:
        >>> from relcomp.models import load_model
        >>> parameter_count(load_model("all-MiniLM-L6-v2"))
        22565376
    """
    module = model.model if isinstance(model, RankingModel) else model
    return sum(p.numel() for p in module.parameters())


def prune_physically(model: RankingModel, plan: CompressionPlan) -> RankingModel:
    """A pruned deep copy of ``model``: the plan's heads, FFN neurons and layers removed for real.

    Only ``prune_heads``, ``prune_neurons`` and ``drop_layers`` are carried out; the rest of the plan
    (``plan.split_structural()[1]``) applies unchanged to the returned model with
    :func:`~relcomp.compression.compress_`, as module names survive pruning. The new
    model's ``variant`` names the pruning, so caches keep it apart from the original.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> plan = CompressionPlan("m", {"_default": "prune_neurons(ratio=0.5)"})
        >>> smaller = prune_physically(model, plan)
        >>> smaller.model.config.intermediate_size, smaller.variant.startswith("fp32|pruned-")
        (768, True)
    """
    if active_compression(model) is not None:
        raise PlanError(
            f"{model.name} is compressed in place; remove the handle before pruning physically"
        )
    structural, rest = plan.split_structural()
    if rest.entries:
        logger.info(
            "prune_physically carries out head and neuron pruning only; %d other entries are "
            "left for compress_",
            len(rest.entries),
        )
    structure = ModelStructure.of(model)
    resolved = resolve_on_structure(structural, structure)
    keep = structural_masks(resolved, structure)
    before = parameter_count(model)
    trainable = any(p.requires_grad for p in model.model.parameters())
    pruned = copy.deepcopy(model)
    heads: dict[int, list[int]] = {}
    for module, actions in resolved.items():
        for action in actions:
            if isinstance(action, PruneHeads):
                heads[structure.layer_of(module).index] = list(action.heads)
    torch_model: Any = pruned.model
    if heads:
        torch_model.prune_heads(heads)
        repair_pruned_heads(torch_model, model.adapter)
    widths = []
    for layer in structure.layers:
        mask = keep.get(layer.ffn_in)
        if mask is not None and mask.rows is not None:
            index: Any = torch.nonzero(mask.rows).flatten()
            replace_module(
                torch_model,
                layer.ffn_in,
                prune_linear_layer(linear_at(torch_model, layer.ffn_in), index, dim=0),
            )
            replace_module(
                torch_model,
                layer.ffn_out,
                prune_linear_layer(linear_at(torch_model, layer.ffn_out), index, dim=1),
            )
        widths.append(int(linear_at(torch_model, layer.ffn_in).out_features))
    _record_ffn_widths(torch_model.config, widths)
    dropped = [layer.index for layer in dropped_layers(resolved, structure)]
    if dropped:
        _drop_layers(torch_model, structure.layer_list, dropped)
    for parameter in torch_model.parameters():  # new Linears come back trainable
        parameter.requires_grad_(trainable)
    torch_model.eval()
    pruned.variant = f"{model.variant}|pruned-{structural.fingerprint()}"
    after = parameter_count(pruned)
    logger.info(
        "pruned %s physically: %d heads, %d FFN neurons, %d layers; %d → %d parameters "
        "(%.1f %% fewer)",
        model.name,
        sum(len(h) for h in heads.values()),
        sum(structure.neurons.values()) - sum(widths),
        len(dropped),
        before,
        after,
        100 * (1 - after / before),
    )
    return pruned


def plan_after_pruning(
    plan: CompressionPlan, model: RankingModel, structural: CompressionPlan
) -> CompressionPlan:
    """``plan`` (non-structural) for the model ``prune_physically(model, structural)`` gives.

    Head and neuron pruning keep module names, so the plan is returned as it is. When
    ``structural`` drops layers, the layers after them are renumbered: the plan is
    resolved on ``model`` and written back module by module under the new names, and
    what it said about the dropped layers goes with them.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> rest = CompressionPlan("m", {"encoder.layer.5.output.dense": "int4"})
        >>> moved = plan_after_pruning(rest, model, CompressionPlan("m", {"_default": "drop_layers(1)"}))
        >>> moved.entries
        (('encoder.layer.4.output.dense', 'int4(block_size=32)'),)
    """
    structure = ModelStructure.of(model)
    dropped = {
        layer.index
        for layer in dropped_layers(resolve_on_structure(structural, structure), structure)
    }
    if not dropped:
        return plan
    kept = [index for index in range(len(structure.layers)) if index not in dropped]
    new_index = {old: new for new, old in enumerate(kept)}
    prefix = f"{structure.layer_list}."
    entries: list[tuple[str, str]] = []
    for module, actions in resolve_on_structure(plan, structure).items():
        if module.startswith(prefix):
            index, _, rest = module[len(prefix) :].partition(".")
            if int(index) in dropped:
                continue
            module = f"{prefix}{new_index[int(index)]}" + (f".{rest}" if rest else "")
        entries.extend((module, str(action)) for action in actions)
    return dataclasses.replace(plan, entries=tuple(entries))


def _drop_layers(model: nn.Module, layer_list: str, dropped: list[int]) -> None:
    """Remove whole layers and renumber what the config says per layer.

    The config keeps its per-layer records (``pruned_heads``, per-layer FFN widths) for
    the layers that stay, under their new indices, so a saved model loads back with
    stock ``from_pretrained`` (or :func:`load_pruned_model` for per-layer widths). It
    also records which of the original layers stay (``config.relcomp_kept_layers``,
    indices in the model before any layer was dropped, so dropping twice composes):
    what recovery's hidden-state matching pairs each layer with.
    """
    config: Any = model.config
    layers: Any = model.get_submodule(layer_list)
    kept = [index for index in range(len(layers)) if index not in set(dropped)]
    original = getattr(config, KEPT_LAYERS_KEY, None) or list(range(len(layers)))
    setattr(config, KEPT_LAYERS_KEY, [int(original[index]) for index in kept])
    replace_module(model, layer_list, nn.ModuleList([layers[index] for index in kept]))
    new_index = {old: new for new, old in enumerate(kept)}
    remaining: Any = model.get_submodule(layer_list)
    for new, layer in enumerate(remaining):
        for module in layer.modules():  # attention modules that know their index
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    count_field = "n_layers" if hasattr(config, "n_layers") else "num_hidden_layers"
    setattr(config, count_field, len(kept))
    if config.pruned_heads:
        config.pruned_heads = {
            new_index[int(k)]: list(v)
            for k, v in config.pruned_heads.items()
            if int(k) in new_index
        }
    widths = getattr(config, FFN_WIDTH_KEY, None)
    if widths:
        setattr(config, FFN_WIDTH_KEY, [widths[index] for index in kept])
        if len(set(getattr(config, FFN_WIDTH_KEY))) == 1:  # the rest share one width now
            _record_ffn_widths(config, list(getattr(config, FFN_WIDTH_KEY)))


def _width_field(config: Any) -> str:
    for field in _WIDTH_FIELDS:
        if isinstance(getattr(config, field, None), int):
            return field
    raise PlanError(f"cannot find the FFN width in a {type(config).__name__}")


def _record_ffn_widths(config: Any, widths: list[int]) -> None:
    if not widths:
        return
    if len(set(widths)) == 1:
        setattr(config, _width_field(config), widths[0])
        if hasattr(config, FFN_WIDTH_KEY):
            delattr(config, FFN_WIDTH_KEY)
    else:
        setattr(config, FFN_WIDTH_KEY, widths)
        logger.info(
            "FFN widths differ between layers (%s): stored in config.%s; load the saved model "
            "with relcomp.compression.load_pruned_model",
            widths,
            FFN_WIDTH_KEY,
        )
