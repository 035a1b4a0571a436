"""The variational autoencoder for ONE user: L levels of Gaussian latents, bottom-up or ladder inference, a top-level
prior from the registry (`priors.py`), optional gating and side features; and Mult-DAE. With one level and the
defaults it is Liang et al.'s Mult-VAE; Kim & Suh's H+Vamp and RecVAE are settings of it (`configs.MODELS`).

Generative model: p(z_L) prod_{l<L} p(z_l | z_{l+1}) p(x | z_1, ..., z_L); the decoder sees every level.
Inference, bottom-up (Kim & Suh 2019, after Tomczak & Welling's HVAE): q(z_L | x) prod_{l<L} q(z_l | x, z_{l+1}).
Inference, ladder (Sonderby et al. 2016): a deterministic pass x -> d_1 -> ... -> d_L gives estimates (m_l, v_l);
q(z_L | x) = N(m_L, v_L) and q(z_l | .) is the precision-weighted merge of (m_l, v_l) with the prior p(z_l | z_{l+1}).

The input reaches the encoder through one or more input branches (`input_branches`): one shared first layer, or one
per level with its own dropout (Kim & Suh's code). Each branch's first layer takes the normalised, dropped-out row
x, or its product with the layer's kernels computed outside the model (`Projected`: the sparse and item-sharded
input paths of `input_paths.py`).

Randomness enters only through `Noise` (and the key of `prepare_prior`), drawn from explicit keys, so a forward pass
is a deterministic function of its arguments and can be checked against other implementations.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from hvae_jax.models import gaussian, keep_masks
from hvae_jax.models.layers import DenseNetStack, Hidden, Projected, SeparateHeads, Stack, dense
from hvae_jax.models.priors import PriorContext, build_prior


class Noise(NamedTuple):
    """The randomness of one training forward pass for one user.

    Attributes:
      keep_mask: 1.0 where the input survives dropout, 0.0 where dropped: [n_items] for a model with one input
        branch, [n_branches, n_items] for several; None for no dropout.
      epsilons: one [d_l] standard-normal draw per level, bottom first; None for z = posterior mean.
    """

    keep_mask: jax.Array | None
    epsilons: tuple[jax.Array, ...] | None


class Output(NamedTuple):
    """What one forward pass returns for one user.

    Attributes:
      logits: [n_items] decoder output; None when the call asked for `output_layer=False`.
      kl: [L] KL(q || p) per level, bottom first: analytic where available and asked for, else the single-sample
        estimate log q(z) - log p(z).
      log_q: [L] log q(z_l | .) at the sampled z.
      log_p: [L] log p(z_l | .) at the sampled z.
      means: posterior means per level (bottom first), for active-unit statistics.
      decoder_hidden: the activation the output layer multiplies (logits = decoder_hidden W + b); the item-sharded
        output layer takes it from here instead of the logits.
    """

    logits: jax.Array | None
    kl: jax.Array
    log_q: jax.Array
    log_p: jax.Array
    means: tuple[jax.Array, ...]
    decoder_hidden: jax.Array


class Branch(NamedTuple):
    """One input branch: the parameter path of the first layer whose `linear_0` (and `gate_0`) kernels multiply
    the input, and whether it is gated."""

    path: tuple[str, ...]
    gated: bool


def input_branches(config) -> tuple[Branch, ...]:
    """The model's input branches, in the order `Noise.keep_mask` and projections follow."""
    if config.kind == "dae":
        return (Branch(("encoder",), config.gated),)
    if config.encoder == "densenet":
        return (Branch(("encoder", "layer_0"), False),)
    if config.branches == "shared":
        return (Branch(("input_layer",), config.gated),)
    # One path per level; a lower level's path embeds x separately when it has two or more layers.
    paths = []
    for level in range(config.n_levels):
        top = level == config.n_levels - 1
        first = "layer_0" if top or config.encoder_layers == 1 else "embed_0"
        paths.append(Branch((f"posterior_paths_{level}", first), config.gated))
    return tuple(paths)


def output_layer_path(config) -> tuple[str, ...]:
    """Where the n_items-wide output layer (kernel [width, n_items], bias [n_items]) sits in the parameters."""
    del config
    return ("decoder_output",)


def output_bias_path(config) -> tuple[str, ...]:
    """Where the output layer's bias [n_items] sits in the parameters."""
    return (*output_layer_path(config), "bias")


def kl_estimators(config) -> tuple[str, ...]:
    """Which KL estimate each level uses (bottom first): "analytic" or "monte_carlo"."""
    lower = "analytic" if config.kl_estimator == "analytic" else "monte_carlo"
    top = "analytic" if config.prior == "standard" and config.kl_estimator == "analytic" else "monte_carlo"
    return (lower,) * (config.n_levels - 1) + (top,)


