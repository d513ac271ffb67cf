"""Report figures: each returns a Figure with the expected axes, labels and scales."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from matplotlib.figure import Figure

from relcomp.artifacts import CompressionPlan
from relcomp.reports.figures import (
    component_heatmap,
    figure_png,
    interaction_heatmap,
    pareto,
    pareto_frontier,
    plan_figure,
    token_heatmap,
)
from tests.reports.synthetic import make_explanation, make_interactions, make_relevance

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _texts(figure: Figure) -> list[str]:
    return [text.get_text() for axes in figure.axes for text in axes.texts] + [
        text.get_text() for text in figure.texts
    ]


def _colour_bars(figure: Figure) -> list:
    return [axes for axes in figure.axes if axes.get_label() == "<colorbar>"]


def test_token_heatmap_draws_query_and_document_apart_on_one_symmetric_scale() -> None:
    explanation = make_explanation("what causes rain", "Rain falls when clouds are heavy.")
    figure = token_heatmap(explanation)
    assert isinstance(figure, Figure)
    panels = [axes.get_title(loc="left") for axes in figure.axes if axes.get_title(loc="left")]
    assert panels == ["Query", "Document"]
    [bar] = _colour_bars(figure)
    assert "word relevance" in bar.get_xlabel()
    low, high = bar.get_xlim()
    assert low == pytest.approx(-high) and high > 0
    # The largest |relevance| among the drawn words sets the scale.
    drawn = [
        v
        for v, s in zip(explanation.word_relevance, explanation.word_segment, strict=True)
        if s in (0, 1)
    ]
    assert high == pytest.approx(max(abs(v) for v in drawn))
    texts = _texts(figure)
    assert {"what", "causes", "rain", "Rain", "heavy."} <= set(texts)
    assert "[CLS]" not in texts and "[SEP]" not in texts
    assert any("Special tokens ([CLS], [SEP])" in text for text in texts)
    assert figure_png(figure).startswith(PNG_MAGIC)


def test_token_heatmap_wraps_long_documents_and_says_what_it_cut() -> None:
    document = " ".join(f"word{i}" for i in range(300))
    figure = token_heatmap(make_explanation("q", document), max_words=120)
    document_axes = next(a for a in figure.axes if a.get_title(loc="left") == "Document")
    lines = {round(text.get_position()[1], 3) for text in document_axes.texts}
    assert len(lines) > 5  # wrapped over many lines
    assert len(document_axes.texts) == 120
    assert any("180 more words not drawn" in text for text in _texts(figure))


def test_token_heatmap_gives_each_bi_encoder_side_its_own_scale() -> None:
    both = make_explanation(side="both")
    assert len(_colour_bars(token_heatmap(both))) == 2
    query_only = dataclasses.replace(both, side="query")
    figure = token_heatmap(query_only)
    assert [a.get_title(loc="left") for a in figure.axes if a.get_title(loc="left")] == ["Query"]


def test_token_heatmap_draws_dollar_signs_as_text() -> None:
    explanation = make_explanation("price in $", "It costs $5 and $x^2$ dollars.")
    figure = token_heatmap(explanation)
    assert "$x^2$" in _texts(figure)
    assert figure_png(figure).startswith(PNG_MAGIC)  # mathtext would fail or change it


def test_interaction_heatmap_has_token_axes_and_keeps_the_strongest_columns() -> None:
    interactions = make_interactions("cat food", "what cats eat")
    figure = interaction_heatmap(interactions)
    axes = figure.axes[0]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("document token", "query token")
    assert [t.get_text() for t in axes.get_xticklabels()] == ["what", "cats", "eat"]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["cat", "food"]
    assert "interaction relevance" in figure.axes[1].get_ylabel()
    cut = interaction_heatmap(interactions, max_document_tokens=2).axes[0]
    # Column sums of |matrix|: 'cats' and 'eat' are the largest.
    assert [t.get_text() for t in cut.get_xticklabels()] == ["cats", "eat"]
    assert "2 of 3 document tokens" in cut.get_title()


def test_component_heatmap_shows_layers_by_heads_and_blocks_per_layer() -> None:
    relevance = make_relevance(n_layers=3, n_heads=4)
    figure = component_heatmap(relevance)
    titled = {axes.get_title(): axes for axes in figure.axes if axes.get_title()}
    assert set(titled) == {"Relevance per attention head", "Relevance per block"}
    heads = titled["Relevance per attention head"]
    assert (heads.get_xlabel(), heads.get_ylabel()) == ("head", "layer")
    image = heads.get_images()[0].get_array()
    expected = np.stack(list(relevance.by_kind("head").values()))
    np.testing.assert_allclose(np.asarray(image), expected)
    assert [t.get_text() for t in heads.get_yticklabels()] == ["0", "1", "2"]
    blocks = titled["Relevance per block"]
    assert len(blocks.patches) == 6  # attention and MLP for 3 layers
    assert [t.get_text() for t in blocks.get_legend().get_texts()] == ["attention", "MLP"]


def test_component_heatmap_draws_what_the_artifact_has() -> None:
    full = make_relevance()
    heads_only = dataclasses.replace(full, components={"head": full.components["head"]})
    titles = [a.get_title() for a in component_heatmap(heads_only).axes if a.get_title()]
    assert titles == ["Relevance per attention head"]
    with pytest.raises(ValueError, match="no head, attention or mlp"):
        component_heatmap(dataclasses.replace(full, components={"layer": full.components["layer"]}))
    signed = component_heatmap(full, statistic="mean_signed")
    low, high = signed.axes[0].get_images()[0].get_clim()
    assert low == pytest.approx(-high)


def test_pareto_frontier_keeps_only_undominated_points() -> None:
    points = [(10, 0.60), (20, 0.70), (15, 0.50), (30, 0.70), (5, 0.40)]
    assert pareto_frontier(points) == [4, 0, 1]


@pytest.mark.parametrize(
    ("axis", "label"), [("size_mb", "model size (MB)"), ("latency_ms", "latency (ms)")]
)
def test_pareto_plots_quality_against_cost_with_reference_and_frontier(
    axis: str, label: str
) -> None:
    candidates = [
        {"name": "int8", "size_mb": 23.4, "latency_ms": 5.1, "ndcg@10": 0.65, "passed": True},
        {"name": "int4", "size_mb": 12.2, "latency_ms": {"p50": 6.3}, "ndcg@10": 0.61, "passed": False},
        {"name": "no size", "ndcg@10": 0.9},
    ]  # fmt: skip
    reference = {"name": "fp32", "size_mb": 90.9, "latency_ms": 12.0, "measures": {"nDCG@10": 0.66}}
    figure = pareto(candidates, axis, reference=reference)
    axes = figure.axes[0]
    assert (axes.get_xlabel(), axes.get_ylabel()) == (label, "nDCG@10")
    names = [text.get_text() for text in axes.texts]
    assert names == ["int8", "int4", "fp32"]  # "no size" is left out, never guessed
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert {"Pareto frontier", "passed the gate", "failed the gate", "reference"} <= set(legend)
    [frontier] = axes.get_lines()
    assert len(frontier.get_xdata()) >= 2


def test_pareto_refuses_an_unknown_axis_and_empty_points() -> None:
    with pytest.raises(ValueError, match="x must be one of"):
        pareto([], "params")
    with pytest.raises(ValueError, match="no point has both"):
        pareto([{"name": "a", "ndcg@10": 0.5}], "size_mb")


def test_plan_figure_lists_the_entries() -> None:
    plan = CompressionPlan(model="m", entries={"_default": "int8", "re:.*classifier.*": "fp32"})
    axes = plan_figure(plan).axes[0]
    assert axes.get_title() == "Plan: 2 entries"
    assert [t.get_text() for t in axes.get_yticklabels()] == ["_default", "re:.*classifier.*"]


def test_figures_leave_pyplot_alone() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    token_heatmap(make_explanation())
    component_heatmap(make_relevance())
    assert plt.get_fignums() == before
