"""A streaming, validating loader for BEIR folders.

A BEIR folder holds ``corpus.jsonl`` (``{"_id", "title", "text", ...}`` per line),
``queries.jsonl`` (``{"_id", "text", ...}`` per line) and ``qrels/<split>.tsv``
(header ``query-id<TAB>corpus-id<TAB>score``, then one judgement per line). The
loader checks every line as it reads it and stops at the first problem with a
:class:`~relcomp.errors.DataFormatError` that names the file and the line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from relcomp._io import file_digest
from relcomp.errors import DataFormatError

__all__ = [
    "BeirDataset",
    "available_splits",
    "check_split",
    "check_split_name",
    "load_beir",
    "same_split",
]

logger = logging.getLogger(__name__)

QRELS_HEADER = ("query-id", "corpus-id", "score")
# A split is a name (test, dev, train, test-small…), never a path: "../x" or "./test"
# would read a qrels file outside the collection, or the test split under another name.
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")


# eq=False: datasets compare and hash by identity; comparing whole corpora is never wanted.
@dataclasses.dataclass(frozen=True, eq=False)
class BeirDataset:
    """One split of a BEIR collection, validated and read-only.

    Attributes:
        name: the collection's name (the folder's name unless given).
        path: the folder it was read from.
        split: the qrels split (``test``, ``dev``, ``train``…).
        corpus: document id → ``(title, text)`` (title ``""`` when absent), in file order.
        queries: query id → text, every query of ``queries.jsonl``.
        qrels: query id → {document id: grade} for the split.
        files: size and modification time of each file read, for cache keys.

    Example:
        >>> import os, pathlib
        >>> root = pathlib.Path(os.environ.get("RELCOMP_ASSETS", "../shared/assets")) / "beir/scifact"
        >>> dataset = load_beir(root, "test")  # doctest: +SKIP
        >>> len(dataset.split_queries), dataset.document_text("4983")[:22]  # doctest: +SKIP
        (300, 'Microstructural develo')
    """

    name: str
    path: Path
    split: str
    corpus: Mapping[str, tuple[str, str]]
    queries: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, int]]
    files: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return (
            f"BeirDataset({self.name!r}, split={self.split!r}, documents={len(self.corpus)}, "
            f"queries={len(self.queries)}, judged={len(self.qrels)})"
        )

    @cached_property
    def split_queries(self) -> Mapping[str, str]:
        """The queries judged in this split (query id → text), in qrels order.

        These are the queries a split is evaluated on; ``queries`` holds every split's.
        """
        return MappingProxyType({qid: self.queries[qid] for qid in self.qrels})

    def document_text(self, doc_id: str) -> str:
        """``"title text"`` (title, one space, text), or just the text when there is no title.

        This is how every relcomp first stage and model sees a document (BENCHMARKS.md).
        """
        title, text = self.corpus[doc_id]
        return f"{title} {text}" if title else text

    def query_text(self, query_id: str) -> str:
        return self.queries[query_id]

    @cached_property
    def sorted_doc_ids(self) -> tuple[str, ...]:
        """Document ids in ascending string order: the column order of first-stage indexes."""
        return tuple(sorted(self.corpus))

    def corpus_identity(self) -> dict[str, Any]:
        """What identifies the corpus for a cache key: folder, and size and SHA-256 of corpus.jsonl."""
        return {"dataset": str(self.path), "corpus.jsonl": dict(self.files.get("corpus.jsonl", {}))}

    def queries_identity(self) -> dict[str, Any]:
        """What identifies the query texts for a cache key (queries.jsonl's size and SHA-256)."""
        return {"queries.jsonl": dict(self.files.get("queries.jsonl", {}))}


def available_splits(path: str | os.PathLike[str]) -> list[str]:
    """The splits a BEIR folder has a qrels file for.

    Example:
        >>> available_splits("/nonexistent")
        []
    """
    qrels_dir = Path(path) / "qrels"
    if not qrels_dir.is_dir():
        return []
    return sorted(p.stem for p in qrels_dir.glob("*.tsv") if p.is_file())


def check_split_name(path: str | os.PathLike[str], split: str) -> str:
    """``split`` as a name of the collection's ``qrels/<split>.tsv``; a path is refused.

    Returns the name. Raises :class:`~relcomp.errors.DataFormatError` for anything
    that is not a plain name (a separator, ``.`` or ``..``, a leading dot), whether or
    not it would find a file.

    Example:
        >>> check_split_name("/data/scifact", "dev")
        'dev'
        >>> check_split_name("/data/scifact", "../x")
        Traceback (most recent call last):
        ...
        relcomp.errors.DataFormatError: /data/scifact: split '../x' is not a split name (a name such as test, dev or train, never a path)
    """
    if not isinstance(split, str) or not _SPLIT_NAME.fullmatch(split):
        raise DataFormatError(
            path,
            None,
            f"split {split!r} is not a split name (a name such as test, dev or train, never a path)",
        )
    return split


def check_split(path: str | os.PathLike[str], split: str) -> str:
    """``split`` is a name (:func:`check_split_name`) with a ``qrels/<split>.tsv`` in ``path``.

    Example:
        >>> check_split("/nonexistent", "dev")
        Traceback (most recent call last):
        ...
        relcomp.errors.DataFormatError: /nonexistent/qrels/dev.tsv: no split 'dev'; available splits: none (no qrels/*.tsv files)
    """
    check_split_name(path, split)
    qrels_path = Path(path) / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = available_splits(path)
        listed = ", ".join(splits) if splits else "none (no qrels/*.tsv files)"
        raise DataFormatError(qrels_path, None, f"no split {split!r}; available splits: {listed}")
    return split


def same_split(path: str | os.PathLike[str], split: str, other: str) -> bool:
    """Whether two split names read the same qrels file (``dev.tsv`` may be a link to ``test.tsv``).

    The guards that keep calibration and gates off the reported split compare this,
    not the strings.

    Example:
        >>> same_split("/nonexistent", "test", "test"), same_split("/nonexistent", "dev", "test")
        (True, False)
    """
    if split == other:
        return True
    qrels = Path(path) / "qrels"
    return (qrels / f"{split}.tsv").resolve() == (qrels / f"{other}.tsv").resolve()


def load_beir(
    path: str | os.PathLike[str],
    split: str = "test",
    *,
    name: str | None = None,
) -> BeirDataset:
    """Read and validate one split of a BEIR folder.

    Everything is read and checked before the dataset is returned: a malformed
    file raises :class:`~relcomp.errors.DataFormatError` naming the file and the
    line, and nothing half-loaded escapes.

    Args:
        path: the folder holding ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/``.
        split: which ``qrels/<split>.tsv`` to read.
        name: the collection's name; the folder's name by default.

    Returns:
        The validated :class:`BeirDataset`.

    Raises:
        DataFormatError: a missing file or split, or a malformed line.

    Example:
        >>> import json, pathlib, tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (root / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "Cats", "text": "purr."}) + "\\n")
        >>> _ = (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "cats?"}) + "\\n")
        >>> (root / "qrels").mkdir()
        >>> _ = (root / "qrels" / "test.tsv").write_text("query-id\\tcorpus-id\\tscore\\nq1\\td1\\t1\\n")
        >>> dataset = load_beir(root, "test")
        >>> dataset.document_text("d1"), dict(dataset.split_queries)
        ('Cats purr.', {'q1': 'cats?'})
    """
    root = Path(path)
    if not root.is_dir():
        raise DataFormatError(
            root,
            None,
            "no such BEIR folder (expected corpus.jsonl, queries.jsonl and qrels/<split>.tsv)",
        )
    check_split_name(root, split)
    corpus_path = root / "corpus.jsonl"
    queries_path = root / "queries.jsonl"
    qrels_path = root / "qrels" / f"{split}.tsv"
    for required in (corpus_path, queries_path):
        if not required.is_file():
            raise DataFormatError(required, None, "file not found")
    check_split(root, split)

    started = time.perf_counter()
    files = {p.name: _stamp(p) for p in (corpus_path, queries_path, qrels_path)}
    corpus = _read_corpus(corpus_path)
    queries = _read_queries(queries_path)
    qrels = _read_qrels(qrels_path, corpus, queries)
    dataset = BeirDataset(
        name=name or root.resolve().name,
        path=root.resolve(),
        split=split,
        corpus=MappingProxyType(corpus),
        queries=MappingProxyType(queries),
        qrels=MappingProxyType({qid: MappingProxyType(docs) for qid, docs in qrels.items()}),
        files=MappingProxyType(files),
    )
    logger.info(
        "loaded %s (%s): %d documents, %d queries, %d judged queries in %.2fs",
        dataset.name,
        split,
        len(corpus),
        len(queries),
        len(qrels),
        time.perf_counter() - started,
    )
    return dataset


def _stamp(path: Path) -> dict[str, Any]:
    return {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": file_digest(path)}


def _iter_json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSONL file."""
    seen_any = False
    with path.open("rb") as stream:
        for line_number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as error:
                raise DataFormatError(
                    path, line_number, f"invalid JSON: {error.msg} (column {error.colno})"
                ) from None
            except UnicodeDecodeError as error:
                raise DataFormatError(
                    path, line_number, f"not valid UTF-8: {error.reason}"
                ) from None
            if not isinstance(record, dict):
                raise DataFormatError(
                    path, line_number, f"expected a JSON object, found {type(record).__name__}"
                )
            seen_any = True
            yield line_number, record
    if not seen_any:
        raise DataFormatError(path, 1, "file is empty; expected one JSON object per line")


def _record_id(
    path: Path, line_number: int, record: Mapping[str, Any], first_seen: dict[str, int]
) -> str:
    if "_id" not in record:
        raise DataFormatError(path, line_number, "missing '_id'")
    identifier = record["_id"]
    if isinstance(identifier, int) and not isinstance(identifier, bool):
        identifier = str(identifier)
    if not isinstance(identifier, str):
        raise DataFormatError(
            path, line_number, f"'_id' must be a string, found {type(identifier).__name__}"
        )
    if not identifier.strip():
        raise DataFormatError(path, line_number, "empty '_id'")
    if identifier in first_seen:
        raise DataFormatError(
            path,
            line_number,
            f"duplicate _id {identifier!r} (first on line {first_seen[identifier]})",
        )
    first_seen[identifier] = line_number
    return identifier


def _string_field(
    path: Path, line_number: int, record: Mapping[str, Any], key: str, *, required: bool
) -> str:
    if key not in record or (record[key] is None and not required):
        if required:
            raise DataFormatError(path, line_number, f"missing {key!r}")
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise DataFormatError(
            path, line_number, f"{key!r} must be a string, found {type(value).__name__}"
        )
    return value


def _read_corpus(path: Path) -> dict[str, tuple[str, str]]:
    corpus: dict[str, tuple[str, str]] = {}
    first_seen: dict[str, int] = {}
    for line_number, record in _iter_json_objects(path):
        doc_id = _record_id(path, line_number, record, first_seen)
        text = _string_field(path, line_number, record, "text", required=True)
        title = _string_field(path, line_number, record, "title", required=False)
        corpus[doc_id] = (title, text)
    return corpus


def _read_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for line_number, record in _iter_json_objects(path):
        query_id = _record_id(path, line_number, record, first_seen)
        queries[query_id] = _string_field(path, line_number, record, "text", required=True)
    return queries


def _read_qrels(
    path: Path, corpus: Mapping[str, Any], queries: Mapping[str, Any]
) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    header_seen = False
    expected_header = "\t".join(QRELS_HEADER)
    with path.open("rb") as stream:
        for line_number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise DataFormatError(
                    path, line_number, f"not valid UTF-8: {error.reason}"
                ) from None
            if not header_seen:
                if line.lstrip("\ufeff") != expected_header:
                    raise DataFormatError(
                        path,
                        line_number,
                        f"expected the header {expected_header!r}, found {line!r}",
                    )
                header_seen = True
                continue
            if not line.strip():
                continue
            columns = line.split("\t")
            if len(columns) != 3:
                raise DataFormatError(
                    path,
                    line_number,
                    f"expected 3 tab-separated columns (query-id, corpus-id, score), found {len(columns)}",
                )
            query_id, doc_id, grade_text = columns
            try:
                grade = int(grade_text)
            except ValueError:
                raise DataFormatError(
                    path, line_number, f"score {grade_text!r} is not an integer"
                ) from None
            if query_id not in queries:
                raise DataFormatError(
                    path, line_number, f"query id {query_id!r} is not in queries.jsonl"
                )
            if doc_id not in corpus:
                raise DataFormatError(
                    path, line_number, f"document id {doc_id!r} is not in corpus.jsonl"
                )
            judged = qrels.setdefault(query_id, {})
            if doc_id in judged:
                raise DataFormatError(
                    path,
                    line_number,
                    f"duplicate judgement for query {query_id!r} and document {doc_id!r}",
                )
            judged[doc_id] = grade
    if not header_seen:
        raise DataFormatError(path, 1, f"file is empty; expected the header {expected_header!r}")
    if not qrels:
        raise DataFormatError(path, 2, "no judgements after the header")
    return qrels
