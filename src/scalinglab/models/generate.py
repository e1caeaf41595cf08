"""Autoregressive sampling from a GPT: KV-cached `generate` and a full-forward reference.

`generate` prefills the prompt with one `CachedGPT` pass (filling the KV cache), then runs a
`lax.fori_loop` of one-token cached decode steps, so each new token costs one position of
compute instead of a forward pass over the whole sequence. `generate_uncached` produces the
same tokens by re-running the training forward pass (`GPT`) for every new token; it is the
reference the tests and `benchmarks/generate.py` compare against.

Sampling: temperature 0 is greedy (argmax); otherwise logits / temperature, optionally
restricted to the `top_k` largest, drawn with `jax.random.categorical`. The key for the i-th
new token is `fold_in(key, i)`, so both paths draw identical tokens from the same key.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import jax
import jax.numpy as jnp

from scalinglab.config import ModelConfig
from scalinglab.models.gpt import GPT, CachedGPT, KVCache, init_cache

Params = dict


def check_length(cfg: ModelConfig, prompt_len: int, max_new_tokens: int) -> int:
    """Prompt + new tokens, or a ValueError naming model.max_seq_len when they do not fit."""
    if prompt_len < 1:
        raise ValueError("the prompt must hold at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
    total = prompt_len + max_new_tokens
    if cfg.max_seq_len is None and cfg.positions == "learned":
        raise ValueError("model.max_seq_len must be set for learned positions")
    if cfg.max_seq_len is not None and total > cfg.max_seq_len:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) = {total} "
            f"exceeds model.max_seq_len ({cfg.max_seq_len})"
        )
    return total


def sample_token(
    logits_BxV: jax.Array, key: jax.Array, temperature: float | jax.Array, top_k: int | None
) -> jax.Array:
    """int32 (B,) tokens from float32 logits: argmax at temperature 0, else a (top-k) draw.

    `temperature` may be traced: both branches are computed and `where` picks one, so one
    compiled program serves every temperature, greedy included.
    """
    greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    scaled_BxV = logits_BxV / jnp.maximum(temperature, 1e-6)
    if top_k is not None and top_k < logits_BxV.shape[-1]:
        top_BxK, idx_BxK = jax.lax.top_k(scaled_BxV, top_k)
        pick_B = jax.random.categorical(key, top_BxK, axis=-1)
        drawn_B = jnp.take_along_axis(idx_BxK, pick_B[:, None], axis=-1)[:, 0]
    else:
        drawn_B = jax.random.categorical(key, scaled_BxV, axis=-1)
    return jnp.where(temperature > 0, drawn_B.astype(jnp.int32), greedy_B)


def decode_step(
    cfg: ModelConfig, params: Params, cache: KVCache, token_Bx1: jax.Array, pos: jax.Array | int
) -> tuple[jax.Array, KVCache]:
    """One cached step: the token at position `pos` -> (next-token logits (B, V), cache)."""
    logits_Bx1xV, cache = CachedGPT(cfg).apply({"params": params}, token_Bx1, cache, pos)
    return logits_Bx1xV[:, 0], cache


def _loop(
    first_logits_BxV: jax.Array,
    buf_BxL: jax.Array,
    prompt_len: int,
    key: jax.Array,
    temperature: jax.Array,
    top_k: int | None,
    step: Callable[[jax.Array, jax.Array, object], tuple[jax.Array, object]],
    carry: object,
) -> jax.Array:
    """Fill buf[:, prompt_len:] by sampling; `step(buf, pos, carry)` -> (logits at pos, carry)."""
    total = buf_BxL.shape[1]
    tok_B = sample_token(first_logits_BxV, jax.random.fold_in(key, 0), temperature, top_k)
    buf_BxL = buf_BxL.at[:, prompt_len].set(tok_B)

    def body(i: jax.Array, state: tuple) -> tuple:
        buf_BxL, carry = state
        pos = prompt_len + i  # position of the latest token, whose logits predict pos + 1
        logits_BxV, carry = step(buf_BxL, pos, carry)
        tok_B = sample_token(logits_BxV, jax.random.fold_in(key, i + 1), temperature, top_k)
        return jax.lax.dynamic_update_slice_in_dim(buf_BxL, tok_B[:, None], pos + 1, 1), carry

    buf_BxL, _ = jax.lax.fori_loop(0, total - prompt_len - 1, body, (buf_BxL, carry))
    return buf_BxL


@lru_cache(maxsize=32)
def _compiled(cfg_json: str, max_new_tokens: int, top_k: int | None, cached: bool) -> Callable:
    """One jitted sampler per (config, length, top_k, path); jit then caches per shape."""
    cfg = ModelConfig.model_validate_json(cfg_json)

    def run(params: Params, prompt_BxT: jax.Array, key: jax.Array, temp: jax.Array) -> jax.Array:
        b, t = prompt_BxT.shape
        total = t + max_new_tokens
        buf_BxL = jnp.zeros((b, total), jnp.int32).at[:, :t].set(prompt_BxT.astype(jnp.int32))
        if cached:
            model = CachedGPT(cfg)
            logits_BxTxV, cache = model.apply(
                {"params": params}, buf_BxL[:, :t], init_cache(cfg, b, total), 0
            )

            def step(buf_BxL: jax.Array, pos: jax.Array, cache: KVCache) -> tuple:
                token_Bx1 = jax.lax.dynamic_slice_in_dim(buf_BxL, pos, 1, axis=1)
                return decode_step(cfg, params, cache, token_Bx1, pos)

            return _loop(logits_BxTxV[:, -1], buf_BxL, t, key, temp, top_k, step, cache)

        model = GPT(cfg)

        def full(buf_BxL: jax.Array, pos: jax.Array, carry: None) -> tuple:
            # The whole (fixed-length) buffer every time: causality makes the unwritten tail
            # irrelevant to the logits at `pos`, and one shape means one compilation.
            logits_BxLxV = model.apply({"params": params}, buf_BxL)
            return jax.lax.dynamic_index_in_dim(logits_BxLxV, pos, 1, keepdims=False), carry

        first_BxV, _ = full(buf_BxL, jnp.int32(t - 1), None)
        return _loop(first_BxV, buf_BxL, t, key, temp, top_k, full, None)

    return jax.jit(run)


def _sample(
    cfg: ModelConfig,
    params: Params,
    prompt_BxT: jax.Array,
    max_new_tokens: int,
    key: jax.Array,
    temperature: float,
    top_k: int | None,
    cached: bool,
) -> jax.Array:
    if cfg.family != "gpt":
        raise ValueError(f"generate needs model.family gpt (got {cfg.family!r})")
    if prompt_BxT.ndim != 2:
        raise ValueError(f"prompt must be int tokens of shape (B, T) (got {prompt_BxT.shape})")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (got {temperature})")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (got {top_k})")
    check_length(cfg, prompt_BxT.shape[1], max_new_tokens)
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    fn = _compiled(cfg.model_dump_json(), max_new_tokens, top_k, cached)
    return fn(params, jnp.asarray(prompt_BxT), key, jnp.float32(temperature))


def generate(
    model_cfg: ModelConfig,
    params: Params,
    prompt_BxT: jax.Array,
    max_new_tokens: int,
    *,
    key: jax.Array,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> jax.Array:
    """Sample `max_new_tokens` tokens after `prompt_BxT` with a KV cache.

    Returns int32 (B, T + max_new_tokens): the prompt followed by the new tokens. `params`
    is a trained GPT's parameter tree (with or without the outer {"params": ...}).
    Deterministic given `key`. Raises ValueError when prompt + new tokens exceed
    model.max_seq_len.
    """
    return _sample(model_cfg, params, prompt_BxT, max_new_tokens, key, temperature, top_k, True)


def generate_uncached(
    model_cfg: ModelConfig,
    params: Params,
    prompt_BxT: jax.Array,
    max_new_tokens: int,
    *,
    key: jax.Array,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> jax.Array:
    """`generate` without a cache: one full forward pass (training path) per new token.

    The reference for tests and the baseline for `benchmarks/generate.py`; same tokens as
    `generate` for the same key up to float rounding of the logits.
    """
    return _sample(model_cfg, params, prompt_BxT, max_new_tokens, key, temperature, top_k, False)


__all__ = [
    "check_length",
    "decode_step",
    "generate",
    "generate_uncached",
    "init_cache",
    "sample_token",
]
