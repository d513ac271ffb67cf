"""Session fixtures: tiny models of every family, built in code once and loaded per test.

``tiny_model_path(family, kind, **options)`` builds a folder the first time it is
asked for (``options`` as in :func:`tests.fixtures.make_tiny_model_dir`) and
returns the same folder afterwards. ``tiny_model(family, kind, **options)`` loads
it with :func:`relcomp.models.load_model`: a fresh copy per call, so a test may
patch or compress it freely. Tests not marked ``slow`` run torch on one thread.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.fixtures import make_tiny_model_dir


@pytest.fixture(autouse=True)
def _one_torch_thread(request: pytest.FixtureRequest) -> Any:
    """Tiny models run on one thread, except in ``slow`` tests (real models).

    Tiny models gain nothing from more threads, and on a busy CI machine torch's
    OpenMP workers spin: a 30 ms forward pass then takes seconds.
    """
    if request.node.get_closest_marker("slow"):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class TinyModelPaths:
    """Builds each tiny model folder once, under one session folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, Path] = {}

    def __call__(self, family: str, kind: str = "cross-encoder", **options: Any) -> Path:
        key = json.dumps([family, kind, options], sort_keys=True, default=str)
        if key not in self._built:
            name = f"{family}-{kind}"
            if options:
                name += "-" + hashlib.sha256(key.encode()).hexdigest()[:10]
            self._built[key] = make_tiny_model_dir(self.root, family, kind, name=name, **options)
        return self._built[key]


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> TinyModelPaths:
    """``tiny_model_path(family, kind="cross-encoder", **options) -> Path``, built once per session."""
    return TinyModelPaths(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def tiny_model(tiny_model_path: TinyModelPaths) -> Callable[..., Any]:
    """``tiny_model(family, kind="cross-encoder", **options)``: a freshly loaded relcomp model."""
    from relcomp.models import load_model

    def load(family: str, kind: str = "cross-encoder", **options: Any) -> Any:
        return load_model(tiny_model_path(family, kind, **options))

    return load
