"""General attention and feed-forward blocks for the encoder models (BERT, T5).

`layers.py` holds the GPT's tuned blocks, whose attention hard-codes the causal mask (its
hand-written VJP depends on it). The encoders need attention with any mask (none, causal,
cross-attention over another sequence), an additive position bias (T5's relative buckets) and
dropout on the attention probabilities, so they use the plain-autodiff blocks here. Parameter
names follow `layers.py` (`qkv`, `proj`, `up`/`gate`/`down`, `scale`/`bias`), so the weight-decay
mask and the parameter counts treat every family alike.

Dropout, one rate for all three places the model zoo names:
- attention: on the attention probabilities (`MultiHeadAttention`);
- MLP: on the hidden activation of the feed-forward block (`FeedForward`);
- residual: on each sub-layer's output before it joins the residual stream, and on the
  embeddings (applied by the caller's block).

Dtype policy as the GPT's: float32 params, matmuls in the compute dtype, scores and softmax in
float32.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scalinglab.models.layers import (
    GATED_ACTIVATIONS,
    INIT_STD,
    activation_fn,
    apply_rotary,
    dense_init,
    rotary_tables,
)

Array = jax.Array
Dtype = jnp.dtype


def causal_mask(q_len: int, k_len: int | None = None) -> Array:
    """bool (1, 1, Tq, Tk): query t may attend to keys s <= t."""
    k_len = q_len if k_len is None else k_len
    return jnp.tril(jnp.ones((q_len, k_len), dtype=bool))[None, None]


def dot_product_attention(
    q_BxHxTxDh: Array,
    k_BxHxSxDh: Array,
    v_BxHxSxDh: Array,
    *,
    mask: Array | None = None,
    bias_HxTxS: Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
) -> Array:
    """softmax(q k^T / sqrt(Dh) + bias, masked) v, with scores and softmax in float32.

    `mask` is a bool array broadcastable to (B, H, T, S), True where attention is allowed;
    None attends everywhere (bidirectional). `dropout_rng` None means no dropout.
    """
    dh = q_BxHxTxDh.shape[-1]
    s_BxHxTxS = jnp.einsum("bhtd,bhsd->bhts", q_BxHxTxDh, k_BxHxSxDh).astype(jnp.float32)
    s_BxHxTxS = s_BxHxTxS * (1.0 / math.sqrt(dh))
    if bias_HxTxS is not None:
        s_BxHxTxS = s_BxHxTxS + bias_HxTxS.astype(jnp.float32)[None]
    if mask is not None:
        s_BxHxTxS = jnp.where(mask, s_BxHxTxS, jnp.finfo(jnp.float32).min)
    p_BxHxTxS = jax.nn.softmax(s_BxHxTxS, axis=-1)
    if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, p_BxHxTxS.shape)
        p_BxHxTxS = jnp.where(keep, p_BxHxTxS / (1.0 - dropout_rate), 0.0)
    p_BxHxTxS = p_BxHxTxS.astype(v_BxHxSxDh.dtype)
    return jnp.einsum("bhts,bhsd->bhtd", p_BxHxTxS, v_BxHxSxDh)


class MultiHeadAttention(nn.Module):
    """Multi-head attention on (B, T, D) inputs: self-attention (`kv` None) or cross-attention.

    Self-attention has one fused `qkv` projection; cross-attention has `q` on the queries and a
    fused `kv` on the attended sequence (the same 4 d^2 + 4 d parameters either way). `rotary`
    rotates queries and keys by position (self-attention only). Residual dropout is the
    caller's; `dropout` here is on the attention probabilities.
    """

    n_head: int
    dropout: float = 0.0
    rotary: bool = False
    out_std: float = INIT_STD
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x_BxTxD: Array,
        kv_BxSxD: Array | None = None,
        *,
        mask: Array | None = None,
        bias_HxTxS: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        b, t, d = x_BxTxD.shape
        h = self.n_head
        dh = d // h
        dense = dict(kernel_init=dense_init(), dtype=self.dtype, param_dtype=jnp.float32)
        x_BTxD = x_BxTxD.reshape(b * t, d)  # 2-D Dense: fast weight gradient on CPU (layers.py)
        if kv_BxSxD is None:
            s = t
            qkv_BTx3D = nn.Dense(3 * d, name="qkv", **dense)(x_BTxD)
            qkv_3xBxHxTxDh = qkv_BTx3D.reshape(b, t, 3, h, dh).transpose(2, 0, 3, 1, 4)
            q_BxHxTxDh, k_BxHxSxDh, v_BxHxSxDh = qkv_3xBxHxTxDh
        else:
            if self.rotary:
                raise ValueError("rotary positions apply to self-attention only")
            s = kv_BxSxD.shape[1]
            q_BTxD = nn.Dense(d, name="q", **dense)(x_BTxD)
            kv_BSx2D = nn.Dense(2 * d, name="kv", **dense)(kv_BxSxD.reshape(b * s, d))
            q_BxHxTxDh = q_BTxD.reshape(b, t, h, dh).transpose(0, 2, 1, 3)
            kv_2xBxHxSxDh = kv_BSx2D.reshape(b, s, 2, h, dh).transpose(2, 0, 3, 1, 4)
            k_BxHxSxDh, v_BxHxSxDh = kv_2xBxHxSxDh
        if self.rotary:
            cos_TxF, sin_TxF = rotary_tables(t, dh)
            q_BxHxTxDh = apply_rotary(q_BxHxTxDh, cos_TxF, sin_TxF)
            k_BxHxSxDh = apply_rotary(k_BxHxSxDh, cos_TxF, sin_TxF)
        use_dropout = not deterministic and self.dropout > 0.0
        y_BxHxTxDh = dot_product_attention(
            q_BxHxTxDh,
            k_BxHxSxDh,
            v_BxHxSxDh,
            mask=mask,
            bias_HxTxS=bias_HxTxS,
            dropout_rate=self.dropout,
            dropout_rng=self.make_rng("dropout") if use_dropout else None,
        )
        y_BTxD = y_BxHxTxDh.transpose(0, 2, 1, 3).reshape(b * t, d)
        proj = nn.Dense(
            d,
            kernel_init=dense_init(self.out_std),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="proj",
        )
        return proj(y_BTxD).reshape(b, t, d)


class FeedForward(nn.Module):
    """Feed-forward block on (B, T, D): `up` (and `gate` for swiglu), activation, dropout on
    the hidden activation, `down`. Same parameters as `layers.Mlp`; residual dropout is the
    caller's."""

    d_ff: int
    activation: str = "gelu"
    dropout: float = 0.0
    out_std: float = INIT_STD
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: Array, *, deterministic: bool = True) -> Array:
        b, t, d = x_BxTxD.shape
        act = activation_fn(self.activation)
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
        x_BTxD = x_BxTxD.reshape(b * t, d)
        up_BTxF = nn.Dense(self.d_ff, kernel_init=dense_init(), name="up", **dense)(x_BTxD)
        if self.activation in GATED_ACTIVATIONS:
            gate_BTxF = nn.Dense(self.d_ff, kernel_init=dense_init(), name="gate", **dense)(x_BTxD)
            h_BTxF = act(gate_BTxF) * up_BTxF
        else:
            h_BTxF = act(up_BTxF)
        h_BTxF = nn.Dropout(self.dropout)(h_BTxF, deterministic=deterministic)
        down = nn.Dense(d, kernel_init=dense_init(self.out_std), name="down", **dense)
        return down(h_BTxF).reshape(b, t, d)


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
