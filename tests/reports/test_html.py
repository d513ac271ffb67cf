"""HTML builders: the sections a reviewer expects, every embedded text escaped, atomic writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import relcomp.reports.html as report_html
from relcomp.artifacts import TokenRelevance
from relcomp.errors import DataFormatError, RelcompError
from relcomp.reports import (
    compression_report,
    explanation_report,
    load_run,
    write_explanation_report,
    write_report,
)
from tests.reports.synthetic import (
    SECTION_TITLES,
    make_explanation,
    make_interactions,
    make_quality,
    make_run_folder,
)

HOSTILE = "<script>alert(1)</script>\"quoted\" & 'single'"
HOSTILE_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;&quot;quoted&quot; &amp; &#x27;single&#x27;"


def _h2(page: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page)


def _inline_images(page: str) -> int:
    return len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', page))


def _assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert "Content-Security-Policy" in page
    # Nothing is fetched: no external URL in src/href, no @import or url() in the CSS.
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "@import" not in page and "url(" not in page


def test_explanation_report_has_score_method_error_and_top_words() -> None:
    explanation = make_explanation("what causes rain", "Rain falls when clouds are heavy.")
    page = explanation_report([explanation], [make_interactions()], model="tiny-reranker")
    _assert_self_contained(page)
    assert _h2(page) == [
        "How to read this report",
        "Pair 1: what causes rain",
        "Token interactions 1",
    ]
    assert f"{explanation.score:.4f}".replace("-", "−") in page
    assert "AttnLRP" in page and "conservation error" in page
    assert "Query: top 8 words" in page and "Document: top 8 words" in page
    best = explanation.top_words(1, 1)[0][0]
    assert f"<code>{best}</code>" in page
    assert "tiny-reranker" in page
    assert _inline_images(page) == 2  # the token heatmap and the interaction heatmap


def test_explanation_report_needs_something_to_show() -> None:
    with pytest.raises(ValueError, match="nothing to report"):
        explanation_report([])


def test_compression_report_has_every_section_and_the_verdict(run_folder: Path) -> None:
    page = compression_report(run_folder)
    _assert_self_contained(page)
    assert _h2(page) == list(SECTION_TITLES)
    toc = re.search(r'<nav class="toc".*?</nav>', page, re.S).group(0)
    assert all(
        f'href="#{anchor}"' in toc for anchor in ("summary", "quality", "plan", "provenance")
    )
    summary = page[page.index('id="summary"') : page.index('id="quality"')]
    assert "3.9× smaller" in summary  # 90.9 MB / 23.4 MB
    assert "−0.40 points" in summary and "not a significant change" in summary
    assert "p = 0.310" in summary and "passed" in summary
    assert "gate passed" in summary
    quality = page[page.index('id="quality"') : page.index('id="pareto"')]
    for text in ("nDCG@10", "0.6617", "0.6577", "−0.0040", "0.310", "size (MB)", "latency p95"):
        assert text in quality
    assert "100 queries" in quality
    assert "nDCG@10, top-10 re-ranked" in quality and "−0.0004" in quality  # by_depth
    assert "the full depth is 30" in quality
    assert "int4(block_size=32)" in page and "re:.*attention.*" in page
    parity = page[page.index('id="parity"') : page.index('id="provenance"')]
    assert "Kendall τ of the rankings (mean over queries)" in parity and "0.97" in parity
    assert "int8 × 2, fp32 × 1" in parity  # the per-module map, summarised
    assert "MatMul_1" not in parity and "per_query" not in parity
    assert "tiny-reranker keeps its classifier in fp32" in parity
    provenance = page[page.index('id="provenance"') :]
    assert "2025-01-02T10:05:00+0000" in provenance  # the last step's finish, from run.json
    assert "onnxruntime (at export)" in provenance and "t-test" in page
    # Pareto against size and latency, component relevance, one token heatmap, one BiLRP map.
    assert _inline_images(page) == 5


def test_compression_report_says_not_measured_and_never_invents(tmp_path: Path) -> None:
    folder = make_run_folder(
        tmp_path / "run", candidates=False, bundle=False, explanations=False, relevance=False
    )
    quality = make_quality(candidates=False, gate=False, latency=False)
    del quality["difference"]
    (folder / "quality.json").write_text(json.dumps(quality))
    page = compression_report(folder)
    headings = _h2(page)
    assert "Plans tried: quality against size and latency" not in headings
    assert len(headings) == len(SECTION_TITLES) - 1
    quality_section = page[page.index('id="quality"') : page.index('id="plan"')]
    assert quality_section.count("not measured") >= 5  # latencies, throughput, p-values
    assert "−0.0040" in quality_section  # Δ of two recorded means is arithmetic, not invention
    assert "No quality gate was set." in page
    assert "significance not measured" in page
    assert "component_relevance.json is not in this run folder" in page
    assert "No token explanations" in page
    assert "No ONNX bundle description or parity figures" in page
    assert _inline_images(page) == 0


def test_every_embedded_text_is_escaped(tmp_path: Path) -> None:
    folder = make_run_folder(
        tmp_path / "run",
        model=HOSTILE,
        query=f"query {HOSTILE}",
        document=f"document {HOSTILE} end",
        pattern=f"re:{HOSTILE}",
    )
    for page in (
        compression_report(folder),
        explanation_report(
            [make_explanation(f"query {HOSTILE}", f"document {HOSTILE}")], model=HOSTILE
        ),
    ):
        _assert_self_contained(page)
        assert "<script>alert(1)</script>" not in page
        assert '"quoted"' not in page
        assert HOSTILE_ESCAPED in page
        assert f"<title>Compression report: {HOSTILE_ESCAPED}" in page or (
            "<title>Why did the model score these pairs?</title>" in page
        )


def test_write_report_writes_the_page_and_its_figures(run_folder: Path) -> None:
    path = write_report(run_folder)
    assert path == run_folder / "report.html"
    assert _h2(path.read_text(encoding="utf-8")) == list(SECTION_TITLES)
    figures = sorted(p.name for p in (run_folder / "figures").iterdir())
    assert figures == [
        "component_relevance.png",
        "interactions_1.png",
        "pareto_latency.png",
        "pareto_size.png",
        "tokens_1.png",
    ]
    assert all((run_folder / "figures" / name).read_bytes()[:4] == b"\x89PNG" for name in figures)
    assert not [p for p in run_folder.rglob("*.tmp")]


def test_write_report_removes_the_figures_of_an_earlier_report(run_folder: Path) -> None:
    figures = run_folder / "figures"
    figures.mkdir(exist_ok=True)
    (figures / "pareto_bits.png").write_bytes(b"an earlier run's plot")
    (figures / "explanation_tokens_1.png").write_bytes(b"relcomp explain's, not the report's")
    write_report(run_folder)
    assert not (figures / "pareto_bits.png").exists()
    assert (figures / "explanation_tokens_1.png").exists()
    assert (figures / "pareto_size.png").exists()


def test_write_report_leaves_no_report_when_it_fails_midway(
    run_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = report_html.figure_png

    def fail_on_third(figure, dpi=110):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(figure, dpi=dpi)

    monkeypatch.setattr(report_html, "figure_png", fail_on_third)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_report(run_folder)
    assert not (run_folder / "report.html").exists()
    assert not (run_folder / "figures").exists()


def test_write_report_failing_while_writing_keeps_the_old_page(
    run_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (run_folder / "report.html").write_text("old report", encoding="utf-8")
    real = report_html.atomic_write_bytes
    written = []

    def fail_after_one(path, data):  # type: ignore[no-untyped-def]
        if written:
            raise OSError("no space left on device")
        written.append(path)
        return real(path, data)

    monkeypatch.setattr(report_html, "atomic_write_bytes", fail_after_one)
    with pytest.raises(OSError, match="no space"):
        write_report(run_folder)
    assert (run_folder / "report.html").read_text(encoding="utf-8") == "old report"
    assert not [p for p in run_folder.rglob("*.tmp")]


def test_write_explanation_report(tmp_path: Path) -> None:
    path = write_explanation_report(tmp_path / "out", [make_explanation()], model="m")
    assert path == tmp_path / "out" / "explanation.html"
    assert "Pair 1: how many people live in berlin?" in path.read_text(encoding="utf-8")
    assert [p.name for p in (tmp_path / "out" / "figures").iterdir()] == [
        "explanation_tokens_1.png"
    ]


def test_load_run_reads_every_artifact(run_folder: Path) -> None:
    run = load_run(run_folder)
    assert run.plan.method == "mixed-precision"
    assert run.relevance is not None and run.relevance.n_pairs == 8
    assert len(run.explanations) == 1 and len(run.interactions) == 1
    assert run.parity is not None and run.parity["kendall_tau"] == 0.97
    assert run.bundle is not None and run.bundle["variant"] == "int8"


@pytest.mark.parametrize(
    ("damage", "named", "problem"),
    [
        (lambda f: (f / "quality.json").unlink(), "quality.json", "missing"),
        (lambda f: (f / "plan.json").unlink(), "plan.json", "missing"),
        (lambda f: (f / "plan.json").write_text("{not json"), "plan.json", "invalid JSON"),
        (
            lambda f: (f / "quality.json").write_text(json.dumps({"kind": "quality_report"})),
            "quality.json",
            "quality_comparison",
        ),
        (
            lambda f: (f / "quality.json").write_text(
                json.dumps({**make_quality(), "compressed": {"size_mb": 1}})
            ),
            "quality.json",
            "'compressed' has no 'measures'",
        ),
        (
            lambda f: (f / "component_relevance.json").write_text("[]"),
            "component_relevance.json",
            "JSON object",
        ),
        (
            lambda f: (f / "explanations" / "pair_1.json").write_text(json.dumps({"kind": "x"})),
            "pair_1.json",
            "token_relevance",
        ),
        (lambda f: (f / "parity.json").write_text("[1]"), "parity.json", "JSON object"),
    ],
)
def test_load_run_names_the_missing_or_invalid_file(
    run_folder: Path, damage, named: str, problem: str
) -> None:
    damage(run_folder)
    with pytest.raises(DataFormatError) as error:
        load_run(run_folder)
    assert named in str(error.value) and problem in str(error.value)


def test_load_run_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(RelcompError, match="not a folder"):
        load_run(tmp_path / "nowhere")


def test_an_explanation_saved_by_the_artifact_class_is_read_back(run_folder: Path) -> None:
    saved = TokenRelevance.load(run_folder / "explanations" / "pair_1.json")
    assert load_run(run_folder).explanations == (saved,)


# -- the index: a retriever's bundle carrying index.json ----------------------------------------
def _index_settings(**changes: object) -> dict:
    from relcomp.artifacts import IndexSettings

    settings = IndexSettings(
        model="tiny-retriever",
        model_identity="bi-encoder-00",
        dimension=384,
        similarity="cosine",
        precision="binary",
        dims=tuple(range(256)),
        selection="relevance",
        rescore=4,
        rescore_with="int8",
        ranges=tuple((-1.0, 1.0) for _ in range(256)),
    )
    return {**settings.to_dict(), **changes}


def test_the_index_section_shows_bytes_and_quality_against_the_float_index(
    run_folder: Path,
) -> None:
    (run_folder / "index.json").write_text(json.dumps(_index_settings()))
    quality = {
        "kind": "index_quality",
        "dataset": "scifact",
        "split": "test",
        "n_queries": 300,
        "n_documents": 5183,
        "measures": {
            "float32": {"nDCG@10": 0.6451, "R@100": 0.925},
            "index": {"nDCG@10": 0.6322, "R@100": 0.9117},
        },
        "paired_test": {"test": "student", "p_values": {"nDCG@10": 0.02, "R@100": 0.0004}},
    }
    (run_folder / "index_quality.json").write_text(json.dumps(quality))
    page = compression_report(run_folder)
    assert "Index" in _h2(page)
    index = page[page.index('id="index"') : page.index('id="provenance"')]
    assert "binary" in index and "256 of 384 (relevance)" in index
    assert "4× the candidates" in index and "int8 document vectors" in index
    # 256 bits = 32 bytes, 256 int8 rescoring bytes, against 384 × 4 = 1536 float32 bytes
    assert "32 + 256 to rescore against 1536 in float32 (48× smaller" in index
    assert "5.33× smaller with the rescoring vectors" in index
    assert "5183 documents" in index and "7.96 MB in float32" in index  # 5183 × 1536 B
    assert "0.6451" in index and "0.6322" in index and "−0.0129" in index
    assert "98.0 %" in index and "&lt; 0.001" in index  # kept; R@100's p
    assert "scifact / test, 300 queries" in index


def test_the_index_section_says_not_measured_without_its_quality_file(run_folder: Path) -> None:
    (run_folder / "index.json").write_text(
        json.dumps(_index_settings(precision="int8", rescore=1, dims=list(range(384))))
    )
    index = compression_report(run_folder)
    index = index[index.index('id="index"') : index.index('id="provenance"')]
    assert "384 of 384 (all)" in index and "<td>none</td>" in index
    assert "384 against 1536 in float32 (4× smaller)" in index
    assert "Quality against the float index: not measured" in index
    assert index.count("not measured") == 2  # bytes in total need the corpus size too


def test_a_run_without_an_index_has_no_index_section(run_folder: Path) -> None:
    assert "Index" not in _h2(compression_report(run_folder))


def test_a_malformed_index_json_is_named(run_folder: Path) -> None:
    (run_folder / "index.json").write_text('{"kind": "index_settings", "version": 1}')
    with pytest.raises(DataFormatError, match=r"index\.json"):
        load_run(run_folder)


def test_quality_json_is_read_as_the_typed_comparison(run_folder: Path) -> None:
    from relcomp.artifacts import QualityComparison

    quality = load_run(run_folder).quality
    assert isinstance(quality, QualityComparison)
    assert quality.reference.size_mb == 90.9 and quality.compressed.latency_ms == {
        "p50": 5.1,
        "p95": pytest.approx(7.14),
    }
    # candidates of a file written before they recorded their split and the choice
    assert [c.split for c in quality.candidates] == [None, None, None]
    assert not any(c.chosen for c in quality.candidates)
    assert quality.first_stage is None and quality.provenance == {}  # keys this file lacks
    assert QualityComparison.from_json(quality.to_json()) == quality


def _write_recovery(
    run_folder: Path,
    *,
    gate: bool = True,
    hidden_weight: float = 0.0,
    loss: str = "listwise-kl",
    similarity_weight: float = 1.0,
    label_weight: float = 0.0,
) -> None:
    """A recovery log in ``recovered/`` and the gate's before/after figures in quality.json."""
    from relcomp.artifacts import RecoveryLog

    checkpoints = [
        {"step": 0, "heldout_loss": 0.9, "heldout_hidden_mse": 2.0},
        {"step": 20, "heldout_loss": 0.4, "heldout_hidden_mse": 0.7},
    ]
    RecoveryLog(student="s", teacher="t", loss=loss, steps=20, batch_size=4,
                lr=5e-5, max_length=128, seed=13, device="cpu", pairs_seen=640, seconds=3.0,
                losses=[1.0 - i / 40 for i in range(20)], checkpoints=checkpoints,
                hidden_weight=hidden_weight,
                hidden_layers=[(0, 0), (1, 2)] if hidden_weight else [],
                similarity_weight=similarity_weight, label_weight=label_weight,
                ).save(run_folder / "recovered" / "recovery_log.json")  # fmt: skip
    quality = json.loads((run_folder / "quality.json").read_text(encoding="utf-8"))
    recovery: dict = {"steps": 20, "hidden_weight": hidden_weight}
    if gate:
        recovery["gate"] = {"measure": "nDCG@10", "split": "dev", "n_queries": 40,
                            "reference": 0.6617, "before": 0.5012, "after": 0.6403}  # fmt: skip
    quality.setdefault("provenance", {})["recovery"] = recovery
    (run_folder / "quality.json").write_text(json.dumps(quality), encoding="utf-8")


