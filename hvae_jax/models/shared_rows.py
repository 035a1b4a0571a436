"""Parameters every user of a vmapped model shares, handed to each user as a row of its own so that their gradient
is summed over the batch by a matrix product.

The model is written for one user and vmapped over the batch with the parameters closed over. The transpose of that
closure sums each parameter's per-user gradients over the batch with a reduction, which is what it should be, but
for the output layer's bias the summed cotangent is [batch, n_items], and XLA's CPU backend (jax 0.10.2) runs that
reduction 37x slower than the same sum written as ones[batch] @ g (72 ms against 1.9 ms at [500, 20108]:
`python -m benchmarks.bias_gradient`). `per_user` broadcasts the named leaves before the vmap under a custom VJP
whose backward pass is that product, and returns the vmap `in_axes` that hands each user its row:

  rows, axes = per_user(params, [("decoder_output", "bias")], batch)
  jax.vmap(lambda params_u, x_u: one_user(params_u, x_u), in_axes=(axes, 0))(rows, x)

The forward values are unchanged (a broadcast XLA fuses into its consumer); the gradient is the same sum, in float32
at full precision on every backend. `sum_rows` is that product on its own, for backward passes written by hand (the
item-sharded output layer's).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp


def sum_rows(rows: jax.Array) -> jax.Array:
    """rows.sum(0) written as ones[batch] @ rows, at full float32 precision on every backend."""
    flat = rows.reshape(rows.shape[0], -1)
    ones = jnp.ones((rows.shape[0],), flat.dtype)
    total = jax.lax.dot_general(ones, flat, (((0,), (0,)), ((), ())), precision=jax.lax.Precision.HIGHEST)
    return total.reshape(rows.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_rows(value: jax.Array, batch: int) -> jax.Array:
    """`value` repeated as `batch` rows: [batch, *value.shape]; its gradient sums the rows' cotangents by a product."""
    return jnp.broadcast_to(value, (batch, *value.shape))


def _broadcast_rows_fwd(value, batch):
    return broadcast_rows(value, batch), None


def _broadcast_rows_bwd(batch, _, cotangent):
    del batch
    return (sum_rows(cotangent),)


broadcast_rows.defvjp(_broadcast_rows_fwd, _broadcast_rows_bwd)


def per_user(params: Any, paths: Sequence[tuple[str, ...]], batch: int) -> tuple[Any, Any]:
    """(params with the leaves at `paths` broadcast to [batch, ...] by `broadcast_rows`, the matching vmap in_axes:
    0 at those leaves, None elsewhere). `params` is a nested dict of arrays (Flax parameters); a path that names no
    array raises KeyError with the path."""
    wanted = {tuple(path) for path in paths}
    names = lambda path: tuple(getattr(entry, "key", None) for entry in path)
    present = {names(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}
    if not wanted <= present:
        raise KeyError(f"no parameter at {sorted(wanted - present)} (shared_rows.per_user)")
    rows = jax.tree_util.tree_map_with_path(
        lambda path, leaf: broadcast_rows(leaf, batch) if names(path) in wanted else leaf, params)
    axes = jax.tree_util.tree_map_with_path(lambda path, leaf: 0 if names(path) in wanted else None, params)
    return rows, axes
