"""The training objective: the per-user negative ELBO (written for one user, vmapped over the batch), the batch loss
with beta annealing, free bits and weight decay, and the importance-weighted bound for held-out log-likelihood.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from hvae_jax.configs import ModelConfig, TrainConfig
from hvae_jax.data.batches import BatchSlots
from hvae_jax.models import sparse as sparse_layer
from hvae_jax.models.hvae import Output, draw_noise, project_first_layer
from hvae_jax.models.layers import Projected


def log_likelihood(kind: str, logits: jax.Array, x: jax.Array) -> jax.Array:
    """log p(x | z) for one user, up to constants that do not depend on the parameters.

    multinomial: sum_i x_i log softmax(logits)_i (Liang et al.; the multinomial coefficient is dropped)
    bernoulli:   sum_i x_i log sigmoid(l_i) + (1 - x_i) log sigmoid(-l_i)
    gaussian:    -1/2 sum_i (x_i - l_i)^2 (unit variance; -n/2 log 2 pi dropped)
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))  # bfloat16 -> float32; float64 stays
    if kind == "multinomial":
        return jnp.sum(jax.nn.log_softmax(logits) * x)
    if kind == "bernoulli":
        return jnp.sum(x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits))
    if kind == "gaussian":
        return -0.5 * jnp.sum(jnp.square(x - logits))
    raise ValueError(f"unknown likelihood {kind!r}")


class UserTerms(NamedTuple):
    """One user's ELBO terms: nll = -log p(x|z) (scalar) and kl: [L] per level (empty for Mult-DAE)."""

    nll: jax.Array
    kl: jax.Array


def user_terms(
    model: nn.Module,
    params,
    x: jax.Array,
    side: jax.Array | None,
    *,
    key: jax.Array | None,
    input_projection: Projected | None = None,
) -> UserTerms:
    """Negative log-likelihood and KL per level for ONE user; `key=None` evaluates (no dropout, z = mean).

    Args:
      x: [n_items] the user's interactions.
      side: [n_features] or None.
      key: the user's noise key, or None.
      input_projection: the sparse path's first-layer products (dropout already applied), or None.
    """
    config: ModelConfig = model.config
    noise = None
    if key is not None:
        noise = draw_noise(config, model.n_items, key=key, dropout=input_projection is None)
    output = model.apply({"params": params}, x, side, noise, input_projection)
    return UserTerms(-log_likelihood(config.likelihood, output.logits, x), output.kl)


def beta_per_level(train: TrainConfig, config: ModelConfig, step: jax.Array, total_anneal_steps: int) -> jax.Array:
    """[L] KL weights at update `step`: min(beta_cap, step / total_anneal_steps), times each level's multiplier."""
    beta = jnp.minimum(train.beta_cap, step.astype(jnp.float32) / max(total_anneal_steps, 1))
    multipliers = jnp.asarray(train.beta_per_level or (1.0,) * config.n_levels, jnp.float32)
    if multipliers.shape != (config.n_levels,):
        raise ValueError(f"beta_per_level has {multipliers.shape[0]} entries for {config.n_levels} latent levels")
    return beta * multipliers


