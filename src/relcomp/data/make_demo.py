"""Derive the shipped demo collection (``relcomp/data/demo``) from BEIR's SciFact.

The derivation, deterministic and re-runnable::

    python -m relcomp.data.make_demo --source ../shared/assets/beir/scifact \\
        --output src/relcomp/data/demo

1. Queries: a seeded sample (:func:`relcomp.evaluation.sample_queries`, seed 13,
   numpy's stable legacy ``RandomState``) of ``--test-queries`` judged queries of
   SciFact's ``test`` split and ``--train-queries`` judged queries of its ``train``
   split. The test queries are what ``relcomp demo`` reports on; the train queries
   are for calibration and for the quality gate, never reported.
2. Documents: every document judged for a sampled query, plus each sampled query's
   BM25 top-``--distractors`` over the *full* SciFact corpus (relcomp's BM25:
   bm25s, Lucene BM25 k1 1.5 b 0.75, English stopwords, no stemmer, documents as
   "title text"). The distractors are the documents a first stage would really
   confuse with the relevant ones, so ranking the demo collection stays as hard
   as ranking SciFact near the top of the list.
3. Every kept line is copied byte for byte from the source files, in source order;
   qrels keep their header and the lines of the sampled queries.

The script checks the source corpus against the sha256 that
``shared/assets/DATASETS.md`` records, writes ``PROVENANCE`` (sources, settings,
counts and sha256 of every file written) and refuses to write a folder over 5 MB.
SciFact is CC BY-NC 2.0 (Wadden et al., EMNLP 2020); so is the demo collection.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from relcomp._io import atomic_write_bytes, atomic_write_text

__all__ = ["SCIFACT_CORPUS_SHA256", "main", "make_demo"]

#: sha256 of BEIR's scifact/corpus.jsonl (shared/assets/DATASETS.md).
SCIFACT_CORPUS_SHA256 = "dec31c8182f3d744c7d2c09423756fd1d17cbef75808db13ba01cc0aab4d1ac6"
#: The most the shipped folder may weigh (data files, README and PROVENANCE).
MAX_BYTES = 5_000_000
SEED = 13


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lines_by_id(path: Path) -> dict[str, bytes]:
    """``{_id: the raw line}`` of a JSONL file, in file order."""
    lines: dict[str, bytes] = {}
    with path.open("rb") as stream:
        for raw in stream:
            if raw.strip():
                lines[str(json.loads(raw)["_id"])] = raw if raw.endswith(b"\n") else raw + b"\n"
    return lines


def make_demo(
    source: str | Path,
    output: str | Path,
    *,
    test_queries: int = 60,
    train_queries: int = 60,
    distractors: int = 20,
    seed: int = SEED,
    check_source: bool = True,
) -> dict[str, object]:
    """Write the demo collection derived from the SciFact folder ``source`` into ``output``.

    Args:
        source: BEIR's SciFact folder (``corpus.jsonl``, ``queries.jsonl``,
            ``qrels/test.tsv``, ``qrels/train.tsv``).
        output: the folder to write (replaced file by file, atomically).
        test_queries: how many judged test queries to keep.
        train_queries: how many judged train queries to keep.
        distractors: BM25 top-k documents over the full corpus added per query.
        seed: the sampling seed.
        check_source: refuse a ``corpus.jsonl`` whose sha256 is not BEIR's.

    Returns:
        The provenance record written to ``output/PROVENANCE`` (as a dict).

    Example:
        >>> make_demo("../shared/assets/beir/scifact", "/tmp/demo")  # doctest: +SKIP
    """
    from relcomp.evaluation import bm25_retrieve, load_beir, sample_queries

    source, output = Path(source), Path(output)
    corpus_file = source / "corpus.jsonl"
    if check_source and _sha256(corpus_file) != SCIFACT_CORPUS_SHA256:
        raise ValueError(f"{corpus_file}: not BEIR's scifact corpus (sha256 differs)")
    chosen: dict[str, list[str]] = {}
    documents: set[str] = set()
    for split, n in (("test", test_queries), ("train", train_queries)):
        dataset = load_beir(source, split, name="scifact")
        chosen[split] = sample_queries(dataset.split_queries, n, seed=seed)
        for query_id in chosen[split]:
            documents.update(dataset.qrels[query_id])
        run = bm25_retrieve(
            dataset, chosen[split], depth=distractors, use_cache=False, show_progress_bar=False
        )
        for scores in run.values():
            documents.update(scores)

    corpus_lines = _lines_by_id(corpus_file)
    query_lines = _lines_by_id(source / "queries.jsonl")
    all_queries = {q for ids in chosen.values() for q in ids}
    files: dict[str, bytes] = {
        "corpus.jsonl": b"".join(line for i, line in corpus_lines.items() if i in documents),
        "queries.jsonl": b"".join(line for i, line in query_lines.items() if i in all_queries),
    }
    for split, ids in chosen.items():
        keep = set(ids)
        raw = (source / "qrels" / f"{split}.tsv").read_bytes().splitlines(keepends=True)
        body = [line for line in raw[1:] if line.split(b"\t", 1)[0].decode() in keep]
        files[f"qrels/{split}.tsv"] = raw[0] + b"".join(body)

    provenance: dict[str, object] = {
        "name": "scifact-demo",
        "source": {
            "dataset": "SciFact, as distributed by BEIR (scifact.zip)",
            "urls": [
                "https://github.com/beir-cellar/beir",
                "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip",
                "https://github.com/allenai/scifact",
            ],
            "corpus_sha256": _sha256(corpus_file),
            "licence": "CC BY-NC 2.0 (SciFact corpus and claims; Wadden et al., EMNLP 2020)",
        },
        "derivation": {
            "script": "relcomp/data/make_demo.py",
            "seed": seed,
            "sampler": "relcomp.evaluation.sample_queries (numpy RandomState, sorted ids)",
            "test_queries": test_queries,
            "train_queries": train_queries,
            "distractors_per_query": distractors,
            "first_stage": "relcomp BM25 (bm25s lucene k1=1.5 b=0.75, English stopwords, "
            "no stemmer, title text) over the full 5,183-document corpus",
        },
        "counts": {
            "documents": files["corpus.jsonl"].count(b"\n"),
            "queries": files["queries.jsonl"].count(b"\n"),
            **{
                f"qrels/{split}.tsv judgements": files[f"qrels/{split}.tsv"].count(b"\n") - 1
                for split in chosen
            },
        },
        "files": {
            name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in files.items()
        },
    }
    provenance_text = json.dumps(provenance, indent=2) + "\n"
    readme = (output / "README.md").read_bytes() if (output / "README.md").is_file() else b""
    total = sum(len(d) for d in files.values()) + len(provenance_text) + len(readme)
    if total > MAX_BYTES:
        raise ValueError(f"the demo collection would take {total:,} bytes (limit {MAX_BYTES:,})")
    for name, data in files.items():
        atomic_write_bytes(output / name, data)
    atomic_write_text(output / "PROVENANCE", provenance_text)
    return provenance


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m relcomp.data.make_demo --source DIR --output DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="BEIR's scifact folder")
    parser.add_argument("--output", type=Path, required=True, help="the demo folder to write")
    parser.add_argument("--test-queries", type=int, default=60)
    parser.add_argument("--train-queries", type=int, default=60)
    parser.add_argument("--distractors", type=int, default=20)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    provenance = make_demo(
        args.source,
        args.output,
        test_queries=args.test_queries,
        train_queries=args.train_queries,
        distractors=args.distractors,
        seed=args.seed,
    )
    print(json.dumps(provenance["counts"], indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
