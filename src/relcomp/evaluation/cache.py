"""An on-disk cache for first-stage runs and corpus embeddings.

Entries are keyed by a hash of everything that changes them: the model's identity
(``model.cache_key``), the data (folder, size and SHA-256 of the files read) and
the settings (depth, maximum length…). The cache lives under
``$RELCOMP_CACHE_DIR``, or ``~/.cache/relcomp`` when that is unset::

    <cache dir>/runs/<kind>-<hash>.json         {"material": ..., "run": {qid: {docid: score}}}
    <cache dir>/embeddings/<kind>-<hash>.npy    an array computed at once
    <cache dir>/embeddings/<kind>-<hash>.json   what the hash was made of, for people
    <cache dir>/embeddings/<kind>-<hash>.npz    corpus embeddings, computed chunk by chunk
    <cache dir>/scores/<kind>-<hash>.npz        re-ranking scores, computed chunk by chunk;
                                                saved after every chunk so an interrupted
                                                job resumes where it stopped, whichever
                                                executor computed the chunks

Every file is written atomically, so an interrupted run leaves no half-written
entry; an entry that cannot be read is recomputed, with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relcomp._io import atomic_write_json
from relcomp.evaluation._common import Run

__all__ = ["CACHE_ENV", "Cache", "MapChunks", "default_cache_dir", "hash_ids"]

logger = logging.getLogger(__name__)

CACHE_ENV = "RELCOMP_CACHE_DIR"
_FORMAT = 1

#: Computes the chunks it is handed; yields ``(position, values, tally)`` as each finishes.
MapChunks = Callable[[Sequence[Sequence[int]]], Iterable[tuple[int, np.ndarray, Mapping[str, int]]]]


def default_cache_dir() -> Path:
    """``$RELCOMP_CACHE_DIR`` if set, else ``~/.cache/relcomp``.

    Example:
        >>> import os
        >>> os.environ["RELCOMP_CACHE_DIR"] = "/tmp/relcomp-cache"
        >>> str(default_cache_dir())
        '/tmp/relcomp-cache'
        >>> del os.environ["RELCOMP_CACHE_DIR"]
    """
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "relcomp"


def hash_ids(ids: Any) -> str:
    """A short, order-independent digest of a set of ids (the queries of a run).

    Example:
        >>> hash_ids(["b", "a"]) == hash_ids(["a", "b"])
        True
    """
    digest = hashlib.sha256("\n".join(sorted(set(ids))).encode("utf-8"))
    return digest.hexdigest()[:16]


class Cache:
    """Get-or-compute access to cached runs and arrays.

    Args:
        directory: where entries live; :func:`default_cache_dir` when ``None``.
        enabled: ``False`` computes every time and writes nothing.

    Example:
        >>> import tempfile
        >>> cache = Cache(tempfile.mkdtemp())
        >>> calls = []
        >>> def compute():
        ...     calls.append(1)
        ...     return {"q1": {"d1": 1.5}}
        >>> cache.run("bm25", {"depth": 10}, compute) == cache.run("bm25", {"depth": 10}, compute)
        True
        >>> len(calls)
        1
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, *, enabled: bool = True
    ) -> None:
        self.directory = (
            Path(directory).expanduser() if directory is not None else default_cache_dir()
        )
        self.enabled = enabled

    def __repr__(self) -> str:
        return f"Cache({str(self.directory)!r}, enabled={self.enabled})"

    @staticmethod
    def key(kind: str, material: Mapping[str, Any]) -> str:
        """``<kind>-<hash>``: the hash of ``material`` written as canonical JSON."""
        canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", kind)[:40] or "entry"
        return f"{slug}-{hashlib.sha256(canonical.encode('utf-8')).hexdigest()[:32]}"

    def run_path(self, kind: str, material: Mapping[str, Any]) -> Path:
        return self.directory / "runs" / f"{self.key(kind, material)}.json"

    def array_path(self, kind: str, material: Mapping[str, Any]) -> Path:
        return self.directory / "embeddings" / f"{self.key(kind, material)}.npy"

    # -- runs -------------------------------------------------------------------------
    def run(self, kind: str, material: Mapping[str, Any], compute: Callable[[], Run]) -> Run:
        """The cached run for ``material``, or ``compute()``'s, stored for next time."""
        if not self.enabled:
            return compute()
        path = self.run_path(kind, material)
        cached = self._load_run(path)
        if cached is not None:
            logger.info("first-stage run read from the cache: %s", path)
            return cached
        run = compute()
        payload = {"format": _FORMAT, "kind": kind, "material": material, "run": run}
        atomic_write_json(path, _plain(payload))
        logger.debug("run cached at %s", path)
        return run

    @staticmethod
    def _load_run(path: Path) -> Run | None:
        if not path.is_file():
            return None
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("format") != _FORMAT:
                return None
            return {
                str(qid): {str(doc): float(score) for doc, score in docs.items()}
                for qid, docs in payload["run"].items()
            }
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
            logger.warning("ignoring an unreadable cache entry %s (%s); recomputing", path, error)
            return None

    # -- arrays -----------------------------------------------------------------------
    def array(
        self,
        kind: str,
        material: Mapping[str, Any],
        compute: Callable[[], np.ndarray],
        *,
        rows: int | None = None,
    ) -> np.ndarray:
        """The cached array for ``material``, or ``compute()``'s, stored for next time.

        ``rows``, when given, is checked against the cached array's first dimension.
        """
        if not self.enabled:
            return compute()
        path = self.array_path(kind, material)
        cached = self._load_array(path, rows)
        if cached is not None:
            logger.info("embeddings read from the cache: %s", path)
            return cached
        array = np.ascontiguousarray(compute())
        _atomic_save_npy(path, array)
        atomic_write_json(
            path.with_suffix(".json"),
            _plain(
                {"format": _FORMAT, "kind": kind, "material": material, "shape": list(array.shape)}
            ),
        )
        logger.debug("array cached at %s", path)
        return array

    @staticmethod
    def _load_array(path: Path, rows: int | None) -> np.ndarray | None:
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            logger.warning("ignoring an unreadable cache entry %s (%s); recomputing", path, error)
            return None
        if rows is not None and (array.ndim == 0 or array.shape[0] != rows):
            logger.warning(
                "ignoring cache entry %s: %s rows, expected %d", path, array.shape[:1], rows
            )
            return None
        return array

    # -- values computed chunk by chunk ------------------------------------------------
    def chunked(
        self,
        kind: str,
        material: Mapping[str, Any],
        chunks: Sequence[Sequence[int]],
        compute: Callable[[Sequence[int]], tuple[np.ndarray, Mapping[str, int]]] | None = None,
        *,
        length: int,
        on_chunk: Callable[[int], None] | None = None,
        map_chunks: MapChunks | None = None,
        dtype: Any = np.float64,
        folder: str = "scores",
    ) -> tuple[np.ndarray, Counter[str]]:
        """``length`` values (or rows) filled chunk by chunk, each finished chunk saved at once.

        ``compute(indices)`` returns the values at ``indices`` and a tally (counts such
        as truncated inputs) that is stored with them, so a resumed or cached job
        reports the same tally as one computed afresh. An interrupted job keeps the
        chunks it finished; the next call with the same ``material`` and ``chunks``
        computes only the rest. ``on_chunk(n)`` is told the size of every chunk, read
        or computed (for a progress bar).

        ``map_chunks(missing)``, when given, replaces ``compute``: it is handed the
        chunks still to do and yields ``(position in missing, values, tally)`` in
        whatever order they finish (an executor, :mod:`relcomp.evaluation.executor`).
        Each is saved as it arrives: this process is the cache's only writer, so the
        same entry resumes whichever way its chunks were computed.

        Values are 1-D (one per index) or 2-D (one row per index, e.g. embeddings),
        stored as ``dtype``, in ``<cache dir>/<folder>/``.

        Returns:
            The values and the summed tally over all chunks.
        """
        if (compute is None) == (map_chunks is None):
            raise ValueError("give exactly one of compute and map_chunks")
        chunks = [[int(i) for i in chunk] for chunk in chunks]
        layout = hashlib.sha256(json.dumps(chunks).encode("utf-8")).hexdigest()[:16]
        material = {**material, "length": int(length), "chunks": layout}
        path = self.directory / folder / f"{self.key(kind, material)}.npz"
        values: np.ndarray | None = None
        done = np.zeros(len(chunks), dtype=bool)
        tallies: list[dict[str, int]] = [{} for _ in chunks]
        if self.enabled:
            restored = self._load_chunks(path, length, len(chunks), dtype)
            if restored is not None:
                values, done, tallies = restored
                logger.info(
                    "%d of %d chunks read from the cache: %s", int(done.sum()), len(chunks), path
                )
        if on_chunk is not None:
            for position in np.flatnonzero(done).tolist():
                on_chunk(len(chunks[position]))
        missing = [position for position in range(len(chunks)) if not done[position]]
        if map_chunks is None:
            assert compute is not None

            def sequential(
                todo: Sequence[Sequence[int]],
            ) -> Iterator[tuple[int, np.ndarray, Mapping[str, int]]]:
                for at, chunk in enumerate(todo):
                    yield (at, *compute(chunk))

            map_chunks = sequential
        received = 0
        for at, chunk_values, tally in map_chunks([chunks[position] for position in missing]):
            position = missing[at]
            chunk = chunks[position]
            if done[position]:
                raise ValueError(f"chunk {position} was computed twice")
            chunk_values = np.asarray(chunk_values, dtype=dtype)
            if chunk_values.ndim not in (1, 2) or chunk_values.shape[0] != len(chunk):
                raise ValueError(
                    f"computed values of shape {chunk_values.shape} for a chunk of {len(chunk)}"
                )
            if values is None:
                values = np.full((length, *chunk_values.shape[1:]), np.nan, dtype=dtype)
            elif values.shape[1:] != chunk_values.shape[1:]:
                raise ValueError(
                    f"computed rows of shape {chunk_values.shape[1:]}, the others are {values.shape[1:]}"
                )
            values[chunk] = chunk_values
            done[position] = True
            tallies[position] = {str(k): int(v) for k, v in tally.items()}
            if self.enabled:
                self._save_chunks(path, kind, material, values, done, tallies)
            received += 1
            if on_chunk is not None:
                on_chunk(len(chunk))
        if received != len(missing) or not done.all():
            raise ValueError(f"{len(missing) - received} chunk(s) were never computed")
        if values is None:  # no chunks at all
            values = np.empty(length, dtype=dtype)
        total: Counter[str] = Counter()
        for tally in tallies:
            total.update(tally)
        return values, total

    @staticmethod
    def _save_chunks(
        path: Path,
        kind: str,
        material: Mapping[str, Any],
        values: np.ndarray,
        done: np.ndarray,
        tallies: list[dict[str, int]],
    ) -> None:
        header = json.dumps(
            _plain({"format": _FORMAT, "kind": kind, "material": material, "tallies": tallies})
        )

        def write(stream: Any) -> None:
            np.savez(stream, values=values, done=done, header=np.array(header))

        _atomic_save(path, write)

    @staticmethod
    def _load_chunks(
        path: Path, length: int, n_chunks: int, dtype: Any = np.float64
    ) -> tuple[np.ndarray, np.ndarray, list[dict[str, int]]] | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                values, done = stored["values"], stored["done"]
                header = json.loads(str(stored["header"]))
            tallies = [{str(k): int(v) for k, v in t.items()} for t in header["tallies"]]
            if (
                header.get("format") != _FORMAT
                or values.ndim not in (1, 2)
                or values.shape[0] != length
                or values.dtype != np.dtype(dtype)
                or done.shape != (n_chunks,)
                or len(tallies) != n_chunks
            ):
                raise ValueError("its shape does not match this job")
        except (
            OSError,
            EOFError,
            zipfile.BadZipFile,
            ValueError,
            KeyError,
            AttributeError,
            TypeError,
        ) as error:
            logger.warning("ignoring an unreadable cache entry %s (%s); recomputing", path, error)
            return None
        return values, done.astype(bool), tallies


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary file in the same folder, then rename (as relcomp._io does)."""
    _atomic_save(path, lambda stream: np.save(stream, array, allow_pickle=False))


def _atomic_save(path: Path, write: Callable[[Any], None]) -> None:
    """``write(stream)`` to a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _plain(value: Any) -> Any:
    """JSON-ready copy: mappings become dicts, numpy scalars Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
