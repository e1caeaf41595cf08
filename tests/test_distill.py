"""Knowledge distillation (`scalinglab.train.distill`): the loss against numpy, its gradient
against finite differences, weight 0 against plain training, and the teacher's naming."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scalinglab.config import trial_from_dict
from scalinglab.errors import TrialError
from scalinglab.models import build_model
from scalinglab.sweep.expand import trial_id
from scalinglab.train.distill import (
    Distill,
    distill_loss,
    load_teacher,
    soft_kl,
    teacher_config,
    teacher_run_dir,
)
from scalinglab.train.state import TrainState
from scalinglab.train.step import train_step
from scalinglab.train.tasks import build_task

TINY = {
    "model": {"n_layer": 1, "d_model": 8, "n_head": 2},
    "data": {"source": "stdlib", "seq_len": 16},
    "train": {"batch_size": 8, "budget": {"steps": 20}},
}
DISTILL = {"teacher": {"model.d_model": 16}, "teacher_dir": "../teachers"}


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_distill(zs: np.ndarray, zt: np.ndarray, y: np.ndarray, T: float, a: float) -> float:
    """The Hinton et al. objective written out in float64 numpy."""
    ls = _np_log_softmax(zs)
    ce = -np.take_along_axis(ls, y[..., None], axis=-1).mean()
    pt = np.exp(_np_log_softmax(zt / T))
    kl = (pt * (np.log(pt) - _np_log_softmax(zs / T))).sum(-1).mean()
    return float((1 - a) * ce + a * T * T * kl)


def test_distill_loss_equals_numpy_on_hand_made_logits() -> None:
    """Catches a missing T^2, a swapped KL direction, the temperature on one side only, or a
    (1 - a)/a swap: each changes these hand-made numbers by far more than float32 rounding."""
    zs = np.array([[[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, -3.0, 1.0]]])  # (1, 2, 4)
    zt = np.array([[[1.0, 0.0, 2.0, -1.0], [3.0, -2.0, 0.0, 0.5]]])
    y = np.array([[0, 3]])
    for T, a in [(1.0, 0.0), (1.0, 1.0), (2.0, 0.3), (4.0, 0.7)]:
        got, parts = distill_loss(jnp.asarray(zs), jnp.asarray(zt), jnp.asarray(y), T, a)
        assert float(got) == pytest.approx(_np_distill(zs, zt, y, T, a), rel=1e-6, abs=1e-6)
        want_ce = _np_distill(zs, zt, y, T, 0.0)
        assert float(parts["ce"]) == pytest.approx(want_ce, rel=1e-6)
    # A hand-checked value: equal logits give KL 0, so the loss is (1 - a) CE alone.
    same, parts = distill_loss(jnp.asarray(zs), jnp.asarray(zs), jnp.asarray(y), 3.0, 0.5)
    assert float(parts["kl"]) == pytest.approx(0.0, abs=1e-7)
    assert float(same) == pytest.approx(0.5 * float(parts["ce"]), rel=1e-6)


def test_soft_kl_gradient_matches_finite_differences_and_closed_form() -> None:
    """d/dz_s [T^2 KL(p_t^T || p_s^T)] = T (softmax(z_s/T) - softmax(z_t/T)); central
    differences in float32 (step 1e-2: truncation ~1e-5, rounding ~1e-5) agree to 1e-3."""
    rng = np.random.default_rng(0)
    zs = rng.normal(size=(3, 5)).astype(np.float32)
    zt = rng.normal(size=(3, 5)).astype(np.float32)
    T = 2.5

    def f(z: jax.Array) -> jax.Array:
        return T**2 * soft_kl(z, jnp.asarray(zt), T) * z.shape[0]  # sum over positions

    grad = np.asarray(jax.grad(f)(jnp.asarray(zs)))
    f = jax.jit(f)
    h = 1e-2
    fd = np.zeros_like(zs)
    for idx in np.ndindex(zs.shape):
        up, dn = zs.copy(), zs.copy()
        up[idx] += h
        dn[idx] -= h
        fd[idx] = (float(f(jnp.asarray(up))) - float(f(jnp.asarray(dn)))) / (2 * h)
    np.testing.assert_allclose(grad, fd, atol=1e-3)
    p = lambda z: np.exp(_np_log_softmax(z.astype(np.float64) / T))  # noqa: E731
    np.testing.assert_allclose(grad, T * (p(zs) - p(zt)), atol=1e-6)
    # And no gradient flows into the teacher through distill_loss.
    g_t = jax.grad(lambda t: distill_loss(jnp.asarray(zs), t, jnp.zeros(3, int), T, 0.5)[0])
    assert np.all(np.asarray(g_t(jnp.asarray(zt))) == 0.0)


def test_weight_zero_is_plain_training() -> None:
    """Two train steps with the distillation objective at weight 0 give the losses and
    parameters of plain training (the soft term adds exactly 0 to loss and gradient; the
    tolerance covers only the compiler's different fusion)."""
    # A teacher of the student's own shape (another seed), so one jitted init serves both.
    distill = {**DISTILL, "teacher": {"seed": 1}}
    cfg = trial_from_dict({**TINY, "train": {**TINY["train"], "distill": distill}})
    plain_task = build_task(cfg, build_model(cfg.model))
    task = Distill(plain_task, plain_task.model, temperature=2.0, weight=0.0)
    init = jax.jit(plain_task.init)
    teacher_params, _ = init(jax.random.PRNGKey(7))
    tx = optax.adamw(1e-2)
    key = jax.random.PRNGKey(0)
    batches = [
        plain_task.example_batch(8, np.random.default_rng(i)) for i in range(2)
    ]  # (8, 17) int tokens
    params, _ = init(jax.random.PRNGKey(1))
    s_plain = s_dist = TrainState(jnp.zeros([], jnp.int32), params, tx.init(params), {})

    @jax.jit  # both paths in one program: one compilation
    def steps(s_plain: Any, s_dist: Any, b: Any, t: Any) -> Any:
        evals = [k.loss(s_dist.params, {}, b, None, s_dist.step)[0] for k in (task, plain_task)]
        out_plain = train_step(s_plain, b, key, task=plain_task, tx=tx)
        out_dist = train_step(s_dist, b, key, teacher=t, task=task, tx=tx)
        return out_plain, out_dist, evals

    for b in batches:
        (s_plain, m_plain), (s_dist, m_dist), evals = steps(
            s_plain, s_dist, b, (teacher_params, {})
        )
        assert float(m_dist["loss"]) == pytest.approx(float(m_plain["loss"]), rel=1e-6)
        assert float(m_dist["ce"]) == pytest.approx(float(m_plain["loss"]), rel=1e-6)
        assert float(m_dist["kl"]) > 0.0  # the teacher was seen, with weight 0
        # Without a teacher (evaluation) the task is the student's own cross-entropy.
        assert float(evals[0]) == float(evals[1])
    for a, b in zip(jax.tree.leaves(s_plain.params), jax.tree.leaves(s_dist.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_teacher_named_by_config_and_identity(tmp_path: Path) -> None:
    """The student's id follows the teacher's config, not where the teacher lives; bad teachers
    fail with one line naming the field."""
    cfg = trial_from_dict({**TINY, "train": {**TINY["train"], "distill": DISTILL}})
    teacher = teacher_config(cfg)
    assert teacher.model.d_model == 16 and teacher.train.distill is None
    assert teacher.seed == cfg.seed and teacher.data == cfg.data
    moved = trial_from_dict(
        {**TINY, "train": {**TINY["train"], "distill": {**DISTILL, "teacher_dir": "/elsewhere"}}}
    )
    other = trial_from_dict(
        {**TINY, "train": {**TINY["train"], "distill": {**DISTILL, "teacher": {"seed": 3}}}}
    )
    assert trial_id(moved) == trial_id(cfg) != trial_id(other)
    assert trial_id(cfg) != trial_id(trial_from_dict(TINY))
    run = tmp_path / "students" / "abc"
    assert teacher_run_dir(cfg, run) == (tmp_path / "teachers" / trial_id(teacher)).resolve()
    with pytest.raises(TrialError, match=r"^train\.distill\.teacher: no teacher run directory"):
        load_teacher(cfg, run)
    bad = {**DISTILL, "teacher": {"model.vocab_size": 512}}
    cfg_bad = trial_from_dict({**TINY, "train": {**TINY["train"], "distill": bad}})
    with pytest.raises(TrialError, match=r"teacher's model\.vocab_size \(512\) differs"):
        teacher_config(cfg_bad)
    bad = {**DISTILL, "teacher": {"data.seq_len": 32, "model.max_seq_len": 32}}
    cfg_bad = trial_from_dict({**TINY, "train": {**TINY["train"], "distill": bad}})
    with pytest.raises(TrialError, match=r"teacher's data\.seq_len \(32\) differs"):
        teacher_config(cfg_bad)
    (tmp_path / "teachers" / trial_id(teacher)).mkdir(parents=True)
    (tmp_path / "teachers" / trial_id(teacher) / "config.yaml").write_text("{}\n")
    with pytest.raises(TrialError, match=r"^train\.distill\.teacher: .* is not finished"):
        load_teacher(cfg, run)
