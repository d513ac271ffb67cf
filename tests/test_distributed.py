"""Re-ranking and corpus encoding on Ray: the same values as the in-process path, the same cache.

One local Ray instance serves the module (loopback only); the two-node test starts
its own simulated cluster (``ray.cluster_utils.Cluster``) at the end. Skipped when
Ray is not installed; CI installs the ``ray`` extra, so they run there.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from relcomp.errors import RelcompError
from relcomp.evaluation import encode_corpus, load_beir, rerank
from relcomp.evaluation.beir import BeirDataset

ray = pytest.importorskip("ray")

from relcomp.distributed import RayExecutor, loopback_only  # noqa: E402

pytestmark = pytest.mark.timeout(300)

WORDS = [
    "cats",
    "purr",
    "dogs",
    "bark",
    "fish",
    "swim",
    "birds",
    "sing",
    "the",
    "a",
    "of",
    "why",
    "do",
    "when",
    "sea",
    "postman",
    "happy",
]


def _collection(root: Path, documents: int = 24, queries: int = 4) -> BeirDataset:
    """A BEIR folder of varied lengths (so chunks sort and pad differently)."""
    import json

    rng = np.random.RandomState(7)
    root.mkdir(parents=True, exist_ok=True)
    with (root / "corpus.jsonl").open("w") as stream:
        for i in range(documents):
            text = " ".join(rng.choice(WORDS, size=3 + (i * 5) % 29))
            stream.write(json.dumps({"_id": f"d{i}", "title": f"T{i % 3}", "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as stream:
        for i in range(queries):
            stream.write(
                json.dumps({"_id": f"q{i}", "text": " ".join(rng.choice(WORDS, 3 + i))}) + "\n"
            )
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(queries))
    )
    return load_beir(root)


def _run(dataset: BeirDataset) -> dict[str, dict[str, float]]:
    ids = dataset.sorted_doc_ids
    return {qid: {doc: float(-j) for j, doc in enumerate(ids)} for qid in dataset.split_queries}


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One local Ray for the session, started the way ``--ray local`` starts it."""
    executor = RayExecutor("local", workers=2)
    executor.connect()
    yield
    executor.close()
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def executor(local_ray: None) -> Iterator[RayExecutor]:
    if not ray.is_initialized():  # the two-node test shut it down; start it again
        RayExecutor("local").connect()
    with RayExecutor("local", workers=2) as pool:
        yield pool


@pytest.fixture
def collection(tmp_path_factory: pytest.TempPathFactory) -> BeirDataset:
    return _collection(tmp_path_factory.mktemp("beir") / "toy")


def _tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_local_ray_listens_on_loopback_only(local_ray: None) -> None:
    import psutil

    # Every Ray process on this machine is a descendant of this one (raylet, GCS, workers).
    me = psutil.Process()
    pids = [me.pid, *(child.pid for child in me.children(recursive=True))]
    assert len(pids) > 2
    assert loopback_only(pids) == []


def test_rerank_on_ray_equals_the_sequential_scores_and_each_resumes_the_other(
    tiny_model: Any, collection: BeirDataset, tmp_path: Path, executor: RayExecutor
) -> None:
    model = tiny_model("bert")
    run = _run(collection)
    options = {"depth": 24, "batch_size": 4, "use_cache": True, "chunk_size": 8}
    sequential = rerank(model, collection, run, cache_dir=tmp_path / "a", **options)
    tally = dict(model.truncation)
    model.truncation.clear()
    on_ray = rerank(model, collection, run, cache_dir=tmp_path / "b", executor=executor, **options)
    assert on_ray == sequential  # bit for bit
    assert dict(model.truncation) == tally  # the workers' truncation tally comes back
    assert len(executor.stats) == 2 and sum(s["chunks"] for s in executor.stats.values()) == 12

    # Ray resumes a half-finished sequential entry, and the other way round.
    for first, second in ((None, executor), (executor, None)):
        cache = tmp_path / f"half-{first is None}"
        entry = _half_finished(model, collection, run, cache, first, options)
        counted = _counting(model)
        resumed = rerank(counted, collection, run, cache_dir=cache, executor=second, **options)
        assert resumed == sequential
        if second is None:
            assert counted.pairs == 48  # only the missing half was scored
        assert _tmp_files(cache) == [] and entry.is_file()


