"""Physical pruning: a smaller copy whose outputs match wherever the pruned parts did nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from relcomp.artifacts import CompressionPlan
from relcomp.compression import (
    PlanError,
    compress_,
    estimate_size,
    load_pruned_model,
    parameter_count,
    prune_physically,
    repair_pruned_heads,
)
from relcomp.compression.prune import FFN_WIDTH_KEY
from relcomp.models import load_model
from tests.compression.test_realise import outputs

FAMILIES = ["bert", "distilbert", "mpnet"]


def zero_head_and_neurons(model, layer_index: int, head: int, neurons: list[int]) -> None:
    """Make a head and some FFN neurons contribute nothing, as pruning would."""
    layers = model.layer_modules()
    get = model.model.get_submodule
    with torch.no_grad():
        attention = layers[layer_index]
        size = get(attention.attention_output).in_features // model.num_heads()
        channels = slice(head * size, (head + 1) * size)
        get(attention.value).weight[channels] = 0
        get(attention.value).bias[channels] = 0
        get(attention.attention_output).weight[:, channels] = 0
        ffn = layers[1 - layer_index]
        get(ffn.ffn_in).weight[neurons] = 0
        get(ffn.ffn_in).bias[neurons] = 0
        get(ffn.ffn_out).weight[:, neurons] = 0


@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_parts_that_were_zero_keeps_outputs(tiny_model, family, kind):
    model = tiny_model(family, kind)
    layers = model.layer_modules()
    neurons = [3, 10, 11, 40]
    zero_head_and_neurons(model, 0, head=2, neurons=neurons)
    before = outputs(model)
    plan = CompressionPlan(
        model.name,
        {
            layers[0].layer: "prune_heads(2)",
            layers[1].ffn_in: f"prune_neurons(indices={neurons})",
        },
    )
    pruned = prune_physically(model, plan)
    np.testing.assert_allclose(outputs(pruned), before, atol=1e-5)
    np.testing.assert_array_equal(outputs(model), before)  # the original is untouched
    hidden, head_size = 32, 8
    removed = (3 * (hidden * head_size + head_size) + hidden * head_size) + len(neurons) * (
        hidden + 1 + hidden
    )
    assert parameter_count(model) - parameter_count(pruned) == removed
    assert pruned.variant.startswith("fp32|pruned-") and pruned.cache_key != model.cache_key
    assert pruned.model.config.pruned_heads == {0: [2]}


@pytest.mark.parametrize("family", FAMILIES)
def test_masks_and_physical_pruning_agree_under_quantization(tiny_model, family):
    model = tiny_model(family)
    layers = model.layer_modules()
    plan = CompressionPlan(
        model.name,
        [
            ("_default", "int4(block_size=16)"),
            (layers[1].value, "int8"),
            (layers[0].ffn_out, "prune_weights(ratio=0.25)"),
            (layers[0].layer, "prune_heads(0,3)"),
            (layers[1].layer, "prune_heads(1)"),
            ("_default", "prune_neurons(ratio=0.25)"),
        ],
    )
    with compress_(model, plan):
        masked = outputs(model)
    structural, rest = plan.split_structural()
    assert len(structural.entries) == 3 and len(rest.entries) == 3
    pruned = prune_physically(model, plan)
    config = pruned.model.config
    assert getattr(config, "intermediate_size", getattr(config, "hidden_dim", None)) == 48
    assert estimate_size(pruned, rest).total_bytes == estimate_size(model, plan).total_bytes
    with compress_(pruned, rest):
        np.testing.assert_allclose(outputs(pruned), masked, atol=1e-5)


def test_pruning_twice_counts_heads_as_the_original_did(tiny_model):
    model = tiny_model("mpnet", "bi-encoder")
    layer = model.layer_modules()[1].layer
    once = prune_physically(model, CompressionPlan(model.name, {layer: "prune_heads(1)"}))
    twice = prune_physically(once, CompressionPlan(model.name, {layer: "prune_heads(3)"}))
    both = prune_physically(model, CompressionPlan(model.name, {layer: "prune_heads(1,3)"}))
    np.testing.assert_allclose(outputs(twice), outputs(both), atol=1e-6)
    with compress_(once, {layer: "prune_heads(3)"}):  # masks count the same way
        np.testing.assert_allclose(outputs(once), outputs(both), atol=1e-6)
    with pytest.raises(PlanError, match=r"head\(s\) \[1\] are already pruned"):
        CompressionPlan(model.name, {layer: "prune_heads(1)"}).resolve(once)


def test_uniform_pruning_round_trips_through_save_pretrained(tiny_model, tmp_path):
    model = tiny_model("bert")
    plan = CompressionPlan(
        model.name,
        {"_default": "prune_neurons(ratio=0.5)", model.layer_modules()[0].layer: "prune_heads(1)"},
    )
    pruned = prune_physically(model, plan)
    assert pruned.model.config.intermediate_size == 32
    assert not hasattr(pruned.model.config, FFN_WIDTH_KEY)
    pruned.model.save_pretrained(tmp_path)
    pruned.tokenizer.save_pretrained(tmp_path)
    reloaded = load_model(tmp_path)
    np.testing.assert_allclose(outputs(reloaded), outputs(pruned), atol=1e-6)
    assert parameter_count(reloaded) == parameter_count(pruned)


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_layers_of_different_widths_reload_through_the_relcomp_loader(tiny_model, tmp_path, family):
    model = tiny_model(family)
    layers = model.layer_modules()
    plan = CompressionPlan(
        model.name,
        {
            layers[0].layer: "prune_neurons(ratio=0.5)",
            layers[1].layer: "prune_heads(0,2)",
        },
    )
    pruned = prune_physically(model, plan)
    config = pruned.model.config
    assert getattr(config, FFN_WIDTH_KEY) == [32, 64]
    pruned.model.save_pretrained(tmp_path)
    torch_model = load_pruned_model(AutoModelForSequenceClassification, tmp_path)
    assert torch_model.config.pruned_intermediate_sizes == [32, 64]
    features = pruned.tokenize(["what is a cat"], ["a cat is an animal"])
    with torch.inference_mode():
        expected = pruned.model(**features).logits
        np.testing.assert_allclose(torch_model(**features).logits, expected, atol=1e-6)
    assert repair_pruned_heads(torch_model) == (1 if family == "mpnet" else 0)


def test_a_compressed_model_is_not_pruned(tiny_model):
    model = tiny_model("bert")
    plan = CompressionPlan(model.name, {"_default": "prune_neurons(ratio=0.5)"})
    with (
        compress_(model, {"_default": "int8"}),
        pytest.raises(
            PlanError, match="is compressed in place; remove the handle before pruning physically"
        ),
    ):
        prune_physically(model, plan)
