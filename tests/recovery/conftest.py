"""Fixtures every recovery test shares: a cache of its own, and a small collection."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.recovery.test_recovery import write_collection


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    return write_collection(tmp_path / "collection")
