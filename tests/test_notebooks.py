"""The tutorials in ``notebooks/`` run from top to bottom, so they cannot rot.

Each notebook is executed by nbclient in a fresh kernel, in a temporary working
folder, with its own relcomp cache. Notebook 01 runs on the embedded default
(all-MiniLM-L6-v2 and the shipped demo collection); notebook 02 on the
minilm-l6-reranker when ``$RELCOMP_ASSETS`` (``../shared/assets``) has it, and says
in its output that it falls back to the embedded retriever when it does not (that
path is the ``slow`` test: it encodes the demo corpus twice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import assets_dir

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
RERANKER_NOTE = "Using the cross-encoder minilm-l6-reranker"
FALLBACK_NOTE = "NOTE: minilm-l6-reranker was not found"


def _execute(name: str, workdir: Path, env: dict[str, str], monkeypatch: Any) -> tuple[str, int]:
    """Run a notebook; return the text of its stream outputs and how many figures it showed."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    texts, figures = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", output
            if output.get("output_type") == "stream":
                texts.append(output["text"])
            figures += "image/png" in output.get("data", {})
    return "".join(texts), figures


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.mark.timeout(900)
def test_notebook_01_explains_a_ranking(workdir: Path, tmp_path: Path, monkeypatch) -> None:
    text, figures = _execute(
        "01_explain_a_ranking.ipynb",
        workdir,
        {"RELCOMP_CACHE_DIR": str(tmp_path / "cache")},
        monkeypatch,
    )
    assert figures == 3  # token heatmap, BiLRP interactions, deletion curves
    assert "score" in text and "conservation error" in text
    assert "↔" in text  # BiLRP's token pairs were printed


@pytest.mark.timeout(900)
def test_notebook_02_compresses_and_says_which_model(
    workdir: Path, tmp_path: Path, monkeypatch
) -> None:
    env = {
        "RELCOMP_CACHE_DIR": str(tmp_path / "cache"),
        "RELCOMP_ASSETS": str(assets_dir().resolve()),
    }
    text, figures = _execute("02_compress_a_reranker.ipynb", workdir, env, monkeypatch)
    assert figures == 2  # component relevance, the plan
    has_reranker = (assets_dir() / "models" / "minilm-l6-reranker" / "config.json").is_file()
    assert (RERANKER_NOTE if has_reranker else FALLBACK_NOTE) in text
    assert "quality gate on train" in text
    report = Path(text.split("report: ", 1)[1].split()[0])
    assert report.is_file() and report.name == "report.html"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_notebook_02_says_it_falls_back_to_the_embedded_retriever(
    workdir: Path, tmp_path: Path, monkeypatch
) -> None:
    env = {"RELCOMP_CACHE_DIR": str(tmp_path / "cache"), "RELCOMP_ASSETS": str(tmp_path / "none")}
    text, _ = _execute("02_compress_a_reranker.ipynb", workdir, env, monkeypatch)
    assert FALLBACK_NOTE in text and "all-MiniLM-L6-v2" in text
    assert "quality gate on train" in text


def test_notebooks_are_stored_without_outputs() -> None:
    """Outputs hold machine paths and figures; the tests make them, the repository does not."""
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert [p.name for p in paths] == ["01_explain_a_ranking.ipynb", "02_compress_a_reranker.ipynb"]
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name
        assert sum(cell.cell_type == "markdown" for cell in notebook.cells) >= 5, path.name
