"""The sparse first layer: a batch's input rows, given as (row, item, value) slots, multiplied by the first layer's
kernel as a gather-and-sum over the items each user has, instead of a dense [batch, n_items] x [n_items, hidden]
matmul.

The slots are processed in fixed-size chunks by a loop whose trip count is the batch's real number of slots, so the
cost follows the ~73 items of an average user, not the static bound that keeps shapes fixed. A custom VJP gives the
kernel's gradient as the matching chunked scatter-add.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from hvae_jax.data.batches import BatchSlots
from hvae_jax.models import keep_masks

CHUNK = 2048


class SparseInput(NamedTuple):
    """A batch's normalised, dropped-out input as slots; slot s contributes value[s] * kernel[item[s]] to row[s].

    Attributes:
      row: [n_slots] int32 batch row of each slot (padding slots: any row, value 0).
      item: [n_slots] int32 item of each slot.
      value: [n_slots] float32 input value (0 on padding slots).
      n_real: int32 scalar, slots [0, n_real) are real; n_slots is a multiple of CHUNK.
    """

    row: jax.Array
    item: jax.Array
    value: jax.Array
    n_real: jax.Array


def n_slot_chunks(n_real: jax.Array) -> jax.Array:
    return (n_real + CHUNK - 1) // CHUNK


def slot_chunk(array: jax.Array, index: jax.Array) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(array, index * CHUNK, CHUNK)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def gather_project(kernel: jax.Array, sparse: SparseInput, n_rows: int) -> jax.Array:
    """[n_rows, hidden] = sum over slots of value * kernel[item], accumulated into each slot's row.

    Equals `dense_input @ kernel` for the dense input the slots describe.

    Args:
      kernel: [n_items, hidden] first-layer weights.
      sparse: the batch's slots.
      n_rows: batch size (static).
    """
    return _project_forward(kernel, sparse, n_rows)


def _project_forward(kernel, sparse: SparseInput, n_rows: int):
    def add_chunk(index, total):
        contribution = slot_chunk(sparse.value, index)[:, None] * kernel[slot_chunk(sparse.item, index)]
        return total.at[slot_chunk(sparse.row, index)].add(contribution)

    # zeros_like keeps the kernel's sharding type, so the loop also runs inside shard_map (models/item_sharded.py).
    initial = jnp.zeros_like(kernel, shape=(n_rows, kernel.shape[1]))
    return jax.lax.fori_loop(0, n_slot_chunks(sparse.n_real), add_chunk, initial)


def _project_fwd(kernel, sparse, n_rows):
    # The kernel is a parameter, alive anyway: keeping it costs no memory and gives the gradient's shape.
    return _project_forward(kernel, sparse, n_rows), (kernel, sparse)


def _project_bwd(n_rows, residuals, output_cotangent):
    kernel, sparse = residuals

    def add_chunk(index, gradient):
        contribution = slot_chunk(sparse.value, index)[:, None] * output_cotangent[slot_chunk(sparse.row, index)]
        return gradient.at[slot_chunk(sparse.item, index)].add(contribution)

    kernel_gradient = jax.lax.fori_loop(
        0, n_slot_chunks(sparse.n_real), add_chunk, jnp.zeros_like(kernel)
    )
    zero_input = SparseInput(None, None, jnp.zeros_like(sparse.value), None)
    return kernel_gradient, zero_input


gather_project.defvjp(_project_fwd, _project_bwd)


def padded_slots(max_nnz: int) -> int:
    """The static slot count for a batch bound `max_nnz`: rounded up to whole chunks."""
    return max(CHUNK, -(-max_nnz // CHUNK) * CHUNK)


def sparse_input_from_slots(slots: BatchSlots, dropout_rate: float, *, key: jax.Array | None = None) -> SparseInput:
    """Liang et al.'s input transform on slots: L2-normalise each row (1 / sqrt(n) for n binary items), then
    inverted dropout drawn per interaction (no key needed when `dropout_rate` is 0)."""
    value = slots.is_real.astype(jnp.float32) * jax.lax.rsqrt(jnp.maximum(slots.lengths[slots.row], 1).astype(jnp.float32))
    if dropout_rate > 0:
        keep = keep_masks.draw(key, 1.0 - dropout_rate, value.shape)
        value = jnp.where(keep, value / (1.0 - dropout_rate), 0.0)
    return SparseInput(slots.row, slots.item, value, slots.n_real)
