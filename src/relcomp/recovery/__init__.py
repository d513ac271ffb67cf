"""Recovery: distil a structurally compressed model back toward its uncompressed teacher.

Relevance chooses what to remove; recovery gives back what removal cost. The student
(a physically pruned copy, say) learns to score the teacher's way on unlabeled,
in-domain groups — a collection's train/dev queries and pseudo-queries drawn from its
corpus, never test — and comes back as an ordinary relcomp model, ready to quantize,
export and gate.

* :func:`recovery_data` — groups of (query, BM25 candidates) with the teacher's
  scores (cross-encoders) or embeddings (bi-encoders), cached like evaluations;
* :func:`recover` — the training loop, checkpointed and resumable, returning the
  student and a :class:`~relcomp.artifacts.RecoveryLog`;
* :data:`LOSSES` — ``listwise-kl``, ``margin-mse`` and ``embedding``;
* :class:`QuantizationAware` — the export's rounding installed for training
  (``recover(..., quantize=plan)``), so the quantized model is what recovers;
* :func:`layer_pairs`, :func:`hidden_state_mse` — optional hidden-state matching
  (``recover(..., hidden_weight=w)``): each layer the student kept pulled toward the
  teacher layer it came from;
* :func:`positive_nll` — the optional supervised term (``recover(..., label_weight=w)``)
  on the train/dev queries' judged-relevant candidates, off by default.
"""

from __future__ import annotations

from relcomp.artifacts import RecoveryLog
from relcomp.recovery.data import (
    DEFAULT_CANDIDATES,
    PSEUDO_QUERY_PREFIX,
    RecoveryData,
    pseudo_queries,
    recovery_data,
)
from relcomp.recovery.hidden import LayerOutputs, hidden_state_mse, layer_pairs
from relcomp.recovery.losses import LOSSES, embedding_loss, listwise_kl, margin_mse, positive_nll
from relcomp.recovery.quantization_aware import QuantizationAware, quantization_actions
from relcomp.recovery.train import (
    CHECKPOINT_FILE,
    RECOVERY_LOG_FILE,
    RecoverySettings,
    check_teacher,
    recover,
)

__all__ = [
    "CHECKPOINT_FILE",
    "DEFAULT_CANDIDATES",
    "LOSSES",
    "PSEUDO_QUERY_PREFIX",
    "RECOVERY_LOG_FILE",
    "LayerOutputs",
    "QuantizationAware",
    "RecoveryData",
    "RecoveryLog",
    "RecoverySettings",
    "check_teacher",
    "embedding_loss",
    "hidden_state_mse",
    "layer_pairs",
    "listwise_kl",
    "margin_mse",
    "positive_nll",
    "pseudo_queries",
    "quantization_actions",
    "recover",
    "recovery_data",
]
