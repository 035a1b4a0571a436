"""Dropout's keep masks from packed bits (`models/keep_masks.py`), against a numpy reading of the same random words
and against the probabilities they must have."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hvae_jax.models import keep_masks


def _numpy_mask(key, keep_prob, shape, planes):
    """The mask rebuilt from the random words with numpy's own bit unpacking (little-endian within a word)."""
    size = int(np.prod(shape))
    words = np.asarray(jax.random.bits(key, (planes, -(-size // 32)), jnp.uint32))
    bits = np.unpackbits(words.astype("<u4").view(np.uint8).reshape(planes, -1), axis=1, bitorder="little")
    value = sum(bits[j, :size].astype(np.int64) << j for j in range(planes))
    return (value < round(keep_prob * 2**planes)).reshape(shape)


@pytest.mark.parametrize("keep_prob,planes", [(0.5, 1), (0.25, 2), (0.75, 2), (0.375, 3), (3 / 256, 8)])
def test_the_mask_is_the_bits_read_as_integers(keep_prob, planes):
    key = jax.random.key(7)
    assert keep_masks.bit_planes(keep_prob) == planes
    for shape in [(3706,), (5, 61), (1,), (2, 3, 33)]:
        mask = keep_masks.draw(key, keep_prob, shape)
        assert mask.shape == shape and mask.dtype == jnp.bool_
        np.testing.assert_array_equal(np.asarray(mask), _numpy_mask(key, keep_prob, shape, planes))


@pytest.mark.parametrize("keep_prob", [0.8, 0.3, 1 / 512, 0.999])
def test_other_probabilities_are_bernoulli_draws(keep_prob):
    key = jax.random.key(3)
    assert keep_masks.bit_planes(keep_prob) is None
    np.testing.assert_array_equal(np.asarray(keep_masks.draw(key, keep_prob, (40, 50))),
                                  np.asarray(jax.random.bernoulli(key, keep_prob, (40, 50))))


def test_never_and_always():
    key = jax.random.key(0)
    assert not np.asarray(keep_masks.draw(key, 0.0, (9, 4))).any()
    assert np.asarray(keep_masks.draw(key, 1.0, (9, 4))).all()


@pytest.mark.parametrize("keep_prob", [0.5, 0.75, 0.375])
def test_frequencies_per_position_and_between_neighbours(keep_prob):
    # 4,096 users of 96 items each (three words a plane): every position, whatever its bit within a word, is kept
    # with probability keep_prob, and neighbours (bits of one word) are uncorrelated. Bounds: 5 binomial SDs.
    n_users, n_items = 4096, 96
    keys = jax.random.split(jax.random.key(11), n_users)
    masks = np.asarray(jax.jit(jax.vmap(lambda k: keep_masks.draw(k, keep_prob, (n_items,))))(keys), np.float64)
    sd = np.sqrt(keep_prob * (1 - keep_prob) / n_users)
    assert np.abs(masks.mean(axis=0) - keep_prob).max() < 5 * sd
    assert abs(masks.mean() - keep_prob) < 5 * sd / np.sqrt(n_items)
    centred = masks - keep_prob
    neighbour_correlation = (centred[:, 1:] * centred[:, :-1]).mean() / (keep_prob * (1 - keep_prob))
    assert abs(neighbour_correlation) < 5 / np.sqrt(n_users * (n_items - 1))
    # Different users (keys) draw different masks.
    assert len({row.tobytes() for row in masks}) == n_users


def test_dropout_keeps_the_input_scale():
    # Inverted dropout at the default rate: x * mask / 0.5 averages x over many draws.
    x = jnp.linspace(0.1, 1.0, 64)
    keys = jax.random.split(jax.random.key(5), 20_000)
    dropped = jax.vmap(lambda k: jnp.where(keep_masks.draw(k, 0.5, x.shape), x / 0.5, 0.0))(keys)
    np.testing.assert_allclose(np.asarray(dropped.mean(axis=0)), np.asarray(x), rtol=5 * np.sqrt(1 / 20_000))
