"""What a GPT trained on the `facts` source recalls, what it makes up, and how calibrated its
next-token probabilities are.

- **Recall.** Every fact is asked once: a fixed filler prefix, the entity's pieces and REL
  (`scalinglab.data.facts.query_prompts`); the answer is the next-token distribution at the
  last position. Per fact: whether its argmax is the true attribute, the top probability, the
  probability of the true attribute and the mass on attribute tokens. A held-out fact (seen 0
  times) has no knowable answer: the calibrated answer is the attribute prior (top probability
  about 1/A), and a top probability over `CONFIDENT` there is a confident wrong answer
  (a hallucination) unless it lands on the true attribute by chance.
- **Calibration.** The expected calibration error of the top-1 next-token probability over the
  trial's validation batches: equal-width confidence bins, sum over bins of (share of tokens)
  x |accuracy - mean confidence|; over every target, and over the attribute targets (those
  after REL) alone.
- The same pass computes the validation loss, which must equal what the trainer recorded
  (`scalinglab.experiments.evaluation.check_recorded`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scalinglab.data.facts import fact_table, layout, query_prompts
from scalinglab.experiments import evaluation as ev

CONFIDENT = 0.5  # a top probability above this is a confident answer
N_BINS = 15  # equal-width confidence bins of the calibration error
LogitsFn = Callable[[np.ndarray], np.ndarray]  # int32 (B, T) tokens -> (B, T, V) logits


@functools.lru_cache(maxsize=8)
def _forward(model_json: str) -> Any:
    """The jitted `(params, tokens) -> logits` of a model config (JSON: one compile per shape)."""
    from scalinglab.config import parse_model_config
    from scalinglab.models import build_model

    model = build_model(parse_model_config(json.loads(model_json)))
    return jax.jit(lambda params, tokens: model.apply({"params": params}, tokens))


def model_logits(model_cfg: Any, params: Any) -> LogitsFn:
    """A trained GPT's logits function (float32, eval mode: no dropout)."""
    forward = _forward(model_cfg.model_dump_json())
    return lambda tokens: np.asarray(
        forward(params, jnp.asarray(tokens, jnp.int32)).astype(jnp.float32)
    )


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def answer_metrics(logits_BxV: np.ndarray, answers_B: np.ndarray) -> dict[str, np.ndarray]:
    """Per prompt, from its next-token logits: `correct` (argmax is the answer), `top_prob`,
    `p_true` (probability of the answer) and `argmax` (the first of a tie)."""
    probs_BxV = np.exp(_log_softmax(logits_BxV))
    argmax_B = np.argmax(probs_BxV, axis=-1)
    return {
        "correct": argmax_B == answers_B,
        "top_prob": probs_BxV.max(axis=-1),
        "p_true": np.take_along_axis(probs_BxV, np.asarray(answers_B)[:, None], axis=-1)[:, 0],
        "argmax": argmax_B,
    }


def recall(
    logits_fn: LogitsFn, prompts_NxT: np.ndarray, answers_N: np.ndarray, batch: int = 256
) -> dict[str, np.ndarray]:
    """`answer_metrics` of every prompt at its last position, `batch` prompts a call (the last
    call padded with copies of its first row, so a jitted model compiles one shape)."""
    parts = []
    for i in range(0, len(prompts_NxT), batch):
        chunk = prompts_NxT[i : i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - n, axis=0)])
        logits = logits_fn(chunk)[:n, -1, :]
        parts.append(answer_metrics(logits, answers_N[i : i + n]))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def by_exposure(
    exposures_N: np.ndarray, metrics: dict[str, np.ndarray], attr_range: tuple[int, int]
) -> dict[int, dict[str, float]]:
    """Per exposure count: accuracy, mean top and true-answer probability, the share of
    confident answers (top probability > CONFIDENT), of confident wrong ones, and of answers
    that are an attribute token at all."""
    lo, hi = attr_range
    out = {}
    for c in np.unique(exposures_N):
        m = exposures_N == c
        correct, top = metrics["correct"][m], metrics["top_prob"][m]
        out[int(c)] = {
            "facts": int(m.sum()),
            "accuracy": float(correct.mean()),
            "mean_top_prob": float(top.mean()),
            "mean_p_true": float(metrics["p_true"][m].mean()),
            "confident": float((top > CONFIDENT).mean()),
            "confident_wrong": float(((top > CONFIDENT) & ~correct).mean()),
            "answers_attribute": float(
                ((metrics["argmax"][m] >= lo) & (metrics["argmax"][m] < hi)).mean()
            ),
        }
    return out


def calibration_bins(
    logits_BxTxV: np.ndarray, targets_BxT: np.ndarray, mask_BxT: np.ndarray, n_bins: int = N_BINS
) -> dict[str, np.ndarray]:
    """Per equal-width bin of the top-1 probability (bin i holds [i/n, (i+1)/n), the last
    also 1): masked token count, sum of confidences and of correct argmaxes; and the summed
    cross-entropy of the masked targets (float64). Sums, so batches add up."""
    logp_BxTxV = _log_softmax(logits_BxTxV)
    conf_BxT = np.exp(logp_BxTxV.max(axis=-1))
    correct_BxT = (logp_BxTxV.argmax(axis=-1) == targets_BxT).astype(np.float64)
    nll_BxT = -np.take_along_axis(logp_BxTxV, np.asarray(targets_BxT)[..., None], axis=-1)[..., 0]
    w = np.asarray(mask_BxT, bool)
    bins = np.clip(np.floor(conf_BxT * n_bins).astype(np.int64), 0, n_bins - 1)[w]
    return {
        "count": np.bincount(bins, minlength=n_bins).astype(np.float64),
        "confidence": np.bincount(bins, weights=conf_BxT[w], minlength=n_bins),
        "correct": np.bincount(bins, weights=correct_BxT[w], minlength=n_bins),
        "nll": float(nll_BxT[w].sum()),
    }


