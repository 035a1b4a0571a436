"""Dense and gated layers with the initialisation Liang et al. used (Glorot-uniform weights, N(0, 0.001) biases)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

weight_init = nn.initializers.xavier_uniform()
bias_init = nn.initializers.truncated_normal(stddev=0.001)


def dense(features: int, name: str | None = None, dtype: str = "float32") -> "Linear":
    """A dense layer with the project's initialisation (see `Linear`)."""
    return Linear(features, dtype, name=name)


class Projected(NamedTuple):
    """An input already multiplied by the kernels of the layer it enters (the sparse first layer computes these
    outside the model): `linear` = x @ W, `gate` = x @ V for a gated layer, else None. The layer adds its biases."""

    linear: jax.Array
    gate: jax.Array | None = None


class Linear(nn.Module):
    """y = x W + b with the parameters of `nn.Dense` (`kernel` [in, out], `bias` [out], Glorot-uniform and
    N(0, 0.001) initialised, float32); with `projected=True` the input is x W already and only the bias is added."""

    features: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, projected: bool = False) -> jax.Array:
        if projected:
            bias = self.param("bias", bias_init, (self.features,), jnp.float32)
            return x + bias.reshape((1,) * (x.ndim - 1) + (-1,))
        # Kernel before bias, as nn.Dense: parameter keys follow declaration order, so initial values match it.
        kernel = self.param("kernel", weight_init, (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", bias_init, (self.features,), jnp.float32)
        if self.dtype == "bfloat16":
            # Mixed precision: the matmul in bfloat16; parameters stay float32. Otherwise no cast at all, so a
            # float64 run (parameters and inputs in float64) stays float64.
            x, kernel, bias = (a.astype(jnp.bfloat16) for a in (x, kernel, bias))
        y = jnp.dot(x, kernel)
        return y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


class Hidden(nn.Module):
    """One hidden layer: tanh(W x + b), or with `gated` the gated linear unit (W x + b) * sigmoid(V x + c).

    With `extra` inputs (other levels, side features), each gets its own projection added before the nonlinearity,
    which equals one matrix acting on the concatenation. An input given as `Projected` skips its matmuls.
    """

    features: int
    gated: bool = False
    activation: Callable[[jax.Array], jax.Array] = jnp.tanh
    dtype: str = "float32"

    @nn.compact
    def __call__(self, *inputs: jax.Array | Projected | None) -> jax.Array:
        # Parameter names follow the argument position, so an absent input never renames the others.
        pre, gate = [], []
        for i, x in enumerate(inputs):
            if x is None:
                continue
            projected = isinstance(x, Projected)
            pre.append(Linear(self.features, self.dtype, name=f"linear_{i}")(x.linear if projected else x, projected))
            if self.gated:
                gate.append(Linear(self.features, self.dtype, name=f"gate_{i}")(x.gate if projected else x, projected))
        if not self.gated:
            return self.activation(sum(pre))
        return sum(pre) * jax.nn.sigmoid(sum(gate))
