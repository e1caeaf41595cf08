"""Analytic parameter and FLOP counts against hand counts and initialised models."""

from __future__ import annotations

from scalinglab.config import ModelConfig
from scalinglab.flops import (
    param_counts,
)

CFG = ModelConfig(n_layer=2, d_model=64, n_head=2, vocab_size=256, max_seq_len=16)


def test_param_counts_by_hand() -> None:
    # per layer: 2 norms 4*64; qkv 64*192+192; proj 64*64+64; up 64*256+256; down 256*64+64
    layer = 4 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64)
    assert layer == 49_984
    non_embedding = 2 * layer + 2 * 64  # + final norm
    embedding = 256 * 64 + 16 * 64
    assert param_counts(CFG) == {
        "total": embedding + non_embedding,
        "embedding": embedding,
        "non_embedding": non_embedding,
    }
