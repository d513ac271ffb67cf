"""Retrievers: ``score(query, doc) = sim(E(q), E(d))`` with the model's own pooling and normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from relcomp.checks import require_finite
from relcomp.models.base import (
    ModelKind,
    RankingModel,
    check_pairs,
    progress_batches,
)

__all__ = ["BiEncoder", "Pooling"]

Pooling = Literal["mean", "cls"]
Similarity = Literal["cosine", "dot"]


class BiEncoder(RankingModel):
    """A sentence-transformers style encoder: transformer → pooling → (normalise).

    ``pooling``, ``normalize`` and ``similarity_name`` come from the
    sentence-transformers files (``modules.json``, ``1_Pooling/config.json``,
    ``config_sentence_transformers.json``) when present. ``prompts`` (e5's
    ``"query: "``) are prepended to queries and documents as the model asks.

    Example:
        >>> from relcomp.models import load_model
        >>> model = load_model("all-MiniLM-L6-v2")  # doctest: +SKIP
        >>> model.encode(["a cat"]).shape  # doctest: +SKIP
        (1, 384)
    """

    kind: ClassVar[ModelKind] = "bi-encoder"

    def __init__(
        self,
        *args: Any,
        pooling: Pooling = "mean",
        normalize: bool = True,
        similarity_name: str = "cosine",
        query_prompt: str = "",
        document_prompt: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.pooling = pooling
        self.normalize = normalize
        self.similarity_name = similarity_name
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt

    def _identity(self) -> str:
        return f"{self.pooling}|{self.normalize}|{self.query_prompt}|{self.document_prompt}"

    # -- forward -------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> Any:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        self._record_truncation(batch)
        return batch

    def pool(self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool token embeddings ``(batch, tokens, dim)`` into one vector per text."""
        if self.pooling == "cls":
            return token_embeddings[:, 0]
        mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
        return (token_embeddings * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def embed(
        self, features: dict[str, torch.Tensor], normalize: bool | None = None
    ) -> torch.Tensor:
        """Differentiable embeddings ``(batch, dim)``; ``normalize=None`` follows the model."""
        features = self._to_device(dict(features))
        hidden = self.model(**features).last_hidden_state
        pooled = self.pool(hidden, features["attention_mask"])
        if self.normalize if normalize is None else normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        prompt: str = "",
    ) -> np.ndarray:
        """Embed texts (longest first, to waste little on padding); float32 ``(n, dim)``."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of strings, not a single string")
        order = np.argsort([-len(text) for text in texts], kind="stable")
        ordered = [prompt + texts[i] for i in order]
        output = np.empty((len(texts), self._dimension()), dtype=np.float32)
        for start, chunk in progress_batches(ordered, batch_size, "Encoding", show_progress_bar):
            vectors = self.embed(self.tokenize(chunk)).float().cpu().numpy()
            output[order[start : start + len(chunk)]] = vectors
        require_finite(output, f"{self.name}: embeddings")
        return output

    def encode_queries(self, queries: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self.encode(queries, prompt=self.query_prompt, **kwargs)

    def encode_documents(self, documents: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self.encode(documents, prompt=self.document_prompt, **kwargs)

    def _dimension(self) -> int:
        config: Any = self.model.config
        return int(config.hidden_size if hasattr(config, "hidden_size") else config.dim)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise similarity of two ``(n, dim)`` arrays, as the model defines it."""
        if self.similarity_name == "cosine" and not self.normalize:
            a = a / np.clip(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12, None)
            b = b / np.clip(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12, None)
        return np.einsum("nd,nd->n", a, b).astype(np.float32)

    def score(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Similarity of each (query, document) pair; each distinct text is encoded once."""
        check_pairs(queries, documents)
        unique_queries = list(dict.fromkeys(queries))
        unique_documents = list(dict.fromkeys(documents))
        q = self.encode_queries(
            unique_queries, batch_size=batch_size, show_progress_bar=show_progress_bar
        )
        d = self.encode_documents(
            unique_documents, batch_size=batch_size, show_progress_bar=show_progress_bar
        )
        q_index = {text: i for i, text in enumerate(unique_queries)}
        d_index = {text: i for i, text in enumerate(unique_documents)}
        return self.similarity(q[[q_index[t] for t in queries]], d[[d_index[t] for t in documents]])
