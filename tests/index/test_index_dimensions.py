"""Dimension shares are exact; selection rules choose what they say."""

from __future__ import annotations

import numpy as np
import pytest
from tests.fixtures import DOCUMENTS, QUERIES

from relcomp.errors import IndexSettingsError
from relcomp.index import (
    Calibration,
    dimension_shares,
    encode_queries,
    relevance_per_dimension,
    select_dimensions,
)


def test_shares_sum_exactly_to_the_models_similarity(tiny_model) -> None:
    model = tiny_model("bert", "bi-encoder")
    queries = encode_queries(model, list(QUERIES))
    documents = encode_queries(model, list(DOCUMENTS[: len(QUERIES)]))
    shares = dimension_shares(queries.astype(np.float64), documents.astype(np.float64))
    # The model's own score for each pair (an independent path: torch, cosine).
    scores = model.score(list(QUERIES), list(DOCUMENTS[: len(QUERIES)]))
    np.testing.assert_allclose(shares.sum(axis=1), scores, atol=1e-5)
    assert shares.shape == (len(QUERIES), queries.shape[1])
    assert np.abs(shares).max() > 1e-3  # not trivially zero


def test_relevance_is_the_mean_margin_share() -> None:
    rng = np.random.default_rng(1)
    q, p, n = (rng.normal(size=(5, 8)) for _ in range(3))
    relevance = relevance_per_dimension(Calibration(q, p, n))
    np.testing.assert_allclose(relevance.sum(), np.mean(np.sum(q * p, 1) - np.sum(q * n, 1)))
    np.testing.assert_allclose(relevance_per_dimension(Calibration(q, p)), (q * p).mean(axis=0))


def test_relevance_keeps_the_dimensions_that_separate_positives() -> None:
    rng = np.random.default_rng(2)
    corpus = rng.normal(size=(50, 6))
    queries = rng.normal(size=(20, 6)) * 0.1
    queries[:, [4, 1]] = 1.0  # the signal lives in dimensions 4 and 1
    positives = queries.copy()
    negatives = np.zeros_like(queries)
    calibration = Calibration(queries, positives, negatives)
    assert select_dimensions("relevance", corpus, 2, calibration).dims == (1, 4)
    assert select_dimensions("first", corpus, 2).dims == (0, 1)


def test_blind_rules() -> None:
    rng = np.random.default_rng(3)
    corpus = rng.normal(size=(400, 10)) * np.arange(1, 11)  # variance grows with the index
    assert select_dimensions("variance", corpus, 3).dims == (7, 8, 9)
    random = select_dimensions("random", corpus, 4, seed=5)
    assert random == select_dimensions("random", corpus, 4, seed=5)
    assert len(set(random.dims)) == 4 and random.projection is None
    pca = select_dimensions("pca", corpus, 3)
    assert pca.projection is not None and pca.projection.shape == (3, 10)
    np.testing.assert_allclose(pca.projection @ pca.projection.T, np.eye(3), atol=1e-5)
    # The first principal direction is the highest-variance axis here.
    assert np.abs(pca.projection[0]).argmax() == 9
    assert select_dimensions("relevance", corpus, None).dims == tuple(range(10))


@pytest.mark.parametrize("d", [0, -1, 11, 2.5, True])
def test_dims_outside_1_to_dimension(d) -> None:
    corpus = np.ones((4, 10))
    with pytest.raises(IndexSettingsError, match="between 1 and 10"):
        select_dimensions("first", corpus, d)


def test_relevance_without_calibration_is_an_error() -> None:
    with pytest.raises(IndexSettingsError, match="calibration"):
        select_dimensions("relevance", np.ones((4, 10)), 3)
