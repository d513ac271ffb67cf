"""Each LRP rule against an independent matrix-form reference, in float64, and for conservation."""

from __future__ import annotations

import pytest
import torch

from relcomp.attribution.rules import (
    CPLRPAttention,
    epsilon_stabilise,
    identity_activation,
    layer_norm_constant_scale,
    ratio_at_zero,
    uniform_matmul,
)

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    yield
    torch.set_default_dtype(previous)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _relevance_in(
    inputs: torch.Tensor, outputs: torch.Tensor, upstream: torch.Tensor
) -> torch.Tensor:
    """``x · ∂̃(y·upstream)/∂x``: input relevance when the output's relevance is ``y ⊙ upstream``."""
    (grad,) = torch.autograd.grad(outputs, inputs, grad_outputs=upstream)
    return inputs * grad


@pytest.mark.parametrize("epsilon", [0.0, 1e-2, 0.5])
def test_epsilon_rule_matches_matrix_form(epsilon: float) -> None:
    g = _generator(1)
    x = torch.randn(5, 7, generator=g, requires_grad=True)
    weight, bias = torch.randn(4, 7, generator=g), torch.randn(4, generator=g)
    upstream = torch.randn(5, 4, generator=g)
    z = x @ weight.T + bias
    relevance_out = z * upstream
    # Reference: R_i = sum_j x_i w_ji R_j / (z_j + eps * sign z_j), written out term by term.
    contributions = x.detach()[:, None, :] * weight[None, :, :]  # (n, out, in)
    denominator = z.detach() + epsilon * torch.where(z.detach() >= 0, 1.0, -1.0)
    reference = (contributions * (relevance_out.detach() / denominator)[:, :, None]).sum(1)
    ours = _relevance_in(x, epsilon_stabilise(z, epsilon), upstream)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


def test_epsilon_rule_conserves_without_bias() -> None:
    g = _generator(2)
    x = torch.randn(3, 6, generator=g, requires_grad=True)
    weight = torch.randn(5, 6, generator=g)
    z = epsilon_stabilise(x @ weight.T, 0.0)
    relevance = _relevance_in(x, z, torch.ones_like(z))
    torch.testing.assert_close(relevance.sum(-1), z.detach().sum(-1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("function", [torch.tanh, torch.nn.functional.gelu, torch.relu])
def test_identity_rule_passes_relevance_unchanged(function) -> None:
    g = _generator(3)
    x = torch.randn(4, 9, generator=g, requires_grad=True)
    upstream = torch.randn(4, 9, generator=g)
    y = identity_activation(x, function, epsilon=0.0)
    torch.testing.assert_close(y.detach(), function(x.detach()))
    # Element-wise: R_in = R_out = f(x) * upstream.
    torch.testing.assert_close(_relevance_in(x, y, upstream), function(x.detach()) * upstream)


@pytest.mark.parametrize(
    ("function", "limit"),
    [
        (torch.nn.functional.gelu, 0.5),
        (torch.nn.GELU(), 0.5),
        (torch.nn.GELU(approximate="tanh"), 0.5),
        (torch.nn.SiLU(), 0.5),
        (torch.tanh, 1.0),
        pytest.param("transformers", 0.5, id="GELUActivation"),
    ],
)
def test_smooth_activations_pass_relevance_exactly_without_epsilon(function, limit) -> None:
    if function == "transformers":
        from transformers.activations import GELUActivation

        function = GELUActivation().forward  # bound, as the patch passes it
    assert ratio_at_zero(function) == limit
    g = _generator(4)
    x = torch.cat([torch.randn(4, 9, generator=g), torch.zeros(4, 1)], 1).requires_grad_()
    upstream = torch.randn(4, 10, generator=g)
    y = identity_activation(x, function, epsilon=0.5)  # a large ε, which must not be used
    # R_in = R_out exactly, also at x = 0 (where the ratio takes its limit).
    (grad,) = torch.autograd.grad(y, x, upstream)
    torch.testing.assert_close(x.detach() * grad, y.detach() * upstream)
    assert (grad[:, -1] / upstream[:, -1]).tolist() == pytest.approx([limit] * 4)


def test_activations_without_a_limit_use_the_epsilon_form() -> None:
    assert ratio_at_zero(torch.relu) is None
    assert ratio_at_zero(torch.nn.ReLU()) is None


def test_layer_norm_rule_matches_constant_scale_matrix() -> None:
    g = _generator(4)
    n = 8
    norm = torch.nn.LayerNorm(n, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(n, generator=g))
        norm.bias.copy_(torch.randn(n, generator=g))
    x = torch.randn(3, n, generator=g, requires_grad=True)
    upstream = torch.randn(3, n, generator=g)
    y = layer_norm_constant_scale(norm, x)
    torch.testing.assert_close(y.detach(), norm(x).detach())
    # Reference: y = M x + beta with M = diag(gamma / sigma) (I - 11^T / n), sigma constant.
    reference = []
    for row, up in zip(x.detach(), upstream, strict=True):
        sigma = torch.sqrt(row.var(unbiased=False) + norm.eps)
        matrix = torch.diag(norm.weight.detach() / sigma) @ (torch.eye(n) - torch.ones(n, n) / n)
        reference.append(row * (matrix.T @ up))
    torch.testing.assert_close(_relevance_in(x, y, upstream), torch.stack(reference))


def test_layer_norm_rule_conserves_without_bias() -> None:
    norm = torch.nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 6))
        norm.bias.zero_()
    x = torch.randn(2, 6, generator=_generator(5), requires_grad=True)
    y = layer_norm_constant_scale(norm, x)
    relevance = _relevance_in(x, y, torch.ones_like(y))
    torch.testing.assert_close(relevance.sum(-1), y.detach().sum(-1), rtol=1e-10, atol=1e-12)


