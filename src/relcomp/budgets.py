"""Compression budgets: the one place that names, parses, checks and prints them.

A budget is a ``{name: value}`` map over :data:`COMPRESSION_BUDGETS`
(``{"bits_per_weight": 6.0}``). Users type it as ``name=value`` (the plan's own
form), or on the command line as ``40MB``, ``6bits`` or a bare ratio
(:func:`parse_budget_text`). Whether a budget fits one model (a size below what no
action shrinks) is the plan resolver's question
(:func:`relcomp.compression.check_budget`), which starts from :func:`check_budget_values`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from relcomp.errors import PlanError

__all__ = [
    "COMPRESSION_BUDGETS",
    "budget_label",
    "budget_text",
    "check_budget_values",
    "parse_budget",
    "parse_budget_text",
    "parse_budgets",
]

#: Budgets a plan can be asked to meet, and what each means.
COMPRESSION_BUDGETS: dict[str, str] = {
    "size_mb": "stored weights in MB (10^6 bytes), scales and biases included",
    "bits_per_weight": "mean bits per stored Linear weight, scales included",
    "params_removed": "share of the Linear layers' weights removed by pruning or factorisation",
    "sparsity": "share of Linear input activations zeroed (sparsify), weighted by weights",
    "layers_dropped": "whole transformer layers removed (drop-layers)",
}

_UNITS = (("mb", "size_mb"), ("bits", "bits_per_weight"), ("bit", "bits_per_weight"))
# a bare ratio is the activation sparsity for these planners, params_removed for the others
_RATIO_BUDGET = {"sparsify": "sparsity", "r-sparse": "sparsity", "drop-layers": "layers_dropped"}


def _check_names(budget: Mapping[str, Any]) -> None:
    unknown = sorted(set(budget) - set(COMPRESSION_BUDGETS))
    if unknown:
        raise PlanError(
            f"unknown budget {unknown}; valid budgets: {', '.join(sorted(COMPRESSION_BUDGETS))}"
        )


def parse_budget(budget: Mapping[str, float] | str) -> dict[str, float]:
    """A budget as a dict; ``"bits_per_weight=6"`` (the plan's form) parses too.

    Only the names are checked here; :func:`check_budget_values` checks the values.

    Example:
        >>> parse_budget("params_removed=0.3")
        {'params_removed': 0.3}
    """
    if isinstance(budget, str):
        parsed: dict[str, float] = {}
        for part in budget.split(","):
            key, separator, value = part.partition("=")
            if not separator:
                raise PlanError(
                    f"write a budget as name=value (e.g. bits_per_weight=6), got {part!r}"
                )
            try:
                parsed[key.strip()] = float(value)
            except ValueError:
                raise PlanError(f"budget {key.strip()!r}: {value!r} is not a number") from None
        budget = parsed
    _check_names(budget)
    return {key: float(value) for key, value in budget.items()}


def parse_budget_text(text: str, method: str) -> dict[str, float]:
    """``--budget``: ``name=value``, ``40MB``, ``6bits``, or a bare ratio (``0.3``).

    A bare ratio is the share of parameters removed for pruning and the activation
    sparsity for ``sparsify``.

    Example:
        >>> parse_budget_text("40MB", "mixed-precision"), parse_budget_text("0.3", "sparsify")
        ({'size_mb': 40.0}, {'sparsity': 0.3})
    """
    cleaned = text.strip().lower().replace(" ", "")
    if "=" in cleaned:
        return parse_budget(text)
    for suffix, name in _UNITS:
        if cleaned.endswith(suffix):
            return parse_budget({name: _number(cleaned[: -len(suffix)], text)})
    key = _RATIO_BUDGET.get(method, "params_removed")
    return parse_budget(
        {key: _number(cleaned.rstrip("%"), text) / (100 if cleaned.endswith("%") else 1)}
    )


def parse_budgets(
    budget: str | Mapping[str, float] | Sequence[str | Mapping[str, float]], method: str
) -> list[dict[str, float]]:
    """One budget or several, each parsed (:func:`parse_budget_text`); duplicates refused.

    Example:
        >>> parse_budgets(["6bits", "8bits"], "mixed-precision")
        [{'bits_per_weight': 6.0}, {'bits_per_weight': 8.0}]
    """
    items = [budget] if isinstance(budget, str | Mapping) else list(budget)
    if not items:
        raise ValueError("--budget needs at least one budget")
    parsed = [parse_budget_text(b, method) if isinstance(b, str) else dict(b) for b in items]
    seen: list[dict[str, float]] = []
    for item, text in zip(parsed, items, strict=True):
        if item in seen:
            raise ValueError(f"--budget {text!r} is given twice")
        seen.append(item)
    return parsed


def _number(value: str, text: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"--budget {text!r}: write name=value (bits_per_weight=6, size_mb=40, "
            "params_removed=0.3, sparsity=0.5), 40MB, 6bits or a ratio such as 0.3"
        ) from None


def check_budget_values(budget: Mapping[str, Any]) -> None:
    """Raise :class:`~relcomp.errors.PlanError` for an unknown name or a value no model can meet.

    Example:
        >>> check_budget_values({"bits_per_weight": 3})
        Traceback (most recent call last):
        ...
        relcomp.errors.PlanError: impossible budget: bits_per_weight=3; no supported precision stores fewer than 4 bits per weight (int4)
    """
    _check_names(budget)
    for key, value in budget.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise PlanError(f"budget {key} must be a number, got {value!r}")
        if key == "size_mb" and value <= 0:
            raise PlanError(f"impossible budget: size_mb={value} (a model takes some space)")
        if key == "bits_per_weight" and value < 4:
            raise PlanError(
                f"impossible budget: bits_per_weight={value}; no supported precision stores "
                "fewer than 4 bits per weight (int4)"
            )
        if key in ("params_removed", "sparsity") and not 0 <= value < 1:
            raise PlanError(f"impossible budget: {key}={value} must be in [0, 1)")
        if key == "layers_dropped" and (value < 1 or value != int(value)):
            raise PlanError(f"impossible budget: layers_dropped={value} must be a whole number ≥ 1")


def budget_text(budget: Mapping[str, float]) -> str:
    """A budget in its ``name=value`` form, several joined by commas.

    Example:
        >>> budget_text({"bits_per_weight": 6.0})
        'bits_per_weight=6'
    """
    return ", ".join(f"{key}={value:g}" for key, value in budget.items())


def budget_label(budget: Mapping[str, float]) -> str:
    """A budget as a reader says it: ``6 bits/weight``, ``40 MB``, ``30% params removed``.

    Example:
        >>> budget_label({"bits_per_weight": 6.0}), budget_label({"params_removed": 0.3})
        ('6 bits/weight', '30% params removed')
    """
    forms = {
        "bits_per_weight": "{:g} bits/weight",
        "size_mb": "{:g} MB",
        "params_removed": "{:.0%} params removed",
        "sparsity": "{:.0%} activation sparsity",
    }
    return ", ".join(
        forms[key].format(value) if key in forms else f"{key}={value:g}"
        for key, value in budget.items()
    )
