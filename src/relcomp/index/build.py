"""The index stage: calibrate, build and check a compressed index of a retriever's corpus.

:func:`build_index` is what ``relcomp index`` runs: it validates every setting
before any expensive work, encodes the corpus (cached by the first stage's
corpus-embedding cache), chooses dimensions (relevance from train/dev queries, or
a blind rule), calibrates int8 ranges on the corpus embeddings, measures the index
against the float index on the evaluated split, and writes ``index.json`` (an
:class:`~relcomp.artifacts.IndexSettings`), ``index_quality.json`` and, for a PCA
rotation, ``index_projection.npy``. :func:`index_retrieve` is what ``relcomp
evaluate --index`` (or a bundle holding an ``index.json``) runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relcomp._io import atomic_write_bytes, atomic_write_json, file_digest
from relcomp.artifacts import INDEX_QUALITY_FILE, INDEX_SETTINGS_FILE, NDCG_AT_10, IndexSettings
from relcomp.errors import IndexSettingsError
from relcomp.evaluation import (
    BeirDataset,
    Run,
    available_splits,
    encode_corpus,
    evaluate_run,
    load_beir,
    paired_test,
    parse_measures,
    sample_queries,
    top_k,
)
from relcomp.index.dimensions import (
    DIMENSION_SELECTIONS,
    Calibration,
    Selection,
    check_dims,
    select_dimensions,
)
from relcomp.index.search import CompressedIndex, calibrate_ranges, check_index_settings
from relcomp.models import load_model

__all__ = [
    "INDEX_MEASURES",
    "INDEX_QUALITY_FILE",
    "PROJECTION_FILE",
    "IndexResult",
    "build_index",
    "calibration_vectors",
    "check_calibration_split",
    "default_rescore_with",
    "encode_queries",
    "index_quality",
    "index_retrieve",
    "load_index",
    "make_index_settings",
    "model_identity",
    "normalised_corpus",
    "require_bi_encoder",
    "save_index",
]

logger = logging.getLogger(__name__)

PROJECTION_FILE = "index_projection.npy"
#: What the index's quality JSON reports, against the float index.
INDEX_MEASURES: tuple[str, ...] = (NDCG_AT_10, "R@100")


# -- models ----------------------------------------------------------------------------
def require_bi_encoder(model: Any) -> None:
    """Raise :class:`IndexSettingsError` unless ``model`` is a bi-encoder (it has an index).

    Example:
        >>> class Reranker:
        ...     kind, name = "cross-encoder", "my-reranker"
        ...     def encode(self, texts): ...
        >>> require_bi_encoder(Reranker())
        Traceback (most recent call last):
        ...
        relcomp.errors.IndexSettingsError: my-reranker is a cross-encoder: only a bi-encoder (retriever) has a corpus index to compress; a cross-encoder scores pairs and keeps no index
    """
    kind = getattr(model, "kind", None)
    if kind != "bi-encoder" or not hasattr(model, "encode"):
        name = getattr(model, "name", None) or str(model)
        raise IndexSettingsError(
            f"{name} is a {kind or type(model).__name__}: only a bi-encoder (retriever) has a "
            "corpus index to compress; a cross-encoder scores pairs and keeps no index"
        )


def model_identity(model: Any) -> str:
    """A digest of what makes a model's embeddings: its weights and settings, not its path.

    The weight files (safetensors, bin, ONNX with external data) are hashed by content,
    so a copied model folder keeps its index, while any other model is refused.
    """
    digest = hashlib.sha256()
    settings = [
        getattr(model, name, None)
        for name in (
            "kind",
            "max_length",
            "variant",
            "pooling",
            "normalize",
            "similarity_name",
            "query_prompt",
            "document_prompt",
        )
    ]
    digest.update(repr(settings).encode())
    path = Path(getattr(model, "path", "."))
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    weights += sorted(path.glob("onnx/*.onnx*"))
    for file in weights:
        digest.update(f"{file.name}:{file_digest(file)}".encode())
    if not weights:
        digest.update(str(getattr(model, "cache_key", getattr(model, "name", ""))).encode())
    return f"{settings[0] or 'model'}-{digest.hexdigest()[:16]}"


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    result: np.ndarray = (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)
    return result


def _similarity(model: Any) -> str:
    similarity = str(getattr(model, "similarity_name", "cosine"))
    if similarity not in ("cosine", "dot"):
        raise IndexSettingsError(f"an index supports cosine and dot similarity, not {similarity!r}")
    return similarity


def encode_queries(
    model: Any, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool | None = None
) -> np.ndarray:
    """Query vectors as the index compares them (normalised for a cosine model)."""
    encode: Callable[..., np.ndarray] = getattr(model, "encode_queries", None) or model.encode
    vectors = np.asarray(
        encode(list(texts), batch_size=batch_size, show_progress_bar=show_progress_bar),
        dtype=np.float32,
    )
    return _normalise(vectors) if _similarity(model) == "cosine" else vectors


def normalised_corpus(
    model: Any,
    dataset: BeirDataset,
    *,
    batch_size: int = 32,
    use_cache: bool = True,
    show_progress_bar: bool | None = None,
) -> np.ndarray:
    """Corpus vectors (rows in ``dataset.sorted_doc_ids`` order) as the index stores them."""
    documents = encode_corpus(
        model,
        dataset,
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        use_cache=use_cache,
    )
    return _normalise(documents) if _similarity(model) == "cosine" else documents


# -- calibration -------------------------------------------------------------------------
def check_calibration_split(
    data_dir: str | os.PathLike[str], calibration_split: str | None, evaluated: str
) -> str:
    """The split relevance is calibrated on: ``dev``, else ``train``; never test or ``evaluated``.

    Raises:
        IndexSettingsError: the test split, the evaluated split, or no train/dev split.

    Example:
        >>> from relcomp.data import demo_path
        >>> check_calibration_split(demo_path(), None, "test")
        'train'
        >>> check_calibration_split(demo_path(), "test", "test")
        Traceback (most recent call last):
        ...
        relcomp.errors.IndexSettingsError: calibrating on the 'test' split would tune the index on queries that are reported ('test' is evaluated); calibrate on dev or train
    """
    splits = available_splits(data_dir)
    if calibration_split is None:
        choices = [s for s in ("dev", "train") if s in splits and s != evaluated]
        if not choices:
            raise IndexSettingsError(
                f"relevance needs a calibration split (dev or train); {data_dir} has {splits}"
            )
        return choices[0]
    if calibration_split == evaluated or calibration_split == "test":
        raise IndexSettingsError(
            f"calibrating on the {calibration_split!r} split would tune the index on queries that "
            f"are reported ({evaluated!r} is evaluated); calibrate on dev or train"
        )
    return calibration_split


def calibration_vectors(
    model: Any,
    calibration: BeirDataset,
    documents: np.ndarray,
    *,
    negatives: int = 10,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
) -> Calibration:
    """Query vectors of a train/dev split with their judged and hard-negative documents.

    Hard negatives are, per query, the ``negatives`` documents the float index ranks
    highest among those not judged relevant.

    Args:
        model: the bi-encoder.
        calibration: the calibration split (its judged queries).
        documents: the corpus vectors of :func:`normalised_corpus`.
        negatives: hard negatives per query (0: judged documents only).
    """
    row = {doc_id: i for i, doc_id in enumerate(calibration.sorted_doc_ids)}
    judged = {
        qid: [row[d] for d, grade in grades.items() if grade > 0 and d in row]
        for qid, grades in calibration.qrels.items()
    }
    query_ids = [qid for qid, rows in judged.items() if rows]
    if not query_ids:
        raise IndexSettingsError(f"the {calibration.split!r} split judges no document relevant")
    queries = encode_queries(
        model,
        [calibration.queries[qid] for qid in query_ids],
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
    )
    positives = np.stack([documents[judged[qid]].mean(axis=0) for qid in query_ids])
    if negatives <= 0:
        return Calibration(queries, positives)
    hard = np.empty_like(positives)
    for start in range(0, len(query_ids), 256):
        scores = queries[start : start + 256] @ documents.T
        for offset, qid in enumerate(query_ids[start : start + 256]):
            scores[offset, judged[qid]] = -np.inf
        rows, values = top_k(scores, negatives)
        for offset, (row, value) in enumerate(zip(rows, values, strict=True)):
            kept = row[np.isfinite(value)]
            hard[start + offset] = documents[kept].mean(axis=0) if kept.size else 0.0
    return Calibration(queries, positives, hard)


# -- settings --------------------------------------------------------------------------------
def default_rescore_with(precision: str) -> str:
    """What rescoring reads by default: int8 vectors for a binary index, float32 otherwise.

    Example:
        >>> default_rescore_with("binary"), default_rescore_with("int8")
        ('int8', 'float32')
    """
    return "int8" if precision.strip().lower() == "binary" else "float32"


def make_index_settings(
    model: Any,
    documents: np.ndarray,
    *,
    precision: str = "float32",
    dims: int | None = None,
    dim_selection: str = "relevance",
    rescore: int = 1,
    rescore_with: str | None = None,
    calibration: Calibration | None = None,
    calibration_source: Mapping[str, Any] | None = None,
    seed: int = 13,
) -> tuple[IndexSettings, np.ndarray | None]:
    """Index settings for ``model``'s corpus vectors: kept coordinates and int8 ranges.

    Ranges are calibrated on the corpus vectors (after selection), never on queries.

    Returns:
        ``(settings, projection)``; ``projection`` is set for ``pca`` only.
    """
    precision, rescore, rescore_with = check_index_settings(
        precision, rescore, rescore_with or default_rescore_with(precision)
    )
    selection = select_dimensions(dim_selection, documents, dims, calibration, seed)
    method = "all" if dims is None else dim_selection.strip().lower()
    needs_ranges = precision == "int8" or (rescore > 1 and rescore_with == "int8")
    ranges = calibrate_ranges(selection.apply(documents)) if needs_ranges else ()
    settings = IndexSettings(
        model=str(getattr(model, "name", "model")),
        model_identity=model_identity(model),
        dimension=int(documents.shape[1]),
        similarity=_similarity(model),
        precision=precision,
        dims=selection.dims,
        selection=method,
        ranges=ranges,
        rescore=rescore,
        rescore_with=rescore_with,
        projection_file=PROJECTION_FILE if selection.projection is not None else None,
        projection_sha256=_array_digest(selection.projection),
        seed=seed if method == "random" else None,
        calibration=dict(calibration_source or {}),
    )
    return settings, selection.projection


def _array_digest(array: np.ndarray | None) -> str | None:
    if array is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def _check_same_model(settings: IndexSettings, model: Any, what: str) -> None:
    identity = model_identity(model)
    if settings.model_identity != identity:
        raise IndexSettingsError(
            f"{what} was calibrated for model {settings.model!r} ({settings.model_identity}), "
            f"not for {getattr(model, 'name', 'this model')!r} ({identity}): the weights or the "
            "embedding settings (max length, pooling, prompts) differ, and its dimensions and "
            "ranges do not fit another model's embeddings"
        )


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def save_index(
    settings: IndexSettings, projection: np.ndarray | None, folder: str | os.PathLike[str]
) -> Path:
    """Write ``index.json`` (last) and, for PCA, its projection, atomically; returns index.json's path.

    Example:
        >>> import tempfile
        >>> settings = IndexSettings(model="m", model_identity="bi-encoder-0", dimension=2,
        ...                          similarity="cosine", precision="binary", dims=(0, 1))
        >>> folder = tempfile.mkdtemp()
        >>> save_index(settings, None, folder).name
        'index.json'
        >>> load_index(folder) == (settings, None)
        True
    """
    folder = Path(folder)
    if settings.projection_file is not None:
        if projection is None:
            raise IndexSettingsError("a pca index needs its projection to be saved")
        atomic_write_bytes(folder / settings.projection_file, _npy_bytes(projection))
    return settings.save(folder / INDEX_SETTINGS_FILE)


def load_index(path: str | os.PathLike[str]) -> tuple[IndexSettings, np.ndarray | None]:
    """Read ``index.json`` (a file, or a folder holding one) and its projection, if any."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_SETTINGS_FILE
    settings = IndexSettings.load(path)
    if settings.projection_file is None:
        return settings, None
    projection_path = path.parent / settings.projection_file
    try:
        projection = np.load(projection_path, allow_pickle=False)
    except OSError as error:
        raise IndexSettingsError(
            f"{path}: cannot read its projection {projection_path}: {error}"
        ) from None
    if _array_digest(projection) != settings.projection_sha256:
        raise IndexSettingsError(f"{projection_path} is not the projection {path} was made with")
    return settings, projection


