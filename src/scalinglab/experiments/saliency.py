"""Saliency maps of image classifiers: input gradients and integrated gradients, as pure jitted
functions of (variables, images, labels), and the numbers that summarise them.

- Input gradient: d f_y(x) / dx, where f_y is the logit of class y (the label).
- Integrated gradients (Sundararajan et al. 2017): (x - x') times the mean of the input
  gradient along the straight path from a baseline x' to x, here a midpoint Riemann sum of
  `steps` points. Their sum over pixels equals f_y(x) - f_y(x') (completeness) up to the sum's
  O(1/steps^2) error, which `completeness_gap` measures.

`logit_fn(variables, images) -> logits (B, K)` is the model in evaluation mode; examples must
not interact (batch norm on its running averages), so the gradient of the summed target logits
is every example's own gradient. For a trained trial, `trial_logit_fn` gives it. Summaries:
how concentrated an attribution is (`top_k_share`) and a deletion curve (accuracy as the most
salient pixels, or random ones, are set to the baseline: `deletion_accuracy`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scalinglab.config import TrialConfig

LogitFn = Callable[[Any, jax.Array], jax.Array]


def _target_sum(logit_fn: LogitFn, variables: Any, images: jax.Array, labels: jax.Array):
    """The sum over the batch of each example's logit of its label."""
    z = logit_fn(variables, images)
    return jnp.take_along_axis(z, labels[:, None], axis=1).sum()


def logits(logit_fn: LogitFn, variables: Any, images: np.ndarray | jax.Array) -> np.ndarray:
    """The model's logits (B, K) as float64, through one jitted program per `logit_fn`."""
    return np.asarray(_jit_logits(logit_fn)(variables, jnp.asarray(images)), np.float64)


def target_logits(
    logit_fn: LogitFn, variables: Any, images: np.ndarray | jax.Array, labels: np.ndarray
) -> np.ndarray:
    """f_y(x) per example (B,): the logit of each image's label."""
    z = logits(logit_fn, variables, images)
    return z[np.arange(len(z)), np.asarray(labels)]


@functools.partial(jax.jit, static_argnames=("logit_fn",))
def input_gradient(
    logit_fn: LogitFn, variables: Any, images: jax.Array, labels: jax.Array
) -> jax.Array:
    """d f_y(x) / dx per example, the shape of `images`: the plain saliency map."""
    return jax.grad(_target_sum, argnums=2)(logit_fn, variables, images, labels)


@functools.partial(jax.jit, static_argnames=("logit_fn",))
def integrated_gradients(
    logit_fn: LogitFn,
    variables: Any,
    images: jax.Array,
    labels: jax.Array,
    baseline: jax.Array,
    steps: jax.Array | int = 32,
) -> jax.Array:
    """Integrated gradients from `baseline` (broadcast to `images`): (x - x') times the mean
    input gradient at x' + a (x - x') for the midpoints a = (i + 1/2) / steps. `steps` is a
    traced loop bound: one compiled program per model serves every step count."""
    delta = images - baseline

    def add(i: jax.Array, total: jax.Array) -> jax.Array:
        a = (i + 0.5) / steps
        return total + jax.grad(_target_sum, argnums=2)(
            logit_fn, variables, baseline + a * delta, labels
        )

    total = jax.lax.fori_loop(0, steps, add, jnp.zeros_like(images))
    return delta * total / steps


def completeness_gap(
    attributions: np.ndarray, f_x: np.ndarray, f_baseline: np.ndarray
) -> np.ndarray:
    """Per example: sum of attributions - (f(x) - f(x')), which is 0 for exact integrated
    gradients (the Riemann sum leaves O(1/steps^2))."""
    a = np.asarray(attributions, np.float64)
    total = a.reshape(len(a), -1).sum(axis=1)
    return total - (np.asarray(f_x, np.float64) - np.asarray(f_baseline, np.float64))


def top_k_share(attributions: np.ndarray, k: int) -> np.ndarray:
    """Per example: the share of the total |attribution| held by its k largest pixels (k/P for
    a flat map of P pixels, 1 when k pixels hold it all). Channels are summed per pixel."""
    a = np.abs(np.asarray(attributions, np.float64))
    per_pixel = a.reshape(*a.shape[:3], -1).sum(axis=-1).reshape(len(a), -1)
    top = -np.sort(-per_pixel, axis=1)[:, :k].sum(axis=1)
    return top / np.maximum(per_pixel.sum(axis=1), 1e-30)


def saliency_order(attributions: np.ndarray, signed: bool = False) -> np.ndarray:
    """(B, P) pixel indices (row-major over H x W) by decreasing |attribution|, or by
    decreasing attribution when `signed` (the evidence for the class first); channels summed."""
    a = np.asarray(attributions, np.float64)
    a = a if signed else np.abs(a)
    per_pixel = a.reshape(*a.shape[:3], -1).sum(axis=-1).reshape(len(a), -1)
    return np.argsort(-per_pixel, axis=1, kind="stable")


