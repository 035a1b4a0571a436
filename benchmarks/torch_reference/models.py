"""The hierarchical VAE (Mult-VAE as its one-level case) and Mult-DAE as PyTorch modules over a batch of users.

The architecture, initialisation and maths follow `hvae_jax.models.hvae` line for line; only the batch axis is
explicit here (the JAX model is written for one user and vmapped). As there, randomness enters through `Noise`
only, so a forward pass is a deterministic function of (parameters, x, side, noise) and both implementations can be
compared on identical inputs. With `sparse_input=True` the first layer takes `SparseRows` (the optimised variant).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from benchmarks.torch_reference import gaussian
from benchmarks.torch_reference.layers import Hidden, SparseRows, dense
from hvae_jax.configs import ModelConfig


class Noise(NamedTuple):
    """The randomness of one training forward pass for a batch.

    Attributes:
      keep_mask: 1.0 where the input survives dropout, 0.0 where dropped: [batch, n_items] for dense input,
        [nnz] (one entry per interaction) for `SparseRows`; None for no dropout.
      epsilons: one [batch, d_l] standard-normal draw per level, bottom first; None for z = posterior mean.
    """

    keep_mask: torch.Tensor | None
    epsilons: tuple[torch.Tensor, ...] | None


class Output(NamedTuple):
    """What one forward pass returns for a batch (see `hvae_jax.models.hvae.Output`).

    Attributes:
      logits: [batch, n_items].
      kl: [batch, L] KL per level, bottom first (analytic, or log q - log p for the VampPrior top level).
      log_q, log_p: [batch, L] log-densities at the sampled z.
      means: posterior means per level, bottom first, each [batch, d_l].
    """

    logits: torch.Tensor
    kl: torch.Tensor
    log_q: torch.Tensor
    log_p: torch.Tensor
    means: tuple[torch.Tensor, ...]


def draw_noise(
    config: ModelConfig, x: torch.Tensor | SparseRows, *, dropout: bool = True, generator: torch.Generator | None = None
) -> Noise:
    """Draws a batch's dropout mask (dense or per interaction, following `x`) and reparameterisation noise."""
    if isinstance(x, SparseRows):
        mask_shape, batch_size, reference = x.values.shape, x.batch_size, x.values
    else:
        mask_shape, batch_size, reference = x.shape, x.shape[0], x
    keep_mask = None
    if dropout and config.input_dropout > 0:
        keep_probability = torch.full(mask_shape, 1.0 - config.input_dropout, dtype=reference.dtype,
                                      device=reference.device)
        keep_mask = torch.bernoulli(keep_probability, generator=generator)
    epsilons = None
    if config.kind == "vae":
        epsilons = tuple(
            torch.randn(batch_size, d, dtype=reference.dtype, device=reference.device, generator=generator)
            for d in config.latents
        )
    return Noise(keep_mask, epsilons)


def normalize_input(
    x: torch.Tensor | SparseRows, keep_mask: torch.Tensor | None, dropout_rate: float
) -> torch.Tensor | SparseRows:
    """Each row divided by its L2 norm, then inverted dropout (Liang et al.'s order); all-zero rows stay zero."""
    if isinstance(x, SparseRows):
        squared_norms = torch.zeros(x.batch_size, dtype=x.values.dtype, device=x.values.device)
        squared_norms = squared_norms.index_add(0, x.rows, torch.square(x.values))
        values = x.values * torch.rsqrt(torch.clamp(squared_norms, min=1e-12))[x.rows]
        if keep_mask is not None:
            values = values * keep_mask / (1.0 - dropout_rate)
        return x._replace(values=values)
    x = x * torch.rsqrt(torch.clamp(torch.sum(torch.square(x), dim=-1, keepdim=True), min=1e-12))
    if keep_mask is not None:
        x = x * keep_mask / (1.0 - dropout_rate)
    return x


