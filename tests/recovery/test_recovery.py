"""Recovery on tiny models: it learns, it resumes exactly, it refuses bad input before any work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from relcomp.artifacts import CompressionPlan, RecoveryLog
from relcomp.compression import prune_physically
from relcomp.errors import RelcompError
from relcomp.models import load_model, save_model
from relcomp.recovery import (
    CHECKPOINT_FILE,
    LOSSES,
    RecoveryData,
    listwise_kl,
    margin_mse,
    pseudo_queries,
    recover,
    recovery_data,
)
from tests.fixtures import DOCUMENTS, QUERIES

TRAIN_QUERIES = (
    "a document on how many people live in the city",
    "a document on what is a small animal",
    "a document on why water falls from the sky",
    "a document on who wrote a book about a whale",
    "a document on what causes a cough",
    "a document on how the immune system works",
    "a document on what a dog does",
    "a document on where the museum of art is",
)


def write_collection(root: Path, *, train: bool = True) -> Path:
    """A BEIR folder over the tiny fixtures' documents: test queries, and train queries."""
    root.mkdir(parents=True, exist_ok=True)
    corpus = [
        {
            "_id": f"d{i}",
            "title": f"The document number {i} about {text.split()[0]} things",
            "text": text,
        }
        for i, text in enumerate(DOCUMENTS)
    ]
    queries = [{"_id": f"t{i}", "text": q} for i, q in enumerate(QUERIES)]
    queries += [{"_id": f"r{i}", "text": q} for i, q in enumerate(TRAIN_QUERIES)]
    # every title says "document", and so does every train query: BM25 finds candidates
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir(exist_ok=True)
    header = "query-id\tcorpus-id\tscore\n"
    (root / "qrels" / "test.tsv").write_text(
        header + "".join(f"t{i}\td{i}\t1\n" for i in range(len(QUERIES)))
    )
    if train:
        (root / "qrels" / "train.tsv").write_text(
            header + "".join(f"r{i}\td{i % len(DOCUMENTS)}\t1\n" for i in range(len(TRAIN_QUERIES)))
        )
    return root


def pruned_student(teacher: Any) -> Any:
    plan = CompressionPlan(
        teacher.name,
        {"re:.*layer\\.0\\..*": "prune_heads(0,1)", "_default": "prune_neurons(ratio=0.5)"},
    )
    return prune_physically(teacher, plan)


