"""Fixtures of the report tests (builders in :mod:`tests.reports.synthetic`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reports.synthetic import make_run_folder


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A compress output folder with every optional file, tiny values."""
    return make_run_folder(tmp_path / "run")
