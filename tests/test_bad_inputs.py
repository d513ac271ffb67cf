"""Hostile but realistic input to every verb: one message, exit 2, and nothing left behind.

Each case runs the command line (:func:`relcomp.cli.main`) on tiny models built in
code, some of them damaged on purpose (a NaN in one weight, no tokenizer files, a
vocabulary smaller than the tokenizer's, a three-class head), and asserts the
message, the exit status and that the folders involved are as they were before.
``CASES`` counts them by verb.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from relcomp.cli import main
from relcomp.errors import ModelLoadError, NonFiniteError, UnsupportedArchitectureError
from relcomp.models import load_model
from tests.fixtures import DOCUMENTS, LONG_DOCUMENT, QUERIES

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


# -- damaged models, built from the tiny bert cross-encoder ------------------------------------
def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _with_nan(source: Path, target: Path, suffix: str = "attention.self.query.weight") -> str:
    """Copy ``source`` with one NaN in the first weight whose name ends with ``suffix``."""
    from safetensors.torch import load_file, save_file

    _copy(source, target)
    weights = load_file(target / "model.safetensors")
    name = next(n for n in sorted(weights) if n.endswith(suffix))
    weights[name].view(-1)[3] = float("nan")
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return name


def _resaved(source: Path, target: Path, **changes: Any) -> Path:
    """The model of ``source`` saved again with ``changes`` (num_labels, vocabulary size)."""
    from transformers import AutoModelForSequenceClassification

    vocabulary = changes.pop("vocab_size", None)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, ignore_mismatched_sizes=True, **changes
    )
    if vocabulary is not None:
        model.resize_token_embeddings(vocabulary)
    model.save_pretrained(target)
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    return target


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good and damaged tiny models, made once for this module."""
    from tests.fixtures import make_tiny_model_dir

    root = tmp_path_factory.mktemp("damaged-models")
    good = make_tiny_model_dir(root, "bert", "cross-encoder", name="good")
    made = {"good": good}
    made["nan_tensor"] = _with_nan(good, root / "nan")  # type: ignore[assignment]
    made["nan"] = root / "nan"
    bi = make_tiny_model_dir(root, "bert", "bi-encoder", name="good-bi")
    made["good_bi"] = bi
    _with_nan(bi, root / "nan-bi", suffix="output.dense.weight")
    made["nan_bi"] = root / "nan-bi"
    made["no_tokenizer"] = _copy(good, root / "no-tokenizer")
    for name in _TOKENIZER_FILES:
        (made["no_tokenizer"] / name).unlink(missing_ok=True)
    made["small_vocab"] = _resaved(good, root / "small-vocab", vocab_size=100)
    made["three_labels"] = _resaved(good, root / "three-labels", num_labels=3)
    made["two_labels"] = _resaved(good, root / "two-labels", num_labels=2)
    made["overflow"] = _overflowing(good, root / "overflow")
    return made


def _overflowing(source: Path, target: Path) -> Path:
    """Finite weights whose activations overflow float32: scores come out NaN or infinite."""
    from safetensors.torch import load_file, save_file

    _copy(source, target)
    weights = load_file(target / "model.safetensors")
    name = next(n for n in sorted(weights) if n.endswith("embeddings.LayerNorm.weight"))
    weights[name].fill_(3e38)
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    folder = tmp_path / "toy"
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"d{i}", "title": "", "text": text} for i, text in enumerate(DOCUMENTS)]
    corpus.append({"_id": "long", "title": "", "text": LONG_DOCUMENT})
    queries = [{"_id": f"q{i}", "text": text} for i, text in enumerate(QUERIES)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries))
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(len(QUERIES))
    )
    (folder / "qrels" / "test.tsv").write_text(qrels)
    (folder / "qrels" / "dev.tsv").write_text(qrels)
    # A qrels file outside the collection, which "--split ../x" would have read.
    (tmp_path / "x.tsv").write_text(qrels)
    return folder


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if "cache" not in p.relative_to(root).parts
    }