# -- search ----------------------------------------------------------------------------------
def _run(
    index: CompressedIndex,
    queries: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    depth: int,
) -> Run:
    rows, scores = index.search(queries, depth)
    return {
        qid: {doc_ids[r]: float(s) for r, s in zip(row, score, strict=True) if r >= 0}
        for qid, row, score in zip(query_ids, rows.tolist(), scores.tolist(), strict=True)
    }


def index_retrieve(
    model: Any,
    dataset: BeirDataset,
    index: str | os.PathLike[str] | tuple[IndexSettings, np.ndarray | None],
    query_ids: Iterable[str] | None = None,
    depth: int = 100,
    *,
    batch_size: int = 32,
    use_cache: bool = True,
    show_progress_bar: bool | None = None,
) -> Run:
    """Exhaustive retrieval through a compressed index (``index.json`` or loaded settings).

    Raises:
        IndexSettingsError: the index was made for another model, or a cross-encoder.
    """
    require_bi_encoder(model)
    settings, projection = load_index(index) if isinstance(index, str | os.PathLike) else index
    _check_same_model(settings, model, "the index")
    ids = list(dataset.split_queries) if query_ids is None else list(query_ids)
    documents = normalised_corpus(
        model,
        dataset,
        batch_size=batch_size,
        use_cache=use_cache,
        show_progress_bar=show_progress_bar,
    )
    compressed = CompressedIndex(settings, documents, projection)
    queries = encode_queries(
        model,
        [dataset.queries[qid] for qid in ids],
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
    )
    return _run(compressed, queries, ids, dataset.sorted_doc_ids, depth)


