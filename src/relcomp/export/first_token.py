"""A cross-encoder's last layer at the first token only, for export.

A cross-encoder's head reads the last layer's output at the first token ([CLS])
and nowhere else. So in the last layer only the keys and values need every token:
the queries, the attention output, both LayerNorms and the feed-forward block can
run at the first position alone. While :func:`first_token_last_layer` is active the
model does exactly that, and an ONNX graph exported meanwhile keeps it: scores are
the same (to float rounding), and the last layer costs about one token's work plus
its keys and values.

The attribution engine reads the last layer the same way in torch
(:class:`relcomp.attribution.patch.LRPPatch`'s ``first_token_head``); this is the
plain forward, traceable by the ONNX exporters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from relcomp.attribution.patch import additive_mask
from relcomp.models.base import RankingModel

__all__ = ["first_token_last_layer", "supports_first_token"]

#: Attention styles whose last layer this module knows how to cut.
_STYLES = ("bert",)


def supports_first_token(model: RankingModel) -> bool:
    """Whether :func:`first_token_last_layer` applies: a cross-encoder of a BERT-style family."""
    return model.kind == "cross-encoder" and model.adapter.attention_style in _STYLES


@contextlib.contextmanager
def first_token_last_layer(model: RankingModel) -> Iterator[bool]:
    """Run the last layer at the first token only while the block lasts; yields whether it did.

    Models it does not apply to (bi-encoders, whose pooling reads every token, and
    families other than BERT, RoBERTa and ELECTRA) are left as they are, and the
    block gets ``False``.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> with first_token_last_layer(model) as applied:
        ...     applied
        False
    """
    if not supports_first_token(model):
        yield False
        return
    module = model.model
    layer = model.layer_modules()[-1]
    attention = module.get_submodule(layer.attention)
    output = module.get_submodule(layer.attention_output.rsplit(".", 1)[0])
    attention.forward = _first_query_attention(attention)
    handle = output.register_forward_pre_hook(_first_residual)
    try:
        yield True
    finally:
        handle.remove()
        attention.__dict__.pop("forward", None)


def _first_residual(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    # BertSelfOutput(hidden_states, input_tensor): the residual, cut to the first token
    # like the attention output, so LayerNorm and the feed-forward block run on one token.
    return (args[0], args[1][:, :1], *args[2:])


def _first_query_attention(module: Any) -> Any:
    def forward(
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        batch = hidden_states.shape[0]
        heads, size = module.num_attention_heads, module.attention_head_size

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, -1, heads, size).transpose(1, 2)

        query = split(module.query(hidden_states[:, :1]))
        mask = additive_mask(attention_mask, hidden_states.dtype)
        if mask is not None and mask.dim() == 4 and mask.shape[-2] > 1:
            mask = mask[..., :1, :]
        context = torch.nn.functional.scaled_dot_product_attention(
            query,
            split(module.key(hidden_states)),
            split(module.value(hidden_states)),
            attn_mask=mask,
        )
        if head_mask is not None:
            raise ValueError("first-token export does not take a head mask")
        return context.transpose(1, 2).reshape(batch, 1, heads * size), None

    return forward