# -- the cases: (verb, arguments, message) --------------------------------------------------------
# {good}, {nan}… are model folders; {data} the collection; {out} an output path that
# does not exist; {file} an existing file; {long} a passage longer than max length.
CASES: list[tuple[str, list[str], str]] = [
    # evaluate
    ("evaluate", ["-m", "{nan}", "-d", "{data}", "-o", "{out}"], "weight '{nan_tensor}'"),
    ("evaluate", ["-m", "{nan_bi}", "-d", "{data}", "-o", "{out}"], "non-finite value"),
    ("evaluate", ["-m", "bm25", "-d", "{data}", "--split", "../../x", "-o", "{out}"], "not a split name"),
    ("evaluate", ["-m", "bm25", "-d", "{data}", "--split", "../x", "-o", "{out}"], "not a split name"),
    ("evaluate", ["-m", "bm25", "-d", "{data}", "--split", "./test", "-o", "{out}"], "not a split name"),
    ("evaluate", ["-m", "bm25", "-d", "{data}", "--split", "/etc/passwd"], "not a split name"),
    ("evaluate", ["-m", "{no_tokenizer}", "-d", "{data}", "-o", "{out}"], "no tokenizer files"),
    ("evaluate", ["-m", "{small_vocab}", "-d", "{data}", "-o", "{out}"], "embedding matrix has 100 rows"),
    ("evaluate", ["-m", "{three_labels}", "-d", "{data}", "-o", "{out}"], "head has 3 outputs"),
    ("evaluate", ["-m", "bm25", "-d", "{data}", "-o", "{file}"], "exists and is a file"),
    ("evaluate", ["-m", "bm25", "-d", "{data}", "-o", "{file}/sub"], "is a file, not a folder"),
    ("evaluate", ["-m", "~/relcomp-no-such-model", "-d", "{data}"], "no such model folder"),
    ("evaluate", ["-m", "runs/x/model", "-d", "{data}"], "no such model folder"),
    ("evaluate", ["-m", "{good}", "-d", "{data}", "--first-stage", "./nope"], "no such model folder"),
    ("evaluate", ["-m", "{overflow}", "-d", "{data}", "-o", "{out}"], "values are not finite"),
    # explain
    ("explain", ["-m", "{nan}", "-q", "a cat", "-p", "a cat sleeps", "-o", "{out}"], "weight '{nan_tensor}'"),
    ("explain", ["-m", "{good}", "-q", "   ", "-p", "a cat sleeps", "-o", "{out}"], "the query is empty"),
    ("explain", ["-m", "{good}", "-q", "a cat", "-p", "", "-o", "{out}"], "the passage is empty"),
    ("explain", ["-m", "{good}", "-q", "a cat", "-p", "b", "-o", "{file}"], "exists and is a file"),
    ("explain", ["-m", "{three_labels}", "-q", "a cat", "-p", "b", "-o", "{out}"], "head has 3 outputs"),
    ("explain", ["-m", "{small_vocab}", "-q", "a cat", "-p", "b", "-o", "{out}"], "tokenizer has"),
    ("explain", ["-m", "{no_tokenizer}", "-q", "a cat", "-p", "b"], "no tokenizer files"),
    ("explain", ["-m", "{good}", "-q", "a", "-p", "b", "--method", "nope", "-o", "{out}"], "Valid names"),
    ("explain", ["-m", "{overflow}", "-q", "a cat", "-p", "a cat sleeps", "-o", "{out}"], "not finite"),
    # relevance
    ("relevance", ["-m", "{good}", "-d", "{data}", "--split", "./test", "-o", "{out}"], "not a split name"),
    ("relevance", ["-m", "{good}", "-d", "{data}", "--split", "../x", "-o", "{out}"], "not a split name"),
    ("relevance", ["-m", "{good}", "-d", "{data}", "--split", "test", "-o", "{out}"], "test split"),
    ("relevance", ["-m", "{nan}", "-d", "{data}", "--calibration", "2", "-o", "{out}"], "weight '{nan_tensor}'"),
    ("relevance", ["-m", "{good}", "-d", "{data}", "-o", "{file}"], "exists and is a file"),
    ("relevance", ["-m", "{good}", "-d", "{data}", "--split", "train", "-o", "{out}"], "no split 'train'"),
    ("relevance", ["-m", "{overflow}", "-d", "{data}", "--calibration", "2", "-o", "{out}"], "not finite"),
    # patch
    ("patch", ["-m", "{nan}", "-d", "{data}", "-o", "{out}"], "weight '{nan_tensor}'"),
    ("patch", ["-m", "{good}", "-d", "{data}", "--split", "../x", "-o", "{out}"], "not a split name"),
    ("patch", ["-m", "{good}", "-d", "{data}", "-o", "{file}"], "exists and is a file"),
    ("patch", ["-m", "{three_labels}", "-d", "{data}", "-o", "{out}"], "head has 3 outputs"),
    ("patch", ["-m", "{overflow}", "-d", "{data}", "--pairs", "2", "-o", "{out}"], "not finite"),
    # plan
    ("plan", ["-m", "{nan}", "--method", "mixed-precision", "--budget", "6bits", "--importance", "magnitude", "-o", "{out}/plan.json"], "weight '{nan_tensor}'"),
    ("plan", ["-m", "{good}", "--method", "mixed-precision", "--budget", "2bits", "--importance", "magnitude", "-o", "{out}/plan.json"], "impossible budget bits_per_weight=2"),
    ("plan", ["-m", "{good}", "--method", "mixed-precision", "--budget", "6bits", "--importance", "nope", "-o", "{out}/plan.json"], "Valid names"),
    ("plan", ["-m", "{good}", "--method", "nope", "--budget", "6bits", "-o", "{out}/plan.json"], "Valid names"),
    ("plan", ["-m", "{good}", "--method", "mixed-precision", "--budget", "6bits", "--relevance", "{null_relevance}", "-o", "{out}/plan.json"], "not finite"),
    ("plan", ["-m", "{good}", "--method", "mixed-precision", "--budget", "6bits", "--importance", "magnitude", "-o", "{file}/plan.json"], "is a file, not a folder"),
    ("plan", ["-m", "{good}", "--method", "mixed-precision", "--budget", "6bits", "-d", "{data}", "--calibration-split", "../x", "-o", "{out}/plan.json"], "not a split name"),
    # export
    ("export", ["-m", "{nan}", "-o", "{out}"], "weight '{nan_tensor}'"),
    ("export", ["-m", "{good}", "-o", "{file}"], "exists and is a file"),
    ("export", ["-m", "{good}", "-d", "{data}", "--split", "../x", "-o", "{out}"], "not a split name"),
    ("export", ["-m", "{no_tokenizer}", "-o", "{out}"], "no tokenizer files"),
    ("export", ["-m", "{overflow}", "-o", "{out}"], "not finite"),
    # compress
    ("compress", ["-m", "{nan}", "-d", "{data}", "--budget", "6bits", "-o", "{out}"], "weight '{nan_tensor}'"),
    ("compress", ["-m", "{good}", "-d", "{data}", "--budget", "6bits", "2bits", "-o", "{out}"], "impossible budget bits_per_weight=2"),
    ("compress", ["-m", "{good}", "-d", "{data}", "--budget", "6bits", "--calibration-split", "./test", "-o", "{out}"], "not a split name"),
    ("compress", ["-m", "{good}", "-d", "{data}", "--budget", "6bits", "--calibration-split", "test", "-o", "{out}"], "evaluated split"),
    ("compress", ["-m", "{no_tokenizer}", "-d", "{data}", "--budget", "6bits", "-o", "{out}"], "no tokenizer files"),
    ("compress", ["-m", "{good}", "-d", "{data}", "--budget", "6bits", "-o", "{file}"], "exists and is a file"),
    ("compress", ["-m", "{good}", "-d", "{data}", "--budget", "6bits", "--importance", "nope", "-o", "{out}"], "Valid names"),
    ("compress", ["-m", "{good}", "-d", "{data}", "--budget", "6bits", "--method", "nope", "-o", "{out}"], "Valid names"),
    ("compress", ["-m", "{good}", "-d", "{data}", "--budget", "oops", "-o", "{out}"], "--budget 'oops'"),
    ("compress", ["-m", "{three_labels}", "-d", "{data}", "--budget", "6bits", "-o", "{out}"], "head has 3 outputs"),
    ("compress", ["-m", "{overflow}", "-d", "{data}", "--budget", "6bits", "-o", "{out}"], "not finite"),
    ("compress", ["-m", "{good}", "-d", "{data}", "--budget", "6bits", "--index", "int8", "-o", "{out}"], "only a bi-encoder"),
    ("compress", ["-m", "{good_bi}", "-d", "{data}", "--budget", "6bits", "--index", "int8", "--index-dims", "999", "-o", "{out}"], "dims must be between 1 and 32"),
    ("compress", ["-m", "{good_bi}", "-d", "{data}", "--budget", "6bits", "--index", "binary", "--index-rescore", "0", "-o", "{out}"], "rescore must be a whole number"),
    ("compress", ["-m", "{good_bi}", "-d", "{data}", "--budget", "6bits", "--index", "int4", "-o", "{out}"], "Valid names"),
    ("compress", ["-m", "{good_bi}", "-d", "{data}", "--budget", "6bits", "--index-dims", "8", "-o", "{out}"], "give --index PRECISION too"),
    # report and demo
    ("report", ["{out}"], "no such run folder"),
    ("report", ["{file}"], "no such run folder"),
    ("demo", ["-o", "{file}"], "exists and is a file"),
]  # fmt: skip

