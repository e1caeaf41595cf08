"""muP, the maximal-update parametrisation (Yang et al. 2022, "Tensor Programs V"): what
changes with width so that one learning rate, tuned at `model.mup_base_width`, serves every
width.

Everything is relative to the base width (`width_mult` m = width / base width), so muP at the
base width is exactly the standard parametrisation. Following the `mup` package's formulation:

- Hidden matrices (both dimensions grow with width): init std / sqrt(m); Adam's learning rate
  / fan-in mult, SGD's x fan-out mult / fan-in mult (1 for square growth).
- Vector-like parameters (one dimension grows: embeddings, biases, norms, the first layer of
  an MLP, the readout): init unchanged; Adam's learning rate unchanged, SGD's x the growing
  dimension's mult. With coupled L2 decay (adam, sgd, momentum with `weight_decay`), the decay
  follows the `mup` package too: x fan-in mult on Adam's hidden matrices, / mult on SGD's
  vector-like parameters.
- The readout (logits) is multiplied by 1/m, and the attention scores use 1/Dh instead of
  1/sqrt(Dh), as sqrt(Dh_base)/Dh (the head count stays fixed as width grows).

Which parameters are hidden or vector-like is read off the shapes, as the `mup` package does:
the model's parameters at its width against the same model at the base width.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

# The learning-rate rule of each optimiser family (config.MUP_OPTIMIZERS names the same set).
ADAM_LIKE = ("adam", "adamw")
SGD_LIKE = ("sgd", "momentum")


def hidden_init_factor(cfg: Any) -> float:
    """Factor on the init std of a transformer's hidden matrices: 1 / sqrt(width_mult)."""
    return 1.0 / math.sqrt(cfg.width_mult)


def qk_gain(cfg: Any) -> float:
    """Extra factor on the queries: sqrt(Dh_base / Dh) = 1 / sqrt(width_mult), which turns the
    kernels' 1/sqrt(Dh) into muP's sqrt(Dh_base)/Dh (1.0, no op, at the base width)."""
    return 1.0 / math.sqrt(cfg.width_mult)


def readout(cfg: Any, logits: jax.Array) -> jax.Array:
    """muP's output multiplier 1 / width_mult on the logits (untouched when it is 1)."""
    m = cfg.width_mult
    return logits if m == 1.0 else logits * (1.0 / m)


def _mults(shape: tuple[int, ...], base: tuple[int, ...]) -> tuple[float, ...]:
    return tuple(s / b for s, b in zip(shape, base, strict=True))


def leaf_scales(
    shape: tuple[int, ...], base: tuple[int, ...], optimizer: str
) -> tuple[float, float]:
    """(learning-rate factor, coupled-decay factor) of one parameter from its shape at the
    trial's width and at the base width. A kernel is (fan_in, fan_out) (flax's layout)."""
    if len(shape) != len(base):
        raise ValueError(f"muP: parameter rank changed with width ({base} -> {shape})")
    mults = _mults(shape, base)
    grown = [m for m, s, b in zip(mults, shape, base, strict=True) if s != b]
    if len(grown) > 2:
        raise ValueError(f"muP: {len(grown)} dimensions grow with width in {shape}; at most 2")
    if not grown:
        return 1.0, 1.0
    if len(grown) == 2:  # hidden matrix: (fan_in, fan_out) are the last two dimensions
        fan_in, fan_out = mults[-2], mults[-1]
        if optimizer in ADAM_LIKE:
            return 1.0 / fan_in, fan_in
        return fan_out / fan_in, fan_in / fan_out
    (m,) = grown  # vector-like
    return (1.0, 1.0) if optimizer in ADAM_LIKE else (m, 1.0 / m)


def scales(cfg: Any, task: Any) -> tuple[Any, Any] | None:
    """Per-parameter (learning-rate, coupled-decay) factor trees for the trial `cfg` (a
    TrialConfig) whose objective is `task`; None under the standard parametrisation.

    The shapes come from `jax.eval_shape` of the task's init at the trial's width and at the
    base width (nothing is allocated)."""
    model_cfg = cfg.model
    if model_cfg.parametrization != "mup":
        return None
    from scalinglab.train.tasks import build_task  # imports the models, which import us

    base_cfg = cfg.model_copy(update={"model": model_cfg.at_base_width()})
    base_task = build_task(base_cfg, _model(base_cfg))
    key = jax.random.PRNGKey(0)
    params = jax.eval_shape(lambda k: task.init(k)[0], key)
    base = jax.eval_shape(lambda k: base_task.init(k)[0], key)
    pairs = jax.tree_util.tree_map(
        lambda p, b: leaf_scales(tuple(p.shape), tuple(b.shape), cfg.optimizer.name), params, base
    )
    is_pair = lambda x: isinstance(x, tuple)  # noqa: E731
    lr = jax.tree_util.tree_map(lambda x: np.float32(x[0]), pairs, is_leaf=is_pair)
    decay = jax.tree_util.tree_map(lambda x: np.float32(x[1]), pairs, is_leaf=is_pair)
    return lr, decay


def _model(cfg: Any) -> Any:
    from scalinglab.models import build_model

    return build_model(cfg.model)
