"""Which components cause a ranking decision: activation patching, AtP and RelP.

Given a clean input and a corrupted twin of the same token length
(:mod:`relcomp.attribution.corruption`), the *effect* of a component is the change
of the metric (cross-encoder logit, or bi-encoder similarity) when that component's
activation in the clean run is replaced by its activation in the corrupted run:
``effect = metric(clean with component patched) - metric(clean)``. The normalised
effect ``(clean - patched) / (clean - corrupted)`` is the share of the corruption's
effect that the component carries.

Three ways to get it:

* :class:`ActivationPatching` — exact: one patched forward pass per component,
  with forward hooks. K components of one pair share a batch (K copies of the
  pair, each with another component patched); the layers below the patched one
  are not recomputed, their clean outputs are substituted.
* :class:`AttributionPatching` (AtP, Kramár et al. 2024) — the first-order
  estimate ``(a_corrupted - a_clean) · ∂metric/∂a`` at the clean run, for every
  component from one backward pass.
* :class:`RelevancePatching` (RelP, Jafari et al. 2025) — the same with the
  gradient replaced by LRP's propagation coefficients: the backward pass is the
  one :class:`~relcomp.attribution.LRPPatch` installs, with the paper's rules
  (LN rule, identity rule: :func:`relp_composite`) by default.

Component kinds (names as in :class:`~relcomp.artifacts.ComponentRelevance`):

* ``head``: one attention head's output, the head's slice of the input of the
  ``attention_output`` Linear (all positions);
* ``attention``: the ``attention_output`` Linear's output (all positions);
* ``mlp``: the ``ffn_out`` Linear's output, the MLP block's output (all positions);
* ``residual``: the residual stream after a layer (the layer's output) at one
  position; in a :class:`ComponentRelevance` it is summed over positions as ``layer``.

For a bi-encoder the metric is the similarity of the pair as the model defines it
(cosine when it normalises); the side that was corrupted is patched, and the other
side's embedding, equal in the clean and the corrupted run, is computed once.

:func:`run_patching` does it all for a BEIR split and returns the payload that
``relcomp patch`` writes as ``patching.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from relcomp.artifacts import ComponentRelevance
from relcomp.attribution.composites import Composite, get_composite
from relcomp.attribution.corruption import DEFAULT_SEED, PatchingPair, build_pairs
from relcomp.attribution.patch import LRPPatch
from relcomp.attribution.rules import (
    DEFAULT_EPSILON,
    Gradient,
    GradientMatmul,
    Identity,
    LayerNormRule,
)
from relcomp.checks import require_finite
from relcomp.models.base import RankingModel, batched, progress_enabled, truncation_since
from relcomp.models.bi_encoder import BiEncoder
from relcomp.models.cross_encoder import CrossEncoder

if TYPE_CHECKING:  # read only; loading data is the pipeline's job
    from relcomp.evaluation.beir import BeirDataset

__all__ = [
    "COMPONENT_KINDS",
    "ActivationPatching",
    "AttributionPatching",
    "PatchingEffects",
    "RelevancePatching",
    "clean_forward",
    "correlations",
    "relp_composite",
    "run_patching",
]

logger = logging.getLogger(__name__)

#: The component kinds every patching method reports, in this order.
COMPONENT_KINDS: tuple[str, ...] = ("head", "attention", "mlp", "residual")

# A component of one pair: (kind, layer index, head or position; None for a whole block).
_Spec = tuple[str, int, int | None]


@dataclasses.dataclass(frozen=True)
class PatchingEffects:
    """The effect of patching each component of one pair, exact or estimated.

    Attributes:
        method: ``"activation patching"``, ``"AtP"``, ``"RelP"`` or ``"RelP (<composite>)"``.
        label: the pair's label.
        clean: the metric of the clean input.
        corrupted: the metric of the corrupted input.
        effects: ``{kind: array}``: ``head`` (layers, heads), ``attention`` and
            ``mlp`` (layers,), ``residual`` (layers, tokens); ``patched - clean``,
            NaN where a component was not patched.
    """

    method: str
    label: str
    clean: float
    corrupted: float
    effects: Mapping[str, np.ndarray]

    def normalized(self, kind: str) -> np.ndarray:
        """``(clean - patched) / (clean - corrupted)``: 1 = the component carries the whole effect.

        Example:
            >>> effects = PatchingEffects("AtP", "q/d", 2.0, 1.0, {"mlp": np.array([-0.5, 0.0])})
            >>> effects.normalized("mlp").tolist()
            [0.5, -0.0]
        """
        gap = self.clean - self.corrupted
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.asarray(self.effects[kind]) / gap


# -- running the model -------------------------------------------------------------------------
def _layer_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _pad(features: Sequence[Mapping[str, torch.Tensor]], tokenizer: Any) -> dict[str, torch.Tensor]:
    """Right-pad batches of one to a common length (positions stay where they were)."""
    length = max(f["input_ids"].shape[1] for f in features)
    values = {
        "input_ids": tokenizer.pad_token_id or 0,
        "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0),
    }
    padded: dict[str, torch.Tensor] = {}
    for key in features[0]:
        rows = [
            torch.nn.functional.pad(f[key], (0, length - f[key].shape[1]), value=values.get(key, 0))
            for f in features
        ]
        padded[key] = torch.cat(rows)
    return padded


class _Runs:
    """What every method needs of a model: its layers, and the metric of a forward pass."""

    def __init__(self, model: RankingModel) -> None:
        if not isinstance(model, CrossEncoder | BiEncoder):
            raise TypeError(f"patching needs a CrossEncoder or a BiEncoder, got {type(model)}")
        self.model = model
        self.module = model.model
        self.layers = model.layer_modules()
        self.heads = model.num_heads()

    @property
    def metric_name(self) -> str:
        if isinstance(self.model, BiEncoder):
            return "cosine similarity" if self._cosine else "dot product"
        return "logit"

    @property
    def _cosine(self) -> bool:
        model = self.model
        return isinstance(model, BiEncoder) and (
            model.normalize or model.similarity_name == "cosine"
        )

    def other_embeddings(self, pairs: Sequence[PatchingPair]) -> torch.Tensor | None:
        """The embeddings ``(pairs, dim)`` of the sides that stay clean (bi-encoders)."""
        if not isinstance(self.model, BiEncoder):
            return None
        others = [p.other for p in pairs]
        if any(other is None for other in others):
            raise ValueError("a bi-encoder patching pair needs the features of its other side")
        with torch.inference_mode():
            embeddings = self.model.embed(
                _pad([o for o in others if o is not None], self.model.tokenizer), normalize=False
            )
            if self._cosine:
                embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
        return embeddings.clone()

    def metric(
        self,
        features: Mapping[str, torch.Tensor],
        other: torch.Tensor | None,
        hold_norm: bool = False,
    ) -> torch.Tensor:
        """The metric per row of ``features``; ``hold_norm``: LRP's constant-norm rule."""
        if isinstance(self.model, CrossEncoder):
            return self.model.forward_scores(dict(features))
        assert isinstance(self.model, BiEncoder) and other is not None
        embedding = self.model.embed(dict(features), normalize=False)
        if self._cosine:
            norm = embedding.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            embedding = embedding / (norm.detach() if hold_norm else norm)
        return (embedding * other).sum(-1)


