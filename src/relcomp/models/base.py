"""What every relcomp model is: a scorer of (query, document) pairs over a torch encoder."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from relcomp._io import file_digest
from relcomp.models.adapters import ArchitectureAdapter, LayerModules

__all__ = [
    "ModelKind",
    "RankingModel",
    "Scorer",
    "batched",
    "progress_batches",
    "progress_enabled",
    "truncation_since",
    "truncation_tally",
]

logger = logging.getLogger(__name__)

ModelKind = Literal["cross-encoder", "bi-encoder"]


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores (query, document) pairs: torch models, ONNX bundles, BM25."""

    name: str

    @property
    def cache_key(self) -> str: ...

    def score(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray: ...


def progress_enabled(show_progress_bar: bool | None) -> bool:
    """``None`` shows a bar when relcomp's logger would print INFO messages."""
    if show_progress_bar is not None:
        return show_progress_bar
    return logging.getLogger("relcomp").getEffectiveLevel() <= logging.INFO


def batched(items: Sequence[Any], batch_size: int) -> Iterator[tuple[int, Sequence[Any]]]:
    """``(start, chunk)`` for consecutive chunks of ``batch_size`` items."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield start, items[start : start + batch_size]


def progress_batches(
    items: Sequence[Any], batch_size: int, description: str, show_progress_bar: bool | None = None
) -> Iterator[tuple[int, Sequence[Any]]]:
    """:func:`batched` with a tqdm bar over the batches (shown as :func:`progress_enabled` says)."""
    from tqdm.auto import tqdm

    total = (len(items) + batch_size - 1) // batch_size
    yield from tqdm(
        batched(items, batch_size),
        total=total,
        desc=description,
        disable=not progress_enabled(show_progress_bar),
    )


class RankingModel:
    """Shared machinery of :class:`CrossEncoder` and :class:`BiEncoder`.

    Attributes:
        name: what the user passed as ``model_name_or_path``.
        path: the local folder the weights were read from.
        model: the torch module (``*ForSequenceClassification`` or a bare encoder).
        tokenizer: its fast tokenizer.
        adapter: where the modules relcomp touches live (:mod:`relcomp.models.adapters`).
        max_length: inputs longer than this are truncated, and counted in ``truncation``.
        truncation: ``Counter`` with ``inputs`` and ``truncated`` seen since loading.
    """

    kind: ClassVar[ModelKind]

    def __init__(
        self,
        name: str,
        path: Path,
        model: nn.Module,
        tokenizer: Any,
        adapter: ArchitectureAdapter,
        max_length: int,
        device: str | torch.device | None = None,
        variant: str = "fp32",
    ) -> None:
        self.name = name
        self.path = path
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.adapter = adapter
        self.max_length = int(max_length)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model.to(self.device)
        self.variant = variant
        self.truncation: Counter[str] = Counter()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, family={self.adapter.family!r}, "
            f"max_length={self.max_length}, variant={self.variant!r})"
        )

    # -- identity ---------------------------------------------------------------
    @property
    def cache_key(self) -> str:
        """Identifies the scores this model gives: weights, settings and variant."""
        digest = hashlib.sha256()
        identity = (
            f"{self.kind}|{self.path.resolve()}|{self.max_length}|{self.variant}|{self._identity()}"
        )
        digest.update(identity.encode())
        for weights in sorted(self.path.glob("*.safetensors")) + sorted(self.path.glob("*.bin")):
            digest.update(f"{weights.name}:{file_digest(weights)}".encode())
        return f"{self.kind}-{digest.hexdigest()[:16]}"

    def _identity(self) -> str:
        """Settings beyond the weights that change the scores (subclasses extend it)."""
        return ""

    # -- structure ---------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.model.config

    def layer_modules(self) -> list[LayerModules]:
        return self.adapter.layer_modules(self.model)

    def num_heads(self) -> int:
        return self.adapter.num_heads(self.model)

    def named_linears(self) -> dict[str, nn.Linear]:
        """Every Linear module of the model, by its name in ``named_modules()``."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, nn.Linear)}

    # -- tokenisation --------------------------------------------------------------
    def _record_truncation(self, batch: Any) -> None:
        encodings = getattr(batch, "encodings", None) or []
        truncated = sum(1 for encoding in encodings if encoding.overflowing)
        self.truncation["inputs"] += len(encodings)
        self.truncation["truncated"] += truncated

    def truncation_summary(self, counts: Mapping[str, int] | None = None) -> str:
        """How many inputs were cut to ``max_length``: of ``counts``, or of the model's whole tally."""
        counts = self.truncation if counts is None else counts
        total = counts.get("inputs", 0)
        cut = counts.get("truncated", 0)
        share = cut / total if total else 0.0
        return f"{cut} of {total} inputs ({share:.1%}) truncated to {self.max_length} tokens"

    def _to_device(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device) for key, value in features.items()}

    def score(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        raise NotImplementedError


@contextlib.contextmanager
def truncation_tally(model: Any, what: str = "") -> Iterator[dict[str, int]]:
    """Count the inputs ``model`` truncates inside a ``with`` block, and say so when it ends.

    Yields a dict that holds, once the block ends, ``inputs``, ``truncated`` and
    ``max_length`` (what a verb writes into its output file). A truncated input is
    logged as a warning (the terminal), none at debug level.

    Example:
        >>> class Fake:
        ...     name, max_length, truncation = "m", 8, Counter()
        >>> fake = Fake()
        >>> with truncation_tally(fake) as tally:
        ...     fake.truncation.update(inputs=3, truncated=1)
        >>> tally
        {'inputs': 3, 'truncated': 1, 'max_length': 8}
    """
    before = dict(getattr(model, "truncation", None) or {})
    tally: dict[str, int] = {}
    try:
        yield tally
    finally:
        tally.update(truncation_since(model, before, what))


def truncation_since(model: Any, before: Mapping[str, int], what: str = "") -> dict[str, int]:
    """``inputs``, ``truncated`` and ``max_length`` since the tally ``before``; logged (see :func:`truncation_tally`)."""
    after = dict(getattr(model, "truncation", None) or {})
    total = after.get("inputs", 0) - before.get("inputs", 0)
    cut = after.get("truncated", 0) - before.get("truncated", 0)
    max_length = int(getattr(model, "max_length", 0) or 0)
    logger.log(
        logging.WARNING if cut else logging.DEBUG,
        "%s%s: %d of %d inputs (%.1f%%) truncated to %d tokens",
        getattr(model, "name", "model"),
        f" ({what})" if what else "",
        cut,
        total,
        100 * cut / total if total else 0.0,
        max_length,
    )
    return {"inputs": total, "truncated": cut, "max_length": max_length}


def check_pairs(queries: Sequence[str], documents: Sequence[str]) -> None:
    if isinstance(queries, str) or isinstance(documents, str):
        raise TypeError("queries and documents must be sequences of strings, not a single string")
    if len(queries) != len(documents):
        raise ValueError(
            f"queries and documents must pair up: got {len(queries)} queries and "
            f"{len(documents)} documents"
        )
