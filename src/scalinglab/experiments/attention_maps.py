"""Per-head attention maps of a trained GPT, and what each head attends to on the `induction`
data source: the previous token, or the token after the current token's earlier occurrence.

The maps are recomputed from the parameters, not collected in training: one forward pass in
evaluation mode captures each block's attention input (the output of its `norm_1`, flax
`capture_intermediates`), and softmax(q k^T / sqrt(Dh)) with the causal mask is computed from
the block's own `attn/qkv` projection (rotary positions applied as the model applies them).
The train step is untouched.

Probe windows are a fresh sample of the trial's episode stream (`data.induction.sample` from a
seed of its own, so never the training tokens), cut like the validation split into
consecutive windows of `seq_len + 1`; each target token carries its kind (fresh, copy,
induction, end) and its true -ln p given the whole past. Only targets whose episode began
inside the window (a BOS among the inputs up to them) are scored: there the window holds
everything the true law conditions on, so that -ln p is the floor.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scalinglab.analysis.intervals import interval, resample_rows
from scalinglab.config import TrialConfig
from scalinglab.data.induction import COPY, INDUCTION, KIND_NAMES, markers, sample

Params = Any
PROBE_SEED = 2  # the probe stream's seed, after the corpus's (1): other tokens, same law


class Probe(NamedTuple):
    """Windows of a fresh stream: inputs and targets (B, T) with the targets' kinds, their
    true -ln p, and `in_context` (the target's episode began inside the window)."""

    inputs: np.ndarray
    targets: np.ndarray
    kinds: np.ndarray
    nll: np.ndarray
    in_context: np.ndarray


def probe(cfg: TrialConfig, n_windows: int = 64) -> Probe:
    """`n_windows` consecutive windows of `data.seq_len + 1` tokens of a fresh sample."""
    ind, w = cfg.data.induction, cfg.data.seq_len + 1
    rng = np.random.default_rng([ind.seed, PROBE_SEED])
    tokens, kinds, nll = (
        a[: n_windows * w].reshape(n_windows, w) for a in sample(ind, n_windows * w, rng)
    )
    inputs = tokens[:, :-1].astype(np.int32)
    bos, _ = markers(ind)
    seen_bos = np.maximum.accumulate(inputs == bos, axis=1)
    return Probe(inputs, tokens[:, 1:].astype(np.int32), kinds[:, 1:], nll[:, 1:], seen_bos)


@functools.lru_cache(maxsize=8)
def _forward(model_json: str) -> Any:
    """The jitted `(params, tokens) -> (logits, attention probabilities)` of a GPT config (as
    JSON: one compile per model shape, shared by the seeds)."""
    from scalinglab.config import parse_model_config
    from scalinglab.models import build_model
    from scalinglab.models.attention import split_heads
    from scalinglab.models.layers import apply_rotary, rotary_tables

    cfg = parse_model_config(json.loads(model_json))
    model = build_model(cfg)

    def run(params: Params, tokens_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits, state = model.apply(
            {"params": params},
            tokens_BxT,
            capture_intermediates=lambda mdl, _: mdl.name == "norm_1",
            mutable=["intermediates"],
        )
        t = tokens_BxT.shape[1]
        causal_TxT = np.tril(np.ones((t, t), bool))
        maps = []
        for i in range(cfg.n_layer):
            x_BxTxD = state["intermediates"][f"block_{i}"]["norm_1"]["__call__"][0]
            qkv = params[f"block_{i}"]["attn"]["qkv"]
            qkv_BxTx3D = x_BxTxD.astype(jnp.float32) @ qkv["kernel"] + qkv["bias"]
            q_BxHxTxDh, k_BxHxTxDh, _ = split_heads(qkv_BxTx3D, cfg.n_head, 3)
            if cfg.positions == "rotary":
                cos_TxF, sin_TxF = rotary_tables(t, q_BxHxTxDh.shape[-1])
                q_BxHxTxDh = apply_rotary(q_BxHxTxDh, cos_TxF, sin_TxF)
                k_BxHxTxDh = apply_rotary(k_BxHxTxDh, cos_TxF, sin_TxF)
            scores_BxHxTxT = jnp.einsum("bhtd,bhsd->bhts", q_BxHxTxDh, k_BxHxTxDh)
            scores_BxHxTxT = scores_BxHxTxT / math.sqrt(q_BxHxTxDh.shape[-1])
            maps.append(jax.nn.softmax(jnp.where(causal_TxT, scores_BxHxTxT, -jnp.inf), axis=-1))
        return logits, jnp.stack(maps)

    return jax.jit(run)


def attention_probs(
    cfg: TrialConfig, params: Params, tokens_BxT: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(logits (B, T, V), attention probabilities (L, B, H, T, T)) of a GPT on `tokens`, float32:
    row t of head h in layer l is how query t spreads its attention over keys 0..t."""
    if cfg.model.family != "gpt":
        raise ValueError(f"attention maps need a gpt model (got model.family {cfg.model.family})")
    forward = _forward(cfg.model.model_dump_json())
    logits, probs = forward(params, jnp.asarray(tokens_BxT, jnp.int32))
    return np.asarray(logits, np.float32), np.asarray(probs, np.float32)


def induction_sources(inputs_BxT: np.ndarray) -> np.ndarray:
    """(B, T) int: for each query t, j + 1 where j < t is the most recent earlier position of
    the same token (the key an induction head attends to); -1 where the token is new."""
    b, t = inputs_BxT.shape
    out = np.full((b, t), -1, np.int64)
    for row in range(b):
        last: dict[int, int] = {}
        for pos, tok in enumerate(inputs_BxT[row].tolist()):
            if tok in last:
                out[row, pos] = last[tok] + 1
            last[tok] = pos
    return out


def head_scores(probs: np.ndarray, pr: Probe) -> dict[str, np.ndarray]:
    """Per (layer, head), means of attention mass over the probe's queries:

    - `previous`: on key t - 1, over every query t >= 1 (a previous-token head: near 1);
    - `copy`: on key t - 1, over the ECHO queries (the target is a copy of token t - 1);
    - `induction`: on key j + 1 (after the most recent earlier occurrence j of the query's
      token), over the queries whose target is an induction copy, in context.
    """
    l, b, h, t, _ = probs.shape
    prev = np.diagonal(probs, offset=-1, axis1=3, axis2=4)  # (L, B, H, T - 1): key t-1 of query t
    copy = (pr.kinds == COPY) & pr.in_context
    src = induction_sources(pr.inputs)
    ind = (pr.kinds == INDUCTION) & pr.in_context & (src >= 0)
    bi, ti = np.nonzero(ind)
    bc, tc = np.nonzero(copy[:, 1:])
    return {
        "previous": prev.mean(axis=(1, 3)),
        "copy": prev[:, bc, :, tc].mean(axis=0) if len(bc) else np.full((l, h), np.nan),
        "induction": (
            probs[:, bi, :, ti, src[bi, ti]].mean(axis=0) if len(bi) else np.full((l, h), np.nan)
        ),
    }


def kind_losses(logits_BxTxV: np.ndarray, pr: Probe) -> dict[str, dict[str, float]]:
    """Per target kind, over the in-context targets: the model's mean loss, the floor (mean
    true -ln p) and the share of those targets."""
    z = logits_BxTxV.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    loss = -np.take_along_axis(logp, pr.targets[..., None], axis=-1)[..., 0]
    out: dict[str, dict[str, float]] = {}
    total = int(pr.in_context.sum())
    for code, name in enumerate(KIND_NAMES):
        sel = (pr.kinds == code) & pr.in_context
        if sel.any():
            out[name] = {
                "loss": float(loss[sel].mean()),
                "floor": float(pr.nll[sel].mean()),
                "share": float(sel.sum() / total),
            }
    out["all"] = {
        "loss": float(loss[pr.in_context].mean()),
        "floor": float(pr.nll[pr.in_context].mean()),
        "share": 1.0,
    }
    return out


def bootstrap_means(
    groups: Mapping[Any, Sequence[float]],
    reference: Any,
    count: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[Any, dict[str, Any]]:
    """Per group: the mean with its bootstrap interval (its values resampled with
    replacement), and its difference from the `reference` group's mean with the interval of
    the difference (both groups resampled independently); `resolved`: that interval
    excludes 0."""
    draws = {}
    for i, (key, values) in enumerate(groups.items()):
        v = np.asarray(values, float)
        draws[key] = v[resample_rows(len(v), count, seed + i)].mean(axis=1)
    out: dict[Any, dict[str, Any]] = {}
    for key, values in groups.items():
        lo, hi = interval(draws[key], confidence)
        row: dict[str, Any] = {"mean": float(np.mean(values)), "ci": [float(lo), float(hi)]}
        row["n"] = len(values)
        if key != reference and reference in groups:
            d = draws[key] - draws[reference]
            dlo, dhi = interval(d, confidence)
            row["minus_reference"] = {
                "value": float(np.mean(values) - np.mean(groups[reference])),
                "ci": [float(dlo), float(dhi)],
                "resolved": bool(dlo > 0 or dhi < 0),
            }
        out[key] = row
    return out
