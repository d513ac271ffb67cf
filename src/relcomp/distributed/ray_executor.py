"""The Ray executor: chunks computed by a pool of actors, each holding one copy of the model.

Design (see also :mod:`relcomp.evaluation.executor`):

* **One model per actor.** The driver's model is put in Ray's object store once;
  each actor deserialises it when it starts and keeps it, so a compressed model,
  an applied plan or a ``max_length`` override travels as it is, and the model
  folder need not exist on the other nodes. A model that cannot be pickled (an
  ONNX Runtime bundle) is loaded by each actor from its folder instead
  (:class:`ModelRecipe`), and its ``cache_key`` is checked against the driver's.
* **Chunks, not pairs.** A task is one chunk of the cache's layout, so every
  chunk is batched exactly as the in-process path batches it and the values are
  the same bit for bit. The driver yields each chunk as it finishes; the cache
  saves it at once (the driver is the only writer).
* **ray.util.ActorPool** hands chunks to idle actors. Ray Data's
  ``ActorPoolStrategy`` would add pyarrow, blocks and a streaming executor whose
  CPU reservations can deadlock a 2-core machine, for a job that is a list of
  independent chunks.
* **Failures.** An actor whose process dies is restarted and its chunk retried
  (``max_restarts``, ``max_task_retries``; a chunk is a pure function of its
  payload). A chunk that still fails stops the run with a :class:`RelcompError`;
  the chunks already saved stay, and running again resumes.
* **Safe by default.** ``local`` starts Ray with every server on the loopback
  interface (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray's
  ``get_node_ip_address`` answer 127.0.0.1, the address every Ray server binds;
  ``--node-ip-address`` alone does not, ray issue #26293), no dashboard, usage
  statistics off, a bounded object store, and ``TOKENIZERS_PARALLELISM=false``
  in the actors.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from relcomp.distributed.settings import RAY_EXTRA, require_ray
from relcomp.errors import RelcompError
from relcomp.evaluation.executor import ChunkTask

__all__ = ["RayExecutor", "loopback_only"]

logger = logging.getLogger(__name__)

#: Object-store memory of a ``local`` Ray: a model or two and the chunks in flight.
LOCAL_OBJECT_STORE_BYTES = 512 * 1024 * 1024

#: Environment every actor runs with.
ACTOR_ENV = {"TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}


def _recipe(model: Any) -> Any:
    from relcomp.distributed.worker import ModelRecipe

    path = getattr(model, "path", None)
    if path is None:
        raise RelcompError(
            f"{type(model).__name__} can neither be pickled nor loaded from a folder; "
            "it cannot be sent to Ray workers"
        )
    return ModelRecipe(
        path=str(path),
        kind=getattr(model, "kind", None),
        max_length=getattr(model, "max_length", None),
        cache_key=getattr(model, "cache_key", None),
    )


def loopback_only(
    pids: Sequence[int] | None = None, ignore: Iterable[tuple[str, int]] = ()
) -> list[str]:
    """Listening sockets of the given processes (default: this one and its children) not on loopback.

    An empty list means nothing listens beyond this machine. IPv4-mapped IPv6
    loopback (``::ffff:127.0.0.1``) counts as loopback. ``ignore``: ``(ip, port)``
    pairs that were listening before (this process's own servers, not Ray's).
    """
    import psutil

    if pids is None:
        me = psutil.Process()
        pids = [me.pid, *(child.pid for child in me.children(recursive=True))]
    wanted = set(pids)
    skipped = set(ignore)
    exposed = []
    for connection in psutil.net_connections(kind="inet"):
        if connection.status != psutil.CONN_LISTEN or connection.pid not in wanted:
            continue
        if (connection.laddr.ip, connection.laddr.port) in skipped:
            continue
        address = ipaddress.ip_address(connection.laddr.ip.split("%")[0])
        mapped = getattr(address, "ipv4_mapped", None)
        if not (address.is_loopback or (mapped is not None and mapped.is_loopback)):
            exposed.append(f"{connection.laddr.ip}:{connection.laddr.port} (pid {connection.pid})")
    return exposed


class RayExecutor:
    """Computes chunks on a pool of Ray actors (a :class:`~relcomp.evaluation.executor.ChunkExecutor`).

    Args:
        address: ``"local"`` (start Ray on this machine, loopback only), ``"auto"``
            (the cluster this machine belongs to) or ``"host:port"``. When Ray is
            already initialised in this process, that connection is used as it is.
        workers: actors in the pool; every CPU of the cluster (``local``: of this
            machine) divided by ``cpus_per_worker`` when ``None``.
        cpus_per_worker: CPUs each actor reserves, and torch threads it runs.
        object_store_bytes: object-store memory of a ``local`` Ray.
        max_restarts: restarts of an actor whose process dies (its chunk is retried).

    Use it as a context manager, or call :meth:`close`: the actors go away, and a
    ``local`` Ray this executor started is shut down.
    """

    def __init__(
        self,
        address: str = "local",
        workers: int | None = None,
        *,
        cpus_per_worker: int = 1,
        object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES,
        max_restarts: int = 2,
    ) -> None:
        if workers is not None and (isinstance(workers, bool) or workers < 1):
            raise RelcompError(f"workers must be a positive integer, got {workers!r}")
        if cpus_per_worker < 1:
            raise RelcompError(
                f"cpus_per_worker must be a positive integer, got {cpus_per_worker!r}"
            )
        require_ray()
        self.address = address
        self.workers = workers
        self.cpus_per_worker = int(cpus_per_worker)
        self.object_store_bytes = int(object_store_bytes)
        self.max_restarts = int(max_restarts)
        self._started = False
        self._connected = False
        self._actors: list[Any] = []
        self._pool_key: tuple[int, str | None] | None = None
        self._model_ref: Any = None
        #: Per actor (``"node/pid"``): chunks, CPU seconds and busy seconds, summed over runs.
        self.stats: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def __repr__(self) -> str:
        return f"RayExecutor({self.address!r}, workers={self.workers})"

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection --------------------------------------------------------------------
    def connect(self) -> None:
        """Join (or start) the Ray cluster; called by the first :meth:`map`."""
        if self._connected:
            return
        if self.address == "local":
            _before_local_ray()
        import ray

        if ray.is_initialized():
            logger.info("using the Ray instance this process is already connected to")
        elif self.address == "local":
            before = _listening(os.getpid())
            ray.init(
                address="local",
                num_cpus=os.cpu_count() or 1,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                object_store_memory=self.object_store_bytes,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
            self._started = True
            exposed = loopback_only(ignore=before)
            if exposed:
                self.close()
                raise RelcompError(
                    "the local Ray listens beyond this machine ("
                    + ", ".join(exposed)
                    + "); stopped"
                )
            logger.info("started a local Ray on the loopback interface")
        else:
            try:
                ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise RelcompError(
                    f"cannot join the Ray cluster at {self.address}: {error}"
                ) from error
            logger.info("joined the Ray cluster at %s", self.address)
        self._connected = True

    def cluster_cpus(self) -> int:
        import ray

        return int(ray.cluster_resources().get("CPU", 0))

    # -- the pool ------------------------------------------------------------------------
    def _pool(self, model: Any) -> list[Any]:
        """The actors holding ``model``, started on first use (one pool at a time)."""
        key = (id(model), getattr(model, "cache_key", None))
        if self._pool_key == key and self._actors:
            return self._actors
        self._release_pool()
        import ray

        from relcomp.distributed.worker import remote_worker

        cpus = self.cluster_cpus()
        workers = self.workers or max(1, cpus // self.cpus_per_worker)
        if workers * self.cpus_per_worker > cpus:
            message = (
                f"{workers} worker(s) of {self.cpus_per_worker} CPU(s) need more than the "
                f"cluster's {cpus} CPUs"
            )
            if self.address == "local":
                raise RelcompError(message + "; ask for fewer --workers")
            logger.warning("%s: some will wait for CPUs to join", message)
        try:
            source: Any = ray.put(model)
        except Exception as error:  # what fails to pickle raises TypeError, PicklingError…
            logger.info("%s cannot be pickled (%s); workers load it from its folder", model, error)
            source = _recipe(model)
        options = {
            "num_cpus": self.cpus_per_worker,
            "max_restarts": self.max_restarts,
            "max_task_retries": self.max_restarts,
            "runtime_env": {"env_vars": dict(ACTOR_ENV)},
        }
        self._model_ref = source
        # The reference travels inside a list: the actor fetches the model itself, and this
        # executor keeps the object alive, so a restarted actor fetches it again.
        self._actors = [
            remote_worker().options(**options).remote([source], self.cpus_per_worker)
            for _ in range(workers)
        ]
        self._pool_key = key
        logger.info(
            "%d Ray worker(s) hold %s", workers, getattr(model, "name", type(model).__name__)
        )
        return self._actors

    def start(self, model: Any) -> float:
        """Connect, start the pool for ``model`` and wait until every actor holds it; seconds taken."""
        started = time.perf_counter()
        self.connect()
        self._pool(model)
        self.actor_info()
        return time.perf_counter() - started

    def actor_info(self) -> list[dict[str, Any]]:
        """``{"pid", "node"}`` of every actor of the current pool (waits for them to start)."""
        import ray

        return list(ray.get([actor.info.remote() for actor in self._actors]))

    def map(
        self, model: Any, task: ChunkTask, chunks: Sequence[Sequence[int]]
    ) -> Iterator[tuple[int, np.ndarray, Mapping[str, int]]]:
        """Every chunk, computed by the pool; yielded as each finishes."""
        if not chunks:
            return
        self.connect()
        from ray.util import ActorPool

        actors = self._pool(model)
        pool = ActorPool(actors)
        kind = type(task)
        items = [(position, task.payload(chunk)) for position, chunk in enumerate(chunks)]
        started = time.perf_counter()
        results = pool.map_unordered(
            lambda actor, item: actor.run.remote(kind, item[0], item[1]), items
        )
        received = 0
        while received < len(items):
            with _ray_errors(
                "a Ray worker failed on a chunk",
                "a Ray worker died and its chunk could not be retried",
                f"{received} of {len(items)} chunks were finished and saved: run again to resume",
            ):
                position, values, tally, usage = next(results)
            received += 1
            record = self.stats[usage["worker"]]
            record["chunks"] += 1
            record["cpu_s"] += usage["cpu_s"]
            record["busy_s"] += usage["busy_s"]
            yield position, values, Counter(tally)
        logger.info(
            "%d chunk(s) on %d Ray worker(s) in %.1f s", len(items), len(actors),
            time.perf_counter() - started,
        )  # fmt: skip

    # -- whole tasks (sweep cells) -------------------------------------------------------------
    def map_tasks(
        self, function: Callable[..., Any], arguments: Iterable[Sequence[Any]]
    ) -> Iterator[tuple[int, Any]]:
        """``function(*args)`` for each ``args`` as a Ray task; ``(index, result)`` as each finishes.

        For work bigger than a chunk: one cell of a compression sweep (a plan applied
        and evaluated). At most ``workers`` tasks run at once, each on
        ``cpus_per_worker`` CPUs and as many torch threads; a task whose worker dies is
        retried. Put large shared arguments (the model, statistics) in the object
        store once with ``ray.put`` and pass the reference.
        """
        self.connect()
        import ray

        from relcomp.evaluation.cache import CACHE_ENV

        # a task evaluates with relcomp's disk caches: the same folder as this process's
        env = {
            **ACTOR_ENV,
            **({CACHE_ENV: os.environ[CACHE_ENV]} if CACHE_ENV in os.environ else {}),
        }
        remote = ray.remote(num_cpus=self.cpus_per_worker, max_retries=self.max_restarts)(
            _with_threads
        ).options(runtime_env={"env_vars": env})
        limit = self.workers or max(1, self.cluster_cpus() // self.cpus_per_worker)
        waiting = iter(enumerate(arguments))
        running: dict[Any, int] = {}

        def submit() -> bool:
            item = next(waiting, None)
            if item is None:
                return False
            index, args = item
            running[remote.remote(self.cpus_per_worker, function, *args)] = index
            return True

        while len(running) < limit and submit():
            pass
        while running:
            [ready], _ = ray.wait(list(running), num_returns=1)
            index = running.pop(ready)
            with _ray_errors("a Ray task failed", "a Ray task died and could not be retried"):
                result = ray.get(ready)
            submit()
            yield index, result

    # -- teardown ------------------------------------------------------------------------
    def _release_pool(self) -> None:
        if not self._actors:
            return
        import ray

        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
        self._pool_key = None
        self._model_ref = None

    def close(self) -> None:
        """Stop the actors; shut Ray down if this executor started it."""
        if not self._connected and not self._started:
            return
        import ray

        if ray.is_initialized():
            self._release_pool()
            if self._started:
                ray.shutdown()
        self._actors = []
        self._started = False
        self._connected = False


def _listening(pid: int) -> set[tuple[str, int]]:
    """``(ip, port)`` of the sockets process ``pid`` listens on."""
    import psutil

    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid == pid
    }


def _with_threads(threads: int, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` with torch on ``threads`` threads (a Ray task's body)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    return function(*args)


def _before_local_ray() -> None:
    """Settings a local Ray must see before it starts (and before ``import ray`` where possible)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from ray._private import ray_constants
    except ImportError as error:  # pragma: no cover - require_ray checked it
        raise RelcompError(f"Ray cannot be imported ({error}): {RAY_EXTRA}") from error
    # Read once at import: an earlier `import ray` saw the old value.
    ray_constants.ENABLE_RAY_CLUSTER = False


@contextlib.contextmanager
def _ray_errors(failed: str, died: str, then: str = "") -> Iterator[None]:
    """Ray's errors as one relcomp message: a task's own error (bad input) as it was
    raised; any other failure of a task as ``failed``; a worker lost for good as ``died``
    (with ``then``: what was kept)."""
    import ray

    try:
        yield
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, RelcompError | ValueError | OSError):
            raise cause from None
        raise RelcompError(f"{failed}: {error}") from error
    except ray.exceptions.RayError as error:
        raise RelcompError(
            f"{died} ({type(error).__name__})" + (f"; {then}" if then else "")
        ) from error
