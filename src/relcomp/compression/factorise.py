"""Physical low rank: Linears under ``low_rank(rank)`` replaced by their two factors.

``compress_`` simulates ``low_rank`` as the product ``U·V`` in a full-size weight: the
outputs of the plan, none of its gain. :func:`factorise_physically` gives the real
thing: a copy of the model in which each such Linear (``out × in``) becomes a
:class:`LowRankLinear`, ``x ↦ up(down(x))`` with ``down`` of ``rank × in`` and ``up``
of ``out × rank`` (the bias stays on ``up``). A rank-64 FFN input Linear of MiniLM
(1536 × 384) keeps 122,880 of its 589,824 weights, and a token costs that many
multiply-adds. The factors are the truncated SVD of the weight, at the module's
precision when the plan gives one, so the copy computes what ``compress_`` simulates
(up to float rounding). It scores, evaluates and exports to ONNX (two MatMuls per
factorised Linear) like any model; component attribution and ``compress_`` address
Linears by name and do not reach inside a :class:`LowRankLinear`.

Example:
    >>> from relcomp.models import load_model
    >>> from relcomp.compression import parameter_count
    >>> model = load_model("all-MiniLM-L6-v2")
    >>> plan = CompressionPlan(model.name, {r"re:.*intermediate\\.dense": "low_rank(rank=64)"})
    >>> smaller = factorise_physically(model, plan)
    >>> parameter_count(model) - parameter_count(smaller)
    2801664
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from relcomp.artifacts import CompressionPlan
from relcomp.compression.actions import FP16, LowRank, PlanError, PrecisionAction
from relcomp.compression.quantize import fake_quantize_fp16
from relcomp.compression.resolve import LinearKeep, ModelStructure, resolve_on_structure
from relcomp.compression.torch_realise import active_compression, svd_factors, weight_quantizer
from relcomp.models.base import RankingModel

__all__ = ["LowRankLinear", "factorise_physically"]

logger = logging.getLogger(__name__)


class LowRankLinear(nn.Module):
    """A Linear replaced by its factors: ``up(down(x))``, ``down`` without bias.

    Attributes:
        down: ``in_features → rank``.
        up: ``rank → out_features``, with the original bias.

    Example:
        >>> layer = LowRankLinear(nn.Linear(384, 16, bias=False), nn.Linear(16, 1536))
        >>> layer
        LowRankLinear(
          in_features=384, out_features=1536, rank=16
          (down): Linear(in_features=384, out_features=16, bias=False)
          (up): Linear(in_features=16, out_features=1536, bias=True)
        )
        >>> layer(torch.zeros(2, 384)).shape
        torch.Size([2, 1536])
    """

    def __init__(self, down: nn.Linear, up: nn.Linear) -> None:
        super().__init__()
        if down.out_features != up.in_features:
            raise ValueError(
                f"factors do not chain: down gives {down.out_features}, up takes {up.in_features}"
            )
        self.down = down
        self.up = up

    @property
    def in_features(self) -> int:
        return self.down.in_features

    @property
    def out_features(self) -> int:
        return self.up.out_features

    @property
    def rank(self) -> int:
        return self.down.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def factorise_physically(model: RankingModel, plan: CompressionPlan) -> RankingModel:
    """A copy of ``model`` whose ``low_rank`` Linears are :class:`LowRankLinear` factors.

    Only the plan's ``low_rank`` entries are carried out (with the module's precision
    applied to the factors); prune heads and neurons first with
    :func:`~relcomp.compression.prune_physically`, whose module names this keeps.

    Raises:
        PlanError: the model is compressed in place, or the plan has no ``low_rank``.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> plan = CompressionPlan(model.name, {"encoder.layer.5.output.dense": "low_rank(rank=32)"})
        >>> factorise_physically(model, plan).model.encoder.layer[5].output.dense.rank
        32
    """
    if active_compression(model) is not None:
        raise PlanError(
            f"{model.name} is compressed in place; remove the handle before factorising"
        )
    structure = ModelStructure.of(model)
    resolved = resolve_on_structure(plan, structure)
    chosen = {
        module: actions
        for module, actions in resolved.items()
        if any(isinstance(a, LowRank) for a in actions)
    }
    if not chosen:
        raise PlanError("the plan has no low_rank entry: nothing to factorise")
    factorised = copy.deepcopy(model)
    torch_model: Any = factorised.model
    before = sum(p.numel() for p in torch_model.parameters())
    with torch.no_grad():
        for module, actions in chosen.items():
            linear = torch_model.get_submodule(module)
            assert isinstance(linear, nn.Linear)
            rank = next(a.rank for a in actions if isinstance(a, LowRank))
            left, right = svd_factors(linear.weight.detach(), LinearKeep(), rank)
            bias = linear.bias.detach().clone() if linear.bias is not None else None
            precision = next((a for a in actions if isinstance(a, PrecisionAction)), None)
            quantize = weight_quantizer(precision) if precision is not None else None
            if quantize is not None:
                left, right = quantize(left, None), quantize(right, None)
            if isinstance(precision, FP16) and bias is not None:
                bias = fake_quantize_fp16(bias)
            down = nn.Linear(linear.in_features, right.shape[0], bias=False)
            up = nn.Linear(right.shape[0], linear.out_features, bias=bias is not None)
            down.weight.copy_(right)
            up.weight.copy_(left)
            if bias is not None:
                assert up.bias is not None
                up.bias.copy_(bias)
            replacement = LowRankLinear(down, up).to(linear.weight.device, linear.weight.dtype)
            replacement.requires_grad_(linear.weight.requires_grad)
            parent, _, child = module.rpartition(".")
            setattr(
                torch_model.get_submodule(parent) if parent else torch_model, child, replacement
            )
    torch_model.eval()
    factorised.variant = f"{model.variant}|factorised-{plan.fingerprint()}"
    after = sum(p.numel() for p in torch_model.parameters())
    logger.info(
        "factorised %d Linears of %s: %d → %d parameters (%.1f %% fewer)",
        len(chosen),
        model.name,
        before,
        after,
        100 * (1 - after / before),
    )
    return factorised
