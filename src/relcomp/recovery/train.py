"""The recovery loop: distil a compressed student back toward its uncompressed teacher.

Plain torch autograd over the student's own differentiable forward pass
(:meth:`CrossEncoder.forward_scores`, :meth:`BiEncoder.embed`): AdamW, linear warm-up
then linear decay, gradient clipping at 1. The data order is a function of the seed
and the step alone, and a checkpoint holds the weights, the optimizer, the schedule
and the random state, so a run resumed from a checkpoint takes exactly the steps an
uninterrupted run would have taken.

With ``hidden_weight`` above 0 the loss also pulls each layer the student kept toward
the teacher layer it came from (:mod:`relcomp.recovery.hidden`); the teacher then runs
on every step's batch, since its hidden states are too large to cache.

With ``label_weight`` above 0 the loss also adds a supervised term
(:func:`~relcomp.recovery.losses.positive_nll`) on the groups' judged-relevant
candidates (train/dev qrels, pseudo-queries' source documents): distillation alone can
at best give the teacher back, judgements can carry the student past it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relcomp.artifacts import CompressionPlan, RecoveryLog
from relcomp.compression import active_compression
from relcomp.errors import RelcompError
from relcomp.models import BiEncoder, RankingModel
from relcomp.models.base import progress_enabled
from relcomp.recovery.data import RecoveryData
from relcomp.recovery.hidden import LayerOutputs, hidden_state_mse, layer_pairs
from relcomp.recovery.losses import LOSSES, embedding_loss, positive_nll
from relcomp.recovery.quantization_aware import QuantizationAware, quantization_actions

__all__ = ["CHECKPOINT_FILE", "RECOVERY_LOG_FILE", "RecoverySettings", "check_teacher", "recover"]

logger = logging.getLogger(__name__)

#: The one file a run's checkpoint lives in (written atomically) inside ``checkpoint_dir``.
CHECKPOINT_FILE = "recovery-checkpoint.pt"
#: The file a recovered model folder keeps its RecoveryLog in.
RECOVERY_LOG_FILE = "recovery_log.json"
_CHECKPOINT_FORMAT = 1
_CROSS_ENCODER_LOSSES = ("listwise-kl", "margin-mse")


@dataclasses.dataclass(frozen=True)
class RecoverySettings:
    """Everything that decides what a recovery run computes; checked before any work.

    Example:
        >>> RecoverySettings(steps=0)
        Traceback (most recent call last):
        ...
        relcomp.errors.RelcompError: recovery steps must be a whole number ≥ 1, got 0
    """

    steps: int
    batch_size: int = 4
    lr: float = 5e-5
    max_length: int = 128
    seed: int = 13
    loss: str | None = None
    temperature: float | None = None
    warmup: float = 0.1
    heldout: int = 32
    checkpoint_every: int = 200
    hidden_weight: float = 0.0
    similarity_weight: float = 1.0
    label_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RelcompError(
                    f"recovery {name.replace('_', ' ')} must be a whole number ≥ 1, got {value}"
                )
        if (
            isinstance(self.max_length, bool)
            or not isinstance(self.max_length, int)
            or self.max_length < 8
        ):
            raise RelcompError(
                f"recovery max length must be at least 8 tokens, got {self.max_length}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise RelcompError(f"recovery learning rate must be a positive number, got {self.lr}")
        if self.temperature is not None and not (
            math.isfinite(self.temperature) and self.temperature > 0
        ):
            raise RelcompError(
                f"recovery temperature must be a positive number, got {self.temperature}"
            )
        if not 0 <= self.warmup < 1:
            raise RelcompError(
                f"recovery warm-up must be a share of the steps in [0, 1), got {self.warmup}"
            )
        if isinstance(self.heldout, bool) or not isinstance(self.heldout, int) or self.heldout < 0:
            raise RelcompError(f"held-out groups must be a whole number ≥ 0, got {self.heldout}")
        if self.loss is not None:
            LOSSES.get(self.loss)  # an unknown name fails here, naming the valid ones
        for name, meaning in (
            ("hidden", " (0: no hidden-state matching)"),
            ("similarity", ""),
            ("label", " (0: no supervised term)"),
        ):
            weight = getattr(self, f"{name}_weight")
            if (
                isinstance(weight, bool)
                or not isinstance(weight, int | float)
                or not math.isfinite(weight)
                or weight < 0
            ):
                raise RelcompError(
                    f"recovery {name} weight must be a finite number ≥ 0{meaning}, got {weight!r}"
                )

    def for_model(self, kind: str) -> RecoverySettings:
        """The loss and temperature defaults of a model kind filled in, and checked against it."""
        loss = self.loss or ("embedding" if kind == "bi-encoder" else "listwise-kl")
        loss = {LOSSES.get(name): name for name in LOSSES.names()}[LOSSES.get(loss)]
        if kind == "bi-encoder" and loss != "embedding":
            raise RelcompError(f"a bi-encoder recovers with the 'embedding' loss, not {loss!r}")
        if kind == "cross-encoder" and loss not in _CROSS_ENCODER_LOSSES:
            raise RelcompError(
                f"a cross-encoder recovers with {' or '.join(map(repr, _CROSS_ENCODER_LOSSES))}, "
                f"not {loss!r}"
            )
        if kind != "bi-encoder" and self.similarity_weight != 1.0:
            raise RelcompError(
                "the similarity weight belongs to the bi-encoders' 'embedding' loss; "
                f"a {kind} takes none (got {self.similarity_weight!r})"
            )
        temperature = self.temperature or (0.05 if kind == "bi-encoder" else 1.0)
        return dataclasses.replace(self, loss=loss, temperature=temperature)


def recover(
    student: RankingModel,
    teacher: RankingModel,
    data: RecoveryData,
    *,
    steps: int,
    batch_size: int = 4,
    lr: float = 5e-5,
    max_length: int = 128,
    device: str | torch.device | None = None,
    seed: int = 13,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 200,
    loss: str | None = None,
    temperature: float | None = None,
    hidden_weight: float = 0.0,
    similarity_weight: float = 1.0,
    label_weight: float = 0.0,
    warmup: float = 0.1,
    heldout: int | None = None,
    gate: Callable[[RankingModel], Mapping[str, float]] | None = None,
    quantize: CompressionPlan | None = None,
    show_progress_bar: bool | None = None,
) -> tuple[RankingModel, RecoveryLog]:
    """Distil ``student`` toward ``teacher`` on ``data``; returns the trained copy and its log.

    The student passed in is not changed: a deep copy is trained and returned, with
    the same adapter protocol (evaluation, attribution and export treat it like any
    model) and a ``variant`` that names the recovery, so caches never mix its scores
    with the untrained student's.

    Args:
        student: the compressed model (torch; physically pruned, say).
        teacher: the uncompressed model ``data`` was made with.
        data: groups and the teacher's targets (:func:`relcomp.recovery.recovery_data`).
        steps: optimizer steps.
        batch_size: groups (queries) per step; each brings all its candidates.
        lr: AdamW's peak learning rate.
        max_length: the student's input length while training.
        device: ``"cuda"`` when a GPU is there; CPU by default. The model comes back
            on the CPU.
        seed: data order, held-out groups and dropout.
        checkpoint_dir: where the checkpoint is kept; a run finds its own checkpoint
            there (same student, teacher, data and settings) and resumes from it.
        checkpoint_every: steps between checkpoints (a checkpoint also ends the run).
        loss: ``listwise-kl`` (cross-encoder default), ``margin-mse`` or ``embedding``
            (bi-encoders).
        temperature: of the softmax in the loss; 1 for cross-encoders, 0.05 for
            bi-encoders by default.
        hidden_weight: above 0, the loss adds this weight times the mean squared error
            between the output of every encoder layer the student kept and the teacher
            layer it came from (real tokens only, divided by the teacher's variance;
            :mod:`relcomp.recovery.hidden`), for cross-encoders and bi-encoders alike.
            The teacher's hidden states are not cached: the teacher (a copy on
            ``device``, eval mode, under ``torch.no_grad``) runs on each step's batch,
            one more forward pass per step. The held-out groups then also get
            ``heldout_hidden_mse`` at every checkpoint.
        similarity_weight: bi-encoders: the weight of the in-batch similarity KL next
            to the embedding distance (:func:`~relcomp.recovery.losses.embedding_loss`;
            ``1 / temperature**2`` gives it an unscaled KL's gradient).
        label_weight: above 0, the loss adds this weight times
            :func:`~relcomp.recovery.losses.positive_nll` of the student's scores (a
            bi-encoder's in-batch similarities) at the loss's temperature, over each
            group's judged-relevant candidates (``data.positives``: train/dev qrels and
            pseudo-queries' source documents; never test). The held-out groups then
            also get ``heldout_label_nll`` at every checkpoint; ``heldout_loss`` stays
            the distillation loss alone.
        warmup: share of the steps with a rising learning rate.
        heldout: groups kept out of training, on which the loss is measured at every
            checkpoint (0: none); by default a tenth of the groups, at most 32.
        gate: called with the student (eval mode) at the start and at every
            checkpoint; returns measures to log (``{"nDCG@10": 0.61}``).
        quantize: quantization-aware recovery: the precision plan the model will be
            exported with (e.g. ``int8`` on every Linear), whose rounding the student
            trains through (:class:`~relcomp.recovery.QuantizationAware`: weights on
            the plan's grid, dynamic int8 inputs as ONNX Runtime rounds them,
            straight-through gradients); the gate then judges the quantized twin. The
            returned model holds the trained fp32 weights, for the export to quantize.
        show_progress_bar: tqdm bar with loss and pairs/s; ``None`` follows the logger.

    Returns:
        ``(recovered student, RecoveryLog)``.

    Raises:
        RelcompError: bad settings, a student that is not a torch model or is compressed
            in place, a teacher of another kind or tokenizer, data made by another teacher,
            a checkpoint in ``checkpoint_dir`` made with other settings, or (with
            ``hidden_weight``) a student whose layers cannot be paired with the teacher's,
            or (with ``label_weight``) data with no judged-relevant candidate.

    Example:
        >>> from relcomp.models import load_model
        >>> teacher = load_model("all-MiniLM-L6-v2")
        >>> recover(teacher, teacher, None, steps=0)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        relcomp.errors.RelcompError: recovery steps must be a whole number ≥ 1, got 0
    """
    if heldout is None:
        heldout = min(32, len(data) // 10) if isinstance(data, RecoveryData) else 0
    settings = RecoverySettings(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        max_length=max_length,
        seed=seed,
        loss=loss,
        temperature=temperature,
        warmup=warmup,
        heldout=heldout,
        checkpoint_every=checkpoint_every,
        hidden_weight=hidden_weight,
        similarity_weight=similarity_weight,
        label_weight=label_weight,
    ).for_model(student.kind)
    _check_models(student, teacher, data)
    if settings.label_weight > 0 and not data.labelled_groups:
        raise RelcompError(
            "label_weight needs judged-relevant candidates, and no recovery group has one "
            "(recovery_data marks them from the train/dev qrels and the pseudo-queries)"
        )
    matched = layer_pairs(student, teacher) if settings.hidden_weight > 0 else ()
    if quantize is not None:
        quantization_actions(quantize, student)  # a plan it cannot simulate fails here
    training, held = data.split(settings.heldout, seed) if settings.heldout else (data, None)
    target = torch.device(device) if device is not None else torch.device("cpu")
    identity = {
        "format": _CHECKPOINT_FORMAT,
        "student": student.cache_key,
        "teacher": teacher.cache_key,
        "data": data.digest,
        # Options left at their defaults stay out of the identity, so checkpoints made
        # before the options existed still resume; any other value is part of it.
        **{
            k: v
            for k, v in dataclasses.asdict(settings).items()
            if (k, v)
            not in (("hidden_weight", 0.0), ("similarity_weight", 1.0), ("label_weight", 0.0))
        },
        "quantize": quantize.fingerprint() if quantize is not None else None,
    }
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None

    working = copy.deepcopy(student)
    working.model.to(target)
    working.device = target
    aware = QuantizationAware(working, quantize) if quantize is not None else None
    parameters = [p for p in working.model.parameters() if p.requires_grad]
    if not parameters:
        raise RelcompError(f"{student.name} has no trainable parameter")
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=0.01)
    warm = int(settings.warmup * settings.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / warm
            if step < warm
            else max(0.0, (settings.steps - step) / max(1, settings.steps - warm))
        ),
    )
    state: dict[str, Any] = {"step": 0, "losses": [], "checkpoints": [], "pairs": 0, "seconds": 0.0}
    torch.manual_seed(settings.seed)
    if checkpoint is not None and checkpoint.is_file():
        state = _resume(checkpoint, identity, working, optimizer, scheduler)
        logger.info(
            "resuming recovery from step %d of %d (%s)", state["step"], settings.steps, checkpoint
        )
    schedule = _schedule(len(training), settings.steps * settings.batch_size, settings.seed)
    trainer = _Trainer(working, settings, target, _frozen_teacher(teacher, target, matched))

    if state["step"] == 0 and not state["checkpoints"]:
        state["checkpoints"].append(trainer.checkpoint_entry(0, held, gate))
    started = time.perf_counter()
    seconds_before = state["seconds"]
    from tqdm.auto import tqdm

    bar = tqdm(
        total=settings.steps,
        initial=state["step"],
        desc="Recovery",
        unit="step",
        disable=not progress_enabled(show_progress_bar),
    )
    try:
        while state["step"] < settings.steps:
            step = state["step"]
            rows = schedule[step * settings.batch_size : (step + 1) * settings.batch_size]
            working.model.train()
            optimizer.zero_grad(set_to_none=True)
            value, pairs = trainer.loss(training, rows)
            if not torch.isfinite(value):
                raise RelcompError(
                    f"recovery loss is not finite at step {step + 1} ({float(value)}); "
                    "lower --lr or check the student's weights"
                )
            value.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            state["step"] = step + 1
            state["losses"].append(value.item())
            state["pairs"] += pairs
            elapsed = time.perf_counter() - started
            state["seconds"] = seconds_before + elapsed
            bar.update(1)
            bar.set_postfix(
                loss=f"{np.mean(state['losses'][-20:]):.4f}",
                pairs_per_s=f"{state['pairs'] / max(state['seconds'], 1e-9):.0f}",
            )
            if state["step"] % settings.checkpoint_every == 0 or state["step"] == settings.steps:
                state["checkpoints"].append(trainer.checkpoint_entry(state["step"], held, gate))
                if checkpoint is not None:
                    _save_checkpoint(checkpoint, identity, working, optimizer, scheduler, state)
    finally:
        bar.close()
        if aware is not None:
            aware.remove()
    working.model.eval()
    working.model.to("cpu")
    working.device = torch.device("cpu")
    working.variant = f"{student.variant}|recovered-{_weights_digest(working)}"
    log = RecoveryLog(
        student=f"{student.name} ({student.variant})",
        teacher=teacher.name,
        loss=str(settings.loss),
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        max_length=settings.max_length,
        seed=settings.seed,
        device=str(target),
        pairs_seen=int(state["pairs"]),
        seconds=round(float(state["seconds"]), 3),
        losses=tuple(round(v, 6) for v in state["losses"]),
        checkpoints=tuple(state["checkpoints"]),
        temperature=float(settings.temperature or 1.0),
        data={
            **dict(data.identity),
            "groups": len(data),
            "heldout_groups": settings.heldout,
            "pairs": data.pairs,
        },
        quantization_aware=json.loads(quantize.to_json()) if quantize is not None else None,
        hidden_weight=float(settings.hidden_weight),
        hidden_layers=matched,
        similarity_weight=float(settings.similarity_weight),
        label_weight=float(settings.label_weight),
    )
    return working, log


def _frozen_teacher(
    teacher: RankingModel, device: torch.device, pairs: tuple[tuple[int, int], ...]
) -> _Teacher | None:
    """The teacher's copy that hidden-state matching runs on ``device`` (``None`` without it)."""
    if not pairs:
        return None
    frozen = copy.deepcopy(teacher)  # the caller's teacher keeps its device and mode
    frozen.model.to(device)
    frozen.device = device
    frozen.model.eval()
    frozen.model.requires_grad_(False)
    return _Teacher(frozen, pairs)


@dataclasses.dataclass(frozen=True)
class _Teacher:
    model: RankingModel
    pairs: tuple[tuple[int, int], ...]


def _check_models(student: RankingModel, teacher: RankingModel, data: RecoveryData) -> None:
    check_teacher(student, teacher)
    made_by = data.identity.get("teacher")
    if made_by is not None and made_by != teacher.cache_key:
        raise RelcompError(
            f"the recovery data was made with another teacher ({made_by}, not {teacher.cache_key})"
        )
    if (data.teacher_scores is None) != (student.kind == "bi-encoder"):
        raise RelcompError(f"the recovery data holds no {student.kind} targets")


def check_teacher(student: RankingModel, teacher: RankingModel) -> None:
    """Refuse a student that cannot learn from ``teacher``: another kind, family or tokenizer.

    Raises:
        RelcompError: naming what differs.
    """
    if not isinstance(student.model, torch.nn.Module) or not hasattr(
        student.model, "save_pretrained"
    ):
        raise RelcompError(
            f"{student.name} is not a torch model; recovery trains the torch model before export"
        )
    if active_compression(student) is not None:
        raise RelcompError(
            f"{student.name} is compressed in place (fake quantization or masks); remove the "
            "handle, or prune physically, before recovery"
        )
    if student.kind != teacher.kind:
        raise RelcompError(f"the student is a {student.kind} but the teacher a {teacher.kind}")
    if student.adapter.family != teacher.adapter.family:
        raise RelcompError(
            f"the student is a {student.adapter.family} model but the teacher a "
            f"{teacher.adapter.family} one; recovery needs one architecture"
        )
    if student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
        raise RelcompError(
            f"{student.name} and {teacher.name} tokenize differently (their vocabularies differ); "
            "recovery needs the student's own teacher"
        )


class _Trainer:
    """The loss of a batch of groups, for either kind of model."""

    def __init__(
        self,
        model: RankingModel,
        settings: RecoverySettings,
        device: torch.device,
        teacher: _Teacher | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.device = device
        self.teacher = teacher
        self.loss_function = LOSSES.get(str(settings.loss))

    def loss(self, data: RecoveryData, rows: np.ndarray | list[int]) -> tuple[torch.Tensor, int]:
        """``(loss, pairs scored)`` of the groups at ``rows``: distillation + the weighted terms."""
        parts = self.parts(data, rows)
        value = parts.distillation
        if parts.hidden is not None:
            value = value + self.settings.hidden_weight * parts.hidden
        if parts.label is not None:
            value = value + self.settings.label_weight * parts.label
        return value, parts.pairs

    def parts(self, data: RecoveryData, rows: np.ndarray | list[int]) -> _LossParts:
        """The loss terms of the groups at ``rows``, each unweighted."""
        rows = [int(r) for r in rows]
        previous = self.model.max_length
        self.model.max_length = min(self.settings.max_length, previous)
        try:
            if isinstance(self.model, BiEncoder):
                return self._bi_encoder_loss(data, rows)
            return self._cross_encoder_loss(data, rows)
        finally:
            self.model.max_length = previous

    def _forward(
        self, run: Callable[[RankingModel, Any], torch.Tensor], features: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``run(student, features)``, and with a teacher, the hidden-state MSE on the same tokens."""
        if self.teacher is None:
            return run(self.model, features), None
        with LayerOutputs(self.model) as student_layers:
            output = run(self.model, features)
        with torch.no_grad(), LayerOutputs(self.teacher.model) as teacher_layers:
            run(self.teacher.model, features)
        hidden = hidden_state_mse(
            student_layers.taken(),
            teacher_layers.taken(),
            features["attention_mask"],
            self.teacher.pairs,
        )
        return output, hidden

    def _label_term(
        self, data: RecoveryData, rows: list[int], scores: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        """:func:`positive_nll` of ``scores`` (rows × candidates, in ``rows``' order), if asked for."""
        if not self.settings.label_weight or data.positives is None:
            return None
        positives = torch.zeros(scores.shape, dtype=torch.bool, device=self.device)
        # a cross-encoder's columns are the row's own candidates; a bi-encoder's, every
        # candidate of the batch in turn, so a row's own start where the one before ends
        start = 0
        for row, r in enumerate(rows):
            marks = data.positives[r]
            positives[row, start : start + len(marks)] = torch.tensor(marks)
            if isinstance(self.model, BiEncoder):
                start += len(marks)
        return positive_nll(
            scores, positives, mask, temperature=float(self.settings.temperature or 1.0)
        )

    def _cross_encoder_loss(self, data: RecoveryData, rows: list[int]) -> _LossParts:
        assert data.teacher_scores is not None
        targets = torch.as_tensor(
            data.teacher_scores[rows], dtype=torch.float32, device=self.device
        )
        mask = ~torch.isnan(targets)
        queries = [data.queries[r] for r in rows for _ in data.documents[r]]
        documents = [d for r in rows for d in data.documents[r]]
        scores, hidden = self._forward(
            lambda model, features: model.forward_scores(features),  # type: ignore[attr-defined]
            self.model.tokenize(queries, documents),  # type: ignore[attr-defined]
        )
        student = torch.zeros_like(targets)
        student[mask] = scores.float()
        value = self.loss_function(
            student, torch.nan_to_num(targets), mask, temperature=self.settings.temperature
        )
        label = self._label_term(data, rows, student, mask)
        return _LossParts(value, hidden, label, len(documents))

    def _bi_encoder_loss(self, data: RecoveryData, rows: list[int]) -> _LossParts:
        model = self.model
        assert isinstance(model, BiEncoder)
        assert (
            data.teacher_query_embeddings is not None
            and data.teacher_document_embeddings is not None
        )
        queries = [model.query_prompt + data.queries[r] for r in rows]
        documents = [model.document_prompt + d for r in rows for d in data.documents[r]]

        def embed(encoder: RankingModel, features: Any) -> torch.Tensor:
            return encoder.embed(features)  # type: ignore[attr-defined]

        student_queries, query_hidden = self._forward(embed, model.tokenize(queries))
        student_documents, document_hidden = self._forward(embed, model.tokenize(documents))
        teacher_queries = torch.as_tensor(data.teacher_query_embeddings[rows], device=self.device)
        teacher_documents = torch.as_tensor(
            np.concatenate([data.teacher_document_embeddings[r] for r in rows]), device=self.device
        )
        value = embedding_loss(
            student_queries.float(),
            student_documents.float(),
            teacher_queries.float(),
            teacher_documents.float(),
            temperature=float(self.settings.temperature or 0.05),
            similarity_weight=self.settings.similarity_weight,
        )
        hidden = (
            None
            if query_hidden is None or document_hidden is None
            else (query_hidden + document_hidden) / 2  # queries and documents count alike
        )
        label = self._label_term(
            data, rows, student_queries.float() @ student_documents.float().T, None
        )
        return _LossParts(value, hidden, label, len(documents))

    @torch.no_grad()
    def heldout_losses(self, held: RecoveryData) -> dict[str, float]:
        """Mean of each loss term over the held-out groups, dropout off.

        ``heldout_loss`` (distillation), and ``heldout_hidden_mse`` (with a teacher) and
        ``heldout_label_nll`` (with a label weight, over the batches that have a
        positive) when those terms are on.
        """
        self.model.model.eval()
        terms: dict[str, list[tuple[float, int]]] = {}
        batch = max(self.settings.batch_size, 8)
        for start in range(0, len(held), batch):
            rows = list(range(start, min(start + batch, len(held))))
            parts = self.parts(held, rows)
            for name, value, weight in (
                ("heldout_loss", parts.distillation, len(rows)),
                ("heldout_hidden_mse", parts.hidden, len(rows)),
                ("heldout_label_nll", parts.label, _labelled(held, rows)),
            ):
                if value is not None and weight:
                    terms.setdefault(name, []).append((float(value), weight))
        return {
            name: float(np.average([v for v, _ in pairs], weights=[w for _, w in pairs]))
            for name, pairs in terms.items()
        }

    def checkpoint_entry(
        self,
        step: int,
        held: RecoveryData | None,
        gate: Callable[[RankingModel], Mapping[str, float]] | None,
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {"step": step}
        if held is not None:
            entry.update({k: round(v, 6) for k, v in self.heldout_losses(held).items()})
        if gate is not None:
            self.model.model.eval()
            with torch.inference_mode():
                measures = gate(self.model)
            entry.update(
                {f"gate_{name}": round(float(value), 6) for name, value in measures.items()}
            )
        logger.info("recovery step %d: %s", step, {k: v for k, v in entry.items() if k != "step"})
        return entry


@dataclasses.dataclass(frozen=True)
class _LossParts:
    """A batch's loss terms, unweighted: a term that is off is ``None``."""

    distillation: torch.Tensor
    hidden: torch.Tensor | None
    label: torch.Tensor | None
    pairs: int


def _labelled(data: RecoveryData, rows: list[int]) -> int:
    """How many of the groups at ``rows`` have a judged-relevant candidate."""
    return sum(any(data.positives[r]) for r in rows) if data.positives is not None else 0


def _schedule(groups: int, total: int, seed: int) -> np.ndarray:
    """Group rows for ``total`` draws: seeded permutations of all groups, one after another."""
    rng = np.random.default_rng(seed)
    epochs = -(-total // groups)
    return np.concatenate([rng.permutation(groups) for _ in range(epochs)])[:total]


def _weights_digest(model: RankingModel) -> str:
    hasher = hashlib.sha256()
    for name, tensor in sorted(model.model.state_dict().items()):
        hasher.update(name.encode())
        hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()[:12]


def _save_checkpoint(
    path: Path,
    identity: Mapping[str, Any],
    model: RankingModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: Mapping[str, Any],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    torch.save(
        {
            "identity": dict(identity),
            "model": model.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "state": dict(state),
        },
        temporary,
    )
    os.replace(temporary, path)


def _resume(
    path: Path,
    identity: Mapping[str, Any],
    model: RankingModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    try:
        saved = torch.load(path, map_location=model.device, weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which
        raise RelcompError(f"{path}: cannot read the recovery checkpoint: {error}") from None
    recorded = saved.get("identity", {})
    # both ways: a setting only one of the two runs names (a hidden weight) differs too
    different = sorted(k for k in {*identity, *recorded} if recorded.get(k) != identity.get(k))
    if different:
        raise RelcompError(
            f"{path} is the checkpoint of another recovery run (it differs in {', '.join(different)}); "
            "use another checkpoint folder or delete it"
        )
    model.model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    if saved.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    state = dict(saved["state"])
    state["losses"] = list(state["losses"])
    state["checkpoints"] = list(state["checkpoints"])
    return state
