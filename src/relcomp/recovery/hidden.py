"""Hidden-state matching: the student's encoder layers pulled toward the teacher's.

Recovery's distillation losses compare what comes out of the model (scores,
embeddings). With ``recover(..., hidden_weight=w)`` the loss also holds ``w`` times the
mean squared error between the output of each layer the student kept and the output
of the teacher layer it came from:

* **pairing**: head and neuron pruning keep every layer and the hidden width, so
  layer ``i`` pairs with layer ``i``. A model whose layers were dropped records the
  original index of each layer it kept (``config.relcomp_kept_layers``, written by
  :func:`~relcomp.compression.prune_physically`); layer ``i`` pairs with the teacher
  layer of that index (:func:`layer_pairs`).
* **the measure**: per pair, the squared error averaged over features and over the
  real tokens (the attention mask; padding is ignored), divided by the teacher's
  per-feature variance over the same tokens (its mean over features, held constant).
  Later layers of a BERT have larger activations than earlier ones; the division
  gives every layer the same weight, and a value of 1 means "no closer than the
  teacher's average token". The pairs' values are averaged (:func:`hidden_state_mse`).
* **cost**: the teacher's hidden states are too large to cache like its scores, so
  each step runs the teacher (eval mode, no gradient) on the step's batch: one
  teacher forward pass more per step, only when the weight is above 0.

Layer outputs are read with forward hooks on the encoder's layers
(:class:`LayerOutputs`), the same tensors ``output_hidden_states=True`` returns after
the embeddings, taken from the forward pass the distillation loss already runs.

Example:
    >>> import torch
    >>> teacher = [torch.randn(2, 5, 8)]
    >>> mask = torch.ones(2, 5, dtype=torch.long)
    >>> float(hidden_state_mse([teacher[0].clone()], teacher, mask, ((0, 0),)))
    0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from relcomp.errors import RelcompError
from relcomp.models import RankingModel
from relcomp.models.pruned import KEPT_LAYERS_KEY

__all__ = ["LayerOutputs", "hidden_state_mse", "layer_pairs"]


def _layer_count(model: RankingModel) -> int:
    return len(model.adapter.layer_modules(model.model))


def _hidden_width(model: RankingModel) -> int | None:
    config: Any = model.model.config
    for field in ("hidden_size", "dim"):  # DistilBERT calls it dim
        if isinstance(getattr(config, field, None), int):
            return int(getattr(config, field))
    return None


def _original_layers(model: RankingModel) -> list[int] | None:
    kept = getattr(model.model.config, KEPT_LAYERS_KEY, None)
    return [int(index) for index in kept] if kept else None


def layer_pairs(student: RankingModel, teacher: RankingModel) -> tuple[tuple[int, int], ...]:
    """``(student layer, teacher layer)`` for every layer of the student.

    Raises:
        RelcompError: the hidden widths differ, or the student has fewer layers than
            the teacher and does not say which ones it kept (a layer-dropped model
            saved before relcomp recorded them), or it kept a layer the teacher lacks.

    Example:
        >>> from relcomp.models import load_model
        >>> from relcomp.artifacts import CompressionPlan
        >>> from relcomp.compression import prune_physically
        >>> teacher = load_model("all-MiniLM-L6-v2")
        >>> student = prune_physically(teacher, CompressionPlan("m", {"_default": "drop_layers(1,4)"}))
        >>> layer_pairs(student, teacher)
        ((0, 0), (1, 2), (2, 3), (3, 5))
    """
    widths = _hidden_width(student), _hidden_width(teacher)
    if widths[0] != widths[1]:
        raise RelcompError(
            f"hidden-state matching needs one hidden width, but the student's is {widths[0]} "
            f"and the teacher's {widths[1]}"
        )
    count, teacher_count = _layer_count(student), _layer_count(teacher)
    kept = _original_layers(student)
    if kept is None:
        if count != teacher_count:
            raise RelcompError(
                f"cannot tell which of the teacher's {teacher_count} layers the student's "
                f"{count} are: its config has no {KEPT_LAYERS_KEY} (a model whose layers were "
                "dropped before relcomp recorded them); drop the layers again from the teacher "
                "with prune_physically, or recover without hidden-state matching"
            )
        return tuple((index, index) for index in range(count))
    if len(kept) != count:
        raise RelcompError(
            f"the student's config.{KEPT_LAYERS_KEY} names {len(kept)} layers, but it has {count}"
        )
    teacher_layers = _original_layers(teacher) or list(range(teacher_count))
    missing = [index for index in kept if index not in teacher_layers]
    if missing:
        raise RelcompError(
            f"the student kept original layers {missing}, which the teacher does not have "
            f"(it holds {teacher_layers}); recovery needs the model the student was pruned from"
        )
    return tuple((index, teacher_layers.index(original)) for index, original in enumerate(kept))


class LayerOutputs:
    """Forward hooks that keep the output of each encoder layer of ``model``; ``remove()`` ends it.

    ``outputs[i]`` is layer ``i``'s hidden states ``(batch, tokens, width)`` from the
    last forward pass (gradients flow through them). Works as a context manager.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> with LayerOutputs(model) as layers:
        ...     _ = model.encode(["a cat"])
        >>> len(layers.outputs), layers.outputs[0].shape[-1]
        (6, 384)
    """

    def __init__(self, model: RankingModel) -> None:
        torch_model = model.model
        modules = [
            torch_model.get_submodule(layer.layer)
            for layer in model.adapter.layer_modules(torch_model)
        ]
        self.outputs: list[torch.Tensor | None] = [None] * len(modules)
        self._handles = [
            module.register_forward_hook(self._keeper(index))
            for index, module in enumerate(modules)
        ]

    def _keeper(self, index: int) -> Any:
        def keep(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            self.outputs[index] = output[0] if isinstance(output, tuple) else output

        return keep

    def taken(self) -> list[torch.Tensor]:
        """Every layer's output; an error if a layer did not run."""
        if any(output is None for output in self.outputs):
            raise RelcompError("a layer of the model did not run in the forward pass")
        return [output for output in self.outputs if output is not None]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> LayerOutputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def hidden_state_mse(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """Mean over ``pairs`` of the variance-normalised squared error on real tokens.

    Args:
        student: the student's layer outputs, ``(batch, tokens, width)`` each.
        teacher: the teacher's, on the same inputs.
        attention_mask: ``(batch, tokens)``, 1 on real tokens.
        pairs: ``(student layer, teacher layer)``, see :func:`layer_pairs`.

    Returns:
        A scalar tensor (differentiable in ``student``).
    """
    if not pairs:
        raise RelcompError("hidden-state matching needs at least one pair of layers")
    values = []
    for student_index, teacher_index in pairs:
        mine = student[student_index].float()
        target = teacher[teacher_index].detach().float()
        if mine.shape != target.shape:
            raise RelcompError(
                f"the student's layer {student_index} gives {tuple(mine.shape)} but the "
                f"teacher's layer {teacher_index} {tuple(target.shape)}"
            )
        mask = attention_mask.to(device=mine.device, dtype=mine.dtype).unsqueeze(-1)
        cells = mask.sum().clamp(min=1) * mine.shape[-1]
        error = ((mine - target) ** 2 * mask).sum() / cells
        mean = (target * mask).sum(dim=(0, 1)) / mask.sum().clamp(min=1)
        variance = ((target - mean) ** 2 * mask).sum() / cells
        values.append(error / variance.clamp(min=1e-12))
    return torch.stack(values).mean()
