"""Size and speed of systems, measured as BENCHMARKS.md says.

* :func:`model_size_bytes` — a model's weights as stored (ONNX file or torch weights);
* :func:`measure_speed` — latency p50 / p95 at batch 1 and pairs/s at batch 32 of
  several systems, interleaved, on the same real pairs;
* :func:`keep_freed_memory` — the allocator setting every timing runs under, so that
  torch is not charged for page faults ONNX Runtime's arena never pays.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relcomp.errors import RelcompError

__all__ = ["keep_freed_memory", "measure_speed", "model_size_bytes"]


def model_size_bytes(model: Any) -> int:
    """Bytes of a model's weights as stored: the ONNX file (+ external data) or torch weights.

    For a torch model, the ``*.safetensors`` files of its folder (``*.bin`` when there
    are none); for an ONNX model, its ``.onnx`` file and any ``.onnx_data`` /
    ``.onnx.data`` beside it.
    """
    onnx_path = getattr(model, "onnx_path", None)
    if onnx_path is not None:
        onnx_path = Path(onnx_path)
        extra = [
            p
            for p in onnx_path.parent.iterdir()
            if p.name.startswith(onnx_path.name) and p != onnx_path
        ]
        return onnx_path.stat().st_size + sum(p.stat().st_size for p in extra)
    folder = Path(model.path)
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not weights:
        raise RelcompError(f"{folder}: no *.safetensors or *.bin weights to measure")
    return sum(p.stat().st_size for p in weights)


# glibc's mallopt parameters and their defaults (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
#: open keep_freed_memory() contexts: only the outermost sets and restores
_kept_depth = 0


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Inside: glibc malloc keeps the memory a call frees for the next call; yields whether
    it could (``False`` off glibc, where nothing changes).

    A torch forward pass allocates its activations afresh on every call. glibc serves
    blocks above 32 MB with ``mmap`` and gives them back with ``munmap`` (the attention
    probabilities of a 512-token batch of 32 are 400 MB a layer), so every call
    page-faults its activations in again: for the reranker at batch 32 and 512 tokens,
    ~380,000 minor faults and 1–2.5 s of kernel time a call on this 2-core machine
    (4.2 s of user time), varying with the machine's memory state, which made torch's
    throughput noisy and lower the more systems a process held. ONNX Runtime keeps its
    own arena and pays none of it. ``mallopt(M_MMAP_MAX, 0)`` serves large blocks from
    the heap and ``M_TRIM_THRESHOLD`` keeps the freed heap, as tcmalloc or jemalloc (the
    allocators PyTorch recommends for CPU inference) would: the same call then takes
    tens of faults. On leaving the outermost context glibc's defaults are set again
    (glibc has no getter for the values before; setting them explicitly turns off its
    dynamic mmap threshold). The heap keeps its peak size until then. It is not certain:
    in about one fresh process in seven here a 64 MB block was still mapped afresh inside
    the context (the cause is not pinned down; glibc falls back to ``mmap`` when it
    cannot grow the heap).

    Example:
        >>> with keep_freed_memory() as kept:
        ...     isinstance(kept, bool)
        True
    """
    global _kept_depth
    libc = _glibc()
    if libc is None:
        yield False
        return
    if _kept_depth == 0:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    _kept_depth += 1
    try:
        yield True
    finally:
        _kept_depth -= 1
        if _kept_depth == 0:
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def _threads(systems: Mapping[str, Any], threads: int) -> Iterator[None]:
    """Run every system on ``threads`` threads (torch and ONNX Runtime), restored afterwards."""
    import torch

    previous_torch = torch.get_num_threads()
    previous_ort = {
        name: model.intra_op_num_threads
        for name, model in systems.items()
        if hasattr(model, "intra_op_num_threads")
    }
    torch.set_num_threads(threads)
    for name in previous_ort:
        systems[name].intra_op_num_threads = threads
    try:
        yield
    finally:
        torch.set_num_threads(previous_torch)
        for name, value in previous_ort.items():
            systems[name].intra_op_num_threads = value


