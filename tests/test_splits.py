"""Tests of hvae_jax.data.splits: leakage, sizes and determinism of the strong-generalization split, the given
protocol's exclusions and drops, and the save/load round trip. Checks compare raw ids, not internal indices.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.sparse as sp

from hvae_jax.data.interactions import from_raw_ids
from hvae_jax.data.splits import Split, given_split, load_split, save_split, strong_generalization
from hvae_jax.data.synthetic import synthetic_interactions

N_HELDOUT_USERS = 50


@functools.cache
def synthetic_with_small_users():
    """The synthetic data set plus users with 1 to 4 items, who must be removed, and 150 items held by one user each,
    so that some items are seen only among validation or test users and must leave the item set."""
    data = synthetic_interactions(n_users=400, n_items=120)
    raw_users = list(data.user_ids[data.users])
    raw_items = list(data.item_ids[data.items])
    for k in range(1, 5):
        raw_users += [f"small{k}"] * k
        raw_items += list(data.item_ids[:k])
    for k in range(150):
        raw_users.append(str(data.user_ids[k]))
        raw_items.append(f"rare{k}")
    return from_raw_ids(np.asarray(raw_users), np.asarray(raw_items))


@functools.cache
def strong(seed: int = 98765) -> Split:
    return strong_generalization(synthetic_with_small_users(), n_heldout_users=N_HELDOUT_USERS, seed=seed)


@functools.cache
def items_by_user() -> dict[str, set[str]]:
    data = synthetic_with_small_users()
    result: dict[str, set[str]] = {}
    for user, item in zip(data.user_ids[data.users], data.item_ids[data.items]):
        result.setdefault(str(user), set()).add(str(item))
    return result


def row_items(matrix: sp.csr_matrix, row: int, item_ids: np.ndarray) -> set[str]:
    return {str(item_ids[column]) for column in matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]]}


def test_strong_split_users_are_disjoint_and_small_users_removed():
    split = strong()
    train_users = set(split.train_user_ids.tolist())
    valid_users = set(split.valid.user_ids.tolist())
    test_users = set(split.test.user_ids.tolist())
    assert len(valid_users) == len(test_users) == N_HELDOUT_USERS
    assert not train_users & valid_users and not train_users & test_users and not valid_users & test_users
    kept = {user for user, items in items_by_user().items() if len(items) >= 5}
    assert train_users | valid_users | test_users == kept
    assert not any(user.startswith("small") for user in train_users | valid_users | test_users)
    assert any("4 users with fewer than 5 interactions removed" in note for note in split.notes)


def test_strong_split_item_set_is_the_training_users_items():
    split = strong()
    seen_in_train = set().union(*(items_by_user()[user] for user in split.train_user_ids))
    assert set(split.item_ids.tolist()) == seen_in_train
    n_unseen = len(set().union(*items_by_user().values()) - seen_in_train)
    assert n_unseen > 0  # rare items of held-out users
    assert any(f"{n_unseen} items never seen among training users dropped" in note for note in split.notes)
    assert len(split.item_ids) == split.n_items == split.train.shape[1]
    # Training rows are the users' full item sets.
    for row, user in enumerate(split.train_user_ids):
        assert row_items(split.train, row, split.item_ids) == items_by_user()[str(user)]


@pytest.mark.parametrize("part", ["valid", "test"])
def test_strong_split_fold_in_and_heldout_partition_each_users_items(part):
    split = strong()
    eval_set = getattr(split, part)
    item_set = set(split.item_ids.tolist())
    assert eval_set.fold_in.shape == eval_set.heldout.shape == (N_HELDOUT_USERS, split.n_items)
    for row, user in enumerate(eval_set.user_ids):
        fold_in = row_items(eval_set.fold_in, row, split.item_ids)
        heldout = row_items(eval_set.heldout, row, split.item_ids)
        assert not fold_in & heldout  # no leakage
        assert fold_in | heldout == items_by_user()[str(user)] & item_set
        n = len(fold_in) + len(heldout)
        assert len(heldout) == (int(0.2 * n) if n >= 5 else 0)
        # The ranking excludes exactly the fold-in items.
        assert row_items(eval_set.exclude, row, split.item_ids) == fold_in
    assert set(np.unique(eval_set.fold_in.data)) <= {1.0} and set(np.unique(eval_set.heldout.data)) <= {1.0}


def test_strong_split_is_deterministic_per_seed():
    first = strong(98765)
    again = strong_generalization(synthetic_with_small_users(), n_heldout_users=N_HELDOUT_USERS, seed=98765)
    assert_splits_equal(first, again)
    other = strong(1)
    assert set(other.test.user_ids.tolist()) != set(first.test.user_ids.tolist())


def test_strong_split_refuses_too_few_users():
    with pytest.raises(ValueError, match="heldout-users"):
        strong_generalization(synthetic_with_small_users(), n_heldout_users=200)


def test_strong_split_refuses_zero_heldout_users_clearly():
    # Zero validation and test users cannot make a strong-generalization split; the error must say so instead of
    # surfacing numpy's "need at least one array to concatenate" from inside the held-out sampling.
    with pytest.raises(ValueError, match="heldout"):
        strong_generalization(synthetic_with_small_users(), n_heldout_users=0)


# ----------------------------------------------------------------------------------------------------------------------
# The given protocol.


def given_parts():
    train = from_raw_ids(
        ["a", "a", "a", "b", "b", "c", "c", "d"],
        ["i1", "i2", "i3", "i2", "i4", "i1", "i5", "i3"],
    )
    valid = from_raw_ids(["a", "b", "x"], ["i4", "i5", "i1"])  # x is unknown
    test = from_raw_ids(
        ["a", "b", "c", "c", "y"],
        ["i5", "i1", "i2", "zz", "i2"],  # zz is an unknown item, y an unknown user
    )
    return train, valid, test


def eval_pairs(split: Split, part: str, matrix_name: str) -> set[tuple[str, str]]:
    eval_set = getattr(split, part)
    matrix = getattr(eval_set, matrix_name)
    return {
        (str(user), item)
        for row, user in enumerate(eval_set.user_ids)
        for item in row_items(matrix, row, split.item_ids)
    }


def test_given_split_inputs_targets_and_exclusions():
    train, valid, test = given_parts()
    split = given_split(train, test, valid)
    assert split.protocol == "given"
    assert set(split.item_ids.tolist()) == {"i1", "i2", "i3", "i4", "i5"}
    train_pairs = {("a", "i1"), ("a", "i2"), ("a", "i3"), ("b", "i2"), ("b", "i4"), ("c", "i1"), ("c", "i5"),
                   ("d", "i3")}
    # Validation: users a and b (x dropped); input and exclusions are their training items.
    assert split.valid.user_ids.tolist() == ["a", "b"]
    assert eval_pairs(split, "valid", "heldout") == {("a", "i4"), ("b", "i5")}
    assert eval_pairs(split, "valid", "fold_in") == {p for p in train_pairs if p[0] in "ab"}
    assert eval_pairs(split, "valid", "exclude") == {p for p in train_pairs if p[0] in "ab"}
    # Test: users a, b, c (y dropped, zz dropped); exclusions are training plus validation items.
    assert split.test.user_ids.tolist() == ["a", "b", "c"]
    assert eval_pairs(split, "test", "heldout") == {("a", "i5"), ("b", "i1"), ("c", "i2")}
    assert eval_pairs(split, "test", "fold_in") == {p for p in train_pairs if p[0] in "abc"}
    assert eval_pairs(split, "test", "exclude") == {p for p in train_pairs if p[0] in "abc"} | {("a", "i4"),
                                                                                                ("b", "i5")}
    notes = " | ".join(split.notes)
    assert "valid: 1 users absent from the training file" in notes
    assert "test: 1 users absent from the training file" in notes
    assert "test: 1 items absent from the training file" in notes
    assert "test: 2 of 5 pairs dropped" in notes


def test_given_split_without_validation_excludes_training_items_only():
    train, _, test = given_parts()
    split = given_split(train, test)
    assert split.valid is None
    assert eval_pairs(split, "test", "exclude") == eval_pairs(split, "test", "fold_in")


# ----------------------------------------------------------------------------------------------------------------------
# Saving and loading.


def assert_splits_equal(a: Split, b: Split) -> None:
    def same_matrix(x: sp.csr_matrix, y: sp.csr_matrix) -> None:
        assert x.shape == y.shape
        np.testing.assert_array_equal(x.indptr, y.indptr)
        np.testing.assert_array_equal(x.indices, y.indices)
        np.testing.assert_array_equal(x.data, y.data)

    same_matrix(a.train, b.train)
    np.testing.assert_array_equal(a.train_user_ids, b.train_user_ids)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    assert a.protocol == b.protocol and tuple(a.notes) == tuple(b.notes)
    for part in ("valid", "test"):
        x, y = getattr(a, part), getattr(b, part)
        assert (x is None) == (y is None)
        if x is None:
            continue
        np.testing.assert_array_equal(x.user_ids, y.user_ids)
        for name in ("fold_in", "heldout", "exclude"):
            same_matrix(getattr(x, name), getattr(y, name))


@pytest.mark.parametrize("which", ["strong", "given", "given_without_valid"])
def test_save_and_load_round_trip(tmp_path, which):
    if which == "strong":
        split = strong()
    else:
        train, valid, test = given_parts()
        split = given_split(train, test, valid if which == "given" else None)
    save_split(split, tmp_path, key="settings-1")
    assert_splits_equal(load_split(tmp_path, key="settings-1"), split)
    assert_splits_equal(load_split(tmp_path), split)  # no key: whatever is there
    assert load_split(tmp_path, key="settings-2") is None
    assert load_split(tmp_path / "missing", key="settings-1") is None


# ----------------------------------------------------------------------------------------------------------------------
# Validation carved out of a given split's training data.


def _given_without_validation(seed: int = 5):
    """A given split of synthetic users: 80% of each user's items in the training file, the rest in the test file."""
    interactions = synthetic_interactions(n_users=400, n_items=150, seed=seed)
    rng = np.random.default_rng(seed)
    in_test = rng.random(len(interactions.users)) < 0.2
    users, items = interactions.user_ids[interactions.users], interactions.item_ids[interactions.items]
    train = from_raw_ids(users[~in_test], items[~in_test])
    test = from_raw_ids(users[in_test], items[in_test])
    return given_split(train, test)