#: Bad-input cases covered by this module's command-line test, by verb.
CASES_BY_VERB = Counter(verb for verb, _, _ in CASES)


@pytest.fixture
def null_relevance(tmp_path: Path) -> Path:
    """A component_relevance.json whose numbers were NaN when written (JSON null)."""
    path = tmp_path / "component_relevance.json"
    payload = {
        "kind": "component_relevance",
        "version": 1,
        "model": "m",
        "method": "AttnLRP",
        "n_pairs": 1,
        "components": {
            "layer": {"bert.encoder.layer.0": {"mean_abs": [None], "mean_signed": [None]}}
        },
        "source": {},
    }
    path.write_text(json.dumps(payload))
    return path


@pytest.mark.parametrize(
    ("verb", "args", "message"), CASES, ids=[f"{v}-{i}" for i, (v, _, _) in enumerate(CASES)]
)
def test_bad_input_stops_with_one_message_and_leaves_nothing(
    models,
    beir: Path,
    null_relevance: Path,
    tmp_path: Path,
    capsys,
    monkeypatch,
    verb,
    args,
    message,
) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "taken").write_text("a file where a folder goes")
    values = {
        **{name: str(path) for name, path in models.items()},
        "data": str(beir),
        "out": str(tmp_path / "out"),
        "file": str(tmp_path / "taken"),
        "null_relevance": str(null_relevance),
    }
    before = _snapshot(tmp_path)
    status = main([verb, *(a.format(**values) for a in args), "--quiet"])
    error = capsys.readouterr().err
    assert status == 2, error
    assert message.format(**values) in error
    assert "Traceback" not in error
    assert error.count("error:") == 1
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed
    assert not (tmp_path / "out").exists()


