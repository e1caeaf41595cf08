"""The interpretability study's library (`scalinglab.experiments.saliency`, `.probe`) against
independent computations: finite differences and a hand chain rule in numpy float64 for the
input gradient and integrated gradients, the closed form of IG on a linear model, the Bayes
accuracy of a planted linear signal for the probe, the exact chain for the current-token
ceiling, and the GPT's own logits for the captured residual stream. Models are tiny; the
trained ones run in the study's smoke (tests/test_experiments.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalinglab.experiments import probe as pb
from scalinglab.experiments import saliency as sa

# ----------------------------------------------------------------------------- saliency
# A tiny tanh MLP on 3x3 one-channel "images": 9 -> 5 -> 4 logits.
RNG = np.random.default_rng(0)
W1, B1 = RNG.normal(size=(9, 5)), RNG.normal(size=5) * 0.1
W2, B2 = RNG.normal(size=(5, 4)), RNG.normal(size=4) * 0.1
VARS = {k: jnp.asarray(v, jnp.float32) for k, v in dict(w1=W1, b1=B1, w2=W2, b2=B2).items()}


def _mlp(variables, images):
    x = images.reshape(len(images), -1)
    return jnp.tanh(x @ variables["w1"] + variables["b1"]) @ variables["w2"] + variables["b2"]


def _np_logits(x_Bx9: np.ndarray) -> np.ndarray:
    return np.tanh(x_Bx9 @ W1 + B1) @ W2 + B2


def _np_grad(x_Bx9: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Hand chain rule: d/dx of W2[:, y] . tanh(x W1 + b1)."""
    hidden = np.tanh(x_Bx9 @ W1 + B1)
    return ((1 - hidden**2) * W2[:, labels].T) @ W1.T


IMAGES = RNG.uniform(0, 1, size=(6, 3, 3, 1))
LABELS = np.array([0, 1, 2, 3, 1, 0])


def test_input_gradient_matches_central_differences_in_float64() -> None:
    grad = np.asarray(sa.input_gradient(_mlp, VARS, jnp.asarray(IMAGES, jnp.float32), LABELS))
    x = IMAGES.reshape(6, 9)
    fd = np.zeros_like(x)
    step = 1e-6
    for p in range(9):
        e = np.zeros(9)
        e[p] = step
        up = _np_logits(x + e)[np.arange(6), LABELS]
        down = _np_logits(x - e)[np.arange(6), LABELS]
        fd[:, p] = (up - down) / (2 * step)
    # float32 forward/backward against float64 differences (truncation ~1e-12): ~1e-6.
    assert grad.reshape(6, 9) == pytest.approx(fd, abs=2e-5)
    assert np.abs(fd).max() > 0.1  # not a vacuous comparison of zeros
    # each example's gradient is of its own label's logit: another label gives another map
    other = np.asarray(sa.input_gradient(_mlp, VARS, jnp.asarray(IMAGES), (LABELS + 1) % 4))
    assert np.abs(other - grad).max() > 0.1


def test_integrated_gradients_on_a_linear_model_is_x_minus_baseline_times_w() -> None:
    w = RNG.normal(size=(9, 4))
    params = {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray([0.3, -1.0, 2.0, 0.5])}

    def linear(v, images):
        return images.reshape(len(images), -1) @ v["w"] + v["b"]

    baseline = RNG.uniform(0, 1, size=(1, 3, 3, 1))
    for steps in (1, 5):  # exact at any number of steps: the gradient is constant
        ig = sa.integrated_gradients(
            linear, params, jnp.asarray(IMAGES), LABELS, jnp.asarray(baseline), steps
        )
        want = (IMAGES - baseline).reshape(6, 9) * w[:, LABELS].T
        assert np.asarray(ig).reshape(6, 9) == pytest.approx(want, abs=1e-5)


def test_integrated_gradients_is_the_midpoint_sum_and_its_completeness_gap_falls_as_1_over_m2():
    x = jnp.asarray(IMAGES, jnp.float32)
    base = jnp.zeros_like(x)
    f_x = np.asarray(sa.target_logits(_mlp, VARS, x, LABELS))
    f_b = np.asarray(sa.target_logits(_mlp, VARS, base, LABELS))
    assert f_x == pytest.approx(_np_logits(IMAGES.reshape(6, 9))[np.arange(6), LABELS], abs=1e-5)
    gaps = {}
    for m in (8, 32):
        ig = np.asarray(sa.integrated_gradients(_mlp, VARS, x, LABELS, base, m))
        # the midpoint Riemann sum of the hand gradient along the path, in float64
        alphas = (np.arange(m) + 0.5) / m
        flat = IMAGES.reshape(6, 9)
        want = flat * np.mean([_np_grad(a * flat, LABELS) for a in alphas], axis=0)
        assert ig.reshape(6, 9) == pytest.approx(want, abs=1e-5)
        gaps[m] = np.abs(sa.completeness_gap(ig, f_x, f_b)).max()
    # midpoint rule: error ~ c / m^2, so 4x the steps cuts it ~16x (rounding adds ~1e-6)
    assert gaps[32] < gaps[8] / 8  # 16x in exact arithmetic
    assert gaps[32] < 1e-2 * np.abs(f_x - f_b).mean()


