"""Loading models whose structure was changed by relcomp: pruned heads, per-layer FFN widths.

Physical pruning (:func:`relcomp.compression.prune_physically`) and layer dropping
write what a stock config cannot say into the config itself: transformers keeps
``config.pruned_heads`` and re-prunes on load; per-layer FFN widths go to
``config.pruned_intermediate_sizes``, which only :func:`load_pruned_model` reads;
dropped layers leave the indices of the original layers that stay in
``config.relcomp_kept_layers`` (recovery matches each kept layer to its teacher layer).
This lives with the models, not with compression, because :func:`relcomp.models.load_model`
must load such a folder like any other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relcomp.errors import ModelLoadError
from relcomp.models.adapters import ArchitectureAdapter, adapter_for

__all__ = [
    "FFN_WIDTH_KEY",
    "KEPT_LAYERS_KEY",
    "apply_pruned_ffn_widths",
    "linear_at",
    "load_pruned_model",
    "repair_pruned_heads",
    "replace_module",
]

#: The config field that holds per-layer FFN widths after non-uniform neuron pruning.
FFN_WIDTH_KEY = "pruned_intermediate_sizes"
#: The config field that holds, after layers were dropped, the original index of each layer kept.
KEPT_LAYERS_KEY = "relcomp_kept_layers"


def linear_at(model: nn.Module, name: str) -> nn.Linear:
    """The Linear module at dotted ``name`` (an assertion error if it is anything else)."""
    module = model.get_submodule(name)
    assert isinstance(module, nn.Linear)
    return module


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the module at dotted ``name`` was."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


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
        ffn_in, ffn_out = linear_at(model, layer.ffn_in), linear_at(model, layer.ffn_out)
        replace_module(
            model, layer.ffn_in, nn.Linear(ffn_in.in_features, width, bias=ffn_in.bias is not None)
        )
        replace_module(
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
