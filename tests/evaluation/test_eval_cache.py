from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

import relcomp.evaluation.first_stage as first_stage
from relcomp.evaluation import (
    Cache,
    bm25_retrieve,
    default_cache_dir,
    dense_retrieve,
    encode_corpus,
    load_beir,
)

VECTORS = {
    "Cats Cats purr when they are happy.": [1.0, 0.0],
    "Dogs bark at the postman.": [0.0, 1.0],
    "Purring Why do cats purr? Nobody knows for sure.": [0.9, 0.1],
    "Fish swim in the sea.": [0.5, 0.5],
    "why do cats purr": [1.0, 0.0],
    "barking dogs": [0.0, 1.0],
    "fish": [0.5, 0.4],
}


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def test_cache_lives_under_the_environment_folder(_isolated_cache: Path) -> None:
    assert default_cache_dir() == _isolated_cache
    assert Cache().directory == _isolated_cache


def test_default_cache_folder_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELCOMP_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "relcomp"


def test_second_dense_run_does_not_call_the_model(
    toy_path: Path, fake_encoder, _isolated_cache: Path
) -> None:
    dataset = load_beir(toy_path)
    model = fake_encoder(VECTORS)
    first = dense_retrieve(model, dataset, depth=3)
    assert model.calls == [4, 2]  # the corpus, then the two judged queries
    second = dense_retrieve(model, dataset, depth=3)
    assert second == first
    assert model.calls == [4, 2]
    # A fresh model object with the same identity also hits the cache.
    twin = fake_encoder(VECTORS)
    assert dense_retrieve(twin, dataset, depth=3) == first
    assert twin.calls == []
    assert not [p for p in _files(_isolated_cache) if p.name.endswith(".tmp")]


def test_depth_changes_the_run_key_but_not_the_embeddings(toy_path: Path, fake_encoder) -> None:
    dataset = load_beir(toy_path)
    model = fake_encoder(VECTORS)
    dense_retrieve(model, dataset, depth=3)
    assert model.calls == [4, 2]
    run = dense_retrieve(model, dataset, depth=2)
    assert model.calls == [4, 2, 2]  # queries re-encoded; corpus embeddings from the cache
    assert all(len(docs) == 2 for docs in run.values())
    dense_retrieve(model, dataset, ["q1"], depth=2)  # other queries: another run entry
    assert model.calls == [4, 2, 2, 1]


def test_cache_key_depends_on_every_setting() -> None:
    material = {"model": "m", "depth": 100, "corpus.jsonl": {"size": 1, "mtime_ns": 2}}
    key = Cache.key("dense", material)
    assert key == Cache.key("dense", dict(reversed(list(material.items()))))
    assert key != Cache.key("dense", {**material, "depth": 30})
    assert key != Cache.key("dense", {**material, "model": "m2"})
    assert key != Cache.key("dense", {**material, "corpus.jsonl": {"size": 1, "mtime_ns": 3}})
    assert key != Cache.key("bm25", material)
    assert key.startswith("dense-")


def test_model_identity_and_data_change_the_key(toy_path: Path, fake_encoder) -> None:
    dataset = load_beir(toy_path)
    dense_retrieve(fake_encoder(VECTORS, cache_key="v1"), dataset, depth=3)
    other = fake_encoder(VECTORS, cache_key="v2")
    dense_retrieve(other, dataset, depth=3)
    assert other.calls == [4, 2]

    # A copy of the same bytes (assets provisioned again) keeps the cache ...
    corpus = toy_path / "corpus.jsonl"
    stat = corpus.stat()
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = fake_encoder(VECTORS, cache_key="v1")
    dense_retrieve(touched, load_beir(toy_path), depth=3)
    assert touched.calls == []  # run and embeddings both from the cache
    # ... and changed bytes do not (a blank line: the same documents, another file).
    corpus.write_text(corpus.read_text() + "\n")
    edited = fake_encoder(VECTORS, cache_key="v1")
    dense_retrieve(edited, load_beir(toy_path), depth=3)
    assert edited.calls == [4, 2]


