"""Plans: JSON round trips, resolution against a model, and one clear error per bad plan."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relcomp.artifacts import CompressionPlan
from relcomp.compression import (
    ModelStructure,
    PlanError,
    compress_,
    head_counts,
    neuron_counts,
)
from relcomp.errors import RelcompError
from tests.compression.test_actions import actions

names = st.from_regex(r"[a-z_][a-z0-9_]{0,7}(\.[a-z0-9_]{1,6}){0,4}", fullmatch=True)
patterns = st.one_of(
    names,
    names.map(lambda name: "re:" + re.escape(name)),
    names.map(lambda name: "re:" + re.escape(name) + r"\..*"),
    st.just("_default"),
)
budgets = st.dictionaries(
    st.sampled_from(["size_mb", "bits_per_weight", "params_removed", "sparsity"]),
    st.floats(min_value=4.0, max_value=500.0),
).map(lambda b: {k: (v / 1000 if k in ("params_removed", "sparsity") else v) for k, v in b.items()})


@settings(max_examples=150, deadline=None)
@given(
    entries=st.lists(st.tuples(patterns, actions.map(str)), max_size=8),
    budget=budgets,
    method=st.sampled_from(["uniform", "relevance-greedy", "manual"]),
)
def test_plan_survives_a_json_round_trip(entries, budget, method):
    plan = CompressionPlan(
        model="tiny-bert",
        entries=entries,
        method=method,
        budget=budget,
        achieved={"size_mb": 12.5, "bits_per_weight": 6.2, "params_removed": 0.1},
        relevance={"method": "AttnLRP", "source": "relevance.json", "n_pairs": 64},
    )
    text = plan.to_json()
    again = CompressionPlan.from_json(text)
    assert again == plan
    assert again.entries == tuple(entries)  # order and duplicates survive
    assert [pair[0] for pair in json.loads(text)["entries"]] == [p for p, _ in entries]


def test_plan_saves_and_loads(tmp_path):
    plan = CompressionPlan(
        "m", {"_default": "int8", "re:.*output.*": "int4"}, budget={"size_mb": 20}
    )
    assert CompressionPlan.load(plan.save(tmp_path / "plan.json")) == plan
    assert plan.entries[1] == ("re:.*output.*", "int4(block_size=32)")


def test_plan_entries_are_canonical_and_hashable():
    a = CompressionPlan("m", [("x", "int8"), ("y", "prune_heads(3,1)")])
    b = CompressionPlan("m", [("x", "int8(per_channel=True)"), ("y", "prune_heads(1,3)")])
    assert a == b and a.fingerprint() == b.fingerprint()
    assert CompressionPlan("m", [("x", "int4")]).fingerprint() != a.fingerprint()


def layers(model):
    return model.layer_modules()


def resolved_text(plan, model):
    return {name: [str(a) for a in acts] for name, acts in plan.resolve(model).items()}


def test_resolution_precedence(tiny_model):
    model = tiny_model("bert")
    first, second = layers(model)
    plan = CompressionPlan(
        model.name,
        [
            ("_default", "int8"),
            (r"re:bert\.encoder\.layer\.0\..*", "int4(block_size=16)"),
            (r"re:bert\.encoder\..*", "fp16"),  # later regex: loses where the first matches
            (first.query, "fp32"),  # explicit name beats both regexes
            ("_default", "sparsify(threshold=0.1)"),  # another kind: composes
            (second.layer, "prune_heads(2,0)"),  # a layer stands for its attention module
            (second.layer, "prune_neurons(ratio=0.25)"),  # and for its FFN
        ],
    )
    resolved = resolved_text(plan, model)
    assert resolved[first.query] == ["fp32", "sparsify(threshold=0.1)"]
    assert resolved[first.key] == ["int4(block_size=16)", "sparsify(threshold=0.1)"]
    assert resolved[second.key] == ["fp16", "sparsify(threshold=0.1)"]
    assert resolved["classifier"] == ["int8(per_channel=True)", "sparsify(threshold=0.1)"]
    assert resolved[second.attention] == ["prune_heads(0,2)"]
    assert resolved[second.ffn_in] == [
        "prune_neurons(ratio=0.25)",
        "fp16",
        "sparsify(threshold=0.1)",
    ]
    assert list(resolved) == [n for n in dict(model.model.named_modules()) if n in resolved]


def test_default_loses_to_explicit_without_conflict(tiny_model):
    model = tiny_model("distilbert")
    target = layers(model)[0].ffn_out
    plan = CompressionPlan(
        model.name,
        [("_default", "prune_weights(ratio=0.5)"), (target, "low_rank(rank=4)")],
    )
    resolved = resolved_text(plan, model)
    assert resolved[target] == ["low_rank(rank=4)"]  # the _default pruning is dropped there
    assert resolved[layers(model)[0].ffn_in] == ["prune_weights(ratio=0.5)"]


def test_structure_counts_heads_and_neurons(tiny_model):
    model = tiny_model("minilm")
    assert head_counts(model) == {layer.layer: 6 for layer in layers(model)}
    assert neuron_counts(model) == {layer.layer: 144 for layer in layers(model)}
    structure = ModelStructure.of(model)
    assert structure.head_size(layers(model)[0]) == 6
    assert structure.targets("attention") == [layer.attention for layer in layers(model)]


# -- bad plans: one test per case, each showing its message ------------------------------
def bad(model, entries, budget=None):
    return CompressionPlan(model.name, entries, budget=budget or {})


@pytest.fixture
def bert(tiny_model):
    return tiny_model("bert")


def test_unknown_module_name(bert):
    plan = bad(bert, {"bert.encoder.layer.7.attention.self.query": "int8"})
    with pytest.raises(
        PlanError,
        match=r"unknown module 'bert\.encoder\.layer\.7\.attention\.self\.query'; "
        r"did you mean 'bert\.encoder\.layer\.[01]\.attention\.self\.query'\?",
    ):
        plan.resolve(bert)


def test_regex_matching_nothing(bert):
    with pytest.raises(PlanError, match=r"'re:.*decoder.*' matches no module of the model"):
        bad(bert, {"re:.*decoder.*": "int8"}).resolve(bert)


def test_regex_matching_only_the_wrong_modules(bert):
    with pytest.raises(
        PlanError,
        match=r"'re:.*LayerNorm' matches 5 module\(s\).*none of which int8\(per_channel=True\) "
        r"applies to: it applies to Linear modules",
    ):
        bad(bert, {"re:.*LayerNorm": "int8"}).resolve(bert)


def test_invalid_regex():
    with pytest.raises(PlanError, match=r"pattern 're:\(\[' is not a valid regex"):
        CompressionPlan("m", {"re:([": "int8"})


def test_unknown_action_in_a_plan():
    with pytest.raises(
        PlanError, match=r"entry 'classifier': unknown compression action 'int2'; did you mean"
    ):
        CompressionPlan("m", {"classifier": "int2"})


def test_bad_argument_in_a_plan():
    with pytest.raises(PlanError, match=r"entry '_default': bad argument for prune_neurons"):
        CompressionPlan("m", {"_default": "prune_neurons(ratio=1)"})


def test_bad_plan_in_a_json_file_names_the_entry(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps(
            {
                "kind": "compression_plan",
                "version": 1,
                "model": "m",
                "entries": [["_default", "int8"], ["x", "int4(block_size=3)"]],
            }
        )
    )
    with pytest.raises(PlanError, match=r"entry 'x': bad argument for int4"):
        CompressionPlan.load(path)


def test_int8_on_a_layernorm(bert):
    name = layers(bert)[0].attention_norm
    with pytest.raises(
        PlanError,
        match=rf"int8\(per_channel=True\) applies to Linear modules; '{re.escape(name)}' is a "
        "LayerNorm",
    ):
        bad(bert, {name: "int8"}).resolve(bert)


def test_prune_heads_on_a_linear(bert):
    name = layers(bert)[0].query
    with pytest.raises(
        PlanError,
        match=r"prune_heads\(0\) applies to attention modules \(e.g. "
        rf"'bert\.encoder\.layer\.0\.attention\.self' or its layer .*'{re.escape(name)}' is a "
        "Linear",
    ):
        bad(bert, {name: "prune_heads(0)"}).resolve(bert)


def test_prune_neurons_on_the_ffn_output(bert):
    name = layers(bert)[1].ffn_out
    with pytest.raises(PlanError, match=r"prune_neurons\(ratio=0.3\) applies to FFN blocks"):
        bad(bert, {name: "prune_neurons(ratio=0.3)"}).resolve(bert)


def test_heads_that_do_not_exist(bert):
    with pytest.raises(
        PlanError, match=r"head\(s\) \[4, 9\] do not exist; the layer has heads 0..3"
    ):
        bad(bert, {layers(bert)[0].layer: "prune_heads(1,4,9)"}).resolve(bert)


def test_pruning_every_head(bert):
    with pytest.raises(PlanError, match=r"would remove every head of the layer"):
        bad(bert, {layers(bert)[0].attention: "prune_heads(0,1,2,3)"}).resolve(bert)


def test_neurons_that_do_not_exist(bert):
    with pytest.raises(PlanError, match=r"neuron\(s\) \[64, 70\] do not exist"):
        bad(bert, {layers(bert)[0].ffn_in: "prune_neurons(indices=[1, 64, 70])"}).resolve(bert)


def test_pruning_every_neuron(bert):
    every = "prune_neurons(indices=[" + ", ".join(str(i) for i in range(64)) + "])"
    with pytest.raises(PlanError, match=r"would remove every neuron"):
        bad(bert, {layers(bert)[0].ffn_in: every}).resolve(bert)


def test_rank_larger_than_the_matrix(bert):
    with pytest.raises(
        PlanError, match=r"low_rank\(rank=40\) on .*: rank exceeds min\(out, in\) = 32"
    ):
        bad(bert, {layers(bert)[0].query: "low_rank(rank=40)"}).resolve(bert)


def test_rank_larger_than_what_pruning_keeps(bert):
    first = layers(bert)[0]
    plan = bad(
        bert, [(first.layer, "prune_heads(0,1)"), (first.attention_output, "low_rank(rank=20)")]
    )
    with pytest.raises(PlanError, match=r"rank exceeds min\(out, in\) = 16 of its 32 × 16 kept"):
        plan.resolve(bert)


def test_size_below_the_embeddings(bert):
    with pytest.raises(
        PlanError,
        match=r"impossible budget size_mb=0.01: the parameters no action shrinks already take "
        r"0\.0\d\d MB \(embeddings alone 0\.0\d\d MB\)",
    ):
        bad(bert, {"_default": "int4"}, budget={"size_mb": 0.01}).resolve(bert)


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"bits_per_weight": 2}, r"impossible budget: bits_per_weight=2; no supported precision"),
        ({"params_removed": 1.0}, r"impossible budget: params_removed=1.0 must be in \[0, 1\)"),
        ({"sparsity": -0.1}, r"impossible budget: sparsity=-0.1"),
        ({"size_mb": 0}, r"impossible budget: size_mb=0"),
        ({"latency_ms": 3}, r"unknown budget \['latency_ms'\]; valid budgets: bits_per_weight, "),
        ({"size_mb": "big"}, r"budget size_mb must be a number, got 'big'"),
    ],
)
def test_impossible_or_unknown_budgets(budget, message):
    with pytest.raises(PlanError, match=message):
        CompressionPlan("m", {"_default": "int8"}, budget=budget)


def test_two_explicit_precisions_conflict(bert):
    name = layers(bert)[0].value
    with pytest.raises(
        PlanError,
        match=rf"conflicting actions on '{re.escape(name)}': int8\(per_channel=True\) \(from "
        r".*\), int4\(block_size=32\) \(from .*\); a module takes one precision action",
    ):
        bad(bert, [(name, "int8"), (name, "int4")]).resolve(bert)


def test_conflict_through_an_alias(bert):
    first = layers(bert)[0]
    plan = bad(bert, [(first.layer, "prune_heads(0)"), (first.attention, "prune_heads(1)")])
    with pytest.raises(
        PlanError, match=r"conflicting actions on .*prune_heads\(0\).*prune_heads\(1\)"
    ):
        plan.resolve(bert)


def test_repeating_an_explicit_action_is_no_conflict(bert):
    name = layers(bert)[0].value
    resolved = resolved_text(bad(bert, [(name, "int8"), (name, "int8(per_channel=True)")]), bert)
    assert resolved[name] == ["int8(per_channel=True)"]


def test_two_default_precisions_conflict(bert):
    with pytest.raises(PlanError, match=r"conflicting _default entries: int8.* and fp16"):
        bad(bert, [("_default", "int8"), ("_default", "fp16")]).resolve(bert)


def test_low_rank_and_unstructured_pruning_conflict(bert):
    name = layers(bert)[1].key
    with pytest.raises(
        PlanError,
        match=r"conflicting actions on .*: low_rank\(rank=4\) \(from .*\) and "
        r"prune_weights\(ratio=0.5\) \(from .*\) cannot be combined",
    ):
        bad(bert, [(name, "prune_weights(ratio=0.5)"), (name, "low_rank(rank=4)")]).resolve(bert)


def test_plan_errors_are_relcomp_errors():
    assert issubclass(PlanError, RelcompError) and issubclass(PlanError, ValueError)


def test_compressing_twice_is_refused(bert):
    with (
        compress_(bert, {"_default": "fp16"}),
        pytest.raises(
            PlanError, match=r"is already compressed \(fp32\|plan-\w+\); remove that handle first"
        ),
    ):
        compress_(bert, {"_default": "int8"})


def test_activation_quantization_needs_scales(bert):
    with pytest.raises(
        PlanError,
        match=r"int8\(activations=True\) needs calibrated activation scales for 14 module\(s\).*"
        r"activation_scales=calibrate\(model, batches\)",
    ):
        compress_(bert, {"_default": "int8(activations=True)"})
    assert bert.variant == "fp32"  # nothing was changed


def test_regexes_and_defaults_reach_structural_targets_and_skip_misfits(bert):
    plan = bad(
        bert,
        [
            (r"re:bert\.encoder\.layer\.\d+", "prune_heads(3)"),  # layers stand for attention
            ("_default", "low_rank(rank=16)"),  # skips the 1 × 32 classifier
        ],
    )
    resolved = resolved_text(plan, bert)
    assert [resolved[layer.attention] for layer in layers(bert)] == [["prune_heads(3)"]] * 2
    assert "classifier" not in resolved
    assert resolved["bert.pooler.dense"] == ["low_rank(rank=16)"]
    # the second layer's attention output keeps 24 inputs: rank 16 still fits
    assert resolved[layers(bert)[1].attention_output] == ["low_rank(rank=16)"]
