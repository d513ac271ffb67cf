"""Actions: every string form parses back exactly; bad actions fail with one clear message."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relcomp.compression import (
    ACTIONS,
    FP16,
    FP32,
    Action,
    Int4,
    Int8,
    LowRank,
    PlanError,
    PruneHeads,
    PruneNeurons,
    PruneWeights,
    Sparsify,
    parse_action,
)

ratios = st.floats(min_value=0.0, max_value=1.0, exclude_max=True, allow_nan=False)
indices = st.lists(st.integers(0, 4095), min_size=1, max_size=12, unique=True).map(tuple)

#: Every action type, with any valid arguments.
actions = st.one_of(
    st.just(FP32()),
    st.just(FP16()),
    st.builds(Int8, per_channel=st.booleans(), activations=st.booleans()),
    st.builds(
        Int8, per_channel=st.booleans(), activations=st.just(True), channelwise=st.booleans()
    ),
    st.builds(Int4, block_size=st.sampled_from([16, 32, 64, 128, 256])),
    st.builds(PruneHeads, heads=st.lists(st.integers(0, 63), min_size=1, max_size=8, unique=True)),
    st.builds(PruneNeurons, ratio=ratios),
    st.builds(PruneNeurons, indices=indices),
    st.builds(PruneWeights, ratio=ratios),
    st.builds(
        Sparsify,
        threshold=st.floats(min_value=0.0, max_value=1e4, allow_nan=False),
        rank=st.one_of(st.none(), st.integers(1, 4096)),
    ),
    st.builds(LowRank, rank=st.integers(1, 8192)),
)


@settings(max_examples=300, deadline=None)
@given(actions)
def test_string_form_parses_back_exactly(action):
    text = str(action)
    parsed = parse_action(text)
    assert parsed == action
    assert str(parsed) == text
    assert Action.parse(text) == action


@pytest.mark.parametrize(
    "text",
    [
        "fp32",
        "fp16",
        "int8(per_channel=True)",
        "int8(per_channel=False)",
        "int8(per_channel=True, activations=True)",
        "int4(block_size=32)",
        "prune_heads(0,3)",
        "prune_neurons(ratio=0.3)",
        "prune_neurons(indices=[2, 5, 7])",
        "prune_weights(ratio=0.5)",
        "sparsify(threshold=0.12)",
        "low_rank(rank=64)",
    ],
)
def test_canonical_strings_are_fixed_points(text):
    assert str(Action.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("int8", "int8(per_channel=True)"),
        ("int8(activations=True)", "int8(per_channel=True, activations=True)"),
        ("INT4", "int4(block_size=32)"),
        ("low-rank(rank=8)", "low_rank(rank=8)"),
        (" prune_heads( 3 , 0 ) ", "prune_heads(0,3)"),
        ("prune_heads(heads=[1])", "prune_heads(1)"),
        ("prune_neurons(indices=[9, 1])", "prune_neurons(indices=[1, 9])"),
        ("sparsify(threshold=1)", "sparsify(threshold=1.0)"),
    ],
)
def test_other_spellings_normalise_to_the_canonical_form(text, canonical):
    assert str(parse_action(text)) == canonical


def test_registry_lists_every_action():
    assert ACTIONS.names() == [
        "drop_layers",
        "fp16",
        "fp32",
        "int4",
        "int8",
        "low_rank",
        "prune_heads",
        "prune_neurons",
        "prune_weights",
        "sparsify",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "int3",
            r"unknown compression action 'int3'; did you mean 'int8'\? Valid names: drop_layers, fp16, ",
        ),
        ("quantize(bits=4)", r"unknown compression action 'quantize'.*Valid names"),
        ("int4(block_size=30)", r"int4: block_size must be a power of two, got 30"),
        ("int4(block_size=8)", r"int4: block_size must be at least 16"),
        ("int4(32)", r"int4: takes keyword arguments only \(block_size\)"),
        ("int8(per_channel=1)", r"int8: per_channel must be True or False, got 1"),
        (
            "int8(bits=4)",
            r"int8: unknown argument\(s\) \['bits'\]; it takes per_channel, activations",
        ),
        ("prune_neurons(ratio=1.0)", r"prune_neurons: ratio must be in \[0, 1\), got 1.0"),
        ("prune_neurons(ratio=1.5)", r"ratio must be in \[0, 1\)"),
        ("prune_neurons()", r"prune_neurons: give exactly one of ratio=… or indices=\[…\]"),
        ("prune_neurons(ratio=0.1, indices=[1])", r"give exactly one of"),
        ("prune_weights(ratio=-0.1)", r"prune_weights: ratio must be in \[0, 1\)"),
        ("prune_weights", r"prune_weights: missing argument\(s\) \['ratio'\]"),
        (
            "prune_heads",
            r"prune_heads: missing argument\(s\) \['heads'\], e.g. 'prune_heads\(0,3\)'",
        ),
        ("prune_heads(0,0)", r"prune_heads: head indices repeat: \[0\]"),
        ("prune_heads(-1)", r"each head index must be at least 0"),
        ("prune_heads(0.5)", r"each head index must be an integer"),
        ("sparsify(threshold=-1)", r"sparsify: threshold must be finite and >= 0"),
        ("low_rank(rank=0)", r"low_rank: rank must be at least 1, got 0"),
        ("low_rank(rank=6.5)", r"low_rank: rank must be an integer, got 6.5"),
        ("int8(per_channel=os.system)", r"arguments must be numbers, True/False or lists"),
        ("int8(", r"cannot parse action 'int8\('"),
        ("int8(per_channel=True", r"cannot parse"),
        ("", r"cannot parse action ''"),
    ],
)
def test_bad_actions_name_the_problem(text, message):
    with pytest.raises(PlanError, match=message):
        parse_action(text)


def test_non_strings_are_refused():
    with pytest.raises(PlanError, match="an action must be a string"):
        parse_action(8)  # type: ignore[arg-type]


def test_actions_know_their_target_and_kind():
    assert Int8().target == "linear" and Int8().category == "precision"
    assert PruneHeads(heads=(0,)).target == "attention" and PruneHeads(heads=(0,)).structural
    assert PruneNeurons(ratio=0.3).target == "ffn" and PruneNeurons(ratio=0.3).structural
    assert not PruneWeights(ratio=0.3).structural
    assert [Int4.bits, Int8.bits, FP16.bits, FP32.bits] == [4, 8, 16, 32]
