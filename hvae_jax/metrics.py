"""Top-K ranking metrics of held-out items (NDCG@K and Recall@K in both conventions of the literature).

Per-user values are computed on the device under jit; averaging over users, with standard errors, is done in numpy.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hvae_jax import ranking

DEFAULT_KS: tuple[int, ...] = (10, 20, 50, 100)

# Keys of the per-user dict that are bookkeeping rather than metrics to average.
_NON_METRIC_KEYS = ("n_heldout", "valid")


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    return tuple(int(k) for k in ks)


def _metrics_from_hits(
    hits: jax.Array, n_heldout: jax.Array, n_items: int, ks: tuple[int, ...]
) -> dict[str, jax.Array]:
    """Metrics of one user from the hit indicators of their ranked top K_max (see `metrics_from_hits`)."""
    hits = hits.astype(jnp.float32)
    k_max = hits.shape[0]
    # Rank r (0-based) is worth 1 / log2(r + 2).
    discounts = 1.0 / jnp.log2(jnp.arange(k_max, dtype=jnp.float32) + 2.0)
    hits_up_to = jnp.cumsum(hits)
    dcg_up_to = jnp.cumsum(hits * discounts)
    ideal_dcg_up_to = jnp.cumsum(discounts)

    n_heldout = n_heldout.astype(jnp.int32)
    has_heldout = n_heldout > 0
    n_heldout_float = n_heldout.astype(jnp.float32)

    def safe_ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
        # Users without held-out items have a zero denominator; give them 0 without ever dividing by 0, so that no
        # NaN appears in values or in gradients of anything built on top.
        return jnp.where(has_heldout, numerator / jnp.where(has_heldout, denominator, 1.0), 0.0)

    per_user: dict[str, jax.Array] = {}
    for k in ks:
        k_eff = min(k, n_items)  # static
        n_hits = hits_up_to[k_eff - 1]
        n_ideal = jnp.minimum(n_heldout, k_eff)  # items an ideal ranking would place in the top K
        ideal_dcg = ideal_dcg_up_to[jnp.maximum(n_ideal - 1, 0)]
        per_user[f"ndcg@{k}"] = safe_ratio(dcg_up_to[k_eff - 1], ideal_dcg)
        per_user[f"recall@{k}"] = safe_ratio(n_hits, n_ideal.astype(jnp.float32))
        per_user[f"recall_all@{k}"] = safe_ratio(n_hits, n_heldout_float)
    per_user["n_heldout"] = n_heldout
    return per_user


def _hits_of_batch(scores: jax.Array, heldout: jax.Array, exclude: jax.Array, k_max: int) -> jax.Array:
    """[batch, k_max] bool, in rank order: whether the item each user got at rank r is held out.

    Each row is ranked after its excluded items are set to -inf (`ranking.top_k`: `lax.top_k`'s result, ranked on
    the host's cores on the CPU backend). An excluded item reaches the top K only when fewer than K items are left to
    rank (its score is -inf); it fills a slot but never counts as a hit, even if the caller also marked it held out.
    """
    _, top_items = ranking.top_k(jnp.where(exclude, -jnp.inf, scores), k_max)
    return jnp.take_along_axis(heldout & ~exclude, top_items, axis=1)


def _with_valid(per_user: dict[str, jax.Array], valid: jax.Array | None, batch: int) -> dict[str, jax.Array]:
    if valid is None:
        per_user["valid"] = jnp.ones((batch,), dtype=bool)
        return per_user
    valid = jnp.asarray(valid).astype(bool)
    if valid.shape != (batch,):
        raise ValueError(f"valid must have shape ({batch},), got {valid.shape}")
    per_user = {name: jnp.where(valid, values, jnp.zeros_like(values)) for name, values in per_user.items()}
    per_user["valid"] = valid
    return per_user


def metrics_from_hits(
    hits: jax.Array,
    n_heldout: jax.Array,
    n_items: int,
    ks: Sequence[int] = DEFAULT_KS,
    valid: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Per-user metrics from already-ranked lists, for rankers that never hold a full score row (the chunked,
    item-sharded top-K of `models/item_sharded.py`). Same definitions and output as `ranking_metrics`.

    Args:
      hits: [batch, min(max(ks), n_items)] bool, hits[b, r] = the item user b got at rank r is held out (False for
        a rank filled by an excluded item).
      n_heldout: [batch] int, each user's number of held-out items.
      n_items: catalogue size (a K above it is clipped to it).
      ks, valid: as `ranking_metrics`.
    """
    ks = _check_ks(ks)
    k_max = min(max(ks), n_items)
    hits = jnp.asarray(hits)
    if hits.ndim != 2 or hits.shape[1] != k_max or jnp.shape(n_heldout) != hits.shape[:1]:
        raise ValueError(f"hits must be [batch, {k_max}] and n_heldout [batch]; got {hits.shape} and "
                         f"{jnp.shape(n_heldout)}")
    per_user = jax.vmap(functools.partial(_metrics_from_hits, n_items=n_items, ks=ks))(hits, jnp.asarray(n_heldout))
    return _with_valid(per_user, valid, hits.shape[0])


def ranking_metrics(
    scores: jax.Array,
    heldout: jax.Array,
    exclude: jax.Array,
    ks: Sequence[int] = DEFAULT_KS,
    valid: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Per-user NDCG@K and Recall@K of a batch of score rows.

    Each row is ranked after its excluded items are set to -inf, with `ranking.top_k` (`jax.lax.top_k`'s result;
    on the CPU backend computed on the host's cores) at K_max = min(max(ks), n_items); a K above n_items is clipped
    to n_items (the key keeps the requested K). Ties in score are broken towards the lower item index (what
    `lax.top_k` does), so with equal scores item 3 is ranked above item 7.
    With r the 0-based rank, hit_r = 1 if the item at rank r is held out, H = n_heldout:

      ndcg@K       = sum_{r<K} hit_r / log2(r + 2)  /  sum_{r<min(K, H)} 1 / log2(r + 2)
      recall@K     = sum_{r<K} hit_r / min(K, H)     (Liang et al. 2018, Mult-VAE)
      recall_all@K = sum_{r<K} hit_r / H             (LightGCN, RecBole, DiffRec)

    Held-out and excluded items are expected to be disjoint; an item in both counts in H but can never be a hit.
    Users with H == 0 get 0 for every metric (never NaN); `summarize` leaves them out of the averages.

    Padding: when a batch is padded to a fixed shape, pass `valid`; padding rows get 0 everywhere and are marked
    in the `valid` output, which `concat_per_user` and `summarize` use to drop them. Without `valid` every row is
    a real user.

    Jit with `ks` static (see `ranking_metrics_jit`, which needs `ks` as a tuple).

    Args:
      scores: [batch, n_items] float scores, higher is better.
      heldout: [batch, n_items] bool or 0/1 numbers, the held-out positives.
      exclude: [batch, n_items] bool or 0/1 numbers, items to leave out of the ranking (the fold-in items).
      ks: cut-offs K.
      valid: optional [batch] bool, False on padding rows.

    Returns:
      Dict of [batch] arrays: `ndcg@K`, `recall@K`, `recall_all@K` (float32) for each K in `ks`, `n_heldout`
      (int32) and `valid` (bool, all True when `valid` was not given).
    """
    ks = _check_ks(ks)
    scores = jnp.asarray(scores)
    heldout = jnp.asarray(heldout)
    exclude = jnp.asarray(exclude)
    if scores.ndim != 2 or heldout.shape != scores.shape or exclude.shape != scores.shape:
        raise ValueError(
            f"scores {scores.shape}, heldout {heldout.shape} and exclude {exclude.shape} must all be [batch, n_items]"
        )
    if scores.shape[1] == 0:
        raise ValueError("cannot rank zero items")
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)
    # astype(bool) rather than `> 0` so that bool and 0/1 float inputs give the same masks.
    n_items = scores.shape[1]
    heldout = heldout.astype(bool)
    hits = _hits_of_batch(scores, heldout, exclude.astype(bool), min(max(ks), n_items))
    per_user = jax.vmap(functools.partial(_metrics_from_hits, n_items=n_items, ks=ks))(
        hits, jnp.sum(heldout, axis=1, dtype=jnp.int32))
    return _with_valid(per_user, valid, scores.shape[0])


# `ks` must be hashable here: pass a tuple.
ranking_metrics_jit = jax.jit(ranking_metrics, static_argnames="ks")


def concat_per_user(batches: Sequence[Mapping[str, jax.Array | np.ndarray]]) -> dict[str, np.ndarray]:
    """Joins the per-user dicts of several batches into numpy arrays, dropping padding rows.

    Rows whose `valid` entry is False are removed and the `valid` key is dropped from the result, so the result
    holds real users only and can be saved or passed to `summarize` as it is.

    Args:
      batches: per-user dicts as returned by `ranking_metrics`, all with the same keys.

    Returns:
      Dict of [n_users] numpy arrays, one entry per key of the inputs except `valid`.
    """
    if not batches:
        raise ValueError("concat_per_user needs at least one batch")
    keys = list(batches[0].keys())
    for index, batch in enumerate(batches):
        if set(batch.keys()) != set(keys):
            raise ValueError(f"batch {index} has keys {sorted(batch.keys())}, batch 0 has {sorted(keys)}")
    joined = {key: np.concatenate([np.asarray(batch[key]) for batch in batches]) for key in keys}
    valid = joined.pop("valid", None)
    if valid is not None:
        keep = valid.astype(bool)
        joined = {key: values[keep] for key, values in joined.items()}
    return joined


def summarize(per_user: Mapping[str, jax.Array | np.ndarray]) -> dict[str, float | int]:
    """Averages per-user metrics over the users that have held-out items, with standard errors.

    se = std(values, ddof=1) / sqrt(n_users), and 0.0 when only one user is counted. Rows marked invalid (padding)
    are ignored entirely; valid rows with n_heldout == 0 are skipped and counted.

    Args:
      per_user: dict of [n] arrays with `n_heldout`, optionally `valid`, and any number of metrics (e.g. the output
        of `ranking_metrics` or `concat_per_user`).

    Returns:
      Dict with, for each metric, its mean and `<metric>_se` (Python floats), plus `n_users` (users averaged over)
      and `n_users_skipped_no_heldout` (Python ints).

    Raises:
      ValueError: if no user has held-out items, if arrays are missing, not 1-D or of different lengths, or if a
        metric is not finite.
    """
    arrays = {name: np.asarray(values) for name, values in per_user.items()}
    if "n_heldout" not in arrays:
        raise ValueError(f"per_user needs an 'n_heldout' entry, got keys {sorted(arrays)}")
    n_rows = arrays["n_heldout"].shape
    for name, values in arrays.items():
        if values.ndim != 1 or values.shape != n_rows:
            raise ValueError(f"per_user[{name!r}] has shape {values.shape}; all entries must be 1-D of shape {n_rows}")
    real_user = arrays["valid"].astype(bool) if "valid" in arrays else np.ones(n_rows, dtype=bool)
    counted = real_user & (arrays["n_heldout"] > 0)
    n_users = int(counted.sum())
    n_skipped = int(real_user.sum()) - n_users
    if n_users == 0:
        raise ValueError(
            f"no user has held-out items ({n_skipped} users, all with n_heldout == 0): there is nothing to average; "
            "check the split (held-out fraction) and that held-out items are not all excluded"
        )
    summary: dict[str, float | int] = {}
    for name, values in arrays.items():
        if name in _NON_METRIC_KEYS:
            continue
        counted_values = values[counted].astype(np.float64)
        if not np.all(np.isfinite(counted_values)):
            raise ValueError(f"metric {name!r} has non-finite values; the scores may contain NaN")
        summary[name] = float(counted_values.mean())
        summary[f"{name}_se"] = (
            float(counted_values.std(ddof=1) / math.sqrt(n_users)) if n_users > 1 else 0.0
        )
    summary["n_users"] = n_users
    summary["n_users_skipped_no_heldout"] = n_skipped
    return summary