def test_top_k_share_order_and_deletion_on_hand_examples() -> None:
    a = np.zeros((2, 2, 2, 1))
    a[0, ..., 0] = [[4.0, -3.0], [2.0, 1.0]]
    a[1, ..., 0] = [[1.0, 1.0], [1.0, 1.0]]
    assert sa.top_k_share(a, 1) == pytest.approx([0.4, 0.25])
    assert sa.top_k_share(a, 2) == pytest.approx([0.7, 0.5])
    assert sa.saliency_order(a)[0].tolist() == [0, 1, 2, 3]  # by |a|
    assert sa.saliency_order(a, signed=True)[0].tolist() == [0, 2, 3, 1]  # the negative last
    images = np.arange(8, dtype=float).reshape(2, 2, 2, 1) + 1
    out = sa.delete_pixels(images, np.array([[3, 0, 1, 2], [1, 2, 0, 3]]), 2, baseline=-1.0)
    assert out[..., 0].tolist() == [[[-1, 2], [3, -1]], [[5, -1], [-1, 8]]]
    assert images[0, 0, 0, 0] == 1  # the input is untouched
    perms = sa.random_order(5, 4, seed=1)
    assert (np.sort(perms, axis=1) == np.arange(4)).all()


def test_deletion_accuracy_counts_correct_argmax() -> None:
    def first_pixel_classifier(_, images):  # logit 0 = pixel 0, logit 1 = 0.5
        x = images.reshape(len(images), -1)
        return jnp.stack([x[:, 0], jnp.full(len(x), 0.5)], axis=1)

    images = np.ones((4, 2, 2, 1))
    labels = np.array([0, 0, 0, 1])
    order = np.array([[0, 1, 2, 3], [1, 0, 2, 3], [2, 3, 1, 0], [0, 1, 2, 3]])
    got = sa.deletion_accuracy(first_pixel_classifier, None, images, labels, order, [0, 1, 2, 4])
    # k=0: 3 of 4; k=1: rows 0 and 3 lose pixel 0 (row 0 wrong, row 3 right); k=2: row 1 too
    assert got == pytest.approx([0.75, 0.75, 0.5, 0.25])


def test_roughness_of_smooth_checkerboard_and_random_filters() -> None:
    flat = np.ones((3, 3, 2, 1))
    checker = np.indices((3, 3)).sum(axis=0) % 2 * 2.0 - 1.0
    board = np.broadcast_to(checker[:, :, None, None], (3, 3, 2, 1))
    assert sa.roughness(flat) == pytest.approx([0.0])
    assert sa.roughness(board) == pytest.approx([4.0])  # every neighbour differs by 2
    noise = np.random.default_rng(0).normal(size=(3, 3, 1, 20000))
    assert sa.roughness(noise).mean() == pytest.approx(2.0, abs=0.03)  # iid taps: 2


# ----------------------------------------------------------------------------- probes
def _bayes_accuracy(snr: float, classes: int) -> float:
    """P(correct) for orthogonal class means of norm snr*sigma under isotropic noise: the true
    class's score beats classes - 1 others, by 1-D quadrature."""
    t = np.linspace(-10, 10, 40001)
    phi = np.exp(-(t**2) / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.vectorize(math.erf)((t + snr) / math.sqrt(2)))
    return float(np.trapezoid(phi * cdf ** (classes - 1), t))


def test_ridge_probe_recovers_a_planted_signal_to_the_bayes_accuracy() -> None:
    rng = np.random.default_rng(1)
    classes, dim, n, snr = 8, 24, 40000, 1.5
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:, :classes]  # orthonormal means
    h = rng.integers(0, classes, n)
    x = snr * basis[:, h].T + rng.normal(size=(n, dim)) + 3.0  # an offset the probe absorbs
    half = n // 2
    acc = pb.probe_accuracy(x[:half], h[:half], x[half:], h[half:], classes)
    want = _bayes_accuracy(snr, classes)  # 0.578
    # 20,000 test points: sd ~0.0035; the fitted probe is at most a little worse than Bayes
    assert want - 0.02 < acc < want + 0.012
    noise_only = pb.probe_accuracy(x[:half] * 0 + rng.normal(size=(half, dim)), h[:half],
                                   rng.normal(size=(half, dim)), h[half:], classes)  # fmt: skip
    assert abs(noise_only - 1 / classes) < 0.02
    assert pb.majority_accuracy(np.array([1, 1, 2]), np.array([1, 2, 2, 2])) == 0.25


