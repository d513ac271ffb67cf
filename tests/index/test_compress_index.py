"""``compress --index``: the bundle's corpus index as a resumable step of the flow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relcomp import pipeline
from relcomp.artifacts import INDEX_QUALITY_FILE, INDEX_SETTINGS_FILE, IndexSettings
from relcomp.cli import main
from relcomp.errors import IndexSettingsError
from relcomp.reports import compression_report

INDEX = {"index": "binary", "index_dims": 16, "index_rescore": 2}


def _compress(model: Path, data: Path, out: Path, **options: Any) -> pipeline.CompressResult:
    settings: dict[str, Any] = {
        "max_ndcg_loss": None,
        "calibration": 3,
        "explanations": 0,
        "threads": 1,
        "show_progress_bar": False,
        **options,
    }
    return pipeline.compress(model, data, "bits_per_weight=8", out, **settings)


def test_compress_builds_the_bundles_index_and_measures_it_against_the_float_index(
    tiny_model_path, index_beir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    _compress(tiny_model_path("bert", "bi-encoder"), index_beir, out, **INDEX)

    settings = IndexSettings.load(out / INDEX_SETTINGS_FILE)
    assert (settings.precision, settings.kept, settings.rescore) == ("binary", 16, 2)
    assert settings.selection == "relevance"
    assert settings.calibration["split"] == "dev"  # relevance never reads the reported split
    quality = json.loads((out / INDEX_QUALITY_FILE).read_text())
    assert quality["split"] == "test" and quality["n_queries"] == 3  # the evaluation's queries
    assert quality["bytes_per_document"] == {"index": 2.0, "rescore": 16.0, "float32": 128.0}
    assert set(quality["measures"]) == {"float32", "index"}
    manifest = json.loads((out / "run.json").read_text())
    assert set(manifest["steps"]["index"]["files"]) == {INDEX_QUALITY_FILE, INDEX_SETTINGS_FILE}
    assert not list(out.glob(".*.partial"))

    page = compression_report(out)
    index = page[page.index('id="index"') : page.index('id="provenance"')]
    assert "16 of 32 (relevance)" in index and "2 + 16 to rescore against 128" in index

    # the run folder is a bundle carrying its index: evaluate retrieves through it
    report = pipeline.evaluate(out, index_beir, show_progress_bar=False)
    assert report.settings["index"] == str(out / INDEX_SETTINGS_FILE)

    # run again with the same settings: the index is not built again
    import relcomp.index

    def no_build(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("index built again")

    monkeypatch.setattr(relcomp.index, "build_index", no_build)
    _compress(tiny_model_path("bert", "bi-encoder"), index_beir, out, **INDEX)
    monkeypatch.undo()

    # without --index the earlier index goes: the bundle no longer claims one
    _compress(tiny_model_path("bert", "bi-encoder"), index_beir, out)
    assert not (out / INDEX_SETTINGS_FILE).exists() and not (out / INDEX_QUALITY_FILE).exists()
    assert "index" not in json.loads((out / "run.json").read_text())["steps"]


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("cross-encoder", {"index": "int8"}, "only a bi-encoder"),
        ("bi-encoder", {"index": "int8", "index_dims": 33}, "dims must be between 1 and 32"),
        ("bi-encoder", {"index": "int8", "index_dims": 0}, "--index-dims must be between 1"),
        ("bi-encoder", {"index": "binary", "index_rescore": 0}, "rescore must be a whole number"),
        ("bi-encoder", {"index_dims": 8}, "give --index PRECISION too"),
    ],
)
def test_bad_index_settings_fail_before_the_run_folder_is_made(
    tiny_model_path, index_beir: Path, tmp_path: Path, kind: str, options: dict, message: str
) -> None:
    out = tmp_path / "run"
    with pytest.raises(IndexSettingsError, match=message):
        _compress(tiny_model_path("bert", kind), index_beir, out, **options)
    assert not out.exists()


def test_compress_index_on_the_command_line(
    tiny_model_path, index_beir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    status = main(
        [
            "compress",
            "-m",
            str(tiny_model_path("bert", "bi-encoder")),
            "-d",
            str(index_beir),
            "--budget",
            "8bits",
            "--no-gate",
            "--calibration",
            "3",
            "--explanations",
            "0",
            "--index",
            "int8",
            "--index-rescore",
            "4",
            "-o",
            str(out),
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert "index: int8, 32 dims, rescore x4: 32 bytes per document (float32: 128)" in printed
    assert IndexSettings.load(out / INDEX_SETTINGS_FILE).rescore_with == "float32"
