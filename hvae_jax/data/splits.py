"""Evaluation protocols: Liang et al.'s strong generalization and a user-given train/valid/test split, both turning
`Interactions` into CSR matrices over one item set, saved to disk with their statistics and reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import numpy as np
import scipy.sparse as sp

from hvae_jax.data.interactions import Interactions


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """Users to evaluate: what the model sees, what it must find, and what the ranking skips.

    Attributes:
      fold_in: [n_users, n_items] CSR, the model's input.
      heldout: [n_users, n_items] CSR, the positives to recover.
      exclude: [n_users, n_items] CSR, items removed from the ranking (the fold-in items; in the given protocol
        also the validation items at test time).
      user_ids: [n_users] raw user ids.
    """

    fold_in: sp.csr_matrix
    heldout: sp.csr_matrix
    exclude: sp.csr_matrix
    user_ids: np.ndarray

    @property
    def n_users(self) -> int:
        return self.fold_in.shape[0]


@dataclasses.dataclass(frozen=True)
class Split:
    """A processed data set: training matrix, validation and test sets, all over the same item columns.

    Attributes:
      train: [n_train_users, n_items] CSR of training positives.
      train_user_ids: [n_train_users] raw ids.
      valid: validation users, or None (given protocol without a validation file).
      test: test users.
      item_ids: [n_items] raw item id of each column.
      protocol: "strong" or "given".
      notes: what was dropped and why.
    """

    train: sp.csr_matrix
    train_user_ids: np.ndarray
    valid: EvalSet | None
    test: EvalSet
    item_ids: np.ndarray
    protocol: str
    notes: tuple[str, ...] = ()

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    def statistics(self) -> dict:
        """Users, items and interactions of each part."""

        def part(eval_set: EvalSet | None) -> dict | None:
            if eval_set is None:
                return None
            return {
                "users": int(eval_set.n_users),
                "fold_in_interactions": int(eval_set.fold_in.nnz),
                "heldout_interactions": int(eval_set.heldout.nnz),
                "users_with_heldout": int(np.sum(np.diff(eval_set.heldout.indptr) > 0)),
            }

        return {
            "protocol": self.protocol,
            "n_items": int(self.n_items),
            "train": {"users": int(self.train.shape[0]), "interactions": int(self.train.nnz)},
            "valid": part(self.valid),
            "test": part(self.test),
            "notes": list(self.notes),
        }


def _binary_csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def strong_generalization(
    interactions: Interactions,
    *,
    n_heldout_users: int,
    seed: int = 98765,
    min_user_count: int = 5,
    heldout_fraction: float = 0.2,
) -> Split:
    """Liang et al. (2018)'s strong-generalization split.

    Users with fewer than `min_user_count` items are removed (no item filter); the remaining users are permuted with
    `seed`; the last `n_heldout_users` are test users, the ones before them validation users, the rest train. The item
    set is the items seen among training users; other items are dropped from held-out users. For each held-out user
    with at least 5 items, int(heldout_fraction * n) random items are held out and the rest are the fold-in input;
    users with fewer keep every item as input and are skipped by the metrics.
    """
    if n_heldout_users <= 0:
        raise ValueError(f"n_heldout_users must be positive (validation and test users each), got {n_heldout_users}")
    rng = np.random.RandomState(seed)
    user_counts = np.bincount(interactions.users, minlength=interactions.n_users)
    kept_users = np.flatnonzero(user_counts >= min_user_count)
    notes = list(interactions.notes)
    n_small = interactions.n_users - len(kept_users)
    if n_small:
        notes.append(f"{n_small} users with fewer than {min_user_count} interactions removed")
    if len(kept_users) <= 2 * n_heldout_users:
        raise ValueError(
            f"{len(kept_users)} users have >= {min_user_count} interactions: too few for {n_heldout_users} validation "
            f"and {n_heldout_users} test users plus training users; lower --heldout-users"
        )
    permuted = kept_users[rng.permutation(len(kept_users))]
    n_train = len(permuted) - 2 * n_heldout_users
    train_users = permuted[:n_train]
    valid_users = permuted[n_train : n_train + n_heldout_users]
    test_users = permuted[n_train + n_heldout_users :]

    user_matrix = interactions.to_csr()
    train_full = user_matrix[train_users]
    train_items = np.flatnonzero(np.asarray(train_full.sum(axis=0)).ravel() > 0)
    n_unseen = interactions.n_items - len(train_items)
    if n_unseen:
        notes.append(f"{n_unseen} items never seen among training users dropped from validation and test users")
    train = train_full[:, train_items].tocsr()

    def heldout_set(users: np.ndarray) -> EvalSet:
        # Re-seeded for validation and again for test users, as Liang et al.'s split_train_test_proportion does.
        heldout_rng = np.random.RandomState(seed)
        matrix = user_matrix[users][:, train_items].tocsr()
        matrix.sort_indices()
        fold_rows, fold_cols, held_rows, held_cols = [], [], [], []
        for row in range(matrix.shape[0]):
            items = matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]]
            is_heldout = np.zeros(len(items), bool)
            if len(items) >= 5:
                is_heldout[heldout_rng.choice(len(items), size=int(heldout_fraction * len(items)), replace=False)] = True
            fold_rows.append(np.full((~is_heldout).sum(), row))
            fold_cols.append(items[~is_heldout])
            held_rows.append(np.full(is_heldout.sum(), row))
            held_cols.append(items[is_heldout])
        shape = (len(users), len(train_items))
        fold_in = _binary_csr(np.concatenate(fold_rows), np.concatenate(fold_cols), shape)
        heldout = _binary_csr(np.concatenate(held_rows), np.concatenate(held_cols), shape)
        return EvalSet(fold_in, heldout, fold_in, interactions.user_ids[users])

    valid = heldout_set(valid_users)
    test = heldout_set(test_users)
    return Split(
        train=train,
        train_user_ids=interactions.user_ids[train_users],
        valid=valid,
        test=test,
        item_ids=interactions.item_ids[train_items],
        protocol="strong",
        notes=tuple(notes),
    )


def given_split(train: Interactions, test: Interactions, valid: Interactions | None = None) -> Split:
    """A split the user supplies as files (as in LightGCN-style benchmarks).

    Every user trains on their train items. At validation the model's input is the user's train items and the train
    items are excluded from the ranking; at test the input is again the train items and both train and validation
    items are excluded. Items absent from the training file and held-out users absent from it are dropped, with notes.
    """
    notes = list(train.notes)
    item_ids = train.item_ids
    item_column = {raw: column for column, raw in enumerate(item_ids)}
    train_matrix = train.to_csr()
    train_row = {raw: row for row, raw in enumerate(train.user_ids)}

    def map_part(part: Interactions, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(train row, item column) of each of `part`'s pairs that both sides know."""
        rows = np.array([train_row.get(raw, -1) for raw in part.user_ids], np.int64)[part.users]
        cols = np.array([item_column.get(raw, -1) for raw in part.item_ids], np.int64)[part.items]
        known = (rows >= 0) & (cols >= 0)
        unknown_users = np.setdiff1d(part.user_ids, train.user_ids)
        unknown_items = np.setdiff1d(part.item_ids, item_ids)
        if len(unknown_users):
            notes.append(f"{name}: {len(unknown_users)} users absent from the training file skipped (cannot fold in)")
        if len(unknown_items):
            notes.append(f"{name}: {len(unknown_items)} items absent from the training file dropped")
        if (~known).sum():
            notes.append(f"{name}: {(~known).sum()} of {len(known)} pairs dropped with them")
        return rows[known], cols[known]

    shape = train_matrix.shape
    valid_matrix = None
    if valid is not None:
        valid_matrix = _binary_csr(*map_part(valid, "valid"), shape)
    test_matrix = _binary_csr(*map_part(test, "test"), shape)

    def eval_set(heldout: sp.csr_matrix, exclude: sp.csr_matrix) -> EvalSet:
        users = np.flatnonzero(np.diff(heldout.indptr) > 0)
        return EvalSet(train_matrix[users], heldout[users], exclude[users], train.user_ids[users])

    valid_set = None if valid_matrix is None else eval_set(valid_matrix, train_matrix)
    test_exclude = train_matrix if valid_matrix is None else _binary_csr(
        *sp.find(train_matrix + valid_matrix)[:2], shape
    )
    return Split(
        train=train_matrix,
        train_user_ids=train.user_ids,
        valid=valid_set,
        test=eval_set(test_matrix, test_exclude),
        item_ids=item_ids,
        protocol="given",
        notes=tuple(notes),
    )


