"""The training objective: the per-user negative ELBO (written for one user, vmapped over the batch by the input
paths of `input_paths.py`), the batch loss from per-user terms with beta weights, free bits and weight decay, and
the importance-weighted bound for held-out log-likelihood.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from hvae_jax.models import shared_rows
from hvae_jax.models.hvae import draw_noise, output_bias_path
from hvae_jax.models.likelihoods import build_likelihood
from hvae_jax.models.priors import PriorContext, build_prior


class UserTerms(NamedTuple):
    """One user's ELBO terms: nll = -log p(x|z) (scalar) and kl: [L] per level (empty for Mult-DAE)."""

    nll: jax.Array
    kl: jax.Array


def needs_snapshot(model: nn.Module) -> bool:
    """Whether the model's prior looks at the encoder's snapshot (RecVAE's composite prior)."""
    return model.config.kind == "vae" and getattr(_prior_of(model), "needs_previous_posterior", False)


def _prior_of(model: nn.Module):
    return build_prior(model.config)


def prior_context(model: nn.Module, snapshot, x, side, projections=None) -> PriorContext | None:
    """The composite prior's view of one user: q(z_L | x) under the snapshot parameters, without dropout."""
    if snapshot is None:
        return None
    previous = model.apply({"params": snapshot}, x, side, projections, method="top_posterior")
    return PriorContext(jax.tree.map(jax.lax.stop_gradient, previous))


def user_terms(
    model: nn.Module,
    params,
    x: jax.Array,
    side: jax.Array | None,
    *,
    key: jax.Array | None,
    prior_state: Any = None,
    snapshot: Any = None,
    dropout: bool = True,
) -> UserTerms:
    """Negative log-likelihood and KL per level for ONE user given a dense row; `key=None` evaluates (no dropout,
    z = posterior mean).

    Args:
      x: [n_items] the user's interactions.
      side: [n_features] or None.
      key: the user's noise key, or None.
      prior_state: the prior's per-batch state (`model.prepare_prior`); None prepares it for this call.
      snapshot: the encoder snapshot's parameters, for priors that need it (`needs_snapshot`).
      dropout: input dropout on (RecVAE's decoder epochs turn it off but still sample z).
    """
    noise = None if key is None else draw_noise(model.config, model.n_items, key=key, dropout=dropout)
    output = model.apply({"params": params}, x, side, noise, prior_state=prior_state,
                         prior_context=prior_context(model, snapshot, x, side))
    return UserTerms(-build_likelihood(model.config.likelihood).log_prob(output.logits, x), output.kl)


def per_user_terms(
    model: nn.Module, params, x: jax.Array, side: jax.Array | None, user_keys: jax.Array | None, *,
    prior_state: Any = None, snapshot: Any = None, dropout: bool = True,
) -> UserTerms:
    """`user_terms` vmapped over a dense batch x: [batch, n_items] (side [batch, F] or None, user_keys [batch]).
    The output bias reaches each user as a row of its own (`shared_rows`: its gradient summed by a product)."""
    rows, axes = shared_rows.per_user(params, [output_bias_path(model.config)], x.shape[0])
    return jax.vmap(
        lambda params_u, x_u, side_u, key_u: user_terms(model, params_u, x_u, side_u, key=key_u,
                                                        prior_state=prior_state, snapshot=snapshot, dropout=dropout),
        in_axes=(axes, 0, None if side is None else 0, None if user_keys is None else 0),
    )(rows, x, side, user_keys)


def batch_loss(
    params,
    model: nn.Module,
    train,
    x: jax.Array,
    side: jax.Array | None,
    user_weights: jax.Array,
    betas: jax.Array,
    *,
    key: jax.Array,
    snapshot: Any = None,
    kl_weights: jax.Array | None = None,
    dropout: bool = True,
) -> tuple[jax.Array, dict]:
    """The batch objective of dense rows x: [batch, n_items]: each user's terms with their own split of `key`, then
    `combine_terms`. The input paths of `input_paths.py` compute the same from the training matrix's rows."""
    prior_state = model.apply({"params": params}, None, method="prepare_prior")
    terms = per_user_terms(model, params, x, side, jax.random.split(key, x.shape[0]), prior_state=prior_state,
                           snapshot=snapshot, dropout=dropout)
    return combine_terms(params, train, terms, user_weights, betas, kl_weights)