def test_the_cases_cover_every_verb() -> None:
    verbs = {
        "evaluate",
        "explain",
        "relevance",
        "patch",
        "plan",
        "export",
        "compress",
        "report",
        "demo",
    }
    assert set(CASES_BY_VERB) == verbs


# -- loading: library-level messages ------------------------------------------------------------
def test_nan_weight_is_refused_at_load_naming_the_tensor(models) -> None:
    with pytest.raises(NonFiniteError, match=f"weight '{models['nan_tensor']}'"):
        load_model(models["nan"])


def test_vocabulary_smaller_than_the_tokenizer_is_refused_at_load(models) -> None:
    with pytest.raises(ModelLoadError, match=r"tokenizer has \d+ tokens .* 100 rows"):
        load_model(models["small_vocab"])


def test_a_three_class_head_is_refused(models) -> None:
    with pytest.raises(UnsupportedArchitectureError, match="3 outputs"):
        load_model(models["three_labels"])


def test_a_two_class_head_scores_by_the_relevant_label(models, caplog) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="relcomp"):
        model = load_model(models["two_labels"])
    assert "logit of label 1" in caplog.text
    features = model.tokenize([QUERIES[0]], [DOCUMENTS[0]])
    logits = model.model(**features).logits
    assert model.score([QUERIES[0]], [DOCUMENTS[0]])[0] == pytest.approx(
        float(logits[0, 1].detach()), abs=1e-5
    )


