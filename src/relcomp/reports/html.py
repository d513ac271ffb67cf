"""Self-contained HTML reports: builders return ``str``; ``write_*`` put them on disk atomically.

A report is one HTML file a reviewer can open anywhere, offline: figures are inlined as
base64 PNG, the style sheet is inline, there are no scripts and no external fonts, and a
Content-Security-Policy forbids loading anything else. Every text that comes from data
(queries, documents, model names, plan patterns, file contents) goes through
:func:`html.escape` with ``quote=True``.

Two reports:

* :func:`explanation_report` — token relevance of (query, document) pairs, written by
  ``relcomp explain -o OUT`` as ``OUT/explanation.html`` (:func:`write_explanation_report`);
* :func:`compression_report` — a ``relcomp compress`` run folder (see
  :mod:`relcomp.reports.run`), written as ``OUT/report.html`` by :func:`write_report`
  and ``relcomp report OUT``.

The ``write_*`` functions build the whole page and every figure in memory first, then
write the PNGs and last the HTML, each through a temporary name and a rename: an error
at any point leaves no half-written file, and no new HTML page.

Example:
    >>> from relcomp.artifacts import TokenRelevance
    >>> explanation = TokenRelevance(
    ...     method="AttnLRP", query="what is a <cat>", document="A cat is a small animal.",
    ...     score=1.5, tokens=(), relevance=(), segment=(),
    ...     words=("what", "cat", "A", "cat", "animal"),
    ...     word_relevance=(0.05, 0.6, 0.01, 0.7, -0.2),
    ...     word_segment=(0, 0, 1, 1, 1), conservation_error=0.34,
    ... )
    >>> page = explanation_report([explanation], model="tiny-reranker")
    >>> page.startswith("<!DOCTYPE html>"), "what is a &lt;cat&gt;" in page, "<script" in page
    (True, True, False)
"""

from __future__ import annotations

import base64
import datetime as _datetime
import html
import json
import logging
import math
import os
import platform
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from relcomp._io import atomic_write_bytes, atomic_write_text
from relcomp.artifacts import (
    INDEX_QUALITY_FILE,
    NDCG_AT_10,
    ComponentRelevance,
    QualityComparison,
    SystemQuality,
    TokenInteractions,
    TokenRelevance,
)
from relcomp.reports.figures import (
    component_heatmap,
    figure_png,
    interaction_heatmap,
    pareto,
    point_measure,
    recovery_curve,
    token_heatmap,
)
from relcomp.reports.run import CompressionRun, load_run

__all__ = [
    "NOT_MEASURED",
    "compression_report",
    "explanation_report",
    "write_explanation_report",
    "write_report",
]

logger = logging.getLogger(__name__)

#: What the report says for a value the run did not record; nothing is ever invented.
NOT_MEASURED = "not measured"
#: Pixels per inch at which a figure is shown; PNGs are rendered at ``_DPI`` for sharpness.
_CSS_DPI = 96
_DPI = 144
#: Token explanations shown in a compression report (the rest are counted).
MAX_EXPLANATIONS = 6


def _e(value: object) -> str:
    """Escape any text for HTML content and attribute values."""
    return html.escape(str(value), quote=True)


def _now() -> str:
    return _datetime.datetime.now(_datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    return None


def _missing(text: str = NOT_MEASURED) -> str:
    return f'<span class="muted">{_e(text)}</span>'


def _fixed(value: Any, digits: int = 4, unit: str = "", signed: bool = False) -> str:
    number = _number(value)
    if number is None:
        return _missing()
    sign = "+" if signed else ""
    return _e(f"{number:{sign}.{digits}f}{unit}").replace("-", "−")


def _p_value(value: Any) -> str:
    number = _number(value)
    if number is None:
        return _missing()
    return "&lt; 0.001" if number < 0.001 else _e(f"{number:.3f}")


_STYLE = """
:root { --ink:#1f2328; --muted:#5d6670; --line:#d8dee4; --soft:#f6f8fa; --accent:#0969da;
        --good:#1a7f37; --bad:#cf222e; --head:#0f1e2e; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
             "Noto Sans", "Liberation Sans", sans-serif; }
.wrap { max-width: 1060px; margin: 0 auto; padding: 0 28px; }
header.top { background: var(--head); color: #fff; padding: 30px 0 24px; }
header.top .kicker { text-transform: uppercase; letter-spacing: .08em; font-size: 12px;
                     color: #9fb3c8; margin: 0 0 4px; }
header.top h1 { margin: 0 0 10px; font-size: 30px; line-height: 1.2; overflow-wrap: anywhere; }
header.top dl { display: flex; flex-wrap: wrap; gap: 4px 28px; margin: 0; font-size: 14px; }
header.top dt { color: #9fb3c8; }
header.top dd { margin: 0 0 0 6px; color: #fff; font-weight: 600; overflow-wrap: anywhere; }
header.top dl > div { display: flex; }
nav.toc { margin: 24px 0 8px; padding: 14px 20px; background: var(--soft);
          border: 1px solid var(--line); border-radius: 8px; }
nav.toc .title { font-size: 13px; text-transform: uppercase; letter-spacing: .06em;
                 color: var(--muted); margin: 0 0 6px; font-weight: 600; }
nav.toc ol { margin: 0; padding-left: 22px; columns: 2; column-gap: 40px; }
nav.toc a { color: var(--accent); text-decoration: none; }
nav.toc a:hover { text-decoration: underline; }
section { margin-top: 30px; }
h2 { font-size: 23px; margin: 0 0 8px; padding-top: 14px; border-top: 1px solid var(--line); }
h3 { font-size: 18px; margin: 22px 0 6px; overflow-wrap: anywhere; }
p { margin: 8px 0; }
.lead { color: var(--muted); font-size: 15px; max-width: 820px; }
.muted { color: var(--muted); }
.verdict { border-left: 5px solid var(--accent); background: var(--soft); padding: 14px 18px;
           border-radius: 6px; font-size: 16.5px; }
.verdict.pass { border-color: var(--good); } .verdict.fail { border-color: var(--bad); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr));
         gap: 12px; margin: 16px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.card .k { color: var(--muted); font-size: 13px; }
.card .v { font-size: 23px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .d { font-size: 13px; color: var(--muted); }
.badge { display: inline-block; padding: 1px 10px; border-radius: 999px; font-weight: 600;
         font-size: 13px; vertical-align: 2px; }
.badge.pass { background: #dafbe1; color: var(--good); }
.badge.fail { background: #ffebe9; color: var(--bad); }
.badge.none { background: #eaeef2; color: var(--muted); }
table { border-collapse: collapse; width: 100%; font-size: 14.5px; margin: 10px 0 6px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
thead th { background: var(--soft); font-weight: 600; border-bottom: 2px solid var(--line); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:hover { background: #fbfcfd; }
caption { caption-side: bottom; text-align: left; color: var(--muted); font-size: 13px;
          padding-top: 6px; }
td ul { margin: 0; padding-left: 18px; }
.scroll { max-height: 440px; overflow: auto; border: 1px solid var(--line); border-radius: 6px; }
.scroll table { margin: 0; }
.scroll thead th { position: sticky; top: 0; }
.pair, .figrow { display: grid; grid-template-columns: 1fr 1fr; gap: 20px; }
.figrow figure { margin: 8px 0; }
@media (max-width: 760px) { .pair, .figrow { grid-template-columns: 1fr; }
                            nav.toc ol { columns: 1; } }
table.kv th { width: 34%; font-weight: 500; color: var(--muted); background: none;
              border-bottom: 1px solid var(--line); }
figure { margin: 14px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13.5px; margin-top: 4px; max-width: 860px; }
blockquote { margin: 6px 0; padding: 8px 14px; background: var(--soft); border-radius: 6px;
             white-space: pre-wrap; overflow-wrap: anywhere; }
details { margin: 6px 0; } summary { cursor: pointer; color: var(--accent); }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
       font-size: 13px; background: var(--soft); padding: 1px 4px; border-radius: 4px;
       overflow-wrap: anywhere; }
.for { color: #b42318; } .against { color: #1f5fbf; }
footer { color: var(--muted); font-size: 13px; margin-top: 40px; padding: 16px 0 40px;
         border-top: 1px solid var(--line); }
@media print { header.top { background: none; color: #000; }
               header.top dt, header.top .kicker { color: #444; } header.top dd { color: #000; }
               .scroll { max-height: none; overflow: visible; } }
"""

#: Nothing but inline style and data: images; a mistake in escaping still runs no script.
_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)


