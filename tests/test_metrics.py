"""Tests of hvae_jax.metrics against a plain Python ranking and hand-worked examples."""

from __future__ import annotations

import math
import statistics

import jax
import numpy as np
import pytest

from hvae_jax import metrics

jax.config.update("jax_enable_x64", False)


# Implicit dtype or rank promotion in the metric code would be a bug; make it raise here.
pytestmark = pytest.mark.usefixtures("strict_numerics")


def reference_metrics(scores, heldout, exclude, ks):
    """Loops over users, ranks with sorted() (ties to the lower index), and computes the metrics by definition."""
    out = {f"{name}@{k}": [] for k in ks for name in ("ndcg", "recall", "recall_all")}
    out["n_heldout"] = []
    for user_scores, user_heldout, user_exclude in zip(scores, heldout, exclude):
        candidates = [item for item in range(len(user_scores)) if not user_exclude[item]]
        ranking = sorted(candidates, key=lambda item: (-float(user_scores[item]), item))
        relevant = {item for item in range(len(user_scores)) if user_heldout[item]}
        n_heldout = len(relevant)
        out["n_heldout"].append(n_heldout)
        for k in ks:
            top = ranking[:k]
            n_hits = sum(item in relevant for item in top)
            dcg = sum(1.0 / math.log2(rank + 2) for rank, item in enumerate(top) if item in relevant)
            ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, n_heldout)))
            out[f"ndcg@{k}"].append(dcg / ideal if n_heldout else 0.0)
            out[f"recall@{k}"].append(n_hits / min(k, n_heldout) if n_heldout else 0.0)
            out[f"recall_all@{k}"].append(n_hits / n_heldout if n_heldout else 0.0)
    return {name: np.asarray(values) for name, values in out.items()}


def random_batch(rng, batch, n_items, *, integer_scores=False):
    """Random scores, excluded items and disjoint held-out items, with edge-case rows appended."""
    if integer_scores:
        scores = rng.integers(0, 4, size=(batch, n_items)).astype(np.float32)  # many ties
    else:
        scores = rng.normal(size=(batch, n_items)).astype(np.float32)
    exclude = rng.random((batch, n_items)) < 0.3
    heldout_rate = rng.choice([0.0, 0.05, 0.2, 0.6], size=(batch, 1))  # some users with none, some with few
    heldout = (rng.random((batch, n_items)) < heldout_rate) & ~exclude
    heldout[0] = False  # surely one user without held-out items
    heldout[1] = False
    heldout[1, rng.integers(n_items)] = True  # surely one with a single held-out item
    exclude[1] &= ~heldout[1]
    return scores, heldout, exclude


@pytest.mark.parametrize("integer_scores", [False, True])
def test_matches_python_reference(integer_scores):
    rng = np.random.default_rng(0 if integer_scores else 1)
    ks = (1, 3, 10, 25, 60)  # 60 > n_items: clipped
    scores, heldout, exclude = random_batch(rng, 48, 40, integer_scores=integer_scores)
    got = metrics.ranking_metrics_jit(scores, heldout, exclude, ks=ks)
    want = reference_metrics(scores, heldout, exclude, ks)
    assert set(got) == set(want) | {"valid"}
    assert bool(np.all(got["valid"]))
    np.testing.assert_array_equal(np.asarray(got["n_heldout"]), want["n_heldout"])
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name]), want[name], rtol=1e-5, atol=1e-6, err_msg=name)
        assert np.asarray(got[name]).shape == (48,)
    # Users with fewer held-out items than K make recall and recall_all differ only when H > K.
    n_heldout = want["n_heldout"]
    assert np.any((n_heldout > 0) & (n_heldout < 10)) and np.any(n_heldout > 10)

    summary = metrics.summarize(got)
    counted = n_heldout > 0
    for name in want:
        if name == "n_heldout":
            continue
        assert summary[name] == pytest.approx(float(np.mean(want[name][counted])), rel=1e-5, abs=1e-7)
    assert summary["n_users"] == int(counted.sum())
    assert summary["n_users_skipped_no_heldout"] == int((~counted).sum())


