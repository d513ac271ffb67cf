"""estimate_size: the stored-size formula, checked by hand on a tiny model."""

from __future__ import annotations

import math

import pytest

from relcomp.artifacts import CompressionPlan
from relcomp.compression import (
    Int4,
    Int8,
    estimate_size,
    matrix_bytes,
    weight_bytes,
    weight_bytes_table,
)

# The tiny bert cross-encoder: hidden 32, 2 layers, 4 heads of 8, FFN 64, 64 positions.
HIDDEN, FFN, POSITIONS, TYPES = 32, 64, 64, 2
#: (out, in) of its Linears: per layer q, k, v, o, ffn_in, ffn_out; then pooler, classifier.
LAYER_LINEARS = [(32, 32)] * 4 + [(64, 32), (32, 64)]
HEAD_LINEARS = [(32, 32), (1, 32)]


def fixed_bytes(vocab: int) -> int:
    embeddings = (vocab + POSITIONS + TYPES) * HIDDEN
    layer_norms = 2 * HIDDEN * (1 + 2 * 2)  # embeddings' and two per layer, weight and bias
    return 4 * (embeddings + layer_norms)


def test_fp32_and_uniform_int8_by_hand(tiny_model):
    model = tiny_model("bert")
    vocab = model.config.vocab_size
    shapes = LAYER_LINEARS * 2 + HEAD_LINEARS
    fp32 = estimate_size(model, CompressionPlan(model.name, {}))
    assert fp32.total_bytes == fixed_bytes(vocab) + sum(4 * (o * i + o) for o, i in shapes)
    assert fp32.total_bytes == 4 * sum(p.numel() for p in model.model.parameters())
    assert fp32.bits_per_weight == 32 and fp32.params_removed == 0
    int8 = estimate_size(model, CompressionPlan(model.name, {"_default": "int8"}))
    # one byte a weight, one fp32 scale a row, fp32 bias
    assert int8.linear_bytes == sum(o * i + 4 * o + 4 * o for o, i in shapes) == 21288
    assert int8.fixed_bytes == fixed_bytes(vocab)
    assert int8.bits_per_weight == pytest.approx(8 * (17440 + 4 * 481) / 17440)
    assert int8.embedding_bytes == 4 * (vocab + POSITIONS + TYPES) * HIDDEN


def test_mixed_plan_by_hand(tiny_model):
    model = tiny_model("bert")
    first, second = model.layer_modules()
    plan = CompressionPlan(
        model.name,
        [
            (
                first.layer,
                "prune_neurons(indices=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])",
            ),
            (first.ffn_out, "int4(block_size=16)"),
            (second.layer, "prune_heads(0,1)"),
            (second.query, "low_rank(rank=4)"),
            ("bert.pooler.dense", "prune_weights(ratio=0.5)"),
            ("classifier", "fp16"),
        ],
        budget={"size_mb": 1.0},
    )
    linears = {
        # layer 0: fp32 attention; FFN keeps 48 neurons
        "attention0": 4 * (4 * (32 * 32) + 4 * 32),
        "ffn_in0": 4 * 48 * 32 + 4 * 48,
        "ffn_out0": (32 * 48) // 2 + 4 * 32 * 3 + 4 * 32,  # half a byte, 3 blocks a row, bias
        # layer 1: 2 of 4 heads left, so q/k/v keep 16 rows and o 16 columns
        "query1": 4 * (16 * 4 + 4 * 32) + 4 * 16,  # factors 16×4 and 4×32
        "key_value1": 2 * (4 * 16 * 32 + 4 * 16),
        "output1": 4 * 32 * 16 + 4 * 32,
        "ffn1": 4 * (64 * 32 + 64) + 4 * (32 * 64 + 32),
        "pooler": 4 * 32 * 16 + math.ceil(32 * 32 / 8) + 4 * 32,  # half the weights + mask
        "classifier": 2 * 32 + 2,
    }
    estimate = estimate_size(model, plan)
    assert estimate.linear_bytes == sum(linears.values())
    assert estimate.total_bytes == fixed_bytes(model.config.vocab_size) + sum(linears.values())
    assert estimate.linears[second.query].kept == (16, 32)
    assert estimate.linears[first.ffn_out].actions == ("int4(block_size=16)",)
    stored = (4 * 1024 + 48 * 32 + 32 * 48) + (16 * 4 + 4 * 32 + 2 * 16 * 32 + 32 * 16 + 2 * 2048)
    stored += 32 * 16 + 32
    assert estimate.params_removed == pytest.approx(1 - stored / 17440)
    achieved = plan.with_achieved(model).achieved
    assert achieved == estimate.achieved()
    assert achieved["bytes"] == estimate.total_bytes
    assert achieved["size_mb"] == pytest.approx(estimate.total_bytes / 1e6)
    assert achieved["sparsity"] == 0.0


def test_formula_helpers():
    assert matrix_bytes(384, 1536, Int8()) == 384 * 1536 + 4 * 384
    assert matrix_bytes(384, 1536, Int8(per_channel=False)) == 384 * 1536 + 4
    assert matrix_bytes(384, 1536, Int4(block_size=32)) == 384 * 768 + 4 * 384 * 48
    assert matrix_bytes(3, 5, Int4(block_size=16)) == 8 + 4 * 3  # 7.5 bytes round up
    assert weight_bytes(10, 20, "fp16") == (400, 20, 200)
    assert weight_bytes(10, 20, ["int8", "prune_weights(ratio=0.5)"]) == (100 + 40 + 25, 40, 100)
    assert weight_bytes(10, 20, "low_rank(rank=2)", bias=False) == (4 * 60, 0, 60)


def test_bytes_table_for_planners(tiny_model):
    model = tiny_model("bert")
    table = weight_bytes_table(model)
    query = model.layer_modules()[0].query
    assert table[query] == {
        "fp32": 4 * 1024 + 128,
        "fp16": 2 * 1024 + 64,
        "int8(per_channel=True)": 1024 + 128 + 128,
        "int4(block_size=32)": 512 + 128 + 128,
    }
    assert set(table) == set(model.named_linears())
