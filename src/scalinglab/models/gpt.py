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

from scalinglab import mup
from scalinglab.config import ModelConfig
from scalinglab.models.attention import CachedAttention
from scalinglab.models.blocks import Block, Mlp
from scalinglab.models.layers import (
    INIT_STD,
    LayerNorm,
    dense_init,
    lookup,
    on_rows,
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


def _block(cfg: ModelConfig, name: str) -> Block:
    """Decoder block `name`: causal self-attention and the feed-forward block, residual
    projections initialised with std 0.02 / sqrt(2 * n_layer) (GPT-2). Under muP every hidden
    matrix's std shrinks by sqrt(width_mult) and the queries by sqrt(width_mult) too, which
    turns 1/sqrt(Dh) scores into sqrt(Dh_base)/Dh ones (`scalinglab.mup`)."""
    shrink = mup.hidden_init_factor(cfg)
    return Block(
        n_head=cfg.n_head,
        d_ff=cfg.ff_dim,
        activation=cfg.activation,
        causal=True,
        rotary=cfg.positions == "rotary",
        dropout=cfg.dropout,
        out_std=INIT_STD / math.sqrt(2 * cfg.n_layer) * shrink,
        in_std=INIT_STD * shrink,
        qk_gain=mup.qk_gain(cfg),
        dtype=jnp.dtype(cfg.dtype),
        name=name,
    )


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
    cfg: ModelConfig, dtype: jnp.dtype, token_embed: nn.Embed, x_BxTxD: jax.Array
) -> jax.Array:
    """Final LayerNorm and float32 logits from the unembedding (tied to `token_embed`, or an
    untied `lm_head`)."""
    x_BxTxD = LayerNorm(dtype=dtype, name="norm_f")(x_BxTxD)
    if cfg.tie_embeddings:
        logits_BxTxV = on_rows(token_embed.attend, x_BxTxD)
    else:
        logits_BxTxV = untied_head(x_BxTxD, cfg.vocab_size, dtype)
    return mup.readout(cfg, logits_BxTxV.astype(jnp.float32))


class GPT(nn.Module):
    """Decoder-only LM: int32 tokens (B, T) -> float32 logits (B, T, vocab_size).

    Dropout (embeddings, attention probabilities, residual branches) draws from the "dropout"
    rng collection and is active only when `deterministic=False`.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array, *, deterministic: bool = True) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        t = tokens_BxT.shape[1]
        token_embed = _token_embed(cfg, dtype)
        x_BxTxD = lookup(token_embed, tokens_BxT)
        if cfg.positions == "learned":
            pos_TxD = PositionEmbed(cfg.position_rows(t), cfg.d_model, name="pos_embed")(t)
            x_BxTxD = x_BxTxD + pos_TxD.astype(dtype)
        x_BxTxD = nn.Dropout(cfg.dropout)(x_BxTxD, deterministic=deterministic)
        for i in range(cfg.n_layer):
            x_BxTxD = _block(cfg, f"block_{i}")(x_BxTxD, deterministic=deterministic)
        return _lm_head(cfg, dtype, token_embed, x_BxTxD)


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
        self, x_BxTxD: jax.Array, cache: dict[str, jax.Array], pos: jax.Array | int
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        h_BxTxD = LayerNorm(dtype=dtype, name="norm_1")(x_BxTxD)
        y_BxTxD, cache = CachedAttention(
            n_head=cfg.n_head,
            rotary=cfg.positions == "rotary",
            qk_gain=mup.qk_gain(cfg),
            dtype=dtype,
            name="attn",
        )(h_BxTxD, cache, pos)
        x_BxTxD = x_BxTxD + y_BxTxD
        h_BxTxD = LayerNorm(dtype=dtype, name="norm_2")(x_BxTxD)
        mlp = Mlp(d_ff=cfg.ff_dim, activation=cfg.activation, dtype=dtype, name="mlp")
        return x_BxTxD + mlp(h_BxTxD), cache


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
        t = tokens_BxT.shape[1]
        token_embed = _token_embed(cfg, dtype)
        x_BxTxD = lookup(token_embed, tokens_BxT)
        if cfg.positions == "learned":
            rows = cfg.position_rows()
            table = PositionEmbed(rows, cfg.d_model, name="pos_embed")(rows)
            x_BxTxD = x_BxTxD + jax.lax.dynamic_slice_in_dim(table, pos, t).astype(dtype)
        new_cache = []
        for i in range(cfg.n_layer):
            x_BxTxD, layer_cache = CachedBlock(cfg, name=f"block_{i}")(x_BxTxD, cache[i], pos)
            new_cache.append(layer_cache)
        return _lm_head(cfg, dtype, token_embed, x_BxTxD), new_cache