def test_hand_worked_example_one():
    # 5 items, scores [.9, .1, .5, .8, .3], held out {1, 3}, excluded {0}.
    # Ranking without item 0: 3 (.8), 2 (.5), 4 (.3), 1 (.1); item 0 at -inf comes last.
    # @2: top [3, 2], hit at rank 0. DCG = 1/log2(2) = 1. IDCG over min(2, 2) = 2 ranks = 1 + 1/log2(3) = 1.630930.
    #     ndcg = 1 / 1.630930 = 0.613147; recall = 1 / min(2, 2) = 0.5; recall_all = 1 / 2 = 0.5.
    # @5: top [3, 2, 4, 1, 0], hits at ranks 0 and 3. DCG = 1 + 1/log2(5) = 1.430677. IDCG = 1.630930.
    #     ndcg = 0.877215; recall = 2 / 2 = 1; recall_all = 1.
    scores = np.array([[0.9, 0.1, 0.5, 0.8, 0.3]], np.float32)
    heldout = np.array([[0, 1, 0, 1, 0]], bool)
    exclude = np.array([[1, 0, 0, 0, 0]], bool)
    got = metrics.ranking_metrics(scores, heldout, exclude, ks=(2, 5))
    assert float(got["ndcg@2"][0]) == pytest.approx(0.613147, abs=1e-6)
    assert float(got["recall@2"][0]) == pytest.approx(0.5)
    assert float(got["recall_all@2"][0]) == pytest.approx(0.5)
    assert float(got["ndcg@5"][0]) == pytest.approx(0.877215, abs=1e-6)
    assert float(got["recall@5"][0]) == pytest.approx(1.0)
    assert float(got["recall_all@5"][0]) == pytest.approx(1.0)
    assert int(got["n_heldout"][0]) == 2