def test_lag_targets_and_the_current_token_ceiling_against_a_sample() -> None:
    mask, target = pb.lag_targets(np.array([[5, 6, 7, 8]]), 2)
    assert mask.tolist() == [[False, False, True, True]] and target[0, 2:].tolist() == [5, 6]

    from scalinglab.config import SyntheticConfig
    from scalinglab.data.synthetic import make_language

    class Cfg:  # pair_ceiling reads only data.synthetic
        class data:
            synthetic = SyntheticConfig(vocab_size=6, order=2, branching=2, n_tokens=2048)

    lang = make_language(Cfg.data.synthetic)
    seq = lang.sample(300_000, np.random.default_rng(5)).astype(np.int64)
    counts = np.zeros((6, 6, 6))
    np.add.at(counts, (seq[:-2], seq[1:-1], seq[2:]), 1)  # (t-2, t-1, t)
    lag1 = counts.sum(axis=0).max(axis=0).sum() / counts.sum()  # t-1 from t
    lag2 = counts.max(axis=0).sum() / counts.sum()  # t-2 from (t-1, t)
    ceilings = pb.lag_ceilings(Cfg)
    # sd of each estimate ~0.001 (and the 3-token joint sums to 1 exactly)
    assert ceilings[1] == pytest.approx(lag1, abs=0.006)
    assert ceilings[2] == pytest.approx(lag2, abs=0.006)
    assert pb.triple_joint(Cfg).sum() == pytest.approx(1.0)
    assert 1 / 6 < ceilings[1] < ceilings[2] < 1


def _tiny_gpt():
    from scalinglab.config import trial_from_dict
    from scalinglab.models import build_model

    cfg = trial_from_dict(
        {
            "model": {"family": "gpt", "n_layer": 2, "d_model": 8, "n_head": 2, "vocab_size": 16},
            "data": {"source": "synthetic", "seq_len": 8,
                     "synthetic": {"vocab_size": 16, "order": 2, "n_tokens": 2048}},
        }
    )  # fmt: skip
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 16, size=(3, 8)).astype(np.int32)
    # random parameters of the right shapes (tracing the init only: nothing to compile)
    shapes = jax.eval_shape(build_model(cfg.model).init, jax.random.PRNGKey(0), tokens)
    params = jax.tree_util.tree_map(
        lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes["params"]
    )
    return cfg, params, tokens


def test_residual_stream_is_the_embeddings_then_the_blocks_that_give_the_logits() -> None:
    cfg, params, tokens = _tiny_gpt()
    want, stream = pb.forward_with_stream(cfg, params, tokens)
    assert stream.shape == (3, 3, 8, 8)
    emb = np.asarray(params["token_embed"]["embedding"])
    pos = np.asarray(params["pos_embed"]["embedding"])[:8]
    assert stream[0] == pytest.approx(emb[tokens] + pos, abs=1e-6)
    # the last layer, through the final LayerNorm and the tied head, is the model's output
    x = stream[-1].astype(np.float64)
    norm = params["norm_f"]
    z = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    logits = (z * np.asarray(norm["scale"]) + np.asarray(norm["bias"])) @ emb.T
    assert logits == pytest.approx(want, abs=1e-4)
    # causal: changing token 5 leaves every layer at positions 0-4 as it was
    other = tokens.copy()
    other[:, 5] = (other[:, 5] + 1) % 16
    moved = pb.residual_stream(cfg, params, other)
    assert moved[:, :, :5] == pytest.approx(stream[:, :, :5], abs=1e-6)
    assert np.abs(moved[:, :, 5:] - stream[:, :, 5:]).max() > 1e-3
    windows = pb.probe_windows(cfg, 4)
    assert windows.tokens.shape == (4, 8) and windows.tokens.max() < 16
    res = pb.layer_accuracies(stream, tokens, 1, 16)
    assert len(res["accuracy"]) == 3 and res["n_train"] == 7 and res["n_test"] == 14


def test_initial_stem_kernel_is_the_full_models_init() -> None:
    from scalinglab.config import trial_from_dict
    from scalinglab.models import build_model

    cfg = trial_from_dict(
        {
            "model": {"family": "resnet", "width": 2, "depth": 1, "stages": 1, "image_size": 8,
                      "in_channels": 1, "n_classes": 10},
            "data": {"source": "digits"},
        }
    )  # fmt: skip
    model = build_model(cfg.model)
    full = jax.jit(lambda key: model.init(key, jnp.zeros((1, 8, 8, 1)), train=False))(
        jax.random.PRNGKey(7)
    )
    got = sa.initial_stem_kernel(cfg, 7)
    assert got.shape == (3, 3, 1, 2)
    assert got == pytest.approx(np.asarray(full["params"]["stem"]["kernel"]), abs=0)
    assert np.abs(got - sa.initial_stem_kernel(cfg, 8)).max() > 1e-3  # the seed matters
