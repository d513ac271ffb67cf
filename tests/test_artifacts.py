"""Artifacts: JSON round trips, atomic save/load, and errors that name the file."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relcomp.artifacts import (
    ComponentRelevance,
    QualityReport,
    TokenInteractions,
    TokenRelevance,
)
from relcomp.errors import DataFormatError


def token_relevance() -> TokenRelevance:
    return TokenRelevance(
        method="AttnLRP",
        query="what is a cat",
        document="a cat is an animal",
        score=np.float32(2.5),
        tokens=[
            "[CLS]",
            "what",
            "is",
            "a",
            "cat",
            "[SEP]",
            "a",
            "cat",
            "is",
            "an",
            "animal",
            "[SEP]",
        ],
        relevance=np.array([0.0, 0.1, -0.05, 0.0, 0.9, 0.0, 0.02, 0.8, -0.1, 0.0, 0.6, 0.0]),
        segment=[-1, 0, 0, 0, 0, -1, 1, 1, 1, 1, 1, -1],
        words=["what", "is", "a", "cat", "a", "cat", "is", "an", "animal"],
        word_relevance=[0.1, -0.05, 0.0, 0.9, 0.02, 0.8, -0.1, 0.0, 0.6],
        word_segment=[0, 0, 0, 0, 1, 1, 1, 1, 1],
        conservation_error=0.27,
    )


def component_relevance() -> ComponentRelevance:
    return ComponentRelevance(
        model="tiny-bert",
        method="AttnLRP",
        n_pairs=16,
        components={
            "head": {
                "bert.encoder.layer.0": {
                    "mean_abs": np.array([0.5, 0.25, 0.125, 1.0]),
                    "mean_signed": [0.5, -0.25, 0.125, 1.0],
                    "count": 16,
                },
            },
            "mlp": {
                "bert.encoder.layer.0": {"mean_abs": [2.0], "mean_signed": [-1.5], "count": 16},
                "bert.encoder.layer.1": {"mean_abs": [0.5], "mean_signed": [0.5], "count": 16},
            },
        },
        source={"dataset": "scifact", "split": "train", "seed": 0},
    )


def token_interactions() -> TokenInteractions:
    return TokenInteractions(
        method="BiLRP",
        query="a cat",
        document="cats sleep",
        score=0.75,
        query_tokens=["a", "cat"],
        document_tokens=["cats", "sleep"],
        interactions=np.array([[0.05, 0.0], [0.6, 0.1]]),
        conservation_error=0.0,
    )


def quality_report(**changes: object) -> QualityReport:
    values = {
        "model": "tiny-bert",
        "dataset": "scifact",
        "split": "test",
        "measures": {"nDCG@10": 0.61, "RR@10": 0.55},
        "per_query": {"q1": {"nDCG@10": 1.0, "RR@10": 1.0}, "q2": {"nDCG@10": 0.22, "RR@10": 0.1}},
        "n_queries": 2,
        "first_stage": "bm25",
        "depth": 30,
        "max_length": 256,
        "tie_rate": 0.05,
        "truncation": {"inputs": 60, "truncated": 3},
        "settings": {"batch_size": 32},
    }
    return QualityReport(**{**values, **changes})


ARTIFACTS = [
    pytest.param(token_relevance, id="TokenRelevance"),
    pytest.param(token_interactions, id="TokenInteractions"),
    pytest.param(component_relevance, id="ComponentRelevance"),
    pytest.param(quality_report, id="QualityReport"),
]


@pytest.mark.parametrize("make", ARTIFACTS)
def test_json_round_trip_gives_an_equal_artifact(make):
    artifact = make()
    again = type(artifact).from_json(artifact.to_json())
    assert again == artifact
    assert again.to_json() == artifact.to_json()
    payload = json.loads(artifact.to_json())
    assert payload["kind"] == type(artifact).KIND
    assert payload["version"] == type(artifact).VERSION


def test_numpy_values_become_plain_immutable_python_values():
    artifact = token_relevance()
    assert type(artifact.score) is float
    assert isinstance(artifact.relevance, tuple)
    assert all(type(value) is float for value in artifact.relevance)
    with pytest.raises(dataclasses.FrozenInstanceError):
        artifact.score = 0.0  # type: ignore[misc]


def test_non_finite_numbers_are_written_as_null():
    payload = json.loads(quality_report(measures={"nDCG@10": float("nan")}).to_json())
    assert payload["measures"] == {"nDCG@10": None}


def test_artifact_helpers_read_their_fields():
    assert token_relevance().top_words(segment=1, k=2) == [("cat", 0.8), ("animal", 0.6)]
    components = component_relevance()
    assert components.kinds() == ["head", "mlp"]
    heads = components.by_kind("head")
    np.testing.assert_array_equal(heads["bert.encoder.layer.0"], [0.5, 0.25, 0.125, 1.0])
    assert list(components.by_kind("mlp", "mean_signed")) == [
        "bert.encoder.layer.0",
        "bert.encoder.layer.1",
    ]
    assert token_interactions().top_pairs(k=1) == [("cat", "cats", 0.6)]


finite = st.floats(allow_nan=False, allow_infinity=False)
measure_names = st.sampled_from(["nDCG@10", "RR@10", "R@100", "AP", "P@5"]) | st.text(min_size=1)


@settings(deadline=None, database=None, max_examples=60)
@given(
    measures=st.dictionaries(measure_names, finite, max_size=6),
    per_query=st.dictionaries(
        st.text(min_size=1, max_size=12),
        st.dictionaries(measure_names, finite, max_size=4),
        max_size=5,
    ),
    n_queries=st.integers(min_value=0, max_value=10**6),
    depth=st.none() | st.integers(min_value=1, max_value=1000),
    tie_rate=st.floats(min_value=0.0, max_value=1.0),
)
def test_quality_report_round_trip_for_generated_measures(
    measures, per_query, n_queries, depth, tie_rate
):
    report = quality_report(
        measures=measures, per_query=per_query, n_queries=n_queries, depth=depth, tie_rate=tie_rate
    )
    assert QualityReport.from_json(report.to_json()) == report


# -- save and load -------------------------------------------------------------------------
@pytest.mark.parametrize("make", ARTIFACTS)
def test_save_then_load_leaves_one_file_and_an_equal_artifact(tmp_path, make):
    artifact = make()
    path = artifact.save(tmp_path / "out" / "artifact.json")
    assert path == tmp_path / "out" / "artifact.json"
    assert type(artifact).load(path) == artifact
    assert [p.name for p in path.parent.iterdir()] == ["artifact.json"]


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "report.json"
    quality_report(n_queries=1).save(path)
    quality_report(n_queries=2).save(path)
    assert QualityReport.load(path).n_queries == 2
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    quality_report(n_queries=1).save(path)

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        quality_report(n_queries=2).save(path)
    monkeypatch.undo()
    assert QualityReport.load(path).n_queries == 1
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


# -- malformed files --------------------------------------------------------------------------
def write_payload(path, change):
    payload = json.loads(quality_report().to_json())
    change(payload)
    path.write_text(json.dumps(payload))
    return path


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param(
            lambda p: p.update(kind="token_relevance"), "found 'token_relevance'", id="wrong-kind"
        ),
        pytest.param(
            lambda p: p.update(version=99), "version 99 is not supported", id="wrong-version"
        ),
        pytest.param(lambda p: p.pop("version"), "version None", id="no-version"),
        pytest.param(lambda p: p.update(colour="red"), "unknown keys ['colour']", id="unknown-key"),
        pytest.param(lambda p: p.pop("n_queries"), "missing keys ['n_queries']", id="missing-key"),
    ],
)
def test_malformed_artifact_is_a_data_format_error_naming_the_file(tmp_path, change, problem):
    path = write_payload(tmp_path / "report.json", change)
    with pytest.raises(DataFormatError) as error:
        QualityReport.load(path)
    assert str(error.value).startswith(f"{path}: ")
    assert problem in str(error.value)
    assert error.value.path == path


def test_loading_another_artifact_kind_is_refused(tmp_path):
    path = token_relevance().save(tmp_path / "tokens.json")
    with pytest.raises(DataFormatError, match="expected a 'component_relevance' artifact") as error:
        ComponentRelevance.load(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param('{"kind": "quality_report",\n  "version": 1,\n  oops}', 3, id="invalid"),
        pytest.param("", 1, id="empty"),
        pytest.param("[1, 2]", 1, id="not-an-object"),
    ],
)
def test_invalid_json_names_the_file_and_line(tmp_path, text, line):
    path = tmp_path / "report.json"
    path.write_text(text)
    with pytest.raises(DataFormatError) as error:
        QualityReport.load(path)
    assert str(error.value).startswith(f"{path}:{line}: ")
    assert error.value.line == line


def test_missing_file_is_a_data_format_error(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(DataFormatError, match="cannot read") as error:
        QualityReport.load(path)
    assert str(path) in str(error.value)
