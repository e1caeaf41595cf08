"""Gradients of a trial's objective, read back from its run directory: the toolkit's own
gradient (`jax.grad` of the family's task loss), a central finite difference of that loss, a
hand-written chain rule for a one-hidden-layer MLP, and per-layer gradient norms.

The backprop and depth studies use these on trained checkpoints. The loss is the trial's
evaluation loss (no dropout or augmentation, batch norm on its running averages) on a fixed
probe batch: the first validation examples, so every call sees the same data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from scalinglab import runfiles as rf
from scalinglab.config import TrialConfig, load_trial

if TYPE_CHECKING:
    import pandas as pd

Params = Any


def trial_config(run_dir: str | Path) -> TrialConfig:
    """The resolved config of a run directory (its `config.yaml`)."""
    return load_trial(Path(run_dir) / rf.CONFIG)


def final_params(cfg: TrialConfig, run_dir: str | Path) -> tuple[Params, dict[str, Any], int]:
    """(params, model_state, step) of the run directory's latest complete checkpoint."""
    from scalinglab.train import load_state

    state = load_state(cfg, run_dir)
    if state is None:
        raise ValueError(f"{run_dir}: no checkpoint to restore")
    return state.params, state.model_state, int(state.step)


def probe_batch(cfg: TrialConfig, n: int = 256) -> dict[str, np.ndarray]:
    """The first `n` validation examples of the trial's data, every one at weight 1."""
    from scalinglab.data import build_dataset

    batch = build_dataset(cfg.data).val_batches(n, n)[0]
    return {k: np.asarray(v) for k, v in batch.items()}


def loss_fn(cfg: TrialConfig) -> Callable[[Params, dict[str, Any], dict[str, Any]], jax.Array]:
    """`(params, model_state, batch) -> loss`: the family's task in evaluation mode."""
    from scalinglab.models import build_model
    from scalinglab.train.tasks import build_task

    task = build_task(cfg, build_model(cfg.model))

    def loss(params: Params, model_state: dict[str, Any], batch: dict[str, Any]) -> jax.Array:
        return task.loss(params, model_state, batch, None, jnp.zeros([], jnp.int32))[0]

    return loss


def toolkit_grads(cfg: TrialConfig, params: Params, model_state: dict, batch: dict) -> Params:
    """The gradient the train step uses (`jax.grad` of the task loss), as float64 numpy."""
    grads = jax.grad(loss_fn(cfg))(params, model_state, batch)
    return jax.tree_util.tree_map(lambda g: np.asarray(g, np.float64), grads)


def layer_grad_norms(
    cfg: TrialConfig, params: Params, model_state: dict, batch: dict
) -> dict[str, float]:
    """Frobenius norm of the loss gradient of each layer's weight matrix (the `kernel` of each
    top-level module, input to output: `dense_0` ... `head`)."""
    grads = toolkit_grads(cfg, params, model_state, batch)
    return {
        name: float(np.linalg.norm(layer["kernel"]))
        for name, layer in sorted(grads.items(), key=lambda kv: _layer_order(kv[0]))
        if "kernel" in layer
    }


def _layer_order(name: str) -> tuple[int, int]:
    """`dense_3` -> (0, 3); the head (and anything else) after the numbered layers."""
    stem, _, index = name.rpartition("_")
    return (0, int(index)) if stem and index.isdigit() else (1, 0)


def directional_fd(
    cfg: TrialConfig,
    params: Params,
    model_state: dict,
    batch: dict,
    key: jax.Array,
    grads: Params | None = None,
    n_directions: int = 8,
    eps: float = 1e-2,
) -> list[dict[str, float]]:
    """Central finite differences of the loss along unit directions v of the whole parameter
    vector (the gradient's own direction, then `n_directions` random ones), against the
    toolkit's directional derivative <grad, v>; `grad_norm` is ||grad||, the scale to judge
    an error by (a random direction's derivative can be near 0). `grads` is `toolkit_grads`
    at the same point when the caller has it already.

    The model computes in float32, so the step is large (1e-2 of a unit direction): truncation
    error O(eps^2) and rounding O(ulp(L) / eps) then both stay near 1e-5 of the loss scale.
    """
    loss = jax.jit(loss_fn(cfg))
    if grads is None:
        grads = toolkit_grads(cfg, params, model_state, batch)
    leaves, tree = jax.tree_util.tree_flatten(params)
    g_leaves = jax.tree_util.tree_leaves(grads)
    norm = float(np.sqrt(sum(float(np.sum(g * g)) for g in g_leaves)))
    directions = [list(g_leaves)]
    for k in jax.random.split(key, n_directions):
        keys = jax.random.split(k, len(leaves))
        directions.append(
            [
                np.asarray(jax.random.normal(kk, p.shape), np.float64)
                for kk, p in zip(keys, leaves, strict=True)
            ]
        )
    out = []
    for v in directions:
        scale = np.sqrt(sum(float(np.sum(x * x)) for x in v))
        v = [x / scale for x in v]

        def shifted(sign: float, v: list[np.ndarray] = v) -> float:
            moved = [
                np.asarray(p, np.float64) + sign * eps * x for p, x in zip(leaves, v, strict=True)
            ]
            moved_params = jax.tree_util.tree_unflatten(tree, [m.astype(np.float32) for m in moved])
            return float(loss(moved_params, model_state, batch))

        fd = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
        exact = sum(float(np.sum(g * x)) for g, x in zip(g_leaves, v, strict=True))
        out.append({"finite_difference": fd, "toolkit": exact, "grad_norm": norm})
    return out


