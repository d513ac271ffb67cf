"""Where the chunks of a cached job are computed: in this process, or elsewhere.

Re-ranking scores and corpus embeddings are computed chunk by chunk
(:meth:`relcomp.evaluation.cache.Cache.chunked`). The caller decides the chunks,
the cache keys and the order; an executor only computes the chunks it is handed
and gives each one back as soon as it is done. The driver stays the only writer
of the cache, so a job resumes from whichever executor wrote its chunks.

A chunk's work is described by a :class:`ChunkTask`: ``payload(indices)`` is what
one chunk needs (its texts), and ``run(model, payload)`` computes it on *a* copy
of the model. Both are plain, picklable objects, so an executor can send them to
another process or machine (:class:`relcomp.distributed.RayExecutor`); the
default :class:`InProcess` calls ``run`` on the caller's own model, exactly as
before executors existed.

Example:
    >>> class Lengths(ChunkTask):
    ...     def __init__(self, texts):
    ...         self.texts = texts
    ...     def payload(self, indices):
    ...         return [self.texts[i] for i in indices]
    ...     @staticmethod
    ...     def run(model, payload):
    ...         return np.array([len(t) for t in payload], dtype=np.float64), {}
    >>> [(i, v.tolist()) for i, v, _ in InProcess().map(None, Lengths(["a", "bcd"]), [[1], [0]])]
    [(0, [3.0]), (1, [1.0])]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["ChunkExecutor", "ChunkTask", "InProcess", "resolve_executor"]


class ChunkTask:
    """One kind of chunked work: what a chunk needs, and how a model computes it.

    ``run`` is a static method: an executor that computes elsewhere sends the task's
    class and one chunk's payload, never the task's own data (all the texts).
    """

    def payload(self, indices: Sequence[int]) -> Any:
        """What computing the values at ``indices`` needs (picklable, small)."""
        raise NotImplementedError

    @staticmethod
    def run(model: Any, payload: Any) -> tuple[np.ndarray, Mapping[str, int]]:
        """The values for one chunk and a tally (truncated inputs…) computed with ``model``."""
        raise NotImplementedError


@runtime_checkable
class ChunkExecutor(Protocol):
    """Computes chunks of a :class:`ChunkTask` and yields them as they finish."""

    def map(
        self, model: Any, task: ChunkTask, chunks: Sequence[Sequence[int]]
    ) -> Iterator[tuple[int, np.ndarray, Mapping[str, int]]]:
        """``(position in chunks, values, tally)`` for every chunk, in any order."""
        ...


class InProcess:
    """Today's path: every chunk computed in turn, in this process, with the caller's model."""

    def __repr__(self) -> str:
        return "InProcess()"

    def map(
        self, model: Any, task: ChunkTask, chunks: Sequence[Sequence[int]]
    ) -> Iterator[tuple[int, np.ndarray, Mapping[str, int]]]:
        for position, chunk in enumerate(chunks):
            values, tally = task.run(model, task.payload(chunk))
            yield position, values, tally


def resolve_executor(executor: ChunkExecutor | None) -> ChunkExecutor:
    """``executor``, or :class:`InProcess` when ``None``.

    Example:
        >>> resolve_executor(None)
        InProcess()
    """
    return InProcess() if executor is None else executor
