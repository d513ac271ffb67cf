"""Fixed, seeded query samples, so that quick comparisons between systems are paired."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

__all__ = ["DEFAULT_SEED", "sample_queries"]

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
