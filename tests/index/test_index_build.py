"""The index stage end to end on a tiny bi-encoder, ``relcomp evaluate --index``, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from relcomp.cli import main
from relcomp.index import build_index, load_index
from relcomp.pipeline import evaluate


def test_build_writes_index_json_and_quality(
    tiny_model_path, index_beir: Path, tmp_path: Path
) -> None:
    model = tiny_model_path("bert", "bi-encoder")
    out = tmp_path / "out"
    result = build_index(
        str(model),
        index_beir,
        precision="binary",
        dims=16,
        dim_selection="relevance",
        rescore=2,
        output=out,
        show_progress_bar=False,
    )
    settings, projection = load_index(out)
    assert settings == result.settings and projection is None
    assert settings.kept == 16 and settings.selection == "relevance" and settings.rescore == 2
    assert settings.rescore_with == "int8" and len(settings.ranges) == 16
    assert settings.calibration["split"] == "dev" and settings.calibration["queries"] == 3
    quality = json.loads((out / "index_quality.json").read_text())
    assert quality["bytes_per_document"] == {"index": 2.0, "rescore": 16.0, "float32": 128.0}
    assert quality["bytes_total"]["index"] == 8 * 2
    assert quality["n_queries"] == 3 and set(quality["measures"]["index"]) == {"nDCG@10", "R@100"}
    assert quality["compression"]["index"] == 64.0


def test_a_float_index_is_dense_retrieval_and_evaluate_honours_it(
    tiny_model_path, index_beir: Path, tmp_path: Path
) -> None:
    model = tiny_model_path("bert", "bi-encoder")
    full = build_index(str(model), index_beir, output=tmp_path / "full", show_progress_bar=False)
    assert full.quality["measures"]["index"] == full.quality["measures"]["float32"]
    plain = evaluate(str(model), index_beir, depth=8, measures=["nDCG@10"])
    through = evaluate(
        str(model),
        index_beir,
        depth=8,
        measures=["nDCG@10"],
        index=tmp_path / "full" / "index.json",
    )
    assert through.per_query == plain.per_query
    assert through.settings["index"].endswith("index.json") and "index" not in plain.settings
    # A compressed index changes the ranking evaluate sees.
    build_index(
        str(model),
        index_beir,
        precision="binary",
        dims=4,
        dim_selection="first",
        output=tmp_path / "tiny",
        show_progress_bar=False,
    )
    small = evaluate(str(model), index_beir, depth=8, measures=["nDCG@10"], index=tmp_path / "tiny")
    assert small.per_query != plain.per_query


def test_a_model_folder_holding_an_index_json_is_evaluated_through_it(
    tiny_model_path, index_beir: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_model_path("bert", "bi-encoder"), bundle)
    plain = evaluate(str(bundle), index_beir, depth=8, measures=["nDCG@10"])
    build_index(
        str(bundle),
        index_beir,
        precision="binary",
        dims=4,
        dim_selection="first",
        output=bundle,
        show_progress_bar=False,
    )
    assert (bundle / "index.json").is_file()
    report = evaluate(str(bundle), index_beir, depth=8, measures=["nDCG@10"])
    assert report.settings["index"] == str(bundle / "index.json")
    assert report.per_query != plain.per_query


def test_pca_and_reused_calibration(tiny_model_path, index_beir: Path, tmp_path: Path) -> None:
    model = tiny_model_path("bert", "bi-encoder")
    first = build_index(
        str(model),
        index_beir,
        precision="float32",
        dims=8,
        dim_selection="pca",
        output=tmp_path / "pca",
        show_progress_bar=False,
    )
    assert (tmp_path / "pca" / "index_projection.npy").is_file()
    again = build_index(
        str(model),
        index_beir,
        precision="int8",
        calibration=tmp_path / "pca",
        output=tmp_path / "int8",
        show_progress_bar=False,
    )
    assert again.settings.dims == first.settings.dims and again.settings.selection == "pca"
    assert len(again.settings.ranges) == 8
    np.testing.assert_array_equal(load_index(tmp_path / "int8")[1], load_index(tmp_path / "pca")[1])


@pytest.fixture
def no_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be refused before the corpus is encoded."""

    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was encoded before the input was checked")

    monkeypatch.setattr("relcomp.index.build.normalised_corpus", refuse)


