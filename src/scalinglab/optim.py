"""Optax chains from config: clipping, update rule, decoupled weight decay and a schedule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from scalinglab.config import OptimizerConfig, ScheduleConfig

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "adafactor")
SCHEDULES = ("constant", "warmup_cosine", "wsd")


def build_schedule(cfg: ScheduleConfig, lr: float, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the step; fractions in `cfg` are of `total_steps`."""
    total_steps = max(int(total_steps), 1)
    warmup = int(round(cfg.warmup_frac * total_steps))
    final = lr * cfg.final_lr_frac
    if cfg.name == "constant":
        if warmup == 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
    if cfg.name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=final,
        )
    if cfg.name == "wsd":
        # Warmup, a long stable phase at peak, then a linear decay over the last decay_frac.
        decay = int(round(cfg.decay_frac * total_steps))
        stable = max(total_steps - warmup - decay, 0)
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, lr, warmup),
                optax.constant_schedule(lr),
                optax.linear_schedule(lr, final, max(decay, 1)),
            ],
            [warmup, warmup + stable],
        )
    raise ValueError(f"optimizer.schedule.name: unknown {cfg.name!r}; allowed: {SCHEDULES}")


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


def build_optimizer(
    cfg: OptimizerConfig, total_steps: int
) -> tuple[optax.GradientTransformation, Callable[[int], float]]:
    """The optax chain for `cfg` and its learning-rate schedule (logged as `lr`)."""
    schedule = build_schedule(cfg.schedule, cfg.lr, total_steps)
    parts: list[optax.GradientTransformation] = []
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.weight_decay > 0 and cfg.name in ("sgd", "momentum", "adam"):
        # Coupled L2 (wd * param added to the gradient), as torch's SGD and Adam do; adamw and
        # adafactor decouple the decay from the adaptive scaling.
        parts.append(
            optax.masked(
                optax.add_decayed_weights(cfg.weight_decay),
                lambda p: decay_mask(p, cfg.decay_exclude),
            )
        )
    if cfg.name == "sgd":
        parts.append(optax.sgd(schedule))
    elif cfg.name == "momentum":
        parts.append(optax.sgd(schedule, momentum=cfg.momentum, nesterov=cfg.nesterov))
    elif cfg.name == "adam":
        parts.append(optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    elif cfg.name == "adamw":
        parts.append(
            optax.adamw(
                schedule,
                b1=cfg.b1,
                b2=cfg.b2,
                eps=cfg.eps,
                weight_decay=cfg.weight_decay,
                mask=lambda p: decay_mask(p, cfg.decay_exclude),
            )
        )
    elif cfg.name == "adafactor":
        # Factored second moments and update clipping as in optax.adafactor, with decay added
        # before the learning rate like AdamW's (optax.adafactor adds its decay after the
        # learning rate, so a weight_decay of 0.1 would shrink weights 10% per step).
        parts += [
            optax.scale_by_factored_rms(),
            optax.clip_by_block_rms(1.0),
            optax.add_decayed_weights(
                cfg.weight_decay, mask=lambda p: decay_mask(p, cfg.decay_exclude)
            ),
            optax.scale_by_learning_rate(schedule),
        ]
    else:
        raise ValueError(f"optimizer.name: unknown {cfg.name!r}; allowed: {', '.join(OPTIMIZERS)}")
    return optax.chain(*parts), schedule