def draw_noise(config, n_items: int, *, key: jax.Array, dropout: bool = True) -> Noise:
    """Draws one user's dropout masks and reparameterisation noise from `key`."""
    dropout_key, epsilon_key = jax.random.split(key)
    keep_mask = None
    if dropout and config.input_dropout > 0:
        n_branches = len(input_branches(config))
        shape = (n_items,) if n_branches == 1 else (n_branches, n_items)
        keep_mask = keep_masks.draw(dropout_key, 1.0 - config.input_dropout, shape).astype(jnp.float32)
    if config.kind == "dae":
        return Noise(keep_mask, None)
    level_keys = jax.random.split(epsilon_key, config.n_levels)
    epsilons = tuple(jax.random.normal(k, (d,)) for k, d in zip(level_keys, config.latents))
    return Noise(keep_mask, epsilons)


def normalize_input(x: jax.Array, keep_mask: jax.Array | None, dropout_rate: float) -> jax.Array:
    """L2-normalise, then inverted dropout, in Liang et al.'s order. An all-zero row stays zero (no NaN)."""
    x = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-12))
    if keep_mask is not None:
        x = x * keep_mask / (1.0 - dropout_rate)
    return x


def branch_inputs(
    config, x: jax.Array | None, noise: Noise | None, projections: tuple[Projected, ...] | None
) -> tuple[jax.Array | Projected, ...]:
    """What each input branch's first layer receives: the given projections, else x normalised and dropped out
    with the branch's own mask."""
    if projections is not None:
        return tuple(projections)
    n_branches = len(input_branches(config))
    mask = None if noise is None else noise.keep_mask
    if mask is None or n_branches == 1:
        return (normalize_input(x, mask, config.input_dropout),) * n_branches
    return tuple(normalize_input(x, mask[b], config.input_dropout) for b in range(n_branches))


