"""Scaled dot-product attention: the one entry point `attention` and the kernels behind it.

Every model family (GPT, BERT, T5 self- and cross-attention, cached decoding) calls
`attention(q, k, v, causal=..., bias=..., mask=..., dropout...)` on (B, H, T, Dh) queries and
(B, H, S, Dh) keys and values. It picks its path itself:

- Fast path, whenever no dropout is drawn on the probabilities: `_attend`, a custom VJP whose
  backward reuses the saved probabilities. It is tuned for XLA's CPU backend (each measured in
  benchmarks/README.md, "Train step", items 2-3 and 9-12):
  * masks (causal, `mask`) are an additive float32 bias, 0 or the float32 minimum, never a
    select: XLA fuses an add into the score matmul and the softmax, a select it does not;
  * `1/sqrt(Dh)` scales q (T x Dh), not the scores (T x S);
  * every backward matmul contracts the left operand's last axis, and the key-side gradients
    stay in their computed (Dh, S) layout behind optimisation barriers (`_keys_grad_t`);
  * causal self-attention with an even T >= 64 runs in two query blocks (block-causal): the
    first half of the queries only scores the first half of the keys, the rest being masked
    anyway, so a quarter of the (T, T) work is skipped.
- General path (plain autodiff) when dropout is drawn on the probabilities: the dropout mask
  would be needed in the backward pass, so that one path is left to autodiff.

Both compute softmax(q k^T / sqrt(Dh) + bias + masks) v with scores and softmax in float32
(tested against a plain reference, values and gradients, in tests/test_attention.py).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

Array = jax.Array

MASKED = float(jnp.finfo(jnp.float32).min)  # additive bias of a hidden key
BLOCK_CAUSAL_MIN_LEN = 64  # shortest (even) causal T computed in two query blocks

Block = tuple[int, int, int]  # queries [q0, q1) score keys [0, k1)


def attention(
    q_BxHxTxDh: Array,
    k_BxHxSxDh: Array,
    v_BxHxSxDh: Array,
    *,
    causal: bool = False,
    bias: Array | None = None,
    mask: Array | None = None,
    dropout_rate: float = 0.0,
    dropout_key: Array | None = None,
    deterministic: bool = True,
) -> Array:
    """softmax(q k^T / sqrt(Dh) + bias, masked) v per batch and head: (B, H, T, Dh).

    `causal`: query t sees keys s <= t (self-attention, T == S). `bias`: additive float32,
    broadcastable to (B, H, T, S) (T5's relative-position bias; differentiable). `mask`: bool,
    broadcastable to (B, H, T, S), True where attention is allowed (padding, a KV cache's
    unwritten slots). Dropout on the probabilities is drawn from `dropout_key` when
    `dropout_rate > 0` and not `deterministic`.
    """
    t, s = q_BxHxTxDh.shape[-2], k_BxHxSxDh.shape[-2]
    if causal and t != s:
        raise ValueError(f"causal attention needs as many queries as keys (got {t} and {s})")
    extra = _additive_bias(bias, mask)
    if dropout_rate > 0.0 and not deterministic:
        if dropout_key is None:
            raise ValueError("attention dropout needs a dropout_key")
        return _attend_with_dropout(
            q_BxHxTxDh, k_BxHxSxDh, v_BxHxSxDh, extra, causal, dropout_rate, dropout_key
        )
    return _attend(q_BxHxTxDh, k_BxHxSxDh, v_BxHxSxDh, extra, causal)


def _mask_bias(visible: Array) -> Array:
    """0 where visible, MASKED elsewhere: added to float32 scores it gives what
    `where(visible, scores, MASKED)` gives (MASKED absorbs any finite score), but XLA fuses an
    add into the score matmul and the softmax, and a select it does not (a select made the
    masked softmax about 8x slower at (16, 4, 128, 128); profiled)."""
    return jnp.where(visible, 0.0, MASKED).astype(jnp.float32)


def _combine(a: Array | None, b: Array | None) -> Array | None:
    """The sum of two additive biases (either may be None), floored at MASKED so two hidden
    marks never overflow to -inf (a fully hidden row then stays uniform, as a select gives)."""
    if a is None or b is None:
        return a if b is None else b
    return jnp.maximum(a + b, MASKED)


def _additive_bias(bias: Array | None, mask: Array | None) -> Array | None:
    """`bias` and `mask` as one float32 additive bias of at least 2 dims (T, S), or None."""
    extra = _combine(
        None if bias is None else jnp.asarray(bias, jnp.float32),
        None if mask is None else _mask_bias(jnp.asarray(mask, bool)),
    )
    if extra is not None and extra.ndim < 2:
        extra = extra.reshape((1,) * (2 - extra.ndim) + extra.shape)
    return extra


def _query_blocks(t: int, s: int, causal: bool) -> tuple[Block, ...]:
    """Block-causal for an even causal T >= 64 (two halves of the queries), else one block."""
    if causal and t % 2 == 0 and t >= BLOCK_CAUSAL_MIN_LEN:
        h = t // 2
        return ((0, h, h), (h, t, t))
    return ((0, t, s),)


def _rows(x: Array, q0: int, q1: int) -> Array:
    """Query rows [q0, q1) of x (..., T, *); x itself when that is all of them."""
    return x if (q0, q1) == (0, x.shape[-2]) else x[..., q0:q1, :]


def _keys(x: Array, k1: int) -> Array:
    """The first k1 keys (or values) of x (..., S, Dh)."""
    return x if k1 == x.shape[-2] else x[..., :k1, :]


def _block_bias(extra: Array | None, causal: bool, blk: Block) -> Array | None:
    """The additive bias of one query block: its causal mask plus its part of `extra`."""
    q0, q1, k1 = blk
    causal_bias = None
    if causal:
        causal_bias = _mask_bias(jnp.arange(k1)[None, :] <= jnp.arange(q0, q1)[:, None])
    if extra is not None:
        if extra.shape[-2] != 1:
            extra = _rows(extra, q0, q1)
        if extra.shape[-1] != 1 and k1 != extra.shape[-1]:
            extra = extra[..., :k1]
    return _combine(causal_bias, extra)


def _swap(x: Array) -> Array:
    """Swap the last two axes (a (T, Dh) block to (Dh, T))."""
    return jnp.swapaxes(x, -1, -2)


def _scaled(q: Array) -> Array:
    """q * 1/sqrt(Dh): the scale goes on q (T x Dh), not on the scores (T x S)."""
    return q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)


def _probs(qs: Array, k: Array, bias: Array | None) -> Array:
    """softmax(qs k^T + bias) over keys for already scaled queries, in float32."""
    s_32 = jnp.einsum("bhtd,bhds->bhts", qs, _swap(k)).astype(jnp.float32)
    return jax.nn.softmax(s_32 if bias is None else s_32 + bias, axis=-1)


def _scores_grad(p: Array, dy: Array, v: Array) -> Array:
    """Gradient of the scores (float32) from the probabilities and the output's cotangent."""
    dp = jnp.einsum("bhtd,bhds->bhts", dy, _swap(v)).astype(jnp.float32)
    p32 = p.astype(jnp.float32)
    return p32 * (dp - jnp.sum(dp * p32, -1, keepdims=True))


def _keys_grad_t(a: Array, b: Array) -> Array:
    """a^T b, a key-side gradient (dV^T or dK^T), in its computed (Dh, keys) layout.

    Every matmul contracts the left operand's last axis with the right operand's
    second-to-last, the form XLA's CPU backend runs fastest. The barrier stops XLA from
    folding the caller's final transpose back into the dot, which turned it into the slow
    form (contracting the left operand's first axis; 8 Eigen dots, 6.5 ms a step, profiled).
    """
    return jax.lax.optimization_barrier(jnp.einsum("bhdt,bhts->bhds", _swap(a), b))


def _pad_keys(x: Array, n: int) -> Array:
    """x (..., k1) padded with n zero columns to all S keys (a block that saw only k1)."""
    return x if n == 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n)])