def test_a_head_that_changes_after_loading_is_refused(models) -> None:
    import torch

    model = load_model(models["good"])
    model.model.classifier = torch.nn.Linear(model.config.hidden_size, 4)
    with pytest.raises(UnsupportedArchitectureError, match="4 outputs"):
        model.score([QUERIES[0]], [DOCUMENTS[0]])


def test_non_finite_scores_stop_scoring(models) -> None:
    import torch

    model = load_model(models["good"])
    with torch.no_grad():
        model.model.classifier.bias.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match="scores: 2 of 2 values are not finite"):
        model.score(list(QUERIES[:2]), list(DOCUMENTS[:2]))


def test_a_split_path_never_reads_outside_the_collection(beir: Path) -> None:
    from relcomp.errors import DataFormatError
    from relcomp.evaluation import load_beir

    assert (beir.parent / "x.tsv").is_file()
    for split in ("../x", "../../x", "./test", "test/../test", ".hidden", ""):
        with pytest.raises(DataFormatError, match="not a split name"):
            load_beir(beir, split)


# -- truncation is reported by every verb that scores or explains --------------------------------
def test_explain_reports_truncation_in_its_file_and_on_the_terminal(models, tmp_path, caplog):
    out = tmp_path / "out"
    args = ["explain", "-m", str(models["good"]), "-q", QUERIES[0], "-p", LONG_DOCUMENT]
    assert main([*args, "-o", str(out)]) == 0
    assert json.loads((out / "explanation.json").read_text())["truncated"] is True
    assert "1 of 1 inputs (100.0%) truncated" in caplog.text  # a warning: shown even with -q
    assert main([*args[:-1], DOCUMENTS[0], "-o", str(out)]) == 0
    assert json.loads((out / "explanation.json").read_text())["truncated"] is False


def test_relevance_reports_truncation(models, beir, tmp_path, caplog):
    args = ["relevance", "-m", str(models["good"]), "-d", str(beir), "--calibration", "3"]
    assert main([*args, "--max-length", "8", "-o", str(tmp_path / "r")]) == 0
    source = json.loads((tmp_path / "r" / "component_relevance.json").read_text())["source"]
    assert source["truncation"]["inputs"] == 3
    assert source["truncation"]["truncated"] == 3
    assert source["truncation"]["max_length"] == 8
    assert "3 of 3 inputs (100.0%) truncated to 8 tokens" in caplog.text


def test_patch_reports_truncation(models, beir, tmp_path, capsys):
    args = ["patch", "-m", str(models["good"]), "-d", str(beir), "--pairs", "3"]
    args += ["--corruption", "query-terms"]
    assert main([*args, "--max-length", "20", "-o", str(tmp_path), "-q"]) == 0, capsys.readouterr()
    truncation = json.loads((tmp_path / "patching.json").read_text())["truncation"]
    assert truncation["max_length"] == 20
    assert 0 < truncation["truncated"] <= truncation["inputs"]


