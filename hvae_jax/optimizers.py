"""Optimizers as optax transformations: Adam, Kim & Suh's Adam on unit-norm gradients, the debiased running average
of the parameters, and one optimizer state per parameter group, so that a schedule can update one group (RecVAE's
encoder or decoder) and leave the other's parameters and moments bit-identical.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.traverse_util
import jax
import jax.numpy as jnp
import optax


def normalize_gradients(epsilon: float = 1e-7) -> optax.GradientTransformation:
    """Divides each tensor's gradient by its L2 norm (plus `epsilon`): Tomczak & Welling's `AdamNormGrad`, used by
    Kim & Suh, is this followed by Adam."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: g / (jnp.sqrt(jnp.sum(jnp.square(g))) + epsilon), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class ParameterAverage(NamedTuple):
    """The optimizer state of `parameter_average`: the zero-started running sum and the number of updates."""

    count: jax.Array
    running: Any


def parameter_average(decay: float) -> optax.GradientTransformation:
    """An optax transformation that passes updates through unchanged and keeps an exponential moving average of the
    parameters after each update: running <- decay running + (1 - decay) p, from zero, read out debiased as
    running / (1 - decay^count) (as Adam debiases its moments), so the initial parameters carry no special weight.
    Chained last, its state rides in the optimizer state, so checkpoints and exact resumption carry it."""

    def init(params):
        return ParameterAverage(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params):
        new_params = optax.apply_updates(params, updates)
        running = jax.tree.map(lambda r, p: decay * r + (1.0 - decay) * p, state.running, new_params)
        return updates, ParameterAverage(state.count + 1, running)

    return optax.GradientTransformation(init, update)


def averaged_params(state: ParameterAverage, decay: float, params):
    """The debiased running average of `parameter_average(decay)`'s `state`; `params` before any update."""
    correction = 1.0 - decay ** state.count.astype(jnp.float32)
    return jax.tree.map(lambda r, p: jnp.where(state.count > 0, r / jnp.maximum(correction, 1e-12), p),
                        state.running, params)


def make_optimizer(train, learning_rate=None) -> optax.GradientTransformation:
    """Adam at `train.learning_rate` (or `learning_rate`: a traced step size gives a state of the same structure,
    Adam's moments not depending on it), after per-tensor gradient normalisation for "adam_normgrad", followed by
    `parameter_average` when `train.average_decay` is set."""
    parts = [normalize_gradients()] if train.optimizer == "adam_normgrad" else []
    parts.append(optax.adam(train.learning_rate if learning_rate is None else learning_rate))
    if train.average_decay:
        parts.append(parameter_average(train.average_decay))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


class GroupedOptimizer:
    """One optimizer state per parameter group; `update` applies the optimizer to the groups it is given only.

    Groups are subtrees of the parameter dict with the same nesting (a leaf keeps its path), so shardings that match
    parameter paths apply to the states too. `label(path) -> group name` assigns every leaf.
    """

    def __init__(self, train, label: Callable[[tuple[str, ...]], str]):
        self.train = train
        self.label = label
        self.transform = make_optimizer(train)

    def groups_of(self, params) -> dict[str, Any]:
        """{group: the parameters of that group, as a nested dict}."""
        grouped: dict[str, dict] = {}
        for path, leaf in flax.traverse_util.flatten_dict(_as_dict(params)).items():
            grouped.setdefault(self.label(path), {})[path] = leaf
        return {group: flax.traverse_util.unflatten_dict(leaves) for group, leaves in sorted(grouped.items())}

    def init(self, params) -> dict[str, Any]:
        return {group: self.transform.init(subtree) for group, subtree in self.groups_of(params).items()}

    def update(self, grads, state: dict, params, groups: tuple[str, ...] | None, learning_rate=None):
        """(new params, new state): the optimizer step for `groups` (None: all); other groups untouched.
        `learning_rate` replaces the config's (an ensemble member's own)."""
        transform = self.transform if learning_rate is None else make_optimizer(self.train, learning_rate)
        param_groups = self.groups_of(params)
        grad_groups = self.groups_of(grads)
        new_state = dict(state)
        merged = flax.traverse_util.flatten_dict(_as_dict(params))
        for group in param_groups if groups is None else groups:
            if group not in param_groups:
                continue
            updates, new_state[group] = transform.update(grad_groups[group], state[group], param_groups[group])
            new_params = optax.apply_updates(param_groups[group], updates)
            merged.update(flax.traverse_util.flatten_dict(new_params))
        return flax.traverse_util.unflatten_dict(merged), new_state

    def evaluation_params(self, state: dict, params):
        """The parameters to validate and report: the debiased running average of every group when
        `average_decay` is set, else `params`."""
        if not self.train.average_decay:
            return params
        merged = flax.traverse_util.flatten_dict(_as_dict(params))
        for group, subtree in self.groups_of(params).items():
            # `parameter_average` is chained last (`make_optimizer`).
            average = averaged_params(state[group][-1], self.train.average_decay, subtree)
            merged.update(flax.traverse_util.flatten_dict(average))
        return flax.traverse_util.unflatten_dict(merged)


def _as_dict(tree):
    """Flax FrozenDicts and plain dicts alike, as plain nested dicts."""
    return flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree
