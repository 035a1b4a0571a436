"""Tests of hvae_jax.objectives: the vmapped batch loss against a loop over users, gradients against finite
differences, free bits, weight decay and the beta schedule against direct formulas, and the importance-weighted bound.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_params
from jax.test_util import check_grads

from hvae_jax.configs import TrainConfig
from hvae_jax.configs import VAEConfig as ModelConfig
from hvae_jax.models.hvae import build_model, draw_noise
from hvae_jax.models.likelihoods import build_likelihood
from hvae_jax.objectives import batch_loss, importance_weighted_bound, user_terms, weight_l2
from hvae_jax.schedules import build_schedule


def log_likelihood(kind, logits, x):
    return build_likelihood(kind).log_prob(logits, x)


def beta_per_level(train, config, step, anneal_steps):
    """The KL weights of update `step` under Liang's schedule over `anneal_steps` updates."""
    train = TrainConfig(**{**train.__dict__, "total_anneal_steps": anneal_steps or None, "epochs": 0})
    return build_schedule(train, n_levels=config.n_levels, steps_per_epoch=1).betas(step)


def total_anneal_steps(train, steps_per_epoch):
    return build_schedule(train, n_levels=1, steps_per_epoch=steps_per_epoch).anneal_steps

N_ITEMS = 20
MULT_VAE = ModelConfig(latents=(6,), hidden=8)
VAMP_LADDER = ModelConfig(latents=(6, 4), hidden=8, inference="ladder", prior="vamp", n_pseudo_inputs=4, gated=True)
MODELS = {"mult_vae": MULT_VAE, "vamp_ladder": VAMP_LADDER}




def random_users(seed: int, n_users: int, n_items: int = N_ITEMS, density: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < density).astype(np.float32)
    x[np.arange(n_users), rng.integers(n_items, size=n_users)] = 1.0
    return x


@functools.cache
def jitted_batch_loss(model, train: TrainConfig):
    """batch_loss with the model and train config closed over (they are static), params to loss and metrics."""
    return jax.jit(lambda params, x, weights, betas, key: batch_loss(params, model, train, x, None, weights, betas,
                                                                     key=key))


def numpy_kernel_l2(params) -> float:
    """sum of squares of every leaf named "kernel", walking the nested dicts by hand, in float64."""
    total = 0.0
    stack = [params]
    while stack:
        node = stack.pop()
        for name, value in node.items():
            if isinstance(value, dict):
                stack.append(value)
            elif name == "kernel":
                total += float(np.sum(np.asarray(value, np.float64) ** 2))
    return total


# ----------------------------------------------------------------------------------------------------------------------
# The batch loss against a loop over users.

N_REAL, N_PADDING = 5, 3


@functools.cache
def looped_terms(name: str):
    """(model, params, x, key, nll [N_REAL], kl [N_REAL, L]) from user_terms called user by user with the keys
    batch_loss derives: jax.random.split(step_key, batch)[u]. Padding rows are random garbage here on purpose."""
    config = MODELS[name]
    model = build_model(config, N_ITEMS)
    params = random_params(model, seed=1)
    x = random_users(2, N_REAL + N_PADDING)
    key = jax.random.key(3)
    user_keys = jax.random.split(key, N_REAL + N_PADDING)
    terms = [user_terms(model, params, jnp.asarray(x[u]), None, key=user_keys[u]) for u in range(N_REAL)]
    nll = np.array([float(t.nll) for t in terms], np.float64)
    kl = np.array([np.asarray(t.kl, np.float64) for t in terms])
    return model, params, x, key, nll, kl


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("regularised", [False, True], ids=["plain", "free_bits_and_weight_decay"])
def test_batch_loss_equals_loop_over_users(name, regularised):
    model, params, x, key, nll, kl = looped_terms(name)
    n_levels = MODELS[name].n_levels
    betas = np.linspace(0.3, 0.7, n_levels)
    mean_kl = kl.mean(axis=0)
    if regularised:
        # Free bits between the smallest and largest level KL (or above the only one), so the clamp acts on some
        # level and, with two levels, not on the other.
        free_bits = float(mean_kl.min() + mean_kl.max()) / 2 if n_levels > 1 else float(mean_kl[0]) + 1.0
        train = TrainConfig(free_bits=free_bits, weight_decay=0.05)
    else:
        train = TrainConfig()
    weights = np.r_[np.ones(N_REAL), np.zeros(N_PADDING)].astype(np.float32)
    loss, metrics = jitted_batch_loss(model, train)(params, jnp.asarray(x), jnp.asarray(weights),
                                                    jnp.asarray(betas, jnp.float32), key)

    # free_bits = 0 disables the clamp (TrainConfig); the VampPrior's Monte Carlo KL can be negative.
    clamped_kl = np.maximum(mean_kl, train.free_bits) if train.free_bits > 0 else mean_kl
    expected = nll.mean() + np.sum(betas * clamped_kl)
    expected += train.weight_decay * numpy_kernel_l2(params)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(metrics["nll"]), nll.mean(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(metrics["kl"]), mean_kl, rtol=1e-5, atol=1e-4)
    if regularised and n_levels > 1:
        assert np.sum(mean_kl < train.free_bits) == 1  # the clamp acted on exactly one level


