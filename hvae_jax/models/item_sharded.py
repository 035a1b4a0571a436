"""The item-sharded first and last layers, for catalogues whose [batch, n_items] logits must never exist in one piece.

The n_items-wide parameters (the first layer's kernel [n_items, hidden], the output layer's kernel [hidden, n_items]
and bias [n_items]) are split along the item axis over a one-axis mesh named "items". Device d owns items
[d * per_shard, (d + 1) * per_shard) and scores them `chunk` columns at a time, so the largest logits buffer any
device holds is [batch, chunk], whatever the catalogue size:

- First layer: the sparse gather-and-sum of `models/sparse.py` over the device's own rows of the kernel, summed
  over devices (`sharded_gather_project`).
- Log-likelihood of a user with binary items S: sum_{i in S} l_i - |S| logsumexp_j l_j, from the two sums that
  `positive_sum_and_logsumexp` streams. Each
  device streams the log-sum-exp of its items over chunks (running maximum and rescaled sum); devices combine as
  M + log sum_d exp(lse_d - M), M = max_d lse_d. The logits at the positives come from the kernel columns of those
  items alone. Custom VJPs recompute each chunk in the backward pass, so no [batch, n_items] residual is saved.
- Top-K (`top_k`): each device keeps a running [batch, K] best list, merged with every chunk's top K, then the
  devices' lists are gathered and merged. Ties go to the lower item index, as `jax.lax.top_k` on a full row.

The catalogue is padded to `CatalogueLayout.n_padded` items (a whole number of chunks per device); the model is
built at that size and the padding items are masked out of every log-sum-exp and ranking. Everything here runs
inside jit; the functions take global arrays and apply `jax.shard_map` themselves.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hvae_jax.models import shared_rows
from hvae_jax.models import sparse as sparse_layer
from hvae_jax.models.hvae import input_branches, output_layer_path
from hvae_jax.models.likelihoods import build_likelihood

ITEM_AXIS = "items"
FLOAT32_BYTES = 4


class CatalogueLayout(NamedTuple):
    """How a catalogue is split: `n_shards` devices, each scoring `chunks_per_shard` chunks of `chunk` items.

    Attributes:
      n_items: real items; indices at or above it are padding.
      n_shards: devices along the mesh's "items" axis.
      chunk: items scored at once on one device; the logits buffer is [batch, chunk].
      chunks_per_shard: chunks per device.
    """

    n_items: int
    n_shards: int
    chunk: int
    chunks_per_shard: int

    @property
    def per_shard(self) -> int:
        return self.chunk * self.chunks_per_shard

    @property
    def n_padded(self) -> int:
        return self.per_shard * self.n_shards


def catalogue_layout(
    n_items: int, n_shards: int, batch_size: int, logits_budget_bytes: int, min_chunk: int = 128
) -> CatalogueLayout:
    """The layout whose [batch_size, chunk] float32 logits block fits `logits_budget_bytes` on each device.

    `min_chunk` (at least the largest top-K cut-off) bounds the chunk from below; the budget must allow it.
    """
    if n_items <= 0 or n_shards <= 0 or batch_size <= 0:
        raise ValueError(f"n_items, n_shards and batch_size must be positive, got {n_items}, {n_shards}, {batch_size}")
    per_shard_needed = math.ceil(n_items / n_shards)
    budget_chunk = logits_budget_bytes // (batch_size * FLOAT32_BYTES)
    if budget_chunk < min_chunk:
        raise ValueError(
            f"a logits budget of {logits_budget_bytes} bytes allows {budget_chunk} items per chunk at batch "
            f"{batch_size}; at least {min_chunk} are needed (raise the budget or lower the batch size)"
        )
    # As few chunks as the budget allows, then the smallest equal chunks that cover the shard: little padding.
    chunks_per_shard = math.ceil(per_shard_needed / budget_chunk)
    chunk = max(min_chunk, math.ceil(per_shard_needed / chunks_per_shard))
    return CatalogueLayout(n_items, n_shards, chunk, math.ceil(per_shard_needed / chunk))


def catalogue_param_paths(config) -> dict[tuple[str, ...], P]:
    """The n_items-wide parameters of `config`'s model and how each is split over the "items" axis.

    Raises ValueError for what this path cannot split: priors with parameters over the catalogue (the VampPrior's
    pseudo-inputs are dense [n_pseudo_inputs, n_items] rows pushed through the whole encoder) and likelihoods whose
    row statistic is not a log-sum-exp."""
    if config.kind == "vae" and config.prior == "vamp":
        raise ValueError("the item-sharded model does not support the VampPrior: its pseudo-inputs are dense "
                         "[n_pseudo_inputs, n_items] rows pushed through the whole encoder")
    if build_likelihood(config.likelihood).row_reduction != "logsumexp":
        raise ValueError(f"the item-sharded model supports the multinomial likelihood only, not {config.likelihood!r}")
    output = output_layer_path(config)
    paths = {output + ("kernel",): P(None, ITEM_AXIS), output + ("bias",): P(ITEM_AXIS)}
    for branch in input_branches(config):
        paths[branch.path + ("linear_0", "kernel")] = P(ITEM_AXIS, None)
        if branch.gated:
            paths[branch.path + ("gate_0", "kernel")] = P(ITEM_AXIS, None)
    return paths


def param_shardings(config, tree, mesh: Mesh):
    """A NamedSharding per leaf of `tree` (the parameters, or a training state holding them and optimizer moments
    of the same structure): leaves whose path ends in a catalogue-wide parameter are split over items, everything
    else is replicated."""
    specs = catalogue_param_paths(config)

    def sharding(path, leaf):
        names = tuple(getattr(entry, "key", getattr(entry, "name", None)) for entry in path)
        for suffix, spec in specs.items():
            if names[-len(suffix):] == suffix:
                return NamedSharding(mesh, spec)
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(sharding, tree)


# ---------------------------------------------------------------------------------------------------------------
# Shard-local pieces (run inside shard_map on one device's items).


def _chunk_logits(h, kernel, bias, index, first_item, n_items, chunk, compute_dtype):
    """[batch, chunk] float32 logits of local chunk `index`; items at or past `n_items` (padding) are -inf."""
    kernel_chunk = jax.lax.dynamic_slice_in_dim(kernel, index * chunk, chunk, axis=1)
    bias_chunk = jax.lax.dynamic_slice_in_dim(bias, index * chunk, chunk)
    logits = jnp.dot(h.astype(compute_dtype), kernel_chunk.astype(compute_dtype), preferred_element_type=jnp.float32)
    logits = logits + bias_chunk.astype(jnp.float32)[None, :]
    global_item = first_item + index * chunk + jnp.arange(chunk, dtype=jnp.int32)
    return jnp.where((global_item < n_items)[None, :], logits, -jnp.inf)


def _finite_or_zero(x):
    return jnp.where(jnp.isfinite(x), x, 0.0)


def _varying(x):
    """Marks a value as differing across the "items" devices (shard_map's type system needs loop carries and the
    inputs of the custom VJPs below to say so; the transpose of this cast is the psum of the gradients)."""
    return jax.lax.pcast(x, ITEM_AXIS, to="varying")


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _local_logsumexp(h, kernel, bias, first_item, n_items, chunk, compute_dtype):
    """[batch] logsumexp over this device's items, streamed chunk by chunk (-inf for a device of padding only)."""
    return _local_logsumexp_forward(h, kernel, bias, first_item, n_items, chunk, compute_dtype)


