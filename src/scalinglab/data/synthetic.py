"""A generated Markov language whose exact entropy rate, and so the loss floor, is known.

The language is a Markov chain of order k over V symbols. Each of the V**k contexts allows
`branching` next tokens, drawn at random (seeded), ranked in random order and weighted by a
Zipf law p_r ~ (r + 1) ** -zipf_exponent; a small `UNIFORM_MIX` of the uniform law over all V
symbols is mixed into every context so the chain is irreducible and aperiodic by construction
(every context reaches every other in k steps). Which contexts are frequent follows from the
chain and is computed exactly as its stationary distribution.

Every context's next-token law is a permutation of the same probabilities, so each has the same
entropy h and the entropy rate H = sum_s pi(s) h(s) equals h exactly: the floor of the per-token
loss of a model that sees at least k tokens of context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from scalinglab.config import DataConfig, SyntheticConfig
from scalinglab.data.batches import Corpus, DataError, _rng

UNIFORM_MIX = 0.01  # share of the uniform law in every context's next-token law
MAX_TABLE = 1 << 24  # contexts x branching; keeps the table (and its build) small
_DENSE_MAX = 1024  # contexts up to which the stationary law is solved exactly (dense solve)


def _entropy(p: np.ndarray) -> float:
    """Shannon entropy in nats of a probability vector (zeros ignored)."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@dataclass(frozen=True, eq=False)
