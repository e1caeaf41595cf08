"""The feed-forward block and the pre-LayerNorm transformer block, shared by every family.

`Block` is the GPT's decoder block (`causal=True`), BERT's encoder block and the T5
encoder's (with the stack's relative-position `bias`); T5's decoder block adds
cross-attention around the same `Attention` and `Mlp` (`models/t5.py`).

Dropout, one rate for the places the model zoo names: on the attention probabilities
(`Attention`), on each sub-layer's output before it joins the residual stream (here), and on
the MLP's hidden activation (`mlp_dropout`, the encoders'; the GPT has none there).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from scalinglab.models.attention import Attention
from scalinglab.models.layers import (
    GATED_ACTIVATIONS,
    INIT_STD,
    LayerNorm,
    activation_fn,
    dense,
)

Array = jax.Array
Dtype = jnp.dtype


class Mlp(nn.Module):
    """Feed-forward block on (B, T, D): up projection, activation, dropout on the hidden
    activation, down projection.

    A gated activation (swiglu) uses two input projections, `gate` and `up`, and computes
    silu(gate) * up; the others use one, `up`. Residual dropout is the caller's.
    """

    d_ff: int
    activation: str = "gelu"
    dropout: float = 0.0
    out_std: float = INIT_STD
    in_std: float = INIT_STD  # init scale of the input projections (up, gate)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: Array, *, deterministic: bool = True) -> Array:
        act = activation_fn(self.activation)
        up_BxTxF = dense(x_BxTxD, self.d_ff, name="up", dtype=self.dtype, std=self.in_std)
        if self.activation in GATED_ACTIVATIONS:
            gate_BxTxF = dense(x_BxTxD, self.d_ff, name="gate", dtype=self.dtype, std=self.in_std)
            h_BxTxF = act(gate_BxTxF) * up_BxTxF
        else:
            h_BxTxF = act(up_BxTxF)
        h_BxTxF = nn.Dropout(self.dropout)(h_BxTxF, deterministic=deterministic)
        d = x_BxTxD.shape[-1]
        return dense(h_BxTxF, d, name="down", dtype=self.dtype, std=self.out_std)


class Block(nn.Module):
    """Pre-LayerNorm block: x + drop(attn(norm_1(x))), then x + drop(mlp(norm_2(x))).

    `bias` (additive float32) and `mask` (bool, True where allowed), each broadcastable to
    (B, H, T, T), go to the attention; `causal` hides later positions.
    """

    n_head: int
    d_ff: int
    activation: str = "gelu"
    causal: bool = False
    rotary: bool = False
    dropout: float = 0.0
    mlp_dropout: float = 0.0
    out_std: float = INIT_STD
    in_std: float = INIT_STD  # init scale of the input projections (muP shrinks it)
    qk_gain: float = 1.0  # extra factor on the queries (muP's 1/Dh attention)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x_BxTxD: Array,
        *,
        bias: Array | None = None,
        mask: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        drop = nn.Dropout(self.dropout)
        h_BxTxD = LayerNorm(dtype=self.dtype, name="norm_1")(x_BxTxD)
        h_BxTxD = Attention(
            n_head=self.n_head,
            causal=self.causal,
            rotary=self.rotary,
            dropout=self.dropout,
            out_std=self.out_std,
            in_std=self.in_std,
            qk_gain=self.qk_gain,
            dtype=self.dtype,
            name="attn",
        )(h_BxTxD, bias=bias, mask=mask, deterministic=deterministic)
        x_BxTxD = x_BxTxD + drop(h_BxTxD, deterministic=deterministic)
        h_BxTxD = LayerNorm(dtype=self.dtype, name="norm_2")(x_BxTxD)
        h_BxTxD = Mlp(
            d_ff=self.d_ff,
            activation=self.activation,
            dropout=self.mlp_dropout,
            out_std=self.out_std,
            in_std=self.in_std,
            dtype=self.dtype,
            name="mlp",
        )(h_BxTxD, deterministic=deterministic)
        return x_BxTxD + drop(h_BxTxD, deterministic=deterministic)
