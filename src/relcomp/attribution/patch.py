"""Install LRP rules on a loaded encoder, reversibly.

:class:`LRPPatch` overrides ``forward`` on *instances* (attention modules,
LayerNorms, activations, classification heads) and registers forward hooks on
Linear layers; ``remove()`` deletes every override and hook, so the model's
outputs are bit-for-bit what they were. ``transformers`` itself is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.autograd import forward_ad

from relcomp.attribution.composites import Composite, get_composite
from relcomp.attribution.rules import Epsilon, GradientMatmul, scale_gradient
from relcomp.errors import UnsupportedArchitectureError
from relcomp.models.base import RankingModel

__all__ = ["LRPPatch", "additive_mask", "attend"]


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Any attention-mask form transformers passes → an additive float mask (or None)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return (
            torch.zeros((), dtype=dtype)
            .masked_fill(~mask, torch.finfo(dtype).min)
            .expand(mask.shape)
        )
    if mask.dim() == 2:  # (batch, keys) of 1 = attend, 0 = padding
        keep = mask[:, None, None, :].to(dtype)
        return (1.0 - keep) * torch.finfo(dtype).min
    return mask.to(dtype)


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    composite: Composite,
    mask: torch.Tensor | None = None,
    position_bias: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention over ``(batch, heads, tokens, head_dim)`` with LRP rules.

    With ``composite.fused_attention`` (the default) the rules are realised on top of
    torch's fused ``scaled_dot_product_attention``: in gradient × input form, the
    uniform rule halves each operand's gradient of ``Q Kᵀ`` and ``A V`` and the
    AttnLRP softmax rule is the softmax's own gradient, so scaling the gradients of
    ``Q``, ``K`` (by ¼) and ``V`` (by ½) gives the same relevance without ever
    materialising the attention matrix for the backward pass. CP-LRP detaches
    ``Q`` and ``K``. Only the rules' ε stabilisers of the two products are left out
    (they matter only for outputs within ~ε of zero). The explicit path, used when
    ``fused_attention`` is off or a head mask is given, applies every rule as written
    and also returns the attention probabilities.
    """
    if composite.fused_attention and head_mask is None:
        value_scale = composite.attention_value.operand_scale
        score_scale = (
            value_scale * composite.query_key.operand_scale
            if composite.softmax.scores_relevant
            else 0.0
        )
        bias = mask if position_bias is None else position_bias + (0 if mask is None else mask)
        context = torch.nn.functional.scaled_dot_product_attention(
            scale_gradient(query, score_scale),
            scale_gradient(key, score_scale),
            scale_gradient(value, value_scale),
            attn_mask=bias,
        )
        return context, None
    scores = composite.query_key.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1])
    if position_bias is not None:
        scores = scores + position_bias
    if mask is not None:
        scores = scores + mask
    probabilities = composite.softmax.softmax(scores)
    if head_mask is not None:
        probabilities = probabilities * head_mask
    return composite.attention_value.matmul(probabilities, value), probabilities


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, width = x.shape
    return x.view(batch, tokens, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, size = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * size)


def _first(x: torch.Tensor, first_query: bool) -> torch.Tensor:
    """The first position of ``(batch, tokens, width)`` when only it is read, else all."""
    return x[:, :1] if first_query else x


