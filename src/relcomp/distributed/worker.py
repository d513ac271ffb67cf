"""The Ray actor that holds one copy of a model and computes chunks with it.

:class:`ChunkWorker` is a plain class; :func:`remote_worker` gives it as a Ray actor
class (``ray.remote(ChunkWorker)``), so this module imports without Ray installed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

from relcomp.errors import RelcompError

__all__ = ["ChunkWorker", "ModelRecipe", "remote_worker"]


@dataclass(frozen=True)
class ModelRecipe:
    """How an actor loads a model that cannot be pickled: ``load_model(path, max_length)``."""

    path: str
    kind: str | None
    max_length: int | None
    cache_key: str | None

    def build(self) -> Any:
        from relcomp.models import load_model

        model = load_model(self.path, kind=self.kind, max_length=self.max_length)  # type: ignore[arg-type]
        key = getattr(model, "cache_key", None)
        if self.cache_key is not None and key != self.cache_key:
            raise RelcompError(
                f"{self.path} loads as a different model on this worker "
                f"({key}, the driver has {self.cache_key}): is the folder the same on every node?"
            )
        return model


class ChunkWorker:
    """Loads (or receives) the model once, then computes one chunk per call."""

    def __init__(self, held: list[Any], threads: int) -> None:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        import torch

        torch.set_num_threads(max(1, int(threads)))
        import ray

        (source,) = held  # [an object reference] or [a recipe]
        if isinstance(source, ray.ObjectRef):
            source = ray.get(source)
        self.model = source.build() if isinstance(source, ModelRecipe) else source
        context = ray.get_runtime_context()
        self.name = f"{context.get_node_id()[:8]}/{os.getpid()}"

    def info(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    def run(
        self, task: Any, position: int, payload: Any
    ) -> tuple[int, Any, dict[str, int], dict[str, Any]]:
        cpu, wall = time.process_time(), time.perf_counter()
        values, tally = task.run(self.model, payload)
        usage = {
            "worker": self.name,
            "cpu_s": time.process_time() - cpu,
            "busy_s": time.perf_counter() - wall,
        }
        return position, values, dict(tally), usage


@cache
def remote_worker() -> Any:
    """:class:`ChunkWorker` as a Ray actor class."""
    import ray

    return ray.remote(ChunkWorker)