def random_order(n: int, pixels: int, seed: int = 0) -> np.ndarray:
    """(n, pixels) independent random permutations of the pixel indices (the deletion control)."""
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((n, pixels)), axis=1)


def delete_pixels(
    images: np.ndarray, order: np.ndarray, k: int, baseline: np.ndarray | float = 0.0
) -> np.ndarray:
    """`images` (B, H, W, C) with the first k pixels of each row of `order` set to the baseline
    (all channels)."""
    x = np.array(images, copy=True)
    b, h, w, c = x.shape
    base = np.broadcast_to(np.asarray(baseline, x.dtype), x.shape)
    flat, flat_base = x.reshape(b, h * w, c), base.reshape(b, h * w, c)
    rows = np.arange(b)[:, None]
    idx = order[:, :k]
    flat[rows, idx] = flat_base[rows, idx]
    return flat.reshape(b, h, w, c)


def deletion_accuracy(
    logit_fn: LogitFn,
    variables: Any,
    images: np.ndarray,
    labels: np.ndarray,
    order: np.ndarray,
    ks: Sequence[int],
    baseline: np.ndarray | float = 0.0,
) -> list[float]:
    """Accuracy after deleting the first k pixels of `order` (set to the baseline), per k."""
    out = []
    for k in ks:
        z = logits(logit_fn, variables, delete_pixels(images, order, k, baseline))
        out.append(float((z.argmax(axis=1) == np.asarray(labels)).mean()))
    return out


@functools.lru_cache(maxsize=16)
def _jit_logits(logit_fn: LogitFn) -> Callable[[Any, jax.Array], jax.Array]:
    """`logit_fn` jitted once (a new `jax.jit` wrapper per call would compile again)."""
    return jax.jit(logit_fn)


@functools.lru_cache(maxsize=16)
def _model_logit_fn(model_json: str) -> LogitFn:
    """One `(variables, images) -> logits` object per model config, so jit traces it once."""
    from scalinglab.config import parse_model_config
    from scalinglab.models import build_model

    model = build_model(parse_model_config(json.loads(model_json)))

    def logits(variables: Any, images: jax.Array) -> jax.Array:
        return model.apply(variables, images, train=False).astype(jnp.float32)

    return logits


def trial_logit_fn(cfg: TrialConfig) -> LogitFn:
    """A trial's classifier in evaluation mode as `logit_fn(variables, images)`, with
    variables `{"params": params, **model_state}` (as `imageeval.restore` returns them)."""
    return _model_logit_fn(cfg.model.model_dump_json())


def first_conv_kernel(params: Any) -> np.ndarray:
    """The first convolution's kernel (kh, kw, in, out) of a ResNet's params (`stem`)."""
    return np.asarray(params["stem"]["kernel"], np.float64)


def initial_stem_kernel(cfg: TrialConfig, seed: int) -> np.ndarray:
    """The ResNet stem kernel that `model.init(PRNGKey(seed), images)` draws, without
    initialising the rest of the network: flax derives a parameter's key from the root key and
    its module path, so a lone `stem` Conv with the stem's initialiser draws the same values."""
    import flax.linen as nn

    from scalinglab.models.mlp import gate_factor, kernel_init
    from scalinglab.models.resnet import stage_channels

    m = cfg.model
    features = gate_factor(m.activation) * stage_channels(m)[0]

    class Root(nn.Module):  # the stem's place in the tree: root -> "stem"
        @nn.compact
        def __call__(self, images: jax.Array) -> jax.Array:
            return nn.Conv(
                features, (3, 3), use_bias=False, param_dtype=jnp.float32,
                kernel_init=kernel_init(m.activation), name="stem",
            )(images)  # fmt: skip

    shape = (1, m.image_size, m.image_size, m.in_channels)
    params = Root().init(jax.random.PRNGKey(seed), jnp.zeros(shape))["params"]
    return np.asarray(params["stem"]["kernel"], np.float64)


def roughness(kernel_HxWxIxO: np.ndarray) -> np.ndarray:
    """Per output filter: mean squared difference of neighbouring taps (horizontal and
    vertical, every input channel) over the mean squared tap. Independent zero-mean taps give
    2 in expectation; a smooth filter is near 0, a checkerboard near 4."""
    w = np.asarray(kernel_HxWxIxO, np.float64)
    dh = np.diff(w, axis=0) ** 2
    dw = np.diff(w, axis=1) ** 2
    num = (dh.sum(axis=(0, 1, 2)) + dw.sum(axis=(0, 1, 2))) / (dh[..., 0].size + dw[..., 0].size)
    den = (w**2).sum(axis=(0, 1, 2)) / w[..., 0].size
    return num / np.maximum(den, 1e-30)


def load_classifier(run_dir: str | Path) -> tuple[TrialConfig, LogitFn, Any]:
    """(config, logit_fn, variables) of a finished classifier trial's final checkpoint."""
    from scalinglab.experiments import imageeval as ie

    cfg, params, model_state = ie.restore(run_dir)
    return cfg, trial_logit_fn(cfg), {"params": params, **model_state}
