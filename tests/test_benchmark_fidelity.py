"""The dev-data fidelity measure shared by ``activation_quantization.py`` and ``low_rank.py``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def fidelity() -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("_fidelity")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_same_scores_are_perfectly_faithful(fidelity):
    reference = [np.array([3.0, 1.0, 2.0]), np.array([0.5, -1.0])]
    assert fidelity.compare(reference, [r.copy() for r in reference]) == {
        "kendall_tau": 1.0,
        "score_error": 0.0,
    }


def test_a_reversed_ranking_has_tau_minus_one_and_the_error_is_relative_to_the_spread(fidelity):
    reference = [np.array([1.0, 2.0, 3.0, 4.0])]
    reversed_ = [np.array([4.0, 3.0, 2.0, 1.0])]
    result = fidelity.compare(reference, reversed_)
    assert result["kendall_tau"] == pytest.approx(-1.0)
    # RMS of (3, 1, -1, -3) is sqrt(5); the reference's standard deviation is sqrt(1.25)
    assert result["score_error"] == pytest.approx(np.sqrt(5.0) / np.sqrt(1.25))


def test_a_shift_keeps_the_ranking_but_counts_as_error(fidelity):
    reference = [np.array([1.0, 2.0, 3.0])]
    result = fidelity.compare(reference, [reference[0] + 0.5])
    assert result["kendall_tau"] == pytest.approx(1.0)
    assert result["score_error"] == pytest.approx(0.5 / np.std([1.0, 2.0, 3.0]))
