"""Relevance patching: corruptions, exact activation patching, AtP, RelP and ``run_patching``."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from relcomp.artifacts import ComponentRelevance
from relcomp.attribution import ComponentLRP
from relcomp.attribution.composites import Composite
from relcomp.attribution.corruption import (
    PatchingPair,
    UnchangedCorruption,
    build_pairs,
    corrupt,
    pair_from_texts,
)
from relcomp.attribution.patching import (
    COMPONENT_KINDS,
    ActivationPatching,
    AttributionPatching,
    RelevancePatching,
    run_patching,
)
from relcomp.attribution.rules import Epsilon, Gradient, GradientMatmul, Identity
from relcomp.evaluation import load_beir
from tests.fixtures import DOCUMENTS, KINDS, QUERIES

# (query, relevant document) pairs of the tiny fixtures' little world.
PAIRS = [(QUERIES[i], DOCUMENTS[j]) for i, j in [(0, 0), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]]


def _pairs(model: Any, corruption: str = "doc-terms") -> list[PatchingPair]:
    return [
        corrupt(model, query, document, corruption, label=f"p{i}")
        for i, (query, document) in enumerate(PAIRS[1:4])
    ]


def _write_beir(root: Path) -> Path:
    """The fixtures' pairs, plus one pair with no shared term and one stopword-only query."""
    root.mkdir(parents=True)
    corpus = [{"_id": f"d{i}", "title": "", "text": text} for i, text in enumerate(DOCUMENTS)]
    queries = [{"_id": f"q{i}", "text": text} for i, text in enumerate(QUERIES)]
    queries += [{"_id": "q-none", "text": "the quick fox"}, {"_id": "q-stop", "text": "what is it"}]
    qrels = [(f"q{i}", f"d{j}", 1) for i, j in [(0, 0), (1, 2), (2, 3), (3, 4), (4, 5)]]
    # "what causes rain" against the Moby Dick document: no query term in it.
    qrels += [("q-none", "d1", 1), ("q-stop", "d2", 1)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in qrels)
    )
    return root


# -- corruptions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("corruption", ["doc-terms", "query-terms"])
@pytest.mark.parametrize("kind", KINDS)
def test_term_corruptions_keep_the_token_length(tiny_model, kind: str, corruption: str) -> None:
    model = tiny_model("bert", kind)
    for pair in _pairs(model, corruption):
        clean, corrupted = pair.clean["input_ids"], pair.corrupted["input_ids"]
        assert clean.shape == corrupted.shape
        assert pair.changed and all(clean[0, p] != corrupted[0, p] for p in pair.changed)
        unchanged = [p for p in range(pair.length) if p not in pair.changed]
        assert torch.equal(clean[0, unchanged], corrupted[0, unchanged])
        for key in pair.clean.keys() - {"input_ids"}:
            assert torch.equal(pair.clean[key], pair.corrupted[key])
        if kind == "cross-encoder":
            # Only the targeted segment changes: 0 = query, 1 = document.
            segment = pair.clean["token_type_ids"][0, list(pair.changed)]
            assert set(segment.tolist()) == {0 if corruption == "query-terms" else 1}
        else:
            assert pair.side == ("query" if corruption == "query-terms" else "document")
        query_ids = set(model.tokenizer(pair.query)["input_ids"])
        assert not query_ids & set(corrupted[0, list(pair.changed)].tolist())
        again = corrupt(model, pair.query, pair.document, corruption, label=pair.label)
        assert torch.equal(again.corrupted["input_ids"], corrupted)


def test_document_terms_are_replaced_wherever_they_match_the_query(tiny_model) -> None:
    model = tiny_model("bert", "bi-encoder")
    pair = corrupt(model, "cat animal", "a cat is an animal and a cat sleeps", "doc-terms")
    tokens = pair.tokens(model.tokenizer)
    assert [tokens[p] for p in pair.changed] == ["cat", "animal", "cat"]
    assert "cat" not in pair.tokens(model.tokenizer, corrupted=True)


def test_unchanged_pairs_are_skipped_and_counted(tiny_model, tmp_path: Path) -> None:
    model = tiny_model("bert")
    dataset = load_beir(_write_beir(tmp_path / "toy"), "test")
    pairs, skipped = build_pairs(model, dataset, None, "doc-terms")
    assert len(pairs) == 5
    assert skipped == {"no content word of the query occurs in the (truncated) document": 2}
    pairs, skipped = build_pairs(model, dataset, None, "query-terms")
    assert len(pairs) == 6 and skipped == {"the query has no content word": 1}
    with pytest.raises(UnchangedCorruption, match="no content word"):
        corrupt(model, "what is it", "it is what it is", "query-terms")


