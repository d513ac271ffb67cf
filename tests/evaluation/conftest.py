"""Small BEIR folders and fake models for the evaluation tests."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CORPUS = [
    {"_id": "d1", "title": "Cats", "text": "Cats purr when they are happy.", "metadata": {}},
    {"_id": "d2", "title": "", "text": "Dogs bark at the postman."},
    {"_id": "d3", "title": "Purring", "text": "Why do cats purr? Nobody knows for sure."},
    {"_id": "d4", "text": "Fish swim in the sea."},
]
QUERIES = [
    {"_id": "q1", "text": "why do cats purr", "metadata": {}},
    {"_id": "q2", "text": "barking dogs"},
    {"_id": "q3", "text": "fish"},
]
QRELS_TEST = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td3\t2\nq2\td2\t1\n"


def jsonl(records: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def write_beir(
    root: Path,
    *,
    corpus: str | None = None,
    queries: str | None = None,
    qrels: Mapping[str, str] | None = None,
) -> Path:
    """Write a BEIR folder; each file is the valid toy one unless given."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text(jsonl(CORPUS) if corpus is None else corpus)
    (root / "queries.jsonl").write_text(jsonl(QUERIES) if queries is None else queries)
    (root / "qrels").mkdir(exist_ok=True)
    for split, text in ({"test": QRELS_TEST} if qrels is None else qrels).items():
        (root / "qrels" / f"{split}.tsv").write_text(text)
    return root


@pytest.fixture
def toy_path(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "toy")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the user's real cache."""
    cache = tmp_path / "relcomp-cache"
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(cache))
    return cache


class FakeEncoder:
    """A bi-encoder with fixed embeddings per text; counts calls to ``encode``."""

    def __init__(
        self,
        vectors: Mapping[str, Sequence[float]],
        similarity_name: str = "dot",
        cache_key: str | None = "fake-encoder-v1",
    ) -> None:
        self.vectors = {text: np.asarray(v, dtype=np.float32) for text, v in vectors.items()}
        self.similarity_name = similarity_name
        self._cache_key = cache_key
        self.calls: list[int] = []

    @property
    def cache_key(self) -> str | None:
        return self._cache_key

    def encode(
        self, texts: Sequence[str], batch_size: int = 32, show_progress_bar: bool | None = None
    ) -> np.ndarray:
        self.calls.append(len(texts))
        return np.stack([self.vectors[text] for text in texts])


class FakeScorer:
    """Scores a pair from a table; records every call."""

    def __init__(
        self, table: Mapping[tuple[str, str], float], cache_key: str = "fake-scorer"
    ) -> None:
        self.table = dict(table)
        self.cache_key = cache_key
        self.calls: list[tuple[list[str], list[str], int]] = []

    def score(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        self.calls.append((list(queries), list(documents), batch_size))
        return np.array(
            [self.table.get((q, d), 0.0) for q, d in zip(queries, documents, strict=True)],
            dtype=np.float32,
        )


# Fixtures hand out the helpers, so that test modules need not import this file
# (test folders have no __init__.py; a plain import would depend on the import mode).
@pytest.fixture
def beir_writer() -> Any:
    return write_beir


@pytest.fixture
def to_jsonl() -> Any:
    return jsonl


@pytest.fixture
def fake_encoder() -> type[FakeEncoder]:
    return FakeEncoder


@pytest.fixture
def fake_scorer() -> type[FakeScorer]:
    return FakeScorer
