"""What recovery trains on: in-domain (query, candidates) groups and the teacher's view of them.

A group is one query with the documents a first stage (BM25) returns for it. The
queries are a collection's train and dev queries (never ``test``, never a query the
caller excludes, such as the gate's) and *pseudo-queries* drawn from the corpus: a
document's title, or one of its sentences, with that document and its BM25
neighbours as candidates. Pseudo-queries let a collection with no train queries
(a user's own corpus with a few judged test queries) be recovered all the same.

The teacher supplies the targets. For a cross-encoder they are its scores of every
(query, candidate) pair, computed through :func:`relcomp.evaluation.rerank`, so they
land in the same chunked score cache as an evaluation and an interrupted computation
resumes. For a bi-encoder they are its
query and document embeddings (the corpus' through the cached
:func:`relcomp.evaluation.encode_corpus`).

Judgements are read only to mark each group's *positives* (a split query's candidates
judged relevant, a pseudo-query's source document), for the optional supervised term
of recovery (``label_weight``); the distillation itself reads none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from relcomp.errors import RelcompError
from relcomp.evaluation import (
    BeirDataset,
    available_splits,
    bm25_retrieve,
    encode_corpus,
    load_beir,
    rerank,
)
from relcomp.evaluation.sampling import PSEUDO_QUERY_PREFIX, pseudo_queries, pseudo_query_document
from relcomp.models import BiEncoder, RankingModel

__all__ = [
    "DEFAULT_CANDIDATES",
    "PSEUDO_QUERY_PREFIX",
    "RecoveryData",
    "pseudo_queries",
    "recovery_data",
]

#: BM25 candidates per recovery query unless told otherwise.
DEFAULT_CANDIDATES = 8

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class RecoveryData:
    """Groups of (query, candidate documents) with the teacher's targets.

    Attributes:
        queries: one text per group.
        documents: the candidates' texts per group, the teacher's order (best first).
        sources: where each query came from: a split name or ``"pseudo"``.
        teacher_scores: cross-encoder teachers: ``(groups, max candidates)`` scores,
            ``nan`` where a group has fewer candidates; ``None`` for bi-encoders.
        teacher_query_embeddings: bi-encoder teachers: ``(groups, dim)``.
        teacher_document_embeddings: bi-encoder teachers: one ``(candidates, dim)``
            array per group.
        identity: what the data was made from (collection, splits, counts, teacher),
            recorded in the :class:`~relcomp.artifacts.RecoveryLog` and in checkpoints.
        positives: per group, per candidate (same order as ``documents``), whether it
            is judged relevant to the query (a split query's qrels above 0, a
            pseudo-query's source document); ``None`` when unknown. Read only by the
            supervised term (``label_weight``), and not part of :attr:`digest`.
    """

    queries: tuple[str, ...]
    documents: tuple[tuple[str, ...], ...]
    sources: tuple[str, ...]
    teacher_scores: np.ndarray | None = None
    teacher_query_embeddings: np.ndarray | None = None
    teacher_document_embeddings: tuple[np.ndarray, ...] | None = None
    identity: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    positives: tuple[tuple[bool, ...], ...] | None = None

    def __post_init__(self) -> None:
        if not self.queries:
            raise RelcompError("recovery data has no groups")
        if not len(self.queries) == len(self.documents) == len(self.sources):
            raise RelcompError("recovery data: queries, documents and sources differ in length")
        if self.teacher_scores is None and self.teacher_query_embeddings is None:
            raise RelcompError("recovery data needs the teacher's scores or embeddings")
        if self.positives is not None and [len(p) for p in self.positives] != [
            len(d) for d in self.documents
        ]:
            raise RelcompError("recovery data: positives and documents differ in shape")

    def __len__(self) -> int:
        return len(self.queries)

    def __repr__(self) -> str:
        return (
            f"RecoveryData(groups={len(self)}, pairs={self.pairs}, "
            f"sources={dict(sorted(self.source_counts.items()))})"
        )

    @property
    def pairs(self) -> int:
        """(query, document) pairs over all groups."""
        return sum(len(group) for group in self.documents)

    @property
    def source_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for source in self.sources:
            counts[source] = counts.get(source, 0) + 1
        return counts

    @property
    def digest(self) -> str:
        """A hash of the groups and the teacher's targets: a checkpoint resumes only on the same data."""
        hasher = hashlib.sha256()
        for query, documents in zip(self.queries, self.documents, strict=True):
            hasher.update(query.encode())
            for document in documents:
                hasher.update(b"\x1f" + document.encode())
            hasher.update(b"\x1e")
        for array in (self.teacher_scores, self.teacher_query_embeddings):
            if array is not None:
                hasher.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        for array in self.teacher_document_embeddings or ():
            hasher.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        return hasher.hexdigest()[:16]

    def split(self, heldout: int, seed: int = 13) -> tuple[RecoveryData, RecoveryData]:
        """``(training, held out)``: ``heldout`` seeded groups kept apart to measure the loss on."""
        if not 0 < heldout < len(self):
            raise RelcompError(
                f"cannot hold out {heldout} of {len(self)} recovery groups; need 0 < held out < groups"
            )
        chosen = np.random.default_rng(seed).permutation(len(self))
        held, kept = sorted(chosen[:heldout].tolist()), sorted(chosen[heldout:].tolist())
        return self.subset(kept), self.subset(held)

    def subset(self, rows: Sequence[int]) -> RecoveryData:
        """The groups at ``rows``, in that order."""
        rows = list(rows)
        documents = self.teacher_document_embeddings
        return RecoveryData(
            queries=tuple(self.queries[i] for i in rows),
            documents=tuple(self.documents[i] for i in rows),
            sources=tuple(self.sources[i] for i in rows),
            teacher_scores=None if self.teacher_scores is None else self.teacher_scores[rows],
            teacher_query_embeddings=(
                None
                if self.teacher_query_embeddings is None
                else self.teacher_query_embeddings[rows]
            ),
            teacher_document_embeddings=(
                None if documents is None else tuple(documents[i] for i in rows)
            ),
            identity=self.identity,
            positives=None if self.positives is None else tuple(self.positives[i] for i in rows),
        )

    @property
    def labelled_groups(self) -> int:
        """Groups with at least one candidate judged relevant (0 when positives are unknown)."""
        return sum(any(group) for group in self.positives or ())


def recovery_data(
    teacher: RankingModel,
    data_dir: str | os.PathLike[str],
    *,
    candidates: int = DEFAULT_CANDIDATES,
    pseudo: int | None = None,
    splits: Sequence[str] | None = None,
    exclude: Iterable[str] = (),
    seed: int = 13,
    max_length: int | None = None,
    batch_size: int = 32,
    candidate_depth: int | None = None,
    show_progress_bar: bool | None = None,
) -> RecoveryData:
    """Recovery groups from a BEIR folder, with ``teacher``'s targets.

    Args:
        teacher: the uncompressed model (a cross-encoder or a bi-encoder).
        data_dir: a BEIR folder.
        candidates: BM25 candidates per query (the group's size).
        candidate_depth: draw the candidates from BM25's top-``candidate_depth`` instead
            of taking its top-``candidates``: the first half of the group is BM25's top,
            the rest is drawn (seeded per query) from the ranks below, so the student
            also learns to push down the deep candidates a re-ranker serving top-100
            sees. ``None`` (the default): BM25's top-``candidates``.
        pseudo: pseudo-queries drawn from the corpus; by default as many as there are
            split queries, and 1,000 when the collection has no train or dev split.
        splits: the splits whose queries are used; by default every split but ``test``.
        exclude: query ids never to use (the quality gate's queries, say); a
            pseudo-query id among them keeps its source document out of the drawing.
        seed: seeds the pseudo-query drawing.
        max_length: the teacher's input length while scoring (its own when ``None``).
        batch_size: pairs or texts per forward pass of the teacher.
        show_progress_bar: tqdm bars; ``None`` follows the logger level.

    Raises:
        RelcompError: ``splits`` names ``test`` or a split the folder lacks; no query
            and no pseudo-query could be made.

    Example:
        >>> from relcomp.data import demo_path
        >>> from relcomp.models import load_model
        >>> teacher = load_model("all-MiniLM-L6-v2", max_length=64)
        >>> data = recovery_data(teacher, demo_path(), candidates=4, pseudo=8,
        ...                      splits=["train"])  # doctest: +SKIP
        >>> data.source_counts["pseudo"], data.teacher_query_embeddings.shape[1]  # doctest: +SKIP
        (8, 384)
    """
    if candidates < 2:
        raise RelcompError(f"recovery needs at least 2 candidates per query, got {candidates}")
    if candidate_depth is not None and candidate_depth < candidates:
        raise RelcompError(
            f"candidate_depth ({candidate_depth}) must be at least candidates ({candidates}): "
            "the candidates are drawn from BM25's top-candidate_depth"
        )
    available = available_splits(data_dir)
    chosen = [s for s in available if s != "test"] if splits is None else list(splits)
    for split in chosen:
        if split == "test":
            raise RelcompError("recovery never trains on the test split; use train or dev")
        if split not in available:
            raise RelcompError(f"{data_dir}: no split {split!r} (splits: {available})")
    excluded = set(exclude)
    base = load_beir(data_dir, chosen[0] if chosen else available[0])
    query_source: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}  # judged relevant (grade > 0), for ``positives``
    for split in chosen:
        split_data = load_beir(data_dir, split)
        for query_id in split_data.split_queries:
            if query_id not in excluded and query_id not in query_source:
                query_source[query_id] = split
                judged = split_data.qrels.get(query_id, {})
                relevant[query_id] = {d for d, grade in judged.items() if grade > 0}
    if pseudo is None:
        pseudo = len(query_source) if query_source else 1000
    # An excluded pseudo-query (the agreement gate's) keeps its document out of the drawing.
    excluded_documents = {d for q in excluded if (d := pseudo_query_document(q)) is not None}
    drawn = pseudo_queries(base, pseudo, seed=seed, exclude_documents=excluded_documents)
    texts = {**{q: base.queries[q] for q in query_source}, **{q: t for q, (t, _) in drawn.items()}}
    if not texts:
        raise RelcompError(
            f"{data_dir}: nothing to recover on: no train or dev queries and no pseudo-query "
            "could be drawn from the corpus"
        )
    # A collection seen through every query, the pseudo-queries' texts included.
    dataset = dataclasses.replace(
        base, split="recovery", queries=texts, qrels={query_id: {} for query_id in texts}
    )
    options: dict[str, Any] = {"show_progress_bar": show_progress_bar}
    first_stage = bm25_retrieve(
        dataset, list(texts), depth=candidate_depth or candidates, **options
    )
    if candidate_depth is not None:
        first_stage = {
            q: _top_and_deep(found, candidates, seed, q) for q, found in first_stage.items()
        }
    for query_id, (_, source_doc) in drawn.items():
        relevant[query_id] = {source_doc}
        # The document a pseudo-query came from is its natural positive: keep it.
        found = first_stage[query_id]
        if source_doc not in found:
            kept = dict(list(found.items())[: candidates - 1])
            kept[source_doc] = min(found.values(), default=0.0) - 1.0
            first_stage[query_id] = kept
    usable = [q for q in texts if len(first_stage[q]) >= 2]
    if len(usable) < len(texts):
        logger.info(
            "%d of %d recovery queries have fewer than 2 BM25 candidates and are left out",
            len(texts) - len(usable),
            len(texts),
        )
    if not usable:
        raise RelcompError(f"{data_dir}: no recovery query has two BM25 candidates")
    groups = {q: first_stage[q] for q in usable}
    identity: dict[str, Any] = {
        "collection": str(base.path),
        "splits": chosen,
        "excluded_queries": len(excluded),
        "split_queries": sum(1 for q in usable if q in query_source),
        "pseudo_queries": sum(1 for q in usable if q in drawn),
        "candidates": candidates,
        # named only when used, so data (and checkpoints) made before the option match
        **({"candidate_depth": candidate_depth} if candidate_depth is not None else {}),
        "first_stage": "bm25",
        "seed": seed,
        "teacher": teacher.cache_key,
    }
    previous_length = teacher.max_length
    if max_length is not None:
        teacher.max_length = min(max_length, previous_length)
    try:
        if isinstance(teacher, BiEncoder):
            return _bi_encoder_targets(
                teacher,
                dataset,
                groups,
                query_source,
                relevant,
                identity,
                batch_size,
                show_progress_bar,
            )
        scored = rerank(
            teacher,
            dataset,
            groups,
            depth=candidates,
            batch_size=batch_size,
            use_cache=True,  # the teacher's scores are computed once, saved chunk by chunk
            show_progress_bar=show_progress_bar,
        )
    finally:
        teacher.max_length = previous_length
    width = max(len(scores) for scores in scored.values())
    targets = np.full((len(usable), width), np.nan, dtype=np.float32)
    documents, positives = [], []
    for row, query_id in enumerate(usable):
        ranked = sorted(scored[query_id].items(), key=lambda item: (-item[1], item[0]))
        targets[row, : len(ranked)] = [score for _, score in ranked]
        documents.append(tuple(dataset.document_text(doc_id) for doc_id, _ in ranked))
        positives.append(tuple(doc_id in relevant[query_id] for doc_id, _ in ranked))
    if not np.isfinite(targets[~np.isnan(targets)]).all():
        raise RelcompError(f"the teacher {teacher.name} gave non-finite scores on recovery pairs")
    return RecoveryData(
        queries=tuple(texts[q] for q in usable),
        documents=tuple(documents),
        sources=tuple(query_source.get(q, "pseudo") for q in usable),
        teacher_scores=targets,
        identity=identity,
        positives=tuple(positives),
    )


