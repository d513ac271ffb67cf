"""What a compression plan can ask of a module: actions, their string form and their registry.

An action is data: a frozen dataclass with a string form that parses back exactly
(``int8(per_channel=True)``, ``prune_heads(0,3)``). How an action is carried out in
torch lives in :mod:`relcomp.compression.torch_realise`; which modules it may touch is its
``target``.

Grammar::

    action    := name | name "(" arguments ")"
    arguments := argument ("," argument)*
    argument  := literal | field "=" literal
    literal   := int | float | True | False | "[" int ("," int)* "]"

Only ``prune_heads`` and ``drop_layers`` take positional arguments (indices). The canonical
form, which ``str()`` returns and plans store, writes each action's main argument
always and its optional flags only when they differ from their defaults:

=============================  ==========  =================================================
action                         target      meaning
=============================  ==========  =================================================
``fp32``                       Linear      keep full precision (an explicit "leave alone")
``fp16``                       Linear      half-precision weights and bias
``int8(per_channel=True)``     Linear      symmetric int8 weights, one scale per output row
                                           (``per_channel=False``: one scale per tensor);
                                           ``activations=True`` also fake-quantizes the
                                           input with a calibrated, clipped scale
                                           (``channelwise=True``: one per input channel)
``int4(block_size=32)``        Linear      symmetric int4 weights, one scale per block of
                                           ``block_size`` inputs in each output row
``prune_heads(0,3)``           attention   remove attention heads (indices as in the
                                           original model, as transformers counts them)
``prune_neurons(ratio=0.3)``   FFN         remove FFN neurons: the ``ratio`` least important
``prune_neurons(indices=[…])`` FFN         by weight magnitude, or explicit indices
``prune_weights(ratio=0.5)``   Linear      unstructured: zero the ``ratio`` least important
                                           weights of each output row (magnitude, or Wanda's
                                           ``|W|·‖X‖`` given activation norms)
``sparsify(threshold=0.12)``   Linear      zero input activations with ``|x| < threshold``
                                           (TEAL); ``rank=16`` sends them through a
                                           rank-16 SVD of the weight instead (R-Sparse)
``low_rank(rank=64)``          Linear      truncated-SVD factorisation ``W ≈ U·V``
``drop_layers(4,5)``           layers      remove whole transformer layers (indices as the
                                           model counts its layers now), given on the
                                           encoder's layer list (``encoder.layer``) or
                                           ``_default``
=============================  ==========  =================================================

Example:
    >>> action = parse_action("int8( per_channel = True )")
    >>> action
    Int8(per_channel=True, activations=False, channelwise=False)
    >>> str(action)
    'int8(per_channel=True)'
    >>> str(parse_action("prune_heads(3, 0)"))
    'prune_heads(0,3)'
    >>> parse_action("int3")
    Traceback (most recent call last):
    ...
    relcomp.errors.PlanError: unknown compression action 'int3'; did you mean 'int8'? Valid names: drop_layers, fp16, fp32, int4, int8, low_rank, prune_heads, prune_neurons, prune_weights, sparsify
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

from relcomp.errors import PlanError
from relcomp.registry import Registry, UnknownNameError

__all__ = [
    "ACTIONS",
    "FP16",
    "FP32",
    "Action",
    "Category",
    "DropLayers",
    "Int4",
    "Int8",
    "LowRank",
    "PlanError",
    "PrecisionAction",
    "PruneHeads",
    "PruneNeurons",
    "PruneWeights",
    "Sparsify",
    "Target",
    "parse_action",
    "plan_needs_data",
]


#: What kind of module an action applies to.
Target = Literal["linear", "attention", "ffn", "layers"]
#: Actions of one category exclude each other on a module (two precisions, two head sets…).
Category = Literal["precision", "heads", "neurons", "layers", "weights", "sparsity", "low_rank"]

#: The registry every action name goes through (case-insensitive; ``-`` and ``_`` alike).
ACTIONS: Registry[type[Action]] = Registry("compression action")

_ACTION_TEXT = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


def _always(default: Any = dataclasses.MISSING) -> Any:
    """A field written in the canonical form even at its default value."""
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={"always": True})
    return dataclasses.field(default=default, metadata={"always": True})


@dataclasses.dataclass(frozen=True)
class Action:
    """One thing a plan asks of a module. Subclasses register under their ``name``.

    Example:
        >>> Action.parse("low_rank(rank=64)")
        LowRank(rank=64)
        >>> Action.parse("low_rank(rank=64)").target
        'linear'
    """

    name: ClassVar[str] = "action"
    target: ClassVar[Target] = "linear"
    category: ClassVar[Category] = "precision"
    #: The field given by positional arguments, if any (``prune_heads(0,3)``).
    positional: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`PlanError` when an argument is out of range (subclasses extend)."""

    @property
    def structural(self) -> bool:
        """Whether the action removes parts of the model (heads, neurons, layers)."""
        return self.category in ("heads", "neurons", "layers")

    @property
    def needs_data(self) -> bool:
        """Whether carrying the action out needs calibration data (activation statistics or scales)."""
        return False

    @classmethod
    def parse(cls, text: str | Action) -> Action:
        """Parse an action's string form (see the module docstring for the grammar)."""
        return parse_action(text)

    def __str__(self) -> str:
        if self.positional is not None:
            values = getattr(self, self.positional)
            return f"{self.name}({','.join(str(v) for v in values)})"
        parts = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.metadata.get("always") or value != field.default:
                if value is None:
                    continue
                parts.append(f"{field.name}={_literal(value)}")
        return f"{self.name}({', '.join(parts)})" if parts else self.name