def expected_calibration_error(
    count: np.ndarray, confidence: np.ndarray, correct: np.ndarray
) -> float:
    """ECE from per-bin sums: sum over non-empty bins of (count / total) x |mean correct -
    mean confidence| = sum |correct_b - confidence_b| / total."""
    total = float(np.sum(count))
    return float(np.sum(np.abs(np.asarray(correct) - np.asarray(confidence))) / total)


def calibration(
    logits_fn: LogitsFn,
    val_KxBxT1: np.ndarray,
    rel: int,
    n_bins: int = N_BINS,
    filler_vocab: int | None = None,
) -> dict[str, Any]:
    """ECE, loss and reliability bins over validation batches (K, B, T + 1), for every target
    (`all`), for the attribute targets only (`attribute`: the input token is REL) and, given
    `filler_vocab`, for the filler targets (`filler`: target id below it)."""
    sums: dict[str, dict[str, np.ndarray]] = {}
    for batch in val_KxBxT1:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = logits_fn(inputs)
        masks = {"all": np.ones_like(inputs, bool), "attribute": inputs == rel}
        if filler_vocab is not None:
            masks["filler"] = targets < filler_vocab
        for name, mask in masks.items():
            got = calibration_bins(logits, targets, mask, n_bins=n_bins)
            acc = sums.setdefault(name, {k: np.zeros_like(v, np.float64) for k, v in got.items()})
            for k, v in got.items():
                acc[k] += np.asarray(v, np.float64)
    out: dict[str, Any] = {}
    for name, s in sums.items():
        total = float(s["count"].sum())
        out[name] = {
            "ece": expected_calibration_error(s["count"], s["confidence"], s["correct"]),
            "loss": float(s["nll"] / total),
            "accuracy": float(s["correct"].sum() / total),
            "mean_confidence": float(s["confidence"].sum() / total),
            "tokens": int(total),
            "bins": {k: s[k].tolist() for k in ("count", "confidence", "correct")},
        }
    return out


def stream_recall(
    logits_fn: LogitsFn, val_KxBxT1: np.ndarray, cfg: Any
) -> dict[int, dict[str, float]]:
    """`by_exposure` of the facts as they occur in validation batches (K, B, T + 1): at every
    REL input whose entity is inside the window, the next-token distribution against the
    true attribute. A check of the prompted recall in the stream's own contexts."""
    lay, table = layout(cfg), fact_table(cfg)
    k = cfg.entity_tokens
    lookup = {tuple(e): i for i, e in enumerate(table.entities.tolist())}
    logits, answers, exposures = [], [], []
    for batch in val_KxBxT1:
        inputs = batch[:, :-1]
        rows, cols = np.nonzero(inputs == lay.rel)
        keep = cols >= k
        rows, cols = rows[keep], cols[keep]
        if not len(rows):
            continue
        facts = [
            lookup[tuple(inputs[r, c - k : c].tolist())] for r, c in zip(rows, cols, strict=True)
        ]
        logits.append(logits_fn(inputs)[rows, cols])
        answers.append(table.attributes[facts])
        exposures.append(table.exposures[facts])
    metrics = answer_metrics(np.concatenate(logits), np.concatenate(answers))
    return by_exposure(np.concatenate(exposures), metrics, (lay.attributes, lay.rel))


def trial_facts_eval(run_dir: str | Path) -> dict[str, Any]:
    """A finished `facts` trial: recall per exposure count (prompted, and in the validation
    stream: `facts` there counts occurrences), calibration on its validation batches, and how
    far that pass's loss (and the trainer's eval step's) is from the recorded one (over 1e-5
    raises)."""
    te = ev.load_trial_eval(run_dir)
    facts = te.cfg.data.facts
    lay, table = layout(facts), fact_table(facts)
    logits_fn = model_logits(te.cfg.model, te.state.params)
    trainer_loss = ev.evaluate(te)["loss"]
    ev.check_recorded(te, {"loss": trainer_loss})
    cal = calibration(logits_fn, np.asarray(te.val), lay.rel, filler_vocab=facts.filler_vocab)
    recorded = ev.recorded(te)["loss"]
    diff = abs(cal["all"]["loss"] - recorded)
    ev.check_recorded(te, {"loss": cal["all"]["loss"]})
    prompts = query_prompts(facts, te.cfg.data.seq_len)
    metrics = recall(logits_fn, prompts, table.attributes, batch=te.cfg.train.batch_size)
    return {
        "recall": by_exposure(table.exposures, metrics, (lay.attributes, lay.rel)),
        "stream_recall": stream_recall(logits_fn, np.asarray(te.val), facts),
        "calibration": cal,
        "recorded_loss": recorded,
        "recorded_diff": max(diff, abs(trainer_loss - recorded)),
    }


__all__ = [
    "CONFIDENT",
    "N_BINS",
    "answer_metrics",
    "by_exposure",
    "calibration",
    "calibration_bins",
    "expected_calibration_error",
    "model_logits",
    "recall",
    "stream_recall",
    "trial_facts_eval",
]
