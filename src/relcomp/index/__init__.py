"""Index: compress a retriever's corpus index (precision, dimensions, rescoring).

The model of a retriever is fixed in size; its index grows with the corpus (384
float32 dimensions are 1.5 KB a document). This stage stores the corpus embeddings
at lower precision (float16, int8 with ranges calibrated on corpus embeddings, or
sign bits searched by Hamming distance), keeps only the dimensions that carry the
similarity (each dimension's share of a dot product is exact), and rescores a
deeper candidate list with the float query. The flow, top to bottom::

    result = build_index("all-MiniLM-L6-v2", "beir/scifact", precision="binary",
                         dims=256, dim_selection="relevance", rescore=10, output="out")
    result.settings        # IndexSettings, saved as out/index.json
    result.quality         # bytes and nDCG@10 / R@100 against the float index
    run = index_retrieve(model, dataset, "out/index.json")

Search is faiss-cpu's exact flat indexes (``IndexFlatIP``, ``IndexScalarQuantizer``
fp16 / 8-bit, ``IndexBinaryFlat``); sign bits come from sentence-transformers'
``quantize_embeddings`` (see :mod:`relcomp.index.search` for why).
"""

from __future__ import annotations

from relcomp.index.build import (
    INDEX_QUALITY_FILE,
    PROJECTION_FILE,
    IndexResult,
    build_index,
    calibration_vectors,
    check_calibration_split,
    encode_queries,
    index_quality,
    index_retrieve,
    load_index,
    make_index_settings,
    model_identity,
    normalised_corpus,
    require_bi_encoder,
    save_index,
)
from relcomp.index.dimensions import (
    DIMENSION_SELECTIONS,
    Calibration,
    Selection,
    dimension_shares,
    relevance_per_dimension,
    select_dimensions,
)
from relcomp.index.search import (
    PRECISIONS,
    RESCORE_WITH,
    CompressedIndex,
    binary_codes,
    calibrate_ranges,
    check_index_settings,
)

__all__ = [
    "DIMENSION_SELECTIONS",
    "INDEX_QUALITY_FILE",
    "PRECISIONS",
    "PROJECTION_FILE",
    "RESCORE_WITH",
    "Calibration",
    "CompressedIndex",
    "IndexResult",
    "Selection",
    "binary_codes",
    "build_index",
    "calibrate_ranges",
    "calibration_vectors",
    "check_calibration_split",
    "check_index_settings",
    "dimension_shares",
    "encode_queries",
    "index_quality",
    "index_retrieve",
    "load_index",
    "make_index_settings",
    "model_identity",
    "normalised_corpus",
    "relevance_per_dimension",
    "require_bi_encoder",
    "save_index",
    "select_dimensions",
]