class _Page:
    """One report being built: its sections, and the figures they inline (kept as PNG)."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, str, str]] = []
        self.figures: dict[str, bytes] = {}

    def section(self, anchor: str, title: str, body: str) -> None:
        self.sections.append((anchor, title, body))

    def figure(self, name: str, figure: Any, alt: str, caption: str = "") -> str:
        """Render ``figure`` to PNG (kept as ``figures/<name>.png``) and inline it."""
        png = figure_png(figure, dpi=_DPI)
        width = round(figure.get_figwidth() * _CSS_DPI)
        self.figures[f"{name}.png"] = png
        encoded = base64.b64encode(png).decode("ascii")
        caption_html = f"<figcaption>{caption}</figcaption>" if caption else ""
        return (
            f'<figure><img src="data:image/png;base64,{encoded}" alt="{_e(alt)}" '
            f'width="{width}">{caption_html}</figure>'
        )

    def render(self, *, title: str, kicker: str, meta: Sequence[tuple[str, str]]) -> str:
        meta_html = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in meta)
        toc = "".join(
            f'<li><a href="#{_e(anchor)}">{_e(name)}</a></li>' for anchor, name, _ in self.sections
        )
        sections = "\n".join(
            f'<section id="{_e(anchor)}">\n<h2>{_e(name)}</h2>\n{body}\n</section>'
            for anchor, name, body in self.sections
        )
        from relcomp import __version__

        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">
<meta name="generator" content="relcomp {_e(__version__)}">
<title>{_e(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<header class="top"><div class="wrap">
<p class="kicker">{_e(kicker)}</p>
<h1>{_e(title)}</h1>
<dl>{meta_html}</dl>
</div></header>
<main class="wrap">
<nav class="toc" aria-label="Contents"><p class="title">Contents</p><ol>{toc}</ol></nav>
{sections}
<footer>Made by relcomp {_e(__version__)} on {_e(_now())}. This file is self-contained: figures
are inlined, nothing is loaded from the network.</footer>
</main>
</body>
</html>
"""


def _kv_table(rows: Sequence[Sequence[str]]) -> str:
    """A two-column (name, value) table; cells are already HTML."""
    body = "".join(f"<tr><th scope='row'>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def _table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    numeric: Sequence[int] = (),
    caption: str = "",
    scroll: bool = False,
) -> str:
    """A table from cells that are already HTML (escape text before passing it)."""
    numeric_columns = set(numeric)

    def cell(tag: str, index: int, content: str) -> str:
        attribute = ' class="num"' if index in numeric_columns else ""
        return f"<{tag}{attribute}>{content}</{tag}>"

    head = "".join(cell("th", i, _e(name)) for i, name in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, content) for i, content in enumerate(row)) + "</tr>"
        for row in rows
    )
    caption_html = f"<caption>{caption}</caption>" if caption else ""
    table = f"<table>{caption_html}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>' if scroll else table


# -- token explanations ------------------------------------------------------------------

_HOW_TO_READ_TOKENS = (
    "Layer-wise Relevance Propagation (LRP) sends the model's score back through the "
    "network, layer by layer, and splits it over the input words. "
    '<span class="for">Red</span> words pushed the score up, '
    '<span class="against">blue</span> words pushed it down, and the stronger the colour, the '
    "larger the share. For a cross-encoder the query and the document split one score, so "
    "they share one colour scale; for a bi-encoder each side's relevance adds up to the "
    "similarity on its own, so each side has its own scale. The <em>conservation error</em> "
    "is the part of the score that no word received (biases and the rules' stabilisers): "
    "small compared with the score means the picture is complete."
)


def _top_words(explanation: TokenRelevance, segment: int, k: int) -> str:
    items = [
        (word, value)
        for word, value, seg in zip(
            explanation.words, explanation.word_relevance, explanation.word_segment, strict=True
        )
        if seg == segment
    ]
    if not items:
        return ""
    supporting = [item for item in sorted(items, key=lambda i: -i[1])[:k] if item[1] > 0]
    opposing = [item for item in sorted(items, key=lambda i: i[1])[:k] if item[1] < 0]
    rows = []
    for index in range(max(len(supporting), len(opposing), 1)):
        row = []
        for group in (supporting, opposing):
            if index < len(group):
                word, value = group[index]
                row += [f"<code>{_e(word)}</code>", _fixed(value, 4, signed=True)]
            else:
                row += ["", ""]
        rows.append(row)
    name = "Query" if segment == 0 else "Document"
    return (
        f"<div><h4>{name}: top {k} words</h4>"
        + _table(("for the score", "relevance", "against", "relevance"), rows, numeric=(1, 3))
        + "</div>"
    )


def _explanation_block(
    page: _Page,
    explanation: TokenRelevance,
    index: int,
    *,
    figure_prefix: str,
    top_k: int,
    heading: bool = True,
) -> str:
    score = explanation.score
    error = explanation.conservation_error
    relative = (
        f" ({abs(error) / abs(score):.0%} of the score)"
        if _number(score) and _number(error) is not None
        else ""
    )
    side = {
        "pair": "cross-encoder pair (one score, split over both texts)",
        "both": "bi-encoder, both sides (each side sums to the similarity)",
    }.get(explanation.side, f"bi-encoder, {explanation.side} side")
    facts = _table(
        ("score", "method", "what is explained", "conservation error"),
        [
            [
                _fixed(score, 4),
                _e(explanation.method),
                _e(side),
                _fixed(error, 4) + _e(relative),
            ]
        ],
        numeric=(0,),
    )
    document = explanation.document
    preview = _e(document[:600]) + ("…" if len(document) > 600 else "")
    # Headings show the query cut to 60 characters; a longer one is also given in full.
    query = explanation.query
    texts = (
        f"<p><strong>Query</strong></p><blockquote>{_e(query)}</blockquote>"
        if _shorten(query, 60) != query
        else ""
    ) + (
        f"<details><summary>Document text ({len(document)} characters)</summary>"
        f"<blockquote>{preview}</blockquote></details>"
    )
    try:
        figure = page.figure(
            f"{figure_prefix}{index}",
            token_heatmap(explanation),
            alt=f"Word relevance for pair {index}: {explanation.query}",
            caption=(
                "Each word coloured by its relevance; the colour scale is symmetric around "
                "zero. Special tokens are left out of the picture; their share is noted under it."
            ),
        )
    except ValueError as error:
        figure = f"<p class='muted'>{_e(error)}</p>"
    tables = "".join(_top_words(explanation, segment, top_k) for segment in (0, 1))
    title = f"<h3>Pair {index}: {_e(_shorten(query, 60))}</h3>" if heading else ""
    return f"{title}{texts}{facts}{figure}<div class='pair'>{tables}</div>"


def _interaction_block(
    page: _Page, interactions: TokenInteractions, index: int, prefix: str
) -> str:
    figure = page.figure(
        f"{prefix}{index}",
        interaction_heatmap(interactions),
        alt=f"Token interactions for pair {index}: {interactions.query}",
        caption=(
            "BiLRP: how much each (query token, document token) match adds to the similarity. "
            "The entries add up to the score, up to the conservation error "
            f"({_fixed(interactions.conservation_error, 4)})."
        ),
    )
    rows = [
        [f"<code>{_e(q)}</code>", f"<code>{_e(d)}</code>", _fixed(v, 4, signed=True)]
        for q, d, v in interactions.top_pairs(8)
    ]
    return (
        f"<h3>Interactions {index}: {_e(_shorten(interactions.query, 90))}</h3>"
        f"<p class='lead'>Score {_fixed(interactions.score, 4)} by {_e(interactions.method)}.</p>"
        + figure
        + _table(("query token", "document token", "interaction"), rows, numeric=(2,))
    )


