"""Unit activity over training, read back from a run directory's checkpoints: the steps it
kept, the params at any of them (and at step 0, re-initialised as the loop does), every
hidden layer's pre-activations on a fixed probe batch, and the fraction of dead units.

A unit is *dead* when its pre-activation is <= 0 on every probe example: a relu unit then
outputs 0 and gets no gradient on any of them, so nothing that flows through it can revive
it. leaky_relu and elu are judged by the same criterion, but there the unit still passes
gradient (slope 0.01, resp. exp(z)): `dead_slope` is the mean derivative of the activation
over a dead unit's probe pre-activations (0 for relu), and `revived` counts units that were
dead at an earlier checkpoint and are alive again.

Pre-activations come from the model's own forward pass (`flax.linen.Module.apply` in
evaluation mode with `capture_intermediates`): the output of each hidden layer's Dense
(`dense_i`), or of its batch norm (`norm_i`, on the running averages) when the model has
one, so they are exactly what the non-linearity sees. For a gated activation (swiglu) the
gate half. The MLP family names its hidden layers this way; the probe batch is the first
validation examples (`gradients.probe_batch`), the same for every checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from scalinglab import runfiles as rf
from scalinglab.config import TrialConfig
from scalinglab.experiments import gradients as g

if TYPE_CHECKING:
    import pandas as pd

    from scalinglab.train.state import TrainState

Params = Any
HIDDEN_PREFIXES = ("dense_", "norm_")


def _manager(run_dir: str | Path) -> Any:
    """An orbax CheckpointManager on `RUN_DIR/checkpoints` that keeps every step (no
    `max_to_keep`) and is only read from, so it deletes nothing."""
    import orbax.checkpoint as ocp

    directory = (Path(run_dir) / rf.CHECKPOINTS).resolve()
    if not directory.is_dir():
        raise ValueError(f"{run_dir}: no {rf.CHECKPOINTS}/ directory")
    options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory, options=options)


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """The steps of the run directory's complete checkpoints, ascending."""
    manager = _manager(run_dir)
    try:
        return sorted(int(s) for s in manager.all_steps())
    finally:
        manager.close()


def _trainer_and_target(cfg: TrialConfig) -> tuple[Any, TrainState]:
    """The trial's trainer and the restore target `scalinglab.train.load_state` builds: the
    abstract train state (shapes, dtypes, tree), replicated on one device."""
    from scalinglab.budget import plan_steps
    from scalinglab.train import mesh as mesh_mod
    from scalinglab.train.state import abstract_state
    from scalinglab.train.trainer import build_trainer

    trainer = build_trainer(cfg, plan_steps(cfg))
    sharding = mesh_mod.replicated(mesh_mod.data_mesh(1))
    return trainer, mesh_mod.with_sharding(abstract_state(trainer.task, trainer.tx), sharding)


def restore_at(cfg: TrialConfig, run_dir: str | Path, step: int) -> TrainState:
    """The train state of the checkpoint at `step` (ValueError naming the kept steps if there
    is none)."""
    import orbax.checkpoint as ocp

    _, target = _trainer_and_target(cfg)
    manager = _manager(run_dir)
    try:
        steps = sorted(int(s) for s in manager.all_steps())
        if step not in steps:
            raise ValueError(f"{run_dir}: no checkpoint at step {step}; kept: {steps}")
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    finally:
        manager.close()
    return out["state"]


def initial_state(cfg: TrialConfig) -> TrainState:
    """The train state at step 0, as the train loop builds it (`init_state` on the first half
    of the trial seed's key): the loop saves no checkpoint there, and this is the same."""
    from scalinglab.train.mesh import data_mesh, replicated
    from scalinglab.train.state import init_state

    trainer, _ = _trainer_and_target(cfg)
    init_key, _ = jax.random.split(jax.random.PRNGKey(cfg.seed))
    return init_state(trainer.task, trainer.tx, init_key, replicated(data_mesh(1)))


def states(
    cfg: TrialConfig, run_dir: str | Path, include_init: bool = True
) -> Iterator[tuple[int, Params, dict[str, Any]]]:
    """(step, params, model_state) at step 0 (`include_init`) and at every kept checkpoint."""
    if include_init:
        s = initial_state(cfg)
        yield 0, s.params, s.model_state
    for step in checkpoint_steps(run_dir):
        s = restore_at(cfg, run_dir, step)
        yield step, s.params, s.model_state