def test_uniform_rule_matches_explicit_contributions_and_conserves() -> None:
    g = _generator(6)
    a = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    b = torch.randn(2, 4, 5, generator=g, requires_grad=True)
    upstream = torch.randn(2, 3, 5, generator=g)
    z = uniform_matmul(a, b, epsilon=0.0)
    relevance_out = (z * upstream).detach()
    # Reference: each product term a_ik b_kj gets its share of R_ij, half to each operand.
    terms = a.detach()[..., :, :, None] * b.detach()[..., None, :, :]  # (batch, i, k, j)
    share = terms / z.detach()[..., :, None, :] * relevance_out[..., :, None, :] / 2
    grad_a, grad_b = torch.autograd.grad(z, (a, b), grad_outputs=upstream)
    torch.testing.assert_close(a.detach() * grad_a, share.sum(-1))
    torch.testing.assert_close(b.detach() * grad_b, share.sum(-3))
    total = (a.detach() * grad_a).sum() + (b.detach() * grad_b).sum()
    torch.testing.assert_close(total, relevance_out.sum())


def test_attnlrp_softmax_rule_equals_its_closed_form() -> None:
    # AttnLRP Prop. 3.1: R_in = x * (R_out - s * sum(R_out)), with R_out = s * upstream.
    g = _generator(7)
    x = torch.randn(3, 6, generator=g, requires_grad=True)
    upstream = torch.randn(3, 6, generator=g)
    s = torch.softmax(x, dim=-1)
    relevance_out = (s * upstream).detach()
    reference = x.detach() * (relevance_out - s.detach() * relevance_out.sum(-1, keepdim=True))
    torch.testing.assert_close(_relevance_in(x, s, upstream), reference)


def test_cp_lrp_sends_no_relevance_through_attention_weights() -> None:
    g = _generator(8)
    scores = torch.randn(1, 2, 4, 4, generator=g, requires_grad=True)
    values = torch.randn(1, 2, 4, 3, generator=g, requires_grad=True)
    rule = CPLRPAttention(epsilon=0.0)
    output = rule.matmul(rule.softmax(scores), values)
    grad_values = torch.autograd.grad(output.sum(), values)[0]
    # Attention weights are constants: the output is linear in the values and conserves.
    torch.testing.assert_close((values.detach() * grad_values).sum(), output.detach().sum())
    assert torch.autograd.grad(output.sum(), scores, allow_unused=True)[0] is None


# -- forward mode: each rule's jvp is the transpose of its backward map ------------------
def _transpose_gap(function, *shapes) -> tuple[float, float]:
    """``<v, M t>`` (forward mode) and ``<B v, t>`` (the rule's backward) for random v, t."""
    from torch.autograd import forward_ad

    generator = torch.Generator().manual_seed(3)
    inputs = [
        torch.randn(*s, dtype=torch.float64, generator=generator).requires_grad_() for s in shapes
    ]
    tangents = [torch.randn(*s, dtype=torch.float64, generator=generator) for s in shapes]
    with forward_ad.dual_level():
        output = function(
            *[forward_ad.make_dual(x, t) for x, t in zip(inputs, tangents, strict=True)]
        )
        forward = forward_ad.unpack_dual(output).tangent
    output = function(*inputs)
    v = torch.randn(output.shape, dtype=torch.float64, generator=generator)
    backward = torch.autograd.grad(output, inputs, v)
    lhs = float((v * forward).sum())
    rhs = float(sum((g * t).sum() for g, t in zip(backward, tangents, strict=True)))
    return lhs, rhs


@pytest.mark.parametrize(
    ("name", "function", "shapes"),
    [
        ("epsilon", lambda x: epsilon_stabilise(2 * x, 1e-2), [(3, 4)]),
        ("identity", lambda x: identity_activation(x, torch.nn.functional.gelu, 1e-6), [(3, 4)]),
        ("uniform matmul", lambda a, b: uniform_matmul(a, b, 1e-2), [(2, 3, 4), (2, 4, 5)]),
    ],
)
def test_forward_mode_is_the_transpose_of_each_rule(name: str, function, shapes) -> None:
    lhs, rhs = _transpose_gap(function, *shapes)
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-12), name


def test_forward_mode_is_the_transpose_of_the_layer_norm_rule() -> None:
    norm = torch.nn.LayerNorm(4).double()
    with torch.no_grad():
        norm.weight.normal_()
    lhs, rhs = _transpose_gap(lambda x: layer_norm_constant_scale(norm, x), (3, 4))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-12)