def test_padding_rows_change_neither_loss_nor_gradient():
    model, params, x, key, _, _ = looped_terms("vamp_ladder")
    weights = jnp.asarray(np.r_[np.ones(N_REAL), np.zeros(N_PADDING)], jnp.float32)
    betas = jnp.asarray([0.4, 0.6])
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda params, x: batch_loss(params, model, TrainConfig(free_bits=0.1), x, None, weights, betas, key=key)[0]
    ))
    garbage_padding = jnp.asarray(x)
    zero_padding = jnp.asarray(x).at[N_REAL:].set(0.0)
    loss_garbage, grad_garbage = value_and_grad(params, garbage_padding)
    loss_zero, grad_zero = value_and_grad(params, zero_padding)
    np.testing.assert_allclose(float(loss_garbage), float(loss_zero), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grad_garbage), jax.tree.leaves(grad_zero)):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_user_terms_jit_and_no_jit_agree():
    # looped_terms ran user_terms eagerly; the jitted function must give the same numbers for the same keys.
    # (batch_loss, jitted here, is compared with the eager loop in test_batch_loss_equals_loop_over_users.)
    model, params, x, key, nll, kl = looped_terms("vamp_ladder")
    user_keys = jax.random.split(key, x.shape[0])
    jitted = jax.jit(lambda params, x_u, key_u: user_terms(model, params, x_u, None, key=key_u))
    for u in range(N_REAL):
        terms = jitted(params, jnp.asarray(x[u]), user_keys[u])
        np.testing.assert_allclose(float(terms.nll), nll[u], rtol=1e-5)
        np.testing.assert_allclose(np.asarray(terms.kl), kl[u], rtol=1e-5, atol=1e-5)


