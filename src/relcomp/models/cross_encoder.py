"""Rerankers: ``score(query, doc)`` is the logit of a classification head over ``[CLS] q [SEP] d [SEP]``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from relcomp.checks import require_finite
from relcomp.errors import UnsupportedArchitectureError
from relcomp.models.base import (
    ModelKind,
    RankingModel,
    check_pairs,
    progress_batches,
)

__all__ = ["CrossEncoder", "relevance_head_problem"]


def relevance_head_problem(path: object, labels: int) -> str:
    """Why a classification head of ``labels`` outputs cannot score relevance."""
    return (
        f"{path}: the classification head has {labels} outputs; a reranker needs one "
        "relevance logit (or two classes, 'not relevant' and 'relevant'), so relcomp "
        "will not guess which output is relevance"
    )


class CrossEncoder(RankingModel):
    """A sequence-classification encoder that scores a (query, document) pair jointly.

    Scores are the raw logits (sentence-transformers' ``CrossEncoder.predict`` applies a
    sigmoid to one-logit models by default; the ranking is the same). A model with two
    labels is scored by the logit of label 1 ("relevant").

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("tests/fixtures/tiny-bert-cross")  # doctest: +SKIP
        >>> model.score(["what is a cat"], ["a cat is an animal"]).shape  # doctest: +SKIP
        (1,)
    """

    kind: ClassVar[ModelKind] = "cross-encoder"

    def tokenize(self, queries: Sequence[str], documents: Sequence[str]) -> Any:
        """Tokenise pairs as sentence-transformers does (``longest_first`` truncation)."""
        check_pairs(queries, documents)
        batch = self.tokenizer(
            list(queries),
            list(documents),
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="pt",
        )
        self._record_truncation(batch)
        return batch

    def forward_scores(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """One score per pair, as a differentiable tensor of shape ``(batch,)``."""
        logits = self.model(**self._to_device(dict(features))).logits
        if logits.shape[-1] not in (1, 2):
            raise UnsupportedArchitectureError(relevance_head_problem(self.path, logits.shape[-1]))
        return logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1]

    @torch.inference_mode()
    def score(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Score each (query, document) pair; returns a float32 array of logits.

        Pairs are batched longest first (by characters), so a batch pads to similar
        lengths; scores come back in the order given.
        """
        check_pairs(queries, documents)
        scores = np.empty(len(queries), dtype=np.float32)
        order = np.argsort(
            [-(len(q) + len(d)) for q, d in zip(queries, documents, strict=True)], kind="stable"
        )
        for _, index in progress_batches(
            order.tolist(), batch_size, "Scoring pairs", show_progress_bar
        ):
            batch = self.tokenize([queries[i] for i in index], [documents[i] for i in index])
            scores[np.asarray(index)] = self.forward_scores(batch).float().cpu().numpy()
        require_finite(scores, f"{self.name}: scores")
        return scores
