"""Global magnitude pruning of a trained model, with and without a short masked fine-tune.

- Prunable weights are the leaves of ndim >= 2 (Dense and Conv kernels, embedding tables);
  vectors (biases, norm scales) are kept as they are.
- `magnitude_masks(params, sparsity)`: one threshold over all prunable weights together: the
  ``round(sparsity * n)`` smallest |w| of the n prunable entries are set to 0, the rest kept.
  Ties are broken by position: the entries are ordered by |w| with a stable sort over the
  leaves in `jax.tree_util` flatten order, each leaf row-major, so of equal magnitudes the
  earlier entry is pruned first and exactly ``round(sparsity * n)`` entries are pruned.
- `masked_fine_tune`: the pruned model trained on for a few steps with the trial's own task
  loss, update rule and optimiser state, the mask applied after every update, so pruned
  weights stay exactly 0.
- `pruning_table(run_dir, ...)`: each sparsity scored by the trainer's eval step
  (`scalinglab.experiments.evaluation`), so sparsity 0 without fine-tune is the recorded loss.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scalinglab.experiments import evaluation as ev

SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FINE_TUNE_FRAC = 0.05  # fine-tune steps as a fraction of the trial's own step budget


def is_prunable(leaf: Any) -> bool:
    """Whether a parameter leaf is pruned: matrices and higher (kernels, embeddings)."""
    return np.ndim(leaf) >= 2


def prunable_count(params: Any) -> int:
    """The number of prunable entries in a params tree."""
    return sum(int(np.size(w)) for w in jax.tree_util.tree_leaves(params) if is_prunable(w))


@jax.jit
def magnitude_masks(params: Any, sparsity: float | jax.Array) -> Any:
    """Float32 0/1 masks of `params`' shapes: the `round(sparsity * n)` smallest |w| over all
    prunable leaves 0 (ties: the earlier entry in flatten order first), all else 1."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    prunable = [w for w in leaves if is_prunable(w)]
    flat = jnp.concatenate([jnp.abs(jnp.ravel(w)).astype(jnp.float32) for w in prunable])
    n = flat.size
    n_prune = jnp.round(jnp.asarray(sparsity, jnp.float32) * n).astype(jnp.int32)
    order = jnp.argsort(flat, stable=True)
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    keep = (rank >= n_prune).astype(jnp.float32)
    masks, start = [], 0
    for w in leaves:
        if is_prunable(w):
            masks.append(keep[start : start + w.size].reshape(w.shape))
            start += w.size
        else:
            masks.append(jnp.ones(jnp.shape(w), jnp.float32))
    return jax.tree_util.tree_unflatten(treedef, masks)


def apply_masks(params: Any, masks: Any) -> Any:
    """`params` with every entry whose mask is 0 set to 0 (dtypes kept)."""
    return jax.tree_util.tree_map(lambda w, m: w * m.astype(w.dtype), params, masks)


def prune(params: Any, sparsity: float) -> tuple[Any, Any]:
    """(the globally magnitude-pruned params, their masks) at `sparsity`."""
    masks = magnitude_masks(params, sparsity)
    return apply_masks(params, masks), masks


def measured_sparsity(params: Any) -> float:
    """The fraction of prunable entries that are exactly 0."""
    zeros = sum(
        int(np.sum(np.asarray(w) == 0)) for w in jax.tree_util.tree_leaves(params) if is_prunable(w)
    )
    return zeros / max(prunable_count(params), 1)