class MarkovLanguage:
    """Transition table of the language and its exact information-theoretic quantities.

    A context (the last k tokens x_1..x_k, oldest first) is the integer
    s = sum_j x_j * V ** (k - j); the next token y moves it to (s * V + y) % V ** k.
    """

    vocab_size: int
    order: int
    next_tokens: np.ndarray  # (n_contexts, branching) int32: allowed next tokens by Zipf rank
    rank_probs: np.ndarray  # (branching,) Zipf probabilities of those ranks (before mixing)
    uniform_mix: float

    @property
    def n_contexts(self) -> int:
        """V ** k."""
        return self.vocab_size**self.order

    @property
    def branching(self) -> int:
        """Allowed (Zipf-weighted) next tokens per context."""
        return self.next_tokens.shape[1]

    def _branch_probs(self) -> np.ndarray:
        """Probability of each ranked next token after mixing in the uniform law."""
        return (1 - self.uniform_mix) * self.rank_probs + self.uniform_mix / self.vocab_size

    @property
    def context_entropy_nats(self) -> float:
        """Entropy of the next-token law of any context (the same for all of them)."""
        v, b, eps = self.vocab_size, self.branching, self.uniform_mix
        h = _entropy(self._branch_probs())
        if eps > 0 and v > b:
            h -= (v - b) * (eps / v) * math.log(eps / v)
        return h

    @property
    def entropy_rate_nats(self) -> float:
        """Exact entropy rate, nats/token: sum_s pi(s) h(s) = h, as every h(s) is equal."""
        return self.context_entropy_nats

    def transition_matrix(self) -> np.ndarray:
        """Dense (n_contexts, n_contexts) context-to-context transition matrix (small chains)."""
        s_count, v = self.n_contexts, self.vocab_size
        if s_count > 4096:
            raise ValueError(f"{s_count} contexts are too many for a dense matrix")
        src = np.arange(s_count)
        probs = np.zeros((s_count, v))
        probs[:] = self.uniform_mix / v
        np.add.at(
            probs,
            (src[:, None], self.next_tokens),
            (1 - self.uniform_mix) * self.rank_probs[None, :],
        )
        dst = (src[:, None] * v + np.arange(v)[None, :]) % s_count
        matrix = np.zeros((s_count, s_count))
        np.add.at(matrix, (np.repeat(src, v), dst.ravel()), probs.ravel())
        return matrix

    def _step(self, pi: np.ndarray) -> np.ndarray:
        """pi P without building P: the Zipf branches, plus the uniform share, which only
        depends on the mass of each context's k - 1 newest tokens."""
        s_count, v = self.n_contexts, self.vocab_size
        src = np.arange(s_count)
        dst = (src[:, None] * v + self.next_tokens) % s_count
        weights = pi[:, None] * ((1 - self.uniform_mix) * self.rank_probs)[None, :]
        out = np.bincount(dst.ravel(), weights=weights.ravel(), minlength=s_count)
        suffix_mass = pi.reshape(v, s_count // v).sum(axis=0)
        return out + self.uniform_mix / v * np.repeat(suffix_mass, v)

    @cached_property
    def stationary(self) -> np.ndarray:
        """The stationary distribution over contexts (pi P = pi, sums to 1).

        Solved exactly for up to 1024 contexts; power iteration to 1e-13 (L1) above that,
        which converges because UNIFORM_MIX contracts the chain every k steps.
        """
        s_count = self.n_contexts
        if s_count <= _DENSE_MAX:
            a = self.transition_matrix().T - np.eye(s_count)
            a[-1] = 1.0
            rhs = np.zeros(s_count)
            rhs[-1] = 1.0
            pi = np.linalg.solve(a, rhs)
        else:
            pi = np.full(s_count, 1.0 / s_count)
            for _ in range(100_000):
                nxt = self._step(pi)
                done = np.abs(nxt - pi).sum() < 1e-13
                pi = nxt
                if done:
                    break
        pi = np.clip(pi, 0.0, None)
        return pi / pi.sum()

    def block_entropy_nats(self, n: int) -> float:
        """Entropy of n consecutive tokens of the stationary process, for n <= order."""
        if not 0 <= n <= self.order:
            raise ValueError(f"block length {n} outside [0, {self.order}]")
        if n == 0:
            return 0.0
        joint = self.stationary.reshape((self.vocab_size,) * self.order)
        return _entropy(joint.sum(axis=tuple(range(self.order - n))).ravel())

    def loss_floor_nats(self, seq_len: int) -> float:
        """Least expected loss per target token of a model that sees one window only.

        Target t (1-based) of a window has t tokens of context; for t < k it cannot reach the
        entropy rate: its floor is H(Y_{t+1} | Y_1..Y_t) = H_{t+1} - H_t from block entropies.
        """
        k, h = self.order, self.entropy_rate_nats
        short = [
            self.block_entropy_nats(t + 1) - self.block_entropy_nats(t)
            for t in range(1, min(k, seq_len + 1))
        ]
        return (sum(short) + max(0, seq_len - k + 1) * h) / seq_len

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n tokens (uint16) of the stationary chain: the first context drawn from pi.

        The rank (or uniform draw) of every step does not depend on the context, so all the
        randomness is drawn vectorised and only the table lookup runs per token.
        """
        v, k, b, s_count = self.vocab_size, self.order, self.branching, self.n_contexts
        state = int(rng.choice(s_count, p=self.stationary))
        first = [(state // v ** (k - 1 - j)) % v for j in range(k)]
        m = max(0, n - k)
        mixed = rng.random(m) < self.uniform_mix
        uniform = rng.integers(0, v, m)
        cdf = np.cumsum(self.rank_probs)
        ranks = np.minimum(np.searchsorted(cdf, rng.random(m), side="right"), b - 1)
        codes = np.where(mixed, b + uniform, ranks).tolist()  # >= b: a uniform token + b
        table = self.next_tokens.ravel().tolist()
        for i, code in enumerate(codes):
            y = code - b if code >= b else table[state * b + code]
            codes[i] = y
            state = (state * v + y) % s_count
        return np.asarray(first + codes, dtype=np.uint16)[:n]

    def nll(self, tokens: np.ndarray) -> np.ndarray:
        """-log P(token_i | the k tokens before it) for i >= order, under the true law."""
        v, k = self.vocab_size, self.order
        t = np.asarray(tokens, dtype=np.int64)
        ctx = np.zeros(len(t) - k, dtype=np.int64)
        for j in range(k):
            ctx = ctx * v + t[j : len(t) - k + j]
        y = t[k:]
        hit = self.next_tokens[ctx] == y[:, None]  # at most one True per row
        p = np.full(len(y), self.uniform_mix / v)
        rows = hit.any(axis=1)
        p[rows] = self._branch_probs()[hit[rows].argmax(axis=1)]
        return -np.log(p)


def make_language(cfg: SyntheticConfig) -> MarkovLanguage:
    """Draw the transition table of the language from `cfg.seed` (deterministic)."""
    v, k, b = cfg.vocab_size, cfg.order, cfg.branching
    if b > v:
        raise DataError(f"data.synthetic.branching: {b} exceeds data.synthetic.vocab_size {v}")
    s_count = v**k
    if s_count * b > MAX_TABLE:
        raise DataError(
            f"data.synthetic.order: vocab_size ** order = {s_count} contexts x branching {b} "
            f"exceeds the {MAX_TABLE}-entry table limit; lower order, vocab_size or branching"
        )
    rng = _rng(cfg.seed, 0)
    # Floyd's algorithm, vectorised over contexts: b distinct tokens out of v per context.
    chosen = np.empty((s_count, b), dtype=np.int64)
    for col, top in enumerate(range(v - b, v)):
        draw = rng.integers(0, top + 1, size=s_count)
        seen = (chosen[:, :col] == draw[:, None]).any(axis=1)
        chosen[:, col] = np.where(seen, top, draw)
    chosen = rng.permuted(chosen, axis=1)  # random Zipf rank for each chosen token
    zipf = np.arange(1, b + 1, dtype=np.float64) ** -cfg.zipf_exponent
    return MarkovLanguage(v, k, chosen.astype(np.int32), zipf / zipf.sum(), UNIFORM_MIX)


def synthetic_corpus(cfg: DataConfig) -> Corpus:
    """`cfg.synthetic.n_tokens` tokens of the language, with its exact entropy rate and floor."""
    syn = cfg.synthetic
    lang = make_language(syn)
    tokens = lang.sample(syn.n_tokens, _rng(syn.seed, 1))
    info = {
        "source": "synthetic",
        "path": None,
        "files": 0,
        "entropy_rate_nats": lang.entropy_rate_nats,
        "loss_floor_nats": lang.loss_floor_nats(cfg.seq_len),
        "unigram_entropy_nats": lang.block_entropy_nats(1),
        "synthetic": {**syn.model_dump(), "uniform_mix": UNIFORM_MIX},
    }
    return Corpus(tokens, syn.vocab_size, info)
