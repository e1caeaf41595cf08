"""Image augmentation on the device, drawn from an explicit `jax.random` key.

Augmentation runs inside the jitted train step (the task's loss), with the step's key, so it
costs no host time, is the same on a resumed run, and is never applied in evaluation (where the
key is None). Labels are never touched: every transform here keeps the class of an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclass(frozen=True)
class Augment:
    """Which transforms to apply; the identity when every field is at its default.

    - `crop_pad`: zero-pad each side by this many pixels, then crop back to the original size
      at a random offset (a random translation by up to `crop_pad` pixels).
    - `flip`: mirror left-right with probability 1/2 (not label-preserving for digits or text).
    - `brightness`: add U(-b, b) to every pixel of an image.
    - `contrast`: scale each image's deviation from its mean by U(1 - c, 1 + c).
    """

    crop_pad: int = 0
    flip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0

    @classmethod
    def from_config(cls, cfg: Any) -> Augment:
        """From a `scalinglab.config.AugmentConfig` (or anything with the same fields)."""
        return cls(int(cfg.crop_pad), bool(cfg.flip), float(cfg.brightness), float(cfg.contrast))

    @property
    def is_identity(self) -> bool:
        return self == Augment()

    def __call__(self, images_BxHxWxC: Array, key: Array) -> Array:
        """Augmented float images of the same shape and dtype; pure in (images, key)."""
        if self.is_identity:
            return images_BxHxWxC
        x = images_BxHxWxC
        k_crop, k_flip, k_bright, k_contrast = jax.random.split(key, 4)
        if self.crop_pad > 0:
            x = random_crop(x, k_crop, self.crop_pad)
        if self.flip:
            x = random_flip(x, k_flip)
        if self.contrast > 0:
            x = random_contrast(x, k_contrast, self.contrast)
        if self.brightness > 0:
            x = random_brightness(x, k_bright, self.brightness)
        return x.astype(images_BxHxWxC.dtype)


def random_crop(images_BxHxWxC: Array, key: Array, pad: int) -> Array:
    """Zero-pad by `pad` on each side and cut each image back at its own random offset."""
    b, h, w, c = images_BxHxWxC.shape
    padded = jnp.pad(images_BxHxWxC, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets_Bx2 = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)

    def crop(img_HpxWpxC: Array, off_2: Array) -> Array:
        return jax.lax.dynamic_slice(img_HpxWpxC, (off_2[0], off_2[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets_Bx2)


def random_flip(images_BxHxWxC: Array, key: Array) -> Array:
    """Mirror each image left-right with probability 1/2."""
    flip_B = jax.random.bernoulli(key, 0.5, (images_BxHxWxC.shape[0],))
    return jnp.where(flip_B[:, None, None, None], images_BxHxWxC[:, :, ::-1, :], images_BxHxWxC)


def random_brightness(images_BxHxWxC: Array, key: Array, delta: float) -> Array:
    """Add one U(-delta, delta) offset to every pixel of each image."""
    shift_B = jax.random.uniform(key, (images_BxHxWxC.shape[0],), minval=-delta, maxval=delta)
    return images_BxHxWxC + shift_B[:, None, None, None]


def random_contrast(images_BxHxWxC: Array, key: Array, amount: float) -> Array:
    """Scale each image's deviation from its own mean by U(1 - amount, 1 + amount)."""
    scale_B = jax.random.uniform(
        key, (images_BxHxWxC.shape[0],), minval=1.0 - amount, maxval=1.0 + amount
    )
    mean_B111 = images_BxHxWxC.mean(axis=(1, 2, 3), keepdims=True)
    return mean_B111 + (images_BxHxWxC - mean_B111) * scale_B[:, None, None, None]


def augment_batch(batch: dict[str, Array], key: Array, augment: Augment) -> dict[str, Array]:
    """A batch `{"image", "label"}` with its images augmented and its labels unchanged."""
    return {**batch, "image": augment(batch["image"], key)}