# -- the stage -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class IndexResult:
    """What :func:`build_index` made: the settings, their quality figures, and where they went."""

    settings: IndexSettings
    quality: Mapping[str, Any]
    paths: tuple[Path, ...] = ()


def build_index(
    model_name_or_path: str | Any,
    data_dir: str | os.PathLike[str],
    *,
    precision: str = "float32",
    dims: int | None = None,
    dim_selection: str = "relevance",
    rescore: int = 1,
    rescore_with: str | None = None,
    split: str = "test",
    calibration_split: str | None = None,
    calibration: str | os.PathLike[str] | None = None,
    negatives: int = 10,
    seed: int = 13,
    depth: int = 100,
    queries: int | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    use_cache: bool = True,
    show_progress_bar: bool | None = None,
    output: str | os.PathLike[str] | None = None,
) -> IndexResult:
    """Build a compressed index for a bi-encoder's corpus and measure it against the float index.

    Args:
        model_name_or_path: a bi-encoder (folder, hub id, ONNX bundle, or loaded model).
        data_dir: a BEIR folder.
        precision: ``float32``, ``float16``, ``int8`` or ``binary``.
        dims: how many coordinates to keep (``1..dimension``); all by default.
        dim_selection: ``relevance``, ``first``, ``random``, ``variance`` or ``pca``.
        rescore: candidates rescored per result wanted (1: no rescoring).
        rescore_with: ``int8``, ``float32`` or ``index``; int8 for binary, float32 otherwise.
        split: the split the index is measured on (never calibrated on).
        calibration_split: relevance's queries: ``dev``, else ``train``.
        calibration: an ``index.json`` whose dimensions and ranges to reuse (same model only).
        negatives: hard negatives per calibration query (0: judged documents only).
        seed: ``random`` selection's seed.
        depth: retrieval depth of the quality check (R@100 needs 100).
        queries: measure on the same seeded sample of this many of ``split``'s queries
            that :func:`relcomp.pipeline.evaluate` takes (all by default).
        max_length: longest input in tokens (the model's own by default).
        output: a folder for ``index.json``, ``index_quality.json`` (and the PCA projection).

    Raises:
        IndexSettingsError: a cross-encoder, ``dims`` outside ``1..dimension``,
            ``rescore < 1``, a calibration from another model, calibration on the
            evaluated (or test) split. All are checked before the corpus is encoded.

    Example:
        >>> build_index("all-MiniLM-L6-v2", "data/scifact", precision="binary", rescore=4)  # doctest: +SKIP
    """
    # 1. Settings a user typed, before anything is loaded.
    rescore_with = rescore_with or default_rescore_with(precision)
    precision, rescore, rescore_with = check_index_settings(precision, rescore, rescore_with)
    DIMENSION_SELECTIONS.get(dim_selection)
    parse_measures(INDEX_MEASURES)
    reused = load_index(calibration) if calibration is not None else None
    selection_needs_queries = dims is not None and dim_selection.strip().lower() == "relevance"
    calibration_name = (
        check_calibration_split(data_dir, calibration_split, split)
        if (selection_needs_queries and reused is None) or calibration_split is not None
        else None
    )
    # 2. The model: a bi-encoder, of the right dimension, and the calibration's own.
    model = (
        load_model(model_name_or_path, max_length=max_length)
        if isinstance(model_name_or_path, str | os.PathLike)
        else model_name_or_path
    )
    require_bi_encoder(model)
    _similarity(model)
    if reused is not None:
        _check_same_model(reused[0], model, f"the calibration {calibration}")
        if dims is not None and dims != reused[0].kept:
            raise IndexSettingsError(
                f"the calibration {calibration} keeps {reused[0].kept} dimensions, not {dims}"
            )
    dimension = int(encode_queries(model, ["dimension probe"], show_progress_bar=False).shape[1])
    if dims is not None:
        check_dims(dims, dimension)
    # 3. Data, and the calibration split's queries kept apart from the evaluated ones.
    dataset = load_beir(data_dir, split)
    calibration_set = load_beir(data_dir, calibration_name) if calibration_name else None
    if calibration_set is not None:
        shared = set(calibration_set.split_queries) & set(dataset.split_queries)
        if shared:
            raise IndexSettingsError(
                f"{len(shared)} {calibration_name} queries are also {split} queries "
                f"(e.g. {sorted(shared)[:3]}); calibrate on queries that are not reported"
            )
    # 4. The expensive part.
    documents = normalised_corpus(
        model,
        dataset,
        batch_size=batch_size,
        use_cache=use_cache,
        show_progress_bar=show_progress_bar,
    )
    if reused is not None:
        settings = dataclasses.replace(
            reused[0], precision=precision, rescore=rescore, rescore_with=rescore_with
        )
        projection = reused[1]
        if (precision == "int8" or rescore_with == "int8") and not settings.ranges:
            settings = dataclasses.replace(
                settings,
                ranges=calibrate_ranges(Selection(settings.dims, projection).apply(documents)),
            )
    else:
        vectors = (
            calibration_vectors(
                model,
                calibration_set,
                documents,
                negatives=negatives,
                batch_size=batch_size,
                show_progress_bar=show_progress_bar,
            )
            if calibration_set is not None and selection_needs_queries
            else None
        )
        source = (
            {
                "dataset": calibration_set.name,
                "split": calibration_set.split,
                "queries": int(vectors.queries.shape[0]),
                "negatives": int(negatives),
                "ranges_from": "corpus embeddings",
            }
            if calibration_set is not None and vectors is not None
            else {"ranges_from": "corpus embeddings"}
        )
        settings, projection = make_index_settings(
            model,
            documents,
            precision=precision,
            dims=dims,
            dim_selection=dim_selection,
            rescore=rescore,
            rescore_with=rescore_with,
            calibration=vectors,
            calibration_source=source,
            seed=seed,
        )
    quality = index_quality(
        model,
        dataset,
        settings,
        projection,
        documents,
        depth=depth,
        batch_size=batch_size,
        query_ids=sample_queries(dataset.split_queries, queries) if queries else None,
    )
    paths: tuple[Path, ...] = ()
    if output is not None:
        folder = Path(output)
        quality_path = atomic_write_json(folder / INDEX_QUALITY_FILE, quality)
        paths = (quality_path, save_index(settings, projection, folder))
        if projection is not None:
            paths += (folder / PROJECTION_FILE,)
    return IndexResult(settings, quality, paths)


