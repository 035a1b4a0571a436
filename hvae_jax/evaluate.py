"""Evaluation: fold a user's input in, score every item, mask the excluded items, rank on the device and summarise
NDCG / Recall with standard errors. Any scorer works: the neural models, EASE and popularity share this code.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hvae_jax import metrics
from hvae_jax.data.batches import (batch_slots, densify, densify_mask, max_batch_nnz, power_of_two_at_least,
                                    to_device)
from hvae_jax.data.splits import EvalSet
from hvae_jax.models import sparse as sparse_layer

DEFAULT_KS = (10, 20, 50, 100)

# A scorer maps (fold_in [batch, n_items], side [batch, n_features] or None) to scores [batch, n_items].
Scorer = Callable[[jax.Array, jax.Array | None], jax.Array]


def side_rows(side_features: np.ndarray | None, start: int, batch_size: int) -> np.ndarray | None:
    """Side-feature rows [start, start + batch_size), zero-padded like `host_dense_rows`."""
    if side_features is None:
        return None
    rows = np.zeros((batch_size, side_features.shape[1]), np.float32)
    chunk = side_features[start : start + batch_size]
    rows[: len(chunk)] = chunk
    return rows


def model_scorer(model: nn.Module, params) -> Scorer:
    """Scores of a neural model at evaluation: no dropout, z = posterior mean, one user vmapped over the batch."""

    def score(fold_in: jax.Array, side: jax.Array | None) -> jax.Array:
        one_user = lambda x, s: model.apply({"params": params}, x, s, None, with_kl=False).logits  # noqa: E731
        return jax.vmap(one_user, in_axes=(0, None if side is None else 0))(fold_in, side)

    return score


def make_eval_step(score_fn: Callable, ks: Sequence[int], fold_in_as_slots: bool = False) -> Callable:
    """One jitted call: densify a batch of rows on the device, score, exclude, top-K and per-user metrics.

    `score_fn(state, fold_in, side)` receives whatever `state` is passed (parameters, EASE weights), so the
    compiled step is reused across epochs instead of being rebuilt around new parameters. The fold-in arrives as
    dense [batch, n_items] rows, or with `fold_in_as_slots` as `BatchSlots` (the sparse input path's scorer).
    """
    ks = tuple(ks)

    @functools.partial(jax.jit, static_argnames=("n_items", "bounds"))
    def eval_step(state, rows, fold_in, exclude, heldout, side, *, n_items, bounds):
        if fold_in_as_slots:
            fold_in_rows = batch_slots(fold_in, rows, sparse_layer.padded_slots(bounds[0]))
        else:
            fold_in_rows = densify(fold_in, rows, n_items, bounds[0])
        exclude_rows = densify_mask(exclude, rows, n_items, bounds[1])
        heldout_rows = densify_mask(heldout, rows, n_items, bounds[2])
        side_rows = None if side is None else side[jnp.maximum(rows, 0)]
        scores = score_fn(state, fold_in_rows, side_rows)
        return metrics.ranking_metrics(scores, heldout_rows, exclude_rows, ks, valid=rows >= 0)

    return eval_step


def evaluate(
    eval_step: Callable,
    state,
    eval_set: EvalSet,
    *,
    side_features: np.ndarray | None = None,
    batch_size: int = 1000,
) -> dict:
    """Ranks every user of `eval_set` and summarises the metrics.

    The set's CSR matrices go to the device once; each batch of row indices (the last padded with -1, so one shape
    compiles) is densified, scored and ranked there.

    Args:
      eval_step: from `make_eval_step`.
      state: what eval_step's scorer needs (model parameters, EASE weights, popularity vector).
      eval_set: fold-in, held-out and exclusion matrices.
      side_features: [n_eval_users, n_features] aligned with `eval_set`'s users, or None.
      batch_size: users per call.

    Returns:
      `metrics.summarize` output: each metric's mean and `_se`, `n_users`, `n_users_skipped_no_heldout`.
    """
    batch_size = max(1, min(batch_size, eval_set.n_users))
    # Sizes rounded up to powers of two, so that validation and test sets of similar size (Liang's 10,000 and
    # 10,000 users) share one compiled step: the padding costs slots, far cheaper than the scoring.
    def on_device(matrix):
        return to_device(matrix, padded_nnz=power_of_two_at_least(matrix.nnz))

    fold_in = on_device(eval_set.fold_in)
    # In the strong protocol the exclusions are the fold-in items: one copy serves both.
    exclude = fold_in if eval_set.exclude is eval_set.fold_in else on_device(eval_set.exclude)
    heldout = on_device(eval_set.heldout)
    bounds = tuple(power_of_two_at_least(max_batch_nnz(m, batch_size))
                   for m in (eval_set.fold_in, eval_set.exclude, eval_set.heldout))
    side = None if side_features is None else jnp.asarray(side_features, jnp.float32)
    n_batches = -(-eval_set.n_users // batch_size)
    rows = np.full(n_batches * batch_size, -1, np.int32)
    rows[: eval_set.n_users] = np.arange(eval_set.n_users)
    per_batch = [
        eval_step(state, batch_rows, fold_in, exclude, heldout, side, n_items=eval_set.fold_in.shape[1], bounds=bounds)
        for batch_rows in jnp.asarray(rows).reshape(n_batches, batch_size)
    ]
    return metrics.summarize(metrics.concat_per_user(per_batch))


def active_units(level_means: np.ndarray, threshold: float = 0.01) -> int:
    """Burda et al. (2016)'s active units: dimensions u with Cov_x(E_q[z_u | x]) > threshold.

    Args:
      level_means: [n_users, d] posterior means of one level.
    """
    if level_means.shape[0] < 2:
        return 0
    return int(np.sum(np.var(level_means, axis=0, ddof=1) > threshold))
