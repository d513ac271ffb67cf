"""LRP rules for transformers, realised as modified backward passes.

relcomp computes LRP in *gradient × input* form: each rule changes the backward
pass of one operation so that, at any tensor ``x`` in the graph, the relevance is
``x * x.grad``. One forward and one backward pass then explain a whole batch, and
the relevance of every intermediate tensor can be read where it passes.

Rules (each under the name its paper uses):

* ``Epsilon`` — LRP-ε for Linear layers and matrix products with a constant
  operand: ``R_i = Σ_j x_i w_ji R_j / (z_j + ε·sign z_j)``. In gradient form the
  output gradient is scaled by ``z / (z + ε·sign z)`` (Bach et al. 2015).
* ``Identity`` — for element-wise non-linearities (GELU, tanh, …): relevance
  passes unchanged, ``R_in = R_out``; the gradient becomes ``g · f(x) / x``
  (AttnLRP, Achtibat et al. 2024, Prop. 3.2).
* ``LayerNormRule`` — the normalisation's scale ``1/σ`` is held constant, so the
  centring and the affine map are linear and conserve relevance (Ali et al. 2022;
  AttnLRP §3.3).
* ``AttnLRPSoftmax`` — ``R_in = x ⊙ (R_out − s ⊙ Σ R_out)`` (AttnLRP Prop. 3.1):
  in gradient × input form this is exactly the softmax gradient, so no
  modification is needed; the rule is registered to say so explicitly.
* ``Uniform`` — for the bilinear products ``Q Kᵀ`` and ``A V``: each operand gets
  half the relevance (AttnLRP Prop. 3.3), i.e. the ε-stabilised gradient halved.
* ``CPLRPAttention`` — attention weights treated as constants (Ali et al. 2022):
  ``A`` is detached, so relevance flows only through the values.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd import forward_ad

from relcomp.registry import Registry

__all__ = [
    "RULES",
    "epsilon_stabilise",
    "identity_activation",
    "layer_norm_constant_scale",
    "ratio_at_zero",
    "scale_gradient",
    "uniform_matmul",
]

RULES: Registry[type] = Registry("LRP rule")

#: Default stabiliser; small against activations of order 0.1–10 in fp32 encoders.
DEFAULT_EPSILON = 1e-6


def _safe_divide(
    numerator: torch.Tensor, denominator: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """``numerator / (denominator + ε·sign(denominator))`` with sign(0) taken as +1."""
    sign = torch.where(denominator >= 0, 1.0, -1.0).to(denominator.dtype)
    return numerator / (denominator + epsilon * sign)


class _EpsilonGradient(torch.autograd.Function):
    """Identity forward; backward scales the gradient by ``z / (z + ε sign z)``."""

    @staticmethod
    def forward(ctx: Any, output: torch.Tensor, epsilon: float, copy: bool) -> torch.Tensor:
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)
        ctx.epsilon = epsilon
        # Forward mode (BiLRP) needs a jvp that returns a new tensor, so a copy there;
        # a free view otherwise.
        return output.clone() if copy else output.view_as(output)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (output,) = ctx.saved_tensors
        return _safe_divide(grad * output, output, ctx.epsilon), None, None

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor, *_: Any) -> torch.Tensor:
        # The backward map is diagonal, so forward mode applies the same scaling.
        (output,) = ctx.saved_tensors
        return _safe_divide(tangent * output, output, ctx.epsilon)


def epsilon_stabilise(output: torch.Tensor, epsilon: float = DEFAULT_EPSILON) -> torch.Tensor:
    """Apply the ε-rule to the output of a linear operation (a no-op in the forward pass).

    Example:
        >>> x = torch.tensor([[1.0, 2.0]], requires_grad=True)
        >>> w = torch.tensor([[1.0, -1.0], [0.5, 0.5]])
        >>> y = epsilon_stabilise(x @ w.T, epsilon=0.0)
        >>> y.sum().backward()
        >>> round(float((x * x.grad).sum()), 6) == round(float(y.sum()), 6)
        True
    """
    if epsilon == 0.0 or not output.requires_grad:
        return output
    return _EpsilonGradient.apply(output, epsilon, _is_dual(output))


def _is_dual(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` carries a forward-mode tangent (inside ``forward_ad.dual_level``)."""
    return forward_ad.unpack_dual(tensor).tangent is not None


class _IdentityActivation(torch.autograd.Function):
    """``y = f(x)`` forward; backward ``g · y / x`` so that ``x·grad_x = y·grad_y``.

    Only the ratio ``y / x`` is kept for the backward pass (one tensor, not two). Where
    its limit at 0 is known (:func:`ratio_at_zero`) the ratio is exact: one division,
    no ε; otherwise ε-stabilised.
    """

    @staticmethod
    def forward(
        ctx: Any,
        inputs: torch.Tensor,
        function: nn.Module,
        epsilon: float,
        at_zero: float | None,
    ) -> torch.Tensor:
        with torch.no_grad():
            outputs = function(inputs)
            ratio = (
                _safe_divide(outputs, inputs, epsilon)
                if at_zero is None
                else (outputs / inputs).nan_to_num_(nan=at_zero)
            )
            ctx.save_for_backward(ratio)
            ctx.save_for_forward(ratio)
        return outputs

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None, None, None

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor, *_: Any) -> torch.Tensor:
        (ratio,) = ctx.saved_tensors
        return tangent * ratio