def masked_fine_tune(
    params: Any,
    masks: Any,
    model_state: Any,
    opt_state: Any,
    batches: Any,
    steps: jax.Array,
    base_key: jax.Array,
    lr: float | jax.Array,
    *,
    task: Any,
    tx: Any,
) -> Any:
    """Params after one update per batch of `batches` (stacked on a leading axis; the train
    step numbers in `steps`) with `task`'s loss and the update rule `tx` at learning rate `lr`,
    masked after every update: pruned weights stay exactly 0 (masked AdamW for adamw)."""
    params = apply_masks(params, masks)

    def one(carry: Any, xs: Any) -> Any:
        params, model_state, opt_state = carry
        batch, step = xs
        key = jax.random.fold_in(base_key, step)

        def loss_fn(p: Any) -> Any:
            return task.loss(p, model_state, batch, key, step)

        (_, (_, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree_util.tree_map(
            lambda w, u, m: (w - jnp.asarray(lr, w.dtype) * u) * m.astype(w.dtype),
            params,
            updates,
            masks,
        )
        return (params, new_model_state, opt_state), None

    (params, _, _), _ = jax.lax.scan(one, (params, model_state, opt_state), (batches, steps))
    return params


_COMPILED: dict[tuple[int, int], tuple[Any, Any]] = {}


def _fine_tune_many(task: Any, tx: Any) -> Any:
    """`masked_fine_tune` jitted and vmapped over stacked (params, masks): one program fine-tunes
    every sparsity of a trial at once (cached per task and update rule, which the trainer
    memoises per model)."""
    key = id(task), id(tx)
    if key not in _COMPILED:
        fn = functools.partial(masked_fine_tune, task=task, tx=tx)
        batched = jax.vmap(fn, in_axes=(0, 0, None, None, None, None, None, None))
        _COMPILED[key] = ((task, tx), jax.jit(batched))  # keeps task and tx alive with the id
    return _COMPILED[key][1]


def fine_tune_steps(total_steps: int, frac: float = FINE_TUNE_FRAC) -> int:
    """Fine-tune steps for a trial of `total_steps`: a fraction of its budget, at least 1."""
    return max(1, math.ceil(frac * total_steps))


@functools.lru_cache(maxsize=4)
def _dataset(data_json: str) -> Any:
    """The trial's dataset, built once per data config (every trial of a sweep shares it)."""
    from scalinglab.config import DataConfig
    from scalinglab.data import build_dataset

    return build_dataset(DataConfig.model_validate_json(data_json))


def fine_tune_trial(te: ev.TrialEval, masks: Any, n_steps: int) -> Any:
    """The trial's final params pruned by each of `masks` (stacked on a leading axis) and
    trained `n_steps` more: the batches that would have followed its last step, its own key
    stream, update rule and optimiser state, at the learning rate of its last step. Returns
    the fine-tuned params, stacked likewise."""
    from scalinglab.budget import plan_steps
    from scalinglab.train.trainer import build_trainer

    cfg = te.cfg
    total = plan_steps(cfg)
    trainer = build_trainer(cfg, total)
    data = _dataset(cfg.data.model_dump_json())
    steps = np.arange(total, total + n_steps)
    host = [data.train_batch(int(s), cfg.train.batch_size, cfg.seed) for s in steps]
    batches = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *host)
    step_key = jax.random.split(jax.random.PRNGKey(cfg.seed))[1]  # the trainer's key stream
    lr = float(trainer.schedule(total - 1))
    s = te.state
    n = len(jax.tree_util.tree_leaves(masks)[0])
    stacked = jax.tree_util.tree_map(lambda w: jnp.broadcast_to(w, (n, *jnp.shape(w))), s.params)
    run = _fine_tune_many(trainer.task, trainer.tx)
    steps_arr = jnp.asarray(steps, jnp.int32)
    return run(stacked, masks, s.model_state, s.opt_state, batches, steps_arr, step_key, lr)


def pruning_table(
    run_dir: str | Path,
    sparsities: Sequence[float] = SPARSITIES,
    frac: float = FINE_TUNE_FRAC,
) -> list[dict[str, Any]]:
    """Per sparsity: the trained trial's eval metrics after global magnitude pruning, and
    after pruning plus a masked fine-tune of `frac` of its step budget (`ft_` columns), with
    the sparsity measured. The dense, untuned row must equal the trial's recorded final eval
    metrics (`recorded_diff`; over 1e-5 raises), so `sparsities` start at 0."""
    from scalinglab.budget import plan_steps

    if not sparsities or sparsities[0] != 0:
        raise ValueError(f"sparsities {list(sparsities)}: the first must be 0 (the dense row)")
    te = ev.load_trial_eval(run_dir)
    n_steps = fine_tune_steps(plan_steps(te.cfg), frac)
    n_prunable = prunable_count(te.state.params)
    masks = [magnitude_masks(te.state.params, s) for s in sparsities]
    stacked = jax.tree_util.tree_map(lambda *ms: jnp.stack(ms), *masks)
    tuned_all = fine_tune_trial(te, stacked, n_steps)
    rows = []
    for i, s in enumerate(sparsities):
        pruned = apply_masks(te.state.params, masks[i])
        tuned = jax.tree_util.tree_map(lambda w, i=i: w[i], tuned_all)
        row = {
            "sparsity": float(s),
            "measured_sparsity": measured_sparsity(pruned),
            "ft_measured_sparsity": measured_sparsity(tuned),
            "n_prunable": n_prunable,
            "ft_steps": n_steps,
            **ev.evaluate(te, pruned),
            **{f"ft_{k}": v for k, v in ev.evaluate(te, tuned).items()},
        }
        if s == 0:
            row["recorded_diff"] = ev.check_recorded(te, row)
        rows.append(row)
    return rows
