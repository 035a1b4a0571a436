"""Non-neural baselines scored like the VAEs from a fold-in batch: EASE (Steck, WWW 2019) and item popularity.

Fitting runs once in numpy/scipy on the training matrix; scoring is a jnp function of (weights, fold-in batch).
Choosing EASE's l2 is the caller's job, with the same evaluation code as the other models.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse as sp
import threadpoolctl

DEFAULT_EASE_MAX_ITEMS = 40_000

# OpenBLAS's threaded Cholesky factorisation (dpotrf; OpenBLAS 0.3.31 as bundled with scipy 1.17.1) ended the process
# with a segmentation fault on amazon-book's 24,915-item Gram matrix on a 2-core machine, while the same call on one
# BLAS thread finished (171 s) and 20,108 and 16,384 items factored fine threaded (63 and 41 s). Above this many
# items the factorisation and the inversion run on one BLAS thread (threadpoolctl).
EASE_SINGLE_THREAD_ABOVE_ITEMS = 20_480

# Entries of one dense column block of the Gram matrix built at a time (2**24 float64 = 128 MiB); bounds the
# sparse intermediate, which for dense co-occurrence would cost ~12 bytes per entry for the whole matrix at once.
_GRAM_BLOCK_ENTRIES = 2**24


def _as_csr(train: sp.spmatrix | sp.sparray | np.ndarray) -> sp.csr_matrix:
    """A float64 CSR copy with duplicates summed and stored zeros removed, so stored entries are the positives."""
    if len(np.shape(train)) != 2:
        raise ValueError(f"train must be a 2-D [n_users, n_items] matrix, got shape {np.shape(train)}")
    matrix = sp.csr_matrix(train, dtype=np.float64, copy=True)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix


def _dense_gram(train: sp.csr_matrix, block_entries: int = _GRAM_BLOCK_ENTRIES) -> np.ndarray:
    """X^T X as a dense Fortran-ordered float64 [n_items, n_items] array, built one column block at a time.

    Fortran order lets the Cholesky factorisation and inversion that follow run in place.
    """
    n_items = train.shape[1]
    items_by_user = train.T.tocsr()  # [n_items, n_users]
    users_by_item = train.tocsc()  # column slices are cheap in CSC
    gram = np.empty((n_items, n_items), dtype=np.float64, order="F")
    block = max(1, block_entries // max(n_items, 1))
    for start in range(0, n_items, block):
        stop = min(start + block, n_items)
        gram[:, start:stop] = (items_by_user @ users_by_item[:, start:stop]).toarray()
    return gram


def _symmetrize_from_upper(matrix: np.ndarray, block: int = 1024) -> None:
    """Copies the upper triangle onto the lower one in place, a block at a time so no n^2 temporary is made."""
    n = matrix.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        diagonal_block = matrix[start:stop, start:stop]
        matrix[start:stop, start:stop] = np.triu(diagonal_block) + np.triu(diagonal_block, 1).T
        matrix[stop:, start:stop] = matrix[start:stop, stop:].T


def fit_ease(
    train: sp.csr_matrix | np.ndarray,
    l2: float,
    *,
    max_items: int = DEFAULT_EASE_MAX_ITEMS,
    single_thread_above: int = EASE_SINGLE_THREAD_ABOVE_ITEMS,
) -> np.ndarray:
    """Fits EASE's item-item weights in closed form.

    B = argmin_B ||X - X B||_F^2 + l2 ||B||_F^2  subject to diag(B) = 0, whose solution is
    P = (X^T X + l2 I)^-1,  B_ij = -P_ij / P_jj  (i != j),  B_jj = 0.

    Computed in float64 (Cholesky factorisation and inversion in place) and returned as float32.

    Memory: the weights are dense n_items^2 floats: the fit holds one float64 and one float32 copy, 12 * n_items^2
    bytes at its peak (ML-20M, ~20k items: ~4.8 GB during the fit, 1.6 GB for the float32 result). Above
    `max_items` items this raises instead of running out of memory; raise the limit if the machine can hold it.

    Args:
      train: [n_users, n_items] training positives X (scipy sparse or dense; usually binary, values are used as
        given).
      l2: ridge strength lambda > 0, added to the diagonal of X^T X only.
      max_items: largest n_items allowed.
      single_thread_above: above this many items the factorisation runs on one BLAS thread (see
        `EASE_SINGLE_THREAD_ABOVE_ITEMS`).

    Returns:
      [n_items, n_items] float32 weights B with zero diagonal; scores are fold_in @ B.
    """
    if not np.isfinite(l2) or l2 <= 0:
        raise ValueError(f"l2 must be a finite positive number, got {l2!r}")
    train = _as_csr(train)  # O(nnz), small next to the dense matrices below
    n_items = train.shape[1]
    if n_items > max_items:
        raise ValueError(
            f"EASE needs dense {n_items} x {n_items} item-item matrices (about {12 * n_items**2 / 2**30:.1f} GiB "
            f"while fitting), above the limit of max_items={max_items} items; reduce the catalogue (e.g. drop rare "
            "items) or pass a larger max_items if the machine has the memory"
        )
    gram = _dense_gram(train)
    gram[np.diag_indices(n_items)] += l2
    one_thread = n_items > single_thread_above
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas") if one_thread else contextlib.nullcontext():
        factor, _ = scipy.linalg.cho_factor(gram, lower=False, overwrite_a=True, check_finite=False)
        (potri,) = scipy.linalg.lapack.get_lapack_funcs(("potri",), (factor,))
        precision_matrix, info = potri(factor, lower=False, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverting X^T X + l2 I failed (LAPACK potri info={info})")
    # potri fills only the upper triangle; the lower one still holds the original Gram entries.
    _symmetrize_from_upper(precision_matrix)
    diagonal = np.diag(precision_matrix).copy()
    precision_matrix /= -diagonal[None, :]
    np.fill_diagonal(precision_matrix, 0.0)
    return precision_matrix.astype(np.float32, order="C")


def ease_scores(
    weights: jax.Array | np.ndarray,
    fold_in_batch: jax.Array | np.ndarray,
    *,
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST,
) -> jax.Array:
    """EASE scores of a batch of users: scores = fold_in @ B.

    A fold-in item adds nothing to its own score (diag(B) = 0); the metric excludes fold-in items anyway. Full
    float32 precision by default, as TF32 matmuls on GPU can reorder near-ties.

    Args:
      weights: [n_items, n_items] B from `fit_ease`.
      fold_in_batch: [batch, n_items] fold-in positives (bool or 0/1 numbers).
      precision: matmul precision.

    Returns:
      [batch, n_items] scores, in the dtype of `weights`.
    """
    weights = jnp.asarray(weights)
    fold_in_batch = jnp.asarray(fold_in_batch)
    if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"weights must be [n_items, n_items], got {weights.shape}")
    if fold_in_batch.ndim != 2 or fold_in_batch.shape[1] != weights.shape[0]:
        raise ValueError(f"fold_in_batch must be [batch, {weights.shape[0]}], got {fold_in_batch.shape}")
    return jnp.matmul(fold_in_batch.astype(weights.dtype), weights, precision=precision)


def fit_popularity(train: sp.csr_matrix | np.ndarray) -> np.ndarray:
    """Item popularity: the number of distinct training users with a positive on each item.

    pop_j = #{u : X_uj != 0}. Not normalised: rankings are unchanged by scaling.

    Args:
      train: [n_users, n_items] training positives (scipy sparse or dense).

    Returns:
      [n_items] float32 user counts.
    """
    matrix = _as_csr(train)
    return np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float32)


def popularity_scores(popularity: jax.Array | np.ndarray, fold_in_batch: jax.Array | np.ndarray) -> jax.Array:
    """The same popularity vector as the score row of every user in the batch.

    Fold-in items are not removed here; the ranking metric excludes them.

    Args:
      popularity: [n_items] from `fit_popularity`.
      fold_in_batch: [batch, n_items] fold-in positives; only its shape is used.

    Returns:
      [batch, n_items] scores.
    """
    popularity = jnp.asarray(popularity)
    batch, n_items = jnp.shape(fold_in_batch)
    if popularity.shape != (n_items,):
        raise ValueError(f"popularity must have shape ({n_items},), got {popularity.shape}")
    return jnp.broadcast_to(popularity[None, :], (batch, n_items))
