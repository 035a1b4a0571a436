"""Training schedules, registered by name: which parameter groups each epoch updates (with or without input
dropout), when the encoder's snapshot is taken (for priors that look at the previous encoder), and the KL weight
beta of every update.

  joint        every parameter at every update (Liang et al., Kim & Suh).
  alternating  RecVAE (Shenbin et al., WSDM 2020): `encoder_epochs` epochs updating the encoder with input dropout,
               then `decoder_epochs` updating the decoder without it; the snapshot is taken as each cycle starts.

The KL weight follows `TrainConfig`: Liang et al.'s min(cap, update / total_anneal_steps), Kim & Suh's warm-up
cap * min(1, epoch / anneal_epochs), or none at all when RecVAE's per-user weight gamma * |x_u| is set.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Phase(NamedTuple):
    """What the updates of one epoch do.

    Attributes:
      name: a label for logs ("joint", "encoder", "decoder").
      groups: the parameter groups updated (`models.hvae.parameter_group`); None: all of them.
      dropout: input dropout on (the decoder epochs of RecVAE switch it off).
    """

    name: str
    groups: tuple[str, ...] | None = None
    dropout: bool = True


def anneal_over_the_run(train, steps_per_epoch: int) -> int:
    """Liang's schedule with no length set: beta rises over all the run's updates, and over no more than
    `train.max_anneal_steps` where that is set."""
    steps = max(1, train.epochs * steps_per_epoch)
    return steps if train.max_anneal_steps is None else min(steps, train.max_anneal_steps)


class Schedule:
    """The protocol: phases, the phase of each epoch (counted from 1), when to take the snapshot, and beta."""

    phases: tuple[Phase, ...] = (Phase("joint"),)

    def __init__(self, train, *, n_levels: int, steps_per_epoch: int):
        self.train = train
        self.n_levels = n_levels
        self.steps_per_epoch = steps_per_epoch
        self.anneal_steps = train.total_anneal_steps or anneal_over_the_run(train, steps_per_epoch)

    def phase_of(self, epoch: int) -> Phase:
        del epoch
        return self.phases[0]

    def takes_snapshot(self, epoch: int) -> bool:
        """Whether the encoder's snapshot is refreshed before `epoch` (used by priors that need it)."""
        del epoch
        return True

    def beta(self, step: jax.Array, beta_cap: jax.Array | None = None) -> jax.Array:
        """The annealed KL weight at update `step` (counted from 0); `beta_cap` replaces the config's cap (an
        ensemble member's own, `hyperparameters.py`)."""
        train = self.train
        cap = train.beta_cap if beta_cap is None else beta_cap
        if train.kl_weight_per_item > 0:
            return jnp.ones((), jnp.float32)  # the per-user weight replaces it (`per_user_kl_weights`)
        if train.anneal_epochs is not None:
            epoch = (step // self.steps_per_epoch + 1).astype(jnp.float32)
            return cap * jnp.minimum(1.0, epoch / train.anneal_epochs)
        return jnp.minimum(cap, step.astype(jnp.float32) / self.anneal_steps)

    def betas(self, step: jax.Array, beta_cap: jax.Array | None = None) -> jax.Array:
        """[L] KL weight of each latent level at update `step`: beta times each level's multiplier."""
        multipliers = self.train.beta_per_level or (1.0,) * self.n_levels
        if len(multipliers) != self.n_levels:
            raise ValueError(f"beta_per_level has {len(multipliers)} entries for {self.n_levels} latent levels")
        return self.beta(step, beta_cap) * jnp.asarray(multipliers, jnp.float32)

    def per_user_kl_weights(self, n_positives: jax.Array, gamma: jax.Array | None = None) -> jax.Array | None:
        """[batch] RecVAE's beta_u = gamma |x_u| (`gamma` replacing the config's), or None when the run has none."""
        if self.train.kl_weight_per_item <= 0:
            return None
        gamma = self.train.kl_weight_per_item if gamma is None else gamma
        return gamma * n_positives.astype(jnp.float32)


class Joint(Schedule):
    phases = (Phase("joint"),)


class Alternating(Schedule):
    phases = (Phase("encoder", ("encoder",), dropout=True), Phase("decoder", ("decoder",), dropout=False))

    def _position(self, epoch: int) -> int:
        return (epoch - 1) % (self.train.encoder_epochs + self.train.decoder_epochs)

    def phase_of(self, epoch: int) -> Phase:
        return self.phases[0] if self._position(epoch) < self.train.encoder_epochs else self.phases[1]

    def takes_snapshot(self, epoch: int) -> bool:
        return self._position(epoch) == 0


SCHEDULES: dict[str, Callable[..., Schedule]] = {"joint": Joint, "alternating": Alternating}


def register_schedule(name: str, factory: Callable[..., Schedule]) -> None:
    """Makes `factory(train, n_levels=..., steps_per_epoch=...) -> Schedule` reachable as `schedule=name`."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a schedule's name must be a non-empty string, got {name!r}")
    SCHEDULES[name] = factory


def build_schedule(train, *, n_levels: int, steps_per_epoch: int) -> Schedule:
    if train.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {train.schedule!r}; registered: {', '.join(SCHEDULES)}")
    return SCHEDULES[train.schedule](train, n_levels=n_levels, steps_per_epoch=steps_per_epoch)
