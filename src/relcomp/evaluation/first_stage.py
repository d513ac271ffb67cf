"""First stages: BM25 (through bm25s) and exhaustive dense retrieval for a bi-encoder.

Both return a run, ``{query id: {document id: score}}``, holding each query's
top-``depth`` documents, chosen by relcomp's one ranking rule: **higher score
first; equal scores by document id ascending** (Python string order, so "10"
comes before "9"). Runs and corpus embeddings are cached on disk
(:mod:`relcomp.evaluation.cache`), so running the same first stage twice costs
nothing the second time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from relcomp.errors import RelcompError
from relcomp.evaluation._common import Run, progress_enabled
from relcomp.evaluation.beir import BeirDataset
from relcomp.evaluation.cache import Cache, hash_ids
from relcomp.evaluation.executor import ChunkExecutor, ChunkTask
from relcomp.registry import Registry

__all__ = [
    "FIRST_STAGES",
    "BM25Settings",
    "DocumentEncoding",
    "Encoder",
    "bm25_retrieve",
    "dense_retrieve",
    "encode_corpus",
    "retrieve",
    "top_k",
]

logger = logging.getLogger(__name__)

#: Scores computed per block of queries are at most this many floats (128 MiB).
_MAX_BLOCK_FLOATS = 32 * 1024 * 1024

#: Part of every cache key: bump it when a change here changes the runs produced.
_ALGORITHM_VERSION = 1

#: Part of the corpus embeddings' cache key. 2: encoded in chunks, longest first (the
#: batches, so the padding and the last bits, differ from version 1's single pass).
_EMBEDDINGS_VERSION = 2


@runtime_checkable
class Encoder(Protocol):
    """What dense retrieval needs of a bi-encoder.

    ``encode_queries`` / ``encode_documents`` (which add the model's prompts) are
    used when the model has them, ``encode`` otherwise.
    """

    similarity_name: str

    def encode(
        self, texts: Sequence[str], batch_size: int = 32, show_progress_bar: bool | None = None
    ) -> np.ndarray: ...


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row: higher score first, ties by column index ascending.

    ``argpartition`` finds the k-th best score in linear time; every column above it is
    kept, and columns equal to it are kept in index order until there are ``k``, so the
    result never depends on how ``argpartition`` happens to break ties. NaN counts as
    the lowest score.

    Args:
        scores: ``(n,)`` or ``(m, n)`` scores.
        k: how many to keep (fewer when a row has fewer columns).

    Returns:
        ``(indices, values)``, each ``(m, min(k, n))`` (or 1-D for 1-D input), best first.

    Example:
        >>> indices, values = top_k(np.array([0.5, 0.9, 0.5, 0.1]), 2)
        >>> indices.tolist(), values.tolist()
        ([1, 0], [0.9, 0.5])
    """
    matrix = np.asarray(scores)
    if matrix.ndim not in (1, 2):
        raise ValueError(f"scores must be 1-D or 2-D, got shape {matrix.shape}")
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    rows = matrix[None, :] if matrix.ndim == 1 else matrix
    n = rows.shape[1]
    kept = min(k, n)
    indices = np.empty((rows.shape[0], kept), dtype=np.int64)
    for r, row in enumerate(rows):
        indices[r] = _top_k_row(row, kept)
    values = np.take_along_axis(rows, indices, axis=1)
    if matrix.ndim == 1:
        return indices[0], values[0]
    return indices, values


def _top_k_row(row: np.ndarray, k: int) -> np.ndarray:
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if np.isnan(row).any():
        row = np.where(np.isnan(row), -np.inf, row)
    n = row.shape[0]
    if k < n:
        candidates = np.argpartition(row, n - k)[n - k :]
        threshold = row[candidates].min()
        above = np.flatnonzero(row > threshold)
        tied = np.flatnonzero(row == threshold)[: k - above.size]
        chosen = np.concatenate([above, tied])
    else:
        chosen = np.arange(n)
    # lexsort: last key is primary (score descending), then index ascending.
    return chosen[np.lexsort((chosen, -row[chosen]))]


def _query_ids(dataset: BeirDataset, query_ids: Iterable[str] | None) -> list[str]:
    ids = list(dataset.split_queries) if query_ids is None else list(dict.fromkeys(query_ids))
    unknown = [qid for qid in ids if qid not in dataset.queries]
    if unknown:
        raise RelcompError(
            f"{len(unknown)} query id(s) not in {dataset.name}'s queries.jsonl, e.g. {unknown[:3]}"
        )
    return ids


def _check_depth(depth: int) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or depth < 1:
        raise RelcompError(f"depth must be a positive integer, got {depth!r}")


# -- BM25 -------------------------------------------------------------------------------
class BM25Settings:
    """The BM25 relcomp uses: bm25s defaults (Lucene's BM25, k1 1.5, b 0.75), English stopwords.

    Documents are ``"title text"``; queries and documents are tokenised alike by
    ``bm25s.tokenize`` (lower-cased, ``\\w\\w+`` tokens, English stopwords removed), with
    no stemmer: on scifact test this gives nDCG@10 0.662, against BEIR's published
    0.665 (Elasticsearch); adding a Snowball stemmer gives 0.686.

    Example:
        >>> BM25Settings().identity()
        'bm25s|k1=1.5|b=0.75|method=lucene|stopwords=en|stemmer=none|title text'
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75, method: str = "lucene") -> None:
        self.k1 = float(k1)
        self.b = float(b)
        self.method = method

    def identity(self) -> str:
        return f"bm25s|k1={self.k1}|b={self.b}|method={self.method}|stopwords=en|stemmer=none|title text"


def bm25_retrieve(
    dataset: BeirDataset,
    query_ids: Iterable[str] | None = None,
    depth: int = 100,
    *,
    k1: float = 1.5,
    b: float = 0.75,
    method: str = "lucene",
    show_progress_bar: bool | None = None,
    use_cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Run:
    """BM25 top-``depth`` for each query, through bm25s.

    See :class:`BM25Settings` for the exact configuration. A document that contains
    no query term is not retrieved (as in Lucene), so a query may get fewer than
    ``depth`` documents, or none when none of its terms occurs in the corpus.

    Args:
        dataset: the collection.
        query_ids: the queries to run; the split's judged queries by default.
        depth: how many documents to keep per query.
        k1: BM25's term-frequency saturation.
        b: BM25's length normalisation.
        method: bm25s's BM25 variant (``lucene``, ``robertson``, ``atire``, ``bm25l``, ``bm25+``).
        show_progress_bar: draw tqdm bars; ``None`` follows the logger level.
        use_cache: read and write the on-disk cache.
        cache_dir: the cache's folder (``$RELCOMP_CACHE_DIR`` or ``~/.cache/relcomp`` by default).

    Returns:
        The run ``{query id: {document id: score}}``.

    Example:
        >>> import json, pathlib, tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> docs = [{"_id": "d1", "title": "Cats", "text": "Cats purr."}, {"_id": "d2", "text": "Dogs bark."}]
        >>> _ = (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\\n" for d in docs))
        >>> _ = (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "why do cats purr"}) + "\\n")
        >>> (root / "qrels").mkdir()
        >>> _ = (root / "qrels" / "test.tsv").write_text("query-id\\tcorpus-id\\tscore\\nq1\\td1\\t1\\n")
        >>> from relcomp.evaluation.beir import load_beir
        >>> run = bm25_retrieve(load_beir(root), depth=10, use_cache=False, show_progress_bar=False)
        >>> list(run["q1"])
        ['d1']
    """
    _check_depth(depth)
    settings = BM25Settings(k1=k1, b=b, method=method)
    ids = _query_ids(dataset, query_ids)
    material = {
        "first_stage": settings.identity(),
        "bm25s": _bm25s_version(),
        "algorithm": _ALGORITHM_VERSION,
        **dataset.corpus_identity(),
        **dataset.queries_identity(),
        "queries": hash_ids(ids),
        "depth": int(depth),
    }

    def compute() -> Run:
        return _bm25_run(dataset, ids, int(depth), settings, progress_enabled(show_progress_bar))

    run = Cache(cache_dir, enabled=use_cache).run("bm25", material, compute)
    return {qid: run.get(qid, {}) for qid in ids}


def _bm25s_version() -> str:
    from importlib.metadata import version

    return version("bm25s")


def _bm25_run(
    dataset: BeirDataset, query_ids: list[str], depth: int, settings: BM25Settings, show: bool
) -> Run:
    import bm25s  # imported here: it takes most of a second

    doc_ids = dataset.sorted_doc_ids
    corpus_tokens = bm25s.tokenize(
        [dataset.document_text(doc_id) for doc_id in doc_ids], stopwords="en", show_progress=show
    )
    retriever = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
    retriever.index(corpus_tokens, show_progress=show)
    query_tokens = bm25s.tokenize(
        [dataset.queries[qid] for qid in query_ids],
        stopwords="en",
        return_ids=False,
        show_progress=show,
    )
    run: Run = {}
    for qid, tokens in tqdm(
        zip(query_ids, query_tokens, strict=True),
        total=len(query_ids),
        desc="BM25",
        disable=not show,
    ):
        token_ids = retriever.get_tokens_ids(tokens)  # drops terms the corpus never uses
        if not token_ids:
            logger.debug("query %s has no term in the index; it retrieves nothing", qid)
            run[qid] = {}
            continue
        matching = _matching(retriever, token_ids, len(doc_ids))
        scores = np.where(matching, retriever.get_scores(token_ids), -np.inf)
        indices, values = top_k(scores, depth)
        run[qid] = {
            doc_ids[i]: float(v)
            for i, v in zip(indices.tolist(), values.tolist(), strict=True)
            if v != -np.inf
        }
    return run


def _matching(retriever: Any, token_ids: Sequence[int], n_documents: int) -> np.ndarray:
    """Which documents contain at least one of the query's terms (bm25s's term-major index)."""
    indptr, indices = retriever.scores["indptr"], retriever.scores["indices"]
    mask = np.zeros(n_documents, dtype=bool)
    for token_id in set(token_ids):
        mask[indices[indptr[token_id] : indptr[token_id + 1]]] = True
    return mask


# -- dense ------------------------------------------------------------------------------
def _model_identity(model: Any) -> str | None:
    key = getattr(model, "cache_key", None)
    return key if isinstance(key, str) and key else None


def encode_corpus(
    model: Encoder,
    dataset: BeirDataset,
    *,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    use_cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    chunk_size: int = 1024,
    executor: ChunkExecutor | None = None,
) -> np.ndarray:
    """Embeddings of every document (``"title text"``), rows in ``dataset.sorted_doc_ids`` order.

    Documents are encoded in chunks of ``chunk_size`` (longest first, as the model
    batches them), each saved in the on-disk cache as soon as it is done, so an
    interrupted encoding resumes and the chunks can be spread over workers
    (``executor``). Cached by ``model.cache_key`` and the corpus file; a model
    without a ``cache_key`` is encoded every time.

    Args:
        model: a bi-encoder (see :class:`Encoder`).
        dataset: the collection.
        batch_size: texts per forward pass.
        show_progress_bar: draw a bar; ``None`` follows the logger level.
        use_cache: read and write the on-disk cache.
        cache_dir: the cache's folder.
        chunk_size: documents per saved chunk.
        executor: where the chunks are encoded (:mod:`relcomp.evaluation.executor`);
            ``None`` encodes them here.

    Returns:
        A float32 array ``(number of documents, dimension)``, as the model returns it.

    Example:
        >>> from pathlib import Path
        >>> class Model:
        ...     similarity_name = "dot"
        ...     def encode(self, texts, batch_size=32, show_progress_bar=None):
        ...         return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)
        >>> toy = BeirDataset("toy", Path("toy"), "test", {"d2": ("", "abc"), "d1": ("T", "a")}, {}, {})
        >>> encode_corpus(Model(), toy, use_cache=False).tolist()
        [[3.0, 1.0], [3.0, 1.0]]
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise RelcompError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    doc_ids = dataset.sorted_doc_ids
    identity = _model_identity(model)
    texts = [dataset.document_text(doc_id) for doc_id in doc_ids]
    if identity is None and use_cache:
        logger.info("%s has no cache_key; corpus embeddings are not cached", type(model).__name__)
    if identity is None and executor is None:
        logger.info("encoding %d documents of %s", len(texts), dataset.name)
        return DocumentEncoding.run(model, (texts, batch_size, show_progress_bar))[0]
    order = np.argsort([-len(text) for text in texts], kind="stable")
    chunks = [order[i : i + chunk_size].tolist() for i in range(0, len(order), chunk_size)]
    material = {
        "model": identity,
        **dataset.corpus_identity(),
        "order": "sorted ids",
        "text": "title text",
        "version": _EMBEDDINGS_VERSION,
    }
    task = DocumentEncoding(texts, batch_size)

    def compute(index: Sequence[int]) -> tuple[np.ndarray, dict[str, int]]:
        return task.run(model, task.payload(index))

    def map_chunks(todo: Sequence[Sequence[int]]) -> Any:
        assert executor is not None
        return executor.map(model, task, todo)

    logger.info("encoding %d documents of %s", len(texts), dataset.name)
    bar = tqdm(
        total=len(texts),
        desc="Encoding documents",
        unit="doc",
        disable=not progress_enabled(show_progress_bar),
    )
    with bar:
        embeddings, _ = Cache(cache_dir, enabled=use_cache and identity is not None).chunked(
            "corpus-embeddings",
            material,
            chunks,
            None if executor is not None else compute,
            length=len(texts),
            on_chunk=bar.update,
            map_chunks=map_chunks if executor is not None else None,
            dtype=np.float32,
            folder="embeddings",
        )
    if len(texts) and embeddings.ndim != 2:
        raise RelcompError(
            f"the model returned embeddings of shape {embeddings.shape[1:]} per document"
        )
    return embeddings


