"""Faithfulness of token relevance: delete what a method calls relevant and re-score.

Every attribution method (LRP composites, the captum baselines, anything that yields
:class:`~relcomp.artifacts.TokenRelevance`) is measured the same way, by one
perturbation applied identically to all of them.

**The perturbation: removing document words.** The AttnLRP paper's ΔA^F flips input
tokens to a baseline embedding. For ranking, the natural question is "what would the
model say about this document without these words?", so relcomp *removes whole words*
(as grouped by the tokenizer's ``word_ids()``) from the document text and re-scores the
(query, shortened document) pair with ``model.score``. Removing rather than masking
keeps the input on the distribution the model was trained on (a retriever has never
seen a document full of ``[MASK]``) and works unchanged for any tokenizer and for
scorers without embeddings. Words, not subword tokens, are removed, because removing
one piece of a word leaves a different word behind; a word's relevance is the sum of
its tokens'. Only document words are removed; the query stays whole. The document is
first cut to what the model saw (the explanation covers the truncated input only),
so deleting words never brings truncated text into view.

**Curves.** At each fraction ``f`` of the document's words (0, 10 %, …, 100 %), the
``round(f·n)`` most relevant words (MoRF) or least relevant words (LeRF) are removed.
Both curves start at the score of the full document and end at the score of the
empty document.

**Figures** (all in the model's score units: logits for rerankers, similarity for
retrievers):

* AOPC comprehensiveness: mean over pairs and fractions of ``s(full) − s(MoRF-deleted)``
  (Samek et al.'s AOPC, the ``f = 0`` step included). Higher is better.
* AOPC sufficiency: mean of ``s(full) − s(only the top f·n words kept)`` (DeYoung et
  al.'s ERASER sufficiency). Lower is better.
* ΔA^F: area between the LeRF and MoRF curves, ``∫ (LeRF − MoRF) df`` over ``f ∈ [0, 1]``
  by the trapezoid rule, mean over pairs (Achtibat et al., 2024). Higher is better.
  It is reported in score units; ``delta_af_normalized`` divides it by the mean over
  pairs of ``|s(full) − s(empty)|``, a range that is the same for every method, so
  methods stay comparable and models become so.

Example:
    >>> from relcomp.models import load_model
    >>> from relcomp.attribution.baselines import InputXGradient
    >>> model = load_model("all-MiniLM-L6-v2")
    >>> explanations = InputXGradient(model).attribute(["cat food"], ["cats eat fish and mice"])
    >>> sorted(faithfulness(model, explanations).to_dict())
    ['aopc_comprehensiveness', 'aopc_sufficiency', 'delta_af', 'delta_af_normalized', 'fractions', 'lerf_curve', 'method', 'morf_curve', 'n_pairs']
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from relcomp.artifacts import TokenRelevance
from relcomp.attribution.tokens import DOCUMENT
from relcomp.models.base import RankingModel, Scorer
from relcomp.models.bi_encoder import BiEncoder
from relcomp.models.cross_encoder import CrossEncoder

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_KS",
    "DeletionCurves",
    "DocumentWords",
    "FaithfulnessResult",
    "RankDropResult",
    "ScoreMemo",
    "delete_words",
    "deletion_curves",
    "document_words",
    "faithfulness",
    "rank_drop",
]

logger = logging.getLogger(__name__)

#: Fractions of the document's words deleted: 0, 10 %, …, 100 %.
DEFAULT_FRACTIONS: tuple[float, ...] = tuple(step / 10 for step in range(11))
#: Numbers of top words deleted by :func:`rank_drop`.
DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10)


# -- the perturbation ---------------------------------------------------------------------
def delete_words(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """Remove the character spans of words from a text.

    Whitespace around a removed word collapses to one space, so neighbours stay
    separate words (``"3,520"`` without ``","`` is ``"3 520"``, not ``"3520"``).

    Example:
        >>> delete_words("Berlin has a population of 3,520", [(7, 10), (28, 29)])
        'Berlin a population of 3 520'
        >>> delete_words("cats eat fish", [])
        'cats eat fish'
        >>> delete_words("cats eat fish", [(0, 4), (5, 8), (9, 13)])
        ''
    """
    if not spans:
        return text
    ordered = sorted(spans)
    bounds = [0] + [edge for start, end in ordered for edge in (start, end)] + [len(text)]
    segments = [text[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)]
    segments = [
        segment.strip() if 0 < i < len(segments) - 1 else segment
        for i, segment in enumerate(segments)
    ]
    segments[0] = segments[0].rstrip()
    segments[-1] = segments[-1].lstrip()
    return " ".join(segment for segment in segments if segment)


@dataclasses.dataclass(frozen=True)
class DocumentWords:
    """The document words of one explained pair: where they are and how relevant.

    Attributes:
        query: the query, as explained.
        text: the document as the model saw it (cut where truncation cut it).
        spans: character spans of the words in ``text``, in order.
        relevance: each word's relevance (the sum over its tokens).
    """

    query: str
    text: str
    spans: tuple[tuple[int, int], ...]
    relevance: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.spans)

    def most_relevant_first(self) -> np.ndarray:
        """Word indices, most relevant first (ties in reading order)."""
        return np.argsort(-np.asarray(self.relevance, dtype=np.float64), kind="stable")

    def least_relevant_first(self) -> np.ndarray:
        """Word indices, least relevant first (ties in reading order)."""
        return np.argsort(np.asarray(self.relevance, dtype=np.float64), kind="stable")

    def without(self, indices: Sequence[int] | np.ndarray) -> str:
        """The document with the words at ``indices`` removed."""
        return delete_words(self.text, [self.spans[int(i)] for i in indices])


def _word_spans(encoding: Any, sequence: int) -> tuple[list[tuple[int, int]], int | None]:
    """Character spans of the words of one sequence, grouped as ``words_from_encoding`` does.

    Returns the spans and the end of the last token kept, or ``None`` when the
    sequence has no token.
    """
    spans: list[tuple[int, int]] = []
    previous: int | None = None
    for sequence_id, word, (start, end), attended in zip(
        encoding.sequence_ids,
        encoding.word_ids,
        encoding.offsets,
        encoding.attention_mask,
        strict=True,
    ):
        if not attended:
            break
        if sequence_id != sequence or word is None:
            previous = None
            continue
        if word != previous:
            spans.append((start, end))
            previous = word
        else:
            spans[-1] = (spans[-1][0], end)
    return spans, (spans[-1][1] if spans else None)


def document_words(
    model: RankingModel, explanations: Sequence[TokenRelevance]
) -> list[DocumentWords]:
    """Locate each explanation's document words in its document text.

    The pairs are tokenised again as the model tokenises them; the words found must
    be the explanation's document words (same number, same text), else the
    explanation was made with another tokenizer or length limit.

    Raises:
        ValueError: an explanation does not match the model's tokenisation.
    """
    if not explanations:
        return []
    if isinstance(model, BiEncoder):
        prompt = model.document_prompt
        encodings = model.tokenize([prompt + e.document for e in explanations]).encodings
        sequence = 0
    elif isinstance(model, CrossEncoder):
        prompt = ""
        encodings = model.tokenize(
            [e.query for e in explanations], [e.document for e in explanations]
        ).encodings
        sequence = 1
    else:
        raise TypeError(f"expected a CrossEncoder or a BiEncoder, got {type(model).__name__}")
    results = []
    for explanation, encoding in zip(explanations, encodings, strict=True):
        spans, last_end = _word_spans(encoding, sequence)
        text = prompt + explanation.document
        expected = [
            (word, value)
            for word, value, segment in zip(
                explanation.words,
                explanation.word_relevance,
                explanation.word_segment,
                strict=True,
            )
            if segment == DOCUMENT
        ]
        found = [text[start:end] for start, end in spans]
        if found != [word for word, _ in expected]:
            raise ValueError(
                f"the explanation of ({explanation.query!r}, {explanation.document[:40]!r}…) has "
                f"{len(expected)} document words that do not match the {len(found)} words "
                f"{model.name} tokenises; was it made with another tokenizer or max_length?"
            )
        if encoding.overflowing and last_end is not None:
            text = text[:last_end]
        # A document prompt ("passage: ") is part of the input but not of the document.
        keep = [i for i, (start, _) in enumerate(spans) if start >= len(prompt)]
        results.append(
            DocumentWords(
                query=explanation.query,
                text=text[len(prompt) :],
                spans=tuple((spans[i][0] - len(prompt), spans[i][1] - len(prompt)) for i in keep),
                relevance=tuple(float(expected[i][1]) for i in keep),
            )
        )
    return results


def _deleted_counts(fractions: Sequence[float] | np.ndarray, n: int) -> list[int]:
    return [int(np.floor(fraction * n + 0.5)) for fraction in fractions]


#: Scores already known for one model, ``{(query, document): score}``: pass the same
#: dict to several calls (methods) on the same model and each distinct pair — the full
#: and the empty documents, the first-stage candidates — is scored once in all.
ScoreMemo = dict[tuple[str, str], float]


class _Variants:
    """(query, document) pairs to score, each distinct pair scored once."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, str], int] = {}

    def add(self, query: str, document: str) -> int:
        return self.index.setdefault((query, document), len(self.index))

    def score(
        self,
        model: Scorer,
        batch_size: int,
        show_progress_bar: bool | None,
        memo: ScoreMemo | None = None,
    ) -> np.ndarray:
        memo = {} if memo is None else memo
        todo = [pair for pair in self.index if pair not in memo]
        # Longest first, so that each batch pads to similar lengths.
        todo.sort(key=lambda pair: -len(pair[0]) - len(pair[1]))
        if todo:
            scores = model.score(
                [query for query, _ in todo],
                [document for _, document in todo],
                batch_size=batch_size,
                show_progress_bar=show_progress_bar,
            )
            memo.update(zip(todo, np.asarray(scores, dtype=np.float64).tolist(), strict=True))
        return np.array([memo[pair] for pair in self.index], dtype=np.float64)