def ratio_at_zero(function: Any) -> float | None:
    """The limit of ``f(x) / x`` at 0 for the smooth activations that have one, else ``None``.

    For these the identity rule needs no ε: ``f(x) / x`` is computed as is and its one
    undefined point, 0 / 0 at ``x = 0``, takes the limit (½ for GELU, either form,
    and SiLU; 1 for tanh). Modules (``nn.GELU``, transformers' ``GELUActivation``…)
    and bound ``forward`` methods are looked through to what they compute.
    """
    module = getattr(function, "__self__", function)
    act = getattr(module, "act", None)  # transformers' activation modules keep their function
    if act is not None and type(module).__name__.endswith("GELUActivation"):
        return 0.5
    if isinstance(module, nn.GELU | nn.SiLU) or function in (
        torch.nn.functional.gelu,
        torch.nn.functional.silu,
    ):
        return 0.5
    if isinstance(module, nn.Tanh) or function is torch.tanh:
        return 1.0
    return None


def identity_activation(
    inputs: torch.Tensor, function: Any, epsilon: float = DEFAULT_EPSILON
) -> torch.Tensor:
    """Element-wise ``function(inputs)`` with the identity rule in the backward pass."""
    if not inputs.requires_grad:
        return function(inputs)
    return _IdentityActivation.apply(inputs, function, epsilon, ratio_at_zero(function))


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a constant."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        # A view, free; forward mode (BiLRP) never meets this Function, because it runs
        # attention in the explicit form (the fused kernel has no forward derivative).
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def scale_gradient(inputs: torch.Tensor, factor: float) -> torch.Tensor:
    """``inputs`` unchanged in the forward pass; its gradient times ``factor`` (0 detaches).

    Example:
        >>> x = torch.ones(2, requires_grad=True)
        >>> scale_gradient(x, 0.25).sum().backward()
        >>> x.grad.tolist()
        [0.25, 0.25]
    """
    if factor == 1.0 or not inputs.requires_grad:
        return inputs
    if factor == 0.0:
        return inputs.detach()
    return _ScaleGradient.apply(inputs, factor)


class _LayerNormConstantScale(torch.autograd.Function):
    """Exact ``layer_norm`` forward; backward of the map with ``1/σ`` held constant."""

    @staticmethod
    def forward(
        ctx: Any,
        inputs: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        normalized_shape: tuple[int, ...],
        eps: float,
    ) -> torch.Tensor:
        # native_layer_norm hands back the 1/σ it computed: no second pass for the variance.
        outputs, _, inverse_std = torch.native_layer_norm(
            inputs, normalized_shape, weight, bias, eps
        )
        dims = tuple(range(-len(normalized_shape), 0))
        ctx.save_for_backward(inverse_std, weight)
        ctx.save_for_forward(inverse_std, weight)
        ctx.dims = dims
        return outputs

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        inverse_std, weight = ctx.saved_tensors
        scaled = grad * inverse_std if weight is None else grad * weight * inverse_std
        # The centring x - mean(x) is a symmetric linear map: its transpose is itself.
        return scaled - scaled.mean(dim=ctx.dims, keepdim=True), None, None, None, None

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor, *_: Any) -> torch.Tensor:
        # The transpose of the backward map: centre first, then scale (the weights and
        # the scale carry no tangent: LRP holds them constant).
        inverse_std, weight = ctx.saved_tensors
        centred = (tangent - tangent.mean(dim=ctx.dims, keepdim=True)) * inverse_std
        return centred if weight is None else centred * weight


def _plain_layer_norm(module: nn.LayerNorm, inputs: torch.Tensor) -> torch.Tensor:
    # Never ``module(inputs)``: the patch overrides the module's forward with a rule.
    return torch.nn.functional.layer_norm(
        inputs, tuple(module.normalized_shape), module.weight, module.bias, module.eps
    )


def layer_norm_constant_scale(module: nn.LayerNorm, inputs: torch.Tensor) -> torch.Tensor:
    """``module(inputs)`` whose backward pass treats the normalisation scale as constant."""
    if not inputs.requires_grad:
        return _plain_layer_norm(module, inputs)
    return _LayerNormConstantScale.apply(
        inputs, module.weight, module.bias, tuple(module.normalized_shape), module.eps
    )