def measure_speed(
    systems: Mapping[str, Any],
    queries: Sequence[str],
    documents: Sequence[str],
    *,
    batch_size: int = 32,
    latency_pairs: int = 32,
    repeats: int = 5,
    threads: int = 2,
    show_progress_bar: bool | None = None,
) -> dict[str, dict[str, Any]]:
    """Latency at batch 1 and throughput at ``batch_size`` of each system, interleaved.

    BENCHMARKS.md's rules: one process, the same real pairs for every system, the
    systems interleaved (A B A B …) after a warm-up, ``threads`` threads each, freed
    memory kept for the next call (:func:`keep_freed_memory`).
    Latency: one (query, document) pair per call, over the first ``latency_pairs``
    pairs; p50 and p95 in ms. Throughput: the first ``batch_size`` pairs in one call,
    the median of ``repeats`` calls, in pairs/s.

    Args:
        systems: ``{name: model}``; each has ``score(queries, documents, batch_size, …)``.
        queries: query of each pair.
        documents: document of each pair.
        batch_size: pairs per call for throughput.
        latency_pairs: how many single-pair calls per system for latency.
        repeats: calls per system for throughput.
        threads: torch / ONNX Runtime intra-op threads.
        show_progress_bar: a tqdm bar over the measurements.

    Returns:
        ``{name: {"latency_ms": {"p50", "p95"}, "pairs_per_s", "batch_size", "threads", …}}``.

    Example:
        >>> class Slow:
        ...     def score(self, q, d, batch_size=32, show_progress_bar=None):
        ...         return np.zeros(len(q))
        >>> result = measure_speed({"a": Slow()}, ["q"] * 4, ["d"] * 4, batch_size=4, repeats=2)
        >>> sorted(result["a"])
        ['batch_size', 'latency_ms', 'latency_pairs', 'pairs_per_s', 'repeats', 'threads']
    """
    from tqdm.auto import tqdm

    from relcomp.models.base import progress_enabled

    if len(queries) != len(documents) or not queries:
        raise ValueError("measure_speed needs as many queries as documents, at least one")
    batch_q, batch_d = list(queries[:batch_size]), list(documents[:batch_size])
    single = list(zip(queries[:latency_pairs], documents[:latency_pairs], strict=True))
    latencies: dict[str, list[float]] = {name: [] for name in systems}
    batches: dict[str, list[float]] = {name: [] for name in systems}
    total = len(systems) * (len(single) + repeats + 1)
    with (
        keep_freed_memory(),
        _threads(systems, threads),
        tqdm(
            total=total,
            desc="timing",
            disable=not progress_enabled(show_progress_bar),
            leave=False,
        ) as bar,
    ):
        for model in systems.values():  # warm-up: first calls allocate and compile
            model.score(batch_q[:2], batch_d[:2], batch_size=2, show_progress_bar=False)
            bar.update(1)
        for query, document in single:
            for name, model in systems.items():
                started = time.perf_counter()
                model.score([query], [document], batch_size=1, show_progress_bar=False)
                latencies[name].append(time.perf_counter() - started)
                bar.update(1)
        for _ in range(repeats):
            for name, model in systems.items():
                started = time.perf_counter()
                model.score(batch_q, batch_d, batch_size=len(batch_q), show_progress_bar=False)
                batches[name].append(time.perf_counter() - started)
                bar.update(1)
    return {
        name: {
            "latency_ms": {
                "p50": float(np.percentile(latencies[name], 50) * 1000),
                "p95": float(np.percentile(latencies[name], 95) * 1000),
            },
            "pairs_per_s": float(len(batch_q) / statistics.median(batches[name])),
            "batch_size": len(batch_q),
            "latency_pairs": len(single),
            "repeats": repeats,
            "threads": threads,
        }
        for name in systems
    }
