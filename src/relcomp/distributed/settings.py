"""Which executor a run asked for, and whether Ray is there to give it (no Ray import)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

from relcomp.errors import RelcompError

__all__ = ["RAY_ENV", "RAY_EXTRA", "ray_available", "ray_setting", "require_ray"]

#: The environment variable that turns Ray on when ``--ray`` is not given.
RAY_ENV = "RELCOMP_RAY"

#: What to install for ``--ray``.
RAY_EXTRA = "pip install 'relcomp[ray]'"


def ray_setting(option: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The Ray address asked for: ``--ray``'s, else ``$RELCOMP_RAY``'s, else ``None`` (no Ray).

    Example:
        >>> ray_setting("10.0.0.5:6379", environ={"RELCOMP_RAY": "local"})
        '10.0.0.5:6379'
        >>> ray_setting(None, environ={"RELCOMP_RAY": " "}) is None
        True
    """
    if option is not None and str(option).strip():
        return str(option).strip()
    value = (os.environ if environ is None else environ).get(RAY_ENV, "").strip()
    return value or None


def ray_available() -> bool:
    """Whether Ray can be imported here."""
    return importlib.util.find_spec("ray") is not None


def require_ray(what: str = "--ray") -> None:
    """Refuse, with one message naming the extra, when Ray is not installed."""
    if not ray_available():
        raise RelcompError(f"{what} needs Ray, which is not installed: {RAY_EXTRA}")
