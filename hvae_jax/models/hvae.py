"""The hierarchical VAE for one user: L levels of Gaussian latents, bottom-up or ladder inference, standard or
VampPrior on the top level, optional gating and side features. With one level it is Liang et al.'s Mult-VAE.

Generative model: p(z_L) prod_{l<L} p(z_l | z_{l+1}) p(x | z_1, ..., z_L); the decoder sees every level.
Inference, bottom-up (Kim & Suh 2019, after Tomczak & Welling's HVAE): q(z_L | x) prod_{l<L} q(z_l | x, z_{l+1}).
Inference, ladder (Sonderby et al. 2016): a deterministic pass x -> d_1 -> ... -> d_L gives estimates (m_l, v_l);
q(z_L | x) = N(m_L, v_L) and q(z_l | .) is the precision-weighted merge of (m_l, v_l) with the prior p(z_l | z_{l+1}).

Everything here is written for ONE user (x: [n_items]); batches come from `jax.vmap` in `objectives.py`.
Randomness enters only through `Noise`, drawn from an explicit key by `draw_noise`, so a forward pass is a
deterministic function of (params, x, side, noise) and can be checked against other implementations.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from hvae_jax.configs import ModelConfig
from hvae_jax.models import gaussian
from hvae_jax.models.layers import Hidden, Projected, dense


class Noise(NamedTuple):
    """The randomness of one training forward pass for one user.

    Attributes:
      keep_mask: [n_items] 1.0 where the input survives dropout, 0.0 where dropped; None for no dropout.
      epsilons: one [d_l] standard-normal draw per level, bottom first; None for z = posterior mean.
    """

    keep_mask: jax.Array | None
    epsilons: tuple[jax.Array, ...] | None


class Output(NamedTuple):
    """What one forward pass returns for one user.

    Attributes:
      logits: [n_items] decoder output (log-softmax gives the multinomial's log-probabilities); None when the call
        asked for `output_layer=False`.
      kl: [L] KL(q || p) per level, bottom first: analytic where both sides are Gaussian, else the single-sample
        Monte Carlo estimate log q(z) - log p(z) (the VampPrior top level).
      log_q: [L] log q(z_l | .) at the sampled z.
      log_p: [L] log p(z_l | .) at the sampled z.
      means: posterior means per level (bottom first), for active-unit statistics.
      decoder_hidden: [hidden] the activation the output layer multiplies (logits = decoder_hidden W + b); the
        item-sharded output layer (`models/item_sharded.py`) takes it from here instead of the logits.
    """

    logits: jax.Array | None
    kl: jax.Array
    log_q: jax.Array
    log_p: jax.Array
    means: tuple[jax.Array, ...]
    decoder_hidden: jax.Array


def kl_estimators(config: ModelConfig) -> tuple[str, ...]:
    """Which KL estimate each level uses (bottom first): "analytic" or "monte_carlo"."""
    top = "monte_carlo" if config.prior == "vamp" else "analytic"
    return ("analytic",) * (config.n_levels - 1) + (top,)


def draw_noise(config: ModelConfig, n_items: int, *, key: jax.Array, dropout: bool = True) -> Noise:
    """Draws one user's dropout mask and reparameterisation noise from `key`."""
    dropout_key, epsilon_key = jax.random.split(key)
    keep_mask = None
    if dropout and config.input_dropout > 0:
        keep_mask = jax.random.bernoulli(dropout_key, 1.0 - config.input_dropout, (n_items,)).astype(jnp.float32)
    level_keys = jax.random.split(epsilon_key, config.n_levels)
    epsilons = tuple(jax.random.normal(k, (d,)) for k, d in zip(level_keys, config.latents))
    return Noise(keep_mask, epsilons)


def normalize_input(x: jax.Array, keep_mask: jax.Array | None, dropout_rate: float) -> jax.Array:
    """L2-normalise, then inverted dropout, in Liang et al.'s order. An all-zero row stays zero (no NaN)."""
    x = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-12))
    if keep_mask is not None:
        x = x * keep_mask / (1.0 - dropout_rate)
    return x


def encoder_input(
    x: jax.Array, noise: Noise | None, input_projection: Projected | None, dropout_rate: float
) -> jax.Array | Projected:
    """What the first layer receives: the sparse path's projection if given, else the normalised, dropped-out x."""
    if input_projection is not None:
        return input_projection
    return normalize_input(x, None if noise is None else noise.keep_mask, dropout_rate)


