"""The typed hand-offs between relcomp's stages.

Every artifact is a frozen dataclass with a ``version``, a JSON round trip
(``to_json`` / ``from_json``) and atomic ``save`` / ``load``. A stage imports only
this module, :mod:`relcomp.models` and the stages before it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from relcomp._io import atomic_write_json
from relcomp.errors import DataFormatError

__all__ = [
    "Artifact",
    "ComponentRelevance",
    "QualityReport",
    "TokenInteractions",
    "TokenRelevance",
]

A = TypeVar("A", bound="Artifact")


def _plain(value: Any) -> Any:
    """Turn numpy scalars/arrays and tuples into JSON-ready Python values."""
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _frozen(value: Any) -> Any:
    """Lists become tuples so that an artifact is immutable and compares after a round trip."""
    if isinstance(value, np.ndarray):
        return _frozen(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _frozen(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class Artifact:
    """Base class: JSON round trip, versioning and atomic save/load."""

    KIND: ClassVar[str] = "artifact"
    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _frozen(getattr(self, field.name)))

    def to_dict(self) -> dict[str, Any]:
        payload = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"kind": self.KIND, "version": self.VERSION, **payload}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls: type[A], data: Mapping[str, Any], *, source: object = "<dict>") -> A:
        data = dict(data)
        kind = data.pop("kind", cls.KIND)
        version = data.pop("version", None)
        if kind != cls.KIND:
            raise DataFormatError(source, None, f"expected a {cls.KIND!r} artifact, found {kind!r}")
        if version != cls.VERSION:
            raise DataFormatError(
                source,
                None,
                f"{cls.KIND} version {version!r} is not supported (expected {cls.VERSION})",
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if unknown or missing:
            raise DataFormatError(
                source, None, f"{cls.KIND}: unknown keys {unknown}, missing keys {missing}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls: type[A], text: str, *, source: object = "<json>") -> A:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataFormatError(source, error.lineno, f"invalid JSON: {error.msg}") from None
        if not isinstance(data, dict):
            raise DataFormatError(source, 1, f"expected a JSON object holding a {cls.KIND}")
        return cls.from_dict(data, source=source)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls: type[A], path: str | os.PathLike[str]) -> A:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise DataFormatError(path, None, f"cannot read: {error.strerror}") from None
        return cls.from_json(text, source=path)


@dataclasses.dataclass(frozen=True)
class TokenRelevance(Artifact):
    """Relevance of every token of one (query, document) pair for the score it explains.

    ``segment`` marks each token: 0 query, 1 document, -1 special token. For a
    bi-encoder explained one side at a time, ``side`` says which side the tokens
    belong to ("query" or "document"); for a cross-encoder it is "pair".
    ``conservation_error`` is ``score - sum(relevance)``: what biases, the LRP
    stabiliser and (for baselines) the method's approximation did not assign.
    """

    KIND: ClassVar[str] = "token_relevance"

    method: str
    query: str
    document: str
    score: float
    tokens: tuple[str, ...]
    relevance: tuple[float, ...]
    segment: tuple[int, ...]
    words: tuple[str, ...]
    word_relevance: tuple[float, ...]
    word_segment: tuple[int, ...]
    conservation_error: float
    side: str = "pair"

    def top_words(self, segment: int, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` words of one segment (0 query, 1 document) with the highest relevance."""
        items = [
            (word, value)
            for word, value, seg in zip(
                self.words, self.word_relevance, self.word_segment, strict=True
            )
            if seg == segment
        ]
        return sorted(items, key=lambda item: item[1], reverse=True)[:k]


@dataclasses.dataclass(frozen=True)
class TokenInteractions(Artifact):
    """Second-order relevance (BiLRP) of (query token, document token) pairs.

    ``interactions[i][j]`` is how much the match of query token ``i`` with document
    token ``j`` contributes to the similarity ``score``; all entries sum to the score
    up to ``conservation_error``.
    """

    KIND: ClassVar[str] = "token_interactions"

    method: str
    query: str
    document: str
    score: float
    query_tokens: tuple[str, ...]
    document_tokens: tuple[str, ...]
    interactions: tuple[tuple[float, ...], ...]
    conservation_error: float

    def matrix(self) -> np.ndarray:
        return np.asarray(self.interactions, dtype=np.float64)

    def top_pairs(self, k: int = 5) -> list[tuple[str, str, float]]:
        """The ``k`` (query token, document token) pairs with the largest interaction."""
        matrix = self.matrix()
        flat = np.argsort(matrix, axis=None)[::-1][:k]
        return [
            (self.query_tokens[i], self.document_tokens[j], float(matrix[i, j]))
            for i, j in zip(*np.unravel_index(flat, matrix.shape), strict=True)
        ]


@dataclasses.dataclass(frozen=True)
class ComponentRelevance(Artifact):
    """Relevance of the model's components, aggregated over a calibration set.

    ``components`` maps a kind to ``{name: {"mean_abs", "mean_signed", "count"}}``.
    Kinds and their names:

    * ``layer`` (the residual stream after a layer), ``attention`` (an attention
      block's output), ``mlp`` (an FFN block's output): one value each, named by the
      transformer layer (``bert.encoder.layer.3``);
    * ``head``: one value per attention head, named by the layer;
    * ``neuron``: one value per FFN neuron, named by the layer;
    * ``linear``: one value per Linear module (its output), named by the module as
      in ``model.named_modules()`` — the names compression plans use.

    ``mean_abs`` and ``mean_signed`` are lists (of one value for block-level kinds),
    the mean over pairs of the relevance summed over tokens.
    """

    KIND: ClassVar[str] = "component_relevance"

    model: str
    method: str
    n_pairs: int
    components: Mapping[str, Mapping[str, Mapping[str, Any]]]
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def by_kind(self, kind: str, statistic: str = "mean_abs") -> dict[str, np.ndarray]:
        """``{name: values}`` for every component of one kind, in model order."""
        if kind not in self.components:
            raise KeyError(f"no {kind!r} components; this artifact has {self.kinds()}")
        return {
            name: np.asarray(entry[statistic], dtype=np.float64)
            for name, entry in self.components[kind].items()
        }

    def kinds(self) -> list[str]:
        return sorted(self.components)


@dataclasses.dataclass(frozen=True)
class QualityReport(Artifact):
    """Retrieval quality of one system on one collection split.

    ``measures`` holds the mean of each measure (``nDCG@10``, ``RR@10``, ``R@100``…),
    ``per_query`` maps query id → measure → value. ``tie_rate`` is the share of
    adjacent score ties in each query's top-10, averaged over queries.
    ``truncation`` counts the inputs cut to the model's maximum length.
    """

    KIND: ClassVar[str] = "quality_report"

    model: str
    dataset: str
    split: str
    measures: Mapping[str, float]
    per_query: Mapping[str, Mapping[str, float]]
    n_queries: int
    first_stage: str | None = None
    depth: int | None = None
    max_length: int | None = None
    tie_rate: float = 0.0
    truncation: Mapping[str, int] = dataclasses.field(default_factory=dict)
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
