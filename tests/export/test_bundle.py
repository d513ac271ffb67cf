"""The bundle: its layout, sentence-transformers loading, load_model round trip, atomicity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from relcomp.data import demo_path
from relcomp.errors import RelcompError
from relcomp.evaluation import load_beir
from relcomp.export import (
    EXPORT_BUNDLE_FILE,
    CompressionPlan,
    ExportBundle,
    QualityGateError,
    export_bundle,
    quality_gate,
)
from relcomp.models import OnnxCrossEncoder, is_bundle, load_model
from relcomp.pipeline import export
from tests.fixtures import DOCUMENTS, QUERIES

PAIRS_Q = list(QUERIES)
PAIRS_D = list(DOCUMENTS[: len(QUERIES)])


def test_bundle_layout_is_sentence_transformers(tiny_model_path, bundles) -> None:
    path = bundles("bert", "bi-encoder", plan={"_default": "int8"})
    bundle = ExportBundle.load(path / EXPORT_BUNDLE_FILE)
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert bundle.onnx_file in files and bundle.onnx_file.startswith("onnx/model_")
    assert {"config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json"} <= files
    assert {"plan.json", EXPORT_BUNDLE_FILE, "sentence_bert_config.json"} <= files
    assert not any(name.endswith((".safetensors", ".bin")) for name in files)
    assert is_bundle(path)
    plan = CompressionPlan.load(path / "plan.json")
    assert plan.entries == (("_default", "int8(per_channel=True)"),)
    assert bundle.plan["fingerprint"] == plan.fingerprint()
    assert bundle.versions["onnxruntime"]


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_sentence_transformers_loads_the_cross_encoder(bundles, family: str) -> None:
    from sentence_transformers import CrossEncoder

    path = bundles(family, "cross-encoder", plan={"_default": "int8"})
    bundle = ExportBundle.load(path / EXPORT_BUNDLE_FILE)
    st_model = CrossEncoder(
        str(path),
        backend="onnx",
        model_kwargs={"file_name": bundle.onnx_file},
        activation_fn=torch.nn.Identity(),
    )
    expected = load_model(path).score(PAIRS_Q, PAIRS_D)
    got = st_model.predict(list(zip(PAIRS_Q, PAIRS_D, strict=True)))
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_sentence_transformers_loads_the_bi_encoder(bundles, tiny_model_path, family: str) -> None:
    from sentence_transformers import SentenceTransformer

    path = bundles(family, "bi-encoder")
    bundle = ExportBundle.load(path / EXPORT_BUNDLE_FILE)
    st_model = SentenceTransformer(
        str(path), backend="onnx", model_kwargs={"file_name": bundle.onnx_file}
    )
    reference = load_model(tiny_model_path(family, "bi-encoder", bias_std=0.1))
    np.testing.assert_allclose(
        st_model.encode(list(DOCUMENTS)), reference.encode(list(DOCUMENTS)), atol=2e-5
    )


def test_load_model_round_trip(tiny_model_path, bundles) -> None:
    path = bundles("bert", "cross-encoder")
    reference = load_model(tiny_model_path("bert", "cross-encoder", bias_std=0.1))
    model = load_model(path, max_length=16)
    assert isinstance(model, OnnxCrossEncoder) and model.max_length == 16
    assert model.variant == "onnx-fp32" and model.cache_key != reference.cache_key
    before = model.score(PAIRS_Q, PAIRS_D)
    model.intra_op_num_threads = 1
    assert model.intra_op_num_threads == 1
    np.testing.assert_array_equal(model.score(PAIRS_Q, PAIRS_D), before)
    assert model.truncation["truncated"] > 0  # 16 tokens cut the pairs, and it is counted
    with pytest.raises(RelcompError, match="ONNX bundle"):
        model.layer_modules()
    with pytest.raises(RelcompError, match="bi-encoder"):
        load_model(path, kind="bi-encoder")
    with pytest.raises(RelcompError, match="CPU"):
        load_model(path, device="cuda")
    with pytest.raises(RelcompError, match="already an ONNX bundle"):
        export_bundle(model, path.parent / "again")


def test_pipeline_evaluates_the_bundle(bundles, tmp_path, monkeypatch) -> None:
    from relcomp.pipeline import evaluate

    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    path = bundles("bert", "cross-encoder")
    report = evaluate(str(path), demo_path(), split="train", queries=4, depth=5)
    assert report.model == str(path) and report.n_queries == 4
    assert 0.0 <= report.measures["nDCG@10"] <= 1.0


def test_embeddings_int8_is_an_export_option(bundles) -> None:
    import onnx
    from onnx import numpy_helper

    from relcomp.export import op_counts

    plain_path = bundles("bert", "cross-encoder", plan={"_default": "int8"})
    plain = ExportBundle.load(plain_path / EXPORT_BUNDLE_FILE)
    path = bundles("bert", "cross-encoder", plan={"_default": "int8"}, embeddings="int8")
    bundle = ExportBundle.load(path / EXPORT_BUNDLE_FILE)
    assert bundle.size_bytes < plain.size_bytes
    graph = onnx.load(str(path / bundle.onnx_file))
    assert op_counts(graph)["DequantizeLinear"] == 1
    assert any("word embeddings int8 with one scale per row" in note for note in bundle.notes)
    # one scale per token: each row is within half a step of its fp32 values
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.graph.initializer}
    name = next(name for name in arrays if name.endswith("_int8"))
    quantized, scale = arrays[name], arrays[name.replace("_int8", "_scale")]
    assert quantized.dtype == np.int8 and scale.shape == (quantized.shape[0],)
    plain_graph = onnx.load(str(plain_path / plain.onnx_file))
    table = next(
        numpy_helper.to_array(init)
        for init in plain_graph.graph.initializer
        if init.name == name.removesuffix("_int8")
    )
    error = np.abs(quantized.astype(np.float32) * scale[:, None] - table)
    assert (error <= scale[:, None] / 2 + 1e-7).all()
    scores = load_model(path).score(PAIRS_Q, PAIRS_D)
    assert np.isfinite(scores).all()


class _Oracle:
    """Scores a pair by its judgement: a reference no compressed model can match."""

    name = "oracle"
    cache_key = "oracle"

    def __init__(self, split: str) -> None:
        dataset = load_beir(demo_path(), split)
        self.relevance = {
            (dataset.query_text(q), dataset.document_text(d)): float(r)
            for q, docs in dataset.qrels.items()
            for d, r in docs.items()
        }

    def score(self, queries, documents, batch_size=32, show_progress_bar=None):
        return np.array(
            [self.relevance.get(pair, 0.0) for pair in zip(queries, documents, strict=True)],
            dtype=np.float32,
        )


def test_a_failed_gate_leaves_no_bundle(tiny_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    seen = {}

    def gate_against_an_oracle(candidate):
        seen["candidate"] = candidate  # the ONNX model, read from the unfinished bundle
        return quality_gate(
            _Oracle("train"), candidate, demo_path(), max_ndcg_loss=0.5, queries=6, depth=10
        )

    model = tiny_model("bert", "cross-encoder")
    out = tmp_path / "bundle"
    with pytest.raises(QualityGateError) as raised:
        export_bundle(model, out, gate=gate_against_an_oracle)
    message = str(raised.value)
    assert "points" in message and "at most 0.5 allowed" in message and "train" in message
    assert raised.value.result.loss_points > 0.5
    assert isinstance(seen["candidate"], OnnxCrossEncoder)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no temporary folder left


def test_a_passed_gate_is_recorded(tiny_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model("bert", "cross-encoder")

    def gate(candidate):
        return quality_gate(model, candidate, demo_path(), max_ndcg_loss=0.5, queries=5, depth=5)

    bundle = export_bundle(model, tmp_path / "b", gate=gate)
    assert bundle.gate["passed"] and bundle.gate["split"] == "train"
    assert abs(bundle.gate["loss_points"]) < 1e-6  # fp32 ranks as torch does
    saved = json.loads((tmp_path / "b" / EXPORT_BUNDLE_FILE).read_text())
    assert saved["gate"]["max_ndcg_loss"] == 0.5


def test_output_folder_rules(tiny_model, tmp_path) -> None:
    model = tiny_model("bert", "cross-encoder")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RelcompError, match="not a relcomp bundle"):
        export_bundle(model, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    out = tmp_path / "bundle"
    export_bundle(model, out)
    first = ExportBundle.load(out / EXPORT_BUNDLE_FILE)
    export_bundle(model, out, plan=CompressionPlan(model.name, {"_default": "int8"}))
    second = ExportBundle.load(out / EXPORT_BUNDLE_FILE)
    assert first.variant == "fp32" and second.variant != "fp32"
    assert [p.name for p in (out / "onnx").iterdir()] == [second.onnx_file.split("/")[1]]
    with pytest.raises(ValueError, match="variant"):
        export_bundle(model, tmp_path / "bad", variant="no spaces/slashes")
    with pytest.raises(ValueError, match="needs -d DATA_DIR"):
        export(model, tmp_path / "bad", max_ndcg_loss=0.5)
    assert not (tmp_path / "bad").exists()
