"""LXT (the AttnLRP authors' package) as a benchmark-only peer for the reranker.

LXT patches ``transformers``' BERT module globally, so it is imported only here,
after relcomp's model is loaded (that one keeps the stock classes). The peer is its
own copy of the model, weights frozen as relcomp's are; relevance is read at the input
embeddings, as LXT's README does. Set up outside relcomp's environment::

    bash benchmarks/peers/setup_lxt.sh      # then PYTHONPATH=.peers/lxt python benchmarks/…
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import numpy as np
import torch

from relcomp.attribution.baselines import TokenAttribution
from relcomp.models import CrossEncoder, RankingModel


def lxt_peer(model: RankingModel) -> Any:
    """LXT's efficient-AttnLRP version of the cross-encoder ``model`` (exits if unusable)."""
    if not isinstance(model, CrossEncoder):
        raise SystemExit("--lxt: the LXT peer explains cross-encoders only")
    try:
        import transformers.models.bert.modeling_bert as modeling_bert
        from lxt.efficient import monkey_patch
    except ImportError as error:
        raise SystemExit(f"--lxt: the lxt package is not importable ({error})") from error

    monkey_patch(modeling_bert)
    # The auto classes cached the stock class when relcomp loaded its model: take
    # LXT's class from the module it put in place.
    patched = sys.modules["transformers.models.bert.modeling_bert"]
    peer_class = getattr(patched, type(model.model).__name__)
    peer = peer_class.from_pretrained(model.path).eval()
    if type(peer).__module__.split(".")[0] != "lxt":
        raise SystemExit(f"--lxt: LXT did not patch the model class ({type(peer).__module__})")
    for parameter in peer.parameters():
        parameter.requires_grad_(False)
    return peer


def lxt_relevance(peer: Any, features: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(relevance per token, logit per pair)`` from one LXT forward and backward pass."""
    with torch.enable_grad():
        embeddings = peer.get_input_embeddings()(features["input_ids"]).requires_grad_()
        rest = {k: v for k, v in features.items() if k != "input_ids"}
        logits = peer(inputs_embeds=embeddings, **rest).logits[:, 0]
        logits.sum().backward()
    assert embeddings.grad is not None
    return (embeddings * embeddings.grad).sum(-1).detach(), logits.detach()


class LxtAttnLRP(TokenAttribution):
    """LXT's AttnLRP behind relcomp's ``.attribute()``, so faithfulness scores it alike."""

    method: ClassVar[str] = "AttnLRP (LXT)"

    def __init__(self, model: RankingModel) -> None:
        super().__init__(model)
        self.peer = lxt_peer(model)

    def _relevance(self, batch: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        relevance, logits = lxt_relevance(self.peer, batch.features)
        return relevance.double().numpy(), logits.double().numpy(), None
