"""Clean / corrupted inputs of equal token length, for activation and relevance patching.

Patching swaps one component's activation between two runs, so the two inputs must
line up position by position. Every corruption here therefore works on token ids
*after* tokenisation: a token is replaced by another single token, never inserted
or removed.

* ``doc-terms``: in the document, every word that is also a content word of the
  query is replaced, token by token (the lexical match a ranker can exploit is gone);
* ``query-terms``: the query's content words (not stopwords) are replaced;
* :func:`pair_from_texts`: a (clean, corrupted) pair of texts given by the user;
  both must tokenise to the same length and the same query / document layout.

Replacement tokens are drawn from :data:`COMMON_WORDS` (common English words that
are single tokens in the model's vocabulary and do not occur in the query), with a
random state seeded by ``seed`` and the pair's label, so a corruption is the same on
every run. A corruption that changes no token raises :class:`UnchangedCorruption`;
:func:`build_pairs` counts those pairs as skipped, with the reason.

For a cross-encoder the patched input is the whole ``[CLS] q [SEP] d [SEP]``
sequence; for a bi-encoder it is the side that was corrupted (the document for
``doc-terms``, the query for ``query-terms``), and the other side stays clean.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch

from relcomp.errors import RelcompError
from relcomp.models.base import RankingModel
from relcomp.models.bi_encoder import BiEncoder
from relcomp.models.cross_encoder import CrossEncoder
from relcomp.registry import Registry

if TYPE_CHECKING:
    from relcomp.evaluation.beir import BeirDataset

__all__ = [
    "COMMON_WORDS",
    "CORRUPTIONS",
    "DEFAULT_SEED",
    "PatchingPair",
    "Side",
    "UnchangedCorruption",
    "build_pairs",
    "corrupt",
    "corrupt_document_terms",
    "corrupt_query_terms",
    "pair_from_texts",
    "query_order",
    "relevant_pairs",
    "replacement_pool",
    "stopwords",
]

logger = logging.getLogger(__name__)

Side = Literal["pair", "query", "document"]

#: The seed of every relcomp protocol (as :func:`relcomp.evaluation.sample_queries` uses).
DEFAULT_SEED = 13


@functools.cache
def stopwords() -> frozenset[str]:
    """NLTK's English stopword list, as bm25s ships it: words that are never "content".

    Example:
        >>> "what" in stopwords(), "cat" in stopwords()
        (True, False)
    """
    # Imported on first use: bm25s pulls in numba, seconds on a busy machine.
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN_PLUS)


_COMMON_WORDS_TEXT = """
    time year day night week house home school book water fire air earth sun moon star city
    country world place way work life hand eye head name number part word story table river
    music paper window garden color stone road tree door chair field game letter horse ship
    family friend morning evening summer winter island mountain village market street
    kitchen picture song animal bird flower forest ocean bridge train car boat room wall
    floor office church king queen army farm glass metal wood plant light sound voice team
    party
"""
#: Neutral, frequent English words; those that are one token in a vocabulary replace terms.
COMMON_WORDS: tuple[str, ...] = tuple(_COMMON_WORDS_TEXT.split())


class UnchangedCorruption(RelcompError, ValueError):
    """A corruption that changes no token of the pair; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True, eq=False)
class PatchingPair:
    """A clean input and its corrupted twin, aligned token by token.

    Attributes:
        query: the clean query text.
        document: the clean document text.
        clean: model features (a batch of one) of the input that is patched.
        corrupted: the same features with ``input_ids`` changed at ``changed``.
        side: ``"pair"`` (cross-encoder), or the bi-encoder side that was corrupted.
        other: bi-encoder only: features of the side that stays clean.
        changed: the positions whose token differs.
        label: identifies the pair (``"query id/document id"`` for BEIR pairs).
        corruption: the name of the corruption that made it.
    """

    query: str
    document: str
    clean: dict[str, torch.Tensor]
    corrupted: dict[str, torch.Tensor]
    side: Side
    other: dict[str, torch.Tensor] | None
    changed: tuple[int, ...]
    label: str = ""
    corruption: str = ""

    @property
    def length(self) -> int:
        """Tokens in the patched input."""
        return int(self.clean["input_ids"].shape[1])

    def tokens(self, tokenizer: Any, corrupted: bool = False) -> list[str]:
        """The tokens of the patched input (clean or corrupted), for display."""
        ids = (self.corrupted if corrupted else self.clean)["input_ids"][0].tolist()
        return list(tokenizer.convert_ids_to_tokens(ids))