def test_weight_l2_is_the_sum_of_squared_kernels():
    params = looped_terms("vamp_ladder")[1]
    assert "pseudo_inputs" in params["prior"]  # excluded, like the biases
    np.testing.assert_allclose(float(weight_l2(params)), numpy_kernel_l2(params), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_match_finite_differences(name):
    # The model computes in float32 by design (layers.dense fixes the matmul dtype, _split_head and log_likelihood
    # cast to float32), so the check runs in float32: central differences with eps = 3e-3 sit between truncation
    # error (eps^2) and float32 rounding of a loss of ~15 (1e-6 / eps); measured agreement is ~1e-3 relative.
    config = MODELS[name]
    model = build_model(config, N_ITEMS)
    params = random_params(model, seed=4, scale=0.3)
    if "prior" in params:
        # Keep the pseudo-inputs away from the kinks of their [0, 1] clip, where finite differences would straddle.
        params["prior"]["pseudo_inputs"] = jnp.asarray(
            np.random.default_rng(0).uniform(0.1, 0.9, params["prior"]["pseudo_inputs"].shape), jnp.float32
        )
    x = jnp.asarray(random_users(5, 3))
    weights = jnp.asarray([1.0, 1.0, 0.0])
    betas = jnp.full((config.n_levels,), 0.5)
    train = TrainConfig(weight_decay=0.01)
    loss = jax.jit(lambda params: batch_loss(params, model, train, x, None, weights, betas, key=jax.random.key(6))[0])
    check_grads(loss, (params,), order=1, modes=("rev",), eps=3e-3)


def test_free_bits_zero_leaves_a_negative_monte_carlo_kl_alone():
    # The VampPrior's KL is the one-sample estimate log q(z) - log p(z), which can be negative. free_bits = 0 means
    # "disabled" (TrainConfig), so the objective must be nll + beta * KL exactly, not nll + beta * max(KL, 0), which
    # would drop the KL's gradient whenever a batch's estimate is below zero.
    #
    # Construction: one user with one item, one latent dimension, K = 1 pseudo-input with another single item.
    # The encoder maps the user to q = N(m, 1) and the pseudo-input to p = N(0, 1), so with z = m + eps the
    # estimate is m^2 / 2 + m eps; choosing m = -eps (eps as batch_loss will draw it) makes it -eps^2 / 2 < 0.
    config = ModelConfig(latents=(1,), hidden=2, prior="vamp", n_pseudo_inputs=1, input_dropout=0.0)
    model = build_model(config, 4)
    key = jax.random.key(0)
    epsilon = float(draw_noise(config, 4, key=jax.random.split(key, 1)[0]).epsilons[0][0])
    assert abs(epsilon) > 0.1
    a = 2.0
    params = jax.tree.map(jnp.zeros_like, random_params(model, seed=0))
    params["input_layer"]["linear_0"]["kernel"] = params["input_layer"]["linear_0"]["kernel"].at[0, 0].set(a)
    params["posterior_heads_0"]["kernel"] = params["posterior_heads_0"]["kernel"].at[0, 0].set(-epsilon / np.tanh(a))
    params["prior"]["pseudo_inputs"] = jnp.asarray([[0.0, 1.0, 0.0, 0.0]])
    x = jnp.asarray([[1.0, 0.0, 0.0, 0.0]])
    beta = 0.5
    loss, metrics = jitted_batch_loss(model, TrainConfig())(params, x, jnp.ones(1), jnp.asarray([beta]), key)
    np.testing.assert_allclose(float(metrics["kl"][0]), -0.5 * epsilon**2, rtol=1e-4)
    np.testing.assert_allclose(float(loss), float(metrics["nll"]) + beta * float(metrics["kl"][0]), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Schedules and likelihoods.


def test_beta_per_level_schedule():
    config = ModelConfig(latents=(6, 4, 3))
    train = TrainConfig(beta_cap=0.2, beta_per_level=(1.0, 0.5, 2.0))
    multipliers = np.array([1.0, 0.5, 2.0])
    for step in (0, 1, 7, 20, 21, 100, 10_000):
        got = np.asarray(beta_per_level(train, config, jnp.asarray(step, jnp.int32), 100))
        np.testing.assert_allclose(got, min(0.2, step / 100) * multipliers, rtol=1e-6)
    # Without multipliers every level gets beta; a zero-length anneal counts as one update.
    np.testing.assert_allclose(
        np.asarray(beta_per_level(TrainConfig(beta_cap=0.3), config, jnp.asarray(5, jnp.int32), 0)), [0.3] * 3
    )
    with pytest.raises(ValueError, match="beta_per_level"):
        beta_per_level(TrainConfig(beta_per_level=(1.0, 1.0)), config, jnp.asarray(0, jnp.int32), 100)


def test_total_anneal_steps():
    assert total_anneal_steps(TrainConfig(total_anneal_steps=1234), steps_per_epoch=7) == 1234
    # Neither given: beta rises over the whole run.
    assert total_anneal_steps(TrainConfig(total_anneal_steps=None, anneal_epochs=None, epochs=5), 7) == 35


def test_warm_up_reaches_the_cap_exactly_at_anneal_epochs():
    # Kim & Suh's warm-up: beta = cap * epoch / anneal_epochs (epochs from 1), constant within an epoch.
    steps_per_epoch = 7
    schedule = build_schedule(TrainConfig(beta_cap=0.3, anneal_epochs=100, epochs=400), n_levels=2,
                              steps_per_epoch=steps_per_epoch)
    for epoch in (1, 2, 50, 99, 100, 101, 400):
        for step in ((epoch - 1) * steps_per_epoch, epoch * steps_per_epoch - 1):
            got = np.asarray(schedule.betas(jnp.asarray(step, jnp.int32)))
            np.testing.assert_allclose(got, [0.3 * min(1.0, epoch / 100)] * 2, rtol=1e-6)
    assert float(schedule.beta(jnp.asarray(99 * steps_per_epoch, jnp.int32))) == np.float32(0.3)


def test_log_likelihood_matches_numpy():
    rng = np.random.default_rng(7)
    logits = rng.normal(0.0, 2.0, N_ITEMS).astype(np.float32)
    x = random_users(8, 1)[0]
    l64, x64 = logits.astype(np.float64), x.astype(np.float64)
    log_softmax = l64 - np.log(np.sum(np.exp(l64)))
    sigmoid = 1.0 / (1.0 + np.exp(-l64))
    expected = {
        "multinomial": np.sum(x64 * log_softmax),
        "bernoulli": np.sum(x64 * np.log(sigmoid) + (1 - x64) * np.log(1 - sigmoid)),
        "gaussian": -0.5 * np.sum((x64 - l64) ** 2),
    }
    for kind, want in expected.items():
        np.testing.assert_allclose(float(log_likelihood(kind, jnp.asarray(logits), jnp.asarray(x))), want, rtol=1e-5)
    with pytest.raises(ValueError, match="likelihood"):
        log_likelihood("poisson", jnp.asarray(logits), jnp.asarray(x))


# ----------------------------------------------------------------------------------------------------------------------
# The importance-weighted bound.


def test_importance_weighted_bound_assembles_the_log_weights():
    # log w_k = log p(x | z_k) + sum_l log p(z_l) - sum_l log q(z_l), z_k from the k-th split of the key without
    # dropout; bound = log mean_k exp(log w_k), elbo = mean_k log w_k.
    model = build_model(VAMP_LADDER, N_ITEMS)
    params = random_params(model, seed=11)
    x = jnp.asarray(random_users(12, 1)[0])
    key, n_samples = jax.random.key(13), 4
    log_weights = []
    for sample_key in jax.random.split(key, n_samples):
        noise = draw_noise(VAMP_LADDER, N_ITEMS, key=sample_key, dropout=False)
        assert noise.keep_mask is None
        output = model.apply({"params": params}, x, None, noise)
        log_weights.append(float(log_likelihood("multinomial", output.logits, x) + jnp.sum(output.log_p)
                                 - jnp.sum(output.log_q)))
    log_weights = np.array(log_weights)
    bound, elbo = jax.jit(lambda params, x, key: importance_weighted_bound(model, params, x, None, n_samples,
                                                                         key=key))(params, x, key)
    np.testing.assert_allclose(float(bound), np.log(np.mean(np.exp(log_weights))), rtol=1e-5)
    np.testing.assert_allclose(float(elbo), np.mean(log_weights), rtol=1e-5)


def test_importance_weighted_bound_is_above_the_elbo_and_rises_with_k():
    model = build_model(MULT_VAE, N_ITEMS)
    params = random_params(model, seed=14)
    n_users, n_repeats, ks = 8, 3, (1, 10, 100)
    x = jnp.asarray(np.tile(random_users(15, n_users), (n_repeats, 1)))
    keys = jax.random.split(jax.random.key(16), n_users * n_repeats)

    @jax.jit
    def bounds(params, x, keys):  # one compilation for the three k
        return [
            jax.vmap(lambda x_u, key_u: importance_weighted_bound(model, params, x_u, None, k, key=key_u))(x, keys)
            for k in ks
        ]

    mean_bound = {}
    for k, (bound, elbo) in zip(ks, bounds(params, x, keys)):
        bound, elbo = np.asarray(bound, np.float64), np.asarray(elbo, np.float64)
        assert np.all(np.isfinite(bound))
        assert np.all(bound >= elbo - 1e-5 * np.abs(elbo))
        if k == 1:
            np.testing.assert_allclose(bound, elbo, rtol=1e-6)
        mean_bound[k] = bound.mean()
    assert mean_bound[1] < mean_bound[10] < mean_bound[100], mean_bound


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batch_gradient_equals_sum_of_per_user_gradients(name):
    """The vmapped loss hands the output bias to each user as a row of its own (`shared_rows`): its gradient, and
    every other parameter's, equals the mean of the per-user gradients taken one user at a time."""
    model, params, x, key, _, _ = looped_terms(name)
    betas = jnp.asarray(np.linspace(0.3, 0.7, MODELS[name].n_levels), jnp.float32)
    weights = jnp.asarray(np.r_[np.ones(N_REAL), np.zeros(N_PADDING)], jnp.float32)
    batch_grad = jax.jit(jax.grad(
        lambda params: batch_loss(params, model, TrainConfig(), jnp.asarray(x), None, weights, betas, key=key)[0]
    ))(params)
    user_keys = jax.random.split(key, N_REAL + N_PADDING)

    def one_user_loss(params, u):
        terms = user_terms(model, params, jnp.asarray(x[u]), None, key=user_keys[u])
        return terms.nll + jnp.sum(betas * terms.kl)

    per_user = [jax.grad(one_user_loss)(params, u) for u in range(N_REAL)]
    expected = jax.tree.map(lambda *grads: np.mean(np.asarray(grads, np.float64), axis=0), *per_user)
    assert batch_grad["decoder_output"]["bias"].shape == (N_ITEMS,)
    for path, leaf in jax.tree_util.tree_leaves_with_path(batch_grad):
        want = expected
        for entry in path:
            want = want[entry.key]
        np.testing.assert_allclose(np.asarray(leaf), want, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
