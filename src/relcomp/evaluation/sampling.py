"""Fixed, seeded samples, so that comparisons between systems are paired.

* :func:`sample_queries` — the queries a protocol evaluates;
* :func:`calibration_dataset`, :func:`calibration_pairs`, :func:`calibration_triples`
  — the (query, judged document[, hard negative]) pairs that relevance, plans,
  activation statistics and static quantization are calibrated on, from a dev or
  train split, never from the evaluated one (:func:`development_split`);
* :func:`parity_groups` — the queries and BM25 candidates an export's parity is
  measured on, from the same kind of split;
* :func:`pseudo_queries`, :func:`pseudo_query_dataset` — queries drawn from the corpus
  (a title, or a sentence), each judged relevant to the document it came from: what a
  collection with no dev or train split calibrates on (the split :data:`PSEUDO_SPLIT`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from relcomp.evaluation._common import ranked
from relcomp.evaluation.beir import (
    BeirDataset,
    available_splits,
    check_split_name,
    load_beir,
    same_split,
)
from relcomp.evaluation.first_stage import bm25_retrieve
from relcomp.evaluation.rerank import candidate_pairs

__all__ = [
    "CALIBRATION_PSEUDO_QUERIES",
    "DEFAULT_SEED",
    "MIN_PSEUDO_QUERIES",
    "PSEUDO_QUERY_PREFIX",
    "PSEUDO_SPLIT",
    "calibration_dataset",
    "calibration_pairs",
    "calibration_triples",
    "development_split",
    "parity_groups",
    "pseudo_queries",
    "pseudo_query_dataset",
    "pseudo_query_document",
    "sample_queries",
]

logger = logging.getLogger(__name__)

DEFAULT_SEED = 13
#: The calibration split of a collection with no dev or train split: corpus pseudo-queries
#: (:func:`pseudo_query_dataset`), each judged relevant to the document it was drawn from.
PSEUDO_SPLIT = "pseudo-queries"
#: Pseudo-queries drawn for calibration; calibration pairs and parity sample from them.
CALIBRATION_PSEUDO_QUERIES = 1000
#: Fewest pseudo-queries a collection without dev or train split must yield: half of them
#: at least calibrate, the other half gate (a mean over fewer than two queries is no mean).
MIN_PSEUDO_QUERIES = 4
#: Pseudo-query ids start with this; the rest says how they were drawn, so that a
#: cached first-stage run or teacher score never mixes two drawings.
PSEUDO_QUERY_PREFIX = "relcomp-pseudo"
_PSEUDO_VERSION = 1
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+")
#: A title or sentence shorter than this (in words) says too little to retrieve with.
_MIN_WORDS = 4
_MAX_WORDS = 40


def sample_queries(query_ids: Iterable[str], n: int | None, seed: int = DEFAULT_SEED) -> list[str]:
    """A fixed sample of ``n`` query ids, the same on every run and machine.

    The ids are de-duplicated and sorted before drawing, so the sample does not
    depend on the order they come in (dict order, file order). The draw uses
    numpy's legacy ``RandomState``, whose stream numpy keeps stable across
    versions (``Generator`` streams may change between releases). The sample is
    returned sorted.

    Args:
        query_ids: the ids to draw from (usually ``dataset.split_queries``).
        n: how many to draw; ``None`` keeps them all. If ``n`` is larger than the
            number of ids, all are returned and a warning says so.
        seed: the random seed (13 for every relcomp protocol).

    Returns:
        The sampled ids in ascending order.

    Example:
        >>> sample_queries(["q3", "q1", "q2", "q4"], 2)
        ['q2', 'q4']
        >>> sample_queries({"q4": 0, "q2": 0, "q1": 0, "q3": 0}, 2)
        ['q2', 'q4']
    """
    pool = sorted(set(query_ids))
    if n is None:
        return pool
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"n must be an integer or None, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if n >= len(pool):
        if n > len(pool):
            logger.warning(
                "asked for a sample of %d queries but only %d are available; using all %d",
                n,
                len(pool),
                len(pool),
            )
        return pool
    chosen = np.random.RandomState(seed).choice(len(pool), size=int(n), replace=False)
    return [pool[i] for i in sorted(chosen.tolist())]


def calibration_dataset(
    data_dir: str | os.PathLike[str], split: str | None, evaluated: str
) -> BeirDataset:
    """The split calibration pairs come from (:func:`development_split`), loaded.

    A collection with no split named ``dev`` or ``train`` (besides ``evaluated``) — a
    user's own corpus with a few judged test queries — calibrates on corpus
    pseudo-queries instead (:func:`pseudo_query_dataset`, split :data:`PSEUDO_SPLIT`),
    as does ``split=PSEUDO_SPLIT``. A ``dev`` or ``train`` file that is the evaluated
    split under another name is refused, not replaced: it is a mistake to fix.

    Example:
        >>> from relcomp.data import demo_path
        >>> calibration_dataset(demo_path(), None, "test").split
        'train'
        >>> calibration_dataset(demo_path(), PSEUDO_SPLIT, "test").split
        'pseudo-queries'
    """
    if split == PSEUDO_SPLIT:
        return pseudo_query_dataset(data_dir, evaluated=evaluated)
    if split is None and not any(
        name in available_splits(data_dir) and name != evaluated for name in ("dev", "train")
    ):
        dataset = pseudo_query_dataset(data_dir, evaluated=evaluated)
        logger.info(
            "%s has no dev or train split: calibrating on %d pseudo-queries drawn from the "
            "corpus (a title or a sentence, judged relevant to its own document), never on "
            "%s queries",
            dataset.name,
            len(dataset.split_queries),
            evaluated,
        )
        return dataset
    split = development_split(
        data_dir,
        split,
        evaluated=evaluated,
        purpose="to calibrate on",
        refusal="calibration split {split!r} is the evaluated split; use dev or train",
    )
    return load_beir(data_dir, split)


def development_split(
    data_dir: str | os.PathLike[str],
    split: str | None = None,
    *,
    evaluated: str = "test",
    purpose: str = "to calibrate on",
    refusal: str = "split {split!r} is the evaluated split; use dev or train",
) -> str:
    """``split`` if given, else ``dev``, else ``train``; never the ``evaluated`` split.

    The one rule for every development use of a collection (calibration, the quality
    gate, parity): looking at the queries whose figures are reported would flatter
    every compression.

    Args:
        data_dir: a BEIR folder.
        split: the split asked for, or ``None``.
        evaluated: the reported split, refused.
        purpose: what the split is for, in the error when there is none.
        refusal: the error when ``split`` is ``evaluated`` (``{split}`` is filled in).

    Example:
        >>> from relcomp.data import demo_path
        >>> development_split(demo_path())
        'train'
    """
    if split is not None:
        check_split_name(data_dir, split)  # a name, never a path out of the collection
        if same_split(data_dir, split, evaluated):  # compares the qrels files, not the names
            raise ValueError(refusal.format(split=split))
    splits = available_splits(data_dir)
    if split is None:
        candidates = [
            name
            for name in ("dev", "train")
            if name in splits and not same_split(data_dir, name, evaluated)
        ]
        if not candidates:
            raise ValueError(
                f"{data_dir}: no dev or train split {purpose} (splits: {', '.join(splits) or 'none'})"
            )
        return candidates[0]
    if split not in splits:
        raise ValueError(f"{data_dir}: no split {split!r} (splits: {', '.join(splits) or 'none'})")
    return split


def calibration_pairs(dataset: Any, n: int, seed: int = 13) -> list[tuple[str, str]]:
    """A fixed, seeded sample of ``n`` (query, most relevant judged document) pairs."""
    return [
        (dataset.query_text(query_id), dataset.document_text(best))
        for query_id, best in _calibration_choice(dataset, n, seed)
    ]


def calibration_triples(
    dataset: Any, n: int, seed: int = 13, depth: int = 100
) -> list[tuple[str, str, str]]:
    """(query, most relevant judged document, hard negative) for the queries of :func:`calibration_pairs`.

    The hard negative is the document BM25 ranks highest among those not judged
    relevant (unjudged counts as not relevant, as in the metrics): the kind of
    document a re-ranker must push down. A query with no such document in BM25's
    top-``depth`` is left out, and a warning says how many were.
    """
    chosen = _calibration_choice(dataset, n, seed)
    run = bm25_retrieve(dataset, [q for q, _ in chosen], depth=depth, show_progress_bar=False)
    negatives: dict[str, str] = {}
    for query_id, doc_id in candidate_pairs(run, depth):
        if query_id not in negatives and dataset.qrels[query_id].get(doc_id, 0) <= 0:
            negatives[query_id] = doc_id
    if len(negatives) < len(chosen):
        logger.warning(
            "%s/%s: %d of %d calibration queries have no non-relevant document in BM25's "
            "top-%d and are left out of the contrast",
            dataset.name,
            dataset.split,
            len(chosen) - len(negatives),
            len(chosen),
            depth,
        )
    if not negatives:
        raise ValueError(f"{dataset.name}/{dataset.split}: no hard negatives to contrast with")
    return [
        (
            dataset.query_text(query_id),
            dataset.document_text(best),
            dataset.document_text(negatives[query_id]),
        )
        for query_id, best in chosen
        if query_id in negatives
    ]


def _calibration_choice(dataset: Any, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` seeded queries of the split with their most relevant judged document."""
    chosen = []
    for query_id in sample_queries(dataset.split_queries, n, seed=seed):
        judged = dataset.qrels[query_id]
        best = max(sorted(judged), key=lambda doc_id: judged[doc_id])
        if judged[best] > 0:
            chosen.append((query_id, best))
    if not chosen:
        raise ValueError(
            f"{dataset.name}/{dataset.split}: no judged-relevant pairs to calibrate on"
        )
    return chosen