def _literal(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def _fail(action: str, problem: str) -> PlanError:
    return PlanError(f"bad argument for {action}: {problem}")


def _check_ratio(action: str, field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(action, f"{field} must be a number, got {value!r}")
    if not (0.0 <= value < 1.0) or not math.isfinite(value):
        raise _fail(action, f"{field} must be in [0, 1), got {value!r}")


def _check_int(action: str, field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(action, f"{field} must be an integer, got {value!r}")
    if value < minimum:
        raise _fail(action, f"{field} must be at least {minimum}, got {value}")


def _check_bool(action: str, field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _fail(action, f"{field} must be True or False, got {value!r}")


def _check_indices(action: str, field: str, values: Any, what: str) -> None:
    if not isinstance(values, tuple) or not values:
        raise _fail(action, f"{field} must be a non-empty list of {what} indices, got {values!r}")
    for value in values:
        _check_int(action, f"each {what} index", value, 0)
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise _fail(action, f"{what} indices repeat: {repeated}")


class PrecisionAction(Action):
    """Base of the weight precisions; ``bits`` is what one stored weight costs, scales aside."""

    bits: ClassVar[float] = 32.0
    category: ClassVar[Category] = "precision"


@dataclasses.dataclass(frozen=True)
class FP32(PrecisionAction):
    """Full precision: the weights as they are."""

    name: ClassVar[str] = "fp32"
    bits: ClassVar[float] = 32.0


@dataclasses.dataclass(frozen=True)
class FP16(PrecisionAction):
    """Half precision: weights and bias rounded through float16."""

    name: ClassVar[str] = "fp16"
    bits: ClassVar[float] = 16.0


@dataclasses.dataclass(frozen=True)
class Int8(PrecisionAction):
    """Symmetric int8 weights (±127); ``activations=True`` adds static input quantization.

    The input's scale is one calibrated, clipped number per tensor; ``channelwise=True``
    gives each input channel its own (LRP-QViT's clipped channel-wise quantization,
    for post-LayerNorm inputs, whose few outlier channels would otherwise set the
    step of all the others).

    Example:
        >>> str(Int8(activations=True, channelwise=True))
        'int8(per_channel=True, activations=True, channelwise=True)'
        >>> Int8(channelwise=True)
        Traceback (most recent call last):
        ...
        relcomp.errors.PlanError: bad argument for int8: channelwise=True needs activations=True (it sets the input's scales)
    """

    name: ClassVar[str] = "int8"
    bits: ClassVar[float] = 8.0
    per_channel: bool = _always(True)
    activations: bool = False
    channelwise: bool = False

    @property
    def needs_data(self) -> bool:
        return self.activations

    def check(self) -> None:
        _check_bool(self.name, "per_channel", self.per_channel)
        _check_bool(self.name, "activations", self.activations)
        _check_bool(self.name, "channelwise", self.channelwise)
        if self.channelwise and not self.activations:
            raise _fail(
                self.name, "channelwise=True needs activations=True (it sets the input's scales)"
            )


@dataclasses.dataclass(frozen=True)
class Int4(PrecisionAction):
    """Symmetric block-wise int4 weights (±7), one scale per ``block_size`` inputs of a row.

    ``block_size`` is a power of two of at least 16, as onnxruntime's ``MatMulNBits``
    requires, so every plan can be exported as it was simulated.
    """

    name: ClassVar[str] = "int4"
    bits: ClassVar[float] = 4.0
    block_size: int = _always(32)

    def check(self) -> None:
        _check_int(self.name, "block_size", self.block_size, 16)
        if self.block_size & (self.block_size - 1):
            raise _fail(self.name, f"block_size must be a power of two, got {self.block_size}")


@dataclasses.dataclass(frozen=True)
class PruneHeads(Action):
    """Remove attention heads; indices count heads as the original model did."""

    name: ClassVar[str] = "prune_heads"
    target: ClassVar[Target] = "attention"
    category: ClassVar[Category] = "heads"
    positional: ClassVar[str | None] = "heads"
    heads: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.heads, list | tuple):
            object.__setattr__(self, "heads", tuple(self.heads))
        _check_indices(self.name, "heads", self.heads, "head")
        object.__setattr__(self, "heads", tuple(sorted(self.heads)))


@dataclasses.dataclass(frozen=True)
class DropLayers(Action):
    """Remove whole transformer layers; the residual stream passes them by.

    Given on the encoder's layer list (``bert.encoder.layer``, its encoder, or
    ``_default``); indices count the layers the model has now, from 0.

    Example:
        >>> str(DropLayers((5, 4)))
        'drop_layers(4,5)'
    """

    name: ClassVar[str] = "drop_layers"
    target: ClassVar[Target] = "layers"
    category: ClassVar[Category] = "layers"
    positional: ClassVar[str | None] = "layers"
    layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.layers, list | tuple):
            object.__setattr__(self, "layers", tuple(self.layers))
        _check_indices(self.name, "layers", self.layers, "layer")
        object.__setattr__(self, "layers", tuple(sorted(self.layers)))


@dataclasses.dataclass(frozen=True)
class PruneNeurons(Action):
    """Remove FFN neurons: a share chosen by weight magnitude, or explicit indices."""

    name: ClassVar[str] = "prune_neurons"
    target: ClassVar[Target] = "ffn"
    category: ClassVar[Category] = "neurons"
    ratio: float | None = None
    indices: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.indices, list):
            object.__setattr__(self, "indices", tuple(self.indices))
        if (self.ratio is None) == (self.indices is None):
            raise _fail(self.name, "give exactly one of ratio=… or indices=[…]")
        if self.ratio is not None:
            _check_ratio(self.name, "ratio", self.ratio)
            object.__setattr__(self, "ratio", float(self.ratio))
        else:
            _check_indices(self.name, "indices", self.indices, "neuron")
            object.__setattr__(self, "indices", tuple(sorted(self.indices or ())))


@dataclasses.dataclass(frozen=True)
class PruneWeights(Action):
    """Unstructured pruning: the ``ratio`` least important weights of each output row."""

    name: ClassVar[str] = "prune_weights"
    category: ClassVar[Category] = "weights"
    ratio: float = _always()

    @property
    def needs_data(self) -> bool:
        return True

    def check(self) -> None:
        _check_ratio(self.name, "ratio", self.ratio)
        object.__setattr__(self, "ratio", float(self.ratio))


@dataclasses.dataclass(frozen=True)
class Sparsify(Action):
    """Activation sparsity: inputs with ``|x| < threshold`` leave the full weight's product.

    Without ``rank`` (TEAL) they become zero. With ``rank`` (R-Sparse) they go
    through the best rank-``rank`` approximation ``U·V`` of the weight instead:
    ``y = W·S(x) + U·V·(x − S(x)) + b``, where ``S`` keeps the inputs at or above
    the threshold. The large inputs keep their exact product; the many small ones,
    which TEAL drops, cost ``rank × (rows + columns)`` multiply-adds together.

    Example:
        >>> Sparsify(0.1, rank=16)
        Sparsify(threshold=0.1, rank=16)
        >>> str(Sparsify(0.1)), str(Sparsify(0.1, rank=16))
        ('sparsify(threshold=0.1)', 'sparsify(threshold=0.1, rank=16)')
    """

    name: ClassVar[str] = "sparsify"
    category: ClassVar[Category] = "sparsity"
    threshold: float = _always()
    rank: int | None = None

    @property
    def needs_data(self) -> bool:
        return True

    def check(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
            raise _fail(self.name, f"threshold must be a number, got {self.threshold!r}")
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise _fail(self.name, f"threshold must be finite and >= 0, got {self.threshold!r}")
        object.__setattr__(self, "threshold", float(self.threshold))
        if self.rank is not None:
            _check_int(self.name, "rank", self.rank, 1)


@dataclasses.dataclass(frozen=True)
class LowRank(Action):
    """Replace ``W`` (out × in) by its best rank-``rank`` approximation ``U·V``."""

    name: ClassVar[str] = "low_rank"
    category: ClassVar[Category] = "low_rank"
    rank: int = _always()

    def check(self) -> None:
        _check_int(self.name, "rank", self.rank, 1)


for _action in (
    FP32,
    FP16,
    Int8,
    Int4,
    PruneHeads,
    PruneNeurons,
    DropLayers,
    PruneWeights,
    Sparsify,
    LowRank,
):
    ACTIONS.register(_action.name)(_action)

#: Categories that cannot share a module: a low-rank factor has no unstructured mask.
INCOMPATIBLE: frozenset[frozenset[str]] = frozenset({frozenset({"low_rank", "weights"})})


def parse_action(text: str | Action) -> Action:
    """An :class:`Action` from its string form; :class:`PlanError` naming what is wrong.

    Example:
        >>> parse_action("prune_neurons(indices=[4, 1])")
        PruneNeurons(ratio=None, indices=(1, 4))
        >>> str(parse_action("sparsify(threshold=0.12)"))
        'sparsify(threshold=0.12)'
    """
    if isinstance(text, Action):
        return text
    if not isinstance(text, str):
        raise PlanError(f"an action must be a string such as 'int8', got {text!r}")
    match = _ACTION_TEXT.match(text)
    if match is None:
        raise PlanError(
            f"cannot parse action {text!r}; write name or name(arguments), e.g. 'int4(block_size=32)'"
        )
    name, arguments = match.group(1), match.group(2)
    try:
        cls = ACTIONS.get(name)
    except UnknownNameError as error:
        raise PlanError(str(error)) from None
    args, kwargs = _parse_arguments(text, arguments or "")
    if args:
        if cls.positional is None:
            raise PlanError(
                f"bad argument for {cls.name}: takes keyword arguments only "
                f"({_field_list(cls)}), got positional {list(args)}"
            )
        if cls.positional in kwargs:
            raise _fail(cls.name, f"{cls.positional} given both by position and by name")
        kwargs[cls.positional] = tuple(args)
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise _fail(cls.name, f"unknown argument(s) {unknown}; it takes {_field_list(cls)}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.name not in kwargs
    ]
    if missing or (cls.positional is not None and cls.positional not in kwargs):
        needed = missing or [str(cls.positional)]
        raise _fail(cls.name, f"missing argument(s) {needed}, e.g. {_example(cls)!r}")
    try:
        return cls(**kwargs)
    except TypeError as error:  # pragma: no cover - caught by the checks above
        raise _fail(cls.name, str(error)) from None


def _field_list(cls: type[Action]) -> str:
    return ", ".join(field.name for field in dataclasses.fields(cls)) or "nothing"


def _example(cls: type[Action]) -> str:
    examples = {
        "prune_heads": "prune_heads(0,3)",
        "prune_neurons": "prune_neurons(ratio=0.3)",
        "prune_weights": "prune_weights(ratio=0.5)",
        "sparsify": "sparsify(threshold=0.1)",
        "low_rank": "low_rank(rank=64)",
    }
    return examples.get(cls.name, cls.name)


def _parse_arguments(text: str, arguments: str) -> tuple[list[Any], dict[str, Any]]:
    if not arguments.strip():
        return [], {}
    try:
        call = ast.parse(f"_({arguments})", mode="eval").body
    except SyntaxError:
        raise PlanError(f"cannot parse the arguments of action {text!r}") from None
    if not isinstance(call, ast.Call):  # pragma: no cover - the regex guarantees a call
        raise PlanError(f"cannot parse action {text!r}")
    try:
        args = [_plain_literal(ast.literal_eval(node)) for node in call.args]
        kwargs = {
            str(keyword.arg): _plain_literal(ast.literal_eval(keyword.value))
            for keyword in call.keywords
        }
    except (ValueError, TypeError, SyntaxError):
        raise PlanError(
            f"action {text!r}: arguments must be numbers, True/False or lists of integers"
        ) from None
    if any(keyword.arg is None for keyword in call.keywords):
        raise PlanError(f"action {text!r}: ** arguments are not allowed")
    return args, kwargs


def _plain_literal(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(value)
    return value


def plan_needs_data(entries: Iterable[tuple[str, str | Action]]) -> bool:
    """Whether any action of a plan's ``(pattern, action)`` entries needs calibration data.

    Example:
        >>> plan_needs_data([("_default", "int8")]), plan_needs_data([("_default", "sparsify(threshold=0.1)")])
        (False, True)
    """
    return any(parse_action(action).needs_data for _, action in entries)