def test_parity_reports_truncation(models):
    from relcomp.export.parity import check_parity

    reference = load_model(models["good"], max_length=10)
    candidate = load_model(models["good"], max_length=10)
    groups = {"q0": (QUERIES[0], [DOCUMENTS[0], LONG_DOCUMENT])}
    report = check_parity(reference, candidate, groups)
    assert report.source["truncation"]["reference"]["truncated"] >= 1
    assert report.source["truncation"]["candidate"]["inputs"] == 2


# -- a new run leaves no file of an earlier one ---------------------------------------------------
def test_explain_removes_figures_of_an_earlier_explanation(models, tmp_path):
    out = tmp_path / "out"
    stale = out / "figures" / "explanation_interactions_7.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's figure")
    args = ["explain", "-m", str(models["good"]), "-q", QUERIES[1], "-p", DOCUMENTS[2]]
    assert main([*args, "-o", str(out), "--quiet"]) == 0
    assert not stale.exists()
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["explanation_tokens_1.png"]


def test_a_dev_split_that_is_the_test_split_is_refused(models, beir, tmp_path, capsys) -> None:
    (beir / "qrels" / "dev.tsv").unlink()
    (beir / "qrels" / "dev.tsv").symlink_to("test.tsv")
    before = _snapshot(tmp_path)
    relevance = ["relevance", "-m", str(models["good"]), "-d", str(beir), "--split", "dev"]
    assert main([*relevance, "-o", str(tmp_path / "out"), "--quiet"]) == 2
    assert "must not come from the test split" in capsys.readouterr().err
    compress = ["compress", "-m", str(models["good"]), "-d", str(beir), "--budget", "6bits"]
    assert main([*compress, "--calibration-split", "dev", "-o", str(tmp_path / "out")]) == 2
    assert "is the evaluated split" in capsys.readouterr().err
    assert main([*compress, "-o", str(tmp_path / "out"), "--quiet"]) == 2
    assert "no dev or train split to calibrate on" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("method", ["attnlrp", "saliency"])
def test_a_bi_encoder_explanation_says_it_was_truncated(tiny_model_path, method: str) -> None:
    from relcomp.pipeline import explain

    model = load_model(tiny_model_path("bert", "bi-encoder"), max_length=12)
    assert explain(model, QUERIES[0], LONG_DOCUMENT, method=method).truncated is True
    assert explain(model, QUERIES[0], "a cat", method=method).truncated is False


# -- Ray: asked for without the extra ----------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        (["evaluate", "-m", "{model}", "-d", "{data}", "--ray"], {}, "--ray"),
        (["evaluate", "-m", "{model}", "-d", "{data}", "--ray", "auto", "--workers", "2"], {}, "--ray"),
        (["evaluate", "-m", "{model}", "-d", "{data}"], {"RELCOMP_RAY": "local"}, "RELCOMP_RAY"),
        (["compress", "-m", "{model}", "-d", "{data}", "--budget", "6bits", "-o", "{out}", "--ray"], {}, "--ray"),
    ],
)  # fmt: skip
def test_ray_without_the_extra_is_one_message_naming_it(
    models, beir: Path, tmp_path: Path, capsys, monkeypatch, argv, environ, named
) -> None:
    import relcomp.distributed.settings

    monkeypatch.setattr(relcomp.distributed.settings, "ray_available", lambda: False)
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    values = {"model": str(models["good"]), "data": str(beir), "out": str(tmp_path / "out")}
    before = _snapshot(tmp_path)
    status = main([*(a.format(**values) for a in argv), "--quiet"])
    error = capsys.readouterr().err
    assert status == 2, error
    assert f"{named} needs Ray, which is not installed: pip install 'relcomp[ray]'" in error
    assert error.count("error:") == 1 and "Traceback" not in error
    assert _snapshot(tmp_path) == before


def test_workers_without_ray_is_refused(models, beir: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("RELCOMP_RAY", raising=False)
    status = main(["evaluate", "-m", "bm25", "-d", str(beir), "--workers", "2", "--quiet"])
    assert status == 2
    assert "--workers needs --ray" in capsys.readouterr().err
