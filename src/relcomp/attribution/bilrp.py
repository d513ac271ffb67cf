"""BiLRP: which query token matches which document token in a bi-encoder's similarity.

For ``s = Σ_m q_m d_m`` (embeddings normalised with their norm held constant),
second-order relevance is ``R_ij = Σ_m R_i(q_m) · R_j(d_m)`` (Eberle et al. 2022),
where ``R_i(q_m)`` is the LRP relevance of query token ``i`` for embedding
dimension ``m``: ``R = J_qᵀ J_d`` with ``J`` each side's relevance Jacobian
(dimensions × tokens).

Computing ``J_q`` and ``J_d`` row by row takes one backward pass per embedding
dimension (384 for all-MiniLM-L6-v2; :meth:`BiLRP.attribute_per_dimension`, kept as
the reference). :meth:`BiLRP.attribute` needs two passes whose size follows the
*shorter* text instead (``n`` tokens, usually the query):

1. **forward mode** on the short side, its ``n`` copies in one batch, copy ``i``
   carrying the tangent ``x_i`` (the embedding output at token ``i``) and zero
   elsewhere. Every LRP rule's ``jvp`` is the transpose of its backward map, so the
   output tangent of copy ``i`` is column ``i`` of ``J``: all of ``J_q`` at once;
2. **reverse mode** on the long side: one forward pass, then one backward pass
   vectorised over ``n`` cotangents (``is_grads_batched``), cotangent ``i`` being
   ``J_q[:, i]``; it gives ``Σ_m J_q[m, i] · R_j(d_m) = R_ij`` for every ``i`` and
   ``j``. Sharing the forward pass halves the cost of running ``n`` copies of the
   text forward and backward.

Forward mode runs the attention rules in their explicit ``softmax(QKᵀ)·V`` form (torch's
fused attention has no forward-mode derivative); the reverse pass uses the
composite as given. The result equals the per-dimension reference up to rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.autograd import forward_ad

from relcomp.artifacts import TokenInteractions
from relcomp.attribution.composites import Composite, get_composite
from relcomp.attribution.patch import LRPPatch
from relcomp.models.bi_encoder import BiEncoder

__all__ = ["BiLRP"]


class BiLRP:
    """Token-pair interactions for a bi-encoder's similarity.

    Args:
        model: a :class:`~relcomp.models.BiEncoder`.
        composite: the LRP composite for each side's relevance (``"AttnLRP"``).

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")
        >>> result = BiLRP(model).attribute("cat food", "what cats eat")
        >>> result.matrix().shape == (len(result.query_tokens), len(result.document_tokens))
        True
    """

    def __init__(self, model: BiEncoder, composite: str | Composite = "AttnLRP") -> None:
        if not isinstance(model, BiEncoder):
            raise TypeError(f"BiLRP explains bi-encoders; got a {type(model).__name__}")
        self.model = model
        self.composite = get_composite(composite)

    def attribute(self, query: str, document: str) -> TokenInteractions:
        """Second-order relevance of every (query token, document token) pair.

        One forward-mode pass over the shorter text's token copies, then one forward
        and one vectorised backward pass over the longer text (see the module's docstring).
        """
        model = self.model
        texts = (model.query_prompt + query, model.document_prompt + document)
        features = [model.tokenize([text]) for text in texts]
        lengths = [int(f["attention_mask"].sum()) for f in features]
        short = 0 if lengths[0] <= lengths[1] else 1
        long = 1 - short
        jacobian, short_embedding = self._forward_jacobian(features[short], lengths[short])
        relevance, long_embedding = self._weighted_relevance(features[long], jacobian)
        interactions = relevance[:, : lengths[long]]  # (short tokens, long tokens)
        if short == 1:
            interactions = interactions.T
        score = float((short_embedding * long_embedding).sum())
        return self._result(features, lengths, interactions.double(), score, query, document)

    def _embed(self, patch: LRPPatch, features: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding the similarity uses (norm held constant as the composite says)."""
        embeddings = self.model.embed(features, normalize=False)
        (leaf,) = patch.take_embedding_inputs()
        if self.model.normalize or self.model.similarity_name == "cosine":
            norm = embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            embeddings = embeddings / (
                norm.detach() if self.composite.normalization_constant else norm
            )
        return embeddings, leaf

    def _forward_jacobian(self, features: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``J`` of one text as ``(tokens, dimensions)``, from one forward-mode pass."""
        copies = {key: value[:, :n].expand(n, -1) for key, value in features.items()}
        explicit = dataclasses.replace(self.composite, fused_attention=False)
        tokens = torch.arange(n)

        def tangent(x: torch.Tensor) -> torch.Tensor:
            selected = torch.zeros_like(x)
            selected[tokens, tokens] = x[tokens, tokens]  # copy i: token i's input only
            return selected

        with LRPPatch(self.model, explicit) as patch, torch.enable_grad():
            patch.embedding_tangent = tangent
            with forward_ad.dual_level():
                embeddings, _ = self._embed(patch, copies)
                primal, jacobian = forward_ad.unpack_dual(embeddings)
            if jacobian is None:
                raise RuntimeError("forward mode carried no tangent to the embedding")
        return jacobian.detach(), primal[0].detach()

    def _weighted_relevance(
        self, features: Any, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token relevance of ``Σ_m weights[i, m] · e_m`` for each row ``i``.

        One forward pass of the text, then one backward pass vectorised over the rows
        of ``weights`` (``is_grads_batched``): every LRP rule's backward is linear in
        its incoming relevance, so the rows share the forward pass and its graph.
        """
        with LRPPatch(self.model, self.composite) as patch, torch.enable_grad():
            embeddings, leaf = self._embed(patch, features)
            (grad,) = torch.autograd.grad(
                embeddings,
                leaf,
                grad_outputs=weights[:, None, :].to(embeddings),
                is_grads_batched=True,
            )
            relevance = (grad * leaf.detach()).sum(-1)[:, 0]
        return relevance.detach(), embeddings[0].detach()

    def attribute_per_dimension(self, query: str, document: str) -> TokenInteractions:
        """The same quantity with one backward pass per embedding dimension (the slow reference)."""
        model = self.model
        texts = (model.query_prompt + query, model.document_prompt + document)
        features = [model.tokenize([text]) for text in texts]
        lengths = [int(f["attention_mask"].sum()) for f in features]
        sides = []
        with LRPPatch(model, self.composite) as patch, torch.enable_grad():
            for side in features:
                embeddings, leaf = self._embed(patch, side)
                rows = []
                for m in range(embeddings.shape[-1]):
                    (grad,) = torch.autograd.grad(embeddings[0, m], leaf, retain_graph=True)
                    rows.append((grad * leaf.detach()).sum(-1)[0])
                sides.append((torch.stack(rows).double(), embeddings[0].detach()))
        (query_jacobian, query_embedding), (document_jacobian, document_embedding) = sides
        interactions = query_jacobian[:, : lengths[0]].T @ document_jacobian[:, : lengths[1]]
        score = float((query_embedding * document_embedding).sum())
        return self._result(features, lengths, interactions, score, query, document)

    def _result(
        self,
        features: list[Any],
        lengths: list[int],
        interactions: torch.Tensor,
        score: float,
        query: str,
        document: str,
    ) -> TokenInteractions:
        return TokenInteractions(
            method=f"BiLRP({self.composite.name})",
            query=query,
            document=document,
            score=score,
            query_tokens=tuple(features[0].encodings[0].tokens[: lengths[0]]),
            document_tokens=tuple(features[1].encodings[0].tokens[: lengths[1]]),
            interactions=interactions.cpu().numpy().tolist(),
            conservation_error=score - float(interactions.sum()),
        )
