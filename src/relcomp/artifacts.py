"""The typed hand-offs between relcomp's stages.

Every artifact is a frozen dataclass with a ``version``, a JSON round trip
(``to_json`` / ``from_json``) and atomic ``save`` / ``load``. A stage imports only
this module, :mod:`relcomp.models` and the stages before it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from relcomp._io import atomic_write_json
from relcomp.budgets import COMPRESSION_BUDGETS, check_budget_values
from relcomp.checks import require_finite
from relcomp.errors import DataFormatError, PlanError

if TYPE_CHECKING:
    from relcomp.compression.actions import Action
    from relcomp.compression.size import SizeEstimate
    from relcomp.compression.statistics import ActivationStatistics
    from relcomp.models.base import RankingModel

__all__ = [
    "COMPRESSION_BUDGETS",
    "EMBEDDINGS",
    "EXPORT_BUNDLE_FILE",
    "INDEX_QUALITY_FILE",
    "INDEX_SETTINGS_FILE",
    "NDCG_AT_10",
    "AgreementGate",
    "Artifact",
    "ComponentRelevance",
    "CompressionPlan",
    "ExportBundle",
    "IndexSettings",
    "ParityReport",
    "PlanCandidate",
    "PlansTried",
    "QualityComparison",
    "QualityReport",
    "RecoveryLog",
    "ReferencePoint",
    "SpeedReport",
    "SystemQuality",
    "SystemSpeed",
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


F = TypeVar("F", bound="_FileLayout")


class _FileLayout:
    """JSON text and atomic files of an artifact, given its ``to_dict`` and ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[F], data: Mapping[str, Any], *, source: object = "<dict>") -> F:
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls: type[F], text: str, *, source: object = "<json>") -> F:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataFormatError(source, error.lineno, f"invalid JSON: {error.msg}") from None
        if not isinstance(data, dict):
            kind = getattr(cls, "KIND", cls.__name__)
            raise DataFormatError(source, 1, f"expected a JSON object holding a {kind}")
        return cls.from_dict(data, source=source)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls: type[F], path: str | os.PathLike[str]) -> F:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise DataFormatError(path, None, f"cannot read: {error.strerror}") from None
        return cls.from_json(text, source=path)


@dataclasses.dataclass(frozen=True)
class Artifact(_FileLayout):
    """Base class: JSON round trip, versioning and atomic save/load."""

    KIND: ClassVar[str] = "artifact"
    VERSION: ClassVar[int] = 1
    #: Older versions still read: their files lack only fields that have a default.
    READS_VERSIONS: ClassVar[tuple[int, ...]] = ()

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _frozen(getattr(self, field.name)))

    def to_dict(self) -> dict[str, Any]:
        payload = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"kind": self.KIND, "version": self.VERSION, **payload}

    @classmethod
    def from_dict(cls: type[A], data: Mapping[str, Any], *, source: object = "<dict>") -> A:
        data = dict(data)
        kind = data.pop("kind", cls.KIND)
        version = data.pop("version", None)
        if kind != cls.KIND:
            raise DataFormatError(source, None, f"expected a {cls.KIND!r} artifact, found {kind!r}")
        if version != cls.VERSION and version not in cls.READS_VERSIONS:
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


