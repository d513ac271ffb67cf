"""The bi-encoder loss's similarity weight: it scales the in-batch KL alone, makes a
student rank its held-out candidates more like the teacher, is refused where it does not
belong (before any work), and is part of a checkpoint's and a log's identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import relcomp.recovery
from relcomp import pipeline
from relcomp.artifacts import RecoveryLog
from relcomp.compress_flow import CompressOptions
from relcomp.errors import RelcompError
from relcomp.evaluation import resolve_protocol
from relcomp.recovery import RecoveryData, recovery_data
from relcomp.recovery.losses import embedding_loss, listwise_kl
from tests.recovery.test_recovery import (
    assert_weight_in_checkpoint_identity,
    pruned_student,
    run,
)


def test_the_weight_scales_the_similarity_kl_and_nothing_else() -> None:
    generator = torch.Generator().manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(  # noqa: E731
        torch.randn(*shape, generator=generator), dim=-1
    )
    sq, sd, tq, td = unit(3, 8), unit(9, 8), unit(3, 8), unit(9, 8)
    distance = float(embedding_loss(sq, sd, tq, td, similarity_weight=0.0))
    kl = float(listwise_kl(sq @ sd.T, tq @ td.T, temperature=0.05))
    assert kl > 0 and distance > 0
    for weight in (1.0, 400.0):
        value = float(embedding_loss(sq, sd, tq, td, similarity_weight=weight))
        assert value == pytest.approx(distance + weight * kl, rel=1e-5)


@torch.no_grad()
def heldout_similarity_kl(student: Any, held: RecoveryData) -> float:
    """The unscaled KL between the teacher's and the student's in-batch similarity
    distributions on the held-out groups, measured outside the training loop."""
    rows = list(range(len(held)))
    student.model.eval()
    queries = student.embed(student.tokenize([held.queries[r] for r in rows]))
    documents = student.embed(student.tokenize([d for r in rows for d in held.documents[r]]))
    assert held.teacher_query_embeddings is not None
    assert held.teacher_document_embeddings is not None
    teacher_queries = torch.as_tensor(held.teacher_query_embeddings[rows])
    teacher_documents = torch.as_tensor(
        np.concatenate([held.teacher_document_embeddings[r] for r in rows])
    )
    return float(
        listwise_kl(queries @ documents.T, teacher_queries @ teacher_documents.T, temperature=0.05)
        / 0.05**2
    )


def test_a_heavier_similarity_weight_ranks_held_out_candidates_more_like_the_teacher(
    tiny_model: Any, collection: Path
) -> None:
    teacher = tiny_model("minilm", "bi-encoder")
    data = recovery_data(teacher, collection, candidates=3, pseudo=4)
    _, held = data.split(2, 13)  # the groups run() holds out
    untrained = heldout_similarity_kl(pruned_student(teacher), held)
    kls, logs = {}, {}
    for weight in (1.0, 400.0):
        student, logs[weight] = run(
            pruned_student(teacher), teacher, data, steps=20, similarity_weight=weight
        )
        kls[weight] = heldout_similarity_kl(student, held)
    assert kls[400.0] < 0.8 * kls[1.0] and kls[400.0] < untrained, (untrained, kls)
    assert (logs[1.0].similarity_weight, logs[400.0].similarity_weight) == (1.0, 400.0)


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf"), True])
def test_a_bad_similarity_weight_is_refused_before_any_work(
    collection: Path, weight: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(pipeline, "load_scorer", refuse)
    with pytest.raises(RelcompError, match="similarity weight must be a finite number ≥ 0"):
        pipeline.recover("s", "t", collection, collection.parent / "out", steps=2,
                         similarity_weight=weight)  # fmt: skip
    with pytest.raises(RelcompError, match="similarity weight"):
        CompressOptions("m", collection, ({"params_removed": 0.3},), "o",
                        protocol=resolve_protocol("quick"), recover=2,
                        recovery_similarity_weight=weight)  # fmt: skip
    assert not (collection.parent / "out").exists()


def test_a_cross_encoder_refuses_a_similarity_weight_before_the_teacher_scores(
    tiny_model: Any, tiny_model_path: Any, collection: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = tiny_model("minilm")
    data = recovery_data(teacher, collection, candidates=3, pseudo=2)
    with pytest.raises(RelcompError, match="a cross-encoder takes none"):
        run(pruned_student(teacher), teacher, data, similarity_weight=400.0)

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("recovery data was made before the settings were checked")

    monkeypatch.setattr(relcomp.recovery, "recovery_data", never)
    path = str(tiny_model_path("minilm"))
    output = collection.parent / "out"
    with pytest.raises(RelcompError, match="a cross-encoder takes none"):
        pipeline.recover(path, path, collection, output, steps=2, similarity_weight=400.0)
    assert not output.exists()


def test_the_weight_is_part_of_a_checkpoints_identity_only_when_not_the_default(
    tiny_model: Any, collection: Path, tmp_path: Path
) -> None:
    teacher = tiny_model("minilm", "bi-encoder")
    data = recovery_data(teacher, collection, candidates=3, pseudo=3)
    assert_weight_in_checkpoint_identity(teacher, data, tmp_path, "similarity_weight", 50.0, 1.0)


def test_a_version_2_recovery_log_reads_with_a_similarity_weight_of_1() -> None:
    log = RecoveryLog(student="s", teacher="t", loss="embedding", steps=2, batch_size=4,
                      lr=5e-5, max_length=128, seed=13, device="cpu", pairs_seen=64,
                      seconds=1.5, losses=[0.3, 0.2], similarity_weight=400.0)  # fmt: skip
    assert log.to_dict()["version"] == RecoveryLog.VERSION
    assert RecoveryLog.from_json(log.to_json()) == log
    old = log.to_dict()
    old["version"] = 2
    del old["similarity_weight"]
    read = RecoveryLog.from_dict(old)
    assert (read.similarity_weight, read.losses) == (1.0, (0.3, 0.2))
    with pytest.raises(Exception, match=f"version {RecoveryLog.VERSION + 1} is not supported"):
        RecoveryLog.from_dict({**old, "version": RecoveryLog.VERSION + 1})
