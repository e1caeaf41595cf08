"""GPT model: causality, gradients, activations, positions, head tying, dropout, dtypes."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalinglab.config import ACTIVATIONS, ModelConfig
from scalinglab.models import build_model, count_params
from scalinglab.models.layers import (
    activation_fn,
    apply_rotary,
    gelu_tanh,
    layer_norm,
    rotary_tables,
)

B, T = 2, 8


def tiny(**kw) -> ModelConfig:
    base = dict(n_layer=2, d_model=32, n_head=4, vocab_size=64, max_seq_len=T)
    return ModelConfig(**{**base, **kw})


def init(cfg: ModelConfig, seed: int = 0):
    model = build_model(cfg)
    tokens = jax.random.randint(jax.random.key(seed + 1), (B, T), 0, cfg.vocab_size)
    params = model.init(jax.random.key(seed), tokens)["params"]  # eager: op cache is shared
    return model, params, tokens


def apply(model, params, tokens, *, deterministic: bool = True, rng=None):
    """Jitted apply: eager op-by-op dispatch would dominate the test time."""
    rngs = None if rng is None else {"dropout": rng}
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, deterministic=deterministic, rngs=rngs))
    return fn(params, tokens)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_changing_a_future_token_leaves_earlier_logits_unchanged(positions: str) -> None:
    model, params, tokens = init(tiny(positions=positions))
    i = 4
    changed = tokens.at[:, i].set((tokens[:, i] + 1) % 64)
    a = apply(model, params, tokens)
    b = apply(model, params, changed)
    np.testing.assert_array_equal(np.asarray(a[:, :i]), np.asarray(b[:, :i]))
    assert not np.allclose(np.asarray(a[:, i:]), np.asarray(b[:, i:]))


def test_gradients_match_central_differences() -> None:
    # float32 central differences along one random unit direction per parameter array, with
    # Richardson extrapolation (steps eps and eps/2) so truncation error is O(eps**4) and the
    # step can stay large enough that float32 rounding (~1e-6 / eps) is negligible.
    cfg = tiny(n_layer=1, activation="tanh", tie_embeddings=False)
    model, params, tokens = init(cfg)
    targets = jnp.roll(tokens, -1, axis=1)
    leaves, treedef = jax.tree_util.tree_flatten(params)

    @jax.jit
    def loss(leaves):
        logits = model.apply({"params": treedef.unflatten(leaves)}, tokens)
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, targets[..., None], axis=-1).mean()

    grads = jax.grad(loss)(leaves)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    eps = 2e-2

    def central(x, v, i, h):
        plus = loss([*leaves[:i], x + h * v, *leaves[i + 1 :]])
        minus = loss([*leaves[:i], x - h * v, *leaves[i + 1 :]])
        return float((plus - minus) / (2 * h))

    for i, (x, k) in enumerate(zip(leaves, keys, strict=True)):
        v = jax.random.normal(k, x.shape, x.dtype)
        v = v / jnp.linalg.norm(v)
        numeric = (4 * central(x, v, i, eps / 2) - central(x, v, i, eps)) / 3
        analytic = float(jnp.vdot(grads[i], v))
        np.testing.assert_allclose(analytic, numeric, rtol=1e-2, atol=1e-4, err_msg=str(i))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_each_activation_builds_and_gives_finite_logits(activation: str) -> None:
    cfg = tiny(n_layer=1, activation=activation)
    model, params, tokens = init(cfg)
    logits = apply(model, params, tokens)
    assert logits.shape == (B, T, cfg.vocab_size)
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))
    mlp = params["block_0"]["mlp"]
    assert ("gate" in mlp) == (activation == "swiglu")


def test_unknown_activation_lists_the_allowed() -> None:
    with pytest.raises(ValueError, match="allowed: .*swiglu"):
        activation_fn("mish")


def test_rotary_has_no_position_table_and_scores_depend_on_offset_only() -> None:
    _, params, _ = init(tiny(positions="rotary"))
    assert "pos_embed" not in params
    _, params, _ = init(tiny(positions="learned"))
    assert params["pos_embed"]["embedding"].shape == (T, 32)

    cos, sin = rotary_tables(16, 8)
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))

    q_T = np.asarray(apply_rotary(jnp.broadcast_to(q, (1, 1, 16, 8)), cos, sin))[0, 0]
    k_T = np.asarray(apply_rotary(jnp.broadcast_to(k, (1, 1, 16, 8)), cos, sin))[0, 0]

    def score(m: int, n: int) -> float:
        return float(q_T[m] @ k_T[n])

    np.testing.assert_allclose(score(5, 2), score(12, 9), rtol=1e-5)
    assert abs(score(5, 2) - score(5, 3)) > 1e-4


def test_tied_and_untied_heads() -> None:
    _, tied, _ = init(tiny(tie_embeddings=True))
    _, untied, _ = init(tiny(tie_embeddings=False))
    assert "lm_head" not in tied
    assert untied["lm_head"]["kernel"].shape == (32, 64)
    # The unembedding counts as an embedding matrix: untying leaves non-embedding N unchanged.
    assert count_params(tied)["non_embedding"] == count_params(untied)["non_embedding"]
    assert count_params(untied)["total"] - count_params(tied)["total"] == 32 * 64


def test_dropout_only_when_not_deterministic() -> None:
    model, params, tokens = init(tiny(dropout=0.5))
    base = apply(model, params, tokens)
    same = apply(model, params, tokens, rng=jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(base), np.asarray(same))
    d1 = apply(model, params, tokens, deterministic=False, rng=jax.random.key(1))
    d2 = apply(model, params, tokens, deterministic=False, rng=jax.random.key(2))
    assert not np.allclose(np.asarray(d1), np.asarray(base))
    assert not np.allclose(np.asarray(d1), np.asarray(d2))


def test_jit_and_no_jit_give_the_same_logits() -> None:
    model, params, tokens = init(tiny(positions="rotary", activation="swiglu"))
    eager = model.apply({"params": params}, tokens)
    jitted = jax.jit(model.apply)({"params": params}, tokens)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits() -> None:
    cfg = tiny(dtype="bfloat16")
    model, params, tokens = init(cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    logits = apply(model, params, tokens)
    assert logits.dtype == jnp.float32
    ref = apply(build_model(tiny()), params, tokens)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), atol=5e-2)


def test_parameter_paths_make_the_decay_mask_easy() -> None:
    _, params, _ = init(tiny(tie_embeddings=False))
    paths = ["/".join(k.key for k in kp) for kp, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert "token_embed/embedding" in paths and "pos_embed/embedding" in paths
    assert "lm_head/kernel" in paths and "norm_f/scale" in paths
    for p in paths:
        last = p.split("/")[-1]
        assert last in {"kernel", "bias", "scale", "embedding"}, p
        if last == "scale":
            assert "norm" in p


def test_initialisation_scales() -> None:
    _, params, _ = init(tiny(n_layer=2, d_model=64, vocab_size=256))
    qkv = np.asarray(params["block_0"]["attn"]["qkv"]["kernel"])
    proj = np.asarray(params["block_0"]["attn"]["proj"]["kernel"])
    assert abs(qkv.std() - 0.02) < 0.002
    assert abs(proj.std() - 0.02 / np.sqrt(4)) < 0.001
    assert np.all(np.asarray(params["block_0"]["mlp"]["up"]["bias"]) == 0)


def test_sequences_shorter_than_the_table_and_too_long() -> None:
    model, params, tokens = init(tiny())
    assert apply(model, params, tokens[:, :5]).shape == (B, 5, 64)
    with pytest.raises(ValueError, match="max_seq_len"):
        apply(model, params, jnp.zeros((1, T + 1), jnp.int32))


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="allowed: gpt"):
        build_model(ModelConfig.model_construct(**{**tiny().model_dump(), "family": "rnn"}))
    assert isinstance(build_model(tiny()), nn.Module)


def _vjp_pair(f, ref, args):
    """Outputs and VJPs (for one random cotangent) of a hand-written VJP and its reference."""
    out, vjp = jax.vjp(f, *args)
    ref_out, ref_vjp = jax.vjp(ref, *args)
    ct = jax.random.normal(jax.random.key(9), out.shape, out.dtype)
    return out, ref_out, vjp(ct), ref_vjp(ct)


def test_hand_written_vjps_match_autodiff() -> None:
    keys = jax.random.split(jax.random.key(0), 3)
    x = 3.0 * jax.random.normal(keys[0], (64, 16))
    out, ref, g, ref_g = _vjp_pair(gelu_tanh, lambda x: jax.nn.gelu(x, approximate=True), (x,))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g[0], ref_g[0], rtol=1e-4, atol=1e-5)

    def ln_ref(x, s, b):
        m = x.mean(-1, keepdims=True)
        return (x - m) / jnp.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-5) * s + b

    args = (x, 1 + jax.random.normal(keys[1], (16,)), jax.random.normal(keys[2], (16,)))
    out, ref, g, ref_g = _vjp_pair(layer_norm, ln_ref, args)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, ref_g, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_attention_dropout_path_stays_causal_and_active() -> None:
    """With dropout on, attention probabilities are dropped too, and the mask stays causal."""
    model, params, tokens = init(tiny(dropout=0.3))
    key = jax.random.key(5)
    changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % 32)
    a = apply(model, params, tokens, deterministic=False, rng=key)
    b = apply(model, params, changed, deterministic=False, rng=key)
    np.testing.assert_allclose(np.asarray(a[:, :-1]), np.asarray(b[:, :-1]), rtol=1e-6, atol=1e-6)
    # The probabilities' dropout draws from the same "dropout" stream: a different key differs.
    c = apply(model, params, tokens, deterministic=False, rng=jax.random.key(6))
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_activations_match_their_closed_forms() -> None:
    """Each activation name gives its own function (silu mapped to relu would pass a test
    that only trains or checks finiteness)."""
    from scalinglab.models.layers import activation_fn

    x = np.linspace(-4.0, 4.0, 81)
    sig = 1 / (1 + np.exp(-x))
    want = {
        "sigmoid": sig,
        "tanh": np.tanh(x),
        "relu": np.maximum(x, 0),
        "leaky_relu": np.where(x > 0, x, 0.01 * x),
        "elu": np.where(x > 0, x, np.expm1(x)),
        "gelu": 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
        "silu": x * sig,
        "swiglu": x * sig,  # the gate's function; the product with `up` is Mlp's
    }
    for name, ref in want.items():
        got = np.asarray(activation_fn(name)(jnp.asarray(x, jnp.float32)))
        np.testing.assert_allclose(got, ref, atol=2e-6, err_msg=name)