def parity_groups(
    data_dir: str | os.PathLike[str],
    split: str | None = None,
    *,
    queries: int = 20,
    depth: int = 30,
    seed: int = 13,
    show_progress_bar: bool | None = None,
) -> tuple[dict[str, tuple[str, list[str]]], dict[str, Any]]:
    """Real parity groups: a seeded sample of a split's queries with their BM25 top-``depth``.

    ``split=None`` takes ``dev``, else ``train`` (:func:`development_split`);
    ``test`` is refused; :data:`PSEUDO_SPLIT` takes corpus pseudo-queries. Returns ``(groups, source)``; queries BM25 finds nothing
    for are left out.
    """
    if split == PSEUDO_SPLIT:  # a collection with no dev or train split
        dataset = pseudo_query_dataset(data_dir)
    else:
        split = development_split(
            data_dir,
            split,
            purpose="for parity",
            refusal="parity never looks at the test split (its figures are the reported ones); "
            "use dev or train",
        )
        dataset = load_beir(data_dir, split)
    query_ids = sample_queries(dataset.split_queries, queries, seed=seed)
    run = bm25_retrieve(dataset, query_ids, depth=depth, show_progress_bar=show_progress_bar)
    groups = {
        query_id: (
            dataset.query_text(query_id),
            [dataset.document_text(doc_id) for doc_id, _ in ranked(run[query_id], depth)],
        )
        for query_id in query_ids
        if run.get(query_id)
    }
    if not groups:
        raise ValueError(f"{data_dir}/{split}: BM25 found no candidates for the sampled queries")
    source = {
        "dataset": dataset.name,
        "split": dataset.split,
        "first_stage": "bm25",
        "depth": depth,
    }
    return groups, source