def _half_finished(
    model: Any, dataset: BeirDataset, run: Any, cache: Path, executor: Any, options: Any
) -> Path:
    """Score every chunk, then mark half of them not done, as an interrupted run leaves them."""
    rerank(model, dataset, run, cache_dir=cache, executor=executor, **options)
    (entry,) = (cache / "scores").glob("*.npz")
    with np.load(entry) as stored:
        values, done, header = stored["values"], stored["done"], stored["header"]
    done[::2] = False
    np.savez(entry, values=values, done=done, header=header)
    return entry


class _counting:
    """The model, counting the pairs it scores in this process."""

    def __init__(self, model: Any) -> None:
        self.model, self.pairs = model, 0
        self.cache_key, self.truncation = model.cache_key, model.truncation

    def score(self, queries: Any, documents: Any, **options: Any) -> Any:
        self.pairs += len(queries)
        return self.model.score(queries, documents, **options)


def test_corpus_encoding_on_ray_equals_the_sequential_embeddings(
    tiny_model: Any, collection: BeirDataset, tmp_path: Path, executor: RayExecutor
) -> None:
    model = tiny_model("bert", "bi-encoder")
    options = {"batch_size": 4, "chunk_size": 5, "use_cache": True}
    sequential = encode_corpus(model, collection, cache_dir=tmp_path / "a", **options)
    on_ray = encode_corpus(
        model, collection, cache_dir=tmp_path / "b", executor=executor, **options
    )
    assert on_ray.dtype == np.float32 and on_ray.shape == sequential.shape
    np.testing.assert_array_equal(on_ray, sequential)
    # Each side reads the other's entry: nothing is computed again.
    (entry,) = (tmp_path / "b" / "embeddings").glob("*.npz")
    before = sum(s["chunks"] for s in executor.stats.values())
    again = encode_corpus(model, collection, cache_dir=tmp_path / "a", executor=executor, **options)
    np.testing.assert_array_equal(again, sequential)
    assert sum(s["chunks"] for s in executor.stats.values()) == before
    assert entry.is_file()


def test_a_killed_worker_is_retried_and_nothing_half_written_stays(
    tiny_model: Any, collection: BeirDataset, tmp_path: Path, local_ray: None
) -> None:
    model = tiny_model("bert")
    run = _run(collection)
    options = {"depth": 24, "batch_size": 4, "use_cache": True, "chunk_size": 4}
    sequential = rerank(model, collection, run, cache_dir=tmp_path / "a", **options)

    class KillOnce(RayExecutor):
        killed: ClassVar[list[int]] = []

        def map(self, model: Any, task: Any, chunks: Any) -> Any:
            for n, item in enumerate(super().map(model, task, chunks)):
                if n == 0:
                    pid = self.actor_info()[0]["pid"]
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                yield item

    with KillOnce("local", workers=2) as pool:
        on_ray = rerank(model, collection, run, cache_dir=tmp_path / "b", executor=pool, **options)
        assert pool.killed and pool.killed[0] not in {i["pid"] for i in pool.actor_info()}
    assert on_ray == sequential
    assert _tmp_files(tmp_path / "b") == []


def test_a_worker_that_keeps_dying_is_reported_and_the_finished_chunks_stay(
    tiny_model: Any, collection: BeirDataset, tmp_path: Path, local_ray: None
) -> None:
    model = tiny_model("bert")
    run = _run(collection)
    options = {"depth": 24, "batch_size": 4, "use_cache": True, "chunk_size": 4}

    class KillAll(RayExecutor):
        def map(self, model: Any, task: Any, chunks: Any) -> Any:
            for n, item in enumerate(super().map(model, task, chunks)):
                if n == 1:
                    for info in self.actor_info():
                        os.kill(info["pid"], signal.SIGKILL)
                yield item

    with (
        KillAll("local", workers=1, max_restarts=0) as pool,
        pytest.raises(RelcompError, match="run again to resume"),
    ):
        rerank(model, collection, run, cache_dir=tmp_path, executor=pool, **options)
    (entry,) = (tmp_path / "scores").glob("*.npz")
    with np.load(entry) as stored:
        assert 2 <= int(stored["done"].sum()) < 24
    assert _tmp_files(tmp_path) == []
    # Resuming in-process fills in the rest.
    counted = _counting(model)
    rerank(counted, collection, run, cache_dir=tmp_path, **options)
    assert 0 < counted.pairs < 96


