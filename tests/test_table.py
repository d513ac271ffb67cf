"""The shared table formatter: numbers rounded for reading, by the unit a header names."""

from __future__ import annotations

import pytest

from relcomp._table import format_number, format_table


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (61.8729, "latency p50 (ms)", "61.9"),
        (90.866412, "size (MB)", "90.9"),
        (36.2481, "pairs/s (batch 32)", "36.2"),
        (35.71, "p50 ms", "35.7"),
        (20.04, "MB", "20.0"),
        (1.8123, "points lost", "1.81"),
        (0.661713, "nDCG@10", "0.6617"),
        (-0.00601, "Δ", "-0.0060"),
        (0.5, "p (paired t)", "0.5000"),
        (174.68, "x forward", "174.7"),
        (2.44576, "", "2.446"),
        (12345.6, "", "12346"),
        (float("nan"), "", "nan"),
    ],
)
def test_numbers_are_rounded_by_the_unit_they_are_in(value, unit, text):
    assert format_number(value, unit) == text


def test_a_label_that_only_mentions_a_unit_does_not_round_a_measure():
    # a plan named by its size budget: its nDCG@10 keeps four decimals
    assert format_number(0.61234, "40 MB (kept)") == "0.6123"


def test_the_compress_table_rounds_latency_and_size_to_one_decimal_and_measures_to_four():
    rows = [
        ("nDCG@10", 0.66171, 0.65432, -0.00739, 0.3412),
        ("size (MB)", 90.866412, 20.04, "", ""),
        ("latency p50 (ms)", 84.1292, 33.8729, "", ""),
        ("pairs/s (batch 32)", 36.2481, 36.1902, "", ""),
    ]
    table = format_table(rows, ("", "fp32 (torch)", "40 MB (ONNX Runtime)", "Δ", "p (paired t)"))
    lines = [line.split() for line in table.splitlines()]
    assert lines[2] == ["nDCG@10", "0.6617", "0.6543", "-0.0074", "0.3412"]
    assert lines[3] == ["size", "(MB)", "90.9", "20.0"]
    assert lines[4] == ["latency", "p50", "(ms)", "84.1", "33.9"]
    assert lines[5] == ["pairs/s", "(batch", "32)", "36.2", "36.2"]


def test_a_column_header_sets_the_unit_of_a_plans_table():
    table = format_table(
        [("6 bits/weight (kept)", 20.04, 35.712, 0.62141, 1.8123)],
        ("plan", "MB", "p50 ms", "nDCG@10", "points lost"),
    )
    assert table.splitlines()[2].split()[-4:] == ["20.0", "35.7", "0.6214", "1.81"]


def test_digits_fixes_every_float():
    assert format_table([("a", 61.8729)], ("x", "y"), digits=2).splitlines()[2] == "a  61.87"
