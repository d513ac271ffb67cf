"""Planners: importance scores and a budget in, a :class:`CompressionPlan` out.

Four planners, each a function ``planner(model, importance, budget, …)`` registered
in :data:`PLANNERS`, and one entry point for users and the CLI, :func:`make_plan`:

* ``mixed-precision`` (LRP-QViT): every Linear starts at ``int4(block_size=32)``;
  a greedy knapsack then upgrades (int4 → int8 → fp16 → fp32) the module with the
  best *score × noise removed per byte* while the budget (``bits_per_weight`` or
  ``size_mb``) allows. The noise of a precision is its relative rounding variance
  (``1/7²`` for int4, ``1/127²`` for int8, ``2⁻²²`` for fp16, 0 for fp32), so score
  per byte is what decides: a module's relevance divided by its size. The option
  ``ladder`` changes the precisions, e.g. to start at ``int4(block_size=128)``.
* ``prune-structured`` (ECoFLaP's coarse step): heads and FFN neurons ranked
  globally by score normalised within their type (score over the type's mean, so
  an average head and an average neuron tie), the lowest removed until
  ``params_removed`` is reached; no layer loses more than ``max_layer_ratio`` of its
  heads or neurons (and always keeps one). ``uniform`` is the classic baseline: the
  same ratio in every layer, lowest-magnitude heads and neurons inside.
* ``prune-unstructured`` (ECoFLaP + Wanda): one ratio per Linear, higher where the
  score per parameter is lower (ranks spread over ``spread`` around the target),
  shifted so that the mean over parameters is the target, clipped to [0, 0.95];
  inside a Linear, ``compress_(…, statistics=…)`` drops the lowest ``|W|·‖X‖``.
* ``sparsify`` (TEAL): one activation sparsity per Linear input allocated the same
  way (weighted by the module's weights, as ``estimate_size`` counts sparsity), and
  the threshold is that quantile of the calibration activations' ``|x|``.
* ``r-sparse`` (R-Sparse): ``sparsify`` whose inputs under the threshold go through a
  rank-``rank`` SVD of the weight instead of being dropped. The budget is the same
  share of multiply-adds saved, so each input is thresholded further to pay for its
  low-rank path (``rank × (rows + columns)`` per token): the two planners compare
  at equal compute.

Every plan records ``method`` (``"<planner>/<importance>"``), ``budget``,
``achieved`` (by :func:`~relcomp.compression.estimate_size`) and ``relevance``.

Example:
    >>> from relcomp.models import load_model
    >>> model = load_model("all-MiniLM-L6-v2")
    >>> plan = make_plan(model, "mixed-precision", {"bits_per_weight": 6}, importance="magnitude")
    >>> plan.method, plan.achieved["bits_per_weight"] <= 6
    ('mixed-precision/magnitude', True)
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from relcomp.artifacts import ComponentRelevance, CompressionPlan
from relcomp.budgets import parse_budget
from relcomp.compression.actions import (
    FP16,
    FP32,
    Int4,
    Int8,
    PlanError,
    PrecisionAction,
    PruneHeads,
    PruneNeurons,
    PruneWeights,
    Sparsify,
    parse_action,
)
from relcomp.compression.importance import (
    CalibrationPairs,
    Importance,
    importance_scores,
)
from relcomp.compression.resolve import ModelStructure
from relcomp.compression.size import weight_bytes
from relcomp.compression.statistics import ActivationStatistics, calibration_statistics
from relcomp.models.base import RankingModel
from relcomp.registry import Registry

__all__ = [
    "PLANNERS",
    "PRECISION_LADDER",
    "calibration_statistics",
    "check_budget",
    "make_plan",
    "mixed_precision_plan",
    "parse_budget",
    "r_sparse_plan",
    "rounding_noise",
    "sparsify_plan",
    "structured_pruning_plan",
    "unstructured_pruning_plan",
]

logger = logging.getLogger(__name__)

#: Precisions the mixed-precision planner chooses from, cheapest first.
PRECISION_LADDER: tuple[PrecisionAction, ...] = (Int4(block_size=32), Int8(), FP16(), FP32())
#: Relative rounding variance of each precision (step² of the symmetric grid).
NOISE: dict[str, float] = {"int4": 1 / 7**2, "int8": 1 / 127**2, "fp16": 2.0**-22, "fp32": 0.0}


def rounding_noise(precision: PrecisionAction) -> float:
    """:data:`NOISE` of a precision; a block of ``b`` int4 weights shares one absmax,
    which grows like ``√(2 ln b)`` for Gaussian weights, so int4's noise scales with
    ``ln b / ln 32`` (32 being the block :data:`NOISE` assumes)."""
    noise = NOISE[precision.name]
    if isinstance(precision, Int4):
        noise *= math.log(precision.block_size) / math.log(32)
    return noise


#: Highest share of a Linear's weights or inputs the unstructured planners remove.
MAX_RATIO = 0.95

Planner = Callable[..., CompressionPlan]
#: Planners by the names users type: ``mixed-precision``, ``prune-structured``…
PLANNERS: Registry[Planner] = Registry("compression planner")


def _one_budget(
    planner: str, budget: Mapping[str, float], allowed: Sequence[str]
) -> tuple[str, float]:
    keys = [key for key in budget if key in allowed]
    if len(budget) != 1 or not keys:
        raise PlanError(
            f"the {planner} planner takes one budget of {', '.join(allowed)}; got {dict(budget) or 'none'}"
        )
    value = float(budget[keys[0]])
    if not math.isfinite(value):
        raise PlanError(f"impossible budget {keys[0]}={value}")
    return keys[0], value


def check_budget(
    model: RankingModel, method: str, budget: Mapping[str, float] | str
) -> dict[str, float]:
    """Fail now on a budget no plan of ``method`` can meet; cheap, needs no data.

    Run before relevance or calibration, so an impossible budget costs nothing: the
    plan is drafted with the data-free ``magnitude`` importance (the floors a budget
    must clear, such as int4 everywhere, do not depend on the importance), and an
    activation-sparsity budget is checked for its range.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> check_budget(model, "mixed-precision", "bits_per_weight=2")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        relcomp.errors.PlanError: impossible budget bits_per_weight=2: ...
    """
    from relcomp.registry import UnknownNameError

    try:
        planner = PLANNERS.get(method)
    except UnknownNameError as error:
        raise PlanError(str(error)) from None
    parsed = parse_budget(budget)
    if planner in (sparsify_plan, r_sparse_plan):
        _, target = _one_budget(method, parsed, ("sparsity",))
        if not 0.0 < target <= MAX_RATIO:
            raise PlanError(
                f"impossible budget sparsity={target:g}: it must be in (0, {MAX_RATIO}]"
            )
        return parsed
    make_plan(model, method, parsed, importance="magnitude")
    return parsed


def make_plan(
    model: RankingModel,
    method: str,
    budget: Mapping[str, float] | str,
    importance: str = "relevance",
    relevance: ComponentRelevance | None = None,
    calibration: CalibrationPairs | None = None,
    seed: int = 13,
    within: str | None = None,
    statistics: Mapping[str, ActivationStatistics] | None = None,
    **options: Any,
) -> CompressionPlan:
    """A compression plan for ``model`` by planner ``method`` that meets ``budget``.

    Args:
        model: the uncompressed model.
        method: a planner name (:data:`PLANNERS`): ``mixed-precision``,
            ``prune-structured``, ``prune-unstructured``, ``sparsify`` or
            ``r-sparse``.
        budget: ``{"bits_per_weight": 6}``, ``{"size_mb": 40}``,
            ``{"params_removed": 0.3}`` or ``{"sparsity": 0.4}`` (or ``"name=value"``).
        importance: ``relevance`` (needs ``relevance``), ``uniform``, ``random``,
            ``magnitude``, ``taylor`` or ``wanda`` (need ``calibration``).
        relevance: a ComponentRelevance made on ``model`` (AttnLRP or RelP).
        calibration: ``(query, document)`` pairs from a dev/train split: Taylor
            scores, and the activation statistics ``sparsify`` and Wanda need.
        seed: seed of the ``random`` importance.
        within: ``prune-structured`` only: an importance source that chooses which
            heads and neurons go inside each layer, ``importance`` having set how
            many (ECoFLaP's global then local steps).
        statistics: :func:`calibration_statistics` of ``calibration``, when the caller
            has them already (they are computed when a plan needs them).
        options: planner options (``max_layer_ratio``, ``spread``, ``ladder``,
            ``rank`` for ``r-sparse``).

    Returns:
        The plan, with ``achieved`` filled in. Realise it with
        ``compress_(model, plan)`` (``prune-unstructured`` plans: pass
        ``statistics=calibration_statistics(model, calibration)`` for Wanda).

    Raises:
        PlanError: an unknown name, a missing input, or a budget no plan can meet.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> plan = make_plan(model, "prune-structured", "params_removed=0.2", importance="magnitude")
        >>> plan.achieved["params_removed"] >= 0.2
        True
    """
    from relcomp.registry import UnknownNameError

    try:
        planner = PLANNERS.get(method)
    except UnknownNameError as error:
        raise PlanError(str(error)) from None
    parsed = parse_budget(budget)
    if within is not None and planner is not structured_pruning_plan:
        raise PlanError(f"within={within!r} is an option of prune-structured, not of {method}")
    activation_planner = planner in (sparsify_plan, r_sparse_plan)
    if "rank" in options and not activation_planner:
        raise PlanError(f"rank={options['rank']!r} is an option of r-sparse, not of {method}")
    if options.get("activations") and planner is not mixed_precision_plan:
        raise PlanError(f"activations=True is an option of mixed-precision, not of {method}")
    if activation_planner and statistics is None:
        if not calibration:
            raise PlanError("the sparsify planner needs calibration=[(query, document), …] pairs")
        statistics = calibration_statistics(model, calibration)

    def scores_of(source: str) -> Importance:
        try:
            return importance_scores(model, source, relevance, calibration, seed, statistics)
        except UnknownNameError as error:
            raise PlanError(str(error)) from None

    if within is not None:
        options["within"] = scores_of(within)
    if planner is structured_pruning_plan and importance.strip().lower() == "uniform":
        inside = options.get("within") or importance_scores(model, "magnitude")
        return structured_pruning_plan(model, inside, parsed, uniform=True, **options)
    scores = scores_of(importance)
    if activation_planner:
        return planner(model, scores, parsed, statistics=statistics, **options)
    return planner(model, scores, parsed, **options)


def _finish(
    model: RankingModel,
    entries: list[tuple[str, str]],
    planner: str,
    scores: Importance,
    budget: Mapping[str, float],
    statistics: Mapping[str, ActivationStatistics] | None = None,
    extra: str = "",
) -> CompressionPlan:
    plan = CompressionPlan(
        model=model.name,
        entries=tuple(entries),
        method=f"{planner}/{scores.source}{extra}",
        budget=dict(budget),
        relevance=dict(scores.relevance),
    )
    plan = plan.with_achieved(model, statistics)
    logger.info("%s: %s → %s", plan.method, dict(budget), dict(plan.achieved))
    return plan


# -- mixed precision ----------------------------------------------------------------------
@PLANNERS.register("mixed-precision", "quantize")
def mixed_precision_plan(
    model: RankingModel,
    importance: Importance,
    budget: Mapping[str, float],
    ladder: Sequence[PrecisionAction | str] = PRECISION_LADDER,
    activations: bool = False,
) -> CompressionPlan:
    """Bits per Linear by greedy knapsack on ``score × noise removed / bytes``.

    Budgets: ``bits_per_weight`` (weights and scales, biases not counted) or
    ``size_mb`` (the whole model). Ties are broken in model order. ``ladder`` lists
    the precisions to choose from, cheapest first (every Linear starts at the first);
    e.g. ``("int4(block_size=128)", *PRECISION_LADDER)`` reaches 4.25 bits per weight.
    ``activations=True`` quantizes the inputs of the int8 Linears too (W8A8): with
    one clipped scale per channel where the input comes from a LayerNorm (queries,
    keys, values and the FFN's input: LRP-QViT's clipped channel-wise quantization),
    one per tensor elsewhere. Such a plan is realised with activation statistics
    (``compress_(model, plan, statistics=…)``).

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.compression.importance import importance_scores
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> plan = mixed_precision_plan(model, importance_scores(model, "uniform"),
        ...                             {"bits_per_weight": 8.1}, activations=True)
        >>> dict(plan.entries)["encoder.layer.0.attention.self.query"]
        'int8(per_channel=True, activations=True, channelwise=True)'
        >>> dict(plan.entries)["encoder.layer.0.output.dense"]
        'int8(per_channel=True, activations=True)'

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.compression.importance import importance_scores
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> plan = mixed_precision_plan(model, importance_scores(model, "uniform"), {"size_mb": 60})
        >>> plan.achieved["size_mb"] <= 60
        True
    """
    key, value = _one_budget("mixed-precision", budget, ("bits_per_weight", "size_mb"))
    ladder = _ladder(ladder)
    structure = ModelStructure.of(model)
    names = list(structure.linears)
    costs: dict[str, list[int]] = {}
    stored_total = 0
    for name, linear in structure.linears.items():
        costs[name] = []
        for precision in ladder:
            data, bias, _stored = weight_bytes(
                linear.out_features, linear.in_features, precision, bias=linear.bias is not None
            )
            costs[name].append(data if key == "bits_per_weight" else data + bias)
        stored_total += linear.out_features * linear.in_features
    if key == "bits_per_weight":
        capacity = value * stored_total / 8
        floor_text = f"{8 * sum(c[0] for c in costs.values()) / stored_total:.3f} bits per weight"
    else:
        capacity = value * 1e6 - sum(structure.fixed_parameters().values())
        floor_bytes = sum(c[0] for c in costs.values()) + sum(structure.fixed_parameters().values())
        floor_text = f"{floor_bytes / 1e6:.3f} MB"
    used = sum(c[0] for c in costs.values())
    if used > capacity:
        raise PlanError(
            f"impossible budget {key}={value:g}: {ladder[0]} everywhere, the smallest "
            f"plan this planner makes, takes {floor_text}"
        )
    total_score = sum(max(importance.linears.get(n, 0.0), 0.0) for n in names) or 1.0
    score = {n: max(importance.linears.get(n, 0.0), 0.0) / total_score for n in names}
    level = dict.fromkeys(names, 0)
    heap: list[tuple[float, int, str]] = []

    def push(order: int, name: str) -> None:
        current = level[name]
        if current + 1 >= len(ladder):
            return
        gain = score[name] * (rounding_noise(ladder[current]) - rounding_noise(ladder[current + 1]))
        extra = costs[name][current + 1] - costs[name][current]
        heapq.heappush(heap, (-gain / max(extra, 1), order, name))

    for order, name in enumerate(names):
        push(order, name)
    order_of = {name: order for order, name in enumerate(names)}
    while heap:
        _, _, name = heapq.heappop(heap)
        extra = costs[name][level[name] + 1] - costs[name][level[name]]
        if used + extra > capacity:
            continue  # this module stays; cheaper upgrades elsewhere may still fit
        used += extra
        level[name] += 1
        push(order_of[name], name)
    chosen = {name: ladder[level[name]] for name in names}
    if activations:
        after_layer_norm = {
            name
            for layer in structure.layers
            for name in (layer.query, layer.key, layer.value, layer.ffn_in)
        }
        for name, precision in chosen.items():
            if isinstance(precision, Int8):
                chosen[name] = dataclasses.replace(
                    precision, activations=True, channelwise=name in after_layer_norm
                )
    entries = [(name, str(precision)) for name, precision in chosen.items()]
    suffix = "+a8" if activations else ""
    return _finish(model, entries, "mixed-precision", importance, {key: value}, extra=suffix)


def _ladder(ladder: Sequence[PrecisionAction | str]) -> tuple[PrecisionAction, ...]:
    """Precisions from actions or their strings; cheapest first, each cheaper in noise too."""
    parsed: list[PrecisionAction] = []
    for step in ladder:
        action = parse_action(step)
        if not isinstance(action, PrecisionAction):
            raise PlanError(f"the precision ladder takes precisions only; got {action}")
        parsed.append(action)
    if not parsed:
        raise PlanError("the precision ladder is empty")
    noise = [rounding_noise(step) for step in parsed]
    if any(a <= b for a, b in itertools.pairwise(noise)):
        raise PlanError(
            "the precision ladder must go from coarse to fine (each step less rounding "
            f"noise); got {', '.join(str(step) for step in parsed)}"
        )
    return tuple(parsed)


# -- structured pruning -------------------------------------------------------------------
@PLANNERS.register("drop-layers", "layer-dropping")
def layer_dropping_plan(
    model: RankingModel, importance: Importance, budget: Mapping[str, float]
) -> CompressionPlan:
    """Drop the ``layers_dropped`` whole layers with the lowest total score.

    A layer's score is the sum of its Linears' scores (``importance.linears``): with
    AttnLRP relevance, the relevance that flows through the layer's projections. Ties
    go to the higher layer, so ``uniform`` importance drops the top layers, the blind
    rule Sajjad et al. found best for fine-tuned encoders. No layer is protected: a
    cross-encoder whose top three of six layers go reads its first token from layer
    2, where that token barely depends on the input yet, and recovery stalls (see
    docs/benchmarks/recovery.md, where a hand-written ``drop_layers(1,2,3)``, which
    keeps the top two, is measured beside it). At least one layer always stays.

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.compression.importance import importance_scores
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> plan = layer_dropping_plan(model, importance_scores(model, "uniform"), {"layers_dropped": 2})
        >>> plan.entries
        (('encoder.layer', 'drop_layers(4,5)'),)
    """
    _, count = _one_budget("drop-layers", budget, ("layers_dropped",))
    layers = model.layer_modules()
    if not 1 <= count < len(layers) or count != int(count):
        raise PlanError(
            f"impossible budget layers_dropped={count:g}: the model has {len(layers)} layers; "
            f"drop 1 to {len(layers) - 1}"
        )
    scores = [
        sum(float(importance.linears.get(name, 0.0)) for name in layer.linears().values())
        for layer in layers
    ]
    order = sorted(range(len(layers)), key=lambda index: (scores[index], -index))
    dropped = sorted(order[: int(count)])
    layer_list = layers[0].layer.rsplit(".", 1)[0]
    entries = [(layer_list, f"drop_layers({','.join(map(str, dropped))})")]
    return _finish(model, entries, "drop-layers", importance, budget)


@PLANNERS.register("prune-structured", "structured")
def structured_pruning_plan(
    model: RankingModel,
    importance: Importance,
    budget: Mapping[str, float],
    max_layer_ratio: float = 0.9,
    uniform: bool = False,
    within: Importance | None = None,
) -> CompressionPlan:
    """Remove the heads and FFN neurons with the lowest normalised scores.

    Args:
        model: the model to prune (not already physically pruned).
        importance: scores of heads and neurons.
        budget: ``{"params_removed": ratio}``, the share of Linear weights to remove;
            reached or passed by less than one head.
        max_layer_ratio: the largest share of one layer's heads (or neurons) removed;
            every layer keeps at least one of each.
        uniform: the same ratio in every layer (heads first, then neurons to reach
            the budget), ``importance`` choosing inside each layer.
        within: ECoFLaP's two steps: ``importance`` sets how many heads and neurons
            each layer loses (the global, coarse step), and these scores choose
            which ones (the local step, e.g. ``wanda``).

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.compression.importance import importance_scores
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> scores = importance_scores(model, "magnitude")
        >>> structured_pruning_plan(model, scores, {"params_removed": 0.25}).method
        'prune-structured/magnitude'
    """
    key, target = _one_budget("prune-structured", budget, ("params_removed",))
    if not 0.0 < target < 1.0:
        raise PlanError(f"impossible budget params_removed={target:g}: it must be in (0, 1)")
    structure = ModelStructure.of(model)
    if any(structure.pruned_heads.values()):
        raise PlanError("plan structured pruning on the unpruned model")
    total = sum(m.out_features * m.in_features for m in structure.linears.values())
    goal = target * total
    head_cost: dict[str, int] = {}
    neuron_cost: dict[str, int] = {}
    removable: dict[tuple[str, str], int] = {}
    for layer in structure.layers:
        size = structure.head_size(layer)
        head_cost[layer.layer] = size * (
            sum(structure.linears[n].in_features for n in (layer.query, layer.key, layer.value))
            + structure.linears[layer.attention_output].out_features
        )
        neuron_cost[layer.layer] = (
            structure.linears[layer.ffn_in].in_features
            + structure.linears[layer.ffn_out].out_features
        )
        for kind, count in (
            ("head", structure.heads[layer.layer]),
            ("neuron", structure.neurons[layer.layer]),
        ):
            removable[(kind, layer.layer)] = min(math.floor(max_layer_ratio * count), count - 1)
    most = sum(
        removable[(kind, layer)] * (head_cost if kind == "head" else neuron_cost)[layer]
        for kind, layer in removable
    )
    if goal > most:
        raise PlanError(
            f"impossible budget params_removed={target:g}: removing at most {max_layer_ratio:.0%} "
            f"of each layer's heads and neurons removes {most / total:.3f} of the Linear weights"
        )
    if uniform:
        chosen = _uniform_choice(structure, importance, goal, head_cost, neuron_cost, removable)
    else:
        chosen = _global_choice(structure, importance, goal, head_cost, neuron_cost, removable)
    if within is not None:
        chosen = {
            (kind, layer): [
                int(i)
                for i in np.argsort(
                    (within.heads if kind == "head" else within.neurons)[layer], kind="stable"
                )[: len(indices)]
            ]
            for (kind, layer), indices in chosen.items()
        }
    entries: list[tuple[str, str]] = []
    for layer in structure.layers:
        heads = sorted(chosen[("head", layer.layer)])
        neurons = sorted(chosen[("neuron", layer.layer)])
        if heads:
            entries.append((layer.attention, str(PruneHeads(tuple(heads)))))
        if neurons:
            entries.append((layer.ffn_in, str(PruneNeurons(indices=tuple(neurons)))))
    if not entries:
        raise PlanError(f"params_removed={target:g} is too small to remove a single neuron")
    name = "uniform" if uniform else importance.source
    recorded: dict[str, Any] = (
        dict(importance.relevance) if not uniform else {"importance": "uniform"}
    )
    if within is not None:
        recorded["within"] = dict(within.relevance)
    scores = Importance(name, {}, {}, {}, recorded)
    return _finish(
        model,
        entries,
        "prune-structured",
        scores,
        {key: target},
        extra=f"+{within.source}-within" if within is not None else "",
    )


def _normalised(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scores over their type's mean, so heads and neurons compete on equal terms."""
    flat = np.concatenate([np.asarray(v, dtype=np.float64) for v in values.values()])
    mean = float(np.abs(flat).mean()) if flat.size else 0.0
    scale = mean if mean > 0 else 1.0
    return {layer: np.asarray(v, dtype=np.float64) / scale for layer, v in values.items()}


def _global_choice(
    structure: ModelStructure,
    importance: Importance,
    goal: float,
    head_cost: Mapping[str, int],
    neuron_cost: Mapping[str, int],
    removable: Mapping[tuple[str, str], int],
) -> dict[tuple[str, str], list[int]]:
    heads, neurons = _normalised(importance.heads), _normalised(importance.neurons)
    candidates: list[tuple[float, int, int, int, str, str]] = []
    for depth, layer in enumerate(structure.layers):
        for index, value in enumerate(heads[layer.layer]):
            candidates.append((float(value), 0, depth, index, "head", layer.layer))
        for index, value in enumerate(neurons[layer.layer]):
            candidates.append((float(value), 1, depth, index, "neuron", layer.layer))
    candidates.sort()
    chosen: dict[tuple[str, str], list[int]] = {key: [] for key in removable}
    removed = 0
    # near the goal, a head that would overshoot by more than a neuron waits for neurons
    slack: float = min(neuron_cost.values())
    for _ in range(2):  # the second pass, without slack, when neurons alone fall short
        for _, _, _, index, kind, name in candidates:
            if removed >= goal:
                break
            taken = chosen[(kind, name)]
            if len(taken) >= removable[(kind, name)] or index in taken:
                continue
            cost = (head_cost if kind == "head" else neuron_cost)[name]
            if kind == "head" and removed + cost > goal + slack:
                continue
            taken.append(index)
            removed += cost
        slack = math.inf
    return chosen


def _uniform_choice(
    structure: ModelStructure,
    importance: Importance,
    goal: float,
    head_cost: Mapping[str, int],
    neuron_cost: Mapping[str, int],
    removable: Mapping[tuple[str, str], int],
) -> dict[tuple[str, str], list[int]]:
    layers = [layer.layer for layer in structure.layers]
    prunable = sum(
        structure.heads[n] * head_cost[n] + structure.neurons[n] * neuron_cost[n] for n in layers
    )
    ratio = goal / prunable
    chosen: dict[tuple[str, str], list[int]] = {key: [] for key in removable}
    removed = 0
    for layer in layers:
        count = min(math.floor(ratio * structure.heads[layer]), removable[("head", layer)])
        chosen[("head", layer)] = list(np.argsort(importance.heads[layer], kind="stable")[:count])
        removed += count * head_cost[layer]
    still = max(goal - removed, 0.0)
    per_layer = math.ceil(still / sum(neuron_cost[n] for n in layers)) if still else 0
    for layer in layers:
        count = min(per_layer, removable[("neuron", layer)])
        chosen[("neuron", layer)] = list(
            np.argsort(importance.neurons[layer], kind="stable")[:count]
        )
    return {key: [int(i) for i in value] for key, value in chosen.items()}


# -- per-Linear ratios (unstructured pruning, activation sparsity) -----------------------------
def allocate_ratios(
    scores: Mapping[str, float],
    weights: Mapping[str, int],
    target: float,
    spread: float,
    cap: float = MAX_RATIO,
) -> dict[str, float]:
    """One ratio per module: higher for lower score per weight, weighted mean = ``target``.

    Modules are ranked by ``score / weights`` (ties share a rank); the ratio falls
    linearly from ``target + spread/2`` (lowest) to ``target − spread/2`` (highest),
    then one offset, found by bisection, makes the ``weights``-weighted mean equal
    ``target`` after clipping to ``[0, cap]``. Equal scores give ``target`` everywhere.

    Example:
        >>> ratios = allocate_ratios({"a": 1.0, "b": 3.0}, {"a": 10, "b": 10}, 0.5, 0.2)
        >>> round(ratios["a"], 3), round(ratios["b"], 3)
        (0.6, 0.4)
    """
    if not 0.0 <= target <= cap:
        raise PlanError(f"a ratio of {target:g} is outside [0, {cap}]")
    names = list(scores)
    density = np.array([scores[n] / max(weights[n], 1) for n in names], dtype=np.float64)
    ranks = _average_ranks(density)
    position = ranks / (len(names) - 1) if len(names) > 1 else np.full(len(names), 0.5)
    raw = target + spread * (0.5 - position)
    size = np.array([weights[n] for n in names], dtype=np.float64)

    def mean_at(offset: float) -> float:
        return float((np.clip(raw + offset, 0.0, cap) * size).sum() / size.sum())

    low, high = -1.0, 1.0
    for _ in range(100):
        middle = (low + high) / 2
        if mean_at(middle) < target:
            low = middle
        else:
            high = middle
    ratios = np.clip(raw + (low + high) / 2, 0.0, cap)
    return {name: float(value) for name, value in zip(names, ratios, strict=True)}


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


@PLANNERS.register("prune-unstructured", "unstructured", "wanda")
def unstructured_pruning_plan(
    model: RankingModel,
    importance: Importance,
    budget: Mapping[str, float],
    spread: float = 0.2,
) -> CompressionPlan:
    """``prune_weights(ratio=…)`` per Linear; Wanda's ``|W|·‖X‖`` chooses inside.

    The plan holds the ratios; the scores inside each Linear come from the
    activation statistics passed to ``compress_(model, plan, statistics=…)`` (without
    them ``compress_`` falls back to ``|W|``).

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.compression.importance import importance_scores
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> plan = unstructured_pruning_plan(model, importance_scores(model, "uniform"), {"params_removed": 0.5})
        >>> round(plan.achieved["params_removed"], 2)
        0.5
    """
    key, target = _one_budget("prune-unstructured", budget, ("params_removed",))
    if not 0.0 < target <= MAX_RATIO:
        raise PlanError(
            f"impossible budget params_removed={target:g}: this planner removes a share in (0, {MAX_RATIO}]"
        )
    structure = ModelStructure.of(model)
    weights = {n: m.out_features * m.in_features for n, m in structure.linears.items()}
    scores = {n: max(importance.linears.get(n, 0.0), 0.0) for n in weights}
    ratios = allocate_ratios(scores, weights, target, spread)
    # floor(ratio × columns) per row: nudge up by one weight per row, never past the cap
    entries = []
    for name, ratio in ratios.items():
        columns = structure.linears[name].in_features
        ratio = min(ratio + 0.5 / columns, MAX_RATIO)
        if math.floor(ratio * columns) > 0:
            entries.append((name, str(PruneWeights(round(ratio, 6)))))
    return _finish(model, entries, "prune-unstructured", importance, {key: target}, extra="+wanda")


@PLANNERS.register("sparsify", "activation-sparsity", "teal")
def sparsify_plan(
    model: RankingModel,
    importance: Importance,
    budget: Mapping[str, float],
    statistics: Mapping[str, ActivationStatistics] | None = None,
    spread: float = 0.2,
    rank: int | None = None,
) -> CompressionPlan:
    """``sparsify(threshold=…)`` per Linear so that the mean activation sparsity meets the budget.

    Args:
        model: the uncompressed model.
        importance: scores per Linear; less important inputs are made sparser.
        budget: ``{"sparsity": share}``: the share of the Linears' multiply-adds
            saved, each Linear weighted by its weights (as
            :func:`~relcomp.compression.estimate_size` reports it).
        statistics: activation statistics of every Linear input on calibration data
            (:func:`calibration_statistics`).
        spread: how far apart the sparsest and densest inputs' targets start.
        rank: R-Sparse: the inputs under each threshold go through a rank-``rank``
            SVD of the weight (``sparsify(threshold=…, rank=…)``). Each module's
            threshold then zeroes its allocated share plus what its low-rank path
            costs, ``rank × (rows + columns) / (rows × columns)``, capped at 0.95.
            Modules whose factors would be no smaller than their weight (a
            one-logit classifier) keep plain TEAL.

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.compression.importance import importance_scores
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> statistics = calibration_statistics(model, [("what is a cat", "a cat is a small mammal")])
        >>> uniform = importance_scores(model, "uniform")
        >>> plan = sparsify_plan(model, uniform, {"sparsity": 0.5}, statistics=statistics, rank=16)
        >>> plan.method, str(plan.entries[0][1]).endswith("rank=16)")
        ('r-sparse/uniform', True)
    """
    key, target = _one_budget("sparsify", budget, ("sparsity",))
    if not 0.0 < target <= MAX_RATIO:
        raise PlanError(f"impossible budget sparsity={target:g}: it must be in (0, {MAX_RATIO}]")
    if statistics is None:
        raise PlanError("the sparsify planner needs activation statistics (calibration pairs)")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise PlanError(f"rank must be a positive integer, got {rank!r}")
    structure = ModelStructure.of(model)
    missing = [n for n in structure.linears if n not in statistics]
    if missing:
        raise PlanError(
            f"no activation statistics for {len(missing)} Linear(s), e.g. {missing[0]!r}"
        )
    shapes = {n: (m.out_features, m.in_features) for n, m in structure.linears.items()}
    weights = {n: rows * columns for n, (rows, columns) in shapes.items()}
    scores = {n: max(importance.linears.get(n, 0.0), 0.0) for n in weights}
    shares = allocate_ratios(scores, weights, target, spread)
    entries = []
    for name, share in shares.items():
        rows, columns = shapes[name]
        if rank is None or rank * (rows + columns) >= rows * columns:
            # TEAL; also where factors of this rank would be no smaller than the weight
            # (a one-logit classifier), so the low-rank path could never pay for itself
            if share > 0:
                entries.append((name, str(Sparsify(_threshold(statistics[name], share)))))
            continue
        zeroed = min(share + rank * (rows + columns) / (rows * columns), MAX_RATIO)
        entries.append((name, str(Sparsify(_threshold(statistics[name], zeroed), rank=rank))))
    planner = "sparsify" if rank is None else "r-sparse"
    return _finish(model, entries, planner, importance, {key: target}, statistics=statistics)


@PLANNERS.register("r-sparse", "rsparse")
def r_sparse_plan(
    model: RankingModel,
    importance: Importance,
    budget: Mapping[str, float],
    statistics: Mapping[str, ActivationStatistics] | None = None,
    spread: float = 0.2,
    rank: int = 16,
) -> CompressionPlan:
    """R-Sparse: :func:`sparsify_plan` with a rank-``rank`` path for the small inputs.

    At the same ``sparsity`` budget (multiply-adds saved) as ``sparsify``, so the two
    compare at equal compute.

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.compression.importance import importance_scores
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> statistics = calibration_statistics(model, [("what is a cat", "a cat is a small mammal")])
        >>> plan = r_sparse_plan(model, importance_scores(model, "uniform"), {"sparsity": 0.4},
        ...                      statistics=statistics, rank=8)
        >>> plan.entries[0][0], plan.entries[0][1].endswith(", rank=8)")
        ('encoder.layer.0.attention.self.query', True)
        >>> plan.achieved["sparsity"] > 0.35, plan.achieved["size_mb"] > 90.3  # factors stored too
        (True, True)
    """
    return sparsify_plan(model, importance, budget, statistics, spread=spread, rank=rank)


def _threshold(statistics: ActivationStatistics, share: float) -> float:
    """The ``|x|`` below which ``share`` of the calibration inputs fall (6 digits)."""
    return float(f"{statistics.quantile(share):.6g}")
