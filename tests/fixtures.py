"""Tiny models built in code, one for every encoder family relcomp supports.

Nothing here downloads anything: vocabularies, tokenizers, configs and weights
are all made from the word list below. A model folder is what
``transformers``/``sentence-transformers`` would save, so relcomp loads it through
exactly the code path it uses for real models.

Tests use the session fixtures in ``tests/conftest.py`` (``tiny_model_path``,
``tiny_model``); code that needs its own folder calls :func:`make_tiny_model_dir`.

Example:
    >>> import tempfile, pathlib
    >>> path = make_tiny_model_dir(pathlib.Path(tempfile.mkdtemp()), "bert", "cross-encoder")
    >>> sorted(p.name for p in path.iterdir())[:2]
    ['config.json', 'model.safetensors']
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = [
    "DOCUMENTS",
    "FAMILIES",
    "KINDS",
    "LONG_DOCUMENT",
    "QUERIES",
    "SHAPES",
    "TINY_CONFIG",
    "WORDS",
    "assets_dir",
    "make_tiny_model_dir",
    "make_unsupported_model_dir",
]

#: One entry per ``config.model_type`` relcomp has an adapter for (camembert aside:
#: it shares the roberta adapter and xlm-roberta's tokenizer kind).
FAMILIES: tuple[str, ...] = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet")
#: ``FAMILIES`` plus ``"minilm"``: a bert with MiniLM's proportions (3 layers, 6 heads of 6).
SHAPES: tuple[str, ...] = (*FAMILIES, "minilm")
KINDS: tuple[str, ...] = ("cross-encoder", "bi-encoder")

#: The shape of every tiny model; any key can be overridden per model.
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    # Ten times the usual 0.02, so activations (and relevances) are far from zero.
    "initializer_range": 0.2,
}
_MINILM_SHAPE = {
    "hidden_size": 36,
    "num_hidden_layers": 3,
    "num_attention_heads": 6,
    "intermediate_size": 144,
}
#: Longest input in tokens for every tiny model (tokenizer and sentence-transformers).
MAX_LENGTH = 64

QUERIES: tuple[str, ...] = (
    "how many people live in berlin?",
    "what is a cat",
    "what causes rain",
    "who wrote the book about the white whale",
    "symptoms of a cold",
    "how do vaccines protect the body",
)
DOCUMENTS: tuple[str, ...] = (
    "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers.",
    "New York City is famous for the Metropolitan Museum of Art.",
    "A cat is a small animal that likes to sleep in the sun.",
    "Rain falls when water in the clouds becomes too heavy.",
    "Herman Melville wrote the novel Moby Dick about a white whale.",
    "A cold causes a sore throat, a runny nose and a cough.",
    "Vaccines train the immune system to protect the body from a virus.",
    "The quick brown fox jumps over the lazy dog.",
)
#: Far longer than :data:`MAX_LENGTH` tokens with every tiny tokenizer.
LONG_DOCUMENT = " ".join(DOCUMENTS * 3)

_EXTRA_WORDS = (
    "a an the of in on at to for from by with and or not is are was were be been it this that "
    "which who what when where why how many much more most some any all no one two three four "
    "five ten hundred thousand million city country world people person man woman child water "
    "fire air earth sun moon star day night year time house home school book word name number "
    "part place way work life hand eye head body system study result effect cause disease cell "
    "protein gene drug patient treatment risk health blood heart brain cancer virus infection "
    "good new old big small high low long short large great first last other same different "
    "can could will would should may might must do does did have has had make made get use used "
    "find found know known think say said see seen go went come came take give look want live "
    "relevant document query score rank search answer question"
)


def _words_of(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


#: Whole words in every tiny vocabulary; other words fall back to characters.
WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(word for text in (*QUERIES, *DOCUMENTS, _EXTRA_WORDS) for word in _words_of(text))
)

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


# -- tokenizers ------------------------------------------------------------------------
def _wordpiece_vocab(specials: list[str]) -> list[str]:
    """Specials, single characters, ``##`` continuations, a few suffixes and whole words."""
    pieces = [
        *specials,
        *_PUNCTUATION,
        *_DIGITS,
        *_LETTERS,
        *(f"##{c}" for c in _DIGITS + _LETTERS),
        "##s",
        "##ed",
        "##ing",
        "##ly",
        *WORDS,
    ]
    return list(dict.fromkeys(pieces))


def _write_vocab_txt(folder: Path, pieces: list[str]) -> Path:
    path = folder / "vocab.txt"
    path.write_text("\n".join(pieces) + "\n", encoding="utf-8")
    return path


def _wordpiece_tokenizer(folder: Path, tokenizer_class: type) -> Any:
    vocab = _write_vocab_txt(
        folder, _wordpiece_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    )
    return tokenizer_class(vocab_file=str(vocab), do_lower_case=True, model_max_length=MAX_LENGTH)


