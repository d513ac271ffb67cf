from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest

from relcomp.errors import DataFormatError, RelcompError
from relcomp.evaluation import BeirDataset, available_splits, load_beir

HEADER = "query-id\tcorpus-id\tscore\n"


def test_loads_a_valid_folder(toy_path: Path) -> None:
    dataset = load_beir(toy_path, "test")
    assert dataset.name == "toy"
    assert dataset.split == "test"
    assert list(dataset.corpus) == ["d1", "d2", "d3", "d4"]
    assert dataset.corpus["d4"] == ("", "Fish swim in the sea.")
    assert dict(dataset.queries) == {"q1": "why do cats purr", "q2": "barking dogs", "q3": "fish"}
    assert {qid: dict(docs) for qid, docs in dataset.qrels.items()} == {
        "q1": {"d1": 1, "d3": 2},
        "q2": {"d2": 1},
    }
    # Only the judged queries of the split are evaluated; q3 is in no judgement.
    assert dict(dataset.split_queries) == {"q1": "why do cats purr", "q2": "barking dogs"}
    assert dataset.sorted_doc_ids == ("d1", "d2", "d3", "d4")
    assert "toy" in repr(dataset)


def test_document_text_is_title_space_text(toy_path: Path) -> None:
    dataset = load_beir(toy_path)
    assert dataset.document_text("d1") == "Cats Cats purr when they are happy."
    assert dataset.document_text("d2") == "Dogs bark at the postman."  # empty title
    assert dataset.document_text("d4") == "Fish swim in the sea."  # no title key