def _shorten(text: str, length: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= length else text[: length - 1] + "…"


def _build_explanation(
    explanations: Sequence[TokenRelevance],
    interactions: Sequence[TokenInteractions] | None,
    top_k: int,
) -> _Page:
    if not explanations and not interactions:
        raise ValueError("nothing to report: no explanations and no interactions")
    page = _Page()
    page.section(
        "how-to-read", "How to read this report", f"<p class='lead'>{_HOW_TO_READ_TOKENS}</p>"
    )
    for index, explanation in enumerate(explanations, start=1):
        page.section(
            f"pair-{index}",
            f"Pair {index}: {_shorten(explanation.query, 60)}",
            _explanation_block(
                page,
                explanation,
                index,
                figure_prefix="explanation_tokens_",
                top_k=top_k,
                heading=False,
            ),
        )
    for index, item in enumerate(interactions or (), start=1):
        page.section(
            f"interactions-{index}",
            f"Token interactions {index}",
            _interaction_block(page, item, index, "explanation_interactions_"),
        )
    return page


def _explanation_meta(
    explanations: Sequence[TokenRelevance],
    interactions: Sequence[TokenInteractions] | None,
    model: str | None,
) -> list[tuple[str, str]]:
    methods = sorted({e.method for e in explanations} | {i.method for i in interactions or ()})
    pairs = len(explanations) or len(interactions or ())
    return [
        ("model", model or NOT_MEASURED),
        ("method", ", ".join(methods)),
        ("pairs", str(pairs)),
        ("date", _now()),
    ]


def explanation_report(
    explanations: Sequence[TokenRelevance],
    interactions: Sequence[TokenInteractions] | None = None,
    *,
    model: str | None = None,
    title: str | None = None,
    top_k: int = 8,
) -> str:
    """One self-contained HTML page explaining (query, document) pairs word by word.

    For each pair: the texts, the score, the method, the conservation error, a token
    heatmap (query and document apart) and the top ``top_k`` words for and against the
    score on each side; then a query-token × document-token heatmap for each BiLRP
    ``interactions`` artifact.

    Args:
        explanations: one :class:`TokenRelevance` per pair.
        interactions: optional :class:`TokenInteractions` (bi-encoders).
        model: the model's name or path, shown in the header.
        title: the page title (default: "Why did the model score these pairs?").
        top_k: words listed per side and direction.

    Returns:
        The page as a string.
    """
    page = _build_explanation(explanations, interactions, top_k)
    return page.render(
        title=title or "Why did the model score these pairs?",
        kicker="relcomp · token relevance",
        meta=_explanation_meta(explanations, interactions, model),
    )


def _write(page_html: str, figures: Mapping[str, bytes], html_path: Path) -> Path:
    """PNGs first, the page last, each through a temporary name and a rename."""
    figure_folder = html_path.parent / "figures"
    for name, png in figures.items():
        atomic_write_bytes(figure_folder / name, png)
    return atomic_write_text(html_path, page_html)


#: Figures of :func:`write_explanation_report` start with this; the run report's do not.
_EXPLANATION = "explanation_"


def _remove_stale_figures(
    folder: Path, written: Mapping[str, bytes], owned: Callable[[str], bool]
) -> None:
    """Delete the PNGs of an earlier page of this kind that the page just written does not show."""
    for stale in (folder / "figures").glob("*.png"):
        if owned(stale.name) and stale.name not in written:
            stale.unlink()


def write_explanation_report(
    output_dir: str | os.PathLike[str],
    explanations: Sequence[TokenRelevance],
    interactions: Sequence[TokenInteractions] | None = None,
    *,
    model: str | None = None,
    top_k: int = 8,
) -> Path:
    """Write ``output_dir/explanation.html`` and ``output_dir/figures/explanation_*.png``.

    Returns:
        The HTML file's path.

    Example:
        >>> import tempfile, pathlib
        >>> from relcomp.artifacts import TokenRelevance
        >>> explanation = TokenRelevance(
        ...     method="AttnLRP", query="cat", document="a cat", score=1.0, tokens=(),
        ...     relevance=(), segment=(), words=("cat", "a", "cat"),
        ...     word_relevance=(0.5, 0.1, 0.4), word_segment=(0, 1, 1), conservation_error=0.0,
        ... )
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> write_explanation_report(out, [explanation]).name
        'explanation.html'
        >>> sorted(p.name for p in (out / "figures").iterdir())
        ['explanation_tokens_1.png']
    """
    page = _build_explanation(explanations, interactions, top_k)
    page_html = page.render(
        title="Why did the model score these pairs?",
        kicker="relcomp · token relevance",
        meta=_explanation_meta(explanations, interactions, model),
    )
    page_path = _write(page_html, page.figures, Path(output_dir) / "explanation.html")
    _remove_stale_figures(
        page_path.parent, page.figures, lambda name: name.startswith(_EXPLANATION)
    )
    return page_path


# -- compression report ------------------------------------------------------------------


def _main_measure(quality: QualityComparison) -> str:
    measures = list(quality.measures or quality.reference.measures)
    for name in measures:
        if name.lower() == NDCG_AT_10.lower():
            return str(name)
    return str(measures[0]) if measures else NDCG_AT_10


def _difference(quality: QualityComparison, measure: str) -> dict[str, Any]:
    """Δ, p-value and significance of one measure; Δ from the means when not recorded."""
    recorded = quality.difference.get(measure) or {}
    delta = _number(recorded.get("delta"))
    if delta is None:
        reference = _number(quality.reference.measures.get(measure))
        compressed = _number(quality.compressed.measures.get(measure))
        if reference is not None and compressed is not None:
            delta = compressed - reference
    return {
        "delta": delta,
        "p_value": _number(recorded.get("p_value")),
        "significant": recorded.get("significant")
        if isinstance(recorded.get("significant"), bool)
        else None,
    }


def _latency(side: SystemQuality, percentile: str) -> float | None:
    return _number((side.latency_ms or {}).get(percentile))


def _gate_state(gate: Any) -> str:
    if not isinstance(gate, Mapping) or not isinstance(gate.get("passed"), bool):
        return "none"
    return "pass" if gate["passed"] else "fail"


def _gate_badge(gate: Any) -> str:
    state = _gate_state(gate)
    text = {"pass": "gate passed", "fail": "gate failed", "none": "no gate"}[state]
    return f'<span class="badge {state}">{text}</span>'


def _summary(run: CompressionRun) -> str:
    quality = run.quality
    reference, compressed = quality.reference, quality.compressed
    measure = _main_measure(quality)
    difference = _difference(quality, measure)
    model = quality.model or run.plan.model
    sentences = []
    size_r, size_c = _number(reference.size_mb), _number(compressed.size_mb)
    method = run.plan.method
    if size_r is not None and size_c is not None and size_c > 0:
        sentences.append(
            f"The compressed <strong>{_e(model)}</strong> ({_e(method)} plan) stores "
            f"<strong>{size_c:.1f} MB</strong> against {size_r:.1f} MB for the reference: "
            f"<strong>{size_r / size_c:.1f}× smaller</strong>."
        )
    else:
        sentences.append(
            f"The compressed <strong>{_e(model)}</strong> ({_e(method)} plan); its size against "
            f"the reference was {NOT_MEASURED}."
        )
    value_r = _number(reference.measures.get(measure))
    value_c = _number(compressed.measures.get(measure))
    where = (
        " ".join(str(part) for part in (quality.dataset, quality.split) if part)
        or "the evaluation set"
    )
    n_queries = quality.n_queries
    queries = f", {n_queries} queries" if n_queries is not None else ""
    if value_r is not None and value_c is not None:
        delta = difference["delta"] if difference["delta"] is not None else value_c - value_r
        if difference["significant"] is None:
            significance = "significance " + NOT_MEASURED
        elif difference["significant"]:
            significance = "a significant change"
        else:
            significance = "not a significant change"
        p_text = "" if difference["p_value"] is None else f", p = {_p_value(difference['p_value'])}"
        points = f"{100 * delta:+.2f}".replace("-", "−")
        sentences.append(
            f"On {_e(where)}{_e(queries)}, {_e(measure)} goes from {value_r:.4f} to "
            f"<strong>{value_c:.4f}</strong> ({points} points; {significance}{p_text})."
        )
    else:
        sentences.append(f"{_e(measure)} of the two models: {NOT_MEASURED}.")
    gate = quality.gate
    state = _gate_state(gate)
    if not isinstance(gate, Mapping):
        sentences.append("No quality gate was set.")
    elif state == "none":
        sentences.append(f"A quality gate was set; its result was {NOT_MEASURED}.")
    elif gate.get("kind") == "agreement":
        sentences.append(_agreement_sentence(gate, state))
    else:
        loss, allowed = _number(gate.get("loss_points")), _number(gate.get("max_ndcg_loss"))
        split = gate.get("split")
        on_split = f" on the {_e(split)} split" if split else ""
        if loss is None:
            loss_text = "its loss"
        elif loss < 0:
            loss_text = f"a gain of {-loss:.2f} points{on_split}"
        else:
            loss_text = f"a loss of {loss:.2f} points{on_split}"
        allowed_text = (
            f"{allowed:.2f} points allowed" if allowed is not None else "the allowed loss"
        )
        verdict = "passed" if state == "pass" else "failed"
        relation = "within" if state == "pass" else "over"
        sentences.append(
            f"It <strong>{verdict}</strong> the quality gate: {loss_text}, {relation} the "
            f"{allowed_text}."
        )
    verdict_html = f'<p class="verdict {state}">{" ".join(sentences)}</p>'

    def card(key: str, value: str, detail: str = "") -> str:
        return (
            f'<div class="card"><div class="k">{_e(key)}</div><div class="v">{value}</div>'
            f'<div class="d">{detail}</div></div>'
        )

    cards = [
        card(
            "size",
            _fixed(size_c, 1, " MB"),
            f"{size_r / size_c:.1f}× smaller than {size_r:.1f} MB"
            if size_r is not None and size_c
            else f"reference: {_fixed(size_r, 1, ' MB')}",
        ),
        card(
            measure,
            _fixed(value_c, 4),
            f"reference {_fixed(value_r, 4)}, Δ {_fixed(difference['delta'], 4, signed=True)}",
        ),
        card(
            "latency (p50)",
            _fixed(_latency(compressed, "p50"), 2, " ms"),
            f"reference {_fixed(_latency(reference, 'p50'), 2, ' ms')}",
        ),
        card("quality gate", _gate_badge(gate), _e(_gate_detail(gate))),
    ]
    return verdict_html + f'<div class="cards">{"".join(cards)}</div>'


def _agreement_sentence(gate: Mapping[str, Any], state: str) -> str:
    """The verdict of an agreement gate (a collection with no judged dev or train split)."""
    figures = []
    for label, key, least in (
        ("top-10 overlap", "top10_overlap", "min_overlap"),
        ("Kendall's τ", "kendall_tau", "min_tau"),
    ):
        value, minimum = _number(gate.get(key)), _number(gate.get(least))
        figures.append(
            f"{label} {_fixed(value, 3)}"
            + (f" (at least {minimum:.2f})" if minimum is not None else "")
        )
    n_queries = gate.get("n_queries")
    queries = f"{n_queries} " if isinstance(n_queries, int) else ""
    verdict = "passed" if state == "pass" else "failed"
    return (
        f"It <strong>{verdict}</strong> the quality gate, which, with no judged dev or train "
        f"queries to read, checks agreement with the uncompressed model on {_e(queries)}corpus "
        f"pseudo-queries: {', '.join(figures)}."
    )


def _gate_detail(gate: Any) -> str:
    if not isinstance(gate, Mapping):
        return "no maximum loss was set"
    if gate.get("kind") == "agreement":
        overlap, tau = _number(gate.get("min_overlap")), _number(gate.get("min_tau"))
        parts = ["agreement with the uncompressed model"]
        if overlap is not None and tau is not None:
            parts.append(f"top-10 overlap ≥ {overlap:.2f}, Kendall's τ ≥ {tau:.2f}")
        parts.append("on corpus pseudo-queries")
        return ", ".join(parts)
    allowed = _number(gate.get("max_ndcg_loss"))
    split = gate.get("split")
    parts = []
    if allowed is not None:
        parts.append(f"max loss {allowed:.2f} points")
    if split:
        parts.append(f"checked on {split}")
    return ", ".join(parts)


def _untested_row(label: str, old: float | None, new: float | None, digits: int) -> list[str]:
    """A quality-table row of two values and their difference, with no test behind it."""
    delta = (
        _fixed(new - old, digits, signed=True)
        if old is not None and new is not None
        else _missing()
    )
    return [label, _fixed(old, digits), _fixed(new, digits), delta, "—", "—"]


def _quality_section(run: CompressionRun) -> str:
    quality = run.quality
    reference, compressed = quality.reference, quality.compressed
    measures = list(quality.measures or reference.measures)
    rows = []
    for measure in measures:
        difference = _difference(quality, measure)
        significant = difference["significant"]
        rows.append(
            [
                _e(measure),
                _fixed(reference.measures.get(measure), 4),
                _fixed(compressed.measures.get(measure), 4),
                _fixed(difference["delta"], 4, signed=True),
                _p_value(difference["p_value"]),
                _missing() if significant is None else ("yes" if significant else "no"),
            ]
        )

    main = _main_measure(quality)
    shallower = reference.by_depth
    for k in shallower:  # the same scores, had only the first stage's top-k been re-ranked
        old, new = (_number(side.by_depth.get(k, {}).get(main)) for side in (reference, compressed))
        rows.append(_untested_row(_e(f"{main}, top-{k} re-ranked"), old, new, 4))

    def ratio_text(old: float | None, new: float | None, smaller: str, larger: str) -> str:
        if old is None or new is None or new <= 0 or old <= 0:
            return ""
        ratio = old / new
        return f" ({ratio:.2f}× {smaller})" if ratio >= 1 else f" ({1 / ratio:.2f}× {larger})"

    size_r, size_c = _number(reference.size_mb), _number(compressed.size_mb)
    rows.append(
        [
            "size (MB)",
            _fixed(size_r, 1),
            _fixed(size_c, 1),
            (
                _fixed(size_c - size_r, 1, signed=True)
                + _e(ratio_text(size_r, size_c, "smaller", "larger"))
                if size_r is not None and size_c is not None
                else _missing()
            ),
            "—",
            "—",
        ]
    )
    for percentile in ("p50", "p95"):
        old, new = _latency(reference, percentile), _latency(compressed, percentile)
        rows.append(
            [
                f"latency {percentile} (ms)",
                _fixed(old, 2),
                _fixed(new, 2),
                (
                    _fixed(new - old, 2, signed=True) + _e(ratio_text(old, new, "faster", "slower"))
                    if old is not None and new is not None
                    else _missing()
                ),
                "—",
                "—",
            ]
        )
    old, new = _number(reference.pairs_per_s), _number(compressed.pairs_per_s)
    rows.append(_untested_row("throughput (pairs/s)", old, new, 1))
    n_queries = quality.n_queries
    significance = quality.significance
    test = "the paired test recorded in quality.json"
    if significance is not None and significance.get("test"):
        test = f"a paired {significance['test']}"
        if _number(significance.get("alpha")) is not None:
            test += f", significant below {significance['alpha']}"
    caption = (
        f"{_e(quality.dataset or 'dataset ' + NOT_MEASURED)} / "
        f"{_e(quality.split or 'split ' + NOT_MEASURED)}, "
        f"{_e(n_queries if n_queries is not None else NOT_MEASURED)} queries, "
        f"protocol {_e(quality.protocol or NOT_MEASURED)}. Δ is compressed − reference; "
        f"p-values from {_e(test)}, over the same queries; — means not applicable."
    )
    if shallower:
        caption += (
            f" The top-k rows re-read the same scores as if only the first stage's top-k of "
            f"each query had been re-ranked (the full depth is {_e(quality.depth)})."
        )
    header = (
        "",
        f"reference: {reference.name or 'reference'}",
        f"compressed: {compressed.name or 'compressed'}",
        "Δ",
        "p-value",
        "significant",
    )
    intro = (
        "<p class='lead'>The same queries, judged the same way, for the uncompressed reference "
        "and the compressed model. A difference is called significant only when the paired "
        "test says so; a small Δ that is not significant is within the noise of this query "
        "set.</p>"
    )
    return intro + _table(header, rows, numeric=(1, 2, 3, 4), caption=caption)


def _reference_point(quality: QualityComparison) -> dict[str, Any]:
    """The uncompressed model as a Pareto point: on the gate split, else the reported one."""
    if quality.candidates_reference is not None:
        return quality.candidates_reference.to_dict()
    reference = quality.reference.to_dict()
    reference["name"] = quality.reference.name or "reference"
    reference["latency_ms"] = _latency(quality.reference, "p50")
    return reference


def _candidates_section(page: _Page, run: CompressionRun) -> str | None:
    """Pareto plots and a table of every plan tried; ``None`` when fewer than two were."""
    tried = run.quality.candidates
    if len(tried) < 2:
        return None
    candidates = [candidate.to_dict() for candidate in tried]  # points, as pareto() reads them
    reference = _reference_point(run.quality)
    measure = _main_measure(run.quality)
    split = tried[0].split or run.quality.split
    where = f" on the {split} split" if split else ""
    plots, notes = [], []
    for axis, name in (("size_mb", "size"), ("latency_ms", "latency")):
        measured = [c for c in candidates if _number(c.get(axis)) is not None]
        if len(measured) < 2:
            notes.append(f"{measure} against {name}: {NOT_MEASURED} for two or more plans.")
            continue
        figure = pareto(candidates, axis, reference=reference, measure=measure)
        plots.append(
            page.figure(
                f"pareto_{name}",
                figure,
                alt=f"{measure} against {name} for every plan tried",
                caption=f"{_e(measure)}{_e(where)} against {name}; green: passed the gate, "
                "red: failed it.",
            )
        )
    rows = []
    for candidate, point in zip(tried, candidates, strict=True):
        passed = candidate.passed
        kept = " (kept)" if candidate.chosen and len(tried) > 1 else ""
        rows.append(
            [
                _e(candidate.name + kept),
                _e(candidate.budget),
                _fixed(candidate.size_mb, 1),
                _fixed(candidate.latency_ms, 2),
                _fixed(point_measure(point, measure), 4),
                _missing() if passed is None else ("passed" if passed else "failed"),
            ]
        )
    return (
        "<p class='lead'>Every plan that was tried, placed by quality against cost. Points on "
        "the dashed frontier are the ones no other plan beats on both axes; the star is the "
        f"uncompressed reference. Quality is {_e(measure)}{_e(where)}, the split the quality "
        "gate reads; the smallest plan that passed the gate was kept.</p>"
        + (f'<div class="figrow">{"".join(plots)}</div>' if plots else "")
        + "".join(f"<p class='muted'>{_e(note)}</p>" for note in notes)
        + _table(
            ("plan", "budget", "size (MB)", "latency (ms)", f"{measure}{where}", "gate"),
            rows,
            numeric=(2, 3, 4),
        )
    )


_ACHIEVED_LABELS = {
    "size_mb": "stored size (MB)",
    "bytes": "stored size (bytes)",
    "bits_per_weight": "bits per weight",
    "params_removed": "share of Linear weights removed",
    "sparsity": "share of activations zeroed",
}


def _plan_section(run: CompressionRun) -> str:
    plan = run.plan
    budget = ", ".join(f"{k} = {v:g}" for k, v in plan.budget.items()) or NOT_MEASURED
    achieved_rows = [
        [_e(_ACHIEVED_LABELS.get(key, key)), _plain_value(value)]
        for key, value in plan.achieved.items()
        if value is not None
    ]
    counts = Counter(action.split("(", 1)[0] for _, action in plan.entries)
    summary = ", ".join(f"{name} × {count}" for name, count in counts.most_common()) or "none"
    source = plan.relevance or {}
    source_text = (
        ", ".join(f"{k}: {v}" for k, v in source.items() if not isinstance(v, Mapping | list))
        if source
        else "no relevance recorded (a blind baseline or a hand-written plan)"
    )
    intro = (
        "<p class='lead'>A plan is data: an ordered list of (pattern, action) pairs. A pattern is "
        "a module name, a regular expression (<code>re:…</code>) or <code>_default</code>; for "
        "each module an explicit name wins over a regex, and a regex over the default.</p>"
        + _table(
            ("method", "budget asked", "actions", "made from"),
            [[_e(plan.method), _e(budget), _e(summary), _e(source_text)]],
        )
    )
    achieved = (
        "<h3>What the plan achieves</h3>" + _kv_table(achieved_rows)
        if achieved_rows
        else f"<p class='muted'>Achieved size and sparsity: {NOT_MEASURED}.</p>"
    )
    entries = _table(
        ("#", "pattern", "action"),
        [
            [str(i), f"<code>{_e(pattern)}</code>", f"<code>{_e(action)}</code>"]
            for i, (pattern, action) in enumerate(plan.entries, start=1)
        ],
        numeric=(0,),
        scroll=len(plan.entries) > 14,
        caption=f"{len(plan.entries)} entries, in plan order.",
    )
    return intro + achieved + f"<h3>Entries</h3>{entries}"


def _extreme_heads(relevance: ComponentRelevance, k: int = 3) -> str:
    if "head" not in relevance.components:
        return ""
    from relcomp.reports.figures import layer_label

    cells = [
        (f"layer {layer_label(name)}, head {head}", float(value))
        for name, values in relevance.by_kind("head").items()
        for head, value in enumerate(values)
    ]
    if len(cells) < 2 * k:
        return ""
    ordered = sorted(cells, key=lambda item: item[1])
    top = "; ".join(f"{_e(n)} ({v:.3g})" for n, v in ordered[::-1][:k])
    bottom = "; ".join(f"{_e(n)} ({v:.3g})" for n, v in ordered[:k])
    return (
        f"<p>Most relevant heads: {top}. Least relevant: {bottom} — the first candidates "
        "for fewer bits or pruning.</p>"
    )


def _components_section(page: _Page, run: CompressionRun) -> str:
    relevance = run.relevance
    if relevance is None:
        return f"<p class='muted'>component_relevance.json is not in this run folder: {NOT_MEASURED}.</p>"
    source = relevance.source or {}
    where = ", ".join(f"{k} {v}" for k, v in source.items() if not isinstance(v, Mapping | list))
    intro = (
        f"<p class='lead'>Where the model's decision is made. {_e(relevance.method)} relevance of "
        f"each attention head, attention block and MLP block, averaged (absolute values) over "
        f"{_e(relevance.n_pairs)} calibration pairs{' (' + _e(where) + ')' if where else ''}. "
        "Components with little relevance can lose precision or be removed with little effect "
        "on the ranking; this is what the plan is built from.</p>"
    )
    try:
        figure = page.figure(
            "component_relevance",
            component_heatmap(relevance),
            alt="Relevance per layer and head, and per attention and MLP block",
            caption=(
                "Left: mean |relevance| of each attention head (rows: layers, columns: heads). "
                "Right: mean |relevance| of each layer's attention and MLP output."
            ),
        )
    except ValueError as error:
        figure = f"<p class='muted'>{_e(error)}</p>"
    return intro + figure + _extreme_heads(relevance)


def _explanations_section(page: _Page, run: CompressionRun) -> str:
    if not run.explanations and not run.interactions:
        return (
            "<p class='muted'>No token explanations in this run folder (explanations/*.json).</p>"
        )
    intro = (
        "<p class='lead'>A few (query, document) pairs explained word by word with the "
        f"reference model. {_HOW_TO_READ_TOKENS}</p>"
    )
    blocks = [
        _explanation_block(page, explanation, index, figure_prefix="tokens_", top_k=6)
        for index, explanation in enumerate(run.explanations[:MAX_EXPLANATIONS], start=1)
    ]
    if len(run.explanations) > MAX_EXPLANATIONS:
        blocks.append(
            f"<p class='muted'>{len(run.explanations) - MAX_EXPLANATIONS} more explanations "
            "are in explanations/ and not shown here.</p>"
        )
    blocks += [
        _interaction_block(page, item, index, "interactions_")
        for index, item in enumerate(run.interactions[:MAX_EXPLANATIONS], start=1)
    ]
    return intro + "".join(blocks)


_PARITY_LABELS = {
    "reference": "reference",
    "candidate": "candidate",
    "max_abs_diff": "max |score difference|",
    "mean_abs_diff": "mean |score difference|",
    "kendall_tau": "Kendall τ of the rankings (mean over queries)",
    "kendall_tau_min": "Kendall τ, worst query",
    "top10_overlap": "top-10 overlap",
    "tie_rate_reference": "tie rate in the top-10, reference",
    "tie_rate_candidate": "tie rate in the top-10, candidate",
    "n_queries": "queries",
    "n_pairs": "(query, document) pairs",
    "notes": "notes",
}
_BUNDLE_LABELS = {
    "variant": "ONNX variant",
    "onnx_file": "ONNX file",
    "exporter": "exporter",
    "model_kind": "model kind",
    "family": "architecture family",
    "max_length": "longest input (tokens)",
    "size_mb": "size (MB)",
    "notes": "notes",
}
#: Bundle keys shown elsewhere (the plan, the gate, versions) or summarised (modules, nodes).
_BUNDLE_ELSEWHERE = frozenset(
    {"kind", "version", "parity", "plan", "gate", "versions", "provenance", "model"}
)


def _plain_value(value: Any) -> str:
    if isinstance(value, float):
        return _e(f"{value:.4g}").replace("-", "−") if math.isfinite(value) else _missing()
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        if not value:
            return _missing("none")
        return "<ul>" + "".join(f"<li>{_e(v)}</li>" for v in value) + "</ul>"
    if isinstance(value, Mapping | list | tuple):
        text = json.dumps(value, default=str)
        return f"<code>{_e(_shorten(text, 300))}</code>"
    if value is None:
        return _missing()
    return _e(value)


def _key_value_rows(
    data: Mapping[str, Any], labels: Mapping[str, str], skip: frozenset[str] = frozenset()
) -> list[list[str]]:
    """Known keys first, with their labels, then any other key as it is named."""
    rows = [[_e(label), _plain_value(data[key])] for key, label in labels.items() if key in data]
    rows += [
        [_e(key), _plain_value(value)]
        for key, value in data.items()
        if key not in labels and key not in skip and key not in ("kind", "version")
    ]
    return rows


def _bundle_rows(bundle: Mapping[str, Any]) -> list[list[str]]:
    """The bundle's description; its per-module and per-node maps are summarised as counts."""
    shown = dict(bundle)
    for key, name in (("size_bytes", "size (MB)"), ("fp32_size_bytes", "plain fp32 export (MB)")):
        value = _number(shown.pop(key, None))
        if value is not None:
            shown[name] = round(value / 1e6, 2)
    modules = shown.pop("modules", None)
    if isinstance(modules, Mapping) and modules:
        counts = Counter(str(v) for v in modules.values())
        shown["Linear modules by precision"] = ", ".join(
            f"{name} × {count}" for name, count in counts.most_common()
        )
    nodes = shown.pop("nodes", None)
    if isinstance(nodes, Mapping) and nodes:
        shown["graph nodes by precision"] = ", ".join(
            f"{name} × {len(v) if isinstance(v, list | tuple) else v}" for name, v in nodes.items()
        )
    fusion = shown.pop("fusion", None)
    if isinstance(fusion, Mapping) and fusion:
        shown["fused operators"] = ", ".join(f"{k}: {v}" for k, v in fusion.items())
    return _key_value_rows(shown, _BUNDLE_LABELS, _BUNDLE_ELSEWHERE)


def _parity_section(run: CompressionRun) -> str:
    if run.parity is None and run.bundle is None:
        return (
            "<p class='muted'>No ONNX bundle description or parity figures in this run folder "
            f"(relcomp_bundle.json, parity.json): {NOT_MEASURED}.</p>"
        )
    parts = [
        "<p class='lead'>The exported ONNX model against the torch model it came from, on the "
        "same inputs: how far the scores move (in score units), and whether the rankings "
        "agree (a Kendall τ and a top-10 overlap of 1 mean identical rankings).</p>"
    ]
    if run.parity is not None:
        rows = _key_value_rows(
            run.parity, _PARITY_LABELS, frozenset({"per_query", "source", "explanation"})
        )
        parts.append("<h3>Parity</h3>" + _kv_table(rows))
        parts.append(_explanation_parity(run.parity.get("explanation")))
    else:
        parts.append(f"<p class='muted'>Parity against torch: {NOT_MEASURED}.</p>")
    if run.bundle is not None:
        parts.append("<h3>Bundle</h3>" + _kv_table(_bundle_rows(run.bundle)))
    return "".join(parts)


def _explanation_parity(explanation: Any) -> str:
    """Whether the compressed model ranks for the same reasons: AttnLRP agreement per pair."""
    if not isinstance(explanation, Mapping) or not explanation:
        return f"<p class='muted'>Explanation parity: {NOT_MEASURED}.</p>"
    if "skipped" in explanation:
        return (
            f"<p class='muted'>Explanation parity not measured: {_e(explanation['skipped'])}.</p>"
        )
    head = (
        "<h3>Explanation parity</h3><p>AttnLRP token relevance of the compressed model's torch "
        "twin against the uncompressed model's, on the same pairs: Spearman's ρ over the "
        f"tokens and the overlap of their top-{_e(explanation.get('k'))} tokens (1 means the "
        "same evidence in the same order).</p>"
    )
    rows = [
        ["pairs", _plain_value(explanation.get("n_pairs"))],
        ["mean Spearman ρ", _plain_value(explanation.get("spearman"))],
        ["mean top-k overlap", _plain_value(explanation.get("top_k_overlap"))],
    ]
    per_pair = explanation.get("per_pair") or []
    rows += [
        [
            _e(str(pair.get("query", ""))),
            _e(f"ρ {pair.get('spearman', 0):.3f}, overlap {pair.get('top_k_overlap', 0):.2f}"),
        ]
        for pair in per_pair
        if isinstance(pair, Mapping)
    ]
    return head + _kv_table(rows)


def _recovery_section(page: _Page, run: CompressionRun) -> str | None:
    """The recovery's log, when the run recovered a pruned model before export.

    The loss curve (training loss per step, smoothed, and the held-out loss at each
    checkpoint), the gate split's nDCG@10 before and after recovery when the gate
    measured them (``quality.json``'s ``provenance.recovery.gate``), and the
    checkpoints as a table.
    """
    log_file = run.folder / "recovered" / "recovery_log.json"
    if not log_file.is_file():
        return None
    log = _read_log(log_file)
    intro = (
        "<p class='lead'>The pruned model was distilled back toward the uncompressed one on "
        "the collection's train/dev queries and corpus pseudo-queries (never the reported "
        "split; the gate's queries left out) before it was quantized and exported.</p>"
    )
    hidden_weight = _number(log.get("hidden_weight")) or 0.0
    label_weight = _number(log.get("label_weight")) or 0.0
    summary = _kv_table(
        [
            ["steps", _plain_value(log.get("steps"))],
            ["pairs seen", _plain_value(log.get("pairs_seen"))],
            ["training time (s)", _plain_value(log.get("seconds"))],
            ["device", _plain_value(log.get("device"))],
            ["input length", _plain_value(log.get("max_length"))],
            ["loss", _plain_value(log.get("loss"))],
            [
                "hidden-state matching",
                _e(f"weight {hidden_weight:g}, layers (student, teacher) ")
                + _plain_value(log.get("hidden_layers"))
                if hidden_weight
                else "off",
            ],
            *(
                [["in-batch similarity KL weight", _plain_value(log.get("similarity_weight", 1.0))]]
                if log.get("loss") == "embedding"
                else []
            ),
            [
                "judged positives (train/dev qrels, pseudo-queries' sources)",
                _e(f"weight {label_weight:g}") if label_weight else "off",
            ],
        ]
    )
    checkpoints = [c for c in log.get("checkpoints") or [] if isinstance(c, Mapping)]
    losses = [v for v in log.get("losses") or [] if _number(v) is not None]
    figure = ""
    if losses or any("heldout_loss" in c for c in checkpoints):
        terms = [f"the hidden-state term ({hidden_weight:g} × MSE)"] if hidden_weight else []
        if label_weight:
            terms.append(f"the judged-positives term ({label_weight:g} × NLL)")
        hidden_note = (
            f" The training loss includes {' and '.join(terms)}; "
            "the held-out loss is the distillation loss alone."
            if terms
            else ""
        )
        figure = "<h3>Loss curve</h3>" + page.figure(
            "recovery_loss",
            recovery_curve([float(v) for v in losses], checkpoints),
            alt="recovery loss per step and held-out loss at checkpoints",
            caption="Training loss at every step (faint) and its trailing mean; held-out "
            "loss on groups kept out of training, at each checkpoint." + hidden_note,
        )
    names = sorted({k for c in checkpoints for k in c if k != "step"})
    header = "".join(f"<th>{_e(n.replace('_', ' '))}</th>" for n in names)
    body = "".join(
        "<tr><td>"
        + _e(c.get("step"))
        + "</td>"
        + "".join(f"<td>{_plain_value(c.get(n))}</td>" for n in names)
        + "</tr>"
        for c in checkpoints
    )
    curve = (
        f"<h3>Loss at each checkpoint</h3><table><tr><th>step</th>{header}</tr>{body}</table>"
        if checkpoints
        else ""
    )
    return intro + summary + figure + _recovery_gate(run) + curve


def _recovery_gate(run: CompressionRun) -> str:
    """The gate split's nDCG@10: reference, pruned before recovery, the bundle after it."""
    recovery = (run.quality.provenance or {}).get("recovery")
    gate = recovery.get("gate") if isinstance(recovery, Mapping) else None
    if not isinstance(gate, Mapping):
        return (
            "<p class='muted'>The gate split's nDCG@10 before and after recovery: "
            f"{NOT_MEASURED} (the run had no quality gate).</p>"
        )
    measure = str(gate.get("measure", NDCG_AT_10))
    reference = _number(gate.get("reference"))
    quantize = (run.quality.provenance or {}).get("quantize")
    after_name = "after recovery: the exported bundle" + (
        f" (also quantized: {quantize})" if quantize else ""
    )
    rows = []
    for name, key in (
        ("reference (uncompressed, torch fp32)", "reference"),
        ("pruned, before recovery (torch fp32)", "before"),
        (after_name, "after"),
    ):
        value = _number(gate.get(key))
        change = (
            _e(f"{value - reference:+.4f}".replace("-", "−"))
            if value is not None and reference is not None and key != "reference"
            else ""
        )
        shown = _e(f"{value:.4f}") if value is not None else _missing()
        rows.append(f"<tr><td>{_e(name)}</td><td>{shown}</td><td>{change}</td></tr>")
    where = f"{gate.get('split', '?')} split, {gate.get('n_queries', '?')} queries"
    return (
        f"<h3>{_e(measure)} on the gate split before and after recovery</h3>"
        f"<p class='muted'>{_e(where)}; the same queries and candidates for all three.</p>"
        f"<table><tr><th>model</th><th>{_e(measure)}</th><th>Δ against the reference</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _bytes_text(value: float) -> str:
    """Bytes as a reader reads them: ``1.54 KB``, ``15.4 MB`` (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:g} B"


def _smaller_text(float_bytes: float, stored: float) -> str:
    return f"{float_bytes / stored:.3g}× smaller" if stored else ""


def _index_section(run: CompressionRun) -> str | None:
    """The retriever's compressed corpus index, when the bundle carries an ``index.json``.

    Bytes per document come from the settings; bytes in total and the quality against
    the float index from ``index_quality.json`` (the corpus size and the measurement),
    shown as "not measured" when that file is absent.
    """
    settings = run.index
    if settings is None:
        return None
    measured = run.index_quality or {}
    per_document = settings.bytes_per_document
    rescore_per_document = settings.rescore_bytes_per_document
    float_per_document = settings.float32_bytes_per_document
    with_rescore = per_document + rescore_per_document
    selection = "all" if settings.kept == settings.dimension else settings.selection
    rescoring = (
        f"{settings.rescore}× the candidates, rescored with the float query against "
        f"{settings.rescore_with} document vectors"
        if settings.rescore > 1
        else "none"
    )

    def stored(per: float, documents: float | None = None) -> str:
        count = documents if documents is not None else 1.0
        text = _bytes_text(per * count) if documents is not None else f"{per:g}"
        if rescore_per_document:
            extra = rescore_per_document * count
            text += f" + {_bytes_text(extra) if documents is not None else f'{extra:g}'} to rescore"
        return text

    documents = _number(measured.get("n_documents"))
    rows = [
        ["precision", _e(settings.precision)],
        ["dimensions kept", _e(f"{settings.kept} of {settings.dimension} ({selection})")],
        ["rescoring", _e(rescoring)],
        [
            "bytes per document",
            _e(
                f"{stored(per_document)} against {float_per_document} in float32 "
                f"({_smaller_text(float_per_document, per_document)}"
                + (
                    f"; {_smaller_text(float_per_document, with_rescore)} with the rescoring vectors)"
                    if rescore_per_document
                    else ")"
                )
            ),
        ],
        [
            "bytes in total",
            _e(
                f"{stored(per_document, documents)} against "
                f"{_bytes_text(float_per_document * documents)} in float32, "
                f"{documents:.0f} documents"
            )
            if documents is not None
            else _missing(),
        ],
    ]
    lead = (
        "<p class='lead'>The bundle carries a compressed index of the corpus embeddings "
        "(<code>index.json</code>): <code>relcomp evaluate -m</code> on this folder retrieves "
        "through it. The model itself is the same; what shrinks is what grows with the corpus.</p>"
    )
    values = measured.get("measures")
    if not (
        isinstance(values, Mapping)
        and isinstance(values.get("float32"), Mapping)
        and isinstance(values.get("index"), Mapping)
    ):
        return (
            lead
            + _kv_table(rows)
            + "<p class='muted'>Quality against the float index: "
            + _e(NOT_MEASURED)
            + f" ({_e(INDEX_QUALITY_FILE)} is not beside index.json).</p>"
        )
    test = measured.get("paired_test")
    p_values = test.get("p_values") if isinstance(test, Mapping) else None
    p_values = p_values if isinstance(p_values, Mapping) else {}
    table_rows = []
    for measure in values["index"]:
        old, new = _number(values["float32"].get(measure)), _number(values["index"].get(measure))
        table_rows.append(
            [
                _e(measure),
                _fixed(old, 4),
                _fixed(new, 4),
                _fixed(None if old is None or new is None else new - old, 4, signed=True),
                _fixed(None if not old or new is None else 100 * new / old, 1, unit=" %"),
                _p_value(p_values.get(measure)),
            ]
        )
    where = " / ".join(
        str(measured[key]) for key in ("dataset", "split") if measured.get(key) is not None
    )
    queries = _number(measured.get("n_queries"))
    caption = (
        f"The same model's float32 index against this one on {_e(where or NOT_MEASURED)}"
        + (f", {queries:.0f} queries" if queries is not None else "")
        + "; Δ is this index − float32, p the paired test."
    )
    quality = _table(
        ["measure", "float32 index", "this index", "Δ", "kept", "p"],
        table_rows,
        numeric=(1, 2, 3, 4, 5),
        caption=caption,
    )
    return lead + _kv_table(rows) + quality


def _read_log(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        return {"steps": f"unreadable ({error})"}
    return data if isinstance(data, Mapping) else {}


def _provenance_section(run: CompressionRun) -> str:
    quality = run.quality
    provenance: dict[str, Any] = {}
    recorded = (run.bundle or {}).get("provenance")
    for source in (recorded if isinstance(recorded, Mapping) else {}, quality.provenance):
        provenance.update(source)
    steps = (run.manifest or {}).get("steps") or {}
    finished = sorted(
        str(entry["finished"])
        for entry in steps.values()
        if isinstance(entry, Mapping) and entry.get("finished")
    )
    run_date = provenance.get("date") or (finished[-1] if finished else None)
    rows = [
        ["model", _e(quality.model or run.plan.model)],
        ["dataset", _plain_value(quality.dataset)],
        ["split", _plain_value(quality.split)],
        ["protocol", _plain_value(quality.protocol)],
        ["queries", _plain_value(quality.n_queries)],
        [
            "command",
            f"<code>{_e(provenance['command'])}</code>"
            if provenance.get("command")
            else _missing("not recorded"),
        ],
        ["run finished", _e(run_date) if run_date else _missing("not recorded")],
        ["plan fingerprint", f"<code>{_e(run.plan.fingerprint())}</code>"],
    ]
    for key, value in (
        ("first_stage", quality.first_stage),
        ("depth", quality.depth),
        ("max_length", quality.max_length),
    ):
        if value is not None:
            rows.append([_e(key.replace("_", " ")), _plain_value(value)])
    for key, value in provenance.items():
        if key not in ("command", "date", "versions"):
            rows.append([_e(key.replace("_", " ")), _plain_value(value)])
    versions = provenance.get("versions") or (run.bundle or {}).get("versions")
    if isinstance(versions, Mapping):
        rows += [[_e(f"{name} (at export)"), _e(version)] for name, version in versions.items()]
    if steps:
        rows.append(
            [
                "steps finished",
                "<br>".join(
                    f"{_e(name)}: {_e(entry.get('finished', 'not recorded'))}"
                    for name, entry in steps.items()
                    if isinstance(entry, Mapping)
                ),
            ]
        )
    import matplotlib
    import numpy

    from relcomp import __version__

    rows += [
        [
            "report made with",
            _e(
                f"relcomp {__version__}, Python {platform.python_version()}, "
                f"matplotlib {matplotlib.__version__}, numpy {numpy.__version__}"
            ),
        ],
        ["report date", _e(_now())],
        [
            "files read",
            ", ".join(
                f"<code>{_e(path.relative_to(run.folder).as_posix())}</code>" for path in run.files
            ),
        ],
    ]
    return (
        "<p class='lead'>What this report was made from, so the run can be repeated.</p>"
        + _kv_table(rows)
    )


def _build_compression(run: CompressionRun) -> _Page:
    page = _Page()
    page.section("summary", "Summary", _summary(run))
    page.section("quality", "Quality, size and latency", _quality_section(run))
    candidates = _candidates_section(page, run)
    if candidates is not None:
        page.section("pareto", "Plans tried: quality against size and latency", candidates)
    page.section("plan", "The plan", _plan_section(run))
    page.section("components", "Component relevance", _components_section(page, run))
    page.section("explanations", "Token explanations", _explanations_section(page, run))
    recovery = _recovery_section(page, run)
    if recovery is not None:
        page.section("recovery", "Recovery", recovery)
    page.section("parity", "Parity of the exported model", _parity_section(run))
    index = _index_section(run)
    if index is not None:
        page.section("index", "Index", index)
    page.section("provenance", "Provenance", _provenance_section(run))
    return page


def _render_compression(run: CompressionRun, page: _Page) -> str:
    quality = run.quality
    meta = [
        ("model", str(quality.model or run.plan.model)),
        (
            "dataset",
            " / ".join(str(p) for p in (quality.dataset, quality.split) if p) or NOT_MEASURED,
        ),
        ("plan", run.plan.method),
        ("date", _now()),
    ]
    model = quality.model or run.plan.model
    return page.render(
        title=f"Compression report: {_shorten(str(model), 80)}",
        kicker="relcomp · compression report",
        meta=meta,
    )


def compression_report(run_dir: str | os.PathLike[str]) -> str:
    """One self-contained HTML page describing a ``relcomp compress`` run folder.

    Sections: Summary (a one-paragraph verdict: size ratio, nDCG@10 change and its
    significance, the quality gate), Quality, size and latency (reference against
    compressed, Δ, p-value), Plans tried (Pareto plots, when ``quality.json`` lists two
    or more candidates), The plan, Component relevance, Token explanations, Recovery (when
    the run recovered a pruned model: its loss curve and the gate split's nDCG@10 before
    and after), Parity of the exported model, Index (a retriever's compressed corpus index, when the folder holds an
    ``index.json``), Provenance. A value the run did not record is shown as
    "not measured".

    Raises:
        DataFormatError: a needed file is missing or a file is malformed (named).

    Example:
        >>> import json, tempfile, pathlib
        >>> from relcomp.artifacts import CompressionPlan
        >>> run = pathlib.Path(tempfile.mkdtemp())
        >>> side = lambda ndcg, size: {"measures": {"nDCG@10": ndcg}, "size_mb": size}
        >>> _ = (run / "quality.json").write_text(json.dumps(
        ...     {"kind": "quality_comparison", "version": 1, "model": "tiny",
        ...      "reference": side(0.66, 90.9), "compressed": side(0.65, 23.4)}))
        >>> _ = CompressionPlan(model="tiny", entries={"_default": "int8"}).save(run / "plan.json")
        >>> page = compression_report(run)
        >>> "3.9× smaller" in page, "latency (p50)" in page, "not measured" in page
        (True, True, True)
    """
    run = load_run(run_dir)
    return _render_compression(run, _build_compression(run))


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/figures/*.png``; returns the HTML path.

    Everything is built in memory first; then the PNGs and last the page are written,
    each to a temporary name and renamed, so an error leaves no partial report.

    Example:
        >>> import json, tempfile, pathlib
        >>> from relcomp.artifacts import CompressionPlan
        >>> run = pathlib.Path(tempfile.mkdtemp())
        >>> side = {"measures": {"nDCG@10": 0.66}}
        >>> _ = (run / "quality.json").write_text(
        ...     json.dumps({"kind": "quality_comparison", "reference": side, "compressed": side}))
        >>> _ = CompressionPlan(model="tiny", entries={"_default": "int8"}).save(run / "plan.json")
        >>> write_report(run) == run / "report.html"
        True
    """
    run = load_run(run_dir)
    page = _build_compression(run)
    page_html = _render_compression(run, page)
    path = _write(page_html, page.figures, run.folder / "report.html")
    _remove_stale_figures(run.folder, page.figures, lambda name: not name.startswith(_EXPLANATION))
    logger.info("wrote %s and %d figures", path, len(page.figures))
    return path
