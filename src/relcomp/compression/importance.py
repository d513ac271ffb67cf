"""Importance sources for planners: how much each Linear, head and FFN neuron matters.

A planner never looks at where its scores come from; it receives an
:class:`Importance` and a budget. That keeps relevance-driven plans and their blind
baselines like for like: the same allocator, only the scores differ.

================  ================================================================
source            score of a Linear / head / neuron
================  ================================================================
``relevance``     ``mean_abs`` relevance of the component (a
                  :class:`~relcomp.artifacts.ComponentRelevance`: AttnLRP or RelP)
``relevance-l1``  the same, but a Linear scores the absolute relevance of its
                  output elements (``linear_l1``) rather than its net relevance
``uniform``       the same for every weight (a Linear scores its parameter count)
``random``        seeded uniform random density times the parameter count
``magnitude``     ``‖·‖₁`` of the component's weights
``taylor``        ``Σ |∂score/∂W ⊙ W|`` over the component's weights, summed over
                  calibration batches (one backward per batch of the model's score)
``wanda``         ``Σ |W_ij|·‖X_j‖₂`` over the component's weights, ``‖X_j‖₂`` the
                  norm of input channel ``j`` over the calibration tokens (Wanda;
                  a head or neuron by its rows in and its columns out)
================  ================================================================

A Linear's score is a total over the module, not a density: allocators divide by
bytes or parameters themselves. Heads are scored from the rows of the query, key
and value projections and the columns of the attention output that belong to them;
neurons from their row of the FFN input and column of the FFN output.

Example:
    >>> from relcomp.models import load_model
    >>> model = load_model("all-MiniLM-L6-v2")
    >>> scores = importance_scores(model, "magnitude")
    >>> scores.source, len(scores.heads["encoder.layer.0"])
    ('magnitude', 12)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from relcomp.artifacts import ComponentRelevance
from relcomp.compression.actions import PlanError
from relcomp.compression.resolve import ModelStructure
from relcomp.compression.statistics import ActivationStatistics, calibration_statistics
from relcomp.models.base import RankingModel, batched
from relcomp.models.bi_encoder import BiEncoder
from relcomp.registry import Registry

__all__ = ["IMPORTANCE", "Importance", "importance_scores"]

logger = logging.getLogger(__name__)

#: ``(query, document)`` pairs a planner calibrates on (never from the reported split).
CalibrationPairs = Sequence[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class Importance:
    """Scores of a model's components from one source.

    Attributes:
        source: the source's name as plans record it (``relevance(AttnLRP)``…).
        linears: ``{Linear name: score}`` (a total over the module).
        heads: ``{layer name: one score per head}``.
        neurons: ``{layer name: one score per FFN neuron}``.
        relevance: what :attr:`CompressionPlan.relevance` records.
    """

    source: str
    linears: Mapping[str, float]
    heads: Mapping[str, np.ndarray]
    neurons: Mapping[str, np.ndarray]
    relevance: Mapping[str, Any] = dataclasses.field(default_factory=dict)


Source = Callable[..., Importance]
#: Importance sources by the names users type (``relevance``, ``uniform``, ``random``…).
IMPORTANCE: Registry[Source] = Registry("importance source")


def importance_scores(
    model: RankingModel,
    source: str,
    relevance: ComponentRelevance | None = None,
    calibration: CalibrationPairs | None = None,
    seed: int = 13,
    statistics: Mapping[str, ActivationStatistics] | None = None,
) -> Importance:
    """Scores of every Linear, head and FFN neuron of ``model`` from ``source``.

    Args:
        model: the (uncompressed) model to plan for.
        source: a name in :data:`IMPORTANCE`.
        relevance: the ComponentRelevance that ``relevance`` reads.
        calibration: ``(query, document)`` pairs that ``taylor`` differentiates on
            and ``wanda`` measures activations on.
        seed: the seed of ``random``.
        statistics: activation statistics of the Linear inputs over ``calibration``
            (``wanda`` collects them itself when they are not given).

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> a, b = (importance_scores(model, "random", seed=1) for _ in range(2))
        >>> a.linears == b.linears
        True
    """
    function = IMPORTANCE.get(source)
    return function(
        model, relevance=relevance, calibration=calibration, seed=seed, statistics=statistics
    )


# -- grouping element-wise scores into heads and neurons -------------------------------
def _grouped(
    structure: ModelStructure, per_weight: Mapping[str, torch.Tensor]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Sum element-wise scores over each head's and each neuron's weights."""
    heads: dict[str, np.ndarray] = {}
    neurons: dict[str, np.ndarray] = {}
    for layer in structure.layers:
        count = structure.heads[layer.layer]
        size = structure.head_size(layer)
        rows = sum(per_weight[name].sum(dim=1) for name in (layer.query, layer.key, layer.value))
        columns = per_weight[layer.attention_output].sum(dim=0)
        per_channel = rows + columns
        heads[layer.layer] = per_channel.reshape(count, size).sum(dim=1).double().numpy()
        neuron = per_weight[layer.ffn_in].sum(dim=1) + per_weight[layer.ffn_out].sum(dim=0)
        neurons[layer.layer] = neuron.double().numpy()
    return heads, neurons


