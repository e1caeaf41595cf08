"""Analytic parameter and FLOP counts against hand counts and initialised models."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalinglab.config import GPT_SIZES, ModelConfig
from scalinglab.flops import (
    flops_for_tokens,
    flops_per_token,
    model_flops_per_step,
    param_counts,
    tokens_for_flops,
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


def test_flops_per_token_by_hand() -> None:
    """Kaplan et al. 2020, table 1: training is 3x the forward pass; the forward pass costs
    2 N_nonembed + 2 n_layer n_ctx d_attn (causal scores and values) plus, counted in full,
    2 V d for the unembedding. `kaplan` keeps only 6 N_nonembed."""
    n_ne = 2 * 49_984 + 2 * 64
    assert flops_per_token(CFG, 16, "kaplan") == 6 * n_ne
    full = 3 * (2 * n_ne + 2 * 256 * 64 + 2 * 2 * 16 * 64)
    assert full == 711_168
    assert flops_per_token(CFG, 16, "full") == full
    # Budgets: D = C / per-token FLOPs and back; MFU's numerator is the full count per step.
    assert tokens_for_flops(6.0e9, CFG, 16) == pytest.approx(6.0e9 / (6 * n_ne))
    assert flops_for_tokens(1.0e6, CFG, 16) == pytest.approx(1.0e6 * 6 * n_ne)
    assert model_flops_per_step(CFG, 16, 4) == full * 16 * 4


def test_rotary_needs_an_even_head_dimension() -> None:
    ModelConfig(d_model=12, n_head=2, positions="rotary")  # head dimension 6
    ModelConfig(d_model=6, n_head=2, positions="learned")  # 3 is fine without rotation
    with pytest.raises(ValueError, match="even head dimension"):
        ModelConfig(d_model=6, n_head=2, positions="rotary")


def test_param_counts_swiglu_rotary_untied_by_hand() -> None:
    # swiglu: gate and up projections 64->100, down 100->64; rotary: no position table;
    # untied: a separate 64x256 head without bias.
    cfg = ModelConfig(
        n_layer=2,
        d_model=64,
        n_head=2,
        vocab_size=256,
        d_ff=100,
        activation="swiglu",
        positions="rotary",
        tie_embeddings=False,
    )
    layer = 4 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + 2 * (64 * 100 + 100) + (100 * 64 + 64)
    embedding = 256 * 64 + 64 * 256
    assert param_counts(cfg) == {
        "total": embedding + 2 * layer + 2 * 64,
        "embedding": embedding,
        "non_embedding": 2 * layer + 2 * 64,
    }


def _documented_presets() -> list[list[str]]:
    """Rows of the size-preset table in docs/model_zoo.md (the documented contract)."""
    text = (Path(__file__).parents[1] / "docs" / "model_zoo.md").read_text()
    section = text.split("### Size presets")[1].split("\n#")[0]
    rows = [
        line.strip("| ").split(" | ") for line in section.splitlines() if line.startswith("| `")
    ]
    return [[cell.strip("` ") for cell in row] for row in rows]


def test_size_presets_match_the_documented_table() -> None:
    """Each `model.size` preset has the documented shape, and its non-embedding count is the
    documented number, which is L (12 d^2 + 13 d) + 2 d by hand (4x MLP, biases, 2 norms)."""
    rows = _documented_presets()
    assert [r[0] for r in rows] == list(GPT_SIZES)
    for name, n_layer, d_model, n_head, d_head, n_nonembed in rows:
        L, d, h = int(n_layer), int(d_model), int(n_head)
        cfg = ModelConfig(size=name, n_layer=99, d_model=8, n_head=1, vocab_size=256, max_seq_len=8)
        assert (cfg.n_layer, cfg.d_model, cfg.n_head) == (L, d, h), name
        assert d // h == int(d_head), name
        documented = int(n_nonembed.replace(",", ""))
        assert documented == L * (12 * d * d + 13 * d) + 2 * d, name
        assert param_counts(cfg)["non_embedding"] == documented, name
