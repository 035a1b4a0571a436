"""Tests of hvae_jax.models.gaussian against scipy, float64 numpy closed forms and Monte Carlo estimates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from hvae_jax.models import gaussian


def random_gaussians(seed: int, shape: tuple[int, ...]):
    """(mean, logvar) pairs as float32 numpy arrays, log-variances spread over [-3, 2]."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0.0, 1.5, shape).astype(np.float32)
    logvar = rng.uniform(-3.0, 2.0, shape).astype(np.float32)
    return mean, logvar


def numpy_kl(mean_q, logvar_q, mean_p, logvar_p):
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) per dimension by the textbook formula, summed, in float64."""
    mean_q, logvar_q, mean_p, logvar_p = (np.asarray(a, np.float64) for a in (mean_q, logvar_q, mean_p, logvar_p))
    sd_q, sd_p = np.exp(0.5 * logvar_q), np.exp(0.5 * logvar_p)
    per_dim = np.log(sd_p / sd_q) + (sd_q**2 + (mean_q - mean_p) ** 2) / (2.0 * sd_p**2) - 0.5
    return per_dim.sum(axis=-1)


def test_log_normal_matches_scipy():
    z, _ = random_gaussians(0, (4, 7))
    mean, logvar = random_gaussians(1, (4, 7))
    got = np.asarray(gaussian.log_normal(jnp.asarray(z), jnp.asarray(mean), jnp.asarray(logvar)))
    want = stats.norm.logpdf(z.astype(np.float64), mean, np.sqrt(np.exp(logvar.astype(np.float64)))).sum(axis=-1)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_log_normal_at_the_mean_of_a_standard_normal():
    d = 5
    got = gaussian.log_normal(jnp.zeros(d), jnp.zeros(d), jnp.zeros(d))
    np.testing.assert_allclose(float(got), -0.5 * d * np.log(2 * np.pi), rtol=1e-6)


def test_kl_normal_matches_numpy_closed_form():
    mean_q, logvar_q = random_gaussians(2, (6, 9))
    mean_p, logvar_p = random_gaussians(3, (6, 9))
    got = gaussian.kl_normal(*(jnp.asarray(a) for a in (mean_q, logvar_q, mean_p, logvar_p)))
    np.testing.assert_allclose(np.asarray(got), numpy_kl(mean_q, logvar_q, mean_p, logvar_p), rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(got) >= 0)
    np.testing.assert_allclose(
        np.asarray(gaussian.kl_normal(*(jnp.asarray(a) for a in (mean_q, logvar_q, mean_q, logvar_q)))), 0.0, atol=1e-6
    )


def test_kl_standard_normal_matches_numpy_closed_form_and_kl_normal():
    mean, logvar = random_gaussians(4, (6, 9))
    got = np.asarray(gaussian.kl_standard_normal(jnp.asarray(mean), jnp.asarray(logvar)))
    zeros = np.zeros_like(mean)
    np.testing.assert_allclose(got, numpy_kl(mean, logvar, zeros, zeros), rtol=1e-5, atol=1e-5)
    zeros32 = jnp.zeros(mean.shape)
    via_kl_normal = gaussian.kl_normal(jnp.asarray(mean), jnp.asarray(logvar), zeros32, zeros32)
    np.testing.assert_allclose(got, np.asarray(via_kl_normal), rtol=1e-6, atol=1e-6)


def monte_carlo_kl(mean_q, logvar_q, mean_p, logvar_p, n_samples: int, seed: int):
    """(estimate, standard error) of E_q[log q(z) - log p(z)] from samples z ~ q, in float64 with scipy densities."""
    rng = np.random.default_rng(seed)
    sd_q = np.exp(0.5 * logvar_q.astype(np.float64))
    sd_p = np.exp(0.5 * logvar_p.astype(np.float64))
    z = mean_q + sd_q * rng.standard_normal((n_samples, mean_q.shape[-1]))
    log_ratio = (stats.norm.logpdf(z, mean_q, sd_q) - stats.norm.logpdf(z, mean_p, sd_p)).sum(axis=-1)
    return log_ratio.mean(), log_ratio.std(ddof=1) / np.sqrt(n_samples)


@pytest.mark.parametrize("seed", [5, 6])
def test_kl_normal_matches_monte_carlo(seed):
    mean_q, logvar_q = random_gaussians(seed, (4,))
    mean_p, logvar_p = random_gaussians(seed + 100, (4,))
    estimate, standard_error = monte_carlo_kl(mean_q, logvar_q, mean_p, logvar_p, 200_000, seed)
    got = float(gaussian.kl_normal(*(jnp.asarray(a) for a in (mean_q, logvar_q, mean_p, logvar_p))))
    assert abs(got - estimate) < 5 * standard_error, (got, estimate, standard_error)


def test_kl_standard_normal_matches_monte_carlo():
    mean, logvar = random_gaussians(7, (4,))
    zeros = np.zeros_like(mean)
    estimate, standard_error = monte_carlo_kl(mean, logvar, zeros, zeros, 200_000, 7)
    got = float(gaussian.kl_standard_normal(jnp.asarray(mean), jnp.asarray(logvar)))
    assert abs(got - estimate) < 5 * standard_error, (got, estimate, standard_error)


def test_precision_weighted_matches_float64_closed_form():
    mean_a, logvar_a = random_gaussians(8, (5, 6))
    mean_b, logvar_b = random_gaussians(9, (5, 6))
    mean, logvar = gaussian.precision_weighted(*(jnp.asarray(a) for a in (mean_a, logvar_a, mean_b, logvar_b)))

    var_a, var_b = np.exp(logvar_a.astype(np.float64)), np.exp(logvar_b.astype(np.float64))
    var = 1.0 / (1.0 / var_a + 1.0 / var_b)
    want_mean = var * (mean_a / var_a + mean_b / var_b)
    np.testing.assert_allclose(np.asarray(logvar), np.log(var), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(mean), want_mean, rtol=1e-5, atol=1e-5)


def test_precision_weighted_is_the_normalised_product_of_densities():
    # N(z; a) N(z; b) = c * N(z; merged) with c independent of z, so the log-ratio is the same at every point.
    mean_a, logvar_a = random_gaussians(10, (3,))
    mean_b, logvar_b = random_gaussians(11, (3,))
    mean, logvar = (np.asarray(v, np.float64) for v in gaussian.precision_weighted(
        *(jnp.asarray(a) for a in (mean_a, logvar_a, mean_b, logvar_b))
    ))
    points = np.random.default_rng(12).normal(0.0, 2.0, (7, 3))

    def log_density(z, m, lv):
        return stats.norm.logpdf(z, m, np.exp(0.5 * np.asarray(lv, np.float64)))

    log_ratio = log_density(points, mean_a, logvar_a) + log_density(points, mean_b, logvar_b) - log_density(
        points, mean, logvar
    )
    np.testing.assert_allclose(log_ratio, np.broadcast_to(log_ratio[:1], log_ratio.shape), atol=2e-4)
    # The constant is the normaliser of the product: log N(mean_a; mean_b, var_a + var_b).
    want_constant = log_density(mean_a, mean_b, np.log(np.exp(logvar_a.astype(np.float64)) + np.exp(logvar_b)))
    np.testing.assert_allclose(log_ratio[0], want_constant, atol=2e-4)


def test_precision_weighted_stays_finite_for_extreme_variances():
    mean_a, mean_b = jnp.asarray([1.0, -2.0]), jnp.asarray([3.0, 4.0])
    logvar_a, logvar_b = jnp.asarray([100.0, -100.0]), jnp.asarray([-100.0, 100.0])
    mean, logvar = gaussian.precision_weighted(mean_a, logvar_a, mean_b, logvar_b)
    assert np.all(np.isfinite(np.asarray(mean))) and np.all(np.isfinite(np.asarray(logvar)))
    # The far more precise side wins.
    np.testing.assert_allclose(np.asarray(mean), [3.0, -2.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(logvar), [-100.0, -100.0], rtol=1e-6)


def test_reparameterize():
    mean, logvar = random_gaussians(13, (3,))
    epsilon = np.random.default_rng(14).standard_normal(3).astype(np.float32)
    got = gaussian.reparameterize(jnp.asarray(mean), jnp.asarray(logvar), jnp.asarray(epsilon))
    np.testing.assert_allclose(np.asarray(got), mean + np.sqrt(np.exp(logvar.astype(np.float64))) * epsilon, rtol=1e-5)
    # Evaluation mode returns the mean itself.
    at_the_mean = gaussian.reparameterize(jnp.asarray(mean), jnp.asarray(logvar), None)
    np.testing.assert_array_equal(np.asarray(at_the_mean), mean)


def test_reparameterized_samples_have_the_right_moments():
    mean, logvar = jnp.asarray([0.5, -1.0]), jnp.asarray([-1.0, 1.0])
    n = 100_000
    epsilon = jax.random.normal(jax.random.key(0), (n, 2))
    samples = np.asarray(jax.vmap(lambda e: gaussian.reparameterize(mean, logvar, e))(epsilon), np.float64)
    sd = np.exp(0.5 * np.asarray(logvar, np.float64))
    # Sample mean within 5 standard errors; sample variance within 5 of its standard errors (2 var^2 / n for normals).
    assert np.all(np.abs(samples.mean(axis=0) - np.asarray(mean)) < 5 * sd / np.sqrt(n))
    assert np.all(np.abs(samples.var(axis=0) - sd**2) < 5 * sd**2 * np.sqrt(2.0 / n))


def test_log_normal_components_matches_the_direct_density():
    """The VampPrior's matmul form of log N(z; m_k, v_k) equals the direct per-component formula."""
    z = jax.random.normal(jax.random.key(0), (20,))
    means = jax.random.normal(jax.random.key(1), (7, 20))
    logvars = jnp.clip(3.0 * jax.random.normal(jax.random.key(2), (7, 20)), -12.0, 4.0)
    direct = np.array([float(gaussian.log_normal(z, means[k], logvars[k])) for k in range(7)])
    np.testing.assert_allclose(gaussian.log_normal_components(z, means, logvars), direct, rtol=1e-5)
