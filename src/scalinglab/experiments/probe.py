"""Linear probes of a GPT's residual stream: what a layer's activations say, linearly, about a
hidden quantity of the input, here the tokens before the current one in the synthetic Markov
language (`data.source: synthetic`).

Activations are recomputed from the parameters after training, not collected in the train
step: layer 0 is the input of the first block (token embedding plus learned positions), layer
l the output of block l - 1, captured with flax `capture_intermediates` in one evaluation-mode
forward pass. A probe is ridge least squares onto one-hot classes (closed form, features
standardised on the train split, an unpenalised bias), its prediction the argmax; it is fitted
on one split of positions and scored on another.

For a Markov chain of order k the next token depends on the last k tokens, so a model that
predicts well must carry the token one position back (for k >= 2) at the current position;
the token k positions back it does not need. `lag_ceilings` gives the best accuracy any
function of the current token alone can reach for the token one back (the embedding's limit),
and of the current and previous token for the token two back.
"""

from __future__ import annotations

import functools
import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scalinglab.config import TrialConfig

Params = Any
PROBE_SEED = 3  # the probe stream's seed, after the corpus's (1): other tokens, same law


def fit_ridge(
    x_NxD: np.ndarray, y_N: np.ndarray, n_classes: int, lam: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ridge least squares from standardised features to one-hot classes:
    W = (Z^T Z + lam N I)^-1 Z^T (Y - mean Y) on Z = (x - mean) / std, bias = mean Y.
    Returns (W (D, C), bias (C,), mean (D,), std (D,))."""
    x = np.asarray(x_NxD, np.float64)
    n = len(x)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    z = (x - mean) / std
    y = np.eye(n_classes)[np.asarray(y_N)]
    bias = y.mean(axis=0)
    gram = z.T @ z + lam * n * np.eye(z.shape[1])
    w = np.linalg.solve(gram, z.T @ (y - bias))
    return w, bias, mean, std


def predict_ridge(
    probe: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], x_NxD: np.ndarray
) -> np.ndarray:
    """The class a fitted probe predicts for each row (argmax of its scores)."""
    w, bias, mean, std = probe
    return (((np.asarray(x_NxD, np.float64) - mean) / std) @ w + bias).argmax(axis=1)


def probe_accuracy(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int,
    lam: float = 1e-3,
) -> float:
    """Held-out accuracy of a ridge probe fitted on the train split."""
    probe = fit_ridge(x_train, y_train, n_classes, lam)
    return float((predict_ridge(probe, x_test) == np.asarray(y_test)).mean())


def majority_accuracy(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Chance: the test accuracy of always answering the train split's most frequent class."""
    values, counts = np.unique(np.asarray(y_train), return_counts=True)
    return float((np.asarray(y_test) == values[counts.argmax()]).mean())


@functools.lru_cache(maxsize=8)
def _forward(model_json: str) -> Any:
    """The jitted `(params, tokens) -> (logits (B, T, V), residual stream (L + 1, B, T, D))` of
    a GPT config (as JSON: one compile per model shape, shared by the seeds)."""
    from scalinglab.config import parse_model_config
    from scalinglab.models import build_model

    cfg = parse_model_config(json.loads(model_json))
    model = build_model(cfg)

    def run(params: Params, tokens_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits, state = model.apply(
            {"params": params},
            tokens_BxT,
            capture_intermediates=lambda mdl, _: (mdl.name or "").startswith("block_"),
            mutable=["intermediates"],
        )
        t = tokens_BxT.shape[1]
        x = params["token_embed"]["embedding"][tokens_BxT]
        if "pos_embed" in params:
            x = x + params["pos_embed"]["embedding"][:t]
        layers = [x.astype(jnp.float32)]
        for i in range(cfg.n_layer):
            layers.append(state["intermediates"][f"block_{i}"]["__call__"][0].astype(jnp.float32))
        return logits, jnp.stack(layers)

    return jax.jit(run)


def forward_with_stream(
    cfg: TrialConfig, params: Params, tokens_BxT: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(logits (B, T, V), residual stream (L + 1, B, T, D)) of a GPT on `tokens`, float32:
    layer 0 the embeddings (the first block's input), layer l the output of block l - 1."""
    if cfg.model.family != "gpt":
        raise ValueError(f"probes need a gpt model (got model.family {cfg.model.family})")
    forward = _forward(cfg.model.model_dump_json())
    logits, stream = forward(params, jnp.asarray(tokens_BxT, jnp.int32))
    return np.asarray(logits, np.float32), np.asarray(stream, np.float32)


def residual_stream(cfg: TrialConfig, params: Params, tokens_BxT: np.ndarray) -> np.ndarray:
    """(L + 1, B, T, D) float32 activations of a GPT on `tokens` (see `forward_with_stream`)."""
    return forward_with_stream(cfg, params, tokens_BxT)[1]


class ProbeData(NamedTuple):
    """Windows of a fresh sample of the trial's language: inputs (B, T) int32."""

    tokens: np.ndarray


def probe_windows(cfg: TrialConfig, n_windows: int = 256) -> ProbeData:
    """`n_windows` consecutive windows of `data.seq_len` tokens of a fresh sample of the trial's
    synthetic language (its own seed: never the training tokens)."""
    from scalinglab.data.synthetic import make_language

    if cfg.data.source != "synthetic":
        raise ValueError(f"probe windows need data.source synthetic (got {cfg.data.source})")
    syn = cfg.data.synthetic
    lang = make_language(syn)
    t = cfg.data.seq_len
    tokens = lang.sample(n_windows * t, np.random.default_rng([syn.seed, PROBE_SEED]))
    return ProbeData(tokens.reshape(n_windows, t).astype(np.int32))


def lag_targets(tokens_BxT: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask (B, T), target (B, T)): at position t >= lag the token `lag` positions back."""
    b, t = tokens_BxT.shape
    target = np.zeros((b, t), np.int64)
    target[:, lag:] = tokens_BxT[:, : t - lag]
    mask = np.zeros((b, t), bool)
    mask[:, lag:] = True
    return mask, target


def triple_joint(cfg: TrialConfig) -> np.ndarray:
    """(V, V, V): the exact stationary probability of three consecutive tokens (a, b, c) of the
    trial's synthetic language (order 1 to 3)."""
    from scalinglab.data.synthetic import make_language

    lang = make_language(cfg.data.synthetic)
    v, k, s = lang.vocab_size, lang.order, lang.n_contexts
    pi = lang.stationary
    if k >= 3:
        return pi.reshape((v,) * k).sum(axis=tuple(range(k - 3)))
    src = np.arange(s)
    # next-token law per context: P(c | s) = T[s, (s V + c) mod V^k]
    nxt = lang.transition_matrix()[src[:, None], (src[:, None] * v + np.arange(v)[None, :]) % s]
    if k == 1:
        return pi[:, None, None] * nxt[:, :, None] * nxt[None, :, :]
    return (pi[:, None] * nxt).reshape(v, v, v)


def lag_ceilings(cfg: TrialConfig) -> dict[int, float]:
    """Exact best accuracy of guessing the token `lag` back from the tokens after it that an
    order-2 model needs: lag 1 from the current token alone (what the embeddings can know),
    lag 2 from the current and the previous token: sum of the max over the guessed token of
    the joint probability."""
    joint = triple_joint(cfg)
    return {1: float(joint.sum(axis=0).max(axis=0).sum()), 2: float(joint.max(axis=0).sum())}


def layer_accuracies(
    stream_LxBxTxD: np.ndarray,
    tokens_BxT: np.ndarray,
    lag: int,
    n_classes: int,
    lam: float = 1e-3,
) -> dict[str, Any]:
    """Per layer: held-out accuracy of a ridge probe for the token `lag` positions back, fitted
    on the first half of the windows and scored on the second half; and the chance level."""
    mask, target = lag_targets(tokens_BxT, lag)
    half = len(tokens_BxT) // 2
    tr, te = mask.copy(), mask.copy()
    tr[half:], te[:half] = False, False
    accs = [
        probe_accuracy(layer[tr], target[tr], layer[te], target[te], n_classes, lam)
        for layer in stream_LxBxTxD
    ]
    return {
        "accuracy": accs,
        "chance": majority_accuracy(target[tr], target[te]),
        "n_train": int(tr.sum()),
        "n_test": int(te.sum()),
    }
