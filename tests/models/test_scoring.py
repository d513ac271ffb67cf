"""relcomp's scores equal sentence-transformers' on the same folders; truncation is counted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures import DOCUMENTS, LONG_DOCUMENT, QUERIES, SHAPES

PAIRS = [
    (QUERIES[0], DOCUMENTS[0]),
    (QUERIES[0], DOCUMENTS[1]),
    (QUERIES[1], DOCUMENTS[2]),
    (QUERIES[3], DOCUMENTS[4]),
    (QUERIES[2], LONG_DOCUMENT),  # truncated: longest_first must cut the same tokens
    (" ".join(QUERIES), LONG_DOCUMENT),  # both sides cut, as longest_first does
    ("Ünïcode, UPPER case & 42 digits!", "out-of-vocabulary words: zyxq"),
]
TEXTS = [*QUERIES, *DOCUMENTS, LONG_DOCUMENT, "Ünïcode, UPPER case & 42 digits!"]
BI_ENCODER_VARIANTS = [
    pytest.param({}, id="mean-normalized"),
    pytest.param({"normalize": False}, id="mean"),
    pytest.param({"pooling": "cls"}, id="cls-normalized"),
    pytest.param({"pooling": "cls", "normalize": False}, id="cls"),
]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("family", SHAPES)
def test_cross_encoder_scores_equal_sentence_transformers_logits(tiny_model_path, family):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from relcomp.models import load_model

    path = tiny_model_path(family, "cross-encoder")
    model = load_model(path)
    scores = model.score([q for q, _ in PAIRS], [d for _, d in PAIRS], batch_size=4)
    reference = STCrossEncoder(str(path), device="cpu").predict(
        PAIRS, activation_fn=torch.nn.Identity(), batch_size=4
    )
    assert scores.dtype == np.float32
    assert scores.shape == (len(PAIRS),)
    np.testing.assert_allclose(scores, reference, atol=1e-5, rtol=0)
    # The pairs do not all score alike: the comparison is not vacuous.
    assert np.ptp(scores) > 1e-3


@pytest.mark.parametrize("variant", BI_ENCODER_VARIANTS)
@pytest.mark.parametrize("family", SHAPES)
def test_bi_encoder_embeddings_equal_sentence_transformers(tiny_model_path, family, variant):
    from sentence_transformers import SentenceTransformer

    from relcomp.models import load_model

    path = tiny_model_path(family, "bi-encoder", **variant)
    model = load_model(path)
    assert model.pooling == variant.get("pooling", "mean")
    assert model.normalize == variant.get("normalize", True)
    reference_model = SentenceTransformer(str(path), device="cpu")
    embeddings = model.encode(TEXTS, batch_size=3)
    reference = reference_model.encode(TEXTS, batch_size=3, convert_to_numpy=True)
    np.testing.assert_allclose(embeddings, reference, atol=1e-5, rtol=0)
    norms = np.linalg.norm(embeddings, axis=-1)
    if model.normalize:
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    else:
        assert np.abs(norms - 1.0).max() > 1e-2

    queries = [q for q, _ in PAIRS]
    documents = [d for _, d in PAIRS]
    scores = model.score(queries, documents, batch_size=2)
    expected = cosine(reference_model.encode(queries), reference_model.encode(documents))
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
def test_scores_do_not_depend_on_batching(tiny_model, kind):
    model = tiny_model("roberta", kind)
    queries = [q for q, _ in PAIRS]
    documents = [d for _, d in PAIRS]
    one_by_one = model.score(queries, documents, batch_size=1)
    together = model.score(queries, documents, batch_size=len(PAIRS))
    np.testing.assert_allclose(one_by_one, together, atol=1e-5, rtol=0)


def test_bi_encoder_score_repeats_give_identical_scores(tiny_model):
    model = tiny_model("bert", "bi-encoder")
    scores = model.score([QUERIES[0], QUERIES[0]], [DOCUMENTS[0], DOCUMENTS[0]])
    assert scores[0] == scores[1]
    assert -1.0 - 1e-6 <= scores[0] <= 1.0 + 1e-6


@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
def test_mismatched_or_single_string_inputs_are_refused(tiny_model, kind):
    model = tiny_model("bert", kind)
    with pytest.raises(ValueError, match="2 queries and 1 documents"):
        model.score(list(QUERIES[:2]), [DOCUMENTS[0]])
    with pytest.raises(TypeError, match="single string"):
        model.score(QUERIES[0], DOCUMENTS[0])


# -- truncation -----------------------------------------------------------------------------
@pytest.mark.parametrize("family", SHAPES)
def test_cross_encoder_counts_truncated_pairs(tiny_model, family):
    model = tiny_model(family, "cross-encoder")
    model.score([QUERIES[0], QUERIES[1]], [DOCUMENTS[0], DOCUMENTS[2]])
    assert model.truncation["inputs"] == 2
    assert model.truncation["truncated"] == 0
    model.score([QUERIES[0], QUERIES[2]], [LONG_DOCUMENT, DOCUMENTS[3]])
    assert model.truncation["inputs"] == 4
    assert model.truncation["truncated"] == 1
    assert "1 of 4 inputs" in model.truncation_summary()


@pytest.mark.parametrize("family", SHAPES)
def test_bi_encoder_counts_truncated_texts(tiny_model, family):
    model = tiny_model(family, "bi-encoder")
    model.encode(list(DOCUMENTS[:3]))
    assert model.truncation == {"inputs": 3, "truncated": 0}
    model.encode([LONG_DOCUMENT, DOCUMENTS[0]])
    assert model.truncation == {"inputs": 5, "truncated": 1}
