"""Resolve a :class:`~relcomp.artifacts.CompressionPlan` against a model.

:class:`ModelStructure` says which modules each kind of action applies to and how
many heads and FFN neurons each layer has; :func:`resolve_plan` expands regexes and
``_default``, applies precedence, and raises one :class:`PlanError` naming the
problem when the plan does not fit the model. :func:`structural_masks` turns head
and neuron pruning into the rows and columns each Linear keeps, the one place both
the torch simulation and physical pruning read them from.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from relcomp.budgets import check_budget_values
from relcomp.compression.actions import (
    INCOMPATIBLE,
    Action,
    DropLayers,
    LowRank,
    PlanError,
    PruneHeads,
    PruneNeurons,
    Target,
)
from relcomp.models.adapters import LayerModules
from relcomp.models.base import RankingModel

if TYPE_CHECKING:  # a plan is read here, never made: artifacts imports this module, not back
    from relcomp.artifacts import CompressionPlan

__all__ = [
    "CATEGORY_ORDER",
    "LinearKeep",
    "ModelStructure",
    "check_budget",
    "dropped_layers",
    "head_counts",
    "neuron_counts",
    "resolve_on_structure",
    "resolve_plan",
    "structural_masks",
]

#: The order actions are carried out on a module: structure first, precision last.
CATEGORY_ORDER: tuple[str, ...] = (
    "heads",
    "neurons",
    "layers",
    "weights",
    "low_rank",
    "precision",
    "sparsity",
)

logger = logging.getLogger(__name__)

_EXPLICIT, _REGEX, _DEFAULT = 2, 1, 0


@dataclasses.dataclass(frozen=True)
class ModelStructure:
    """What a plan can address in one model: Linears, attention modules, FFNs, counts.

    ``heads`` and ``neurons`` are keyed by layer name (``bert.encoder.layer.3``), as
    :class:`~relcomp.artifacts.ComponentRelevance` keys its ``head`` and ``neuron``
    values. ``heads`` counts the heads a layer has now; ``original_heads`` the model's
    configured number, which head indices in plans refer to (a physically pruned
    model keeps its original numbering in ``config.pruned_heads``).

    Example:
        >>> from relcomp.models import load_model
        >>> structure = ModelStructure.of(load_model("all-MiniLM-L6-v2"))
        >>> structure.heads["encoder.layer.0"], structure.neurons["encoder.layer.0"]
        (12, 1536)
    """

    modules: Mapping[str, nn.Module]
    linears: Mapping[str, nn.Linear]
    layers: tuple[LayerModules, ...]
    heads: Mapping[str, int]
    original_heads: int
    pruned_heads: Mapping[str, tuple[int, ...]]
    neurons: Mapping[str, int]
    #: the encoder's list of layers (``bert.encoder.layer``), what ``drop_layers`` acts on
    layer_list: str
    #: ``{alias or canonical name: canonical name}`` per target kind
    aliases: Mapping[str, Mapping[str, str]]

    @classmethod
    def of(cls, model: RankingModel) -> ModelStructure:
        module = model.model
        modules = dict(module.named_modules())
        linears = {n: m for n, m in modules.items() if isinstance(m, nn.Linear)}
        layers = tuple(model.layer_modules())
        config: Any = module.config
        original = model.num_heads()
        pruned_config = {int(k): tuple(sorted(v)) for k, v in (config.pruned_heads or {}).items()}
        heads, neurons, pruned = {}, {}, {}
        attention_aliases: dict[str, str] = {}
        ffn_aliases: dict[str, str] = {}
        for layer in layers:
            attention = modules[layer.attention]
            count = getattr(attention, "num_attention_heads", getattr(attention, "n_heads", None))
            heads[layer.layer] = int(count) if count is not None else original
            pruned[layer.layer] = pruned_config.get(layer.index, ())
            # a factorised FFN (LowRankLinear) still has its width; its factors are Linears
            neurons[layer.layer] = int(modules[layer.ffn_in].out_features)
            for alias in (layer.attention, layer.layer, _parent(layer.attention)):
                attention_aliases.setdefault(alias, layer.attention)
            for alias in (layer.ffn_in, layer.layer, _parent(layer.ffn_in)):
                ffn_aliases.setdefault(alias, layer.ffn_in)
        layer_list = f"{model.adapter.prefix(module)}{model.adapter.layers}"
        return cls(
            modules=modules,
            linears=linears,
            layers=layers,
            heads=heads,
            original_heads=original,
            pruned_heads=pruned,
            neurons=neurons,
            layer_list=layer_list,
            aliases={
                "linear": {name: name for name in linears},
                "attention": attention_aliases,
                "ffn": ffn_aliases,
                "layers": {layer_list: layer_list, _parent(layer_list): layer_list},
            },
        )

    # -- targets --------------------------------------------------------------------
    def targets(self, target: Target) -> list[str]:
        """Canonical module names an action of this target kind applies to, in model order."""
        if target == "linear":
            return list(self.linears)
        if target == "attention":
            return [layer.attention for layer in self.layers]
        if target == "layers":
            return [self.layer_list]
        return [layer.ffn_in for layer in self.layers]

    def canonical(self, name: str, target: Target) -> str | None:
        """The module an action of ``target`` kind given on ``name`` acts on, if any."""
        return self.aliases[target].get(name)

    def layer_of(self, name: str) -> LayerModules:
        """The layer a canonical attention module or FFN input Linear belongs to."""
        for layer in self.layers:
            if name in (layer.attention, layer.ffn_in, layer.layer):
                return layer
        raise KeyError(name)

    def head_size(self, layer: LayerModules) -> int:
        attention_output: Any = self.modules[layer.attention_output]
        return int(attention_output.in_features) // max(self.heads[layer.layer], 1)

    def head_positions(self, layer: LayerModules) -> dict[int, int]:
        """``{original head index: position in the current weights}`` for a layer."""
        gone = set(self.pruned_heads[layer.layer])
        remaining = [h for h in range(self.original_heads) if h not in gone]
        return {head: position for position, head in enumerate(remaining)}

    def describe(self, name: str) -> str:
        """``'a LayerNorm'``, ``'an attention module'``…: what a module is, for messages."""
        kind = type(self.modules[name]).__name__
        if name in self.targets("attention"):
            return f"an attention module ({kind})"
        return f"an {kind}" if kind[:1].lower() in "aeiou" else f"a {kind}"

    def fixed_parameters(self) -> dict[str, int]:
        """Bytes of the parameters no action shrinks: ``{"embeddings": …, "other": …}``."""
        seen: set[int] = set()
        linear_parameters = {id(p) for m in self.linears.values() for p in m.parameters()}
        totals = {"embeddings": 0, "other": 0}
        for module in self.modules.values():
            for parameter in module.parameters(recurse=False):
                if id(parameter) in seen or id(parameter) in linear_parameters:
                    continue
                seen.add(id(parameter))
                key = "embeddings" if isinstance(module, nn.Embedding) else "other"
                totals[key] += parameter.numel() * parameter.element_size()
        return totals


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def head_counts(model: RankingModel) -> dict[str, int]:
    """Attention heads per layer, keyed by layer name as in ``ComponentRelevance``.

    Example:
        >>> from relcomp.models import load_model
        >>> head_counts(load_model("all-MiniLM-L6-v2"))["encoder.layer.5"]
        12
    """
    return dict(ModelStructure.of(model).heads)


def neuron_counts(model: RankingModel) -> dict[str, int]:
    """FFN neurons per layer, keyed by layer name as in ``ComponentRelevance``.

    Example:
        >>> from relcomp.models import load_model
        >>> neuron_counts(load_model("all-MiniLM-L6-v2"))["encoder.layer.5"]
        1536
    """
    return dict(ModelStructure.of(model).neurons)


# -- budgets ------------------------------------------------------------------------------
def check_budget(model: RankingModel | ModelStructure, budget: Mapping[str, float]) -> None:
    """Raise :class:`PlanError` for a budget no plan can meet on this model.

    Example:
        >>> from relcomp.models import load_model
        >>> check_budget(load_model("all-MiniLM-L6-v2"), {"size_mb": 5})
        Traceback (most recent call last):
        ...
        relcomp.errors.PlanError: impossible budget size_mb=5: ...
    """
    structure = model if isinstance(model, ModelStructure) else ModelStructure.of(model)
    check_budget_values(budget)
    if "size_mb" in budget:
        fixed = structure.fixed_parameters()
        floor = sum(fixed.values())
        if budget["size_mb"] * 1e6 < floor:
            raise PlanError(
                f"impossible budget size_mb={budget['size_mb']}: the parameters no action "
                f"shrinks already take {floor / 1e6:.3f} MB (embeddings alone "
                f"{fixed['embeddings'] / 1e6:.3f} MB); only Linear layers are compressed"
            )


# -- resolution ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Candidate:
    priority: int
    order: int
    pattern: str
    action: Action


def resolve_plan(plan: CompressionPlan, model: RankingModel) -> dict[str, list[Action]]:
    """``{module name: actions}`` for every module the plan touches, in model order.

    An action given on an alias (a layer, or the module around an attention block or
    FFN) is keyed by its canonical module: the attention module for ``prune_heads``,
    the FFN's input Linear for ``prune_neurons``. Each module's actions come in the
    order they are carried out (:data:`CATEGORY_ORDER`).

    Example:
        >>> from relcomp.artifacts import CompressionPlan
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> plan = CompressionPlan(
        ...     "all-MiniLM-L6-v2",
        ...     {"_default": "int8", r"re:encoder\\.layer\\.5\\..*": "fp16", "encoder.layer.0": "prune_heads(1)"},
        ... )
        >>> resolved = resolve_plan(plan, model)
        >>> [str(a) for a in resolved["encoder.layer.5.output.dense"]]
        ['fp16']
        >>> [str(a) for a in resolved["encoder.layer.0.attention.self"]]
        ['prune_heads(1)']
    """
    return resolve_on_structure(plan, ModelStructure.of(model))


def resolve_on_structure(
    plan: CompressionPlan, structure: ModelStructure
) -> dict[str, list[Action]]:
    check_budget(structure, plan.budget)
    actions = plan.actions()
    _check_defaults(actions)
    candidates: dict[str, dict[str, list[_Candidate]]] = defaultdict(lambda: defaultdict(list))
    for order, (pattern, action) in enumerate(actions):
        priority, targets = _expand(pattern, action, structure)
        for target in targets:
            candidates[target][action.category].append(_Candidate(priority, order, pattern, action))
    chosen: dict[str, dict[str, _Candidate]] = {}
    module_order = {name: index for index, name in enumerate(structure.modules)}
    for module in sorted(candidates, key=module_order.__getitem__):
        picks = {category: _choose(module, items) for category, items in candidates[module].items()}
        chosen[module] = _drop_incompatible(module, picks)
        for candidate in chosen[module].values():
            _check_fits(module, candidate.action, structure)
    _check_ranks(chosen, structure)
    return {
        module: [picks[category].action for category in CATEGORY_ORDER if category in picks]
        for module, picks in chosen.items()
        if picks
    }


def _check_defaults(actions: list[tuple[str, Action]]) -> None:
    seen: dict[str, Action] = {}
    for pattern, action in actions:
        if pattern != "_default":
            continue
        other = seen.setdefault(action.category, action)
        if other != action:
            raise PlanError(
                f"conflicting _default entries: {other} and {action} are both "
                f"{action.category} actions; give one"
            )


def _expand(pattern: str, action: Action, structure: ModelStructure) -> tuple[int, list[str]]:
    target = action.target
    if pattern == "_default":
        return _DEFAULT, structure.targets(target)
    if pattern.startswith("re:"):
        regex = re.compile(pattern[3:])
        matched = [name for name in structure.modules if name and regex.fullmatch(name)]
        if not matched:
            raise PlanError(f"{pattern!r} matches no module of the model ({action})")
        targets = list(
            dict.fromkeys(
                canonical
                for name in matched
                if (canonical := structure.canonical(name, target)) is not None
            )
        )
        if not targets:
            raise PlanError(
                f"{pattern!r} matches {len(matched)} module(s) (e.g. {matched[0]!r}), none of "
                f"which {action} applies to: it applies to {_target_text(target, structure)}"
            )
        return _REGEX, targets
    if pattern not in structure.modules or not pattern:
        close = difflib.get_close_matches(pattern, [n for n in structure.modules if n], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PlanError(
            f"unknown module {pattern!r}{hint} Names are as in model.named_modules(); "
            "use 're:<regex>' to match several"
        )
    canonical = structure.canonical(pattern, target)
    if canonical is None:
        raise PlanError(
            f"{action} applies to {_target_text(target, structure)}; "
            f"{pattern!r} is {structure.describe(pattern)}"
        )
    return _EXPLICIT, [canonical]


def _target_text(target: Target, structure: ModelStructure) -> str:
    if target == "linear":
        return "Linear modules"
    if target == "layers":
        return f"the encoder's layer list ({structure.layer_list!r})"
    example = structure.layers[0] if structure.layers else None
    if target == "attention":
        where = f" (e.g. {example.attention!r} or its layer {example.layer!r})" if example else ""
        return f"attention modules{where}"
    where = f" (e.g. {example.ffn_in!r} or its layer {example.layer!r})" if example else ""
    return f"FFN blocks{where}"


def _choose(module: str, items: list[_Candidate]) -> _Candidate:
    top = max(item.priority for item in items)
    best = [item for item in items if item.priority == top]
    if top == _EXPLICIT:
        distinct = list(dict.fromkeys(item.action for item in best))
        if len(distinct) > 1:
            given = ", ".join(f"{item.action} (from {item.pattern!r})" for item in best)
            raise PlanError(
                f"conflicting actions on {module!r}: {given}; a module takes one "
                f"{best[0].action.category} action"
            )
    return min(best, key=lambda item: item.order)


def _drop_incompatible(module: str, chosen: dict[str, _Candidate]) -> dict[str, _Candidate]:
    chosen = dict(chosen)
    for pair in INCOMPATIBLE:
        first, second = sorted(pair)
        if first in chosen and second in chosen:
            a, b = chosen[first], chosen[second]
            if a.priority == b.priority:
                raise PlanError(
                    f"conflicting actions on {module!r}: {a.action} (from {a.pattern!r}) and "
                    f"{b.action} (from {b.pattern!r}) cannot be combined"
                )
            loser = first if a.priority < b.priority else second
            del chosen[loser]
    return chosen


def _check_fits(module: str, action: Action, structure: ModelStructure) -> None:
    if isinstance(action, PruneHeads):
        layer = structure.layer_of(module)
        positions = structure.head_positions(layer)
        too_large = [h for h in action.heads if h >= structure.original_heads]
        if too_large:
            raise PlanError(
                f"{action} on {module!r}: head(s) {too_large} do not exist; the layer has "
                f"heads 0..{structure.original_heads - 1}"
            )
        gone = [h for h in action.heads if h not in positions]
        if gone:
            raise PlanError(f"{action} on {module!r}: head(s) {gone} are already pruned")
        if len(action.heads) >= len(positions):
            raise PlanError(
                f"{action} on {module!r} would remove every head of the layer; keep at least one"
            )
    elif isinstance(action, DropLayers):
        too_large = [i for i in action.layers if i >= len(structure.layers)]
        if too_large:
            raise PlanError(
                f"{action}: layer(s) {too_large} do not exist; the model has layers "
                f"0..{len(structure.layers) - 1}"
            )
        if len(action.layers) >= len(structure.layers):
            raise PlanError(f"{action} would remove every layer; keep at least one")
    elif isinstance(action, PruneNeurons):
        count = structure.neurons[structure.layer_of(module).layer]
        if action.indices is not None:
            too_large = [i for i in action.indices if i >= count]
            if too_large:
                raise PlanError(
                    f"{action} on {module!r}: neuron(s) {too_large[:5]} do not exist; the FFN "
                    f"has neurons 0..{count - 1}"
                )
            if len(action.indices) >= count:
                raise PlanError(
                    f"{action} on {module!r} would remove every neuron; keep at least one"
                )
        elif count - math.floor(action.ratio * count) < 1:  # type: ignore[operator]
            raise PlanError(f"{action} on {module!r} would remove every neuron")


def _check_ranks(chosen: dict[str, dict[str, _Candidate]], structure: ModelStructure) -> None:
    """A rank above a Linear's kept shape: an error when named, skipped under regex/_default."""
    structural = {
        module: [c.action for c in picks.values() if c.action.structural]
        for module, picks in chosen.items()
    }
    removed = removed_counts(structural, structure)
    for module, picks in chosen.items():
        candidate = picks.get("low_rank")
        if candidate is None:
            continue
        assert isinstance(candidate.action, LowRank)
        linear = structure.linears[module]
        rows_gone, columns_gone = removed.get(module, (0, 0))
        rows, columns = linear.out_features - rows_gone, linear.in_features - columns_gone
        if candidate.action.rank <= min(rows, columns):
            continue
        if candidate.priority != _EXPLICIT:
            logger.debug(
                "%s from %r skips %r (%d × %d)",
                candidate.action,
                candidate.pattern,
                module,
                rows,
                columns,
            )
            del picks["low_rank"]
            continue
        raise PlanError(
            f"{candidate.action} on {module!r}: rank exceeds min(out, in) = {min(rows, columns)} "
            f"of its {rows} × {columns} kept weights"
        )


