"""Every family's tiny cross- and bi-encoder exports to ONNX and scores as torch does."""

from __future__ import annotations

import numpy as np
import pytest

from relcomp.artifacts import ExportBundle
from relcomp.export import EXPORT_BUNDLE_FILE
from relcomp.models import OnnxBiEncoder, OnnxCrossEncoder, load_model
from tests.fixtures import DOCUMENTS, FAMILIES, KINDS, LONG_DOCUMENT, QUERIES

PAIRS_Q = [*QUERIES, QUERIES[0]]
PAIRS_D = [*DOCUMENTS[: len(QUERIES)], LONG_DOCUMENT]  # the last one is truncated


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_export_matches_torch(tiny_model_path, bundles, family: str, kind: str) -> None:
    reference = load_model(tiny_model_path(family, kind, bias_std=0.1))
    path = bundles(family, kind)
    candidate = load_model(path)
    assert isinstance(candidate, OnnxCrossEncoder if kind == "cross-encoder" else OnnxBiEncoder)
    assert candidate.max_length == reference.max_length
    expected = reference.score(PAIRS_Q, PAIRS_D)
    got = candidate.score(PAIRS_Q, PAIRS_D)
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)
    # tokenisation is the torch model's own: truncation is counted the same way
    assert candidate.truncation == reference.truncation
    assert candidate.truncation["truncated"] >= 1
    if kind == "bi-encoder":
        np.testing.assert_allclose(
            candidate.encode(list(DOCUMENTS)), reference.encode(list(DOCUMENTS)), atol=2e-5
        )
    bundle = ExportBundle.load(path / EXPORT_BUNDLE_FILE)
    assert bundle.model_kind == kind and bundle.family == reference.adapter.family
    assert set(bundle.modules.values()) == {"fp32"}
    assert bundle.modules.keys() == reference.named_linears().keys()
    assert bundle.size_bytes == sum(p.stat().st_size for p in (path / "onnx").iterdir())


@pytest.mark.parametrize(("family", "kind"), [("bert", "cross-encoder"), ("mpnet", "bi-encoder")])
def test_torch_onnx_exporter_gives_the_same_graph_contract(
    tiny_model_path, bundles, family: str, kind: str
) -> None:
    reference = load_model(tiny_model_path(family, kind, bias_std=0.1))
    path = bundles(family, kind, exporter="torch")
    bundle = ExportBundle.load(path / EXPORT_BUNDLE_FILE)
    assert bundle.exporter == "torch.onnx"
    np.testing.assert_allclose(
        load_model(path).score(PAIRS_Q, PAIRS_D),
        reference.score(PAIRS_Q, PAIRS_D),
        atol=2e-5,
        rtol=1e-4,
    )


def test_auto_falls_back_to_torch_onnx_and_says_why(tiny_model, tmp_path, monkeypatch) -> None:
    import relcomp.export.convert as convert
    from relcomp.export import export_bundle

    def refuse(*args, **kwargs):
        raise ValueError("this architecture is not supported by optimum")

    monkeypatch.setattr(convert, "_export_with_optimum", refuse)
    bundle = export_bundle(tiny_model("bert", "bi-encoder"), tmp_path / "b")
    assert bundle.exporter == "torch.onnx"
    assert any("not supported by optimum" in note for note in bundle.notes)
