"""A fully connected network (`model.family: mlp`) and the pieces the ResNet shares.

Images (B, H, W, C), or the (B, d) inputs of a regression source, are flattened; `depth`
hidden layers of `width` units follow, each ``act(norm(W x))`` then dropout; with `residual`,
every hidden layer after the first (which changes the width) adds its input back, so "plain vs
residual at depth 20+" is one flag. The head is one Dense to `n_classes` logits (softmax
cross-entropy), to a single logit when `n_classes == 2` (sigmoid cross-entropy: the binary
case), or to the single prediction of a regression (`MLPConfig.output_size`).

Choices, each for a reason:
- swiglu is gated: the layer's projection has 2 x width outputs, split into gate g and value
  v, giving ``silu(g) * v`` (two projections, as in the GPT's MLP).
- With `batch_norm`, the projection has no bias (the norm's shift replaces it) and the norm
  runs on the pre-activation in float32, momentum 0.9 (short scaling runs need the running
  statistics to settle within a few hundred steps).
- Kernels: He (fan-in, scale 2) for the rectifier-like activations, LeCun (scale 1) for
  sigmoid and tanh; residual branches are scaled down by 1/depth in variance so a deep residual
  stack without norms keeps its activations O(1). The head starts at zero, so the first loss
  is exactly log(n_classes) (or log 2; for a regression, the mean squared target).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from scalinglab import mup
from scalinglab.families.mlp import MLPConfig
from scalinglab.models.layers import GATED_ACTIVATIONS, activation_fn

Array = jax.Array
BN_MOMENTUM = 0.9
SATURATING = frozenset({"sigmoid", "tanh"})


def n_outputs(n_classes: int) -> int:
    """Logits of the head: one (sigmoid) for a binary task, else one per class (softmax)."""
    return 1 if n_classes == 2 else n_classes


def gate_factor(activation: str) -> int:
    """Output features per unit of a layer followed by `activation` (2 for gated swiglu)."""
    return 2 if activation in GATED_ACTIVATIONS else 1


def kernel_init(activation: str, scale: float = 1.0) -> nn.initializers.Initializer:
    """He for rectifier-like activations, LeCun for saturating ones, times `scale` in variance."""
    gain = 1.0 if activation in SATURATING else 2.0
    return nn.initializers.variance_scaling(gain * scale, "fan_in", "truncated_normal")


def activate(a: Array, activation: str) -> Array:
    """The hidden non-linearity; for a gated activation `a` holds (gate, value) halves."""
    fn = activation_fn(activation)
    if activation in GATED_ACTIVATIONS:
        gate, value = jnp.split(a, 2, axis=-1)
        return fn(gate) * value
    return fn(a)


class BatchNorm(nn.Module):
    """Batch norm over every axis but the last, statistics in float32; params scale, bias.

    Training (`train=True`) normalises by the batch statistics and updates the running averages
    in the `batch_stats` collection; evaluation uses the running averages.
    """

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        y = nn.BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=1e-5,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            name="bn",
        )(x.astype(jnp.float32))
        return y.astype(self.dtype)


class MLP(nn.Module):
    """Flattened input -> `depth` hidden layers of `width` -> logits or prediction (float32)."""

    cfg: MLPConfig

    @nn.compact
    def __call__(self, inputs: Array, train: bool = False) -> Array:
        # inputs: images (B, H, W, C) or regression features (B, d); flattened to (B, F).
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        g = gate_factor(cfg.activation)
        h_BxF = inputs.reshape(inputs.shape[0], -1).astype(dtype)
        for i in range(cfg.depth):
            skip = cfg.residual and i > 0
            scale = 1.0 / cfg.depth if skip else 1.0
            a = nn.Dense(
                g * cfg.width,
                use_bias=not cfg.batch_norm,
                dtype=dtype,
                param_dtype=jnp.float32,
                kernel_init=kernel_init(cfg.activation, scale),
                name=f"dense_{i}",
            )(h_BxF)
            if cfg.batch_norm:
                a = BatchNorm(dtype, name=f"norm_{i}")(a, train)
            y = nn.Dropout(cfg.dropout, deterministic=not train)(activate(a, cfg.activation))
            h_BxF = h_BxF + y if skip else y
        logits = nn.Dense(
            cfg.output_size,
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.zeros,
            name="head",
        )(h_BxF)
        return mup.readout(cfg, logits.astype(jnp.float32))
