"""Data parallelism over every local device (and several hosts) with `jax.sharding`: a one-axis Mesh named "data",
batches sharded along it, parameters and optimizer state replicated. The jitted step is unchanged: XLA's SPMD
partitioner turns the batch mean into a cross-device reduction.

Multi-host launch (one process per host, the same command on each, the same --workdir on a shared filesystem):

  JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=<0|1> hvae train --distributed on --devices 0 ...

`initialize_distributed()` passes those variables to `jax.distributed.initialize()` (unset, JAX detects a cluster
such as SLURM); afterwards `jax.devices()` lists every host's devices and the mesh spans them all. Every process
runs the same program on the same (deterministically built) split; only process 0 writes the workdir's files, and
orbax coordinates the checkpoints. Tested as two CPU processes on one host (tests/test_parallel.py): the same
results as one process with two devices. Not yet run across real hosts.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hvae_jax.models.item_sharded import ITEM_AXIS

DATA_AXIS = "data"


def initialize_distributed() -> None:
    """Joins a multi-host run (see the module docstring); a no-op when this process has joined already.

    Must run before anything touches a JAX backend (even `jax.devices()`), so `hvae train --distributed on` calls
    it first of all."""
    if jax.distributed.is_initialized():
        return
    # JAX itself reads JAX_COORDINATOR_ADDRESS (and cluster managers such as SLURM) but not the process count and
    # index, which this recipe passes through the two variables below; unset, JAX detects them from the cluster.
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(
        num_processes=None if count is None else int(count), process_id=None if index is None else int(index)
    )


def device_mesh(axis_name: str, n_devices: int | None = None) -> Mesh:
    """A one-axis mesh named `axis_name` over the first `n_devices` devices (default: all, every host)."""
    devices = jax.devices()
    if n_devices is not None:
        if n_devices > len(devices):
            raise ValueError(f"asked for {n_devices} devices but JAX sees {len(devices)}: {devices}")
        devices = devices[:n_devices]
    return Mesh(np.asarray(devices), (axis_name,))


def item_mesh(n_devices: int | None = None) -> Mesh:
    """A one-axis mesh named "items" over the first `n_devices` devices (default: all): the catalogue split of
    `models/item_sharded.py`."""
    return device_mesh(ITEM_AXIS, n_devices)


def data_parallel_mesh(n_devices: int | None = None) -> Mesh:
    """The "data" mesh over the first `n_devices` devices (default: all, every host)."""
    return device_mesh(DATA_AXIS, n_devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_rows(mesh: Mesh) -> NamedSharding:
    """Sharding of a [n_steps, batch] user order: the batch axis split over devices."""
    return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def batch_matrix(mesh: Mesh) -> NamedSharding:
    """Sharding of a [batch, n_items] array: rows split over devices."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS, None))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    n_devices = mesh.devices.size
    if batch_size % n_devices:
        raise ValueError(f"batch size {batch_size} must be a multiple of the {n_devices} devices it is split over")
