"""``relcomp report OUT_DIR`` and ``relcomp explain -o OUT``: round trips and one clear error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relcomp.cli import main
from tests.fixtures import DOCUMENTS, QUERIES
from tests.reports.synthetic import SECTION_TITLES


def test_report_rebuilds_the_page_from_the_run_folder(run_folder: Path, capsys) -> None:
    assert main(["report", str(run_folder), "-q"]) == 0
    page = (run_folder / "report.html").read_text(encoding="utf-8")
    assert re.findall(r"<h2>(.*?)</h2>", page) == list(SECTION_TITLES)
    assert f"wrote {run_folder / 'report.html'}" in capsys.readouterr().out
    assert (run_folder / "figures" / "component_relevance.png").is_file()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "plan.json").unlink(), "plan.json: missing"),
        (lambda f: (f / "quality.json").write_text("{oops"), "quality.json:1: invalid JSON"),
    ],
)
def test_report_on_a_bad_folder_names_the_file_and_exits_2(
    run_folder: Path, capsys, damage, message: str
) -> None:
    damage(run_folder)
    assert main(["report", str(run_folder)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("relcomp report: error:") and message in error
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert not (run_folder / "report.html").exists()


def test_report_on_a_missing_folder_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_explain_writes_an_html_page_beside_the_json(
    tiny_model_path, tmp_path: Path, capsys
) -> None:
    model = tiny_model_path("bert", "cross-encoder")
    args = ["explain", "-m", str(model), "-q", QUERIES[0], "-p", DOCUMENTS[0], "-o", str(tmp_path)]
    assert main([*args, "--quiet"]) == 0
    page = (tmp_path / "explanation.html").read_text(encoding="utf-8")
    assert "How to read this report" in page and "Pair 1: how many people live in berlin?" in page
    assert (tmp_path / "explanation.json").is_file()
    assert (tmp_path / "figures" / "explanation_tokens_1.png").is_file()
    assert f"wrote {tmp_path / 'explanation.html'}" in capsys.readouterr().out
