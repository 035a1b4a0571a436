"""Tests of the hierarchical VAE and Mult-DAE forward passes against plain float64 numpy written from the papers.

Every test feeds the same parameters and the same noise (dropout mask, epsilons drawn here with numpy) to the Flax
module and to the numpy reference, so the comparison is exact up to float32 rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_params

from hvae_jax.configs import DAEConfig, TrainConfig
from hvae_jax.configs import VAEConfig as ModelConfig
from hvae_jax.models.hvae import Noise, build_model, draw_noise, init_params
from hvae_jax.models.priors import PriorContext, build_prior
from hvae_jax.objectives import batch_loss, user_terms

N_ITEMS = 24
TOLERANCE = dict(rtol=2e-4, atol=2e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Plain numpy references (float64).


def to_numpy(params):
    return jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), params)


def np_log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_normalize(x, keep_mask=None, dropout_rate=0.0):
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    x = x / np.where(norm > 0, norm, 1.0)
    if keep_mask is not None:
        x = x * keep_mask / (1.0 - dropout_rate)
    return x


def np_dense(layer, x):
    return x @ layer["kernel"] + layer["bias"]


def np_hidden(layer, inputs, gated):
    """tanh of the sum of each present input's own affine map; gated: (sum) * sigmoid(sum of gate maps)."""
    pre = sum(np_dense(layer[f"linear_{i}"], x) for i, x in enumerate(inputs) if x is not None)
    if not gated:
        return np.tanh(pre)
    gate = sum(np_dense(layer[f"gate_{i}"], x) for i, x in enumerate(inputs) if x is not None)
    return pre / (1.0 + np.exp(-gate))


def np_log_normal(z, mean, logvar):
    return -0.5 * np.sum(np.log(2 * np.pi) + logvar + (z - mean) ** 2 / np.exp(logvar), axis=-1)


