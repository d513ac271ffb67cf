"""The README cannot rot: its Python quickstart and every ``relcomp`` command it shows run here.

The README names the embedded all-MiniLM-L6-v2, the shipped demo collection and the
project's real assets; these tests run the same code and commands on the session's
tiny models (and, for the commands, a toy BEIR folder), substituting paths only, so
they take seconds rather than the real models' minutes.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

import relcomp.data
import relcomp.models
from relcomp import pipeline
from relcomp.cli import main
from tests.fixtures import DOCUMENTS, QUERIES

README = Path(__file__).resolve().parents[1] / "README.md"
#: The issue's bound on the README: what relcomp is, how to start, and links.
MOST_BYTES = 15_000

#: What the README's commands name, and what the tests run in its place.
REAL_MODEL = "../shared/assets/models/minilm-l6-reranker"
REAL_DATA = "../shared/assets/beir/scifact"


def code_blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def readme_commands() -> list[str]:
    """Every ``relcomp …`` command of the README's shell blocks, continuation lines joined."""
    commands = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("relcomp "):
                commands.append(" ".join(line.split()))
    return commands


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


def test_the_readme_is_short_and_keeps_its_commands_few() -> None:
    assert len(README.read_bytes()) <= MOST_BYTES
    commands = readme_commands()
    assert 1 <= len(commands) <= 5
    assert "relcomp demo" in commands


def test_the_python_quickstart_runs(
    tiny_model_path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    [quickstart] = [block for block in code_blocks("python") if "load_model(" in block]
    assert '"all-MiniLM-L6-v2"' in quickstart
    assert len(quickstart.strip().splitlines()) <= 20
    model = tiny_model_path("minilm", "bi-encoder")
    code = quickstart.replace('"all-MiniLM-L6-v2"', repr(str(model)))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme_quickstart"})
    printed = capsys.readouterr().out
    assert printed.count("'nDCG@10'") == 2  # the plan simulated in torch, then the bundle
    bundle = tmp_path / "runs" / "minilm-6bit"
    assert any((bundle / "onnx").glob("model_*.onnx"))


def test_every_readme_command_runs_on_the_tiny_models(
    tiny_model_path, toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # demo: the embedded retriever and the shipped collection, replaced by tiny ones
    # wherever the flow reads them; a random tiny model has no quality to keep, so no
    # gate may stop it
    retriever = str(tiny_model_path("minilm", "bi-encoder"))
    for module in (relcomp.models, relcomp.data, pipeline):
        for name, value in (
            ("DEFAULT_RETRIEVER", retriever),
            ("demo_path", lambda: toy),
            ("DEMO_MAX_NDCG_LOSS", 100.0),
        ):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, value)
    paths = {REAL_MODEL: str(tiny_model_path("bert")), REAL_DATA: str(toy)}
    monkeypatch.chdir(tmp_path)
    ran = []
    for command in readme_commands():
        args = [paths.get(word, word) for word in shlex.split(command)[1:]]
        if args[0] == "compress":
            args += ["--max-ndcg-loss", "100", "--calibration", "3", "--explanations", "1"]
        status = main(["-q", *args])
        output = capsys.readouterr().out
        assert status == 0, f"{command}\n{output}"
        ran.append(args[0])
    assert (tmp_path / "relcomp-demo" / "report.html").is_file()
    assert "compress" in ran and (tmp_path / "runs" / "reranker-small" / "plan.json").is_file()
