"""GPT-style decoder-only language model (Flax linen).

Token embedding, learned or rotary positions, pre-LayerNorm blocks (causal self-attention and
a feed-forward block), a final LayerNorm and a tied or untied output head.

Parameter paths are chosen for the weight-decay mask and the parameter counts: embeddings live
under `token_embed/embedding` and `pos_embed/embedding`, LayerNorms under `norm_*` with params
`scale`/`bias`, every bias is named `bias`, and an untied head is `lm_head/kernel`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from scalinglab.config import ModelConfig
from scalinglab.models.layers import INIT_STD, CausalSelfAttention, LayerNorm, Mlp, dense_init


class PositionEmbed(nn.Module):
    """Learned absolute positions: a (max_len, D) float32 table; returns its first rows."""

    max_len: int
    d_model: int

    @nn.compact
    def __call__(self, seq_len: int) -> jax.Array:
        table = self.param("embedding", dense_init(), (self.max_len, self.d_model), jnp.float32)
        return table[:seq_len]


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(norm_1(x)), then x + mlp(norm_2(x))."""

    cfg: ModelConfig
    seq_len: int

    @nn.compact
    def __call__(self, x_BTxD: jax.Array, *, deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        out_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        h = LayerNorm(dtype=dtype, name="norm_1")(x_BTxD)
        x_BTxD = x_BTxD + CausalSelfAttention(
            n_head=cfg.n_head,
            seq_len=self.seq_len,
            rotary=cfg.positions == "rotary",
            dropout=cfg.dropout,
            out_std=out_std,
            dtype=dtype,
            name="attn",
        )(h, deterministic=deterministic)
        h = LayerNorm(dtype=dtype, name="norm_2")(x_BTxD)
        return x_BTxD + Mlp(
            d_ff=cfg.ff_dim,
            activation=cfg.activation,
            dropout=cfg.dropout,
            out_std=out_std,
            dtype=dtype,
            name="mlp",
        )(h, deterministic=deterministic)


class GPT(nn.Module):
    """Decoder-only LM: int32 tokens (B, T) -> float32 logits (B, T, vocab_size).

    Dropout (embedding and residual) draws from the "dropout" rng collection and is active only
    when `deterministic=False`.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array, *, deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        b, t = tokens_BxT.shape
        token_embed = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            embedding_init=dense_init(),
            dtype=dtype,
            param_dtype=jnp.float32,
            name="token_embed",
        )
        x_BTxD = token_embed(tokens_BxT.reshape(b * t))
        if cfg.positions == "learned":
            if cfg.max_seq_len is None:
                raise ValueError("model.max_seq_len must be set for learned positions")
            if t > cfg.max_seq_len:
                raise ValueError(f"sequence length {t} exceeds model.max_seq_len {cfg.max_seq_len}")
            pos_TxD = PositionEmbed(cfg.max_seq_len, cfg.d_model, name="pos_embed")(t)
            x_BTxD = (x_BTxD.reshape(b, t, -1) + pos_TxD.astype(dtype)).reshape(b * t, -1)
        x_BTxD = nn.Dropout(cfg.dropout)(x_BTxD, deterministic=deterministic)
        for i in range(cfg.n_layer):
            x_BTxD = Block(cfg, seq_len=t, name=f"block_{i}")(x_BTxD, deterministic=deterministic)
        x_BTxD = LayerNorm(dtype=dtype, name="norm_f")(x_BTxD)
        if cfg.tie_embeddings:
            logits_BTxV = token_embed.attend(x_BTxD)
        else:
            logits_BTxV = nn.Dense(
                cfg.vocab_size,
                use_bias=False,
                kernel_init=dense_init(),
                dtype=dtype,
                param_dtype=jnp.float32,
                name="lm_head",
            )(x_BTxD)
        return logits_BTxV.astype(jnp.float32).reshape(b, t, cfg.vocab_size)
