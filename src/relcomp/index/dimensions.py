"""Which embedding dimensions an index keeps: by relevance, or by a blind rule.

A dot product is a sum over dimensions, so for one (query, document) pair the share
of dimension ``j`` in the similarity is exactly ``q_j * d_j``
(:func:`dimension_shares`; for a cosine model the vectors are normalised first, so
the shares sum to the cosine). Keeping only some dimensions removes exactly the
others' shares from every score. **Relevance** selection
(:func:`relevance_per_dimension`) averages, over calibration queries (train/dev,
never the evaluated split), each dimension's share of the margin between the
query's judged documents and its hardest unjudged competitors (the float index's
top-ranked documents that are not judged relevant): the dimensions whose removal
would cost the most margin are kept. With ``negatives=0`` only the judged
documents' shares are used.

Blind baselines at the same ``d``: ``first`` (dimensions ``0..d-1``), ``random``
(seeded), ``variance`` (highest variance over the corpus embeddings), and ``pca``:
the top-``d`` principal directions of the corpus embeddings, which is a
**rotation**, not a choice of dimensions. The projection is ``x ↦ P x`` with no
mean subtracted, so a reduced score ``(P q)·(P d)`` is the original inner product
restricted to a ``d``-dimensional subspace, comparable with the other rules. Kept
coordinates are never re-normalised: a reduced score is the sum of the kept
dimensions' exact shares.

Example:
    >>> import numpy as np
    >>> q, d = np.array([[0.6, 0.8]]), np.array([[0.8, 0.6]])
    >>> dimension_shares(q, d).tolist(), float(dimension_shares(q, d).sum())
    ([[0.48, 0.48]], 0.96)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from relcomp.errors import IndexSettingsError
from relcomp.registry import Registry

__all__ = [
    "DIMENSION_SELECTIONS",
    "Calibration",
    "Selection",
    "check_dims",
    "dimension_shares",
    "relevance_per_dimension",
    "select_dimensions",
]


def dimension_shares(queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """Each dimension's share of each aligned pair's dot product: ``queries * documents``.

    Args:
        queries: ``(n, dim)`` query vectors (normalised, for a cosine model).
        documents: ``(n, dim)`` document vectors, row ``i`` paired with query ``i``.

    Returns:
        ``(n, dim)`` shares; row ``i`` sums to ``queries[i] · documents[i]``.

    Example:
        >>> dimension_shares(np.array([[1.0, 2.0]]), np.array([[3.0, -1.0]])).tolist()
        [[3.0, -2.0]]
    """
    queries, documents = np.asarray(queries), np.asarray(documents)
    if queries.shape != documents.shape or queries.ndim != 2:
        raise ValueError(
            f"queries and documents must be aligned (n, dim) arrays, got {queries.shape} and {documents.shape}"
        )
    result: np.ndarray = queries * documents
    return result


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Calibration vectors for relevance selection, one row per query.

    ``positives[i]`` is the mean of query ``i``'s judged documents; ``negatives[i]``
    the mean of its hard negatives (``None`` when no negatives are used). Means are
    enough: a dimension's share is linear in the document vector.
    """

    queries: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray | None = None


def relevance_per_dimension(calibration: Calibration) -> np.ndarray:
    """Mean share of each dimension in the positive-minus-negative margin.

    Args:
        calibration: query vectors with the mean of their judged documents and, if
            given, of their hard negatives.

    Returns:
        ``(dim,)``: ``mean_i q_ij (p_ij - n_ij)`` (or ``mean_i q_ij p_ij`` with no
        negatives). Summed over dimensions it is the mean margin itself.

    Example:
        >>> c = Calibration(np.array([[1.0, 1.0]]), np.array([[0.5, 0.2]]), np.array([[0.5, -0.2]]))
        >>> relevance_per_dimension(c).tolist()
        [0.0, 0.4]
    """
    documents = calibration.positives
    if calibration.negatives is not None:
        documents = calibration.positives - calibration.negatives
    result: np.ndarray = dimension_shares(calibration.queries, documents).mean(axis=0)
    return result