def _mpnet_tokenizer(folder: Path) -> Any:
    from transformers import MPNetTokenizerFast

    # The layout of microsoft/mpnet-base: <s> <pad> </s> <unk> first, [UNK] for WordPiece, <mask> last.
    pieces = [*_wordpiece_vocab(["<s>", "<pad>", "</s>", "<unk>", "[UNK]"]), "<mask>"]
    vocab = _write_vocab_txt(folder, pieces)
    return MPNetTokenizerFast(
        vocab_file=str(vocab), do_lower_case=True, model_max_length=MAX_LENGTH
    )


def _roberta_tokenizer(folder: Path) -> Any:
    """Byte-level BPE: the 256 byte symbols, then left-to-right merges spelling each ``Ġword``."""
    from transformers import RobertaTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    vocab: dict[str, int] = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for symbol in bytes_to_unicode().values():
        vocab.setdefault(symbol, len(vocab))
    merges: list[str] = []
    for word in WORDS:
        current, *rest = "Ġ" + word
        for symbol in rest:
            merged = current + symbol
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append(f"{current} {symbol}")
            current = merged
    vocab["<mask>"] = len(vocab)
    vocab_file = folder / "vocab.json"
    merges_file = folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return RobertaTokenizerFast(
        vocab_file=str(vocab_file), merges_file=str(merges_file), model_max_length=MAX_LENGTH
    )


