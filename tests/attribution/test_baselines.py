"""Captum baselines: same artifacts as TokenLRP, scores the model's, weights and outputs untouched."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from relcomp.attribution.baselines import (
    BASELINES,
    Attention,
    AttentionRollout,
    InputXGradient,
    IntegratedGradients,
    Random,
    Saliency,
    frozen_parameters,
)
from relcomp.attribution.tokens import DOCUMENT, QUERY, SPECIAL
from relcomp.registry import UnknownNameError
from tests.fixtures import DOCUMENTS, LONG_DOCUMENT, QUERIES

KINDS = ("cross-encoder", "bi-encoder")
PAIRS = [(QUERIES[0], DOCUMENTS[0]), (QUERIES[1], DOCUMENTS[2]), (QUERIES[2], LONG_DOCUMENT)]
FAST = {  # few IG steps where the test is not about IG's accuracy
    "ig": lambda model: IntegratedGradients(model, n_steps=8),
    "input-x-gradient": InputXGradient,
    "saliency": Saliency,
    "attention": Attention,
    "rollout": AttentionRollout,
    "random": Random,
}


def _pairs() -> tuple[list[str], list[str]]:
    return [q for q, _ in PAIRS], [d for _, d in PAIRS]


def _expected_tokens(model: Any, query: str, document: str) -> list[str]:
    if model.kind == "cross-encoder":
        encoding = model.tokenizer(
            query, document, truncation="longest_first", max_length=model.max_length
        )
        return encoding.tokens()
    tokens = []
    for text in (query, document):
        tokens += model.tokenizer(text, truncation=True, max_length=model.max_length).tokens()
    return tokens


def _outputs(model: Any) -> torch.Tensor:
    queries, documents = _pairs()
    with torch.no_grad():
        if model.kind == "cross-encoder":
            return model.forward_scores(model.tokenize(queries, documents))
        return model.embed(model.tokenize(queries + documents))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(FAST))
def test_one_artifact_per_pair_with_the_tokenizers_tokens_and_the_models_score(
    tiny_model, kind, name
):
    model = tiny_model("bert", kind)
    queries, documents = _pairs()
    explanations = FAST[name](model).attribute(queries, documents, batch_size=2)
    assert len(explanations) == len(PAIRS)
    np.testing.assert_allclose(
        [e.score for e in explanations], model.score(queries, documents), rtol=1e-5, atol=1e-5
    )
    for explanation, (query, document) in zip(explanations, PAIRS, strict=True):
        assert explanation.method == BASELINES.get(name).method
        assert (explanation.query, explanation.document) == (query, document)
        assert list(explanation.tokens) == _expected_tokens(model, query, document)
        assert len(explanation.relevance) == len(explanation.tokens) == len(explanation.segment)
        assert set(explanation.segment) == {QUERY, DOCUMENT, SPECIAL}
        assert explanation.side == ("pair" if kind == "cross-encoder" else "both")
        assert np.all(np.isfinite(explanation.relevance))
        assert np.any(np.asarray(explanation.relevance) != 0)
        np.testing.assert_allclose(sum(explanation.word_relevance), sum(explanation.relevance))


@pytest.mark.parametrize("kind", KINDS)
def test_integrated_gradients_is_complete_against_its_baseline(tiny_model, kind):
    model = tiny_model("bert", kind)
    queries, documents = _pairs()
    method = IntegratedGradients(model)  # the default 50 steps
    explanations = method.attribute(queries, documents)
    baseline = method.baseline_scores(queries, documents)
    scores = np.asarray([e.score for e in explanations])
    if kind == "cross-encoder":
        span = np.abs(scores - baseline)
        totals = np.asarray([sum(e.relevance) for e in explanations])
        np.testing.assert_allclose(
            [e.conservation_error for e in explanations], scores - baseline - totals, atol=1e-5
        )
    else:  # each side on its own; the artifact reports the larger gap
        span = np.abs(scores[:, None] - baseline).min(1)
    assert np.all(span > 1e-3), "the baseline should score differently from the input"
    gaps = np.abs([e.conservation_error for e in explanations])
    assert np.all(gaps < 0.05 * span)


def test_integrated_gradients_baseline_keeps_special_tokens(tiny_model):
    model = tiny_model("bert")
    method = IntegratedGradients(model, baseline="mask")
    from relcomp.attribution.baselines import _Batch

    batch = _Batch(model, [QUERIES[0]], [DOCUMENTS[0]])
    ids = method.baseline_ids(batch)[0].tolist()
    tokens = model.tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens.count("[SEP]") == 2
    assert set(tokens) == {"[CLS]", "[SEP]", "[MASK]"}
    assert IntegratedGradients(model).baseline == "pad"
    # RoBERTa counts positions from the padding id: a [PAD] baseline would move positions.
    assert IntegratedGradients(tiny_model("roberta")).baseline == "mask"


@pytest.mark.parametrize("kind", KINDS)
def test_model_outputs_and_parameters_unchanged_after_attribution(tiny_model, kind):
    model = tiny_model("bert", kind)
    before = _outputs(model)
    flags = {name: p.requires_grad for name, p in model.model.named_parameters()}
    queries, documents = _pairs()
    for factory in FAST.values():
        factory(model).attribute(queries, documents)
    assert torch.equal(_outputs(model), before)
    assert {name: p.requires_grad for name, p in model.model.named_parameters()} == flags
    assert all(p.grad is None for p in model.model.parameters())
    assert not model.model._forward_hooks and not model.model._forward_pre_hooks


def test_frozen_parameters_restores_mixed_flags():
    layer = torch.nn.Linear(2, 2)
    layer.bias.requires_grad_(False)
    with frozen_parameters(layer):
        assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert layer.weight.requires_grad and not layer.bias.requires_grad


def test_input_x_gradient_matches_gradient_times_the_embedding_sum(tiny_model):
    model = tiny_model("bert")
    queries, documents = _pairs()
    [explanation, *_] = InputXGradient(model).attribute(queries[:1], documents[:1])
    norm = model.model.get_submodule(model.adapter.embedding_names(model.model)["embedding_norm"])
    leaves: list[torch.Tensor] = []

    def keep_input(_: Any, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        leaf = inputs[0].detach().requires_grad_()
        leaves.append(leaf)
        return (leaf,)

    handle = norm.register_forward_pre_hook(keep_input)
    try:
        score = model.forward_scores(model.tokenize(queries[:1], documents[:1]))
        (grad,) = torch.autograd.grad(score.sum(), leaves[0])
    finally:
        handle.remove()
    expected = (leaves[0] * grad).sum(-1)[0].detach().double().numpy()
    np.testing.assert_allclose(explanation.relevance, expected, rtol=1e-5, atol=1e-7)
    [saliency] = Saliency(model).attribute(queries[:1], documents[:1])
    np.testing.assert_allclose(saliency.relevance, grad.norm(dim=-1)[0].double().numpy(), rtol=1e-5)
    assert min(saliency.relevance) >= 0


def test_attention_and_rollout_match_a_direct_computation(tiny_model):
    model = tiny_model("bert")
    queries, documents = _pairs()
    features = model.tokenize(queries, documents)
    with torch.no_grad():
        attentions = model.model(**features, output_attentions=True).attentions
    means = [layer.double().mean(1).numpy() for layer in attentions]
    lengths = features["attention_mask"].sum(-1).tolist()
    raw = Attention(model).attribute(queries, documents)
    rollout = AttentionRollout(model).attribute(queries, documents)
    for row, length in enumerate(lengths):
        np.testing.assert_allclose(raw[row].relevance, means[-1][row, 0, :length], rtol=1e-6)
        product = np.eye(means[0].shape[-1])
        for layer in means:
            step = 0.5 * layer[row] + 0.5 * np.eye(len(product))
            product = step @ product
        np.testing.assert_allclose(rollout[row].relevance, product[0, :length], rtol=1e-6)
        assert sum(raw[row].relevance) == pytest.approx(1.0, abs=1e-6)
        assert sum(rollout[row].relevance) == pytest.approx(1.0, abs=1e-6)


def test_attention_of_a_mean_pooling_bi_encoder_averages_the_rows(tiny_model):
    model = tiny_model("bert", "bi-encoder")
    assert model.pooling == "mean"
    [explanation] = Attention(model).attribute([QUERIES[1]], [DOCUMENTS[2]])
    features = model.tokenize([QUERIES[1]])
    with torch.no_grad():
        last = model.model(**features, output_attentions=True).attentions[-1]
    expected = last.double().mean(1)[0].mean(0).numpy()
    query_part = explanation.relevance[: len(expected)]
    np.testing.assert_allclose(query_part, expected, rtol=1e-6)
    assert sum(explanation.relevance) == pytest.approx(2.0, abs=1e-6)  # 1 per side


def test_random_is_seeded(tiny_model):
    model = tiny_model("bert")
    queries, documents = _pairs()
    first = Random(model, seed=3).attribute(queries, documents)
    method = Random(model, seed=3)
    assert method.attribute(queries, documents) == first
    assert method.attribute(queries, documents) == first  # each call starts afresh
    other = Random(model, seed=4).attribute(queries, documents)
    assert [e.relevance for e in other] != [e.relevance for e in first]
    assert all(0 <= value < 1 for e in first for value in e.relevance)


def test_registry_names_every_baseline():
    for names, cls in [
        (("ig", "lig", "integrated-gradients", "Integrated_Gradients"), IntegratedGradients),
        (("input-x-gradient",), InputXGradient),
        (("saliency",), Saliency),
        (("attention",), Attention),
        (("rollout", "attention-rollout"), AttentionRollout),
        (("random",), Random),
    ]:
        for name in names:
            assert BASELINES.get(name) is cls
    with pytest.raises(UnknownNameError, match="did you mean 'saliency'"):
        BASELINES.get("salency")
