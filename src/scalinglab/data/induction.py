"""A token stream whose predictable tokens need a copy-previous or an induction relation.

The stream is a sequence of independent episodes over C = vocab_size - 2 content tokens and
two markers, BOS (id C) and ECHO (id C + 1):

    BOS  a_1 [ECHO a_1]  a_2 [ECHO a_2] ... a_m [ECHO a_m]  a_1 a_2 ... a_m

- the run length m is uniform on [min_run, max_run]; a_1..a_m are m distinct content tokens,
  a uniformly random ordered subset;
- after each a_i of the run, with probability `echo_prob` independently, ECHO and a_i again:
  the token after ECHO is the token before it (*copy previous*: attend to t - 1);
- then the run once more: from its second token on, every token is the one that followed the
  most recent earlier occurrence of the current token (*induction*); the episode ends after
  a_m and the next BOS follows.

Given the past, the episode's randomness is m, the run and the echo flags; everything else is
determined. Episodes are i.i.d. and the stream parses back into them (BOS delimits), so the
entropy rate is H(episode) / E[episode length] (renewal-reward):

    H = (ln(max_run - min_run + 1) + E[ln C! / (C - m)!] + E[m] h(echo_prob))
        / (1 + 2 E[m] (1 + echo_prob))

with h the binary entropy: the floor of the per-token loss of a model that sees the whole
episode. A model that sees one window only pays more on the episode cut at the window's start;
after the window's first BOS nothing before it matters, so there the per-token floor is `nll`.
"""

from __future__ import annotations

import math

import numpy as np

from scalinglab.config import DataConfig, InductionConfig
from scalinglab.data.batches import Corpus, DataError, _rng

# What predicting each token needs (`kinds`): the stochastic choices (a run token, ECHO, the
# start of the repeat, the first token after BOS), the copy after ECHO, the induction copies
# of the repeat, and the BOS that ends a repeat.
FRESH, COPY, INDUCTION, END = 0, 1, 2, 3
KIND_NAMES = ("fresh", "copy", "induction", "end")


def _check(cfg: InductionConfig) -> int:
    """The number of content tokens C; a one-line DataError naming the field if none fits."""
    content = cfg.vocab_size - 2
    if cfg.min_run > cfg.max_run:
        raise DataError(
            f"data.induction.min_run: {cfg.min_run} exceeds data.induction.max_run {cfg.max_run}"
        )
    if cfg.max_run > content:
        raise DataError(
            f"data.induction.max_run: a run of {cfg.max_run} distinct tokens needs vocab_size "
            f">= {cfg.max_run + 2} (content tokens + BOS and ECHO); data.induction.vocab_size "
            f"is {cfg.vocab_size}"
        )
    return content


def markers(cfg: InductionConfig) -> tuple[int, int]:
    """The (BOS, ECHO) token ids: the last two of the vocabulary."""
    return cfg.vocab_size - 2, cfg.vocab_size - 1


def _binary_entropy(p: float) -> float:
    return -sum(q * math.log(q) for q in (p, 1.0 - p) if q > 0)


def entropy_rate_nats(cfg: InductionConfig) -> float:
    """Exact entropy rate of the stream in nats per token (the module docstring's formula)."""
    c = _check(cfg)
    runs = range(cfg.min_run, cfg.max_run + 1)
    mean_m = sum(runs) / len(runs)
    subsets = sum(math.lgamma(c + 1) - math.lgamma(c - m + 1) for m in runs) / len(runs)
    episode = math.log(len(runs)) + subsets + mean_m * _binary_entropy(cfg.echo_prob)
    return episode / (1.0 + 2.0 * mean_m * (1.0 + cfg.echo_prob))


def sample(cfg: InductionConfig, n_tokens: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(tokens uint16, kinds uint8, nll float64) of `n_tokens` tokens starting at a BOS.

    `kinds[i]` says what predicting token i needs (FRESH, COPY, INDUCTION, END) and `nll[i]`
    is -ln P(token i | every token before it) under the true law (token 0: ln of nothing, 0).
    """
    c = _check(cfg)
    bos, echo = markers(cfg)
    lo, hi, p = cfg.min_run, cfg.max_run, cfg.echo_prob
    min_len = 1 + 2 * lo
    n_ep = n_tokens // min_len + 1  # enough episodes to cover n_tokens, whatever their length
    lengths = rng.integers(lo, hi + 1, n_ep)
    # A uniformly random ordered subset per episode: the first m of a random permutation.
    perms = np.argsort(rng.random((n_ep, c)), axis=1)[:, :hi]
    echoes = rng.random((n_ep, hi)) < p
    # -ln P of each choice after the run's i-th token (i = 1..hi): stop (start the repeat)
    # with the hazard P(m = i | m >= i), else a new token among the C - i unused ones.
    i = np.arange(1, hi + 1)
    hazard = np.where(i >= lo, 1.0 / np.maximum(hi - i + 1, 1), 0.0)
    with np.errstate(divide="ignore"):  # a choice of probability 0 is never made
        stop = (-np.log(hazard)).tolist()
        new = (-np.log((1.0 - hazard) / np.maximum(c - i, 1))).tolist()
    echo_yes = -math.log(p) if p > 0 else math.inf
    echo_no = -math.log1p(-p) if p < 1 else math.inf
    tokens: list[int] = []
    kinds: list[int] = []
    nll: list[float] = []
    log_c = math.log(c)
    for e in range(n_ep):
        if len(tokens) >= n_tokens:
            break
        m, run, flags = int(lengths[e]), perms[e].tolist(), echoes[e].tolist()
        tokens.append(bos)
        kinds.append(END)
        nll.append(0.0)
        for j in range(m):  # the run: token a_{j+1}, then maybe ECHO a_{j+1}
            tokens.append(run[j])
            kinds.append(FRESH)
            if j == 0:
                nll.append(log_c)
            else:  # chosen after a_j (no echo of it: its ECHO was declined) or its echo copy
                after_original = not flags[j - 1]
                nll.append(new[j - 1] + (echo_no if after_original else 0.0))
            if flags[j]:
                tokens += [echo, run[j]]
                kinds += [FRESH, COPY]
                nll += [echo_yes, 0.0]
        tokens.append(run[0])  # the repeat starts: a stop after a_m (or its echo copy)
        kinds.append(FRESH)
        nll.append(stop[m - 1] + (0.0 if flags[m - 1] else echo_no))
        tokens += run[1:m]
        kinds += [INDUCTION] * (m - 1)
        nll += [0.0] * (m - 1)
    nll[0] = 0.0
    return (
        np.asarray(tokens[:n_tokens], np.uint16),
        np.asarray(kinds[:n_tokens], np.uint8),
        np.asarray(nll[:n_tokens], np.float64),
    )


def induction_corpus(cfg: DataConfig) -> Corpus:
    """`cfg.induction.n_tokens` tokens of the episode stream, with its exact entropy rate."""
    ind = cfg.induction
    tokens, kinds, _ = sample(ind, ind.n_tokens, _rng(ind.seed, 1))
    info = {
        "source": "induction",
        "path": None,
        "files": 0,
        "entropy_rate_nats": entropy_rate_nats(ind),
        "kind_fractions": {k: float(np.mean(kinds == i)) for i, k in enumerate(KIND_NAMES)},
        "induction": ind.model_dump(),
    }
    return Corpus(tokens, ind.vocab_size, info)
