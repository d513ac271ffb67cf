"""``relcomp export``: the round trip, and one message with a non-zero exit for bad input."""

from __future__ import annotations

import json

import pytest

from relcomp.cli import main
from relcomp.data import demo_path
from relcomp.export import EXPORT_BUNDLE_FILE, ExportBundle
from tests.export.test_bundle import _Oracle


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))


def _plan(tmp_path, entries) -> str:
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps({"kind": "compression_plan", "version": 1, "model": "tiny", "entries": entries})
    )
    return str(path)


def test_export_then_evaluate_the_bundle(tiny_model_path, tmp_path, capsys) -> None:
    model = str(tiny_model_path("bert", "cross-encoder"))
    plan = _plan(tmp_path, [["_default", "int8"], ["classifier", "fp32"]])
    out = tmp_path / "bundle"
    status = main(
        ["export", "-m", model, "--plan", plan, "-o", str(out), "--parity-queries", "4", "-q"]
    )
    printed = capsys.readouterr().out
    assert status == 0
    bundle = ExportBundle.load(out / EXPORT_BUNDLE_FILE)
    assert bundle.onnx_file in printed and "size (MB)" in printed
    assert "max |Δscore|" in printed and "scifact-demo/train" in printed
    assert f"wrote {out}" in printed
    assert (out / "parity.json").is_file() and (out / "plan.json").is_file()
    assert bundle.modules["classifier"] == "fp32"
    evaluate = ["evaluate", "-m", str(out), "-d", str(demo_path()), "--split", "train"]
    status = main([*evaluate, "--queries", "3", "--depth", "5", "-q"])
    assert status == 0
    assert "nDCG@10" in capsys.readouterr().out


def test_export_with_a_passing_gate(tiny_model_path, tmp_path, capsys) -> None:
    model = str(tiny_model_path("distilbert", "bi-encoder"))
    out = tmp_path / "bundle"
    argv = ["export", "-m", model, "-o", str(out), "-d", str(demo_path()), "--max-ndcg-loss", "0.5"]
    status = main([*argv, "--queries", "5", "--depth", "5", "--parity-queries", "3", "-q"])
    printed = capsys.readouterr().out
    assert status == 0 and "passed" in printed
    assert ExportBundle.load(out / EXPORT_BUNDLE_FILE).gate["split"] == "train"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--plan", "missing.json"], "missing.json"),
        (["--max-ndcg-loss", "0.5"], "--max-ndcg-loss needs -d"),
        (["-d", "nowhere"], "nowhere"),
        (["--split", "test", "-d", str(demo_path())], "test split"),
    ],
)
def test_bad_input_gives_one_message_and_exit_2(
    tiny_model_path, tmp_path, capsys, monkeypatch, extra, message
) -> None:
    monkeypatch.chdir(tmp_path)
    model = str(tiny_model_path("bert", "cross-encoder"))
    status = main(["export", "-m", model, "-o", str(tmp_path / "out"), *extra, "-q"])
    error = capsys.readouterr().err
    assert status == 2
    assert message in error and error.count("\n") == 1 and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_a_plan_naming_an_unknown_module(tiny_model_path, tmp_path, capsys) -> None:
    model = str(tiny_model_path("bert", "cross-encoder"))
    plan = _plan(tmp_path, [["bert.encoder.layer.7.output.dense", "int4"]])
    status = main(["export", "-m", model, "--plan", plan, "-o", str(tmp_path / "out"), "-q"])
    error = capsys.readouterr().err
    assert status == 2
    assert "unknown module 'bert.encoder.layer.7.output.dense'" in error
    assert not (tmp_path / "out").exists()


def test_a_negative_allowance_is_refused(tiny_model_path, tmp_path, capsys) -> None:
    model = str(tiny_model_path("bert", "cross-encoder"))
    with pytest.raises(SystemExit) as raised:
        main(["export", "-m", model, "-o", str(tmp_path / "out"), "--max-ndcg-loss", "-1"])
    assert raised.value.code == 2
    assert "--max-ndcg-loss" in capsys.readouterr().err


def test_a_failed_gate_exits_3_and_writes_nothing(
    tiny_model_path, tmp_path, capsys, monkeypatch
) -> None:
    import relcomp.pipeline

    real_gate = relcomp.pipeline.quality_gate
    monkeypatch.setattr(
        relcomp.pipeline,
        "quality_gate",
        lambda reference, candidate, data_dir, **options: real_gate(
            _Oracle("train"), candidate, data_dir, **options
        ),
    )
    model = str(tiny_model_path("bert", "cross-encoder"))
    out = tmp_path / "out"
    argv = ["export", "-m", model, "-o", str(out), "-d", str(demo_path()), "--max-ndcg-loss", "0.5"]
    with pytest.raises(SystemExit) as raised:
        main([*argv, "--queries", "6", "--depth", "10", "--parity-queries", "3", "-q"])
    assert raised.value.code == 3
    error = capsys.readouterr().err
    assert "quality gate failed: nDCG@10 lost" in error and "at most 0.5 allowed" in error
    assert "no bundle written" in error
    assert not out.exists()
