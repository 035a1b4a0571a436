"""Tests of hvae_jax.shared_rows: a shared parameter handed to each user as a row keeps the forward values and sums
the rows' gradients exactly as the vmap of a closed-over parameter does, checked against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hvae_jax.models import shared_rows


def test_broadcast_rows_values_and_gradient_against_numpy():
    rng = np.random.default_rng(0)
    value = rng.normal(size=(7, 3)).astype(np.float32)
    weights = rng.normal(size=(5, 7, 3)).astype(np.float32)
    rows = shared_rows.broadcast_rows(jnp.asarray(value), 5)
    np.testing.assert_array_equal(np.asarray(rows), np.broadcast_to(value, (5, 7, 3)))
    grad = jax.jit(jax.grad(lambda v: jnp.sum(jnp.sin(shared_rows.broadcast_rows(v, 5)) * weights)))(value)
    expected = (np.cos(value.astype(np.float64)) * weights.astype(np.float64)).sum(axis=0)
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-6)


def test_per_user_rows_give_the_closed_over_gradient():
    rng = np.random.default_rng(1)
    params = {"hidden": {"kernel": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
                         "bias": jnp.asarray(rng.normal(size=(6,)), jnp.float32)},
              "out": {"bias": jnp.asarray(rng.normal(size=(6,)), jnp.float32)}}
    x = jnp.asarray(rng.normal(size=(9, 4)), jnp.float32)

    def one_user(params_u, x_u):
        hidden = jnp.tanh(x_u @ params_u["hidden"]["kernel"] + params_u["hidden"]["bias"])
        return jax.nn.logsumexp(hidden + params_u["out"]["bias"])

    def closed_over(params):
        return jax.vmap(lambda x_u: one_user(params, x_u))(x).sum()

    def as_rows(params):
        rows, axes = shared_rows.per_user(params, [("out", "bias"), ("hidden", "bias")], x.shape[0])
        return jax.vmap(one_user, in_axes=(axes, 0))(rows, x).sum()

    rows, axes = shared_rows.per_user(params, [("out", "bias")], 9)
    assert axes == {"hidden": {"kernel": None, "bias": None}, "out": {"bias": 0}}
    assert rows["out"]["bias"].shape == (9, 6) and rows["hidden"]["bias"].shape == (6,)
    np.testing.assert_allclose(float(jax.jit(as_rows)(params)), float(closed_over(params)), rtol=1e-6)
    got, want = jax.jit(jax.grad(as_rows))(params), jax.grad(closed_over)(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_per_user_names_a_missing_path():
    with pytest.raises(KeyError, match="decoder_output"):
        shared_rows.per_user({"encoder": {"bias": jnp.zeros(3)}}, [("decoder_output", "bias")], 2)
