"""A compressed index of corpus embeddings, searched exactly, with optional rescoring.

Which library does what, and why:

* **faiss-cpu** searches. ``IndexFlatIP`` is the float32 index; ``float16`` and
  ``int8`` are faiss ``IndexScalarQuantizer`` (``QT_fp16``, ``QT_8bit``) with the
  inner product: documents are stored at 2 or 1 byte per dimension and compared,
  decoded on the fly, with the float query (asymmetric search). The int8 ranges are
  the ones :class:`~relcomp.artifacts.IndexSettings` holds (calibrated on corpus
  embeddings), written into the quantizer rather than trained by it, so an index
  rebuilt from ``index.json`` encodes exactly as the one that was measured.
  ``binary`` is ``IndexBinaryFlat``: exact Hamming search over sign bits, the query
  binarised too. All are exhaustive (flat) indexes: no approximation beyond the
  stored precision, so a quality loss is the precision's, not the search's.
* **sentence-transformers**' ``quantize_embeddings`` makes the codes where it fits:
  sign bits (``ubinary``, ``x > 0`` packed 8 per byte); its int8 rule (per-dimension
  min / max of calibration embeddings, 256 levels) is the one the ranges follow, and
  its ``uint8`` codes with the same ranges are faiss's ``QT_8bit`` codes but at a bin
  edge, where float rounding may put a value one level apart.
* usearch would also do; faiss is chosen for its exact flat indexes of every kind
  here under one API, and because its int8 quantizer takes per-dimension ranges.

**Rescoring** retrieves ``rescore × k`` candidates from the compressed index and
orders them by the float query's inner product with other document vectors:
``int8`` (decoded through the same faiss quantizer), ``float32``, or ``index``
(the index's own vectors: ±1 for binary, sentence-transformers' rescoring, which
stores nothing more). The final order follows relcomp's rule: higher score first,
ties by row (document id) ascending.

Example:
    >>> import numpy as np
    >>> from relcomp.artifacts import IndexSettings
    >>> documents = np.array([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]], dtype=np.float32)
    >>> settings = IndexSettings(model="m", model_identity="x", dimension=2, similarity="dot",
    ...                          precision="binary", dims=(0, 1), rescore=3, rescore_with="float32")
    >>> index = CompressedIndex(settings, documents)
    >>> indices, scores = index.search(np.array([[0.9, 0.1]], dtype=np.float32), 2)
    >>> indices.tolist()
    [[0, 1]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from relcomp.artifacts import IndexSettings
from relcomp.errors import IndexSettingsError
from relcomp.index.dimensions import Selection
from relcomp.registry import Registry

__all__ = [
    "PRECISIONS",
    "RESCORE_WITH",
    "CompressedIndex",
    "binary_codes",
    "calibrate_ranges",
    "check_index_settings",
]

#: Bytes per stored dimension of each precision (binary: an eighth).
PRECISIONS: Registry[float] = Registry("index precision")
for _name, _width in (("float32", 4.0), ("float16", 2.0), ("int8", 1.0), ("binary", 0.125)):
    PRECISIONS.register(_name)(_width)

#: The document vectors rescoring can use; ``index`` means the index's own.
RESCORE_WITH: Registry[str] = Registry("rescoring vectors")
for _name in ("index", "int8", "float32"):
    RESCORE_WITH.register(_name)(_name)

_FINENESS = {"binary": 0, "int8": 1, "float16": 2, "float32": 3}


def check_index_settings(
    precision: str, rescore: object, rescore_with: str, dims: int | None = None
) -> tuple[str, int, str]:
    """Validate the settings a user types; returns ``(precision, rescore, rescore_with)`` canonical.

    Raises:
        IndexSettingsError: ``rescore`` below 1 (or not whole), or rescoring against
            vectors no finer than the index's own (it would change nothing).
        UnknownNameError: an unknown precision or rescoring name.

    Example:
        >>> check_index_settings("binary", 4, "int8")
        ('binary', 4, 'int8')
        >>> check_index_settings("int8", 0, "float32")
        Traceback (most recent call last):
        ...
        relcomp.errors.IndexSettingsError: rescore must be a whole number of at least 1 (1: no rescoring), got 0
    """
    PRECISIONS.get(precision)
    precision = precision.strip().lower()
    rescore_with = RESCORE_WITH.get(rescore_with)
    if isinstance(rescore, bool) or not isinstance(rescore, int | np.integer) or rescore < 1:
        raise IndexSettingsError(
            f"rescore must be a whole number of at least 1 (1: no rescoring), got {rescore!r}"
        )
    if rescore > 1 and precision != "binary":
        own = precision if rescore_with == "index" else rescore_with
        if _FINENESS[own] <= _FINENESS[precision]:
            raise IndexSettingsError(
                f"rescoring a {precision} index against {own} vectors changes nothing: its search "
                "already compares the float query with them; rescore with finer vectors (float32)"
            )
    return precision, int(rescore), rescore_with


def binary_codes(vectors: np.ndarray) -> np.ndarray:
    """Sign bits (``x > 0``), 8 per byte, through sentence-transformers' ``quantize_embeddings``.

    Example:
        >>> binary_codes(np.array([[0.5, -1.0, 2.0]], dtype=np.float32)).tolist()
        [[160]]
    """
    from sentence_transformers.util.quantization import quantize_embeddings

    codes: np.ndarray = quantize_embeddings(np.asarray(vectors, dtype=np.float32), "ubinary")
    return np.ascontiguousarray(codes, dtype=np.uint8)


def calibrate_ranges(vectors: np.ndarray) -> tuple[tuple[float, float], ...]:
    """Per-dimension ``(low, high)`` of calibration vectors: sentence-transformers' int8 rule.

    Example:
        >>> calibrate_ranges(np.array([[0.0, 1.0], [2.0, -1.0]]))
        ((0.0, 2.0), (-1.0, 1.0))
    """
    values = np.asarray(vectors, dtype=np.float32)
    low, high = values.min(axis=0), values.max(axis=0)
    return tuple((float(a), float(b)) for a, b in zip(low, high, strict=True))


def _int8_index(vectors: np.ndarray, ranges: tuple[tuple[float, float], ...]) -> Any:
    import faiss

    if len(ranges) != vectors.shape[1]:
        raise IndexSettingsError(
            f"the index holds {len(ranges)} int8 ranges for {vectors.shape[1]} kept dimensions"
        )
    bounds = np.asarray(ranges, dtype=np.float32).reshape(-1, 2)
    low, width = bounds[:, 0], bounds[:, 1] - bounds[:, 0]
    width = np.where(width > 0, width, 1.0).astype(np.float32)  # a constant dimension
    index = faiss.IndexScalarQuantizer(
        vectors.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    # QT_8bit's trained state is [low per dimension..., width per dimension...].
    faiss.copy_array_to_vector(np.concatenate([low, width]), index.sq.trained)
    index.is_trained = True
    index.add(vectors)
    return index


class CompressedIndex:
    """Corpus vectors stored and searched as :class:`IndexSettings` says.

    Args:
        settings: precision, kept dimensions, ranges and rescoring.
        documents: ``(n, dimension)`` float document vectors, already normalised for a
            cosine model; row order is the ranking's tie order.
        projection: the ``(d, dimension)`` rotation for ``pca`` settings.
    """

    def __init__(
        self,
        settings: IndexSettings,
        documents: np.ndarray,
        projection: np.ndarray | None = None,
    ) -> None:
        import faiss

        check_index_settings(settings.precision, settings.rescore, settings.rescore_with)
        documents = np.asarray(documents, dtype=np.float32)
        if documents.ndim != 2 or documents.shape[1] != settings.dimension:
            raise IndexSettingsError(
                f"the index is for {settings.dimension}-dimensional vectors; got shape {documents.shape}"
            )
        if (projection is None) != (settings.selection != "pca"):
            raise IndexSettingsError("a pca index needs its projection, and only it has one")
        self.settings = settings
        self.selection = Selection(tuple(settings.dims), projection)
        reduced = self.selection.apply(documents)
        self.size = reduced.shape[0]
        kept = reduced.shape[1]
        precision = settings.precision
        self._float = reduced if self._needs_float() else None
        self._index: Any
        if precision == "float32":
            self._index = faiss.IndexFlatIP(kept)
            self._index.add(reduced)
        elif precision == "float16":
            self._index = faiss.IndexScalarQuantizer(
                kept, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
            self._index.add(reduced)
        elif precision == "int8":
            self._index = _int8_index(reduced, settings.ranges)
        else:
            self._codes = binary_codes(reduced)
            self._index = faiss.IndexBinaryFlat(8 * self._codes.shape[1])
            self._index.add(self._codes)
        self._int8: Any = None
        if settings.rescore > 1 and settings.rescore_with == "int8":
            self._int8 = (
                self._index if precision == "int8" else _int8_index(reduced, settings.ranges)
            )
            self._int8_codes = faiss.vector_to_array(self._int8.codes).reshape(self.size, -1)

    def _needs_float(self) -> bool:
        return self.settings.rescore > 1 and self.settings.rescore_with == "float32"

    # -- sizes -------------------------------------------------------------------
    @property
    def index_bytes(self) -> int:
        """Bytes of the searched codes (what must sit in memory), all documents."""
        return self.size * self.settings.bytes_per_document

    @property
    def rescore_bytes(self) -> int:
        """Bytes of the extra document vectors rescoring reads (0 when it reads the index's own)."""
        return self.size * self.settings.rescore_bytes_per_document

    # -- search ------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` documents of each query: ``(rows, scores)``, each ``(m, min(k, n))``.

        ``queries`` are full float vectors (normalised, for a cosine model); scores
        are inner products in the kept coordinates (binary without rescoring: the
        ±1 sign vectors' inner product, ``d - 2 × Hamming distance``).
        """
        reduced = self.selection.apply(np.atleast_2d(queries))
        k = min(int(k), self.size)
        depth = min(self.size, k * self.settings.rescore)
        if self.settings.precision == "binary":
            distances, rows = self._index.search(binary_codes(reduced), depth)
            scores = self.settings.kept - 2.0 * distances.astype(np.float64)
        else:
            scores, rows = self._index.search(reduced, depth)
        rows = rows.astype(np.int64)
        if self.settings.rescore > 1:
            scores = self._rescore(reduced, rows)
        return _best(rows, np.asarray(scores, dtype=np.float64), k)

    def _rescore(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        vectors = self._rescoring_vectors(rows.reshape(-1)).reshape(*rows.shape, -1)
        return np.einsum("qd,qcd->qc", queries.astype(np.float64), vectors.astype(np.float64))

    def _rescoring_vectors(self, rows: np.ndarray) -> np.ndarray:
        with_ = self.settings.rescore_with
        if with_ == "float32":
            assert self._float is not None
            return self._float[rows]
        if with_ == "int8":
            assert self._int8 is not None
            decoded: np.ndarray = self._int8.sa_decode(self._int8_codes[rows])
            return decoded
        # "index": the stored vectors themselves; only binary's differ from its search
        bits = np.unpackbits(self._codes[rows], axis=1)[:, : self.settings.kept]
        return bits.astype(np.float32) * 2.0 - 1.0


def _best(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the ``k`` best candidates: higher score first, ties by row ascending."""
    valid = rows >= 0  # faiss pads with -1 when it finds fewer
    scores = np.where(valid, scores, -np.inf)
    order = np.lexsort((np.where(valid, rows, np.iinfo(np.int64).max), -scores), axis=1)[:, :k]
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(scores, order, axis=1)
