"""`kernels.attention` against a textbook attention written here: values and gradients for
causal, bidirectional and cross-attention, with an additive bias, with a padding mask, on the
block-causal path (even T >= 64), and the dropout path's rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalinglab.models.kernels import attention
from scalinglab.models.kernels.attention import _query_blocks

B, H, DH = 2, 3, 8


def reference(q, k, v, *, causal=False, bias=None, mask=None):
    """softmax(q k^T / sqrt(Dh) + bias) v with disallowed scores set to -inf: plain jnp,
    differentiated by autodiff (no hand-written VJP, no additive mask, no blocks)."""
    t, s = q.shape[-2], k.shape[-2]
    scores = jnp.einsum("bhtd,bhsd->bhts", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    allowed = jnp.ones((t, s), bool)
    if causal:
        allowed = allowed & (np.arange(s)[None, :] <= np.arange(t)[:, None])
    if mask is not None:
        allowed = allowed & mask
    scores = jnp.where(allowed, scores, -jnp.inf)
    return jnp.einsum("bhts,bhsd->bhtd", jax.nn.softmax(scores, axis=-1), v)


def qkv(t: int, s: int, seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(kq, (B, H, t, DH)),
        jax.random.normal(kk, (B, H, s, DH)),
        jax.random.normal(kv, (B, H, s, DH)),
    )


def padding_mask(s: int) -> np.ndarray:
    """(B, 1, 1, S) True on real keys: sequence 0 has all S, sequence 1 its first S - 3."""
    lengths = np.array([s, s - 3])
    return (np.arange(s)[None, :] < lengths[:, None])[:, None, None, :]


CASES = {
    # name: (causal, T, S, bias shape or None, padding mask)
    "causal-short": (True, 8, 8, None, False),
    "causal-odd-long": (True, 67, 67, None, False),
    "block-causal-64": (True, 64, 64, None, False),
    "block-causal-96": (True, 96, 96, None, False),
    "bidirectional": (False, 10, 10, None, False),
    "cross": (False, 6, 11, None, False),
    "bidirectional-bias": (False, 10, 10, (H, 10, 10), False),
    "causal-bias": (True, 12, 12, (H, 12, 12), False),
    "block-causal-bias": (True, 64, 64, (H, 64, 64), False),
    "padding": (False, 9, 9, None, True),
    "cross-padding-bias": (False, 5, 9, (1, H, 1, 9), True),
    "block-causal-padding": (True, 64, 64, None, True),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_values_and_gradients_match_the_reference(case: str) -> None:
    causal, t, s, bias_shape, padded = CASES[case]
    q, k, v = qkv(t, s)
    bias = None
    if bias_shape is not None:
        bias = 0.5 * jax.random.normal(jax.random.key(7), bias_shape)
    mask = padding_mask(s) if padded else None

    def fast(q, k, v, bias):
        return attention(q, k, v, causal=causal, bias=bias, mask=mask)

    def ref(q, k, v, bias):
        return reference(q, k, v, causal=causal, bias=bias, mask=mask)

    out, vjp = jax.vjp(fast, q, k, v, bias)
    ref_out, ref_vjp = jax.vjp(ref, q, k, v, bias)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=2e-6)
    ct = jax.random.normal(jax.random.key(9), out.shape)
    grads, ref_grads = vjp(ct), ref_vjp(ct)
    for name, g, rg in zip(("q", "k", "v", "bias"), grads, ref_grads, strict=True):
        if rg is None:
            assert g is None
            continue
        assert g.shape == rg.shape, name
        np.testing.assert_allclose(g, rg, rtol=1e-4, atol=2e-5, err_msg=name)


def test_block_causal_is_chosen_for_even_causal_lengths_from_64() -> None:
    assert _query_blocks(64, 64, True) == ((0, 32, 32), (32, 64, 64))
    assert _query_blocks(96, 96, True) == ((0, 48, 48), (48, 96, 96))
    for t, causal in [(62, True), (65, True), (64, False), (8, True)]:
        assert len(_query_blocks(t, t, causal)) == 1


@pytest.mark.parametrize("t", [8, 64])
def test_causal_output_ignores_later_keys(t: int) -> None:
    q, k, v = qkv(t, t, seed=3)
    out = attention(q, k, v, causal=True)
    moved = attention(q, k.at[:, :, -1].add(1.0), v.at[:, :, -1].add(1.0), causal=True) - out
    per_query = np.abs(np.asarray(moved)).max(axis=(0, 1, 3))
    assert per_query[:-1].max() == 0.0 and per_query[-1] > 0


def test_padded_keys_get_no_weight_and_no_gradient() -> None:
    q, k, v = qkv(6, 9, seed=4)
    mask = padding_mask(9)
    out = attention(q, k, v, mask=mask)
    # Changing the padded keys and values of sequence 1 changes nothing.
    k2, v2 = k.at[1, :, -3:].add(5.0), v.at[1, :, -3:].add(5.0)
    np.testing.assert_array_equal(attention(q, k2, v2, mask=mask), out)
    gk, gv = jax.grad(lambda k, v: attention(q, k, v, mask=mask).sum(), argnums=(0, 1))(k, v)
    assert float(jnp.abs(gk[1, :, -3:]).max()) == 0.0
    assert float(jnp.abs(gv[1, :, -3:]).max()) == 0.0


def test_a_fully_masked_row_averages_the_values_instead_of_nan() -> None:
    # What a select with the float32 minimum gives: equal scores, a uniform average. The
    # padding bias and the causal mask together must not overflow to -inf (NaN).
    q, k, v = qkv(4, 4, seed=5)
    hidden_bias = jnp.where(np.arange(4) == 0, jnp.finfo(jnp.float32).min, 0.0)
    out = attention(q, k, v, causal=True, bias=hidden_bias, mask=np.zeros((4, 4), bool))
    assert np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_allclose(out, jnp.broadcast_to(v.mean(-2, keepdims=True), out.shape), 1e-5)


def test_bfloat16_inputs_stay_close_to_float32() -> None:
    q, k, v = qkv(64, 64, seed=6)
    ref = reference(q, k, v, causal=True)
    low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    out = attention(*low, causal=True)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.05)


# --- dropout on the probabilities --------------------------------------------------------------


def dropped_probs(
    key: jax.Array | None, rate: float, *, causal: bool = True, deterministic: bool = False, **kw
) -> np.ndarray:
    """The probabilities after dropout (training mode unless told), read out through identity
    values (S = Dh)."""
    t = DH
    q, k, _ = qkv(t, t, seed=8)
    eye = jnp.broadcast_to(jnp.eye(t), (B, H, t, t))
    out = attention(
        q,
        k,
        eye,
        causal=causal,
        dropout_rate=rate,
        dropout_key=key,
        deterministic=deterministic,
        **kw,
    )
    return np.asarray(out)


def test_dropout_zeroes_or_rescales_each_probability_and_is_deterministic() -> None:
    rate, key = 0.5, jax.random.key(11)
    q, k, _ = qkv(DH, DH, seed=8)
    probs = np.asarray(reference(q, k, jnp.broadcast_to(jnp.eye(DH), (B, H, DH, DH)), causal=True))
    a = dropped_probs(key, rate)
    np.testing.assert_array_equal(a, dropped_probs(key, rate))  # same key, same draw
    assert not np.array_equal(a, dropped_probs(jax.random.key(12), rate))
    kept = a != 0
    np.testing.assert_allclose(a[kept], probs[kept] / (1 - rate), rtol=1e-5)
    visible = probs > 0
    assert 0.3 < (~kept[visible]).mean() < 0.7  # about `rate` of the visible entries dropped
    # Deterministic, or rate 0: no dropout at all (no key needed).
    off = dropped_probs(None, rate, deterministic=True)
    np.testing.assert_allclose(off, probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dropped_probs(None, 0.0, deterministic=False), off)


def test_dropout_path_gradients_match_the_reference_with_the_same_mask() -> None:
    rate, key = 0.3, jax.random.key(13)
    q, k, v = qkv(8, 8, seed=9)
    bias = 0.5 * jax.random.normal(jax.random.key(1), (H, 8, 8))
    # The mask the kernel drew (it depends on the key and shape only), read back through
    # identity values: p * keep / (1 - rate), and every p > 0 here (no mask).
    keep = dropped_probs(key, rate, causal=False, bias=bias) != 0

    def fast(q, k, v, bias):
        return attention(
            q, k, v, bias=bias, dropout_rate=rate, dropout_key=key, deterministic=False
        )

    def ref(q, k, v, bias):
        eye = jnp.broadcast_to(jnp.eye(8), (B, H, 8, 8))
        p = reference(q, k, eye, bias=bias)
        return jnp.einsum("bhts,bhsd->bhtd", jnp.where(keep, p / (1 - rate), 0.0), v)

    out, vjp = jax.vjp(fast, q, k, v, bias)
    ref_out, ref_vjp = jax.vjp(ref, q, k, v, bias)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
    ct = jax.random.normal(jax.random.key(2), out.shape)
    for g, rg in zip(vjp(ct), ref_vjp(ct), strict=True):
        np.testing.assert_allclose(g, rg, rtol=1e-4, atol=1e-5)


def test_bad_calls_are_refused() -> None:
    q, k, v = qkv(4, 6)
    with pytest.raises(ValueError, match="as many queries as keys"):
        attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match="dropout_key"):
        attention(q, k, v, dropout_rate=0.1, deterministic=False)
