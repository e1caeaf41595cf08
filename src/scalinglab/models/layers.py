"""Building blocks for the decoder models: activations, LayerNorm, attention, MLP.

Dtype policy (STYLE.md #13): parameters are float32 (`param_dtype`), matmuls run in the
compute dtype (`dtype`), LayerNorm statistics and the softmax run in float32.

Activations stay flattened to (B*T, D) between blocks and are reshaped only inside
attention: on CPU the weight gradient of a Dense applied to a 3-D input contracts two
dimensions and is about 2.5x slower than the same Dense on a 2-D input (PERF-NOTES.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = jnp.dtype

INIT_STD = 0.02  # GPT-2 initialisation scale

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    # The tanh approximation (GPT-2's); PyTorch's equivalent is GELU(approximate="tanh").
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    # swiglu's elementwise part; the gating itself lives in `Mlp` (two input projections).
    "swiglu": jax.nn.silu,
}
GATED_ACTIVATIONS = frozenset({"swiglu"})


def activation_fn(name: str) -> Callable[[Array], Array]:
    """The elementwise function for an activation name (swiglu -> silu, applied to the gate)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; allowed: {', '.join(_ACTIVATIONS)}"
        ) from None


def dense_init(std: float = INIT_STD) -> nn.initializers.Initializer:
    """Normal(0, std) kernels, as in GPT-2."""
    return nn.initializers.normal(stddev=std)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with statistics in float32; params `scale` and `bias`."""

    dtype: Dtype = jnp.float32
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        centred = x32 - mean
        var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(var + self.eps) * scale + bias
        return y.astype(self.dtype)


def rotary_tables(seq_len: int, d_head: int, base: float = 10000.0) -> tuple[Array, Array]:
    """cos and sin tables of shape (T, Dh/2) for rotary position embeddings (float32)."""
    inv_freq = 1.0 / (base ** (jnp.arange(0, d_head, 2, dtype=jnp.float32) / d_head))
    angles_TxF = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(angles_TxF), jnp.sin(angles_TxF)


def apply_rotary(x_BxTxHxDh: Array, cos_TxF: Array, sin_TxF: Array) -> Array:
    """Rotate pairs (first half, second half) of each head's features by position (GPT-NeoX)."""
    half = x_BxTxHxDh.shape[-1] // 2
    x1, x2 = x_BxTxHxDh[..., :half], x_BxTxHxDh[..., half:]
    cos = cos_TxF[None, :, None, :].astype(x_BxTxHxDh.dtype)
    sin = sin_TxF[None, :, None, :].astype(x_BxTxHxDh.dtype)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention on flattened (B*T, D) activations.

    One fused qkv projection; the softmax runs in float32. `out_std` is the init scale of
    the output projection (GPT-2 scales residual projections by 1/sqrt(2 * n_layer)).
    """

    n_head: int
    seq_len: int
    rotary: bool = False
    dropout: float = 0.0
    out_std: float = INIT_STD
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BTxD: Array, *, deterministic: bool = True) -> Array:
        bt, d = x_BTxD.shape
        t, h = self.seq_len, self.n_head
        b, dh = bt // t, d // h
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
        qkv_BTx3D = nn.Dense(3 * d, kernel_init=dense_init(), name="qkv", **dense)(x_BTxD)
        qkv_BxTx3xHxDh = qkv_BTx3D.reshape(b, t, 3, h, dh)
        q_BxTxHxDh = qkv_BxTx3xHxDh[:, :, 0]
        k_BxTxHxDh = qkv_BxTx3xHxDh[:, :, 1]
        v_BxTxHxDh = qkv_BxTx3xHxDh[:, :, 2]
        if self.rotary:
            cos_TxF, sin_TxF = rotary_tables(t, dh)
            q_BxTxHxDh = apply_rotary(q_BxTxHxDh, cos_TxF, sin_TxF)
            k_BxTxHxDh = apply_rotary(k_BxTxHxDh, cos_TxF, sin_TxF)
        q_BxTxHxDh = q_BxTxHxDh * jnp.asarray(1.0 / math.sqrt(dh), self.dtype)
        att_BxHxTxT = jnp.einsum("bthd,bshd->bhts", q_BxTxHxDh, k_BxTxHxDh).astype(jnp.float32)
        causal_TxT = jnp.tril(jnp.ones((t, t), dtype=bool))
        att_BxHxTxT = jnp.where(causal_TxT, att_BxHxTxT, jnp.finfo(jnp.float32).min)
        probs_BxHxTxT = jax.nn.softmax(att_BxHxTxT, axis=-1).astype(self.dtype)
        y_BxTxHxDh = jnp.einsum("bhts,bshd->bthd", probs_BxHxTxT, v_BxTxHxDh)
        y_BTxD = y_BxTxHxDh.reshape(bt, d)
        y_BTxD = nn.Dense(d, kernel_init=dense_init(self.out_std), name="proj", **dense)(y_BTxD)
        return nn.Dropout(self.dropout)(y_BTxD, deterministic=deterministic)


class Mlp(nn.Module):
    """Feed-forward block on (B*T, D): up projection, activation, down projection.

    A gated activation (swiglu) uses two input projections, `gate` and `up`, and computes
    silu(gate) * up; the others use one, `up`.
    """

    d_ff: int
    activation: str = "gelu"
    dropout: float = 0.0
    out_std: float = INIT_STD
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BTxD: Array, *, deterministic: bool = True) -> Array:
        d = x_BTxD.shape[-1]
        act = activation_fn(self.activation)
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
        up_BTxF = nn.Dense(self.d_ff, kernel_init=dense_init(), name="up", **dense)(x_BTxD)
        if self.activation in GATED_ACTIVATIONS:
            gate_BTxF = nn.Dense(self.d_ff, kernel_init=dense_init(), name="gate", **dense)(x_BTxD)
            h_BTxF = act(gate_BTxF) * up_BTxF
        else:
            h_BTxF = act(up_BTxF)
        y_BTxD = nn.Dense(d, kernel_init=dense_init(self.out_std), name="down", **dense)(h_BTxF)
        return nn.Dropout(self.dropout)(y_BTxD, deterministic=deterministic)
