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
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = jnp.dtype

INIT_STD = 0.02  # GPT-2 initialisation scale

_GELU_C = math.sqrt(2.0 / math.pi)


@jax.custom_vjp
def gelu_tanh(x: Array) -> Array:
    """GELU, tanh approximation, with a hand-written derivative.

    Autodiff of the tanh form makes XLA compute and store several (B*T, F) residuals in the
    forward pass; this VJP keeps only the input and recomputes tanh in one fused backward pass
    (measured: see benchmarks/README.md).
    """
    return 0.5 * x * (1.0 + jnp.tanh(_GELU_C * (x + 0.044715 * x * x * x)))


def _gelu_fwd(x: Array) -> tuple[Array, Array]:
    return gelu_tanh(x), x


def _gelu_bwd(x: Array, g: Array) -> tuple[Array]:
    x2 = x * x
    t = jnp.tanh(_GELU_C * (x + 0.044715 * x2 * x))
    dy_dx = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x2)
    return (g * dy_dx,)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    # The tanh approximation (GPT-2's); PyTorch's equivalent is GELU(approximate="tanh").
    "gelu": lambda x: gelu_tanh(x),
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


def untied_head(vocab_size: int, dtype: jnp.dtype) -> nn.Dense:
    """The untied unembedding `lm_head` (no bias, float32 kernel) of the GPT and BERT."""
    return nn.Dense(
        vocab_size,
        use_bias=False,
        kernel_init=dense_init(),
        dtype=dtype,
        param_dtype=jnp.float32,
        name="lm_head",
    )


def _ln_stats(x: Array, eps: float) -> tuple[Array, Array]:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    return mean, jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, eps: float = 1e-5) -> Array:
    """LayerNorm of a (N, D) float32 array, with a hand-written backward pass.

    The VJP saves only the per-row mean and reciprocal std and computes the input gradient in
    one fused expression, instead of the several passes autodiff produces.
    """
    mean, rstd = _ln_stats(x, eps)
    return (x - mean) * rstd * scale + bias


def _ln_fwd(x: Array, scale: Array, bias: Array, eps: float) -> tuple[Array, tuple]:
    mean, rstd = _ln_stats(x, eps)
    return (x - mean) * rstd * scale + bias, (x, mean, rstd, scale)


def _ln_bwd(eps: float, res: tuple, g: Array) -> tuple[Array, Array, Array]:
    x, mean, rstd, scale = res
    xhat = (x - mean) * rstd
    gx = g * scale
    dx = rstd * (
        gx - jnp.mean(gx, axis=-1, keepdims=True) - xhat * jnp.mean(gx * xhat, -1, keepdims=True)
    )
    axes = tuple(range(x.ndim - 1))
    return dx, jnp.sum(g * xhat, axis=axes), jnp.sum(g, axis=axes)


