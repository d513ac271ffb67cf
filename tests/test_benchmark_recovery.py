"""The recovery benchmarks' own logic: recovered sweep cells, and losses against ORT fp32."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from relcomp.compression.planners import make_plan
from relcomp.recovery import recovery_data
from tests.recovery.test_recovery import write_collection

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def scripts() -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield lambda name: importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))


# -- compression_quality.py --recover -----------------------------------------------------
def test_a_recovered_cell_reports_before_and_after_and_reruns_to_the_same_model(
    scripts: Any, tiny_model: Any, tmp_path: Path
) -> None:
    quality = scripts("compression_quality")
    collection = write_collection(tmp_path / "collection")
    teacher = tiny_model("minilm")
    plan = make_plan(teacher, "prune-structured", {"params_removed": 0.5}, importance="magnitude")
    data = recovery_data(teacher, collection, candidates=4, pseudo=4)
    recovery = quality.Recovery(data, steps=6, work=tmp_path / "work")
    settings = {"data_dir": collection, "split": "test", "depth": 4, "max_length": 64}

    before, after, log = quality.evaluate_plan(teacher, plan, settings, None, recovery)
    assert log.steps == 6 and log.pairs_seen > 0
    assert before.n_queries == after.n_queries > 0
    assert log.checkpoints[-1]["step"] == 6  # the held-out loss the row records
    [checkpoint] = list((tmp_path / "work").iterdir())  # one folder per plan
    # a second run finds the finished checkpoint and gives the same model back
    again = quality.evaluate_plan(teacher, plan, settings, None, recovery)
    assert again[1].measures == after.measures and again[2].losses == log.losses
    assert list((tmp_path / "work").iterdir()) == [checkpoint]


def test_recovered_sweeps_are_judged_against_the_blind_plans_that_ran(scripts: Any) -> None:
    quality = scripts("compression_quality")
    budget = {"params_removed": 0.5}
    rows = [{"budget": None, "method": "reference", "ndcg@10": 0.60, "size_mb": 90.0}]
    rows += [
        {"budget": budget, "method": m, "ndcg@10": v, "size_mb": 50.0}
        for m, v in (("relevance", 0.598), ("taylor", 0.59), ("random", 0.55))
    ]
    payload = {"_meta": {"protocol": "quick"}, "m": {"d": {"prune-structured": rows}}}
    assert quality.claims(payload) == []  # a sweep waits for every blind baseline
    payload["_meta"]["recovery"] = {"steps": 300}
    [verdict] = quality.claims(payload)
    assert verdict["best_blind"] == "taylor" and verdict["blind_run"] == ["random", "taylor"]
    assert verdict["met"]  # loses 0.002 ≤ 0.01 / 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--recover", "0"], "--recover takes a positive number of steps, got 0"),
        (
            ["--recover", "10", "--families", "prune-structured", "mixed-precision"],
            "only prune-structured plans are recovered",
        ),
    ],
)
def test_bad_recovery_settings_fail_before_any_work(
    scripts: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    quality = scripts("compression_quality")
    output = tmp_path / "out.json"
    monkeypatch.setattr(sys, "argv", ["compression_quality.py", "--output", str(output), *argv])
    monkeypatch.setattr(quality, "load_model", _no_work)
    with pytest.raises(SystemExit, match=message):
        quality.main()
    assert not output.exists()


def test_resuming_a_file_recovered_for_other_steps_is_refused(
    scripts: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quality = scripts("compression_quality")
    output = tmp_path / "out.json"
    output.write_text('{"_meta": {"protocol": "quick", "recovery": {"steps": 300}}}')
    argv = ["--output", str(output), "--resume", "--families", "prune-structured"]
    monkeypatch.setattr(sys, "argv", ["compression_quality.py", *argv, "--recover", "100"])
    monkeypatch.setattr(quality, "load_model", _no_work)
    with pytest.raises(SystemExit, match="recovered for 300 steps, not 100"):
        quality.main()


def _no_work(*_: Any, **__: Any) -> Any:
    raise AssertionError("the model was loaded before the settings were checked")


# -- speed_size.py --skip-quality ---------------------------------------------------------
def _row(system: str, mb: float, pairs_per_s: float, **ndcg: float) -> dict[str, Any]:
    return {"system": system, "size_mb": mb, "pairs_per_s": pairs_per_s, "ndcg@10": ndcg}


def test_losses_are_taken_against_ort_fp32_when_torch_fp32_is_not_scored(scripts: Any) -> None:
    speed = scripts("speed_size")
    rows = [
        _row(speed.TORCH, 90.9, 10.0),
        _row(speed.ORT_FP32, 90.9, 25.0, nf=0.3400),
        _row(speed.PEER, 23.0, 30.0, nf=0.3380),
        _row("relcomp pruned 70% + recovery + int8", 16.0, 90.0, nf=0.3360),
    ]
    assert speed.quality_reference([speed.TORCH]) == speed.ORT_FP32
    assert speed.quality_reference([]) == speed.TORCH
    verdict = speed.targets(rows, ["nf"], speed.ORT_FP32)
    checks = verdict["plans"]["relcomp pruned 70% + recovery + int8"]["checks"]
    assert checks["loss ≤ 0.5 nDCG@10 points on every collection"]["figure"] == "nf +0.40"
    assert checks["≥ 3× torch fp32 throughput"]["figure"] == "9.00×"  # speed: against torch
    assert not checks["less loss than the int8 peer at equal or smaller size"]["met"]
    with pytest.raises(SystemExit, match="at least one of torch fp32 and ORT fp32"):
        speed.quality_reference([speed.TORCH, speed.ORT_FP32])
    payload = {"_meta": {"datasets": ["nf"]}, "m": rows}
    assert "| torch fp32 | 90.9 | 10.0 |" in speed.markdown([_with_timing(payload)])


def test_the_peer_check_is_not_measured_when_the_peers_quality_is_left_out(scripts: Any) -> None:
    speed = scripts("speed_size")
    plan = "relcomp top 2 layers dropped + recovery + int8"
    rows = [
        _row(speed.TORCH, 90.9, 10.0),
        _row(speed.ORT_FP32, 90.9, 25.0, nf=0.3400),
        _row(speed.PEER, 23.0, 30.0),  # --skip-quality "ORT int8 (optimum avx2)"
        _row(plan, 16.0, 90.0, nf=0.3390),
    ]
    verdict = speed.targets(rows, ["nf"], speed.ORT_FP32)
    checks = verdict["plans"][plan]["checks"]
    peer_check = checks["less loss than the int8 peer at equal or smaller size"]
    assert peer_check["met"] is None
    assert peer_check["figure"] == "size 16.0 vs 23.0 MB; loss nf +0.10 vs the peer not scored"
    assert verdict["plans"][plan]["met"] == len(checks) - 1  # every other target is met
    payload = {"_meta": {"datasets": ["nf"], "targets": {"m": verdict}}, "m": rows}
    table = speed.markdown([_with_timing(payload)])
    assert "| less loss than the int8 peer at equal or smaller size | not measured |" in table


def _with_timing(payload: dict[str, Any]) -> dict[str, Any]:
    for row in payload["m"]:
        row.update(p50_ms=1.0, p95_ms=2.0)
    return payload


def test_the_depth_table_gives_each_systems_loss_at_each_re_ranking_depth(scripts: Any) -> None:
    speed = scripts("speed_size")
    rows = [
        _row(speed.TORCH, 90.9, 10.0),
        _row(speed.ORT_FP32, 90.9, 25.0, nf=0.3146),
        _row("relcomp pruned 70% + recovery + int8", 16.0, 90.0, nf=0.2923),
    ]
    rows[1]["ndcg@10_by_depth"] = {"nf": {"10": 0.3086, "30": 0.3150}}
    rows[2]["ndcg@10_by_depth"] = {"nf": {"10": 0.3026, "30": 0.3038}}
    meta = {
        "datasets": ["nf"],
        "models": {"m": {"quality_reference": speed.ORT_FP32, "evaluation_nf": {"depth": 100}}},
    }
    table = speed.markdown([_with_timing({"_meta": meta, "m": rows})])
    assert "| data | system | top-10 | top-30 | top-100 |" in table
    assert "| nf | ORT fp32 | 0.3086 | 0.3150 | 0.3146 |" in table
    assert (
        "| nf | relcomp pruned 70% + recovery + int8 | 0.3026 (-0.60) | 0.3038 (-1.12) | 0.2923 (-2.23) |"
        in table
    )


def test_the_recovery_table_gives_before_after_and_the_test_against_relevance(
    scripts: Any,
) -> None:
    quality = scripts("compression_quality")
    budget = {"params_removed": 0.5}
    per_query = {"relevance": [0.5, 0.6, 0.7, 0.4], "taylor": [0.6, 0.72, 0.8, 0.52]}
    recovery = {
        "steps": 300,
        "seconds": 12.0,
        "heldout_loss": [{"step": 300, "heldout_loss": 0.07}],
    }
    rows = [{"budget": None, "method": "reference", "ndcg@10": 0.60, "size_mb": 90.0}]
    rows += [
        {
            "budget": budget,
            "method": method,
            "ndcg@10": sum(values) / 4,
            "ndcg@10_before_recovery": 0.3,
            "size_mb": 50.0,
            "per_query": {f"q{i}": v for i, v in enumerate(values)},
            "recovery": recovery,
        }
        for method, values in per_query.items()
    ]
    payload = {"_meta": {"protocol": "quick", "recovery": {"steps": 300}}}
    payload["m"] = {"d": {"prune-structured": rows}}
    table = quality.recovery_markdown([payload])
    assert (
        "| m | d | params_removed=0.5 | relevance | 0.3000 | 0.5500 | +5.00 | – | 0.0700 | 300 | 12 |"
        in table
    )
    assert "| m | d | params_removed=0.5 | taylor | 0.3000 | 0.6600 | -6.00 | 0.000 |" in table
    unrecovered = {"_meta": {"protocol": "quick"}, "m": {"d": {"prune-structured": rows[:1]}}}
    with pytest.raises(SystemExit, match="recovered for different steps"):
        quality.merge([payload, unrecovered])


# -- recovery.py ---------------------------------------------------------------------------
@pytest.fixture
def recovery_bench(
    scripts: Any, tiny_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any]:
    """``(benchmarks/recovery.py, its teacher)``: a tiny reranker for the project's, and
    the tiny collection for every BEIR name; any other model path loads for real."""
    bench = scripts("recovery")
    collection = write_collection(tmp_path / "collection")
    teacher = tiny_model("minilm")
    load = bench.load_model
    monkeypatch.setattr(bench, "reranker_path", lambda: "the teacher")
    monkeypatch.setattr(
        bench, "load_model", lambda path: teacher if path == "the teacher" else load(path)
    )
    monkeypatch.setattr(bench, "beir_path", lambda name: collection)
    return bench, teacher


def test_the_recovery_benchmark_drops_layers_and_can_train_without_evaluating(
    recovery_bench: tuple[Any, Any], tmp_path: Path
) -> None:
    bench, teacher = recovery_bench
    output = tmp_path / "out.json"
    argv = ["--method", "drop-layers", "--layers-dropped", "1", "--importance", "uniform"]
    argv += ["--steps", "2", "--candidates", "4", "--pseudo", "4", "--queries", "0"]
    bench.main([*argv, "--work", str(tmp_path / "work"), "--output", str(output)])

    payload = json.loads(output.read_text())
    assert payload["_meta"]["protocol"] == "not evaluated" and payload["results"] == {}
    assert payload["_meta"]["plan"] == {
        "method": "drop-layers",
        "importance": "uniform",
        "layers_dropped": 1,
        "parameters": payload["_meta"]["plan"]["parameters"],
    }
    parameters = payload["_meta"]["plan"]["parameters"]
    assert parameters["pruned"] < parameters["reference"]
    folder = tmp_path / "work" / "reranker-scifact-uniform-drop1-c4" / "recovered"
    config = json.loads((folder / "config.json").read_text())
    assert config["num_hidden_layers"] == teacher.config.num_hidden_layers - 1
    assert bench._plan_label(payload["_meta"]["plan"]) == "uniform: 1 layers dropped"


def test_the_recovery_benchmark_refuses_negative_queries_before_any_work(
    scripts: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench = scripts("recovery")
    monkeypatch.setattr(bench, "load_model", _no_work)
    output = tmp_path / "out.json"
    with pytest.raises(SystemExit):
        bench.main(["--queries", "-1", "--output", str(output)])
    assert "--queries must be 0 (no evaluation) or more, got -1" in capsys.readouterr().err
    assert not output.exists()


def test_the_recovery_benchmark_continues_a_saved_student_with_the_label_term(
    recovery_bench: tuple[Any, Any], tmp_path: Path
) -> None:
    bench, _ = recovery_bench
    common = ["--steps", "2", "--candidates", "4", "--pseudo", "4", "--queries", "0"]
    common += ["--work", str(tmp_path / "work")]
    first = ["--importance", "magnitude", "--params-removed", "0.3", *common]
    bench.main([*first, "--output", str(tmp_path / "first.json")])
    started = tmp_path / "work" / "reranker-scifact-magnitude-0.3-c4" / "recovered"

    output = tmp_path / "out.json"
    bench.main([*common, "--student", str(started), "--label-weight", "1", "--output", str(output)])
    meta = json.loads(output.read_text())["_meta"]
    assert meta["recovery"]["label_weight"] == 1.0
    assert meta["plan"]["student"] == bench.relative(started)  # no machine path in results
    assert meta["plan"]["parameters"]["pruned"] < meta["plan"]["parameters"]["reference"]
    folder = tmp_path / "work" / "reranker-scifact-from-reranker-scifact-magnitude-0.3-c4-c4-label1"
    assert json.loads((folder / "recovery_log.json").read_text())["label_weight"] == 1.0
    assert (
        bench._plan_label(meta["plan"]) == "reranker-scifact-magnitude-0.3-c4 (the starting model)"
    )