def _from_weights(
    structure: ModelStructure, source: str, per_weight: Mapping[str, torch.Tensor]
) -> Importance:
    heads, neurons = _grouped(structure, per_weight)
    linears = {name: float(values.sum()) for name, values in per_weight.items()}
    return Importance(source, linears, heads, neurons, {"importance": source})


# -- sources -----------------------------------------------------------------------------
@IMPORTANCE.register("relevance", "lrp", "relp")
def relevance_importance(
    model: RankingModel,
    relevance: ComponentRelevance | None = None,
    statistic: str = "mean_abs",
    linear_reading: str = "total",
    **_: Any,
) -> Importance:
    """Scores read from a ComponentRelevance (``mean_abs`` by default).

    ``mean_abs`` (the mean over pairs of |relevance|) rather than ``mean_signed``: a
    component that raises some scores and lowers others matters for ranking, and its
    signed mean can cancel to zero. A Linear the artifact does not name gets the
    median of the others (and a warning).

    Heads and neurons score the relevance they carry in total: removing one removes
    that total. A Linear scores, with ``linear_reading="total"`` (the default), its
    net relevance (kind ``linear``). ``linear_reading="l1"`` reads kinds
    ``linear_l1``, ``head_l1`` and ``neuron_l1`` instead: the relevance that passes
    through each output element (each token of a head or neuron) whatever its sign. Quantizing or sparsifying a Linear's weights perturbs every element, and
    opposite signs need not cancel in what that does to the score: query and key
    projections carry little *net* relevance (the softmax passes relevance on with
    opposite signs) but much in absolute terms. Which reading plans better is what
    ``benchmarks/compression_quality.py`` is to decide; an artifact without
    ``linear_l1`` (made before it existed) is read by net relevance, with a warning.
    """
    if linear_reading not in ("l1", "total"):
        raise PlanError(f"linear_reading must be 'l1' or 'total', got {linear_reading!r}")
    if relevance is None:
        raise PlanError(
            "importance 'relevance' needs a ComponentRelevance: pass relevance=… "
            "(relcomp.pipeline.component_relevance) or choose another importance source"
        )
    structure = ModelStructure.of(model)
    missing_kinds = sorted({"linear", "head", "neuron"} - set(relevance.kinds()))
    if missing_kinds:
        raise PlanError(f"the ComponentRelevance has no {missing_kinds} components")
    linear_kind = "linear_l1" if linear_reading == "l1" else "linear"
    if linear_kind not in relevance.kinds():
        logger.warning(
            "the ComponentRelevance has no %r components (made by an older relcomp?); "
            "reading Linear modules by their net relevance ('linear')",
            linear_kind,
        )
        linear_kind = "linear"
    given = {n: float(v.sum()) for n, v in relevance.by_kind(linear_kind, statistic).items()}
    known = [given[n] for n in structure.linears if n in given]
    if not known:
        raise PlanError(
            f"the ComponentRelevance (model {relevance.model!r}) names none of this model's "
            f"Linears, e.g. {next(iter(structure.linears))!r}: was it made on another model?"
        )
    fill = float(np.median(known))
    absent = [n for n in structure.linears if n not in given]
    if absent:
        logger.warning(
            "no relevance for %d Linear(s) (e.g. %s); using the median", len(absent), absent[0]
        )
    linears = {n: abs(given.get(n, fill)) for n in structure.linears}
    unit_kinds = {"head": "head", "neuron": "neuron"}
    if linear_reading == "l1":
        for kind in unit_kinds:
            if f"{kind}_l1" in relevance.kinds():
                unit_kinds[kind] = f"{kind}_l1"
            else:
                logger.warning(
                    "the ComponentRelevance has no %r components (made by an older relcomp, "
                    "or by RelP); reading %ss by their net relevance",
                    f"{kind}_l1",
                    kind,
                )
    heads_given = relevance.by_kind(unit_kinds["head"], statistic)
    neurons_given = relevance.by_kind(unit_kinds["neuron"], statistic)
    heads: dict[str, np.ndarray] = {}
    neurons: dict[str, np.ndarray] = {}
    for layer in structure.layers:
        for target, given_values, count in (
            (heads, heads_given, structure.heads[layer.layer]),
            (neurons, neurons_given, structure.neurons[layer.layer]),
        ):
            values = given_values.get(layer.layer)
            if values is None or len(values) != count:
                raise PlanError(
                    f"the ComponentRelevance has {0 if values is None else len(values)} values "
                    f"for {layer.layer!r}, the model {count}: make it on this model"
                )
            target[layer.layer] = np.abs(np.asarray(values, dtype=np.float64))
    record: dict[str, Any] = {
        "method": relevance.method,
        "source": dict(relevance.source),
        "statistic": statistic,
        "linear_reading": linear_kind,
        "unit_reading": unit_kinds,
        "n_pairs": relevance.n_pairs,
    }
    return Importance(f"relevance({relevance.method})", linears, heads, neurons, record)


