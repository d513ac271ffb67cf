"""Compressed search against brute-force numpy references, and rescoring."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from relcomp.artifacts import IndexSettings
from relcomp.errors import IndexSettingsError
from relcomp.evaluation import top_k
from relcomp.index import CompressedIndex, calibrate_ranges, check_index_settings


def _data(n: int = 300, dim: int = 24, queries: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    documents = rng.normal(size=(n, dim)).astype(np.float32)
    documents /= np.linalg.norm(documents, axis=1, keepdims=True)
    query_vectors = rng.normal(size=(queries, dim)).astype(np.float32)
    query_vectors /= np.linalg.norm(query_vectors, axis=1, keepdims=True)
    return documents, query_vectors


def _settings(dim: int, **options) -> IndexSettings:
    fields = {
        "model": "m",
        "model_identity": "bi-encoder-0",
        "dimension": dim,
        "similarity": "cosine",
        "precision": "float32",
        "dims": tuple(range(dim)),
        **options,
    }
    return IndexSettings(**fields)


def test_int8_search_equals_numpy_on_decoded_codes() -> None:
    documents, queries = _data()
    ranges = calibrate_ranges(documents)
    index = CompressedIndex(_settings(24, precision="int8", ranges=ranges), documents)
    # Reference: 256 levels over each calibrated range, decoded at bin centres.
    bounds = np.asarray(ranges, dtype=np.float32).T
    low, width = bounds[0], bounds[1] - bounds[0]
    codes = np.clip(np.floor(255 * ((documents - low) / width)), 0, 255)
    decoded = (codes.astype(np.float64) + 0.5) / 255 * width + low
    # sentence-transformers' uint8 codes with the same ranges agree, but at a bin edge
    # where its float rounding differs (one level).
    st_codes = quantize_embeddings(documents, "uint8", ranges=bounds).astype(np.float64)
    assert np.abs(st_codes - codes).max() <= 1 and np.mean(st_codes == codes) > 0.99
    expected_rows, expected_scores = top_k(queries.astype(np.float64) @ decoded.T, 20)
    rows, scores = index.search(queries, 20)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    assert index.index_bytes == 300 * 24


def test_binary_search_equals_numpy_hamming() -> None:
    documents, queries = _data()
    index = CompressedIndex(_settings(24, precision="binary"), documents)
    signs = lambda x: np.where(x > 0, 1.0, -1.0)  # noqa: E731
    reference = signs(queries) @ signs(documents).T  # d - 2 × Hamming distance
    # Every document: the whole order, ties by row ascending, must match exactly.
    expected_rows, expected_scores = top_k(reference, 300)
    rows, scores = index.search(queries, 300)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(scores, expected_scores)
    # A cut: the same scores, and the same documents above the last tied score.
    rows, scores = index.search(queries, 10)
    np.testing.assert_array_equal(scores, expected_scores[:, :10])
    for row, score, expected in zip(rows, scores, expected_rows[:, :10], strict=True):
        above = score > score[-1]
        np.testing.assert_array_equal(row[above], expected[above])
    assert index.index_bytes == 300 * 3


def test_float16_and_float32_search_equal_numpy() -> None:
    documents, queries = _data()
    for precision, stored in (("float32", documents), ("float16", documents.astype(np.float16))):
        index = CompressedIndex(_settings(24, precision=precision), documents)
        expected_rows, expected_scores = top_k(queries @ stored.astype(np.float32).T, 15)
        rows, scores = index.search(queries, 15)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


@pytest.mark.parametrize("precision", ["binary", "int8", "float16"])
def test_rescoring_recovers_the_float_ranking_when_it_covers_the_corpus(precision: str) -> None:
    documents, queries = _data()
    k = 10
    ranges = calibrate_ranges(documents) if precision == "int8" else ()
    plain = CompressedIndex(_settings(24, precision=precision, ranges=ranges), documents)
    rescored = CompressedIndex(
        _settings(24, precision=precision, ranges=ranges, rescore=30, rescore_with="float32"),
        documents,
    )
    expected_rows, expected_scores = top_k(
        queries.astype(np.float64) @ documents.T.astype(np.float64), k
    )
    rows, scores = rescored.search(queries, k)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
    if precision == "binary":  # the compressed ranking alone differs, so rescoring did the work
        assert not np.array_equal(plain.search(queries, k)[0], expected_rows)


def test_binary_rescoring_with_its_own_bits_and_with_int8() -> None:
    documents, queries = _data()
    ranges = calibrate_ranges(documents)
    signs = np.where(documents > 0, 1.0, -1.0)
    index = CompressedIndex(
        _settings(24, precision="binary", rescore=30, rescore_with="index"), documents
    )
    expected_rows, _ = top_k(queries.astype(np.float64) @ signs.T, 10)
    np.testing.assert_array_equal(index.search(queries, 10)[0], expected_rows)
    assert index.rescore_bytes == 0
    with_int8 = CompressedIndex(
        _settings(24, precision="binary", rescore=30, rescore_with="int8", ranges=ranges), documents
    )
    int8 = CompressedIndex(_settings(24, precision="int8", ranges=ranges), documents)
    np.testing.assert_array_equal(with_int8.search(queries, 10)[0], int8.search(queries, 10)[0])
    assert with_int8.rescore_bytes == 300 * 24


def test_kept_dimensions_and_projection() -> None:
    documents, queries = _data()
    kept = (1, 5, 7, 20)
    index = CompressedIndex(_settings(24, dims=kept, selection="first"), documents)
    expected_rows, _ = top_k(queries[:, kept] @ documents[:, kept].T, 5)
    np.testing.assert_array_equal(index.search(queries, 5)[0], expected_rows)
    assert index.index_bytes == 300 * 4 * 4
    with pytest.raises(IndexSettingsError, match="projection"):
        CompressedIndex(_settings(24, dims=(0, 1), selection="pca"), documents)


@pytest.mark.parametrize(
    ("precision", "rescore", "rescore_with", "message"),
    [
        ("int8", 0, "float32", "at least 1"),
        ("binary", -3, "int8", "at least 1"),
        ("binary", 2.5, "int8", "whole number"),
        ("int8", 4, "int8", "changes nothing"),
        ("float32", 4, "index", "changes nothing"),
    ],
)
def test_bad_rescoring_settings(precision: str, rescore, rescore_with: str, message: str) -> None:
    with pytest.raises(IndexSettingsError, match=message):
        check_index_settings(precision, rescore, rescore_with)


def test_unknown_precision_lists_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="binary, float16, float32, int8"):
        check_index_settings("int4", 1, "float32")
