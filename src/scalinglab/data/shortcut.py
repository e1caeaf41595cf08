"""A planted spurious feature (a "ruler"): a one-pixel marker whose position names a class,
written into the training images only, so a study can measure how much a classifier relies
on it instead of the image.

The marker region is one pixel per class along the left edge, then the right edge
(`marker_positions`): class k lights pixel k of that order at `value` and the rest of the
region is 0, a one-hot code. In training (`data.shortcut`) every image carries a marker whose
class equals the label with probability `strength`, else one of the other classes drawn
uniformly; which examples disagree depends only on `shortcut.seed`. The validation split is
never marked; `variants` builds the marked copies an analysis scores (marker absent, aligned
with the label, flipped to another class). `remove_prob` is the fix by augmentation: each
training example of each batch has its marker region erased (set to 0) with that
probability, drawn from (seed, step) so a resumed run sees the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scalinglab.config import ShortcutConfig
from scalinglab.data.batches import DataError, _rng
from scalinglab.data.examples import arrays_sha256
from scalinglab.data.images import ImageDataset

_REMOVE_STREAM = 0x5C  # folded into the batch rng so removal draws differ from the shuffle's


def marker_positions(image_size: int, n_classes: int) -> np.ndarray:
    """(n_classes, 2) int (row, column) of each class's marker pixel: down the left column,
    then down the right column (the digits' left column is always background)."""
    if n_classes > 2 * image_size:
        raise DataError(
            f"data.shortcut: {n_classes} classes need {n_classes} marker pixels but the edges "
            f"of a {image_size}-pixel image hold {2 * image_size}"
        )
    edge = [(r, 0) for r in range(image_size)] + [(r, image_size - 1) for r in range(image_size)]
    return np.array(edge[:n_classes], dtype=np.int64)


def stamp(
    images_BxHxWxC: np.ndarray, classes_B: np.ndarray, positions_Kx2: np.ndarray, value: float
) -> np.ndarray:
    """A copy of the images with the marker region set to a one-hot code: pixel
    `positions[classes[i]]` of image i at `value` (every channel), the other marker pixels 0;
    a class of -1 lights none (the marker erased)."""
    out = np.array(images_BxHxWxC, dtype=np.float32, copy=True)
    rows, cols = positions_Kx2[:, 0], positions_Kx2[:, 1]
    out[:, rows, cols, :] = 0.0
    lit = np.flatnonzero(np.asarray(classes_B) >= 0)
    k = np.asarray(classes_B)[lit]
    out[lit, rows[k], cols[k], :] = value
    return out


def erase(images_BxHxWxC: np.ndarray, positions_Kx2: np.ndarray) -> np.ndarray:
    """A copy of the images with the whole marker region set to 0 (no marker)."""
    return stamp(images_BxHxWxC, np.full(len(images_BxHxWxC), -1), positions_Kx2, 0.0)


def marker_classes(labels_B: np.ndarray, strength: float, n_classes: int, seed: int) -> np.ndarray:
    """Each example's marker class: its label with probability `strength`, else one of the
    other n_classes - 1 classes, uniformly."""
    labels = np.asarray(labels_B, np.int64)
    rng = _rng(seed)
    agree = rng.random(len(labels)) < strength
    other = (labels + rng.integers(1, n_classes, len(labels))) % n_classes
    return np.where(agree, labels, other)


def flipped_classes(labels_B: np.ndarray, n_classes: int, shift: int = 1) -> np.ndarray:
    """The marker class of the flipped variant: label + shift (mod n_classes), never the label
    when shift is not a multiple of n_classes."""
    return (np.asarray(labels_B, np.int64) + shift) % n_classes


def plant(
    images_BxHxWxC: np.ndarray, labels_B: np.ndarray, cfg: ShortcutConfig, n_classes: int
) -> np.ndarray:
    """The training images with their markers (`marker_classes` at `cfg.strength`)."""
    positions = marker_positions(images_BxHxWxC.shape[1], n_classes)
    classes = marker_classes(labels_B, cfg.strength, n_classes, cfg.seed)
    return stamp(images_BxHxWxC, classes, positions, cfg.value)


def variants(
    images_BxHxWxC: np.ndarray, labels_B: np.ndarray, n_classes: int, value: float = 1.0
) -> dict[str, np.ndarray]:
    """The images an analysis scores: `clean` (as given), `absent` (marker region 0),
    `aligned` (marker = label) and `flipped` (marker = label + 1 mod n_classes)."""
    positions = marker_positions(images_BxHxWxC.shape[1], n_classes)
    return {
        "clean": np.asarray(images_BxHxWxC, np.float32),
        "absent": erase(images_BxHxWxC, positions),
        "aligned": stamp(images_BxHxWxC, labels_B, positions, value),
        "flipped": stamp(images_BxHxWxC, flipped_classes(labels_B, n_classes), positions, value),
    }


@dataclass(frozen=True, eq=False)
class ShortcutImageDataset(ImageDataset):
    """An ImageDataset whose training images carry markers; with `remove_prob` > 0 each
    training batch erases the marker of each example with that probability."""

    remove_prob: float = 0.0
    positions: Any = None  # (K, 2) marker pixels

    def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        batch = super().train_batch(step, batch_size, seed)
        if self.remove_prob <= 0:
            return batch
        drop = _rng(seed, step, _REMOVE_STREAM).random(batch_size) < self.remove_prob
        images = batch[self.INPUT_KEY]
        images[drop] = erase(images[drop], self.positions)
        return batch


def shortcut_dataset(data: ImageDataset, cfg: ShortcutConfig, n_classes: int) -> ImageDataset:
    """`data` with markers planted in its training images (validation untouched); `data`
    itself when `cfg` is the neutral default."""
    if cfg == ShortcutConfig():
        return data
    positions = marker_positions(data.train_images.shape[1], n_classes)
    train = data.train_images
    if cfg.strength > 0:
        train = plant(train, data.train_labels, cfg, n_classes)
        train.setflags(write=False)
    info = {
        **data.info,
        "shortcut": cfg.model_dump(mode="json"),
        "sha256": arrays_sha256(train, data.train_labels, data.val_images, data.val_labels),
    }
    return ShortcutImageDataset(
        train,
        data.train_labels,
        data.val_images,
        data.val_labels,
        info,
        remove_prob=cfg.remove_prob,
        positions=positions,
    )
