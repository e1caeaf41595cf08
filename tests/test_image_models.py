"""MLP and ResNet: shapes, batch norm in train vs eval, hand counts, activations, training."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalinglab.config import ACTIVATIONS, MLPConfig, ResNetConfig, trial_from_dict
from scalinglab.flops import param_counts
from scalinglab.models import build_model, count_params
from scalinglab.optim import decay_mask
from scalinglab.train.tasks import build_task, split_variables

SHAPE = {"image_size": 8, "in_channels": 1, "n_classes": 10}


def _mlp(**kw: Any) -> MLPConfig:
    return MLPConfig(**{**SHAPE, "width": 16, "depth": 2, **kw})


def _resnet(**kw: Any) -> ResNetConfig:
    return ResNetConfig(**{**SHAPE, "width": 4, "depth": 1, "stages": 2, **kw})


_INIT_CACHE: dict[str, tuple[Any, dict]] = {}


def _init(cfg: Any) -> tuple[Any, dict]:
    """The module and its variables; init is jitted (eager conv init is slow on CPU) and cached
    per config, since several tests share one."""
    key = cfg.model_dump_json()
    if key not in _INIT_CACHE:
        model = build_model(cfg)
        x = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.in_channels))
        variables = jax.jit(lambda k: model.init({"params": k}, x))(jax.random.PRNGKey(0))
        _INIT_CACHE[key] = (model, variables)
    return _INIT_CACHE[key]


def _shapes(cfg: Any) -> dict:
    """Parameter shapes without computing any values (all that counting needs)."""
    model = build_model(cfg)
    x = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.in_channels))
    return jax.eval_shape(lambda k: model.init({"params": k}, x), jax.random.PRNGKey(0))


def _fake_init(cfg: Any, seed: int = 0) -> tuple[Any, dict]:
    """Variables of the right shapes filled from numpy, for tests that do not depend on the
    initialisers: compiling a jitted init is most of a test's time on CPU (its random draws)."""
    rng = np.random.default_rng(seed)

    def fill(path: Any, leaf: Any) -> np.ndarray:
        name = str(path[-1].key)
        if name == "var":
            return np.ones(leaf.shape, np.float32)
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        std = 1.0 / np.sqrt(fan_in) if name == "kernel" else 0.1
        return (std * rng.standard_normal(leaf.shape)).astype(np.float32)

    variables = jax.tree_util.tree_map_with_path(fill, _shapes(cfg))
    return build_model(cfg), variables


def _apply(
    model: Any,
    variables: Any,
    x: jax.Array,
    train: bool = False,
    rngs: Any = None,
    mutable: Any = False,
) -> Any:
    """`model.apply` under jit (eager convolutions are slow on CPU)."""
    fn = jax.jit(lambda v, x, r: model.apply(v, x, train=train, rngs=r, mutable=mutable))
    return fn(variables, x, rngs)


def _images(n: int, cfg: Any, seed: int = 0) -> jax.Array:
    shape = (n, cfg.image_size, cfg.image_size, cfg.in_channels)
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


@pytest.mark.parametrize("cfg", [_mlp(residual=True, depth=3), _resnet()], ids=["mlp", "resnet"])
def test_real_init_zero_head_gives_uniform_predictions(cfg: Any) -> None:
    # The head is zero-initialised: the first loss is exactly log(n_classes).
    model, variables = _init(cfg)
    np.testing.assert_array_equal(_apply(model, variables, _images(4, cfg)), 0.0)
    assert count_params(variables["params"]) == param_counts(cfg)


def test_param_counts_by_hand() -> None:
    shape = {"image_size": 4, "in_channels": 1, "n_classes": 3}
    # MLP 16 -> 8 -> 8 -> 3: weights and biases.
    assert param_counts(MLPConfig(**shape, width=8, depth=2))["total"] == (
        16 * 8 + 8 + 8 * 8 + 8 + 8 * 3 + 3
    )
    # Batch norm: no bias before a norm, which has scale and shift.
    assert param_counts(MLPConfig(**shape, width=8, depth=2, batch_norm=True))["total"] == (
        16 * 8 + 2 * 8 + 8 * 8 + 2 * 8 + 8 * 3 + 3
    )
    # swiglu: gate and value projections; binary: one logit.
    two = {**shape, "n_classes": 2}
    assert param_counts(MLPConfig(**two, width=8, depth=1, activation="swiglu"))["total"] == (
        16 * 16 + 16 + 8 * 1 + 1
    )
    # ResNet, width 2, 2 stages of 1 block, batch norm: stem 1->2; block 2->2 twice;
    # transition 2->4; block 4->4 twice; head 4->3.
    n = param_counts(ResNetConfig(**shape, width=2, depth=1, stages=2))
    assert n == {"total": 501, "embedding": 0, "non_embedding": 501}
    assert 501 == (9 * 1 * 2 + 4) + 2 * (9 * 2 * 2 + 4) + (9 * 2 * 4 + 8) + 2 * (9 * 4 * 4 + 8) + 15


