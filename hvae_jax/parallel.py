"""Data parallelism over every local device (and several hosts) with `jax.sharding`: a one-axis Mesh named "data",
batches sharded along it, parameters and optimizer state replicated. The jitted step is unchanged: XLA's SPMD
partitioner turns the batch mean into a cross-device reduction.

Multi-host launch (one process per host, same command on each; untested here, where there is one host):

  JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=<0|1> hvae train --distributed ...

`initialize_distributed()` calls `jax.distributed.initialize()`, which reads those variables (or a cluster
environment such as SLURM); afterwards `jax.devices()` lists every host's devices and the mesh spans them all.
"""

from __future__ import annotations

import numpy as np
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed() -> None:
    """Joins a multi-host run (see the module docstring); a no-op when JAX is already initialised for it."""
    if jax.process_count() == 1:
        jax.distributed.initialize()


def device_mesh(axis_name: str, n_devices: int | None = None) -> Mesh:
    """A one-axis mesh named `axis_name` over the first `n_devices` devices (default: all, every host)."""
    devices = jax.devices()
    if n_devices is not None:
        if n_devices > len(devices):
            raise ValueError(f"asked for {n_devices} devices but JAX sees {len(devices)}: {devices}")
        devices = devices[:n_devices]
    return Mesh(np.asarray(devices), (axis_name,))


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
