"""Plain-text tables for the command line and the benchmark scripts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["format_table"]


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str], digits: int = 4) -> str:
    """Left-aligned columns, a rule under the header, floats to ``digits`` places.

    Example:
        >>> print(format_table([("nDCG@10", 0.66171)], ("measure", "value")))
        measure  value
        -------  ------
        nDCG@10  0.6617
    """
    cells = [[str(c) for c in header]] + [
        [f"{c:.{digits}f}" if isinstance(c, float) else str(c) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