def _sum_to_shape(x: Array, shape: tuple[int, ...]) -> Array:
    """x summed over the axes `shape` broadcasts: the cotangent of a broadcast bias."""
    x = x.sum(axis=tuple(range(x.ndim - len(shape))))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attend(q: Array, k: Array, v: Array, extra: Array | None, causal: bool) -> Array:
    """The fast path: attention with a hand-written VJP (see the module docstring)."""
    return _attend_fwd(q, k, v, extra, causal)[0]


def _attend_fwd(q: Array, k: Array, v: Array, extra: Array | None, causal: bool) -> tuple:
    qs = _scaled(q)
    ps, ys = [], []
    for blk in _query_blocks(q.shape[-2], k.shape[-2], causal):
        q0, q1, k1 = blk
        p = _probs(_rows(qs, q0, q1), _keys(k, k1), _block_bias(extra, causal, blk))
        ps.append(p.astype(v.dtype))
        ys.append(jnp.einsum("bhts,bhsd->bhtd", ps[-1], _keys(v, k1)))
    y = ys[0] if len(ys) == 1 else jnp.concatenate(ys, axis=-2)
    # The scaled q is what the backward needs; saving it (not q) lets XLA fuse the scaling
    # into the copy that slices q out of a fused qkv projection.
    return y, (qs, k, v, extra, tuple(ps))


def _attend_bwd(causal: bool, res: tuple, dy: Array) -> tuple:
    qs, k, v, extra, ps = res
    s = k.shape[-2]
    dqs, dkts, dvts, ds_rows = [], [], [], []
    for blk, p in zip(_query_blocks(qs.shape[-2], s, causal), ps, strict=True):
        q0, q1, k1 = blk
        dy_b = _rows(dy, q0, q1)
        ds_32 = _scores_grad(p, dy_b, _keys(v, k1))
        ds = ds_32.astype(qs.dtype)
        dqs.append(jnp.einsum("bhts,bhsd->bhtd", ds, _keys(k, k1)))
        # A block that reached only the first k1 keys gets zero key-side gradients beyond.
        dkts.append(_pad_keys(_keys_grad_t(_rows(qs, q0, q1), ds), s - k1))
        dvts.append(_pad_keys(_keys_grad_t(dy_b, p), s - k1))
        if extra is not None:
            ds_rows.append(_pad_keys(ds_32, s - k1))
    dq = _scaled(dqs[0] if len(dqs) == 1 else jnp.concatenate(dqs, axis=-2))
    # Last block first (its term is never padded): dK^T = dK_B^T + pad(dK_A^T).
    dkt, dvt = sum(dkts[-2::-1], dkts[-1]), sum(dvts[-2::-1], dvts[-1])
    dextra = None
    if extra is not None:
        ds_full = ds_rows[0] if len(ds_rows) == 1 else jnp.concatenate(ds_rows, axis=-2)
        dextra = _sum_to_shape(ds_full, extra.shape)
    return dq, _swap(dkt), _swap(dvt), dextra


_attend.defvjp(_attend_fwd, _attend_bwd)


def _attend_with_dropout(
    q: Array,
    k: Array,
    v: Array,
    extra: Array | None,
    causal: bool,
    rate: float,
    key: Array,
) -> Array:
    """The general path: dropout on the probabilities (kept entries scaled by 1/(1 - rate)),
    differentiated by autodiff, which keeps the dropout mask for the backward pass."""
    t, s = q.shape[-2], k.shape[-2]
    p = _probs(_scaled(q), k, _block_bias(extra, causal, (0, t, s)))
    keep = jax.random.bernoulli(key, 1.0 - rate, p.shape)
    p = jnp.where(keep, p / (1.0 - rate), 0.0)
    return jnp.einsum("bhts,bhsd->bhtd", p.astype(v.dtype), v)