@dataclasses.dataclass(frozen=True)
class TokenRelevance(Artifact):
    """Relevance of every token of one (query, document) pair for the score it explains.

    ``segment`` marks each token: 0 query, 1 document, -1 special token. For a
    bi-encoder explained one side at a time, ``side`` says which side the tokens
    belong to ("query" or "document"); for a cross-encoder it is "pair".
    ``conservation_error`` is ``score - sum(relevance)``: what biases, the LRP
    stabiliser and (for baselines) the method's approximation did not assign.
    ``truncated``: the pair was cut to the model's maximum length, so the tokens
    explained are not the whole text.
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
    truncated: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        # a NaN relevance would be written as null and read as "no relevance at all"
        what = f"token relevance ({self.method}) of {self.query[:40]!r}"
        require_finite(self.score, f"{what}: the score")
        require_finite(self.relevance, f"{what}: relevance")
        require_finite(self.word_relevance, f"{what}: word relevance")
        require_finite(self.conservation_error, f"{what}: conservation error")

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
    * ``linear_l1``: the same modules, with the absolute relevance of each output
      element summed (``Σ|R|`` instead of ``|ΣR|``): how much relevance passes
      through the module whatever its sign, which is what perturbing the module's
      weights (quantization) disturbs.

    ``mean_abs`` and ``mean_signed`` are lists (of one value for block-level kinds),
    the mean over pairs of the relevance summed over tokens.
    """

    KIND: ClassVar[str] = "component_relevance"

    model: str
    method: str
    n_pairs: int
    components: Mapping[str, Mapping[str, Mapping[str, Any]]]
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        # a plan made from NaN relevance would be arbitrary: refuse it where it is made or read
        for kind, entries in self.components.items():
            for name, entry in entries.items():
                for statistic in ("mean_abs", "mean_signed"):
                    if statistic in entry:
                        require_finite(
                            entry[statistic],
                            f"{self.method} component relevance, {kind} {name} ({statistic})",
                        )

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
    ``by_depth`` holds, for a re-ranker, the mean measures it would have had with a
    shallower re-ranking depth (``{"30": {"nDCG@10": …}}``): the same scores, with
    only the first stage's top-k of each query kept, which is what re-ranking k
    candidates gives (the pairs are scored independently).
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
    by_depth: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ParityReport(Artifact):
    """How closely a candidate (an ONNX bundle) scores and ranks like a reference model.

    Computed over groups of candidates, one group per query. ``max_abs_diff`` and
    ``mean_abs_diff`` are over every (query, document) pair, in score units;
    ``kendall_tau`` is Kendall's τ-b between the two models' scores within a group,
    averaged over groups (``kendall_tau_min`` the worst group); ``top10_overlap`` is
    the share of the reference's top-10 that the candidate also puts in its top-10,
    averaged; the tie rates are those of :func:`relcomp.evaluation.tie_rate`.
    ``per_query`` holds each group's ``tau``, ``top10_overlap`` and ``max_abs_diff``.
    """

    KIND: ClassVar[str] = "parity_report"

    reference: str
    candidate: str
    n_queries: int
    n_pairs: int
    max_abs_diff: float
    mean_abs_diff: float
    kendall_tau: float
    kendall_tau_min: float
    top10_overlap: float
    tie_rate_reference: float
    tie_rate_candidate: float
    per_query: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    source: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: explanation parity: AttnLRP token-relevance agreement (Spearman, top-k overlap) of
    #: the compressed model's torch twin with the uncompressed model, per pair and mean
    explanation: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The headline figures, without ``per_query`` or per-pair explanation figures."""
        summary = {
            k: v for k, v in self.to_dict().items() if k not in ("kind", "version", "per_query")
        }
        if summary.get("explanation"):
            summary["explanation"] = {
                k: v for k, v in summary["explanation"].items() if k != "per_pair"
            }
        return summary


@dataclasses.dataclass(frozen=True)
class AgreementGate(Artifact):
    """The agreement gate of a collection with no judged dev or train split.

    With no judgements it may use, the gate asks how closely the compressed model
    ranks like the uncompressed one on corpus pseudo-queries: ``top10_overlap`` is the
    share of the reference's top-10 (of each query's candidates) that the candidate
    also puts in its top-10, averaged over queries; ``kendall_tau`` is Kendall's τ-b
    between the two models' scores of each query's candidates, averaged
    (``kendall_tau_min`` the worst query). Both are computed as an export's parity is
    (:class:`ParityReport`). The gate passes when both reach their minimum.

    Example:
        >>> gate = AgreementGate("m", "m-int8", "toy", "pseudo-queries", 2, "bm25", 30,
        ...                      top10_overlap=0.9, kendall_tau=0.8, kendall_tau_min=0.7,
        ...                      min_overlap=0.8, min_tau=0.7)
        >>> gate.passed, AgreementGate.from_json(gate.to_json()) == gate
        (True, True)
        >>> gate.summary()["kind"], gate.summary()["passed"]
        ('agreement', True)
    """

    KIND: ClassVar[str] = "agreement_gate"

    reference: str
    candidate: str
    dataset: str
    split: str
    n_queries: int
    first_stage: str | None
    depth: int
    top10_overlap: float
    kendall_tau: float
    kendall_tau_min: float
    min_overlap: float
    min_tau: float
    #: query id → its text: the pseudo-queries the gate ranked with
    queries: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: query id → ``top10_overlap`` and ``tau`` of that query
    per_query: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        # a NaN compares False, but say so: a gate never passes on a non-finite number
        figures = (self.top10_overlap, self.kendall_tau)
        return (
            all(math.isfinite(value) for value in figures)
            and self.top10_overlap >= self.min_overlap - 1e-9
            and self.kendall_tau >= self.min_tau - 1e-9
        )

    def summary(self) -> dict[str, Any]:
        """The figures as plain JSON values (what ``quality.json`` records as its gate)."""
        return {
            "kind": "agreement",
            "measure": "top-10 overlap and Kendall's tau with the uncompressed model",
            "dataset": self.dataset,
            "split": self.split,
            "n_queries": self.n_queries,
            "first_stage": self.first_stage,
            "depth": self.depth,
            "top10_overlap": self.top10_overlap,
            "kendall_tau": self.kendall_tau,
            "kendall_tau_min": self.kendall_tau_min,
            "min_overlap": self.min_overlap,
            "min_tau": self.min_tau,
            "passed": self.passed,
        }


#: The headline measure: what the quality gate, the plans tried and the report read,
#: in ir_measures' spelling (the files' ``ndcg@10`` keys are its lower case).
NDCG_AT_10 = "nDCG@10"

#: How a bundle may store the word-embedding table: as plans leave it (they cover
#: Linears only), or int8.
EMBEDDINGS: tuple[str, ...] = ("fp32", "int8")

#: The marker file of an ONNX bundle: an :class:`ExportBundle` as JSON.
EXPORT_BUNDLE_FILE = "relcomp_bundle.json"


@dataclasses.dataclass(frozen=True)
class ExportBundle(Artifact):
    """An exported model: what ``relcomp export`` wrote, and how the plan was realised.

    Saved as ``relcomp_bundle.json`` (:data:`EXPORT_BUNDLE_FILE`) in a folder laid out
    as sentence-transformers expects (config, tokenizer, ``onnx/model_<variant>.onnx``,
    ``plan.json``, ``parity.json``). ``size_bytes`` counts the ONNX file and its
    external data, as stored; ``fp32_size_bytes`` the plain float32 export of the same
    (pruned) model before quantization. ``modules`` maps each Linear to the precision
    it runs at in ONNX Runtime; ``model_kind`` is ``cross-encoder`` or ``bi-encoder``
    (``kind`` names the artifact); ``nodes`` maps each realised precision to the graph
    nodes that carry it; ``fusion`` counts the fused operators (and names the attention
    operator used). ``notes`` says
    everything the bundle does differently from the plan, or gains nothing from.

    Example:
        >>> bundle = ExportBundle(model="m", model_kind="cross-encoder", family="bert",
        ...                       variant="fp32", onnx_file="onnx/model_fp32.onnx",
        ...                       exporter="optimum", size_bytes=10, fp32_size_bytes=10,
        ...                       max_length=128)
        >>> ExportBundle.from_json(bundle.to_json()) == bundle
        True
    """

    KIND: ClassVar[str] = "export_bundle"

    model: str
    model_kind: str
    family: str
    variant: str
    onnx_file: str
    exporter: str
    size_bytes: int
    fp32_size_bytes: int
    max_length: int
    plan: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    modules: Mapping[str, str] = dataclasses.field(default_factory=dict)
    nodes: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    fusion: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    notes: tuple[str, ...] = ()
    parity: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    gate: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    versions: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def size_mb(self) -> float:
        """``size_bytes`` in MB (10^6 bytes)."""
        return self.size_bytes / 1e6


@dataclasses.dataclass(frozen=True)
class CompressionPlan(Artifact):
    """What to do to each module of one model: an ordered ``{pattern: action}`` map.

    A pattern is a module name as in ``model.named_modules()``, ``"re:<regex>"``
    (matched in full against module names) or ``"_default"`` (every module the action
    applies to). ``entries`` keeps the pairs in order, as a tuple, so that JSON keeps
    the order and a pattern may carry several actions of different kinds (``int8``
    and ``sparsify(threshold=0.1)`` on one Linear). Actions are stored in their
    canonical string form (:mod:`relcomp.compression.actions`).

    For each module and each kind of action (precision, head pruning, neuron pruning,
    weight pruning, sparsity, low rank), an explicit name wins over a regex, the first
    matching regex over later ones, and any of them over ``_default``; two explicit
    entries that disagree are an error, as are actions that exclude each other.

    ``budget`` is what the plan was asked to meet (keys in
    :data:`COMPRESSION_BUDGETS`), ``achieved`` what it reaches, as
    :func:`relcomp.compression.estimate_size` computes it, and ``relevance`` names the
    :class:`ComponentRelevance` (method, source) the plan was made from.

    Example:
        >>> plan = CompressionPlan(
        ...     model="tiny-bert",
        ...     entries={"_default": "int8", "re:classifier.*": "fp32"},
        ...     method="uniform",
        ...     budget={"bits_per_weight": 8},
        ... )
        >>> plan.entries
        (('_default', 'int8(per_channel=True)'), ('re:classifier.*', 'fp32'))
        >>> CompressionPlan.from_json(plan.to_json()) == plan
        True
    """

    KIND: ClassVar[str] = "compression_plan"

    model: str
    entries: tuple[tuple[str, str], ...]
    method: str = "manual"
    budget: Mapping[str, float] = dataclasses.field(default_factory=dict)
    achieved: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    relevance: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: the planner's own calibration pairs (Taylor scores, Wanda and TEAL statistics):
    #: how many, from which split, and how many the model truncated; empty without any
    calibration: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        from relcomp.compression.actions import parse_action

        entries: Any = self.entries
        if isinstance(entries, Mapping):
            entries = list(entries.items())
        if isinstance(entries, str) or not isinstance(entries, list | tuple):
            raise PlanError(f"plan entries must be pairs (pattern, action), got {entries!r}")
        object.__setattr__(self, "entries", entries)
        super().__post_init__()
        normalised = []
        for entry in self.entries:
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise PlanError(f"a plan entry must be a (pattern, action) pair, got {entry!r}")
            pattern, action = entry
            _check_pattern(pattern)
            try:
                canonical = str(parse_action(action))
            except PlanError as error:
                raise PlanError(f"entry {pattern!r}: {error}") from None
            normalised.append((pattern, canonical))
        object.__setattr__(self, "entries", tuple(normalised))
        check_budget_values(self.budget)

    def actions(self) -> list[tuple[str, Action]]:
        """The entries with their actions parsed, in plan order."""
        from relcomp.compression.actions import parse_action

        return [(pattern, parse_action(action)) for pattern, action in self.entries]

    def resolve(self, model: RankingModel) -> dict[str, list[Action]]:
        """``{module name: actions}`` for every module the plan touches (regexes expanded).

        Structural actions are keyed by the module that owns what they remove: the
        attention module for ``prune_heads``, the FFN's input Linear for
        ``prune_neurons``. Raises :class:`~relcomp.compression.PlanError` for a plan
        that does not fit the model.
        """
        from relcomp.compression.resolve import resolve_plan

        return resolve_plan(self, model)

    def estimate(
        self,
        model: RankingModel,
        statistics: Mapping[str, ActivationStatistics] | None = None,
    ) -> SizeEstimate:
        """Stored size, bits per weight and parameters removed (see ``estimate_size``)."""
        from relcomp.compression.size import estimate_size

        return estimate_size(model, self, statistics=statistics)

    def with_achieved(
        self,
        model: RankingModel,
        statistics: Mapping[str, ActivationStatistics] | None = None,
    ) -> CompressionPlan:
        """A copy whose ``achieved`` is what :meth:`estimate` computes on ``model``."""
        return dataclasses.replace(self, achieved=self.estimate(model, statistics).achieved())

    def split_structural(self) -> tuple[CompressionPlan, CompressionPlan]:
        """``(structural, rest)``: head/neuron pruning, and everything else.

        ``prune_physically`` carries out the first; the second applies unchanged to
        the pruned model (module names survive pruning).
        """
        pairs = list(zip(self.entries, self.actions(), strict=True))
        structural = tuple(entry for entry, (_, action) in pairs if action.structural)
        rest = tuple(entry for entry, (_, action) in pairs if not action.structural)
        return (
            dataclasses.replace(self, entries=structural, achieved={}),
            dataclasses.replace(self, entries=rest, achieved={}),
        )

    def fingerprint(self) -> str:
        """A short digest of the entries: equal for plans that ask the same of a model."""
        return hashlib.sha256(json.dumps(_plain(self.entries)).encode()).hexdigest()[:12]


def _check_pattern(pattern: Any) -> None:
    import re

    if not isinstance(pattern, str) or not pattern.strip():
        raise PlanError(
            f"a plan pattern must be a module name, 're:<regex>' or '_default', got {pattern!r}"
        )
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as error:
            raise PlanError(f"pattern {pattern!r} is not a valid regex: {error}") from None


# -- the end of the flow: speed, plans tried, the quality comparison ----------------------
# These keep the JSON layout the compress flow has always written (the files are
# contracts that reports and users read), so they write their own dicts instead of
# Artifact's field-per-key one; speed.json and candidates.json carry no kind/version
# keys for the same reason, and their VERSION changes with their layout.
def _number_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _recorded_number(value: Any) -> float | None:
    """A finite number a file recorded; ``None`` when it lacks one (files written before the key)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _recorded_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _recorded_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _p50_latency(value: Any) -> float | None:
    """A latency recorded as a number or as percentiles (of which ``p50``)."""
    return _recorded_number(value.get("p50") if isinstance(value, Mapping) else value)