def _pairs(matrix, user_ids) -> set:
    matrix = matrix.tocsr()
    return {(str(user_ids[row]), int(col)) for row, col in zip(*matrix.nonzero())}


@pytest.mark.parametrize("method", ["items", "users"])
def test_carved_validation_is_disjoint_from_training_and_test_and_seeded(method):
    from hvae_jax.data.splits import carve_validation

    split = _given_without_validation()
    carved = carve_validation(split, method=method, seed=3)
    valid_heldout = _pairs(carved.valid.heldout, carved.valid.user_ids)
    assert valid_heldout
    assert not valid_heldout & _pairs(carved.train, carved.train_user_ids)  # the model never trains on them
    assert not valid_heldout & _pairs(carved.test.heldout, carved.test.user_ids)
    assert not valid_heldout & _pairs(carved.valid.fold_in, carved.valid.user_ids)
    # Nothing is lost: training + validation held-out items are the original training items.
    before = _pairs(split.train, split.train_user_ids)
    after = _pairs(carved.train, carved.train_user_ids) | valid_heldout | _pairs(carved.valid.fold_in,
                                                                                  carved.valid.user_ids)
    assert after == before
    # The test set is untouched: same inputs, targets and exclusions.
    for part in ("fold_in", "heldout", "exclude"):
        assert (getattr(carved.test, part) != getattr(split.test, part)).nnz == 0
    if method == "users":
        assert not set(carved.valid.user_ids) & set(carved.train_user_ids)
    else:
        assert set(carved.valid.user_ids) <= set(carved.train_user_ids)
    again = carve_validation(split, method=method, seed=3)
    assert _pairs(again.valid.heldout, again.valid.user_ids) == valid_heldout
    other = carve_validation(split, method=method, seed=4)
    assert _pairs(other.valid.heldout, other.valid.user_ids) != valid_heldout
    assert "carved" in carved.notes[-1]


def test_carving_refuses_a_split_with_validation_and_bad_settings():
    from hvae_jax.data.splits import carve_validation

    split = _given_without_validation()
    with pytest.raises(ValueError, match="validation set already"):
        carve_validation(carve_validation(split))
    with pytest.raises(ValueError, match="method"):
        carve_validation(split, method="rows")
    with pytest.raises(ValueError, match="cannot carve"):
        carve_validation(split, n_users=10_000)
