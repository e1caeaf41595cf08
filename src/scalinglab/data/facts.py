"""Entity -> attribute facts, each seen a controlled number of times, in Markov filler text.

Vocabulary (V = F + P + A + 1), in this order:

- F filler tokens (`filler_vocab`): an order-1 Markov language (`scalinglab.data.synthetic`,
  branching min(8, F), seeded by `seed`);
- P entity pieces (`entity_pieces`): an entity's name is `entity_tokens` pieces, a distinct
  tuple per entity;
- A attribute tokens (`n_attributes`);
- REL, the relation marker.

A fact is the `entity_tokens + 2` tokens ``e_1 .. e_k REL a``: entity e has the attribute a,
drawn uniformly from the A values. Facts come in groups of `facts_per_group`, one group per
entry of `exposures`; every fact of a group with exposure c occurs exactly c times in the train
stream (0: never, the held-out facts), in a random order. The validation stream holds facts
drawn uniformly from all groups (held-out ones included), at the train stream's density.

Each stream is one filler chain with the fact occurrences inserted at uniformly random points
(the chain resumes after a fact), so the gaps between facts are random and the filler share is
what `n_tokens` leaves over. The train stream is the first `n_tokens - round(n_tokens *
val_frac)` tokens, the same cut `scalinglab.data.batches.split` makes, so every exposure is in
the train split. Everything is a function of `seed`; the trial seed only orders the batches.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from scalinglab.config import DataConfig, FactsConfig, SyntheticConfig
from scalinglab.data.batches import Corpus, DataError, _rng
from scalinglab.data.synthetic import MarkovLanguage, make_language

FILLER_BRANCHING = 8  # next-token choices per filler context (at most filler_vocab)
# Seeds of the generator's streams, after the data seed: the fact table, the train and
# validation streams, and the filler prefix of the query prompts.
_TABLE, _TRAIN, _VAL, _PROMPT = 1, 2, 3, 4


class Layout(NamedTuple):
    """First token id of each range, the relation marker and the vocabulary size."""

    pieces: int
    attributes: int
    rel: int
    vocab_size: int


class FactTable(NamedTuple):
    """Every fact: entity (n, k) piece token ids, attribute (n,) token ids, and how many times
    each occurs in the train stream (`exposures`, n) with its group's index (`group`, n)."""

    entities: np.ndarray
    attributes: np.ndarray
    exposures: np.ndarray
    group: np.ndarray


class Streams(NamedTuple):
    """The train and validation token streams (uint16) and, per fact occurrence, its start
    position and fact index (sorted by position) in each."""

    train: np.ndarray
    val: np.ndarray
    train_starts: np.ndarray
    train_facts: np.ndarray
    val_starts: np.ndarray
    val_facts: np.ndarray


def layout(cfg: FactsConfig) -> Layout:
    """Where each token range starts (filler at 0); a DataError if V exceeds uint16."""
    pieces = cfg.filler_vocab
    attributes = pieces + cfg.entity_pieces
    rel = attributes + cfg.n_attributes
    if rel + 1 > 65535:
        raise DataError(
            f"data.facts: filler_vocab + entity_pieces + n_attributes + 1 = {rel + 1} tokens "
            "exceed 65535"
        )
    return Layout(pieces, attributes, rel, rel + 1)


def fact_length(cfg: FactsConfig) -> int:
    """Tokens per fact occurrence: the entity's pieces, REL and the attribute."""
    return cfg.entity_tokens + 2


def filler_language(cfg: FactsConfig) -> MarkovLanguage:
    """The filler's order-1 Markov language, drawn from `cfg.seed`."""
    syn = SyntheticConfig(
        vocab_size=cfg.filler_vocab,
        order=1,
        branching=min(FILLER_BRANCHING, cfg.filler_vocab),
        seed=cfg.seed,
    )
    return make_language(syn)


