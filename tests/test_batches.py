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


@pytest.mark.parametrize("seed", range(3))
def test_densify_mask_is_densify_as_bool(seed):
    matrix = random_csr(seed)
    device_matrix = batches.to_device(matrix)
    rows = np.random.default_rng(seed).choice(matrix.shape[0], size=8, replace=False).astype(np.int32)
    rows[[1, 5]] = -1
    for bound in (batches.max_batch_nnz(matrix, 8), batches.max_batch_nnz(matrix, 8) + 9):
        got = jax.jit(lambda m, r, bound=bound: batches.densify_mask(m, r, matrix.shape[1], bound))(
            device_matrix, jnp.asarray(rows))
        assert got.dtype == jnp.bool_
        np.testing.assert_array_equal(np.asarray(got), reference_rows(matrix, rows) > 0)
    empty = sp.csr_matrix((5, 7), dtype=np.float32)
    got = batches.densify_mask(batches.to_device(empty), jnp.asarray([0, -1, 3], jnp.int32), 7, 1)
    np.testing.assert_array_equal(np.asarray(got), np.zeros((3, 7), bool))


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


def test_power_of_two_at_least():
    assert [batches.power_of_two_at_least(n) for n in (0, 1, 2, 3, 4, 5, 1000, 1024, 1025)] == [
        1, 1, 2, 4, 4, 8, 1024, 1024, 2048]


def test_padded_indices_change_no_row():
    matrix = random_csr(3)
    rows = jnp.asarray(np.array([0, 5, -1, 7, 12, 29, 3, 1], np.int32))
    bound = batches.max_batch_nnz(matrix, 8)
    plain = jitted_densify(matrix.shape[1], bound)(batches.to_device(matrix), rows)
    padded = batches.to_device(matrix, padded_nnz=matrix.nnz + 100)
    assert padded.indices.shape == (matrix.nnz + 100,)
    np.testing.assert_array_equal(np.asarray(jitted_densify(matrix.shape[1], bound)(padded, rows)), np.asarray(plain))
    with pytest.raises(ValueError, match="below the matrix's"):
        batches.to_device(matrix, padded_nnz=matrix.nnz - 1)


def test_evaluation_sets_of_one_size_share_one_compiled_step():
    # Two sets of 40 users whose interaction counts differ: one compilation, and each set's recall@5 equal to a
    # direct numpy count with the item scores fixed (a popularity-like scorer).
    from hvae_jax.data.splits import EvalSet
    from hvae_jax.evaluate import evaluate, make_eval_step

    item_scores = jnp.asarray(np.random.default_rng(0).permutation(25).astype(np.float32))
    step = make_eval_step(lambda state, fold_in, side: jnp.broadcast_to(state, fold_in.shape), ks=(5,))
    compiles: list[str] = []
    sizes: list[tuple[int, int]] = []
    listener = lambda event, duration, **kwargs: compiles.append(event) if event.endswith(  # noqa: E731
        "backend_compile_duration") else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for seed in (11, 12):
            fold_in, heldout = random_csr(seed, n_rows=40), random_csr(seed + 50, n_rows=40)
            heldout = sp.csr_matrix(heldout.multiply(fold_in.toarray() == 0))  # held-out items are not folded in
            compiled_before = len(compiles)
            result = evaluate(step, item_scores, EvalSet(fold_in, heldout, fold_in, np.arange(40)))
            sizes.append((fold_in.nnz, heldout.nnz))
            scores = np.where(fold_in.toarray() > 0, -np.inf, np.asarray(item_scores)[None, :])
            top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
            counts = np.diff(heldout.indptr)
            hits = np.array([heldout[u].toarray()[0, top5[u]].sum() for u in range(40)])
            users = counts > 0
            expected = np.mean(hits[users] / np.minimum(5, counts[users]))
            assert result["recall@5"] == pytest.approx(expected, abs=1e-6)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert sizes[0] != sizes[1]  # the two sets' arrays differ in length before padding
    assert compiled_before > 0  # the first set compiled (the listener sees compilations at all)
    assert len(compiles) == compiled_before, "the second set compiled again"