@dataclasses.dataclass(frozen=True)
class SystemSpeed:
    """One system's timing: latency at batch 1 (ms) and throughput at ``batch_size`` (pairs/s)."""

    latency_p50_ms: float
    latency_p95_ms: float
    pairs_per_s: float
    batch_size: int
    latency_pairs: int
    repeats: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": {"p50": self.latency_p50_ms, "p95": self.latency_p95_ms},
            "pairs_per_s": self.pairs_per_s,
            "batch_size": self.batch_size,
            "latency_pairs": self.latency_pairs,
            "repeats": self.repeats,
            "threads": self.threads,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SystemSpeed:
        return cls(
            float(data["latency_ms"]["p50"]),
            float(data["latency_ms"]["p95"]),
            float(data["pairs_per_s"]),
            int(data["batch_size"]),
            int(data["latency_pairs"]),
            int(data["repeats"]),
            int(data["threads"]),
        )


@dataclasses.dataclass(frozen=True)
class SpeedReport(_FileLayout):
    """``evaluation/speed.json``: the timing of each system, measured interleaved.

    Example:
        >>> speed = SpeedReport({"reference": SystemSpeed(2.0, 3.0, 500.0, 32, 32, 5, 2)})
        >>> SpeedReport.from_json(speed.to_json()) == speed, speed["reference"].latency_p50_ms
        (True, 2.0)
    """

    VERSION: ClassVar[int] = 1

    systems: Mapping[str, SystemSpeed]

    def __getitem__(self, name: str) -> SystemSpeed:
        return self.systems[name]

    def to_dict(self) -> dict[str, Any]:
        return {name: system.to_dict() for name, system in self.systems.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: object = "<dict>") -> SpeedReport:
        return cls({name: SystemSpeed.from_dict(entry) for name, entry in data.items()})


