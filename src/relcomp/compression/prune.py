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
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from relcomp.artifacts import CompressionPlan
from relcomp.compression.actions import PlanError, PruneHeads
from relcomp.compression.resolve import ModelStructure, resolve_on_structure, structural_masks
from relcomp.compression.torch_realise import active_compression
from relcomp.errors import ModelLoadError
from relcomp.models.adapters import ArchitectureAdapter, adapter_for
from relcomp.models.base import RankingModel

__all__ = [
    "FFN_WIDTH_KEY",
    "apply_pruned_ffn_widths",
    "load_pruned_model",
    "parameter_count",
    "prune_physically",
    "repair_pruned_heads",
]

logger = logging.getLogger(__name__)

#: The config field that holds per-layer FFN widths after non-uniform neuron pruning.
FFN_WIDTH_KEY = "pruned_intermediate_sizes"
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
    """A pruned deep copy of ``model``: the plan's heads and FFN neurons removed for real.

    Only ``prune_heads`` and ``prune_neurons`` are carried out; the rest of the plan
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
            _replace(
                torch_model,
                layer.ffn_in,
                prune_linear_layer(_get(torch_model, layer.ffn_in), index, dim=0),
            )
            _replace(
                torch_model,
                layer.ffn_out,
                prune_linear_layer(_get(torch_model, layer.ffn_out), index, dim=1),
            )
        widths.append(int(_get(torch_model, layer.ffn_in).out_features))
    _record_ffn_widths(torch_model.config, widths)
    for parameter in torch_model.parameters():  # new Linears come back trainable
        parameter.requires_grad_(trainable)
    torch_model.eval()
    pruned.variant = f"{model.variant}|pruned-{structural.fingerprint()}"
    after = parameter_count(pruned)
    logger.info(
        "pruned %s physically: %d heads, %d FFN neurons; %d → %d parameters (%.1f %% fewer)",
        model.name,
        sum(len(h) for h in heads.values()),
        sum(structure.neurons.values()) - sum(widths),
        before,
        after,
        100 * (1 - after / before),
    )
    return pruned


def _get(model: nn.Module, name: str) -> nn.Linear:
    module = model.get_submodule(name)
    assert isinstance(module, nn.Linear)
    return module


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


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


def apply_pruned_ffn_widths(model: nn.Module, adapter: ArchitectureAdapter | None = None) -> bool:
    """Reshape a freshly built model's FFNs to ``config.pruned_intermediate_sizes``.

    The new Linears are uninitialised: load the weights afterwards. Returns whether
    anything was reshaped.
    """
    config: Any = model.config
    widths = getattr(config, FFN_WIDTH_KEY, None)
    if not widths:
        return False
    adapter = adapter or adapter_for(config.model_type)
    layers = adapter.layer_modules(model)
    if len(widths) != len(layers):
        raise ModelLoadError(
            f"config.{FFN_WIDTH_KEY} has {len(widths)} widths for {len(layers)} layers"
        )
    for layer, width in zip(layers, widths, strict=True):
        ffn_in, ffn_out = _get(model, layer.ffn_in), _get(model, layer.ffn_out)
        _replace(
            model, layer.ffn_in, nn.Linear(ffn_in.in_features, width, bias=ffn_in.bias is not None)
        )
        _replace(
            model,
            layer.ffn_out,
            nn.Linear(width, ffn_out.out_features, bias=ffn_out.bias is not None),
        )
    return True


def repair_pruned_heads(model: nn.Module, adapter: ArchitectureAdapter | None = None) -> int:
    """Make a model whose heads transformers pruned run: MPNet's position bias per layer.

    Idempotent; returns how many attention modules carry the repair. Other families
    need none (their attention has no per-head state outside the pruned Linears).
    """
    config: Any = model.config
    adapter = adapter or adapter_for(config.model_type)
    if adapter.attention_style != "mpnet" or not config.pruned_heads:
        return 0
    pruned = {int(k): set(v) for k, v in config.pruned_heads.items()}
    repaired = 0
    for layer in adapter.layer_modules(model):
        gone = pruned.get(layer.index)
        if not gone:
            continue
        attention = model.get_submodule(layer.attention)
        kept = [h for h in range(int(config.num_attention_heads)) if h not in gone]
        if hasattr(attention, "relcomp_kept_heads"):
            attention.relcomp_kept_heads = torch.tensor(kept)
        else:  # a buffer follows the model across devices; not saved: the config says it
            attention.register_buffer("relcomp_kept_heads", torch.tensor(kept), persistent=False)
        if _keep_position_bias not in attention._forward_pre_hooks.values():
            attention.register_forward_pre_hook(_keep_position_bias, with_kwargs=True)
        repaired += 1
    return repaired


def _keep_position_bias(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """MPNet passes ``position_bias`` (batch, heads, q, k) fourth, or by name."""
    kept: Any = module.relcomp_kept_heads
    if len(args) > 3 and args[3] is not None and args[3].shape[1] != len(kept):
        args = (*args[:3], args[3][:, kept], *args[4:])
    bias = kwargs.get("position_bias")
    if bias is not None and bias.shape[1] != len(kept):
        kwargs["position_bias"] = bias[:, kept]
    return args, kwargs


def load_pruned_model(
    auto_class: Any, model_name_or_path: str | os.PathLike[str], **kwargs: Any
) -> nn.Module:
    """``auto_class.from_pretrained`` that also loads models with per-layer FFN widths.

    A model without ``config.pruned_intermediate_sizes`` loads through
    ``from_pretrained``; one with it is built from its config (heads pruned as
    ``config.pruned_heads`` says), reshaped by :func:`apply_pruned_ffn_widths` and
    loaded from its ``model.safetensors``. Either way :func:`repair_pruned_heads`
    runs last.

    Example:
        >>> from transformers import AutoModel
        >>> from relcomp.models.loading import default_retriever_path
        >>> model = load_pruned_model(AutoModel, default_retriever_path())
        >>> type(model).__name__
        'BertModel'
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig

    path = Path(model_name_or_path)
    config = AutoConfig.from_pretrained(path)
    if not getattr(config, FFN_WIDTH_KEY, None):
        model = auto_class.from_pretrained(path, **kwargs)
        repair_pruned_heads(model)
        return model
    init_kwargs = {k: v for k, v in kwargs.items() if k not in ("revision", "dtype", "torch_dtype")}
    model = auto_class.from_config(config, **init_kwargs)
    apply_pruned_ffn_widths(model)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path}: a model with per-layer FFN widths needs model.safetensors")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    result = model.load_state_dict(state, strict=False)
    expected = {name for name, _ in model.named_parameters()}
    missing = [key for key in result.missing_keys if key in expected]
    if missing:
        raise ModelLoadError(f"{path}: weights missing for {missing[:5]}")
    repair_pruned_heads(model)
    return model.eval()