# -- deletion curves ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DeletionCurves:
    """Per-pair scores as document words are removed.

    Attributes:
        fractions: the fractions of document words removed, ``(steps,)``.
        morf: scores with the most relevant words removed first, ``(pairs, steps)``.
        lerf: scores with the least relevant words removed first, ``(pairs, steps)``.
        keep: scores with only the most relevant ``f·n`` words kept, ``(pairs, steps)``.
        full: the score of each full (as seen) document, ``(pairs,)``.
        empty: the score of each pair with every document word removed, ``(pairs,)``.
        words: the number of document words of each pair, ``(pairs,)``.
    """

    fractions: np.ndarray
    morf: np.ndarray
    lerf: np.ndarray
    keep: np.ndarray
    full: np.ndarray
    empty: np.ndarray
    words: np.ndarray

    @property
    def n_pairs(self) -> int:
        return int(self.morf.shape[0])


def deletion_curves(
    model: RankingModel,
    explanations: Sequence[TokenRelevance],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    memo: ScoreMemo | None = None,
) -> DeletionCurves:
    """Re-score every pair with growing shares of its document words removed.

    All variants of all pairs are gathered first, identical ones merged (the full and
    the empty document are shared by both orders), sorted by length and scored in
    batches by ``model.score``; pairs already in ``memo`` (a :data:`ScoreMemo` of the
    same model) are not scored again.

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.attribution.baselines import Random
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> explanations = Random(model).attribute(["cats"], ["cats eat fish"])
        >>> deletion_curves(model, explanations).morf.shape
        (1, 11)
    """
    fractions_array = np.asarray(fractions, dtype=np.float64)
    if fractions_array.ndim != 1 or len(fractions_array) < 2:
        raise ValueError("fractions must list at least two values")
    if np.any(np.diff(fractions_array) <= 0) or fractions_array[0] < 0 or fractions_array[-1] > 1:
        raise ValueError(f"fractions must increase within [0, 1], got {list(fractions)}")
    located = document_words(model, explanations)
    variants = _Variants()
    shape = (len(located), len(fractions_array))
    morf_index = np.zeros(shape, dtype=np.int64)
    lerf_index = np.zeros(shape, dtype=np.int64)
    keep_index = np.zeros(shape, dtype=np.int64)
    full_index = np.zeros(len(located), dtype=np.int64)
    empty_index = np.zeros(len(located), dtype=np.int64)
    for row, words in enumerate(located):
        n = len(words)
        most, least = words.most_relevant_first(), words.least_relevant_first()
        full_index[row] = variants.add(words.query, words.text)
        empty_index[row] = variants.add(words.query, words.without(range(n)))
        for column, count in enumerate(_deleted_counts(fractions_array, n)):
            morf_index[row, column] = variants.add(words.query, words.without(most[:count]))
            lerf_index[row, column] = variants.add(words.query, words.without(least[:count]))
            # Keeping the top ``count`` words is removing the ``n − count`` least relevant.
            keep_index[row, column] = variants.add(words.query, words.without(least[: n - count]))
    logger.info(
        "deletion curves: %d pairs, %d fractions, %d distinct variants (%d already scored)",
        len(located),
        len(fractions_array),
        len(variants.index),
        sum(pair in memo for pair in variants.index) if memo else 0,
    )
    if not located:
        empty_curve = np.zeros(shape)
        return DeletionCurves(
            fractions_array,
            empty_curve,
            empty_curve,
            empty_curve,
            np.zeros(0),
            np.zeros(0),
            np.zeros(0),
        )
    scores = variants.score(model, batch_size, show_progress_bar, memo)
    return DeletionCurves(
        fractions=fractions_array,
        morf=scores[morf_index],
        lerf=scores[lerf_index],
        keep=scores[keep_index],
        full=scores[full_index],
        empty=scores[empty_index],
        words=np.asarray([len(words) for words in located], dtype=np.int64),
    )


