"""The supervised term of recovery (``label_weight``): judged-relevant candidates are
marked from the train/dev qrels and the pseudo-queries' source documents (never test),
the term teaches a student to put its mass on them, it is refused where there is
nothing to learn, and it is part of a checkpoint's and a log's identity."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from relcomp import pipeline
from relcomp.artifacts import RecoveryLog
from relcomp.compress_flow import CompressOptions
from relcomp.errors import RelcompError
from relcomp.evaluation import load_beir, resolve_protocol
from relcomp.recovery import RecoveryData, recovery_data
from relcomp.recovery.losses import positive_nll
from tests.recovery.test_recovery import (
    assert_weight_in_checkpoint_identity,
    pruned_student,
    run,
)


def test_positive_nll_is_minus_the_log_of_the_mass_on_the_positives() -> None:
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]])
    positives = torch.tensor([[True, True, False], [False, False, True], [False, False, False]])
    probability = torch.softmax(scores / 0.5, dim=-1)
    expected = -(math.log(probability[0, :2].sum()) + math.log(probability[1, 2])) / 2
    assert float(positive_nll(scores, positives, temperature=0.5)) == pytest.approx(expected)
    # a masked candidate is neither a positive nor in the softmax
    mask = torch.tensor([[True, True, False], [True, True, True], [True, True, True]])
    masked = torch.softmax(torch.tensor([2.0, 1.0]), dim=-1)
    first_row_only = positive_nll(scores[:1], positives[:1] | ~mask[:1], mask[:1])
    assert float(first_row_only) == pytest.approx(-math.log(masked.sum()), abs=1e-6)
    # no positive anywhere: nothing to learn, but a gradient path all the same
    leaf = scores.clone().requires_grad_(True)
    nothing = positive_nll(leaf, torch.zeros_like(positives))
    nothing.backward()
    assert nothing.item() == 0.0 and leaf.grad is not None


@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
def test_positives_are_the_train_qrels_and_the_pseudo_queries_sources(
    tiny_model: Any, collection: Path, kind: str
) -> None:
    teacher = tiny_model("minilm", kind)
    data = recovery_data(teacher, collection, candidates=4, pseudo=4)
    train = load_beir(collection, "train")
    test = load_beir(collection, "test")
    text_of = {doc_id: train.document_text(doc_id) for doc_id in train.sorted_doc_ids}
    judged = {  # query text → texts of the documents judged relevant in train
        train.query_text(q): {text_of[d] for d, grade in train.qrels[q].items() if grade > 0}
        for q in train.split_queries
    }
    pseudo = [json.loads(line) for line in (collection / "corpus.jsonl").read_text().splitlines()]
    assert data.positives is not None and data.labelled_groups > 0
    for query, documents, source, marks in zip(
        data.queries, data.documents, data.sources, data.positives, strict=True
    ):
        assert source != "test" and query not in {test.query_text(q) for q in test.split_queries}
        marked = {d for d, mark in zip(documents, marks, strict=True) if mark}
        if source == "train":
            assert marked == judged[query] & set(documents), query
        else:  # a pseudo-query: its source document, which is always among its candidates
            assert len(marked) == 1, query
            (document,) = marked
            assert any(document == text_of[d["_id"]] for d in pseudo)


@torch.no_grad()
def mass_on_positives(student: Any, data: RecoveryData) -> float:
    """positive_nll of the student's scores on every labelled group, measured outside
    the training loop (a bi-encoder: over each group's own candidates)."""
    assert data.positives is not None
    student.model.eval()
    values = []
    for query, documents, marks in zip(data.queries, data.documents, data.positives, strict=True):
        if not any(marks):
            continue
        if student.kind == "bi-encoder":
            q = student.embed(student.tokenize([query]))
            scores = q @ student.embed(student.tokenize(list(documents))).T / 0.05
        else:
            scores = student.forward_scores(
                student.tokenize([query] * len(documents), list(documents))
            ).reshape(1, -1)
        values.append(float(positive_nll(scores.float(), torch.tensor([marks]))))
    return float(np.mean(values))


@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
def test_the_label_term_teaches_the_student_its_positives(
    tiny_model: Any, collection: Path, kind: str
) -> None:
    teacher = tiny_model("minilm", kind)
    data = recovery_data(teacher, collection, candidates=4, pseudo=4)
    untrained = mass_on_positives(pruned_student(teacher), data)
    measured, logs = {}, {}
    for weight in (0.0, 1.0):
        # 64 tokens (the tiny tokenizer's most): at 32 a pair's document is cut away
        student, logs[weight] = run(
            pruned_student(teacher), teacher, data, steps=60, max_length=64, label_weight=weight
        )
        measured[weight] = mass_on_positives(student, data)
    # a random tiny teacher knows nothing of the positives: only the term can teach them
    assert measured[1.0] < 0.8 * measured[0.0] and measured[1.0] < untrained, (
        untrained,
        measured,
    )
    assert (logs[0.0].label_weight, logs[1.0].label_weight) == (0.0, 1.0)
    assert "heldout_label_nll" not in logs[0.0].checkpoints[-1]
    assert all("heldout_label_nll" in c for c in logs[1.0].checkpoints), logs[1.0].checkpoints
    # heldout_loss stays the distillation loss alone, so runs of any label weight compare
    for log in logs.values():
        assert log.checkpoints[0]["heldout_loss"] == logs[0.0].checkpoints[0]["heldout_loss"]


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf"), True])
def test_a_bad_label_weight_is_refused_before_any_work(
    collection: Path, weight: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(pipeline, "load_scorer", refuse)
    output = collection.parent / "out"
    with pytest.raises(RelcompError, match="label weight must be a finite number ≥ 0"):
        pipeline.recover("s", "t", collection, output, steps=2, label_weight=weight)
    with pytest.raises(RelcompError, match="label weight"):
        CompressOptions("m", collection, ({"params_removed": 0.3},), "o",
                        protocol=resolve_protocol("quick"), recover=2,
                        recovery_label_weight=weight)  # fmt: skip
    assert not output.exists()


def test_a_label_weight_with_no_judged_candidate_is_refused_before_training(
    tiny_model: Any, collection: Path, tmp_path: Path
) -> None:
    teacher = tiny_model("minilm")
    data = recovery_data(teacher, collection, candidates=3, pseudo=2)
    assert data.positives is not None
    nothing_judged = tuple(tuple(False for _ in group) for group in data.positives)
    for unlabelled in (
        dataclasses.replace(data, positives=None),
        dataclasses.replace(data, positives=nothing_judged),
    ):
        folder = tmp_path / "checkpoints"
        with pytest.raises(RelcompError, match="no recovery group has one"):
            run(pruned_student(teacher), teacher, unlabelled, label_weight=1.0,
                checkpoint_dir=folder)  # fmt: skip
        assert not folder.exists()
        run(pruned_student(teacher), teacher, unlabelled, steps=2)  # distillation alone is fine


def test_the_label_weight_is_part_of_a_checkpoints_identity_only_when_not_0(
    tiny_model: Any, collection: Path, tmp_path: Path
) -> None:
    teacher = tiny_model("minilm", "bi-encoder")
    data = recovery_data(teacher, collection, candidates=3, pseudo=3)
    assert_weight_in_checkpoint_identity(teacher, data, tmp_path, "label_weight", 0.5, 0.0)


def test_a_version_3_recovery_log_reads_with_a_label_weight_of_0() -> None:
    log = RecoveryLog(student="s", teacher="t", loss="embedding", steps=2, batch_size=4,
                      lr=5e-5, max_length=128, seed=13, device="cpu", pairs_seen=64,
                      seconds=1.5, losses=[0.3, 0.2], label_weight=0.5)  # fmt: skip
    assert RecoveryLog.from_json(log.to_json()) == log
    old = log.to_dict()
    old["version"] = 3
    del old["label_weight"]
    assert RecoveryLog.from_dict(old).label_weight == 0.0
