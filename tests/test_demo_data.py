"""The demo collection shipped inside relcomp: valid BEIR, small, with its provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from relcomp.data import DEMO_NAME, demo_path
from relcomp.evaluation import available_splits, load_beir
from tests.fixtures import assets_dir

DEMO = demo_path()


def test_demo_is_a_valid_beir_folder_with_train_and_test() -> None:
    assert available_splits(DEMO) == ["test", "train"]
    test = load_beir(DEMO, "test", name=DEMO_NAME)
    train = load_beir(DEMO, "train", name=DEMO_NAME)
    assert len(test.split_queries) == 60 and len(train.split_queries) == 60
    # calibration and the gate (train) never see a reported (test) query
    assert not set(test.split_queries) & set(train.split_queries)
    assert 1500 <= len(test.corpus) <= 2500


def test_demo_is_small_enough_to_ship() -> None:
    total = sum(path.stat().st_size for path in DEMO.rglob("*") if path.is_file())
    assert total <= 5_000_000, f"{total:,} bytes"


def test_demo_states_its_provenance_and_licence() -> None:
    readme = (DEMO / "README.md").read_text(encoding="utf-8")
    assert "CC BY-NC 2.0" in readme and "make_demo" in readme
    provenance = json.loads((DEMO / "PROVENANCE").read_text(encoding="utf-8"))
    assert provenance["source"]["licence"].startswith("CC BY-NC 2.0")
    assert provenance["derivation"]["seed"] == 13
    # the recorded checksums are those of the files shipped
    for name, entry in provenance["files"].items():
        data = (DEMO / name).read_bytes()
        assert len(data) == entry["bytes"], name
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name


@pytest.mark.slow
def test_make_demo_reproduces_the_shipped_files(tmp_path: Path) -> None:
    from relcomp.data.make_demo import make_demo

    source = assets_dir() / "beir" / "scifact"
    if not source.is_dir():
        pytest.skip(f"{source} is not there")
    make_demo(source, tmp_path / "demo")
    for name in (
        "corpus.jsonl",
        "queries.jsonl",
        "qrels/test.tsv",
        "qrels/train.tsv",
        "PROVENANCE",
    ):
        assert (tmp_path / "demo" / name).read_bytes() == (DEMO / name).read_bytes(), name