class DocumentEncoding(ChunkTask):
    """Corpus encoding as chunked work: a chunk is its document texts.

    ``run`` encodes them with ``encode_documents`` (the model's document prompt) when
    the model has it, ``encode`` otherwise, and returns float32 rows.
    """

    def __init__(self, texts: Sequence[str], batch_size: int) -> None:
        self.texts = texts
        self.batch_size = batch_size

    def payload(self, indices: Sequence[int]) -> Any:
        return [self.texts[i] for i in indices], self.batch_size, False

    @staticmethod
    def run(model: Any, payload: Any) -> tuple[np.ndarray, dict[str, int]]:
        texts, batch_size, show = payload
        encode: Callable[..., np.ndarray] = getattr(model, "encode_documents", None) or model.encode
        embeddings = np.asarray(
            encode(texts, batch_size=batch_size, show_progress_bar=show), dtype=np.float32
        )
        if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
            raise RelcompError(
                f"the model returned embeddings of shape {embeddings.shape} for {len(texts)} documents"
            )
        return embeddings, {}


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.clip(norms, 1e-12, None)


def dense_retrieve(
    model: Encoder,
    dataset: BeirDataset,
    query_ids: Iterable[str] | None = None,
    depth: int = 100,
    *,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    use_cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    executor: ChunkExecutor | None = None,
) -> Run:
    """Exhaustive dense retrieval: every query against every document.

    ``model.similarity_name`` says how vectors compare: ``"dot"`` is the raw inner
    product; ``"cosine"`` normalises both sides first (a no-op, up to rounding, for a
    model that already normalises). Scores come from one matrix product per block of
    queries; the top ``depth`` per query follow :func:`top_k`'s rule (higher score
    first, ties by document id ascending).

    Args:
        model: a bi-encoder (see :class:`Encoder`) with a ``cache_key`` for caching.
        dataset: the collection.
        query_ids: the queries to run; the split's judged queries by default.
        depth: how many documents to keep per query.
        batch_size: texts per forward pass of the model.
        show_progress_bar: draw bars; ``None`` follows the logger level.
        use_cache: read and write the on-disk cache (embeddings and run).
        cache_dir: the cache's folder.
        executor: where the corpus is encoded (see :func:`encode_corpus`).

    Returns:
        The run ``{query id: {document id: score}}``.

    Example:
        >>> from pathlib import Path
        >>> class Model:
        ...     similarity_name = "dot"
        ...     def encode(self, texts, batch_size=32, show_progress_bar=None):
        ...         return np.array([[t.count("cat"), 1.0] for t in texts], dtype=np.float32)
        >>> corpus = {"d1": ("", "a cat"), "d2": ("", "a dog"), "d3": ("Cats", "cat cat")}
        >>> toy = BeirDataset("toy", Path("toy"), "test", corpus, {"q1": "cat"}, {"q1": {"d3": 1}})
        >>> dense_retrieve(Model(), toy, depth=2, use_cache=False)
        {'q1': {'d3': 3.0, 'd1': 2.0}}
    """
    _check_depth(depth)
    similarity = getattr(model, "similarity_name", "cosine")
    if similarity not in ("cosine", "dot"):
        raise RelcompError(
            f"dense retrieval supports cosine and dot similarity, not {similarity!r}"
        )
    ids = _query_ids(dataset, query_ids)
    identity = _model_identity(model)

    def compute() -> Run:
        show = progress_enabled(show_progress_bar)
        documents = encode_corpus(
            model,
            dataset,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            use_cache=use_cache,
            cache_dir=cache_dir,
            executor=executor,
        )
        encode: Callable[..., np.ndarray] = getattr(model, "encode_queries", None) or model.encode
        queries = np.asarray(
            encode(
                [dataset.queries[qid] for qid in ids],
                batch_size=batch_size,
                show_progress_bar=show_progress_bar,
            ),
            dtype=np.float32,
        )
        if queries.shape != (len(ids), documents.shape[1]):
            raise RelcompError(
                f"query embeddings have shape {queries.shape}; expected ({len(ids)}, {documents.shape[1]})"
            )
        if similarity == "cosine":
            documents, queries = _normalise(documents), _normalise(queries)
        return _search(queries, documents, ids, dataset.sorted_doc_ids, int(depth), show)

    if identity is None:
        if use_cache:
            logger.info("%s has no cache_key; its run is not cached", type(model).__name__)
        return compute()
    material = {
        "first_stage": "dense",
        "algorithm": _ALGORITHM_VERSION,
        "model": identity,
        "similarity": similarity,
        **dataset.corpus_identity(),
        **dataset.queries_identity(),
        "queries": hash_ids(ids),
        "depth": int(depth),
    }
    run = Cache(cache_dir, enabled=use_cache).run("dense", material, compute)
    return {qid: run.get(qid, {}) for qid in ids}