def weight_l2(params) -> jax.Array:
    """sum of squared weight-matrix entries (biases and pseudo-inputs excluded, as Liang et al.)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    squares = [jnp.sum(jnp.square(leaf)) for path, leaf in leaves if getattr(path[-1], "key", None) == "kernel"]
    return sum(squares) if squares else jnp.zeros(())


def batch_loss(
    params,
    model: nn.Module,
    train: TrainConfig,
    x: jax.Array,
    side: jax.Array | None,
    user_weights: jax.Array,
    betas: jax.Array,
    *,
    key: jax.Array,
    sparse_input: sparse_layer.SparseInput | None = None,
    positives: BatchSlots | None = None,
) -> tuple[jax.Array, dict]:
    """The batch objective: weighted mean over users of the per-user terms, then beta-weighted KL and weight decay.

    loss = mean_u nll_u + sum_l beta_l KL_l + weight_decay * ||W||^2,
    KL_l = mean_u KL_ul, or max(mean_u KL_ul, free_bits) when free_bits > 0

    Args:
      x: [batch, n_items], or None with `sparse_input` and `positives`; side: [batch, n_features] or None.
      user_weights: [batch] 1.0 for real users, 0.0 for padding rows (the last, partial batch of an epoch).
      betas: [L] KL weights.
      key: this step's key; each user gets its own split of it.
      sparse_input: the batch's normalised, dropped-out input as slots; then the first layer is a gather-and-sum
        (`models/sparse.py`) instead of a dense matmul, and `x` serves the likelihood only.
      positives: with `sparse_input`, the batch's binary items as slots; then the multinomial likelihood is
        sum_{i in S_u} l_ui - |S_u| logsumexp(l_u), gathering the logits at the positives, and `x` is not needed.

    Returns:
      (loss, metrics) with metrics "loss", "nll", "kl" ([L] mean KL per level).
    """
    n_rows = user_weights.shape[0]
    user_keys = jax.random.split(key, n_rows)
    projection = None
    if sparse_input is not None:
        projection = project_first_layer(
            model.config, params, lambda kernel: sparse_layer.project(kernel, sparse_input, n_rows)
        )
        if positives is not None:
            terms = _terms_at_positives(model, params, side, user_keys, projection, positives)
            return combine_terms(params, train, terms, user_weights, betas)
    per_user = jax.vmap(
        lambda x_u, side_u, key_u, projection_u: user_terms(
            model, params, x_u, side_u, key=key_u, input_projection=projection_u
        ),
        in_axes=(0, None if side is None else 0, 0, 0),
    )
    return combine_terms(params, train, per_user(x, side, user_keys, projection), user_weights, betas)


def projected_outputs(
    model: nn.Module,
    params,
    projection: Projected,
    side: jax.Array | None,
    user_keys: jax.Array | None,
    *,
    output_layer: bool = True,
) -> Output:
    """The one-user model vmapped over a batch whose first layer was computed outside it (the sparse and
    item-sharded paths): `projection` [batch, hidden] each. With `user_keys` each user draws its epsilons from its
    key (dropout was applied to the slots already); `user_keys=None` evaluates (z = posterior mean)."""
    config: ModelConfig = model.config

    def one_user(projection_u, side_u, key_u):
        noise = None if key_u is None else draw_noise(config, model.n_items, key=key_u, dropout=False)
        return model.apply({"params": params}, None, side_u, noise, projection_u, output_layer=output_layer)

    in_axes = (0, None if side is None else 0, None if user_keys is None else 0)
    return jax.vmap(one_user, in_axes=in_axes)(projection, side, user_keys)


def _terms_at_positives(model: nn.Module, params, side, user_keys, projection: Projected, positives: BatchSlots):
    """Per-user terms of the sparse path, the multinomial likelihood read at the positives' logits only."""
    config: ModelConfig = model.config
    if config.likelihood != "multinomial":
        raise ValueError(f"the likelihood at positives is multinomial; {config.likelihood!r} needs the dense x")

    output = projected_outputs(model, params, projection, side, user_keys)
    logits, kl = output.logits, output.kl
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    at_positives = jnp.where(positives.is_real, logits[positives.row, positives.item], 0.0)
    positive_sum = jnp.zeros(logits.shape[:1], logits.dtype).at[positives.row].add(at_positives)
    log_likelihood = positive_sum - positives.lengths.astype(logits.dtype) * jax.nn.logsumexp(logits, axis=1)
    return UserTerms(-log_likelihood, kl)


def combine_terms(
    params, train: TrainConfig, terms: UserTerms, user_weights: jax.Array, betas: jax.Array
) -> tuple[jax.Array, dict]:
    """The batch objective from per-user terms ([batch] nll, [batch, L] kl); see `batch_loss`."""
    weights = user_weights / jnp.maximum(jnp.sum(user_weights), 1.0)
    nll = jnp.sum(weights * terms.nll)
    kl = jnp.sum(weights[:, None] * terms.kl, axis=0)
    # Free bits are static: with none, the KL enters as it is (a Monte Carlo estimate may average below zero).
    clamped_kl = jnp.maximum(kl, train.free_bits) if train.free_bits > 0 else kl
    kl_term = jnp.sum(betas * clamped_kl) if kl.shape[0] else jnp.zeros(())
    loss = nll + kl_term
    if train.weight_decay:
        loss = loss + train.weight_decay * weight_l2(params)
    return loss, {"loss": loss, "nll": nll, "kl": kl}


def importance_weighted_bound(
    model: nn.Module, params, x: jax.Array, side: jax.Array | None, n_samples: int, *, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Importance-weighted bound (Burda et al. 2016) and single-sample ELBO for ONE user, samples vmapped.

    log p(x) >= log (1/k) sum_k p(x | z_k) p(z_k) / q(z_k | x),  z_k ~ q(z | x), no input dropout.

    Returns:
      (iw_bound, elbo) scalars; elbo is the mean of the same k log-weights, so iw_bound >= elbo exactly.
    """
    config: ModelConfig = model.config

    def log_weight(sample_key):
        noise = draw_noise(config, model.n_items, key=sample_key, dropout=False)
        output = model.apply({"params": params}, x, side, noise)
        return log_likelihood(config.likelihood, output.logits, x) + jnp.sum(output.log_p) - jnp.sum(output.log_q)

    log_weights = jax.vmap(log_weight)(jax.random.split(key, n_samples))
    return jax.nn.logsumexp(log_weights) - jnp.log(n_samples), jnp.mean(log_weights)
