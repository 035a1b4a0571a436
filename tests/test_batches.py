"""Tests of hvae_jax.data.batches: on-device densification against scipy row slicing, epoch orders, nnz bounds."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from hvae_jax.data import batches


def random_csr(seed: int, n_rows: int = 30, n_items: int = 25) -> sp.csr_matrix:
    """A random binary CSR matrix whose rows range from empty to dense, with a few surely empty rows."""
    rng = np.random.default_rng(seed)
    density = rng.choice([0.0, 0.05, 0.2, 0.6, 1.0], size=(n_rows, 1))
    dense = (rng.random((n_rows, n_items)) < density).astype(np.float32)
    dense[[0, n_rows // 2]] = 0.0
    return sp.csr_matrix(dense)


def reference_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """scipy's row slicing, with zero rows for -1."""
    out = np.zeros((len(rows), matrix.shape[1]), np.float32)
    real = rows >= 0
    out[real] = matrix[rows[real]].toarray()
    return out


@functools.cache
def jitted_densify(n_items: int, max_nnz: int):
    return jax.jit(lambda matrix, rows: batches.densify(matrix, rows, n_items, max_nnz))


@pytest.mark.parametrize("seed", range(4))
def test_densify_equals_scipy_row_slicing(seed):
    matrix = random_csr(seed)
    device_matrix = batches.to_device(matrix)
    rng = np.random.default_rng(100 + seed)
    batch = 8
    bound = batches.max_batch_nnz(matrix, batch)
    empty_rows = np.flatnonzero(np.diff(matrix.indptr) == 0)
    for _ in range(5):
        rows = rng.choice(matrix.shape[0], size=batch, replace=False).astype(np.int32)
        rows[rng.random(batch) < 0.25] = -1  # padding anywhere in the batch
        rows[0] = empty_rows[rng.integers(len(empty_rows))]  # and always an empty row
        want = reference_rows(matrix, rows)
        got = jitted_densify(matrix.shape[1], bound)(device_matrix, jnp.asarray(rows))
        np.testing.assert_array_equal(np.asarray(got), want)
        # A looser bound changes nothing.
        got = jitted_densify(matrix.shape[1], bound + 17)(device_matrix, jnp.asarray(rows))
        np.testing.assert_array_equal(np.asarray(got), want)


def test_densify_of_a_whole_epoch_reassembles_the_matrix():
    matrix = random_csr(7, n_rows=29)
    batch = 8
    order = np.asarray(batches.epoch_order(jax.random.key(0), matrix.shape[0], batch))
    densify = jitted_densify(matrix.shape[1], batches.max_batch_nnz(matrix, batch))
    device_matrix = batches.to_device(matrix)
    rebuilt = np.zeros(matrix.shape, np.float32)
    for rows in order:
        dense = np.asarray(densify(device_matrix, jnp.asarray(rows)))
        np.testing.assert_array_equal(dense[rows < 0], 0.0)
        rebuilt[rows[rows >= 0]] = dense[rows >= 0]
    np.testing.assert_array_equal(rebuilt, matrix.toarray())


def test_densify_sorts_unsorted_indices_and_handles_all_padding():
    # A CSR built with unsorted column indices inside rows.
    indptr = np.array([0, 3, 3, 5])
    indices = np.array([4, 0, 2, 3, 1])
    matrix = sp.csr_matrix((np.ones(5, np.float32), indices, indptr), shape=(3, 6))
    assert not matrix.has_sorted_indices
    device_matrix = batches.to_device(matrix)
    rows = jnp.asarray([2, 0, -1, 1], jnp.int32)
    got = batches.densify(device_matrix, rows, 6, batches.max_batch_nnz(matrix, 4))
    np.testing.assert_array_equal(np.asarray(got), reference_rows(matrix, np.asarray(rows)))
    padding_only = batches.densify(device_matrix, jnp.full((3,), -1, jnp.int32), 6, 5)
    np.testing.assert_array_equal(np.asarray(padding_only), 0.0)


def test_densify_of_a_matrix_without_interactions():
    # A matrix with no stored entries (e.g. a data set whose training part lost every item) densifies to zeros;
    # max_batch_nnz reports 1 for it, so densify must cope with one slot and an empty `indices`.
    matrix = sp.csr_matrix((5, 7), dtype=np.float32)
    max_nnz = batches.max_batch_nnz(matrix, 3)
    assert max_nnz == 1
    got = batches.densify(batches.to_device(matrix), jnp.asarray([0, -1, 3], jnp.int32), 7, max_nnz)
    np.testing.assert_array_equal(np.asarray(got), np.zeros((3, 7), np.float32))


@pytest.mark.parametrize("n_rows,batch", [(29, 8), (32, 8), (5, 8), (1, 1)])
def test_epoch_order_is_a_padded_permutation(n_rows, batch):
    order = np.asarray(batches.epoch_order(jax.random.key(3), n_rows, batch))
    n_steps = -(-n_rows // batch)
    assert order.shape == (n_steps, batch) and order.dtype == np.int32
    flat = order.ravel()
    np.testing.assert_array_equal(np.sort(flat[:n_rows]), np.arange(n_rows))
    np.testing.assert_array_equal(flat[n_rows:], -1)  # padding only at the end of the last batch


def test_epoch_order_is_deterministic_per_key():
    first = np.asarray(batches.epoch_order(jax.random.key(4), 50, 16))
    again = np.asarray(batches.epoch_order(jax.random.key(4), 50, 16))
    other = np.asarray(batches.epoch_order(jax.random.key(5), 50, 16))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_max_batch_nnz_bounds_every_batch_and_is_attained():
    matrix = random_csr(8, n_rows=40)
    lengths = np.diff(matrix.indptr)
    batch = 6
    bound = batches.max_batch_nnz(matrix, batch)
    # Attained by the `batch` longest rows, and at least as large as any random batch.
    assert bound == np.sort(lengths)[-batch:].sum()
    rng = np.random.default_rng(9)
    for _ in range(200):
        rows = rng.choice(matrix.shape[0], size=batch, replace=False)
        assert lengths[rows].sum() <= bound
    assert batches.max_batch_nnz(matrix, 10_000) == matrix.nnz


def test_host_dense_rows_pads_the_last_batch():
    matrix = random_csr(10, n_rows=11)
    dense, real = batches.host_dense_rows(matrix, 8, 5)
    assert dense.shape == (5, matrix.shape[1]) and dense.dtype == np.float32
    np.testing.assert_array_equal(real, [True, True, True, False, False])
    np.testing.assert_array_equal(dense[:3], matrix[8:11].toarray())
    np.testing.assert_array_equal(dense[3:], 0.0)
