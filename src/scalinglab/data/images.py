"""Image classification data: scikit-learn's bundled digits and a generated bars task.

Both sources give an `ImageDataset`: float32 images in [0, 1] (plus noise for the generated
task) of shape (N, H, W, C), int32 labels, a fixed train/validation split, and the batches of
`ExampleDataset` (`data/examples.py`): a pure function of (step, batch_size, seed), shuffled
per epoch, so a resumed run sees exactly the batches an uninterrupted one would. One example
is one unit of D (`data.seq_len` is 1).

- `digits`: the 1,797 8x8 grey handwritten digits that scikit-learn ships (real images, no
  download), split once by a fixed permutation into 1,500 train and 297 validation images.
- `shapes`: one bar per image through a jittered centre; its orientation (n_classes angles
  pi/n_classes apart, each jittered by a quarter of that spacing) is the class; its length,
  width and colour vary; Gaussian pixel noise of std `noise` is added. Difficulty is set by
  `noise`, `n_classes` and `image_size`; the images depend only on `shapes.seed`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from scalinglab.config import DataConfig, ShapesConfig
from scalinglab.data.batches import DataError, _rng
from scalinglab.data.examples import ExampleDataset, arrays_sha256

DIGITS_N_VAL = 297  # 1797 = 1500 train + 297 validation
DIGITS_SPLIT_SEED = 0  # the split never depends on the trial seed


class ImageDataset(ExampleDataset):
    """Images float32 (N, H, W, C) and int32 labels; batches `{"image", "label"}` (the batching
    of `ExampleDataset`)."""

    INPUT_KEY: ClassVar[str] = "image"
    TARGET_KEY: ClassVar[str] = "label"

    @property
    def train_images(self) -> np.ndarray:
        return self.train_inputs

    @property
    def train_labels(self) -> np.ndarray:
        return self.train_targets

    @property
    def val_images(self) -> np.ndarray:
        return self.val_inputs

    @property
    def val_labels(self) -> np.ndarray:
        return self.val_targets


def _dataset(
    cfg: DataConfig,
    images: np.ndarray,
    labels: np.ndarray,
    n_val: int,
    n_classes: int,
    extra: dict[str, Any],
) -> ImageDataset:
    """Split off the last `n_val` examples as validation; `cfg.train_subset` keeps only the
    first examples of the rest (the sha256 covers exactly the examples used)."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    images.setflags(write=False)
    labels.setflags(write=False)
    cut = len(labels) - n_val
    n_train = cut
    if cfg.train_subset is not None:
        if cfg.train_subset > cut:
            raise DataError(
                f"data.train_subset: {cfg.train_subset} is more than the {cut} training "
                f"examples of data.source {cfg.source!r}"
            )
        n_train = cfg.train_subset
    train_x, train_y = images[:n_train], labels[:n_train]
    val_x, val_y = images[cut:], labels[cut:]
    info = {
        "source": cfg.source,
        "n_train": n_train,
        "n_val": n_val,
        "image_size": int(images.shape[1]),
        "channels": int(images.shape[3]),
        "n_classes": n_classes,
        "sha256": arrays_sha256(train_x, train_y, val_x, val_y),
        **extra,
    }
    from scalinglab.data.shortcut import shortcut_dataset  # it imports this module

    # data.shortcut: markers planted in the training images only (the neutral default: none)
    return shortcut_dataset(
        ImageDataset(train_x, train_y, val_x, val_y, info), cfg.shortcut, n_classes
    )


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as float32 (1797, 8, 8, 1) in [0, 1] and int32 labels, in a fixed
    shuffled order (the validation split is the last DIGITS_N_VAL)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "data.source: 'digits' needs scikit-learn (pip install 'scikit-learn>=1.3')"
        ) from None
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    order = _rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    return images[order], labels[order]


def digits_dataset(cfg: DataConfig) -> ImageDataset:
    """The `digits` source: 1,500 train (or `data.train_subset`) and 297 validation 8x8x1
    images of 10 classes."""
    images, labels = load_digits_arrays()
    return _dataset(cfg, images, labels, DIGITS_N_VAL, 10, {})


def make_shapes(cfg: ShapesConfig, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` noisy bar images (float32 (n, S, S, C)) and their orientation classes (int32).

    The bar is a Gaussian ridge of width w across its axis, cut to length L along it, through
    a centre jittered by up to S/8; its colour is U(0.5, 1) per channel.
    """
    rng = _rng(seed)
    s, k, c = cfg.image_size, cfg.n_classes, cfg.channels
    labels = rng.integers(0, k, n)
    spacing = math.pi / k
    theta = labels * spacing + rng.uniform(-0.25, 0.25, n) * spacing
    centre = (s - 1) / 2 + rng.uniform(-s / 8, s / 8, (n, 2))
    length = rng.uniform(0.5, 0.9, n) * s
    width = rng.uniform(0.04, 0.08, n) * s
    colour = rng.uniform(0.5, 1.0, (n, c))
    yy, xx = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    dy = yy[None] - centre[:, 0, None, None]
    dx = xx[None] - centre[:, 1, None, None]
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    along = dx * cos + dy * sin
    across = -dx * sin + dy * cos
    w = width[:, None, None]
    bar = np.exp(-0.5 * (across / w) ** 2) * (np.abs(along) <= length[:, None, None] / 2)
    images = bar[..., None] * colour[:, None, None, :]
    images = images + cfg.noise * rng.standard_normal(images.shape)
    return images.astype(np.float32), labels.astype(np.int32)


def shapes_dataset(cfg: DataConfig) -> ImageDataset:
    """The `shapes` source: `data.shapes.n_train` + `n_val` generated bar images."""
    sc = cfg.shapes
    images, labels = make_shapes(sc, sc.n_train + sc.n_val, sc.seed)
    extra = {"noise": sc.noise, "seed": sc.seed}
    return _dataset(cfg, images, labels, sc.n_val, sc.n_classes, extra)