def pseudo_queries(
    dataset: BeirDataset,
    n: int,
    seed: int = DEFAULT_SEED,
    *,
    exclude_documents: Iterable[str] = (),
) -> dict[str, tuple[str, str]]:
    """``n`` pseudo-queries drawn from the corpus: ``{id: (text, source document id)}``.

    Each comes from a different, seeded document: its title when the title has at
    least four words, else one of its sentences of 4–40 words (seeded). A document
    with neither is passed over, as is one in ``exclude_documents`` (another use's
    pseudo-queries, say). Ids name the drawing (version, seed) and the document, so
    caches keep drawings apart; an excluded document is drawn and dropped, never
    skipped, so an id reads the same text with or without exclusions.

    Example:
        >>> from relcomp.data import demo_path
        >>> from relcomp.evaluation import load_beir
        >>> drawn = pseudo_queries(load_beir(demo_path(), "train"), 3)
        >>> len(drawn), all(len(text.split()) >= 4 for text, _ in drawn.values())
        (3, True)
    """
    if n < 0:
        raise ValueError(f"the number of pseudo-queries must be ≥ 0, got {n}")
    excluded = set(exclude_documents)
    rng = np.random.default_rng(seed)
    doc_ids = dataset.sorted_doc_ids
    drawn: dict[str, tuple[str, str]] = {}
    for row in rng.permutation(len(doc_ids)).tolist():
        if len(drawn) == n:
            break
        doc_id = doc_ids[row]
        title, text = dataset.corpus[doc_id]
        if len(_WORD.findall(title)) >= _MIN_WORDS:
            query = title.strip()
        else:
            sentences = [
                s.strip()
                for s in _SENTENCE.split(text)
                if _MIN_WORDS <= len(_WORD.findall(s)) <= _MAX_WORDS
            ]
            if not sentences:
                continue
            query = sentences[int(rng.integers(len(sentences)))]
        if doc_id not in excluded:
            drawn[f"{PSEUDO_QUERY_PREFIX}-v{_PSEUDO_VERSION}-s{seed}:{doc_id}"] = (query, doc_id)
    if len(drawn) < n:
        logger.warning(
            "%s: only %d of the %d pseudo-queries asked for could be drawn (documents with a "
            "title or sentence of %d–%d words%s)",
            dataset.name,
            len(drawn),
            n,
            _MIN_WORDS,
            _MAX_WORDS,
            f", {len(excluded)} documents excluded" if excluded else "",
        )
    return drawn