def _top_and_deep(
    found: Mapping[str, float], candidates: int, seed: int, query_id: str
) -> dict[str, float]:
    """BM25's top half of ``candidates``, and the rest drawn from the ranks below.

    The draw is seeded by ``seed`` and the query id, so a query keeps its candidates
    (and the teacher's cached scores stay valid) whatever else is in the data.

    Example:
        >>> found = {f"d{i}": float(100 - i) for i in range(100)}
        >>> group = _top_and_deep(found, 8, 13, "q1")
        >>> list(group)[:4], len(group), all(d in found for d in group)
        (['d0', 'd1', 'd2', 'd3'], 8, True)
        >>> group == _top_and_deep(found, 8, 13, "q1")
        True
    """
    ranked = sorted(found.items(), key=lambda item: (-item[1], item[0]))
    if len(ranked) <= candidates:
        return dict(ranked)
    top = (candidates + 1) // 2
    digest = hashlib.sha256(f"{seed}|{query_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    deep = sorted(rng.choice(np.arange(top, len(ranked)), candidates - top, replace=False))
    return dict([*ranked[:top], *(ranked[int(i)] for i in deep)])


def _bi_encoder_targets(
    teacher: BiEncoder,
    dataset: BeirDataset,
    groups: Mapping[str, Mapping[str, float]],
    query_source: Mapping[str, str],
    relevant: Mapping[str, set[str]],
    identity: dict[str, Any],
    batch_size: int,
    show_progress_bar: bool | None,
) -> RecoveryData:
    corpus = encode_corpus(
        teacher, dataset, batch_size=batch_size, show_progress_bar=show_progress_bar
    )
    row_of = {doc_id: row for row, doc_id in enumerate(dataset.sorted_doc_ids)}
    query_ids = list(groups)
    queries = teacher.encode_queries(
        [dataset.query_text(q) for q in query_ids],
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
    )
    ordered = [sorted(groups[q].items(), key=lambda item: (-item[1], item[0])) for q in query_ids]
    if not (np.isfinite(corpus).all() and np.isfinite(queries).all()):
        raise RelcompError(f"the teacher {teacher.name} gave non-finite embeddings")
    return RecoveryData(
        queries=tuple(dataset.query_text(q) for q in query_ids),
        documents=tuple(
            tuple(dataset.document_text(doc_id) for doc_id, _ in ranked) for ranked in ordered
        ),
        sources=tuple(query_source.get(q, "pseudo") for q in query_ids),
        teacher_query_embeddings=queries,
        teacher_document_embeddings=tuple(
            corpus[[row_of[doc_id] for doc_id, _ in ranked]] for ranked in ordered
        ),
        identity=identity,
        positives=tuple(
            tuple(doc_id in relevant[q] for doc_id, _ in ranked)
            for q, ranked in zip(query_ids, ordered, strict=True)
        ),
    )
