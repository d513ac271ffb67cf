"""The tiny models themselves: every family covered, real tokenizer classes, deterministic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from relcomp.models import ADAPTERS, supported_model_types
from tests.fixtures import (
    DOCUMENTS,
    FAMILIES,
    LONG_DOCUMENT,
    MAX_LENGTH,
    SHAPES,
    make_tiny_model_dir,
)

TOKENIZER_CLASSES = {
    "bert": "BertTokenizerFast",
    "minilm": "BertTokenizerFast",
    "roberta": "RobertaTokenizerFast",
    "xlm-roberta": "XLMRobertaTokenizerFast",
    "distilbert": "DistilBertTokenizerFast",
    "electra": "ElectraTokenizerFast",
    "mpnet": "MPNetTokenizerFast",
}


def test_every_adapter_family_has_a_tiny_model():
    assert set(ADAPTERS) <= set(FAMILIES)
    # camembert shares the roberta adapter; every other supported model type is built here.
    assert set(supported_model_types()) - {"camembert"} == set(FAMILIES)


@pytest.mark.parametrize("family", SHAPES)
def test_tiny_model_uses_the_family_fast_tokenizer(tiny_model, family):
    model = tiny_model(family)
    assert type(model.tokenizer).__name__ == TOKENIZER_CLASSES[family]
    assert model.tokenizer.is_fast
    expected_type = "bert" if family == "minilm" else family
    assert model.config.model_type == expected_type
    tokens = model.tokenizer.tokenize(DOCUMENTS[2])
    assert model.tokenizer.unk_token not in tokens
    # Whole words are in the vocabulary: "animal" is one token, not characters.
    assert any(token.strip("Ġ▁") == "animal" for token in tokens)
    assert len(model.tokenizer(LONG_DOCUMENT)["input_ids"]) > MAX_LENGTH


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta"])
def test_roberta_configs_match_the_real_ones(tiny_model, family):
    config = tiny_model(family).config
    assert config.type_vocab_size == 1
    assert config.pad_token_id == 1
    assert tiny_model(family).tokenizer.pad_token_id == 1
    assert config.max_position_embeddings == MAX_LENGTH + 2


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    first = make_tiny_model_dir(tmp_path, "bert", name="a")
    again = make_tiny_model_dir(tmp_path, "bert", name="b")
    other = make_tiny_model_dir(tmp_path, "bert", name="c", seed=1)
    assert (first / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()


def test_config_overrides_reach_the_saved_config(tmp_path):
    path = make_tiny_model_dir(tmp_path, "distilbert", num_hidden_layers=1, hidden_size=16)
    config = json.loads((path / "config.json").read_text())
    assert (config["n_layers"], config["dim"], config["initializer_range"]) == (1, 16, 0.2)


@pytest.mark.parametrize("family", SHAPES)
def test_activations_are_far_from_zero(tiny_model, family):
    model = tiny_model(family, "bi-encoder", normalize=False)
    embeddings = model.encode(list(DOCUMENTS[:3]))
    assert np.isfinite(embeddings).all()
    # With the default init (std 0.02) the pooled vectors barely differ between texts.
    assert np.abs(embeddings[0] - embeddings[1]).max() > 0.05


def test_bias_std_randomises_biases_and_norm_scales(tiny_model):
    model = tiny_model("bert", bias_std=0.1).model
    bias = model.get_submodule("bert.encoder.layer.0.attention.self.query").bias
    scale = model.get_submodule("bert.encoder.layer.0.output.LayerNorm").weight
    assert bias.abs().max() > 0.01
    assert not torch.allclose(scale, torch.ones_like(scale))