def test_caching_can_be_turned_off(toy_path: Path, fake_encoder, _isolated_cache: Path) -> None:
    dataset = load_beir(toy_path)
    model = fake_encoder(VECTORS)
    dense_retrieve(model, dataset, depth=3, use_cache=False)
    dense_retrieve(model, dataset, depth=3, use_cache=False)
    assert model.calls == [4, 2, 4, 2]
    bm25_retrieve(dataset, depth=3, use_cache=False)
    assert _files(_isolated_cache) == []


def test_a_model_without_cache_key_is_never_cached(
    toy_path: Path, fake_encoder, _isolated_cache: Path
) -> None:
    dataset = load_beir(toy_path)
    model = fake_encoder(VECTORS, cache_key=None)
    dense_retrieve(model, dataset, depth=3)
    dense_retrieve(model, dataset, depth=3)
    assert model.calls == [4, 2, 4, 2]
    assert _files(_isolated_cache) == []


def test_explicit_cache_dir(toy_path: Path, fake_encoder, tmp_path: Path) -> None:
    model = fake_encoder(VECTORS)
    dense_retrieve(model, load_beir(toy_path), depth=3, cache_dir=tmp_path / "elsewhere")
    names = [p.relative_to(tmp_path / "elsewhere").parts[0] for p in _files(tmp_path / "elsewhere")]
    assert sorted(set(names)) == ["embeddings", "runs"]


def test_second_bm25_run_does_not_recompute(
    toy_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = first_stage._bm25_run

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(first_stage, "_bm25_run", counting)
    dataset = load_beir(toy_path)
    first = bm25_retrieve(dataset, depth=3)
    assert bm25_retrieve(dataset, depth=3) == first
    assert len(calls) == 1
    bm25_retrieve(dataset, depth=2)
    assert len(calls) == 2
    bm25_retrieve(dataset, depth=2, k1=1.2)
    assert len(calls) == 3


def test_embeddings_round_trip_exactly(toy_path: Path, fake_encoder) -> None:
    dataset = load_beir(toy_path)
    vectors = {text: np.random.RandomState(len(text)).rand(8).tolist() for text in VECTORS}
    computed = encode_corpus(fake_encoder(vectors), dataset)
    cached = encode_corpus(fake_encoder(vectors), dataset)
    assert cached.dtype == np.float32
    np.testing.assert_array_equal(cached, computed)


def test_unreadable_entries_are_recomputed(
    toy_path: Path, fake_encoder, _isolated_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = load_beir(toy_path)
    first = dense_retrieve(fake_encoder(VECTORS), dataset, depth=3)
    for path in _files(_isolated_cache):
        if path.suffix in (".json", ".npy", ".npz") and path.parent.name in ("runs", "embeddings"):
            path.write_bytes(b"garbage")
    model = fake_encoder(VECTORS)
    with caplog.at_level(logging.WARNING, logger="relcomp.evaluation.cache"):
        assert dense_retrieve(model, dataset, depth=3) == first
    assert model.calls == [4, 2]
    assert "ignoring an unreadable cache entry" in caplog.text
    again = fake_encoder(VECTORS)
    dense_retrieve(again, dataset, depth=3)
    assert again.calls == []


def test_cache_run_helper_and_disabled_cache(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute() -> dict[str, dict[str, float]]:
        calls.append(1)
        return {"q": {"d": 0.1 + 0.2}}

    cache = Cache(tmp_path / "c")
    assert cache.run("x", {"a": 1}, compute) == {"q": {"d": 0.1 + 0.2}}
    assert cache.run("x", {"a": 1}, compute) == {
        "q": {"d": 0.1 + 0.2}
    }  # floats survive JSON exactly
    assert len(calls) == 1
    Cache(tmp_path / "c", enabled=False).run("x", {"a": 1}, compute)
    assert len(calls) == 2
    assert cache.run_path("x", {"a": 1}).is_file()
