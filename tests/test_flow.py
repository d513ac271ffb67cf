"""The whole flow (``pipeline.compress``, ``relcomp compress`` / ``demo``) on tiny models.

A tiny BEIR folder is built per test; the models are the session's tiny models. The
real ``relcomp demo`` (all-MiniLM-L6-v2, the shipped collection) is the slow test
at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from relcomp import cli, compress_flow, pipeline
from relcomp.artifacts import EXPORT_BUNDLE_FILE, CompressionPlan, QualityReport
from relcomp.errors import RelcompError
from relcomp.evaluation import measure_speed, resolve_protocol
from relcomp.export import QualityGateError
from relcomp.models import load_model
from relcomp.run_folder import RunFolder
from tests.fixtures import DOCUMENTS, QUERIES

BUDGET = "bits_per_weight=6"
#: What a finished run folder holds, besides the bundle's tokenizer and config files.
RUN_FILES = {
    "component_relevance.json",
    "plan.json",
    "quality.json",
    "report.html",
    "run.json",
    "parity.json",
    EXPORT_BUNDLE_FILE,
}
QUALITY_KEYS = {
    "kind",
    "version",
    "model",
    "dataset",
    "split",
    "protocol",
    "n_queries",
    "measures",
    "reference",
    "compressed",
    "difference",
    "gate",
    "candidates",
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """Eight documents; queries 0-2 judged in test, 3-5 in train (calibration and gate)."""
    folder = tmp_path / "toy"
    (folder / "qrels").mkdir(parents=True)
    documents = [*DOCUMENTS, "Rain and clouds are weather.", "Whales live in the sea."]
    rows = [{"_id": f"d{i}", "title": "", "text": text} for i, text in enumerate(documents)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    queries = [{"_id": f"q{i}", "text": text} for i, text in enumerate(QUERIES)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    header = "query-id\tcorpus-id\tscore\n"
    (folder / "qrels" / "test.tsv").write_text(header + "q0\td0\t1\nq1\td2\t1\nq2\td3\t1\n")
    (folder / "qrels" / "train.tsv").write_text(header + "q3\td4\t1\nq4\td1\t1\nq5\td5\t1\n")
    return folder


def _compress(
    model: Any, data: Path, out: Path, budget: str = BUDGET, **options: Any
) -> pipeline.CompressResult:
    settings: dict[str, Any] = {
        "max_ndcg_loss": 100.0,
        "calibration": 3,
        "explanations": 2,
        "threads": 1,
        "show_progress_bar": False,
    }
    settings.update(options)
    return pipeline.compress(model, data, budget, out, **settings)


def _leftovers(folder: Path) -> list[str]:
    """Temporary files and folders a write or an export could leave behind."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.endswith((".tmp", ".partial", ".old")) or ".partial" in str(p)
    )


@pytest.mark.parametrize(
    ("kind", "embeddings"), [("cross-encoder", "fp32"), ("bi-encoder", "int8")]
)
def test_compress_writes_every_artifact_and_a_loadable_bundle(
    tiny_model_path, toy: Path, tmp_path: Path, kind: str, embeddings: str
) -> None:
    out = tmp_path / "run"
    result = _compress(tiny_model_path("bert", kind), toy, out, embeddings=embeddings)

    names = {p.name for p in out.iterdir()}
    assert names >= RUN_FILES
    assert result.report == out / "report.html" and "<html" in result.report.read_text()[:200]
    assert list(out.glob("onnx/model_*.onnx")) and list(out.glob("figures/*.png"))
    assert len(list(out.glob("explanations/*.json"))) == 2
    assert _leftovers(out) == []

    quality = json.loads((out / "quality.json").read_text())
    assert quality == result.quality
    assert set(quality) >= QUALITY_KEYS
    assert quality["kind"] == "quality_comparison" and quality["split"] == "test"
    assert quality["measures"] == ["nDCG@10", "RR@10", "R@100"]
    for side in ("reference", "compressed"):
        entry = quality[side]
        assert set(entry["per_query"]["nDCG@10"]) == {"q0", "q1", "q2"}
        assert entry["size_mb"] > 0 and entry["pairs_per_s"] > 0
        assert 0 < entry["latency_ms"]["p50"] <= entry["latency_ms"]["p95"]
        depths = [k for k in ("10", "20", "30", "50") if int(k) < quality["depth"]]
        assert list(entry["by_depth"]) == (depths if kind == "cross-encoder" else [])
    assert quality["compressed"]["size_mb"] < quality["reference"]["size_mb"]
    for difference in quality["difference"].values():
        assert 0 <= difference["p_value"] <= 1 and isinstance(difference["significant"], bool)
    assert quality["gate"]["split"] == "train" and quality["gate"]["passed"] is True
    assert quality["candidates"][0]["passed"] is True
    assert quality["provenance"]["embeddings"] == embeddings
    assert ("int8 embeddings" in quality["compressed"]["name"]) == (embeddings == "int8")

    # the folder is an ONNX bundle: load_model gives the ONNX Runtime model
    bundle = load_model(out)
    assert type(bundle).__name__.startswith("Onnx") and bundle.kind == kind
    assert CompressionPlan.load(out / "plan.json").method.startswith("mixed-precision")


