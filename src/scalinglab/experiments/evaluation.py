"""A trained trial evaluated exactly as its trainer evaluated it: the final checkpoint, the
trial's own validation batches, the trainer's jitted eval step and its example-weighted means.

The adversarial and quantization studies change one thing (the images, or the parameters)
and evaluate again through this path, so their clean numbers equal what the trial's
`summary.json` recorded (`final_eval_loss`, `final_eval_accuracy`) and any difference is the
attack's or the quantiser's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from scalinglab import runfiles as rf
from scalinglab.config import TrialConfig


@dataclass(frozen=True, eq=False)
class TrialEval:
    """One finished trial, ready to evaluate: config, restored state, task, eval step and the
    validation batches stacked along a leading axis (as the trainer stacks them)."""

    run_dir: Path
    cfg: TrialConfig
    state: Any  # scalinglab.train.state.TrainState
    task: Any
    eval_fn: Any  # (state, stacked batches) -> metrics per batch
    val: Any  # stacked validation batches (numpy)
    summary: dict[str, Any]


def load_trial_eval(run_dir: str | Path) -> TrialEval:
    """Restore a finished trial's final state and build its evaluation (the trainer's own)."""
    from scalinglab.budget import plan_steps
    from scalinglab.data import build_dataset
    from scalinglab.experiments.gradients import trial_config
    from scalinglab.train.trainer import build_trainer, load_state

    run_dir = Path(run_dir)
    cfg = trial_config(run_dir)
    state = load_state(cfg, run_dir)
    if state is None:
        raise ValueError(f"{run_dir}: no checkpoint to restore")
    trainer = build_trainer(cfg, plan_steps(cfg))
    val_host = build_dataset(cfg.data).val_batches(cfg.train.batch_size, cfg.train.eval_tokens)
    val = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *val_host)
    summary = rf.read_json(run_dir / rf.SUMMARY)
    return TrialEval(run_dir, cfg, state, trainer.task, trainer.eval_fn, val, summary)


def evaluate(te: TrialEval, params: Any = None, val: Any = None) -> dict[str, float]:
    """Eval metrics (`loss`, and `accuracy` for classifiers) with `params` (default: the
    trained ones) on `val` (default: the trial's validation batches), averaged over examples
    as the trainer's `Evaluate` hook does."""
    state = te.state if params is None else te.state.replace(params=params)
    evals = jax.device_get(te.eval_fn(state, te.val if val is None else val))
    weights = evals.pop("examples", None)
    return {
        name: float(np.average(np.asarray(v, np.float64), weights=weights))
        for name, v in evals.items()
    }


def recorded(te: TrialEval) -> dict[str, float]:
    """The final eval metrics the trial's summary.json recorded, by the names `evaluate` uses."""
    out = {"loss": float(te.summary["final_eval_loss"])}
    if "final_eval_accuracy" in te.summary:
        out["accuracy"] = float(te.summary["final_eval_accuracy"])
    return out


def check_recorded(te: TrialEval, metrics: dict[str, float], tol: float = 1e-5) -> float:
    """The largest |metric - recorded| over loss and accuracy; raises when it exceeds `tol`
    (relative to the recorded value, at least 1), since then this evaluation is not the
    trainer's and every number built on it would be off."""
    diffs = {k: abs(metrics[k] - v) for k, v in recorded(te).items()}
    for k, d in diffs.items():
        if d > tol * max(1.0, abs(recorded(te)[k])):
            raise ValueError(
                f"{te.run_dir}: clean eval {k} {metrics[k]!r} differs from the recorded "
                f"{recorded(te)[k]!r} by {d:.3g}: the evaluation does not match the trainer's"
            )
    return max(diffs.values())