# -- tokenisation ----------------------------------------------------------------------
def _features(batch: Any) -> dict[str, torch.Tensor]:
    return {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}


def _is_content(word: str) -> bool:
    word = word.strip().lower()
    return any(c.isalnum() for c in word) and word not in stopwords()


def _words(
    encoding: Any, texts: Sequence[str], sequence: int, skip_chars: int = 0
) -> list[tuple[str, list[int]]]:
    """``(word text, token positions)`` for every word of one sequence of an encoding.

    Words come from the tokenizer's ``word_ids()`` and offsets; special tokens and
    tokens of a prompt (the first ``skip_chars`` characters) belong to no word.
    """
    spans: list[tuple[int, int, list[int]]] = []  # (first char, last char, positions)
    previous: int | None = None
    for position, (seq, word, (start, end)) in enumerate(
        zip(encoding.sequence_ids, encoding.word_ids, encoding.offsets, strict=True)
    ):
        if seq != sequence or word is None or start < skip_chars:
            previous = None
            continue
        if word != previous:
            spans.append((start, end, []))
            previous = word
        first, _, positions = spans[-1]
        positions.append(position)
        spans[-1] = (first, end, positions)
    return [(texts[sequence][first:last], positions) for first, last, positions in spans]


def replacement_pool(tokenizer: Any) -> list[int]:
    """Token ids of the :data:`COMMON_WORDS` that the tokenizer keeps as one token.

    Falls back to whole-word entries of the vocabulary when fewer than eight common
    words are single tokens (tiny test vocabularies).

    Example:
        >>> from transformers import AutoTokenizer
        >>> from relcomp.models import default_retriever_path
        >>> tokenizer = AutoTokenizer.from_pretrained(default_retriever_path())
        >>> tokenizer.convert_ids_to_tokens(replacement_pool(tokenizer)[:3])
        ['time', 'year', 'day']
    """
    # After a leading word, as inside a text: byte-level BPE and SentencePiece mark word starts.
    encodings = tokenizer(
        [f"x {word}" for word in COMMON_WORDS], add_special_tokens=False
    ).encodings
    specials = set(tokenizer.all_special_ids)
    pool = []
    for encoding in encodings:
        ids = [i for i, word in zip(encoding.ids, encoding.word_ids, strict=True) if word == 1]
        if len(ids) == 1 and ids[0] not in specials:
            pool.append(ids[0])
    if len(pool) < 8:
        vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        pool += [
            token_id
            for token, token_id in vocabulary
            if token_id not in specials
            and token.lstrip("Ġ▁").isalpha()
            and len(token.lstrip("Ġ▁")) >= 3
            and not token.startswith("##")
        ]
    return list(dict.fromkeys(pool))


def _replace(
    ids: torch.Tensor,
    positions: Sequence[int],
    pool: Sequence[int],
    forbidden: set[int],
    seed: int,
    label: str,
) -> torch.Tensor:
    """``ids`` (1, tokens) with each of ``positions`` replaced by a token from ``pool``."""
    candidates = [token for token in pool if token not in forbidden]
    if not candidates:
        raise RelcompError("no replacement token left: every common word occurs in the query")
    random = np.random.RandomState(zlib.crc32(f"{seed}|{label}".encode()))
    corrupted = ids.clone()
    for position in positions:
        corrupted[0, position] = candidates[random.randint(len(candidates))]
    return corrupted


