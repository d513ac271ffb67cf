"""Padding removed from the token-wise operators: the same scores and embeddings, fewer rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from relcomp.artifacts import CompressionPlan
from relcomp.export import export_bundle, remove_padding
from relcomp.models import load_model
from tests.fixtures import DOCUMENTS, LONG_DOCUMENT, QUERIES

PAIRS = (list(QUERIES), [*DOCUMENTS[: len(QUERIES) - 1], LONG_DOCUMENT])  # padding and truncation


def _packed_linears(folder: Path, onnx_file: str) -> int:
    graph = onnx.load(str(folder / onnx_file), load_external_data=False).graph
    return sum(
        node.op_type in ("MatMul", "MatMulInteger") and node.input[0].endswith("/packed")
        for node in graph.node
    )


@pytest.mark.parametrize("family", ["minilm", "roberta", "xlm-roberta", "distilbert", "electra"])
def test_cross_encoder_scores_are_unchanged_in_fp32(
    tiny_model: Any, tmp_path: Path, family: str
) -> None:
    model = tiny_model(family)
    padded = export_bundle(model, tmp_path / "padded")
    packed = export_bundle(model, tmp_path / "packed", remove_padding=True)
    assert any(note.startswith("padding removed") for note in packed.notes), packed.notes
    assert packed.fusion["packed_operators"] > 0
    assert _packed_linears(tmp_path / "packed", packed.onnx_file) >= 4  # FFN + output, each layer
    expected = load_model(tmp_path / "padded").score(*PAIRS)
    np.testing.assert_allclose(load_model(tmp_path / "packed").score(*PAIRS), expected, atol=1e-5)
    # a pair alone (nothing padded) scores as it did in the padded batch
    alone = load_model(tmp_path / "packed").score(PAIRS[0][:1], PAIRS[1][:1])
    np.testing.assert_allclose(alone, expected[:1], atol=1e-5)
    assert padded.fusion.get("packed_operators") is None


def test_mpnet_is_exported_padded_with_a_note(tiny_model: Any, tmp_path: Path) -> None:
    # MPNet's embeddings fuse into a SkipLayerNormalization (word + position embeddings),
    # which the rewrite does not take for the start of the hidden state
    model = tiny_model("mpnet")
    bundle = export_bundle(model, tmp_path / "mpnet", remove_padding=True)
    assert any(note.startswith("padding kept") for note in bundle.notes), bundle.notes
    assert bundle.fusion["packed_operators"] == 0
    np.testing.assert_allclose(
        load_model(tmp_path / "mpnet").score(*PAIRS), model.score(*PAIRS), atol=1e-5
    )


def test_sentence_transformers_loads_the_rewritten_graph(tiny_model: Any, tmp_path: Path) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    model = tiny_model("minilm")
    bundle = export_bundle(model, tmp_path / "packed", remove_padding=True)
    st_model = CrossEncoder(
        str(tmp_path / "packed"),
        backend="onnx",
        model_kwargs={"file_name": bundle.onnx_file},
        activation_fn=torch.nn.Identity(),
    )
    got = st_model.predict(list(zip(*PAIRS, strict=True)))
    np.testing.assert_allclose(got, model.score(*PAIRS), atol=1e-5)


def test_bi_encoder_embeddings_are_unchanged(tiny_model: Any, tmp_path: Path) -> None:
    model = tiny_model("minilm", "bi-encoder")
    export_bundle(model, tmp_path / "padded")
    bundle = export_bundle(model, tmp_path / "packed", remove_padding=True)
    assert bundle.fusion["packed_operators"] > 0
    texts = [*QUERIES, LONG_DOCUMENT]
    expected = load_model(tmp_path / "padded").encode(texts)
    np.testing.assert_allclose(load_model(tmp_path / "packed").encode(texts), expected, atol=1e-5)


def test_with_first_token_and_int8(tiny_model: Any, tmp_path: Path) -> None:
    model = tiny_model("minilm")
    plan = CompressionPlan(model.name, {"_default": "int8"})
    fp32 = model.score(*PAIRS)
    export_bundle(model, tmp_path / "padded", plan=plan, first_token=True)
    bundle = export_bundle(
        model, tmp_path / "packed", plan=plan, first_token=True, remove_padding=True
    )
    assert bundle.fusion["packed_operators"] > 0
    padded = load_model(tmp_path / "padded").score(*PAIRS)
    packed = load_model(tmp_path / "packed").score(*PAIRS)
    # int8 activation scales now span real tokens only: the scores move, but no further
    # from the float model than the padded int8 export's do
    spread = float(np.ptp(fp32))
    assert np.abs(packed - fp32).max() <= max(1.5 * np.abs(padded - fp32).max(), 0.01 * spread)
    assert np.abs(packed - padded).max() > 0  # the scales did change: the graph was rewritten


def test_an_unfused_graph_gives_the_same_scores(tiny_model: Any, tmp_path: Path) -> None:
    model = tiny_model("minilm")
    bundle = export_bundle(model, tmp_path / "plain", optimize=False, remove_padding=True)
    assert bundle.fusion["packed_operators"] > 0
    np.testing.assert_allclose(
        load_model(tmp_path / "plain").score(*PAIRS), model.score(*PAIRS), atol=1e-5
    )


def test_a_graph_it_cannot_read_is_left_alone() -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    removal = remove_padding(helper.make_model(graph))
    assert removal.packed_nodes == 0 and "no 'attention_mask' input" in removal.note
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, 2])
    graph.input.append(mask)
    removal = remove_padding(helper.make_model(graph))
    assert removal.packed_nodes == 0 and "0 embedding outputs found" in removal.note
    assert [node.op_type for node in removal.model.graph.node] == ["Relu"]
    # embeddings found, but nothing token-wise after them: the graph stays as it was
    norm = helper.make_node(
        "LayerNormalization", ["x", "g", "b"], ["h"], name="/m/embeddings/LayerNorm/LN"
    )
    shape = helper.make_node("Shape", ["h"], ["y"])
    graph = helper.make_graph(
        [norm, shape],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]), mask],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2])],
        initializer=[
            helper.make_tensor("g", TensorProto.FLOAT, [2], [1.0, 1.0]),
            helper.make_tensor("b", TensorProto.FLOAT, [2], [0.0, 0.0]),
        ],
    )
    before = helper.make_model(graph).SerializeToString()
    removal = remove_padding(helper.make_model(graph))
    assert removal.packed_nodes == 0 and "no token-wise operator" in removal.note
    assert removal.model.SerializeToString() == before


def test_cli_flag_reaches_the_bundle(tiny_model: Any, tmp_path: Path) -> None:
    from relcomp.artifacts import EXPORT_BUNDLE_FILE, ExportBundle
    from relcomp.cli import main

    model = tiny_model("minilm")
    status = main(
        ["export", "-m", str(model.path), "-o", str(tmp_path / "out"), "--remove-padding"]
    )
    assert status in (0, None)
    bundle = ExportBundle.load(tmp_path / "out" / EXPORT_BUNDLE_FILE)
    assert bundle.fusion["packed_operators"] > 0
    assert any(note.startswith("padding removed") for note in bundle.notes)
