"""Model FLOPs by counting matrix multiplications, and the machine's sustained float32 matmul rate measured in JAX,
for the roofline column of the throughput benchmark.

A dense layer [in -> out] costs 2 * in * out FLOPs per user forward. Backward costs the weight gradient
(2 * in * out) plus the input gradient (2 * in * out) except where the input needs no gradient (the first layer,
whose input is data), so a training step is about 3x the forward. Element-wise work, the softmax and top-K are left
out: on these models they are a few percent of the matmuls.
"""

from __future__ import annotations

import statistics
import time
from typing import NamedTuple

from hvae_jax.configs import ModelConfig


class MatmulLayer(NamedTuple):
    """One dense projection: input width, output width, whether its input needs a gradient, and whether it runs
    once per step (the VampPrior's pseudo-input pass) rather than once per user."""

    in_features: int
    out_features: int
    input_needs_grad: bool = True
    per_step: bool = False


def matmul_layers(config: ModelConfig, n_items: int, n_side: int = 0, *, training: bool = True) -> list[MatmulLayer]:
    """Every projection one training (or evaluation) forward pass of `config` runs."""
    hidden_width = config.latents[0] if config.kind == "dae" else config.hidden
    gate_factor = 2 if config.gated else 1

    def hidden(inputs: list[tuple[int, bool]], per_step: bool = False) -> list[MatmulLayer]:
        widths = inputs + ([(n_side, False)] if n_side and not per_step else [])
        return [MatmulLayer(width, hidden_width, grad, per_step) for width, grad in widths] * gate_factor

    if config.kind == "dae":
        return hidden([(n_items, False)]) + [MatmulLayer(hidden_width, n_items)]
    latents, h = config.latents, config.hidden
    layers = hidden([(n_items, False)])
    if config.inference == "ladder":
        for _ in latents[1:]:
            layers += hidden([(h, True)])
    else:
        for level in range(len(latents) - 1):
            layers += hidden([(h, True), (latents[level + 1], True)])
    layers += [MatmulLayer(h, 2 * d) for d in latents]
    for level in range(len(latents) - 1):
        layers += hidden([(latents[level + 1], True)]) + [MatmulLayer(h, 2 * latents[level])]
    layers += hidden([(d, True) for d in latents]) + [MatmulLayer(h, n_items)]
    if config.prior == "vamp" and training:
        k = config.n_pseudo_inputs  # K pseudo-inputs through the encoder's bottom-up path, once per step
        pseudo = hidden([(n_items, True)], per_step=True)
        if config.inference == "ladder":
            for _ in latents[1:]:
                pseudo += hidden([(h, True)], per_step=True)
        pseudo += [MatmulLayer(h, 2 * latents[-1], True, True)]
        layers += [layer._replace(in_features=layer.in_features * k) for layer in pseudo]
    return layers


def flops_per_step(config: ModelConfig, n_items: int, batch_size: int, *, training: bool, n_side: int = 0) -> float:
    """Matmul FLOPs of one training update (forward and backward) or one evaluation batch (forward only)."""
    total = 0.0
    for layer in matmul_layers(config, n_items, n_side, training=training):
        forward = 2.0 * layer.in_features * layer.out_features
        cost = forward
        if training:
            cost += forward + (forward if layer.input_needs_grad else 0.0)
        total += cost * (1 if layer.per_step else batch_size)
    return total


def measure_matmul_flops_per_second(size: int, repeats: int = 5, precision: str = "float32") -> float:
    """Median FLOP/s of a [size, size] x [size, size] float32 matmul under jit, after one warm-up call."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), 2)
    a = jax.random.normal(keys[0], (size, size), jnp.float32)
    b = jax.random.normal(keys[1], (size, size), jnp.float32)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, precision=precision))
    matmul(a, b).block_until_ready()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        seconds.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(seconds)
