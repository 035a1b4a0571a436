"""Top-K of score rows, exactly `jax.lax.top_k`, on every core of a CPU host.

XLA:CPU runs `lax.top_k` as one custom call on one thread (a partial sort per row), which made it a third of an
evaluation step at the ML-1M shape while the matmuls before it use every core. On the CPU backend `top_k` therefore
ranks on the host: XLA hands the scores' buffer to `jax.experimental.buffer_callback` without a copy, the rows are
split over a thread pool, each chunk selected with numpy's introselect (`argpartition`, which releases the GIL) and
its K items ordered, written straight into the output buffers. Elsewhere it is `lax.top_k`.

The result is `lax.top_k`'s, bit for bit: values in descending order under its total order (the float's bits as an
integer, so +0.0 ranks above -0.0 and a NaN without its sign bit above +inf), ties broken towards the lower index.
A row whose K-th value also occurs outside the selected K, or whose selection holds a NaN, is selected again on
those integer keys, the K-th key's ties taken from the lowest columns.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

try:  # zero-copy access to XLA's buffers (jax >= 0.7); without it, `top_k` is `lax.top_k`
    from jax.experimental.buffer_callback import buffer_callback
except ImportError:  # pragma: no cover - older jax
    buffer_callback = None

# Below this many scores per call the callback's fixed cost outweighs the threads.
HOST_TOP_K_MIN_ELEMENTS = 1 << 16
# Above this many items per row introselect's pass over the row costs about what XLA's partial sort does, even on two
# cores. Top-100 of 500 rows in a jitted call on the project's 2-core CPU, XLA against the host: 21.2 against 10.5 ms
# at 3,706 items, 39.3 / 18.2 at 12,000, 60.5 / 36.8 at 24,910, 70.5 / 59.9 at 40,000, 76.1 / 76.4 at 60,000.
HOST_TOP_K_MAX_ITEMS = 40_000


@functools.cache
def _pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="hvae-top-k")


def _order_keys(values: np.ndarray) -> np.ndarray:
    """int32 keys whose integer order is `lax.top_k`'s order of the float32 `values` (a total order)."""
    bits = values.view(np.int32)
    return bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))


def _sorted_by_key(keys: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """`columns` [rows, m] reordered by descending key, ties by ascending column: `keys` are the columns' keys."""
    # One uint64 per entry, ascending in (-key, column): 2^31 - 1 - key (0 to 2^32 - 1) above, the column below.
    packed = (((np.int64(0x7FFFFFFF) - keys.astype(np.int64)).astype(np.uint64) << np.uint64(32))
              | columns.astype(np.uint64))
    return np.take_along_axis(columns, np.argsort(packed, axis=1), 1)


def _exact_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns [rows, k] in `lax.top_k`'s order, selected on the integer keys: every key above the k-th best, then
    the lowest columns holding the k-th best key itself (rows with ties across the cut, NaNs)."""
    keys = _order_keys(scores)
    n = keys.shape[1]
    kth = np.take_along_axis(keys, np.argpartition(keys, n - k, axis=1)[:, n - k : n - k + 1], 1)
    above = keys > kth
    at = keys == kth
    selected = above | (at & (np.cumsum(at, axis=1) <= k - above.sum(axis=1, keepdims=True)))
    columns = np.nonzero(selected)[1].reshape(len(keys), k)  # row by row, columns ascending
    return _sorted_by_key(np.take_along_axis(keys, columns, 1), columns)


def _top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns [rows, k] of the k best scores of each row of `scores` [rows, n], in `lax.top_k`'s order.

    Each row's k best are selected by introselect on the floats, then ordered by key. Rows where equal scores
    could make the choice depend on the tie rule (more than k scores at or above the k-th, counting +0.0 and -0.0
    as equal) or with a NaN among the chosen are selected again by `_exact_rows`.
    """
    n = scores.shape[1]
    if k == n:
        return _sorted_by_key(_order_keys(scores), np.broadcast_to(np.arange(n), scores.shape))
    columns = np.argpartition(scores, n - k, axis=1)[:, n - k:]
    chosen_scores = np.take_along_axis(scores, columns, 1)
    kth = chosen_scores[:, :1]  # argpartition leaves the k-th best first
    redo = ((scores >= kth).sum(axis=1) > k) | np.isnan(chosen_scores).any(axis=1)
    columns = _sorted_by_key(_order_keys(chosen_scores), columns)
    if redo.any():
        columns[redo] = _exact_rows(scores[redo], k)
    return columns


def host_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`lax.top_k(scores, k)` in numpy, rows split over a thread pool: ([..., k] values, [..., k] int32 columns)."""
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    shape = scores.shape
    rows = scores.reshape(-1, shape[-1])
    n_chunks = max(1, min(len(rows), os.cpu_count() or 1))
    bounds = np.linspace(0, len(rows), n_chunks + 1).astype(int)
    pieces = list(_pool().map(lambda lo, hi: _top_k_rows(rows[lo:hi], k), bounds[:-1], bounds[1:]))
    columns = np.concatenate(pieces)
    values = np.take_along_axis(rows, columns, 1)
    return values.reshape(*shape[:-1], k), columns.astype(np.int32).reshape(*shape[:-1], k)


def _write_top_k(context, out, scores, *, k: int) -> None:
    """`buffer_callback`'s body: the top k of the scores' buffer written into the output buffers, no copies."""
    del context
    values, columns = host_top_k(np.asarray(scores), k)
    np.asarray(out[0])[...] = values
    np.asarray(out[1])[...] = columns


def uses_host(scores: jax.Array, k: int) -> bool:
    """Whether `top_k` ranks these scores on the host: float32 rows of at most `HOST_TOP_K_MAX_ITEMS` scores, at
    least `HOST_TOP_K_MIN_ELEMENTS` of them, on the CPU backend of a process with one device (a program over several
    devices keeps XLA's top-K), with jax's `buffer_callback`."""
    return (buffer_callback is not None and jax.default_backend() == "cpu" and jax.device_count() == 1
            and scores.dtype == jnp.float32 and scores.ndim >= 1
            and 0 < k <= scores.shape[-1] <= HOST_TOP_K_MAX_ITEMS and scores.size >= HOST_TOP_K_MIN_ELEMENTS)


def top_k(scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`jax.lax.top_k(scores, k)`, ranked on the host's cores where `uses_host` says so (see the module docstring).

    Traceable and vmappable like `lax.top_k`; no gradient (ranking metrics only).
    """
    if not uses_host(scores, k):
        return jax.lax.top_k(scores, k)
    out_shape = scores.shape[:-1] + (k,)
    result = (jax.ShapeDtypeStruct(out_shape, scores.dtype), jax.ShapeDtypeStruct(out_shape, jnp.int32))
    return buffer_callback(functools.partial(_write_top_k, k=k), result, vmap_method="broadcast_all")(scores)