def _changed(clean: torch.Tensor, corrupted: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(clean[0] != corrupted[0]).flatten())


# -- the corruptions ----------------------------------------------------------------------
#: Corruptions by the names users type: ``corruption(model, query, document, seed=, label=)``.
CORRUPTIONS: Registry[Callable[..., PatchingPair]] = Registry("corruption")


def _term_corruption(
    model: RankingModel,
    query: str,
    document: str,
    target: Literal["query", "document"],
    seed: int,
    label: str,
    name: str,
) -> PatchingPair:
    pool = replacement_pool(model.tokenizer)
    if isinstance(model, BiEncoder):
        query_batch = model.tokenize([model.query_prompt + query])
        document_batch = model.tokenize([model.document_prompt + document])
        query_words = _words(
            query_batch.encodings[0], [model.query_prompt + query], 0, len(model.query_prompt)
        )
        document_words = _words(
            document_batch.encodings[0],
            [model.document_prompt + document],
            0,
            len(model.document_prompt),
        )
        query_ids = {
            int(query_batch["input_ids"][0, p]) for _, positions in query_words for p in positions
        }
        patched, other = (
            (query_batch, document_batch) if target == "query" else (document_batch, query_batch)
        )
        side: Side = target
    else:
        batch = cast(CrossEncoder, model).tokenize([query], [document])
        encoding = batch.encodings[0]
        query_words = _words(encoding, [query, document], 0)
        document_words = _words(encoding, [query, document], 1)
        query_ids = {
            int(batch["input_ids"][0, p]) for _, positions in query_words for p in positions
        }
        patched, other, side = batch, None, "pair"
    content = {text.strip().lower() for text, _ in query_words if _is_content(text)}
    if target == "query":
        positions = [p for text, ps in query_words if _is_content(text) for p in ps]
        reason = "the query has no content word"
    else:
        positions = [
            p for text, ps in document_words if text.strip().lower() in content for p in ps
        ]
        reason = "no content word of the query occurs in the (truncated) document"
    if not positions:
        raise UnchangedCorruption(reason)
    clean = _features(patched)
    forbidden = query_ids | {int(clean["input_ids"][0, p]) for p in positions}
    corrupted = dict(clean)
    corrupted["input_ids"] = _replace(clean["input_ids"], positions, pool, forbidden, seed, label)
    return PatchingPair(
        query=query,
        document=document,
        clean=clean,
        corrupted=corrupted,
        side=side,
        other=_features(other) if other is not None else None,
        changed=_changed(clean["input_ids"], corrupted["input_ids"]),
        label=label,
        corruption=name,
    )


@CORRUPTIONS.register("doc-terms", "document-terms")
def corrupt_document_terms(
    model: RankingModel, query: str, document: str, *, seed: int = DEFAULT_SEED, label: str = ""
) -> PatchingPair:
    """Replace every document word that is also a content word of the query.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> pair = corrupt_document_terms(model, "cat food", "cats eat cat food daily")
        >>> pair.side, pair.changed
        ('document', (3, 4))
    """
    return _term_corruption(model, query, document, "document", seed, label, "doc-terms")


@CORRUPTIONS.register("query-terms")
def corrupt_query_terms(
    model: RankingModel, query: str, document: str, *, seed: int = DEFAULT_SEED, label: str = ""
) -> PatchingPair:
    """Replace the query's content words (every token of each word that is not a stopword).

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> pair = corrupt_query_terms(model, "what do cats eat", "cats eat fish")
        >>> pair.side, pair.changed
        ('query', (3, 4))
    """
    return _term_corruption(model, query, document, "query", seed, label, "query-terms")


