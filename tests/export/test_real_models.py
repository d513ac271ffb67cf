"""Real models from ../shared/assets: export, parity on real pairs, sentence-transformers loading."""

from __future__ import annotations

import numpy as np
import pytest

from relcomp.export import CompressionPlan, export_bundle, parity_groups
from relcomp.models import load_model
from tests.fixtures import assets_dir

pytestmark = pytest.mark.slow


@pytest.fixture
def scifact():
    path = assets_dir() / "beir" / "scifact"
    if not path.is_dir():
        pytest.skip(f"no BEIR scifact in {path}")
    return path


def test_reranker_int8_bundle_ranks_like_torch(scifact, tmp_path) -> None:
    from sentence_transformers import CrossEncoder

    path = assets_dir() / "models" / "minilm-l6-reranker"
    if not path.is_dir():
        pytest.skip(f"no reranker in {path}")
    model = load_model(path, max_length=256)
    groups, source = parity_groups(scifact, "train", queries=4, depth=10)
    plan = CompressionPlan(model.name, {"_default": "int8"}, method="uniform")
    bundle = export_bundle(
        model, tmp_path / "int8", plan=plan, parity_groups=groups, parity_source=source
    )
    assert bundle.size_bytes < 0.7 * bundle.fp32_size_bytes
    assert bundle.parity["kendall_tau"] > 0.85 and bundle.parity["top10_overlap"] >= 0.8
    st_model = CrossEncoder(
        str(tmp_path / "int8"),
        backend="onnx",
        model_kwargs={"file_name": bundle.onnx_file},
        max_length=bundle.max_length,  # relcomp exported (and scores) at 256 tokens
    )
    query, documents = next(iter(groups.values()))
    relcomp_scores = load_model(tmp_path / "int8").score([query] * 3, documents[:3])
    st_scores = st_model.predict([(query, d) for d in documents[:3]])
    np.testing.assert_allclose(st_scores, 1 / (1 + np.exp(-relcomp_scores)), atol=1e-4)


def test_retriever_fp32_bundle_matches_torch(scifact, tmp_path) -> None:
    from sentence_transformers import SentenceTransformer

    model = load_model("all-MiniLM-L6-v2")
    groups, source = parity_groups(scifact, "train", queries=3, depth=8)
    bundle = export_bundle(model, tmp_path / "fp32", parity_groups=groups, parity_source=source)
    assert bundle.parity["max_abs_diff"] < 1e-4
    st_model = SentenceTransformer(
        str(tmp_path / "fp32"), backend="onnx", model_kwargs={"file_name": bundle.onnx_file}
    )
    texts = [query for query, _ in groups.values()]
    np.testing.assert_allclose(st_model.encode(texts), model.encode(texts), atol=1e-4)
