"""Optimiser chains and schedules against closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scalinglab.config import OptimizerConfig, ScheduleConfig
from scalinglab.optim import OPTIMIZERS, build_optimizer, build_schedule, decay_mask


def test_warmup_cosine_closed_form() -> None:
    s = build_schedule(ScheduleConfig(warmup_frac=0.1, final_lr_frac=0.1), lr=1.0, total_steps=100)
    assert float(s(0)) == 0.0
    assert float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0)
    # Cosine from step 10 to 100 between 1.0 and 0.1.
    t = (55 - 10) / 90
    assert float(s(55)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t)), rel=1e-5)
    assert float(s(100)) == pytest.approx(0.1)


def test_wsd_is_flat_then_linear() -> None:
    cfg = ScheduleConfig(name="wsd", warmup_frac=0.1, decay_frac=0.2, final_lr_frac=0.0)
    s = build_schedule(cfg, lr=2.0, total_steps=100)
    assert float(s(5)) == pytest.approx(1.0)
    assert [float(s(k)) for k in (10, 50, 79)] == pytest.approx([2.0, 2.0, 2.0])
    assert float(s(90)) == pytest.approx(1.0)
    assert float(s(100)) == pytest.approx(0.0)


def test_constant_schedule() -> None:
    s = build_schedule(ScheduleConfig(name="constant", warmup_frac=0.0), lr=0.3, total_steps=10)
    assert [float(s(k)) for k in (0, 5, 10)] == pytest.approx([0.3, 0.3, 0.3])


def _params() -> dict:
    return {
        "token_embed": {"embedding": jnp.ones((4, 3))},
        "block_0": {
            "norm_1": {"scale": jnp.ones(3), "bias": jnp.ones(3)},
            "mlp": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)},
        },
    }


def test_decay_mask_skips_norms_biases_embeddings() -> None:
    mask = decay_mask(_params(), ["norm", "bias", "embedding"])
    assert mask["token_embed"]["embedding"] is False
    assert mask["block_0"]["norm_1"]["scale"] is False
    assert mask["block_0"]["mlp"]["bias"] is False
    assert mask["block_0"]["mlp"]["kernel"] is True
    everything = decay_mask(_params(), [])
    assert all(jax.tree_util.tree_leaves(everything))


def test_clipping_bounds_the_update() -> None:
    cfg = OptimizerConfig(
        name="sgd",
        lr=1.0,
        weight_decay=0.0,
        clip_norm=1.0,
        schedule=ScheduleConfig(name="constant", warmup_frac=0.0),
    )
    tx, _ = build_optimizer(cfg, total_steps=10)
    g = {"w": jnp.full((4,), 10.0)}
    updates, _ = tx.update(g, tx.init(g), g)
    assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(
    ("name", "nesterov"), [(n, False) for n in OPTIMIZERS] + [("momentum", True)]
)
def test_each_optimizer_reduces_a_quadratic(name: str, nesterov: bool) -> None:
    lr = {"sgd": 0.1, "momentum": 0.05, "adam": 0.05, "adamw": 0.05, "adafactor": 0.05}[name]
    cfg = OptimizerConfig(
        name=name,
        lr=lr,
        nesterov=nesterov,
        weight_decay=0.01,
        schedule=ScheduleConfig(name="warmup_cosine", warmup_frac=0.1),
    )
    tx, _ = build_optimizer(cfg, total_steps=100)
    target = jnp.arange(12.0).reshape(3, 4) / 12.0
    params = {"dense": {"kernel": jnp.zeros((3, 4))}}

    def loss(p: dict) -> jax.Array:
        return jnp.sum((p["dense"]["kernel"] - target) ** 2)

    @jax.jit
    def step(p: dict, s: optax.OptState) -> tuple[dict, optax.OptState]:
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    start = float(loss(params))
    for _ in range(100):
        params, state = step(params, state)
    assert float(loss(params)) < 0.1 * start


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_decoupled_decay_is_scaled_by_lr_and_masked(name: str) -> None:
    cfg = OptimizerConfig(
        name=name,
        lr=0.1,
        weight_decay=0.5,
        clip_norm=None,
        schedule=ScheduleConfig(name="constant", warmup_frac=0.0),
    )
    tx, _ = build_optimizer(cfg, total_steps=10)
    params = _params()
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    # Zero gradient: only decoupled decay moves a weight, by -lr * wd * w; norms, biases and
    # embeddings are skipped.
    np.testing.assert_allclose(updates["block_0"]["mlp"]["kernel"], -0.05, rtol=1e-6)
    np.testing.assert_allclose(updates["block_0"]["mlp"]["bias"], 0.0)
    np.testing.assert_allclose(updates["block_0"]["norm_1"]["scale"], 0.0)
    np.testing.assert_allclose(updates["token_embed"]["embedding"], 0.0)
