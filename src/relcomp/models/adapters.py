"""Architecture adapters: where each encoder family keeps the modules relcomp touches.

An adapter names, for one family of encoders, the embeddings, the per-layer
attention projections, the attention output, the FFN in / activation / out, the
LayerNorms and the classification head. Attribution and compression only ever ask
an adapter for these names, so supporting a new family means writing one adapter.

Module paths are relative to the encoder (``BertModel`` and the like); the model
wrapper adds the prefix of the task model (``bert.`` for
``BertForSequenceClassification``) to get names as in ``model.named_modules()``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from torch import nn

from relcomp.errors import UnsupportedArchitectureError

__all__ = [
    "ADAPTERS",
    "ArchitectureAdapter",
    "LayerModules",
    "adapter_for",
    "supported_model_types",
]

AttentionStyle = Literal["bert", "distilbert", "mpnet"]
HeadStyle = Literal["bert_pooler", "roberta", "electra", "distilbert"]


@dataclasses.dataclass(frozen=True)
class LayerModules:
    """The modules of one transformer layer, as full dotted names in the model."""

    index: int
    layer: str
    attention: str  # the self-attention module (holds query/key/value)
    query: str
    key: str
    value: str
    attention_output: str  # Linear after the heads are concatenated
    attention_norm: str
    ffn_in: str
    ffn_activation: str
    ffn_out: str
    ffn_norm: str

    def linears(self) -> dict[str, str]:
        """The Linear modules of the layer, ``{role: module name}``."""
        return {
            "query": self.query,
            "key": self.key,
            "value": self.value,
            "attention_output": self.attention_output,
            "ffn_in": self.ffn_in,
            "ffn_out": self.ffn_out,
        }


@dataclasses.dataclass(frozen=True)
class ArchitectureAdapter:
    """Names of the modules of one encoder family (paths relative to the encoder)."""

    family: str
    model_types: tuple[str, ...]
    base_attribute: str  # attribute holding the encoder in *ForSequenceClassification
    embeddings: str
    word_embeddings: str
    embedding_norm: str
    layers: str
    attention: str
    query: str
    key: str
    value: str
    attention_output: str
    attention_norm: str
    ffn_in: str
    ffn_activation: str
    ffn_out: str
    ffn_norm: str
    attention_style: AttentionStyle
    head_style: HeadStyle
    # classification-head module names relative to the task model
    head_modules: tuple[str, ...]
    head_activation: str | None = None  # a swappable activation module in the head, if any

    def encoder(self, model: nn.Module) -> nn.Module:
        """The bare encoder inside a task model (or the model itself)."""
        return getattr(model, self.base_attribute, model)

    def prefix(self, model: nn.Module) -> str:
        return f"{self.base_attribute}." if hasattr(model, self.base_attribute) else ""

    def layer_modules(self, model: nn.Module) -> list[LayerModules]:
        """Per-layer module names, full dotted names in ``model``."""
        prefix = self.prefix(model)
        layers: Any = _get(self.encoder(model), self.layers)
        result = []
        for index in range(len(layers)):
            base = f"{prefix}{self.layers}.{index}"
            result.append(
                LayerModules(
                    index=index,
                    layer=base,
                    attention=f"{base}.{self.attention}",
                    query=f"{base}.{self.query}",
                    key=f"{base}.{self.key}",
                    value=f"{base}.{self.value}",
                    attention_output=f"{base}.{self.attention_output}",
                    attention_norm=f"{base}.{self.attention_norm}",
                    ffn_in=f"{base}.{self.ffn_in}",
                    ffn_activation=f"{base}.{self.ffn_activation}",
                    ffn_out=f"{base}.{self.ffn_out}",
                    ffn_norm=f"{base}.{self.ffn_norm}",
                )
            )
        return result

    def embedding_names(self, model: nn.Module) -> dict[str, str]:
        prefix = self.prefix(model)
        return {
            "embeddings": f"{prefix}{self.embeddings}",
            "word_embeddings": f"{prefix}{self.word_embeddings}",
            "embedding_norm": f"{prefix}{self.embedding_norm}",
        }

    def num_heads(self, model: nn.Module) -> int:
        """Heads per layer as configured (see :meth:`heads_in` for a pruned layer)."""
        config: Any = model.config
        return int(getattr(config, "num_attention_heads", getattr(config, "n_heads", 0)))

    def heads_in(self, attention: nn.Module) -> int:
        """Heads an attention module has now; fewer than configured after head pruning."""
        for attribute in ("num_attention_heads", "n_heads"):
            if hasattr(attention, attribute):
                return int(getattr(attention, attribute))
        raise AttributeError(f"{type(attention).__name__} has no head count")


def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


_BERT_LIKE = dict(
    embeddings="embeddings",
    word_embeddings="embeddings.word_embeddings",
    embedding_norm="embeddings.LayerNorm",
    layers="encoder.layer",
    attention="attention.self",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attention_output="attention.output.dense",
    attention_norm="attention.output.LayerNorm",
    ffn_in="intermediate.dense",
    ffn_activation="intermediate.intermediate_act_fn",
    ffn_out="output.dense",
    ffn_norm="output.LayerNorm",
    attention_style="bert",
)

ADAPTERS: dict[str, ArchitectureAdapter] = {}


def _register(adapter: ArchitectureAdapter) -> None:
    ADAPTERS[adapter.family] = adapter


_register(
    ArchitectureAdapter(
        family="bert",
        model_types=("bert",),
        base_attribute="bert",
        head_style="bert_pooler",
        head_modules=("bert.pooler.dense", "classifier"),
        head_activation="bert.pooler.activation",
        **_BERT_LIKE,  # type: ignore[arg-type]
    )
)
_register(
    ArchitectureAdapter(
        family="roberta",
        model_types=("roberta", "xlm-roberta", "camembert"),
        base_attribute="roberta",
        head_style="roberta",
        head_modules=("classifier.dense", "classifier.out_proj"),
        **_BERT_LIKE,  # type: ignore[arg-type]
    )
)
_register(
    ArchitectureAdapter(
        family="electra",
        model_types=("electra",),
        base_attribute="electra",
        head_style="electra",
        head_modules=("classifier.dense", "classifier.out_proj"),
        head_activation="classifier.activation",
        **_BERT_LIKE,  # type: ignore[arg-type]
    )
)
_register(
    ArchitectureAdapter(
        family="distilbert",
        model_types=("distilbert",),
        base_attribute="distilbert",
        embeddings="embeddings",
        word_embeddings="embeddings.word_embeddings",
        embedding_norm="embeddings.LayerNorm",
        layers="transformer.layer",
        attention="attention",
        query="attention.q_lin",
        key="attention.k_lin",
        value="attention.v_lin",
        attention_output="attention.out_lin",
        attention_norm="sa_layer_norm",
        ffn_in="ffn.lin1",
        ffn_activation="ffn.activation",
        ffn_out="ffn.lin2",
        ffn_norm="output_layer_norm",
        attention_style="distilbert",
        head_style="distilbert",
        head_modules=("pre_classifier", "classifier"),
    )
)
_register(
    ArchitectureAdapter(
        family="mpnet",
        model_types=("mpnet",),
        base_attribute="mpnet",
        embeddings="embeddings",
        word_embeddings="embeddings.word_embeddings",
        embedding_norm="embeddings.LayerNorm",
        layers="encoder.layer",
        attention="attention.attn",
        query="attention.attn.q",
        key="attention.attn.k",
        value="attention.attn.v",
        attention_output="attention.attn.o",
        attention_norm="attention.LayerNorm",
        ffn_in="intermediate.dense",
        ffn_activation="intermediate.intermediate_act_fn",
        ffn_out="output.dense",
        ffn_norm="output.LayerNorm",
        attention_style="mpnet",
        head_style="roberta",
        head_modules=("classifier.dense", "classifier.out_proj"),
    )
)

_BY_MODEL_TYPE = {model_type: a for a in ADAPTERS.values() for model_type in a.model_types}


def supported_model_types() -> list[str]:
    """The ``config.model_type`` values relcomp has adapters for."""
    return sorted(_BY_MODEL_TYPE)


def adapter_for(model_type: str) -> ArchitectureAdapter:
    """The adapter for a ``config.model_type``; one clear error when there is none.

    Example:
        >>> adapter_for("bert").family
        'bert'
    """
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported; supported model types: "
            f"{', '.join(supported_model_types())}"
        ) from None
