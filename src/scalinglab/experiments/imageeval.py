"""A trained image classifier, read back from its run directory, scored example by example on
chosen images: the validation split shifted by whole pixels (translation invariance, the
convolution study) or the training split (the train/validation gap, the regularisation study).

Scores come from the model's forward pass in evaluation mode, as the trainer's evaluation
computes them (no dropout or augmentation, batch norm on its running averages), but per
example, so an interval can resample images; `paired_mean` is that bootstrap. Parameters are
the run directory's final checkpoint (`gradients.final_params`): the model training ended with.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import numpy as np

from scalinglab.analysis.intervals import interval, resample_rows
from scalinglab.config import TrialConfig
from scalinglab.experiments import gradients as g

Mode = Literal["wrap", "zero"]
Split = Literal["train", "val"]
MODES: tuple[Mode, ...] = ("wrap", "zero")
# The four axis directions (dy, dx) of a shift: down, up, right, left.
DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))
CHUNK = 512  # images per forward call: one compiled shape per model, whatever the count


def shift_images(images_BxHxWxC: np.ndarray, dy: int, dx: int, mode: Mode = "wrap") -> np.ndarray:
    """Images moved `dy` pixels down and `dx` right; `wrap` brings what leaves one edge back at
    the other (a cyclic shift), `zero` fills the uncovered pixels with 0 (the background)."""
    x = np.asarray(images_BxHxWxC)
    if mode == "wrap":
        return np.roll(x, (dy, dx), axis=(1, 2))
    if mode != "zero":
        raise ValueError(f"mode: {mode!r} not allowed; expected one of {', '.join(MODES)}")
    _, h, w, _ = x.shape
    out = np.zeros_like(x)
    rows_to, rows_from = _span(dy, h), _span(-dy, h)
    cols_to, cols_from = _span(dx, w), _span(-dx, w)
    out[:, rows_to, cols_to] = x[:, rows_from, cols_from]
    return out


def _span(shift: int, size: int) -> slice:
    """The indices an axis of `size` keeps after a shift by `shift` (empty past the edge)."""
    shift = max(-size, min(size, shift))
    return slice(shift, size) if shift >= 0 else slice(0, size + shift)


def split_arrays(cfg: TrialConfig, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the trial's training split (its `data.train_subset`, the examples
    it trained on) or its validation split."""
    from scalinglab.data import build_dataset

    data = build_dataset(cfg.data)
    if split == "train":
        return np.asarray(data.train_inputs), np.asarray(data.train_targets)
    return np.asarray(data.val_inputs), np.asarray(data.val_targets)


class _ByModel(NamedTuple):
    """A model config hashed and compared by its JSON alone (what the forward pass needs)."""

    key: str
    cfg: TrialConfig

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ByModel) and other.key == self.key


@functools.lru_cache(maxsize=16)
def _forward(keyed: _ByModel) -> Callable[[Any, Any], jax.Array]:
    """`(variables, images) -> logits` in evaluation mode, jitted once per model config."""
    from scalinglab.models import build_model

    model = build_model(keyed.cfg.model)
    return jax.jit(lambda variables, images: model.apply(variables, images, train=False))


def logits(
    cfg: TrialConfig, params: Any, model_state: dict[str, Any], images: np.ndarray
) -> np.ndarray:
    """The model's float32 logits (B, outputs) on `images`, in evaluation mode, computed in
    padded chunks of CHUNK so every call of a model reuses one compiled shape."""
    fn = _forward(_ByModel(json.dumps(cfg.model.model_dump(mode="json"), sort_keys=True), cfg))
    variables = {"params": params, **model_state}
    images = np.asarray(images, np.float32)
    out = []
    for start in range(0, len(images), CHUNK):
        part = images[start : start + CHUNK]
        pad = np.zeros((CHUNK - len(part), *part.shape[1:]), np.float32)
        out.append(np.asarray(fn(variables, np.concatenate([part, pad])))[: len(part)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def per_example(logits_BxK: np.ndarray, labels_B: np.ndarray) -> dict[str, np.ndarray]:
    """Cross-entropy (nats) and correctness (0/1) of each example: softmax over the logits,
    or a sigmoid for a binary head of one logit (the classification task's conventions)."""
    z = np.asarray(logits_BxK, np.float64)
    y = np.asarray(labels_B)
    if z.shape[1] == 1:
        z1 = z[:, 0]
        loss = np.logaddexp(0.0, z1) - y * z1  # -log sigmoid(z) for y=1, -log(1-sigmoid) for 0
        pred = (z1 > 0).astype(y.dtype)
    else:
        top = z.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
        loss = lse - z[np.arange(len(y)), y]
        pred = z.argmax(axis=1)
    return {"loss": loss, "correct": (pred == y).astype(np.float64)}


def score(
    cfg: TrialConfig,
    params: Any,
    model_state: dict[str, Any],
    images: np.ndarray,
    labels: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-example loss and correctness of a trained model on `images` (see `per_example`)."""
    return per_example(logits(cfg, params, model_state, images), labels)


def restore(run_dir: str | Path) -> tuple[TrialConfig, Any, dict[str, Any]]:
    """(config, params, model_state) of a run directory's final checkpoint."""
    cfg = g.trial_config(run_dir)
    params, model_state, _ = g.final_params(cfg, run_dir)
    return cfg, params, model_state


def split_scores(run_dir: str | Path) -> dict[str, dict[str, float]]:
    """`{"train": ..., "val": ...}`: mean loss, accuracy and example count of a run
    directory's final model on its training split (the examples it trained on) and its
    validation split, every example once, in evaluation mode."""
    cfg, params, model_state = restore(run_dir)
    out = {}
    for split in ("train", "val"):
        images, labels = split_arrays(cfg, split)
        s = score(cfg, params, model_state, images, labels)
        out[split] = {
            "loss": float(s["loss"].mean()),
            "accuracy": float(s["correct"].mean()),
            "n": len(labels),
        }
    return out


def shift_scores(
    run_dir: str | Path,
    shifts: Sequence[int] = (0, 1, 2, 3),
    modes: Iterable[Mode] = MODES,
) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    """`{(mode, shift): {"loss", "correct"}}`: per validation image, the mean over the four
    axis directions (DIRECTIONS) of the final model's loss and correctness on the image moved
    by `shift` pixels (shift 0: the images as they are, for every mode). One forward pass
    over every shifted copy."""
    cfg, params, model_state = restore(run_dir)
    images, labels = split_arrays(cfg, "val")
    keys, views = [], []
    for mode in modes:
        for s in shifts:
            keys.append((mode, s))
            views += [shift_images(images, s * dy, s * dx, mode) for dy, dx in DIRECTIONS]
    n, d = len(labels), len(DIRECTIONS)
    scored = score(cfg, params, model_state, np.concatenate(views), np.tile(labels, len(views)))
    out = {}
    for i, key in enumerate(keys):
        block = slice(i * d * n, (i + 1) * d * n)
        out[key] = {k: v[block].reshape(d, n).mean(axis=0) for k, v in scored.items()}
    return out


def paired_mean(
    differences: np.ndarray, bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """The mean of paired differences (two models on the same images, or two settings on the
    same data size and seed) with a percentile bootstrap interval over the pairs; `resolved`
    when the interval excludes 0."""
    d = np.asarray(differences, np.float64)
    means = d[resample_rows(len(d), bootstrap, seed)].mean(axis=1)
    lo, hi = interval(means, confidence)
    return {
        "value": float(d.mean()),
        "ci": [float(lo), float(hi)],
        "confidence": confidence,
        "resolved": bool(lo > 0 or hi < 0),
        "n_pairs": len(d),
    }
