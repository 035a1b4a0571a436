"""User-item positives with the raw ids kept, the one type every reader returns.

Raw ids of any kind (integers, strings) are mapped to contiguous indices in order of first appearance, so that
results can be reported back in the data set's own ids.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import scipy.sparse as sp


class DataFormatError(ValueError):
    """A data file does not have the expected format. The message names the file, the line and what was expected."""


@dataclasses.dataclass(frozen=True)
class Interactions:
    """Implicit-feedback positives as parallel arrays, one row per distinct (user, item) pair.

    Attributes:
      users: [n] int64 user indices in [0, n_users).
      items: [n] int64 item indices in [0, n_items).
      counts: [n] int64, how many times the pair occurred in the source (duplicates are merged and counted).
      user_ids: [n_users] raw user ids as strings, indexed by user index.
      item_ids: [n_items] raw item ids as strings, indexed by item index.
      source: where the data came from (a path or a name).
      notes: human-readable remarks on what was skipped and why (e.g. rows below the rating threshold).
    """

    users: np.ndarray
    items: np.ndarray
    counts: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    source: str = ""
    notes: tuple[str, ...] = ()

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)

    def to_csr(self) -> sp.csr_matrix:
        """Binary [n_users, n_items] matrix of positives (float32, sorted indices)."""
        matrix = sp.csr_matrix(
            (np.ones(len(self.users), np.float32), (self.users, self.items)),
            shape=(self.n_users, self.n_items),
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix


def _index_in_order_of_appearance(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (indices [n], unique raw values [m]) with ids numbered by first appearance."""
    unique, first_position, inverse = np.unique(raw, return_index=True, return_inverse=True)
    order = np.argsort(first_position, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse.reshape(-1)].astype(np.int64), unique[order]


def from_raw_ids(
    raw_users: Sequence | np.ndarray,
    raw_items: Sequence | np.ndarray,
    *,
    source: str = "",
    notes: Sequence[str] = (),
) -> Interactions:
    """Builds `Interactions` from parallel arrays of raw ids, merging and counting duplicate pairs.

    Args:
      raw_users: [n] raw user ids (any type; compared as strings).
      raw_items: [n] raw item ids (any type; compared as strings).
      source: where the data came from, kept for reports.
      notes: remarks on skipped rows to carry along.
    """
    raw_users = np.asarray(raw_users)
    raw_items = np.asarray(raw_items)
    # Integer ids are indexed as integers (fast on 20M rows); only the unique ids become strings.
    if raw_users.dtype.kind not in "iu":
        raw_users = raw_users.astype(str)
    if raw_items.dtype.kind not in "iu":
        raw_items = raw_items.astype(str)
    if raw_users.shape != raw_items.shape or raw_users.ndim != 1:
        raise ValueError(f"raw_users {raw_users.shape} and raw_items {raw_items.shape} must be 1-D and equally long")
    user_index, user_ids = _index_in_order_of_appearance(raw_users)
    item_index, item_ids = _index_in_order_of_appearance(raw_items)
    user_ids = user_ids.astype(str)
    item_ids = item_ids.astype(str)
    pair_key = user_index * max(len(item_ids), 1) + item_index
    unique_keys, counts = np.unique(pair_key, return_counts=True)
    n_items = max(len(item_ids), 1)
    notes = tuple(notes)
    if len(unique_keys) < len(pair_key):
        notes += (f"{len(pair_key) - len(unique_keys)} duplicate (user, item) rows merged into their first pair and counted",)
    return Interactions(
        users=(unique_keys // n_items).astype(np.int64),
        items=(unique_keys % n_items).astype(np.int64),
        counts=counts.astype(np.int64),
        user_ids=user_ids,
        item_ids=item_ids,
        source=source,
        notes=notes,
    )