@pytest.mark.parametrize("cfg", [_mlp(batch_norm=True), _resnet()], ids=["mlp", "resnet"])
def test_batch_norm_train_vs_eval(cfg: Any) -> None:
    model, variables = _fake_init(cfg)
    params = {"params": variables["params"]}
    stats = variables["batch_stats"]
    # Make the head non-zero so logits depend on the features.
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)
    x = _images(8, cfg) * 3.0 + 1.0
    other = x.at[1:].set(_images(7, cfg, seed=1))
    # Train mode: batch statistics, so example 0's output depends on the rest of the batch,
    # and the running averages move towards the batch's.
    y, upd = _apply(model, {**params, "batch_stats": stats}, x, True, mutable=["batch_stats"])
    y2, _ = _apply(model, {**params, "batch_stats": stats}, other, True, mutable=["batch_stats"])
    assert not np.allclose(y[0], y2[0])
    leaves = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(jnp.array_equal, stats, upd["batch_stats"])
    )
    assert not any(leaves)
    # Eval mode: running averages, so examples are independent and nothing is updated.
    v = {**params, "batch_stats": upd["batch_stats"]}
    e, e2 = _apply(model, v, x), _apply(model, v, other)
    np.testing.assert_allclose(e[0], e2[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="batch_stats"):
        model.apply({**params}, x, train=False)  # eval needs the statistics


def test_task_carries_batch_stats_and_eval_uses_them() -> None:
    cfg = trial_from_dict(
        {"model": {"family": "resnet", **SHAPE, "width": 4}, "data": {"source": "digits"}}
    )
    task = build_task(cfg, build_model(cfg.model))
    params, state = split_variables(_init(cfg.model)[1])  # what task.init gives, cached
    batch = task.example_batch(8, np.random.default_rng(0))
    loss = jax.jit(task.loss)
    _, (metrics, new_state) = loss(params, state, batch, jax.random.PRNGKey(1), 0)
    assert set(metrics) == {"loss", "accuracy"}
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    assert not np.array_equal(
        jax.tree_util.tree_leaves(new_state)[0], jax.tree_util.tree_leaves(state)[0]
    )
    _, (_, eval_state) = loss(params, new_state, batch, None, 0)
    leaves = zip(jax.tree.leaves(eval_state), jax.tree.leaves(new_state), strict=True)
    for a, b in leaves:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("family", "activation"),
    [("mlp", a) for a in ACTIVATIONS] + [("resnet", "gelu"), ("resnet", "swiglu")],
)
def test_each_activation_gives_finite_logits(family: str, activation: str) -> None:
    # The ResNet shares the MLP's activation code; its gated (swiglu) path is the one to check.
    cfg = (_mlp if family == "mlp" else _resnet)(activation=activation)
    model, variables = _fake_init(cfg)
    y = _apply(model, variables, _images(4, cfg))
    assert bool(jnp.isfinite(y).all()) and float(jnp.std(y)) > 0


def test_dropout_only_in_training() -> None:
    cfg = _mlp(dropout=0.5)
    model, variables = _fake_init(cfg)
    x = _images(4, cfg)
    a = _apply(model, variables, x, True, rngs={"dropout": jax.random.PRNGKey(0)})
    b = _apply(model, variables, x, True, rngs={"dropout": jax.random.PRNGKey(1)})
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))


def test_deep_residual_mlp_stays_finite_and_bounded() -> None:
    # depth 24 without norms: the scaled residual branches keep activations O(1).
    cfg = _mlp(depth=24, width=32, residual=True)
    model, variables = _init(cfg)
    _, inter = model.apply(
        variables, _images(16, cfg), capture_intermediates=True, mutable=["intermediates"]
    )
    last = inter["intermediates"]["dense_23"]["__call__"][0]
    assert bool(jnp.isfinite(last).all()) and float(jnp.std(last)) < 10.0


def test_bfloat16_compute_keeps_float32_params_and_logits() -> None:
    for cfg in (_mlp(dtype="bfloat16", batch_norm=True), _resnet(dtype="bfloat16")):
        variables = _shapes(cfg)  # dtypes only: no need to compute anything
        assert {p.dtype for p in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}
        logits = jax.eval_shape(build_model(cfg).apply, variables, _images(2, cfg))
        assert logits.dtype == jnp.float32


def test_norm_and_bias_parameters_skip_weight_decay() -> None:
    variables = _shapes(_resnet())
    mask = decay_mask(variables["params"], ["norm", "bias"])
    flat = {
        "/".join(str(k.key) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(mask)
    }
    assert flat["stem/kernel"] and flat["head/kernel"]
    assert not flat["stem_norm/bn/scale"] and not flat["head/bias"]
