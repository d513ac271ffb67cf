"""Figures for the reports: each function returns a matplotlib ``Figure`` and never shows it.

Figures are made with :class:`matplotlib.figure.Figure` on an Agg canvas, never through
``pyplot``, so making one touches no global state and needs no display. Text that comes
from data (words, tokens, names) is drawn with ``parse_math=False``: a ``$`` in a
document is a dollar sign, not mathtext.

Relevance is signed, so token and interaction maps use a diverging colour scale
centred on zero and symmetric (``-v … +v``): red supports the score, blue opposes it,
white is neutral, and equal colours mean equal magnitudes on both sides.

Example:
    >>> from relcomp.artifacts import TokenRelevance
    >>> explanation = TokenRelevance(
    ...     method="AttnLRP", query="what is a cat", document="A cat is a small animal.",
    ...     score=1.5, tokens=(), relevance=(), segment=(),
    ...     words=("[CLS]", "what", "cat", "[SEP]", "A", "cat", "animal", "[SEP]"),
    ...     word_relevance=(0.1, 0.05, 0.6, 0.0, 0.01, 0.7, -0.2, 0.0),
    ...     word_segment=(-1, 0, 0, -1, 1, 1, 1, -1), conservation_error=0.24,
    ... )
    >>> figure = token_heatmap(explanation)
    >>> [axes.get_title(loc="left") for axes in figure.axes[:2]]
    ['Query', 'Document']
    >>> figure_png(figure)[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import FancyBboxPatch

from relcomp.artifacts import (
    NDCG_AT_10,
    ComponentRelevance,
    CompressionPlan,
    TokenInteractions,
    TokenRelevance,
)

__all__ = [
    "RELEVANCE_CMAP",
    "component_heatmap",
    "figure_png",
    "interaction_heatmap",
    "pareto",
    "pareto_frontier",
    "plan_figure",
    "point_measure",
    "recovery_curve",
    "smoothed",
    "token_heatmap",
]

#: The diverging colour map of signed relevance: blue (against) – white – red (for).
RELEVANCE_CMAP = "RdBu_r"
#: The sequential colour map of unsigned relevance (``mean_abs``).
MAGNITUDE_CMAP = "YlOrRd"

_SEGMENT_TITLES = {0: "Query", 1: "Document"}
_SIDE_SEGMENTS = {"query": (0,), "document": (1,)}


def _new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


@contextmanager
def _quiet_glyphs() -> Iterator[None]:
    """Silence matplotlib's warning for characters its font lacks (CJK, emoji in documents)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        warnings.filterwarnings("ignore", message=r"Matplotlib currently does not support")
        yield