def np_kl(mean_q, logvar_q, mean_p, logvar_p):
    var_q, var_p = np.exp(logvar_q), np.exp(logvar_p)
    return 0.5 * np.sum(np.log(var_p / var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1.0, axis=-1)


def np_head(layer, h, clip):
    out = np_dense(layer, h)
    d = out.shape[-1] // 2
    mean, logvar = out[..., :d], out[..., d:]
    if clip is not None:
        logvar = np.clip(logvar, *clip)
    return mean, logvar


def np_mult_vae(p, x, keep_mask, epsilon, beta, dropout_rate):
    """Liang et al.'s Mult-VAE [I-H-d-H-I] for one user, spelled out; returns (logits, loss, kl).

    x -> l2 normalise -> dropout -> tanh(W1 x + b1) -> [mu, logvar] -> z = mu + exp(logvar / 2) eps
      -> tanh(W2 z + b2) -> W3 h + b3;  loss = -sum(log_softmax(logits) * x) + beta * KL(q || N(0, I)).
    """
    h = np.tanh(np_normalize(x, keep_mask, dropout_rate) @ p["input_layer"]["linear_0"]["kernel"]
                + p["input_layer"]["linear_0"]["bias"])
    out = h @ p["posterior_heads_0"]["kernel"] + p["posterior_heads_0"]["bias"]
    d = out.shape[-1] // 2
    mu, logvar = out[:d], out[d:]
    z = mu if epsilon is None else mu + np.exp(logvar / 2) * epsilon
    h2 = np.tanh(z @ p["decoder_hidden"]["linear_0"]["kernel"] + p["decoder_hidden"]["linear_0"]["bias"])
    logits = h2 @ p["decoder_output"]["kernel"] + p["decoder_output"]["bias"]
    kl = 0.5 * np.sum(-logvar + np.exp(logvar) + mu**2 - 1.0)
    loss = -np.sum(np_log_softmax(logits) * x) + beta * kl
    return logits, loss, kl


def np_mult_dae(p, x, keep_mask, dropout_rate):
    """Mult-DAE [I-d-I]: logits = W2 tanh(W1 dropout(normalise(x)) + b1) + b2."""
    h = np.tanh(np_normalize(x, keep_mask, dropout_rate) @ p["encoder"]["linear_0"]["kernel"]
                + p["encoder"]["linear_0"]["bias"])
    return h @ p["decoder_output"]["kernel"] + p["decoder_output"]["bias"]


def np_encoder_features(p, config: ModelConfig, x_normalised):
    """[h_x] for bottom-up inference, [d_1, ..., d_L] for the ladder (works on [n_items] or [K, n_items])."""
    hidden = [np_hidden(p["input_layer"], [x_normalised], config.gated)]
    if config.inference == "ladder":
        for level in range(config.n_levels - 1):
            hidden.append(np_hidden(p[f"upward_{level}"], [hidden[-1]], config.gated))
    return hidden


def np_top_log_prior(p, config: ModelConfig, z_top):
    """log p(z_L): N(0, I), or the VampPrior log (1/K) sum_k q(z_L | u_k) computed component by component."""
    if config.prior == "standard":
        return np_log_normal(z_top, np.zeros_like(z_top), np.zeros_like(z_top))
    densities = []
    for pseudo_input in p["prior"]["pseudo_inputs"]:
        u = np_normalize(np.clip(pseudo_input, 0.0, 1.0))
        mean, logvar = np_head(p[f"posterior_heads_{config.n_levels - 1}"], np_encoder_features(p, config, u)[-1],
                               config.logvar_clip)
        densities.append(np.exp(np_log_normal(z_top, mean, logvar)))
    return np.log(np.mean(densities))


def np_hvae(p, config: ModelConfig, x, keep_mask, epsilons):
    """The whole hierarchical VAE for one user: dict of logits, kl [L], log_q [L], log_p [L], means, logvars."""
    n_levels, clip = config.n_levels, config.logvar_clip
    hidden = np_encoder_features(p, config, np_normalize(x, keep_mask, config.input_dropout))
    z, kl, log_q, log_p, means, logvars = ([None] * n_levels for _ in range(6))
    top = n_levels - 1
    mean_q, logvar_q = np_head(p[f"posterior_heads_{top}"], hidden[-1], clip)
    z[top] = mean_q + np.exp(logvar_q / 2) * epsilons[top]
    log_q[top] = np_log_normal(z[top], mean_q, logvar_q)
    log_p[top] = np_top_log_prior(p, config, z[top])
    kl[top] = np_kl(mean_q, logvar_q, 0 * mean_q, 0 * mean_q) if config.prior == "standard" else log_q[top] - log_p[top]
    means[top], logvars[top] = mean_q, logvar_q
    for level in reversed(range(n_levels - 1)):
        mean_p, logvar_p = np_head(
            p[f"prior_heads_{level}"], np_hidden(p[f"prior_hidden_{level}"], [z[level + 1]], config.gated), clip
        )
        if config.inference == "bottom_up":
            h = np_hidden(p[f"posterior_hidden_{level}"], [hidden[0], z[level + 1]], config.gated)
            mean_q, logvar_q = np_head(p[f"posterior_heads_{level}"], h, clip)
        else:
            mean_e, logvar_e = np_head(p[f"posterior_heads_{level}"], hidden[level], clip)
            precision = np.exp(-logvar_e) + np.exp(-logvar_p)
            logvar_q = -np.log(precision)
            mean_q = (mean_e * np.exp(-logvar_e) + mean_p * np.exp(-logvar_p)) / precision
        z[level] = mean_q + np.exp(logvar_q / 2) * epsilons[level]
        log_q[level] = np_log_normal(z[level], mean_q, logvar_q)
        log_p[level] = np_log_normal(z[level], mean_p, logvar_p)
        kl[level] = np_kl(mean_q, logvar_q, mean_p, logvar_p)
        means[level], logvars[level] = mean_q, logvar_q
    h = np_hidden(p["decoder_hidden"], z, config.gated)
    logits = np_dense(p["decoder_output"], h)
    return dict(logits=logits, kl=np.array(kl), log_q=np.array(log_q), log_p=np.array(log_p), means=means,
                logvars=logvars, z=z)


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers.


def random_user(seed: int, n_items: int = N_ITEMS, density: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.random(n_items) < density).astype(np.float32)
    x[rng.integers(n_items)] = 1.0
    return x


def random_noise(config: ModelConfig, seed: int, n_items: int = N_ITEMS) -> tuple[Noise, np.ndarray, list]:
    rng = np.random.default_rng(seed)
    keep_mask = (rng.random(n_items) > config.input_dropout).astype(np.float32)
    epsilons = [rng.standard_normal(d).astype(np.float32) for d in config.latents]
    noise = Noise(jnp.asarray(keep_mask), tuple(jnp.asarray(e) for e in epsilons))
    return noise, keep_mask.astype(np.float64), [e.astype(np.float64) for e in epsilons]


def model_and_params(config: ModelConfig, seed: int = 0, n_items: int = N_ITEMS):
    model = build_model(config, n_items)
    return model, random_params(model, seed)


def forward(model, params, x, noise):
    """One user's forward pass (eager: with these tiny shapes op-by-op dispatch is cheaper than compiling)."""
    return model.apply({"params": params}, jnp.asarray(x, jnp.float32), None, noise)


@functools.cache
def jitted_batch_loss(model, train: TrainConfig):
    return jax.jit(lambda params, x, weights, betas, key: batch_loss(params, model, train, x, None, weights, betas,
                                                                     key=key))


MULT_VAE = ModelConfig(latents=(6,), hidden=10)


# ----------------------------------------------------------------------------------------------------------------------
# Mult-VAE and Mult-DAE.


def test_one_level_model_is_mult_vae():
    model, params = model_and_params(MULT_VAE)
    assert set(params) == {"input_layer", "posterior_heads_0", "decoder_hidden", "decoder_output"}
    p = to_numpy(params)
    for seed in range(3):
        x = random_user(seed)
        noise, keep_mask, epsilons = random_noise(MULT_VAE, seed)
        output = forward(model, params, x, noise)
        logits, _, kl = np_mult_vae(p, x.astype(np.float64), keep_mask, epsilons[0], 0.0, MULT_VAE.input_dropout)
        np.testing.assert_allclose(np.asarray(output.logits), logits, **TOLERANCE)
        np.testing.assert_allclose(np.asarray(output.kl), [kl], **TOLERANCE)

    # Evaluation: no dropout, z = posterior mean.
    x = random_user(9)
    output = forward(model, params, x, None)
    logits, _, _ = np_mult_vae(p, x.astype(np.float64), None, None, 0.0, MULT_VAE.input_dropout)
    np.testing.assert_allclose(np.asarray(output.logits), logits, **TOLERANCE)


def test_mult_vae_batch_loss_is_the_numpy_loss_averaged_over_users():
    model, params = model_and_params(MULT_VAE, seed=3)
    p = to_numpy(params)
    batch, beta = 5, 0.3
    x = np.stack([random_user(10 + u) for u in range(batch)])
    key = jax.random.key(7)
    loss, metrics = jitted_batch_loss(model, TrainConfig())(params, jnp.asarray(x), jnp.ones(batch),
                                                            jnp.asarray([beta]), key)
    # The noise batch_loss draws: one key per user, split from the step key.
    user_keys = jax.random.split(key, batch)
    losses, kls = [], []
    for u in range(batch):
        noise = draw_noise(MULT_VAE, N_ITEMS, key=user_keys[u])
        _, user_loss, kl = np_mult_vae(p, x[u].astype(np.float64), np.asarray(noise.keep_mask, np.float64),
                                       np.asarray(noise.epsilons[0], np.float64), beta, MULT_VAE.input_dropout)
        losses.append(user_loss)
        kls.append(kl)
    np.testing.assert_allclose(float(loss), np.mean(losses), **TOLERANCE)
    np.testing.assert_allclose(np.asarray(metrics["kl"]), [np.mean(kls)], **TOLERANCE)


def test_mult_dae_matches_numpy():
    config = DAEConfig(latents=(7,))
    model, params = model_and_params(config, seed=4)
    assert set(params) == {"encoder", "decoder_output"}
    p = to_numpy(params)
    x = random_user(11)
    noise, keep_mask, _ = random_noise(config, 12)
    output = forward(model, params, x, noise)
    np.testing.assert_allclose(
        np.asarray(output.logits), np_mult_dae(p, x.astype(np.float64), keep_mask, config.input_dropout), **TOLERANCE
    )
    assert output.kl.shape == (0,)
    output = forward(model, params, x, None)
    np.testing.assert_allclose(np.asarray(output.logits), np_mult_dae(p, x.astype(np.float64), None, 0.0), **TOLERANCE)

    # The DAE objective: multinomial NLL averaged over users plus lam * sum of squared weights, no KL.
    lam, batch = 0.01, 3
    xs = np.stack([random_user(20 + u) for u in range(batch)])
    key = jax.random.key(1)
    loss, _ = jitted_batch_loss(model, TrainConfig(weight_decay=lam))(params, jnp.asarray(xs), jnp.ones(batch),
                                                                      jnp.asarray([0.5]), key)
    user_keys = jax.random.split(key, batch)
    nlls = []
    for u in range(batch):
        mask = np.asarray(draw_noise(config, N_ITEMS, key=user_keys[u]).keep_mask, np.float64)
        logits = np_mult_dae(p, xs[u].astype(np.float64), mask, config.input_dropout)
        nlls.append(-np.sum(np_log_softmax(logits) * xs[u]))
    l2 = np.sum(p["encoder"]["linear_0"]["kernel"] ** 2) + np.sum(p["decoder_output"]["kernel"] ** 2)
    np.testing.assert_allclose(float(loss), np.mean(nlls) + lam * l2, **TOLERANCE)


# ----------------------------------------------------------------------------------------------------------------------
# Hierarchies, priors and the ladder.

HIERARCHIES = {
    "bottom_up_standard_gated": ModelConfig(latents=(6, 4), hidden=10, gated=True),
    "bottom_up_vamp_clipped": ModelConfig(latents=(6, 4), hidden=10, prior="vamp", n_pseudo_inputs=5,
                                          logvar_clip=(-1.0, 0.5)),
    "ladder_vamp": ModelConfig(latents=(6, 4), hidden=10, inference="ladder", prior="vamp", n_pseudo_inputs=5),
    "ladder_three_levels_gated": ModelConfig(latents=(6, 4, 3), hidden=10, inference="ladder", gated=True),
    "one_level_vamp": ModelConfig(latents=(6,), hidden=10, prior="vamp", n_pseudo_inputs=4),
}


@pytest.mark.parametrize("name", sorted(HIERARCHIES))
def test_hierarchical_forward_matches_numpy(name):
    config = HIERARCHIES[name]
    model, params = model_and_params(config, seed=5)
    p = to_numpy(params)
    x = random_user(13)
    noise, keep_mask, epsilons = random_noise(config, 14)
    output = forward(model, params, x, noise)
    want = np_hvae(p, config, x.astype(np.float64), keep_mask, epsilons)
    np.testing.assert_allclose(np.asarray(output.logits), want["logits"], **TOLERANCE)
    np.testing.assert_allclose(np.asarray(output.kl), want["kl"], **TOLERANCE)
    np.testing.assert_allclose(np.asarray(output.log_q), want["log_q"], **TOLERANCE)
    np.testing.assert_allclose(np.asarray(output.log_p), want["log_p"], **TOLERANCE)
    for got, expected in zip(output.means, want["means"]):
        np.testing.assert_allclose(np.asarray(got), expected, **TOLERANCE)


def test_vamp_prior_log_density_is_the_brute_force_mixture():
    config = HIERARCHIES["ladder_vamp"]
    model, params = model_and_params(config, seed=6)
    # Pseudo-inputs partly outside [0, 1], so the hard-tanh clip matters.
    params = dict(params, prior={"pseudo_inputs": jax.random.uniform(
        jax.random.key(2), params["prior"]["pseudo_inputs"].shape, minval=-0.5, maxval=1.5)})
    p = to_numpy(params)

    def top_log_prior(variables, z_top):
        prior_state = model.apply(variables, method="prepare_prior")
        return build_prior(config).log_prob(prior_state, z_top, PriorContext())

    rng = np.random.default_rng(15)
    for _ in range(3):
        z_top = rng.normal(0.0, 1.0, config.latents[-1])
        got = top_log_prior({"params": params}, jnp.asarray(z_top, jnp.float32))
        np.testing.assert_allclose(float(got), np_top_log_prior(p, config, z_top), **TOLERANCE)


def test_ladder_level_one_posterior_is_the_precision_weighted_merge():
    config = ModelConfig(latents=(6, 4), hidden=10, inference="ladder")
    model, params = model_and_params(config, seed=7)
    p = to_numpy(params)
    x = random_user(16).astype(np.float64)
    noise, keep_mask, epsilons = random_noise(config, 17)
    output = forward(model, params, x, noise)

    # Bottom-up estimate of level 1 from d_1, top-down prior from z_2, both in numpy.
    d_1 = np.tanh(np_normalize(x, keep_mask, config.input_dropout) @ p["input_layer"]["linear_0"]["kernel"]
                  + p["input_layer"]["linear_0"]["bias"])
    d_2 = np.tanh(d_1 @ p["upward_0"]["linear_0"]["kernel"] + p["upward_0"]["linear_0"]["bias"])
    top = d_2 @ p["posterior_heads_1"]["kernel"] + p["posterior_heads_1"]["bias"]
    z_2 = top[:4] + np.exp(top[4:] / 2) * epsilons[1]
    prior = np.tanh(z_2 @ p["prior_hidden_0"]["linear_0"]["kernel"] + p["prior_hidden_0"]["linear_0"]["bias"])
    prior = prior @ p["prior_heads_0"]["kernel"] + p["prior_heads_0"]["bias"]
    estimate = d_1 @ p["posterior_heads_0"]["kernel"] + p["posterior_heads_0"]["bias"]
    var_e, var_p = np.exp(estimate[6:]), np.exp(prior[6:])
    var_q = 1.0 / (1.0 / var_e + 1.0 / var_p)
    mean_q = var_q * (estimate[:6] / var_e + prior[:6] / var_p)

    np.testing.assert_allclose(np.asarray(output.means[0]), mean_q, **TOLERANCE)
    z_1 = mean_q + np.sqrt(var_q) * epsilons[0]
    np.testing.assert_allclose(float(output.log_q[0]), np_log_normal(z_1, mean_q, np.log(var_q)), **TOLERANCE)
    np.testing.assert_allclose(float(output.log_p[0]), np_log_normal(z_1, prior[:6], prior[6:]), **TOLERANCE)
    np.testing.assert_allclose(float(output.kl[0]), np_kl(mean_q, np.log(var_q), prior[:6], prior[6:]), **TOLERANCE)


ALL_KINDS = {
    "mult_vae": MULT_VAE,
    "dae": DAEConfig(latents=(7,)),
    "bottom_up": ModelConfig(latents=(6, 4), hidden=10),
    "ladder_vamp_gated": ModelConfig(latents=(6, 4), hidden=10, inference="ladder", prior="vamp", n_pseudo_inputs=3,
                                     gated=True),
    "bernoulli": ModelConfig(latents=(6, 4), hidden=10, likelihood="bernoulli"),
    "gaussian": ModelConfig(latents=(6,), hidden=10, likelihood="gaussian", prior="vamp", n_pseudo_inputs=3),
}


@pytest.mark.parametrize("name", sorted(ALL_KINDS))
def test_all_zero_user_gives_finite_logits_and_loss(name):
    # Padding rows of the last batch are all-zero users with weight 0; a NaN there would poison the whole batch
    # (0 * NaN = NaN), so logits and loss terms must stay finite (tests/test_objectives.py checks that padding rows
    # leave the batch loss and its gradient unchanged).
    config = ALL_KINDS[name]
    model, params = model_and_params(config, seed=8)
    zero = jnp.zeros((N_ITEMS,))
    for noise in (None, random_noise(config, 18)[0]):
        output = forward(model, params, zero, noise)
        assert np.all(np.isfinite(np.asarray(output.logits)))
        assert np.all(np.isfinite(np.asarray(output.kl)))
    for key in (None, jax.random.key(3)):
        terms = user_terms(model, params, zero, None, key=key)
        assert np.isfinite(float(terms.nll)) and np.all(np.isfinite(np.asarray(terms.kl)))


def test_logvar_clip_clips_every_log_variance():
    clip = (-2.0, 1.5)
    config = ModelConfig(latents=(6, 4), hidden=10, logvar_clip=clip, input_dropout=0.0)
    model, params = model_and_params(config, seed=9)
    # Heads output their bias alone: means 0.3, log-variances far outside the clip (+50 on top, -50 below).
    params = dict(params)
    for head, d, logvar in (("posterior_heads_1", 4, 50.0), ("posterior_heads_0", 6, -50.0),
                            ("prior_heads_0", 6, 50.0)):
        params[head] = {"kernel": jnp.zeros_like(params[head]["kernel"]),
                        "bias": jnp.concatenate([jnp.full((d,), 0.3), jnp.full((d,), logvar)])}
    epsilons = (jnp.full((6,), 0.5), jnp.full((4,), -1.0))
    output = forward(model, params, random_user(20), Noise(None, epsilons))

    low, high = clip
    mean_top, logvar_top = np.full(4, 0.3), np.full(4, high)
    z_top = mean_top + np.exp(logvar_top / 2) * -1.0
    mean_1, logvar_1 = np.full(6, 0.3), np.full(6, low)
    mean_p, logvar_p = np.full(6, 0.3), np.full(6, high)
    z_1 = mean_1 + np.exp(logvar_1 / 2) * 0.5
    np.testing.assert_allclose(np.asarray(output.kl), [np_kl(mean_1, logvar_1, mean_p, logvar_p),
                                                       np_kl(mean_top, logvar_top, 0 * mean_top, 0 * mean_top)],
                               **TOLERANCE)
    np.testing.assert_allclose(np.asarray(output.log_q), [np_log_normal(z_1, mean_1, logvar_1),
                                                          np_log_normal(z_top, mean_top, logvar_top)], **TOLERANCE)
    np.testing.assert_allclose(float(output.log_p[0]), np_log_normal(z_1, mean_p, logvar_p), **TOLERANCE)


def test_draw_noise_shapes_rates_and_determinism():
    config = ModelConfig(latents=(6, 4), input_dropout=0.3)
    noise = draw_noise(config, 5000, key=jax.random.key(0))
    assert noise.keep_mask.shape == (5000,) and [e.shape for e in noise.epsilons] == [(6,), (4,)]
    keep_rate = float(jnp.mean(noise.keep_mask))
    assert abs(keep_rate - 0.7) < 5 * np.sqrt(0.7 * 0.3 / 5000)
    assert set(np.unique(np.asarray(noise.keep_mask))) <= {0.0, 1.0}
    again = draw_noise(config, 5000, key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(noise.keep_mask), np.asarray(again.keep_mask))
    other = draw_noise(config, 5000, key=jax.random.key(1))
    assert not np.array_equal(np.asarray(noise.keep_mask), np.asarray(other.keep_mask))
    assert draw_noise(config, 50, key=jax.random.key(0), dropout=False).keep_mask is None
    assert draw_noise(ModelConfig(input_dropout=0.0), 50, key=jax.random.key(0)).keep_mask is None


def test_init_params_share_one_dtype_under_x64():
    # With jax_enable_x64 on, Dense parameters stay float32 (Flax's param_dtype), so the VampPrior's pseudo-inputs
    # must be float32 too; otherwise the pseudo-input pass mixes float64 inputs with float32 kernels.
    config = ModelConfig(latents=(6,), hidden=10, prior="vamp", n_pseudo_inputs=3)
    model = build_model(config, N_ITEMS)
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        params = jax.eval_shape(lambda key: init_params(model, key=key), jax.random.key(0))
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(params)} == {"float32"}