def test_the_recovery_section_shows_the_loss_curve_and_ndcg_before_and_after(
    run_folder: Path,
) -> None:
    _write_recovery(run_folder, hidden_weight=0.5)
    path = write_report(run_folder)
    page = path.read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert "Recovery" in _h2(page)
    recovery = page[page.index('id="recovery"') : page.index('id="parity"')]
    assert _inline_images(recovery) == 1 and "Loss curve" in recovery
    assert (run_folder / "figures" / "recovery_loss.png").is_file()
    assert "nDCG@10 on the gate split before and after recovery" in recovery
    assert "dev split, 40 queries" in recovery
    for text in ("0.6617", "0.5012", "−0.1605", "0.6403", "−0.0214"):
        assert text in recovery, text
    assert "weight 0.5" in recovery and "hidden-state term" in recovery
    assert "Loss at each checkpoint" in recovery and "heldout hidden mse" in recovery


def test_the_recovery_section_says_when_the_gate_did_not_measure_it(run_folder: Path) -> None:
    _write_recovery(run_folder, gate=False)
    page = compression_report(run_folder)
    recovery = page[page.index('id="recovery"') : page.index('id="parity"')]
    assert "before and after recovery: not measured" in recovery
    assert "0.5012" not in recovery and "hidden-state matching</th><td>off" in recovery
    assert "similarity KL weight" not in recovery  # a cross-encoder's loss has none
    assert "sources)</th><td>off" in recovery  # no label term


def test_the_recovery_section_names_the_label_weight(run_folder: Path) -> None:
    _write_recovery(run_folder, label_weight=0.5)
    page = compression_report(run_folder)
    recovery = page[page.index('id="recovery"') : page.index('id="parity"')]
    assert "sources)</th><td>weight 0.5" in recovery
    assert "the judged-positives term (0.5 × NLL)" in recovery


def test_a_bi_encoders_recovery_section_names_its_similarity_weight(run_folder: Path) -> None:
    _write_recovery(run_folder, loss="embedding", similarity_weight=400.0)
    page = compression_report(run_folder)
    recovery = page[page.index('id="recovery"') : page.index('id="parity"')]
    assert "in-batch similarity KL weight</th><td>400" in recovery


def test_a_run_without_recovery_has_no_recovery_section(run_folder: Path) -> None:
    page = compression_report(run_folder)
    assert "Recovery" not in _h2(page) and 'id="recovery"' not in page
    assert not any("recovery" in name for name in report_html._build_compression(
        load_run(run_folder)).figures)  # fmt: skip