#: The JSON key of a point's nDCG@10 (lower case, as the files have always written it).
_NDCG_KEY = NDCG_AT_10.lower()


@dataclasses.dataclass(frozen=True)
class ReferencePoint:
    """The uncompressed model as a point of the plans-tried plots: size, latency, quality."""

    name: str
    size_mb: float
    latency_ms: float | None
    pairs_per_s: float | None
    ndcg_at_10: float
    split: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size_mb": self.size_mb,
            "latency_ms": self.latency_ms,
            "pairs_per_s": self.pairs_per_s,
            _NDCG_KEY: self.ndcg_at_10,
            "split": self.split,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferencePoint:
        return cls(
            str(data["name"]),
            float(data["size_mb"]),
            _number_or_none(data.get("latency_ms")),
            _number_or_none(data.get("pairs_per_s")),
            float(data[_NDCG_KEY]),
            str(data["split"]),
        )


@dataclasses.dataclass(frozen=True)
class PlanCandidate:
    """One compressed system tried: its budget, size, batch-1 p50 latency, quality and verdict.

    ``budget_values``, ``achieved``, ``pairs_per_s`` and ``loss_points`` are known for
    the plans tried with several budgets and left out of the JSON (``None``) for the
    one compressed model of a single-budget run. ``passed`` is ``None`` without a gate.
    ``split`` is ``None`` (and ``chosen`` false) for a candidate read from a file written
    before candidates recorded them.
    """

    name: str
    budget: str
    size_mb: float
    latency_ms: float | None
    ndcg_at_10: float
    passed: bool | None
    split: str | None
    chosen: bool
    budget_values: Mapping[str, float] | None = None
    achieved: Mapping[str, float] | None = None
    pairs_per_s: float | None = None
    loss_points: float | None = None

    def to_dict(self) -> dict[str, Any]:
        tried = {
            "budget_values": None if self.budget_values is None else dict(self.budget_values),
            "achieved": None if self.achieved is None else dict(self.achieved),
        }
        entry: dict[str, Any] = {"name": self.name, "budget": self.budget}
        entry.update({key: value for key, value in tried.items() if value is not None})
        entry.update({"size_mb": self.size_mb, "latency_ms": self.latency_ms})
        if self.pairs_per_s is not None:
            entry["pairs_per_s"] = self.pairs_per_s
        entry.update({_NDCG_KEY: self.ndcg_at_10, "split": self.split})
        if self.loss_points is not None:
            entry["loss_points"] = self.loss_points
        entry.update({"passed": self.passed, "chosen": self.chosen})
        return entry

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanCandidate:
        return cls(
            name=str(data["name"]),
            budget=str(data["budget"]),
            size_mb=float(data["size_mb"]),
            latency_ms=_p50_latency(data.get("latency_ms")),
            ndcg_at_10=float(data[_NDCG_KEY]),
            passed=data.get("passed") if isinstance(data.get("passed"), bool) else None,
            split=_recorded_text(data.get("split")),
            chosen=bool(data.get("chosen", False)),
            budget_values=data.get("budget_values"),
            achieved=data.get("achieved"),
            pairs_per_s=_number_or_none(data.get("pairs_per_s")),
            loss_points=_number_or_none(data.get("loss_points")),
        )