class HierarchicalVAE(nn.Module):
    """One user's VAE. Call as `model.apply({"params": p}, x, side, noise)`; `noise=None` evaluates (no dropout,
    z = posterior mean)."""

    config: Any
    n_items: int

    def setup(self):
        c = self.config
        n_levels = c.n_levels
        hidden = functools.partial(Hidden, c.hidden, c.gated, dtype=c.compute_dtype, init=c.init)
        stack = functools.partial(Stack, c.hidden, gated=c.gated, dtype=c.compute_dtype, init=c.init)
        dense_layer = functools.partial(dense, dtype=c.compute_dtype, init=c.init)

        def head(width: int):  # a Gaussian's [mean, logvar] for `width // 2` dimensions
            if c.separate_heads:
                return SeparateHeads(width // 2, dtype=c.compute_dtype, init=c.init)
            return dense_layer(width)

        self.prior = build_prior(c)
        if c.encoder == "densenet":
            self.encoder = DenseNetStack(c.hidden, c.encoder_layers, dtype=c.compute_dtype, init=c.init)
        elif c.branches == "shared":
            self.input_layer = hidden()
            self.input_stack = [hidden() for _ in range(c.encoder_layers - 1)]
        else:
            self.posterior_paths = [stack(c.encoder_layers) for _ in range(n_levels)]
        if c.branches == "shared" and c.inference == "bottom_up":
            # q(z_l | x, z_{l+1}) for every level but the top.
            self.posterior_hidden = [hidden() for _ in range(n_levels - 1)]
        elif c.inference == "ladder":
            # The ladder's deterministic bottom-up path d_2..d_L.
            self.upward = [hidden() for _ in range(n_levels - 1)]
        self.posterior_heads = [head(2 * d) for d in c.latents]
        if c.decoder_layers <= 1:
            self.prior_hidden = [hidden() for _ in range(n_levels - 1)]
        else:
            self.prior_paths = [stack(c.decoder_layers) for _ in range(n_levels - 1)]
        self.prior_heads = [head(2 * d) for d in c.latents[:-1]]
        if c.decoder_layers == 1:
            self.decoder_hidden = hidden()
        elif c.decoder_layers >= 2:
            self.decoder_path = stack(c.decoder_layers)
        self.decoder_output = dense_layer(self.n_items)
        shapes = jax.eval_shape(lambda key: self.prior.init(key, c.latents[-1], self.n_items), jax.random.key(0))
        if jax.tree.leaves(shapes):
            self.prior_params = self.param("prior", self.prior.init, c.latents[-1], self.n_items)
        else:
            self.prior_params = {}

    # ------------------------------------------------------------------------------------------------------------
    # Encoder pieces

    def _split_head(self, head_output: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Means and log-variances stay float32 under mixed precision: the KL and sampling need the range.
        mean, logvar = jnp.split(head_output.astype(jnp.promote_types(head_output.dtype, jnp.float32)), 2, axis=-1)
        if self.config.logvar_clip is not None:
            logvar = jnp.clip(logvar, *self.config.logvar_clip)
        return mean, logvar

    def _features(self, inputs: tuple, side: jax.Array | None) -> list[jax.Array]:
        """Deterministic features of the input: [h_x] (shared bottom-up, densenet), [d_1, ..., d_L] (ladder), or
        [] (separate branches: each level's path starts from its own input)."""
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

    def _top_posterior(self, inputs: tuple, hidden: list[jax.Array], side) -> tuple[jax.Array, jax.Array]:
        if self.config.branches == "separate":
            top = self.config.n_levels - 1
            return self._split_head(self.posterior_heads[top](self.posterior_paths[top]((inputs[top],), side)))
        return self._split_head(self.posterior_heads[-1](hidden[-1]))

    def _prior(self, level: int, z_above: jax.Array, side: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        if self.config.decoder_layers <= 1:
            features = self.prior_hidden[level](z_above, side)
        else:
            features = self.prior_paths[level]((z_above,), side)
        return self._split_head(self.prior_heads[level](features))

    def _lower_posterior(self, level: int, inputs: tuple, hidden: list[jax.Array], z_above, side):
        """(mean, logvar) of the bottom-up q(z_l | x, z_{l+1}), or the ladder's estimate before merging."""
        c = self.config
        if c.inference == "ladder":
            return self._split_head(self.posterior_heads[level](hidden[level]))
        if c.branches == "separate":
            features = self.posterior_paths[level]((inputs[level], z_above), side)
        else:
            features = self.posterior_hidden[level](hidden[0], z_above, side)
        return self._split_head(self.posterior_heads[level](features))

    def _decode(self, z: list[jax.Array], side: jax.Array | None) -> jax.Array:
        c = self.config
        if c.decoder_layers == 0:
            return jnp.concatenate(list(z) + ([] if side is None else [side]), axis=-1)
        if c.decoder_layers == 1:
            return self.decoder_hidden(*z, side)
        return self.decoder_path(tuple(z), side)

    # ------------------------------------------------------------------------------------------------------------
    # Entry points

    def encode_top(self, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q(z_L | u) of already normalised inputs u: [..., n_items] (the VampPrior's pseudo-inputs), no side."""
        branches = (inputs,) * len(input_branches(self.config))
        return self._top_posterior(branches, self._features(branches, None), None)

    def prepare_prior(self, key: jax.Array | None = None) -> Any:
        """The prior's per-batch state (shared by every user of a batch); `key` in training, None to evaluate."""
        return self.prior.prepare(self.prior_params, self.encode_top, key=key)

    def top_posterior(
        self, x: jax.Array | None, side: jax.Array | None = None, projections: tuple | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """(mean, logvar) of q(z_L | x) without dropout: the composite prior's view of a user."""
        inputs = branch_inputs(self.config, x, None, projections)
        return self._top_posterior(inputs, self._features(inputs, side), side)

    def __call__(
        self,
        x: jax.Array | None,
        side: jax.Array | None = None,
        noise: Noise | None = None,
        *,
        projections: tuple[Projected, ...] | None = None,
        prior_state: Any = None,
        prior_context: PriorContext | None = None,
        output_layer: bool = True,
        with_kl: bool = True,
    ) -> Output:
        """Forward pass for one user.

        Args:
          x: [n_items] the user's interactions (counts or 0/1); may be None with `projections`.
          side: [n_features] side features, or None.
          noise: dropout masks and epsilons; None evaluates (no dropout, z = posterior mean).
          projections: per input branch, the normalised, dropped-out input already multiplied by the first layer's
            kernels (the sparse input paths); then `x` and `noise.keep_mask` are not used.
          prior_state: `prepare_prior`'s result for this batch; None prepares it here (no noise).
          prior_context: what the prior needs to know of this user (the composite prior: the snapshot's posterior).
          output_layer: False stops before the n_items-wide output layer (Output.logits is None).
          with_kl: False skips the prior and the KL terms (scoring needs neither); kl, log_q, log_p are then 0.
        """
        c = self.config
        n_levels = c.n_levels
        epsilons = (None,) * n_levels if noise is None or noise.epsilons is None else noise.epsilons
        inputs = branch_inputs(c, x, noise, projections)
        hidden = self._features(inputs, side)
        if with_kl and prior_state is None:
            prior_state = self.prepare_prior(None)
        prior_context = PriorContext() if prior_context is None else prior_context
        sample_kl = c.kl_estimator == "sample"
        zero = jnp.zeros((), jnp.float32)

        z, kl, log_q, log_p, means = ([None] * n_levels for _ in range(5))
        top = n_levels - 1
        mean_q, logvar_q = self._top_posterior(inputs, hidden, side)
        z[top] = gaussian.reparameterize(mean_q, logvar_q, epsilons[top])
        means[top] = mean_q
        if with_kl:
            log_q[top] = gaussian.log_normal(z[top], mean_q, logvar_q)
            log_p[top] = self.prior.log_prob(prior_state, z[top], prior_context)
            closed_form = None if sample_kl else self.prior.kl(prior_state, mean_q, logvar_q, prior_context)
            kl[top] = log_q[top] - log_p[top] if closed_form is None else closed_form
        else:
            log_q[top] = log_p[top] = kl[top] = zero

        for level in reversed(range(n_levels - 1)):
            mean_p, logvar_p = self._prior(level, z[level + 1], side)
            mean_q, logvar_q = self._lower_posterior(level, inputs, hidden, z[level + 1], side)
            if c.inference == "ladder":
                mean_q, logvar_q = gaussian.precision_weighted(mean_q, logvar_q, mean_p, logvar_p)
            z[level] = gaussian.reparameterize(mean_q, logvar_q, epsilons[level])
            means[level] = mean_q
            if with_kl:
                log_q[level] = gaussian.log_normal(z[level], mean_q, logvar_q)
                log_p[level] = gaussian.log_normal(z[level], mean_p, logvar_p)
                kl[level] = (log_q[level] - log_p[level] if sample_kl
                             else gaussian.kl_normal(mean_q, logvar_q, mean_p, logvar_p))
            else:
                log_q[level] = log_p[level] = kl[level] = zero

        decoder_hidden = self._decode(z, side)
        logits = self.decoder_output(decoder_hidden) if output_layer else None
        return Output(logits, jnp.stack(kl), jnp.stack(log_q), jnp.stack(log_p), tuple(means), decoder_hidden)


class MultDAE(nn.Module):
    """Liang et al.'s Mult-DAE [I-200-I] for one user: logits = W2 tanh(W1 dropout(normalise(x)) + b1) + b2."""

    config: Any
    n_items: int

    @nn.compact
    def __call__(
        self,
        x: jax.Array | None,
        side: jax.Array | None = None,
        noise: Noise | None = None,
        *,
        projections: tuple[Projected, ...] | None = None,
        prior_state: Any = None,
        prior_context: PriorContext | None = None,
        output_layer: bool = True,
        with_kl: bool = True,
    ) -> Output:
        del prior_state, prior_context, with_kl
        c = self.config
        (first_input,) = branch_inputs(c, x, noise, projections)
        code = Hidden(c.latents[0], c.gated, name="encoder", dtype=c.compute_dtype, init=c.init)(first_input, side)
        logits = dense(self.n_items, "decoder_output", c.compute_dtype, c.init)(code) if output_layer else None
        empty = jnp.zeros((0,), code.dtype)
        return Output(logits, empty, empty, empty, (), code)

    def prepare_prior(self, key: jax.Array | None = None) -> None:
        del key
        return None


def get_path(params, path: tuple[str, ...]):
    for name in path:
        params = params[name]
    return params


def first_layer_kernels(config, params) -> tuple[Projected, ...]:
    """Per input branch, the kernels that multiply the user's input: [n_items, width] each (gate only if gated)."""
    kernels = []
    for branch in input_branches(config):
        layer = get_path(params, branch.path)
        kernels.append(Projected(layer["linear_0"]["kernel"], layer["gate_0"]["kernel"] if branch.gated else None))
    return tuple(kernels)


def project_first_layers(
    config, params, project: Callable[[int, jax.Array], jax.Array]
) -> tuple[Projected, ...]:
    """Each branch's first-layer products for an input given as slots: `project(branch_index, kernel)` (the
    gather-and-sum of models/sparse.py, or its item-sharded form) applied to the branch's kernels."""
    projected = []
    for index, kernels in enumerate(first_layer_kernels(config, params)):
        gate = None if kernels.gate is None else project(index, kernels.gate)
        projected.append(Projected(project(index, kernels.linear), gate))
    return tuple(projected)


def build_model(config, n_items: int) -> nn.Module:
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
    # Without the KL: a prior may need more than the parameters to evaluate (the composite prior's snapshot).
    return model.init(key, x, side, None, with_kl=False)["params"]


def parameter_group(config, path: tuple[str, ...]) -> str:
    """"encoder" or "decoder" for the parameter at `path` (RecVAE's alternating schedule updates one at a time).

    The decoder is the generative side: p(z_l | z_{l+1}), p(x | z) and the prior's own parameters."""
    del config
    first = path[0]
    if first.startswith(("decoder", "prior")):
        return "decoder"
    return "encoder"
