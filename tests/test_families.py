"""One suite for every registered model family (scalinglab.families.REGISTRY).

Each family gets a tiny trial below; a registered family without one fails the first test.
Checks: output shapes, the family's causality or masking rule, parameter counts from the
config against an initialised model, FLOPs per token against a hand count made from the
initialised parameters, bf16 against f32, and a few optimiser steps reducing the loss.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import scalinglab.families.t5 as t5_family
from scalinglab.config import TrialConfig, trial_from_dict
from scalinglab.families import REGISTRY, get_family
from scalinglab.families.bert import mask_token_id, mlm_mask
from scalinglab.families.common import mask_key
from scalinglab.flops import flops_per_token, param_counts
from scalinglab.models import build_model, count_params

B, T = 2, 8
_TEXT = {"n_layer": 2, "d_model": 32, "n_head": 4, "vocab_size": 64}
_DIGITS = {"image_size": 8, "in_channels": 1, "n_classes": 10}
TINY: dict[str, dict[str, Any]] = {
    "gpt": {"model": {"family": "gpt", **_TEXT}, "data": {"seq_len": T}},
    "bert": {"model": {"family": "bert", **_TEXT}, "data": {"seq_len": T}},
    "t5": {"model": {"family": "t5", **_TEXT, "noise_density": 0.3}, "data": {"seq_len": T}},
    "mlp": {"model": {"family": "mlp", "width": 16, **_DIGITS}, "data": {"source": "digits"}},
    "resnet": {
        "model": {"family": "resnet", "width": 4, "stages": 2, **_DIGITS},
        "data": {"source": "digits"},
    },
}
FAMILIES = list(REGISTRY)


def trial(family: str, **model: Any) -> TrialConfig:
    spec = TINY[family]
    return trial_from_dict(
        {"model": {**spec["model"], **model}, "data": spec["data"], "train": {"batch_size": B}}
    )


@functools.cache
def setup(family: str, dtype: str = "float32") -> tuple[TrialConfig, Any, Any, Any, Any]:
    """(trial, model, task, params, model_state) of the tiny trial, initialised with key 0."""
    cfg = trial(family, dtype=dtype)
    model = build_model(cfg.model)
    task = get_family(cfg.model).build_task(cfg, model)
    params, state = jax.jit(task.init)(jax.random.key(0))  # compiling beats op by op
    return cfg, model, task, params, state


def inputs(family: str, cfg: TrialConfig, seed: int = 1) -> tuple[Any, ...]:
    """Positional model inputs of batch size B for the family's forward pass."""
    rng = np.random.default_rng(seed)
    m = cfg.model
    if family in ("gpt", "bert"):
        return (jnp.asarray(rng.integers(0, m.vocab_size, (B, T)), jnp.int32),)
    if family == "t5":
        lay = t5_family.span_layout(T, m.noise_density, m.mean_span_length)
        vocab = t5_family.t5_vocab(m)
        enc = rng.integers(0, vocab.embed_rows, (B, lay.enc_len))
        dec = rng.integers(0, vocab.embed_rows, (B, lay.dec_len))
        return jnp.asarray(enc, jnp.int32), jnp.asarray(dec, jnp.int32)
    return (jnp.asarray(rng.random((B, m.image_size, m.image_size, m.in_channels)), jnp.float32),)


def forward(family: str, params: Any, state: Any, *args: Any, dtype: str = "float32") -> Any:
    """Evaluation-mode logits of the tiny model (jitted: compiling beats running op by op)."""
    return _jit_forward(family, dtype)({"params": params, **state}, *args)


@functools.cache
def _jit_forward(family: str, dtype: str) -> Any:
    model = setup(family, dtype)[1]
    mode = {"train": False} if family in ("mlp", "resnet") else {"deterministic": True}
    return jax.jit(functools.partial(model.apply, **mode))


def eval_loss(task: Any, params: Any, state: Any, batch: Any) -> tuple[Any, Any]:
    """The task's evaluation loss and metrics, jitted."""
    fn = jax.jit(lambda p, s, b: task.loss(p, s, b, None, 0))
    loss, (metrics, _) = fn(params, state, jax.tree.map(jnp.asarray, batch))
    return loss, metrics


