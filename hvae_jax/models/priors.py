"""Priors of the top latent level, as a small protocol of pure functions, registered by name.

A prior has parameters (`init`), an optional per-batch preparation shared by every user of the batch (`prepare`:
the VampPrior pushes its pseudo-inputs through the encoder here, once per update rather than once per user), a
per-user log-density (`log_prob`) and, when it has one, a closed-form KL (`kl`); without it the model uses the
one-sample estimate log q(z) - log p(z).

  class MyPrior(Prior):
      def log_prob(self, prepared, z, context): ...
  register_prior("mine", lambda config: MyPrior())
  VAEConfig(prior="mine")

The standard normal, the VampPrior (Tomczak & Welling, AISTATS 2018) and RecVAE's composite prior (Shenbin et al.,
WSDM 2020) are the first implementations.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from hvae_jax.models import gaussian, keep_masks

# encode_top(inputs [K, n_items]) -> (means [K, d], logvars [K, d]): the top level's posterior network.
EncodeTop = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


class PriorContext(NamedTuple):
    """What a prior may know about the user besides z.

    Attributes:
      previous_posterior: (mean [d], logvar [d]) of q(z_L | x) under the encoder's snapshot (the parameters as they
        were at the start of the current cycle), for priors with `needs_previous_posterior`; else None.
    """

    previous_posterior: tuple[jax.Array, jax.Array] | None = None


class Prior:
    """The protocol, with defaults: no parameters, nothing prepared, no closed-form KL.

    Attributes:
      needs_previous_posterior: the model must hand `log_prob` the posterior of the encoder's snapshot.
    """

    needs_previous_posterior: bool = False

    def init(self, key: jax.Array, latent_dim: int, n_items: int) -> dict:
        """The prior's parameters (trained with the model); {} for none."""
        del key, latent_dim, n_items
        return {}

    def prepare(self, params: dict, encode_top: EncodeTop, *, key: jax.Array | None) -> Any:
        """Per-batch work shared by every user; `key` is given in training (for any noise), None in evaluation."""
        del encode_top, key
        return params

    def log_prob(self, prepared: Any, z: jax.Array, context: PriorContext) -> jax.Array:
        """log p(z) for ONE user's top-level sample z: [d]."""
        raise NotImplementedError

    def kl(self, prepared: Any, mean: jax.Array, logvar: jax.Array, context: PriorContext) -> jax.Array | None:
        """KL(N(mean, exp(logvar)) || p) in closed form, or None to estimate it from the sample."""
        del prepared, mean, logvar, context
        return None


class StandardNormal(Prior):
    """p(z) = N(0, I), with the closed-form KL of Liang et al."""

    def log_prob(self, prepared, z, context):
        return gaussian.log_normal(z, jnp.zeros_like(z), jnp.zeros_like(z))

    def kl(self, prepared, mean, logvar, context):
        return gaussian.kl_standard_normal(mean, logvar)


class VampPrior(Prior):
    """p(z) = (1/K) sum_k q(z | u_k): the top-level posterior of K learnt pseudo-inputs u_k (Tomczak & Welling).

    The pseudo-inputs are stored unconstrained and clipped to [0, 1] (their hard-tanh parameterisation), started at
    N(0.05, 0.01). `normalize` L2-normalises them as user inputs are; `dropout_rate` > 0 passes them through the
    input dropout during training, as Kim & Suh's code does (one mask per update, shared by the batch).
    """

    def __init__(self, n_components: int, *, normalize: bool = True, dropout_rate: float = 0.0):
        self.n_components = n_components
        self.normalize = normalize
        self.dropout_rate = dropout_rate

    def init(self, key, latent_dim, n_items):
        del latent_dim
        return {"pseudo_inputs": 0.05 + 0.01 * jax.random.normal(key, (self.n_components, n_items), jnp.float32)}

    def prepare(self, params, encode_top, *, key):
        pseudo = jnp.clip(params["pseudo_inputs"], 0.0, 1.0)
        if self.normalize:
            pseudo = pseudo * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(pseudo), -1, keepdims=True), 1e-12))
        if key is not None and self.dropout_rate > 0:
            keep = keep_masks.draw(key, 1.0 - self.dropout_rate, pseudo.shape)
            pseudo = jnp.where(keep, pseudo / (1.0 - self.dropout_rate), 0.0)
        return encode_top(pseudo)  # (means [K, d], logvars [K, d])

    def log_prob(self, prepared, z, context):
        means, logvars = prepared
        return jax.nn.logsumexp(gaussian.log_normal_components(z, means, logvars)) - math.log(self.n_components)


class CompositePrior(Prior):
    """RecVAE's prior: per latent dimension, a mixture of N(0, 1), the previous encoder's posterior
    N(mu_old(x), var_old(x)) and a wide N(0, e^wide_logvar), with fixed weights (3/20, 3/4, 1/10 in Shenbin et al.):

      log p(z) = sum_d log sum_k w_k N(z_d; m_kd, v_kd)

    The previous posterior comes from the encoder's snapshot, without dropout (`PriorContext`).
    """

    needs_previous_posterior = True

    def __init__(self, weights: tuple[float, float, float] = (3 / 20, 3 / 4, 1 / 10), wide_logvar: float = 10.0):
        if len(weights) != 3 or any(w <= 0 for w in weights):
            raise ValueError(f"the composite prior needs three positive weights, got {weights}")
        self.log_weights = tuple(math.log(w) for w in weights)
        self.wide_logvar = wide_logvar

    def log_prob(self, prepared, z, context):
        if context.previous_posterior is None:
            raise ValueError("the composite prior needs the previous encoder's posterior (PriorContext)")
        old_mean, old_logvar = context.previous_posterior
        zeros = jnp.zeros_like(z)
        per_dimension = jnp.stack([
            self.log_weights[0] + _log_normal_per_dimension(z, zeros, zeros),
            self.log_weights[1] + _log_normal_per_dimension(z, old_mean, old_logvar),
            self.log_weights[2] + _log_normal_per_dimension(z, zeros, jnp.full_like(z, self.wide_logvar)),
        ])
        return jnp.sum(jax.nn.logsumexp(per_dimension, axis=0))


def _log_normal_per_dimension(z, mean, logvar):
    return -0.5 * (math.log(2.0 * math.pi) + logvar + jnp.square(z - mean) * jnp.exp(-logvar))


PRIORS: dict[str, Callable[[Any], Prior]] = {
    "standard": lambda config: StandardNormal(),
    "vamp": lambda config: VampPrior(
        config.n_pseudo_inputs,
        normalize=config.normalize_pseudo_inputs,
        dropout_rate=config.input_dropout if config.pseudo_input_dropout else 0.0,
    ),
    "composite": lambda config: CompositePrior(
        tuple(config.option("weights", (3 / 20, 3 / 4, 1 / 10))), float(config.option("wide_logvar", 10.0))
    ),
}


def register_prior(name: str, factory: Callable[[Any], Prior]) -> None:
    """Makes `factory(config) -> Prior` reachable as `VAEConfig(prior=name)` and `hvae train --prior name`."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a prior's name must be a non-empty string, got {name!r}")
    PRIORS[name] = factory


def build_prior(config) -> Prior:
    """The prior that `config.prior` names."""
    if config.prior not in PRIORS:
        raise ValueError(f"unknown prior {config.prior!r}; registered: {', '.join(PRIORS)}")
    return PRIORS[config.prior](config)
