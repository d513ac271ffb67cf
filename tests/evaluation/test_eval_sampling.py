from __future__ import annotations

import logging
import random

import pytest

from relcomp.evaluation import sample_queries

IDS = [f"q{i}" for i in range(50)]


def test_sample_is_pinned() -> None:
    # Pinned: the same sample on every run, machine and numpy version (legacy RandomState).
    assert sample_queries(IDS, 5) == ["q0", "q12", "q27", "q48", "q6"]
    assert sample_queries(IDS, 5, seed=14) == ["q21", "q28", "q36", "q42", "q7"]


def test_sample_does_not_depend_on_input_order() -> None:
    expected = sample_queries(IDS, 10)
    shuffled = IDS[:]
    random.Random(0).shuffle(shuffled)
    assert sample_queries(shuffled, 10) == expected
    assert sample_queries(reversed(IDS), 10) == expected
    assert sample_queries(dict.fromkeys(shuffled, "text"), 10) == expected
    assert sample_queries(set(IDS) | {"q3"}, 10) == expected  # duplicates collapse
    assert len(set(expected)) == 10
    assert expected == sorted(expected)


def test_larger_samples_extend_consistently_sized() -> None:
    assert len(sample_queries(IDS, 49)) == 49
    assert sample_queries(IDS, 50) == sorted(IDS)
    assert sample_queries(IDS, None) == sorted(IDS)


def test_asking_for_more_than_available_returns_all_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="relcomp.evaluation.sampling"):
        sample = sample_queries(IDS[:3], 100)
    assert sample == sorted(IDS[:3])
    assert "asked for a sample of 100 queries but only 3 are available" in caplog.text


@pytest.mark.parametrize("n", [0, -1])
def test_non_positive_n(n: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        sample_queries(IDS, n)


def test_non_integer_n() -> None:
    with pytest.raises(TypeError):
        sample_queries(IDS, 2.5)  # type: ignore[arg-type]