@dataclasses.dataclass(frozen=True)
class PlansTried(_FileLayout):
    """``evaluation/candidates.json``: every plan tried on the gate split, and the reference there.

    Example:
        >>> reference = ReferencePoint("fp32", 90.0, 3.0, 400.0, 0.66, "train")
        >>> tried = PlanCandidate("6 bits/weight", "mixed-precision: bits_per_weight=6",
        ...                       40.0, 2.0, 0.65, True, "train", True)
        >>> plans = PlansTried("train", reference, (tried,))
        >>> PlansTried.from_json(plans.to_json()) == plans, plans.chosen().name
        (True, '6 bits/weight')
    """

    VERSION: ClassVar[int] = 1

    split: str
    reference: ReferencePoint
    candidates: tuple[PlanCandidate, ...]

    def chosen(self) -> PlanCandidate | None:
        """The candidate kept, or ``None`` when none passed the gate."""
        return next((c for c in self.candidates if c.chosen), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "reference": self.reference.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: object = "<dict>") -> PlansTried:
        return cls(
            str(data["split"]),
            ReferencePoint.from_dict(data["reference"]),
            tuple(PlanCandidate.from_dict(c) for c in data["candidates"]),
        )


@dataclasses.dataclass(frozen=True)
class SystemQuality:
    """One side of a quality comparison: a system's measures, per query, size and speed.

    Read from a file written before a key existed, that key is ``None`` (maps: empty);
    only ``measures`` is needed.
    """

    name: str | None
    model: str | None
    measures: Mapping[str, float]
    per_query: Mapping[str, Mapping[str, float]]  # {measure: {query id: value}}
    size_mb: float | None
    latency_ms: Mapping[str, float] | None  # {"p50", "p95"}
    pairs_per_s: float | None
    tie_rate: float | None
    truncation: Mapping[str, Any]
    by_depth: Mapping[str, Mapping[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "measures": dict(self.measures),
            "per_query": {m: dict(values) for m, values in self.per_query.items()},
            "size_mb": self.size_mb,
            "latency_ms": None if self.latency_ms is None else dict(self.latency_ms),
            "pairs_per_s": self.pairs_per_s,
            "tie_rate": self.tie_rate,
            "truncation": dict(self.truncation),
            "by_depth": {k: dict(v) for k, v in self.by_depth.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SystemQuality:
        latency = data.get("latency_ms")
        if latency is not None and not isinstance(latency, Mapping):
            latency = {"p50": latency}  # an early file's single latency
        return cls(
            name=_recorded_text(data.get("name")),
            model=_recorded_text(data.get("model")),
            measures=data["measures"],
            per_query=_recorded_mapping(data.get("per_query")),
            size_mb=_recorded_number(data.get("size_mb")),
            latency_ms=latency,
            pairs_per_s=_recorded_number(data.get("pairs_per_s")),
            tie_rate=_recorded_number(data.get("tie_rate")),
            truncation=_recorded_mapping(data.get("truncation")),
            by_depth=_recorded_mapping(data.get("by_depth")),
        )


@dataclasses.dataclass(frozen=True)
class QualityComparison(_FileLayout):
    """``quality.json``: the reference and the compressed system, their paired difference, the gate.

    ``difference[measure]`` holds ``delta`` (compressed minus reference), the paired
    test's ``p_value`` and ``significant``; ``candidates`` every compressed system
    tried, ``candidates_reference`` the reference on the gate split when several
    plans were tried.

    :meth:`from_dict` reads what every version of the compress flow wrote: a key a file
    lacks (it was written before the key existed) reads as ``None`` (maps: empty,
    ``measures``: the reference's); what a file holds must have the right shape.

    Example:
        >>> side = {"measures": {"nDCG@10": 0.66}}
        >>> old = QualityComparison.from_dict({"reference": side, "compressed": side})
        >>> old.measures, old.reference.size_mb, old.gate, old.candidates
        (('nDCG@10',), None, None, ())
    """

    KIND: ClassVar[str] = "quality_comparison"
    VERSION: ClassVar[int] = 1

    model: str | None
    dataset: str | None
    split: str | None
    protocol: str | None
    n_queries: int | None
    first_stage: str | None
    depth: int | None
    max_length: int | None
    measures: tuple[str, ...]
    reference: SystemQuality
    compressed: SystemQuality
    difference: Mapping[str, Mapping[str, Any]]
    significance: Mapping[str, Any] | None
    gate: Mapping[str, Any] | None
    candidates: tuple[PlanCandidate, ...]
    candidates_reference: ReferencePoint | None
    provenance: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.KIND,
            "version": self.VERSION,
            "model": self.model,
            "dataset": self.dataset,
            "split": self.split,
            "protocol": self.protocol,
            "n_queries": self.n_queries,
            "first_stage": self.first_stage,
            "depth": self.depth,
            "max_length": self.max_length,
            "measures": list(self.measures),
            "reference": self.reference.to_dict(),
            "compressed": self.compressed.to_dict(),
            "difference": {m: dict(v) for m, v in self.difference.items()},
            "significance": None if self.significance is None else dict(self.significance),
            "gate": None if self.gate is None else dict(self.gate),
            "candidates": [c.to_dict() for c in self.candidates],
            "candidates_reference": (
                None if self.candidates_reference is None else self.candidates_reference.to_dict()
            ),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: object = "<dict>") -> QualityComparison:
        kind = data.get("kind", cls.KIND)
        if kind != cls.KIND:
            raise DataFormatError(
                source, None, f"expected a {cls.KIND!r} (reference vs compressed), found {kind!r}"
            )
        version = data.get("version", cls.VERSION)
        if version != cls.VERSION:
            raise DataFormatError(
                source,
                None,
                f"{cls.KIND} version {version!r} is not supported (expected {cls.VERSION})",
            )
        for side in ("reference", "compressed"):
            entry = data.get(side)
            if not isinstance(entry, Mapping):
                raise DataFormatError(source, None, f"missing the {side!r} object")
            if not isinstance(entry.get("measures"), Mapping):
                raise DataFormatError(source, None, f"{side!r} has no 'measures' object")
        for key in ("difference", "gate", "provenance"):
            if data.get(key) is not None and not isinstance(data[key], Mapping):
                raise DataFormatError(source, None, f"{key!r} must be an object or null")
        candidates = data.get("candidates")
        if candidates is not None and not (
            isinstance(candidates, list) and all(isinstance(c, Mapping) for c in candidates)
        ):
            raise DataFormatError(source, None, "'candidates' must be a list of objects")
        n_queries = data.get("n_queries")
        reference = data.get("candidates_reference")
        significance = data.get("significance")
        try:
            return cls(
                model=_recorded_text(data.get("model")),
                dataset=_recorded_text(data.get("dataset")),
                split=_recorded_text(data.get("split")),
                protocol=_recorded_text(data.get("protocol")),
                n_queries=n_queries
                if isinstance(n_queries, int) and not isinstance(n_queries, bool)
                else None,
                first_stage=_recorded_text(data.get("first_stage")),
                depth=data.get("depth") if isinstance(data.get("depth"), int) else None,
                max_length=data.get("max_length")
                if isinstance(data.get("max_length"), int)
                else None,
                measures=tuple(data.get("measures") or data["reference"]["measures"]),
                reference=SystemQuality.from_dict(data["reference"]),
                compressed=SystemQuality.from_dict(data["compressed"]),
                difference=_recorded_mapping(data.get("difference")),
                significance=significance if isinstance(significance, Mapping) else None,
                gate=data.get("gate"),
                candidates=tuple(PlanCandidate.from_dict(c) for c in candidates or ()),
                candidates_reference=None
                if reference is None
                else ReferencePoint.from_dict(reference),
                provenance=_recorded_mapping(data.get("provenance")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DataFormatError(source, None, f"malformed {cls.KIND}: {error!r}") from None


@dataclasses.dataclass(frozen=True)
class RecoveryLog(Artifact):
    """How a compressed model was distilled back toward its uncompressed teacher.

    ``losses`` holds the training loss of every step; ``checkpoints`` one entry per
    checkpoint (``step``, ``heldout_loss`` on groups kept out of training and, when a
    gate was given, its measure, e.g. ``gate_nDCG@10``). ``pairs_seen`` counts
    (query, document) pairs the student scored in training; ``seconds`` is training
    wall time summed over resumed runs; ``data`` says what the groups were made from
    (collection, splits, pseudo-queries, candidates, teacher). ``quantization_aware``
    is the plan whose rounding the student trained through (its JSON), or ``None``
    for fp32 training. ``hidden_weight`` is the weight of hidden-state matching in the
    loss (0: none) and ``hidden_layers`` the ``(student layer, teacher layer)`` pairs it
    matched; with it, checkpoints also hold ``heldout_hidden_mse``, and ``losses`` are
    the distillation loss plus the weighted hidden-state term (``heldout_loss`` stays
    the distillation loss alone, comparable between runs). ``similarity_weight`` is, for
    bi-encoders, the weight of the in-batch similarity KL next to the embedding distance
    (:func:`~relcomp.recovery.losses.embedding_loss`); the distillation loss, held-out
    included, holds it, so held-out losses compare only between runs of one weight.
    ``label_weight`` is the weight of the supervised term on judged-relevant candidates
    (:func:`~relcomp.recovery.losses.positive_nll`; 0: none); with it, checkpoints also
    hold ``heldout_label_nll``. Version 1 logs (before hidden-state matching) read with a
    weight of 0, versions 1 and 2 (before the similarity weight) with a similarity
    weight of 1, and versions 1 to 3 with a label weight of 0.

    Example:
        >>> log = RecoveryLog(student="s", teacher="t", loss="listwise-kl", steps=2,
        ...                   batch_size=4, lr=5e-5, max_length=128, seed=13, device="cpu",
        ...                   pairs_seen=64, seconds=1.5, losses=[0.3, 0.2])
        >>> RecoveryLog.from_json(log.to_json()) == log
        True
    """

    KIND: ClassVar[str] = "recovery_log"
    VERSION: ClassVar[int] = 4
    READS_VERSIONS: ClassVar[tuple[int, ...]] = (1, 2, 3)

    student: str
    teacher: str
    loss: str
    steps: int
    batch_size: int
    lr: float
    max_length: int
    seed: int
    device: str
    pairs_seen: int
    seconds: float
    losses: tuple[float, ...] = ()
    checkpoints: tuple[Mapping[str, Any], ...] = ()
    temperature: float = 1.0
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    quantization_aware: Mapping[str, Any] | None = None
    hidden_weight: float = 0.0
    hidden_layers: tuple[tuple[int, int], ...] = ()
    similarity_weight: float = 1.0
    label_weight: float = 0.0

    @property
    def final_heldout_loss(self) -> float | None:
        """The held-out loss at the last checkpoint, if any was measured."""
        for entry in reversed(self.checkpoints):
            if entry.get("heldout_loss") is not None:
                return float(entry["heldout_loss"])
        return None


#: Where :class:`IndexSettings` is saved: beside the index's quality JSON, or in a bundle.
INDEX_SETTINGS_FILE = "index.json"
#: The index's bytes and quality against the float index, written beside ``index.json``.
INDEX_QUALITY_FILE = "index_quality.json"


@dataclasses.dataclass(frozen=True)
class IndexSettings(Artifact):
    """How a retriever's corpus embeddings are stored and searched: ``index.json``.

    Made by :func:`relcomp.index.build_index`, honoured by
    :func:`relcomp.pipeline.evaluate` (``--index``). ``precision`` is the stored
    type of each kept dimension (``float32``, ``float16``, ``int8``, ``binary``);
    ``selection`` how the ``dims`` were chosen (``all``, ``relevance``, ``first``,
    ``random``, ``variance``, ``pca``); for ``pca`` the kept coordinates are a
    rotation, whose matrix is stored in ``projection_file`` (float32 ``.npy``, rows
    are the kept directions, ``projection_sha256`` its digest) and ``dims`` counts
    them ``0..d-1``. ``ranges`` holds int8's calibrated ``(low, high)`` per kept
    dimension (from corpus embeddings, never from queries). ``rescore`` is the
    factor of candidates rescored (1: none) against the document vectors in
    ``rescore_with`` (``index``: the stored vectors themselves, ``int8``,
    ``float32``). ``model_identity`` is a path-independent digest of the model's
    weights and settings: an index is refused by any other model. ``calibration``
    records where the relevance figures came from (collection, split, pairs).

    Example:
        >>> settings = IndexSettings(model="m", model_identity="bi-encoder-00", dimension=4,
        ...                          similarity="cosine", precision="int8", dims=(0, 2),
        ...                          selection="first", ranges=((-1.0, 1.0), (-0.5, 0.5)))
        >>> IndexSettings.from_json(settings.to_json()) == settings
        True
        >>> settings.bytes_per_document
        2
    """

    KIND: ClassVar[str] = "index_settings"

    model: str
    model_identity: str
    dimension: int
    similarity: str
    precision: str
    dims: tuple[int, ...]
    selection: str = "all"
    ranges: tuple[tuple[float, float], ...] = ()
    rescore: int = 1
    rescore_with: str = "float32"
    projection_file: str | None = None
    projection_sha256: str | None = None
    seed: int | None = None
    calibration: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def kept(self) -> int:
        """How many dimensions (or rotated coordinates) the index stores."""
        return len(self.dims)

    @property
    def bytes_per_document(self) -> int:
        """Bytes one document takes in the searched index (binary rounds up to whole bytes)."""
        if self.precision == "binary":
            return -(-self.kept // 8)
        width = {"float32": 4, "float16": 2, "int8": 1}.get(self.precision, 4)
        return width * self.kept

    @property
    def rescore_bytes_per_document(self) -> int:
        """Bytes of the extra document vectors rescoring reads (0 when it reads the index's own)."""
        if self.rescore == 1 or self.rescore_with == "index":
            return 0
        if self.rescore_with == "int8" and self.precision == "int8":
            return 0
        return (1 if self.rescore_with == "int8" else 4) * self.kept

    @property
    def float32_bytes_per_document(self) -> int:
        """Bytes of one document in the uncompressed index: every dimension in float32."""
        return 4 * self.dimension
