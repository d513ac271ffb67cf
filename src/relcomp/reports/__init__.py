"""Reports: figures that return a matplotlib ``Figure``, and self-contained HTML pages.

* :mod:`relcomp.reports.figures` — ``token_heatmap``, ``interaction_heatmap``,
  ``component_heatmap``, ``plan_figure``, ``pareto`` (each returns a ``Figure`` and
  never shows it), ``figure_png``.
* :mod:`relcomp.reports.html` — ``explanation_report`` and ``compression_report``
  (return ``str``), ``write_explanation_report`` and ``write_report`` (write the page
  and its PNGs atomically).
* :mod:`relcomp.reports.run` — ``load_run`` reads and checks a ``relcomp compress``
  output folder.
"""

from __future__ import annotations

from relcomp.reports.figures import (
    component_heatmap,
    figure_png,
    interaction_heatmap,
    pareto,
    plan_figure,
    token_heatmap,
)
from relcomp.reports.html import (
    NOT_MEASURED,
    compression_report,
    explanation_report,
    write_explanation_report,
    write_report,
)
from relcomp.reports.run import CompressionRun, load_run

__all__ = [
    "NOT_MEASURED",
    "CompressionRun",
    "component_heatmap",
    "compression_report",
    "explanation_report",
    "figure_png",
    "interaction_heatmap",
    "load_run",
    "pareto",
    "plan_figure",
    "token_heatmap",
    "write_explanation_report",
    "write_report",
]
