"""Building blocks shared by the model families: activations, initialisation, Dense on rows,
LayerNorm, rotary positions.

Dtype policy: parameters are float32 (`param_dtype`), matmuls run in the compute dtype
(`dtype`), LayerNorm statistics and the softmax run in float32. The hand-written VJPs
(`gelu_tanh`, `layer_norm`, attention) live in `models.kernels`.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from scalinglab.models.kernels import gelu_tanh, layer_norm

Array = jax.Array
Dtype = jnp.dtype

INIT_STD = 0.02  # GPT-2 initialisation scale

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    # The tanh approximation (GPT-2's); PyTorch's equivalent is GELU(approximate="tanh").
    "gelu": lambda x: gelu_tanh(x),
    "silu": jax.nn.silu,
    # swiglu's elementwise part; the gating itself lives in `Mlp` (two input projections).
    "swiglu": jax.nn.silu,
}
GATED_ACTIVATIONS = frozenset({"swiglu"})


def activation_fn(name: str) -> Callable[[Array], Array]:
    """The elementwise function for an activation name (swiglu -> silu, applied to the gate)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; allowed: {', '.join(_ACTIVATIONS)}"
        ) from None


def dense_init(std: float = INIT_STD) -> nn.initializers.Initializer:
    """Normal(0, std) kernels, as in GPT-2."""
    return nn.initializers.normal(stddev=std)


def on_rows(f: Callable[[Array], Array], x: Array) -> Array:
    """f applied to x viewed as rows (N, D), N the product of the leading axes, and reshaped
    back: (B, T, D) -> (B, T, F).

    Every matmul with a weight goes through here. On XLA's CPU backend the weight gradient of
    a Dense applied to a 3-D input contracts two axes and ran about 2.5x slower than the same
    Dense on the (B*T, D) rows; the reshapes themselves are free (bitcasts). So the model code
    keeps its natural (B, T, D) activations and only this helper knows about the layout.
    """
    y = f(x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


def lookup(embed: nn.Embed, tokens: Array) -> Array:
    """`embed(tokens)` looked up with the ids flattened to one axis, (B, T) -> (B, T, D): the
    table's gradient (a scatter) then takes the (B*T, D) rows as they are, where (B, T)
    ids made XLA's CPU backend copy them first."""
    return embed(tokens.reshape(-1)).reshape(*tokens.shape, -1)


def dense(
    x: Array,
    features: int,
    *,
    name: str,
    dtype: Dtype,
    std: float = INIT_STD,
    use_bias: bool = True,
) -> Array:
    """A Dense layer `name` (params `kernel`, `bias`; Normal(0, std) kernel, float32 params)
    over the last axis of x, applied on rows (`on_rows`). Call from a compact method."""
    layer = nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=dense_init(std),
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )
    return on_rows(layer, x)


def untied_head(x: Array, vocab_size: int, dtype: Dtype) -> Array:
    """Logits from the untied unembedding `lm_head` (no bias, float32 kernel)."""
    return dense(x, vocab_size, name="lm_head", dtype=dtype, use_bias=False)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with statistics in float32; params `scale` and `bias`."""

    dtype: Dtype = jnp.float32
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)

        def norm(rows_NxD: Array) -> Array:
            return layer_norm(rows_NxD.astype(jnp.float32), scale, bias, self.eps)

        return on_rows(norm, x).astype(self.dtype)


def rotary_tables(seq_len: int, d_head: int, base: float = 10000.0) -> tuple[Array, Array]:
    """cos and sin tables of shape (T, Dh/2) for rotary position embeddings (float32)."""
    inv_freq = 1.0 / (base ** (jnp.arange(0, d_head, 2, dtype=jnp.float32) / d_head))
    angles_TxF = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(angles_TxF), jnp.sin(angles_TxF)


def apply_rotary(x_BxHxTxDh: Array, cos_TxF: Array, sin_TxF: Array) -> Array:
    """Rotate pairs (first half, second half) of each head's features by position (GPT-NeoX)."""
    half = x_BxHxTxDh.shape[-1] // 2
    x1, x2 = x_BxHxTxDh[..., :half], x_BxHxTxDh[..., half:]
    cos, sin = cos_TxF.astype(x_BxHxTxDh.dtype), sin_TxF.astype(x_BxHxTxDh.dtype)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
