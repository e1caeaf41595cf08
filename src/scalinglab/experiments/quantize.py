"""Post-training weight quantisation of a trained model: FP16 and BF16 casts and INT8
per-output-channel symmetric quantisation, as pure jitted functions of a params tree, with the
bytes the stored tensors take.

- `fp16`, `bf16`: every parameter stored in 16 bits; the model reads it back as float32
  (weights rounded to the format, compute unchanged).
- `int8`: every weight matrix (ndim >= 2) stored as int8 with one float32 scale per output
  channel, ``scale = max|w| / 127`` over the channel, ``q = clip(round(w / scale), -127,
  127)``, read back as ``q * scale`` (so each entry is off by at most scale / 2). Vectors
  (biases, norm scales) stay float32, as in the usual weight-only schemes. The output channel
  is the last axis of a Dense or Conv kernel and the row of an embedding table (`embedding`:
  one token's or position's vector, also the output row of a tied LM head).
- `fp32`: the trained parameters as they are (the reference).

Memory is the bytes of what would be stored: the quantised tensors plus their scales.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scalinglab.experiments import evaluation as ev

SCHEMES = ("fp32", "fp16", "bf16", "int8")
_CASTS = {"fp16": jnp.float16, "bf16": jnp.bfloat16}


def channel_axis(path: tuple[Any, ...], ndim: int) -> int:
    """The output-channel axis of a weight leaf: 0 for an `embedding` table, else the last."""
    name = str(getattr(path[-1], "key", path[-1])) if path else ""
    return 0 if name == "embedding" else ndim - 1


@functools.partial(jax.jit, static_argnames=("axis",))
def int8_per_channel(w: jax.Array, axis: int = -1) -> tuple[jax.Array, jax.Array]:
    """Symmetric INT8 quantisation with one scale per index of `axis`: (q int8, scale
    float32 of shape w.shape[axis]); an all-zero channel gets scale 0 and q 0."""
    axis = axis % w.ndim
    reduce = tuple(a for a in range(w.ndim) if a != axis)
    scale = jnp.max(jnp.abs(w), axis=reduce) / 127.0
    shape = [1] * w.ndim
    shape[axis] = -1
    safe = jnp.where(scale > 0, scale, 1.0).reshape(shape)
    q = jnp.clip(jnp.round(w / safe), -127, 127).astype(jnp.int8)
    return q, scale.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("axis",))
def dequantize_int8(q: jax.Array, scale: jax.Array, axis: int = -1) -> jax.Array:
    """`q * scale` broadcast along `axis`, as float32: what the model reads back."""
    shape = [1] * q.ndim
    shape[axis % q.ndim] = -1
    return q.astype(jnp.float32) * scale.reshape(shape)


@functools.partial(jax.jit, static_argnames=("dtype",))
def cast_roundtrip(w: jax.Array, dtype: Any) -> jax.Array:
    """`w` stored as `dtype` (float16 or bfloat16, round to nearest even) and read back as
    float32."""
    return w.astype(dtype).astype(jnp.float32)


def quantize_params(params: Any, scheme: str) -> tuple[Any, int]:
    """(the params the model reads back after storing them under `scheme`, the bytes stored)."""
    return quantize_all(params, (scheme,))[scheme]


def quantize_all(params: Any, schemes: tuple[str, ...] = SCHEMES) -> dict[str, tuple[Any, int]]:
    """`quantize_params` for several schemes at once (one compiled program for all of them)."""
    for scheme in schemes:
        if scheme not in SCHEMES:
            raise ValueError(f"scheme {scheme!r}: allowed {', '.join(SCHEMES)}")
    trees = _quantize_trees(params, tuple(schemes))
    return {s: (t, stored_bytes(params, s)) for s, t in zip(schemes, trees, strict=True)}


def stored_bytes(params: Any, scheme: str) -> int:
    """Bytes of the tensors stored under `scheme`: 4 a float32 entry, 2 a 16-bit one, 1 an
    int8 one plus 4 per output channel's float32 scale."""
    nbytes = 0
    for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
        size, ndim = int(np.size(w)), int(np.ndim(w))
        if scheme == "fp32" or (scheme == "int8" and ndim < 2):
            nbytes += 4 * size
        elif scheme in _CASTS:
            nbytes += 2 * size
        else:
            nbytes += size + 4 * int(np.shape(w)[channel_axis(tuple(path), ndim)])
    return nbytes


@functools.partial(jax.jit, static_argnames=("schemes",))
def _quantize_trees(params: Any, schemes: tuple[str, ...]) -> tuple[Any, ...]:
    """Every leaf stored under each scheme and read back as float32, one tree per scheme."""

    def one(scheme: str, path: tuple[Any, ...], w: jax.Array) -> jax.Array:
        w = jnp.asarray(w, jnp.float32)
        if scheme in _CASTS:
            return cast_roundtrip(w, _CASTS[scheme])
        if scheme == "fp32" or w.ndim < 2:
            return w
        axis = channel_axis(tuple(path), w.ndim)
        return dequantize_int8(*int8_per_channel(w, axis), axis)

    return tuple(
        jax.tree_util.tree_map_with_path(functools.partial(one, s), params) for s in schemes
    )


def quantization_table(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per scheme: the trained trial's eval metrics with its weights stored that way (the
    trainer's eval step on the trial's validation batches), the bytes stored, and the change
    of each metric against fp32. The fp32 row must equal the trial's recorded final eval
    metrics (`recorded_diff`; over 1e-5 raises)."""
    te = ev.load_trial_eval(run_dir)
    rows = []
    for scheme, (params, nbytes) in quantize_all(te.state.params).items():
        rows.append({"scheme": scheme, "bytes": nbytes, **ev.evaluate(te, params)})
    ref = rows[0]
    ref["recorded_diff"] = ev.check_recorded(te, ref)
    for r in rows:
        for name in ("loss", "accuracy"):
            if name in r:
                r[f"delta_{name}"] = r[name] - ref[name]
        r["memory_ratio"] = r["bytes"] / ref["bytes"]
    return rows