def key_path(kp: Any) -> str:
    return "/".join(str(k.key) for k in kp)


def paths(params: Any) -> list[tuple[str, Any]]:
    """(slash-joined path, leaf) of every parameter."""
    return [(key_path(kp), leaf) for kp, leaf in jax.tree_util.tree_leaves_with_path(params)]


def test_every_registered_family_is_covered() -> None:
    assert set(TINY) == set(REGISTRY)


def _slow_for(*names: str) -> list[object]:
    """FAMILIES with `names` marked slow (covered by their own tests in the default run)."""
    return [pytest.param(f, marks=pytest.mark.slow) if f in names else f for f in FAMILIES]


# ResNet's and T5's shapes and loss: also test_image_training.py and test_bert_t5.py.
@pytest.mark.parametrize("family", _slow_for("resnet", "t5"))
def test_output_shapes(family: str) -> None:
    cfg, model, task, params, state = setup(family)
    m = cfg.model
    args = inputs(family, cfg)
    if family in ("gpt", "bert"):
        expected = (B, T, m.vocab_size)  # BERT: [MASK] is never a target
    elif family == "t5":  # (B, decoder length, data tokens + sentinels)
        expected = (B, args[1].shape[1], m.vocab_size + t5_family.t5_vocab(m).sentinels)
    else:
        expected = (B, m.n_classes)
    logits = forward(family, params, state, *args)
    assert logits.shape == expected and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    batch = task.example_batch(B, np.random.default_rng(0))
    loss, metrics = eval_loss(task, params, state, batch)
    assert loss.shape == () and np.isfinite(float(loss)) and "loss" in metrics


def _gpt_rule() -> None:
    """Causality: logits at t do not depend on the input at t' > t (and do on t' <= t). The
    learned position row t' is added to the input at t' only, so it stands for that input."""
    cfg, model, _, params, state = setup("gpt")
    (tokens,) = inputs("gpt", cfg)

    def out_t(table_TxD: jax.Array, t: int) -> jax.Array:
        p = {**params, "pos_embed": {"embedding": table_TxD}}
        return forward("gpt", p, state, tokens)[:, t].sum()

    for t in (0, 3, T - 2):
        g = jax.grad(out_t)(params["pos_embed"]["embedding"], t)
        per_position = np.abs(np.asarray(g)).sum(axis=1)
        assert (per_position[t + 1 :] == 0).all(), f"output {t} sees later inputs: {per_position}"
        assert (per_position[: t + 1] > 0).all()


def _bert_rule() -> None:
    """The loss is the cross-entropy over the selected (masked) positions only."""
    cfg, model, task, params, state = setup("bert")
    batch = task.example_batch(B, np.random.default_rng(3))
    tokens = jnp.asarray(batch[:, :T])
    k = round(cfg.model.mask_rate * T) or 1
    key, _ = mask_key(None, tokens)  # evaluation: the fixed masking key
    corrupted, pos, targets = mlm_mask(
        key, tokens, mask_rate=cfg.model.mask_rate, mask_id=mask_token_id(cfg.model),
        random_vocab=task.random_vocab,
    )  # fmt: skip
    pos_np, tok_np, cor_np = np.asarray(pos), np.asarray(tokens), np.asarray(corrupted)
    assert pos_np.shape == (B, k)
    for b in range(B):
        assert len(set(pos_np[b])) == k
        kept = np.setdiff1d(np.arange(T), pos_np[b])
        np.testing.assert_array_equal(cor_np[b, kept], tok_np[b, kept])  # others untouched
        np.testing.assert_array_equal(np.asarray(targets)[b], tok_np[b, pos_np[b]])
    logp = np.asarray(jax.nn.log_softmax(forward("bert", params, state, corrupted)))
    nll = -np.take_along_axis(logp, tok_np[..., None], axis=-1)[..., 0]  # (B, T)
    on_masked = np.mean([nll[b, pos_np[b]].mean() for b in range(B)])
    loss, _ = eval_loss(task, params, state, batch)
    np.testing.assert_allclose(float(loss), on_masked, rtol=1e-5)
    assert abs(float(loss) - nll.mean()) > 1e-4  # not every position


