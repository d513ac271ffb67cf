"""From per-token relevance tensors to :class:`~relcomp.artifacts.TokenRelevance` artifacts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from relcomp.artifacts import TokenRelevance

__all__ = [
    "DOCUMENT",
    "QUERY",
    "SPECIAL",
    "artifacts_from_batch",
    "merge_sides",
    "token_relevance_from_encoding",
    "words_from_encoding",
]

QUERY, DOCUMENT, SPECIAL = 0, 1, -1


def words_from_encoding(
    encoding: Any, texts: Sequence[str], segment_of_sequence: Sequence[int]
) -> tuple[list[str], list[int], list[int]]:
    """Group the real (non-padding) tokens of a fast-tokenizer encoding into words.

    Words come from the tokenizer's own ``word_ids()`` and offsets, never from
    re-splitting strings. Special tokens are words of their own, segment -1.

    Returns:
        ``(words, word_segments, word_index_of_token)``.
    """
    words: list[str] = []
    segments: list[int] = []
    word_of_token: list[int] = []
    previous: tuple[int, int] | None = None
    span: list[int] = [0, 0]
    for token, sequence, word, (start, end), attended in zip(
        encoding.tokens,
        encoding.sequence_ids,
        encoding.word_ids,
        encoding.offsets,
        encoding.attention_mask,
        strict=True,
    ):
        if not attended:
            break
        if sequence is None or word is None:
            words.append(token)
            segments.append(SPECIAL)
            word_of_token.append(len(words) - 1)
            previous = None
            continue
        key = (sequence, word)
        if key != previous:
            words.append("")
            segments.append(segment_of_sequence[sequence])
            span = [start, end]
            previous = key
        span[1] = end
        words[-1] = texts[sequence][span[0] : span[1]]
        word_of_token.append(len(words) - 1)
    return words, segments, word_of_token


def token_relevance_from_encoding(
    *,
    method: str,
    encoding: Any,
    texts: Sequence[str],
    segment_of_sequence: Sequence[int],
    relevance: np.ndarray,
    score: float,
    query: str,
    document: str,
    side: str,
    conservation_error: float | None = None,
) -> TokenRelevance:
    """Build the artifact for one encoded text (or text pair) and its token relevance."""
    words, word_segments, word_of_token = words_from_encoding(encoding, texts, segment_of_sequence)
    length = len(word_of_token)
    token_values = np.asarray(relevance[:length], dtype=np.float64)
    word_values = np.zeros(len(words), dtype=np.float64)
    np.add.at(word_values, np.asarray(word_of_token, dtype=np.int64), token_values)
    token_segments = [
        SPECIAL if sequence is None else segment_of_sequence[sequence]
        for sequence in encoding.sequence_ids[:length]
    ]
    error = float(score - token_values.sum()) if conservation_error is None else conservation_error
    return TokenRelevance(
        method=method,
        query=query,
        document=document,
        score=float(score),
        tokens=tuple(encoding.tokens[:length]),
        relevance=tuple(token_values.tolist()),
        segment=tuple(token_segments),
        words=tuple(words),
        word_relevance=tuple(word_values.tolist()),
        word_segment=tuple(word_segments),
        conservation_error=error,
        side=side,
        truncated=bool(getattr(encoding, "overflowing", None)),
    )


def merge_sides(query_side: TokenRelevance, document_side: TokenRelevance) -> TokenRelevance:
    """One artifact for a bi-encoder pair: query tokens, then document tokens.

    Each side's relevance sums to the similarity on its own, so the conservation
    error reported is the larger of the two sides' errors.
    """
    error = max(abs(query_side.conservation_error), abs(document_side.conservation_error))
    return TokenRelevance(
        method=query_side.method,
        query=query_side.query,
        document=query_side.document,
        score=query_side.score,
        tokens=query_side.tokens + document_side.tokens,
        relevance=query_side.relevance + document_side.relevance,
        segment=query_side.segment + document_side.segment,
        words=query_side.words + document_side.words,
        word_relevance=query_side.word_relevance + document_side.word_relevance,
        word_segment=query_side.word_segment + document_side.word_segment,
        conservation_error=error,
        side="both",
        truncated=query_side.truncated or document_side.truncated,
    )


def artifacts_from_batch(
    *,
    method: str,
    model: Any,
    features: Any,
    relevance: np.ndarray,
    scores: np.ndarray,
    queries: Sequence[str],
    documents: Sequence[str],
    errors: np.ndarray | None = None,
) -> list[TokenRelevance]:
    """One :class:`TokenRelevance` per pair from one batch's per-token relevance.

    For a cross-encoder, row ``i`` of ``relevance`` is pair ``i``. For a bi-encoder
    (``model.query_prompt`` is defined), rows ``0..n-1`` are the queries and rows
    ``n..2n-1`` the documents, merged per pair with :func:`merge_sides`. ``errors``
    (one per row) replaces the default conservation error ``score − sum``.
    """
    encodings = features.encodings
    n = len(queries)

    def error(row: int) -> float | None:
        return None if errors is None else float(errors[row])

    if not hasattr(model, "query_prompt"):
        return [
            token_relevance_from_encoding(
                method=method,
                encoding=encodings[i],
                texts=(queries[i], documents[i]),
                segment_of_sequence=(QUERY, DOCUMENT),
                relevance=relevance[i],
                score=scores[i],
                query=queries[i],
                document=documents[i],
                side="pair",
                conservation_error=error(i),
            )
            for i in range(n)
        ]
    results = []
    for i in range(n):
        sides = [
            token_relevance_from_encoding(
                method=method,
                encoding=encodings[row],
                texts=(prompt + text,),
                segment_of_sequence=(segment,),
                relevance=relevance[row],
                score=scores[i],
                query=queries[i],
                document=documents[i],
                side=side,
                conservation_error=error(row),
            )
            for row, prompt, text, segment, side in (
                (i, model.query_prompt, queries[i], QUERY, "query"),
                (n + i, model.document_prompt, documents[i], DOCUMENT, "document"),
            )
        ]
        results.append(merge_sides(*sides))
    return results
