"""A collection with only a test split: pseudo-query calibration and the agreement gate.

The collection is the recovery tests' tiny BEIR folder without its train split, so
relevance, plans and recovery calibrate on corpus pseudo-queries and the gate checks
agreement with the uncompressed model; the test queries are only evaluated.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from relcomp import cli, pipeline
from relcomp.artifacts import EXPORT_BUNDLE_FILE, AgreementGate, RecoveryLog
from relcomp.evaluation import (
    PSEUDO_SPLIT,
    agreement_queries,
    calibration_dataset,
    calibration_pairs,
    load_beir,
)
from relcomp.export import QualityGateError
from relcomp.recovery import PSEUDO_QUERY_PREFIX, recovery_data
from tests.fixtures import QUERIES
from tests.recovery.test_recovery import write_collection

GATE_FILE = "evaluation/gate_agreement.json"


@pytest.fixture
def only_test(tmp_path: Path) -> Path:
    return write_collection(tmp_path / "only-test", train=False)


def _settings(**options: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "method": "prune-structured",
        "calibration": 3,
        "queries": 3,
        "explanations": 1,
        "threads": 1,
        "show_progress_bar": False,
        "min_agreement_overlap": 0.0,
        "min_agreement_tau": -1.0,
    }
    return settings | options


def _no_test_query(queries: dict[str, str]) -> None:
    """Every query is a pseudo-query: no test id, no test text."""
    assert queries and all(q.startswith(PSEUDO_QUERY_PREFIX) for q in queries)
    assert not set(queries.values()) & set(QUERIES)


def test_calibration_comes_from_pseudo_queries_when_there_is_no_dev_or_train(
    only_test: Path,
) -> None:
    dataset = calibration_dataset(only_test, None, "test")
    assert dataset.split == PSEUDO_SPLIT
    _no_test_query(dict(dataset.queries))
    # each pair is a pseudo-query and the document it was drawn from
    for query_id, judged in dataset.qrels.items():
        assert list(judged.values()) == [1] and query_id.endswith(":" + next(iter(judged)))
    pairs = calibration_pairs(dataset, 3)
    assert len(pairs) == 3 and not {q for q, _ in pairs} & set(QUERIES)
    # a collection with a train split keeps calibrating on it
    with_train = write_collection(only_test.parent / "with-train")
    assert calibration_dataset(with_train, None, "test").split == "train"


def test_recovery_leaves_out_the_agreement_gates_documents(
    tiny_model: Any, only_test: Path
) -> None:
    gate = agreement_queries(only_test, 3)
    assert len(gate.split_queries) == 3
    _no_test_query(dict(gate.queries))
    data = recovery_data(
        tiny_model("minilm"), only_test, candidates=3, pseudo=8, exclude=list(gate.split_queries)
    )
    gate_documents = {d for judged in gate.qrels.values() for d in judged}
    titles = {load_beir(only_test).corpus[d][0] for d in gate_documents}
    assert not set(data.queries) & set(gate.queries.values())
    assert not set(data.queries) & titles  # no gate document gave a recovery query
    assert data.source_counts == {"pseudo": len(data)} and len(data) <= 8 - 3


def test_a_test_only_collection_compresses_recovers_and_is_gated_on_agreement(
    tiny_model_path: Any, only_test: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    model = tiny_model_path("minilm")
    settings = _settings(recover=2, recovery_max_length=32)
    result = pipeline.compress(model, only_test, "params_removed=0.3", out, **settings)

    gate = AgreementGate.load(out / GATE_FILE)
    assert gate.split == PSEUDO_SPLIT and gate.first_stage == "bm25" and gate.passed
    assert 0.0 <= gate.top10_overlap <= 1.0 and -1.0 <= gate.kendall_tau <= 1.0
    assert gate.n_queries == len(gate.queries) == len(gate.per_query) == 3
    _no_test_query(dict(gate.queries))
    assert AgreementGate.from_json(gate.to_json()) == gate
    quality = json.loads((out / "quality.json").read_text())
    assert quality["gate"] == gate.summary() == result.quality["gate"]
    assert quality["gate"]["kind"] == "agreement"
    assert quality["provenance"]["calibration_split"] == PSEUDO_SPLIT
    # relevance and recovery: pseudo-queries only, the gate's documents left out
    relevance = json.loads((out / "component_relevance.json").read_text())
    assert relevance["source"]["split"] == PSEUDO_SPLIT
    log = RecoveryLog.load(out / "recovered" / "recovery_log.json")
    assert list(log.data["splits"]) == [] and log.data["split_queries"] == 0
    assert log.data["pseudo_queries"] > 0 and log.data["excluded_queries"] == 3
    # test queries are evaluated, and only there
    assert set(quality["reference"]["per_query"]["nDCG@10"]) <= {f"t{i}" for i in range(6)}
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "agreement with the uncompressed model" in page and "gate passed" in page
    assert (out / EXPORT_BUNDLE_FILE).is_file()

    # a second run resumes: the gate and the recovery are read back, not made again
    stamps = {name: (out / name).stat().st_mtime_ns for name in (GATE_FILE, "plan.json")}
    time.sleep(0.01)
    again = pipeline.compress(model, only_test, "params_removed=0.3", out, **settings)
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps
    assert again.quality["gate"] == quality["gate"]


def test_a_failed_agreement_gate_removes_the_bundle(
    tiny_model_path: Any, only_test: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    settings = _settings(min_agreement_overlap=1.0, min_agreement_tau=1.0)
    with pytest.raises(QualityGateError, match="--min-agreement-tau") as failure:
        pipeline.compress(
            tiny_model_path("minilm"), only_test, "params_removed=0.6", out, **settings
        )
    result = failure.value.result
    assert isinstance(result, AgreementGate) and not result.passed
    assert result.kendall_tau < 1.0  # heavy pruning of a random model reorders its ranking
    assert AgreementGate.load(out / GATE_FILE) == result
    assert not (out / EXPORT_BUNDLE_FILE).exists() and not list(out.glob("onnx/*"))
    assert not (out / "quality.json").exists() and not (out / "report.html").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("min_agreement_overlap", 1.01, "min_agreement_overlap must be a share between 0 and 1"),
        ("min_agreement_overlap", -0.1, "min_agreement_overlap must be a share between 0 and 1"),
        ("min_agreement_tau", -1.5, "min_agreement_tau must be a Kendall tau between -1 and 1"),
        ("min_agreement_tau", float("nan"), "min_agreement_tau must be a Kendall tau"),
    ],
)
def test_agreement_thresholds_out_of_range_are_refused_before_any_work(
    tiny_model_path: Any, only_test: Path, tmp_path: Path, option: str, value: float, message: str
) -> None:
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        pipeline.compress(
            tiny_model_path("minilm"), only_test, "params_removed=0.3", out, **{option: value}
        )
    assert not out.exists()


def test_a_test_only_collection_too_small_or_with_several_budgets_is_refused(
    tiny_model_path: Any, only_test: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_model_path("minilm")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="several budgets"):
        pipeline.compress(model, only_test, ["params_removed=0.3", "params_removed=0.5"], out)
    small = tmp_path / "small"
    write_collection(small, train=False)
    rows = (small / "corpus.jsonl").read_text().splitlines()
    (small / "corpus.jsonl").write_text("\n".join(rows[:3]) + "\n")
    (small / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nt0\td0\t1\n")
    with pytest.raises(ValueError, match="only 3 pseudo-queries could be drawn"):
        pipeline.compress(model, small, "params_removed=0.3", out)
    assert not out.exists()
    # the command line says the same, with exit status 2
    args = ["compress", "-m", str(model), "-d", str(only_test), "--budget", "0.3"]
    assert cli.main([*args, "--min-agreement-overlap", "1.01", "-o", str(out), "--quiet"]) == 2
    assert "min_agreement_overlap must be a share between 0 and 1" in capsys.readouterr().err
    assert not out.exists()
