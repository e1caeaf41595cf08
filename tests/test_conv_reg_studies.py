"""`scalinglab.experiments.imageeval`: shifted images, per-example scores of a trained model on
its training and (shifted) validation split, and the paired bootstrap of a mean; each checked
against a computation written out here (index arithmetic, numpy forward pass, closed forms)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scalinglab.config import trial_from_dict
from scalinglab.experiments import imageeval as ie
from scalinglab.train import run_trial


def _shifted_by_hand(x: np.ndarray, dy: int, dx: int, wrap: bool) -> np.ndarray:
    """out[b, i, j] = x[b, i - dy, j - dx], wrapped or zero where that falls outside."""
    b, h, w, c = x.shape
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            si, sj = i - dy, j - dx
            if wrap:
                out[:, i, j] = x[:, si % h, sj % w]
            elif 0 <= si < h and 0 <= sj < w:
                out[:, i, j] = x[:, si, sj]
    return out


@pytest.mark.parametrize("mode", ["wrap", "zero"])
@pytest.mark.parametrize(("dy", "dx"), [(0, 0), (1, 0), (0, -2), (-1, 3), (3, 4), (5, -9)])
def test_shift_images_moves_every_pixel(mode: str, dy: int, dx: int) -> None:
    x = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2) + 1.0
    got = ie.shift_images(x, dy, dx, mode)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, _shifted_by_hand(x, dy, dx, mode == "wrap"))
    if mode == "wrap":  # a cyclic shift is np.roll, and loses nothing
        np.testing.assert_array_equal(got, np.roll(x, (dy, dx), axis=(1, 2)))


def test_shift_images_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode: 'reflect' not allowed"):
        ie.shift_images(np.zeros((1, 2, 2, 1)), 1, 0, "reflect")  # type: ignore[arg-type]


def test_per_example_matches_the_closed_forms() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    got = ie.per_example(logits, np.array([0, 1]))
    want = [
        -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0 + math.exp(-1.0))),
        -math.log(math.exp(0.5) / (2 * math.exp(0.5) + math.exp(3.0))),
    ]
    np.testing.assert_allclose(got["loss"], want, rtol=1e-12)
    np.testing.assert_array_equal(got["correct"], [1.0, 0.0])
    # One logit: a binary classifier with a sigmoid, class 1 when z > 0.
    binary = ie.per_example(np.array([[1.5], [-0.5]]), np.array([1, 1]))
    sig = [1 / (1 + math.exp(-1.5)), 1 / (1 + math.exp(0.5))]
    np.testing.assert_allclose(binary["loss"], [-math.log(p) for p in sig], rtol=1e-12)
    np.testing.assert_array_equal(binary["correct"], [1.0, 0.0])


def test_paired_mean_interval() -> None:
    const = ie.paired_mean(np.full(50, 0.25))
    assert const["value"] == pytest.approx(0.25) and const["ci"] == pytest.approx([0.25, 0.25])
    assert const["resolved"] is True and const["n_pairs"] == 50
    # Normal differences: the percentile interval is about mean -+ 1.96 sd / sqrt(n).
    d = np.random.default_rng(1).normal(0.05, 1.0, 400)
    got = ie.paired_mean(d, bootstrap=2000)
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert got["value"] == pytest.approx(d.mean())
    assert got["ci"] == pytest.approx([d.mean() - half, d.mean() + half], abs=0.2 * half)
    assert got["resolved"] is False


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A one-hidden-layer relu MLP trained 30 steps on 100 digits; its run directory."""
    cfg = trial_from_dict(
        {
            "seed": 0,
            "model": {"family": "mlp", "width": 8, "depth": 1, "activation": "relu"},
            "data": {"source": "digits", "train_subset": 100},
            "optimizer": {"name": "adamw", "lr": 3e-2},
            "train": {
                "batch_size": 32,
                "budget": {"steps": 30},
                "eval_every": 30,
                "eval_tokens": 297,
                "log_every": 30,
                "checkpoint_every": 1000,
            },
        }
    )
    run_dir = tmp_path_factory.mktemp("imageeval") / "trial"
    run_trial(cfg, run_dir)
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def _numpy_logits(run_dir: Path, images: np.ndarray) -> np.ndarray:
    """relu(x W1 + b1) W2 + b2 in float64, from the restored parameters."""
    _, params, _ = ie.restore(run_dir)
    w1, b1 = (np.asarray(params["dense_0"][k], np.float64) for k in ("kernel", "bias"))
    w2, b2 = (np.asarray(params["head"][k], np.float64) for k in ("kernel", "bias"))
    x = np.asarray(images, np.float64).reshape(len(images), -1)
    return np.maximum(x @ w1 + b1, 0.0) @ w2 + b2


def _by_hand(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-example cross-entropy and correctness of float64 logits."""
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels], (logits.argmax(1) == labels).astype(float)


def test_split_scores_match_the_trainer_and_a_numpy_forward_pass(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    run_dir, summary = trained
    got = ie.split_scores(run_dir)
    # Validation: what the trainer's own evaluation recorded at the last step.
    assert got["val"]["n"] == 297
    assert got["val"]["loss"] == pytest.approx(summary["final_eval_loss"], rel=1e-5)
    assert got["val"]["accuracy"] == pytest.approx(summary["final_eval_accuracy"], abs=1e-9)
    # Training split: the 100 examples it trained on, through a forward pass written here.
    cfg = ie.restore(run_dir)[0]
    images, labels = ie.split_arrays(cfg, "train")
    assert len(labels) == got["train"]["n"] == 100
    loss, correct = _by_hand(_numpy_logits(run_dir, images), labels)
    assert got["train"]["loss"] == pytest.approx(loss.mean(), rel=1e-5)
    assert got["train"]["accuracy"] == pytest.approx(correct.mean(), abs=1e-9)


def test_shift_scores_average_the_four_directions(trained: tuple[Path, dict[str, Any]]) -> None:
    run_dir, summary = trained
    got = ie.shift_scores(run_dir, shifts=(0, 2), modes=("wrap", "zero"))
    assert set(got) == {("wrap", 0), ("wrap", 2), ("zero", 0), ("zero", 2)}
    for mode in ("wrap", "zero"):
        assert got[(mode, 0)]["correct"].mean() == pytest.approx(summary["final_eval_accuracy"])
    images, labels = ie.split_arrays(ie.restore(run_dir)[0], "val")
    for mode in ("wrap", "zero"):
        losses, hits = [], []
        for dy, dx in ((2, 0), (-2, 0), (0, 2), (0, -2)):
            moved = _shifted_by_hand(images, dy, dx, mode == "wrap")
            loss, correct = _by_hand(_numpy_logits(run_dir, moved), labels)
            losses.append(loss)
            hits.append(correct)
        np.testing.assert_allclose(got[(mode, 2)]["loss"], np.mean(losses, 0), rtol=1e-4)
        np.testing.assert_allclose(got[(mode, 2)]["correct"], np.mean(hits, 0), atol=1e-12)
