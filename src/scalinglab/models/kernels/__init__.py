"""Hand-written VJPs, fenced off from the model code.

Model modules call these like any jnp function and never choose between variants:
`attention` is the one entry point for scaled dot-product attention (it picks its fast or
general path itself), and `gelu_tanh` and `layer_norm` are drop-in functions. Why each one
is written the way it is, and what it gained, is measured in benchmarks/README.md
("Train step").
"""

from scalinglab.models.kernels.attention import attention
from scalinglab.models.kernels.pointwise import gelu_tanh, layer_norm

__all__ = ["attention", "gelu_tanh", "layer_norm"]
