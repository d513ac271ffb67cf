"""Attribution: which tokens and which components made a ranking decision.

Every method answers ``.attribute(queries, documents)`` with one
:class:`~relcomp.artifacts.TokenRelevance` per pair; :func:`get_method` resolves
the names users type (``attnlrp``, ``cp-lrp``, ``ig``, ``saliency``…).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from relcomp.attribution.bilrp import BiLRP
from relcomp.attribution.composites import COMPOSITES, Composite, get_composite
from relcomp.attribution.lrp import ComponentLRP, ComponentTaps, TokenLRP
from relcomp.attribution.patch import LRPPatch
from relcomp.attribution.rules import RULES
from relcomp.registry import Registry, UnknownNameError

__all__ = [
    "COMPOSITES",
    "METHODS",
    "RULES",
    "BiLRP",
    "ComponentLRP",
    "ComponentTaps",
    "Composite",
    "LRPPatch",
    "TokenLRP",
    "get_composite",
    "get_method",
    "method_names",
]

#: Token-attribution methods by the names users type; each maps a model to an attributor.
METHODS: Registry[Callable[[Any], Any]] = Registry("attribution method")
METHODS.register("attnlrp", "attn-lrp")(partial(TokenLRP, composite="AttnLRP"))
METHODS.register("cp-lrp", "cplrp")(partial(TokenLRP, composite="CP-LRP"))
METHODS.register("epsilon-lrp", "lrp-epsilon")(partial(TokenLRP, composite="Epsilon"))
METHODS.register("gradient-x-input-lrp")(partial(TokenLRP, composite="Gradient"))


def method_names() -> list[str]:
    """Every attribution method name, LRP composites and captum baselines."""
    from relcomp.attribution.baselines import BASELINES

    return METHODS.names() + BASELINES.names()


def get_method(name: str) -> Callable[[Any], Any]:
    """The attributor factory for a method name; the error lists every valid name.

    Example:
        >>> get_method("attnlrp").keywords
        {'composite': 'AttnLRP'}
    """
    from relcomp.attribution.baselines import BASELINES

    if name in METHODS:
        return METHODS.get(name)
    if name in BASELINES:
        return BASELINES.get(name)
    raise UnknownNameError(
        f"unknown attribution method {name!r}. Valid names: {', '.join(method_names())}"
    )
