"""The backprop study's tools (`scalinglab.experiments.gradients`) against independent
computations: the hand chain rule against `jax.grad` of the toolkit's MLP at a random point,
the depth slope against scipy's linear regression, the layer order of the gradient norms."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import stats

from scalinglab.config import trial_from_dict
from scalinglab.experiments import gradients as g
from scalinglab.models import build_model
from scalinglab.train.tasks import build_task


def _random_point(depth: int, activation: str, seed: int = 0) -> tuple:
    """A digits MLP's config, params with every kernel random (the head starts at zero, which
    would make every hidden gradient zero), its model state and a 32-digit probe batch."""
    cfg = trial_from_dict(
        {
            "model": {"family": "mlp", "width": 8, "depth": depth, "activation": activation},
            "data": {"source": "digits"},
        }
    )
    params, model_state = build_task(cfg, build_model(cfg.model)).init(jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(
        lambda p: np.asarray(rng.normal(0.0, 0.5, p.shape), np.float32), params
    )
    return cfg, params, model_state, g.probe_batch(cfg, 32)


@pytest.mark.parametrize("activation", g.HAND_ACTIVATIONS)
def test_hand_chain_rule_equals_the_toolkit_gradient(activation: str) -> None:
    """A wrong derivative of the activation, a transposed kernel or a missing 1/B in either
    the hand rule or the model's loss shows as an error far above float32 rounding."""
    cfg, params, model_state, batch = _random_point(1, activation)
    toolkit = g.toolkit_grads(cfg, params, model_state, batch)
    hand = g.hand_grads_one_hidden_layer(params, batch, activation)
    assert g.max_relative_error(toolkit, hand) < 1e-5
    # ... and the check can fail: the sigmoid's derivative in place of tanh's is far off.
    if activation == "tanh":
        wrong = g.hand_grads_one_hidden_layer(params, batch, "sigmoid")
        assert g.max_relative_error(toolkit, wrong) > 0.1


def test_finite_differences_agree_with_the_toolkit_gradient() -> None:
    cfg, params, model_state, batch = _random_point(2, "tanh")
    rows = g.directional_fd(cfg, params, model_state, batch, jax.random.PRNGKey(1), n_directions=3)
    assert len(rows) == 4 and rows[0]["toolkit"] == pytest.approx(rows[0]["grad_norm"])
    for r in rows:
        assert abs(r["finite_difference"] - r["toolkit"]) < 1e-3 * r["grad_norm"]


def test_layer_norms_run_from_the_input_to_the_head() -> None:
    cfg, params, model_state, batch = _random_point(11, "relu")
    norms = g.layer_grad_norms(cfg, params, model_state, batch)
    assert list(norms) == [f"dense_{i}" for i in range(11)] + ["head"]  # dense_10 after dense_9
    grads = g.toolkit_grads(cfg, params, model_state, batch)
    assert norms["dense_10"] == pytest.approx(np.linalg.norm(grads["dense_10"]["kernel"]))


def test_depth_slope_is_the_least_squares_slope_with_its_t_interval() -> None:
    rng = np.random.default_rng(0)
    index = np.arange(16)
    norms = 10.0 ** (0.3 * index - 5.0 + rng.normal(0.0, 0.2, 16))
    got = g.depth_slope(index, norms)
    ref = stats.linregress(index, np.log10(norms))
    t = stats.t.ppf(0.975, 14)
    assert got["slope"] == pytest.approx(ref.slope, rel=1e-10)
    assert got["ci"] == pytest.approx([ref.slope - t * ref.stderr, ref.slope + t * ref.stderr])
    assert got["first_over_last"] == pytest.approx(norms[0] / norms[-1])