# -- structure: rows and columns each Linear keeps -----------------------------------------
@dataclasses.dataclass(frozen=True)
class LinearKeep:
    """Rows (outputs) and columns (inputs) of one Linear that structural pruning keeps."""

    rows: torch.Tensor | None = None  # bool (out_features,), None = all
    columns: torch.Tensor | None = None  # bool (in_features,), None = all

    def kept(self, linear: nn.Linear) -> tuple[int, int]:
        rows = int(self.rows.sum()) if self.rows is not None else linear.out_features
        columns = int(self.columns.sum()) if self.columns is not None else linear.in_features
        return rows, columns


def removed_counts(
    resolved: Mapping[str, list[Action]], structure: ModelStructure
) -> dict[str, tuple[int, int]]:
    """``{Linear name: (rows removed, columns removed)}`` implied by structural actions."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for module, actions in resolved.items():
        for action in actions:
            if isinstance(action, PruneHeads):
                layer = structure.layer_of(module)
                width = len(action.heads) * structure.head_size(layer)
                for name in (layer.query, layer.key, layer.value):
                    counts[name][0] += width
                counts[layer.attention_output][1] += width
            elif isinstance(action, PruneNeurons):
                layer = structure.layer_of(module)
                count = structure.neurons[layer.layer]
                gone = (
                    len(action.indices)
                    if action.indices is not None
                    else math.floor((action.ratio or 0.0) * count)
                )
                counts[layer.ffn_in][0] += gone
                counts[layer.ffn_out][1] += gone
    for layer in dropped_layers(resolved, structure):  # every weight of the layer goes
        for name in layer.linears().values():
            linear = structure.linears[name]
            counts[name] = [linear.out_features, linear.in_features]
    return {name: (rows, columns) for name, (rows, columns) in counts.items()}


def dropped_layers(
    resolved: Mapping[str, list[Action]], structure: ModelStructure
) -> list[LayerModules]:
    """The layers a resolved plan's ``drop_layers`` removes, in model order."""
    indices = {
        index
        for action in resolved.get(structure.layer_list, [])
        if isinstance(action, DropLayers)
        for index in action.layers
    }
    return [layer for layer in structure.layers if layer.index in indices]