def corrupt(
    model: RankingModel,
    query: str,
    document: str,
    corruption: str = "doc-terms",
    *,
    seed: int = DEFAULT_SEED,
    label: str = "",
) -> PatchingPair:
    """Apply a corruption by name (``doc-terms`` or ``query-terms``).

    Raises:
        UnchangedCorruption: the corruption would change no token.
        UnknownNameError: no corruption of that name (the error lists them).

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> corrupt(model, "cat food", "dogs bark", "doc-terms")
        Traceback (most recent call last):
        ...
        relcomp.attribution.corruption.UnchangedCorruption: no content word of the query occurs in the (truncated) document
    """
    return CORRUPTIONS.get(corruption)(model, query, document, seed=seed, label=label)


def pair_from_texts(
    model: RankingModel,
    clean: tuple[str, str],
    corrupted: tuple[str, str],
    *,
    label: str = "",
) -> PatchingPair:
    """A user-given ``(query, document)`` pair and its corrupted ``(query, document)``.

    The two must tokenise to the same length (and, for a cross-encoder, with the
    query / document boundary at the same place) so that positions line up. A
    bi-encoder pair may change one side only: that side is the one patched.

    Raises:
        ValueError: the lengths or layouts differ, or a bi-encoder pair changes both sides.
        UnchangedCorruption: the two tokenise to the same tokens.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> pair = pair_from_texts(model, ("cat food", "cats eat fish"), ("cat food", "dogs eat fish"))
        >>> pair.side, pair.changed
        ('document', (1,))
        >>> pair_from_texts(model, ("cat food", "cats eat"), ("cat food", "cats eat fish"))
        Traceback (most recent call last):
        ...
        ValueError: the clean document tokenises to 4 tokens and the corrupted one to 5; patching needs inputs of equal token length
    """
    if isinstance(model, BiEncoder):
        changed_sides = [i for i in (0, 1) if clean[i] != corrupted[i]]
        if len(changed_sides) > 1:
            raise ValueError(
                "a bi-encoder pair may change the query or the document, not both "
                "(each side is embedded on its own)"
            )
        index = changed_sides[0] if changed_sides else 1
        side: Side = "query" if index == 0 else "document"
        prompt = model.query_prompt if index == 0 else model.document_prompt
        clean_features = _features(model.tokenize([prompt + clean[index]]))
        corrupted_features = _features(model.tokenize([prompt + corrupted[index]]))
        other_index = 1 - index
        other_prompt = model.document_prompt if index == 0 else model.query_prompt
        other: dict[str, torch.Tensor] | None = _features(
            model.tokenize([other_prompt + clean[other_index]])
        )
    else:
        cross_encoder = cast(CrossEncoder, model)
        clean_batch = cross_encoder.tokenize([clean[0]], [clean[1]])
        corrupted_batch = cross_encoder.tokenize([corrupted[0]], [corrupted[1]])
        clean_features, corrupted_features = _features(clean_batch), _features(corrupted_batch)
        side, other = "pair", None
        if (
            clean_features["input_ids"].shape == corrupted_features["input_ids"].shape
            and clean_batch.encodings[0].sequence_ids != corrupted_batch.encodings[0].sequence_ids
        ):
            raise ValueError(
                "the clean and corrupted pairs have the same length but the query / document "
                "boundary is at different positions; patching needs aligned inputs"
            )
    clean_length = clean_features["input_ids"].shape[1]
    corrupted_length = corrupted_features["input_ids"].shape[1]
    if clean_length != corrupted_length:
        what = "pair" if side == "pair" else side
        raise ValueError(
            f"the clean {what} tokenises to {clean_length} tokens and the corrupted one to "
            f"{corrupted_length}; patching needs inputs of equal token length"
        )
    changed = _changed(clean_features["input_ids"], corrupted_features["input_ids"])
    if not changed:
        raise UnchangedCorruption("the clean and corrupted texts tokenise to the same tokens")
    return PatchingPair(
        query=clean[0],
        document=clean[1],
        clean=clean_features,
        corrupted=corrupted_features,
        side=side,
        other=other,
        changed=changed,
        label=label,
        corruption="user",
    )