class _Recorder:
    """Forward hooks that keep each component's activation of the last run.

    ``activations[kind][key]``: ``residual``, ``attention``, ``mlp``, ``head`` (the
    input of ``attention_output``) and, with ``extra``, ``neuron`` (the input of
    ``ffn_out``), keyed by layer index, and ``linear`` keyed by module name.
    ``raw_layer_outputs`` keeps each layer's output object as the layer returned it.
    """

    def __init__(self, runs: _Runs, *, detach: bool, extra: bool = False) -> None:
        self.runs = runs
        self.detach = detach
        self.extra = extra
        self.activations: dict[str, dict[Any, torch.Tensor]] = defaultdict(dict)
        self.raw_layer_outputs: dict[int, Any] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _Recorder:
        module = self.runs.module
        for layer in self.runs.layers:
            index = layer.index
            self._handles += [
                module.get_submodule(layer.layer).register_forward_hook(
                    lambda _, __, output, i=index: self._layer(i, output)
                ),
                module.get_submodule(layer.attention_output).register_forward_hook(
                    lambda _, __, output, i=index: self._keep("attention", i, output)
                ),
                module.get_submodule(layer.attention_output).register_forward_pre_hook(
                    lambda _, inputs, i=index: self._keep("head", i, _first(inputs))
                ),
                module.get_submodule(layer.ffn_out).register_forward_hook(
                    lambda _, __, output, i=index: self._keep("mlp", i, output)
                ),
            ]
            if self.extra:
                self._handles.append(
                    module.get_submodule(layer.ffn_out).register_forward_pre_hook(
                        lambda _, inputs, i=index: self._keep("neuron", i, _first(inputs))
                    )
                )
        if self.extra:
            for name, linear in self.runs.model.named_linears().items():
                self._handles.append(
                    linear.register_forward_hook(
                        lambda _, __, output, n=name: self._keep("linear", n, output)
                    )
                )
        if not self.detach:
            # Frozen parameters would leave no graph to differentiate: make one start here.
            embeddings = module.get_submodule(
                self.runs.model.adapter.embedding_names(module)["embeddings"]
            )
            self._handles.append(embeddings.register_forward_hook(_require_grad))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _keep(self, kind: str, key: Any, tensor: torch.Tensor) -> None:
        self.activations[kind][key] = tensor.detach() if self.detach else tensor

    def _layer(self, index: int, output: Any) -> None:
        self.raw_layer_outputs[index] = output
        self._keep("residual", index, _layer_output(output))

    def take(self) -> tuple[dict[str, dict[Any, torch.Tensor]], dict[int, Any]]:
        taken = (dict(self.activations), dict(self.raw_layer_outputs))
        self.activations = defaultdict(dict)
        self.raw_layer_outputs = {}
        return taken


def _first(inputs: tuple[Any, ...]) -> torch.Tensor:
    if not inputs:
        raise RuntimeError("patching expects the Linear's input as a positional argument")
    return inputs[0]


def _require_grad(_: nn.Module, __: Any, output: Any) -> Any:
    if isinstance(output, torch.Tensor) and torch.is_grad_enabled() and not output.requires_grad:
        return output.detach().requires_grad_()
    return None


# -- activation patching ----------------------------------------------------------------------------
@dataclasses.dataclass
class _PairRuns:
    """What the patched runs of one pair need from its clean and corrupted runs."""

    clean: dict[str, dict[Any, torch.Tensor]]
    corrupted: dict[str, dict[Any, torch.Tensor]]
    clean_layer_outputs: dict[int, Any]
    other: torch.Tensor | None
    clean_metric: float
    corrupted_metric: float