class HierarchicalVAE(nn.Module):
    """One user's hierarchical VAE. Call as `model.apply(params, x, side, noise)`; `noise=None` evaluates."""

    config: ModelConfig
    n_items: int

    def setup(self):
        c = self.config
        n_levels = c.n_levels
        hidden = functools.partial(Hidden, c.hidden, c.gated, dtype=c.compute_dtype)
        head = functools.partial(dense, dtype=c.compute_dtype)
        self.input_layer = hidden()
        if c.inference == "bottom_up":
            # q(z_l | x, z_{l+1}) for every level but the top.
            self.posterior_hidden = [hidden() for _ in range(n_levels - 1)]
        else:
            # The ladder's deterministic bottom-up path d_2..d_L.
            self.upward = [hidden() for _ in range(n_levels - 1)]
        self.posterior_heads = [head(2 * d) for d in c.latents]
        self.prior_hidden = [hidden() for _ in range(n_levels - 1)]
        self.prior_heads = [head(2 * d) for d in c.latents[:-1]]
        self.decoder_hidden = hidden()
        self.decoder_output = head(self.n_items)
        if c.prior == "vamp":
            # Hard-tanh-to-[0, 1] parameterisation of Tomczak & Welling; start inside the linear region.
            self.pseudo_inputs = self.param(
                "pseudo_inputs",
                lambda key, shape: 0.05 + 0.01 * jax.random.normal(key, shape, jnp.float32),
                (c.n_pseudo_inputs, self.n_items),
            )

    def _split_head(self, head_output: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Means and log-variances stay float32 under mixed precision: the KL and sampling need the range.
        mean, logvar = jnp.split(head_output.astype(jnp.promote_types(head_output.dtype, jnp.float32)), 2, axis=-1)
        if self.config.logvar_clip is not None:
            logvar = jnp.clip(logvar, *self.config.logvar_clip)
        return mean, logvar

    def _bottom_up(self, x: jax.Array, side: jax.Array | None) -> list[jax.Array]:
        """Deterministic features of the input: [h_x] for bottom-up, [d_1, ..., d_L] for the ladder."""
        hidden = [self.input_layer(x, side)]
        if self.config.inference == "ladder":
            for layer in self.upward:
                hidden.append(layer(hidden[-1], side))
        return hidden

    def _top_posterior(self, hidden: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
        return self._split_head(self.posterior_heads[-1](hidden[-1]))

    def _prior(self, level: int, z_above: jax.Array, side: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        return self._split_head(self.prior_heads[level](self.prior_hidden[level](z_above, side)))

    def _top_log_prior(self, z_top: jax.Array) -> jax.Array:
        if self.config.prior == "standard":
            return gaussian.log_normal(z_top, jnp.zeros_like(z_top), jnp.zeros_like(z_top))
        pseudo = jnp.clip(self.pseudo_inputs, 0.0, 1.0)
        pseudo = normalize_input(pseudo, None, 0.0)
        means, logvars = self._top_posterior(self._bottom_up(pseudo, None))  # [K, d_L] each
        component_log_densities = gaussian.log_normal_components(z_top, means, logvars)
        return jax.nn.logsumexp(component_log_densities) - jnp.log(self.config.n_pseudo_inputs)

    def __call__(
        self,
        x: jax.Array,
        side: jax.Array | None = None,
        noise: Noise | None = None,
        input_projection: Projected | None = None,
        output_layer: bool = True,
    ) -> Output:
        """Forward pass for one user.

        Args:
          x: [n_items] the user's interactions (counts or 0/1).
          side: [n_features] side features, or None.
          noise: dropout mask and epsilons; None evaluates (no dropout, z = posterior mean).
          input_projection: the normalised, dropped-out input already multiplied by the first layer's kernels (the
            sparse input path); then `x` and `noise.keep_mask` are not used by the encoder (x may be None).
          output_layer: False stops before the n_items-wide output layer (Output.logits is None), for catalogues
            whose logits are computed in item shards outside the model.
        """
        c = self.config
        n_levels = c.n_levels
        epsilons = (None,) * n_levels if noise is None or noise.epsilons is None else noise.epsilons
        hidden = self._bottom_up(encoder_input(x, noise, input_projection, c.input_dropout), side)

        z = [None] * n_levels
        kl = [None] * n_levels
        log_q = [None] * n_levels
        log_p = [None] * n_levels
        means = [None] * n_levels

        top = n_levels - 1
        mean_q, logvar_q = self._top_posterior(hidden)
        z[top] = gaussian.reparameterize(mean_q, logvar_q, epsilons[top])
        means[top] = mean_q
        log_q[top] = gaussian.log_normal(z[top], mean_q, logvar_q)
        log_p[top] = self._top_log_prior(z[top])
        if c.prior == "standard":
            kl[top] = gaussian.kl_standard_normal(mean_q, logvar_q)
        else:
            kl[top] = log_q[top] - log_p[top]

        for level in reversed(range(n_levels - 1)):
            mean_p, logvar_p = self._prior(level, z[level + 1], side)
            if c.inference == "bottom_up":
                mean_q, logvar_q = self._split_head(
                    self.posterior_heads[level](self.posterior_hidden[level](hidden[0], z[level + 1], side))
                )
            else:
                estimate_mean, estimate_logvar = self._split_head(self.posterior_heads[level](hidden[level]))
                mean_q, logvar_q = gaussian.precision_weighted(estimate_mean, estimate_logvar, mean_p, logvar_p)
            z[level] = gaussian.reparameterize(mean_q, logvar_q, epsilons[level])
            means[level] = mean_q
            log_q[level] = gaussian.log_normal(z[level], mean_q, logvar_q)
            log_p[level] = gaussian.log_normal(z[level], mean_p, logvar_p)
            kl[level] = gaussian.kl_normal(mean_q, logvar_q, mean_p, logvar_p)

        decoder_hidden = self.decoder_hidden(*z, side)
        logits = self.decoder_output(decoder_hidden) if output_layer else None
        return Output(logits, jnp.stack(kl), jnp.stack(log_q), jnp.stack(log_p), tuple(means), decoder_hidden)


class MultDAE(nn.Module):
    """Liang et al.'s Mult-DAE [I-200-I] for one user: logits = W2 tanh(W1 dropout(normalise(x)) + b1) + b2."""

    config: ModelConfig
    n_items: int

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        side: jax.Array | None = None,
        noise: Noise | None = None,
        input_projection: Projected | None = None,
        output_layer: bool = True,
    ) -> Output:
        dtype = self.config.compute_dtype
        first_input = encoder_input(x, noise, input_projection, self.config.input_dropout)
        code = Hidden(self.config.dae_latent, self.config.gated, name="encoder", dtype=dtype)(first_input, side)
        logits = dense(self.n_items, name="decoder_output", dtype=dtype)(code) if output_layer else None
        empty = jnp.zeros((0,), code.dtype)
        return Output(logits, empty, empty, empty, (), code)


def first_layer_kernels(config: ModelConfig, params) -> Projected:
    """The kernels that multiply the user's input: [n_items, hidden] each (gate kernel only for gated layers)."""
    layer = params["input_layer"] if config.kind == "vae" else params["encoder"]
    return Projected(layer["linear_0"]["kernel"], layer["gate_0"]["kernel"] if config.gated else None)


def project_first_layer(config: ModelConfig, params, project: Callable[[jax.Array], jax.Array]) -> Projected:
    """The first layer's products for an input given as slots: `project` (the gather-and-sum of models/sparse.py,
    or its item-sharded form) applied to each of `first_layer_kernels`."""
    kernels = first_layer_kernels(config, params)
    return Projected(project(kernels.linear), None if kernels.gate is None else project(kernels.gate))


def build_model(config: ModelConfig, n_items: int) -> nn.Module:
    """The Flax module for `config.kind` ("vae" or "dae")."""
    if config.kind == "vae":
        return HierarchicalVAE(config, n_items)
    if config.kind == "dae":
        return MultDAE(config, n_items)
    raise ValueError(f"{config.kind!r} is not a neural model; EASE and popularity live in models/baselines.py")


def init_params(model: nn.Module, n_side_features: int = 0, *, key: jax.Array):
    """Initial parameters of `model` for one user's input of its catalogue size (and side-feature width)."""
    x = jnp.zeros((model.n_items,), jnp.float32)
    side = jnp.zeros((n_side_features,), jnp.float32) if n_side_features else None
    return model.init(key, x, side, None)["params"]
