"""A small residual convolutional classifier (`model.family: resnet`); all convolutions 3x3.

Layout, for `stages` stages of `depth` blocks, stage s having ``width * 2**s`` channels:

    stem:        conv(in_channels -> c_0), norm, act
    stage s > 0: pool 2x2 (max or avg, stride 2), conv(c_{s-1} -> c_s), norm, act
    each block:  h = h + norm(conv(act(norm(conv(h)))))
    head:        global pool (max or avg, the same `pool`), dropout, dense -> logits

Choices, each for a reason:
- Every convolution is 3x3 with "SAME" padding, and channel changes happen only in the stem
  and the stage transitions, so every residual connection is an identity (no 1x1 projection).
- No activation after the residual sum (as in pre-activation ResNets and transformers): the
  identity path stays clean, and every activation follows a convolution, which is what lets
  swiglu be gated here too: the convolution before it has 2 x channels, split into gate and
  value (``silu(g) * v``), like the MLP's.
- With `batch_norm`, convolutions have no bias (the norm's shift replaces it). Running
  statistics live in the `batch_stats` collection: batch statistics in training, running
  averages in evaluation.
- Dropout sits before the head only; regularising the convolutions is left to augmentation and
  weight decay. Output conventions (binary sigmoid head, zero-initialised head) are the MLP's.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from scalinglab.families.resnet import ResNetConfig
from scalinglab.models.mlp import BatchNorm, activate, gate_factor, kernel_init, n_outputs

Array = jax.Array


def stage_channels(cfg: ResNetConfig) -> list[int]:
    """Channels of each stage: width, doubled at every later stage."""
    return [cfg.width * 2**s for s in range(cfg.stages)]


def stage_sizes(cfg: ResNetConfig) -> list[int]:
    """Spatial side of each stage: image_size, halved (floor) by each 2x2 pool."""
    return [cfg.image_size >> s for s in range(cfg.stages)]


class ResNet(nn.Module):
    """Images (B, H, W, C) -> logits (B, n_outputs), float32."""

    cfg: ResNetConfig

    def _conv(self, features: int, name: str, scale: float = 1.0) -> nn.Conv:
        cfg = self.cfg
        return nn.Conv(
            features,
            (3, 3),
            padding="SAME",
            use_bias=not cfg.batch_norm,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.float32,
            kernel_init=kernel_init(cfg.activation, scale),
            name=name,
        )

    def _norm(self, x: Array, name: str, train: bool) -> Array:
        if not self.cfg.batch_norm:
            return x
        return BatchNorm(jnp.dtype(self.cfg.dtype), name=name)(x, train)

    def _pool(self, x_BxHxWxC: Array, window: int) -> Array:
        pool = nn.max_pool if self.cfg.pool == "max" else nn.avg_pool
        return pool(x_BxHxWxC, (window, window), strides=(window, window), padding="VALID")

    @nn.compact
    def __call__(self, images_BxHxWxC: Array, train: bool = False) -> Array:
        cfg = self.cfg
        g = gate_factor(cfg.activation)
        act = cfg.activation
        h = images_BxHxWxC.astype(jnp.dtype(cfg.dtype))
        channels = stage_channels(cfg)
        h = activate(self._norm(self._conv(g * channels[0], "stem")(h), "stem_norm", train), act)
        for s, c in enumerate(channels):
            if s > 0:
                h = self._pool(h, 2)
                a = self._conv(g * c, f"stage{s}_conv")(h)
                h = activate(self._norm(a, f"stage{s}_norm", train), act)
            for b in range(cfg.depth):
                name = f"stage{s}_block{b}"
                a = self._norm(self._conv(g * c, f"{name}_conv1")(h), f"{name}_norm1", train)
                # The branch's last conv is scaled down so a deep stack without norms stays O(1).
                y = self._conv(c, f"{name}_conv2", 1.0 / cfg.depth)(activate(a, act))
                h = h + self._norm(y, f"{name}_norm2", train)
        h_BxC = h.max(axis=(1, 2)) if cfg.pool == "max" else h.mean(axis=(1, 2))
        h_BxC = nn.Dropout(cfg.dropout, deterministic=not train)(h_BxC)
        logits = nn.Dense(
            n_outputs(cfg.n_classes),
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.zeros,
            name="head",
        )(h_BxC)
        return logits.astype(jnp.float32)