def test_skipped_pairs_are_replaced_by_the_next_queries(
    tiny_model, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_model("bert")
    dataset = load_beir(_write_beir(tmp_path / "toy"), "test")
    usable = {pair.label for pair in build_pairs(model, dataset, None, "doc-terms")[0]}
    for n in (1, 3, 5):
        pairs, _ = build_pairs(model, dataset, n, "doc-terms")
        assert len(pairs) == n and {pair.label for pair in pairs} <= usable
        assert [p.label for p in pairs] == [p.label for p in build_pairs(model, dataset, n)[0]]
    with caplog.at_level(logging.WARNING):
        pairs, skipped = build_pairs(model, dataset, 6, "doc-terms")
    assert len(pairs) == 5 and sum(skipped.values()) == 2
    assert "asked for 6 pairs but the split has only 5 usable ones" in caplog.text


@pytest.mark.parametrize("kind", KINDS)
def test_user_pairs_must_tokenise_to_the_same_length(tiny_model, kind: str) -> None:
    model = tiny_model("bert", kind)
    clean = ("what is a cat", "a cat is a small animal")
    pair = pair_from_texts(model, clean, ("what is a cat", "a dog is a small animal"))
    assert pair.clean["input_ids"].shape == pair.corrupted["input_ids"].shape
    assert len(pair.changed) == 1
    with pytest.raises(ValueError, match="equal token length"):
        pair_from_texts(model, clean, ("what is a cat", "a dog is a very small animal"))
    with pytest.raises(UnchangedCorruption):
        pair_from_texts(model, clean, clean)
    if kind == "bi-encoder":
        assert pair.side == "document" and pair.other is not None
        with pytest.raises(ValueError, match="not both"):
            pair_from_texts(model, clean, ("what is a dog", "a dog is a small animal"))
    else:
        with pytest.raises(ValueError, match="boundary"):
            pair_from_texts(model, clean, ("what is a cat a", "cat is a small animal"))


# -- activation patching --------------------------------------------------------------------------
def _metric(model: Any, features: dict[str, torch.Tensor], other: Any) -> float:
    with torch.inference_mode():
        if model.kind == "cross-encoder":
            return float(model.forward_scores(features)[0])
        return float((model.embed(features) * other).sum())


def _other(model: Any, pair: PatchingPair) -> Any:
    if pair.other is None:
        return None
    with torch.inference_mode():
        return model.embed(pair.other)


def _hand_effect(model: Any, pair: PatchingPair, module_name: str, where: str, patch: Any) -> float:
    """Record ``module_name``'s input or output in the corrupted run, patch it into the clean run."""
    other = _other(model, pair)  # the side that is not patched, embedded before any hook
    clean = _metric(model, pair.clean, other)
    module = model.model.get_submodule(module_name)
    recorded: list[torch.Tensor] = []
    hook = (
        module.register_forward_pre_hook(lambda _, inputs: recorded.append(inputs[0]))
        if where == "input"
        else module.register_forward_hook(
            lambda _, __, out: recorded.append(out[0] if isinstance(out, tuple) else out)
        )
    )
    _metric(model, pair.corrupted, other)
    hook.remove()
    source = recorded[0]

    def replace_output(_: Any, __: Any, out: Any) -> Any:
        if isinstance(out, tuple):
            return (patch(out[0], source), *out[1:])
        return patch(out, source)

    hook = (
        module.register_forward_pre_hook(lambda _, inputs: (patch(inputs[0], source),))
        if where == "input"
        else module.register_forward_hook(replace_output)
    )
    try:
        return _metric(model, pair.clean, other) - clean
    finally:
        hook.remove()


@pytest.mark.parametrize("kind", KINDS)
def test_activation_patching_equals_a_hand_written_hook(tiny_model, kind: str) -> None:
    model = tiny_model("bert", kind)
    pair = _pairs(model)[0]
    [effects] = ActivationPatching(model, batch_size=5).attribute([pair])
    layer = model.layer_modules()[1]
    heads = model.num_heads()

    def head_two(clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        patched = clean.clone().view(*clean.shape[:2], heads, -1)
        patched[:, :, 2] = corrupted.view(*clean.shape[:2], heads, -1)[:, :, 2]
        return patched.view(clean.shape)

    def position(index: int) -> Any:
        def patch(clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
            patched = clean.clone()
            patched[:, index] = corrupted[:, index]
            return patched

        return patch

    def whole(clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        return corrupted

    expected = {
        ("head", (1, 2)): _hand_effect(model, pair, layer.attention_output, "input", head_two),
        ("attention", 1): _hand_effect(model, pair, layer.attention_output, "output", whole),
        ("mlp", 1): _hand_effect(model, pair, layer.ffn_out, "output", whole),
        ("residual", (0, pair.changed[0])): _hand_effect(
            model, pair, model.layer_modules()[0].layer, "output", position(pair.changed[0])
        ),
        ("residual", (1, 0)): _hand_effect(model, pair, layer.layer, "output", position(0)),
    }
    for (kind_name, index), value in expected.items():
        assert effects.effects[kind_name][index] == pytest.approx(value, abs=1e-6)
    assert any(abs(value) > 1e-4 for value in expected.values())
    other = _other(model, pair)
    assert effects.clean == pytest.approx(_metric(model, pair.clean, other), abs=1e-6)
    assert effects.corrupted == pytest.approx(_metric(model, pair.corrupted, other), abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_patching_a_clean_activation_into_the_clean_run_changes_nothing(
    tiny_model, kind: str
) -> None:
    model = tiny_model("bert", kind)
    pair = dataclasses.replace(_pairs(model)[1], corrupted=_pairs(model)[1].clean)
    [effects] = ActivationPatching(model, batch_size=7).attribute([pair])
    for kind_name in COMPONENT_KINDS:
        assert np.array_equal(effects.effects[kind_name], np.zeros_like(effects.effects[kind_name]))


def test_patching_leaves_the_model_as_it_was(tiny_model) -> None:
    model = tiny_model("bert")
    pairs = _pairs(model)
    before = model.score([p.query for p in pairs], [p.document for p in pairs])
    ActivationPatching(model, residual_positions=2).attribute(pairs)
    RelevancePatching(model).attribute(pairs)
    after = model.score([p.query for p in pairs], [p.document for p in pairs])
    assert np.array_equal(before, after)
    assert not any("forward" in m.__dict__ for m in model.model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.model.modules())
    assert all(p.requires_grad for p in model.model.parameters())


def test_residual_positions_are_a_seeded_sample(tiny_model) -> None:
    model = tiny_model("bert")
    pair = _pairs(model)[0]
    [first] = ActivationPatching(model, kinds=["residual"], residual_positions=3).attribute([pair])
    [again] = ActivationPatching(model, kinds=["residual"], residual_positions=3).attribute([pair])
    patched = np.isfinite(first.effects["residual"])
    assert patched.sum(1).tolist() == [3] * len(model.layer_modules())
    np.testing.assert_array_equal(first.effects["residual"], again.effects["residual"])
    assert set(first.effects) == {"residual"}


# -- AtP and RelP ----------------------------------------------------------------------------------
def _gradient_with_rule_code(name: str) -> Composite:
    """ε = 0 Linear hooks and the Identity activation rule: the gradient, on a linear activation."""
    return Composite(
        name=name,
        linear=Epsilon(0.0),
        activation=Identity(0.0),
        layer_norm=Gradient(0.0),
        softmax=GradientMatmul(0.0),
        query_key=GradientMatmul(0.0),
        attention_value=GradientMatmul(0.0),
        normalization_constant=False,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_relp_equals_atp_where_the_rules_are_the_gradient(tiny_model, kind: str) -> None:
    model = tiny_model("bert", kind)
    model.model.double()
    pairs = _pairs(model)
    atp = AttributionPatching(model, batch_size=2).attribute(pairs)
    relp = RelevancePatching(model, "Gradient", batch_size=2).attribute(pairs)
    for a, r in zip(atp, relp, strict=True):
        assert r.clean == pytest.approx(a.clean, rel=1e-12)
        for kind_name in COMPONENT_KINDS:
            np.testing.assert_allclose(
                r.effects[kind_name], a.effects[kind_name], rtol=1e-9, atol=1e-12
            )
    # Real LRP rules do change the estimates: the comparison above can fail.
    for composite in ("RelP", "AttnLRP"):
        [lrp] = RelevancePatching(model, composite).attribute(pairs[:1])
        assert not np.allclose(lrp.effects["mlp"], atp[0].effects["mlp"], rtol=1e-3)


def test_relp_equals_atp_on_a_model_with_a_linear_activation(tiny_model) -> None:
    # A bi-encoder: a cross-encoder's pooler applies tanh, where the identity rule is not the gradient.
    model = tiny_model("bert", "bi-encoder", hidden_act="linear")
    model.model.double()
    pairs = _pairs(model)
    atp = AttributionPatching(model).attribute(pairs)
    relp = RelevancePatching(model, _gradient_with_rule_code("linear-identity")).attribute(pairs)
    for a, r in zip(atp, relp, strict=True):
        for kind_name in COMPONENT_KINDS:
            np.testing.assert_allclose(
                r.effects[kind_name], a.effects[kind_name], rtol=1e-9, atol=1e-12
            )


@pytest.mark.parametrize("kind", KINDS)
def test_atp_estimates_line_up_with_activation_patching(tiny_model, kind: str) -> None:
    """Same shapes, same positions: per-position estimates track the exact residual effects."""
    model = tiny_model("bert", kind)
    model.model.double()
    pair = _pairs(model)[0]
    [exact] = ActivationPatching(model, kinds=["residual"]).attribute([pair])
    [atp] = AttributionPatching(model).attribute([pair])
    assert exact.effects["residual"].shape == atp.effects["residual"].shape
    correlation = np.corrcoef(exact.effects["residual"].ravel(), atp.effects["residual"].ravel())
    assert correlation[0, 1] > 0.5


@pytest.mark.parametrize("kind", KINDS)
def test_relp_component_relevance_reads_like_component_lrp(tiny_model, kind: str) -> None:
    model = tiny_model("bert", kind)
    pairs = _pairs(model)
    relevance = RelevancePatching(model).component_relevance(
        pairs, source={"corruption": "doc-terms"}
    )
    reference = ComponentLRP(model).attribute([p.query for p in pairs], [p.document for p in pairs])
    assert relevance.method == "RelP" and relevance.n_pairs == len(pairs)
    assert relevance.kinds() == reference.kinds()
    for kind_name in reference.kinds():
        ours, theirs = relevance.by_kind(kind_name), reference.by_kind(kind_name)
        assert list(ours) == list(theirs)
        assert all(ours[name].shape == theirs[name].shape for name in ours)
        assert all(np.all(ours[name] >= 0) for name in ours)
    assert ComponentRelevance.from_json(relevance.to_json()) == relevance
    # Per layer, the residual stream's relevance is the sum of its per-position estimates.
    [estimate] = RelevancePatching(model).attribute(pairs[:1])
    single = RelevancePatching(model).component_relevance(pairs[:1])
    layer_values = single.by_kind("layer", "mean_signed")
    for index, name in enumerate(layer_values):
        assert layer_values[name][0] == pytest.approx(estimate.effects["residual"][index].sum())


# -- the whole study --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_run_patching_on_a_toy_beir_folder(tiny_model, kind: str, tmp_path: Path) -> None:
    model = tiny_model("bert", kind)
    payload = run_patching(
        model,
        load_beir(_write_beir(tmp_path / "toy"), "test"),
        pairs=None,
        residual_positions=6,
        show_progress_bar=False,
    )
    json.dumps(payload, allow_nan=False)
    assert payload["kind"] == kind and payload["corruption"] == "doc-terms"
    assert payload["metric"] == ("logit" if kind == "cross-encoder" else "cosine similarity")
    assert payload["counts"]["pairs_used"] == 5 and payload["counts"]["pairs_skipped"] == 2
    assert sum(payload["counts"]["skipped"].values()) == 2
    assert set(payload["correlations"]) == set(COMPONENT_KINDS)
    for entry in payload["correlations"].values():
        assert set(entry) == {"atp_pearson", "relp_pearson", "atp_spearman", "relp_spearman", "n"}
        assert entry["n"] > 0
        for name in ("atp_pearson", "relp_pearson", "atp_spearman", "relp_spearman"):
            assert entry[name] is None or -1.0 <= entry[name] <= 1.0
    assert payload["correlations"]["head"]["n"] == 5 * 2 * 4
    names = [layer.layer for layer in model.layer_modules()]
    assert list(payload["components"]["head"]) == names
    head = payload["components"]["head"][names[0]]
    assert {"activation_patching", "atp", "relp", "relp_normalized"} <= set(head)
    assert len(head["activation_patching"]) == model.num_heads()
    timings = payload["timings"]
    assert all(
        timings[key] > 0 for key in ("clean_forward_s", "activation_patching_s", "atp_s", "relp_s")
    )
    relevance = ComponentRelevance.from_dict(payload["component_relevance"])
    assert relevance.method == "RelP" and relevance.n_pairs == 5
    assert len(payload["pairs"]) == 5
