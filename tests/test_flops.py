"""Analytic parameter and FLOP counts against hand counts and initialised models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from scalinglab.config import ModelConfig
from scalinglab.flops import (
    flops_for_tokens,
    flops_per_token,
    model_flops_per_step,
    param_counts,
    tokens_for_flops,
)
from scalinglab.models import build_model, count_params

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


def test_flops_per_token_by_hand() -> None:
    n = 100_096
    assert flops_per_token(CFG, 16, "kaplan") == 6 * n
    assert flops_per_token(CFG, 16, "full") == 3 * (2 * n + 2 * 256 * 64 + 2 * 2 * 16 * 64)
    assert model_flops_per_step(CFG, 16, 8) == flops_per_token(CFG, 16, "full") * 16 * 8
    c = flops_for_tokens(1e6, CFG, 16, "full")
    assert tokens_for_flops(c, CFG, 16, "full") == pytest.approx(1e6)
    with pytest.raises(ValueError, match="allowed: kaplan, full"):
        flops_per_token(CFG, 16, "palm")


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"activation": "swiglu"},
        {"tie_embeddings": False},
        {"positions": "rotary"},
        {"activation": "swiglu", "tie_embeddings": False, "positions": "rotary", "d_ff": 96},
        {"n_layer": 3, "d_model": 48, "n_head": 3, "vocab_size": 100, "max_seq_len": 32},
    ],
)
def test_param_counts_equal_an_initialised_model(kw: dict) -> None:
    cfg = ModelConfig(**{**CFG.model_dump(), **kw})
    tokens = jnp.zeros((1, 16), jnp.int32)
    shapes = jax.eval_shape(build_model(cfg).init, jax.random.key(0), tokens)
    assert count_params(shapes["params"]) == param_counts(cfg)