def _dotted(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def _hidden_order(name: str) -> tuple[int, int]:
    """`dense_3` / `norm_3` -> (3, 0 / 1): by layer, the norm after its Dense."""
    stem, _, index = name.rpartition("_")
    return (int(index), 1 if stem == "norm" else 0)


def pre_activations(
    model: Any, params: Params, model_state: dict[str, Any], inputs: Any, activation: str
) -> dict[str, np.ndarray]:
    """`{dense_i: (B, units)}`: each hidden layer's input to its non-linearity on `inputs`,
    in input-to-head order, from the model's forward pass in evaluation mode (the Dense
    output, or the batch norm's when the layer has one; for swiglu the gate half)."""
    from scalinglab.models.layers import GATED_ACTIVATIONS

    def keep(module: Any, method: str) -> bool:
        return method == "__call__" and (module.name or "").startswith(HIDDEN_PREFIXES)

    _, captured = model.apply(
        {"params": params, **model_state},
        jnp.asarray(inputs),
        train=False,
        capture_intermediates=keep,
        mutable=["intermediates"],
    )
    found = captured["intermediates"]
    out: dict[str, np.ndarray] = {}
    for name in sorted(found, key=_hidden_order):  # a norm overwrites its Dense's entry
        z = np.asarray(found[name]["__call__"][0], np.float32)
        z = z.reshape(z.shape[0], -1)
        if activation in GATED_ACTIVATIONS:
            z = np.split(z, 2, axis=-1)[0]
        out[f"dense_{name.rpartition('_')[2]}"] = z
    return out


def activation_slope(activation: str, z: np.ndarray) -> np.ndarray:
    """d act / dz elementwise at `z` (the model's own activation function, by jvp)."""
    from scalinglab.models.layers import activation_fn

    fn = activation_fn(activation)
    z = jnp.asarray(z, jnp.float32)
    return np.asarray(jax.jvp(fn, (z,), (jnp.ones_like(z),))[1])


def dead_mask(z: np.ndarray) -> np.ndarray:
    """(units,) True where the pre-activation is <= 0 on every example (rows of `z`)."""
    return np.all(np.asarray(z) <= 0.0, axis=0)


def layer_activity(pre: dict[str, np.ndarray], activation: str) -> dict[str, dict[str, Any]]:
    """Per hidden layer: units, dead units and their fraction, and `dead_slope`, the mean
    derivative of the activation over the dead units' probe pre-activations (NaN if none)."""
    out = {}
    for name, z in pre.items():
        mask = dead_mask(z)
        n_dead = int(mask.sum())
        slope = float(activation_slope(activation, z[:, mask]).mean()) if n_dead else np.nan
        out[name] = {
            "units": int(mask.size),
            "dead": n_dead,
            "dead_fraction": n_dead / mask.size,
            "dead_slope": slope,
            "mask": mask,
        }
    return out


def activity_table(sweep_dir: str | Path, fields: Sequence[str], n: int = 297) -> pd.DataFrame:
    """One row per trial of a sweep, kept step (0 included) and hidden layer: the config
    `fields` (dotted names), trial_id, status, step, layer, index (0 next to the input),
    units, dead, dead_fraction, dead_slope, `ever_dead` (dead at this or an earlier step,
    fraction of the layer) and `revived` (dead at an earlier step, alive now, fraction), on the
    first `n` validation examples.

    Every trial with a checkpoint is read, diverged ones included (up to their last
    checkpoint; their `status` says so)."""
    import pandas as pd

    from scalinglab.models import build_model

    rows = []
    for d in sorted(Path(sweep_dir).iterdir()):
        if not (d / rf.STATUS).is_file() or not (d / rf.CHECKPOINTS).is_dir():
            continue
        cfg = g.trial_config(d)
        status = rf.read_json(d / rf.STATUS).get("status")
        model = build_model(cfg.model)
        inputs = g.probe_batch(cfg, n)["image"]
        dumped = cfg.model_dump(mode="json")
        values = {f: _dotted(dumped, f) for f in fields}
        ever: dict[str, np.ndarray] = {}
        for step, params, model_state in states(cfg, d):
            pre = pre_activations(model, params, model_state, inputs, cfg.model.activation)
            for index, (layer, a) in enumerate(layer_activity(pre, cfg.model.activation).items()):
                before = ever.get(layer, np.zeros_like(a["mask"]))
                ever[layer] = before | a["mask"]
                rows.append(
                    {
                        **values,
                        "trial_id": d.name,
                        "status": status,
                        "step": step,
                        "layer": layer,
                        "index": index,
                        "units": a["units"],
                        "dead": a["dead"],
                        "dead_fraction": a["dead_fraction"],
                        "dead_slope": a["dead_slope"],
                        "ever_dead": float(ever[layer].mean()),
                        "revived": float((before & ~a["mask"]).mean()),
                    }
                )
    return pd.DataFrame(rows)