def _local_logsumexp_forward(h, kernel, bias, first_item, n_items, chunk, compute_dtype):
    n_chunks = kernel.shape[1] // chunk

    def add_chunk(carry, index):
        running_max, running_sum = carry
        logits = _chunk_logits(h, kernel, bias, index, first_item, n_items, chunk, compute_dtype)
        new_max = jnp.maximum(running_max, jnp.max(logits, axis=1))
        shift = _finite_or_zero(new_max)  # a row with no real item yet keeps sum 0 and max -inf, without NaN
        running_sum = running_sum * jnp.exp(running_max - shift) + jnp.sum(jnp.exp(logits - shift[:, None]), axis=1)
        return (new_max, running_sum), None

    batch = h.shape[0]
    initial = _varying((jnp.full((batch,), -jnp.inf, jnp.float32), jnp.zeros((batch,), jnp.float32)))
    (running_max, running_sum), _ = jax.lax.scan(add_chunk, initial, jnp.arange(n_chunks))
    return jnp.log(running_sum) + _finite_or_zero(running_max)


def _local_logsumexp_fwd(h, kernel, bias, first_item, n_items, chunk, compute_dtype):
    lse = _local_logsumexp_forward(h, kernel, bias, first_item, n_items, chunk, compute_dtype)
    return lse, (h, kernel, bias, first_item, lse)


