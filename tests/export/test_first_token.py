"""A cross-encoder's last layer at the first token: the same scores, in torch and exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from relcomp.artifacts import CompressionPlan
from relcomp.compression import prune_physically
from relcomp.export import export_bundle
from relcomp.export.first_token import first_token_last_layer
from relcomp.models import load_model
from tests.fixtures import DOCUMENTS, LONG_DOCUMENT, QUERIES

PAIRS = (list(QUERIES), [*DOCUMENTS[: len(QUERIES) - 1], LONG_DOCUMENT])  # padding and truncation


@pytest.mark.parametrize("family", ["minilm", "roberta", "electra"])
def test_first_token_scores_equal_the_full_layer_in_torch(tiny_model: Any, family: str) -> None:
    model = tiny_model(family)
    full = model.score(*PAIRS)
    with first_token_last_layer(model) as applied:
        cut = model.score(*PAIRS)
    assert applied
    np.testing.assert_allclose(cut, full, atol=1e-5)
    np.testing.assert_array_equal(model.score(*PAIRS), full)  # removed: bit for bit
    pruned = prune_physically(model, CompressionPlan("m", {"_default": "prune_neurons(ratio=0.5)"}))
    pruned_full = pruned.score(*PAIRS)
    with first_token_last_layer(pruned):
        np.testing.assert_allclose(pruned.score(*PAIRS), pruned_full, atol=1e-5)


def test_the_exported_graph_gives_the_same_scores(tiny_model: Any, tmp_path: Path) -> None:
    model = tiny_model("minilm")
    full = export_bundle(model, tmp_path / "full")
    cut = export_bundle(model, tmp_path / "cut", first_token=True)
    assert any("first token only" in note for note in cut.notes)
    full_scores = load_model(tmp_path / "full").score(*PAIRS)
    np.testing.assert_allclose(load_model(tmp_path / "cut").score(*PAIRS), full_scores, atol=1e-5)
    assert full.fusion.get("Attention", 0) >= 1


@pytest.mark.parametrize(
    ("family", "kind"), [("minilm", "bi-encoder"), ("distilbert", "cross-encoder")]
)
def test_models_it_does_not_apply_to_are_left_alone(
    tiny_model: Any, tmp_path: Path, family: str, kind: str
) -> None:
    model = tiny_model(family, kind)
    with first_token_last_layer(model) as applied:
        assert not applied
    bundle = export_bundle(model, tmp_path / "bundle", first_token=True)
    assert any("not applicable" in note for note in bundle.notes)
