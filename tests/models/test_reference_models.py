"""Real models from ../shared/assets and the installed default retriever (``-m slow``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from relcomp.models import CrossEncoder, load_model

ASSETS = Path(
    os.environ.get(
        "RELCOMP_ASSETS", Path(__file__).resolve().parents[2] / ".." / "shared" / "assets"
    )
)
RERANKER = ASSETS / "models" / "minilm-l6-reranker"
QUERY = "How many people live in Berlin?"
BERLIN = "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers."
NEW_YORK = "New York City is famous for the Metropolitan Museum of Art."

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reranker_path() -> Path:
    if not (RERANKER / "config.json").is_file():
        pytest.skip(f"{RERANKER} is not there (set RELCOMP_ASSETS to the shared assets folder)")
    return RERANKER


def test_minilm_reranker_gives_the_documented_logits(reranker_path):
    model = load_model(reranker_path)
    assert isinstance(model, CrossEncoder)
    assert model.adapter.family == "bert"
    assert len(model.layer_modules()) == 6
    scores = model.score([QUERY, QUERY], [BERLIN, NEW_YORK])
    np.testing.assert_allclose(scores, [2.99, 2.27], atol=0.01)


def test_minilm_reranker_equals_sentence_transformers(reranker_path):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    pairs = [(QUERY, BERLIN), (QUERY, NEW_YORK), ("what is a cat", "A cat is a small animal.")]
    model = load_model(reranker_path)
    scores = model.score([q for q, _ in pairs], [d for _, d in pairs])
    reference = STCrossEncoder(str(reranker_path), device="cpu").predict(
        pairs, activation_fn=torch.nn.Identity()
    )
    np.testing.assert_allclose(scores, reference, atol=1e-5, rtol=0)


def test_default_retriever_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    model = load_model("all-MiniLM-L6-v2")
    reference = SentenceTransformer(str(model.path), device="cpu")
    texts = [QUERY, BERLIN, NEW_YORK]
    np.testing.assert_allclose(model.encode(texts), reference.encode(texts), atol=1e-5, rtol=0)
    scores = model.score([QUERY, QUERY], [BERLIN, NEW_YORK])
    assert scores[0] > scores[1]