@IMPORTANCE.register("relevance-l1")
def relevance_l1_importance(
    model: RankingModel, relevance: ComponentRelevance | None = None, **kwargs: Any
) -> Importance:
    """:func:`relevance_importance` with Linear modules read by absolute relevance."""
    scores = relevance_importance(model, relevance=relevance, linear_reading="l1", **kwargs)
    assert relevance is not None  # relevance_importance refuses None
    return dataclasses.replace(scores, source=f"relevance-l1({relevance.method})")


@IMPORTANCE.register("uniform")
def uniform_importance(model: RankingModel, **_: Any) -> Importance:
    """The same score for every weight: a blind baseline."""
    structure = ModelStructure.of(model)
    per_weight = {
        n: torch.ones_like(m.weight, dtype=torch.float64) for n, m in structure.linears.items()
    }
    return _from_weights(structure, "uniform", per_weight)


@IMPORTANCE.register("random")
def random_importance(model: RankingModel, seed: int = 13, **_: Any) -> Importance:
    """Seeded random scores: one random density per Linear, one score per head and neuron."""
    structure = ModelStructure.of(model)
    generator = np.random.default_rng(seed)
    linears = {
        name: float(generator.random()) * linear.weight.numel()
        for name, linear in structure.linears.items()
    }
    heads = {
        layer.layer: generator.random(structure.heads[layer.layer]) for layer in structure.layers
    }
    neurons = {
        layer.layer: generator.random(structure.neurons[layer.layer]) for layer in structure.layers
    }
    return Importance(
        f"random(seed={seed})", linears, heads, neurons, {"importance": "random", "seed": seed}
    )


@IMPORTANCE.register("magnitude")
def magnitude_importance(model: RankingModel, **_: Any) -> Importance:
    """``‖·‖₁`` of each component's weights."""
    structure = ModelStructure.of(model)
    with torch.no_grad():
        per_weight = {n: m.weight.detach().abs().double() for n, m in structure.linears.items()}
    return _from_weights(structure, "magnitude", per_weight)


@IMPORTANCE.register("taylor")
def taylor_importance(
    model: RankingModel,
    calibration: CalibrationPairs | None = None,
    batch_size: int = 16,
    **_: Any,
) -> Importance:
    """First-order Taylor scores ``Σ_batches |∂(Σ scores)/∂W ⊙ W|`` over calibration pairs.

    One backward pass per batch of the model's score (the cross-encoder's logit, the
    bi-encoder's similarity between query and document embeddings).
    """
    if not calibration:
        raise PlanError("importance 'taylor' needs calibration=[(query, document), …] pairs")
    structure = ModelStructure.of(model)
    linears = structure.linears
    totals = {n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in linears.items()}
    flags = [(p, p.requires_grad) for p in model.model.parameters()]
    try:
        for parameter, _flag in flags:
            parameter.requires_grad_(False)
        for linear in linears.values():
            linear.weight.requires_grad_(True)
        for _start, chunk in batched(list(calibration), batch_size):
            queries = [q for q, _ in chunk]
            documents = [d for _, d in chunk]
            for linear in linears.values():
                linear.weight.grad = None
            _calibration_score(model, queries, documents).sum().backward()
            with torch.no_grad():
                for name, linear in linears.items():
                    if linear.weight.grad is not None:
                        totals[name] += (linear.weight.grad * linear.weight).abs().double()
    finally:
        for linear in linears.values():
            linear.weight.grad = None
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
    return _from_weights(structure, "taylor", totals)


@IMPORTANCE.register("wanda", "activation")
def wanda_importance(
    model: RankingModel,
    calibration: CalibrationPairs | None = None,
    statistics: Mapping[str, ActivationStatistics] | None = None,
    **_: Any,
) -> Importance:
    """Wanda's ``|W_ij|·‖X_j‖₂`` summed over each component's weights: a blind baseline.

    The activation norms come from ``statistics`` or, without them, from one pass
    over the ``calibration`` pairs.
    """
    structure = ModelStructure.of(model)
    if statistics is None:
        if not calibration:
            raise PlanError("importance 'wanda' needs calibration=[(query, document), …] pairs")
        statistics = calibration_statistics(model, calibration, modules=structure.linears)
    missing = sorted(set(structure.linears) - set(statistics))
    if missing:
        raise PlanError(f"importance 'wanda': no activation statistics for {', '.join(missing)}")
    with torch.no_grad():
        per_weight = {
            name: linear.weight.detach().abs().double()
            * statistics[name].channel_norm.double().to(linear.weight.device)
            for name, linear in structure.linears.items()
        }
    return _from_weights(structure, "wanda", per_weight)


def _calibration_score(
    model: RankingModel, queries: Sequence[str], documents: Sequence[str]
) -> torch.Tensor:
    if isinstance(model, BiEncoder):
        query = model.embed(model.tokenize([model.query_prompt + q for q in queries]))
        document = model.embed(model.tokenize([model.document_prompt + d for d in documents]))
        return (query * document).sum(-1)
    forward: Any = getattr(model, "forward_scores")  # noqa: B009 - cross-encoders have it
    tokenize: Any = getattr(model, "tokenize")  # noqa: B009
    scores: torch.Tensor = forward(tokenize(list(queries), list(documents)))
    return scores
