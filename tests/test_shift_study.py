"""The distribution-shift study's transforms, shifted languages and effective-robustness line
(`scalinglab.experiments.shift`), each against a computation done by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scalinglab.config import SyntheticConfig
from scalinglab.data.synthetic import make_language
from scalinglab.experiments import shift as sh


def _images(seed: int = 0, n: int = 3, size: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 1)).astype(np.float32)


def test_translate_one_pixel_is_a_roll_with_zero_fill() -> None:
    # Catches a wrap-around (np.roll alone) or a shift the wrong way.
    x = _images()
    want = np.roll(x, 1, axis=2)
    want[:, :, 0] = 0.0
    np.testing.assert_array_equal(sh.translate(x, 0, 1), want)
    up = np.zeros_like(x)
    for i in range(x.shape[1] - 1):
        up[:, i] = x[:, i + 1]
    np.testing.assert_array_equal(sh.translate(x, -1, 0), up)


def test_blur_equals_a_hand_convolution() -> None:
    # Catches a wrong kernel, a transposed separable pass or wrong padding at the borders.
    x = _images(1).astype(np.float64)
    sigma = 0.8
    w1 = np.array([math.exp(-0.5 / sigma**2), 1.0, math.exp(-0.5 / sigma**2)])
    w1 /= w1.sum()
    np.testing.assert_allclose(sh.gaussian_kernel(sigma), w1, rtol=1e-12)
    kernel = np.outer(w1, w1)
    b, h, w, _ = x.shape
    want = np.zeros_like(x)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        if 0 <= i + di < h and 0 <= j + dj < w:
                            want[n, i, j, 0] += kernel[di + 1, dj + 1] * x[n, i + di, j + dj, 0]
    np.testing.assert_allclose(sh.blur(x, sigma), want, atol=1e-6)  # float32 output


def test_contrast_keeps_each_mean_and_scales_deviations() -> None:
    # Catches a scaling about 0 (or the batch mean) instead of each image's own mean.
    x = _images(2)
    y = sh.contrast(x, 0.3)
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-6)
    dev_x = x - x.mean(axis=(1, 2, 3), keepdims=True)
    dev_y = y - y.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(dev_y, 0.3 * dev_x, atol=1e-6)


def test_noise_is_seeded_with_the_asked_std() -> None:
    # Catches a draw that changes between calls (models would see different OOD sets).
    x = np.zeros((50, 8, 8, 1), np.float32)
    a, b = sh.noise(x, 0.2, seed=3), sh.noise(x, 0.2, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sh.noise(x, 0.2, seed=4))
    # 3,200 draws: the sample std is within 4 standard errors (0.2 / sqrt(2 n)) of 0.2.
    assert abs(a.std() - 0.2) < 4 * 0.2 / math.sqrt(2 * a.size)


def test_rotate_90_is_rot90_and_bilinear_by_hand() -> None:
    # Catches a rotation the wrong way or about the wrong centre, and bilinear weights that do
    # not sum to 1.
    x = _images(3, size=5)
    np.testing.assert_allclose(sh.rotate(x, 90.0), np.rot90(x, 1, axes=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(sh.rotate(x, 0.0), x, atol=1e-7)
    ones = np.ones((1, 5, 5, 1), np.float32)
    assert sh.rotate(ones, 30.0)[0, 2, 2, 0] == pytest.approx(1.0, abs=1e-6)
    assert sh.rotate(ones, 30.0)[0, 1:4, 1:4].min() == pytest.approx(1.0, abs=1e-6)
    # 3x3 at 45 degrees: output (0, 0) reads source (1 - sqrt 2, 1), between row -1
    # (outside, 0) and row 0 with weight 1 - (sqrt 2 - 1) = 2 - sqrt 2.
    z = _images(4, n=1, size=3)
    got = sh.rotate(z, 45.0)[0, 0, 0, 0]
    assert got == pytest.approx((2 - math.sqrt(2)) * z[0, 0, 1, 0], rel=1e-5)


def test_image_shifts_by_name() -> None:
    x = _images()
    fns = sh.image_shifts({"c": {"kind": "contrast", "factor": 0.5}})
    np.testing.assert_array_equal(fns["c"](x), sh.contrast(x, 0.5))
    with pytest.raises(ValueError, match="expected one of"):
        sh.image_shifts({"x": {"kind": "shear"}})


def _direct_entropy_rate(lang) -> float:  # type: ignore[no-untyped-def]
    """sum_s pi(s) H(next | s), with the law of every context built by a loop and pi the
    eigenvector of P^T for eigenvalue 1 (not the library's solve)."""
    v, s_count = lang.vocab_size, lang.n_contexts
    probs = np.full((s_count, v), lang.uniform_mix / v)
    for s in range(s_count):
        for r, y in enumerate(lang.next_tokens[s]):
            probs[s, y] += (1 - lang.uniform_mix) * lang.rank_probs[r]
    p = np.zeros((s_count, s_count))
    for s in range(s_count):
        for y in range(v):
            p[s, (s * v + y) % s_count] += probs[s, y]
    w, vecs = np.linalg.eig(p.T)
    pi = np.real(vecs[:, np.argmin(np.abs(w - 1))])
    pi /= pi.sum()
    h = -(probs * np.log(probs)).sum(axis=1)
    return float(pi @ h)


LANG = SyntheticConfig(vocab_size=12, order=1, branching=4, zipf_exponent=1.1, seed=0)


def test_shifted_languages_entropy_rates_by_direct_computation() -> None:
    # Catches a zipf law not renormalised, or a redraw that breaks the rank law (the entropy
    # rate would then differ from the library's closed form).
    lang = make_language(LANG)
    flat = sh.with_zipf(lang, 0.5)
    assert flat.rank_probs.sum() == pytest.approx(1.0)
    assert _direct_entropy_rate(flat) == pytest.approx(flat.entropy_rate_nats, rel=1e-10)
    assert flat.entropy_rate_nats > lang.entropy_rate_nats  # flatter: more uncertain
    np.testing.assert_array_equal(flat.next_tokens, lang.next_tokens)
    new = sh.redraw(lang, 0.5, seed=1)
    assert _direct_entropy_rate(new) == pytest.approx(lang.entropy_rate_nats, rel=1e-10)
    changed = (new.next_tokens != lang.next_tokens).any(axis=1)
    assert changed.sum() == 6  # 6 of 12 contexts redrawn


def test_cross_entropy_rate_by_monte_carlo() -> None:
    # Catches the stationary law of the wrong language, or p and q swapped.
    lang = make_language(LANG)
    new = sh.redraw(lang, 0.5, seed=1)
    assert sh.cross_entropy_rate(lang, lang) == pytest.approx(lang.entropy_rate_nats, rel=1e-12)
    tokens = new.sample(200_000, np.random.default_rng(0))
    nll = lang.nll(tokens)
    se = nll.std() / math.sqrt(len(nll))
    assert abs(nll.mean() - sh.cross_entropy_rate(new, lang)) < 5 * se
    assert sh.cross_entropy_rate(new, lang) > new.entropy_rate_nats


def test_effective_robustness_recovers_a_known_line_and_residual_trend() -> None:
    # ID accuracies chosen orthogonal to log10 N, so the line and the residual trend separate
    # exactly: OOD = 0.1 + 0.8 ID + 0.05 (log10 N - 2.5); each size's two seeds average to it.
    sizes = np.array([10.0, 100.0, 1000.0, 10000.0])
    ids = np.array([0.6, 0.8, 0.8, 0.6])
    oods = 0.1 + 0.8 * ids + 0.05 * (np.log10(sizes) - 2.5)
    n = np.repeat(sizes, 2)
    jitter = np.tile([-0.01, 0.01], 4)
    x, y = np.repeat(ids, 2) + jitter, np.repeat(oods, 2) + 0.8 * jitter
    got = sh.effective_robustness(n, x, y, bootstrap=300)
    assert got["slope"] == pytest.approx(0.8, abs=1e-9)
    assert got["intercept"] == pytest.approx(0.1, abs=1e-9)
    assert got["residual_slope_per_decade"] == pytest.approx(0.05, abs=1e-9)
    assert got["slope_ci"][0] <= 0.8 <= got["slope_ci"][1]
    assert got["residual_resolved"] is True
    # Another family 0.1 above the line at every size: residual 0.1, no trend.
    other = sh.effective_robustness(
        n, x, y, target=(sizes, ids, 0.1 + 0.8 * ids + 0.1), bootstrap=300
    )
    resid = [p["residual"] for p in other["residual_per_size"]]
    np.testing.assert_allclose(resid, 0.1, atol=1e-9)
    assert other["residual_slope_per_decade"] == pytest.approx(0.0, abs=1e-9)