@pytest.mark.parametrize(
    ("kind", "extra", "message"),
    [
        ("cross-encoder", [], "only a bi-encoder"),
        ("bi-encoder", ["--dims", "0"], "dims must be between 1 and 32"),
        ("bi-encoder", ["--dims", "33"], "dims must be between 1 and 32"),
        (
            "bi-encoder",
            ["--precision", "binary", "--rescore", "0"],
            "rescore must be a whole number of at least 1",
        ),
        (
            "bi-encoder",
            ["--dims", "8", "--calibration-split", "test"],
            "calibrating on the 'test' split",
        ),
        ("bi-encoder", ["--precision", "int4"], "unknown index precision 'int4'"),
    ],
)
def test_bad_input_one_message_exit_2_nothing_written(
    tiny_model_path, index_beir: Path, tmp_path: Path, capsys, no_encoding, kind, extra, message
) -> None:
    out = tmp_path / "out"
    args = [
        "index",
        "-m",
        str(tiny_model_path("bert", kind)),
        "-d",
        str(index_beir),
        "-o",
        str(out),
    ]
    assert main([*args, *extra]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("error:") == 1 and "Traceback" not in error
    assert not out.exists()


def test_calibration_from_another_model_is_refused(
    tiny_model_path, index_beir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    other = tiny_model_path("bert", "bi-encoder", seed=1)
    build_index(
        str(other),
        index_beir,
        dims=8,
        dim_selection="first",
        output=tmp_path / "other",
        show_progress_bar=False,
    )

    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was encoded before the input was checked")

    monkeypatch.setattr("relcomp.index.build.normalised_corpus", refuse)
    model = tiny_model_path("bert", "bi-encoder")
    out = tmp_path / "out"
    args = [
        "index",
        "-m",
        str(model),
        "-d",
        str(index_beir),
        "--precision",
        "int8",
        "--calibration",
        str(tmp_path / "other" / "index.json"),
        "-o",
        str(out),
    ]
    assert main(args) == 2
    assert "was calibrated for model" in capsys.readouterr().err
    assert not out.exists()
    # evaluate refuses it too.
    args = ["evaluate", "-m", str(model), "-d", str(index_beir), "--index", str(tmp_path / "other")]
    assert main(args) == 2
    assert "was calibrated for model" in capsys.readouterr().err


def test_cli_index_then_evaluate(tiny_model_path, index_beir: Path, tmp_path: Path, capsys) -> None:
    model = tiny_model_path("bert", "bi-encoder")
    out = tmp_path / "out"
    args = [
        "index",
        "-m",
        str(model),
        "-d",
        str(index_beir),
        "--precision",
        "int8",
        "--dims",
        "16",
        "--dim-selection",
        "variance",
        "--rescore",
        "3",
        "-o",
        str(out),
        "-q",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "int8 index, 16 of 32 dims (variance), rescore x3 with float32" in printed
    assert {p.name for p in out.iterdir()} == {"index.json", "index_quality.json"}
    assert (
        main(
            [
                "evaluate",
                "-m",
                str(model),
                "-d",
                str(index_beir),
                "--index",
                str(out / "index.json"),
                "-q",
            ]
        )
        == 0
    )
    assert "nDCG@10" in capsys.readouterr().out


def test_an_onnx_bundle_carries_its_index(tiny_model, index_beir: Path, tmp_path: Path) -> None:
    from relcomp.export import export_bundle

    bundle = tmp_path / "bundle"
    export_bundle(tiny_model("bert", "bi-encoder"), bundle)
    plain = evaluate(str(bundle), index_beir, depth=8, measures=["nDCG@10"])
    result = build_index(
        str(bundle),
        index_beir,
        precision="binary",
        dims=4,
        dim_selection="first",
        output=bundle,
        show_progress_bar=False,
    )
    assert result.settings.model_identity.startswith("bi-encoder-")
    report = evaluate(str(bundle), index_beir, depth=8, measures=["nDCG@10"])
    assert report.settings["index"] == str(bundle / "index.json")
    assert report.per_query != plain.per_query