def _search(
    queries: np.ndarray,
    documents: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    depth: int,
    show: bool,
) -> Run:
    block = max(1, min(1024, _MAX_BLOCK_FLOATS // max(1, documents.shape[0])))
    run: Run = {}
    for start in tqdm(range(0, len(query_ids), block), desc="Searching", disable=not show):
        scores = queries[start : start + block] @ documents.T
        indices, values = top_k(scores, depth)
        for offset, (row_indices, row_values) in enumerate(
            zip(indices.tolist(), values.tolist(), strict=True)
        ):
            run[query_ids[start + offset]] = {
                doc_ids[i]: float(v) for i, v in zip(row_indices, row_values, strict=True)
            }
    return run


# -- by name ----------------------------------------------------------------------------
FIRST_STAGES: Registry[Callable[..., Run]] = Registry("first stage")
FIRST_STAGES.register("bm25", "bm25s")(bm25_retrieve)


def retrieve(
    first_stage: str | Encoder,
    dataset: BeirDataset,
    query_ids: Iterable[str] | None = None,
    depth: int = 100,
    *,
    batch_size: int = 32,
    **options: Any,
) -> Run:
    """Run a first stage given by name (``"bm25"``) or as a bi-encoder model.

    Args:
        first_stage: a name from :data:`FIRST_STAGES`, or a model for :func:`dense_retrieve`.
        dataset: the collection.
        query_ids: the queries to run; the split's judged queries by default.
        depth: how many documents to keep per query.
        batch_size: texts per forward pass of a bi-encoder (a named stage has no batches).
        **options: passed on (``use_cache``, ``cache_dir``, ``show_progress_bar``…).

    Returns:
        The run ``{query id: {document id: score}}``.

    Example:
        >>> from pathlib import Path
        >>> corpus = {"d1": ("Cats", "Cats purr."), "d2": ("", "Dogs bark.")}
        >>> toy = BeirDataset("toy", Path("toy"), "test", corpus, {"q1": "purring cats"}, {"q1": {"d1": 1}})
        >>> retrieve("bm25", toy, depth=10, use_cache=False, show_progress_bar=False).keys()
        dict_keys(['q1'])
        >>> retrieve("bm26", toy)
        Traceback (most recent call last):
        ...
        relcomp.registry.UnknownNameError: unknown first stage 'bm26'; did you mean 'bm25'? Valid names: bm25
    """
    if isinstance(first_stage, str):
        return FIRST_STAGES.get(first_stage)(dataset, query_ids, depth, **options)
    if not hasattr(first_stage, "encode"):
        raise RelcompError(
            f"a first stage is a name ({', '.join(FIRST_STAGES.names())}) or a bi-encoder; "
            f"got {type(first_stage).__name__}"
        )
    return dense_retrieve(first_stage, dataset, query_ids, depth, batch_size=batch_size, **options)
