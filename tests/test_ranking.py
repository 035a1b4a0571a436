"""`ranking.top_k` against `jax.lax.top_k`: the host path must give the same values and columns, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hvae_jax import metrics, ranking


def awkward_rows(rng: np.random.Generator, n_rows: int = 64, n: int = 300) -> np.ndarray:
    """Random rows and the cases where a tie rule or an order decides: ties across the k-th place, +0.0 and -0.0,
    NaNs of both signs, -inf fill, all-equal rows, rows with fewer finite scores than k."""
    scores = rng.standard_normal((n_rows, n)).astype(np.float32)
    scores[1, 20:200] = 0.75  # a run of equal scores across the cut
    scores[2] = np.round(scores[2])  # many ties everywhere
    scores[3, :] = -1.0
    scores[3, 5], scores[3, 9] = -0.0, 0.0
    scores[3, 11:13] = 0.0
    scores[4, 17] = np.nan
    scores[5, 23] = -np.nan
    scores[6, :] = 1.0
    scores[7, 10:] = -np.inf  # only 10 finite scores
    scores[8, ::2] = np.inf
    scores[9, :40] = -np.inf  # excluded items at the front
    return scores


@pytest.mark.parametrize("k", [1, 10, 100, 299, 300])
def test_host_top_k_equals_lax_top_k_bit_for_bit(k):
    scores = awkward_rows(np.random.default_rng(k))
    values, columns = jax.lax.top_k(jnp.asarray(scores), k)
    host_values, host_columns = ranking.host_top_k(scores, k)
    np.testing.assert_array_equal(host_columns, np.asarray(columns))
    np.testing.assert_array_equal(host_values.view(np.int32), np.asarray(values).view(np.int32))


@pytest.mark.parametrize("levels", [1, 3, 50])
def test_host_top_k_breaks_ties_as_lax_top_k_when_most_scores_are_equal(levels):
    # Few distinct scores (one: an untrained model's zeros; a popularity count): every row has ties across the cut.
    scores = np.random.default_rng(levels).integers(0, levels, (200, 300)).astype(np.float32)
    scores[::7] *= -1.0  # -0.0 beside +0.0
    values, columns = jax.lax.top_k(jnp.asarray(scores), 50)
    host_values, host_columns = ranking.host_top_k(scores, 50)
    np.testing.assert_array_equal(host_columns, np.asarray(columns))
    np.testing.assert_array_equal(host_values.view(np.int32), np.asarray(values).view(np.int32))


def test_host_top_k_keeps_leading_dimensions():
    scores = np.random.default_rng(0).standard_normal((3, 5, 40)).astype(np.float32)
    values, columns = ranking.host_top_k(scores, 7)
    lax_values, lax_columns = jax.lax.top_k(jnp.asarray(scores), 7)
    assert values.shape == columns.shape == (3, 5, 7) and columns.dtype == np.int32
    np.testing.assert_array_equal(columns, np.asarray(lax_columns))
    np.testing.assert_array_equal(values, np.asarray(lax_values))


@pytest.fixture
def host_path(monkeypatch):
    """`top_k` on the host even for the small arrays of a test."""
    monkeypatch.setattr(ranking, "HOST_TOP_K_MIN_ELEMENTS", 0)
    if ranking.buffer_callback is None or jax.default_backend() != "cpu" or jax.device_count() != 1:
        pytest.skip("the host path needs buffer_callback and one CPU device")


def test_top_k_takes_the_host_path_under_jit_and_vmap(host_path):
    scores = jnp.asarray(awkward_rows(np.random.default_rng(1)))
    assert ranking.uses_host(scores, 100)
    expected = jax.lax.top_k(scores, 100)
    for got in (jax.jit(lambda s: ranking.top_k(s, 100))(scores),
                jax.jit(jax.vmap(lambda s: ranking.top_k(s, 100)))(scores),
                jax.vmap(lambda s: ranking.top_k(s, 100))(scores.reshape(4, 16, -1))):
        np.testing.assert_array_equal(np.asarray(got[1]).reshape(expected[1].shape), np.asarray(expected[1]))
        np.testing.assert_array_equal(np.asarray(got[0]).reshape(expected[0].shape), np.asarray(expected[0]))


def test_ranking_metrics_are_the_same_on_either_path(host_path, monkeypatch):
    rng = np.random.default_rng(2)
    scores = awkward_rows(rng)
    heldout = rng.random(scores.shape) < 0.1
    exclude = ~heldout & (rng.random(scores.shape) < 0.2)
    on_host = jax.jit(metrics.ranking_metrics, static_argnames="ks")(scores, heldout, exclude, ks=(5, 20, 100))
    monkeypatch.setattr(ranking, "HOST_TOP_K_MIN_ELEMENTS", 1 << 62)
    on_device = jax.jit(metrics.ranking_metrics, static_argnames="ks")(scores, heldout, exclude, ks=(5, 20, 100))
    assert on_host.keys() == on_device.keys()
    for name in on_host:
        np.testing.assert_array_equal(np.asarray(on_host[name]), np.asarray(on_device[name]), err_msg=name)


def test_top_k_keeps_lax_where_the_host_does_not_pay():
    small = jnp.zeros((2, 50), jnp.float32)
    wide = jax.ShapeDtypeStruct((8, ranking.HOST_TOP_K_MAX_ITEMS + 1), jnp.float32)
    assert not ranking.uses_host(small, 10)  # too few scores for the callback's fixed cost
    assert not ranking.uses_host(wide, 10)  # rows longer than introselect wins on
    assert not ranking.uses_host(jax.ShapeDtypeStruct((64, 2048), jnp.float16), 10)
