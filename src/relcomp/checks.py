"""Checks on what users hand relcomp, made before any expensive step, and on what it computes.

Every check raises one of the exceptions in :mod:`relcomp.errors` with one message
that says what is wrong and where, so that the CLI can print it and exit 2:

* :func:`require_finite` and :func:`require_finite_tree`: a NaN or an infinity in
  weights, scores, relevance, statistics or parity figures stops the step that met
  it (:class:`~relcomp.errors.NonFiniteError`); nothing downstream ever sees one.
* :func:`check_weights_finite`: a model whose weights hold a NaN is refused at load,
  naming the tensor.
* :func:`check_output_location`: an output that cannot be written is reported
  before the work, not after it.
* :func:`check_texts`: text that tokenizes to nothing is refused.

This module imports nothing from relcomp but :mod:`relcomp.errors`, so any stage may use it.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relcomp.errors import ModelLoadError, NonFiniteError, OutputLocationError

__all__ = [
    "check_model_argument",
    "check_output_location",
    "check_texts",
    "check_weights_finite",
    "cleared_on_failure",
    "looks_like_path",
    "require_finite",
    "require_finite_tree",
]


def _as_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().float().cpu().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):  # None inside: a null read back from JSON
        flat = np.asarray(values, dtype=object).reshape(-1)
        return np.array([np.nan if v is None else float(v) for v in flat], dtype=np.float64)


def require_finite(values: Any, what: str) -> None:
    """Raise :class:`NonFiniteError` when ``values`` (a number, array or tensor) holds NaN or ±inf.

    ``None`` counts as non-finite: it is how JSON writes a NaN back.

    Example:
        >>> require_finite([0.5, -1.0], "scores")
        >>> require_finite([0.5, float("nan")], "scores of model m")
        Traceback (most recent call last):
        ...
        relcomp.errors.NonFiniteError: scores of model m: 1 of 2 values are not finite (NaN or infinite)
    """
    if values is None:
        raise NonFiniteError(f"{what}: the value is missing (null, a NaN written to JSON)")
    array = _as_array(values)
    if array.size and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise NonFiniteError(
            f"{what}: {bad} of {array.size} values are not finite (NaN or infinite)"
        )


def require_finite_tree(payload: Any, what: str, *, allow_none: bool = True) -> None:
    """Every float in a JSON-like ``payload`` (mappings, lists) is finite; the message names the key.

    Example:
        >>> require_finite_tree({"tau": 1.0, "per_query": {"q1": {"diff": float("inf")}}}, "parity")
        Traceback (most recent call last):
        ...
        relcomp.errors.NonFiniteError: parity: per_query.q1.diff is not finite (inf)
    """
    for key, value in _leaves(payload, ""):
        if value is None and not allow_none:
            raise NonFiniteError(f"{what}: {key or 'the value'} is missing (null)")
        if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
            raise NonFiniteError(f"{what}: {key or 'the value'} is not finite ({value})")


def _leaves(payload: Any, prefix: str) -> Iterable[tuple[str, Any]]:
    if isinstance(payload, Mapping):
        for key, value in payload.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(payload, list | tuple):
        for index, value in enumerate(payload):
            yield from _leaves(value, f"{prefix}[{index}]")
    elif isinstance(payload, np.ndarray):
        yield from _leaves(payload.tolist(), prefix)
    else:
        yield prefix, payload


def check_weights_finite(named_tensors: Iterable[tuple[str, Any]], source: object) -> None:
    """Refuse a model whose weights hold NaN or ±inf, naming the first such tensor.

    Example:
        >>> check_weights_finite([("w", np.ones(3)), ("b", np.array([np.nan]))], "m/")
        Traceback (most recent call last):
        ...
        relcomp.errors.NonFiniteError: m/: weight 'b' holds 1 non-finite value (NaN or infinite) of 1; the model's weights are damaged
    """
    for name, tensor in named_tensors:
        array = _as_array(tensor)
        if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
            continue
        finite = np.isfinite(array)
        if not finite.all():
            bad = int((~finite).sum())
            raise NonFiniteError(
                f"{source}: weight {name!r} holds {bad} non-finite value"
                f"{'s' if bad > 1 else ''} (NaN or infinite) of {array.size}; "
                "the model's weights are damaged"
            )


def check_texts(texts: Sequence[str], what: str) -> None:
    """Refuse text that holds nothing to tokenize (empty, or only white space).

    Example:
        >>> check_texts(["a cat", "  "], "query")
        Traceback (most recent call last):
        ...
        relcomp.errors.RelcompError: query 2 of 2 is empty (nothing to tokenize once white space is stripped)
    """
    from relcomp.errors import RelcompError

    for number, text in enumerate(texts, 1):
        if not isinstance(text, str):
            raise RelcompError(
                f"{what} {number} of {len(texts)} is not text: {type(text).__name__}"
            )
        if not text.strip():
            where = f" {number} of {len(texts)}" if len(texts) > 1 else ""
            raise RelcompError(
                f"{what}{where} is empty (nothing to tokenize once white space is stripped)"
            )


def looks_like_path(name: str) -> bool:
    """Whether a model argument is meant as a local path rather than a hub id.

    Example:
        >>> looks_like_path("./model"), looks_like_path("~/m"), looks_like_path("org/model")
        (True, True, False)
    """
    first = name.split("/", 1)[0]
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or ("/" in name and Path(first).is_dir())  # "runs/bundle" where runs/ is a folder here
        or (os.sep != "/" and os.sep in name)
        or (os.altsep is not None and os.altsep != "/" and os.altsep in name)
    )


def check_model_argument(name: str | os.PathLike[str]) -> None:
    """A model given as a path (``./m``, ``/m``, ``~/m``, ``a/b/c``) must exist.

    Raises :class:`ModelLoadError` before any hub lookup.
    """
    text = os.fspath(name)
    if looks_like_path(text) and not Path(text).expanduser().exists():
        raise ModelLoadError(f"{text}: no such model folder")


def check_output_location(path: str | os.PathLike[str], *, folder: bool = True) -> Path:
    """Refuse an output that cannot be written, before any work is done; creates nothing.

    ``folder=True``: ``path`` is a folder (it may exist); ``False``: a file (its parent
    folder may not exist yet). The nearest existing ancestor must be a writable folder,
    tested by creating and removing a temporary file (permission bits do not tell for root).

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "taken"
        >>> _ = file.write_text("x")
        >>> check_output_location(file / "out")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        relcomp.errors.OutputLocationError: ...taken/out: cannot write there: ...taken is a file, not a folder
    """
    target = Path(path).expanduser()
    if folder and target.exists() and not target.is_dir():
        raise OutputLocationError(f"{path}: the output folder exists and is a file")
    if not folder and target.is_dir():
        raise OutputLocationError(f"{path}: the output file exists and is a folder")
    existing = target if folder else target.parent
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputLocationError(f"{path}: cannot write there: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".relcomp-probe-", dir=existing)
    except OSError as error:
        raise OutputLocationError(
            f"{path}: cannot write there: {existing} is not writable ({error.strerror})"
        ) from None
    os.close(handle)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    if not os.access(existing, os.W_OK):
        raise OutputLocationError(f"{path}: cannot write there: {existing} is read-only")
    if not folder and target.exists() and not os.access(target, os.W_OK):
        raise OutputLocationError(f"{path}: the output file is read-only")
    return target


@contextlib.contextmanager
def cleared_on_failure(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """If the block fails, remove the folders it made under ``path`` that hold no file.

    A failed run then leaves no empty output folder behind. Files are never removed:
    what a failed run finished (a compress run's completed steps) stays, by design.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "out"
        >>> try:
        ...     with cleared_on_failure(out):
        ...         (out / "figures").mkdir(parents=True)
        ...         raise ValueError("late failure")
        ... except ValueError:
        ...     pass
        >>> out.exists()
        False
    """
    if path is None:
        yield
        return
    target = Path(path).expanduser()
    missing = [target, *target.parents]
    missing = [folder for folder in missing if not folder.exists()]
    try:
        yield
    except BaseException:
        for folder in missing:  # deepest first; stop at the first that holds something
            if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
                with contextlib.suppress(OSError):
                    for empty in sorted(folder.rglob("*"), key=lambda p: -len(p.parts)):
                        empty.rmdir()
                    folder.rmdir()
        raise
