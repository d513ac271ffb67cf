"""Hidden-state matching in recovery: it pulls the kept layers toward the teacher's, pairs a
layer-dropped student with the right teacher layers, refuses bad input first, resumes exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from relcomp import pipeline
from relcomp.artifacts import CompressionPlan, RecoveryLog
from relcomp.compress_flow import CompressOptions
from relcomp.compression import prune_physically
from relcomp.errors import RelcompError
from relcomp.evaluation import resolve_protocol
from relcomp.models import load_model, save_model
from relcomp.models.pruned import KEPT_LAYERS_KEY
from relcomp.recovery import (
    CHECKPOINT_FILE,
    LayerOutputs,
    RecoveryData,
    hidden_state_mse,
    layer_pairs,
    recovery_data,
)
from tests.fixtures import DOCUMENTS, QUERIES
from tests.recovery.test_recovery import (
    interrupted_and_resumed,
    pruned_student,
    run,
)

HELDOUT = 3


def dropped_student(teacher: Any, layers: str = "1") -> Any:
    return prune_physically(
        teacher, CompressionPlan(teacher.name, {"_default": f"drop_layers({layers})"})
    )


@torch.no_grad()
def heldout_hidden_mse(student: Any, teacher: Any, held: RecoveryData) -> float:
    """The hidden-state MSE on the held-out groups, measured outside the training loop."""
    pairs = layer_pairs(student, teacher)
    queries = [held.queries[r] for r in range(len(held)) for _ in held.documents[r]]
    documents = [d for r in range(len(held)) for d in held.documents[r]]
    student.max_length = 32
    features = student.tokenize(queries, documents)
    with LayerOutputs(student) as mine, LayerOutputs(teacher) as theirs:
        student.forward_scores(features)
        teacher.forward_scores(features)
    return float(hidden_state_mse(mine.taken(), theirs.taken(), features["attention_mask"], pairs))


def test_the_measure_is_zero_at_the_teacher_ignores_padding_and_is_scale_free() -> None:
    torch.manual_seed(0)
    teacher = [torch.randn(2, 5, 8) * 3 + 1]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert float(hidden_state_mse([teacher[0].clone()], teacher, mask, ((0, 0),))) == 0.0
    # padding may hold anything
    noisy = teacher[0].clone()
    noisy[0, 3:] += 100.0
    assert float(hidden_state_mse([noisy], teacher, mask, ((0, 0),))) == 0.0
    # the teacher's per-feature mean on every real token scores 1; scaling both changes nothing
    real = mask.bool()
    mean = teacher[0][real].mean(dim=0)
    average = mean.expand_as(teacher[0]).clone()
    assert float(hidden_state_mse([average], teacher, mask, ((0, 0),))) == pytest.approx(1.0)
    scaled = float(hidden_state_mse([average * 10], [teacher[0] * 10], mask, ((0, 0),)))
    assert scaled == pytest.approx(1.0)


def test_hidden_matching_brings_the_hidden_states_closer_than_distillation_alone(
    tiny_model: Any, collection: Path
) -> None:
    teacher = tiny_model("minilm")
    data = recovery_data(teacher, collection, candidates=4, pseudo=4)
    _, held = data.split(HELDOUT, 13)
    options: dict[str, Any] = {
        "steps": 30,
        "lr": 1e-3,
        "temperature": 0.1,
        "checkpoint_every": 10,
        "heldout": HELDOUT,
    }
    matched, log = run(pruned_student(teacher), teacher, data, hidden_weight=1.0, **options)
    plain, plain_log = run(pruned_student(teacher), teacher, data, **options)

    first, last = (
        log.checkpoints[0]["heldout_hidden_mse"],
        log.checkpoints[-1]["heldout_hidden_mse"],
    )
    assert last < 0.6 * first, log.checkpoints
    # the log's figure is the one measured independently on the trained model
    assert heldout_hidden_mse(matched, teacher, held) == pytest.approx(last, rel=1e-4)
    before = heldout_hidden_mse(pruned_student(teacher), teacher, held)
    assert before == pytest.approx(first, rel=1e-4)
    without = heldout_hidden_mse(plain, teacher, held)
    assert last < 0.8 * without, (last, without)
    # distillation alone logs no hidden-state figure; the setting is recorded either way
    assert "heldout_hidden_mse" not in plain_log.checkpoints[-1]
    assert (log.hidden_weight, plain_log.hidden_weight) == (1.0, 0.0)
    assert log.hidden_layers == ((0, 0), (1, 1), (2, 2)) and plain_log.hidden_layers == ()
    # the distillation loss still falls with the hidden-state term beside it
    assert log.checkpoints[-1]["heldout_loss"] < log.checkpoints[0]["heldout_loss"]
    assert RecoveryLog.from_json(log.to_json()) == log
    # no hook is left on the teacher or on the recovered model
    for model in (teacher, matched):
        assert not any(m._forward_hooks for m in model.model.modules())


def test_a_layer_dropped_student_pairs_each_kept_layer_with_its_teacher_layer(
    tiny_model: Any, collection: Path, tmp_path: Path
) -> None:
    teacher = tiny_model("minilm")  # three layers
    student = dropped_student(teacher, "1")
    assert getattr(student.model.config, KEPT_LAYERS_KEY) == [0, 2]
    assert layer_pairs(student, teacher) == ((0, 0), (1, 2))
    # the pairing is the weights': the student's layer 1 is the teacher's layer 2
    student_layers = student.model.bert.encoder.layer
    teacher_layers = teacher.model.bert.encoder.layer
    assert torch.equal(
        student_layers[1].attention.self.query.weight, teacher_layers[2].attention.self.query.weight
    )
    # before training, layer 0 computes exactly what the teacher's does; layer 1 does not
    # compute what the teacher's layer 1 does (its input skipped a layer)
    features = student.tokenize(list(QUERIES[:3]), list(DOCUMENTS[:3]))
    with torch.no_grad(), LayerOutputs(student) as mine, LayerOutputs(teacher) as theirs:
        student.forward_scores(features)
        teacher.forward_scores(features)
    mask = features["attention_mask"]
    assert float(hidden_state_mse(mine.taken(), theirs.taken(), mask, ((0, 0),))) == 0.0
    assert float(hidden_state_mse(mine.taken(), theirs.taken(), mask, ((1, 1),))) > 0.01
    # the record survives saving, and dropping again composes with it
    loaded = load_model(save_model(student, tmp_path / "dropped"))
    assert layer_pairs(loaded, teacher) == ((0, 0), (1, 2))
    assert layer_pairs(dropped_student(loaded, "0"), teacher) == ((0, 2),)
    # a model made from the student is paired with it through the same record
    assert layer_pairs(dropped_student(loaded, "0"), loaded) == ((0, 1),)

    data = recovery_data(teacher, collection, candidates=4, pseudo=4)
    _, log = run(student, teacher, data, hidden_weight=1.0, steps=20, checkpoint_every=20)
    assert log.hidden_layers == ((0, 0), (1, 2))
    assert log.checkpoints[-1]["heldout_hidden_mse"] < log.checkpoints[0]["heldout_hidden_mse"]


def test_bi_encoder_hidden_matching_pulls_its_layers_toward_the_teacher(
    tiny_model: Any, collection: Path
) -> None:
    teacher = tiny_model("minilm", "bi-encoder")
    data = recovery_data(teacher, collection, candidates=3, pseudo=4)
    _, log = run(
        pruned_student(teacher), teacher, data, hidden_weight=1.0, steps=20, checkpoint_every=20
    )
    first, last = log.checkpoints[0], log.checkpoints[-1]
    assert last["heldout_hidden_mse"] < 0.8 * first["heldout_hidden_mse"], log.checkpoints
    assert log.hidden_layers == ((0, 0), (1, 1), (2, 2))


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf"), True])
def test_a_bad_hidden_weight_is_refused_before_any_work(
    tiny_model: Any, collection: Path, weight: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = tiny_model("minilm")
    data = recovery_data(teacher, collection, candidates=3, pseudo=2)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded before the settings were checked")

    with pytest.raises(RelcompError, match="hidden weight must be a finite number ≥ 0"):
        run(pruned_student(teacher), teacher, data, hidden_weight=weight)
    monkeypatch.setattr(pipeline, "load_scorer", refuse)
    with pytest.raises(RelcompError, match="hidden weight must be a finite number ≥ 0"):
        pipeline.recover("s", "t", collection, collection.parent / "out", steps=2,
                         hidden_weight=weight)  # fmt: skip
    with pytest.raises(RelcompError, match="hidden weight"):
        CompressOptions("m", collection, ({"params_removed": 0.3},), "o",
                        protocol=resolve_protocol("quick"), recover=2,
                        recovery_hidden_weight=weight)  # fmt: skip


def test_a_hidden_weight_without_recovery_is_refused() -> None:
    with pytest.raises(ValueError, match="give --recover"):
        CompressOptions("m", "d", ({"params_removed": 0.3},), "o",
                        protocol=resolve_protocol("quick"), recovery_hidden_weight=0.5)  # fmt: skip


def test_layers_that_cannot_be_paired_are_refused_before_any_work(
    tiny_model: Any, collection: Path
) -> None:
    teacher = tiny_model("minilm")
    data = recovery_data(teacher, collection, candidates=3, pseudo=2)
    student = dropped_student(teacher, "1")
    delattr(student.model.config, KEPT_LAYERS_KEY)  # as saved before relcomp recorded it

    def never(model: Any) -> dict[str, float]:
        raise AssertionError("training started")

    with pytest.raises(RelcompError, match="cannot tell which of the teacher's 3 layers"):
        run(student, teacher, data, hidden_weight=1.0, gate=never)
    # without hidden-state matching, the same student recovers
    _, log = run(student, teacher, data, steps=1)
    assert log.hidden_layers == ()


def test_a_resumed_run_with_hidden_matching_equals_an_uninterrupted_one(
    tiny_model: Any, collection: Path, tmp_path: Path
) -> None:
    teacher = tiny_model("minilm")
    data = recovery_data(teacher, collection, candidates=3, pseudo=3)
    options: dict[str, Any] = {"steps": 8, "checkpoint_every": 4, "hidden_weight": 0.5}
    folder = tmp_path / "checkpoints"
    whole, whole_log, resumed, resumed_log, saved = interrupted_and_resumed(
        teacher, data, folder, **options
    )
    assert saved["state"]["step"] == 4 and saved["identity"]["hidden_weight"] == 0.5
    assert resumed_log.losses == whole_log.losses
    assert resumed_log.checkpoints == whole_log.checkpoints
    for (name, a), (_, b) in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # another hidden weight, or none, never resumes from this checkpoint
    for weight in (0.25, 0.0):
        with pytest.raises(RelcompError, match=r"another recovery run.*hidden_weight"):
            run(pruned_student(teacher), teacher, data, checkpoint_dir=folder,
                **{**options, "hidden_weight": weight})  # fmt: skip


def test_a_checkpoint_made_before_the_option_resumes_without_it(
    tiny_model: Any, collection: Path, tmp_path: Path
) -> None:
    teacher = tiny_model("minilm")
    data = recovery_data(teacher, collection, candidates=3, pseudo=3)
    folder = tmp_path / "checkpoints"
    _, whole_log = run(pruned_student(teacher), teacher, data, steps=4, checkpoint_every=4)
    run(pruned_student(teacher), teacher, data, steps=4, checkpoint_every=4, checkpoint_dir=folder)
    saved = torch.load(folder / CHECKPOINT_FILE, weights_only=False)
    assert "hidden_weight" not in saved["identity"]  # what older checkpoints look like
    _, again = run(pruned_student(teacher), teacher, data, steps=4, checkpoint_every=4,
                   checkpoint_dir=folder)  # fmt: skip
    assert again.losses == whole_log.losses
    with pytest.raises(RelcompError, match="hidden_weight"):
        run(pruned_student(teacher), teacher, data, steps=4, checkpoint_every=4,
            checkpoint_dir=folder, hidden_weight=1.0)  # fmt: skip


def test_a_version_1_recovery_log_reads_with_no_hidden_matching() -> None:
    log = RecoveryLog(student="s", teacher="t", loss="listwise-kl", steps=2, batch_size=4,
                      lr=5e-5, max_length=128, seed=13, device="cpu", pairs_seen=64,
                      seconds=1.5, losses=[0.3, 0.2], hidden_weight=0.5,
                      hidden_layers=[(0, 0), (1, 2)])  # fmt: skip
    assert log.to_dict()["version"] == RecoveryLog.VERSION
    assert RecoveryLog.from_json(log.to_json()) == log
    old = log.to_dict()
    old["version"] = 1
    del old["hidden_weight"], old["hidden_layers"]
    read = RecoveryLog.from_dict(old)
    assert (read.hidden_weight, read.hidden_layers, read.losses) == (0.0, (), (0.3, 0.2))
    with pytest.raises(Exception, match=f"version {RecoveryLog.VERSION + 1} is not supported"):
        RecoveryLog.from_dict({**old, "version": RecoveryLog.VERSION + 1})
