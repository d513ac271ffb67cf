"""LRP attributions: token relevance and component relevance in one forward and one backward pass."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from relcomp.artifacts import ComponentRelevance, TokenRelevance
from relcomp.attribution.composites import Composite, get_composite
from relcomp.attribution.patch import LRPPatch
from relcomp.attribution.tokens import artifacts_from_batch
from relcomp.models.base import (
    RankingModel,
    check_pairs,
    progress_batches,
    truncation_tally,
)
from relcomp.models.bi_encoder import BiEncoder
from relcomp.models.cross_encoder import CrossEncoder

__all__ = ["ComponentLRP", "ComponentTaps", "TokenLRP", "lrp_forward_backward"]

logger = logging.getLogger(__name__)


class ComponentTaps:
    """Read relevance (activation × modified gradient) at each component during backward.

    Per sample, relevance is summed over tokens (and over the feature dimension,
    except per head and per neuron). Installed with forward hooks; removed on exit.
    """

    def __init__(self, model: RankingModel, linears: bool = True) -> None:
        self.model = model
        self.linears = linears
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.values: dict[str, dict[str, list[torch.Tensor]]] = defaultdict(
            lambda: defaultdict(list)
        )

    def __enter__(self) -> ComponentTaps:
        module = self.model.model
        for layer in self.model.layer_modules():
            name = layer.layer
            heads = self.model.adapter.heads_in(module.get_submodule(layer.attention))
            self._tap_output(
                module.get_submodule(layer.layer), "layer", name, lambda r: r.sum((1, 2))
            )
            self._tap_output(
                module.get_submodule(layer.attention_output),
                "attention",
                name,
                lambda r: r.sum((1, 2)),
            )
            self._tap_output(
                module.get_submodule(layer.ffn_out), "mlp", name, lambda r: r.sum((1, 2))
            )
            self._tap_input(
                module.get_submodule(layer.attention_output),
                "head",
                name,
                lambda r, h=heads: r.reshape(r.shape[0], r.shape[1], h, -1).sum((1, 3)),
            )
            self._tap_input(
                module.get_submodule(layer.attention_output),
                "head_l1",
                name,
                lambda r, h=heads: r.abs().reshape(r.shape[0], r.shape[1], h, -1).sum((1, 3)),
            )
            self._tap_input(module.get_submodule(layer.ffn_out), "neuron", name, lambda r: r.sum(1))
            self._tap_input(
                module.get_submodule(layer.ffn_out), "neuron_l1", name, lambda r: r.abs().sum(1)
            )
        if self.linears:
            for linear_name, linear in self.model.named_linears().items():
                self._tap_output(linear, "linear", linear_name, lambda r: r.flatten(1).sum(1))
                self._tap_output(
                    linear, "linear_l1", linear_name, lambda r: r.abs().flatten(1).sum(1)
                )
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _record(self, kind: str, name: str, tensor: torch.Tensor, reduce: Any) -> None:
        if not tensor.requires_grad:
            return
        store = self.values[kind][name]
        # The hook holds the detached activation, not ``tensor``: a hook that refers to
        # the tensor it hangs on is a reference cycle, which keeps the whole autograd
        # graph of a batch alive until the garbage collector happens to run (3 GB per
        # batch of 16 pairs on all-MiniLM-L6-v2).
        activation = tensor.detach()
        tensor.register_hook(lambda grad: store.append(reduce(activation * grad).detach()))

    def _tap_output(self, module: nn.Module, kind: str, name: str, reduce: Any) -> None:
        def hook(_: nn.Module, __: Any, output: Any) -> None:
            self._record(kind, name, output[0] if isinstance(output, tuple) else output, reduce)

        self._handles.append(module.register_forward_hook(hook))

    def _tap_input(self, module: nn.Module, kind: str, name: str, reduce: Any) -> None:
        def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            self._record(kind, name, inputs[0], reduce)

        self._handles.append(module.register_forward_pre_hook(hook))

    def take(self) -> dict[str, dict[str, np.ndarray]]:
        """``{kind: {name: array (samples, values)}}`` recorded since the last call."""
        taken = {
            kind: {
                name: torch.cat(chunks).double().cpu().numpy().reshape(chunks[0].shape[0], -1)
                for name, chunks in names.items()
                if chunks
            }
            for kind, names in self.values.items()
        }
        self.values.clear()
        return taken


def lrp_forward_backward(
    model: RankingModel,
    patch: LRPPatch,
    queries: Sequence[str],
    documents: Sequence[str],
) -> tuple[np.ndarray, list[tuple[Any, np.ndarray]], Any]:
    """One forward and one backward pass with the patch installed.

    Returns:
        ``(scores, [(encoding_batch, token_relevance (n, tokens))…], side)``: for a
        cross-encoder one entry (the pairs); for a bi-encoder one batch holding the
        queries then the documents, each side explained with the other held fixed.
    """
    with torch.enable_grad():
        if isinstance(model, BiEncoder):
            texts = [model.query_prompt + q for q in queries] + [
                model.document_prompt + d for d in documents
            ]
            features = model.tokenize(texts)
            embeddings = model.embed(features, normalize=False)
            (leaf,) = patch.take_embedding_inputs()
            if model.normalize or model.similarity_name == "cosine":
                norm = embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                embeddings = embeddings / (
                    norm.detach() if patch.composite.normalization_constant else norm
                )
            q, d = embeddings[: len(queries)], embeddings[len(queries) :]
            # Each side against the other held fixed: both sides sum to the similarity.
            explained = (q * d.detach()).sum(-1) + (q.detach() * d).sum(-1)
            scores = (q * d).sum(-1)
            (grad,) = torch.autograd.grad(explained.sum(), leaf)
        else:
            cross_encoder = cast(CrossEncoder, model)
            features = cross_encoder.tokenize(queries, documents)
            scores = cross_encoder.forward_scores(features)
            (leaf,) = patch.take_embedding_inputs()
            (grad,) = torch.autograd.grad(scores.sum(), leaf)
        relevance = (leaf * grad).sum(-1).detach().double().cpu().numpy()
    return (
        scores.detach().double().cpu().numpy(),
        [(features, relevance)],
        "both" if isinstance(model, BiEncoder) else "pair",
    )


class _LRPMethod:
    """A model and the LRP composite that explains it."""

    def __init__(
        self,
        model: RankingModel,
        composite: str | Composite = "AttnLRP",
        epsilon: float | None = None,
    ) -> None:
        self.model = model
        self.composite = get_composite(composite, epsilon)

    @property
    def method(self) -> str:
        return self.composite.name


class TokenLRP(_LRPMethod):
    """Token relevance of (query, document) pairs by LRP.

    A batch of pairs costs one forward and one backward pass. For cross-encoders the
    explained score is the logit; for bi-encoders the similarity, and each side's
    relevance sums to it with the other side's embedding held fixed.

    Args:
        model: a loaded :class:`~relcomp.models.CrossEncoder` or :class:`~relcomp.models.BiEncoder`.
        composite: ``"AttnLRP"`` (default), ``"CP-LRP"``, ``"Epsilon"`` or a :class:`Composite`.
        epsilon: the stabiliser of the ε and uniform rules.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> [explanation] = TokenLRP(model).attribute(["cat food"], ["what cats eat"])
        >>> explanation.side, round(explanation.score, 3) == round(float(model.score(["cat food"], ["what cats eat"])[0]), 3)
        ('both', True)
    """

    def attribute(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> list[TokenRelevance]:
        """Explain each (query, document) pair; one :class:`TokenRelevance` per pair."""
        check_pairs(queries, documents)
        results: list[TokenRelevance] = []
        bar = progress_batches(range(len(queries)), batch_size, f"{self.method}", show_progress_bar)
        with LRPPatch(self.model, self.composite, first_token_head=True) as patch:
            for _, index in bar:
                batch_queries = [queries[i] for i in index]
                batch_documents = [documents[i] for i in index]
                scores, [(features, relevance)], _ = lrp_forward_backward(
                    self.model, patch, batch_queries, batch_documents
                )
                results.extend(
                    artifacts_from_batch(
                        method=self.method,
                        model=self.model,
                        features=features,
                        relevance=relevance,
                        scores=scores,
                        queries=batch_queries,
                        documents=batch_documents,
                    )
                )
        return results


class ComponentLRP(_LRPMethod):
    """Relevance of layers, attention blocks, heads, MLPs, neurons and Linear modules.

    The same backward pass as :class:`TokenLRP`, read at every component and
    aggregated over a calibration set of pairs (mean of absolute and of signed
    relevance per pair). For a bi-encoder, a pair's component relevance is the sum
    over its query and document passes.

    With ``contrast`` (one document per pair, typically a non-relevant document that
    the first stage ranked high), each pair's relevance is that of the margin
    ``score(q, d) - score(q, contrast)``: LRP is linear in the explained output, so it
    is the difference of the two explanations, taken per pair before aggregating.
    A component that adds the same to every document of a query cancels out: what
    is left is what orders the documents, which is what a ranker is for. For the
    ``*_l1`` kinds the difference is one of absolute relevances.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> relevance = ComponentLRP(model).attribute(["cat food"], ["what cats eat"])
        >>> relevance.by_kind("head")["encoder.layer.0"].shape
        (12,)
    """

    def attribute(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        batch_size: int = 16,
        show_progress_bar: bool | None = None,
        source: dict[str, Any] | None = None,
        contrast: Sequence[str] | None = None,
    ) -> ComponentRelevance:
        check_pairs(queries, documents)
        if not queries:
            raise ValueError("component relevance needs at least one calibration pair")
        if contrast is not None and (isinstance(contrast, str) or len(contrast) != len(queries)):
            raise ValueError(
                "contrast must hold one document per pair: got "
                f"{1 if isinstance(contrast, str) else len(contrast)} for {len(queries)} pairs"
            )
        sums: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
        abs_sums: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
        bar = progress_batches(
            range(len(queries)), batch_size, f"{self.method} components", show_progress_bar
        )
        with (
            truncation_tally(self.model, f"{self.method} component relevance") as truncation,
            LRPPatch(self.model, self.composite, first_token_head=True) as patch,
            ComponentTaps(self.model) as taps,
        ):
            for _, index in bar:
                batch = [queries[i] for i in index]
                lrp_forward_backward(self.model, patch, batch, [documents[i] for i in index])
                taken = taps.take()
                if contrast is not None:
                    lrp_forward_backward(self.model, patch, batch, [contrast[i] for i in index])
                    against = taps.take()
                for kind, names in taken.items():
                    for name, values in names.items():
                        per_pair = self._per_pair(values, len(index))
                        if contrast is not None:
                            per_pair = per_pair - self._per_pair(against[kind][name], len(index))
                        sums[kind][name] = sums[kind].get(name, 0.0) + per_pair.sum(0)
                        abs_sums[kind][name] = abs_sums[kind].get(name, 0.0) + np.abs(per_pair).sum(
                            0
                        )
        n = len(queries)
        components = {
            kind: {
                name: {
                    "mean_abs": (abs_sums[kind][name] / n).tolist(),
                    "mean_signed": (sums[kind][name] / n).tolist(),
                    "count": n,
                }
                for name in names
            }
            for kind, names in sums.items()
        }
        return ComponentRelevance(
            model=self.model.name,
            method=self.method,
            n_pairs=n,
            components=components,
            source={
                **(source or {}),
                **({"contrast": True} if contrast is not None else {}),
                "truncation": truncation,
            },
        )

    def _per_pair(self, values: np.ndarray, pairs: int) -> np.ndarray:
        if isinstance(self.model, BiEncoder):
            return values[:pairs] + values[pairs:]
        return values
