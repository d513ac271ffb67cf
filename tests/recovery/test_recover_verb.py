"""``relcomp recover``: a model folder with its log, or one clear error and nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from relcomp.artifacts import CompressionPlan, RecoveryLog
from relcomp.cli import main
from relcomp.models import load_model
from tests.fixtures import DOCUMENTS, QUERIES
from tests.recovery.test_recovery import write_collection


def test_recover_prunes_trains_and_writes_a_model_folder(
    tiny_model_path: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = tiny_model_path("minilm")
    collection = write_collection(tmp_path / "collection")
    plan = tmp_path / "plan.json"
    CompressionPlan("tiny", {"_default": "prune_neurons(ratio=0.5)"}).save(plan)
    output = tmp_path / "recovered"
    status = main(["-q", "recover", "-m", str(teacher), "--teacher", str(teacher), "-d",
                   str(collection), "--plan", str(plan), "--steps", "4", "--batch-size", "2",
                   "--max-length", "32", "--candidates", "3", "--candidate-depth", "6", "--pseudo", "4",
                   "--gate-queries", "2", "--checkpoint-every", "2", "-o", str(output)])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    log = RecoveryLog.load(output / "recovery_log.json")
    assert [c["step"] for c in log.checkpoints] == [0, 2, 4]
    assert "gate_nDCG@10" in log.checkpoints[-1] and log.data["gate_queries"] == 2
    assert log.data["split_queries"] == 6  # 8 train queries, 2 kept for the gate
    assert log.data["candidate_depth"] == 6
    model = load_model(output)
    assert (
        model.model.config.intermediate_size
        == load_model(teacher).model.config.intermediate_size // 2
    )
    assert np.isfinite(model.score(list(QUERIES[:2]), list(DOCUMENTS[:2]))).all()
    assert not (tmp_path / ".recovered.recovery").exists()  # the checkpoint goes once saved


def test_recover_refuses_a_teacher_of_another_family_and_leaves_nothing(
    tiny_model_path: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    collection = write_collection(tmp_path / "collection")
    output = tmp_path / "recovered"
    status = main(["-q", "recover", "-m", str(tiny_model_path("minilm")), "--teacher",
                   str(tiny_model_path("roberta")), "-d", str(collection), "--steps", "2",
                   "--candidates", "3", "--pseudo", "2", "-o", str(output)])  # fmt: skip
    assert status == 2
    assert "architecture" in capsys.readouterr().err
    assert not output.exists() and not (tmp_path / ".recovered.recovery").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--steps", "0"], "at least 1"),
        (["--steps", "2", "--lr", "-1"], "learning rate"),
        (["--steps", "2", "--loss", "nope"], "invalid choice"),
        (["--steps", "2", "--hidden-weight", "-1"], "hidden weight must be a finite number"),
        (["--steps", "2", "--quantize", "6bits"], "one precision"),
        (["--steps", "2", "--candidates", "3", "--candidate-depth", "2"], "must be at least"),
        (["--steps", "2", "--quantize", "int8(activations=True)"], "dynamic int8 only"),
    ],
)
def test_recover_bad_arguments_exit_2(
    tiny_model_path: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    model = str(tiny_model_path("minilm"))
    collection = write_collection(tmp_path / "collection")
    output = tmp_path / "out"
    try:
        status = main(["-q", "recover", "-m", model, "--teacher", model, "-d", str(collection),
                       *arguments, "-o", str(output)])  # fmt: skip
    except SystemExit as stop:  # argparse's own checks exit from parse_args
        status = stop.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_a_collection_with_no_queries_and_no_corpus_text_is_refused(
    tiny_model_path: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "empty-text"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": "x."}) + "\n" for i in range(4))
    )
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "x"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    model = str(tiny_model_path("minilm"))
    status = main(["-q", "recover", "-m", model, "--teacher", model, "-d", str(folder),
                   "--steps", "2", "-o", str(tmp_path / "out")])  # fmt: skip
    assert status == 2
    assert "nothing to recover on" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
