"""Types and small helpers shared by the evaluation modules."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import TypeAlias

__all__ = ["Qrels", "Run", "progress_enabled", "ranked"]

Run: TypeAlias = dict[str, dict[str, float]]
"""A ranking per query: ``{query id: {document id: score}}``; higher scores rank first."""

Qrels: TypeAlias = Mapping[str, Mapping[str, int]]
"""Judgements: ``{query id: {document id: relevance grade}}``."""


def progress_enabled(show_progress_bar: bool | None) -> bool:
    """``None`` shows a bar when relcomp's logger would print INFO messages.

    The same rule as :func:`relcomp.models.base.progress_enabled`, repeated here so
    that evaluation does not import torch just to decide whether to draw a bar.
    """
    if show_progress_bar is not None:
        return show_progress_bar
    return logging.getLogger("relcomp").getEffectiveLevel() <= logging.INFO


def _sort_key(item: tuple[str, float]) -> tuple[float, str]:
    score = float(item[1])
    # A NaN score ranks last rather than poisoning the sort.
    return (math.inf if math.isnan(score) else -score, item[0])


def ranked(scores: Mapping[str, float], depth: int | None = None) -> list[tuple[str, float]]:
    """``(document id, score)`` pairs in relcomp's ranking order, cut to ``depth``.

    The order is: higher score first; equal scores by document id ascending
    (Python string order); NaN scores last. Every module of :mod:`relcomp.evaluation`
    ranks this way, so a run means one ranking whatever its dict order.

    Example:
        >>> ranked({"b": 1.0, "a": 1.0, "c": 2.0})
        [('c', 2.0), ('a', 1.0), ('b', 1.0)]
    """
    items = sorted(scores.items(), key=_sort_key)
    return items if depth is None else items[:depth]


def unique_sorted(ids: Iterable[str]) -> list[str]:
    return sorted(set(ids))