def test_workers_beyond_the_local_cpus_are_refused(
    tiny_model: Any, collection: BeirDataset, local_ray: None
) -> None:
    model = tiny_model("bert")
    with (
        RayExecutor("local", workers=64) as pool,
        pytest.raises(RelcompError, match="fewer --workers"),
    ):
        rerank(model, collection, _run(collection), depth=4, executor=pool)


def test_two_nodes_hold_one_actor_each_and_give_the_same_scores(
    tiny_model: Any, collection: BeirDataset, tmp_path: Path, local_ray: None
) -> None:
    from ray.cluster_utils import Cluster

    model = tiny_model("bert")
    run = _run(collection)
    options = {"depth": 24, "batch_size": 4, "use_cache": True, "chunk_size": 8}
    sequential = rerank(model, collection, run, cache_dir=tmp_path / "a", **options)
    ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        # no dashboard: on a 2-core CI box it takes most of a core while the test runs
        head_node_args={
            "num_cpus": 1,
            "object_store_memory": 100 * 2**20,
            "include_dashboard": False,
        },
    )
    try:
        cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        with RayExecutor(cluster.address, workers=2) as pool:
            on_ray = rerank(
                model, collection, run, cache_dir=tmp_path / "b", executor=pool, **options
            )
            nodes = {info["node"] for info in pool.actor_info()}
        assert len(nodes) == 2
        assert on_ray == sequential
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_evaluate_with_ray_writes_the_same_quality_json(
    tiny_model_path: Any, collection: BeirDataset, tmp_path: Path, local_ray: None, monkeypatch
) -> None:
    import json

    from relcomp.cli import main

    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    model = str(tiny_model_path("bert"))
    data = str(collection.path)
    common = ["evaluate", "-m", model, "-d", data, "--depth", "12", "--quiet", "--no-cache"]
    assert main([*common, "-o", str(tmp_path / "here")]) == 0
    assert main([*common, "-o", str(tmp_path / "ray"), "--ray", "local", "--workers", "2"]) == 0
    here, on_ray = (
        json.loads((tmp_path / name / "quality.json").read_text()) for name in ("here", "ray")
    )
    assert on_ray == here


def test_sweep_cells_as_ray_tasks_give_the_same_reports(
    tiny_model: Any, collection: BeirDataset, tmp_path: Path, local_ray: None, monkeypatch
) -> None:
    import argparse
    import sys

    from relcomp.compression.planners import make_plan

    monkeypatch.setenv("RELCOMP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RELCOMP_RAY", raising=False)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import compression_quality

    model = tiny_model("bert")
    cells = [
        ("prune-structured", "magnitude", "bm25", plan, [])
        for plan in (
            make_plan(model, "prune-structured", {"params_removed": r}, importance="magnitude")
            for r in (0.1, 0.3)
        )
    ]
    runs = {}
    for ray_address in (None, "local"):
        args = argparse.Namespace(ray=ray_address, workers=2)
        found = compression_quality.evaluate_cells(
            model, iter(cells), collection.path, True, None, args
        )
        runs[ray_address] = {
            cells.index(cell): (report.measures, report.per_query) for cell, report, _ in found
        }
    assert runs["local"] == runs[None] and len(runs[None]) == 2
    sys.modules.pop("compression_quality", None)


def test_an_onnx_bundle_is_loaded_by_each_actor_and_scores_the_same(
    tiny_model: Any, collection: BeirDataset, tmp_path: Path, executor: RayExecutor
) -> None:
    """ONNX Runtime sessions cannot be pickled: each actor loads the bundle from its folder."""
    from relcomp.export import export_bundle
    from relcomp.models import load_model

    export_bundle(tiny_model("bert"), tmp_path / "bundle")
    bundle = load_model(tmp_path / "bundle")
    run = _run(collection)
    options = {"depth": 24, "batch_size": 4, "use_cache": True, "chunk_size": 8}
    sequential = rerank(bundle, collection, run, cache_dir=tmp_path / "a", **options)
    on_ray = rerank(bundle, collection, run, cache_dir=tmp_path / "b", executor=executor, **options)
    assert on_ray == sequential
