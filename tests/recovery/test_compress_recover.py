"""``compress --recover STEPS --quantize int8``: prune, recover, quantize, export, gate, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from relcomp import pipeline
from relcomp.artifacts import RecoveryLog
from relcomp.models import load_model
from tests.fixtures import DOCUMENTS, QUERIES
from tests.recovery.test_recovery import passed_to_pipeline, write_collection


@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
def test_compress_with_recovery_exports_the_recovered_model(
    tiny_model_path: Any, tmp_path: Path, kind: str
) -> None:
    collection = write_collection(tmp_path / "collection")
    out = tmp_path / "run"
    settings: dict[str, Any] = {
        "method": "prune-structured",
        "importance": "magnitude",
        "max_ndcg_loss": 100.0,
        "calibration": 3,
        "queries": 2,  # the gate's queries, kept out of the recovery data
        "explanations": 1,
        "threads": 1,
        "recover": 3,
        "quantize": "int8",
        "recovery_max_length": 32,
        "quantization_aware": True,
        # hidden-state matching through the flow for one kind; the other trains without it
        "recovery_hidden_weight": 0.5 if kind == "cross-encoder" else 0.0,
        # deep candidates for one kind; pseudo-queries counted for both
        "recovery_candidate_depth": 8 if kind == "cross-encoder" else None,
        "recovery_pseudo": 3,
        "show_progress_bar": False,
    }
    result = pipeline.compress(
        tiny_model_path("minilm", kind), collection, "params_removed=0.3", out, **settings
    )
    log = RecoveryLog.load(out / "recovered" / "recovery_log.json")
    assert log.steps == 3 and log.data["excluded_queries"] == 2
    assert log.hidden_weight == settings["recovery_hidden_weight"]
    assert log.data.get("candidate_depth") == settings["recovery_candidate_depth"]
    assert log.data["pseudo_queries"] == 3
    assert (log.hidden_layers != ()) == (kind == "cross-encoder")
    # --quantization-aware with --quantize int8: recovery trains through int8's rounding
    assert log.quantization_aware is not None
    assert [list(e) for e in log.quantization_aware["entries"]] == [
        ["_default", "int8(per_channel=True)"]
    ]
    recovered = load_model(out / "recovered")
    original = load_model(tiny_model_path("minilm", kind))
    assert sum(p.numel() for p in recovered.model.parameters()) < sum(
        p.numel() for p in original.model.parameters()
    )
    provenance = result.quality["provenance"] if isinstance(result.quality, dict) else None
    quality = json.loads((out / "quality.json").read_text())
    assert quality["provenance"]["recovery"]["steps"] == 3
    assert quality["provenance"]["quantize"] == "int8"
    # --quantize int8 without --embeddings quantizes the word-embedding table too
    assert quality["provenance"]["embeddings"] == "int8"
    assert "int8 embeddings" in quality["compressed"]["name"]
    assert provenance is None or provenance["recovery"]["steps"] == 3
    bundle = load_model(out)
    scores = bundle.score(list(QUERIES[:3]), list(DOCUMENTS[:3]))
    assert np.isfinite(scores).all()
    assert not (out / ".recovered.recovery").exists()
    # the gate split's nDCG@10 of the pruned model before recovery, beside the gate's own
    gate = quality["provenance"]["recovery"]["gate"]
    pruned = json.loads((out / "evaluation" / "gate_pruned.json").read_text())
    assert gate["before"] == pruned["measures"]["nDCG@10"]
    assert gate["reference"] == quality["gate"]["reference"]
    assert gate["after"] == quality["gate"]["candidate"]
    assert gate["split"] == quality["gate"]["split"] and gate["n_queries"] == 2
    assert pruned["n_queries"] == 2 and 0.0 <= gate["before"] <= 1.0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="recovery"' in page and "Loss at each checkpoint" in page
    recovery = page[page.index('id="recovery"') : page.index('id="parity"')]
    assert "Loss curve" in recovery and 'src="data:image/png;base64,' in recovery
    assert (out / "figures" / "recovery_loss.png").is_file()
    assert "before and after recovery" in recovery
    for value in (gate["reference"], gate["before"], gate["after"]):
        assert f"{value:.4f}" in recovery
    assert "Explanation parity" in page
    # a second run resumes every step, the recovery included
    again = pipeline.compress(
        tiny_model_path("minilm", kind), collection, "params_removed=0.3", out, **settings
    )
    assert again.quality == result.quality or again.output_dir == out


def test_recover_needs_a_structural_plan_and_one_budget(
    tiny_model_path: Any, tmp_path: Path
) -> None:
    collection = write_collection(tmp_path / "collection")
    common: dict[str, Any] = {"recover": 2, "threads": 1, "show_progress_bar": False}
    with pytest.raises(ValueError, match="removes nothing to recover from"):
        pipeline.compress(
            tiny_model_path("minilm"), collection, "8bits", tmp_path / "a",
            method="mixed-precision", max_ndcg_loss=None, **common,
        )  # fmt: skip
    with pytest.raises(ValueError, match="one budget"):
        pipeline.compress(
            tiny_model_path("minilm"), collection, ["0.2", "0.3"], tmp_path / "b",
            method="prune-structured", **common,
        )  # fmt: skip
    with pytest.raises(ValueError, match="--quantize"):
        pipeline.compress(
            tiny_model_path("minilm"), collection, "0.2", tmp_path / "c",
            method="prune-structured", quantize="prune_heads(1)", **common,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"recover": 2, "recovery_candidate_depth": 4}, "must be at least 8"),
        ({"recover": 2, "recovery_pseudo": -1}, "must be 0 or more"),
        ({"recovery_candidate_depth": 100}, "give --recover STEPS too"),
        ({"recovery_pseudo": 0}, "give --recover STEPS too"),
    ],
)
def test_recovery_data_settings_are_checked_before_any_work(
    settings: dict[str, Any], message: str
) -> None:
    from relcomp.compress_flow import CompressOptions
    from relcomp.evaluation import resolve_protocol

    with pytest.raises(ValueError, match=message):
        CompressOptions("m", "d", ({"params_removed": 0.3},), "o",
                        protocol=resolve_protocol("quick"), **settings)  # fmt: skip


def test_compress_passes_the_recovery_data_settings(
    tiny_model_path: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collection = write_collection(tmp_path / "collection")
    argv = ["compress", "-m", str(tiny_model_path("minilm")), "-d", str(collection)]
    argv += ["--budget", "0.3", "--recover", "2", "--recovery-candidate-depth", "100"]
    argv += ["--recovery-pseudo", "300", "-o", str(tmp_path / "out")]
    status, seen = passed_to_pipeline(monkeypatch, argv)
    assert status == 2
    assert (seen["recovery_candidate_depth"], seen["recovery_pseudo"]) == (100, 300)
