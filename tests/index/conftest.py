"""Tiny data for the index stage: a BEIR folder with test, dev and train splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.fixtures import DOCUMENTS, QUERIES


@pytest.fixture
def index_beir(tmp_path: Path) -> Path:
    """Eight documents, six queries: q0–q2 judged in test, q3–q5 in dev and train."""
    folder = tmp_path / "toy"
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"d{i}", "title": "", "text": text} for i, text in enumerate(DOCUMENTS)]
    queries = [{"_id": f"q{i}", "text": text} for i, text in enumerate(QUERIES)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries))
    header = "query-id\tcorpus-id\tscore\n"
    test = header + "".join(f"q{i}\td{i}\t1\n" for i in range(3))
    calibration = header + "".join(f"q{i}\td{i}\t1\n" for i in range(3, len(QUERIES)))
    (folder / "qrels" / "test.tsv").write_text(test)
    (folder / "qrels" / "dev.tsv").write_text(calibration)
    (folder / "qrels" / "train.tsv").write_text(calibration)
    return folder


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
