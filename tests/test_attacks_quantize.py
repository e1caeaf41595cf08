"""FGSM and PGD (`scalinglab.experiments.attacks`), the weight quantisers
(`scalinglab.experiments.quantize`) and the seed-bootstrap trend (`...trend`), each against an
independent computation: a hand-derived input gradient, numpy references of the int8 and
float casts, bytes counted by hand, a known slope. Tiny arrays, nothing trained."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from scalinglab.experiments import attacks as at
from scalinglab.experiments import quantize as qz
from scalinglab.experiments import trend as tr


def linear_loss(params: dict, images: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax regression on flattened images, cross-entropy summed over the batch."""
    logits = images.reshape(images.shape[0], -1) @ params["w"] + params["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()


def mlp_loss(params: dict, images: jax.Array, labels: jax.Array) -> jax.Array:
    """One tanh hidden layer: a non-linear model whose loss FGSM's single step cannot max."""
    h = jnp.tanh(images.reshape(images.shape[0], -1) @ params["w1"])
    return optax.softmax_cross_entropy_with_integer_labels(h @ params["w2"], labels).sum()


@pytest.fixture(scope="module")
def linear() -> tuple[dict, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    params = {
        "w": rng.normal(size=(6, 4)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
    }
    images = (0.5 + 0.1 * rng.uniform(-1, 1, (5, 2, 3, 1))).astype(np.float32)
    return params, images, rng.integers(0, 4, 5).astype(np.int32)


def test_fgsm_on_softmax_regression_is_eps_times_sign_of_hand_gradient(linear) -> None:
    params, images, labels = linear
    x = images.reshape(5, -1).astype(np.float64)
    logits = x @ params["w"] + params["b"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(5), labels] -= 1.0  # p - onehot
    grad_x = (p @ params["w"].T).reshape(images.shape)  # dL/dx = W (p - onehot), per example
    assert np.abs(grad_x).min() > 1e-4  # no sign decided by rounding
    eps = np.float32(0.1)  # the images sit in [0.4, 0.6]: no pixel clipping
    want = images + eps * np.sign(grad_x).astype(np.float32)
    got = at.fgsm(linear_loss, params, images, labels, eps)
    np.testing.assert_array_equal(np.asarray(got), want)
    # Pixels at the range's ends: the step is clipped back into [0, 1].
    edge = np.where(np.sign(grad_x) > 0, 1.0, 0.0).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(at.fgsm(linear_loss, params, edge, labels, 0.3)), edge)


def test_pgd_stays_in_the_ball_and_range_and_beats_fgsm() -> None:
    rng = np.random.default_rng(1)
    params = {
        "w1": rng.normal(size=(16, 8)).astype(np.float32),
        "w2": rng.normal(size=(8, 3)).astype(np.float32),
    }
    images = rng.uniform(0, 1, (32, 4, 4, 1)).astype(np.float32)
    images[:4] = 0.0  # some pixels at the range's ends, where projection must clip
    images[4:8] = 1.0
    labels = rng.integers(0, 3, 32).astype(np.int32)
    eps = 0.1
    adv = np.asarray(at.pgd(mlp_loss, params, images, labels, jax.random.PRNGKey(0), eps))
    assert np.abs(adv - images).max() <= eps + 1e-7
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    fgsm = at.fgsm(mlp_loss, params, images, labels, eps)
    losses = jax.jit(jax.vmap(mlp_loss, in_axes=(None, 0, None)))
    clean, one, many = np.asarray(losses(params, jnp.stack([images, fgsm, adv]), labels))
    assert clean < one <= many


def test_int8_per_channel_matches_numpy_reference() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(7, 5)).astype(np.float32)
    w[:, 3] = 0.0  # an all-zero channel: scale 0, q 0, read back exactly
    q, scale = qz.int8_per_channel(w, axis=-1)
    ref_scale = np.abs(w.astype(np.float64)).max(axis=0) / 127.0
    safe = np.where(ref_scale > 0, ref_scale, 1.0)
    ref_q = np.clip(np.round(w / safe.astype(np.float32)), -127, 127).astype(np.int8)
    assert q.dtype == jnp.int8 and scale.shape == (5,)
    np.testing.assert_allclose(np.asarray(scale), ref_scale, rtol=1e-7)
    np.testing.assert_array_equal(np.asarray(q), ref_q)
    assert np.abs(np.asarray(q)).max(axis=0).tolist() == [127, 127, 127, 0, 127]
    back = np.asarray(qz.dequantize_int8(q, scale, axis=-1), np.float64)
    err = np.abs(back - w)
    assert np.all(err <= ref_scale / 2 * (1 + 1e-6) + 1e-12)
    assert np.all(back[:, 3] == 0.0)
    # The channel axis of an embedding table is its rows; of a kernel, its last axis.
    e = rng.normal(size=(4, 6)).astype(np.float32)
    _, s_rows = qz.int8_per_channel(e, axis=0)
    np.testing.assert_allclose(np.asarray(s_rows), np.abs(e).max(axis=1) / 127.0, rtol=1e-6)
    path = jax.tree_util.tree_flatten_with_path({"token_embed": {"embedding": e}})[0][0][0]
    assert qz.channel_axis(path, 2) == 0
    path = jax.tree_util.tree_flatten_with_path({"conv": {"kernel": np.zeros((3, 3, 2, 4))}})
    assert qz.channel_axis(path[0][0][0], 4) == 3


def test_float_casts_match_numpy_and_ml_dtypes() -> None:
    w = np.random.default_rng(3).normal(scale=3.0, size=(64,)).astype(np.float32)
    w[:3] = [1.0 + 2.0**-9, 1.0 + 3 * 2.0**-9, 1e-6]  # ties and a subnormal in fp16
    fp16 = np.asarray(qz.cast_roundtrip(w, jnp.float16))
    bf16 = np.asarray(qz.cast_roundtrip(w, jnp.bfloat16))
    np.testing.assert_array_equal(fp16, w.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(bf16, w.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert np.any(fp16 != w) and np.any(bf16 != fp16)


def test_quantize_params_bytes_counted_by_hand() -> None:
    rng = np.random.default_rng(4)
    params = {
        "dense": {
            "kernel": rng.normal(size=(3, 4)).astype(np.float32),
            "bias": rng.normal(size=4).astype(np.float32),
        },
        "token_embed": {"embedding": rng.normal(size=(10, 2)).astype(np.float32)},
    }
    n = 12 + 4 + 20
    out = qz.quantize_all(params)
    assert {s: b for s, (_, b) in out.items()} == {
        "fp32": 4 * n,
        "fp16": 2 * n,
        "bf16": 2 * n,
        # int8: kernel 12 B + 4 float32 scales, bias stays float32, embedding 20 B + 10 rows.
        "int8": (12 + 4 * 4) + 4 * 4 + (20 + 10 * 4),
    }
    assert qz.stored_bytes(params, "int8") == out["int8"][1]
    q = out["int8"][0]
    np.testing.assert_array_equal(np.asarray(q["dense"]["bias"]), params["dense"]["bias"])
    k, s = qz.int8_per_channel(params["dense"]["kernel"], axis=1)
    np.testing.assert_array_equal(
        np.asarray(q["dense"]["kernel"]), np.asarray(k, np.float32) * np.asarray(s)[None, :]
    )
    with pytest.raises(ValueError, match="allowed fp32, fp16, bf16, int8"):
        qz.quantize_params(params, "int4")


def test_seed_bootstrap_trend_recovers_a_known_slope() -> None:
    x = np.repeat([10.0, 100.0, 1000.0], 3)
    y = 0.25 * np.log10(x)  # every seed the same: the slope exactly, a zero-width interval
    t = tr.seed_bootstrap_trend(x, y, bootstrap=200)
    assert t["slope_per_decade"] == pytest.approx(0.25)
    assert t["ci"] == pytest.approx([0.25, 0.25]) and t["resolved"] is True
    noise = np.tile([-0.5, 0.0, 0.5], 3)  # seeds far apart, no trend in the means
    flat = tr.seed_bootstrap_trend(x, 1.0 + noise, bootstrap=200)
    assert flat["slope_per_decade"] == pytest.approx(0.0, abs=1e-12)
    assert flat["ci"][0] < 0 < flat["ci"][1] and flat["resolved"] is False
    assert [p["n_seeds"] for p in flat["per_size"]] == [3, 3, 3]