def _local_logsumexp_bwd(n_items, chunk, compute_dtype, residuals, lse_cotangent):
    h, kernel, bias, first_item, lse = residuals
    n_chunks = kernel.shape[1] // chunk

    def chunk_gradients(h_gradient, index):
        logits = _chunk_logits(h, kernel, bias, index, first_item, n_items, chunk, compute_dtype)
        # d lse / d logits = softmax; padding items (and a device of padding only) contribute 0.
        softmax = jnp.where(jnp.isfinite(logits), jnp.exp(logits - _finite_or_zero(lse)[:, None]), 0.0)
        logits_gradient = lse_cotangent[:, None] * softmax
        kernel_chunk = jax.lax.dynamic_slice_in_dim(kernel, index * chunk, chunk, axis=1)
        h_gradient = h_gradient + jnp.dot(logits_gradient, kernel_chunk.T.astype(jnp.float32)).astype(h.dtype)
        # The bias gradient sums over the batch as a product (a reduction is far slower on XLA's CPU backend).
        bias_gradient = shared_rows.sum_rows(logits_gradient)
        return h_gradient, (jnp.dot(h.T.astype(jnp.float32), logits_gradient), bias_gradient)

    h_gradient, (kernel_chunks, bias_chunks) = jax.lax.scan(
        chunk_gradients, _varying(jnp.zeros(h.shape, h.dtype)), jnp.arange(n_chunks)
    )
    # [n_chunks, hidden, chunk] -> [hidden, n_chunks * chunk]: the chunks side by side, as they sit in the kernel.
    kernel_gradient = jnp.moveaxis(kernel_chunks, 0, 1).reshape(kernel.shape).astype(kernel.dtype)
    return h_gradient, kernel_gradient, bias_chunks.reshape(bias.shape).astype(bias.dtype), None


_local_logsumexp.defvjp(_local_logsumexp_fwd, _local_logsumexp_bwd)


@jax.custom_vjp
def _local_positive_logits(h, kernel, bias, row, item, weight, n_real):
    """[batch] sum over slots s of weight[s] * logit(row[s], item[s]), reading only the kernel columns of the slots'
    items; the loop runs over the real slots only, in chunks of `sparse.CHUNK`."""
    return _local_positive_logits_forward(h, kernel, bias, row, item, weight, n_real)


def _local_positive_logits_forward(h, kernel, bias, row, item, weight, n_real):
    def add_chunk(index, total):
        rows, items = sparse_layer.slot_chunk(row, index), sparse_layer.slot_chunk(item, index)
        logits = jnp.sum(h[rows].astype(jnp.float32) * kernel[:, items].T.astype(jnp.float32), axis=1) + bias[items]
        return total.at[rows].add(sparse_layer.slot_chunk(weight, index) * logits)

    n_chunks = sparse_layer.n_slot_chunks(n_real)
    return jax.lax.fori_loop(0, n_chunks, add_chunk, _varying(jnp.zeros((h.shape[0],), jnp.float32)))


