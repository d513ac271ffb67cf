"""Composites: which rule each operation of a transformer encoder uses.

``AttnLRP`` (Achtibat et al. 2024) is the default; ``CP-LRP`` (Ali et al. 2022)
treats attention weights as constants; ``Epsilon`` is LRP-ε with the plain
gradient through non-linearities; ``Gradient`` changes nothing (gradient × input).
"""

from __future__ import annotations

import dataclasses

from relcomp.attribution.rules import (
    DEFAULT_EPSILON,
    AttnLRPSoftmax,
    CPLRPAttention,
    Epsilon,
    Gradient,
    GradientMatmul,
    Identity,
    LayerNormRule,
    Uniform,
)
from relcomp.registry import Registry

__all__ = ["COMPOSITES", "Composite", "get_composite"]


@dataclasses.dataclass(frozen=True)
class Composite:
    """A named assignment of rules to the operations of an encoder.

    Attributes:
        name: the composite's registered name.
        linear: rule for every Linear output (``Epsilon`` or ``Gradient``).
        activation: rule for element-wise activations (``Identity`` or ``Gradient``).
        layer_norm: rule for LayerNorm (``LayerNormRule`` or ``Gradient``).
        softmax: rule for the attention softmax.
        query_key: rule for the product ``Q Kᵀ``.
        attention_value: rule for the product ``A V``.
        normalization_constant: hold an embedding's norm constant when a bi-encoder
            normalises it (the LN-style rule for ``x / ‖x‖``).
        fused_attention: realise the attention rules on torch's fused attention by
            scaling the gradients of Q, K and V (see :func:`relcomp.attribution.patch.attend`).
    """

    name: str
    linear: Epsilon | Gradient
    activation: Identity | Gradient
    layer_norm: LayerNormRule | Gradient
    softmax: AttnLRPSoftmax | CPLRPAttention | GradientMatmul
    query_key: Uniform | CPLRPAttention | GradientMatmul
    attention_value: Uniform | CPLRPAttention | GradientMatmul
    normalization_constant: bool = True
    fused_attention: bool = False

    @property
    def modifies_backward(self) -> bool:
        return not isinstance(self.linear, Gradient) or not isinstance(self.activation, Gradient)


COMPOSITES: Registry[type] = Registry("LRP composite")


def _attn_lrp(epsilon: float | None = None) -> Composite:
    # The default is the efficient gradient × input form (Arras et al. 2025, as in LXT):
    # ε-LRP on a Linear layer is its plain gradient up to the stabiliser, so Linear
    # layers keep their own backward, and attention runs fused. Asking for an ε
    # explicitly installs every stabiliser as written (slower, same rules).
    explicit = epsilon is not None
    epsilon = DEFAULT_EPSILON if epsilon is None else epsilon
    return Composite(
        name="AttnLRP",
        linear=Epsilon(epsilon) if explicit else Gradient(epsilon),
        activation=Identity(epsilon),
        layer_norm=LayerNormRule(epsilon),
        softmax=AttnLRPSoftmax(epsilon),
        query_key=Uniform(epsilon),
        attention_value=Uniform(epsilon),
        fused_attention=not explicit,
    )


def _cp_lrp(epsilon: float | None = None) -> Composite:
    explicit = epsilon is not None
    epsilon = DEFAULT_EPSILON if epsilon is None else epsilon
    return Composite(
        name="CP-LRP",
        linear=Epsilon(epsilon) if explicit else Gradient(epsilon),
        activation=Identity(epsilon),
        layer_norm=LayerNormRule(epsilon),
        softmax=CPLRPAttention(epsilon),
        query_key=CPLRPAttention(epsilon),
        attention_value=CPLRPAttention(epsilon),
        fused_attention=not explicit,
    )


def _epsilon(epsilon: float = DEFAULT_EPSILON) -> Composite:
    return Composite(
        name="Epsilon",
        linear=Epsilon(epsilon),
        activation=Gradient(epsilon),
        layer_norm=Gradient(epsilon),
        softmax=GradientMatmul(epsilon),
        query_key=GradientMatmul(epsilon),
        attention_value=GradientMatmul(epsilon),
        normalization_constant=False,
    )


def _gradient(epsilon: float = 0.0) -> Composite:
    return Composite(
        name="Gradient",
        linear=Gradient(0.0),
        activation=Gradient(0.0),
        layer_norm=Gradient(0.0),
        softmax=GradientMatmul(0.0),
        query_key=GradientMatmul(0.0),
        attention_value=GradientMatmul(0.0),
        normalization_constant=False,
    )


COMPOSITES.register("AttnLRP", "attn-lrp")(_attn_lrp)  # type: ignore[arg-type]
COMPOSITES.register("CP-LRP", "cplrp")(_cp_lrp)  # type: ignore[arg-type]
COMPOSITES.register("Epsilon", "lrp-epsilon")(_epsilon)  # type: ignore[arg-type]
COMPOSITES.register("Gradient")(_gradient)  # type: ignore[arg-type]


def get_composite(composite: str | Composite, epsilon: float | None = None) -> Composite:
    """Resolve a composite by name (case-insensitive), or pass one through.

    Example:
        >>> get_composite("attnlrp").name
        'AttnLRP'
    """
    if isinstance(composite, Composite):
        return composite
    factory = COMPOSITES.get(composite)
    return factory() if epsilon is None else factory(epsilon)
