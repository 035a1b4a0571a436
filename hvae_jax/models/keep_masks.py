"""Dropout's keep masks, drawn from packed random bits (`draw`).

`jax.random.bernoulli` spends one 32-bit threefry word on every element; on a CPU that is as slow as the first
layer's matmul (a [500, 3,706] mask: 12-17 ms, the [500, 3,706] x [3,706, 600] product: 16 ms). When the keep
probability is a multiple of 2^-m with m <= MAX_PLANES (0.5 is one bit, 0.25 and 0.75 two), a mask needs only m
random bits per element: m planes of packed words, read as an m-bit integer U per element, kept where
U < keep_prob 2^m. That is exactly Bernoulli(keep_prob) for independent fair bits, from 1/32 of the words per plane
(the 0.5 mask above: under a millisecond). Other probabilities fall back to `jax.random.bernoulli`.
"""

from __future__ import annotations

import fractions
import math

import jax
import jax.numpy as jnp

MAX_PLANES = 8  # keep probabilities on a grid of 1/256 (a quarter of bernoulli's words); finer ones fall back

WORD_BITS = 32


def bit_planes(keep_prob: float) -> int | None:
    """The m of keep_prob = c / 2^m (c odd, 1 <= m <= MAX_PLANES), or None where no such m exists."""
    ratio = fractions.Fraction(keep_prob)
    m = ratio.denominator.bit_length() - 1
    if ratio.denominator != 1 << m or not 1 <= m <= MAX_PLANES:
        return None
    return m


def draw(key: jax.Array, keep_prob: float, shape: tuple[int, ...]) -> jax.Array:
    """A bool mask of `shape`, each element True with probability `keep_prob` (a Python float), independently."""
    if keep_prob <= 0.0 or keep_prob >= 1.0:
        return jnp.full(shape, keep_prob >= 1.0)
    m = bit_planes(keep_prob)
    if m is None:
        return jax.random.bernoulli(key, keep_prob, shape)
    size = math.prod(shape)
    words = jax.random.bits(key, (m, -(-size // WORD_BITS)), jnp.uint32)
    # Bit b of word w is element 32 w + b; plane j contributes bit j of the element's integer.
    bits = (words[:, :, None] >> jnp.arange(WORD_BITS, dtype=jnp.uint32)[None, None, :]) & 1
    bits = bits.reshape(m, -1)[:, :size]
    value = jnp.sum(bits << jnp.arange(m, dtype=jnp.uint32)[:, None], axis=0)
    return (value < int(keep_prob * (1 << m))).reshape(shape)