def _xlm_roberta_tokenizer() -> Any:
    """A SentencePiece-style Unigram model (``▁word`` pieces) as XLM-R's fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    characters = _LETTERS + _LETTERS.upper() + _DIGITS + _PUNCTUATION
    pieces = [
        *specials,
        ("▁", -3.0),
        *((f"▁{word}", -2.0) for word in WORDS),
        *((c, -5.0) for c in characters),
        *((f"▁{c}", -4.0) for c in characters),
    ]
    pieces = list(dict(pieces).items())
    pieces.append(("<mask>", 0.0))
    backend = Tokenizer(models.Unigram(pieces, unk_id=3))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return XLMRobertaTokenizerFast(tokenizer_object=backend, model_max_length=MAX_LENGTH)


def _tokenizer(family: str, folder: Path) -> Any:
    import transformers

    if family in {"bert", "minilm"}:
        return _wordpiece_tokenizer(folder, transformers.BertTokenizerFast)
    if family == "distilbert":
        return _wordpiece_tokenizer(folder, transformers.DistilBertTokenizerFast)
    if family == "electra":
        return _wordpiece_tokenizer(folder, transformers.ElectraTokenizerFast)
    if family == "mpnet":
        return _mpnet_tokenizer(folder)
    if family == "roberta":
        return _roberta_tokenizer(folder)
    if family == "xlm-roberta":
        return _xlm_roberta_tokenizer()
    raise ValueError(f"no tiny model for family {family!r}; families: {', '.join(SHAPES)}")


# -- configs and weights ------------------------------------------------------------------
def _config(family: str, vocab_size: int, pad_token_id: int, overrides: dict[str, Any]) -> Any:
    import transformers

    shape = {**TINY_CONFIG, **(_MINILM_SHAPE if family == "minilm" else {})}
    if family in {"roberta", "xlm-roberta", "mpnet"}:
        # Positions start after the padding index, as in the real ones (514 for 512 tokens).
        shape["max_position_embeddings"] = MAX_LENGTH + 2
    shape.update(overrides)
    common = {"vocab_size": vocab_size, "pad_token_id": pad_token_id}
    if family in {"bert", "minilm"}:
        return transformers.BertConfig(**common, **shape)
    if family in {"roberta", "xlm-roberta"}:
        config_class = (
            transformers.RobertaConfig if family == "roberta" else transformers.XLMRobertaConfig
        )
        shape.setdefault("type_vocab_size", 1)
        return config_class(**common, bos_token_id=0, eos_token_id=2, **shape)
    if family == "electra":
        shape.setdefault("embedding_size", shape["hidden_size"])
        return transformers.ElectraConfig(**common, **shape)
    if family == "mpnet":
        return transformers.MPNetConfig(**common, bos_token_id=0, eos_token_id=2, **shape)
    if family == "distilbert":
        renamed = {
            "hidden_size": "dim",
            "num_hidden_layers": "n_layers",
            "num_attention_heads": "n_heads",
            "intermediate_size": "hidden_dim",
        }
        return transformers.DistilBertConfig(
            **common, **{renamed.get(key, key): value for key, value in shape.items()}
        )
    raise ValueError(f"no tiny model for family {family!r}; families: {', '.join(SHAPES)}")


def _perturb_affine(model: Any, std: float) -> None:
    """Random biases and LayerNorm scales (around 1): trained models have both."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, std)
            elif "LayerNorm" in name or "layer_norm" in name:
                parameter.normal_(1.0, std)


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def _write_sentence_transformers_files(
    folder: Path, dimension: int, pooling: str, normalize: bool, max_seq_length: int
) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
        (folder / "2_Normalize").mkdir(exist_ok=True)
    _write_json(folder / "modules.json", modules)
    _write_json(
        folder / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": dimension,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    _write_json(
        folder / "sentence_bert_config.json",
        {"max_seq_length": max_seq_length, "do_lower_case": False},
    )
    _write_json(
        folder / "config_sentence_transformers.json",
        {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )


def _folder_name(family: str, kind: str, options: dict[str, Any]) -> str:
    name = f"{family}-{kind}"
    if options:
        digest = hashlib.sha256(
            json.dumps(options, sort_keys=True, default=str).encode()
        ).hexdigest()
        name += f"-{digest[:10]}"
    return name


def make_tiny_model_dir(
    root: str | os.PathLike[str],
    family: str,
    kind: str = "cross-encoder",
    *,
    pooling: str = "mean",
    normalize: bool = True,
    max_seq_length: int = MAX_LENGTH,
    seed: int = 0,
    bias_std: float = 0.0,
    name: str | None = None,
    **config_overrides: Any,
) -> Path:
    """Save a tiny random model of one family in a new folder under ``root``.

    Args:
        root: the parent folder; the model goes to ``root / name``.
        family: one of :data:`SHAPES` (``"bert"``, ``"roberta"``, ``"xlm-roberta"``,
            ``"distilbert"``, ``"electra"``, ``"mpnet"``, ``"minilm"``).
        kind: ``"cross-encoder"`` (``*ForSequenceClassification``, one label) or
            ``"bi-encoder"`` (the bare encoder in sentence-transformers layout).
        pooling: ``"mean"`` or ``"cls"`` (bi-encoders).
        normalize: add the ``Normalize`` module (bi-encoders).
        max_seq_length: ``sentence_bert_config.json``'s limit (bi-encoders).
        seed: ``torch.manual_seed`` before the weights are drawn: same seed, same weights.
        bias_std: when positive, biases are drawn from N(0, bias_std) and LayerNorm
            scales from N(1, bias_std) instead of Hugging Face's zeros and ones.
        name: the folder name; derived from the arguments when ``None``.
        **config_overrides: any config field, e.g. ``initializer_range=0.02``,
            ``num_hidden_layers=1``, ``hidden_act="relu"``, ``embedding_size=16`` (electra).

    Returns:
        The model folder.
    """
    import torch
    import transformers

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if pooling not in {"mean", "cls"}:
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
    options: dict[str, Any] = dict(config_overrides)
    if kind == "bi-encoder" and (pooling, normalize, max_seq_length) != ("mean", True, MAX_LENGTH):
        options.update(pooling=pooling, normalize=normalize, max_seq_length=max_seq_length)
    if seed:
        options["seed"] = seed
    if bias_std:
        options["bias_std"] = bias_std
    folder = Path(root) / (name or _folder_name(family, kind, options))
    folder.mkdir(parents=True, exist_ok=False)

    tokenizer = _tokenizer(family, folder)
    config = _config(family, len(tokenizer), tokenizer.pad_token_id, config_overrides)
    torch.manual_seed(seed)
    if kind == "cross-encoder":
        config.num_labels = 1
        model = transformers.AutoModelForSequenceClassification.from_config(config)
    else:
        model = transformers.AutoModel.from_config(config)
    if bias_std:
        _perturb_affine(model, bias_std)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if kind == "bi-encoder":
        _write_sentence_transformers_files(
            folder, config.hidden_size, pooling, normalize, max_seq_length
        )
    return folder


def make_unsupported_model_dir(root: str | os.PathLike[str], model_type: str = "gpt2") -> Path:
    """A tiny model of an architecture relcomp has no adapter for (``gpt2`` or ``t5``)."""
    import torch
    import transformers

    folder = Path(root) / f"unsupported-{model_type}"
    torch.manual_seed(0)
    if model_type == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=64,
            n_positions=32,
            n_embd=16,
            n_layer=1,
            n_head=2,
            num_labels=1,
            pad_token_id=0,
        )
        model = transformers.GPT2ForSequenceClassification(config)
    elif model_type == "t5":
        config = transformers.T5Config(
            vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2
        )
        model = transformers.T5EncoderModel(config)
    else:
        raise ValueError(f"model_type must be 'gpt2' or 't5', got {model_type!r}")
    model.save_pretrained(folder)
    return folder


def assets_dir() -> Path:
    """``../shared/assets`` beside the repository, or ``$RELCOMP_ASSETS``."""
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "assets"
    return Path(os.environ.get("RELCOMP_ASSETS", default))
