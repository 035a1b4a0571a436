"""Likelihoods p(x | z) of one user's interactions given the decoder's logits, registered by name.

Each likelihood gives the log-density two ways: `log_prob(logits, x)` for a dense row, and, for binary x given by
its positives S, `from_positives(positive_sum, n_positives, row_statistic)` with positive_sum = sum_{i in S} l_i and
one statistic of the whole logit row (`row_statistic`), so the sparse and item-sharded input paths never build a
dense x. For binary x the two agree:

  multinomial: sum_i x_i log softmax(l)_i                    = sum_S l_i - |S| logsumexp(l)
  bernoulli:   sum_i x_i log s(l_i) + (1 - x_i) log s(-l_i)  = sum_S l_i + sum_i log s(-l_i)
  gaussian:    -1/2 sum_i (x_i - l_i)^2                      = sum_S l_i - |S|/2 - 1/2 sum_i l_i^2

(constants that do not depend on the parameters dropped: the multinomial coefficient, log 2 pi).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def _float32_or_wider(logits: jax.Array) -> jax.Array:
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))  # bfloat16 -> float32; float64 stays


class Likelihood:
    """The protocol. `row_reduction` says how `row_statistic` combines item blocks ("logsumexp" or "sum"), which the
    item-sharded path needs to compute it chunk by chunk across devices."""

    row_reduction: str = "sum"

    def log_prob(self, logits: jax.Array, x: jax.Array) -> jax.Array:
        """log p(x | logits) for ONE user: logits, x: [n_items]."""
        raise NotImplementedError

    def row_statistic(self, logits: jax.Array) -> jax.Array:
        """The statistic of the logits that `from_positives` needs, over the last axis."""
        raise NotImplementedError

    def from_positives(self, positive_sum: jax.Array, n_positives: jax.Array, row_statistic: jax.Array) -> jax.Array:
        """log p(x | logits) for binary x given by its positives."""
        raise NotImplementedError


class Multinomial(Likelihood):
    """Liang et al.'s multinomial likelihood."""

    row_reduction = "logsumexp"

    def log_prob(self, logits, x):
        return jnp.sum(jax.nn.log_softmax(_float32_or_wider(logits)) * x)

    def row_statistic(self, logits):
        return jax.nn.logsumexp(_float32_or_wider(logits), axis=-1)

    def from_positives(self, positive_sum, n_positives, row_statistic):
        return positive_sum - n_positives * row_statistic


class Bernoulli(Likelihood):
    """Independent Bernoulli per item (Kim & Suh's `--input_type binary`)."""

    def log_prob(self, logits, x):
        logits = _float32_or_wider(logits)
        return jnp.sum(x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits))

    def row_statistic(self, logits):
        return jnp.sum(jax.nn.log_sigmoid(-_float32_or_wider(logits)), axis=-1)

    def from_positives(self, positive_sum, n_positives, row_statistic):
        return positive_sum + row_statistic


class Gaussian(Likelihood):
    """Unit-variance Gaussian per item."""

    def log_prob(self, logits, x):
        return -0.5 * jnp.sum(jnp.square(x - _float32_or_wider(logits)))

    def row_statistic(self, logits):
        return -0.5 * jnp.sum(jnp.square(_float32_or_wider(logits)), axis=-1)

    def from_positives(self, positive_sum, n_positives, row_statistic):
        return positive_sum - 0.5 * n_positives + row_statistic


LIKELIHOODS: dict[str, Callable[[], Likelihood]] = {
    "multinomial": Multinomial,
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
}


def register_likelihood(name: str, factory: Callable[[], Likelihood]) -> None:
    """Makes `factory() -> Likelihood` reachable as `likelihood=name` in model configs and on the command line."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a likelihood's name must be a non-empty string, got {name!r}")
    LIKELIHOODS[name] = factory


def build_likelihood(name: str) -> Likelihood:
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; registered: {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name]()
