"""The variational autoencoder family of `hvae_jax.models.hvae` (Mult-VAE, hierarchical VAEs, Kim & Suh's H+Vamp,
RecVAE) and Mult-DAE as PyTorch modules over a batch of users.

The architecture, initialisation and maths follow `hvae_jax.models.hvae` line for line; only the batch axis is
explicit here (the JAX model is written for one user and vmapped). As there, randomness enters through `Noise`
only, so a forward pass is a deterministic function of (parameters, x, side, noise, the snapshot's posterior) and
both implementations can be compared on identical inputs. With `sparse_input=True` every input branch's first layer
takes `SparseRows` through an embedding bag (the optimised variant).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import nn

from benchmarks.torch_reference import gaussian
from benchmarks.torch_reference.layers import DenseNetStack, Hidden, SparseRows, Stack, dense, gaussian_head
from hvae_jax.configs import ModelConfig


class Noise(NamedTuple):
    """The randomness of one training forward pass for a batch.

    Attributes:
      keep_mask: 1.0 where the input survives dropout, 0.0 where dropped: [batch, n_items] for dense input and
        [nnz] (one entry per interaction) for `SparseRows` when the model has one input branch; with several
        branches (separate branches, Kim & Suh) a leading branch axis, [n_branches, batch, n_items] or
        [n_branches, nnz]. None for no dropout.
      epsilons: one [batch, d_l] standard-normal draw per level, bottom first; None for z = posterior mean.
      pseudo_keep_mask: [K, n_items] dropout mask of the VampPrior's pseudo-inputs (`pseudo_input_dropout`), shared
        by the batch; None for none.
    """

    keep_mask: torch.Tensor | None
    epsilons: tuple[torch.Tensor, ...] | None
    pseudo_keep_mask: torch.Tensor | None = None


class Output(NamedTuple):
    """What one forward pass returns for a batch (see `hvae_jax.models.hvae.Output`).

    Attributes:
      logits: [batch, n_items].
      kl: [batch, L] KL per level, bottom first (analytic where asked for and available, else log q - log p).
      log_q, log_p: [batch, L] log-densities at the sampled z.
      means: posterior means per level, bottom first, each [batch, d_l].
    """

    logits: torch.Tensor
    kl: torch.Tensor
    log_q: torch.Tensor
    log_p: torch.Tensor
    means: tuple[torch.Tensor, ...]


def n_input_branches(config: ModelConfig) -> int:
    """How many input branches (first layers, each with its own dropout mask) the model has, as
    `hvae_jax.models.hvae.input_branches`."""
    if config.kind == "vae" and config.encoder == "mlp" and config.branches == "separate":
        return config.n_levels
    return 1


def draw_noise(
    config: ModelConfig, x: torch.Tensor | SparseRows, *, dropout: bool = True, generator: torch.Generator | None = None
) -> Noise:
    """Draws a batch's dropout masks (dense or per interaction, following `x`; one per input branch), the
    pseudo-inputs' mask where the VampPrior drops them out, and the reparameterisation noise."""
    if isinstance(x, SparseRows):
        mask_shape, batch_size, reference = tuple(x.values.shape), x.batch_size, x.values
    else:
        mask_shape, batch_size, reference = tuple(x.shape), x.shape[0], x
    like = {"dtype": reference.dtype, "device": reference.device}
    n_items = x.n_columns if isinstance(x, SparseRows) else x.shape[1]
    keep_mask = pseudo_keep_mask = None
    if dropout and config.input_dropout > 0:
        n_branches = n_input_branches(config)
        shape = mask_shape if n_branches == 1 else (n_branches, *mask_shape)
        keep_mask = torch.bernoulli(torch.full(shape, 1.0 - config.input_dropout, **like), generator=generator)
        if config.kind == "vae" and config.prior == "vamp" and config.pseudo_input_dropout:
            pseudo_keep_mask = torch.bernoulli(
                torch.full((config.n_pseudo_inputs, n_items), 1.0 - config.input_dropout, **like), generator=generator)
    epsilons = None
    if config.kind == "vae":
        epsilons = tuple(torch.randn(batch_size, d, generator=generator, **like) for d in config.latents)
    return Noise(keep_mask, epsilons, pseudo_keep_mask)


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


