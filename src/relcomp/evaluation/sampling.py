"""Fixed, seeded samples, so that comparisons between systems are paired.

* :func:`sample_queries` — the queries a protocol evaluates;
* :func:`calibration_dataset`, :func:`calibration_pairs`, :func:`calibration_triples`
  — the (query, judged document[, hard negative]) pairs that relevance, plans,
  activation statistics and static quantization are calibrated on, from a dev or
  train split, never from the evaluated one (:func:`development_split`);
* :func:`parity_groups` — the queries and BM25 candidates an export's parity is
  measured on, from the same kind of split.
"""

from __future__ import annotations

import logging
import os
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
    "DEFAULT_SEED",
    "calibration_dataset",
    "calibration_pairs",
    "calibration_triples",
    "development_split",
    "parity_groups",
    "sample_queries",
]

logger = logging.getLogger(__name__)

DEFAULT_SEED = 13


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
    """The split calibration pairs come from (:func:`development_split`), loaded."""
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
    ``test`` is refused. Returns ``(groups, source)``; queries BM25 finds nothing
    for are left out.
    """
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
    source = {"dataset": dataset.name, "split": split, "first_stage": "bm25", "depth": depth}
    return groups, source
