"""A damaged ONNX bundle is refused at load, as a damaged torch model is (issue 31)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from relcomp.artifacts import EXPORT_BUNDLE_FILE, ExportBundle
from relcomp.cli import main
from relcomp.errors import NonFiniteError
from relcomp.models import load_model


def _poison(bundle: Path, target: Path) -> str:
    """Copy ``bundle`` with a NaN in its first float initializer; returns the initializer's name."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(bundle, target)
    onnx_path = target / ExportBundle.load(target / EXPORT_BUNDLE_FILE).onnx_file
    model = onnx.load(str(onnx_path))
    for index, tensor in enumerate(model.graph.initializer):
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32 and values.size > 1:
            values = values.copy()
            values.flat[0] = np.nan
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(values, tensor.name))
            onnx.save(model, str(onnx_path))
            return tensor.name
    raise AssertionError("no float initializer")  # pragma: no cover


def test_a_bundle_with_a_nan_weight_is_refused_at_load(bundles, tmp_path: Path, capsys) -> None:
    good = bundles("bert", "cross-encoder")
    name = _poison(good, tmp_path / "poisoned")
    with pytest.raises(NonFiniteError, match=f"weight '{name}'"):
        load_model(tmp_path / "poisoned")
    argv = ["explain", "-m", str(tmp_path / "poisoned"), "-q", "a cat", "-p", "a cat sleeps"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"weight '{name}'" in error and "Traceback" not in error
    assert load_model(good).score(["a cat"], ["a cat sleeps"]).shape == (1,)  # the copy only
