"""LRP on whole models: reversible patches, conservation, batching, components, BiLRP."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from relcomp.attribution import BiLRP, ComponentLRP, LRPPatch, TokenLRP, get_composite, get_method
from relcomp.attribution.lrp import ComponentTaps, lrp_forward_backward
from relcomp.attribution.rules import Epsilon, Gradient
from relcomp.registry import UnknownNameError
from tests.fixtures import DOCUMENTS, FAMILIES, KINDS, QUERIES

PAIRS = list(zip(QUERIES[:3], DOCUMENTS[:3], strict=True))


def _outputs(model, queries, documents):
    with torch.inference_mode():
        if model.kind == "cross-encoder":
            return model.forward_scores(model.tokenize(queries, documents))
        return model.embed(model.tokenize(list(queries) + list(documents)))


def _zero_biases(model) -> None:
    with torch.no_grad():
        for module in model.model.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.LayerNorm) and module.bias is not None:
                module.bias.zero_()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_patch_then_remove_restores_outputs_bit_for_bit(tiny_model, family: str, kind: str) -> None:
    model = tiny_model(family, kind)
    queries, documents = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    before = _outputs(model, queries, documents)
    requires_grad = [p.requires_grad for p in model.model.parameters()]
    with LRPPatch(model, "AttnLRP"):
        patched = _outputs(model, queries, documents)
    explanations = TokenLRP(model).attribute(queries, documents)
    after = _outputs(model, queries, documents)
    assert torch.equal(before, after)
    assert [p.requires_grad for p in model.model.parameters()] == requires_grad
    assert not any("forward" in m.__dict__ for m in model.model.modules())
    # The rules change the backward pass only: the forward is the model's own.
    torch.testing.assert_close(patched, before, rtol=1e-5, atol=1e-5)
    scores = model.score(queries, documents)
    np.testing.assert_allclose([e.score for e in explanations], scores, rtol=1e-5, atol=1e-5)
    assert all(np.isfinite(e.relevance).all() for e in explanations)


def test_patch_removes_itself_when_installation_fails(tiny_model) -> None:
    model = tiny_model("bert")
    with LRPPatch(model), pytest.raises(RuntimeError, match="already has a patched forward"):
        LRPPatch(model).install()
    assert not any("forward" in m.__dict__ for m in model.model.modules())


@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet", "roberta"])
def test_cp_lrp_conserves_the_score_in_float64_without_biases(tiny_model, family: str) -> None:
    model = tiny_model(family)
    model.model.double()
    _zero_biases(model)
    composite = get_composite("CP-LRP", epsilon=0.0)
    [explanation] = TokenLRP(model, composite).attribute([QUERIES[0]], [DOCUMENTS[0]])
    assert abs(explanation.conservation_error) <= 1e-6 * abs(explanation.score)
    assert sum(explanation.relevance) == pytest.approx(explanation.score, rel=1e-6)


def test_bi_encoder_sides_each_sum_to_the_similarity(tiny_model) -> None:
    model = tiny_model("bert", "bi-encoder")
    model.model.double()
    _zero_biases(model)
    [explanation] = TokenLRP(model, get_composite("CP-LRP", 0.0)).attribute(
        [QUERIES[1]], [DOCUMENTS[2]]
    )
    relevance, segment = np.array(explanation.relevance), np.array(explanation.segment)
    # Special tokens of each side carry segment -1; split the sides by token order.
    boundary = len(model.tokenize([QUERIES[1]])["input_ids"][0])
    assert relevance[:boundary].sum() == pytest.approx(explanation.score, rel=1e-6)
    assert relevance[boundary:].sum() == pytest.approx(explanation.score, rel=1e-6)
    assert set(segment[:boundary]) <= {0, -1} and set(segment[boundary:]) <= {1, -1}


def test_attnlrp_reports_its_conservation_residual(tiny_model) -> None:
    model = tiny_model("bert")
    [explanation] = TokenLRP(model).attribute([QUERIES[0]], [DOCUMENTS[0]])
    assert explanation.conservation_error == pytest.approx(
        explanation.score - sum(explanation.relevance)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_explains_each_pair_as_alone(tiny_model, kind: str) -> None:
    model = tiny_model("bert", kind)
    queries, documents = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    together = TokenLRP(model).attribute(queries, documents, batch_size=3)
    alone = [TokenLRP(model).attribute([q], [d])[0] for q, d in PAIRS]
    for a, b in zip(together, alone, strict=True):
        assert a.tokens == b.tokens and a.words == b.words
        np.testing.assert_allclose(a.relevance, b.relevance, rtol=1e-4, atol=1e-5)


def test_words_group_subword_tokens_and_keep_segments_apart(tiny_model) -> None:
    model = tiny_model("bert")
    [explanation] = TokenLRP(model).attribute([QUERIES[0]], [DOCUMENTS[0]])
    assert sum(explanation.word_relevance) == pytest.approx(sum(explanation.relevance))
    query_words = [
        w for w, s in zip(explanation.words, explanation.word_segment, strict=True) if s == 0
    ]
    assert " ".join(query_words).replace(" ?", "?") == QUERIES[0]
    assert {0, 1, -1} == set(explanation.segment)


def test_component_relevance_is_consistent_across_levels(tiny_model) -> None:
    model = tiny_model("bert")
    model.model.double()
    _zero_biases(model)
    relevance = ComponentLRP(model, get_composite("CP-LRP", 0.0)).attribute(
        [q for q, _ in PAIRS], [d for _, d in PAIRS]
    )
    assert relevance.kinds() == [
        "attention",
        "head",
        "head_l1",
        "layer",
        "linear",
        "linear_l1",
        "mlp",
        "neuron",
        "neuron_l1",
    ]
    # Σ|R| over a module's output elements is at least |ΣR|, pair by pair.
    net, absolute = relevance.by_kind("linear"), relevance.by_kind("linear_l1")
    assert absolute.keys() == net.keys()
    assert all(absolute[name][0] >= net[name][0] - 1e-9 for name in net)
    heads, attention = (
        relevance.by_kind("head", "mean_signed"),
        relevance.by_kind("attention", "mean_signed"),
    )
    neurons, mlp = (
        relevance.by_kind("neuron", "mean_signed"),
        relevance.by_kind("mlp", "mean_signed"),
    )
    linears = relevance.by_kind("linear", "mean_signed")
    for layer in model.layer_modules():
        # Without biases, a block's output relevance is what its heads / neurons pass on.
        assert heads[layer.layer].sum() == pytest.approx(attention[layer.layer][0], rel=1e-6)
        assert neurons[layer.layer].sum() == pytest.approx(mlp[layer.layer][0], rel=1e-6)
        assert linears[layer.ffn_out][0] == pytest.approx(mlp[layer.layer][0], rel=1e-6)
        assert heads[layer.layer].shape == (model.num_heads(),)
    scores = model.score([q for q, _ in PAIRS], [d for _, d in PAIRS]).astype(np.float64)
    last = model.layer_modules()[-1].layer
    assert relevance.by_kind("layer", "mean_signed")[last][0] == pytest.approx(
        scores.mean(), rel=1e-5
    )
    roundtrip = type(relevance).from_json(relevance.to_json())
    assert roundtrip == relevance


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_bilrp_batched_agrees_with_the_per_dimension_reference(tiny_model, family: str) -> None:
    model = tiny_model(family, "bi-encoder")
    bilrp = BiLRP(model)
    batched = bilrp.attribute(QUERIES[1], DOCUMENTS[2])
    reference = bilrp.attribute_per_dimension(QUERIES[1], DOCUMENTS[2])
    assert batched.matrix().shape == (len(batched.query_tokens), len(batched.document_tokens))
    r = np.corrcoef(batched.matrix().ravel(), reference.matrix().ravel())[0, 1]
    assert r >= 0.99
    # Forward mode runs attention explicitly (its ε-stabilisers), the reference fused.
    scale = float(np.abs(reference.matrix()).max())
    np.testing.assert_allclose(batched.matrix(), reference.matrix(), rtol=1e-3, atol=1e-3 * scale)
    assert batched.score == pytest.approx(
        float(model.score([QUERIES[1]], [DOCUMENTS[2]])[0]), rel=1e-5
    )


@pytest.mark.parametrize("composite", ["AttnLRP", "CP-LRP"])
def test_bilrp_is_the_same_whichever_side_is_shorter(tiny_model, composite: str) -> None:
    model = tiny_model("bert", "bi-encoder")
    bilrp = BiLRP(model, composite)
    short_query = bilrp.attribute(QUERIES[1], DOCUMENTS[2])
    swapped = bilrp.attribute(DOCUMENTS[2], QUERIES[1])  # now the query is the longer text
    np.testing.assert_allclose(swapped.matrix().T, short_query.matrix(), rtol=1e-3, atol=1e-6)
    assert swapped.query_tokens == short_query.document_tokens
    assert swapped.score == pytest.approx(short_query.score, rel=1e-5)


def test_bilrp_interactions_sum_to_the_similarity_when_conservative(tiny_model) -> None:
    model = tiny_model("bert", "bi-encoder")
    model.model.double()
    _zero_biases(model)
    result = BiLRP(model, get_composite("CP-LRP", 0.0)).attribute(QUERIES[0], DOCUMENTS[0])
    assert result.matrix().sum() == pytest.approx(result.score, rel=1e-6)


def test_unknown_method_and_composite_names_list_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match=r"Valid names: .*attnlrp"):
        get_method("attnlrpp")
    with pytest.raises(UnknownNameError, match="did you mean 'AttnLRP'"):
        get_composite("atnlrp")


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_component_relevance_follows_pruned_head_counts(tiny_model, family: str) -> None:
    from relcomp.artifacts import CompressionPlan
    from relcomp.compression import prune_physically

    model = tiny_model(family)
    first = model.layer_modules()[0]
    pruned = prune_physically(
        model, CompressionPlan(model.name, {first.attention: "prune_heads(0,2)"})
    )
    relevance = ComponentLRP(pruned).attribute([QUERIES[0]], [DOCUMENTS[0]])
    heads = relevance.by_kind("head")
    assert heads[first.layer].shape == (model.num_heads() - 2,)
    assert heads[model.layer_modules()[1].layer].shape == (model.num_heads(),)
    [explanation] = TokenLRP(pruned).attribute([QUERIES[0]], [DOCUMENTS[0]])
    assert explanation.score == pytest.approx(
        float(pruned.score([QUERIES[0]], [DOCUMENTS[0]])[0]), rel=1e-4
    )


@pytest.mark.parametrize("composite", ["AttnLRP", "CP-LRP"])
@pytest.mark.parametrize("family", FAMILIES)
def test_efficient_form_gives_the_explicit_rules_relevance(
    tiny_model, family: str, composite: str
) -> None:
    # The default composite is the efficient gradient × input form: Q/K/V gradients
    # scaled around fused attention, Linear layers' own gradient. The explicit one
    # applies every rule as written with its ε stabilisers. At the same (small) ε
    # they agree; ε itself only matters for outputs within ~ε of zero.
    default = get_composite(composite)
    assert default.fused_attention and isinstance(default.linear, Gradient)
    model = tiny_model(family, "cross-encoder")
    queries, documents = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    explicit_rules = get_composite(composite, epsilon=1e-9)
    assert not explicit_rules.fused_attention and isinstance(explicit_rules.linear, Epsilon)
    efficient_rules = dataclasses.replace(
        explicit_rules, linear=Gradient(1e-9), fused_attention=True
    )
    explicit = TokenLRP(model, explicit_rules).attribute(queries, documents)
    efficient = TokenLRP(model, efficient_rules).attribute(queries, documents)
    for a, b in zip(efficient, explicit, strict=True):
        np.testing.assert_allclose(a.relevance, b.relevance, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("explicit", [False, True], ids=["efficient", "explicit"])
@pytest.mark.parametrize("family", FAMILIES)
def test_last_layer_at_the_first_token_changes_no_relevance(
    tiny_model, family: str, explicit: bool
) -> None:
    # TokenLRP and ComponentLRP run a cross-encoder's last attention queries and
    # feed-forward block at the first token only (all its head reads); scores and
    # every relevance stay the same.
    composite = get_composite("AttnLRP", 1e-9 if explicit else None)
    model = tiny_model(family, "cross-encoder")
    model.model.double()  # float64: a smaller matrix product rounds differently in float32
    queries, documents = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    results = []
    for first_token_head in (False, True):
        with (
            LRPPatch(model, composite, first_token_head=first_token_head) as patch,
            ComponentTaps(model) as taps,
        ):
            scores, [(_, relevance)], _ = lrp_forward_backward(model, patch, queries, documents)
            results.append((scores, relevance, taps.take()))
    (scores, relevance, components), (scores_1, relevance_1, components_1) = results
    np.testing.assert_allclose(scores_1, scores, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(relevance_1, relevance, rtol=1e-9, atol=1e-12)
    assert components_1.keys() == components.keys()
    for kind, names in components.items():
        for name, values in names.items():
            np.testing.assert_allclose(
                components_1[kind][name], values, rtol=1e-9, atol=1e-12, err_msg=f"{kind} {name}"
            )
    assert not any("forward" in m.__dict__ for m in model.model.modules())
    assert not model.model.get_submodule(model.layer_modules()[-1].ffn_in)._forward_pre_hooks


@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
def test_component_relevance_with_contrast_explains_the_margin(tiny_model, kind) -> None:
    # LRP is linear in the explained output, so the margin's relevance is the
    # difference of the two explanations, pair by pair: its signed mean is the
    # difference of the signed means, and a document contrasted with itself leaves 0.
    model = tiny_model("bert", kind)
    model.model.double()
    queries, documents = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    negatives = documents[1:] + documents[:1]
    lrp = ComponentLRP(model)
    margin = lrp.attribute(queries, documents, contrast=negatives, source={"split": "dev"})
    positive, negative = lrp.attribute(queries, documents), lrp.attribute(queries, negatives)
    texts_per_pair = 2 if kind == "cross-encoder" else 4  # a bi-encoder reads each side alone
    truncation = {"inputs": texts_per_pair * len(PAIRS), "truncated": 0}
    truncation["max_length"] = model.max_length
    assert margin.source == {"split": "dev", "contrast": True, "truncation": truncation}
    for kind_ in ("head", "mlp", "neuron", "linear"):
        for name, signed in margin.by_kind(kind_, "mean_signed").items():
            expected = positive.by_kind(kind_, "mean_signed")[name]
            expected = expected - negative.by_kind(kind_, "mean_signed")[name]
            np.testing.assert_allclose(signed, expected, atol=1e-9)
    itself = lrp.attribute(queries, documents, contrast=documents)
    assert all(np.all(v == 0) for v in itself.by_kind("head").values())
    with pytest.raises(ValueError, match="one document per pair: got 1 for"):
        lrp.attribute(queries, documents, contrast=documents[:1])


def test_component_taps_leave_no_reference_cycle(tiny_model) -> None:
    # Each batch's graph must be freed when its pass ends, not at the next GC pass:
    # a tapped tensor must not be kept alive by its own hook.
    import gc
    import weakref

    model = tiny_model("bert")
    outputs: list[weakref.ref] = []
    ffn_out = model.model.get_submodule(model.layer_modules()[0].ffn_out)
    handle = ffn_out.register_forward_hook(lambda _m, _i, o: outputs.append(weakref.ref(o)))
    gc.disable()
    try:
        with LRPPatch(model, get_composite("AttnLRP")) as patch, ComponentTaps(model) as taps:
            lrp_forward_backward(model, patch, [QUERIES[0]], [DOCUMENTS[0]])
            assert taps.take()["mlp"]
            assert outputs and all(ref() is None for ref in outputs)
    finally:
        gc.enable()
        handle.remove()