def test_hand_worked_example_recall_conventions_differ():
    # 6 items scored 6, 5, 4, 3, 2, 1 (item i scores 6 - i), held out {0, 3, 4, 5}, excluded {1}.
    # Ranking: 0, 2, 3, 4, 5 (then 1 at -inf). H = 4.
    # @2: top [0, 2], one hit at rank 0. DCG = 1; IDCG over min(2, 4) = 2 ranks = 1.630930 -> ndcg = 0.613147.
    #     recall = 1 / min(2, 4) = 0.5, recall_all = 1 / 4 = 0.25.
    # @4: top [0, 2, 3, 4], hits at ranks 0, 2, 3. DCG = 1 + 1/log2(4) + 1/log2(5) = 1 + 0.5 + 0.430677 = 1.930677.
    #     IDCG over 4 ranks = 1 + 0.630930 + 0.5 + 0.430677 = 2.561606 -> ndcg = 0.753698.
    #     recall = 3 / 4 = 0.75 = recall_all.
    # Second user, same scores, held out {2}, nothing excluded: H = 1 < K.
    # @2: top [0, 1], no hit -> all 0. @4: top [0, 1, 2, 3], hit at rank 2: DCG = 1/log2(4) = 0.5, IDCG over
    #     min(4, 1) = 1 rank = 1 -> ndcg = 0.5; recall = 1 / min(4, 1) = 1; recall_all = 1 / 1 = 1.
    scores = np.tile(np.arange(6, 0, -1, dtype=np.float32), (2, 1))
    heldout = np.array([[1, 0, 0, 1, 1, 1], [0, 0, 1, 0, 0, 0]], np.float32)  # 0/1 floats are accepted too
    exclude = np.array([[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], np.float32)
    per_user = metrics.ranking_metrics(scores, heldout, exclude, ks=(2, 4))
    got = {name: np.asarray(values) for name, values in per_user.items()}
    np.testing.assert_allclose(got["ndcg@2"], [0.613147, 0.0], atol=1e-6)
    np.testing.assert_allclose(got["recall@2"], [0.5, 0.0])
    np.testing.assert_allclose(got["recall_all@2"], [0.25, 0.0])
    np.testing.assert_allclose(got["ndcg@4"], [0.753698, 0.5], atol=1e-6)
    np.testing.assert_allclose(got["recall@4"], [0.75, 1.0])
    np.testing.assert_allclose(got["recall_all@4"], [0.75, 1.0])
    np.testing.assert_array_equal(got["n_heldout"], [4, 1])


def test_hand_worked_example_ties_go_to_lower_index():
    # 4 items all scored 1.0, held out {2}, excluded {0}. Ties are broken towards the lower index, so the ranking
    # is 1, 2, 3 (then 0 at -inf).
    # @1: top [1], no hit -> ndcg = recall = 0.
    # @2: top [1, 2], hit at rank 1: DCG = 1/log2(3) = 0.630930, IDCG over min(2, 1) = 1 rank = 1 -> ndcg = 0.630930;
    #     recall = 1 / 1 = 1.
    scores = np.ones((1, 4), np.float32)
    heldout = np.array([[0, 0, 1, 0]], bool)
    exclude = np.array([[1, 0, 0, 0]], bool)
    got = metrics.ranking_metrics(scores, heldout, exclude, ks=(1, 2))
    assert float(got["ndcg@1"][0]) == 0.0
    assert float(got["recall@1"][0]) == 0.0
    assert float(got["ndcg@2"][0]) == pytest.approx(0.630930, abs=1e-6)
    assert float(got["recall@2"][0]) == pytest.approx(1.0)
    assert float(got["recall_all@2"][0]) == pytest.approx(1.0)


def test_no_nan_without_heldout_or_with_everything_excluded():
    n_items = 7
    scores = np.random.default_rng(2).normal(size=(4, n_items)).astype(np.float32)
    heldout = np.zeros((4, n_items), bool)
    exclude = np.zeros((4, n_items), bool)
    # Row 0: no held-out items. Row 1: every item excluded, none held out.
    exclude[1] = True
    # Row 2: every item excluded and one of them held out: it fills a top-K slot at -inf but is not a hit.
    exclude[2] = True
    heldout[2, 3] = True
    # Row 3: an ordinary user, so that summarize has someone to count.
    heldout[3, [0, 5]] = True
    for function in (metrics.ranking_metrics, metrics.ranking_metrics_jit):
        got = function(scores, heldout, exclude, ks=(1, 5, 10))
        for name, values in got.items():
            values = np.asarray(values)
            assert not np.any(np.isnan(values.astype(np.float64))), name
            if name not in ("n_heldout", "valid"):
                np.testing.assert_array_equal(values[:3], 0.0, err_msg=name)
        np.testing.assert_array_equal(np.asarray(got["n_heldout"]), [0, 0, 1, 2])
    summary = metrics.summarize(got)
    assert summary["n_users"] == 2
    assert summary["n_users_skipped_no_heldout"] == 2
    assert all(not math.isnan(value) for value in summary.values())


def test_jit_and_no_jit_agree():
    rng = np.random.default_rng(3)
    scores, heldout, exclude = random_batch(rng, 16, 25)
    ks = (5, 10, 20)
    eager = metrics.ranking_metrics(scores, heldout, exclude, ks=ks)
    jitted = metrics.ranking_metrics_jit(scores, heldout, exclude, ks=ks)
    assert set(eager) == set(jitted)
    for name in eager:
        np.testing.assert_allclose(np.asarray(eager[name]), np.asarray(jitted[name]), rtol=1e-6, err_msg=name)


def test_summarize_standard_error_independently():
    per_user = {
        "ndcg@10": np.array([0.5, 0.0, 1.0, 0.25, 0.9], np.float32),
        "n_heldout": np.array([3, 0, 1, 2, 4], np.int32),
    }
    summary = metrics.summarize(per_user)
    counted = [0.5, 1.0, 0.25, 0.9]  # the user with n_heldout == 0 is left out
    assert summary["ndcg@10"] == pytest.approx(statistics.fmean(counted))
    assert summary["ndcg@10_se"] == pytest.approx(statistics.stdev(counted) / math.sqrt(len(counted)))
    assert summary["n_users"] == 4
    assert summary["n_users_skipped_no_heldout"] == 1
    assert set(summary) == {"ndcg@10", "ndcg@10_se", "n_users", "n_users_skipped_no_heldout"}

    single = metrics.summarize({"recall@5": np.array([0.4, 0.0]), "n_heldout": np.array([1, 0])})
    assert single["recall@5"] == pytest.approx(0.4)
    assert single["recall@5_se"] == 0.0


def test_summarize_raises_when_nobody_has_heldout_items():
    with pytest.raises(ValueError, match="no user has held-out items"):
        metrics.summarize({"ndcg@10": np.zeros(3), "n_heldout": np.zeros(3, np.int32)})
    scores = np.ones((2, 4), np.float32)
    nobody = np.zeros((2, 4), bool)
    with pytest.raises(ValueError, match="no user has held-out items"):
        metrics.summarize(metrics.ranking_metrics(scores, nobody, nobody, ks=(2,)))


def test_padding_rows_are_dropped_across_batches():
    rng = np.random.default_rng(4)
    ks = (2, 8)
    scores, heldout, exclude = random_batch(rng, 20, 12)
    reference = metrics.ranking_metrics(scores, heldout, exclude, ks=ks)
    # Two batches of 12 rows: the second holds 8 real users and 4 padding rows full of held-out items, which would
    # change the averages if they were counted.
    padded_scores = np.concatenate([scores, np.zeros((4, 12), np.float32)])
    padded_heldout = np.concatenate([heldout, np.ones((4, 12), bool)])
    padded_exclude = np.concatenate([exclude, np.zeros((4, 12), bool)])
    valid = np.arange(24) < 20
    batches = [
        metrics.ranking_metrics_jit(
            padded_scores[start : start + 12],
            padded_heldout[start : start + 12],
            padded_exclude[start : start + 12],
            ks=ks,
            valid=valid[start : start + 12],
        )
        for start in (0, 12)
    ]
    joined = metrics.concat_per_user(batches)
    assert "valid" not in joined
    for name, values in joined.items():
        assert values.shape == (20,)
        np.testing.assert_allclose(values, np.asarray(reference[name]), rtol=1e-6, err_msg=name)
    # summarize gives the same answer on the joined users and on the raw padded batch with its valid mask.
    padded_all = metrics.ranking_metrics(padded_scores, padded_heldout, padded_exclude, ks=ks, valid=valid)
    assert metrics.summarize(joined) == pytest.approx(metrics.summarize(padded_all))
    assert metrics.summarize(padded_all)["n_users"] == int((np.asarray(reference["n_heldout"]) > 0).sum())


def test_bad_arguments_raise():
    scores = np.zeros((2, 5), np.float32)
    mask = np.zeros((2, 5), bool)
    with pytest.raises(ValueError, match="ks"):
        metrics.ranking_metrics(scores, mask, mask, ks=())
    with pytest.raises(ValueError, match="ks"):
        metrics.ranking_metrics(scores, mask, mask, ks=(0, 5))
    with pytest.raises(ValueError, match="batch, n_items"):
        metrics.ranking_metrics(scores, mask[:, :4], mask, ks=(2,))
    with pytest.raises(ValueError, match="valid"):
        metrics.ranking_metrics(scores, mask, mask, ks=(2,), valid=np.ones(3, bool))
    with pytest.raises(ValueError, match="keys"):
        metrics.concat_per_user([{"a": np.zeros(1)}, {"b": np.zeros(1)}])
