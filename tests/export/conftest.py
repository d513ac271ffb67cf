"""Bundles of tiny models, exported once per session and shared by the export tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import DOCUMENTS, QUERIES

#: Every query with every document: one parity group per query.
GROUPS = {f"q{i}": (query, list(DOCUMENTS)) for i, query in enumerate(QUERIES)}


class Bundles:
    """``bundles(family, kind, plan=None, **options) -> Path``: built on first use."""

    def __init__(self, root: Path, tiny_model_path: Any) -> None:
        self.root = root
        self.tiny_model_path = tiny_model_path
        self._built: dict[str, Path] = {}

    def __call__(
        self, family: str, kind: str = "cross-encoder", plan: Any = None, **options: Any
    ) -> Path:
        from relcomp.export import CompressionPlan, export_bundle
        from relcomp.models import load_model

        entries = None if plan is None else dict(plan)
        key = json.dumps([family, kind, entries, options], sort_keys=True, default=str)
        if key not in self._built:
            model = load_model(self.tiny_model_path(family, kind, bias_std=0.1))
            out = self.root / f"{family}-{kind}-{len(self._built)}"
            plan_artifact = (
                None if entries is None else CompressionPlan(model.name, entries, method="test")
            )
            export_bundle(model, out, plan=plan_artifact, **options)
            self._built[key] = out
        return self._built[key]


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Any) -> Callable[..., Path]:
    return Bundles(tmp_path_factory.mktemp("bundles"), tiny_model_path)
