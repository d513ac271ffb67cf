"""Distillation losses: how far the student's view of a group is from the teacher's.

Every loss is registered under the name a user types (``--loss listwise-kl``).

* **listwise-kl** (cross-encoders, the default): KL divergence from the teacher's
  softmax over a query's candidates to the student's, at a temperature, scaled by
  the temperature squared so gradients keep their size (Hinton et al.). Only the
  order and the relative gaps of a query's scores matter, which is what ranking
  needs; an offset common to all candidates costs nothing.
* **margin-mse** (cross-encoders): mean squared error between the student's and the
  teacher's margins of each candidate below the teacher's top one (Hofstätter et
  al.'s Margin-MSE, over the whole group).
* **embedding** (bi-encoders): squared distance to the teacher's query and document
  embeddings, plus KL over each query's in-batch similarity distribution (every
  document of the batch, the other queries' included), at a temperature.

Beside the distillation loss, :func:`positive_nll` is the optional supervised term
(``label_weight``): the negative log of the probability the student's softmax gives a
query's judged-relevant candidates. It is the only signal that can carry a student
past its teacher, so it reads judgements, from the train and dev splits only.

Example:
    >>> import torch
    >>> teacher = torch.tensor([[3.0, 1.0, 0.0]])
    >>> float(listwise_kl(teacher.clone(), teacher, temperature=1.0))
    0.0
    >>> float(listwise_kl(teacher + 5.0, teacher, temperature=1.0)) < 1e-6  # offsets cost nothing
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional

from relcomp.registry import Registry

__all__ = ["LOSSES", "embedding_loss", "listwise_kl", "margin_mse", "positive_nll"]

#: Masked candidates (a group shorter than the batch's longest) get this logit.
_MASKED = -1e4

LOSSES: Registry[Callable[..., torch.Tensor]] = Registry("recovery loss")


def _masked(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, scores, torch.full_like(scores, _MASKED))


def _log_softmax(scores: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Each row's log-probabilities over its present candidates, at ``temperature``."""
    return functional.log_softmax(_masked(scores, mask) / temperature, dim=-1)


@LOSSES.register("listwise-kl")
def listwise_kl(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL(teacher ‖ student) over each row's candidates, mean over rows, times T².

    Args:
        student: ``(groups, candidates)`` student scores.
        teacher: the teacher's scores, same shape.
        mask: ``True`` where a candidate exists; all present when ``None``.
        temperature: softens both distributions.
    """
    mask = torch.ones_like(student, dtype=torch.bool) if mask is None else mask
    log_student = _log_softmax(student, mask, temperature)
    log_teacher = _log_softmax(teacher, mask, temperature)
    divergence = functional.kl_div(log_student, log_teacher, log_target=True, reduction="none")
    return (divergence * mask).sum(dim=-1).mean() * temperature**2


@LOSSES.register("margin-mse")
def margin_mse(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean squared error of each candidate's margin below the teacher's top candidate.

    Args:
        student: ``(groups, candidates)`` student scores.
        teacher: the teacher's scores, same shape, with its best candidate first.
        mask: ``True`` where a candidate exists.
        temperature: unused; accepted so every cross-encoder loss takes the same options.
    """
    del temperature
    mask = torch.ones_like(student, dtype=torch.bool) if mask is None else mask
    top = teacher.argmax(dim=-1, keepdim=True)
    student_margin = student.gather(-1, top) - student
    teacher_margin = teacher.gather(-1, top) - teacher
    squared = (student_margin - teacher_margin) ** 2 * mask
    return squared.sum() / mask.sum().clamp(min=1)


@LOSSES.register("embedding")
def embedding_loss(
    student_queries: torch.Tensor,
    student_documents: torch.Tensor,
    teacher_queries: torch.Tensor,
    teacher_documents: torch.Tensor,
    *,
    temperature: float = 0.05,
    similarity_weight: float = 1.0,
) -> torch.Tensor:
    """Embedding distance plus in-batch similarity KL, for bi-encoders.

    Args:
        student_queries: ``(queries, dim)``.
        student_documents: ``(documents, dim)``: every candidate of the batch.
        teacher_queries: the teacher's ``(queries, dim)``.
        teacher_documents: the teacher's ``(documents, dim)``.
        temperature: of the similarity softmax (0.05 suits cosine similarities in [-1, 1]).
        similarity_weight: weight of the similarity KL next to the distance. The KL is
            scaled by the temperature squared (as :func:`listwise_kl`), so at 0.05 a
            weight of 1 leaves it 400 times weaker than an unscaled KL and the distance
            drives training; ``1 / temperature**2`` (400) gives the ranking term the
            gradient of an unscaled KL.

    Example:
        >>> import torch
        >>> q, d = torch.eye(2), torch.eye(2)
        >>> float(embedding_loss(q, d, q, d))
        0.0
    """
    distance = ((student_queries - teacher_queries) ** 2).sum(-1).mean() + (
        (student_documents - teacher_documents) ** 2
    ).sum(-1).mean()
    divergence = listwise_kl(
        student_queries @ student_documents.T,
        teacher_queries @ teacher_documents.T,
        temperature=temperature,
    )
    return distance + similarity_weight * divergence


def positive_nll(
    scores: torch.Tensor,
    positives: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``-log`` of the softmax mass on each row's positives, mean over rows that have one.

    A row (a query) with several judged-relevant candidates is satisfied by putting the
    mass on any of them (the multi-positive InfoNCE of supervised contrastive learning),
    so a grade-2 and a grade-1 document are not pitted against each other. Rows without
    a positive add nothing; with none at all the result is 0 (and still has a gradient
    path, so a batch of pseudo-queries only trains on the distillation term).

    Args:
        scores: ``(rows, candidates)`` student scores (a cross-encoder's, or a
            bi-encoder's similarities to every document of the batch).
        positives: ``True`` where a candidate is judged relevant to the row's query.
        mask: ``True`` where a candidate exists; all present when ``None``.
        temperature: divides the scores before the softmax.

    Example:
        >>> import torch
        >>> scores = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
        >>> round(float(positive_nll(scores, torch.tensor([[True, False], [False, False]]))), 4)
        0.1269
    """
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask
    positives = positives & mask
    on_positives = torch.logsumexp(
        _masked(_log_softmax(scores, mask, temperature), positives), dim=-1
    )
    labelled = positives.any(dim=-1)
    if not bool(labelled.any()):
        return scores.sum() * 0.0
    return -on_positives[labelled].mean()