def index_quality(
    model: Any,
    dataset: BeirDataset,
    settings: IndexSettings,
    projection: np.ndarray | None,
    documents: np.ndarray,
    *,
    depth: int = 100,
    batch_size: int = 32,
    query_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Bytes and quality (nDCG@10, R@100, paired p) of an index against the float index.

    ``query_ids``: the queries measured (all of the split's by default).
    """
    query_ids = list(dataset.split_queries) if query_ids is None else list(query_ids)
    queries = encode_queries(
        model, [dataset.queries[qid] for qid in query_ids], batch_size=batch_size
    )
    reference_settings = dataclasses.replace(
        settings,
        precision="float32",
        dims=tuple(range(settings.dimension)),
        selection="all",
        ranges=(),
        rescore=1,
        rescore_with="float32",
        projection_file=None,
        projection_sha256=None,
    )
    reference = CompressedIndex(reference_settings, documents)
    compressed = CompressedIndex(settings, documents, projection)
    doc_ids = dataset.sorted_doc_ids
    runs = {
        "float32": _run(reference, queries, query_ids, doc_ids, depth),
        "index": _run(compressed, queries, query_ids, doc_ids, depth),
    }
    means: dict[str, dict[str, float]] = {}
    per_query: dict[str, dict[str, dict[str, float]]] = {}
    for name, run in runs.items():
        means[name], per_query[name] = evaluate_run(
            dataset.qrels, run, INDEX_MEASURES, query_ids=query_ids
        )
    test = paired_test(per_query["float32"], per_query["index"], INDEX_MEASURES)
    float_bytes = reference.index_bytes
    total = compressed.index_bytes + compressed.rescore_bytes
    return {
        "kind": "index_quality",
        "model": settings.model,
        "dataset": dataset.name,
        "split": dataset.split,
        "n_queries": len(query_ids),
        "n_documents": compressed.size,
        "depth": depth,
        "index": {
            "precision": settings.precision,
            "dims": settings.kept,
            "selection": settings.selection,
            "rescore": settings.rescore,
            "rescore_with": settings.rescore_with,
        },
        "bytes_per_document": {
            "index": compressed.index_bytes / compressed.size,
            "rescore": compressed.rescore_bytes / compressed.size,
            "float32": float_bytes / compressed.size,
        },
        "bytes_total": {
            "index": compressed.index_bytes,
            "rescore": compressed.rescore_bytes,
            "float32": float_bytes,
        },
        "compression": {
            "index": float_bytes / compressed.index_bytes,
            "with_rescore_vectors": float_bytes / total,
        },
        "measures": means,
        "retention": {m: _ratio(means["index"][m], means["float32"][m]) for m in INDEX_MEASURES},
        "paired_test": test,
    }


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference else None