@dataclasses.dataclass(frozen=True)
class FaithfulnessResult:
    """AOPC comprehensiveness and sufficiency, ΔA^F and the mean deletion curves.

    Attributes:
        method: the attribution method measured.
        n_pairs: pairs averaged over.
        fractions: fractions of document words removed at each step.
        morf_curve: mean score with the most relevant words removed first.
        lerf_curve: mean score with the least relevant words removed first.
        aopc_comprehensiveness: mean of ``s(full) − s(MoRF)``; higher is better.
        aopc_sufficiency: mean of ``s(full) − s(top words only)``; lower is better.
        delta_af: area between LeRF and MoRF curves in score units; higher is better.
        delta_af_normalized: ``delta_af`` over the mean ``|s(full) − s(empty)|``.
    """

    method: str
    n_pairs: int
    fractions: tuple[float, ...]
    morf_curve: tuple[float, ...]
    lerf_curve: tuple[float, ...]
    aopc_comprehensiveness: float
    aopc_sufficiency: float
    delta_af: float
    delta_af_normalized: float

    @classmethod
    def from_curves(cls, curves: DeletionCurves, method: str = "") -> FaithfulnessResult:
        """Summarise :class:`DeletionCurves` into the figures."""
        if curves.n_pairs == 0:
            nan = float("nan")
            return cls(method, 0, tuple(curves.fractions.tolist()), (), (), nan, nan, nan, nan)
        full = curves.full[:, None]
        gap = curves.lerf - curves.morf
        # The trapezoid rule, written out: np.trapezoid needs numpy 2.
        area = ((gap[:, 1:] + gap[:, :-1]) / 2 * np.diff(curves.fractions)).sum(1)
        delta_af = float(area.mean())
        score_range = float(np.abs(curves.full - curves.empty).mean())
        return cls(
            method=method,
            n_pairs=curves.n_pairs,
            fractions=tuple(curves.fractions.tolist()),
            morf_curve=tuple(curves.morf.mean(0).tolist()),
            lerf_curve=tuple(curves.lerf.mean(0).tolist()),
            aopc_comprehensiveness=float((full - curves.morf).mean()),
            aopc_sufficiency=float((full - curves.keep).mean()),
            delta_af=delta_af,
            delta_af_normalized=delta_af / score_range if score_range > 0 else float("nan"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values.

        Example:
            >>> result = FaithfulnessResult("Random", 1, (0.0, 1.0), (2.0, 0.0), (2.0, 0.0), 1.0, 1.0, 0.0, 0.0)
            >>> result.to_dict()["aopc_comprehensiveness"]
            1.0
        """
        return {
            "method": self.method,
            "n_pairs": self.n_pairs,
            "aopc_comprehensiveness": self.aopc_comprehensiveness,
            "aopc_sufficiency": self.aopc_sufficiency,
            "delta_af": self.delta_af,
            "delta_af_normalized": self.delta_af_normalized,
            "fractions": list(self.fractions),
            "morf_curve": list(self.morf_curve),
            "lerf_curve": list(self.lerf_curve),
        }


def faithfulness(
    model: RankingModel,
    explanations: Sequence[TokenRelevance],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    memo: ScoreMemo | None = None,
) -> FaithfulnessResult:
    """Measure how faithful one method's explanations are to the model.

    Args:
        model: the model the explanations explain.
        explanations: one :class:`TokenRelevance` per (query, document) pair, all by
            one method.
        fractions: shares of the document's words removed, increasing within [0, 1].
        batch_size: pairs per forward pass when re-scoring.
        show_progress_bar: a bar over the re-scoring; ``None`` follows logging.
        memo: scores already known for this model (:data:`ScoreMemo`), shared
            between methods; filled with the new ones.

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.attribution.baselines import Saliency
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> explanations = Saliency(model).attribute(["cats"], ["cats eat fish"])
        >>> faithfulness(model, explanations).n_pairs
        1
    """
    methods = sorted({explanation.method for explanation in explanations})
    if len(methods) > 1:
        raise ValueError(f"explanations come from several methods: {methods}")
    curves = deletion_curves(model, explanations, fractions, batch_size, show_progress_bar, memo)
    return FaithfulnessResult.from_curves(curves, methods[0] if methods else "")


# -- an IR-native figure -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RankDropResult:
    """How far relevant documents fall among their candidates once their top words go.

    Attributes:
        method: the attribution method whose top words were removed.
        n_pairs: (query, relevant document) pairs.
        ks: numbers of top words removed.
        initial_ranks: the rank (1 = first) of each relevant document before removal.
        ranks: ``{k: ranks after removing the top k words}``.
        mean_rank_change: ``{k: mean of (rank after − rank before)}``; positive means
            the document fell.
    """

    method: str
    n_pairs: int
    ks: tuple[int, ...]
    initial_ranks: tuple[int, ...]
    ranks: dict[int, tuple[int, ...]]
    mean_rank_change: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "n_pairs": self.n_pairs,
            "mean_initial_rank": float(np.mean(self.initial_ranks)) if self.n_pairs else None,
            "mean_rank_change": {str(k): v for k, v in self.mean_rank_change.items()},
        }


def rank_drop(
    model: RankingModel,
    explanations: Sequence[TokenRelevance],
    candidates: Sequence[Sequence[str]],
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    memo: ScoreMemo | None = None,
) -> RankDropResult:
    """Rank of each relevant document among its first-stage candidates, before and after
    removing its ``k`` most relevant words.

    The candidates' scores stay as they are; only the explained document changes.
    A rank is ``1 +`` the number of candidates scored strictly higher; a candidate
    equal to the explained document is left out.

    Args:
        model: the model the explanations explain.
        explanations: one explanation per (query, relevant document) pair.
        candidates: for each explanation, the document texts the first stage returned
            for its query.
        ks: numbers of top words to remove.
        batch_size: pairs per forward pass.
        show_progress_bar: a bar over the scoring; ``None`` follows logging.
        memo: scores already known for this model (:data:`ScoreMemo`): the
            candidates are scored once for all methods that share it.

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.attribution.baselines import InputXGradient
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> explanations = InputXGradient(model).attribute(["cats"], ["cats eat fish"])
        >>> result = rank_drop(model, explanations, [["dogs bark", "fish swim"]], ks=(1,))
        >>> result.initial_ranks
        (1,)
    """
    if len(candidates) != len(explanations):
        raise ValueError(
            f"one candidate list per explanation: got {len(candidates)} lists for "
            f"{len(explanations)} explanations"
        )
    if isinstance(candidates, str) or any(isinstance(c, str) for c in candidates):
        raise TypeError("candidates must be a list of lists of document texts")
    ks = tuple(int(k) for k in ks)
    located = document_words(model, explanations)
    variants = _Variants()
    candidate_index: list[list[int]] = []
    before_index: list[int] = []
    after_index: list[list[int]] = []
    for explanation, words, pool in zip(explanations, located, candidates, strict=True):
        candidate_index.append(
            [variants.add(words.query, text) for text in pool if text != explanation.document]
        )
        before_index.append(variants.add(words.query, words.text))
        most = words.most_relevant_first()
        after_index.append([variants.add(words.query, words.without(most[:k])) for k in ks])
    scores = (
        variants.score(model, batch_size, show_progress_bar, memo)
        if variants.index
        else np.zeros(0)
    )

    def rank(own: float, others: list[int]) -> int:
        return 1 + int(np.sum(scores[others] > own)) if others else 1

    initial = [rank(scores[b], c) for b, c in zip(before_index, candidate_index, strict=True)]
    ranks = {
        k: tuple(
            rank(scores[after[j]], c) for after, c in zip(after_index, candidate_index, strict=True)
        )
        for j, k in enumerate(ks)
    }
    methods = sorted({explanation.method for explanation in explanations})
    return RankDropResult(
        method=methods[0] if len(methods) == 1 else ",".join(methods),
        n_pairs=len(explanations),
        ks=ks,
        initial_ranks=tuple(initial),
        ranks=ranks,
        mean_rank_change={
            k: float(np.mean(np.subtract(ranks[k], initial))) if initial else float("nan")
            for k in ks
        },
    )