def _t5_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Span corruption on a hand-worked example: spans [12, 13] and [16] of 10..19."""
    span_T = jnp.array([-1, -1, 0, 0, -1, -1, 1, -1, -1, -1], jnp.int32)
    monkeypatch.setattr(t5_family, "noise_spans", lambda key, layout: span_T)
    layout = t5_family.SpanLayout(seq_len=10, num_noise=3, num_spans=2)
    vocab = t5_family.T5Vocab(data=100, sentinels=2)  # sentinels 100, 101; start id 102
    tokens = jnp.arange(10, 20, dtype=jnp.int32)
    enc, dec_in, target = t5_family.span_corrupt(jax.random.key(0), tokens, layout, vocab)
    np.testing.assert_array_equal(enc, [10, 11, 100, 14, 15, 101, 17, 18, 19])
    np.testing.assert_array_equal(target, [100, 12, 13, 101, 16])
    np.testing.assert_array_equal(dec_in, [102, 100, 12, 13, 101])


def _image_rule() -> None:
    """Evaluation loss and accuracy are softmax cross-entropy and argmax hits of the logits."""
    for family in ("mlp", "resnet"):
        cfg, model, task, params, state = setup(family)
        batch = task.example_batch(B, np.random.default_rng(4))
        logp = jax.nn.log_softmax(forward(family, params, state, batch["image"]))
        labels = batch["label"]
        want = -np.mean(np.asarray(logp)[np.arange(B), labels])
        loss, metrics = eval_loss(task, params, state, batch)
        np.testing.assert_allclose(float(loss), want, rtol=1e-5)
        hits = np.mean(np.argmax(np.asarray(logp), -1) == labels)
        assert float(metrics["accuracy"]) == pytest.approx(hits)


@pytest.mark.parametrize("family", FAMILIES)
def test_causality_and_masking_rules(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = {"gpt": _gpt_rule, "bert": _bert_rule, "mlp": _image_rule, "resnet": _image_rule}
    if family == "t5":
        _t5_rule(monkeypatch)
    else:
        rules[family]()


VARIANTS = {  # options that change the parameter shapes
    "gpt": {"activation": "swiglu", "tie_embeddings": False},
    "bert": {"activation": "swiglu", "tie_embeddings": False, "positions": "rotary"},
    "t5": {"activation": "swiglu", "tie_embeddings": False, "positions": "learned",
           "n_decoder_layer": 3},
    "mlp": {"activation": "swiglu", "batch_norm": True, "depth": 3},
    "resnet": {"activation": "swiglu", "batch_norm": False, "stages": 3},
}  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", [False, True])
def test_param_counts_equal_an_initialised_model(family: str, variant: bool) -> None:
    cfg = trial(family, **VARIANTS[family]) if variant else trial(family)
    task = get_family(cfg.model).build_task(cfg, build_model(cfg.model))
    params = jax.eval_shape(lambda: task.init(jax.random.key(0))[0])
    assert param_counts(cfg.model) == count_params(params)


def _hand_flops(family: str, cfg: TrialConfig, params: Any) -> tuple[float, float]:
    """(kaplan, full) training FLOPs per unit of D, counted from the parameter shapes."""
    m, named = cfg.model, paths(params)
    n_ne = count_params(params)["non_embedding"]
    d, v = getattr(m, "d_model", 0), getattr(m, "vocab_size", 0)
    if family == "gpt":  # causal attention: QK^T and AV over T/2 keys on average
        return 6 * n_ne, 3 * (2 * n_ne + 2 * v * d + 2 * m.n_layer * T * d)
    if family == "bert":  # every query sees all T keys
        return 6 * n_ne, 3 * (2 * n_ne + 2 * v * d + 4 * m.n_layer * T * d)
    if family == "t5":  # T = 8, density 0.3: 2 noise tokens in 1 span -> Te = 7, Td = 3
        te, td = 7, 3
        on_enc = sum(
            leaf.size
            for p, leaf in named
            if "embed" not in p and (p.startswith("encoder") or "cross_attn/kv" in p)
        )
        on_dec = n_ne - on_enc
        out = v + 1  # data tokens and the one sentinel
        enc = te * (2 * on_enc + 4 * m.n_layer * te * d)
        dec = td * (2 * on_dec + 2 * m.n_layer * td * d + 4 * m.n_layer * te * d + 2 * out * d)
        return 6 * (on_enc * te + on_dec * td) / T, 3 * (enc + dec) / T
    if family == "mlp":  # every weight once per example
        dense = sum(leaf.size for p, leaf in named if p.endswith("kernel"))
        return 6 * n_ne, 3 * 2 * dense
    # resnet: each 3x3 kernel slides over the stage's side x side positions
    total = 0.0
    for p, leaf in named:
        if p.endswith("kernel") and leaf.ndim == 4:
            stage = 0 if p.startswith("stem") else int(p[len("stage")])
            total += 2 * leaf.size * (m.image_size >> stage) ** 2
        elif p.endswith("kernel"):
            total += 2 * leaf.size
    return 3 * total, 3 * total


@pytest.mark.parametrize("family", FAMILIES)
def test_flops_per_token_match_a_hand_count(family: str) -> None:
    cfg, _, _, params, _ = setup(family)
    kaplan, full = _hand_flops(family, cfg, params)
    seq_len = cfg.data.seq_len
    assert flops_per_token(cfg.model, seq_len, "kaplan") == pytest.approx(kaplan, rel=1e-12)
    assert flops_per_token(cfg.model, seq_len, "full") == pytest.approx(full, rel=1e-12)


def _rel_err(a: jax.Array, b: jax.Array) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# The bf16 path that matters is attention's (the transformers); the ResNet's runs with -m slow.
@pytest.mark.parametrize("family", _slow_for("resnet"))
def test_bfloat16_forward_agrees_with_float32(family: str) -> None:
    cfg, model, _, params, state = setup(family)
    args = inputs(family, cfg)
    # Perturbed parameters: the image heads start at zero, and every path should matter.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    noise = [0.05 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    params = jax.tree.unflatten(treedef, [x + n for x, n in zip(leaves, noise, strict=True)])
    f32 = forward(family, params, state, *args)
    bf16 = forward(family, params, state, *args, dtype="bfloat16")  # the same float32 parameters
    assert bf16.dtype == jnp.float32
    tol = 3e-2  # bf16 keeps 8 mantissa bits: about 0.4% per rounding, a few roundings deep
    assert _rel_err(bf16, f32) < tol
    attn = [p for p, _ in paths(params) if "attn/proj" in p]
    if attn:
        # Deletion check: a model without attention output is far outside that tolerance,
        # so a bf16 path that dropped attention could not pass the comparison above.
        zeroed = jax.tree_util.tree_map_with_path(
            lambda kp, x: jnp.zeros_like(x) if "attn/proj" in key_path(kp) else x, params
        )
        no_attn = forward(family, zeroed, state, *args)
        assert _rel_err(no_attn, f32) > 3 * tol


@pytest.mark.parametrize("family", FAMILIES)
def test_a_few_steps_reduce_the_loss(family: str) -> None:
    _, _, task, params, state = setup(family)
    batch = jax.tree.map(jnp.asarray, task.example_batch(4, np.random.default_rng(5)))
    tx = optax.adam(1e-2)

    @jax.jit
    def step(params: Any, opt_state: Any, state: Any) -> tuple[Any, Any, Any, jax.Array]:
        (loss, (_, new_state)), grads = jax.value_and_grad(task.loss, has_aux=True)(
            params, state, batch, jax.random.key(0), 0
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, new_state, loss

    opt_state = tx.init(params)
    losses = []
    for _ in range(20):  # training-mode losses on one batch (same key: same masks and spans)
        params, opt_state, state, loss = step(params, opt_state, state)
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]
