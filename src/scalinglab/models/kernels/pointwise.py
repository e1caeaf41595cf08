"""tanh-GELU and LayerNorm with hand-written backward passes (CPU training speed).

Autodiff of either makes XLA compute and store several (B*T, F) residuals in the forward
pass; these VJPs keep only what the backward needs and compute it in one fused pass.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

Array = jax.Array

_GELU_C = math.sqrt(2.0 / math.pi)


@jax.custom_vjp
def gelu_tanh(x: Array) -> Array:
    """GELU, tanh approximation, with a hand-written derivative.

    Autodiff of the tanh form makes XLA compute and store several (B*T, F) residuals in the
    forward pass; this VJP keeps only the input and recomputes tanh in one fused backward pass
    (measured: see benchmarks/README.md).
    """
    return 0.5 * x * (1.0 + jnp.tanh(_GELU_C * (x + 0.044715 * x * x * x)))


def _gelu_fwd(x: Array) -> tuple[Array, Array]:
    return gelu_tanh(x), x


def _gelu_bwd(x: Array, g: Array) -> tuple[Array]:
    x2 = x * x
    t = jnp.tanh(_GELU_C * (x + 0.044715 * x2 * x))
    dy_dx = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x2)
    return (g * dy_dx,)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)


def _ln_stats(x: Array, eps: float) -> tuple[Array, Array]:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    return mean, jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, eps: float = 1e-5) -> Array:
    """LayerNorm of a (N, D) float32 array, with a hand-written backward pass.

    The VJP saves only the per-row mean and reciprocal std and computes the input gradient in
    one fused expression, instead of the several passes autodiff produces.
    """
    mean, rstd = _ln_stats(x, eps)
    return (x - mean) * rstd * scale + bias


def _ln_fwd(x: Array, scale: Array, bias: Array, eps: float) -> tuple[Array, tuple]:
    mean, rstd = _ln_stats(x, eps)
    return (x - mean) * rstd * scale + bias, (x, mean, rstd, scale)


def _ln_bwd(eps: float, res: tuple, g: Array) -> tuple[Array, Array, Array]:
    x, mean, rstd, scale = res
    xhat = (x - mean) * rstd
    gx = g * scale
    dx = rstd * (
        gx - jnp.mean(gx, axis=-1, keepdims=True) - xhat * jnp.mean(gx * xhat, -1, keepdims=True)
    )
    axes = tuple(range(x.ndim - 1))
    return dx, jnp.sum(g * xhat, axis=axes), jnp.sum(g, axis=axes)


layer_norm.defvjp(_ln_fwd, _ln_bwd)
