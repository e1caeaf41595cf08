"""End to end: `run_trial` trains the image families on digits and writes the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scalinglab import runfiles as rf
from scalinglab.config import TrialConfig, trial_from_dict
from scalinglab.data import build_dataset
from scalinglab.flops import flops_per_token
from scalinglab.sweep.store import load_runs
from scalinglab.train import plan_steps, run_trial
from scalinglab.train.loop import WALL_CLOCK_FIELDS, build_trainer
from scalinglab.train.trainer import load_state

SHAPE = {"image_size": 8, "in_channels": 1, "n_classes": 10}


def image_trial(model: dict[str, Any], **overrides: Any) -> TrialConfig:
    """A tiny digits trial: 30 steps of 32 examples, eval every 10 on 128 examples."""
    base = {
        "seed": 0,
        "model": {**SHAPE, **model},
        "data": {"source": "digits", "augment": {"crop_pad": 1, "brightness": 0.1}},
        "optimizer": {"name": "adamw", "lr": 1.0e-2, "weight_decay": 0.01},
        "train": {
            "batch_size": 32,
            "budget": {"steps": 30},
            "eval_every": 10,
            "log_every": 10,
            "eval_tokens": 128,
            "checkpoint_every": 10,
        },
    }
    return trial_from_dict(base, overrides=[f"{k}={v}" for k, v in overrides.items()])


def _metrics(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS}
        for r in rf.read_jsonl(run_dir / rf.METRICS)
    ]


@pytest.mark.parametrize(
    "model",
    [
        {"family": "mlp", "width": 64, "depth": 2, "dropout": 0.1},
        {"family": "resnet", "width": 8, "depth": 1, "stages": 2},
    ],
    ids=["mlp", "resnet"],
)
def test_image_families_train_on_digits(tmp_path: Path, model: dict) -> None:
    cfg = image_trial(model, **{"train.eval_tokens": 10**6})  # the whole validation split
    run_dir = tmp_path / "trial"
    summary = run_trial(cfg, run_dir)
    for name in (rf.CONFIG, rf.STATUS, rf.METRICS, rf.SUMMARY, rf.CHECKPOINTS):
        assert (run_dir / name).exists(), name
    assert summary["status"] == "done" and summary["steps"] == 30
    # D counts examples; C uses the per-example FLOPs of the family.
    assert summary["D"] == 30 * 32
    assert summary["C"] == pytest.approx(flops_per_token(cfg.model, 1) * 30 * 32)
    assert summary["N_embed"] == 0 and summary["data"]["source"] == "digits"
    recs = rf.read_jsonl(run_dir / rf.METRICS)
    evals = [r for r in recs if "eval_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert all(0.0 <= r["eval_accuracy"] <= 1.0 for r in evals)
    assert evals[-1]["tokens"] == 30 * 32
    trains = [r["train_loss"] for r in recs if "train_loss" in r]
    assert trains[-1] < trains[0] < 2.4  # starts near log(10) = 2.30
    assert evals[-1]["eval_loss"] < 2.0 and summary["final_eval_accuracy"] > 0.4
    assert summary["final_eval_accuracy"] == evals[-1]["eval_accuracy"]
    # Evaluation scores each of the 297 validation images once (10 batches of 32, the last
    # padded): the accuracy equals the model's own over the whole split, computed directly.
    assert evals[-1]["eval_examples"] == 297
    ds = build_dataset(cfg.data)
    state = load_state(cfg, run_dir)
    logits = build_trainer(cfg, 30).task.model.apply(
        {"params": state.params, **state.model_state}, ds.val_images, train=False
    )
    direct = float(np.mean(np.argmax(np.asarray(logits), -1) == ds.val_labels))
    assert summary["final_eval_accuracy"] == pytest.approx(direct, abs=1e-6)
    assert len(ds.val_labels) == 297 and direct * 297 == pytest.approx(round(direct * 297))
    # The results table carries the classifier's accuracy too.
    runs = load_runs(tmp_path)
    assert runs["final_eval_accuracy"].tolist() == [summary["final_eval_accuracy"]]


def test_resume_with_batch_norm_dropout_and_augmentation_is_exact(tmp_path: Path) -> None:
    # Batch-norm statistics (model_state), augmentation and dropout keys all survive a resume.
    model = {"family": "mlp", "width": 32, "batch_norm": True, "dropout": 0.2}
    cfg = image_trial(model, **{"train.budget": "{steps: 20}", "train.log_every": 5})
    ref, part = tmp_path / "ref", tmp_path / "part"
    run_trial(cfg, ref)

    class Stop(Exception):
        pass

    def stop_after_checkpoint(ev: dict) -> None:
        if ev.get("step") == 15:  # after the checkpoint at 10, before the one at 20
            raise Stop

    with pytest.raises(Stop):
        run_trial(cfg, part, progress=stop_after_checkpoint)
    run_trial(cfg, part)
    assert _metrics(part) == _metrics(ref)


def test_budget_in_examples_and_flops() -> None:
    model = {"family": "resnet", "width": 4}
    assert plan_steps(image_trial(model, **{"train.budget": "{tokens: 320}"})) == 10
    cfg = image_trial(model)
    fpe = flops_per_token(cfg.model, 1)
    assert plan_steps(image_trial(model, **{"train.budget": f"{{flops: {fpe * 32 * 7.5}}}"})) == 7
