"""L-infinity adversarial attacks on image classifiers: FGSM and PGD, as pure jitted functions
of (params, images, labels[, key]) and a loss, and a trained trial's accuracy under them.

- FGSM (Goodfellow et al. 2015): one step of size eps along the sign of the input gradient of
  the loss, ``x' = clip(x + eps sign(grad_x L), lo, hi)``.
- PGD (Madry et al. 2018): a uniform random start in the eps ball, then `steps` signed
  gradient steps of `step_size` (default 2.5 eps / steps), each projected back onto the ball
  around x and onto the valid pixel range [lo, hi].

`loss_fn(params, images, labels) -> scalar` is the objective the attacker ascends; only its
gradient's sign is used, so a sum or a mean over the batch gives the same attack. For a
trained trial it is the family's task loss in evaluation mode (`TaskLoss`), and the
adversarial images are scored by the trainer's own eval step (`scalinglab.experiments.
evaluation`), so epsilon 0 reproduces the trial's recorded accuracy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scalinglab.experiments import evaluation as ev

LossFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
ATTACKS = ("fgsm", "pgd")


def fgsm(
    loss_fn: LossFn,
    params: Any,
    images: jax.Array,
    labels: jax.Array,
    eps: jax.Array | float,
    lo: float = 0.0,
    hi: float = 1.0,
) -> jax.Array:
    """FGSM: `images` moved eps along the sign of the loss's input gradient, clipped to
    [lo, hi] (one ascent step of size eps from the clean images)."""
    start = jnp.zeros_like(images)
    return _ascend(loss_fn, params, images, labels, start, eps, eps, 1, lo, hi)


def pgd(
    loss_fn: LossFn,
    params: Any,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    eps: jax.Array | float,
    lo: float = 0.0,
    hi: float = 1.0,
    steps: int = 10,
    step_size: jax.Array | float | None = None,
) -> jax.Array:
    """PGD with a random start: `steps` signed-gradient ascent steps of `step_size` (default
    2.5 eps / steps), each projected onto the L-infinity ball of radius eps around `images`
    and onto [lo, hi]."""
    alpha = 2.5 * eps / steps if step_size is None else step_size
    start = jax.random.uniform(key, images.shape, images.dtype, -eps, eps)
    return _ascend(loss_fn, params, images, labels, start, eps, alpha, steps, lo, hi)


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def _ascend(
    loss_fn: LossFn,
    params: Any,
    images: jax.Array,
    labels: jax.Array,
    start: jax.Array,
    eps: jax.Array | float,
    step_size: jax.Array | float,
    steps: jax.Array | int,
    lo: jax.Array | float,
    hi: jax.Array | float,
) -> jax.Array:
    """From `images + start`, `steps` steps of `step_size` along the sign of the input
    gradient, each projected onto the eps ball around `images` and onto [lo, hi]. One
    compiled program per loss serves FGSM and PGD at every epsilon and step count."""

    def project(x: jax.Array) -> jax.Array:
        return jnp.clip(jnp.clip(x, images - eps, images + eps), lo, hi)

    def step(_: jax.Array, x: jax.Array) -> jax.Array:
        grad = jax.grad(loss_fn, argnums=1)(params, x, labels)
        return project(x + step_size * jnp.sign(grad))

    return jax.lax.fori_loop(0, steps, step, project(images + start))


@dataclass(frozen=True, eq=False)
class TaskLoss:
    """A classification task's loss in evaluation mode as `loss_fn((params, model_state),
    images, labels)`: what the trainer's eval step computes (batch norm on its running
    averages, no dropout or augmentation). Equal when the task object is the same one (the
    trainer memoises it per model), so jit traces each model's attack once."""

    task: Any

    def __hash__(self) -> int:
        return id(self.task)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskLoss) and other.task is self.task

    def __call__(self, variables: Any, images: jax.Array, labels: jax.Array) -> jax.Array:
        params, model_state = variables
        batch = {"image": images, "label": labels}
        return self.task.loss(params, model_state, batch, None, jnp.zeros([], jnp.int32))[0]


def pixel_range(cfg: Any) -> tuple[float, float]:
    """The valid pixel range of a trial's data: the smallest and largest training pixel
    ([0, 1] for the digits; the noisy `shapes` images reach outside it)."""
    from scalinglab.data import build_dataset

    images = build_dataset(cfg.data).train_images
    return float(images.min()), float(images.max())


def attack_table(
    run_dir: str | Path,
    epsilons: list[float],
    steps: int = 10,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per attack and epsilon: a trained classifier's validation loss and accuracy on the
    attacked images, scored by the trainer's eval step. Epsilon 0 is the clean evaluation
    (no attack): it must equal the trial's recorded final eval metrics (`recorded_diff`, the
    largest difference; over 1e-5 raises)."""
    te = ev.load_trial_eval(run_dir)
    lo, hi = pixel_range(te.cfg)
    loss_fn = TaskLoss(te.task)
    variables = (te.state.params, te.state.model_state)
    images, labels = te.val["image"], te.val["label"]
    flat_x = jnp.asarray(images.reshape(-1, *images.shape[2:]))
    flat_y = jnp.asarray(labels.reshape(-1))
    clean = ev.evaluate(te)
    recorded_diff = ev.check_recorded(te, clean)
    rows = [{"attack": a, "eps": 0.0, **clean, "recorded_diff": recorded_diff} for a in ATTACKS]
    key = jax.random.PRNGKey(seed)
    for i, eps in enumerate(e for e in epsilons if e > 0):
        adv = {
            "fgsm": fgsm(loss_fn, variables, flat_x, flat_y, eps, lo, hi),
            "pgd": pgd(
                loss_fn, variables, flat_x, flat_y, jax.random.fold_in(key, i), eps, lo, hi, steps
            ),
        }
        for attack, x in adv.items():
            val = {**te.val, "image": np.asarray(x).reshape(images.shape)}
            rows.append({"attack": attack, "eps": float(eps), **ev.evaluate(te, val=val)})
    return rows
