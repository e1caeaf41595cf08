"""Greedy generation time per new token with and without the KV cache, on one trained GPT, and
the check that both paths give the same tokens (and close logits).

The kv-cache study restores each trained trial, then times `scalinglab.models.generate.generate`
(prefill, then one-position cached decode steps) and `generate_uncached` (a full forward pass
over the whole prompt + new-token buffer per new token) on the same parameters and prompt, at
several total lengths. Both are compiled before timing (a warm-up call whose tokens are
compared); rounds interleave every length and both paths, so machine drift hits both alike,
and the speedup of a round is the uncached over the cached time of that same round.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from scalinglab.config import ModelConfig

PROMPT_LEN = 4  # prompt tokens (the start of the trial's first validation window)
REPEATS = 7  # timed rounds per (length, path)


def generation_lengths(
    max_len: int, prompt_len: int = PROMPT_LEN, count: int = 5, shortest: int = 8
) -> list[int]:
    """Total lengths (prompt + new tokens) to time, ascending: `max_len` halved until `count`
    lengths or below `shortest`; bounded by the model, so a smoke's tiny model gets short ones."""
    lengths: list[int] = []
    n = max_len
    while n >= max(shortest, prompt_len + 1) and len(lengths) < count:
        lengths.append(n)
        n //= 2
    if not lengths:
        raise ValueError(
            f"model.max_seq_len {max_len} leaves no length >= {shortest} after a "
            f"{prompt_len}-token prompt"
        )
    return sorted(lengths)


def per_token_seconds(call_s: float, prompt_len: int, total_len: int) -> float:
    """Seconds per new token of one generation call that extends `prompt_len` to `total_len`."""
    new = total_len - prompt_len
    if new < 1:
        raise ValueError(f"total length {total_len} leaves no new token after {prompt_len}")
    return call_s / new