class HierarchicalVAE(nn.Module):
    """A batch of users through the hierarchical VAE; `model(x, side, noise)`, `noise=None` evaluates.

    Args:
      config: the same `ModelConfig` the JAX model takes (kind "vae").
      n_items: catalogue size.
      n_side_features: width of the per-user side features, 0 for none.
      sparse_input: the first layer takes `SparseRows` through an embedding bag (the optimised variant).
    """

    def __init__(self, config: ModelConfig, n_items: int, n_side_features: int = 0, sparse_input: bool = False):
        super().__init__()
        self.config = config
        self.n_items = n_items
        self.sparse_input = sparse_input
        side = n_side_features or None
        hidden, latents, gated, n_levels = config.hidden, config.latents, config.gated, config.n_levels
        self.input_layer = Hidden([n_items, side], hidden, gated, sparse_first_input=sparse_input)
        if config.inference == "bottom_up":
            self.posterior_hidden = nn.ModuleList(
                Hidden([hidden, latents[level + 1], side], hidden, gated) for level in range(n_levels - 1)
            )
        else:
            self.upward = nn.ModuleList(Hidden([hidden, side], hidden, gated) for _ in range(n_levels - 1))
        self.posterior_heads = nn.ModuleList(dense(hidden, 2 * d) for d in latents)
        self.prior_hidden = nn.ModuleList(
            Hidden([latents[level + 1], side], hidden, gated) for level in range(n_levels - 1)
        )
        self.prior_heads = nn.ModuleList(dense(hidden, 2 * d) for d in latents[:-1])
        self.decoder_hidden = Hidden([*latents, side], hidden, gated)
        self.decoder_output = dense(hidden, n_items)
        if config.prior == "vamp":
            # The prior's parameters live under `prior`, as in the Flax model (`params["prior"]["pseudo_inputs"]`).
            self.prior = nn.Module()
            self.prior.pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(config.n_pseudo_inputs, n_items))

    def _split_head(self, head_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = torch.chunk(head_output, 2, dim=-1)
        if self.config.logvar_clip is not None:
            logvar = torch.clamp(logvar, *self.config.logvar_clip)
        return mean, logvar

    def _bottom_up(self, x: torch.Tensor | SparseRows, side: torch.Tensor | None) -> list[torch.Tensor]:
        """[h_x] for bottom-up inference, [d_1, ..., d_L] for the ladder."""
        hidden = [self.input_layer(x, side)]
        if self.config.inference == "ladder":
            for layer in self.upward:
                hidden.append(layer(hidden[-1], side))
        return hidden

    def _top_posterior(self, hidden: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._split_head(self.posterior_heads[-1](hidden[-1]))

    def _prior(self, level: int, z_above: torch.Tensor, side: torch.Tensor | None):
        return self._split_head(self.prior_heads[level](self.prior_hidden[level](z_above, side)))

    def _lower_posterior(
        self,
        level: int,
        hidden: list[torch.Tensor],
        z_above: torch.Tensor,
        side: torch.Tensor | None,
        prior: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z_level | .): bottom-up from (h_x, z_above), or the ladder's merge of its estimate with the prior
        (computed here when `prior` is None)."""
        if self.config.inference == "bottom_up":
            return self._split_head(self.posterior_heads[level](self.posterior_hidden[level](hidden[0], z_above, side)))
        mean_p, logvar_p = prior if prior is not None else self._prior(level, z_above, side)
        estimate_mean, estimate_logvar = self._split_head(self.posterior_heads[level](hidden[level]))
        return gaussian.precision_weighted(estimate_mean, estimate_logvar, mean_p, logvar_p)

    def _top_log_prior(self, z_top: torch.Tensor) -> torch.Tensor:
        """log p(z_L): standard normal, or the VampPrior mixture over the pseudo-inputs' posteriors."""
        if self.config.prior == "standard":
            zeros = torch.zeros_like(z_top)
            return gaussian.log_normal(z_top, zeros, zeros)
        pseudo = normalize_input(torch.clamp(self.prior.pseudo_inputs, 0.0, 1.0), None, 0.0)
        means, logvars = self._top_posterior(self._bottom_up(pseudo, None))  # [K, d_L] each
        # [batch, K]: every user's z against every component.
        component_log_densities = gaussian.log_normal(z_top[:, None, :], means[None], logvars[None])
        return torch.logsumexp(component_log_densities, dim=1) - math.log(self.config.n_pseudo_inputs)

    def forward(
        self,
        x: torch.Tensor | SparseRows,
        side: torch.Tensor | None = None,
        noise: Noise | None = None,
        *,
        logits_only: bool = False,
    ) -> Output:
        """Forward pass for a batch.

        Args:
          x: [batch, n_items] interactions, or `SparseRows` when built with `sparse_input`.
          side: [batch, n_features] or None.
          noise: dropout mask and epsilons; None evaluates (no dropout, z = posterior mean).
          logits_only: skip the densities and KL terms (scoring for recommendation needs the logits alone; XLA drops
            them from the JAX model's jitted scorer by itself). kl, log_q and log_p come back empty.
        """
        c = self.config
        n_levels = c.n_levels
        keep_mask = None if noise is None else noise.keep_mask
        epsilons = (None,) * n_levels if noise is None or noise.epsilons is None else noise.epsilons
        hidden = self._bottom_up(normalize_input(x, keep_mask, c.input_dropout), side)

        z, kl, log_q, log_p, means = ([None] * n_levels for _ in range(5))
        top = n_levels - 1
        mean_q, logvar_q = self._top_posterior(hidden)
        z[top] = gaussian.reparameterize(mean_q, logvar_q, epsilons[top])
        means[top] = mean_q
        if logits_only:
            for level in reversed(range(n_levels - 1)):
                mean_q, logvar_q = self._lower_posterior(level, hidden, z[level + 1], side, None)
                means[level] = mean_q
                z[level] = gaussian.reparameterize(mean_q, logvar_q, epsilons[level])
            empty = mean_q.new_zeros((mean_q.shape[0], 0))
            return Output(self.decoder_output(self.decoder_hidden(*z, side)), empty, empty, empty, tuple(means))
        log_q[top] = gaussian.log_normal(z[top], mean_q, logvar_q)
        log_p[top] = self._top_log_prior(z[top])
        if c.prior == "standard":
            kl[top] = gaussian.kl_standard_normal(mean_q, logvar_q)
        else:
            kl[top] = log_q[top] - log_p[top]

        for level in reversed(range(n_levels - 1)):
            mean_p, logvar_p = self._prior(level, z[level + 1], side)
            mean_q, logvar_q = self._lower_posterior(level, hidden, z[level + 1], side, (mean_p, logvar_p))
            z[level] = gaussian.reparameterize(mean_q, logvar_q, epsilons[level])
            means[level] = mean_q
            log_q[level] = gaussian.log_normal(z[level], mean_q, logvar_q)
            log_p[level] = gaussian.log_normal(z[level], mean_p, logvar_p)
            kl[level] = gaussian.kl_normal(mean_q, logvar_q, mean_p, logvar_p)

        logits = self.decoder_output(self.decoder_hidden(*z, side))
        return Output(logits, torch.stack(kl, dim=-1), torch.stack(log_q, dim=-1), torch.stack(log_p, dim=-1),
                      tuple(means))


class MultDAE(nn.Module):
    """Liang et al.'s Mult-DAE [I-200-I]: logits = W2 tanh(W1 dropout(normalise(x)) + b1) + b2."""

    def __init__(self, config: ModelConfig, n_items: int, n_side_features: int = 0, sparse_input: bool = False):
        super().__init__()
        self.config = config
        self.n_items = n_items
        self.sparse_input = sparse_input
        self.encoder = Hidden([n_items, n_side_features or None], config.latents[0], config.gated,
                              sparse_first_input=sparse_input)
        self.decoder_output = dense(config.latents[0], n_items)

    def forward(
        self,
        x: torch.Tensor | SparseRows,
        side: torch.Tensor | None = None,
        noise: Noise | None = None,
        *,
        logits_only: bool = False,
    ) -> Output:
        keep_mask = None if noise is None else noise.keep_mask
        code = self.encoder(normalize_input(x, keep_mask, self.config.input_dropout), side)
        logits = self.decoder_output(code)
        empty = logits.new_zeros((logits.shape[0], 0))
        return Output(logits, empty, empty, empty, ())


def build_model(
    config: ModelConfig, n_items: int, n_side_features: int = 0, *, sparse_input: bool = False
) -> HierarchicalVAE | MultDAE:
    """The PyTorch module for `config.kind` ("vae" or "dae"), freshly initialised.

    The module computes in its own dtype (`.double()` for float64); `config.compute_dtype` "bfloat16" (mixed
    precision) has no PyTorch counterpart here.
    """
    if config.compute_dtype not in ("float32", "float64"):
        raise NotImplementedError(f"compute_dtype {config.compute_dtype!r}: the PyTorch reference runs float32/64 only")
    if config.kind == "vae":
        return HierarchicalVAE(config, n_items, n_side_features, sparse_input)
    if config.kind == "dae":
        return MultDAE(config, n_items, n_side_features, sparse_input)
    raise ValueError(f"{config.kind!r} has no PyTorch reference; only 'vae' and 'dae' do")
