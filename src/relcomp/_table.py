"""Plain-text tables for the command line and the benchmark scripts."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["format_number", "format_table"]

#: A header or row label that names one of these units, in brackets or as its last word
#: ("latency p50 (ms)", "p50 ms", "MB", "pairs/s"): one decimal is enough to read.
#: A label that merely mentions one ("40 MB (kept)") names no unit.
_COARSE_UNIT = re.compile(r"\((ms|MB|s|seconds)\)|(^|\s)(ms|MB|s|seconds)$|pairs/s")
#: nDCG@10 points (hundredths of the measure): two decimals.
_POINTS = re.compile(r"\bpoints\b")


def format_number(value: float, unit: str = "") -> str:
    """A float as a person reads it, by the unit its header or label names.

    * milliseconds, megabytes, seconds, pairs/s: one decimal;
    * nDCG@10 points: two decimals;
    * anything in [-1, 1] (measures, differences, p-values): four decimals;
    * anything larger: four significant digits, never an exponent.

    Example:
        >>> format_number(61.87291, "latency p50 (ms)"), format_number(0.661713, "nDCG@10")
        ('61.9', '0.6617')
        >>> format_number(1.8123, "points lost"), format_number(174.6871), format_number(12345.6)
        ('1.81', '174.7', '12346')
    """
    if not math.isfinite(value):
        return str(value)
    unit = unit.strip()
    if _COARSE_UNIT.search(unit):
        return f"{value:.1f}"
    if _POINTS.search(unit):
        return f"{value:.2f}"
    if abs(value) <= 1:
        return f"{value:.4f}"
    before_point = len(str(int(abs(value))))
    return f"{value:.{max(0, 4 - before_point)}f}"


def format_table(
    rows: Sequence[Sequence[Any]], header: Sequence[str], digits: int | None = None
) -> str:
    """Left-aligned columns, a rule under the header, floats rounded for reading.

    A float is rounded by :func:`format_number`, by the unit its column header or its
    row's label (the first cell, when it is text) names; ``digits`` fixes the decimals
    of every float instead.

    Example:
        >>> print(format_table([("nDCG@10", 0.66171), ("latency p50 (ms)", 61.8729)], ("measure", "value")))
        measure           value
        ----------------  ------
        nDCG@10           0.6617
        latency p50 (ms)  61.9
    """
    cells = [[str(c) for c in header]]
    for row in rows:
        label = row[0] if row and isinstance(row[0], str) else ""
        cells.append(
            [_cell(cell, column, label, digits) for cell, column in zip(row, header, strict=True)]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value: Any, column: str, label: str, digits: int | None) -> str:
    if not isinstance(value, float):
        return str(value)
    if digits is not None:
        return f"{value:.{digits}f}"
    unit = column if _COARSE_UNIT.search(column) or _POINTS.search(column) else label
    return format_number(value, unit)