CARVE_METHODS = ("items", "users")


def carve_validation(
    split: Split,
    *,
    method: str = "items",
    n_users: int | None = None,
    fraction: float = 0.2,
    seed: int = 98765,
    min_items: int = 5,
) -> Split:
    """A validation set carved out of the training data of a split that has none (a given train/test split).

    `n_users` training users with at least `min_items` items are drawn with `seed` (default: 10% of them, at most
    10,000), then
      method "items": int(fraction * n) of each drawn user's training items (at least one) become that user's
        validation items; the model trains without them, and at validation the user's other training items are the
        input and excluded from the ranking. Test users keep their whole training rows as input and exclusions.
        This mirrors the given protocol itself (same users, held-out items).
      method "users": the drawn users leave the training matrix and are split as Liang et al.'s held-out users
        (`fraction` of their items held out, the rest the input), a strong-generalization validation.

    Returns:
      The split with `valid` set, the training matrix reduced, and a note saying what was carved.

    Raises:
      ValueError: the split has a validation set already, an unknown method, or too few users to carve.
    """
    if split.valid is not None:
        raise ValueError("the split has a validation set already; carving one is for splits without")
    if method not in CARVE_METHODS:
        raise ValueError(f"unknown carving method {method!r}; expected one of {', '.join(CARVE_METHODS)}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    train = split.train.tocsr()
    train.sort_indices()
    lengths = np.diff(train.indptr)
    eligible = np.flatnonzero(lengths >= min_items)
    if n_users is None:
        n_users = min(10_000, max(1, len(eligible) // 10))
    if n_users <= 0 or n_users >= len(eligible):
        raise ValueError(f"cannot carve {n_users} validation users from {len(eligible)} training users with at least "
                         f"{min_items} items; choose fewer")
    rng = np.random.RandomState(seed)
    users = np.sort(eligible[rng.permutation(len(eligible))[:n_users]])
    rows, cols = [], []
    for row in users:
        items = train.indices[train.indptr[row] : train.indptr[row + 1]]
        chosen = rng.choice(len(items), size=max(1, int(fraction * len(items))), replace=False)
        rows.append(np.full(len(chosen), row))
        cols.append(items[chosen])
    carved = _binary_csr(np.concatenate(rows), np.concatenate(cols), train.shape)
    notes = list(split.notes)
    if method == "items":
        remaining = (train - carved).tocsr()
        remaining.eliminate_zeros()
        valid = EvalSet(remaining[users], carved[users], remaining[users], split.train_user_ids[users])
        notes.append(f"validation carved from training: {fraction:.0%} of the training items of {n_users} users "
                     f"(seed {seed}), {carved.nnz} interactions; those users train on the rest")
        return dataclasses.replace(split, train=remaining, valid=valid, notes=tuple(notes))
    keep = np.setdiff1d(np.arange(train.shape[0]), users)
    fold_in = (train[users] - carved[users]).tocsr()
    fold_in.eliminate_zeros()
    valid = EvalSet(fold_in, carved[users], fold_in, split.train_user_ids[users])
    notes.append(f"validation carved from training: {n_users} users (seed {seed}) leave training; {fraction:.0%} of "
                 "each one's items held out, the rest their input")
    return dataclasses.replace(split, train=train[keep], train_user_ids=split.train_user_ids[keep], valid=valid,
                               notes=tuple(notes))


def fingerprint(**settings) -> str:
    """A short stable hash of the settings (paths with their size and mtime) that produced a split."""
    resolved = {}
    for key, value in sorted(settings.items()):
        path = pathlib.Path(str(value)) if isinstance(value, (str, pathlib.Path)) else None
        if path is not None and path.exists():
            stat = path.stat()
            value = [str(path.resolve()), stat.st_size, int(stat.st_mtime)]
        resolved[key] = value
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _csr_arrays(prefix: str, matrix: sp.csr_matrix) -> dict:
    return {
        f"{prefix}_indptr": matrix.indptr,
        f"{prefix}_indices": matrix.indices,
        f"{prefix}_shape": np.asarray(matrix.shape),
    }


def _csr_from(arrays, prefix: str) -> sp.csr_matrix:
    indices = arrays[f"{prefix}_indices"]
    return sp.csr_matrix(
        (np.ones(len(indices), np.float32), indices, arrays[f"{prefix}_indptr"]), shape=tuple(arrays[f"{prefix}_shape"])
    )


def save_split(split: Split, directory: str | pathlib.Path, key: str) -> None:
    """Writes `split.npz` and then `split.json` (statistics and the settings fingerprint `key`) into `directory`,
    each replaced atomically; split.json, written last, marks the pair complete."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"item_ids": split.item_ids, "train_user_ids": split.train_user_ids, **_csr_arrays("train", split.train)}
    for name in ("valid", "test"):
        eval_set = getattr(split, name)
        if eval_set is None:
            continue
        arrays[f"{name}_user_ids"] = eval_set.user_ids
        for part in ("fold_in", "heldout", "exclude"):
            arrays.update(_csr_arrays(f"{name}_{part}", getattr(eval_set, part)))
    # Without split.json the old split counts as absent, so no moment pairs new arrays with old statistics.
    (directory / "split.json").unlink(missing_ok=True)
    temporary = directory / "split.tmp.npz"
    np.savez_compressed(temporary, **arrays)
    temporary.replace(directory / "split.npz")
    info = {"key": key, "statistics": split.statistics()}
    temporary = directory / "split.tmp.json"
    temporary.write_text(json.dumps(info, indent=2))
    temporary.replace(directory / "split.json")


def _split_info(directory: pathlib.Path) -> dict:
    """split.json's content, checked to hold the statistics."""
    path = directory / "split.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): expected the statistics of the split in split.npz; "
                         "delete split.npz and split.json to split again") from None
    if not isinstance(info, dict) or not isinstance(info.get("statistics"), dict):
        raise ValueError(f"{path} holds no 'statistics' object: expected the statistics of the split in split.npz; "
                         "delete split.npz and split.json to split again")
    return info


def load_split(directory: str | pathlib.Path, key: str | None = None) -> Split | None:
    """The split saved in `directory`, or None if there is none or it was made with other settings than `key`.

    Raises:
      ValueError: split.json is damaged (the message names it); errors of reading split.npz pass through.
    """
    directory = pathlib.Path(directory)
    if not (directory / "split.npz").exists() or not (directory / "split.json").exists():
        return None
    info = _split_info(directory)
    if key is not None and info.get("key") != key:
        return None
    with np.load(directory / "split.npz", allow_pickle=False) as arrays:
        parts = {}
        for name in ("valid", "test"):
            if f"{name}_user_ids" not in arrays:
                parts[name] = None
                continue
            matrices = [_csr_from(arrays, f"{name}_{part}") for part in ("fold_in", "heldout", "exclude")]
            parts[name] = EvalSet(*matrices, arrays[f"{name}_user_ids"])
        statistics = info["statistics"]
        return Split(
            train=_csr_from(arrays, "train"),
            train_user_ids=arrays["train_user_ids"],
            valid=parts["valid"],
            test=parts["test"],
            item_ids=arrays["item_ids"],
            protocol=statistics["protocol"],
            notes=tuple(statistics.get("notes", ())),
        )


def load_split_ids(directory: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """(item ids [n_items], training user ids [n_train]) of the split saved in `directory`, as strings, without
    reading its matrices (what a recommender needs).

    Raises:
      FileNotFoundError: no split.npz there.
    """
    with np.load(pathlib.Path(directory) / "split.npz", allow_pickle=False) as arrays:
        return np.asarray(arrays["item_ids"]).astype(str), np.asarray(arrays["train_user_ids"]).astype(str)
