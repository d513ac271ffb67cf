"""Chunked work past one machine: re-ranking and corpus encoding on a Ray cluster.

relcomp's expensive loops are chunked (:meth:`relcomp.evaluation.cache.Cache.chunked`)
and hand the chunks still to do to an executor (:mod:`relcomp.evaluation.executor`).
:class:`RayExecutor` sends them to a pool of Ray actors, each holding one copy of
the model; this process computes the cache keys, receives every chunk and saves it
as it arrives, so the scores are the ones the in-process path gives, bit for bit,
and a run stopped halfway resumes from either path.

How a user chooses it: ``--ray [ADDRESS]`` and ``--workers N`` on ``relcomp evaluate``
and ``relcomp compress``, or ``RELCOMP_RAY=local|auto|host:port``. ``local`` starts
a Ray instance on this machine, listening on the loopback interface only; ``auto``
joins the cluster this machine belongs to; ``host:port`` joins that one. Ray is an
optional extra: ``pip install 'relcomp[ray]'``.

Example:
    >>> ray_setting(None, environ={})  # neither --ray nor RELCOMP_RAY: today's path
    >>> ray_setting(None, environ={"RELCOMP_RAY": "local"})
    'local'
"""

from __future__ import annotations

from relcomp.distributed.settings import (
    RAY_ENV,
    RAY_EXTRA,
    ray_available,
    ray_setting,
    require_ray,
)

__all__ = [
    "RAY_ENV",
    "RAY_EXTRA",
    "RayExecutor",
    "loopback_only",
    "ray_available",
    "ray_setting",
    "require_ray",
]


def __getattr__(name: str) -> object:
    # The executor imports Ray; only load it when asked for.
    if name in ("RayExecutor", "loopback_only"):
        from relcomp.distributed import ray_executor

        return getattr(ray_executor, name)
    raise AttributeError(name)