def _local_positive_logits_fwd(h, kernel, bias, row, item, weight, n_real):
    value = _local_positive_logits_forward(h, kernel, bias, row, item, weight, n_real)
    return value, (h, kernel, bias, row, item, weight, n_real)


def _local_positive_logits_bwd(residuals, cotangent):
    h, kernel, bias, row, item, weight, n_real = residuals

    def add_chunk(index, gradients):
        h_gradient, kernel_gradient, bias_gradient = gradients
        rows, items = sparse_layer.slot_chunk(row, index), sparse_layer.slot_chunk(item, index)
        coefficient = sparse_layer.slot_chunk(weight, index) * cotangent[rows]  # [slots]
        h_gradient = h_gradient.at[rows].add((coefficient[:, None] * kernel[:, items].T).astype(h.dtype))
        kernel_gradient = kernel_gradient.at[:, items].add((coefficient[None, :] * h[rows].T).astype(kernel.dtype))
        bias_gradient = bias_gradient.at[items].add(coefficient.astype(bias.dtype))
        return h_gradient, kernel_gradient, bias_gradient

    n_chunks = sparse_layer.n_slot_chunks(n_real)
    initial = _varying(tuple(jnp.zeros(a.shape, a.dtype) for a in (h, kernel, bias)))
    h_gradient, kernel_gradient, bias_gradient = jax.lax.fori_loop(0, n_chunks, add_chunk, initial)
    return h_gradient, kernel_gradient, bias_gradient, None, None, jnp.zeros_like(weight), None


_local_positive_logits.defvjp(_local_positive_logits_fwd, _local_positive_logits_bwd)


def _local_items(item, is_real, first_item, per_shard):
    """This device's view of global item indices: (local index, clipped to 0 when not ours; is it ours)."""
    local = item - first_item
    mine = is_real & (local >= 0) & (local < per_shard)
    return jnp.where(mine, local, 0), mine


def _first_item(layout: CatalogueLayout):
    return jax.lax.axis_index(ITEM_AXIS).astype(jnp.int32) * layout.per_shard


# ---------------------------------------------------------------------------------------------------------------
# Global functions (call inside jit with the item-sharded parameters).


def sharded_gather_project(
    kernel: jax.Array, sparse: sparse_layer.SparseInput, n_rows: int, layout: CatalogueLayout, mesh: Mesh
) -> jax.Array:
    """[n_rows, hidden] first-layer products of the slots (`sparse.gather_project`), with `kernel` [n_padded,
    hidden] split over items: each device gathers its own rows, the devices' sums are added."""

    def local(kernel_shard, row, item, value, n_real):
        local_item, mine = _local_items(item, value != 0, _first_item(layout), layout.per_shard)
        shard_input = sparse_layer.SparseInput(row, local_item, jnp.where(mine, value, 0.0), n_real)
        return jax.lax.psum(sparse_layer.gather_project(kernel_shard, shard_input, n_rows), ITEM_AXIS)

    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(ITEM_AXIS, None), P(), P(), P(), P()), out_specs=P()
    )(kernel, sparse.row, sparse.item, sparse.value, sparse.n_real)


