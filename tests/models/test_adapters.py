"""Every module name an adapter gives exists in the model and has the expected type."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from relcomp.errors import UnsupportedArchitectureError
from relcomp.models import ADAPTERS, adapter_for, supported_model_types
from tests.fixtures import KINDS, SHAPES

NORMS = ("attention_norm", "ffn_norm")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", SHAPES)
def test_layer_module_names_exist_with_the_right_types(tiny_model, family, kind):
    model = tiny_model(family, kind)
    modules = dict(model.model.named_modules())
    layers = model.layer_modules()
    config = model.config
    assert len(layers) == getattr(config, "num_hidden_layers", getattr(config, "n_layers", None))
    assert [layer.index for layer in layers] == list(range(len(layers)))
    for layer in layers:
        for field in dataclasses.fields(layer):
            if field.name == "index":
                continue
            name = getattr(layer, field.name)
            assert name in modules, f"{family} {kind}: {field.name} {name!r} is not a module"
        for role, name in layer.linears().items():
            assert isinstance(modules[name], nn.Linear), f"{role} {name!r}"
        for role in NORMS:
            assert isinstance(modules[getattr(layer, role)], nn.LayerNorm)
        attention = modules[layer.attention]
        assert {modules[layer.query], modules[layer.key], modules[layer.value]} <= set(
            attention.modules()
        )
    assert model.num_heads() == (6 if family == "minilm" else 4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", SHAPES)
def test_embedding_names_exist(tiny_model, family, kind):
    model = tiny_model(family, kind)
    modules = dict(model.model.named_modules())
    names = model.adapter.embedding_names(model.model)
    assert set(names) == {"embeddings", "word_embeddings", "embedding_norm"}
    word_embeddings = modules[names["word_embeddings"]]
    assert isinstance(word_embeddings, nn.Embedding)
    assert word_embeddings.num_embeddings == len(model.tokenizer)
    assert isinstance(modules[names["embedding_norm"]], nn.LayerNorm)
    assert names["embeddings"] in modules


@pytest.mark.parametrize("family", SHAPES)
def test_head_modules_exist_in_cross_encoders(tiny_model, family):
    model = tiny_model(family, "cross-encoder")
    modules = dict(model.model.named_modules())
    adapter = model.adapter
    assert adapter.head_modules
    for name in adapter.head_modules:
        assert isinstance(modules.get(name), nn.Linear), f"{family}: head module {name!r}"
    assert modules[adapter.head_modules[-1]].out_features == 1
    if adapter.head_activation is not None:
        activation = modules.get(adapter.head_activation)
        # A swappable activation: a module of its own, with no parameters.
        assert activation is not None, f"{family}: {adapter.head_activation!r}"
        assert not list(activation.parameters())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", SHAPES)
def test_adapter_names_every_linear_of_the_model(tiny_model, family, kind):
    """Compression plans touch Linears by name: none may be left out of the adapter."""
    model = tiny_model(family, kind)
    named = {linear for layer in model.layer_modules() for linear in layer.linears().values()}
    if kind == "cross-encoder":
        named |= set(model.adapter.head_modules)
    assert set(model.named_linears()) == named


@pytest.mark.parametrize("family", SHAPES)
def test_bi_encoder_names_have_no_task_prefix(tiny_model, family):
    cross = tiny_model(family, "cross-encoder")
    bi = tiny_model(family, "bi-encoder")
    prefix = cross.adapter.prefix(cross.model)
    assert prefix == f"{cross.adapter.base_attribute}."
    assert bi.adapter.prefix(bi.model) == ""
    assert cross.layer_modules()[0].query == prefix + bi.layer_modules()[0].query


def test_every_model_type_maps_to_its_family():
    assert adapter_for("xlm-roberta") is ADAPTERS["roberta"]
    assert adapter_for("camembert") is ADAPTERS["roberta"]
    for family, adapter in ADAPTERS.items():
        assert adapter.family == family
        for model_type in adapter.model_types:
            assert model_type in supported_model_types()
            assert adapter_for(model_type) is adapter


def test_unknown_model_type_lists_the_supported_ones():
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2'") as error:
        adapter_for("gpt2")
    assert ", ".join(supported_model_types()) in str(error.value)