class _UniformMatmul(torch.autograd.Function):
    """``a @ b`` forward; backward gives each operand half of the ε-stabilised relevance."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, epsilon: float) -> torch.Tensor:
        outputs = torch.matmul(a, b)
        ctx.save_for_backward(a, b, outputs)
        ctx.save_for_forward(a, b, outputs)
        ctx.epsilon = epsilon
        return outputs

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        a, b, outputs = ctx.saved_tensors
        stabilised = (
            0.5 * _safe_divide(grad * outputs, outputs, ctx.epsilon) if ctx.epsilon else 0.5 * grad
        )
        grad_a = torch.matmul(stabilised, b.transpose(-1, -2)) if ctx.needs_input_grad[0] else None
        grad_b = torch.matmul(a.transpose(-1, -2), stabilised) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None

    @staticmethod
    def jvp(
        ctx: Any, tangent_a: torch.Tensor | None, tangent_b: torch.Tensor | None, _: Any
    ) -> torch.Tensor:
        # The transpose of the backward map: half of each operand's product, stabilised.
        a, b, outputs = ctx.saved_tensors
        product = torch.zeros_like(outputs)
        if tangent_a is not None:
            product = product + torch.matmul(tangent_a, b)
        if tangent_b is not None:
            product = product + torch.matmul(a, tangent_b)
        product = 0.5 * product
        return _safe_divide(product * outputs, outputs, ctx.epsilon) if ctx.epsilon else product


def uniform_matmul(
    a: torch.Tensor, b: torch.Tensor, epsilon: float = DEFAULT_EPSILON
) -> torch.Tensor:
    """``a @ b`` with AttnLRP's uniform rule for a product of two variables."""
    if not (a.requires_grad or b.requires_grad):
        return torch.matmul(a, b)
    return _UniformMatmul.apply(a, b, epsilon)


# -- the named rules --------------------------------------------------------------
# A rule object says how one kind of operation propagates relevance. Composites
# (relcomp.attribution.composites) map the operations of a transformer to rules.


class Rule:
    """Base class; subclasses are looked up by their paper's name in :data:`RULES`."""

    name = "rule"

    def __init__(self, epsilon: float = DEFAULT_EPSILON) -> None:
        self.epsilon = epsilon

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epsilon={self.epsilon:g})"


@RULES.register("Epsilon", "LRP-epsilon")
class Epsilon(Rule):
    """LRP-ε for a linear map's output."""

    name = "Epsilon"

    def linear_output(self, output: torch.Tensor) -> torch.Tensor:
        return epsilon_stabilise(output, self.epsilon)


@RULES.register("Gradient")
class Gradient(Rule):
    """Leave the backward pass as it is (the rule a method such as gradient × input uses)."""

    name = "Gradient"

    def linear_output(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def activation(self, inputs: torch.Tensor, function: Any) -> torch.Tensor:
        return function(inputs)

    def layer_norm(self, module: nn.LayerNorm, inputs: torch.Tensor) -> torch.Tensor:
        return _plain_layer_norm(module, inputs)


@RULES.register("Identity")
class Identity(Rule):
    """Identity rule for element-wise activations: relevance passes unchanged."""

    name = "Identity"

    def activation(self, inputs: torch.Tensor, function: Any) -> torch.Tensor:
        return identity_activation(inputs, function, self.epsilon)


@RULES.register("LayerNormRule", "LN")
class LayerNormRule(Rule):
    """LayerNorm with its scale held constant (the 'LN rule')."""

    name = "LayerNormRule"

    def layer_norm(self, module: nn.LayerNorm, inputs: torch.Tensor) -> torch.Tensor:
        return layer_norm_constant_scale(module, inputs)


@RULES.register("AttnLRPSoftmax")
class AttnLRPSoftmax(Rule):
    """AttnLRP's softmax rule; equals the softmax gradient in gradient × input form."""

    name = "AttnLRPSoftmax"
    #: Relevance reaches the attention scores (the softmax's gradient passes).
    scores_relevant = True

    def softmax(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores, dim=-1)


@RULES.register("Uniform")
class Uniform(Rule):
    """AttnLRP's uniform rule for a product of two variables (``Q Kᵀ``, ``A V``)."""

    name = "Uniform"
    #: Each operand's gradient is scaled by this (the fused attention path uses it).
    operand_scale = 0.5

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return uniform_matmul(a, b, self.epsilon)


@RULES.register("CPLRPAttention", "CP-LRP-attention")
class CPLRPAttention(Rule):
    """CP-LRP: attention weights are constants; relevance flows through the values only."""

    name = "CPLRPAttention"
    operand_scale = 1.0
    scores_relevant = False

    def softmax(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores, dim=-1).detach()

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        output = torch.matmul(a, b)
        return epsilon_stabilise(output, self.epsilon)


@RULES.register("GradientMatmul")
class GradientMatmul(Rule):
    """Plain product and softmax (the gradient), for the Epsilon composite and baselines."""

    name = "GradientMatmul"
    operand_scale = 1.0
    scores_relevant = True

    def softmax(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores, dim=-1)

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)
