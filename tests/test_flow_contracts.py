"""The JSON files a compress run writes are contracts: their keys never change by accident.

Each written JSON file's key paths (nested keys joined by ``.``, list items as ``[]``)
are compared with ``tests/data/flow_keys.json``, recorded from the flow before the
spine was refactored (issue 30). Set ``RELCOMP_RECORD_KEYS=1`` to record it again
after a deliberate change to a file's format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from relcomp import pipeline
from relcomp.artifacts import PlansTried, QualityComparison, SpeedReport
from tests.test_flow import _compress, toy  # noqa: F401  (toy is a fixture)

RECORDED = Path(__file__).parent / "data" / "flow_keys.json"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a JSON value: ``a.b`` for nested objects, ``a.[]`` for list items.

    Example:
        >>> sorted(key_paths({"a": {"b": 1}, "c": [{"d": 2}]}))
        ['a', 'a.b', 'c', 'c.[]', 'c.[].d']
    """
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}{key}"
            paths |= {path} | key_paths(item, path + ".")
    elif isinstance(value, list):
        for item in value:
            paths |= {f"{prefix}[]"} | key_paths(item, prefix + "[].")
    return paths


#: Files relcomp does not own the format of (transformers and sentence-transformers
#: write them), and ``run.json``, whose keys are the run's file names.
_NOT_OURS = {
    "1_Pooling/config.json",
    "config.json",
    "config_sentence_transformers.json",
    "modules.json",
    "run.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


def _written(folder: Path) -> dict[str, list[str]]:
    return {
        str(path.relative_to(folder)): sorted(key_paths(json.loads(path.read_text())))
        for path in sorted(folder.rglob("*.json"))
        if str(path.relative_to(folder)) not in _NOT_OURS
    }


def test_compress_writes_json_files_with_the_recorded_keys(
    tiny_model_path,
    toy: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    folders = {
        "one budget": _compress(tiny_model_path("bert"), toy, tmp_path / "one").output_dir,
        "several budgets": _compress(
            tiny_model_path("bert", "bi-encoder"),
            toy,
            tmp_path / "several",
            budget=["bits_per_weight=6", "bits_per_weight=8"],
        ).output_dir,
    }
    runs = {run: _written(folder) for run, folder in folders.items()}
    # the end of the flow's files read as their typed artifacts and write back the same JSON
    typed = {
        "quality.json": QualityComparison,
        "evaluation/speed.json": SpeedReport,
        "evaluation/candidates.json": PlansTried,
    }
    for folder in folders.values():
        for name, artifact in typed.items():
            if (folder / name).is_file():
                written = json.loads((folder / name).read_text())
                assert artifact.load(folder / name).to_dict() == written, name
    if os.environ.get("RELCOMP_RECORD_KEYS"):
        RECORDED.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(RECORDED.read_text())
    assert sorted(runs) == sorted(recorded)
    for run, files in runs.items():
        assert sorted(files) == sorted(recorded[run]), run
        for name, keys in files.items():
            assert keys == recorded[run][name], f"{run}: {name}"
    assert pipeline  # the flow under test
