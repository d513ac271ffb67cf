"""Data shipped inside relcomp: the demo collection behind ``relcomp demo``.

``demo/`` is a small BEIR folder (``corpus.jsonl``, ``queries.jsonl``,
``qrels/train.tsv``, ``qrels/test.tsv``) derived from BEIR's SciFact by
:mod:`relcomp.data.make_demo`; its ``README.md`` and ``PROVENANCE`` state the source,
the licence (CC BY-NC 2.0) and exactly how it was made.

Example:
    >>> from relcomp.evaluation import load_beir
    >>> dataset = load_beir(demo_path(), "test", name=DEMO_NAME)
    >>> dataset.name, len(dataset.split_queries)
    ('scifact-demo', 60)
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_NAME", "demo_path"]

#: The demo collection's name (what reports and caches call it).
DEMO_NAME = "scifact-demo"


def demo_path() -> Path:
    """The folder of the demo collection installed with relcomp.

    Returns:
        The absolute path of ``relcomp/data/demo``.

    Raises:
        FileNotFoundError: the package was installed without its data files.

    Example:
        >>> sorted(p.name for p in demo_path().iterdir() if not p.name.startswith("."))
        ['PROVENANCE', 'README.md', 'corpus.jsonl', 'qrels', 'queries.jsonl']
    """
    folder = Path(__file__).resolve().parent / "demo"
    if not (folder / "corpus.jsonl").is_file():
        raise FileNotFoundError(
            f"{folder}: the demo collection is missing; relcomp was installed without its "
            "package data (reinstall it, e.g. pip install -e .)"
        )
    return folder
