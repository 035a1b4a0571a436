"""Helpers shared by several test files: random data and parameters, and one training update on any input path."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from hvae_jax.configs import TrainConfig
from hvae_jax.data.batches import to_device
from hvae_jax.models.hvae import init_params
from hvae_jax.train import TrainSetup


def random_binary_csr(n_rows: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    """A random binary [n_rows, n_items] CSR matrix."""
    matrix = sp.random(n_rows, n_items, density=density, random_state=seed, format="csr")
    matrix.data[:] = 1.0
    return matrix


def random_params(model, seed: int, scale: float = 0.4):
    """Parameters of `model` with every leaf drawn from N(0, scale^2); shapes from `init_params` traced abstractly."""
    shapes = jax.eval_shape(lambda key: init_params(model, key=key), jax.random.key(0))
    leaves, treedef = jax.tree.flatten(shapes)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(treedef, [jnp.asarray(rng.normal(0.0, scale, leaf.shape), leaf.dtype) for leaf in leaves])


def one_update(config, matrix, rows, *, step: int = 50, init_seed: int = 0, key_seed: int = 1, **setup_options):
    """(setup, (state, metrics)) of one jitted update at update count `step` from fresh parameters, with beta
    annealed over 100 updates and a batch the size of `rows`. `setup_options` go to `TrainSetup.build` and
    `TrainConfig` (input_path)."""
    train = TrainConfig(input_path=setup_options.pop("input_path", "auto"), total_anneal_steps=100,
                        batch_size=len(rows))
    setup = TrainSetup.build(config, train, matrix, **setup_options)
    update = jax.jit(setup.make_update(setup.schedule.phases[0]))
    state = setup.init_state(key=jax.random.key(init_seed))._replace(step=jnp.int32(step))
    return setup, update(state, rows, jax.random.key(key_seed), to_device(matrix), None)


def subprocess_xla_flags(*extra: str) -> str:
    """XLA_FLAGS for a subprocess of a test: this session's (tests/conftest.py adds its compile flags) without any
    forced host device count, then `extra`."""
    kept = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
            if not flag.startswith("--xla_force_host_platform_device_count")]
    return " ".join([*kept, *extra])
