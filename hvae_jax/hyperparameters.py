"""Training hyperparameters that may differ between the members of one vmapped ensemble.

An ensemble (`train.fit_ensemble`) compiles one update and vmaps it over stacked member states. Everything that
shapes that program (widths, layers, schedule, batch size, the optimizer's form) must be the same for every member;
the scalars below enter it only as numbers, so each member may carry its own value as a traced array:

  learning_rate       Adam's step size (Adam's moments do not depend on it, so its state has the same structure).
  weight_decay        the L2 weight of `objectives.combine_terms`.
  beta_cap            the KL weight's cap in either anneal (`schedules.Schedule.beta`).
  kl_weight_per_item  RecVAE's gamma of beta_u = gamma |x_u|; every member's must be > 0 if the run's is, and 0 if
                      it is 0 (the two are different objectives, not different numbers).

A field is None where every member has the run's own value: the update then reads the `TrainConfig` as `fit` does,
so an ensemble of seeds alone computes exactly what it did before settings existed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

VARIABLE = ("learning_rate", "weight_decay", "beta_cap", "kl_weight_per_item")


class Hyperparameters(NamedTuple):
    """Per-member values ([n_members] float32 arrays, one scalar each inside the vmapped update) or None (the
    `TrainConfig`'s value for every member)."""

    learning_rate: Any = None
    weight_decay: Any = None
    beta_cap: Any = None
    kl_weight_per_item: Any = None


def member_configs(train, seeds: Sequence[int], settings: Sequence[Mapping[str, float]] | None):
    """The `TrainConfig` of every member: each setting (a dict of `VARIABLE` fields over `train`) with every seed,
    setting-major; with no settings, one member per seed. Each is validated as `TrainConfig` validates any run."""
    settings = [{}] if settings is None else list(settings)
    if not settings:
        raise ValueError("settings must hold at least one setting (or be None)")
    if not seeds:
        raise ValueError("an ensemble needs at least one seed")
    members = []
    for index, setting in enumerate(settings):
        unknown = sorted(set(setting) - set(VARIABLE))
        if unknown:
            raise ValueError(
                f"setting {index} ({dict(setting)}) changes {', '.join(unknown)}: an ensemble's members share one "
                f"compiled program, so only {', '.join(VARIABLE)} may differ; train other settings separately")
        member = dataclasses.replace(train, **setting)
        if (member.kl_weight_per_item > 0) != (train.kl_weight_per_item > 0):
            raise ValueError(
                f"setting {index} sets kl_weight_per_item={member.kl_weight_per_item} where the run's is "
                f"{train.kl_weight_per_item}: a per-user KL weight and an annealed one are different objectives, so "
                "every member must use the same kind (all > 0, or all 0)")
        members.extend(dataclasses.replace(member, seed=seed) for seed in seeds)
    return members


def stacked(train, members: Sequence) -> Hyperparameters:
    """The members' values as [n_members] float32 arrays, None for a field no member changes."""
    fields = {}
    for name in VARIABLE:
        values = [getattr(member, name) for member in members]
        if any(value != getattr(train, name) for value in values):
            fields[name] = jnp.asarray(np.asarray(values, np.float32))
    return Hyperparameters(**fields)


def changed(train, member) -> dict[str, float]:
    """The `VARIABLE` fields where `member` differs from `train` (what a result reports as the member's setting)."""
    return {name: getattr(member, name) for name in VARIABLE if getattr(member, name) != getattr(train, name)}
