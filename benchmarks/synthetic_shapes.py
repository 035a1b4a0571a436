"""Synthetic interaction matrices shaped like the data sets the Mult-VAE papers report on, built directly as CSR.

Only the shape matters for throughput: users x items, interactions per user and a skewed (power-law) item
popularity, so that a batch's number of non-zeros, and hence the sparse work, is realistic. Drawing takes seconds
even at ML-20M size.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp


@dataclasses.dataclass(frozen=True)
class DataShape:
    """A data set's size under Liang et al.'s strong-generalization protocol (training users only).

    Attributes:
      name: label used in results ("ml-20m", "ml-1m").
      n_users: training users.
      n_items: items seen among training users.
      mean_items_per_user: mean interactions per user.
    """

    name: str
    n_users: int
    n_items: int
    mean_items_per_user: float


SHAPES: dict[str, DataShape] = {
    # ML-20M with ratings > 3.5 and 10,000 + 10,000 held-out users: 116,677 x 20,108, ~10.0M interactions.
    "ml-20m": DataShape("ml-20m", 116_677, 20_108, 73.0),
    # ML-1M with ratings > 3.5 and 600 + 600 held-out users: about 4,840 x 3,706, ~165 per user.
    "ml-1m": DataShape("ml-1m", 4_840, 3_706, 165.0),
    # Smoke runs only (`--quick` tests on a small CPU): a catalogue of 1,000 items, ~30 per user.
    "tiny": DataShape("tiny", 1_000, 1_000, 30.0),
}


def catalogue_shape(n_items: int, *, n_users: int = 5_000, mean_items_per_user: float = 60.0) -> DataShape:
    """A shape with `n_items` items (the scaling benchmark's catalogue axis); rows at most half the catalogue."""
    return DataShape(f"items-{n_items}", n_users, n_items, min(mean_items_per_user, n_items / 4))

# Zipf-Mandelbrot item popularity p_k ~ (k + offset)^-exponent: a power-law tail whose head is not so steep that the
# top item would need more than one interaction per user.
_POPULARITY_EXPONENT = 1.0
_POPULARITY_OFFSET = 50.0


def power_law_csr(n_users: int, n_items: int, mean_items_per_user: float, *, seed: int) -> sp.csr_matrix:
    """A binary [n_users, n_items] float32 CSR matrix with sorted indices.

    Row lengths are log-normal (at least 5, at most half the catalogue) with the requested mean; items follow a
    Zipf-Mandelbrot popularity over a random relabelling of the items. Each row draws half again as many items as it
    needs, with replacement, merges repeats and keeps a random subset of the wanted length, so rows come out at their
    drawn length except for the longest rows of tiny catalogues.
    """
    rng = np.random.default_rng(seed)
    sigma = 1.0
    lengths = rng.lognormal(np.log(mean_items_per_user) - sigma**2 / 2, sigma, n_users)
    lengths = np.clip(np.rint(lengths), 5, n_items // 2).astype(np.int64)
    popularity = (np.arange(n_items) + _POPULARITY_OFFSET) ** -_POPULARITY_EXPONENT
    cumulative = np.cumsum(popularity[rng.permutation(n_items)])
    cumulative /= cumulative[-1]
    draws = np.ceil(1.5 * lengths).astype(np.int64)
    users = np.repeat(np.arange(n_users, dtype=np.int64), draws)
    items = np.minimum(np.searchsorted(cumulative, rng.random(len(users))), n_items - 1)
    pairs = _distinct(users * n_items + items)
    # Keep a random `lengths[u]` of each row's distinct items: order each row randomly (user in the high bits of
    # one int64 sort key, a random number in the low bits), then cut at the wanted length.
    shuffled = np.argsort((pairs // n_items << 31) | rng.integers(0, 2**31, len(pairs)))
    pairs = pairs[shuffled]
    pair_users = pairs // n_items
    row_starts = np.searchsorted(pair_users, np.arange(n_users))
    rank_in_row = np.arange(len(pairs)) - row_starts[pair_users]
    pairs = np.sort(pairs[rank_in_row < lengths[pair_users]])
    indptr = np.concatenate([[0], np.cumsum(np.bincount(pairs // n_items, minlength=n_users))])
    return sp.csr_matrix(
        (np.ones(len(pairs), np.float32), (pairs % n_items).astype(np.int32), indptr.astype(np.int64)),
        shape=(n_users, n_items),
    )


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values; sort-and-compare, which is many times faster than `np.unique` on large int arrays."""
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])]


def split_heldout(matrix: sp.csr_matrix, fraction: float = 0.2, *, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(fold_in, heldout): each interaction goes to heldout with probability `fraction`, the rest to fold_in."""
    rng = np.random.default_rng(seed)
    coo = matrix.tocoo()
    is_heldout = rng.random(coo.nnz) < fraction
    parts = []
    for keep in (~is_heldout, is_heldout):
        part = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=matrix.shape)
        part.sort_indices()
        parts.append(part)
    return parts[0], parts[1]


def make_shape(shape: DataShape, *, seed: int = 0, n_users: int | None = None) -> sp.csr_matrix:
    """The training matrix of `shape` (optionally with fewer users, for smoke runs)."""
    return power_law_csr(n_users or shape.n_users, shape.n_items, shape.mean_items_per_user, seed=seed)
