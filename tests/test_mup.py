"""muP (`model.parametrization: mup`): the coordinate check, equality with the standard
parametrisation at the base width, and each rule of `scalinglab.mup` against its table."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_trial
from scalinglab import mup
from scalinglab.config import ConfigError, trial_from_dict
from scalinglab.train.state import init_state
from scalinglab.train.trainer import build_trainer

leaves = jax.tree_util.tree_leaves


def _gpt(width: int, param: str = "standard", base: int = 64, **more: Any) -> Any:
    over: dict[str, Any] = {
        "model.d_model": width,
        "model.n_head": 2,
        "data.seq_len": 8,
        "train.batch_size": 4,
        "optimizer.name": "adam",
        "optimizer.lr": 1e-2,
        "optimizer.schedule.name": "constant",
        "optimizer.schedule.warmup_frac": 0.0,
        **more,
    }
    if param == "mup":
        over |= {"model.parametrization": "mup", "model.mup_base_width": base}
    return tiny_trial(**over)


def _mlp(width: int, param: str = "standard", base: int = 16, opt: str = "sgd") -> Any:
    model: dict[str, Any] = {"family": "mlp", "width": width, "depth": 2}
    if param == "mup":
        model |= {"parametrization": "mup", "mup_base_width": base}
    return trial_from_dict(
        {
            "model": model,
            "data": {"source": "digits"},
            "optimizer": {"name": opt, "lr": 0.1, "schedule": {"name": "constant"}},
            "train": {"batch_size": 16, "budget": {"steps": 10}},
        }
    )


def _train(cfg: Any, steps: int) -> Any:
    """The state after `steps` train steps on fixed random batches (seed 0)."""
    trainer = build_trainer(cfg, 100)
    state = init_state(trainer.task, trainer.tx, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    for i in range(steps):
        batch = trainer.task.example_batch(cfg.train.batch_size, rng)
        state, _ = trainer.step_fn(state, batch, jax.random.PRNGKey(i))
    return trainer, state


@pytest.mark.parametrize("make", [_gpt, _mlp], ids=["gpt", "mlp"])
def test_mup_at_the_base_width_is_the_standard_parametrisation(make: Any) -> None:
    """At width = base width every muP factor is 1: the same init, the same updates, the same
    parameters after three steps, bit for bit."""
    width = 32 if make is _gpt else 16
    _, sp = _train(make(width), 3)
    _, mu = _train(make(width, "mup", base=width), 3)
    for x, y in zip(leaves(sp.params), leaves(mu.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _block_rms(cfg: Any, steps: int = 3) -> dict[str, float]:
    """RMS of the residual stream after each block and of the logits, after `steps` Adam
    steps at lr 1e-2, on one fixed batch."""
    trainer, state = _train(cfg, steps)
    tokens = trainer.task.example_batch(4, np.random.default_rng(99))[:, :-1]
    logits, inter = trainer.task.model.apply(
        {"params": state.params}, tokens, capture_intermediates=True, mutable=["intermediates"]
    )
    rms = lambda x: float(jnp.sqrt(jnp.mean(jnp.square(x))))  # noqa: E731
    out = {"logits": rms(logits)}
    for name, module in inter["intermediates"].items():
        if name.startswith("block_"):
            out[name] = rms(module["__call__"][0])
    return out


def test_coordinate_check_activations_stay_flat_with_width_under_mup_only() -> None:
    """Yang et al.'s coordinate check: a 1-layer GPT at widths 64 and 1024 after three Adam
    steps at lr 1e-2. Under the standard parametrisation the update of every matrix adds up
    over its fan-in, so the residual stream and the logits grow with width (measured: 10x and
    more; 4x for 64 -> 256); under muP (base 64, where it is the standard model) they stay
    within a factor of 2."""
    base = _block_rms(_gpt(64))
    sp, mu = _block_rms(_gpt(1024)), _block_rms(_gpt(1024, "mup", base=64))
    assert set(base) == {"logits", "block_0"}
    for key in base:
        assert sp[key] / base[key] > 8.0, (key, sp[key], base[key])
        assert 0.5 < mu[key] / base[key] < 2.0, (key, mu[key], base[key])


@pytest.mark.parametrize(
    ("shape", "base", "adam", "sgd"),
    [
        ((256, 768), (64, 192), (1 / 4, 4.0), (1.0, 1.0)),  # hidden: both dimensions grow 4x
        ((256, 64), (64, 64), (1.0, 1.0), (4.0, 1 / 4)),  # readout (fan-in grows)
        ((256, 256), (256, 64), (1.0, 1.0), (4.0, 1 / 4)),  # embedding / first layer (fan-out)
        ((256,), (64,), (1.0, 1.0), (4.0, 1 / 4)),  # bias, norm
        ((32, 2), (32, 2), (1.0, 1.0), (1.0, 1.0)),  # nothing grows
        ((512, 256), (64, 64), (1 / 8, 8.0), (0.5, 2.0)),  # fan-in 8x, fan-out 4x
    ],
)
def test_learning_rate_and_decay_factors_follow_the_mup_tables(shape, base, adam, sgd) -> None:
    """Yang et al. 2022, table 3 as the `mup` package applies it relative to a base shape:
    Adam divides a hidden matrix's rate by its fan-in mult (and multiplies coupled decay by
    it); SGD scales a vector-like parameter's rate by its growing dimension's mult and a
    matrix's by fan-out mult / fan-in mult (decay inversely)."""
    assert mup.leaf_scales(shape, base, "adamw") == pytest.approx(adam)
    assert mup.leaf_scales(shape, base, "momentum") == pytest.approx(sgd)


