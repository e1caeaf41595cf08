"""The activations study's tools (`scalinglab.experiments.activity`): the dead fraction of a
hand-built MLP whose weights make a known set of units negative on every digit, the
pre-activations against a hand forward pass, and the restore of a run directory's
checkpoints at each kept step (and the step-0 state the loop starts from)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from scalinglab.config import trial_from_dict
from scalinglab.experiments import activity as a
from scalinglab.experiments import gradients as g
from scalinglab.models import build_model
from scalinglab.models.layers import activation_fn
from scalinglab.train.tasks import build_task

CENTRE = 27  # a pixel of the digits that is dark on some images and bright on others


def _mlp(activation: str, **model: object) -> tuple:
    cfg = trial_from_dict(
        {
            "model": {"family": "mlp", "width": 6, "depth": 2, "activation": activation, **model},
            "data": {"source": "digits"},
        }
    )
    model_ = build_model(cfg.model)
    params, state = build_task(cfg, model_).init(jax.random.PRNGKey(0))
    return cfg, model_, jax.tree_util.tree_map(np.asarray, params), state


def _hand_built(activation: str) -> tuple:
    """Layer 0 (64 -> 6) on pixels in [0, 1]: units 0, 1 (all weights -1, bias -0.1) and 2 (no
    weights, bias -1) are negative on every digit; 3, 4 (weights +1, bias 0.1) positive;
    5 (the centre pixel - 0.5) changes sign across digits. Layer 1 (6 -> 6) reads only units 3
    and 4: unit 1 (weights -1) is negative everywhere, unit 2 (nothing, bias 0) is exactly 0,
    which counts as dead; the rest are positive. Dead: 3 of 6, then 2 of 6."""
    cfg, model, params, state = _mlp(activation)
    w0, b0 = np.zeros((64, 6), np.float32), np.zeros(6, np.float32)
    w0[:, :2], b0[:2] = -1.0, -0.1
    b0[2] = -1.0
    w0[:, 3:5], b0[3:5] = 1.0, 0.1
    w0[CENTRE, 5], b0[5] = 1.0, -0.5
    w1, b1 = np.zeros((6, 6), np.float32), np.zeros(6, np.float32)
    w1[3:5, 0] = 1.0
    w1[3:5, 1] = -1.0
    w1[3:5, 3:] = 1.0
    b1[3:] = 0.5
    params["dense_0"] = {"kernel": w0, "bias": b0}
    params["dense_1"] = {"kernel": w1, "bias": b1}
    return cfg, model, params, state


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu"])
def test_dead_fraction_of_a_hand_built_mlp_is_the_hand_count(activation: str) -> None:
    cfg, model, params, state = _hand_built(activation)
    x = g.probe_batch(cfg, 297)["image"]
    pre = a.pre_activations(model, params, state, x, activation)
    assert list(pre) == ["dense_0", "dense_1"]
    # The model's own forward pass, read back, is the hand one.
    flat = x.reshape(len(x), -1)
    z0 = flat @ params["dense_0"]["kernel"] + params["dense_0"]["bias"]
    h0 = np.asarray(activation_fn(activation)(z0))
    z1 = h0 @ params["dense_1"]["kernel"] + params["dense_1"]["bias"]
    np.testing.assert_allclose(pre["dense_0"], z0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pre["dense_1"], z1, rtol=1e-5, atol=1e-5)
    assert (z0[:, 5] > 0).any() and (z0[:, 5] < 0).any()  # "on every digit" matters

    act = a.layer_activity(pre, activation)
    assert act["dense_0"]["mask"].tolist() == [True, True, True, False, False, False]
    assert act["dense_1"]["mask"].tolist() == [False, True, True, False, False, False]
    assert act["dense_0"]["dead_fraction"] == 3 / 6 and act["dense_1"]["dead_fraction"] == 2 / 6
    # The gradient a dead unit still passes: none for relu, 0.01 for leaky_relu, exp(z) for elu.
    want = {"relu": 0.0, "leaky_relu": 0.01, "elu": float(np.exp(z0[:, :3]).mean())}[activation]
    assert act["dense_0"]["dead_slope"] == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_pre_activations_are_what_the_nonlinearity_sees() -> None:
    """With batch norm, the norm's output (on its running averages); for swiglu, the gate."""
    cfg, model, params, state = _mlp("relu", batch_norm=True)
    x = g.probe_batch(cfg, 16)["image"]
    state = jax.tree_util.tree_map(lambda v: np.full_like(v, 0.5), state)  # mean 0.5, var 0.5
    z = x.reshape(16, -1) @ params["dense_0"]["kernel"]
    pre = a.pre_activations(model, params, state, x, "relu")
    np.testing.assert_allclose(pre["dense_0"], (z - 0.5) / np.sqrt(0.5 + 1e-5), atol=1e-5)
    cfg, model, params, state = _mlp("swiglu")
    pre = a.pre_activations(model, params, state, x, "swiglu")
    gate = x.reshape(16, -1) @ params["dense_0"]["kernel"][:, :6] + params["dense_0"]["bias"][:6]
    assert pre["dense_0"].shape == (16, 6)
    np.testing.assert_allclose(pre["dense_0"], gate, atol=1e-5)


def test_restore_at_each_kept_step(tmp_path: Path) -> None:
    from scalinglab.budget import plan_steps
    from scalinglab.data import build_dataset
    from scalinglab.train import load_state
    from scalinglab.train.loop import run_trial
    from scalinglab.train.trainer import build_trainer

    cfg = trial_from_dict(
        {
            "seed": 3,
            "model": {"family": "mlp", "width": 4, "depth": 1, "activation": "relu"},
            "data": {"source": "digits"},
            "train": {
                "batch_size": 16,
                "budget": {"steps": 4},
                "eval_every": 4,
                "eval_tokens": 32,
                "log_every": 4,
                "checkpoint_every": 1,
                "keep_checkpoints": 10,
            },
        }
    )
    run_trial(cfg, tmp_path)
    assert a.checkpoint_steps(tmp_path) == [1, 2, 3, 4]
    leaves = jax.tree_util.tree_leaves
    latest = load_state(cfg, tmp_path)
    last = a.restore_at(cfg, tmp_path, 4)
    assert int(last.step) == 4
    for x, y in zip(leaves(last.params), leaves(latest.params), strict=True):
        np.testing.assert_array_equal(x, y)
    first = a.restore_at(cfg, tmp_path, 1)
    assert int(first.step) == 1
    pairs = zip(leaves(first.params), leaves(last.params), strict=True)
    assert any(not np.array_equal(x, y) for x, y in pairs)
    # Step 0 is the loop's own initial state: one train step from it is the step-1 checkpoint.
    init = a.initial_state(cfg)
    assert int(init.step) == 0
    trainer = build_trainer(cfg, plan_steps(cfg))
    batch = build_dataset(cfg.data).train_batch(0, 16, cfg.seed)
    step_key = jax.random.split(jax.random.PRNGKey(cfg.seed))[1]
    stepped, _ = trainer.step_fn(init, batch, step_key)
    for x, y in zip(leaves(stepped.params), leaves(first.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert [s for s, _, _ in a.states(cfg, tmp_path)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"no checkpoint at step 7; kept: \[1, 2, 3, 4\]"):
        a.restore_at(cfg, tmp_path, 7)
