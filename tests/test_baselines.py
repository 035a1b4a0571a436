"""Tests of the EASE and popularity baselines against brute-force numpy computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from hvae_jax.models import baselines

jax.config.update("jax_enable_x64", False)


pytestmark = pytest.mark.usefixtures("strict_numerics")


def random_train(seed: int, n_users: int = 40, n_items: int = 9, density: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n_users, n_items)) < density).astype(np.float64)


def ease_objective(train: np.ndarray, weights: np.ndarray, l2: float) -> float:
    """||X - X B||_F^2 + l2 ||B||_F^2 in float64."""
    residual = train - train @ weights
    return float(np.sum(residual**2) + l2 * np.sum(weights**2))


def test_ease_matches_brute_force_inverse():
    train = random_train(0)
    l2 = 3.0
    weights = baselines.fit_ease(sp.csr_matrix(train), l2)
    assert weights.dtype == np.float32 and weights.shape == (9, 9)

    precision = np.linalg.inv(train.T @ train + l2 * np.eye(9))
    np.testing.assert_array_equal(np.diag(weights), 0.0)
    for i in range(9):
        for j in range(9):
            expected = 0.0 if i == j else -precision[i, j] / precision[j, j]
            assert weights[i, j] == pytest.approx(expected, rel=1e-5, abs=1e-6), (i, j)
    # A dense ndarray gives the same weights as a sparse matrix.
    np.testing.assert_array_equal(baselines.fit_ease(train, l2), weights)


def test_ease_above_the_threaded_limit_factors_on_one_blas_thread(monkeypatch):
    """Above `single_thread_above` items the factorisation and inversion run under a one-thread BLAS limit (OpenBLAS's
    threaded dpotrf crashed on 24,915 items), with the same weights as the threaded call."""
    import threadpoolctl

    limits = []
    real_limits = threadpoolctl.threadpool_limits

    def recording_limits(*args, **kwargs):
        limits.append(kwargs)
        return real_limits(*args, **kwargs)

    monkeypatch.setattr(threadpoolctl, "threadpool_limits", recording_limits)
    train = random_train(1, n_items=12)
    threaded = baselines.fit_ease(train, 2.0)
    assert limits == []  # 12 items: below the default limit, no thread cap
    single = baselines.fit_ease(train, 2.0, single_thread_above=11)
    assert limits == [{"limits": 1, "user_api": "blas"}]
    np.testing.assert_allclose(single, threaded, rtol=1e-6, atol=1e-7)


def test_ease_columns_are_ridge_regressions_on_the_other_items():
    # With diag(B) = 0 the objective splits by column: column j regresses item j on all other items with ridge l2,
    # b_j = (X_-j^T X_-j + l2 I)^-1 X_-j^T x_j. This is independent of the closed form used by fit_ease.
    train = random_train(1, n_users=60, n_items=7)
    l2 = 0.7
    weights = baselines.fit_ease(train, l2).astype(np.float64)
    for j in range(7):
        others = [i for i in range(7) if i != j]
        x_others = train[:, others]
        ridge = np.linalg.solve(x_others.T @ x_others + l2 * np.eye(6), x_others.T @ train[:, j])
        np.testing.assert_allclose(weights[others, j], ridge, rtol=1e-5, atol=1e-6)


def test_ease_minimises_the_objective_with_zero_diagonal():
    train = random_train(2)
    l2 = 2.0
    weights = baselines.fit_ease(train, l2).astype(np.float64)
    best = ease_objective(train, weights, l2)
    rng = np.random.default_rng(3)
    off_diagonal = 1.0 - np.eye(9)
    for scale in (1e-1, 1e-2):
        for _ in range(20):
            perturbation = scale * rng.normal(size=(9, 9)) * off_diagonal  # keeps diag(B) = 0
            assert ease_objective(train, weights + perturbation, l2) > best
    # Stationarity: the gradient 2 (X^T X (B - I) + l2 B) vanishes off the diagonal (the constraint's multipliers
    # live on the diagonal only).
    gram = train.T @ train
    gradient = 2.0 * (gram @ (weights - np.eye(9)) + l2 * weights)
    scale = np.abs(gram).max()
    assert np.max(np.abs(gradient * off_diagonal)) < 1e-5 * scale


def test_dense_gram_blocks_and_symmetrize():
    train = random_train(4, n_users=30, n_items=11)
    for block_entries in (1, 11 * 3, 11 * 11, 10**6):  # one column, uneven blocks, exact fit, everything at once
        gram = baselines._dense_gram(sp.csr_matrix(train), block_entries)
        np.testing.assert_allclose(gram, train.T @ train)
    rng = np.random.default_rng(5)
    symmetric = rng.normal(size=(11, 11))
    symmetric = symmetric + symmetric.T
    scrambled = np.triu(symmetric) + np.tril(rng.normal(size=(11, 11)), -1)
    baselines._symmetrize_from_upper(scrambled, block=4)
    np.testing.assert_array_equal(scrambled, symmetric)


def test_ease_item_limit_and_bad_l2():
    train = sp.csr_matrix(random_train(6))
    with pytest.raises(ValueError, match="max_items=5"):
        baselines.fit_ease(train, 1.0, max_items=5)
    baselines.fit_ease(train, 1.0, max_items=9)  # exactly at the limit is fine
    for bad_l2 in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="l2"):
            baselines.fit_ease(train, bad_l2)


def test_ease_scores_is_the_matmul():
    train = random_train(7)
    weights = baselines.fit_ease(train, 1.5)
    fold_in = random_train(8, n_users=5) > 0  # bool fold-in rows
    want = fold_in.astype(np.float64) @ weights.astype(np.float64)
    got = baselines.ease_scores(jnp.asarray(weights), jnp.asarray(fold_in))
    assert got.shape == (5, 9) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    jitted = jax.jit(baselines.ease_scores)(weights, fold_in.astype(np.float32))
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(got), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="fold_in_batch"):
        baselines.ease_scores(weights, fold_in[:, :4])


def test_popularity_counts_users_per_item():
    train = random_train(9, n_users=25, n_items=6)
    popularity = baselines.fit_popularity(sp.csr_matrix(train))
    assert popularity.dtype == np.float32
    np.testing.assert_array_equal(popularity, train.sum(axis=0))
    # Repeat counts and explicit zeros do not inflate popularity: it counts distinct users.
    weighted = sp.csr_matrix(train * 3.0)
    weighted.data[0] = 0.0  # an explicit stored zero
    expected = (weighted.toarray() != 0).sum(axis=0)
    np.testing.assert_array_equal(baselines.fit_popularity(weighted), expected)

    fold_in = np.zeros((4, 6), np.float32)
    scores = baselines.popularity_scores(popularity, fold_in)
    assert scores.shape == (4, 6)
    for row in np.asarray(scores):
        np.testing.assert_array_equal(row, popularity)
    with pytest.raises(ValueError, match="popularity"):
        baselines.popularity_scores(popularity, np.zeros((4, 5), np.float32))
