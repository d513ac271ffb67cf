"""The checks of :mod:`relcomp.checks`: non-finite numbers never pass, outputs are tested first.

The property-based tests feed generated non-finite values into every place a
number can enter a result (model scores, relevance, a run's scores, parity figures,
the gate's loss) and assert that the check stops it.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relcomp.artifacts import ComponentRelevance, QualityReport, TokenRelevance
from relcomp.checks import (
    check_model_argument,
    check_output_location,
    check_texts,
    check_weights_finite,
    looks_like_path,
    require_finite,
    require_finite_tree,
)
from relcomp.errors import ModelLoadError, NonFiniteError, OutputLocationError, RelcompError
from relcomp.evaluation import quality_report
from relcomp.evaluation.beir import BeirDataset
from relcomp.evaluation.gate import GateResult
from relcomp.export.parity import check_parity

NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def with_one_non_finite(draw: st.DrawFn, min_size: int = 1) -> list[float]:
    """A list of finite floats with one non-finite value at a drawn position."""
    values = draw(st.lists(FINITE, min_size=min_size, max_size=20))
    position = draw(st.integers(min_value=0, max_value=len(values)))
    return [*values[:position], draw(NON_FINITE), *values[position:]]


# -- require_finite --------------------------------------------------------------------------
@given(with_one_non_finite())
def test_require_finite_stops_any_non_finite_value(values: list[float]) -> None:
    with pytest.raises(NonFiniteError, match=r"1 of \d+ values are not finite"):
        require_finite(values, "scores")
    with pytest.raises(NonFiniteError):
        require_finite(np.asarray(values, dtype=np.float32), "scores")


@given(st.lists(FINITE, max_size=20))
def test_require_finite_passes_finite_values(values: list[float]) -> None:
    require_finite(values, "scores")


def test_require_finite_counts_null_as_non_finite() -> None:
    with pytest.raises(NonFiniteError, match="relevance: 1 of 2"):
        require_finite([0.5, None], "relevance")
    with pytest.raises(NonFiniteError, match="missing"):
        require_finite(None, "score")


def test_require_finite_reads_torch_tensors() -> None:
    import torch

    with pytest.raises(NonFiniteError, match="2 of 3"):
        require_finite(torch.tensor([1.0, float("nan"), float("inf")]), "logits")


@given(NON_FINITE, st.sampled_from(["max_abs_diff", "kendall_tau", "tie_rate_candidate"]))
def test_require_finite_tree_names_the_key(value: float, key: str) -> None:
    payload = {"n_pairs": 4, "per_query": {"q1": {key: value}}, "source": {"split": "dev"}}
    with pytest.raises(NonFiniteError, match=f"per_query.q1.{key} is not finite"):
        require_finite_tree(payload, "parity")


# -- scores, relevance, runs, parity and the gate --------------------------------------------
class _FixedScorer:
    """A Scorer that returns the scores it was built with."""

    def __init__(self, name: str, scores: list[float]) -> None:
        self.name = name
        self.cache_key = name
        self.scores = np.asarray(scores, dtype=np.float32)

    def score(self, queries, documents, batch_size=32, show_progress_bar=None):
        return self.scores[: len(queries)]


@settings(max_examples=40, deadline=None)
@given(with_one_non_finite(min_size=1), st.booleans())
def test_parity_never_passes_on_non_finite_scores(values: list[float], on_candidate: bool) -> None:
    finite = _FixedScorer("finite", [0.0] * len(values))
    broken = _FixedScorer("broken", values)
    reference, candidate = (finite, broken) if on_candidate else (broken, finite)
    groups = {"q1": ("query", [f"document {i}" for i in range(len(values))])}
    with pytest.raises(NonFiniteError, match="parity: scores of broken"):
        check_parity(reference, candidate, groups)


def _toy_dataset(n: int) -> BeirDataset:
    corpus = {f"d{i}": ("", f"text {i}") for i in range(n)}
    return BeirDataset("toy", Path("toy"), "test", corpus, {"q1": "query"}, {"q1": {"d0": 1}})


@settings(max_examples=40, deadline=None)
@given(with_one_non_finite(min_size=1))
def test_a_run_with_non_finite_scores_gives_no_quality_report(values: list[float]) -> None:
    dataset = _toy_dataset(len(values))
    run = {"q1": {f"d{i}": value for i, value in enumerate(values)}}
    with pytest.raises(NonFiniteError, match="m: scores of query 'q1'"):
        quality_report("m", dataset, run, ["nDCG@10"])


@settings(max_examples=40, deadline=None)
@given(with_one_non_finite(min_size=1), st.sampled_from(["mean_abs", "mean_signed"]))
def test_component_relevance_refuses_non_finite_statistics(
    values: list[float], statistic: str
) -> None:
    entry = {"mean_abs": [1.0] * len(values), "mean_signed": [1.0] * len(values), "count": 4}
    entry[statistic] = values
    with pytest.raises(NonFiniteError, match=f"head layer.0 \\({statistic}\\)"):
        ComponentRelevance("m", "AttnLRP", 4, {"head": {"layer.0": entry}})


def test_component_relevance_read_back_with_nulls_is_refused(tmp_path: Path) -> None:
    good = ComponentRelevance(
        "m", "AttnLRP", 1, {"layer": {"l0": {"mean_abs": [1.0], "mean_signed": [1.0]}}}
    )
    text = good.to_json().replace("1.0", "null", 1)
    with pytest.raises(NonFiniteError, match="layer l0"):
        ComponentRelevance.from_json(text)


@settings(max_examples=30, deadline=None)
@given(NON_FINITE, st.sampled_from(["score", "relevance", "word_relevance", "conservation_error"]))
def test_token_relevance_refuses_non_finite_values(value: float, field: str) -> None:
    fields = {
        "score": 1.0,
        "relevance": (0.5, 0.5),
        "word_relevance": (0.5, 0.5),
        "conservation_error": 0.0,
    }
    fields[field] = value if field in ("score", "conservation_error") else (0.5, value)
    with pytest.raises(NonFiniteError):
        TokenRelevance(
            method="AttnLRP",
            query="q",
            document="d",
            tokens=("q", "d"),
            segment=(0, 1),
            words=("q", "d"),
            word_segment=(0, 1),
            **fields,
        )


def _report(ndcg: float) -> QualityReport:
    return QualityReport("m", "toy", "dev", {"nDCG@10": ndcg}, {}, 1)


@given(NON_FINITE, st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_the_gate_never_passes_on_a_non_finite_loss(loss: float, allowance: float) -> None:
    result = GateResult(_report(1.0), _report(1.0), "dev", loss, allowance)
    assert result.passed is False


# -- weights -----------------------------------------------------------------------------------
def test_weights_check_names_the_tensor() -> None:
    tensors = [("a.weight", np.ones((2, 2))), ("b.bias", np.array([1.0, np.inf]))]
    with pytest.raises(NonFiniteError, match=r"weight 'b\.bias' holds 1 non-finite value"):
        check_weights_finite(tensors, "model/")
    check_weights_finite([("ids", np.array([1, 2], dtype=np.int64))], "model/")


# -- texts and paths ---------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", " ", "\t\n"])
def test_empty_text_is_refused(text: str) -> None:
    with pytest.raises(RelcompError, match="the query is empty"):
        check_texts([text], "the query")


@pytest.mark.parametrize(
    ("name", "local"),
    [("./m", True), ("/m", True), ("~/m", True), ("a/b/c", True), ("org/model", False)],
)
def test_what_looks_like_a_path(name: str, local: bool) -> None:
    assert looks_like_path(name) is local


def test_a_missing_path_is_reported_before_any_hub_lookup(monkeypatch) -> None:
    import huggingface_hub

    def no_hub(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    for name in ("./nope", "~/relcomp-no-such-model", "runs/x/model"):
        with pytest.raises(ModelLoadError, match="no such model folder"):
            check_model_argument(name)


def test_an_output_folder_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(OutputLocationError, match="is a file"):
        check_output_location(tmp_path / "taken")
    with pytest.raises(OutputLocationError, match="taken is a file, not a folder"):
        check_output_location(tmp_path / "taken" / "sub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_an_unwritable_output_is_refused_and_nothing_is_created(
    tmp_path: Path, monkeypatch
) -> None:
    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputLocationError, match="not writable"):
        check_output_location(tmp_path / "new" / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:  # pragma: no cover - not root
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputLocationError):
            check_output_location(folder / "out")
    finally:
        folder.chmod(0o755)


def test_a_writable_output_leaves_no_probe(tmp_path: Path) -> None:
    assert check_output_location(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []


# -- a real model whose output overflows ------------------------------------------------------
@functools.cache
def _tiny_cross_encoder_path() -> Path:
    import tempfile

    from tests.fixtures import make_tiny_model_dir

    return make_tiny_model_dir(Path(tempfile.mkdtemp()), "bert", "cross-encoder")


@settings(max_examples=6, deadline=None)
@given(NON_FINITE)
def test_a_model_whose_scores_overflow_stops_scoring(value: float) -> None:
    import torch

    from relcomp.models import load_model

    model = load_model(_tiny_cross_encoder_path())
    with torch.no_grad():
        model.model.classifier.bias.fill_(value)
    with pytest.raises(NonFiniteError, match="scores: 2 of 2 values are not finite"):
        model.score(["what is a cat", "what causes rain"], ["a cat", "rain falls"])


def test_non_finite_activation_statistics_stop_calibration() -> None:
    import torch

    from relcomp.compression import calibration_features, collect_activation_statistics
    from relcomp.models import load_model

    model = load_model(_tiny_cross_encoder_path())
    with torch.no_grad():  # damaged after loading, past the load-time check
        model.model.bert.embeddings.LayerNorm.bias.fill_(math.inf)
    features = calibration_features(model, ["what is a cat"], ["a cat is an animal"])
    with pytest.raises(NonFiniteError, match="activation statistics of"):
        collect_activation_statistics(model, features)
