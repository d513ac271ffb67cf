"""index.json: a round trip, its projection beside it, and refusal of a wrong file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relcomp.artifacts import IndexSettings
from relcomp.errors import DataFormatError, IndexSettingsError
from relcomp.index import PROJECTION_FILE, load_index, save_index


def _settings(**options) -> IndexSettings:
    fields = {
        "model": "all-MiniLM-L6-v2",
        "model_identity": "bi-encoder-0123456789abcdef",
        "dimension": 4,
        "similarity": "cosine",
        "precision": "int8",
        "dims": (3, 0),
        "selection": "relevance",
        "ranges": ((-0.25, 0.5), (-1.0, 1.0)),
        "rescore": 4,
        "rescore_with": "float32",
        "calibration": {"dataset": "scifact", "split": "train", "queries": 809},
        **options,
    }
    return IndexSettings(**fields)


def test_round_trip(tmp_path: Path) -> None:
    settings = _settings()
    path = save_index(settings, None, tmp_path)
    assert path.name == "index.json"
    loaded, projection = load_index(tmp_path)
    assert loaded == settings and projection is None
    data = json.loads(path.read_text())
    assert data["kind"] == "index_settings" and data["version"] == 1
    assert data["ranges"] == [[-0.25, 0.5], [-1.0, 1.0]] and data["rescore"] == 4
    assert settings.bytes_per_document == 2
    assert _settings(precision="binary", dims=tuple(range(4))).bytes_per_document == 1


def test_pca_projection_travels_with_its_digest(tmp_path: Path) -> None:
    projection = np.eye(4, dtype=np.float32)[:2]
    settings = _settings(
        selection="pca",
        dims=(0, 1),
        projection_file=PROJECTION_FILE,
        projection_sha256=hashlib.sha256(projection.tobytes()).hexdigest(),
    )
    save_index(settings, projection, tmp_path)
    loaded, loaded_projection = load_index(tmp_path / "index.json")
    assert loaded == settings
    np.testing.assert_array_equal(loaded_projection, projection)
    np.save(tmp_path / PROJECTION_FILE, projection * 2)
    with pytest.raises(IndexSettingsError, match="not the projection"):
        load_index(tmp_path)


def test_wrong_version_or_kind(tmp_path: Path) -> None:
    data = _settings().to_dict()
    (tmp_path / "index.json").write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(DataFormatError, match="version 99"):
        load_index(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({**data, "kind": "compression_plan"}))
    with pytest.raises(DataFormatError, match="index_settings"):
        load_index(tmp_path)


finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(deadline=None, database=None, max_examples=60)
@given(
    dims=st.lists(st.integers(0, 383), min_size=1, max_size=16, unique=True),
    bounds=st.lists(st.tuples(finite, finite), min_size=0, max_size=16),
    precision=st.sampled_from(["float32", "float16", "int8", "binary"]),
    rescore=st.integers(1, 50),
)
def test_round_trip_for_generated_settings(dims, bounds, precision, rescore) -> None:
    settings_ = _settings(
        dims=tuple(dims), ranges=tuple(bounds), precision=precision, rescore=rescore, dimension=384
    )
    assert IndexSettings.from_json(settings_.to_json()) == settings_