layer_norm.defvjp(_ln_fwd, _ln_bwd)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with statistics in float32; params `scale` and `bias`."""

    dtype: Dtype = jnp.float32
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
        return layer_norm(x.astype(jnp.float32), scale, bias, self.eps).astype(self.dtype)


def rotary_tables(seq_len: int, d_head: int, base: float = 10000.0) -> tuple[Array, Array]:
    """cos and sin tables of shape (T, Dh/2) for rotary position embeddings (float32)."""
    inv_freq = 1.0 / (base ** (jnp.arange(0, d_head, 2, dtype=jnp.float32) / d_head))
    angles_TxF = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(angles_TxF), jnp.sin(angles_TxF)


def apply_rotary(x_BxHxTxDh: Array, cos_TxF: Array, sin_TxF: Array) -> Array:
    """Rotate pairs (first half, second half) of each head's features by position (GPT-NeoX)."""
    half = x_BxHxTxDh.shape[-1] // 2
    x1, x2 = x_BxHxTxDh[..., :half], x_BxHxTxDh[..., half:]
    cos, sin = cos_TxF.astype(x_BxHxTxDh.dtype), sin_TxF.astype(x_BxHxTxDh.dtype)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _mask_bias(visible: Array) -> Array:
    """0 where visible, the most negative float32 elsewhere: added to float32 scores it gives
    exactly what `where(visible, scores, min)` gives (min absorbs any finite score), but XLA
    fuses an add into the score matmul and the softmax, and a select it does not (a select
    made the masked softmax about 8x slower at (16, 4, 128, 128); profiled)."""
    return jnp.where(visible, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def _swap(x: Array) -> Array:
    """Swap the last two axes (a (T, Dh) block to (Dh, T))."""
    return jnp.swapaxes(x, -1, -2)


def _softmax_rows(s: Array, visible: Array) -> Array:
    """Row softmax of scores in float32, entries not `visible` masked by the additive bias."""
    return jax.nn.softmax(s.astype(jnp.float32) + _mask_bias(visible), axis=-1)


def _probs(qs: Array, k: Array, visible: Array) -> Array:
    """softmax(qs k^T + mask) for already scaled queries, in float32."""
    return _softmax_rows(jnp.einsum("bhtd,bhds->bhts", qs, _swap(k)), visible)


def _scaled(q: Array) -> Array:
    """q * 1/sqrt(Dh): the scale goes on q (T x Dh), not on the scores (T x T)."""
    return q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)


def _causal_probs(q_BxHxTxDh: Array, k_BxHxTxDh: Array) -> Array:
    """Softmax of the causally masked, scaled scores, in float32."""
    t = q_BxHxTxDh.shape[-2]
    return _probs(_scaled(q_BxHxTxDh), k_BxHxTxDh, jnp.tril(jnp.ones((t, t), dtype=bool)))


def _scores_grad(p: Array, dy: Array, v: Array, dtype: Dtype) -> Array:
    """Gradient of the unscaled scores from the probabilities and the output's cotangent."""
    dp = jnp.einsum("bhtd,bhds->bhts", dy, _swap(v)).astype(jnp.float32)
    p32 = p.astype(jnp.float32)
    return (p32 * (dp - jnp.sum(dp * p32, -1, keepdims=True))).astype(dtype)


def _keys_grad_t(a: Array, b: Array) -> Array:
    """a^T b, a key-side gradient (dV^T or dK^T), in its computed (Dh, keys) layout.

    Every matmul contracts the left operand's last axis with the right operand's
    second-to-last, the form XLA's CPU backend runs fastest. The barrier stops XLA from
    folding the caller's final transpose back into the dot, which turned it into the slow
    form (contracting the left operand's first axis; 8 Eigen dots, 6.5 ms a step, profiled).
    """
    return jax.lax.optimization_barrier(jnp.einsum("bhdt,bhts->bhds", _swap(a), b))


@jax.custom_vjp
def causal_attention(q_BxHxTxDh: Array, k_BxHxTxDh: Array, v_BxHxTxDh: Array) -> Array:
    """softmax(q k^T / sqrt(Dh) + causal mask) v, per batch and head, with a hand-written VJP.

    The backward pass reuses the saved probabilities and writes every matmul in the form
    XLA's CPU backend runs fastest (see `_keys_grad_t`).
    """
    return _attn_fwd(q_BxHxTxDh, k_BxHxTxDh, v_BxHxTxDh)[0]


def _attn_fwd(q: Array, k: Array, v: Array) -> tuple[Array, tuple]:
    p_BxHxTxT = _causal_probs(q, k).astype(v.dtype)
    return jnp.einsum("bhts,bhsd->bhtd", p_BxHxTxT, v), (q, k, v, p_BxHxTxT)


def _attn_bwd(res: tuple, dy_BxHxTxDh: Array) -> tuple[Array, Array, Array]:
    q, k, v, p_BxHxTxT = res
    ds_BxHxTxT = _scores_grad(p_BxHxTxT, dy_BxHxTxDh, v, q.dtype)
    dq = _scaled(jnp.einsum("bhts,bhsd->bhtd", ds_BxHxTxT, k))
    dkt_BxHxDhxT = _keys_grad_t(_scaled(q), ds_BxHxTxT)
    dvt_BxHxDhxT = _keys_grad_t(dy_BxHxTxDh, p_BxHxTxT)
    return dq, _swap(dkt_BxHxDhxT), _swap(dvt_BxHxDhxT)