class ActivationPatching:
    """Exact activation patching: one patched forward pass per component.

    Components that start at the same layer share a batch (``batch_size`` copies of
    the pair, each with another component patched); the layers below are not run
    again: their clean outputs are substituted. ``residual_positions=k`` patches the
    residual stream at ``k`` positions per pair drawn at random (seeded by the pair's
    label); the others are NaN. ``None`` patches every position.

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.attribution.corruption import pair_from_texts
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> pair = pair_from_texts(model, ("cat food", "cats eat fish"), ("cat food", "dogs eat fish"))
        >>> [effects] = ActivationPatching(model).attribute([pair], show_progress_bar=False)
        >>> effects.effects["head"].shape, effects.effects["residual"].shape
        ((6, 12), (6, 5))
    """

    method = "activation patching"

    def __init__(
        self,
        model: RankingModel,
        *,
        kinds: Sequence[str] = COMPONENT_KINDS,
        batch_size: int = 32,
        residual_positions: int | None = None,
        seed: int = DEFAULT_SEED,
    ) -> None:
        unknown = sorted(set(kinds) - set(COMPONENT_KINDS))
        if unknown:
            raise ValueError(f"unknown component kinds {unknown}; kinds: {COMPONENT_KINDS}")
        if residual_positions is not None and residual_positions < 1:
            raise ValueError(
                f"residual_positions must be None or at least 1, got {residual_positions}"
            )
        self.runs = _Runs(model)
        self.kinds = tuple(kinds)
        self.batch_size = batch_size
        self.residual_positions = residual_positions
        self.seed = seed

    def components(self, pair: PatchingPair) -> list[_Spec]:
        """The components of one pair that this method patches."""
        specs: list[_Spec] = []
        positions = self._positions(pair)
        for layer in range(len(self.runs.layers)):
            if "head" in self.kinds:
                specs += [("head", layer, head) for head in range(self.runs.heads)]
            specs += [(kind, layer, None) for kind in ("attention", "mlp") if kind in self.kinds]
            if "residual" in self.kinds:
                specs += [("residual", layer, position) for position in positions]
        return specs

    def _positions(self, pair: PatchingPair) -> list[int]:
        if self.residual_positions is None or self.residual_positions >= pair.length:
            return list(range(pair.length))
        random = np.random.RandomState(zlib.crc32(f"{self.seed}|{pair.label}|positions".encode()))
        chosen = random.choice(pair.length, size=self.residual_positions, replace=False)
        return sorted(int(p) for p in chosen)

    def attribute(
        self, pairs: Sequence[PatchingPair], show_progress_bar: bool | None = None
    ) -> list[PatchingEffects]:
        """The exact effect of every component of every pair."""
        plans = [self.components(pair) for pair in pairs]
        logger.info(
            "activation patching: %d components of %d pairs, one patched copy each",
            sum(len(plan) for plan in plans),
            len(pairs),
        )
        bar = tqdm(
            total=sum(len(plan) for plan in plans),
            desc="Activation patching",
            unit="component",
            disable=not progress_enabled(show_progress_bar),
        )
        results = []
        with bar:
            for pair, plan in zip(pairs, plans, strict=True):
                results.append(self._patch_pair(pair, plan, bar))
        return results

    def _prepare(self, pair: PatchingPair) -> _PairRuns:
        runs = self.runs
        other = runs.other_embeddings([pair])
        with torch.inference_mode(), _Recorder(runs, detach=True) as recorder:
            clean_metric = float(runs.metric(pair.clean, other)[0])
            clean, clean_layer_outputs = recorder.take()
            corrupted_metric = float(runs.metric(pair.corrupted, other)[0])
            corrupted, _ = recorder.take()
        return _PairRuns(
            clean, corrupted, clean_layer_outputs, other, clean_metric, corrupted_metric
        )

    def _patch_pair(self, pair: PatchingPair, plan: list[_Spec], bar: Any) -> PatchingEffects:
        prepared = self._prepare(pair)
        layers, heads = len(self.runs.layers), self.runs.heads
        effects = {
            "head": np.full((layers, heads), np.nan),
            "attention": np.full(layers, np.nan),
            "mlp": np.full(layers, np.nan),
            "residual": np.full((layers, pair.length), np.nan),
        }
        by_start: dict[int, list[_Spec]] = defaultdict(list)
        for spec in plan:
            kind, layer, _ = spec
            by_start[layer + 1 if kind == "residual" else layer].append(spec)
        for start in sorted(by_start):
            for _, chunk in batched(by_start[start], self.batch_size):
                # Row 0 is left unpatched: the reference computed by the very same kernels.
                baseline, *patched = self._patched_metrics(pair, prepared, start, [None, *chunk])
                for (kind, layer, index), value in zip(chunk, patched, strict=True):
                    target = effects[kind]
                    target[(layer, index) if index is not None else layer] = value - baseline
                bar.update(len(chunk))
        return PatchingEffects(
            method=self.method,
            label=pair.label,
            clean=prepared.clean_metric,
            corrupted=prepared.corrupted_metric,
            effects={kind: effects[kind] for kind in self.kinds},
        )

    def _patched_metrics(
        self, pair: PatchingPair, prepared: _PairRuns, start: int, specs: list[_Spec | None]
    ) -> list[float]:
        """Metrics of ``len(specs)`` copies of the clean input, copy k with ``specs[k]`` patched."""
        runs = self.runs
        copies = len(specs)
        features = {key: value.repeat(copies, 1) for key, value in pair.clean.items()}
        with contextlib.ExitStack() as stack, torch.inference_mode():
            # Below `start` nothing changes: the layers return their clean outputs.
            for index in range(start):
                output = self._substitute(
                    prepared, index, copies, specs if index == start - 1 else None
                )
                stack.enter_context(
                    _override_forward(runs.module.get_submodule(runs.layers[index].layer), output)
                )
            if start < len(runs.layers):
                self._hook_blocks(stack, prepared, start, specs)
            self._rowwise_head(stack)
            metrics = runs.metric(features, prepared.other)
        return [float(v) for v in metrics]

    def _substitute(
        self, prepared: _PairRuns, index: int, copies: int, specs: list[_Spec | None] | None
    ) -> Any:
        """Layer ``index``'s clean output for ``copies`` copies, residual patches applied.

        ``specs=None`` for a layer whose output the next (also skipped) layer ignores:
        a broadcast view is enough there.
        """
        raw = prepared.clean_layer_outputs[index]
        hidden = _layer_output(raw).expand(copies, -1, -1)
        if specs is None:
            return (hidden, *raw[1:]) if isinstance(raw, tuple) else hidden
        hidden = hidden.contiguous()
        corrupted = prepared.corrupted["residual"][index][0]
        for row, spec in enumerate(specs):
            if spec is not None and spec[0] == "residual":
                hidden[row, spec[2]] = corrupted[spec[2]]
        return (hidden, *raw[1:]) if isinstance(raw, tuple) else hidden

    def _rowwise_head(self, stack: contextlib.ExitStack) -> None:
        """Evaluate the classification head's Linear layers one copy at a time.

        BLAS kernels for a ``(copies, d) @ (d, 1)`` product give rows results that
        depend on the row's place in the batch (at the 1e-7 level). One row at a
        time, every copy goes through the same kernel, so an unpatched copy scores
        exactly as the reference row and a no-op patch has an effect of exactly 0.
        """
        model = self.runs.model
        if not isinstance(model, CrossEncoder):
            return
        for name in model.adapter.head_modules:
            linear = self.runs.module.get_submodule(name)
            if isinstance(linear, nn.Linear):
                handle = linear.register_forward_hook(_rowwise_linear)
                stack.callback(handle.remove)

    def _hook_blocks(
        self,
        stack: contextlib.ExitStack,
        prepared: _PairRuns,
        layer: int,
        specs: list[_Spec | None],
    ) -> None:
        runs = self.runs
        names = runs.layers[layer]
        corrupted = prepared.corrupted
        rows: dict[str, list[tuple[int, int | None]]] = defaultdict(list)
        for row, spec in enumerate(specs):
            if spec is not None and spec[0] != "residual" and spec[1] == layer:
                rows[spec[0]].append((row, spec[2]))
        heads = runs.heads

        def patch_heads(_: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
            context = _first(inputs).clone()
            view = context.view(*context.shape[:2], heads, -1)
            source = corrupted["head"][layer][0].view(context.shape[1], heads, -1)
            for row, head in rows["head"]:
                view[row, :, head] = source[:, head]
            return (context, *inputs[1:])

        def patch_output(kind: str) -> Any:
            def hook(_: nn.Module, __: Any, output: torch.Tensor) -> torch.Tensor:
                output = output.clone()
                for row, _index in rows[kind]:
                    output[row] = corrupted[kind][layer][0]
                return output

            return hook

        module = runs.module
        if rows["head"]:
            handle = module.get_submodule(names.attention_output).register_forward_pre_hook(
                patch_heads
            )
            stack.callback(handle.remove)
        for kind, name in (("attention", names.attention_output), ("mlp", names.ffn_out)):
            if rows[kind]:
                handle = module.get_submodule(name).register_forward_hook(patch_output(kind))
                stack.callback(handle.remove)


def _rowwise_linear(linear: nn.Module, inputs: tuple[Any, ...], _: torch.Tensor) -> torch.Tensor:
    assert isinstance(linear, nn.Linear)
    rows = _first(inputs)
    return torch.cat(
        [
            torch.nn.functional.linear(rows[i : i + 1], linear.weight, linear.bias)
            for i in range(len(rows))
        ]
    )


@contextlib.contextmanager
def _override_forward(module: nn.Module, output: Any) -> Iterator[None]:
    """The module returns ``output`` whatever its inputs (an instance override, removed on exit)."""
    if "forward" in module.__dict__:
        raise RuntimeError(
            f"{type(module).__name__} already has a patched forward; remove that patch first"
        )
    module.forward = lambda *args, **kwargs: output
    try:
        yield
    finally:
        module.__dict__.pop("forward", None)


# -- attribution patching and relevance patching ---------------------------------------------------
class AttributionPatching:
    """AtP: ``(a_corrupted - a_clean) · ∂metric/∂a`` at the clean run, for every component.

    Per batch of pairs: one forward pass of the corrupted inputs and one forward and
    one backward pass of the clean inputs. Per head the product is summed over the
    head's features and all positions; per block over features and positions; per
    residual position over features.

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.attribution.corruption import pair_from_texts
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> pair = pair_from_texts(model, ("cat food", "cats eat fish"), ("cat food", "dogs eat fish"))
        >>> [estimate] = AttributionPatching(model).attribute([pair])
        >>> estimate.method, estimate.effects["mlp"].shape
        ('AtP', (6,))
    """

    method = "AtP"

    def __init__(self, model: RankingModel, *, batch_size: int = 8) -> None:
        self.runs = _Runs(model)
        self.batch_size = batch_size

    def _backward(self) -> contextlib.AbstractContextManager[Any]:
        """What is installed for the clean forward and backward pass (nothing for AtP)."""
        return contextlib.nullcontext()

    def _hold_norm(self) -> bool:
        return False

    def attribute(
        self, pairs: Sequence[PatchingPair], show_progress_bar: bool | None = None
    ) -> list[PatchingEffects]:
        """The estimated effect of every component of every pair."""
        return [effects for effects, _ in self._estimate(pairs, show_progress_bar, extra=False)]

    def _estimate(
        self, pairs: Sequence[PatchingPair], show_progress_bar: bool | None, extra: bool
    ) -> Iterator[tuple[PatchingEffects, dict[str, dict[Any, np.ndarray]]]]:
        total = (len(pairs) + self.batch_size - 1) // self.batch_size
        bar = tqdm(
            batched(pairs, self.batch_size),
            total=total,
            desc=self.method,
            disable=not progress_enabled(show_progress_bar),
        )
        for _, chunk in bar:
            yield from self._estimate_batch(list(chunk), extra)

    def _estimate_batch(
        self, pairs: list[PatchingPair], extra: bool
    ) -> Iterator[tuple[PatchingEffects, dict[str, dict[Any, np.ndarray]]]]:
        runs = self.runs
        tokenizer = runs.model.tokenizer
        other = runs.other_embeddings(pairs)
        with torch.inference_mode(), _Recorder(runs, detach=True, extra=extra) as recorder:
            corrupted_metric = runs.metric(_pad([p.corrupted for p in pairs], tokenizer), other)
            corrupted, _ = recorder.take()
        with (
            self._backward() as patch,
            _Recorder(runs, detach=False, extra=extra) as recorder,
            torch.enable_grad(),
        ):
            clean_metric = runs.metric(
                _pad([p.clean for p in pairs], tokenizer), other, hold_norm=self._hold_norm()
            )
            if patch is not None:
                patch.take_embedding_inputs()
            clean, _ = recorder.take()
            keys = [(kind, key) for kind, tensors in clean.items() for key in tensors]
            gradients = torch.autograd.grad(
                clean_metric.sum(), [clean[kind][key] for kind, key in keys], allow_unused=True
            )
        products: dict[str, dict[Any, torch.Tensor]] = defaultdict(dict)
        for (kind, key), gradient in zip(keys, gradients, strict=True):
            activation = clean[kind][key].detach()
            if gradient is None:
                gradient = torch.zeros_like(activation)
            products[kind][key] = (corrupted[kind][key] - activation) * gradient
        heads = runs.heads
        layers = range(len(runs.layers))
        per_layer = {
            "head": lambda t: t.reshape(*t.shape[:2], heads, -1).sum((1, 3)),
            "attention": lambda t: t.sum((1, 2)),
            "mlp": lambda t: t.sum((1, 2)),
            "residual": lambda t: t.sum(2),
            "neuron": lambda t: t.sum(1),
        }
        # The absolute readings: effect through each position whatever its sign.
        per_layer_l1 = {
            "head_l1": ("head", lambda t: t.abs().reshape(*t.shape[:2], heads, -1).sum((1, 3))),
            "neuron_l1": ("neuron", lambda t: t.abs().sum(1)),
        }
        reduced = {
            kind: torch.stack([reduce(products[kind][layer]) for layer in layers], 1)
            .double()
            .cpu()
            .numpy()
            for kind, reduce in per_layer.items()
            if kind in products
        }
        reduced |= {
            kind: torch.stack([reduce(products[source][layer]) for layer in layers], 1)
            .double()
            .cpu()
            .numpy()
            for kind, (source, reduce) in per_layer_l1.items()
            if extra and source in products
        }
        linear = {
            name: value.flatten(1).sum(1).double().cpu().numpy()
            for name, value in products.get("linear", {}).items()
        }
        linear_l1 = {
            name: value.abs().flatten(1).sum(1).double().cpu().numpy()
            for name, value in products.get("linear", {}).items()
        }
        for row, pair in enumerate(pairs):
            effects = {kind: reduced[kind][row] for kind in COMPONENT_KINDS}
            effects["residual"] = effects["residual"][:, : pair.length]
            extras: dict[str, dict[Any, np.ndarray]] = {}
            if extra:
                extras["neuron"] = dict(enumerate(reduced["neuron"][row]))
                extras["head_l1"] = dict(enumerate(reduced["head_l1"][row]))
                extras["neuron_l1"] = dict(enumerate(reduced["neuron_l1"][row]))
                extras["linear"] = {name: values[row : row + 1] for name, values in linear.items()}
                extras["linear_l1"] = {
                    name: values[row : row + 1] for name, values in linear_l1.items()
                }
            yield (
                PatchingEffects(
                    method=self.method,
                    label=pair.label,
                    clean=float(clean_metric[row].detach()),
                    corrupted=float(corrupted_metric[row]),
                    effects=effects,
                ),
                extras,
            )


def relp_composite(epsilon: float = DEFAULT_EPSILON) -> Composite:
    """The rules of the RelP paper's code: LN rule and identity rule, the gradient elsewhere.

    Jafari et al. run GPT-2 with ``LRP_rules = ['LN-rule', 'Identity-rule',
    'Half-rule']``, the half rule being for the products of gated MLPs, which
    BERT-family encoders do not have. So: LayerNorm with its scale held constant,
    the identity rule for GELU and tanh (``f(x) / x`` exactly, its limit at 0; ``epsilon``
    stabilises the division only for activations without a known limit), and the
    plain gradient through Linear layers and attention (softmax and both products).
    A bi-encoder's final normalisation is treated like LayerNorm (the norm held
    constant). AttnLRP adds the uniform ("half") rule to the attention
    products; on scifact *train* pairs (3 model / corruption settings × 4 component
    types) these rules tracked activation patching better (mean Pearson r 0.84
    against 0.77), so they are the default; ``"AttnLRP"`` stays available.

    Example:
        >>> composite = relp_composite()
        >>> composite.name, type(composite.layer_norm).__name__, type(composite.softmax).__name__
        ('RelP', 'LayerNormRule', 'GradientMatmul')
    """
    return Composite(
        name="RelP",
        linear=Gradient(0.0),
        activation=Identity(epsilon),
        layer_norm=LayerNormRule(epsilon),
        softmax=GradientMatmul(0.0),
        query_key=GradientMatmul(0.0),
        attention_value=GradientMatmul(0.0),
        normalization_constant=True,
    )


def _resolve_composite(composite: str | Composite, epsilon: float | None) -> Composite:
    if isinstance(composite, str) and composite.strip().lower() == "relp":
        return relp_composite() if epsilon is None else relp_composite(epsilon)
    return get_composite(composite, epsilon)


class RelevancePatching(AttributionPatching):
    """RelP: AtP with LRP's propagation coefficients in place of the gradient.

    ``(a_corrupted - a_clean) · ∂̃metric/∂a`` where ``∂̃`` is the backward pass of
    :class:`~relcomp.attribution.LRPPatch` with the given composite: ``"RelP"`` (the
    default, :func:`relp_composite`: the LN and identity rules of the RelP paper),
    any registered composite (``"AttnLRP"``, ``"CP-LRP"``…) or a :class:`Composite`.
    With ``"Gradient"`` it equals :class:`AttributionPatching`.
    A bi-encoder's embedding norm is held constant when the composite says so
    (``normalization_constant``), as in :class:`~relcomp.attribution.TokenLRP`.

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.attribution.corruption import pair_from_texts
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> pair = pair_from_texts(model, ("cat food", "cats eat fish"), ("cat food", "dogs eat fish"))
        >>> relevance = RelevancePatching(model).component_relevance([pair])
        >>> relevance.method, relevance.by_kind("head")["encoder.layer.0"].shape
        ('RelP', (12,))
    """

    def __init__(
        self,
        model: RankingModel,
        composite: str | Composite = "RelP",
        *,
        epsilon: float | None = None,
        batch_size: int = 8,
    ) -> None:
        super().__init__(model, batch_size=batch_size)
        self.composite = _resolve_composite(composite, epsilon)

    @property
    def method(self) -> str:  # type: ignore[override]
        return "RelP" if self.composite.name == "RelP" else f"RelP ({self.composite.name})"

    def _backward(self) -> contextlib.AbstractContextManager[Any]:
        return LRPPatch(self.runs.model, self.composite)

    def _hold_norm(self) -> bool:
        return self.composite.normalization_constant

    def component_relevance(
        self,
        pairs: Sequence[PatchingPair],
        show_progress_bar: bool | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> ComponentRelevance:
        """RelP aggregated over pairs, as a :class:`~relcomp.artifacts.ComponentRelevance`.

        Kinds and names as :class:`~relcomp.attribution.ComponentLRP` gives them:
        ``head`` (per head), ``attention``, ``mlp``, ``layer`` (the residual stream
        summed over positions), ``neuron``, and ``head_l1`` / ``neuron_l1`` (the absolute
        effect through each position, summed) keyed by the layer's name, ``linear``
        and ``linear_l1`` keyed by module name; ``mean_abs`` and ``mean_signed`` over
        pairs of the estimated effect. For a bi-encoder only the corrupted side's
        components appear (the other side's activations do not change).
        """
        return self.attribute_with_relevance(pairs, show_progress_bar, source)[1]

    def attribute_with_relevance(
        self,
        pairs: Sequence[PatchingPair],
        show_progress_bar: bool | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> tuple[list[PatchingEffects], ComponentRelevance]:
        """:meth:`attribute` and :meth:`component_relevance` from one pass over the pairs."""
        if not pairs:
            raise ValueError("component relevance needs at least one patching pair")
        names = [layer.layer for layer in self.runs.layers]
        values: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
        results = []
        for effects, extras in self._estimate(pairs, show_progress_bar, extra=True):
            results.append(effects)
            for layer, name in enumerate(names):
                values["head"][name].append(effects.effects["head"][layer])
                values["attention"][name].append(effects.effects["attention"][layer : layer + 1])
                values["mlp"][name].append(effects.effects["mlp"][layer : layer + 1])
                values["layer"][name].append(effects.effects["residual"][layer].sum(keepdims=True))
                values["neuron"][name].append(extras["neuron"][layer])
                values["head_l1"][name].append(extras["head_l1"][layer])
                values["neuron_l1"][name].append(extras["neuron_l1"][layer])
            for kind in ("linear", "linear_l1"):
                for module_name, value in extras[kind].items():
                    values[kind][module_name].append(value)
        components = {
            kind: {
                name: {
                    "mean_abs": np.abs(np.stack(per_pair)).mean(0).tolist(),
                    "mean_signed": np.stack(per_pair).mean(0).tolist(),
                    "count": len(per_pair),
                }
                for name, per_pair in by_name.items()
            }
            for kind, by_name in values.items()
        }
        relevance = ComponentRelevance(
            model=self.runs.model.name,
            method="RelP",
            n_pairs=len(pairs),
            components=components,
            source={"composite": self.composite.name, **dict(source or {})},
        )
        return results, relevance


# -- comparing the methods ----------------------------------------------------------------------------
def _pooled(results: Sequence[PatchingEffects], kind: str, normalized: bool) -> np.ndarray:
    return np.concatenate(
        [
            (r.normalized(kind) if normalized else np.asarray(r.effects[kind])).ravel()
            for r in results
        ]
    )


def _correlation(function: Any, x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(function(x, y)[0])
    return value if np.isfinite(value) else None


def correlations(
    exact: Sequence[PatchingEffects],
    estimates: Mapping[str, Sequence[PatchingEffects]],
    kinds: Sequence[str] = COMPONENT_KINDS,
    normalized: bool = False,
) -> dict[str, dict[str, Any]]:
    """Pearson and Spearman correlation of each estimate with activation patching.

    Pooled over pairs and components of each kind; components that activation
    patching did not patch (NaN) are left out, as are pairs whose normalised effect
    is undefined when ``normalized``.

    Returns:
        ``{kind: {"<name>_pearson", "<name>_spearman" for each estimate, "n"}}``.

    Example:
        >>> exact = [PatchingEffects("activation patching", "p", 1.0, 0.0, {"mlp": np.array([0.1, 0.5, 0.2])})]
        >>> atp = [PatchingEffects("AtP", "p", 1.0, 0.0, {"mlp": np.array([0.2, 0.9, 0.3])})]
        >>> correlations(exact, {"atp": atp}, kinds=["mlp"])["mlp"]["atp_spearman"]
        1.0
    """
    from scipy import stats  # seconds to import; only needed here

    result: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        reference = _pooled(exact, kind, normalized)
        pooled = {name: _pooled(values, kind, normalized) for name, values in estimates.items()}
        keep = np.isfinite(reference)
        for values in pooled.values():
            keep &= np.isfinite(values)
        entry: dict[str, Any] = {}
        for name, values in pooled.items():
            entry[f"{name}_pearson"] = _correlation(stats.pearsonr, values[keep], reference[keep])
            entry[f"{name}_spearman"] = _correlation(stats.spearmanr, values[keep], reference[keep])
        entry["n"] = int(keep.sum())
        result[kind] = entry
    return result


def _mean_over_pairs(results: Sequence[PatchingEffects], kind: str, normalized: bool) -> Any:
    """Mean over pairs (NaN ignored); residual rows are padded to the longest pair."""
    arrays = [r.normalized(kind) if normalized else np.asarray(r.effects[kind]) for r in results]
    if kind == "residual":
        width = max(a.shape[1] for a in arrays)
        arrays = [
            np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=np.nan) for a in arrays
        ]
    stacked = np.stack(arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(stacked, axis=0)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def _component_table(
    model: RankingModel, methods: Mapping[str, Sequence[PatchingEffects]]
) -> dict[str, Any]:
    """``{kind: {layer name: {method: mean over pairs}}}``, raw and normalised.

    Residual values are lists by position, with ``pairs``: how many pairs were
    patched at each position (pairs differ in length; random positions may be left out).
    """
    names = [layer.layer for layer in model.layer_modules()]
    table: dict[str, Any] = {}
    for kind in COMPONENT_KINDS:
        means = {
            f"{method}{suffix}": _mean_over_pairs(results, kind, normalized)
            for method, results in methods.items()
            for suffix, normalized in (("", False), ("_normalized", True))
        }
        table[kind] = {
            name: {method: values[layer] for method, values in means.items()}
            for layer, name in enumerate(names)
        }
    exact = methods["activation_patching"]
    width = max(np.asarray(r.effects["residual"]).shape[1] for r in exact)
    patched = sum(
        np.pad(
            np.isfinite(r.effects["residual"]),
            ((0, 0), (0, width - r.effects["residual"].shape[1])),
        ).astype(int)
        for r in exact
    )
    for layer, name in enumerate(names):
        table["residual"][name]["pairs"] = np.asarray(patched)[layer].tolist()
    return table


def _rules(composite: Composite) -> dict[str, Any]:
    """``{operation: rule name}`` of a composite, for the record."""
    rules: dict[str, Any] = {}
    for field in dataclasses.fields(composite):
        value = getattr(composite, field.name)
        if field.name != "name":
            rules[field.name] = value if isinstance(value, bool) else repr(value)
    return rules


def _timed(function: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def clean_forward(
    model: RankingModel, pairs: Sequence[PatchingPair], batch_size: int = 8
) -> np.ndarray:
    """The metric of each clean pair from one forward pass (both sides for a bi-encoder).

    Batched as :class:`AttributionPatching` batches, it is the unit of cost that
    patching methods are measured in ("forward-pass equivalents").

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.attribution.corruption import pair_from_texts
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> pair = pair_from_texts(model, ("cat food", "cats eat fish"), ("cat food", "dogs eat fish"))
        >>> scores = model.score(["cat food"], ["cats eat fish"])
        >>> bool(np.allclose(clean_forward(model, [pair]), scores, atol=1e-6))
        True
    """
    runs = _Runs(model)
    metrics = []
    for _, chunk in batched(pairs, batch_size):
        other = runs.other_embeddings(chunk)
        with torch.inference_mode():
            metrics.append(runs.metric(_pad([p.clean for p in chunk], model.tokenizer), other))
    return torch.cat(metrics).double().cpu().numpy()


def run_patching(
    model: RankingModel,
    dataset: BeirDataset,
    *,
    pairs: int | None = 64,
    corruption: str = "doc-terms",
    seed: int = DEFAULT_SEED,
    show_progress_bar: bool | None = None,
    composite: str | Composite = "RelP",
    residual_positions: int | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    extra_composites: Sequence[str | Composite] = (),
) -> dict[str, Any]:
    """Activation patching, AtP and RelP on one BEIR split; the payload of ``patching.json``.

    :func:`relcomp.pipeline.patch` loads the model and the split and calls this.

    Args:
        model: the model.
        dataset: one split of a BEIR collection (:func:`relcomp.evaluation.load_beir`).
        pairs: how many judged queries to sample (seeded); each gives one pair with
            its best-judged document. ``None``: every judged query.
        corruption: ``"doc-terms"`` or ``"query-terms"``.
        seed: the query sample and the replacement tokens.
        show_progress_bar: ``None`` follows relcomp's log level.
        composite: the LRP rules of RelP (:func:`relp_composite` by default).
        residual_positions: patch the residual stream at this many random positions
            per pair (``None``: all). AtP and RelP always estimate every position;
            the correlations use the positions that were patched. Exact patching of
            every position costs about ``(layers - 1) / 2`` forward passes per
            position and pair (some 640 for a 6-layer model at 256 tokens), against
            about 50 for all heads and blocks.
        batch_size: patched copies per forward pass.
        extra_composites: more LRP rule sets to compare, reported as
            ``relp_<name>`` (``relp_attnlrp`` for ``"AttnLRP"``) beside ``relp``.

    Returns:
        A JSON-ready dict: ``correlations`` (per kind, AtP and RelP against activation
        patching, Pearson and Spearman, pooled over pairs and components, with ``n``),
        ``correlations_normalized`` (the same on normalised effects), ``components``
        (mean effect per component and method, also normalised), ``pairs`` (per pair:
        label, clean and corrupted metric, changed tokens), ``counts`` (pairs asked
        for, used, skipped by reason), ``timings`` (seconds per method and in
        clean-forward equivalents), ``component_relevance`` (RelP as a
        :class:`~relcomp.artifacts.ComponentRelevance` dict) and the settings.

    Example:
        >>> from relcomp.evaluation import load_beir
        >>> from relcomp.models import load_model
        >>> dataset = load_beir("../shared/assets/beir/scifact", "test")  # doctest: +SKIP
        >>> payload = run_patching(load_model("all-MiniLM-L6-v2"), dataset, pairs=2)  # doctest: +SKIP
        >>> sorted(payload["correlations"])  # doctest: +SKIP
        ['attention', 'head', 'mlp', 'residual']
    """
    split = dataset.split
    tally_before = dict(model.truncation)
    patching_pairs, skipped = build_pairs(model, dataset, pairs, corruption, seed)
    if not patching_pairs:
        raise ValueError(
            f"no usable pairs: all {sum(skipped.values())} were skipped ({dict(skipped)})"
        )
    runs = _Runs(model)
    estimate_batch = max(1, min(8, batch_size))
    clean_forward(model, patching_pairs[:1], 1)  # warm-up
    _, forward_s = _timed(lambda: clean_forward(model, patching_pairs, estimate_batch))
    exact, exact_s = _timed(
        lambda: ActivationPatching(
            model, batch_size=batch_size, residual_positions=residual_positions, seed=seed
        ).attribute(patching_pairs, show_progress_bar)
    )
    atp, atp_s = _timed(
        lambda: AttributionPatching(model, batch_size=estimate_batch).attribute(
            patching_pairs, show_progress_bar
        )
    )
    relp_method = RelevancePatching(model, composite, batch_size=estimate_batch)
    # One pass gives both; it also reads neurons and Linear outputs, so it is timed a
    # little pessimistically against AtP.
    (relp, relevance), relp_s = _timed(
        lambda: relp_method.attribute_with_relevance(
            patching_pairs,
            show_progress_bar,
            source={
                "dataset": dataset.name,
                "split": split,
                "corruption": corruption,
                "seed": seed,
            },
        )
    )
    estimates = {"atp": atp, "relp": relp}
    extra_timings = {}
    for extra in extra_composites:
        method = RelevancePatching(model, extra, batch_size=estimate_batch)
        key = "relp_" + "".join(c if c.isalnum() else "_" for c in method.composite.name.lower())
        estimates[key], extra_timings[f"{key}_s"] = _timed(
            lambda method=method: method.attribute(patching_pairs, show_progress_bar)
        )
    require_finite(
        [metric for result in exact for metric in (result.clean, result.corrupted)],
        f"{model.name}: the clean and corrupted {runs.metric_name} of the patched pairs",
    )
    methods = {"activation_patching": exact, **estimates}
    n_components = sum(
        int(np.isfinite(np.asarray(r.effects[kind])).sum())
        for r in exact
        for kind in COMPONENT_KINDS
    )
    payload: dict[str, Any] = {
        "model": model.name,
        "kind": model.kind,
        "metric": runs.metric_name,
        "dataset": dataset.name,
        "split": split,
        "corruption": corruption,
        "seed": seed,
        "max_length": model.max_length,
        "relp_composite": relp_method.composite.name,
        "relp_rules": _rules(relp_method.composite),
        "residual_positions": residual_positions,
        "truncation": truncation_since(model, tally_before, "patching"),
        "correlations": correlations(exact, estimates),
        "correlations_normalized": correlations(exact, estimates, normalized=True),
        "components": _component_table(model, methods),
        "pairs": [
            {
                "label": pair.label,
                "side": pair.side,
                "tokens": pair.length,
                "changed_tokens": len(pair.changed),
                "clean": result.clean,
                "corrupted": result.corrupted,
            }
            for pair, result in zip(patching_pairs, exact, strict=True)
        ],
        "counts": {
            "pairs_requested": pairs,
            "pairs_used": len(patching_pairs),
            "pairs_skipped": sum(skipped.values()),
            "skipped": dict(Counter(skipped)),
            "patched_components": n_components,
        },
        "timings": {
            "clean_forward_s": forward_s,
            "activation_patching_s": exact_s,
            "atp_s": atp_s,
            "relp_s": relp_s,
            "activation_patching_forward_equivalents": exact_s / forward_s,
            "atp_forward_equivalents": atp_s / forward_s,
            "relp_forward_equivalents": relp_s / forward_s,
            **extra_timings,
        },
        "component_relevance": relevance.to_dict(),
    }
    logger.info(
        "patching %s (%s, %d pairs): RelP r = %s, AtP r = %s (mlp)",
        model.name,
        corruption,
        len(patching_pairs),
        payload["correlations"]["mlp"]["relp_pearson"],
        payload["correlations"]["mlp"]["atp_pearson"],
    )
    return dict(_plain(payload))
