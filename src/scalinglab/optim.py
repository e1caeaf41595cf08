"""Optax chains from config: clipping, update rule, decoupled weight decay and a schedule."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scalinglab.config import OptimizerConfig, ScheduleConfig

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "adafactor")
SCHEDULES = ("constant", "warmup_cosine", "wsd")


def schedule_params(cfg: ScheduleConfig, lr: float, total_steps: int) -> dict[str, np.ndarray]:
    """The numbers that define a schedule, as float32 scalars (fractions resolved to steps).

    The trainer passes them to the jitted step as arguments, not constants, so trials that
    differ only in budget or learning rate (every IsoFLOP budget of one model size) share one
    compiled train step.
    """
    total = max(int(total_steps), 1)
    warmup = int(round(cfg.warmup_frac * total))
    if cfg.name == "wsd":
        # Warmup, a long stable phase at peak, then a linear decay over the last decay_frac.
        decay = int(round(cfg.decay_frac * total))
        start = warmup + max(total - warmup - decay, 0)
        end = start + max(decay, 1)
    else:  # warmup_cosine decays from the end of warmup; constant never decays
        start, end = warmup, max(total, warmup + 1)
    values = {
        "lr": lr,
        "final": lr * cfg.final_lr_frac,
        "warmup": warmup,
        "decay_start": start,
        "decay_end": end,
    }
    return {k: np.float32(v) for k, v in values.items()}


def lr_at(step: Any, hp: dict[str, Any], name: str, xp: Any = jnp) -> Any:
    """Learning rate at `step`: a linear warmup from 0 to `lr`, then `name`'s decay from `lr`
    to `final` between `decay_start` and `decay_end` (optax's schedules, written once so the
    same code runs traced in the step and in numpy on the host)."""
    if name not in SCHEDULES:
        raise ValueError(f"optimizer.schedule.name: unknown {name!r}; allowed: {SCHEDULES}")
    s = xp.asarray(step).astype(xp.float32)
    lr, final = hp["lr"], hp["final"]
    warm = lr * s / xp.maximum(hp["warmup"], xp.float32(1))
    frac = xp.clip((s - hp["decay_start"]) / (hp["decay_end"] - hp["decay_start"]), 0, 1)
    if name == "warmup_cosine":
        shape = 0.5 * (1 + xp.cos(xp.float32(np.pi) * frac))
    elif name == "wsd":
        shape = 1 - frac
    else:
        shape = xp.ones_like(frac)
    decayed = lr if name == "constant" else final + (lr - final) * shape
    return xp.where(s < hp["warmup"], warm, decayed)


def build_schedule(cfg: ScheduleConfig, lr: float, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the step; fractions in `cfg` are of `total_steps`."""
    if cfg.name not in SCHEDULES:
        raise ValueError(f"optimizer.schedule.name: unknown {cfg.name!r}; allowed: {SCHEDULES}")
    hp = schedule_params(cfg, lr, total_steps)
    return lambda count: lr_at(count, hp, cfg.name)


def _path_kind(path: tuple[Any, ...]) -> str:
    """Classify a parameter by its pytree path: embedding, norm, bias or weight."""
    names = [str(getattr(k, "key", getattr(k, "name", k))).lower() for k in path]
    if any("embed" in n for n in names):
        return "embedding"
    if any("norm" in n for n in names[:-1]) or names[-1] == "scale":
        return "norm"
    if names[-1] == "bias":
        return "bias"
    return "weight"


def decay_mask(params: Any, exclude: list[str] | tuple[str, ...]) -> Any:
    """Pytree of bools: True where weight decay applies (kinds in `exclude` are skipped)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: _path_kind(p) not in exclude, params)


def scale_by_tree(factors: Any) -> optax.GradientTransformation:
    """Multiply each update by its leaf of `factors` (a tree of constants shaped like the
    params): muP's per-parameter learning rates."""

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        return jax.tree_util.tree_map(lambda u, f: u * f.astype(u.dtype), updates, factors), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def _coupled_decay(wd: float, mask: Any, factors: Any | None) -> optax.GradientTransformation:
    """wd * param added to the gradient where `mask` holds, times muP's per-parameter decay
    factor when `factors` is given."""
    if factors is None:
        return optax.masked(optax.add_decayed_weights(wd), mask)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        keep = mask(params)
        out = jax.tree_util.tree_map(
            lambda u, p, f, k: u + (wd * f).astype(u.dtype) * p if k else u,
            updates,
            params,
            factors,
            keep,
        )
        return out, state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def build_update_rule(
    cfg: OptimizerConfig, mup_scales: tuple[Any, Any] | None = None
) -> optax.GradientTransformation:
    """The optimiser without its learning rate: clipping, the update rule and weight decay.

    Its updates are to be scaled by `-lr(step)`; the trainer does that in the step with the
    schedule's numbers as arguments (see `schedule_params`). `mup_scales` (from
    `scalinglab.mup.scales`): per-parameter learning-rate and coupled-decay factors, applied
    after everything else (so decoupled decay scales with the learning rate, as in muP's AdamW).
    """
    parts: list[optax.GradientTransformation] = []
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    mask = functools.partial(decay_mask, exclude=cfg.decay_exclude)
    if cfg.weight_decay > 0 and cfg.name in ("sgd", "momentum", "adam"):
        # Coupled L2 (wd * param added to the gradient), as torch's SGD and Adam do; adamw and
        # adafactor decouple the decay from the adaptive scaling (but not from the lr).
        decay = None if mup_scales is None else mup_scales[1]
        parts.append(_coupled_decay(cfg.weight_decay, mask, decay))
    if cfg.name == "sgd":
        pass
    elif cfg.name == "momentum":
        parts.append(optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov))
    elif cfg.name in ("adam", "adamw"):
        parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
        if cfg.name == "adamw":
            parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
    elif cfg.name == "adafactor":
        # Factored second moments and update clipping as in optax.adafactor, with decay added
        # before the learning rate like AdamW's (optax.adafactor adds its decay after the
        # learning rate, so a weight_decay of 0.1 would shrink weights 10% per step).
        parts += [
            optax.scale_by_factored_rms(),
            optax.clip_by_block_rms(1.0),
            optax.add_decayed_weights(cfg.weight_decay, mask=mask),
        ]
    else:
        raise ValueError(f"optimizer.name: unknown {cfg.name!r}; allowed: {', '.join(OPTIMIZERS)}")
    if mup_scales is not None:
        parts.append(scale_by_tree(mup_scales[0]))
    # Plain SGD without clipping or decay: the update is the gradient itself.
    return optax.chain(*parts) if parts else optax.identity()


def build_optimizer(
    cfg: OptimizerConfig, total_steps: int
) -> tuple[optax.GradientTransformation, Callable[[int], Any]]:
    """The complete optax chain for `cfg` (update rule, then `-lr(step)`) and its schedule."""
    schedule = build_schedule(cfg.schedule, cfg.lr, total_steps)
    tx = optax.chain(build_update_rule(cfg), optax.scale_by_learning_rate(schedule))
    return tx, schedule