def weight_l2(params) -> jax.Array:
    """sum of squared weight-matrix entries (biases and the prior's parameters excluded, as Liang et al.)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    squares = [jnp.sum(jnp.square(leaf)) for path, leaf in leaves if getattr(path[-1], "key", None) == "kernel"]
    return sum(squares) if squares else jnp.zeros(())


def combine_terms(
    params,
    train,
    terms: UserTerms,
    user_weights: jax.Array,
    betas: jax.Array,
    kl_weights: jax.Array | None = None,
    weight_decay: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """The batch objective from per-user terms ([batch] nll, [batch, L] kl); `weight_decay` replaces the config's
    L2 weight (an ensemble member's own, `hyperparameters.py`).

    loss = mean_u nll_u + sum_l beta_l KL_l + weight_decay * ||W||^2,
    KL_l = mean_u w_u KL_ul (w_u = 1, or RecVAE's gamma |x_u| given as `kl_weights`), or max(KL_l, free_bits) when
    free_bits > 0. Means are over real users: `user_weights` is 1.0 for them, 0.0 for padding rows.

    Returns:
      (loss, metrics) with metrics "loss", "nll", "kl" ([L] mean KL per level, unweighted).
    """
    weights = user_weights / jnp.maximum(jnp.sum(user_weights), 1.0)
    nll = jnp.sum(weights * terms.nll)
    kl = jnp.sum(weights[:, None] * terms.kl, axis=0)
    weighted_kl = kl if kl_weights is None else jnp.sum((weights * kl_weights)[:, None] * terms.kl, axis=0)
    # Free bits are static: with none, the KL enters as it is (a Monte Carlo estimate may average below zero).
    clamped_kl = jnp.maximum(weighted_kl, train.free_bits) if train.free_bits > 0 else weighted_kl
    kl_term = jnp.sum(betas * clamped_kl) if kl.shape[0] else jnp.zeros(())
    loss = nll + kl_term
    if weight_decay is not None:
        loss = loss + weight_decay * weight_l2(params)
    elif train.weight_decay:
        loss = loss + train.weight_decay * weight_l2(params)
    return loss, {"loss": loss, "nll": nll, "kl": kl}


def importance_weighted_bound(
    model: nn.Module, params, x: jax.Array, side: jax.Array | None, n_samples: int, *, key: jax.Array,
    snapshot: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """Importance-weighted bound (Burda et al. 2016) and single-sample ELBO for ONE user, samples vmapped.

    log p(x) >= log (1/k) sum_k p(x | z_k) p(z_k) / q(z_k | x),  z_k ~ q(z | x), no input dropout.

    Returns:
      (iw_bound, elbo) scalars; elbo is the mean of the same k log-weights, so iw_bound >= elbo exactly.
    """
    config = model.config
    likelihood = build_likelihood(config.likelihood)
    prior_state = model.apply({"params": params}, method="prepare_prior")
    context = prior_context(model, snapshot, x, side)

    def log_weight(sample_key):
        noise = draw_noise(config, model.n_items, key=sample_key, dropout=False)
        output = model.apply({"params": params}, x, side, noise, prior_state=prior_state, prior_context=context)
        return likelihood.log_prob(output.logits, x) + jnp.sum(output.log_p) - jnp.sum(output.log_q)

    log_weights = jax.vmap(log_weight)(jax.random.split(key, n_samples))
    return jax.nn.logsumexp(log_weights) - jnp.log(n_samples), jnp.mean(log_weights)
