"""The regression source (`data.source: functions`) and the MLP's regression task: generated
targets against closed forms, the MSE and its gradient against a hand computation, a short
training run, counts, and the located config errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalinglab.config import ConfigError, DataConfig, load_trial, trial_from_dict
from scalinglab.data import DataError, build_dataset
from scalinglab.flops import flops_per_token, param_counts
from scalinglab.models import build_model, count_params
from scalinglab.train import run_trial
from scalinglab.train.tasks import build_task

# Each function written out here again, independently of scalinglab.data.functions.
CLOSED_FORMS: dict[str, tuple[int, Any]] = {
    "sine": (1, lambda x: np.sin(np.pi * x[:, 0])),
    "abs": (1, lambda x: np.abs(x[:, 0])),
    "high_freq": (1, lambda x: np.sin(4 * np.pi * x[:, 0])),
    "product_2d": (2, lambda x: x[:, 0] * x[:, 1]),
    "gaussian_bump_2d": (2, lambda x: np.exp(-4 * (x[:, 0] ** 2 + x[:, 1] ** 2))),
    "kink_2d": (2, lambda x: np.hypot(x[:, 0], x[:, 1])),
}


def _data(name: str, **fields: Any) -> DataConfig:
    return DataConfig(source="functions", functions={"name": name, **fields})


def _trial(model: dict[str, Any] | None = None, **functions: Any) -> dict[str, Any]:
    return {
        "model": {"family": "mlp", "width": 8, "depth": 1, **(model or {})},
        "data": {"source": "functions", "functions": {"n_train": 64, "n_val": 64, **functions}},
    }


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_targets_are_the_function_at_the_inputs(name: str) -> None:
    d, f = CLOSED_FORMS[name]
    ds = build_dataset(_data(name, n_train=300, n_val=200, seed=3))
    assert ds.train_inputs.shape == (300, d) and ds.val_inputs.shape == (200, d)
    for x, y in [(ds.train_inputs, ds.train_targets), (ds.val_inputs, ds.val_targets)]:
        assert x.dtype == np.float32 and y.dtype == np.float32
        assert x.min() >= -1.0 and x.max() <= 1.0 and x.std() > 0.5  # uniform on [-1, 1]
        np.testing.assert_allclose(y, f(x.astype(np.float64)), rtol=1e-6, atol=1e-7)
    assert ds.info["n_inputs"] == d and ds.info["function"] == name
    assert ds.info["target_var"] == pytest.approx(np.var(f(ds.val_inputs.astype(np.float64))))


def test_noise_only_on_training_targets_and_seeded() -> None:
    clean = build_dataset(_data("sine", n_train=4000, n_val=100))
    noisy = build_dataset(_data("sine", n_train=4000, n_val=100, noise=0.1))
    np.testing.assert_array_equal(clean.train_inputs, noisy.train_inputs)
    np.testing.assert_array_equal(clean.val_targets, noisy.val_targets)  # validation exact
    assert np.std(noisy.train_targets - clean.train_targets) == pytest.approx(0.1, rel=0.05)
    again = build_dataset(_data("sine", n_train=4000, n_val=100, noise=0.1))
    np.testing.assert_array_equal(again.train_targets, noisy.train_targets)
    other = build_dataset(_data("sine", n_train=4000, n_val=100, seed=1))
    assert not np.array_equal(other.train_inputs, clean.train_inputs)
    # The validation set does not depend on n_train; train_subset keeps the first examples.
    fewer = build_dataset(_data("sine", n_train=10, n_val=100))
    np.testing.assert_array_equal(fewer.val_inputs, clean.val_inputs)
    cut = build_dataset(
        DataConfig(source="functions", train_subset=10, functions={"n_train": 4000})
    )
    np.testing.assert_array_equal(cut.train_inputs, clean.train_inputs[:10])
    batch = cut.train_batch(3, 4, seed=0)
    assert set(batch) == {"x", "y"} and batch["x"].shape == (4, 1)


def _hand_task() -> tuple[Any, dict[str, Any]]:
    """A width-2 relu MLP on 1-D inputs with hand-set parameters."""
    cfg = trial_from_dict(_trial({"width": 2, "activation": "relu"}))
    task = build_task(cfg, build_model(cfg.model))
    params = {
        "dense_0": {"kernel": jnp.array([[1.0, -1.0]]), "bias": jnp.array([0.0, 0.5])},
        "head": {"kernel": jnp.array([[2.0], [3.0]]), "bias": jnp.array([0.1])},
    }
    return task, params


def test_mse_and_its_gradient_equal_a_hand_computation() -> None:
    task, params = _hand_task()
    x = np.array([0.5, -1.0, 2.0])
    y = np.array([1.0, 0.0, 3.0])
    h = np.stack([np.maximum(x, 0.0), np.maximum(-x + 0.5, 0.0)], axis=1)  # (3, 2)
    pred = h @ np.array([2.0, 3.0]) + 0.1  # 1.1, 4.6, 4.1
    err = pred - y
    batch = {"x": jnp.asarray(x[:, None], jnp.float32), "y": jnp.asarray(y, jnp.float32)}

    def loss(p: Any) -> jax.Array:
        return task.loss(p, {}, batch, jax.random.PRNGKey(0), jnp.int32(0))[0]

    value, grads = jax.value_and_grad(loss)(params)
    assert float(value) == pytest.approx(np.mean(err**2), rel=1e-6)
    np.testing.assert_allclose(grads["head"]["kernel"][:, 0], 2 * (err @ h) / 3, rtol=1e-6)
    np.testing.assert_allclose(grads["head"]["bias"], [2 * err.mean()], rtol=1e-6)
    active = (h > 0).astype(float) * np.array([2.0, 3.0])  # d pred / d pre-activation
    dpre = 2 * err[:, None] * active / 3
    np.testing.assert_allclose(grads["dense_0"]["bias"], dpre.sum(0), rtol=1e-6)
    np.testing.assert_allclose(grads["dense_0"]["kernel"][0], x @ dpre, rtol=1e-6)

    # Validation: padding (weight 0) is left out, and the batch reports its examples.
    weighted = {**batch, "weight": jnp.array([1.0, 1.0, 0.0])}
    _, (metrics, _) = task.loss(params, {}, weighted, None, jnp.int32(0))
    assert float(metrics["mse"]) == pytest.approx(np.mean(err[:2] ** 2), rel=1e-6)
    assert float(metrics["loss"]) == float(metrics["mse"]) and float(metrics["examples"]) == 2


@pytest.mark.parametrize(("name", "width"), [("sine", 5), ("kink_2d", 3)])
def test_counts_equal_the_initialised_model(name: str, width: int) -> None:
    d = CLOSED_FORMS[name][0]
    cfg = trial_from_dict(_trial({"width": width}, name=name))
    assert cfg.model.n_inputs == d and cfg.model.n_classes is None
    task = build_task(cfg, build_model(cfg.model))
    params, _ = task.init(jax.random.PRNGKey(0))
    n = (d * width + width) + (width + 1)  # hidden layer, one-output head
    want = {"total": n, "embedding": 0, "non_embedding": n}
    assert param_counts(cfg.model) == count_params(params) == want
    assert flops_per_token(cfg.model, 1, "kaplan") == 6 * n
    assert flops_per_token(cfg.model, 1, "full") == 3 * 2 * (d * width + width)


def test_mlp_learns_a_function(tmp_path: Path) -> None:
    """A few dozen full-batch Adam steps take the eval MSE far below the target variance
    (the MSE of predicting the mean)."""
    cfg = trial_from_dict(
        {
            **_trial({"width": 32, "activation": "tanh"}, name="sine", n_train=256, n_val=256),
            "optimizer": {"name": "adam", "lr": 3e-2, "schedule": {"name": "constant"}},
            "train": {
                "batch_size": 256,
                "budget": {"steps": 60},
                "eval_every": 60,
                "log_every": 20,
                "eval_tokens": 256,
                "checkpoint_every": 60,
            },
        }
    )
    s = run_trial(cfg, tmp_path / "run")
    var = s["data"]["target_var"]
    assert s["final_eval_mse"] == s["final_eval_loss"] < 0.05 * var
    assert s["final_eval_examples"] == 256 and s["D"] == 60 * 256
    assert s["C"] == 60 * 256 * 6 * s["N"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # a function that does not exist: its field and the allowed names
            "model: {family: mlp}\ndata:\n  source: functions\n  functions:\n    name: sinus\n",
            "trial.yaml:5: data.functions.name: not allowed; expected 'sine', 'abs', "
            "'high_freq', 'product_2d', 'gaussian_bump_2d' or 'kink_2d' (got 'sinus')",
        ),
        (  # a family that cannot regress: located at model.family, the sources it takes
            "model:\n  family: gpt\ndata: {source: functions}\n",
            "trial.yaml:2: model.family 'gpt' cannot train on data.source 'functions'; "
            "allowed sources: stdlib, text, tokens, synthetic",
        ),
        (
            "model:\n  family: resnet\ndata: {source: functions}\n",
            "trial.yaml:2: model.family 'resnet' cannot train on data.source 'functions'; "
            "allowed sources: digits, shapes",
        ),
        (
            "model:\n  family: mlp\n  n_inputs: 1\ndata:\n  source: functions\n"
            "  functions: {name: kink_2d}\n",
            "trial.yaml:3: model.n_inputs (1) does not match data.functions.name 'kink_2d' "
            "(2 inputs); set model.n_inputs: 2",
        ),
        (
            "model:\n  family: mlp\n  n_classes: 10\ndata: {source: functions}\n",
            "trial.yaml:3: model.n_classes applies to image sources only",
        ),
        (
            "model:\n  family: mlp\n  n_inputs: 64\ndata: {source: digits}\n",
            "trial.yaml:3: model.n_inputs applies to regression sources only",
        ),
        (
            "model: {family: mlp}\ndata:\n  source: functions\n  augment: {flip: true}\n",
            "trial.yaml:4: data.augment applies to image sources only (digits, shapes); "
            "data.source is 'functions'",
        ),
        (
            "model: {family: mlp}\ndata:\n  source: functions\n  seq_len: 8\n",
            "trial.yaml:4: data.seq_len must be 1 for regression source 'functions'",
        ),
        (
            "model: {family: mlp}\ndata:\n  source: functions\n  functions: {noise: -1}\n",
            "trial.yaml:4: data.functions.noise: Input should be greater than or equal to 0",
        ),
    ],
)
def test_config_errors_are_one_located_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "trial.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_trial(path)
    message = str(info.value)
    assert "\n" not in message and expected in message, message


def test_more_train_subset_than_examples_is_one_line() -> None:
    data = DataConfig(source="functions", train_subset=100, functions={"n_train": 50})
    with pytest.raises(DataError, match=r"^data.train_subset: 100 is more than the 50 training"):
        build_dataset(data)