def fact_table(cfg: FactsConfig) -> FactTable:
    """Every fact of the language, group by group in the order of `cfg.exposures`."""
    lay = layout(cfg)
    n = cfg.facts_per_group * len(cfg.exposures)
    names = cfg.entity_pieces**cfg.entity_tokens
    if names < n:
        raise DataError(
            f"data.facts: {n} entities need entity_pieces ** entity_tokens >= {n} distinct "
            f"names; {cfg.entity_pieces} ** {cfg.entity_tokens} is {names}"
        )
    rng = _rng(cfg.seed, _TABLE)
    codes = rng.choice(names, n, replace=False)
    digits = cfg.entity_pieces ** np.arange(cfg.entity_tokens - 1, -1, -1)
    entities = lay.pieces + (codes[:, None] // digits[None, :]) % cfg.entity_pieces
    attributes = lay.attributes + rng.integers(0, cfg.n_attributes, n)
    group = np.repeat(np.arange(len(cfg.exposures)), cfg.facts_per_group)
    exposures = np.asarray(cfg.exposures, np.int64)[group]
    return FactTable(entities.astype(np.int64), attributes.astype(np.int64), exposures, group)


def split_sizes(n_tokens: int, val_frac: float) -> tuple[int, int]:
    """(train, validation) tokens of the stream, as `batches.split` cuts it."""
    n_val = round(n_tokens * val_frac)
    return n_tokens - n_val, n_val


def _stream(
    cfg: FactsConfig,
    table: FactTable,
    order: np.ndarray,
    length: int,
    lang: MarkovLanguage,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """`length` tokens: a filler chain with the facts `order` inserted at uniform points, in
    that order; and each occurrence's start position."""
    lay, width = layout(cfg), fact_length(cfg)
    n_fill = length - len(order) * width
    cuts = np.sort(rng.integers(0, n_fill + 1, len(order)))  # filler tokens before each fact
    facts = np.concatenate(
        [
            table.entities[order],
            np.full((len(order), 1), lay.rel),
            table.attributes[order, None],
        ],
        axis=1,
    )
    filler = lang.sample(n_fill, rng) if n_fill > 0 else np.zeros(0, np.uint16)
    tokens = np.insert(filler, np.repeat(cuts, width), facts.ravel())
    starts = cuts + width * np.arange(len(order))
    return tokens.astype(np.uint16), starts


def generate(cfg: FactsConfig, val_frac: float) -> Streams:
    """The train and validation streams of `cfg.n_tokens` tokens in all (deterministic)."""
    table = fact_table(cfg)
    n_train, n_val = split_sizes(cfg.n_tokens, val_frac)
    width = fact_length(cfg)
    occurrences = int(table.exposures.sum())
    if occurrences * width > n_train:
        need = occurrences * width
        raise DataError(
            f"data.facts.n_tokens: the {occurrences} fact occurrences take {need} tokens, more "
            f"than the train split's {n_train}; raise n_tokens to at least "
            f"{int(np.ceil(need / (1.0 - val_frac))) + 1}"
        )
    lang = filler_language(cfg)
    rng = _rng(cfg.seed, _TRAIN)
    order = rng.permutation(np.repeat(np.arange(len(table.exposures)), table.exposures))
    train, train_starts = _stream(cfg, table, order, n_train, lang, rng)
    rng = _rng(cfg.seed, _VAL)
    n_val_occ = min(round(occurrences * n_val / max(n_train, 1)), n_val // width)
    val_order = rng.integers(0, len(table.exposures), n_val_occ)
    val, val_starts = _stream(cfg, table, val_order, n_val, lang, rng)
    return Streams(train, val, train_starts, order, val_starts, val_order)


def query_prompts(cfg: FactsConfig, seq_len: int) -> np.ndarray:
    """int32 (n_facts, seq_len) prompts: a fixed filler prefix, then each fact's entity and
    REL, so the model's next-token distribution at the last position is its answer."""
    lay, table = layout(cfg), fact_table(cfg)
    k = cfg.entity_tokens
    if seq_len < k + 1:
        raise DataError(f"data.seq_len: {seq_len} is shorter than an entity and REL ({k + 1})")
    prefix = filler_language(cfg).sample(seq_len - k - 1, _rng(cfg.seed, _PROMPT))
    n = len(table.attributes)
    out = np.empty((n, seq_len), np.int32)
    out[:, : seq_len - k - 1] = prefix[None, :]
    out[:, seq_len - k - 1 : seq_len - 1] = table.entities
    out[:, -1] = lay.rel
    return out


def facts_corpus(cfg: DataConfig) -> Corpus:
    """The train stream followed by the validation stream, with the fact layout in `info`."""
    facts = cfg.facts
    lay = layout(facts)
    streams = generate(facts, cfg.val_frac)
    tokens = np.concatenate([streams.train, streams.val])
    width = fact_length(facts)
    info = {
        "source": "facts",
        "path": None,
        "files": 0,
        "facts": facts.model_dump(mode="json"),
        "layout": lay._asdict(),
        "n_facts": facts.facts_per_group * len(facts.exposures),
        "train_fact_occurrences": len(streams.train_facts),
        "val_fact_occurrences": len(streams.val_facts),
        "train_fact_token_fraction": width * len(streams.train_facts) / max(len(streams.train), 1),
        "filler_entropy_rate_nats": filler_language(facts).entropy_rate_nats,
    }
    return Corpus(tokens, lay.vocab_size, info)
