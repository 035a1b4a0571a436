"""Dense and gated layers with the initialisation Liang et al. used (Glorot-uniform weights, N(0, 0.001) biases)."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

weight_init = nn.initializers.xavier_uniform()
bias_init = nn.initializers.truncated_normal(stddev=0.001)


def dense(features: int, name: str | None = None, dtype: str = "float32") -> nn.Dense:
    """A Dense layer with the project's initialisation; float32 parameters, matmuls in `dtype`."""
    return nn.Dense(
        features, kernel_init=weight_init, bias_init=bias_init, name=name, dtype=jnp.dtype(dtype),
        param_dtype=jnp.float32,
    )


class Hidden(nn.Module):
    """One hidden layer: tanh(W x + b), or with `gated` the gated linear unit (W x + b) * sigmoid(V x + c).

    With `extra` inputs (other levels, side features), each gets its own projection added before the nonlinearity,
    which equals one matrix acting on the concatenation.
    """

    features: int
    gated: bool = False
    activation: Callable[[jax.Array], jax.Array] = jnp.tanh
    dtype: str = "float32"

    @nn.compact
    def __call__(self, *inputs: jax.Array | None) -> jax.Array:
        # Parameter names follow the argument position, so an absent input never renames the others.
        present = [(i, x) for i, x in enumerate(inputs) if x is not None]
        pre = sum(dense(self.features, name=f"linear_{i}", dtype=self.dtype)(x) for i, x in present)
        if not self.gated:
            return self.activation(pre)
        gate = sum(dense(self.features, name=f"gate_{i}", dtype=self.dtype)(x) for i, x in present)
        return pre * jax.nn.sigmoid(gate)