def pseudo_query_document(query_id: str) -> str | None:
    """The document a pseudo-query id was drawn from; ``None`` for any other id.

    Example:
        >>> pseudo_query_document("relcomp-pseudo-v1-s13:d7"), pseudo_query_document("q1")
        ('d7', None)
    """
    if not query_id.startswith(PSEUDO_QUERY_PREFIX + "-"):
        return None
    return query_id.partition(":")[2] or None


def pseudo_query_dataset(
    data_dir: str | os.PathLike[str],
    n: int = CALIBRATION_PSEUDO_QUERIES,
    seed: int = DEFAULT_SEED,
    *,
    evaluated: str = "test",
    exclude_documents: Iterable[str] = (),
    minimum: int = MIN_PSEUDO_QUERIES,
) -> BeirDataset:
    """The collection seen through ``n`` corpus pseudo-queries (split :data:`PSEUDO_SPLIT`).

    Its queries are the pseudo-queries alone (the collection's own queries, test's
    included, are not in it) and each is judged relevant (grade 1) to the document it
    was drawn from, so that :func:`calibration_pairs` gives (pseudo-query, its source
    document) as it gives (query, judged document) for a real split.

    Raises:
        ValueError: fewer than ``minimum`` pseudo-queries could be drawn (a corpus
            with too little text: titles or sentences of 4–40 words).

    Example:
        >>> from relcomp.data import demo_path
        >>> dataset = pseudo_query_dataset(demo_path(), 5)
        >>> dataset.split, len(dataset.split_queries)
        ('pseudo-queries', 5)
    """
    splits = available_splits(data_dir)
    base = load_beir(data_dir, evaluated if evaluated in splits else (splits or ["test"])[0])
    # at most one per document: a small corpus is not warned about for being small
    drawn = pseudo_queries(
        base, min(n, len(base.corpus)), seed=seed, exclude_documents=exclude_documents
    )
    if len(drawn) < minimum:
        raise ValueError(
            f"{data_dir}: only {len(drawn)} pseudo-queries could be drawn from the corpus "
            f"(a title or a sentence of {_MIN_WORDS}–{_MAX_WORDS} words per document); a "
            f"collection with no dev or train split needs at least {minimum} to calibrate and "
            "gate on: add documents with text, or judged dev/train queries"
        )
    return dataclasses.replace(
        base,
        split=PSEUDO_SPLIT,
        queries={query_id: text for query_id, (text, _) in drawn.items()},
        qrels={query_id: {document: 1} for query_id, (_, document) in drawn.items()},
    )