def compare_tokens(a: Any, b: Any) -> dict[str, Any]:
    """Whether two (B, L) token arrays are equal, how many entries differ and where the first
    difference is (flat index along the sequence of the first row that differs)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return {"same": False, "n_diff": None, "first_diff": None, "why": "shapes differ"}
    diff = a != b
    n = int(diff.sum())
    first = None
    if n:
        row = int(np.flatnonzero(diff.any(axis=1))[0])
        first = int(np.flatnonzero(diff[row])[0])
    return {"same": n == 0, "n_diff": n, "first_diff": first}


def restore(run_dir: str | Path) -> tuple[ModelConfig, Any, np.ndarray]:
    """A finished trial's model config, final parameters and a (1, PROMPT_LEN) prompt: the start
    of its first validation window (text the model was not trained on)."""
    from scalinglab.data import build_dataset
    from scalinglab.experiments.gradients import final_params, trial_config

    cfg = trial_config(run_dir)
    params, _, _ = final_params(cfg, run_dir)
    window = np.asarray(build_dataset(cfg.data).val_batches(1, 1)[0])
    return cfg.model, params, window.reshape(-1, window.shape[-1])[:1, :PROMPT_LEN]


def _timed(fn: Callable[[], jax.Array]) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = np.asarray(fn())  # waits for the result
    return time.perf_counter() - t0, out


def _samplers(cfg: ModelConfig, params: Any, prompt: np.ndarray, total: int) -> dict[str, Any]:
    from scalinglab.models.generate import generate, generate_uncached

    new, key = total - prompt.shape[1], jax.random.key(0)
    p = jnp.asarray(prompt)
    return {
        "cached": lambda: generate(cfg, params, p, new, key=key, temperature=0.0),
        "uncached": lambda: generate_uncached(cfg, params, p, new, key=key, temperature=0.0),
    }


def check_outputs(
    cfg: ModelConfig, params: Any, prompt: np.ndarray, lengths: Sequence[int]
) -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
    """Greedy tokens of both paths at each length (compiling them: the timing's warm-up),
    compared; returns the comparisons and the cached tokens per length."""
    rows, tokens = [], {}
    for total in lengths:
        runs = _samplers(cfg, params, prompt, total)
        compile_s, outs = {}, {}
        for path, fn in runs.items():
            compile_s[path], outs[path] = _timed(fn)
        rows.append(
            {
                "length": int(total),
                **compare_tokens(outs["cached"], outs["uncached"]),
                "first_call_s": compile_s,
            }
        )
        tokens[int(total)] = outs["cached"]
    return rows, tokens


@lru_cache(maxsize=8)
def _logit_fns(cfg_json: str) -> tuple[Callable, Callable, Callable]:
    """Jitted full forward, prefill and decode step for one model config (compiled once)."""
    from scalinglab.models import build_model
    from scalinglab.models.generate import decode_step
    from scalinglab.models.gpt import CachedGPT

    cfg = ModelConfig.model_validate_json(cfg_json)
    full = jax.jit(lambda p, x: build_model(cfg).apply({"params": p}, x))
    prefill = jax.jit(lambda p, t, c: CachedGPT(cfg).apply({"params": p}, t, c, 0))
    step = jax.jit(lambda p, c, t, pos: decode_step(cfg, p, c, t, pos))
    return full, prefill, step


def logits_gap(cfg: ModelConfig, params: Any, tokens: np.ndarray, prompt_len: int) -> dict:
    """Max |logit difference| between the full forward pass over `tokens` (B, L) and the cached
    path fed the same tokens (prefill of the prompt, then one decode step per position), at
    every position; with the largest |logit| for scale."""
    from scalinglab.models.gpt import init_cache

    b, total = tokens.shape
    x = jnp.asarray(tokens, jnp.int32)
    full_fn, prefill, step = _logit_fns(cfg.model_dump_json())
    full = np.asarray(full_fn(params, x))
    logits, cache = prefill(params, x[:, :prompt_len], init_cache(cfg, b, total))
    outs = [np.asarray(logits)]
    for pos in range(prompt_len, total):
        last, cache = step(params, cache, x[:, pos : pos + 1], jnp.int32(pos))
        outs.append(np.asarray(last)[:, None])
    cached = np.concatenate(outs, axis=1)
    return {
        "max_abs_diff": float(np.abs(cached - full).max()),
        "max_abs_logit": float(np.abs(full).max()),
        "positions": int(total),
    }


def time_generation(
    cfg: ModelConfig,
    params: Any,
    prompt: np.ndarray,
    lengths: Sequence[int],
    repeats: int = REPEATS,
) -> pd.DataFrame:
    """One row per (round, length, path): seconds of the call and per new token. Compile first
    (`check_outputs`); each round times every length, cached then uncached."""
    runs = {int(n): _samplers(cfg, params, prompt, int(n)) for n in lengths}
    rows = []
    for r in range(repeats):
        for total, fns in runs.items():
            for path, fn in fns.items():
                call_s, _ = _timed(fn)
                rows.append(
                    {
                        "round": r,
                        "length": total,
                        "path": path,
                        "call_s": call_s,
                        "per_token_s": per_token_seconds(call_s, prompt.shape[1], total),
                        "load": os.getloadavg()[0],
                    }
                )
    return pd.DataFrame(rows)


def speedups(times: pd.DataFrame) -> pd.DataFrame:
    """Per (round, length): uncached over cached seconds of that round (paired)."""
    wide = times.pivot_table(index=["round", "length"], columns="path", values="call_s")
    return (wide["uncached"] / wide["cached"]).rename("speedup").reset_index()


def median_ci(
    values: Sequence[float], bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """The median of repeats with a percentile interval from resampling the repeats."""
    v = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    draws = np.median(rng.choice(v, (bootstrap, len(v))), axis=1)
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(draws, [tail, 100.0 - tail])
    return {"median": float(np.median(v)), "ci": [float(lo), float(hi)], "n": len(v)}


def growth(times: pd.DataFrame, path: str) -> dict[str, Any]:
    """How one path's time per token grows with length: the log-log slope over all lengths and
    over the longest three (where per-call overhead matters least), with intervals from
    resampling the rounds; the median time per token per length; longest over shortest."""
    from scalinglab.experiments.trend import seed_bootstrap_trend

    p = times[times["path"] == path]
    lengths = sorted(int(n) for n in p["length"].unique())
    med = {n: median_ci(p.loc[p["length"] == n, "per_token_s"]) for n in lengths}
    out: dict[str, Any] = {}
    for name, use in (("all", lengths), ("long", lengths[-3:])):
        q = p[p["length"].isin(use)]
        t = seed_bootstrap_trend(q["length"], np.log10(q["per_token_s"]))
        out[f"exponent_{name}"] = {"value": t["slope_per_decade"], "ci": t["ci"], "lengths": use}
    out["longest_over_shortest"] = med[lengths[-1]]["median"] / med[lengths[0]]["median"]
    out["per_token_s"] = {str(n): v for n, v in med.items()}
    return out


def summarise(times: pd.DataFrame) -> dict[str, Any]:
    """Per timed size (`d_model`, `N` columns): each path's growth with length and the paired
    speedup per length (median and interval over rounds)."""
    out: dict[str, Any] = {}
    for (d, n), g in times.groupby(["d_model", "N"], sort=True):
        ratio = speedups(g)
        out[f"d{d}"] = {
            "d_model": int(d),
            "N": int(n),
            "lengths": sorted(int(x) for x in g["length"].unique()),
            "growth": {path: growth(g, path) for path in ("cached", "uncached")},
            "speedup": [
                {"length": int(x), **median_ci(r["speedup"])}
                for x, r in ratio.groupby("length", sort=True)
            ],
        }
    return out


def speedup_vs_size(times: pd.DataFrame) -> dict[str, Any]:
    """log10 of the speedup at the longest length per decade of N, with an interval from
    resampling each size's rounds (`scalinglab.experiments.trend`)."""
    from scalinglab.experiments.trend import seed_bootstrap_trend

    longest = int(times["length"].max())
    rows = pd.concat(
        [speedups(g).assign(N=n) for n, g in times.groupby("N", sort=True)], ignore_index=True
    )
    rows = rows[rows["length"] == longest]
    return {"length": longest, **seed_bootstrap_trend(rows["N"], np.log10(rows["speedup"]))}


__all__ = [
    "PROMPT_LEN",
    "REPEATS",
    "check_outputs",
    "compare_tokens",
    "generation_lengths",
    "growth",
    "logits_gap",
    "median_ci",
    "per_token_seconds",
    "restore",
    "speedup_vs_size",
    "speedups",
    "summarise",
    "time_generation",
]