def positive_sum_and_logsumexp(
    h: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    positives,
    layout: CatalogueLayout,
    mesh: Mesh,
    compute_dtype: str = "float32",
) -> tuple[jax.Array, jax.Array]:
    """([batch] sum_{i in S_u} l_ui, [batch] logsumexp_j l_uj) of the logits l = h W + b, never built whole: what
    the multinomial likelihood needs (`likelihoods.Multinomial.from_positives`).

    Args:
      h: [batch, hidden] the decoder's last hidden activations (replicated).
      kernel: [hidden, n_padded], bias: [n_padded], split over items.
      positives: `data.batches.BatchSlots` of the batch's items (row, item, is_real, n_real, lengths); padded to a
        multiple of `sparse.CHUNK` slots.
    """

    def local(h, kernel_shard, bias_shard, row, item, is_real, n_real):
        first_item = _first_item(layout)
        h = _varying(h)
        shard_lse = _local_logsumexp(h, kernel_shard, bias_shard, first_item, layout.n_items, layout.chunk,
                                     compute_dtype)
        # Distributed log-sum-exp; the shift M is a constant for the gradient (it cancels exactly).
        shift = jax.lax.pmax(jax.lax.stop_gradient(_finite_or_zero(shard_lse)), ITEM_AXIS)
        lse = shift + jnp.log(jax.lax.psum(jnp.exp(shard_lse - shift), ITEM_AXIS))
        local_item, mine = _local_items(item, is_real, first_item, layout.per_shard)
        positive = jax.lax.psum(
            _local_positive_logits(h, kernel_shard, bias_shard, row, local_item, mine.astype(jnp.float32), n_real),
            ITEM_AXIS,
        )
        return positive, lse

    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(None, ITEM_AXIS), P(ITEM_AXIS), P(), P(), P(), P()), out_specs=(P(), P())
    )(h, kernel, bias, positives.row, positives.item, positives.is_real, positives.n_real)


def top_k(
    h: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    exclude,
    k: int,
    layout: CatalogueLayout,
    mesh: Mesh,
    compute_dtype: str = "float32",
) -> tuple[jax.Array, jax.Array]:
    """The K best items of every row of h W + b with the `exclude` slots set to -inf: ([batch, K] scores, [batch, K]
    int32 items), best first. A rank with score -inf holds no rankable item (fewer than K were left).

    Args:
      exclude: `BatchSlots` (row, item, is_real) of items to leave out (the fold-in items).
    """
    if k > layout.chunk:
        raise ValueError(f"top-{k} needs chunks of at least {k} items; the layout has {layout.chunk}")

    def local(h, kernel_shard, bias_shard, row, item, is_real):
        first_item = _first_item(layout)
        batch = h.shape[0]

        def merge_chunk(best, index):
            best_scores, best_items = best
            logits = _chunk_logits(h, kernel_shard, bias_shard, index, first_item, layout.n_items, layout.chunk,
                                   compute_dtype)
            column = item - first_item - index * layout.chunk
            in_chunk = is_real & (column >= 0) & (column < layout.chunk)
            logits = logits.at[row, jnp.where(in_chunk, column, layout.chunk)].set(-jnp.inf, mode="drop")
            chunk_scores, chunk_columns = jax.lax.top_k(logits, k)
            # The running list first: on equal scores it holds the lower item indices, and top_k keeps the earlier.
            scores = jnp.concatenate([best_scores, chunk_scores], axis=1)
            items = jnp.concatenate([best_items, chunk_columns + first_item + index * layout.chunk], axis=1)
            scores, position = jax.lax.top_k(scores, k)
            return (scores, jnp.take_along_axis(items, position, axis=1)), None

        initial = (jnp.full((batch, k), -jnp.inf, jnp.float32), jnp.zeros((batch, k), jnp.int32))
        (scores, items), _ = jax.lax.scan(merge_chunk, initial, jnp.arange(layout.chunks_per_shard))
        # Devices in mesh order hold increasing item ranges, so the same tie rule carries over.
        all_scores = jnp.moveaxis(jax.lax.all_gather(scores, ITEM_AXIS), 0, 1).reshape(batch, -1)
        all_items = jnp.moveaxis(jax.lax.all_gather(items, ITEM_AXIS), 0, 1).reshape(batch, -1)
        scores, position = jax.lax.top_k(all_scores, k)
        return scores, jnp.take_along_axis(all_items, position, axis=1)

    # The gathered lists are equal on every device, which shard_map's type check cannot see through all_gather; the
    # check is off here only, where nothing is differentiated.
    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(None, ITEM_AXIS), P(ITEM_AXIS), P(), P(), P()), out_specs=(P(), P()),
        check_vma=False,
    )(h, kernel, bias, exclude.row, exclude.item, exclude.is_real)