def hand_grads_one_hidden_layer(
    params: Params, batch: dict[str, np.ndarray], activation: str
) -> dict[str, dict[str, np.ndarray]]:
    """dL/dW by the chain rule, written out in float64 numpy, for `model.family: mlp` with
    `depth: 1` (no batch norm, no dropout) and softmax cross-entropy averaged over the batch:

        z = x W1 + b1,  h = act(z),  logits = h W2 + b2,  L = mean CE(softmax(logits), y)
        dL/dlogits = (softmax - onehot) / B
        dL/dW2 = h^T dL/dlogits,  dL/db2 = sum_rows dL/dlogits
        dL/dh = dL/dlogits W2^T,  dL/dz = dL/dh * act'(z)
        dL/dW1 = x^T dL/dz,  dL/db1 = sum_rows dL/dz
    """
    x = np.asarray(batch["image"], np.float64).reshape(len(batch["label"]), -1)
    y = np.asarray(batch["label"])
    w1, b1 = (np.asarray(params["dense_0"][k], np.float64) for k in ("kernel", "bias"))
    w2, b2 = (np.asarray(params["head"][k], np.float64) for k in ("kernel", "bias"))
    z = x @ w1 + b1
    act, dact = _ACTIVATION_AND_DERIVATIVE[activation]
    h = act(z)
    logits = h @ w2 + b2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    d_logits = p.copy()
    d_logits[np.arange(len(y)), y] -= 1.0
    d_logits /= len(y)
    d_z = (d_logits @ w2.T) * dact(z)
    return {
        "dense_0": {"kernel": x.T @ d_z, "bias": d_z.sum(axis=0)},
        "head": {"kernel": h.T @ d_logits, "bias": d_logits.sum(axis=0)},
    }


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


_ACTIVATION_AND_DERIVATIVE: dict[str, tuple[Callable, Callable]] = {
    "sigmoid": (_sigmoid, lambda z: _sigmoid(z) * (1.0 - _sigmoid(z))),
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(np.float64)),
}
HAND_ACTIVATIONS = tuple(_ACTIVATION_AND_DERIVATIVE)


def max_relative_error(a: Params, b: Params) -> float:
    """The largest |a - b| / max(|b|) over the leaves of two gradient trees (each leaf scaled
    by its own largest entry, so a layer of small gradients is not judged by a larger one's)."""
    errs = jax.tree_util.tree_map(
        lambda x, y: float(
            np.max(np.abs(np.asarray(x) - np.asarray(y))) / max(np.max(np.abs(y)), 1e-30)
        ),
        a,
        b,
    )
    return max(jax.tree_util.tree_leaves(errs))


def finished_run_dirs(sweep_dir: str | Path) -> list[Path]:
    """The run directories of a sweep's trials that trained to the end, in id order."""
    from scalinglab.experiments.helpers import FINISHED

    dirs = []
    for d in sorted(Path(sweep_dir).iterdir()):
        status = d / rf.STATUS
        if status.is_file() and rf.read_json(status).get("status") in FINISHED:
            dirs.append(d)
    return dirs


def layer_norm_table(sweep_dir: str | Path, fields: list[str], n: int = 256) -> pd.DataFrame:
    """One row per finished trial and layer of a sweep: the config `fields` (dotted names),
    the layer, its position from the input (`index`; the head last) and the gradient norm of
    its weights at the final checkpoint on `n` validation examples."""
    import pandas as pd

    rows = []
    for d in finished_run_dirs(sweep_dir):
        cfg = trial_config(d)
        params, model_state, step = final_params(cfg, d)
        norms = layer_grad_norms(cfg, params, model_state, probe_batch(cfg, n))
        dumped = cfg.model_dump(mode="json")
        values = {f: _dotted(dumped, f) for f in fields}
        for index, (layer, norm) in enumerate(norms.items()):
            rows.append(
                {
                    **values,
                    "trial_id": d.name,
                    "step": step,
                    "layer": layer,
                    "index": index,
                    "grad_norm": norm,
                }
            )
    return pd.DataFrame(rows)


def _dotted(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def depth_slope(index: np.ndarray, norms: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """Least-squares slope of log10(gradient norm) on the layer's position from the input,
    with its t interval: decades gained per layer towards the output. A positive slope is a
    gradient that vanishes towards the input; 10^(slope x depth) is the first-to-last ratio."""
    from scipy import stats

    x, y = np.asarray(index, float), np.log10(np.asarray(norms, float))
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    dof = len(x) - 2
    if dof < 1:
        return {"slope": float(slope), "ci": None, "n_layers": len(x)}
    se = float(np.sqrt(np.sum(resid**2) / dof / np.sum((x - x.mean()) ** 2)))
    t = float(stats.t.ppf(0.5 + confidence / 2, dof))
    return {
        "slope": float(slope),
        "ci": [float(slope - t * se), float(slope + t * se)],
        "confidence": confidence,
        "n_layers": len(x),
        "first_over_last": float(10 ** (y[0] - y[-1])),
    }