causal_attention.defvjp(_attn_fwd, _attn_bwd)


@jax.custom_vjp
def block_causal_attention(q: Array, k: Array, v: Array) -> Array:
    """`causal_attention` computed in two query blocks: the first half of the queries only
    scores the first half of the keys (the rest is masked anyway), so a quarter of the (T, T)
    work is skipped. Same values and gradients as `causal_attention` (tested)."""
    return _blk_fwd(q, k, v)[0]


def _blk_fwd(q: Array, k: Array, v: Array) -> tuple[Array, tuple]:
    h = q.shape[-2] // 2
    qs = _scaled(q)
    tri_hxh = jnp.tril(jnp.ones((h, h), dtype=bool))
    vis_hxT = jnp.concatenate([jnp.ones((h, h), dtype=bool), tri_hxh], axis=1)
    pa = _probs(qs[..., :h, :], k[..., :h, :], tri_hxh).astype(v.dtype)
    pb = _probs(qs[..., h:, :], k, vis_hxT).astype(v.dtype)
    ya = jnp.einsum("bhts,bhsd->bhtd", pa, v[..., :h, :])
    yb = jnp.einsum("bhts,bhsd->bhtd", pb, v)
    # The scaled q is what the backward needs; saving it (not q) lets XLA fuse the scaling
    # into the copy that slices q out of the fused qkv projection.
    return jnp.concatenate([ya, yb], axis=-2), (qs, k, v, pa, pb)


def _blk_bwd(res: tuple, dy: Array) -> tuple[Array, Array, Array]:
    qs, k, v, pa, pb = res
    t = qs.shape[-2]
    h = t // 2
    dya, dyb = dy[..., :h, :], dy[..., h:, :]
    dsa = _scores_grad(pa, dya, v[..., :h, :], qs.dtype)
    dsb = _scores_grad(pb, dyb, v, qs.dtype)
    dq = _scaled(
        jnp.concatenate(
            [
                jnp.einsum("bhts,bhsd->bhtd", dsa, k[..., :h, :]),
                jnp.einsum("bhts,bhsd->bhtd", dsb, k),
            ],
            axis=-2,
        )
    )
    # Block A only reaches the first h keys: its key-side gradients are padded to T.
    pad = [(0, 0)] * (qs.ndim - 1) + [(0, t - h)]
    dvt = _keys_grad_t(dyb, pb) + jnp.pad(_keys_grad_t(dya, pa), pad)
    dkt = _keys_grad_t(qs[..., h:, :], dsb) + jnp.pad(_keys_grad_t(qs[..., :h, :], dsa), pad)
    return dq, _swap(dkt), _swap(dvt)


block_causal_attention.defvjp(_blk_fwd, _blk_bwd)