class VampPriorParameters(nn.Module):
    """The VampPrior's learnt pseudo-inputs, under `prior` as in the Flax model (`params["prior"]["pseudo_inputs"]`),
    started at N(0.05, 0.01) as Tomczak & Welling's and Kim & Suh's code."""

    def __init__(self, n_components: int, n_items: int):
        super().__init__()
        self.pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(n_components, n_items))


class HierarchicalVAE(nn.Module):
    """A batch of users through the VAE; `model(x, side, noise)`, `noise=None` evaluates.

    Args:
      config: the same `VAEConfig` the JAX model takes. Supported: every encoder ("mlp", "densenet"), both branch
        layouts, bottom-up and ladder inference, any encoder/decoder depth, gating, log-variance clips, analytic or
        sampled KL, the "standard", "vamp" and "composite" priors, every init; not bfloat16 compute.
      n_items: catalogue size.
      n_side_features: width of the per-user side features, 0 for none.
      sparse_input: every input branch's first layer takes `SparseRows` through an embedding bag (optimised variant).
    """

    def __init__(self, config: ModelConfig, n_items: int, n_side_features: int = 0, sparse_input: bool = False):
        super().__init__()
        reason = unsupported(config)
        if reason is not None:
            raise NotImplementedError(reason)
        c = self.config = config
        self.n_items = n_items
        self.sparse_input = sparse_input
        side = n_side_features or None
        width, latents, n_levels = c.hidden, c.latents, c.n_levels
        hidden = functools.partial(Hidden, out_features=width, gated=c.gated, init=c.init)
        stack = functools.partial(Stack, features=width, n_side_features=side, gated=c.gated, init=c.init)

        if c.encoder == "densenet":
            self.encoder = DenseNetStack(n_items, width, c.encoder_layers, side, init=c.init,
                                         sparse_first_input=sparse_input)
        elif c.branches == "shared":
            self.input_layer = hidden([n_items, side], sparse_first_input=sparse_input)
            self.input_stack = nn.ModuleList(hidden([width]) for _ in range(c.encoder_layers - 1))
        else:
            # Level l's posterior path reads x and (below the top) z_{l+1}.
            self.posterior_paths = nn.ModuleList(
                stack([n_items] + ([] if level == n_levels - 1 else [latents[level + 1]]), n_layers=c.encoder_layers,
                      sparse_first_input=sparse_input)
                for level in range(n_levels)
            )
        if c.branches == "shared" and c.inference == "bottom_up":
            self.posterior_hidden = nn.ModuleList(
                hidden([width, latents[level + 1], side]) for level in range(n_levels - 1))
        elif c.inference == "ladder":
            self.upward = nn.ModuleList(hidden([width, side]) for _ in range(n_levels - 1))
        self.posterior_heads = nn.ModuleList(gaussian_head(width, d, c.init, c.separate_heads) for d in latents)
        if c.decoder_layers <= 1:
            self.prior_hidden = nn.ModuleList(hidden([latents[level + 1], side]) for level in range(n_levels - 1))
        else:
            self.prior_paths = nn.ModuleList(
                stack([latents[level + 1]], n_layers=c.decoder_layers) for level in range(n_levels - 1))
        self.prior_heads = nn.ModuleList(gaussian_head(width, d, c.init, c.separate_heads) for d in latents[:-1])
        if c.decoder_layers == 0:
            decoder_width = sum(latents) + (n_side_features or 0)  # the logits are linear in (z, side)
        elif c.decoder_layers == 1:
            self.decoder_hidden = hidden([*latents, side])
            decoder_width = width
        else:
            self.decoder_path = stack(list(latents), n_layers=c.decoder_layers)
            decoder_width = width
        self.decoder_output = dense(decoder_width, n_items, c.init)
        if c.prior == "vamp":
            self.prior = VampPriorParameters(c.n_pseudo_inputs, n_items)
        if c.prior == "composite":
            weights = tuple(c.option("weights", (3 / 20, 3 / 4, 1 / 10)))
            self.composite_log_weights = tuple(math.log(w) for w in weights)
            self.composite_wide_logvar = float(c.option("wide_logvar", 10.0))

    # ------------------------------------------------------------------------------------------------------------
    # Pieces

    def _split_head(self, head_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = torch.chunk(head_output, 2, dim=-1)
        if self.config.logvar_clip is not None:
            logvar = torch.clamp(logvar, *self.config.logvar_clip)
        return mean, logvar

    def _branch_inputs(self, x, keep_mask: torch.Tensor | None) -> tuple:
        """Each input branch's normalised, dropped-out input (its own mask per branch)."""
        n_branches, rate = n_input_branches(self.config), self.config.input_dropout
        if keep_mask is None or n_branches == 1:
            return (normalize_input(x, keep_mask, rate),) * n_branches
        return tuple(normalize_input(x, keep_mask[branch], rate) for branch in range(n_branches))

    def _features(self, inputs: tuple, side: torch.Tensor | None) -> list[torch.Tensor]:
        """[h_x] (shared bottom-up, densenet), [d_1, ..., d_L] (ladder), or [] (separate branches)."""
        c = self.config
        if c.encoder == "densenet":
            return [self.encoder(inputs[0], side)]
        if c.branches == "separate":
            return []
        h = self.input_layer(inputs[0], side)
        for layer in self.input_stack:
            h = layer(h)
        hidden = [h]
        if c.inference == "ladder":
            for layer in self.upward:
                hidden.append(layer(hidden[-1], side))
        return hidden

    def _top_posterior(self, inputs: tuple, hidden: list[torch.Tensor], side) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.branches == "separate":
            top = self.config.n_levels - 1
            return self._split_head(self.posterior_heads[top](self.posterior_paths[top]((inputs[top],), side)))
        return self._split_head(self.posterior_heads[-1](hidden[-1]))

    def _prior(self, level: int, z_above: torch.Tensor, side: torch.Tensor | None):
        if self.config.decoder_layers <= 1:
            features = self.prior_hidden[level](z_above, side)
        else:
            features = self.prior_paths[level]((z_above,), side)
        return self._split_head(self.prior_heads[level](features))

    def _lower_posterior(self, level: int, inputs: tuple, hidden: list[torch.Tensor], z_above, side):
        """(mean, logvar) of the bottom-up q(z_l | x, z_{l+1}), or the ladder's estimate before merging."""
        c = self.config
        if c.inference == "ladder":
            return self._split_head(self.posterior_heads[level](hidden[level]))
        if c.branches == "separate":
            features = self.posterior_paths[level]((inputs[level], z_above), side)
        else:
            features = self.posterior_hidden[level](hidden[0], z_above, side)
        return self._split_head(self.posterior_heads[level](features))

    def _decode(self, z: list[torch.Tensor], side: torch.Tensor | None) -> torch.Tensor:
        c = self.config
        if c.decoder_layers == 0:
            return torch.cat(list(z) + ([] if side is None else [side]), dim=-1)
        if c.decoder_layers == 1:
            return self.decoder_hidden(*z, side)
        return self.decoder_path(tuple(z), side)

    # ------------------------------------------------------------------------------------------------------------
    # The prior of the top level

    def encode_top(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z_L | u) of already normalised inputs u: [K, n_items] (the VampPrior's pseudo-inputs), no side."""
        branches = (inputs,) * n_input_branches(self.config)
        return self._top_posterior(branches, self._features(branches, None), None)

    def prepare_prior(self, pseudo_keep_mask: torch.Tensor | None = None):
        """The prior's per-batch state: the VampPrior's components (means [K, d], logvars [K, d]) from the clipped
        (optionally normalised, optionally dropped-out) pseudo-inputs; None for the other priors."""
        c = self.config
        if c.prior != "vamp":
            return None
        pseudo = torch.clamp(self.prior.pseudo_inputs, 0.0, 1.0)
        if c.normalize_pseudo_inputs:
            pseudo = normalize_input(pseudo, None, 0.0)
        if pseudo_keep_mask is not None:
            pseudo = torch.where(pseudo_keep_mask > 0, pseudo / (1.0 - c.input_dropout), torch.zeros_like(pseudo))
        return self.encode_top(pseudo)

    def top_posterior(self, x, side: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of q(z_L | x) without dropout: the composite prior's view of a user (from the snapshot)."""
        inputs = self._branch_inputs(x, None)
        return self._top_posterior(inputs, self._features(inputs, side), side)

    def _top_log_prior(self, z_top: torch.Tensor, prior_state, previous_posterior) -> torch.Tensor:
        """[batch] log p(z_L) under the configured prior."""
        c = self.config
        if c.prior == "standard":
            zeros = torch.zeros_like(z_top)
            return gaussian.log_normal(z_top, zeros, zeros)
        if c.prior == "vamp":
            means, logvars = prior_state  # [K, d_L] each
            component_log_densities = gaussian.log_normal(z_top[:, None, :], means[None], logvars[None])  # [batch, K]
            return torch.logsumexp(component_log_densities, dim=1) - math.log(c.n_pseudo_inputs)
        if previous_posterior is None:
            raise ValueError("the composite prior needs the snapshot's posterior (objectives.prior_context)")
        old_mean, old_logvar = previous_posterior
        zeros = torch.zeros_like(z_top)
        per_dimension = torch.stack([
            self.composite_log_weights[0] + _log_normal_per_dimension(z_top, zeros, zeros),
            self.composite_log_weights[1] + _log_normal_per_dimension(z_top, old_mean, old_logvar),
            self.composite_log_weights[2] + _log_normal_per_dimension(
                z_top, zeros, torch.full_like(z_top, self.composite_wide_logvar)),
        ])
        return torch.sum(torch.logsumexp(per_dimension, dim=0), dim=-1)

    # ------------------------------------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor | SparseRows,
        side: torch.Tensor | None = None,
        noise: Noise | None = None,
        *,
        previous_posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
        logits_only: bool = False,
    ) -> Output:
        """Forward pass for a batch.

        Args:
          x: [batch, n_items] interactions, or `SparseRows` when built with `sparse_input`.
          side: [batch, n_features] or None.
          noise: dropout masks and epsilons; None evaluates (no dropout, z = posterior mean).
          previous_posterior: ([batch, d_L], [batch, d_L]) the snapshot encoder's q(z_L | x), for the composite prior
            (`objectives.prior_context`).
          logits_only: skip the prior and the densities (scoring for recommendation needs the logits alone; XLA drops
            them from the JAX model's jitted scorer by itself). kl, log_q and log_p come back empty.
        """
        c = self.config
        n_levels = c.n_levels
        keep_mask = None if noise is None else noise.keep_mask
        epsilons = (None,) * n_levels if noise is None or noise.epsilons is None else noise.epsilons
        inputs = self._branch_inputs(x, keep_mask)
        hidden = self._features(inputs, side)
        sample_kl = c.kl_estimator == "sample"

        z, kl, log_q, log_p, means = ([None] * n_levels for _ in range(5))
        top = n_levels - 1
        mean_q, logvar_q = self._top_posterior(inputs, hidden, side)
        z[top] = gaussian.reparameterize(mean_q, logvar_q, epsilons[top])
        means[top] = mean_q
        if not logits_only:
            prior_state = self.prepare_prior(None if noise is None else noise.pseudo_keep_mask)
            log_q[top] = gaussian.log_normal(z[top], mean_q, logvar_q)
            log_p[top] = self._top_log_prior(z[top], prior_state, previous_posterior)
            if c.prior == "standard" and not sample_kl:
                kl[top] = gaussian.kl_standard_normal(mean_q, logvar_q)
            else:
                kl[top] = log_q[top] - log_p[top]

        for level in reversed(range(n_levels - 1)):
            mean_q, logvar_q = self._lower_posterior(level, inputs, hidden, z[level + 1], side)
            needs_prior = c.inference == "ladder" or not logits_only
            if needs_prior:
                mean_p, logvar_p = self._prior(level, z[level + 1], side)
            if c.inference == "ladder":
                mean_q, logvar_q = gaussian.precision_weighted(mean_q, logvar_q, mean_p, logvar_p)
            z[level] = gaussian.reparameterize(mean_q, logvar_q, epsilons[level])
            means[level] = mean_q
            if not logits_only:
                log_q[level] = gaussian.log_normal(z[level], mean_q, logvar_q)
                log_p[level] = gaussian.log_normal(z[level], mean_p, logvar_p)
                kl[level] = (log_q[level] - log_p[level] if sample_kl
                             else gaussian.kl_normal(mean_q, logvar_q, mean_p, logvar_p))

        logits = self.decoder_output(self._decode(z, side))
        if logits_only:
            empty = logits.new_zeros((logits.shape[0], 0))
            return Output(logits, empty, empty, empty, tuple(means))
        return Output(logits, torch.stack(kl, dim=-1), torch.stack(log_q, dim=-1), torch.stack(log_p, dim=-1),
                      tuple(means))


def _log_normal_per_dimension(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (math.log(2.0 * math.pi) + logvar + torch.square(z - mean) * torch.exp(-logvar))


class MultDAE(nn.Module):
    """Liang et al.'s Mult-DAE [I-200-I]: logits = W2 tanh(W1 dropout(normalise(x)) + b1) + b2."""

    def __init__(self, config: ModelConfig, n_items: int, n_side_features: int = 0, sparse_input: bool = False):
        super().__init__()
        self.config = config
        self.n_items = n_items
        self.sparse_input = sparse_input
        self.encoder = Hidden([n_items, n_side_features or None], config.latents[0], config.gated,
                              sparse_first_input=sparse_input, init=config.init)
        self.decoder_output = dense(config.latents[0], n_items, config.init)

    def forward(
        self,
        x: torch.Tensor | SparseRows,
        side: torch.Tensor | None = None,
        noise: Noise | None = None,
        *,
        previous_posterior=None,
        logits_only: bool = False,
    ) -> Output:
        del previous_posterior
        keep_mask = None if noise is None else noise.keep_mask
        code = self.encoder(normalize_input(x, keep_mask, self.config.input_dropout), side)
        logits = self.decoder_output(code)
        empty = logits.new_zeros((logits.shape[0], 0))
        return Output(logits, empty, empty, empty, ())


def unsupported(config: ModelConfig) -> str | None:
    """Why the PyTorch reference cannot run `config` faithfully, or None when it can."""
    if config.kind not in ("vae", "dae"):
        return f"{config.kind!r} has no PyTorch reference; only 'vae' and 'dae' do"
    if config.compute_dtype not in ("float32", "float64"):
        return f"compute_dtype {config.compute_dtype!r}: the PyTorch reference runs float32/64 only"
    if config.kind == "vae" and config.prior not in ("standard", "vamp", "composite"):
        return f"prior {config.prior!r} has no PyTorch counterpart (standard, vamp and composite do)"
    return None


def needs_snapshot(config: ModelConfig) -> bool:
    """Whether the prior looks at the encoder's snapshot (RecVAE's composite prior)."""
    return config.kind == "vae" and config.prior == "composite"


def build_model(
    config: ModelConfig, n_items: int, n_side_features: int = 0, *, sparse_input: bool = False
) -> HierarchicalVAE | MultDAE:
    """The PyTorch module for `config.kind` ("vae" or "dae"), freshly initialised.

    The module computes in its own dtype (`.double()` for float64); `config.compute_dtype` "bfloat16" (mixed
    precision) has no PyTorch counterpart here.
    """
    if config.kind not in ("vae", "dae"):
        raise ValueError(f"{config.kind!r} has no PyTorch reference; only 'vae' and 'dae' do")
    reason = unsupported(config)
    if reason is not None:
        raise NotImplementedError(reason)
    if config.kind == "vae":
        return HierarchicalVAE(config, n_items, n_side_features, sparse_input)
    return MultDAE(config, n_items, n_side_features, sparse_input)
