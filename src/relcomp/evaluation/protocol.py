"""How much of a collection the compress flow evaluates: BENCHMARKS.md's protocols by name."""

from __future__ import annotations

import dataclasses

__all__ = ["PROTOCOLS", "Protocol", "resolve_protocol"]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How much of a collection the flow evaluates (BENCHMARKS.md's protocols).

    ``queries`` ``None`` means every judged query; ``max_length`` ``None`` the model's
    own limit; ``cross_encoder_max_length`` overrides it for rerankers (the full
    protocol reads rerankers at 512 tokens, retrievers at 256). ``repeats`` are the
    timing repeats; the parity check runs on ``parity_queries`` queries of the
    calibration split with their BM25 top-``parity_depth``.
    """

    name: str
    queries: int | None
    depth: int
    max_length: int | None
    cross_encoder_max_length: int | None = None
    repeats: int = 5
    parity_queries: int = 16
    parity_depth: int = 20

    def max_length_for(self, kind: str) -> int | None:
        if kind == "cross-encoder" and self.cross_encoder_max_length is not None:
            return self.cross_encoder_max_length
        return self.max_length


#: ``quick`` and ``full`` as in BENCHMARKS.md; ``demo`` is the embedded default's: every
#: query of the small shipped collection, 128 tokens (all-MiniLM-L6-v2's training length;
#: it halves the cost of encoding the corpus twice), fewer timing repeats.
PROTOCOLS: dict[str, Protocol] = {
    "quick": Protocol("quick", queries=100, depth=30, max_length=256),
    "full": Protocol(
        "full",
        queries=None,
        depth=100,
        max_length=256,
        cross_encoder_max_length=512,
        parity_queries=20,
        parity_depth=30,
    ),
    "demo": Protocol(
        "demo",
        queries=None,
        depth=30,
        max_length=128,
        repeats=3,
        parity_queries=8,
        parity_depth=10,
    ),
}


def resolve_protocol(name: str) -> Protocol:
    """The :class:`Protocol` called ``name``, with an error listing the valid names.

    Example:
        >>> resolve_protocol("quick").depth
        30
    """
    try:
        return PROTOCOLS[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown protocol {name!r}; valid protocols: {', '.join(PROTOCOLS)}"
        ) from None
