"""BiLRP: which query token matches which document token in a bi-encoder's similarity.

For ``s = Σ_m q_m d_m`` (embeddings normalised with their norm held constant),
second-order relevance is ``R_ij = Σ_m R_i(q_m) · R_j(d_m)`` (Eberle et al. 2022),
where ``R_i(q_m)`` is the LRP relevance of query token ``i`` for embedding
dimension ``m``. Both sides' relevance Jacobians come from **one** forward pass
and **one** batched backward pass (``torch.autograd.grad(..., is_grads_batched=True)``,
a vmapped vector-Jacobian product over the embedding dimensions), not one
backward pass per dimension.
"""

from __future__ import annotations

from typing import Any

import torch

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
        >>> result.interactions.shape == (len(result.query_tokens), len(result.document_tokens))
        True
    """

    def __init__(self, model: BiEncoder, composite: str | Composite = "AttnLRP") -> None:
        if not isinstance(model, BiEncoder):
            raise TypeError(f"BiLRP explains bi-encoders; got a {type(model).__name__}")
        self.model = model
        self.composite = get_composite(composite)

    def attribute(self, query: str, document: str) -> TokenInteractions:
        """Second-order relevance of every (query token, document token) pair."""
        with LRPPatch(self.model, self.composite) as patch:
            features, embeddings, leaf = self._forward(patch, query, document)
            dimension = embeddings.shape[-1]
            # grad_outputs[m] selects embedding dimension m of both texts at once;
            # the two texts are separate samples, so their Jacobians do not mix.
            selector = (
                torch.eye(dimension, dtype=embeddings.dtype)
                .unsqueeze(1)
                .expand(dimension, 2, dimension)
            )
            (jacobian,) = torch.autograd.grad(
                embeddings, leaf, grad_outputs=selector, is_grads_batched=True
            )
            relevance = (jacobian * leaf.detach()).sum(-1)  # (dimension, 2, tokens)
        return self._interactions(features, relevance, embeddings.detach(), query, document)

    def attribute_per_dimension(self, query: str, document: str) -> TokenInteractions:
        """The same quantity with one backward pass per embedding dimension (the slow reference)."""
        with LRPPatch(self.model, self.composite) as patch:
            features, embeddings, leaf = self._forward(patch, query, document)
            rows = []
            for m in range(embeddings.shape[-1]):
                (grad,) = torch.autograd.grad(embeddings[:, m].sum(), leaf, retain_graph=True)
                rows.append((grad * leaf.detach()).sum(-1))
            relevance = torch.stack(rows)
        return self._interactions(features, relevance, embeddings.detach(), query, document)

    def _forward(
        self, patch: LRPPatch, query: str, document: str
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        model = self.model
        features = model.tokenize([model.query_prompt + query, model.document_prompt + document])
        with torch.enable_grad():
            embeddings = model.embed(features, normalize=False)
            (leaf,) = patch.take_embedding_inputs()
            if model.normalize or model.similarity_name == "cosine":
                norm = embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                embeddings = embeddings / (
                    norm.detach() if self.composite.normalization_constant else norm
                )
        return features, embeddings, leaf

    def _interactions(
        self,
        features: Any,
        relevance: torch.Tensor,
        embeddings: torch.Tensor,
        query: str,
        document: str,
    ) -> TokenInteractions:
        mask = features["attention_mask"].bool()
        query_length, document_length = int(mask[0].sum()), int(mask[1].sum())
        query_relevance = relevance[:, 0, :query_length].double()  # (dimension, query tokens)
        document_relevance = relevance[:, 1, :document_length].double()
        interactions = query_relevance.T @ document_relevance
        score = float((embeddings[0] * embeddings[1]).sum())
        encodings = features.encodings
        return TokenInteractions(
            method=f"BiLRP({self.composite.name})",
            query=query,
            document=document,
            score=score,
            query_tokens=tuple(encodings[0].tokens[:query_length]),
            document_tokens=tuple(encodings[1].tokens[:document_length]),
            interactions=interactions.cpu().numpy().tolist(),
            conservation_error=score - float(interactions.sum()),
        )
