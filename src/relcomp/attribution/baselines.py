"""Baseline token attributions through captum, behind the same interface as :class:`TokenLRP`.

Every method here answers ``.attribute(queries, documents, batch_size, show_progress_bar)``
with one :class:`~relcomp.artifacts.TokenRelevance` per pair, exactly as
:class:`~relcomp.attribution.lrp.TokenLRP` does, so that faithfulness
(:mod:`relcomp.attribution.faithfulness`), reports and plots treat every method alike.

Where relevance is read. LRP reads token relevance at the sum of word, position and
token-type embeddings (the input of the embedding LayerNorm). The gradient methods
read theirs at the same place, so the numbers are comparable:

* :class:`IntegratedGradients` runs captum's ``LayerIntegratedGradients`` on the word
  embeddings, with a baseline in which every non-special token is ``[PAD]`` (or
  ``[MASK]``) while ``[CLS]``/``[SEP]``, positions and token types are kept. Because
  positions and token types are equal in input and baseline, IG at the word
  embeddings *is* IG at the embedding sum.
* :class:`InputXGradient` and :class:`Saliency` use captum's
  ``LayerGradientXActivation`` at the input of the embedding LayerNorm.
* :class:`Attention` and :class:`AttentionRollout` read attention probabilities.
* :class:`Random` draws seeded uniform values.

Bi-encoders. The explained score is the similarity (cosine when the model normalises
or uses cosine). Each side is explained with the other side's embedding held fixed,
and the two sides are merged with :func:`~relcomp.attribution.tokens.merge_sides`.

``conservation_error`` is ``score − sum(relevance)`` for every method except
Integrated Gradients, where it is the *completeness gap*
``(score − baseline_score) − sum(relevance)``: IG distributes the difference between
the score and the score of the baseline input, and the gap measures the error of the
path integral's approximation (captum's convergence delta, negated). For attention and
random relevance the figure has no meaning beyond its definition.

Example:
    >>> from relcomp.models import load_model
    >>> model = load_model("all-MiniLM-L6-v2")
    >>> method = BASELINES.get("ig")(model)
    >>> [explanation] = method.attribute(["cat food"], ["what cats eat"])
    >>> explanation.method, explanation.side
    ('IntegratedGradients', 'both')
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from relcomp.artifacts import TokenRelevance
from relcomp.attribution.tokens import artifacts_from_batch
from relcomp.models.base import (
    RankingModel,
    check_pairs,
    progress_batches,
)
from relcomp.models.bi_encoder import BiEncoder
from relcomp.models.cross_encoder import CrossEncoder
from relcomp.registry import Registry

__all__ = [
    "BASELINES",
    "Attention",
    "AttentionRollout",
    "InputXGradient",
    "IntegratedGradients",
    "Random",
    "Saliency",
    "TokenAttribution",
    "frozen_parameters",
]

logger = logging.getLogger(__name__)

#: Baseline attribution classes by the names users type (``"ig"``, ``"rollout"``…).
BASELINES: Registry[type[TokenAttribution]] = Registry("baseline attribution method")

ForwardFunction = Callable[..., torch.Tensor]


@contextlib.contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[nn.Module]:
    """Set ``requires_grad=False`` on every parameter; restore each flag on exit.

    Gradients are only needed with respect to activations, so weight gradients would
    be wasted work (and would accumulate in ``.grad``).

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> with frozen_parameters(layer):
        ...     layer.weight.requires_grad
        False
        >>> layer.weight.requires_grad
        True
    """
    flags = [(parameter, parameter.requires_grad) for parameter in module.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield module
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


class _Batch:
    """One tokenised batch and the differentiable function whose output is explained.

    For a cross-encoder the rows are the pairs and the function is the logit. For a
    bi-encoder the rows are the queries then the documents (as in :class:`TokenLRP`),
    and the function of row ``i`` is its similarity to ``partner[i]``, the other side's
    (normalised, detached) embedding.
    """

    def __init__(self, model: RankingModel, queries: Sequence[str], documents: Sequence[str]):
        self.model = model
        self.queries = list(queries)
        self.documents = list(documents)
        self.bi_encoder = isinstance(model, BiEncoder)
        if isinstance(model, BiEncoder):
            texts = [model.query_prompt + q for q in queries] + [
                model.document_prompt + d for d in documents
            ]
            self.features = model.tokenize(texts)
        elif isinstance(model, CrossEncoder):
            self.features = model.tokenize(queries, documents)
        else:
            raise TypeError(f"expected a CrossEncoder or a BiEncoder, got {type(model).__name__}")
        self.keys = [key for key in self.features if key != "input_ids"]
        self.input_ids: torch.Tensor = self.features["input_ids"].to(model.device)
        self.extra: tuple[torch.Tensor, ...] = tuple(
            self.features[key].to(model.device) for key in self.keys
        )
        if isinstance(model, BiEncoder):
            with torch.no_grad():
                embeddings = self._similarity_space(model.embed(self.features, normalize=False))
            n = len(queries)
            self.extra += (torch.cat([embeddings[n:], embeddings[:n]]).detach(),)

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    def _similarity_space(self, embeddings: torch.Tensor) -> torch.Tensor:
        model = self.model
        assert isinstance(model, BiEncoder)
        if model.normalize or model.similarity_name == "cosine":
            return embeddings / embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return embeddings

    def forward(self, input_ids: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        """The explained score of each row; the signature captum calls."""
        model = self.model
        if isinstance(model, CrossEncoder):
            return model.forward_scores(
                {"input_ids": input_ids, **dict(zip(self.keys, extra, strict=True))}
            )
        assert isinstance(model, BiEncoder)
        *values, partner = extra
        features = {"input_ids": input_ids, **dict(zip(self.keys, values, strict=True))}
        embeddings = self._similarity_space(model.embed(features, normalize=False))
        return (embeddings * partner).sum(-1)

    def pooling_rows(self) -> torch.Tensor:
        """Weights ``(rows, tokens)`` over the positions whose final state makes the output.

        The [CLS] row for cross-encoders and CLS-pooling bi-encoders; the mean over the
        attended positions for mean-pooling bi-encoders.
        """
        mask = self.features["attention_mask"].to(self.model.device).double()
        if self.bi_encoder and getattr(self.model, "pooling", "cls") == "mean":
            return mask / mask.sum(-1, keepdim=True).clamp_min(1.0)
        weights = torch.zeros_like(mask)
        weights[:, 0] = 1.0
        return weights


class TokenAttribution:
    """Shared loop of the baseline methods: batches, progress, frozen weights, artifacts.

    Subclasses set :attr:`method` and implement :meth:`_relevance`.
    """

    method: ClassVar[str] = "TokenAttribution"

    def __init__(self, model: RankingModel) -> None:
        self.model = model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model!r})"

    def attribute(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> list[TokenRelevance]:
        """Explain each (query, document) pair; one :class:`TokenRelevance` per pair."""
        check_pairs(queries, documents)
        self._start()
        results: list[TokenRelevance] = []
        bar = progress_batches(range(len(queries)), batch_size, self.method, show_progress_bar)
        with frozen_parameters(self.model.model), torch.enable_grad():
            for _, index in bar:
                batch = _Batch(
                    self.model, [queries[i] for i in index], [documents[i] for i in index]
                )
                relevance, scores, errors = self._relevance(batch)
                results.extend(
                    artifacts_from_batch(
                        method=self.method,
                        model=self.model,
                        features=batch.features,
                        relevance=relevance,
                        scores=scores,
                        queries=batch.queries,
                        documents=batch.documents,
                        errors=errors,
                    )
                )
        return results

    def _start(self) -> None:
        """Called once per :meth:`attribute` call (Random reseeds here)."""

    def _relevance(self, batch: _Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(relevance (rows, tokens), score per row, conservation error per row or None)``."""
        raise NotImplementedError


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().cpu().numpy()


