"""Dense, gated and densely connected layers, with the initialisations of the papers we follow: Liang et al.'s
(Glorot-uniform weights, N(0, 0.001) biases), Kim & Suh's (He-normal weights) and PyTorch's default (RecVAE).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


def _torch_bias(fan_in: int):
    """PyTorch nn.Linear's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def initializers(init: str, fan_in: int) -> tuple[Callable, Callable]:
    """(kernel initializer, bias initializer) of a [fan_in, out] layer for `init`.

    glorot: Glorot-uniform kernel, truncated N(0, 0.001) bias (Liang et al.'s TensorFlow code).
    he: N(0, 2 / fan_in) kernel (Kim & Suh's `he_init`), PyTorch's default bias.
    torch: PyTorch's nn.Linear default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernel and bias (RecVAE).
    """
    if init == "glorot":
        return nn.initializers.xavier_uniform(), nn.initializers.truncated_normal(stddev=0.001)
    if init == "he":
        return nn.initializers.normal(stddev=math.sqrt(2.0 / max(fan_in, 1))), _torch_bias(fan_in)
    if init == "torch":
        return _torch_bias(fan_in), _torch_bias(fan_in)
    raise ValueError(f"unknown init {init!r}; expected glorot, he or torch")


def dense(features: int, name: str | None = None, dtype: str = "float32", init: str = "glorot") -> "Linear":
    """A dense layer with the project's initialisation (see `Linear`)."""
    return Linear(features, dtype, init, name=name)


class Projected(NamedTuple):
    """An input already multiplied by the kernels of the layer it enters (the sparse first layer computes these
    outside the model): `linear` = x @ W, `gate` = x @ V for a gated layer, else None. The layer adds its biases."""

    linear: jax.Array
    gate: jax.Array | None = None


class Linear(nn.Module):
    """y = x W + b with the parameters of `nn.Dense` (`kernel` [in, out], `bias` [out], float32); with
    `projected=True` the input is x W already and only the bias is added."""

    features: int
    dtype: str = "float32"
    init: str = "glorot"

    @nn.compact
    def __call__(self, x: jax.Array, projected: bool = False) -> jax.Array:
        if projected:
            if self.is_initializing() and self.init != "glorot":
                raise ValueError("initialise the model with a dense input: the bias of this init depends on fan_in")
            _, bias_init = initializers(self.init, 1)
            bias = self.param("bias", bias_init, (self.features,), jnp.float32)
            return x + bias.reshape((1,) * (x.ndim - 1) + (-1,))
        kernel_init, bias_init = initializers(self.init, x.shape[-1])
        # Kernel before bias, as nn.Dense: parameter keys follow declaration order, so initial values match it.
        kernel = self.param("kernel", kernel_init, (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", bias_init, (self.features,), jnp.float32)
        if self.dtype == "bfloat16":
            # Mixed precision: the matmul in bfloat16; parameters stay float32. Otherwise no cast at all, so a
            # float64 run (parameters and inputs in float64) stays float64.
            x, kernel, bias = (a.astype(jnp.bfloat16) for a in (x, kernel, bias))
        y = jnp.dot(x, kernel)
        return y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


class SeparateHeads(nn.Module):
    """A Gaussian head as two layers, mean = W x + b and log-variance = V x + c, returned side by side [mean, logvar]
    as one [2 * features] layer would return them. Kim & Suh's code has separate layers, which matters for
    per-tensor optimizers (AdamNormGrad normalises each layer's gradient on its own)."""

    features: int
    dtype: str = "float32"
    init: str = "glorot"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mean = Linear(self.features, self.dtype, self.init, name="mean")(x)
        logvar = Linear(self.features, self.dtype, self.init, name="logvar")(x)
        return jnp.concatenate([mean, logvar], axis=-1)


def identity(x: jax.Array) -> jax.Array:
    return x


class Hidden(nn.Module):
    """One hidden layer: tanh(W x + b), or with `gated` the gated linear unit (W x + b) * sigmoid(V x + c).

    With `extra` inputs (other levels, side features), each gets its own projection added before the nonlinearity,
    which equals one matrix acting on the concatenation. An input given as `Projected` skips its matmuls.
    """

    features: int
    gated: bool = False
    activation: Callable[[jax.Array], jax.Array] = jnp.tanh
    dtype: str = "float32"
    init: str = "glorot"

    @nn.compact
    def __call__(self, *inputs: jax.Array | Projected | None) -> jax.Array:
        # Parameter names follow the argument position, so an absent input never renames the others.
        pre, gate = [], []
        for i, x in enumerate(inputs):
            if x is None:
                continue
            projected = isinstance(x, Projected)
            linear = Linear(self.features, self.dtype, self.init, name=f"linear_{i}")
            pre.append(linear(x.linear if projected else x, projected))
            if self.gated:
                gate_layer = Linear(self.features, self.dtype, self.init, name=f"gate_{i}")
                gate.append(gate_layer(x.gate if projected else x, projected))
        if not self.gated:
            return self.activation(sum(pre))
        return sum(pre) * jax.nn.sigmoid(sum(gate))


class Stack(nn.Module):
    """`n_layers` hidden layers from one or more inputs to one [features] output.

    One input, or one layer: the first layer takes every input (and `side`), the others follow one after another.
    Several inputs and two or more layers (Kim & Suh's q(z1|x, z2) and p(x|z1, z2)): each input is embedded by a
    layer of its own, the embeddings are concatenated and pass `n_layers - 1` joint layers. The first layer of a
    stack is the submodule `layer_0`; with a single layer the stack is exactly a `Hidden` of its name.
    """

    features: int
    n_layers: int
    gated: bool = False
    dtype: str = "float32"
    init: str = "glorot"

    @nn.compact
    def __call__(self, inputs: tuple[jax.Array | Projected, ...], side: jax.Array | None = None) -> jax.Array:
        layer = lambda name: Hidden(self.features, self.gated, dtype=self.dtype, init=self.init, name=name)  # noqa: E731
        if len(inputs) > 1 and self.n_layers >= 2:
            embedded = [layer(f"embed_{i}")(x) for i, x in enumerate(inputs)]
            h = layer("layer_0")(jnp.concatenate(embedded, axis=-1), side)
            first_joint = 1
            remaining = self.n_layers - 1
        else:
            h = layer("layer_0")(*inputs, side)
            first_joint = 1
            remaining = self.n_layers
        for k in range(first_joint, remaining):
            h = layer(f"layer_{k}")(h)
        return h


class DenseNetStack(nn.Module):
    """RecVAE's encoder body: h_1 = LN(swish(W_1 x)), h_k = LN(swish(W_k h_{k-1} + h_1 + ... + h_{k-1})), each
    layer normalised (epsilon 0.1, as Shenbin et al.'s code). The first layer is `layer_0` (a `Hidden` with no
    nonlinearity, so the sparse input path can feed it projections); side features enter it as a second input."""

    features: int
    n_layers: int
    dtype: str = "float32"
    init: str = "torch"

    @nn.compact
    def __call__(self, x: jax.Array | Projected, side: jax.Array | None = None) -> jax.Array:
        earlier: list[jax.Array] = []
        h = None
        for k in range(self.n_layers):
            linear = Hidden(self.features, activation=identity, dtype=self.dtype, init=self.init, name=f"layer_{k}")
            pre = linear(x, side) if k == 0 else linear(h) + sum(earlier)
            pre = pre.astype(jnp.promote_types(pre.dtype, jnp.float32))
            h = nn.LayerNorm(epsilon=0.1, use_fast_variance=False, name=f"norm_{k}")(jax.nn.swish(pre))
            earlier.append(h)
        return h