# -- pairs from a BEIR collection ---------------------------------------------------------------
def query_order(query_ids: Iterable[str], n: int | None, seed: int = DEFAULT_SEED) -> list[str]:
    """The seeded sample of ``n`` query ids first, then every other id in a seeded order.

    Walking this order until ``n`` usable pairs are found keeps the sample of
    :func:`~relcomp.evaluation.sample_queries` (so runs with few skips see the same
    queries as the other benchmarks) and replaces each skipped query by the next
    one, the same on every run.
    """
    from relcomp.evaluation.sampling import sample_queries

    first = sample_queries(query_ids, n, seed=seed)
    if n is None:
        return first
    chosen = set(first)
    rest = sorted(query for query in set(query_ids) if query not in chosen)
    return first + [rest[i] for i in np.random.RandomState(seed).permutation(len(rest))]


def relevant_pairs(
    dataset: BeirDataset, n: int | None, seed: int = DEFAULT_SEED
) -> tuple[list[tuple[str, str]], Counter[str]]:
    """``(query id, document id)`` for ``n`` judged queries (all of them when ``None``).

    Each query is paired with its highest-graded relevant document (ties broken by
    document id). Queries with no document graded above 0 are skipped, counted, and
    replaced by the next query of :func:`query_order`.
    """
    return _kept_pairs(dataset, n, seed, lambda query_id, doc_id: (query_id, doc_id))


def _kept_pairs(
    dataset: BeirDataset,
    n: int | None,
    seed: int,
    make: Callable[[str, str], Any],
) -> tuple[list[Any], Counter[str]]:
    """``make(query id, best document id)`` over :func:`query_order` until ``n`` are kept.

    ``make`` raises :class:`UnchangedCorruption` for a pair it cannot use; the
    reason is counted and the next query is tried.
    """
    kept: list[Any] = []
    skipped: Counter[str] = Counter()
    for query_id in query_order(dataset.split_queries, n, seed):
        if n is not None and len(kept) == n:
            break
        judged = {doc: grade for doc, grade in dataset.qrels[query_id].items() if grade > 0}
        if not judged:
            skipped["no judged-relevant document"] += 1
            continue
        best = max(sorted(judged), key=lambda doc: judged[doc])
        try:
            kept.append(make(query_id, best))
        except UnchangedCorruption as unchanged:
            skipped[unchanged.reason] += 1
    if n is not None and len(kept) < n:
        logger.warning(
            "asked for %d pairs but the split has only %d usable ones; using %d",
            n,
            len(kept),
            len(kept),
        )
    return kept, skipped


def build_pairs(
    model: RankingModel,
    dataset: BeirDataset,
    n: int | None,
    corruption: str = "doc-terms",
    seed: int = DEFAULT_SEED,
) -> tuple[list[PatchingPair], Counter[str]]:
    """``n`` clean / corrupted pairs from a BEIR split, and the count of skipped pairs by reason.

    The queries are those of :func:`query_order`, fixed by ``seed``, so every model
    and corruption sees the same queries; a pair the corruption does not change is
    skipped (never silently: it is counted by reason) and the next query takes its
    place, so ``n`` pairs are returned whenever the split has them.

    Example:
        >>> from relcomp.models import load_model  # doctest: +SKIP
        >>> pairs, skipped = build_pairs(model, load_beir(path, "test"), 64)  # doctest: +SKIP
    """
    pairs, skipped = _kept_pairs(
        dataset,
        n,
        seed,
        lambda query_id, doc_id: corrupt(
            model,
            dataset.query_text(query_id),
            dataset.document_text(doc_id),
            corruption,
            seed=seed,
            label=f"{query_id}/{doc_id}",
        ),
    )
    if skipped:
        logger.info(
            "%s: %d pairs kept, %d skipped and replaced by the next queries (%s)",
            corruption,
            len(pairs),
            sum(skipped.values()),
            "; ".join(f"{reason}: {count}" for reason, count in skipped.items()),
        )
    return pairs, skipped