@BASELINES.register("integrated-gradients", "ig", "lig")
class IntegratedGradients(TokenAttribution):
    """Integrated Gradients (Sundararajan et al., 2017) by captum's ``LayerIntegratedGradients``.

    Attributions are taken at the word embeddings' output and summed over the hidden
    dimension. The baseline replaces every non-special token by ``[PAD]`` (or
    ``[MASK]``) and keeps the special tokens, the attention mask, the positions and
    the token types, so relevance is comparable with LRP's (read at the embedding sum).
    RoBERTa, XLM-R and MPNet derive position ids from the padding id, so a ``[PAD]``
    baseline would move positions too and break completeness; ``baseline="auto"``
    (the default) takes ``[PAD]`` where positions do not depend on it, ``<mask>``
    where they do.

    ``conservation_error`` is the completeness gap ``(score − baseline_score) −
    sum(relevance)``; :meth:`baseline_scores` gives the baseline's scores.

    Args:
        model: a loaded cross-encoder or bi-encoder.
        n_steps: points of the Gauss–Legendre path integral.
        baseline: ``"auto"``, ``"pad"`` or ``"mask"``, the token that replaces the input's
            tokens.
        internal_batch_size: rows (pairs × steps) per forward pass; ``None`` picks
            ``max(2 × pairs, min(pairs × n_steps, 256))``.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> [e] = IntegratedGradients(model, n_steps=20).attribute(["cats"], ["cats eat fish"])
        >>> abs(e.conservation_error) < 0.05
        True
    """

    method: ClassVar[str] = "IntegratedGradients"

    def __init__(
        self,
        model: RankingModel,
        n_steps: int = 50,
        baseline: Literal["auto", "pad", "mask"] = "auto",
        internal_batch_size: int | None = None,
    ) -> None:
        super().__init__(model)
        if baseline not in ("auto", "pad", "mask"):
            raise ValueError(f"baseline must be 'auto', 'pad' or 'mask', got {baseline!r}")
        names = model.adapter.embedding_names(model.model)
        if baseline == "auto":
            embeddings = model.model.get_submodule(names["embeddings"])
            positions_follow_padding = getattr(embeddings, "padding_idx", None) is not None
            baseline = "mask" if positions_follow_padding else "pad"
        token = model.tokenizer.pad_token_id if baseline == "pad" else model.tokenizer.mask_token_id
        if token is None:
            raise ValueError(f"the tokenizer of {model.name} has no {baseline} token")
        self.n_steps = int(n_steps)
        self.baseline = baseline
        self.baseline_token_id = int(token)
        self.internal_batch_size = internal_batch_size
        self.layer = model.model.get_submodule(names["word_embeddings"])

    def baseline_ids(self, batch: _Batch) -> torch.Tensor:
        """The input ids with every non-special token replaced by the baseline token."""
        special = torch.tensor(
            [encoding.special_tokens_mask for encoding in batch.features.encodings],
            dtype=torch.bool,
            device=batch.input_ids.device,
        )
        return torch.where(special, batch.input_ids, self.baseline_token_id)

    def baseline_scores(self, queries: Sequence[str], documents: Sequence[str]) -> np.ndarray:
        """The explained score of the baseline input of each pair (per side for bi-encoders).

        Returns ``(pairs,)`` for a cross-encoder and ``(pairs, 2)`` (query side,
        document side) for a bi-encoder.
        """
        check_pairs(queries, documents)
        batch = _Batch(self.model, queries, documents)
        with torch.no_grad():
            scores = _numpy(batch.forward(self.baseline_ids(batch), *batch.extra))
        if batch.bi_encoder:
            n = len(queries)
            return np.stack([scores[:n], scores[n:]], axis=1)
        return scores

    def _relevance(self, batch: _Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        from captum.attr import LayerIntegratedGradients

        rows = batch.rows
        internal = self.internal_batch_size or max(2 * rows, min(rows * self.n_steps, 256))
        method = LayerIntegratedGradients(batch.forward, self.layer, multiply_by_inputs=True)
        attributions, delta = method.attribute(
            inputs=batch.input_ids,
            baselines=self.baseline_ids(batch),
            additional_forward_args=batch.extra,
            n_steps=self.n_steps,
            internal_batch_size=max(internal, 2 * rows),
            return_convergence_delta=True,
        )
        with torch.no_grad():
            scores = batch.forward(batch.input_ids, *batch.extra)
        # captum's delta is sum(attributions) − (F(x) − F(x')); the gap is its negative.
        return _numpy(attributions.sum(-1)), _numpy(scores), -_numpy(delta)


class _EmbeddingGradient(TokenAttribution):
    """Gradient at the input of the embedding LayerNorm (where LRP reads relevance)."""

    multiply_by_inputs: ClassVar[bool] = True

    def __init__(self, model: RankingModel) -> None:
        super().__init__(model)
        names = model.adapter.embedding_names(model.model)
        self.layer = model.model.get_submodule(names["embedding_norm"])

    def _relevance(self, batch: _Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        from captum.attr import LayerGradientXActivation

        scores: list[torch.Tensor] = []

        def forward(*inputs: torch.Tensor) -> torch.Tensor:
            output = batch.forward(*inputs)
            scores.append(output.detach())
            return output

        method = LayerGradientXActivation(
            forward, self.layer, multiply_by_inputs=self.multiply_by_inputs
        )
        attributions = method.attribute(
            batch.input_ids, additional_forward_args=batch.extra, attribute_to_layer_input=True
        )
        if isinstance(attributions, tuple | list):
            (attributions,) = attributions
        return self._reduce(attributions), _numpy(scores[-1]), None

    def _reduce(self, attributions: torch.Tensor) -> np.ndarray:
        return _numpy(attributions.sum(-1))


@BASELINES.register("input-x-gradient", "gradient-x-input", "ixg")
class InputXGradient(_EmbeddingGradient):
    """Gradient × input at the embedding sum, summed over the hidden dimension.

    Captum's ``LayerGradientXActivation`` at the input of the embedding LayerNorm:
    the first-order Taylor term that LRP with plain gradients would give.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> [e] = InputXGradient(model).attribute(["cats"], ["cats eat fish"])
        >>> e.method
        'InputXGradient'
    """

    method: ClassVar[str] = "InputXGradient"


@BASELINES.register("saliency")
class Saliency(_EmbeddingGradient):
    """Saliency: the L2 norm over the hidden dimension of the gradient at the embedding sum.

    Captum's ``LayerGradientXActivation`` with ``multiply_by_inputs=False`` gives the
    gradient at the input of the embedding LayerNorm; a token's relevance is its
    Euclidean norm (never negative, so it ranks but does not sign tokens).

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> [e] = Saliency(model).attribute(["cats"], ["cats eat fish"])
        >>> min(e.relevance) >= 0
        True
    """

    method: ClassVar[str] = "Saliency"
    multiply_by_inputs: ClassVar[bool] = False

    def _reduce(self, attributions: torch.Tensor) -> np.ndarray:
        return _numpy(attributions.norm(dim=-1))


@contextlib.contextmanager
def _recorded_attentions(model: RankingModel) -> Iterator[list[tuple[torch.Tensor, ...]]]:
    """Ask the encoder for attention probabilities and record them, reversibly.

    A forward pre-hook adds ``output_attentions=True`` to the call and a forward hook
    records ``output.attentions`` (one ``(batch, heads, tokens, tokens)`` tensor per
    layer). transformers' SDPA attention falls back to the eager computation when
    attention probabilities are asked for (BERT, RoBERTa, XLM-R, DistilBERT in
    transformers 4.57; ELECTRA and MPNet are eager only), so the scores are those of the
    math the model always does. The config is never touched.
    """
    recorded: list[tuple[torch.Tensor, ...]] = []
    module = model.model

    def ask(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return args, {**kwargs, "output_attentions": True}

    def record(_: nn.Module, __: Any, output: Any) -> None:
        attentions = getattr(output, "attentions", None)
        if not attentions:
            raise RuntimeError(f"{type(module).__name__} returned no attention probabilities")
        recorded.append(tuple(attentions))

    handles = [
        module.register_forward_pre_hook(ask, with_kwargs=True),
        module.register_forward_hook(record),
    ]
    # The fallback to eager attention logs a one-off warning about transformers v5.
    transformers_logger = logging.getLogger("transformers")
    level = transformers_logger.level
    transformers_logger.setLevel(logging.ERROR)
    try:
        yield recorded
    finally:
        transformers_logger.setLevel(level)
        for handle in handles:
            handle.remove()


class _AttentionMethod(TokenAttribution):
    def _relevance(self, batch: _Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        with _recorded_attentions(self.model) as recorded, torch.no_grad():
            scores = batch.forward(batch.input_ids, *batch.extra)
        (attentions,) = recorded
        head_means = [layer.double().mean(1) for layer in attentions]  # (rows, tokens, tokens)
        matrix = self._token_matrix(head_means)
        relevance = torch.einsum("bi,bij->bj", batch.pooling_rows(), matrix)
        return _numpy(relevance), _numpy(scores), None

    def _token_matrix(self, head_means: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


@BASELINES.register("attention", "raw-attention")
class Attention(_AttentionMethod):
    """Raw attention: the last layer's attention, averaged over heads, from the pooled positions.

    For cross-encoders and CLS-pooling bi-encoders, the [CLS] row; for mean-pooling
    bi-encoders, the mean of the rows of the attended positions. Relevance of each
    pair (or side) sums to 1.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> [e] = Attention(model).attribute(["cats"], ["cats eat fish"])
        >>> round(sum(e.relevance), 6)
        2.0
    """

    method: ClassVar[str] = "Attention"

    def _token_matrix(self, head_means: list[torch.Tensor]) -> torch.Tensor:
        return head_means[-1]


@BASELINES.register("attention-rollout", "rollout")
class AttentionRollout(_AttentionMethod):
    """Attention rollout (Abnar & Zuidema, 2020), read at the pooled positions.

    Each layer's attention is averaged over heads, the identity is added for the
    residual connection and rows are renormalised, ``Â = (A + I) / 2``; the layers
    are multiplied through, ``R = Â_L ⋯ Â_1``, and relevance is the [CLS] row of ``R``
    (the mean of the attended rows for mean-pooling bi-encoders).

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> [e] = AttentionRollout(model).attribute(["cats"], ["cats eat fish"])
        >>> e.method
        'AttentionRollout'
    """

    method: ClassVar[str] = "AttentionRollout"

    def _token_matrix(self, head_means: list[torch.Tensor]) -> torch.Tensor:
        identity = torch.eye(head_means[0].shape[-1], dtype=head_means[0].dtype)
        rollout = identity.to(head_means[0].device).expand_as(head_means[0])
        for attention in head_means:
            residual = attention + identity.to(attention.device)
            residual = residual / residual.sum(-1, keepdim=True)
            rollout = residual @ rollout
        return rollout


@BASELINES.register("random")
class Random(TokenAttribution):
    """Uniform random relevance in ``[0, 1)``, the floor every method should beat.

    ``seed`` makes it reproducible: each :meth:`attribute` call starts from the same
    generator state, so the same pairs get the same values. The score is the model's.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> a = Random(model, seed=1).attribute(["cats"], ["cats eat fish"])
        >>> a == Random(model, seed=1).attribute(["cats"], ["cats eat fish"])
        True
    """

    method: ClassVar[str] = "Random"

    def __init__(self, model: RankingModel, seed: int = 0) -> None:
        super().__init__(model)
        self.seed = int(seed)
        self._generator = np.random.default_rng(self.seed)

    def _start(self) -> None:
        self._generator = np.random.default_rng(self.seed)

    def _relevance(self, batch: _Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        with torch.no_grad():
            scores = batch.forward(batch.input_ids, *batch.extra)
        mask = batch.features["attention_mask"].cpu().numpy()
        relevance = np.zeros(mask.shape, dtype=np.float64)
        for row, length in enumerate(mask.sum(-1)):
            relevance[row, :length] = self._generator.uniform(size=int(length))
        return relevance, _numpy(scores), None
