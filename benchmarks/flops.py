"""Model FLOPs by counting matrix multiplications, and the machine's sustained float32 matmul rate measured in JAX,
for the roofline columns of the throughput benchmark.

The count reads the model's own parameter shapes (`jax.eval_shape` of `init_params`), so every architecture of
`hvae_jax.configs` (Mult-VAE, Mult-DAE, the hierarchical VAEs with shared or separate input branches, Kim & Suh's
stacks, RecVAE's densely connected encoder) is counted from what it actually holds. Each kernel [in, out] is one
matmul per user forward: 2 * in * out FLOPs. Training adds the weight gradient (2 * in * out) for the kernels the
phase updates, and the input gradient (2 * in * out) where something trained lies upstream of the kernel's input:
never for the first layer, whose input is data. Element-wise work, the softmax and top-K are left out: on these
models they are a few percent of the matmuls.

Per step rather than per user:
  - the VampPrior's pass: its K pseudo-inputs through the top encoder path, forward and backward (the pseudo-inputs
    are parameters, so the first layer's input gradient counts too);
and per user, training only:
  - RecVAE's composite prior: the encoder snapshot's posterior of the user, forward only.

Two counts:
  dense     every framework's work as the dense model's FLOPs (the first layer an [n_items, hidden] matmul).
  executed  the FLOPs the input path really runs: a sparse first layer (hvae_jax's sparse and item-sharded paths,
            PyTorch opt.'s embedding bag) gathers and sums one kernel row per interaction, 2 * nnz * out forward
            and the same again for its scatter-added weight gradient, instead of 2 * n_items * out each. The output
            layer stays dense on every path: the log-sum-exp needs every logit (the likelihood read at the positives
            saves only element-wise work).
"""

from __future__ import annotations

import functools
import statistics
import time

LOGITS = "decoder_output"


@functools.lru_cache(maxsize=64)
def kernel_shapes(config, n_items: int, n_side: int = 0) -> tuple[tuple[tuple[str, ...], tuple[int, int]], ...]:
    """((parameter path, (in, out))) of every weight matrix of `config` at `n_items` columns, without allocating."""
    import flax
    import jax

    from hvae_jax.models.hvae import build_model, init_params

    model = build_model(config, n_items)
    shapes = jax.eval_shape(lambda key: init_params(model, n_side, key=key), jax.random.key(0))
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
    return tuple((path, tuple(leaf.shape)) for path, leaf in sorted(flat.items())
                 if path[-1] == "kernel" and len(leaf.shape) == 2)


def _first_layer_paths(config) -> set[tuple[str, ...]]:
    from hvae_jax.models.hvae import input_branches

    paths = set()
    for branch in input_branches(config):
        paths.add(branch.path + ("linear_0", "kernel"))
        if branch.gated:
            paths.add(branch.path + ("gate_0", "kernel"))
    return paths


def _top_path(config, path: tuple[str, ...]) -> bool:
    """Whether the kernel at `path` is on the way from an input to q(z_L | x) (the VampPrior's pseudo-input pass,
    and the composite prior's snapshot posterior)."""
    if config.kind != "vae":
        return False
    top = config.n_levels - 1
    head = path[0]
    if head == f"posterior_heads_{top}":
        return True
    if config.encoder == "densenet":
        return head == "encoder"
    if config.branches == "separate":
        return head == f"posterior_paths_{top}"
    if config.inference == "ladder" and head.startswith("upward_"):
        return True
    return head == "input_layer" or head.startswith("input_stack_")


def _fed_by_latents(config, path: tuple[str, ...]) -> bool:
    """Whether a decoder-side kernel's input is a latent sample (its input gradient is then not needed when only
    the decoder trains: nothing trained lies upstream)."""
    head = path[0]
    if head.startswith("prior_hidden_") or head == "decoder_hidden":
        return True
    if head.startswith("prior_paths_") or head == "decoder_path":
        return path[1].startswith("embed_") or (path[1] == "layer_0" and not any(
            p[0] == head and p[1].startswith("embed_") for p, _ in kernel_shapes(config, 2)))
    if head == LOGITS:
        return config.kind == "vae" and config.decoder_layers == 0
    return False


def flops_breakdown(
    config,
    n_items: int,
    batch_size: int,
    *,
    training: bool,
    phase: str = "joint",
    nnz_per_user: float | None = None,
    n_side: int = 0,
) -> dict[str, float]:
    """Matmul FLOPs of one training update (forward and backward) or one evaluation batch (forward only), by part.

    Args:
      phase: the schedule phase trained ("joint", or RecVAE's "encoder" / "decoder"): which kernels get weight
        gradients.
      nnz_per_user: None counts the dense first layer; a number counts the sparse first layer actually executed
        for users with that many interactions on average.

    Returns:
      {"first_layer", "output_layer", "other_layers", "prior_pass", "snapshot_encoder"}: FLOPs per step.
    """
    from hvae_jax.models.hvae import parameter_group

    first_layers = _first_layer_paths(config)
    parts = dict.fromkeys(("first_layer", "output_layer", "other_layers", "prior_pass", "snapshot_encoder"), 0.0)
    vamp = config.kind == "vae" and config.prior == "vamp"
    composite = config.kind == "vae" and config.prior == "composite"
    for path, (fan_in, fan_out) in kernel_shapes(config, n_items, n_side):
        group = parameter_group(config, path)
        updated = training and (phase == "joint" or phase == group)
        first = path in first_layers
        rows = nnz_per_user if (first and nnz_per_user is not None) else fan_in  # a sparse first layer's rows
        forward = 2.0 * rows * fan_out
        cost = forward
        if updated:
            cost += forward  # weight gradient (scatter-added rows for a sparse first layer)
        if training and not first:
            if phase in ("joint", "encoder") or (phase == "decoder" and group == "decoder"
                                                 and not _fed_by_latents(config, path)):
                cost += 2.0 * fan_in * fan_out  # input gradient
        part = "first_layer" if first else "output_layer" if path[0] == LOGITS else "other_layers"
        parts[part] += cost * batch_size
        if training and vamp and _top_path(config, path):
            # K pseudo-inputs, dense [K, n_items], through the top path once per step: forward, weight and input
            # gradients (the pseudo-inputs are trained, so even the first layer's input gradient is needed).
            dense_forward = 2.0 * fan_in * fan_out
            parts["prior_pass"] += config.n_pseudo_inputs * dense_forward * (3.0 if phase == "joint" else 1.0)
        if training and composite and _top_path(config, path):
            parts["snapshot_encoder"] += forward * batch_size  # q(z | x) under the snapshot, no gradient
    return parts


def flops_per_step(config, n_items: int, batch_size: int, *, training: bool, phase: str = "joint",
                   nnz_per_user: float | None = None, n_side: int = 0) -> float:
    """Total matmul FLOPs of one update or evaluation batch (see `flops_breakdown`)."""
    return sum(flops_breakdown(config, n_items, batch_size, training=training, phase=phase,
                               nnz_per_user=nnz_per_user, n_side=n_side).values())


def measure_matmul_flops_per_second(size: int, repeats: int = 5, precision: str = "float32") -> float:
    """Median FLOP/s of a [size, size] x [size, size] float32 matmul under jit, after one warm-up call."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), 2)
    a = jax.random.normal(keys[0], (size, size), jnp.float32)
    b = jax.random.normal(keys[1], (size, size), jnp.float32)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, precision=precision))
    matmul(a, b).block_until_ready()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        seconds.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(seconds)
