"""Diagonal-Gaussian maths for one user: log-densities, KL divergences and the ladder's precision-weighted merge."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)


def log_normal(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; mean, exp(logvar)) summed over the last axis.

    log N = -1/2 sum_d [log 2 pi + logvar_d + (z_d - mean_d)^2 / exp(logvar_d)]
    """
    return -0.5 * jnp.sum(_LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar), axis=-1)


def log_normal_components(z: jax.Array, means: jax.Array, logvars: jax.Array) -> jax.Array:
    """[K] log N(z; means_k, exp(logvars_k)) for one point z: [d] against K Gaussians means, logvars: [K, d].

    Expanded as sum_d (z - m)^2 / v = (z^2) . (1/v) - 2 z . (m/v) + sum_d m^2 / v, so that under `vmap` over users
    the work is two [batch, d] x [d, K] matmuls instead of a [batch, K, d] broadcast (VampPrior's hot spot). The
    expansion is computed at full matmul precision.
    """
    precision = jnp.exp(-logvars)
    highest = jax.lax.Precision.HIGHEST
    squared_distance = (
        jnp.dot(precision, jnp.square(z), precision=highest)
        - 2.0 * jnp.dot(means * precision, z, precision=highest)
        + jnp.sum(jnp.square(means) * precision, axis=-1)
    )
    return -0.5 * (z.shape[-1] * _LOG_2PI + jnp.sum(logvars, axis=-1) + squared_distance)


def kl_normal(mean_q: jax.Array, logvar_q: jax.Array, mean_p: jax.Array, logvar_p: jax.Array) -> jax.Array:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) summed over the last axis.

    KL = 1/2 sum_d [logvar_p - logvar_q + (var_q + (mean_q - mean_p)^2) / var_p - 1]
    """
    return 0.5 * jnp.sum(
        logvar_p - logvar_q + (jnp.exp(logvar_q) + jnp.square(mean_q - mean_p)) * jnp.exp(-logvar_p) - 1.0, axis=-1
    )


def kl_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) = 1/2 sum_d [-logvar + exp(logvar) + mean^2 - 1] (Liang et al.'s form)."""
    return 0.5 * jnp.sum(-logvar + jnp.exp(logvar) + jnp.square(mean) - 1.0, axis=-1)


def precision_weighted(
    mean_a: jax.Array, logvar_a: jax.Array, mean_b: jax.Array, logvar_b: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Product of two Gaussians, renormalised: the Ladder VAE's merge of a bottom-up estimate and a top-down prior.

    var = 1 / (1/var_a + 1/var_b),  mean = var * (mean_a / var_a + mean_b / var_b)
    Computed in log space (logaddexp) so large or tiny variances stay finite.

    Returns:
      (mean, logvar) of the merged Gaussian.
    """
    logvar = -jnp.logaddexp(-logvar_a, -logvar_b)
    mean = jnp.exp(logvar - logvar_a) * mean_a + jnp.exp(logvar - logvar_b) * mean_b
    return mean, logvar


def reparameterize(mean: jax.Array, logvar: jax.Array, epsilon: jax.Array | None) -> jax.Array:
    """z = mean + exp(logvar / 2) * epsilon; with epsilon None (evaluation) z = mean, as Liang et al."""
    if epsilon is None:
        return mean
    return mean + jnp.exp(0.5 * logvar) * epsilon
