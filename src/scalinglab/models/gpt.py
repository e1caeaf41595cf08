"""GPT-style decoder-only language model (Flax linen).

Token embedding, learned or rotary positions, pre-LayerNorm blocks (causal self-attention and
a feed-forward block), a final LayerNorm and a tied or untied output head.

`GPT` is the training path. `CachedGPT` is the incremental-decoding path beside it: the same
parameter tree (a trained checkpoint's params apply to both) and the same computation, but the
tokens sit at positions pos..pos+T-1 and attention reads and extends an explicit KV cache
(`init_cache`), so generating a token costs one position, not a full forward pass.

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
from scalinglab.models.layers import (
    INIT_STD,
    CachedSelfAttention,
    CausalSelfAttention,
    LayerNorm,
    Mlp,
    dense_init,
    untied_head,
)

# One layer's KV cache: {"k": (B, H, S, Dh), "v": (B, H, S, Dh)}; a model's: one per layer.
KVCache = list[dict[str, jax.Array]]


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


def _token_embed(cfg: ModelConfig, dtype: jnp.dtype) -> nn.Embed:
    """The `token_embed` table (call from a compact method; GPT and CachedGPT share names)."""
    return nn.Embed(
        cfg.vocab_size,
        cfg.d_model,
        embedding_init=dense_init(),
        dtype=dtype,
        param_dtype=jnp.float32,
        name="token_embed",
    )


def _lm_head(
    cfg: ModelConfig, dtype: jnp.dtype, token_embed: nn.Embed, x_BTxD: jax.Array
) -> jax.Array:
    """Final LayerNorm and unembedding (tied to `token_embed`, or an untied `lm_head`)."""
    x_BTxD = LayerNorm(dtype=dtype, name="norm_f")(x_BTxD)
    if cfg.tie_embeddings:
        return token_embed.attend(x_BTxD)
    return untied_head(cfg.vocab_size, dtype)(x_BTxD)


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
        token_embed = _token_embed(cfg, dtype)
        x_BTxD = token_embed(tokens_BxT.reshape(b * t))
        if cfg.positions == "learned":
            pos_TxD = PositionEmbed(cfg.position_rows(t), cfg.d_model, name="pos_embed")(t)
            x_BTxD = (x_BTxD.reshape(b, t, -1) + pos_TxD.astype(dtype)).reshape(b * t, -1)
        x_BTxD = nn.Dropout(cfg.dropout)(x_BTxD, deterministic=deterministic)
        for i in range(cfg.n_layer):
            x_BTxD = Block(cfg, seq_len=t, name=f"block_{i}")(x_BTxD, deterministic=deterministic)
        logits_BTxV = _lm_head(cfg, dtype, token_embed, x_BTxD)
        return logits_BTxV.astype(jnp.float32).reshape(b, t, cfg.vocab_size)


def init_cache(cfg: ModelConfig, batch: int, length: int) -> KVCache:
    """An empty (zero) KV cache with `length` slots per layer, in the compute dtype.

    `length` bounds prompt + generated tokens; smaller caches make every decode step cheaper
    (attention reads all slots), so `generate` sizes it to exactly what it needs.
    """
    shape = (batch, cfg.n_head, length, cfg.d_model // cfg.n_head)
    dtype = jnp.dtype(cfg.dtype)
    return [
        {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.n_layer)
    ]


class CachedBlock(nn.Module):
    """`Block` with cached attention: same parameter names, same computation."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, x_BTxD: jax.Array, cache: dict[str, jax.Array], pos: jax.Array | int
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        h = LayerNorm(dtype=dtype, name="norm_1")(x_BTxD)
        y_BTxD, cache = CachedSelfAttention(
            n_head=cfg.n_head, rotary=cfg.positions == "rotary", dtype=dtype, name="attn"
        )(h, cache, pos)
        x_BTxD = x_BTxD + y_BTxD
        h = LayerNorm(dtype=dtype, name="norm_2")(x_BTxD)
        mlp = Mlp(d_ff=cfg.ff_dim, activation=cfg.activation, dtype=dtype, name="mlp")
        return x_BTxD + mlp(h), cache


class CachedGPT(nn.Module):
    """GPT for incremental decoding: (tokens (B, T) at positions pos.., cache) -> (logits, cache).

    Applies a `GPT`'s parameters unchanged (`CachedGPT(cfg).apply({"params": params}, ...)`).
    One call with the whole prompt at pos 0 fills the cache (prefill); each later call with
    one token at its position extends it. Logits are float32 (B, T, vocab_size) and equal the
    full forward pass's at the same positions. No dropout: this path is for inference.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, tokens_BxT: jax.Array, cache: KVCache, pos: jax.Array | int
    ) -> tuple[jax.Array, KVCache]:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        b, t = tokens_BxT.shape
        token_embed = _token_embed(cfg, dtype)
        x_BTxD = token_embed(tokens_BxT.reshape(b * t))
        if cfg.positions == "learned":
            rows = cfg.position_rows()
            table = PositionEmbed(rows, cfg.d_model, name="pos_embed")(rows)
            pos_TxD = jax.lax.dynamic_slice_in_dim(table, pos, t)
            x_BTxD = (x_BTxD.reshape(b, t, -1) + pos_TxD.astype(dtype)).reshape(b * t, -1)
        new_cache = []
        for i in range(cfg.n_layer):
            x_BTxD, layer_cache = CachedBlock(cfg, name=f"block_{i}")(x_BTxD, cache[i], pos)
            new_cache.append(layer_cache)
        logits_BTxV = _lm_head(cfg, dtype, token_embed, x_BTxD)
        return logits_BTxV.astype(jnp.float32).reshape(b, t, cfg.vocab_size), new_cache
