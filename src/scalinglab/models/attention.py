"""Multi-head attention modules, shared by every family, and T5's relative position bias.

`Attention` is the one attention layer: self-attention (GPT, BERT, T5 encoder and decoder;
causal or not, with an optional additive bias or mask) and cross-attention (T5's decoder over
the encoder). `CachedAttention` is its incremental-decoding twin for `CachedGPT`, with the same
parameters. Both split heads, call `kernels.attention` (which picks the fast hand-written VJP
or the general path) and merge heads; nothing here knows about the kernels' layout tricks.

Parameter names, the same in every family (the weight-decay mask and the parameter counts
rely on them): self-attention `qkv` (one fused projection) and `proj`; cross-attention `q`,
`kv` (fused) and `proj`, the same 4 d^2 + 4 d parameters either way.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalinglab.models.kernels import attention
from scalinglab.models.layers import INIT_STD, apply_rotary, dense, dense_init, rotary_tables

Array = jax.Array
Dtype = jnp.dtype


def split_heads(x_BxTxND: Array, n_head: int, n: int) -> tuple[Array, ...]:
    """n fused projections (B, T, n * D) -> n arrays of heads (B, H, T, D / H)."""
    b, t, nd = x_BxTxND.shape
    x_NxBxHxTxDh = x_BxTxND.reshape(b, t, n, n_head, nd // (n * n_head)).transpose(2, 0, 3, 1, 4)
    return tuple(x_NxBxHxTxDh[i] for i in range(n))


def merge_heads(y_BxHxTxDh: Array) -> Array:
    """Heads (B, H, T, Dh) -> (B, T, H * Dh)."""
    b, h, t, dh = y_BxHxTxDh.shape
    return y_BxHxTxDh.transpose(0, 2, 1, 3).reshape(b, t, h * dh)


class Attention(nn.Module):
    """Multi-head attention on (B, T, D): self-attention (`kv` None) or cross-attention over
    `kv` (B, S, D). Scores and softmax in float32.

    `causal`: each position sees itself and earlier ones. `rotary` rotates queries and keys by
    position (self-attention only). `dropout` is on the attention probabilities (from the
    "dropout" rng, only when not `deterministic`); residual dropout is the caller's.
    `out_std` is the init scale of the output projection (GPT-2 scales residual projections
    by 1/sqrt(2 * n_layer)).
    """

    n_head: int
    causal: bool = False
    rotary: bool = False
    dropout: float = 0.0
    out_std: float = INIT_STD
    in_std: float = INIT_STD  # init scale of the input projections (qkv; q and kv)
    qk_gain: float = 1.0  # extra factor on q: muP's 1/Dh scores (see `scalinglab.mup`)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x_BxTxD: Array,
        kv_BxSxD: Array | None = None,
        *,
        bias: Array | None = None,
        mask: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        d, h = x_BxTxD.shape[-1], self.n_head
        if kv_BxSxD is None:
            qkv_BxTx3D = dense(x_BxTxD, 3 * d, name="qkv", dtype=self.dtype, std=self.in_std)
            q_BxHxTxDh, k_BxHxSxDh, v_BxHxSxDh = split_heads(qkv_BxTx3D, h, 3)
        else:
            if self.rotary:
                raise ValueError("rotary positions apply to self-attention only")
            q_BxTxD = dense(x_BxTxD, d, name="q", dtype=self.dtype, std=self.in_std)
            (q_BxHxTxDh,) = split_heads(q_BxTxD, h, 1)
            kv_BxSx2D = dense(kv_BxSxD, 2 * d, name="kv", dtype=self.dtype, std=self.in_std)
            k_BxHxSxDh, v_BxHxSxDh = split_heads(kv_BxSx2D, h, 2)
        if self.rotary:
            cos_TxF, sin_TxF = rotary_tables(x_BxTxD.shape[1], d // h)
            q_BxHxTxDh = apply_rotary(q_BxHxTxDh, cos_TxF, sin_TxF)
            k_BxHxSxDh = apply_rotary(k_BxHxSxDh, cos_TxF, sin_TxF)
        if self.qk_gain != 1.0:
            q_BxHxTxDh = q_BxHxTxDh * jnp.asarray(self.qk_gain, q_BxHxTxDh.dtype)
        use_dropout = self.dropout > 0.0 and not deterministic
        y_BxHxTxDh = attention(
            q_BxHxTxDh,
            k_BxHxSxDh,
            v_BxHxSxDh,
            causal=self.causal,
            bias=bias,
            mask=mask,
            dropout_rate=self.dropout,
            dropout_key=self.make_rng("dropout") if use_dropout else None,
            deterministic=deterministic,
        )
        y_BxTxD = merge_heads(y_BxHxTxDh)
        return dense(y_BxTxD, d, name="proj", dtype=self.dtype, std=self.out_std)


class CachedAttention(nn.Module):
    """Causal self-attention for incremental decoding, with an explicit KV cache.

    Same parameters (`qkv`, `proj`) and computation as a causal `Attention`, but the T new
    tokens (B, T, D) sit at positions pos..pos+T-1: their keys and values are written into
    the cache `{"k", "v"}` (each (B, H, S, Dh)) and query t attends to slots s <= pos + t
    (later slots, not yet written, are masked as the full pass masks future keys). Returns
    the output and the updated cache; the cache is a plain pytree passed in and out (not a
    flax "cache" collection), so a decode step is one pure jitted function. Inference only.
    """

    n_head: int
    rotary: bool = False
    qk_gain: float = 1.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x_BxTxD: Array, cache: dict[str, Array], pos: Array | int
    ) -> tuple[Array, dict[str, Array]]:
        t, d = x_BxTxD.shape[1:]
        s, dh = cache["k"].shape[2:]
        qkv_BxTx3D = dense(x_BxTxD, 3 * d, name="qkv", dtype=self.dtype)
        q_BxHxTxDh, k_BxHxTxDh, v_BxHxTxDh = split_heads(qkv_BxTx3D, self.n_head, 3)
        if self.rotary:
            cos_SxF, sin_SxF = rotary_tables(s, dh)
            cos_TxF = jax.lax.dynamic_slice_in_dim(cos_SxF, pos, t)
            sin_TxF = jax.lax.dynamic_slice_in_dim(sin_SxF, pos, t)
            q_BxHxTxDh = apply_rotary(q_BxHxTxDh, cos_TxF, sin_TxF)
            k_BxHxTxDh = apply_rotary(k_BxHxTxDh, cos_TxF, sin_TxF)
        k_BxHxSxDh = jax.lax.dynamic_update_slice_in_dim(
            cache["k"], k_BxHxTxDh.astype(cache["k"].dtype), pos, axis=2
        )
        v_BxHxSxDh = jax.lax.dynamic_update_slice_in_dim(
            cache["v"], v_BxHxTxDh.astype(cache["v"].dtype), pos, axis=2
        )
        if self.qk_gain != 1.0:
            q_BxHxTxDh = q_BxHxTxDh * jnp.asarray(self.qk_gain, q_BxHxTxDh.dtype)
        visible_TxS = jnp.arange(s)[None, :] <= pos + jnp.arange(t)[:, None]
        y_BxHxTxDh = attention(q_BxHxTxDh, k_BxHxSxDh, v_BxHxSxDh, mask=visible_TxS)
        y_BxTxD = dense(merge_heads(y_BxHxTxDh), d, name="proj", dtype=self.dtype)
        return y_BxTxD, {"k": k_BxHxSxDh, "v": v_BxHxSxDh}


def relative_position_bucket(
    relative_position: np.ndarray,
    *,
    bidirectional: bool,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> np.ndarray:
    """T5's bucketing of `key position - query position` (Raffel et al. 2020, mesh-tf).

    Half the buckets (all of them when unidirectional) cover one direction: the first half of
    those are exact offsets 0..n/2-1, the rest are logarithmically wider up to `max_distance`,
    beyond which every offset shares the last bucket. Bidirectional: keys after the query use
    the upper half. Unidirectional (causal decoder): keys after the query fall in bucket 0,
    which the causal mask hides anyway. Pure numpy: the offsets are static shapes.
    """
    n = -np.asarray(relative_position, dtype=np.int64)
    ret = np.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0).astype(np.int64) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    log_ratio = np.log(np.maximum(n, 1) / max_exact) / np.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return ret + np.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """T5 relative position bias: a learned scalar per (bucket, head), added to the attention
    scores. One instance per stack is shared by all its layers. The table is named
    `embedding` under a module whose name contains "embed" (e.g. `relpos_embed`), so it counts
    as a position embedding (excluded from non-embedding N, no weight decay)."""

    n_head: int
    bidirectional: bool
    num_buckets: int = 32
    max_distance: int = 128

    @nn.compact
    def __call__(self, q_len: int, k_len: int) -> Array:
        table = self.param("embedding", dense_init(), (self.num_buckets, self.n_head), jnp.float32)
        rel_TxS = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
        buckets_TxS = relative_position_bucket(
            rel_TxS,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        return jnp.transpose(table[buckets_TxS], (2, 0, 1))  # (H, T, S)