def test_dataset_is_read_only(toy_path: Path) -> None:
    dataset = load_beir(toy_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        dataset.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        dataset.corpus["d9"] = ("", "x")  # type: ignore[index]
    with pytest.raises(TypeError):
        dataset.qrels["q1"]["d2"] = 1  # type: ignore[index]


def test_file_identity_is_recorded(toy_path: Path) -> None:
    dataset = load_beir(toy_path)
    stamp = dataset.corpus_identity()["corpus.jsonl"]
    assert stamp["size"] == (toy_path / "corpus.jsonl").stat().st_size
    assert stamp["sha256"] == hashlib.sha256((toy_path / "corpus.jsonl").read_bytes()).hexdigest()


def test_blank_lines_and_integer_ids_are_accepted(tmp_path: Path, beir_writer, to_jsonl) -> None:
    corpus = (
        to_jsonl([{"_id": 7, "text": "seven"}])
        + "\n"
        + to_jsonl([{"_id": "d8", "title": None, "text": "x"}])
    )
    root = beir_writer(tmp_path / "b", corpus=corpus, qrels={"test": HEADER + "q1\t7\t1\n\n"})
    dataset = load_beir(root)
    assert list(dataset.corpus) == ["7", "d8"]
    assert dataset.document_text("d8") == "x"


def test_available_splits(tmp_path: Path, beir_writer) -> None:
    root = beir_writer(
        tmp_path / "b", qrels={"test": HEADER + "q1\td1\t1\n", "dev": HEADER + "q2\td2\t1\n"}
    )
    assert available_splits(root) == ["dev", "test"]
    assert dict(load_beir(root, "dev").split_queries) == {"q2": "barking dogs"}


# -- every malformed input names its file and line --------------------------------------
GOOD_DOC = '{"_id": "d1", "title": "t", "text": "x"}\n'
GOOD_QUERY = '{"_id": "q1", "text": "x"}\n'

BAD_JSONL = [
    ("malformed JSON", '{"_id": "d2", "text": \n', 2, "invalid JSON"),
    ("not an object", '["d2", "x"]\n', 2, "expected a JSON object, found list"),
    ("missing _id", '{"text": "x"}\n', 2, "missing '_id'"),
    ("empty _id", '{"_id": "  ", "text": "x"}\n', 2, "empty '_id'"),
    ("non-string _id", '{"_id": ["a"], "text": "x"}\n', 2, "'_id' must be a string"),
    ("duplicate _id", '{"_id": "d1", "text": "y"}\n', 2, "duplicate _id 'd1' (first on line 1)"),
    ("missing text", '{"_id": "d2", "title": "t"}\n', 2, "missing 'text'"),
    ("non-string text", '{"_id": "d2", "text": 3}\n', 2, "'text' must be a string"),
]


@pytest.mark.parametrize(
    ("case", "second_line", "line", "problem"), BAD_JSONL, ids=[c[0] for c in BAD_JSONL]
)
@pytest.mark.parametrize("which", ["corpus.jsonl", "queries.jsonl"])
def test_bad_jsonl_lines(
    tmp_path: Path, beir_writer, which: str, case: str, second_line: str, line: int, problem: str
) -> None:
    first = GOOD_DOC if which == "corpus.jsonl" else GOOD_QUERY
    if which == "queries.jsonl":
        second_line = second_line.replace('"d', '"q')
        problem = problem.replace("'d1'", "'q1'")
    files = {"corpus": GOOD_DOC, "queries": GOOD_QUERY}
    files[which.removesuffix(".jsonl")] = first + second_line
    root = beir_writer(tmp_path / "b", qrels={"test": HEADER + "q1\td1\t1\n"}, **files)
    with pytest.raises(DataFormatError) as caught:
        load_beir(root)
    assert caught.value.path == root / which
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{root / which}:{line}: ")
    assert problem in str(caught.value)


def test_non_string_title(tmp_path: Path, beir_writer) -> None:
    root = beir_writer(tmp_path / "b", corpus='{"_id": "d1", "title": 5, "text": "x"}\n')
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:1: 'title' must be a string"):
        load_beir(root)


def test_invalid_utf8(tmp_path: Path, beir_writer) -> None:
    root = beir_writer(tmp_path / "b")
    (root / "queries.jsonl").write_bytes(GOOD_QUERY.encode() + b'{"_id": "q2", "text": "\xff"}\n')
    with pytest.raises(DataFormatError, match=r"queries\.jsonl:2: "):
        load_beir(root)


@pytest.mark.parametrize("which", ["corpus.jsonl", "queries.jsonl"])
@pytest.mark.parametrize("content", ["", "\n  \n"], ids=["empty", "blank lines"])
def test_empty_jsonl(tmp_path: Path, beir_writer, which: str, content: str) -> None:
    root = beir_writer(tmp_path / "b", **{which.removesuffix(".jsonl"): content})
    with pytest.raises(DataFormatError, match=re.escape(f"{which}:1: file is empty")):
        load_beir(root)


BAD_QRELS = [
    (
        "wrong header",
        "query\tdoc\tscore\nq1\td1\t1\n",
        1,
        "expected the header 'query-id\\tcorpus-id\\tscore'",
    ),
    ("missing header", "q1\td1\t1\n", 1, "expected the header"),
    ("empty file", "", 1, "file is empty"),
    ("header only", HEADER, 2, "no judgements after the header"),
    ("two columns", HEADER + "q1\td1\t1\nq2\td2\n", 3, "expected 3 tab-separated columns"),
    ("four columns", HEADER + "q1\td1\t1\t0\n", 2, "found 4"),
    ("spaces not tabs", HEADER + "q1 d1 1\n", 2, "found 1"),
    ("float score", HEADER + "q1\td1\t1.0\n", 2, "score '1.0' is not an integer"),
    ("empty score", HEADER + "q1\td1\t\n", 2, "score '' is not an integer"),
    (
        "unknown query",
        HEADER + "q1\td1\t1\nq9\td1\t1\n",
        3,
        "query id 'q9' is not in queries.jsonl",
    ),
    ("unknown document", HEADER + "q1\td9\t1\n", 2, "document id 'd9' is not in corpus.jsonl"),
    ("duplicate judgement", HEADER + "q1\td1\t1\nq1\td1\t2\n", 3, "duplicate judgement"),
]


@pytest.mark.parametrize(
    ("case", "text", "line", "problem"), BAD_QRELS, ids=[c[0] for c in BAD_QRELS]
)
def test_bad_qrels(
    tmp_path: Path, beir_writer, case: str, text: str, line: int, problem: str
) -> None:
    root = beir_writer(tmp_path / "b", qrels={"test": text})
    qrels_file = root / "qrels" / "test.tsv"
    with pytest.raises(DataFormatError) as caught:
        load_beir(root, "test")
    assert caught.value.path == qrels_file
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{qrels_file}:{line}: ")
    assert problem in str(caught.value)


def test_windows_line_endings_are_accepted(tmp_path: Path, beir_writer) -> None:
    root = beir_writer(
        tmp_path / "b", qrels={"test": HEADER.replace("\n", "\r\n") + "q1\td1\t1\r\n"}
    )
    assert dict(load_beir(root).qrels["q1"]) == {"d1": 1}


def test_missing_split_names_the_available_ones(tmp_path: Path, beir_writer) -> None:
    root = beir_writer(
        tmp_path / "b", qrels={"test": HEADER + "q1\td1\t1\n", "train": HEADER + "q2\td2\t1\n"}
    )
    with pytest.raises(DataFormatError) as caught:
        load_beir(root, "dev")
    message = str(caught.value)
    assert str(root / "qrels" / "dev.tsv") in message
    assert "no split 'dev'; available splits: test, train" in message


@pytest.mark.parametrize("which", ["corpus.jsonl", "queries.jsonl"])
def test_missing_file(tmp_path: Path, beir_writer, which: str) -> None:
    root = beir_writer(tmp_path / "b")
    (root / which).unlink()
    with pytest.raises(DataFormatError, match=re.escape(f"{which}: file not found")):
        load_beir(root)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no such BEIR folder"):
        load_beir(tmp_path / "nowhere")


def test_errors_are_relcomp_errors_and_nothing_is_returned(tmp_path: Path, beir_writer) -> None:
    # The error comes from the last file read: a half-built dataset must not escape.
    root = beir_writer(tmp_path / "b", qrels={"test": HEADER + "q1\td1\t1\nq1\td9\t1\n"})
    result = None
    with pytest.raises(RelcompError):
        result = load_beir(root)
    assert result is None


def test_dataset_can_be_built_directly() -> None:
    dataset = BeirDataset(
        "x", Path("x"), "test", {"d1": ("T", "body")}, {"q1": "q"}, {"q1": {"d1": 1}}
    )
    assert dataset.document_text("d1") == "T body"
    assert dataset.corpus_identity()["corpus.jsonl"] == {}


def test_queries_file_extra_fields_are_ignored(tmp_path: Path, beir_writer) -> None:
    queries = (
        json.dumps({"_id": "q1", "text": "x", "metadata": {"a": [1, 2]}, "extra": None}) + "\n"
    )
    queries += json.dumps({"_id": "q2", "text": "y"}) + "\n"
    root = beir_writer(tmp_path / "b", queries=queries)
    assert dict(load_beir(root).queries) == {"q1": "x", "q2": "y"}


def test_datasets_hash_by_identity(toy_path: Path) -> None:
    first, second = load_beir(toy_path), load_beir(toy_path)
    assert {first: 1, second: 2}[first] == 1
    assert first != second
