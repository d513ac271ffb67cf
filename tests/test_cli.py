"""The command line: round trips on tiny data, and one clear error (exit 2) on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relcomp.cli import main
from tests.fixtures import DOCUMENTS, QUERIES


@pytest.fixture
def tiny_beir(tmp_path: Path) -> Path:
    folder = tmp_path / "toy"
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"d{i}", "title": "", "text": text} for i, text in enumerate(DOCUMENTS)]
    queries = [{"_id": f"q{i}", "text": text} for i, text in enumerate(QUERIES)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries))
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(len(QUERIES))
    )
    (folder / "qrels" / "test.tsv").write_text(qrels)
    (folder / "qrels" / "dev.tsv").write_text(qrels)
    return folder


def test_evaluate_bm25_writes_quality_json(
    tiny_beir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    assert (
        main(["evaluate", "-m", "bm25", "-d", str(tiny_beir), "-o", str(tmp_path / "out"), "-q"])
        == 0
    )
    quality = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert {"model", "dataset", "split", "measures", "per_query"} <= set(quality)
    assert set(quality["measures"]) == {"nDCG@10", "RR@10", "R@100"}
    assert len(quality["per_query"]) == len(QUERIES)
    assert "nDCG@10" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
def test_evaluate_neural_model(
    tiny_model_path, tiny_beir: Path, tmp_path: Path, monkeypatch, capsys, kind: str
) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model_path("bert", kind)
    args = [
        "evaluate",
        "-m",
        str(model),
        "-d",
        str(tiny_beir),
        "--depth",
        "12",
        "-o",
        str(tmp_path / kind),
        "-q",
    ]
    assert main(args) == 0
    quality = json.loads((tmp_path / kind / "quality.json").read_text())
    assert quality["first_stage"] == ("bm25" if kind == "cross-encoder" else None)
    assert 0.0 <= quality["measures"]["nDCG@10"] <= 1.0
    # A re-ranker's report also gives the shallower depths; dense retrieval has none.
    assert set(quality["by_depth"]) == ({"10"} if kind == "cross-encoder" else set())
    assert ("re-ranked only the bm25 top-k" in capsys.readouterr().out) == (kind == "cross-encoder")


def test_explain_writes_explanation_json(tiny_model_path, tmp_path: Path, capsys) -> None:
    model = tiny_model_path("bert", "cross-encoder")
    args = [
        "explain",
        "-m",
        str(model),
        "-q",
        QUERIES[0],
        "-p",
        DOCUMENTS[0],
        "-o",
        str(tmp_path),
        "--quiet",
    ]
    assert main(args) == 0
    explanation = json.loads((tmp_path / "explanation.json").read_text())
    assert {"method", "score", "tokens", "relevance", "conservation_error"} <= set(explanation)
    assert explanation["method"] == "AttnLRP"
    assert len(explanation["tokens"]) == len(explanation["relevance"])
    assert "top passage words" in capsys.readouterr().out


def test_relevance_refuses_test_split(
    tiny_model_path, tiny_beir: Path, tmp_path: Path, capsys
) -> None:
    model = tiny_model_path("bert", "cross-encoder")
    args = [
        "relevance",
        "-m",
        str(model),
        "-d",
        str(tiny_beir),
        "--split",
        "test",
        "-o",
        str(tmp_path / "r"),
    ]
    assert main(args) == 2
    assert "test split" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_relevance_writes_component_relevance(
    tiny_model_path, tiny_beir: Path, tmp_path: Path
) -> None:
    model = tiny_model_path("bert", "cross-encoder")
    args = [
        "relevance",
        "-m",
        str(model),
        "-d",
        str(tiny_beir),
        "--calibration",
        "4",
        "-o",
        str(tmp_path),
        "-q",
    ]
    assert main(args) == 0
    payload = json.loads((tmp_path / "component_relevance.json").read_text())
    assert payload["kind"] == "component_relevance" and payload["n_pairs"] == 4
    assert {
        "head",
        "head_l1",
        "neuron",
        "neuron_l1",
        "linear",
        "linear_l1",
        "layer",
        "attention",
        "mlp",
    } == set(payload["components"])


def test_relevance_contrast_explains_the_margin_over_hard_negatives(
    tiny_model_path, tiny_beir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model_path("bert", "cross-encoder")
    args = ["relevance", "-m", str(model), "-d", str(tiny_beir), "--calibration", "4"]
    assert main([*args, "--contrast", "-o", str(tmp_path / "r"), "-q"]) == 0
    assert "margin over a hard negative" in capsys.readouterr().out
    payload = json.loads((tmp_path / "r" / "component_relevance.json").read_text())
    assert payload["source"]["contrast"] is True and payload["n_pairs"] == 4
    assert payload["source"]["negatives"].startswith("bm25")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "-m", "bm25", "-d", "nope"], "no such BEIR folder"),
        (["evaluate", "-m", "./missing-model", "-d", "{data}"], "no such model folder"),
        (["evaluate", "-m", "bm25", "-d", "{data}", "--split", "train"], "train"),
        (["evaluate", "-m", "bm25", "-d", "{data}", "--measures", "nDCG@x"], "nDCG@x"),
        (["evaluate", "-m", "bm25", "-d", "{data}", "--depth", "0"], "at least 1"),
        (["explain", "-m", "{model}", "-q", "a", "-p", "b", "--method", "nope"], "Valid names"),
    ],
)
def test_bad_input_gives_one_message_and_exit_2(
    tiny_model_path, tiny_beir: Path, tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    model = tiny_model_path("bert", "cross-encoder")
    filled = [a.format(data=tiny_beir, model=model) for a in args] + ["-o", str(tmp_path / "out")]
    if "--depth" in args:  # argparse rejects it before relcomp runs
        with pytest.raises(SystemExit) as exit_info:
            main(filled)
        assert exit_info.value.code == 2
    else:
        assert main(filled) == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_evaluate_with_a_plan(
    tiny_model_path, tiny_beir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from relcomp.artifacts import CompressionPlan

    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model_path("bert", "cross-encoder")
    plan = CompressionPlan(str(model), {"_default": "int8"}).save(tmp_path / "plan.json")
    args = ["evaluate", "-m", str(model), "-d", str(tiny_beir), "--depth", "5", "--plan", str(plan)]
    assert main([*args, "-o", str(tmp_path / "out"), "-q"]) == 0
    quality = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert quality["settings"]["plan"]["variant"].startswith("fp32|plan-")
    assert "with plan" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("method", "budget", "importance"),
    [
        ("mixed-precision", "6bits", "relevance"),
        ("prune-structured", "0.2", "magnitude"),
        # ECoFLaP's two steps: relevance sets each layer's count, Wanda picks inside
        ("prune-structured", "0.2", "relevance --within wanda -d {data} --calibration 4"),
        # R-Sparse: the thresholds come from calibration activations
        ("r-sparse", "0.4", "relevance -d {data} --calibration 4 --rank 4"),
        # W8A8, channel-wise after LayerNorms (evaluate calibrates the scales on dev)
        ("mixed-precision", "10bits", "relevance --activations"),
    ],
)
def test_relevance_then_plan_then_evaluate(
    tiny_model_path,
    tiny_beir: Path,
    tmp_path: Path,
    monkeypatch,
    method: str,
    budget: str,
    importance: str,
) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    model = str(tiny_model_path("bert", "cross-encoder"))
    relevance = [
        "relevance",
        "-m",
        model,
        "-d",
        str(tiny_beir),
        "--calibration",
        "4",
        "-o",
        str(tmp_path),
        "-q",
    ]
    assert main(relevance) == 0
    plan_file = tmp_path / "plan.json"
    args = [
        "plan",
        "-m",
        model,
        "--relevance",
        str(tmp_path / "component_relevance.json"),
        "--method",
        method,
    ]
    assert (
        main(
            [
                *args,
                "--budget",
                budget,
                "--importance",
                *importance.format(data=tiny_beir).split(),
                "-o",
                str(plan_file),
                "-q",
            ]
        )
        == 0
    )
    plan = json.loads(plan_file.read_text())
    assert plan["kind"] == "compression_plan" and plan["entries"]
    assert plan["method"].startswith(method)
    assert plan["method"].endswith("+wanda-within") == ("--within" in importance)
    if "--activations" in importance:
        assert plan["method"].endswith("+a8")
        assert any("channelwise=True" in action for _, action in plan["entries"])
    if method == "r-sparse":
        ranked = [module for module, action in plan["entries"] if action.endswith(", rank=4)")]
        assert len(ranked) == len(plan["entries"]) - 1  # all but the one-logit classifier
        assert plan["achieved"]["sparsity"] > 0.3
    evaluate = [
        "evaluate",
        "-m",
        model,
        "-d",
        str(tiny_beir),
        "--depth",
        "5",
        "--plan",
        str(plan_file),
    ]
    assert main([*evaluate, "-o", str(tmp_path / "q"), "-q"]) == 0


def test_plan_rejects_a_bad_budget(tiny_model_path, tmp_path: Path, capsys) -> None:
    model = str(tiny_model_path("bert", "cross-encoder"))
    args = [
        "plan",
        "-m",
        model,
        "--method",
        "mixed-precision",
        "--budget",
        "lots",
        "--importance",
        "uniform",
    ]
    assert main([*args, "-o", str(tmp_path / "plan.json")]) == 2
    assert "--budget 'lots'" in capsys.readouterr().err
    assert not (tmp_path / "plan.json").exists()


def test_patch_writes_patching_json(tiny_model_path, tiny_beir: Path, tmp_path: Path) -> None:
    model = str(tiny_model_path("bert", "cross-encoder"))
    args = [
        "patch",
        "-m",
        model,
        "-d",
        str(tiny_beir),
        "--pairs",
        "3",
        "--corruption",
        "query-terms",
    ]
    assert main([*args, "-o", str(tmp_path), "-q"]) == 0
    payload = json.loads((tmp_path / "patching.json").read_text())
    assert {"head", "attention", "mlp"} <= set(payload["correlations"])
    for values in payload["correlations"].values():
        assert {"atp_pearson", "relp_pearson", "n"} <= set(values)