def test_calibration_and_gate_never_touch_the_reported_split(
    tiny_model_path, toy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    _compress(tiny_model_path("bert"), toy, out)
    relevance = json.loads((out / "component_relevance.json").read_text())
    assert relevance["source"]["split"] == "train"
    gate = QualityReport.load(out / "evaluation" / "gate_reference.json")
    assert gate.split == "train" and set(gate.per_query) == {"q3", "q4", "q5"}
    with pytest.raises(ValueError, match="test"):
        _compress(tiny_model_path("bert"), toy, tmp_path / "other", calibration_split="test")


def test_a_second_run_resumes_and_a_changed_budget_redoes_only_what_follows(
    tiny_model_path, toy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    model = tiny_model_path("bert")
    _compress(model, toy, out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    time.sleep(0.01)
    caplog.set_level("INFO", logger="relcomp")
    _compress(model, toy, out)
    for name in ("component_relevance.json", "plan.json", EXPORT_BUNDLE_FILE, "parity.json"):
        assert out.joinpath(name).stat().st_mtime_ns == stamps[name], name
    assert "reusing component_relevance.json" in caplog.text

    old_onnx = sorted(out.glob("onnx/*.onnx"))
    _compress(model, toy, out, budget="bits_per_weight=8")
    assert (
        out.joinpath("component_relevance.json").stat().st_mtime_ns
        == stamps["component_relevance.json"]
    )
    assert out.joinpath("plan.json").stat().st_mtime_ns != stamps["plan.json"]
    new_onnx = sorted(out.glob("onnx/*.onnx"))
    assert len(new_onnx) == 1 and new_onnx != old_onnx  # the old plan's model is gone
    assert json.loads((out / "quality.json").read_text())["candidates"][0]["budget"].endswith(
        "bits_per_weight=8"
    )


def test_a_failed_gate_removes_the_bundle_and_says_how_much_was_lost(
    tiny_model_path, toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    model = tiny_model_path("bert")
    _compress(model, toy, out)  # a finished run first: its report must not survive the failure
    _worse_when(monkeypatch, lambda path: True)
    with pytest.raises(QualityGateError, match=r"lost 25\.00 nDCG@10 points") as failure:
        _compress(model, toy, out, budget="bits_per_weight=8", max_ndcg_loss=0.5)
    assert failure.value.result.loss_points == pytest.approx(25.0)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == [
        "component_relevance.json",
        "evaluation/gate_compressed.json",
        "evaluation/gate_reference.json",
        "explanations/01.json",
        "explanations/02.json",
        "plan.json",
        "run.json",
    ]
    manifest = json.loads((out / "run.json").read_text())["steps"]
    assert "export" not in manifest and "evaluation" not in manifest


def _shifted(report: QualityReport, delta: float) -> QualityReport:
    import dataclasses

    per_query = {
        qid: {m: (v + delta if m == "nDCG@10" else v) for m, v in values.items()}
        for qid, values in report.per_query.items()
    }
    measures = {m: (v + delta if m == "nDCG@10" else v) for m, v in report.measures.items()}
    return dataclasses.replace(report, measures=measures, per_query=per_query)


# -- several budgets: plans tried, the smallest that passes the gate kept ------------------
BUDGETS = ["bits_per_weight=6", "bits_per_weight=8"]


def _worse_when(monkeypatch: pytest.MonkeyPatch, failing: Any) -> None:
    """Evaluations of ONNX bundles for which ``failing(path)`` holds lose 25 points."""
    real_evaluate = pipeline.evaluate

    def evaluate(scorer: Any, *args: Any, **kwargs: Any) -> QualityReport:
        report = real_evaluate(scorer, *args, **kwargs)
        if type(scorer).__name__.startswith("Onnx") and failing(str(scorer.path)):
            report = _shifted(report, -0.25)
        return report

    monkeypatch.setattr(pipeline, "evaluate", evaluate)


def test_several_budgets_keep_the_smallest_bundle_and_plot_them_all(
    tiny_model_path, toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import relcomp.pipeline

    out = tmp_path / "run"
    model = tiny_model_path("bert")
    result = _compress(model, toy, out, budget=BUDGETS)

    quality = result.quality
    candidates = quality["candidates"]
    assert [c["budget_values"] for c in candidates] == [
        {"bits_per_weight": 6.0},
        {"bits_per_weight": 8.0},
    ]
    assert candidates[0]["size_mb"] < candidates[1]["size_mb"]
    assert [c["chosen"] for c in candidates] == [True, False]
    for candidate in candidates:
        assert candidate["split"] == "train" and candidate["passed"] is True
        assert candidate["latency_ms"] > 0 and candidate["pairs_per_s"] > 0
    assert quality["candidates_reference"]["split"] == "train"
    assert quality["compressed"]["size_mb"] == pytest.approx(candidates[0]["size_mb"])
    assert CompressionPlan.load(out / "plan.json").budget == {"bits_per_weight": 6.0}
    assert len(list(out.glob("onnx/*.onnx"))) == 1 and _leftovers(out) == []
    assert not list(out.glob(".candidate-*"))
    html = result.report.read_text()
    assert 'id="pareto"' in html and "(kept)" in html
    assert {p.name for p in out.glob("figures/pareto_*.png")} == {
        "pareto_size.png",
        "pareto_latency.png",
    }

    # run again: nothing is exported again
    def no_export(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("exported again")

    import relcomp.export

    monkeypatch.setattr(relcomp.export, "export_bundle", no_export)
    again = _compress(model, toy, out, budget=BUDGETS)
    assert again.quality["candidates"] == candidates


def test_several_budgets_skip_the_ones_that_fail_the_gate(
    tiny_model_path, toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    _worse_when(monkeypatch, lambda path: ".candidate-1." in path)
    result = _compress(tiny_model_path("bert"), toy, out, budget=BUDGETS, max_ndcg_loss=0.5)
    candidates = result.quality["candidates"]
    assert [c["passed"] for c in candidates] == [False, True]
    assert [c["chosen"] for c in candidates] == [False, True]
    assert candidates[0]["loss_points"] >= 25 - 1e-6
    assert CompressionPlan.load(out / "plan.json").budget == {"bits_per_weight": 8.0}
    assert result.quality["gate"]["passed"] is True


def test_several_budgets_all_failing_leave_no_bundle_and_name_every_loss(
    tiny_model_path, toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    model = tiny_model_path("bert")
    _compress(model, toy, out)  # a finished run first: nothing of it may look current after
    _worse_when(monkeypatch, lambda path: True)
    for _ in range(2):  # the second time from candidates.json, without exporting
        with pytest.raises(QualityGateError, match="every budget tried") as failure:
            _compress(model, toy, out, budget=BUDGETS, max_ndcg_loss=0.5)
        message = str(failure.value)
        assert "6 bits/weight: 25" in message and "8 bits/weight: 25" in message
        assert failure.value.result.loss_points >= 25 - 1e-6
        assert not (out / EXPORT_BUNDLE_FILE).exists() and not list(out.glob("onnx/*"))
        assert not (out / "plan.json").exists() and not (out / "report.html").exists()
        assert (out / "evaluation" / "candidates.json").is_file() and _leftovers(out) == []


def test_an_impossible_budget_among_several_fails_before_any_export(
    tiny_model_path, toy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with pytest.raises(RelcompError, match="impossible budget bits_per_weight=2"):
        _compress(tiny_model_path("bert"), toy, out, budget=["8bits", "2bits"])
    assert not list(out.rglob("*.onnx")) and _leftovers(out) == []


def test_budgets_given_twice_are_refused(tiny_model_path, toy: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="given twice"):
        _compress(
            tiny_model_path("bert"), toy, tmp_path / "run", budget=["6bits", "bits_per_weight=6"]
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_interrupted_run_leaves_complete_files_only_and_resumes(
    tiny_model_path,
    toy: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
) -> None:
    out = tmp_path / "run"
    model = tiny_model_path("bert")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(compress_flow, "measure_speed", broken)  # the speed step's
    with pytest.raises(type(error)):
        _compress(model, toy, out)
    assert _leftovers(out) == []
    assert not (out / "quality.json").exists() and not (out / "report.html").exists()
    # every file that is there is complete: the steps before the failure, as recorded
    manifest = json.loads((out / "run.json").read_text())["steps"]
    assert list(manifest) == ["relevance", "plan", "export", "gate", "evaluation"]
    bundle_stamp = (out / EXPORT_BUNDLE_FILE).stat().st_mtime_ns

    monkeypatch.undo()
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    result = _compress(model, toy, out)
    assert result.report is not None and result.report.is_file()
    assert (out / EXPORT_BUNDLE_FILE).stat().st_mtime_ns == bundle_stamp  # not exported again


def test_an_interrupted_export_leaves_no_bundle(
    tiny_model_path, toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import relcomp.export

    out = tmp_path / "run"

    def half_export(model: Any, out_dir: Any, **kwargs: Any) -> None:
        folder = Path(out_dir)
        (folder / "onnx").mkdir(parents=True)
        (folder / "onnx" / "model_x.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(relcomp.export, "export_bundle", half_export)
    with pytest.raises(KeyboardInterrupt):
        _compress(tiny_model_path("bert"), toy, out)
    assert not (out / "onnx").exists() and not (out / EXPORT_BUNDLE_FILE).exists()
    assert _leftovers(out) == []
    assert {p.name for p in out.iterdir()} == {"component_relevance.json", "plan.json", "run.json"}


def test_run_folder_notices_a_changed_file(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    (tmp_path / "a.json").write_text("{}")
    run.record("a", {"x": 1}, ["a.json"])
    assert RunFolder(tmp_path).done("a", {"x": 1})
    (tmp_path / "a.json").write_text('{"edited": true}')
    assert not RunFolder(tmp_path).done("a", {"x": 1})
    assert not RunFolder(tmp_path, resume=False).done("a", {"x": 1})


def test_run_folder_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RelcompError, match="not a relcomp compress run"):
        RunFolder(tmp_path)
    assert RunFolder(tmp_path / "new").path.is_dir()


def test_measure_speed_interleaves_systems_on_the_same_pairs() -> None:
    calls: list[tuple[str, int]] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def score(self, queries, documents, batch_size=32, show_progress_bar=None):  # type: ignore[no-untyped-def]
            calls.append((self.name, len(queries)))
            return [0.0] * len(queries)

    result = measure_speed(
        {"a": Recorder("a"), "b": Recorder("b")},
        ["q"] * 8,
        ["d"] * 8,
        batch_size=4,
        latency_pairs=3,
        repeats=2,
        threads=1,
    )
    assert calls[2:8] == [("a", 1), ("b", 1)] * 3  # after the warm-up, A B A B …
    assert calls[8:] == [("a", 4), ("b", 4)] * 2
    assert result["a"]["batch_size"] == 4 and result["b"]["latency_pairs"] == 3


def test_unknown_protocol_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="quick, full, demo"):
        resolve_protocol("fast")


# -- the command line ----------------------------------------------------------------------
def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = cli.main(list(argv))
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compress", "-m", "m", "-d", "d", "-o", "o"], "--budget"),
        (["compress", "-m", "m", "-d", "d", "--budget", "6bits"], "--output"),
        (
            ["compress", "-m", "m", "-d", "d", "--budget", "6", "-o", "o", "--max-ndcg-loss", "-1"],
            "--max-ndcg-loss",
        ),
        (
            ["compress", "-m", "m", "-d", "d", "--budget", "6", "-o", "o", "--queries", "0"],
            "--queries",
        ),
        (
            ["compress", "-m", "m", "-d", "d", "--budget", "6", "-o", "o", "--protocol", "fast"],
            "--protocol",
        ),
        (["-q", "-v", "demo"], "-v/--verbose"),
    ],
)
def test_cli_argument_errors_exit_2_naming_the_argument(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, _, err = _cli(capsys, *argv)
    assert status == 2 and message in err


def test_cli_bad_data_and_budget_name_the_culprit(
    capsys: pytest.CaptureFixture[str], tiny_model_path, toy: Path, tmp_path: Path
) -> None:
    model = str(tiny_model_path("bert"))
    status, _, err = _cli(
        capsys,
        "compress",
        "-m",
        model,
        "-d",
        str(tmp_path / "nowhere"),
        "--budget",
        "6bits",
        "-o",
        str(tmp_path / "o"),
    )
    assert status == 2 and "nowhere" in err and not (tmp_path / "o").exists()
    status, _, err = _cli(
        capsys,
        "compress",
        "-m",
        model,
        "-d",
        str(toy),
        "--budget",
        "lots",
        "-o",
        str(tmp_path / "o"),
    )
    assert status == 2 and "--budget 'lots'" in err and not (tmp_path / "o").exists()


def test_cli_compress_prints_the_table_and_the_report(
    capsys: pytest.CaptureFixture[str], tiny_model_path, toy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    status, stdout, _ = _cli(
        capsys,
        "-q",
        "compress",
        "-m",
        str(tiny_model_path("bert")),
        "-d",
        str(toy),
        "--budget",
        "6bits",
        "--max-ndcg-loss",
        "100",
        "--calibration",
        "3",
        "--explanations",
        "1",
        "-o",
        str(out),
    )
    assert status == 0
    assert "nDCG@10" in stdout and "quality gate" in stdout
    assert stdout.strip().splitlines()[-1] == f"report: {out / 'report.html'}"


def test_cli_compress_with_several_budgets_prints_the_plans_tried(
    capsys: pytest.CaptureFixture[str], tiny_model_path, toy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    status, stdout, _ = _cli(
        capsys, "-q", "compress", "-m", str(tiny_model_path("bert")), "-d", str(toy),
        "--budget", "6bits", "8bits", "--max-ndcg-loss", "100", "--calibration", "3",
        "--explanations", "0", "-o", str(out),
    )  # fmt: skip
    assert status == 0
    assert "plans tried" in stdout and "6 bits/weight (kept)" in stdout
    assert "8 bits/weight" in stdout


def test_cli_gate_failure_exits_3_with_the_loss(
    capsys: pytest.CaptureFixture[str],
    tiny_model_path,
    toy: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from relcomp.export import GateResult

    def failing(*args: Any, **kwargs: Any) -> Any:
        report = QualityReport("m", "toy", "train", {"nDCG@10": 0.5}, {}, 3)
        raise QualityGateError(
            "quality gate failed: the compressed model lost 3.00 nDCG@10 points",
            GateResult(report, report, "train", 3.0, 0.5),
        )

    monkeypatch.setattr(pipeline, "compress", failing)
    status, _, err = _cli(
        capsys,
        "compress",
        "-m",
        "m",
        "-d",
        str(toy),
        "--budget",
        "6bits",
        "-o",
        str(tmp_path / "o"),
    )
    assert status == cli.EXIT_GATE_FAILED == 3 and "lost 3.00 nDCG@10 points" in err


# -- the real demo --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_relcomp_demo_runs_offline_and_ends_with_the_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    started = time.perf_counter()
    status, stdout, _ = _cli(capsys, "demo", "-o", str(tmp_path / "demo"))
    seconds = time.perf_counter() - started
    assert status == 0
    report = tmp_path / "demo" / "report.html"
    assert stdout.strip().splitlines()[-1] == f"report: {report}" and report.is_file()
    quality = json.loads((tmp_path / "demo" / "quality.json").read_text())
    assert quality["dataset"] == "scifact-demo" and quality["n_queries"] == 60
    assert quality["gate"]["passed"]
    assert 0.45 < quality["reference"]["measures"]["nDCG@10"] < 0.7
    assert quality["compressed"]["size_mb"] < quality["reference"]["size_mb"]
    tried = quality["candidates"]
    assert len(tried) == len(pipeline.DEMO_BUDGET) and sum(c["chosen"] for c in tried) == 1
    assert 'id="pareto"' in report.read_text()
    print(f"relcomp demo: {seconds:.0f} s")
