"""What a plan's model takes on disk: bytes of weights as they would be stored.

The formula, per Linear (``rows × columns`` after head and neuron pruning):

* weights: ``fp32`` 4 bytes each, ``fp16`` 2, ``int8`` 1 plus one fp32 scale per
  output row (``per_channel=True``) or per tensor, ``int4`` half a byte (rounded up
  over the matrix) plus one fp32 scale per block of ``block_size`` inputs of each row;
* ``prune_weights(ratio)``: each row stores ``columns − ⌊ratio·columns⌋`` values at
  its precision (scales as for the dense matrix) plus a one-bit-per-weight mask;
* ``low_rank(rank)``: the two factors ``rows × rank`` and ``rank × columns``, each
  stored at the module's precision with its own scales;
* ``sparsify(threshold, rank)`` (R-Sparse): the full weight and, beside it, the two
  factors of its rank-``rank`` approximation, stored as ``low_rank``'s are (the
  model grows: R-Sparse saves multiply-adds, not bytes);
* bias: 4 bytes per kept output (2 under ``fp16``).

Every other parameter (embeddings, LayerNorms) stays at its own dtype. Activation
scales and sparsity thresholds are a handful of numbers and are not counted.
``bits_per_weight`` is ``8 ×`` the Linear weight bytes (scales and masks included,
biases not) over the number of stored Linear weights; ``params_removed`` is the
share of the original Linear weights no longer stored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from relcomp.compression.actions import (
    FP16,
    FP32,
    Action,
    Int4,
    Int8,
    LowRank,
    PrecisionAction,
    PruneWeights,
    Sparsify,
    parse_action,
)
from relcomp.compression.resolve import ModelStructure, removed_counts, resolve_on_structure
from relcomp.models.base import RankingModel

if TYPE_CHECKING:  # a plan is read here, never made: artifacts imports this module, not back
    from relcomp.artifacts import CompressionPlan
    from relcomp.compression.statistics import ActivationStatistics

__all__ = [
    "LinearSize",
    "SizeEstimate",
    "estimate_size",
    "matrix_bytes",
    "weight_bytes",
    "weight_bytes_table",
]

#: The precisions :func:`weight_bytes_table` reports, in the order planners try them.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8(per_channel=True)", "int4(block_size=32)")


def matrix_bytes(
    rows: int, columns: int, precision: PrecisionAction, values: int | None = None
) -> int:
    """Bytes of a ``rows × columns`` weight matrix at ``precision``, scales included.

    ``values`` is how many entries are stored (all by default; fewer when pruned).

    Example:
        >>> matrix_bytes(4, 64, Int8())  # 256 bytes + 4 fp32 scales
        272
        >>> matrix_bytes(4, 64, Int4(block_size=32))  # 128 bytes + 4 × 2 scales
        160
    """
    stored = rows * columns if values is None else values
    data = math.ceil(stored * precision.bits / 8)
    if isinstance(precision, Int8):
        return data + 4 * (rows if precision.per_channel else 1)
    if isinstance(precision, Int4):
        return data + 4 * rows * math.ceil(columns / precision.block_size)
    return data


def weight_bytes(
    out_features: int,
    in_features: int,
    actions: list[Action] | tuple[Action, ...] | Action | str = (),
    bias: bool = True,
) -> tuple[int, int, int]:
    """``(weight bytes, bias bytes, stored weights)`` of one Linear under some actions.

    Structural actions are not applied here: pass the kept shape.

    Example:
        >>> weight_bytes(384, 1536, "int8")
        (591360, 1536, 589824)
        >>> weight_bytes(384, 1536, ["fp16", "low_rank(rank=64)"])
        (245760, 768, 122880)
        >>> weight_bytes(384, 1536, "sparsify(threshold=0.1, rank=16)")  # R-Sparse's factors
        (2482176, 1536, 620544)
    """
    if isinstance(actions, str | Action):
        actions = [parse_action(actions)]
    actions = [parse_action(a) for a in actions]
    precision: PrecisionAction = next(
        (a for a in actions if isinstance(a, PrecisionAction)), FP32()
    )
    rows, columns = out_features, in_features
    low_rank = next((a for a in actions if isinstance(a, LowRank)), None)
    pruned = next((a for a in actions if isinstance(a, PruneWeights)), None)
    if low_rank is not None:
        rank = low_rank.rank
        data = matrix_bytes(rows, rank, precision) + matrix_bytes(rank, columns, precision)
        stored = rank * (rows + columns)
    elif pruned is not None:
        kept = columns - math.floor(pruned.ratio * columns)
        stored = rows * kept
        data = matrix_bytes(rows, columns, precision, values=stored) + math.ceil(rows * columns / 8)
    else:
        stored = rows * columns
        data = matrix_bytes(rows, columns, precision)
    residual = next((a for a in actions if isinstance(a, Sparsify) and a.rank), None)
    if residual is not None and residual.rank is not None:
        rank = residual.rank
        data += matrix_bytes(rows, rank, precision) + matrix_bytes(rank, columns, precision)
        stored += rank * (rows + columns)
    bias_bytes = rows * (2 if isinstance(precision, FP16) else 4) if bias else 0
    return data, bias_bytes, stored


@dataclasses.dataclass(frozen=True)
class LinearSize:
    """One Linear's stored size under a plan."""

    name: str
    shape: tuple[int, int]  # (out, in) as in the model
    kept: tuple[int, int]  # (out, in) after head and neuron pruning
    actions: tuple[str, ...]
    weight_bytes: int
    bias_bytes: int
    stored_weights: int

    @property
    def original_weights(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclasses.dataclass(frozen=True)
class SizeEstimate:
    """Stored size of a model under a plan, in total and per Linear.

    Attributes:
        fixed_bytes: parameters no action touches (embeddings, LayerNorms).
        embedding_bytes: the embedding tables, part of ``fixed_bytes``.
        linears: ``{Linear name: LinearSize}`` in model order.
        activation_sparsity: share of Linear input activations that ``sparsify``
            zeroes, weighted by each Linear's stored weights (its multiply-adds per
            token): the share of the Linears' multiply-adds saved. Under R-Sparse
            the low-rank path's multiply-adds are taken off what its module saves.
            0.0 without ``sparsify``, ``None`` when a sparsified module has no
            activation statistics to tell.
    """

    fixed_bytes: int
    embedding_bytes: int
    linears: Mapping[str, LinearSize]
    activation_sparsity: float | None = 0.0

    @property
    def linear_bytes(self) -> int:
        return sum(s.weight_bytes + s.bias_bytes for s in self.linears.values())

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + self.linear_bytes

    @property
    def size_mb(self) -> float:
        return self.total_bytes / 1e6

    @property
    def bits_per_weight(self) -> float:
        stored = sum(s.stored_weights for s in self.linears.values())
        weights = sum(s.weight_bytes for s in self.linears.values())
        return 8 * weights / stored if stored else 0.0

    @property
    def params_removed(self) -> float:
        original = sum(s.original_weights for s in self.linears.values())
        stored = sum(s.stored_weights for s in self.linears.values())
        return 1 - stored / original if original else 0.0

    def achieved(self) -> dict[str, Any]:
        """The numbers a plan records as ``achieved``, named as its budgets are."""
        return {
            "size_mb": round(self.size_mb, 6),
            "bytes": self.total_bytes,
            "bits_per_weight": round(self.bits_per_weight, 6),
            "params_removed": round(self.params_removed, 6),
            "sparsity": (
                None if self.activation_sparsity is None else round(self.activation_sparsity, 6)
            ),
        }


def estimate_size(
    model: RankingModel,
    plan: CompressionPlan,
    statistics: Mapping[str, ActivationStatistics] | None = None,
) -> SizeEstimate:
    """The stored size of ``model`` under ``plan`` (see the module docstring for the formula).

    ``statistics`` (from :func:`~relcomp.compression.collect_activation_statistics`)
    lets the estimate say how many activations ``sparsify`` thresholds zero.

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.artifacts import CompressionPlan
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> fp32 = estimate_size(model, CompressionPlan("m", {}))
        >>> int8 = estimate_size(model, CompressionPlan("m", {"_default": "int8"}))
        >>> round(fp32.size_mb, 1), round(int8.size_mb, 1), round(int8.bits_per_weight, 2)
        (90.3, 58.5, 8.06)
    """
    structure = ModelStructure.of(model)
    resolved = resolve_on_structure(plan, structure)
    removed = removed_counts(resolved, structure)
    fixed = structure.fixed_parameters()
    sizes: dict[str, LinearSize] = {}
    zeroed = 0.0
    total_work = 0
    unknown = False
    for name, linear in structure.linears.items():
        actions = [a for a in resolved.get(name, []) if not a.structural]
        rows_gone, columns_gone = removed.get(name, (0, 0))
        kept = (linear.out_features - rows_gone, linear.in_features - columns_gone)
        data, bias, stored = weight_bytes(*kept, actions, bias=linear.bias is not None)
        sizes[name] = LinearSize(
            name=name,
            shape=(linear.out_features, linear.in_features),
            kept=kept,
            actions=tuple(str(a) for a in actions) or (str(FP32()),),
            weight_bytes=data,
            bias_bytes=bias,
            stored_weights=stored,
        )
        sparsify = next((a for a in actions if isinstance(a, Sparsify)), None)
        # R-Sparse's factors are stored weights too, but a token costs them in full
        low_rank_work = sparsify.rank * sum(kept) if sparsify and sparsify.rank else 0
        work = stored - low_rank_work
        total_work += work
        if sparsify is not None:
            if statistics is None or name not in statistics:
                unknown = True
            else:
                share = statistics[name].share_below(sparsify.threshold)
                zeroed += share * work - low_rank_work
    return SizeEstimate(
        fixed_bytes=sum(fixed.values()),
        embedding_bytes=fixed["embeddings"],
        linears=sizes,
        activation_sparsity=None if unknown else (zeroed / total_work if total_work else 0.0),
    )


def weight_bytes_table(model: RankingModel) -> dict[str, dict[str, int]]:
    """Bytes (weights, scales and bias) of every Linear at each precision, for planners.

    Example:
        >>> from relcomp.models import load_model
        >>> table = weight_bytes_table(load_model("all-MiniLM-L6-v2"))
        >>> table["encoder.layer.0.intermediate.dense"]["int8(per_channel=True)"]
        602112
    """
    table: dict[str, dict[str, int]] = {}
    for name, linear in ModelStructure.of(model).linears.items():
        table[name] = {}
        for precision in PRECISIONS:
            data, bias, _ = weight_bytes(
                linear.out_features, linear.in_features, precision, bias=linear.bias is not None
            )
            table[name][precision] = data + bias
    return table