def figure_png(figure: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (Agg; no display needed).

    Example:
        >>> figure_png(_new_figure(1, 1))[:8]
        b'\\x89PNG\\r\\n\\x1a\\n'
    """
    buffer = io.BytesIO()
    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    with _quiet_glyphs():
        figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def _symmetric_norm(values: Sequence[float] | np.ndarray) -> Normalize:
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    limit = float(np.max(np.abs(finite))) if finite.size else 0.0
    limit = limit if limit > 0 else 1.0
    return Normalize(vmin=-limit, vmax=limit)


def _text_colour(rgba: Sequence[float]) -> str:
    red, green, blue = rgba[:3]
    return "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "#1a1a1a"


def layer_label(name: str) -> str:
    """``bert.encoder.layer.3`` → ``3``; names without a trailing number stay as they are."""
    match = re.search(r"(\d+)$", name)
    return match.group(1) if match else name


# -- token heatmap -----------------------------------------------------------------------


def token_heatmap(
    explanation: TokenRelevance,
    *,
    width: float = 10.0,
    font_size: float = 11.0,
    max_words: int = 400,
    title: str | None = None,
) -> Figure:
    """The words of one (query, document) pair, each coloured by its relevance.

    The query and the document are drawn as separate panels, each wrapped to
    ``width`` inches. Special tokens (``[CLS]``, ``[SEP]``, segment −1) are left out
    and their total relevance is noted under the panels: they often carry a large
    share that would wash out the scale. For a cross-encoder (``side="pair"``) both
    panels share one symmetric scale, since their relevance splits one score; for a
    bi-encoder (``side="both"``) each side sums to the similarity on its own, so each
    panel gets its own scale. A document longer than ``max_words`` is cut, and the
    cut is said.

    Args:
        explanation: the artifact to draw (its ``words``, ``word_relevance`` and
            ``word_segment``).
        width: figure width in inches.
        font_size: word size in points.
        max_words: most words drawn per panel.
        title: a line above the panels; by default the method and the score.

    Returns:
        A ``Figure``: one axes per panel (titled "Query" / "Document") and one
        colour-bar axes per scale, labelled "word relevance".
    """
    segments = _SIDE_SEGMENTS.get(explanation.side, (0, 1))
    panels: list[tuple[str, list[str], np.ndarray, int]] = []
    for segment in segments:
        words = [
            w
            for w, s in zip(explanation.words, explanation.word_segment, strict=True)
            if s == segment
        ]
        values = np.asarray(
            [
                v
                for v, s in zip(explanation.word_relevance, explanation.word_segment, strict=True)
                if s == segment
            ],
            dtype=np.float64,
        )
        if words:
            hidden = max(len(words) - max_words, 0)
            panels.append((_SEGMENT_TITLES[segment], words[:max_words], values[:max_words], hidden))
    if not panels:
        raise ValueError("the explanation has no query or document words to draw")
    special = [
        (w, v)
        for w, v, s in zip(
            explanation.words, explanation.word_relevance, explanation.word_segment, strict=True
        )
        if s not in (0, 1)
    ]
    shared = explanation.side == "pair" or len(panels) == 1
    norms = (
        [_symmetric_norm(np.concatenate([p[2] for p in panels]))] * len(panels)
        if shared
        else [_symmetric_norm(p[2]) for p in panels]
    )
    cmap = colormaps[RELEVANCE_CMAP]

    # Lay the words out in inches, measured with the renderer that will draw them.
    margin, pad, gap, line_height, box_height = 0.25, 0.05, 0.06, 0.34, 0.27
    usable = width - 2 * margin
    font = FontProperties(size=font_size)
    measure = _new_figure(width, 1.0)
    renderer = measure.canvas.get_renderer()  # type: ignore[attr-defined]

    def text_width(word: str) -> float:
        with _quiet_glyphs():
            w, _, _ = renderer.get_text_width_height_descent(word, font, ismath=False)
        return float(w) / measure.dpi

    layouts = []
    for _, words, _, _ in panels:
        positions, x, line = [], 0.0, 0
        for word in words:
            box = min(text_width(word) + 2 * pad, usable)
            if x > 0 and x + box > usable:
                x, line = 0.0, line + 1
            positions.append((x, line, box))
            x += box + gap
        layouts.append((positions, line + 1))

    title_height, panel_title, colour_bar, note_height = 0.45, 0.38, 0.75, 0.3
    notes = []
    if special:
        total = sum(v for _, v in special)
        names = ", ".join(dict.fromkeys(w for w, _ in special))
        notes.append(f"Special tokens ({names}) carry {total:+.3g} in total; not drawn.")
    for name, _, _, hidden in panels:
        if hidden:
            notes.append(f"{name}: {hidden} more words not drawn.")
    panel_heights = [lines * line_height + 0.1 for _, lines in layouts]
    bars = 1 if shared else len(panels)
    height = (
        title_height
        + sum(panel_heights)
        + len(panels) * panel_title
        + bars * colour_bar
        + len(notes) * note_height
        + 0.15
    )
    figure = _new_figure(width, height)
    heading = title or (
        f"{explanation.method} relevance of each word for the score {explanation.score:.4g}"
    )
    figure.text(
        margin / width,
        1 - 0.3 / height,
        heading,
        fontsize=font_size + 1,
        fontweight="bold",
        parse_math=False,
        va="baseline",
    )

    def add_colour_bar(top: float, norm: Normalize, label: str) -> None:
        bar_width = min(5.0, usable)
        axes = figure.add_axes(
            (
                (width - bar_width) / 2 / width,
                (height - top - 0.32) / height,
                bar_width / width,
                0.14 / height,
            ),
            label="<colorbar>",  # as matplotlib names the colour bars it places itself
        )
        bar = figure.colorbar(
            ScalarMappable(norm=norm, cmap=cmap), cax=axes, orientation="horizontal"
        )
        bar.set_label(label, fontsize=9)
        bar.ax.tick_params(labelsize=8)

    top = title_height
    with _quiet_glyphs():
        for (name, words, values, _), (positions, _), norm, panel_height in zip(
            panels, layouts, norms, panel_heights, strict=True
        ):
            top += panel_title
            axes = figure.add_axes(
                (
                    margin / width,
                    (height - top - panel_height) / height,
                    usable / width,
                    panel_height / height,
                )
            )
            axes.set_xlim(0, usable)
            axes.set_ylim(panel_height, 0)
            axes.set_axis_off()
            axes.set_title(name, loc="left", fontsize=font_size + 1, fontweight="bold")
            for word, value, (x, line, box) in zip(words, values, positions, strict=True):
                colour = cmap(norm(value)) if np.isfinite(value) else (0.9, 0.9, 0.9, 1.0)
                y = line * line_height + 0.04
                axes.add_patch(
                    FancyBboxPatch(
                        (x, y),
                        box,
                        box_height,
                        boxstyle="round,pad=0,rounding_size=0.05",
                        facecolor=colour,
                        edgecolor="#d0d0d0" if abs(norm(value) - 0.5) < 0.04 else "none",
                        linewidth=0.5,
                    )
                )
                axes.text(
                    x + box / 2,
                    y + box_height / 2,
                    word,
                    ha="center",
                    va="center_baseline",
                    fontsize=font_size,
                    color=_text_colour(colour),
                    parse_math=False,
                    clip_on=True,
                )
            top += panel_height
            if not shared:
                add_colour_bar(top, norm, f"word relevance ({name.lower()} side)")
                top += colour_bar
        if shared:
            add_colour_bar(top, norms[0], "word relevance (red: for the score, blue: against)")
            top += colour_bar
        for note in notes:
            figure.text(
                margin / width,
                (height - top - 0.18) / height,
                note,
                fontsize=9,
                color="#555555",
                parse_math=False,
            )
            top += note_height
    return figure


# -- interaction heatmap -----------------------------------------------------------------


def interaction_heatmap(
    interactions: TokenInteractions, *, max_document_tokens: int = 60
) -> Figure:
    """BiLRP interactions: one row per query token, one column per document token.

    A document with more than ``max_document_tokens`` tokens keeps the columns with the
    largest total ``|interaction|``, in document order (the title says so).

    Example:
        >>> from relcomp.artifacts import TokenInteractions
        >>> pairs = TokenInteractions(
        ...     method="BiLRP", query="cat", document="a cat", score=0.8,
        ...     query_tokens=("cat",), document_tokens=("a", "cat"),
        ...     interactions=((0.1, 0.7),), conservation_error=0.0,
        ... )
        >>> axes = interaction_heatmap(pairs).axes[0]
        >>> axes.get_xlabel(), axes.get_ylabel()
        ('document token', 'query token')
    """
    matrix = interactions.matrix()
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError("the interaction matrix is empty")
    columns = np.arange(matrix.shape[1])
    kept = ""
    if matrix.shape[1] > max_document_tokens:
        weight = np.abs(matrix).sum(axis=0)
        columns = np.sort(np.argsort(weight)[::-1][:max_document_tokens])
        kept = f" ({len(columns)} of {matrix.shape[1]} document tokens, the most interacting)"
    shown = matrix[:, columns]
    rows, cols = shown.shape
    figure = _new_figure(min(16.0, 2.6 + 0.24 * cols), min(14.0, 2.2 + 0.26 * rows))
    axes = figure.add_subplot()
    norm = _symmetric_norm(shown)
    image = axes.imshow(shown, cmap=RELEVANCE_CMAP, norm=norm, aspect="auto")
    with _quiet_glyphs():
        axes.set_xticks(
            range(cols),
            [interactions.document_tokens[i] for i in columns],
            rotation=90,
            fontsize=8,
            parse_math=False,
        )
        axes.set_yticks(range(rows), list(interactions.query_tokens), fontsize=8, parse_math=False)
    axes.set_xlabel("document token")
    axes.set_ylabel("query token")
    axes.set_title(
        f"{interactions.method}: query token × document token, score {interactions.score:.4g}{kept}",
        fontsize=10,
        parse_math=False,
    )
    bar = figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    bar.set_label("interaction relevance")
    figure.tight_layout()
    return figure


# -- component relevance -----------------------------------------------------------------


def component_heatmap(relevance: ComponentRelevance, *, statistic: str = "mean_abs") -> Figure:
    """Relevance per attention head (layer × head) and per block (attention, MLP) per layer.

    The left panel is a heatmap with one row per layer and one column per head; the
    right panel has one pair of bars per layer, on the same rows. Either panel is left
    out when the artifact lacks its kinds (``head``; ``attention`` / ``mlp``). Heads
    pruned away (fewer heads in a layer) show as blank cells.

    Args:
        relevance: the artifact (``components`` by kind and layer name).
        statistic: ``"mean_abs"`` (default; a sequential colour scale) or
            ``"mean_signed"`` (a diverging, symmetric one).

    Example:
        >>> from relcomp.artifacts import ComponentRelevance
        >>> entry = lambda values: {"mean_abs": values, "mean_signed": values, "count": 4}
        >>> relevance = ComponentRelevance(
        ...     model="tiny", method="AttnLRP", n_pairs=4,
        ...     components={
        ...         "head": {f"layer.{i}": entry([0.1, 0.3]) for i in range(2)},
        ...         "attention": {f"layer.{i}": entry([0.4]) for i in range(2)},
        ...         "mlp": {f"layer.{i}": entry([0.2]) for i in range(2)},
        ...     },
        ... )
        >>> [axes.get_title() for axes in component_heatmap(relevance).axes if axes.get_title()]
        ['Relevance per attention head', 'Relevance per block']
    """
    kinds = relevance.components
    heads = relevance.by_kind("head", statistic) if "head" in kinds else {}
    blocks = {
        kind: relevance.by_kind(kind, statistic) for kind in ("attention", "mlp") if kind in kinds
    }
    if not heads and not blocks:
        raise ValueError(
            f"no head, attention or mlp relevance to draw; this artifact has {relevance.kinds()}"
        )
    layers = list(heads) or list(next(iter(blocks.values())))
    for values in blocks.values():
        layers += [name for name in values if name not in layers]
    signed = statistic != "mean_abs"
    unit = "mean relevance" if signed else "mean |relevance|"
    n_heads = max((len(v) for v in heads.values()), default=0)
    panels = (1 if heads else 0) + (1 if blocks else 0)
    ratios = ([max(n_heads, 2) * 0.9] if heads else []) + ([4.0] if blocks else [])
    # At most ~10.5 inches: a report shows it 1:1 in a 1000-pixel column.
    figure = _new_figure(
        min(10.5, 2.2 + 0.5 * max(n_heads, 2) + (3.8 if blocks else 0)),
        max(2.8, 1.4 + 0.42 * len(layers)),
    )
    grid = figure.add_gridspec(1, panels, width_ratios=ratios, wspace=0.35)
    labels = [layer_label(name) for name in layers]
    position = 0
    if heads:
        matrix = np.full((len(layers), n_heads), np.nan)
        for row, name in enumerate(layers):
            head_values = heads.get(name, np.zeros(0))
            matrix[row, : len(head_values)] = head_values
        axes = figure.add_subplot(grid[0, position])
        position += 1
        cmap: str | Colormap = RELEVANCE_CMAP if signed else MAGNITUDE_CMAP
        finite = matrix[np.isfinite(matrix)]
        norm = (
            _symmetric_norm(finite)
            if signed
            else Normalize(0.0, float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
        )
        image = axes.imshow(matrix, cmap=cmap, norm=norm, aspect="auto")
        if matrix.size <= 200:
            colours = colormaps[cmap] if isinstance(cmap, str) else cmap
            for (row, column), value in np.ndenumerate(matrix):
                if np.isfinite(value):
                    axes.text(
                        column,
                        row,
                        f"{value:.2g}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=_text_colour(colours(norm(value))),
                    )
        axes.set_xticks(range(n_heads), [str(h) for h in range(n_heads)])
        axes.set_yticks(range(len(layers)), labels, parse_math=False)
        axes.set_xlabel("head")
        axes.set_ylabel("layer")
        axes.set_title("Relevance per attention head")
        bar = figure.colorbar(image, ax=axes, fraction=0.08, pad=0.03)
        bar.set_label(unit)
    if blocks:
        axes = figure.add_subplot(grid[0, position])
        rows = np.arange(len(layers))
        height = 0.8 / len(blocks)
        block_colours = {"attention": "#4c72b0", "mlp": "#dd8452"}
        for index, (kind, values) in enumerate(blocks.items()):
            bar_values = [float(values[name][0]) if name in values else np.nan for name in layers]
            axes.barh(
                rows - 0.4 + height * (index + 0.5),
                bar_values,
                height=height,
                color=block_colours[kind],
                label="attention" if kind == "attention" else "MLP",
            )
        axes.set_yticks(rows, labels, parse_math=False)
        axes.set_ylim(len(layers) - 0.5, -0.5)
        axes.set_ylabel("layer")
        axes.set_xlabel(unit)
        axes.set_title("Relevance per block")
        axes.axvline(0, color="#888888", linewidth=0.6)
        axes.legend(fontsize=8, loc="best", frameon=False)
        axes.grid(axis="x", color="#e5e5e5", linewidth=0.6)
        axes.set_axisbelow(True)
    figure.subplots_adjust(left=0.08, right=0.97, top=0.86, bottom=0.14)
    figure.suptitle(
        f"{relevance.method} component relevance over {relevance.n_pairs} pairs",
        fontsize=11,
        parse_math=False,
    )
    return figure


# -- the plan ----------------------------------------------------------------------------


def plan_figure(plan: CompressionPlan, *, max_rows: int = 40) -> Figure:
    """The plan's entries as a chart: one row per pattern, one coloured cell per action kind.

    Each row is a pattern in plan order; its actions are written in cells coloured by
    kind (precision, pruning, sparsity, low rank), so a reader sees at a glance where
    the plan spends bits and what it removes. Plans longer than ``max_rows`` are cut
    (the title says so); the HTML report's table always has every entry.

    Example:
        >>> from relcomp.artifacts import CompressionPlan
        >>> plan = CompressionPlan(model="m", entries={"_default": "int8", "re:.*classifier.*": "fp32"})
        >>> plan_figure(plan).axes[0].get_title()
        'Plan: 2 entries'
    """
    entries = list(plan.entries)
    if not entries:
        raise ValueError("the plan has no entries")
    shown = entries[:max_rows]
    kinds = {
        "fp32": "#d9d9d9",
        "fp16": "#c6dbef",
        "int8": "#6baed6",
        "int4": "#2171b5",
        "prune": "#fd8d3c",
        "sparsify": "#74c476",
        "low_rank": "#9e9ac8",
    }

    def colour(action: str) -> str:
        name = action.split("(", 1)[0]
        return kinds.get(name, kinds["prune"] if name.startswith("prune") else "#eeeeee")

    figure = _new_figure(10.0, 1.0 + 0.28 * len(shown))
    axes = figure.add_subplot()
    for row, (_, action) in enumerate(shown):
        axes.barh(row, 1, left=0, color=colour(action), height=0.85)
        axes.text(0.02, row, action, va="center", fontsize=8, parse_math=False)
    axes.set_yticks(range(len(shown)), [p for p, _ in shown], fontsize=8, parse_math=False)
    axes.set_ylim(len(shown) - 0.5, -0.5)
    axes.set_xlim(0, 1)
    axes.set_xticks([])
    more = f" (first {len(shown)})" if len(entries) > len(shown) else ""
    axes.set_title(f"Plan: {len(entries)} entries{more}")
    figure.tight_layout()
    return figure


# -- Pareto ------------------------------------------------------------------------------

_X_LABELS = {"size_mb": "model size (MB)", "latency_ms": "latency (ms)"}
_X_TITLES = {"size_mb": "size", "latency_ms": "latency"}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Mapping):
        # Latencies are recorded as percentiles: the median stands for the point.
        return _number(value.get("p50", value.get("median", value.get("mean"))))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def point_measure(point: Mapping[str, Any], measure: str) -> float | None:
    """A point's value of ``measure``: under its name, its lower-case name, or in ``measures``.

    Example:
        >>> point_measure({"ndcg@10": 0.6}, "nDCG@10"), point_measure({"measures": {}}, "nDCG@10")
        (0.6, None)
    """
    for key in (measure, measure.lower()):
        if key in point:
            return _number(point[key])
    measures = point.get("measures")
    if isinstance(measures, Mapping):
        return _number(measures.get(measure, measures.get(measure.lower())))
    return None


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: smaller ``x`` and larger ``y`` win.

    Returned in increasing ``x``; ties on ``x`` keep the higher ``y``.

    Example:
        >>> pareto_frontier([(10, 0.6), (20, 0.7), (15, 0.5), (30, 0.7)])
        [0, 1]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    frontier, best = [], -np.inf
    for index in order:
        if points[index][1] > best:
            frontier.append(index)
            best = points[index][1]
    return frontier


def pareto(
    points: Sequence[Mapping[str, Any]],
    x: str = "size_mb",
    *,
    reference: Mapping[str, Any] | None = None,
    measure: str = NDCG_AT_10,
) -> Figure:
    """Quality against size (``x="size_mb"``) or latency (``x="latency_ms"``), frontier drawn.

    Each point is a mapping as ``quality.json``'s ``candidates`` hold them: ``name``,
    ``size_mb``, ``latency_ms`` (a number, or percentiles of which ``p50`` is used),
    the quality under ``measure`` (or its lower-case form, or inside ``measures``) and
    optionally ``passed`` (the quality gate). Points that lack ``x`` or the measure are
    left out, never guessed. ``reference`` (the uncompressed model) is drawn as a star.
    The Pareto frontier (no other point is both smaller/faster and better) is a dashed
    step line.

    Example:
        >>> points = [
        ...     {"name": "int8", "size_mb": 23.0, "ndcg@10": 0.65, "passed": True},
        ...     {"name": "int4", "size_mb": 15.0, "ndcg@10": 0.61, "passed": False},
        ... ]
        >>> axes = pareto(points, reference={"name": "fp32", "size_mb": 90.9, "ndcg@10": 0.66}).axes[0]
        >>> axes.get_xlabel(), axes.get_ylabel()
        ('model size (MB)', 'nDCG@10')
    """
    if x not in _X_LABELS:
        raise ValueError(f"x must be one of {sorted(_X_LABELS)}, got {x!r}")
    drawn: list[tuple[str, float, float, Any]] = []
    for point in points:
        value, quality = _number(point.get(x)), point_measure(point, measure)
        if value is not None and quality is not None:
            drawn.append((str(point.get("name", "?")), value, quality, point.get("passed")))
    reference_point = None
    if reference is not None:
        value, quality = _number(reference.get(x)), point_measure(reference, measure)
        if value is not None and quality is not None:
            reference_point = (str(reference.get("name", "reference")), value, quality)
    if not drawn and reference_point is None:
        raise ValueError(f"no point has both {x} and {measure}")

    figure = _new_figure(5.4, 4.0)
    axes = figure.add_subplot()
    everything = [(v, q) for _, v, q, _ in drawn] + (
        [reference_point[1:]] if reference_point else []
    )
    frontier = pareto_frontier(everything)
    if len(frontier) > 1:
        axes.step(
            [everything[i][0] for i in frontier],
            [everything[i][1] for i in frontier],
            where="post",
            linestyle="--",
            color="#888888",
            linewidth=1,
            label="Pareto frontier",
            zorder=1,
        )
    styles = {
        True: ("o", "#2b8a3e", "passed the gate"),
        False: ("X", "#c92a2a", "failed the gate"),
        None: ("o", "#1c7ed6", "candidate"),
    }
    seen = set()
    for name, value, quality, passed in drawn:
        key = passed if isinstance(passed, bool) else None
        marker, colour, label = styles[key]
        axes.scatter(
            value,
            quality,
            marker=marker,
            s=55,
            color=colour,
            label=None if key in seen else label,
            zorder=3,
        )
        seen.add(key)
        axes.annotate(
            name,
            (value, quality),
            xytext=(5, 5),
            textcoords="offset points",
            fontsize=8,
            parse_math=False,
        )
    if reference_point is not None:
        name, value, quality = reference_point
        axes.scatter(
            value, quality, marker="*", s=200, color="#222222", label="reference", zorder=4
        )
        axes.annotate(
            name,
            (value, quality),
            xytext=(6, -12),
            textcoords="offset points",
            fontsize=8,
            fontweight="bold",
            parse_math=False,
        )
    axes.set_xlabel(_X_LABELS[x])
    axes.set_ylabel(measure)
    axes.set_title(f"{measure} against {_X_TITLES[x]}", parse_math=False)
    axes.grid(color="#e5e5e5", linewidth=0.6)
    axes.set_axisbelow(True)
    axes.margins(x=0.12, y=0.15)
    axes.legend(fontsize=8, frameon=False, loc="best")
    figure.tight_layout()
    return figure


def smoothed(values: Sequence[float], window: int | None = None) -> np.ndarray:
    """Trailing mean over ``window`` values (by default a fiftieth of them, 1 to 50).

    Each point averages itself and the ``window - 1`` before it (fewer at the start), so
    the curve never borrows from steps that came later.

    Example:
        >>> smoothed([4.0, 2.0, 0.0, 2.0], window=2).tolist()
        [4.0, 3.0, 1.0, 1.0]
    """
    array = np.asarray(values, dtype=float)
    if window is None:
        window = min(50, max(1, len(array) // 50))
    sums = np.cumsum(np.concatenate([[0.0], array]))
    ends = np.arange(1, len(array) + 1)
    starts = np.maximum(0, ends - window)
    return np.asarray((sums[ends] - sums[starts]) / (ends - starts))


def recovery_curve(losses: Sequence[float], checkpoints: Sequence[Mapping[str, Any]]) -> Figure:
    """Recovery's training loss per step (raw and smoothed) and its held-out losses at checkpoints.

    ``losses`` are a :class:`~relcomp.artifacts.RecoveryLog`'s; ``checkpoints`` its
    entries, of which ``heldout_loss`` (and ``heldout_hidden_mse``, with hidden-state
    matching) are drawn as markers at their ``step``. Entries without them are skipped.

    Example:
        >>> figure = recovery_curve([0.9, 0.7, 0.6, 0.5], [{"step": 0, "heldout_loss": 1.0},
        ...                                                 {"step": 4, "heldout_loss": 0.6}])
        >>> axes = figure.axes[0]
        >>> axes.get_xlabel(), [t.get_text() for t in axes.get_legend().get_texts()]
        ('step', ['training loss', 'training loss, smoothed', 'held-out loss'])
    """
    if not losses and not checkpoints:
        raise ValueError("a recovery curve needs losses or checkpoints")
    figure = _new_figure(6.4, 3.4)
    axes = figure.add_subplot()
    if losses:
        steps = np.arange(1, len(losses) + 1)
        axes.plot(steps, losses, color="#1c7ed6", alpha=0.25, linewidth=0.8, label="training loss")
        axes.plot(
            steps, smoothed(losses), color="#1c7ed6", linewidth=1.6, label="training loss, smoothed"
        )
    series = (
        ("heldout_loss", "held-out loss", "o", "#e8590c"),
        ("heldout_hidden_mse", "held-out hidden-state MSE", "s", "#2b8a3e"),
    )
    for key, label, marker, colour in series:
        points = [
            (float(entry["step"]), value)
            for entry in checkpoints
            if (value := _number(entry.get(key))) is not None
            and _number(entry.get("step")) is not None
        ]
        if points:
            axes.plot(
                [step for step, _ in points],
                [value for _, value in points],
                marker=marker,
                color=colour,
                linewidth=1,
                markersize=5,
                label=label,
            )
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(True, color="#e9ecef", linewidth=0.6)
    axes.legend(fontsize=8, frameon=False)
    figure.tight_layout()
    return figure
