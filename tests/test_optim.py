"""Optimiser chains and schedules against closed forms."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_trial
from scalinglab.config import OptimizerConfig, ScheduleConfig
from scalinglab.models import build_model
from scalinglab.optim import (
    OPTIMIZERS,
    build_optimizer,
    build_schedule,
    build_update_rule,
    decay_mask,
    lr_at,
    schedule_params,
)
from scalinglab.train.loop import build_trainer
from scalinglab.train.state import abstract_state, init_state
from scalinglab.train.step import train_step
from scalinglab.train.tasks import build_task


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
    # A norm's bias is the norm's (a parent named norm), not a plain bias: only "norm" skips it.
    norms_only = decay_mask(_params(), ["norm"])
    assert norms_only["block_0"]["norm_1"]["bias"] is False
    assert norms_only["block_0"]["mlp"]["bias"] is True


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


@pytest.mark.parametrize("total", [1, 7, 100, 1001])
def test_schedules_match_optax(total: int) -> None:
    # The project's schedule (one formula, traced arguments) against optax's own schedules.
    lr, w = 0.3, int(round(0.1 * total))
    cosine = optax.warmup_cosine_decay_schedule(0.0, lr, w, max(total, w + 1), 0.03)
    decay = int(round(0.2 * total))
    stable = max(total - w - decay, 0)
    wsd = optax.join_schedules(
        [
            optax.linear_schedule(0.0, lr, w),
            optax.constant_schedule(lr),
            optax.linear_schedule(lr, 0.03, max(decay, 1)),
        ],
        [w, w + stable],
    )
    refs = {"warmup_cosine": cosine, "wsd": wsd}
    if w > 0:
        refs["constant"] = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, w), optax.constant_schedule(lr)], [w]
        )
    for name, ref in refs.items():
        cfg = ScheduleConfig(name=name, warmup_frac=0.1, final_lr_frac=0.1, decay_frac=0.2)
        ours = build_schedule(cfg, lr=lr, total_steps=total)
        hp = schedule_params(cfg, lr, total)
        for k in sorted({0, 1, w, w + 1, total // 2, total - 1, total, total + 5}):
            want = float(ref(k))
            assert float(ours(k)) == pytest.approx(want, rel=1e-5, abs=1e-7), (name, k)
            assert float(lr_at(k, hp, name, xp=np)) == pytest.approx(want, rel=1e-5, abs=1e-7)


# momentum (a trace before the lr, like adamw's moments) runs with -m slow.
@pytest.mark.parametrize(
    "name", [pytest.param("momentum", marks=pytest.mark.slow), "adamw", "adafactor"]
)
def test_update_rule_scaled_in_step_equals_full_chain(name: str) -> None:
    # The trainer's form (rule without lr, -lr(step) applied in the step from arguments) gives
    # bit-identical parameters to the complete optax chain over warmup and decay.

    cfg = tiny_trial(**{"optimizer.name": name, "optimizer.clip_norm": 0.5})
    steps = 6
    sched = cfg.optimizer.schedule.model_copy(update={"warmup_frac": 0.34})
    ocfg = cfg.optimizer.model_copy(update={"schedule": sched})
    task = build_task(cfg, build_model(cfg.model))
    full, _ = build_optimizer(ocfg, steps)
    rule = build_update_rule(ocfg)
    hp = schedule_params(sched, ocfg.lr, steps)
    step_full = jax.jit(functools.partial(train_step, task=task, tx=full))
    step_rule = jax.jit(
        functools.partial(
            train_step, task=task, tx=rule, lr_fn=functools.partial(lr_at, name=sched.name)
        )
    )
    a = init_state(task, full, jax.random.PRNGKey(0))
    b = init_state(task, rule, jax.random.PRNGKey(0))
    batch = np.random.default_rng(0).integers(0, 32, (8, cfg.data.seq_len + 1), dtype=np.int32)
    for _ in range(steps):
        a, _ = step_full(a, batch, jax.random.PRNGKey(1))
        b, _ = step_rule(b, batch, jax.random.PRNGKey(1), hp)
    leaves = jax.tree_util.tree_leaves
    for x, y in zip(leaves(a.params), leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    start = leaves(init_state(task, full, jax.random.PRNGKey(0)).params)
    moved = [float(jnp.abs(x - s).max()) for x, s in zip(leaves(a.params), start, strict=True)]
    assert max(moved) > 0


def test_budget_and_lr_do_not_change_the_compiled_step() -> None:
    # Every IsoFLOP budget of one model size (and every lr of an lr sweep) lowers to the same
    # train-step program, so a sweep compiles it once per shape, not once per trial.

    def hlo(**overrides: object) -> str:
        cfg = tiny_trial(**overrides)
        trainer = build_trainer(cfg, 10 * cfg.train.budget.steps)
        state = abstract_state(trainer.task, trainer.tx)
        batch = trainer.task.example_batch(cfg.train.batch_size, np.random.default_rng(0))
        jitted = trainer.step_fn.func  # the jitted step, before its schedule numbers are bound
        return jitted.lower(
            state, batch, jax.random.PRNGKey(0), **trainer.step_fn.keywords
        ).as_text()

    base = hlo()
    assert hlo(**{"train.budget": "{steps: 300}", "optimizer.lr": 0.05}) == base
    assert hlo(**{"optimizer.schedule.name": "wsd"}) != base  # a different formula is compiled


def test_trials_of_one_model_share_the_jitted_steps() -> None:
    # A sweep worker's next trial of the same model reuses the traced step; anything the step
    # depends on (model, optimiser rule, schedule formula) gives a new one.
    def jitted(**overrides: object) -> object:
        cfg = tiny_trial(**overrides)
        return build_trainer(cfg, cfg.train.budget.steps).step_fn.func

    base = jitted()
    assert jitted(**{"train.budget": "{steps: 7}", "optimizer.lr": 0.5, "seed": 3}) is base
    assert jitted(**{"model.d_model": 16}) is not base
    assert jitted(**{"optimizer.b2": 0.9}) is not base
    assert jitted(**{"optimizer.schedule.name": "wsd"}) is not base


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_coupled_l2_is_added_to_the_gradient(name: str) -> None:
    """sgd, momentum and adam decay as torch does: wd * param joins the gradient before the
    update rule. With a zero gradient the first update is then a closed form: -wd p for sgd
    and momentum (before the lr), and -(wd p) / (|wd p| + eps) for adam's first step."""
    wd, eps = 0.1, 1e-8
    p = {"w": jnp.array([[0.5, -2.0], [3.0, -0.25]])}
    rule = build_update_rule(OptimizerConfig(name=name, weight_decay=wd, eps=eps))
    updates, _ = rule.update(jax.tree.map(jnp.zeros_like, p), rule.init(p), p)
    g = wd * np.asarray(p["w"])
    want = g / (np.abs(g) + eps) if name == "adam" else g
    np.testing.assert_allclose(np.asarray(updates["w"]), want, rtol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adafactor", "adamw"])
def test_default_weight_decay_is_what_each_optimiser_expects(name: str) -> None:
    """Left out, weight decay is off except for AdamW's decoupled 0.1: with a zero gradient
    and no decay the first update is exactly zero; AdamW's is -0.1 p (before the lr)."""
    p = {"w": jnp.array([[0.5, -2.0], [3.0, -0.25]])}
    cfg = OptimizerConfig(name=name)
    rule = build_update_rule(cfg)
    updates, _ = rule.update(jax.tree.map(jnp.zeros_like, p), rule.init(p), p)
    want = 0.1 * np.asarray(p["w"]) if name == "adamw" else np.zeros((2, 2))
    np.testing.assert_allclose(np.abs(np.asarray(updates["w"])), np.abs(want), atol=1e-7)
    assert cfg.weight_decay == (0.1 if name == "adamw" else 0.0)  # shown in config.yaml


def test_adafactor_clips_its_update_to_block_rms_one() -> None:
    """Adafactor's update clipping (d = 1, Shazeer and Stern 2018): on the first step the
    factored second moment of a 128x128 matrix is r c^T / sum(r) (row and column means of g^2),
    and the update g / sqrt(v) is scaled down to RMS 1 where its RMS exceeds 1."""
    rng = np.random.default_rng(0)
    g = rng.normal(size=(128, 128)) * np.exp(2 * rng.normal(size=(128, 1)))  # rows far apart
    g = g * np.exp(rng.normal(size=(1, 128)))
    g2 = g**2 + 1e-30
    r, c = g2.mean(axis=1), g2.mean(axis=0)
    raw = g / np.sqrt(np.outer(r, c) / r.mean())
    rms = float(np.sqrt(np.mean(raw**2)))
    assert rms > 1.2  # the clipping matters here
    rule = build_update_rule(OptimizerConfig(name="adafactor", weight_decay=0.0, clip_norm=None))
    p = {"w": jnp.zeros((128, 128))}
    updates, _ = rule.update({"w": jnp.asarray(g, jnp.float32)}, rule.init(p), p)
    np.testing.assert_allclose(np.asarray(updates["w"]), raw / rms, rtol=2e-3, atol=1e-6)


def test_plain_sgd_without_clipping_or_decay_passes_the_gradient() -> None:
    """No clipping, no decay (sgd's default): the rule is the identity, -lr x g per step."""
    rule = build_update_rule(OptimizerConfig(name="sgd", clip_norm=None))
    g = {"w": jnp.array([[0.5, -2.0], [3.0, -0.25]])}
    updates, _ = rule.update(g, rule.init(g), g)
    np.testing.assert_array_equal(np.asarray(updates["w"]), np.asarray(g["w"]))