def neurons_to_prune(
    action: PruneNeurons, layer: LayerModules, structure: ModelStructure
) -> list[int]:
    """The FFN neurons an action removes: its indices, or the least important by magnitude.

    A neuron's importance without relevance is ``‖W_in[i, :]‖ · ‖W_out[:, i]‖``, the
    size of the path through it; ties go to the lower index.
    """
    if action.indices is not None:
        return list(action.indices)
    ffn_in, ffn_out = structure.linears[layer.ffn_in], structure.linears[layer.ffn_out]
    with torch.no_grad():
        importance = ffn_in.weight.double().norm(dim=1) * ffn_out.weight.double().norm(dim=0)
    count = math.floor((action.ratio or 0.0) * importance.numel())
    order = sorted(range(importance.numel()), key=lambda i: (float(importance[i]), i))
    return sorted(order[:count])


def structural_masks(
    resolved: Mapping[str, list[Action]], structure: ModelStructure
) -> dict[str, LinearKeep]:
    """``{Linear name: LinearKeep}`` for every Linear that head or neuron pruning shrinks.

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.artifacts import CompressionPlan
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> plan = CompressionPlan("m", {"encoder.layer.0": "prune_heads(0)"})
        >>> structure = ModelStructure.of(model)
        >>> keep = structural_masks(resolve_plan(plan, model), structure)
        >>> keep["encoder.layer.0.attention.output.dense"].kept(
        ...     structure.linears["encoder.layer.0.attention.output.dense"])
        (384, 352)
    """
    masks: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)

    def drop(name: str, axis: str, indices: list[int]) -> None:
        linear = structure.linears[name]
        size = linear.out_features if axis == "rows" else linear.in_features
        mask = masks[name].setdefault(axis, torch.ones(size, dtype=torch.bool))
        mask[indices] = False

    for module, actions in resolved.items():
        for action in actions:
            if isinstance(action, PruneHeads):
                layer = structure.layer_of(module)
                size = structure.head_size(layer)
                positions = structure.head_positions(layer)
                channels = [
                    positions[head] * size + offset
                    for head in action.heads
                    for offset in range(size)
                ]
                for name in (layer.query, layer.key, layer.value):
                    drop(name, "rows", channels)
                drop(layer.attention_output, "columns", channels)
            elif isinstance(action, PruneNeurons):
                layer = structure.layer_of(module)
                neurons = neurons_to_prune(action, layer, structure)
                drop(layer.ffn_in, "rows", neurons)
                drop(layer.ffn_out, "columns", neurons)
    return {
        name: LinearKeep(rows=axes.get("rows"), columns=axes.get("columns"))
        for name, axes in masks.items()
    }