def _qkv_heads(x_BTxD: Array, b: int, h: int, dense: dict) -> tuple[Array, Array, Array]:
    """q, k, v as (B, H, T, Dh) from one fused `qkv` projection of (B*T, D) activations (call
    from a module's compact method; the Dense is that module's `qkv`)."""
    bt, d = x_BTxD.shape
    qkv_BTx3D = nn.Dense(3 * d, kernel_init=dense_init(), name="qkv", **dense)(x_BTxD)
    qkv_3xBxHxTxDh = qkv_BTx3D.reshape(b, bt // b, 3, h, d // h).transpose(2, 0, 3, 1, 4)
    return qkv_3xBxHxTxDh[0], qkv_3xBxHxTxDh[1], qkv_3xBxHxTxDh[2]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention on flattened (B*T, D) activations.

    One fused qkv projection; scores and softmax in float32. `out_std` is the init scale of
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
        q_BxHxTxDh, k_BxHxTxDh, v_BxHxTxDh = _qkv_heads(x_BTxD, b, h, dense)
        if self.rotary:
            cos_TxF, sin_TxF = rotary_tables(t, dh)
            q_BxHxTxDh = apply_rotary(q_BxHxTxDh, cos_TxF, sin_TxF)
            k_BxHxTxDh = apply_rotary(k_BxHxTxDh, cos_TxF, sin_TxF)
        if self.dropout > 0 and not deterministic:
            # Dropout on the attention probabilities needs its mask in the backward pass, so
            # this path uses autodiff; the hand-written VJP serves dropout-free training.
            p_BxHxTxT = _causal_probs(q_BxHxTxDh, k_BxHxTxDh)
            p_BxHxTxT = nn.Dropout(self.dropout)(p_BxHxTxT, deterministic=False)
            y_BxHxTxDh = jnp.einsum(
                "bhts,bhsd->bhtd", p_BxHxTxT.astype(v_BxHxTxDh.dtype), v_BxHxTxDh
            )
        else:
            attend = block_causal_attention if t % 2 == 0 and t >= 64 else causal_attention
            y_BxHxTxDh = attend(q_BxHxTxDh, k_BxHxTxDh, v_BxHxTxDh)
        y_BTxD = y_BxHxTxDh.transpose(0, 2, 1, 3).reshape(bt, d)
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


def cached_attention(
    q_BxHxTxDh: Array, k_BxHxSxDh: Array, v_BxHxSxDh: Array, pos: Array | int
) -> Array:
    """Causal attention of T new queries at positions pos..pos+T-1 over an S-slot KV cache.

    Query t may attend to cache slots s <= pos + t; slots beyond (not yet written, zeros)
    are masked exactly as the full pass masks future keys, so the logits equal the training
    path's (`causal_attention`) up to float rounding. Inference only: no custom VJP.
    """
    t, dh = q_BxHxTxDh.shape[-2:]
    s = k_BxHxSxDh.shape[-2]
    kt_BxHxDhxS = jnp.swapaxes(k_BxHxSxDh, -1, -2)
    s_BxHxTxS = jnp.einsum("bhtd,bhds->bhts", q_BxHxTxDh, kt_BxHxDhxS).astype(jnp.float32)
    visible_TxS = jnp.arange(s)[None, :] <= pos + jnp.arange(t)[:, None]
    p_BxHxTxS = _softmax_rows(s_BxHxTxS * (1.0 / math.sqrt(dh)), visible_TxS)
    p_BxHxTxS = p_BxHxTxS.astype(v_BxHxSxDh.dtype)
    return jnp.einsum("bhts,bhsd->bhtd", p_BxHxTxS, v_BxHxSxDh)


class CachedSelfAttention(nn.Module):
    """`CausalSelfAttention` for incremental decoding, with an explicit KV cache.

    Same parameters (`qkv`, `proj`) and computation as the training module, but the T new
    tokens (flattened (B*T, D)) sit at positions pos..pos+T-1: their keys and values are
    written into the cache `{"k", "v"}` (each (B, H, S, Dh)) and the queries attend over all
    S slots. Returns the output and the updated cache. The cache is a plain pytree passed in
    and out (not a flax "cache" collection), so a decode step is one pure jitted function.
    """

    n_head: int
    rotary: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x_BTxD: Array, cache: dict[str, Array], pos: Array | int
    ) -> tuple[Array, dict[str, Array]]:
        bt, d = x_BTxD.shape
        b, h, s, dh = cache["k"].shape
        t = bt // b
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
        q_BxHxTxDh, k_BxHxTxDh, v_BxHxTxDh = _qkv_heads(x_BTxD, b, h, dense)
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
        y_BxHxTxDh = cached_attention(q_BxHxTxDh, k_BxHxSxDh, v_BxHxSxDh, pos)
        y_BTxD = y_BxHxTxDh.transpose(0, 2, 1, 3).reshape(bt, d)
        y_BTxD = nn.Dense(d, kernel_init=dense_init(), name="proj", **dense)(y_BTxD)
        return y_BTxD, {"k": k_BxHxSxDh, "v": v_BxHxSxDh}