# -- losses --------------------------------------------------------------------------
def test_listwise_kl_is_zero_at_the_teacher_and_positive_elsewhere() -> None:
    teacher = torch.tensor([[2.0, 1.0, -1.0], [0.5, 0.0, 0.2]])
    assert float(listwise_kl(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)
    assert float(listwise_kl(teacher.flip(-1), teacher)) > 0.1


def test_listwise_kl_ignores_masked_candidates() -> None:
    teacher = torch.tensor([[2.0, 1.0, 0.0]])
    student = torch.tensor([[2.0, 1.0, 99.0]])  # the third candidate does not exist
    mask = torch.tensor([[True, True, False]])
    assert float(listwise_kl(student, teacher, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(listwise_kl(student, teacher)) > 1.0


def test_margin_mse_compares_margins_below_the_teachers_top() -> None:
    teacher = torch.tensor([[3.0, 1.0, 0.0]])
    assert float(margin_mse(teacher + 7.0, teacher)) == pytest.approx(0.0, abs=1e-6)
    # margins (0, 2, 3) against the student's (0, 1, 1): ((1)^2 + (2)^2) / 3
    assert float(margin_mse(torch.tensor([[3.0, 2.0, 2.0]]), teacher)) == pytest.approx(5 / 3)


def test_unknown_loss_names_the_valid_ones() -> None:
    with pytest.raises(RelcompError, match="listwise-kl"):
        LOSSES.get("listwise-kld")


# -- data ------------------------------------------------------------------------------
def test_pseudo_queries_are_seeded_titles_or_sentences(collection: Path) -> None:
    from relcomp.evaluation import load_beir

    dataset = load_beir(collection, "test")
    first, again = pseudo_queries(dataset, 4, seed=3), pseudo_queries(dataset, 4, seed=3)
    assert first == again and len(first) == 4
    for text, doc_id in first.values():
        title, body = dataset.corpus[doc_id]
        assert text == title or text in body
    assert pseudo_queries(dataset, 4, seed=4) != first


def test_recovery_data_never_uses_test_or_excluded_queries(
    tiny_model: Any, collection: Path
) -> None:
    teacher = tiny_model("minilm")
    data = recovery_data(teacher, collection, candidates=3, pseudo=3, exclude=["r0", "r1"])
    assert data.source_counts == {"train": 6, "pseudo": 3}
    assert not set(QUERIES) & set(data.queries)
    assert TRAIN_QUERIES[0] not in data.queries and TRAIN_QUERIES[2] in data.queries
    # the teacher's scores, best first, are the teacher's own scores of those pairs
    row = data.queries.index(TRAIN_QUERIES[2])
    documents = data.documents[row]
    expected = teacher.score([TRAIN_QUERIES[2]] * len(documents), list(documents))
    np.testing.assert_allclose(data.teacher_scores[row, : len(documents)], expected, atol=1e-5)
    assert list(expected) == sorted(expected, reverse=True)
    with pytest.raises(RelcompError, match="test split"):
        recovery_data(teacher, collection, splits=["test"])


def test_deep_candidates_keep_bm25s_top_half_and_draw_the_rest_from_below(
    tiny_model: Any, collection: Path
) -> None:
    from relcomp.evaluation import bm25_retrieve, load_beir

    teacher = tiny_model("minilm")
    shallow = recovery_data(teacher, collection, candidates=4, pseudo=0)
    deep = recovery_data(teacher, collection, candidates=4, pseudo=0, candidate_depth=8)
    assert deep.identity["candidate_depth"] == 8 and "candidate_depth" not in shallow.identity
    assert deep.digest != shallow.digest  # another data set: its own checkpoints and cache
    train = load_beir(collection, "train")
    top8 = bm25_retrieve(train, list(train.split_queries), depth=8, show_progress_bar=False)
    drew_deeper = 0
    for query_id, query in train.queries.items():
        if query_id not in train.split_queries:
            continue
        row = deep.queries.index(query)
        ranked = [d for d, _ in sorted(top8[query_id].items(), key=lambda i: (-i[1], i[0]))]
        texts = {train.document_text(d): rank for rank, d in enumerate(ranked)}
        ranks = sorted(texts[t] for t in deep.documents[row])
        assert len(ranks) == min(4, len(ranked)) and ranks[:2] == [0, 1]
        drew_deeper += ranks[-1] >= 4
    assert drew_deeper > 0  # some group reaches below BM25's top-4
    with pytest.raises(RelcompError, match="candidate_depth \\(3\\) must be at least"):
        recovery_data(teacher, collection, candidates=4, candidate_depth=3)


def test_the_teachers_scores_are_computed_once_and_read_back(
    tiny_model: Any, collection: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = tiny_model("minilm")
    first = recovery_data(teacher, collection, candidates=3, pseudo=3)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the teacher scored pairs the cache holds")

    monkeypatch.setattr(type(teacher), "score", refuse)
    again = recovery_data(teacher, collection, candidates=3, pseudo=3)
    np.testing.assert_array_equal(again.teacher_scores, first.teacher_scores)
    assert again.digest == first.digest


def test_a_collection_with_only_a_test_split_recovers_on_pseudo_queries(
    tiny_model: Any, tmp_path: Path
) -> None:
    folder = write_collection(tmp_path / "only-test", train=False)
    data = recovery_data(tiny_model("minilm"), folder, candidates=3, pseudo=5)
    assert data.source_counts == {"pseudo": 5}


# -- training --------------------------------------------------------------------------
def run(student: Any, teacher: Any, data: RecoveryData, **options: Any) -> tuple[Any, RecoveryLog]:
    settings: dict[str, Any] = {
        "steps": 30,
        "batch_size": 2,
        "lr": 3e-3,
        "max_length": 32,
        "heldout": 2,
    }
    settings.update(options)
    return recover(student, teacher, data, show_progress_bar=False, **settings)


def test_recovery_lowers_the_heldout_distillation_loss(tiny_model: Any, collection: Path) -> None:
    teacher = tiny_model("minilm")
    student = pruned_student(teacher)
    before = [p.detach().clone() for p in student.model.parameters()]
    data = recovery_data(teacher, collection, candidates=4, pseudo=4)
    # A random tiny teacher's scores are close together: a low temperature makes its
    # preferences something to learn.
    recovered, log = run(student, teacher, data, lr=1e-3, temperature=0.1, checkpoint_every=10)
    first, last = log.checkpoints[0]["heldout_loss"], log.checkpoints[-1]["heldout_loss"]
    assert last < 0.75 * first, log.checkpoints
    assert [c["step"] for c in log.checkpoints] == [0, 10, 20, 30]
    assert log.pairs_seen > 0 and len(log.losses) == 30
    # the student given is untouched; the recovered one has its own identity
    assert all(torch.equal(a, b) for a, b in zip(before, student.model.parameters(), strict=True))
    assert recovered.variant.startswith(student.variant + "|recovered-")
    assert recovered.cache_key != student.cache_key
    assert RecoveryLog.from_json(log.to_json()) == log


def test_bi_encoder_recovery_moves_embeddings_toward_the_teacher(
    tiny_model: Any, collection: Path
) -> None:
    teacher = tiny_model("minilm", "bi-encoder")
    student = pruned_student(teacher)
    data = recovery_data(teacher, collection, candidates=3, pseudo=4)
    _, log = run(student, teacher, data, steps=20, checkpoint_every=20)
    assert log.loss == "embedding"
    assert log.checkpoints[-1]["heldout_loss"] < 0.8 * log.checkpoints[0]["heldout_loss"]


def passed_to_pipeline(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> tuple[int, dict[str, Any]]:
    """``relcomp ARGV``'s exit status and the keywords it handed ``pipeline.<verb>``,
    which is stopped before any work."""
    from relcomp import cli, pipeline

    seen: dict[str, Any] = {}

    def stop(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise ValueError("stopped before any work")

    monkeypatch.setattr(pipeline, argv[0], stop)
    return cli.main(["-q", *argv]), seen


def interrupted_and_resumed(
    teacher: Any, data: Any, folder: Path, **options: Any
) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """An 8-step run whole, and the same run stopped after its step-4 checkpoint and
    resumed from it: ``(whole, its log, resumed, its log, the saved checkpoint)``."""
    whole, whole_log = run(pruned_student(teacher), teacher, data, **options)

    class Interrupted(Exception):
        pass

    calls = {"n": 0}

    def interrupt_at_step_8(model: Any) -> dict[str, float]:
        calls["n"] += 1  # called at steps 0, 4 and 8; the step-4 checkpoint is saved after it
        if calls["n"] == 3:
            raise Interrupted
        return {}

    with pytest.raises(Interrupted):
        run(pruned_student(teacher), teacher, data, checkpoint_dir=folder,
            gate=interrupt_at_step_8, **options)  # fmt: skip
    saved = torch.load(folder / CHECKPOINT_FILE, weights_only=False)
    resumed, resumed_log = run(
        pruned_student(teacher), teacher, data, checkpoint_dir=folder, **options
    )
    return whole, whole_log, resumed, resumed_log, saved


def assert_weight_in_checkpoint_identity(
    teacher: Any, data: Any, tmp_path: Path, name: str, value: float, default: float
) -> None:
    """A loss weight set to ``value`` names itself in the checkpoint, resumes to what an
    uninterrupted run gives and refuses a checkpoint of another weight; left at its
    ``default`` it stays out of the identity, as checkpoints made before it have it."""
    options: dict[str, Any] = {"steps": 8, "checkpoint_every": 4, name: value}
    folder = tmp_path / "checkpoints"
    whole, whole_log, resumed, resumed_log, saved = interrupted_and_resumed(
        teacher, data, folder, **options
    )
    assert saved["identity"][name] == value
    assert resumed_log.losses == whole_log.losses
    for (key, a), (_, b) in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), key
    with pytest.raises(RelcompError, match=rf"another recovery run.*{name}"):
        run(pruned_student(teacher), teacher, data, checkpoint_dir=folder,
            **{**options, name: default})  # fmt: skip
    plain = tmp_path / "plain"
    run(pruned_student(teacher), teacher, data, steps=4, checkpoint_every=4, checkpoint_dir=plain)
    assert name not in torch.load(plain / CHECKPOINT_FILE, weights_only=False)["identity"]


@pytest.mark.parametrize(
    ("name", "value"), [("hidden_weight", 0.5), ("similarity_weight", 400.0), ("label_weight", 0.5)]
)
def test_the_command_lines_pass_each_loss_weight(
    tiny_model_path: Any,
    collection: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: float,
) -> None:
    from relcomp.compress_flow import CompressOptions
    from relcomp.evaluation import resolve_protocol

    model = str(tiny_model_path("minilm", "bi-encoder"))
    output = collection.parent / "out"
    flag = name.replace("_", "-")
    for verb, option, keyword in (
        (["recover", "--teacher", model, "--steps", "2"], f"--{flag}", name),
        (["compress", "--budget", "0.3", "--recover", "2"], f"--recovery-{flag}",
         f"recovery_{name}"),
    ):  # fmt: skip
        argv = [*verb, "-m", model, "-d", str(collection), option, str(value), "-o", str(output)]
        status, seen = passed_to_pipeline(monkeypatch, argv)
        assert status == 2 and seen[keyword] == value, (verb, seen)
    with pytest.raises(ValueError, match="give --recover"):
        CompressOptions("m", "d", ({"params_removed": 0.3},), "o",
                        protocol=resolve_protocol("quick"),
                        **{f"recovery_{name}": value})  # fmt: skip


def test_a_resumed_run_equals_an_uninterrupted_one(
    tiny_model: Any, collection: Path, tmp_path: Path
) -> None:
    teacher = tiny_model("minilm")
    data = recovery_data(teacher, collection, candidates=3, pseudo=3)
    folder = tmp_path / "checkpoints"
    whole, whole_log, resumed, resumed_log, saved = interrupted_and_resumed(
        teacher, data, folder, steps=8, checkpoint_every=4
    )
    assert saved["state"]["step"] == 4
    assert resumed_log.losses == whole_log.losses
    for (name, a), (_, b) in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.variant == whole.variant
    # another run's settings never resume from this checkpoint
    with pytest.raises(RelcompError, match="another recovery run"):
        run(
            pruned_student(teacher),
            teacher,
            data,
            steps=9,
            checkpoint_every=4,
            checkpoint_dir=folder,
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": 0}, "steps must be a whole number"),
        ({"batch_size": 0}, "batch size"),
        ({"lr": float("nan")}, "learning rate"),
        ({"max_length": 4}, "max length"),
        ({"loss": "embedding"}, "cross-encoder recovers with"),
        ({"heldout": 1000}, "cannot hold out"),
        ({"hidden_weight": -0.5}, "hidden weight must be a finite number ≥ 0"),
    ],
)
def test_bad_settings_fail_before_any_work(
    tiny_model: Any, collection: Path, options: dict[str, Any], message: str
) -> None:
    teacher = tiny_model("minilm")
    data = recovery_data(teacher, collection, candidates=3, pseudo=2)
    with pytest.raises(RelcompError, match=message):
        run(pruned_student(teacher), teacher, data, **options)


def test_a_teacher_of_another_kind_family_or_data_is_refused(
    tiny_model: Any, collection: Path
) -> None:
    teacher = tiny_model("minilm")
    data = recovery_data(teacher, collection, candidates=3, pseudo=2)
    student = pruned_student(teacher)
    with pytest.raises(RelcompError, match="bi-encoder"):
        run(student, tiny_model("minilm", "bi-encoder"), data)
    with pytest.raises(RelcompError, match="roberta"):
        run(student, tiny_model("roberta"), data)
    other = tiny_model("minilm", seed=5)
    with pytest.raises(RelcompError, match="another teacher"):
        run(student, other, data)


def test_a_pruned_and_recovered_model_saves_and_loads_back(
    tiny_model: Any, collection: Path, tmp_path: Path
) -> None:
    teacher = tiny_model("minilm")
    student = pruned_student(teacher)
    widths = [layer.intermediate.dense.out_features for layer in student.model.bert.encoder.layer]
    assert len(set(widths)) >= 1
    data = recovery_data(teacher, collection, candidates=3, pseudo=2)
    recovered, _ = run(student, teacher, data, steps=3)
    folder = save_model(recovered, tmp_path / "recovered")
    loaded = load_model(folder)
    pairs = (list(QUERIES), list(DOCUMENTS[: len(QUERIES)]))
    np.testing.assert_allclose(loaded.score(*pairs), recovered.score(*pairs), atol=1e-5)
    assert loaded.model.config.pruned_heads