@dataclasses.dataclass(frozen=True)
class Selection:
    """The kept coordinates: ``dims`` of the original vectors, or a rotation ``projection``.

    ``projection`` (``(d, dim)`` float32, orthonormal rows) is set for ``pca`` only;
    then ``dims`` is ``0..d-1``, the rotated coordinates.
    """

    dims: tuple[int, ...]
    projection: np.ndarray | None = None

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """The kept coordinates of ``vectors`` (``(n, dim)`` → ``(n, d)`` float32)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.projection is not None:
            return np.ascontiguousarray(vectors @ self.projection.T, dtype=np.float32)
        return np.ascontiguousarray(vectors[:, list(self.dims)])


SelectionRule = Callable[[np.ndarray, int, "Calibration | None", int], Selection]

#: Rules that choose ``d`` coordinates: ``(corpus vectors, d, calibration, seed) -> Selection``.
DIMENSION_SELECTIONS: Registry[SelectionRule] = Registry("dimension selection")


def _ordered(scores: np.ndarray, d: int) -> tuple[int, ...]:
    """The ``d`` highest-scoring dimensions, ties by index, returned in index order."""
    order = np.lexsort((np.arange(scores.size), -scores))[:d]
    return tuple(int(j) for j in np.sort(order))


@DIMENSION_SELECTIONS.register("all")
def _all(corpus: np.ndarray, d: int, calibration: Calibration | None, seed: int) -> Selection:
    return Selection(tuple(range(corpus.shape[1])))


@DIMENSION_SELECTIONS.register("relevance")
def _relevance(corpus: np.ndarray, d: int, calibration: Calibration | None, seed: int) -> Selection:
    if calibration is None:
        raise IndexSettingsError(
            "relevance selection needs calibration queries with judged documents (train/dev)"
        )
    return Selection(_ordered(relevance_per_dimension(calibration), d))


@DIMENSION_SELECTIONS.register("first")
def _first(corpus: np.ndarray, d: int, calibration: Calibration | None, seed: int) -> Selection:
    return Selection(tuple(range(d)))


@DIMENSION_SELECTIONS.register("random")
def _random(corpus: np.ndarray, d: int, calibration: Calibration | None, seed: int) -> Selection:
    chosen = np.random.default_rng(seed).choice(corpus.shape[1], size=d, replace=False)
    return Selection(tuple(int(j) for j in np.sort(chosen)))


@DIMENSION_SELECTIONS.register("variance")
def _variance(corpus: np.ndarray, d: int, calibration: Calibration | None, seed: int) -> Selection:
    return Selection(_ordered(corpus.astype(np.float64).var(axis=0), d))


@DIMENSION_SELECTIONS.register("pca")
def _pca(corpus: np.ndarray, d: int, calibration: Calibration | None, seed: int) -> Selection:
    values = corpus.astype(np.float64)
    covariance = np.cov(values, rowvar=False)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    top = eigenvectors[:, np.argsort(-eigenvalues, kind="stable")[:d]].T
    # An eigenvector's sign is arbitrary: fix it so the largest entry is positive.
    signs = np.sign(top[np.arange(d), np.abs(top).argmax(axis=1)])
    projection = (top * signs[:, None]).astype(np.float32)
    return Selection(tuple(range(d)), projection)


def select_dimensions(
    method: str,
    corpus: np.ndarray,
    d: int | None,
    calibration: Calibration | None = None,
    seed: int = 13,
) -> Selection:
    """Choose ``d`` coordinates of the corpus vectors by ``method`` (see the module doc).

    Args:
        method: a name in :data:`DIMENSION_SELECTIONS`.
        corpus: ``(n, dim)`` document vectors (normalised, for a cosine model).
        d: how many to keep, ``1..dim``; ``None`` keeps all (``method`` is ignored).
        calibration: what ``relevance`` needs.
        seed: ``random``'s seed.

    Returns:
        A :class:`Selection`.

    Raises:
        IndexSettingsError: ``d`` outside ``1..dim``, or relevance with no calibration.

    Example:
        >>> corpus = np.array([[1.0, 0.0, 3.0], [-1.0, 0.1, 3.0]])
        >>> select_dimensions("variance", corpus, 1).dims
        (0,)
        >>> select_dimensions("first", corpus, 4)
        Traceback (most recent call last):
        ...
        relcomp.errors.IndexSettingsError: dims must be between 1 and 3 (the model's dimension), got 4
    """
    rule = DIMENSION_SELECTIONS.get(method)
    dimension = corpus.shape[1]
    if d is None:
        return _all(corpus, dimension, calibration, seed)
    check_dims(d, dimension)
    if rule is _all and d != dimension:
        raise IndexSettingsError(
            f"selection 'all' keeps all {dimension} dimensions; choose a rule to keep {d}"
        )
    return rule(corpus, int(d), calibration, seed)


def check_dims(d: object, dimension: int) -> None:
    """Raise :class:`IndexSettingsError` unless ``d`` is a whole number in ``1..dimension``."""
    if isinstance(d, bool) or not isinstance(d, int | np.integer) or not 1 <= d <= dimension:
        raise IndexSettingsError(
            f"dims must be between 1 and {dimension} (the model's dimension), got {d!r}"
        )
