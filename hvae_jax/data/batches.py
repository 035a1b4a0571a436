"""Batches: the training matrix kept on the device as CSR arrays, shuffled user orders drawn from a key, and rows
densified on the device inside the jitted step, so the host never builds or ships a [batch, n_items] array.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp


class DeviceCSR(NamedTuple):
    """A binary [n_rows, n_items] CSR matrix as device arrays.

    Attributes:
      indptr: [n_rows + 1] int32 row offsets.
      indices: [nnz] int32 item indices.
    """

    indptr: jax.Array
    indices: jax.Array


def to_device(matrix: sp.csr_matrix, *, padded_nnz: int | None = None) -> DeviceCSR:
    """Copies a CSR matrix's structure to the default device (values are taken as 1).

    `padded_nnz` (at least the matrix's nnz) pads `indices` with zeros past `indptr[-1]`, where nothing reads them, so
    that matrices of different nnz give arrays of one shape and share a compiled step."""
    matrix = sp.csr_matrix(matrix)
    matrix.sort_indices()
    indices = np.asarray(matrix.indices, np.int32)
    if padded_nnz is not None:
        if padded_nnz < len(indices):
            raise ValueError(f"padded_nnz {padded_nnz} is below the matrix's {len(indices)} entries")
        indices = np.concatenate([indices, np.zeros(padded_nnz - len(indices), np.int32)])
    return DeviceCSR(jnp.asarray(matrix.indptr, jnp.int32), jnp.asarray(indices))


def power_of_two_at_least(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): static sizes that sets of similar size share."""
    return 1 << max(0, n - 1).bit_length()


def max_batch_nnz(matrix: sp.csr_matrix, batch_size: int) -> int:
    """Interactions in the `batch_size` longest rows: a bound on any batch's entries, so shapes stay static."""
    lengths = np.sort(np.diff(matrix.indptr))[::-1]
    return max(int(lengths[:batch_size].sum()), 1)


def epoch_order(key: jax.Array, n_rows: int, batch_size: int) -> jax.Array:
    """[n_steps, batch_size] int32 shuffled row indices for one epoch; -1 pads the last, partial batch."""
    n_steps = -(-n_rows // batch_size)
    order = jax.random.permutation(key, n_rows).astype(jnp.int32)
    padding = jnp.full((n_steps * batch_size - n_rows,), -1, jnp.int32)
    return jnp.concatenate([order, padding]).reshape(n_steps, batch_size)


class BatchSlots(NamedTuple):
    """A batch's entries as slots: slot s holds item `item[s]` of batch row `row[s]`; slots at or past `n_real`
    are padding (`is_real` False). `lengths` is [batch], each row's number of items."""

    row: jax.Array
    item: jax.Array
    is_real: jax.Array
    n_real: jax.Array
    lengths: jax.Array


def batch_slots(matrix: DeviceCSR, rows: jax.Array, max_nnz: int) -> BatchSlots:
    """The entries of `matrix`'s `rows` (-1: an empty padding row) as `max_nnz` slots, real ones first.

    Each slot finds its batch row by a search over the rows' cumulative lengths, then reads its item from `indices`.
    """
    is_real_row = rows >= 0
    safe_rows = jnp.where(is_real_row, rows, 0)
    starts_in_matrix = matrix.indptr[safe_rows]
    lengths = jnp.where(is_real_row, matrix.indptr[safe_rows + 1] - starts_in_matrix, 0)
    ends = jnp.cumsum(lengths)
    slot = jnp.arange(max_nnz, dtype=jnp.int32)
    batch_row = jnp.minimum(jnp.searchsorted(ends, slot, side="right"), rows.shape[0] - 1).astype(jnp.int32)
    is_real = slot < ends[-1]
    source = starts_in_matrix[batch_row] + slot - (ends[batch_row] - lengths[batch_row])
    if matrix.indices.shape[0] == 0:
        items = jnp.zeros_like(source)  # a matrix without entries: every slot is padding
    else:
        items = matrix.indices[jnp.where(is_real, source, 0)]
    return BatchSlots(batch_row, items, is_real, ends[-1].astype(jnp.int32), lengths)


def densify(matrix: DeviceCSR, rows: jax.Array, n_items: int, max_nnz: int) -> jax.Array:
    """Dense [batch, n_items] 0/1 rows of `matrix`, built on the device; rows equal to -1 give zero rows.

    Args:
      matrix: the device CSR matrix.
      rows: [batch] int32 row indices, -1 for padding.
      n_items: number of columns.
      max_nnz: static bound on the batch's entries (`max_batch_nnz`).
    """
    slots = batch_slots(matrix, rows, max_nnz)
    dense = jnp.zeros((rows.shape[0], n_items), jnp.float32)
    return dense.at[slots.row, slots.item].add(slots.is_real.astype(jnp.float32))


def densify_mask(matrix: DeviceCSR, rows: jax.Array, n_items: int, max_nnz: int) -> jax.Array:
    """Dense [batch, n_items] bool rows of `matrix` (True at its entries), as `densify` without the float32 array: a
    quarter of its bytes to clear and write (evaluation's exclusion and held-out masks)."""
    slots = batch_slots(matrix, rows, max_nnz)
    batch = rows.shape[0]
    mask = jnp.zeros((batch, n_items), bool)
    # Padding slots point past the last row and are dropped.
    return mask.at[jnp.where(slots.is_real, slots.row, batch), slots.item].set(True, mode="drop")


def host_dense_rows(matrix: sp.csr_matrix, start: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [start, start + batch_size) of `matrix` as a dense float32 array padded with zero rows to `batch_size`,
    and a [batch_size] bool mask of real rows. Used for evaluation sets, which are small."""
    stop = min(start + batch_size, matrix.shape[0])
    dense = np.zeros((batch_size, matrix.shape[1]), np.float32)
    dense[: stop - start] = matrix[start:stop].toarray()
    real = np.zeros(batch_size, bool)
    real[: stop - start] = True
    return dense, real