def _query_rows(bias: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    """A mask or position bias cut to the query rows kept (broadcast rows stay as they are)."""
    if bias is None or bias.dim() < 2 or bias.shape[-2] == 1:
        return bias
    return bias[..., :rows, :]


def _bert_attention(
    module: Any, composite: Composite, first_query: bool = False
) -> Callable[..., Any]:
    if getattr(module, "position_embedding_type", "absolute") != "absolute":
        raise UnsupportedArchitectureError(
            f"LRP supports absolute position embeddings only, not {module.position_embedding_type!r}"
        )

    def forward(
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if encoder_hidden_states is not None:
            raise UnsupportedArchitectureError("LRP does not support cross-attention")
        heads = module.num_attention_heads
        query = module.query(_first(hidden_states, first_query))
        context, probabilities = attend(
            _split_heads(query, heads),
            _split_heads(module.key(hidden_states), heads),
            _split_heads(module.value(hidden_states), heads),
            composite,
            mask=_query_rows(additive_mask(attention_mask, hidden_states.dtype), query.shape[1]),
            head_mask=head_mask,
        )
        return _merge_heads(context), probabilities

    return forward


def _distilbert_attention(
    module: Any, composite: Composite, first_query: bool = False
) -> Callable[..., Any]:
    def forward(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor | None, ...]:
        heads = module.n_heads
        queries = module.q_lin(_first(query, first_query))
        context, probabilities = attend(
            _split_heads(queries, heads),
            _split_heads(module.k_lin(key), heads),
            _split_heads(module.v_lin(value), heads),
            composite,
            mask=_query_rows(additive_mask(mask, query.dtype), queries.shape[1]),
            head_mask=head_mask,
        )
        output = module.out_lin(_merge_heads(context))
        return (output, probabilities) if output_attentions else (output,)

    return forward


def _mpnet_attention(
    module: Any, composite: Composite, first_query: bool = False
) -> Callable[..., Any]:
    def forward(
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        output_attentions: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor | None, ...]:
        heads = module.num_attention_heads
        query = module.q(_first(hidden_states, first_query))
        rows = query.shape[1]
        context, probabilities = attend(
            _split_heads(query, heads),
            _split_heads(module.k(hidden_states), heads),
            _split_heads(module.v(hidden_states), heads),
            composite,
            mask=_query_rows(additive_mask(attention_mask, hidden_states.dtype), rows),
            position_bias=_query_rows(position_bias, rows),
            head_mask=head_mask,
        )
        output = module.o(_merge_heads(context))
        return (output, probabilities) if output_attentions else (output,)

    return forward


_ATTENTION_FORWARDS = {
    "bert": _bert_attention,
    "distilbert": _distilbert_attention,
    "mpnet": _mpnet_attention,
}


def _plain_attention(composite: Composite) -> bool:
    return all(
        isinstance(rule, GradientMatmul)
        for rule in (composite.softmax, composite.query_key, composite.attention_value)
    )


def _roberta_head(module: Any, composite: Composite) -> Callable[..., Any]:
    """RoBERTa / XLM-R / MPNet heads call ``torch.tanh`` inline; mirror them with the rule."""

    def forward(features: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        x = module.dense(features[:, 0, :])
        x = composite.activation.activation(x, torch.tanh)
        return module.out_proj(x)

    return forward


def _first_token(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    # (batch, tokens, width) -> (batch, 1, width); the block's residual sum broadcasts it
    # back over the tokens, exact at the first one.
    return (inputs[0][:, :1], *inputs[1:])


class LRPPatch:
    """LRP rules installed on a :class:`~relcomp.models.RankingModel`'s torch module.

    While installed, parameters do not require gradients (no weight gradients are
    computed); the embedding output is the leaf of the backward pass, and its
    relevance per token is read by :meth:`embedding_relevance`.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> with LRPPatch(model, "AttnLRP") as patch:
        ...     features = model.tokenize(["a cat"])
        ...     embedding = model.embed(features)
        >>> len(patch.embedding_inputs) == 0  # cleared on exit
        True
    """

    def __init__(
        self,
        model: RankingModel,
        composite: str | Composite = "AttnLRP",
        first_token_head: bool = False,
    ) -> None:
        self.ranking_model = model
        self.composite = get_composite(composite)
        #: A cross-encoder's head reads the last layer at the first token only, so the
        #: last layer's attention queries, attention output and feed-forward block
        #: (five sixths of its matrix products and almost all its attention, forward
        #: and backward) need not run at the other positions: with this on they run
        #: at the first token only (keys and values still see every token), and the
        #: other positions of the last layer's output hold values that nothing reads
        #: and that get no relevance. Scores and every relevance are unchanged;
        #: readers of per-position activations of the last layer (activation
        #: patching, RelP) leave it off.
        self.first_token_head = first_token_head and model.kind == "cross-encoder"
        self._overridden: list[nn.Module] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._requires_grad: dict[nn.Parameter, bool] = {}
        self.embedding_inputs: list[torch.Tensor] = []
        #: Forward mode: ``tangent(embedding output)`` gives the tangent to carry from
        #: the embedding output (inside ``torch.autograd.forward_ad.dual_level()``); the
        #: rules' ``jvp`` are the transposes of their backward maps, so an output's
        #: tangent is a relevance (see :class:`relcomp.attribution.bilrp.BiLRP`).
        self.embedding_tangent: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._installed = False

    # -- install / remove ---------------------------------------------------------
    def install(self) -> LRPPatch:
        if self._installed:
            return self
        module = self.ranking_model.model
        adapter = self.ranking_model.adapter
        composite = self.composite
        try:
            for parameter in module.parameters():
                self._requires_grad[parameter] = parameter.requires_grad
                parameter.requires_grad_(False)
            names = adapter.embedding_names(module)
            self._embedding_norm: Any = module.get_submodule(names["embedding_norm"])
            self._override(self._embedding_norm, self._embedding_norm_forward)
            layers = self.ranking_model.layer_modules()
            for layer in layers:
                attention = module.get_submodule(layer.attention)
                if not _plain_attention(composite):
                    # With gradient rules throughout, the model's own (SDPA) attention
                    # is the same function and backward, and faster.
                    first_query = self.first_token_head and layer is layers[-1]
                    self._override(
                        attention,
                        _ATTENTION_FORWARDS[adapter.attention_style](
                            attention, composite, first_query
                        ),
                    )
                for norm in (layer.attention_norm, layer.ffn_norm):
                    self._override(
                        module.get_submodule(norm),
                        self._layer_norm_forward(module.get_submodule(norm)),
                    )
                self._override_activation(module.get_submodule(layer.ffn_activation))
            if self.ranking_model.kind == "cross-encoder":
                self._patch_head(module)
            if self.first_token_head:
                self._handles.append(
                    module.get_submodule(layers[-1].ffn_in).register_forward_pre_hook(_first_token)
                )
            if isinstance(composite.linear, Epsilon):
                for submodule in module.modules():
                    if isinstance(submodule, nn.Linear):
                        self._handles.append(submodule.register_forward_hook(self._linear_hook))
        except BaseException:
            self.remove()
            raise
        self._installed = True
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for overridden in self._overridden:
            overridden.__dict__.pop("forward", None)
        self._overridden.clear()
        for parameter, flag in self._requires_grad.items():
            parameter.requires_grad_(flag)
        self._requires_grad.clear()
        self.embedding_inputs.clear()
        self._installed = False

    def __enter__(self) -> LRPPatch:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- overrides ----------------------------------------------------------------
    def _override(self, target: nn.Module, forward: Callable[..., Any]) -> None:
        if "forward" in target.__dict__:
            raise RuntimeError(
                f"{type(target).__name__} already has a patched forward; remove that patch first"
            )
        target.forward = forward  # instance attribute: shadows the class's forward
        self._overridden.append(target)

    def _override_activation(self, activation: nn.Module) -> None:
        original = type(activation).forward.__get__(activation)
        rule = self.composite.activation
        self._override(activation, lambda x: rule.activation(x, original))

    def _layer_norm_forward(self, norm: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        rule = self.composite.layer_norm
        return lambda x: rule.layer_norm(norm, x)

    def _embedding_norm_forward(self, x: torch.Tensor) -> torch.Tensor:
        # The sum of word, position and token-type embeddings is where token relevance is read.
        leaf = x.detach().requires_grad_(torch.is_grad_enabled())
        if leaf.requires_grad:
            self.embedding_inputs.append(leaf)
        inputs = leaf
        if self.embedding_tangent is not None:
            inputs = forward_ad.make_dual(leaf, self.embedding_tangent(leaf.detach()))
        return self.composite.layer_norm.layer_norm(self._embedding_norm, inputs)

    def _patch_head(self, module: nn.Module) -> None:
        adapter = self.ranking_model.adapter
        if adapter.head_activation is not None:
            self._override_activation(module.get_submodule(adapter.head_activation))
        elif adapter.head_style == "roberta":
            head = module.get_submodule("classifier")
            self._override(head, _roberta_head(head, self.composite))
        # DistilBERT's head applies ReLU, whose identity rule equals its gradient.

    def _linear_hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return self.composite.linear.linear_output(output)

    # -- reading ------------------------------------------------------------------
    def take_embedding_inputs(self) -> list[torch.Tensor]:
        """The embedding outputs recorded since the last call (leaves of the backward pass)."""
        taken = list(self.embedding_inputs)
        self.embedding_inputs.clear()
        return taken