def test_mup_init_readout_and_attention_scale_with_width() -> None:
    """At 4x the base width: hidden kernels start with std 0.02 / 2, embeddings with 0.02; the
    learning-rate tree gives hidden kernels 1/4 and everything else 1 (Adam); the logits are
    the standard model's / 4 on the same parameters with the attention's queries scaled by
    1/2 (scores sqrt(Dh_base) / Dh instead of 1 / sqrt(Dh))."""
    cfg = _gpt(256, "mup", base=64, **{"model.n_layer": 1})
    trainer = build_trainer(cfg, 10)
    params = init_state(trainer.task, trainer.tx, jax.random.PRNGKey(0)).params
    qkv = np.asarray(params["block_0"]["attn"]["qkv"]["kernel"])  # 256 x 768: +-0.5% sd error
    assert qkv.std() == pytest.approx(0.01, rel=0.03)
    assert np.asarray(params["token_embed"]["embedding"]).std() == pytest.approx(0.02, rel=0.03)
    lr, _ = mup.scales(cfg, trainer.task)
    flat = {jax.tree_util.keystr(p): float(v) for p, v in jax.tree_util.tree_leaves_with_path(lr)}
    hidden = {k for k in flat if "kernel" in k}
    assert hidden == {
        f"['block_0']['{m}']['{n}']['kernel']"
        for m, n in (("attn", "qkv"), ("attn", "proj"), ("mlp", "up"), ("mlp", "down"))
    }
    assert all(flat[k] == 0.25 for k in hidden) and all(flat[k] == 1.0 for k in set(flat) - hidden)

    # The same parameters in the standard model, with the queries' third of qkv halved: the
    # logits are 4x muP's.
    sp_cfg = _gpt(256, **{"model.n_layer": 1})
    sp_model = build_trainer(sp_cfg, 10).task.model
    sp_params = jax.tree_util.tree_map(lambda x: x, params)
    kernel = params["block_0"]["attn"]["qkv"]["kernel"]
    bias = params["block_0"]["attn"]["qkv"]["bias"]
    sp_params["block_0"]["attn"]["qkv"] = {
        "kernel": kernel.at[:, :256].multiply(0.5),
        "bias": bias.at[:256].multiply(0.5),
    }
    tokens = trainer.task.example_batch(4, np.random.default_rng(1))[:, :-1]
    mu_logits = trainer.task.model.apply({"params": params}, tokens)
    sp_logits = sp_model.apply({"params": sp_params}, tokens)
    np.testing.assert_allclose(
        np.asarray(mu_logits) * 4, np.asarray(sp_logits), rtol=1e-4, atol=1e-6
    )


def test_cached_decoding_matches_the_full_pass_under_mup() -> None:
    """The KV-cache path applies muP's query and readout factors too."""
    from scalinglab.models.gpt import CachedGPT, init_cache

    cfg = _gpt(128, "mup", base=32, **{"model.n_layer": 1})
    trainer, state = _train(cfg, 2)
    tokens = trainer.task.example_batch(2, np.random.default_rng(3))[:, :8]
    full = trainer.task.model.apply({"params": state.params}, tokens)
    cached, _ = CachedGPT(cfg.model).apply(
        {"params": state.params}, tokens, init_cache(cfg.model, 2, 8), 0
    )
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("model", "optimizer", "match"),
    [
        ({"parametrization": "mup"}, "adamw", r"model.mup_base_width is required"),
        ({"mup_base_width": 64}, "adamw", r"applies only with parametrization: mup"),
        ({"family": "bert", "parametrization": "mup", "mup_base_width": 64}, "adamw", "bert"),
        ({"parametrization": "mup", "mup_base_width": 64}, "adafactor", r"optimizer.name"),
    ],
)
def test_mup_config_errors_name_the_field(model, optimizer, match) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        trial_from_dict({"model": model, "optimizer": {"name": optimizer}})
    assert "\n" not in str(e.value)


def test_mlp_mup_sgd_rates_and_readout() -> None:
    """The MLP under muP with SGD at 4x: the first layer (fan-out grows), biases and the head
    (fan-in grows) train 4x faster, the hidden matrix at the base rate; the head's output is
    divided by 4."""
    cfg = _mlp(64, "mup", base=16, opt="sgd")
    trainer = build_trainer(cfg, 10)
    lr, decay = mup.scales(cfg, trainer.task)
    assert float(lr["dense_0"]["kernel"]) == 4.0 and float(lr["dense_1"]["kernel"]) == 1.0
    assert float(lr["head"]["kernel"]) == 4.0 and float(lr["dense_1"]["bias"]) == 4.0
    assert float(decay["head"]["kernel"]) == 0.25
    params = init_state(trainer.task, trainer.tx, jax.random.PRNGKey(0)).params
    params["head"]["kernel"] = jnp.ones_like(params["head"]["kernel"])
    images = trainer.task.example_batch(3, np.random.default_rng(0))["image"]
    mu = trainer.task.model.apply({"params": params}, images)
    sp = build_trainer(_mlp(64), 10).task.model.apply({"params": params}, images)
    np.testing.assert_allclose(np.asarray(mu) * 4, np.asarray(sp), rtol=1e-6)
