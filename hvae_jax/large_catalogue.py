"""Training and evaluation for catalogues too large for dense [batch, n_items] logits (a million items and more).

The model's n_items-wide layers are split over the devices of an "items" mesh and scored in chunks
(`models/item_sharded.py`); users' items travel as slots, never as dense rows. Between the first and the last layer
the model is the ordinary one-user model, vmapped over the batch with the keys `train.make_update` draws, so one
update here equals one update of the sparse input path on the same (padded) catalogue (tested).

  catalogue = large_catalogue.plan(n_items, batch_size, logits_budget_bytes, mesh)
  model = build_model(config, catalogue.layout.n_padded)
  params = large_catalogue.shard_params(config, init_params(model, key=key), catalogue)

`fit(..., catalogue_mesh=mesh, logits_budget_bytes=...)` does all of this; the functions are public for scripts.
Supported: one-level and hierarchical VAEs with the standard prior, Mult-DAE, gating, side features, the
multinomial likelihood. Not supported (a clear error): the VampPrior, other likelihoods.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from hvae_jax import metrics
from hvae_jax.configs import ModelConfig, TrainConfig
from hvae_jax.data.batches import BatchSlots, batch_slots
from hvae_jax.models import item_sharded
from hvae_jax.models import sparse as sparse_layer
from hvae_jax.models.hvae import project_first_layer
from hvae_jax.models.layers import Projected
from hvae_jax.objectives import UserTerms, combine_terms, projected_outputs

DEFAULT_LOGITS_BUDGET_BYTES = 64 * 2**20


class Catalogue(NamedTuple):
    """A catalogue's split over devices (static under jit)."""

    layout: item_sharded.CatalogueLayout
    mesh: Mesh


def plan(
    n_items: int, batch_size: int, logits_budget_bytes: int, mesh: Mesh, ks: Sequence[int] = metrics.DEFAULT_KS
) -> Catalogue:
    """The layout whose [batch_size, chunk] float32 logits block fits the budget on each of the mesh's devices."""
    min_chunk = min(max(ks), n_items)
    layout = item_sharded.catalogue_layout(n_items, mesh.devices.size, batch_size, logits_budget_bytes, min_chunk)
    return Catalogue(layout, mesh)


def check_supported(config: ModelConfig) -> None:
    item_sharded.catalogue_param_paths(config)  # raises for the VampPrior
    if config.likelihood != "multinomial":
        raise ValueError(f"the item-sharded model supports the multinomial likelihood only, not {config.likelihood!r}")


def shard_params(config: ModelConfig, tree, catalogue: Catalogue):
    """`tree` (parameters, or a training state holding them and Adam's moments) placed on the catalogue's devices,
    the n_items-wide arrays split over items."""
    return jax.device_put(tree, item_sharded.param_shardings(config, tree, catalogue.mesh))


def _sharded_projection(params, config: ModelConfig, sparse_input, n_rows: int, catalogue: Catalogue) -> Projected:
    return project_first_layer(
        config, params, lambda kernel: item_sharded.project(kernel, sparse_input, n_rows, *catalogue)
    )


def batch_loss(
    params,
    model: nn.Module,
    train: TrainConfig,
    catalogue: Catalogue,
    slots: BatchSlots,
    sparse_input: sparse_layer.SparseInput,
    side: jax.Array | None,
    user_weights: jax.Array,
    betas: jax.Array,
    *,
    key: jax.Array,
) -> tuple[jax.Array, dict]:
    """`objectives.batch_loss` with item-sharded first and last layers.

    Args:
      slots: the batch's items (the likelihood's positives), padded to a multiple of `sparse.CHUNK`.
      sparse_input: the same slots normalised and dropped out (`sparse.sparse_input_from_slots`).
      key: the update's key, split over users as `objectives.batch_loss` does.
    """
    config: ModelConfig = model.config
    n_rows = user_weights.shape[0]
    projection = _sharded_projection(params, config, sparse_input, n_rows, catalogue)
    middle = projected_outputs(model, params, projection, side, jax.random.split(key, n_rows), output_layer=False)
    hidden, kl = middle.decoder_hidden, middle.kl
    output = params["decoder_output"]
    log_likelihood = item_sharded.log_likelihood(
        hidden, output["kernel"], output["bias"], slots, *catalogue, compute_dtype=config.compute_dtype
    )
    return combine_terms(params, train, UserTerms(-log_likelihood, kl), user_weights, betas)


def top_items(model: nn.Module, params, catalogue: Catalogue, fold_in: BatchSlots, exclude: BatchSlots, side, k: int):
    """([batch, k] scores, [batch, k] items): each user's best items given the fold-in slots, `exclude` left out."""
    config: ModelConfig = model.config
    sparse_input = sparse_layer.sparse_input_from_slots(fold_in, 0.0)  # normalised, no dropout
    projection = _sharded_projection(params, config, sparse_input, fold_in.lengths.shape[0], catalogue)
    hidden = projected_outputs(model, params, projection, side, None, output_layer=False).decoder_hidden
    output = params["decoder_output"]
    return item_sharded.top_k(
        hidden, output["kernel"], output["bias"], exclude, k, *catalogue, compute_dtype=config.compute_dtype
    )


def hits_of(scores: jax.Array, items: jax.Array, heldout: BatchSlots) -> jax.Array:
    """[batch, k] bool: is the item at each rank held out (ranks holding no rankable item, score -inf, never are)."""
    matches = (items[heldout.row] == heldout.item[:, None]) & heldout.is_real[:, None]  # [slots, k]
    hits = jnp.zeros(items.shape, jnp.int32).at[heldout.row].max(matches.astype(jnp.int32))
    return (hits > 0) & jnp.isfinite(scores)


def make_eval_step(model: nn.Module, catalogue: Catalogue, ks: Sequence[int] = metrics.DEFAULT_KS) -> Callable:
    """The `evaluate.evaluate`-compatible step: fold-in as slots, chunked item-sharded top-K, metrics from hits.

    `eval_step(params, rows, fold_in, exclude, heldout, side, *, n_items, bounds)` with device CSR matrices, as
    `evaluate.make_eval_step`'s; no [batch, n_items] array is built.
    """
    ks = tuple(ks)
    catalogue_items = catalogue.layout.n_items
    k = min(max(ks), catalogue_items)

    @functools.partial(jax.jit, static_argnames=("n_items", "bounds"))
    def eval_step(params, rows, fold_in, exclude, heldout, side, *, n_items, bounds):
        del n_items  # the catalogue's real size is static in `catalogue`
        fold_in_slots = batch_slots(fold_in, rows, sparse_layer.padded_slots(bounds[0]))
        exclude_slots = batch_slots(exclude, rows, bounds[1])
        heldout_slots = batch_slots(heldout, rows, bounds[2])
        batch_side = None if side is None else side[jnp.maximum(rows, 0)]
        scores, items = top_items(model, params, catalogue, fold_in_slots, exclude_slots, batch_side, k)
        return metrics.metrics_from_hits(
            hits_of(scores, items, heldout_slots), heldout_slots.lengths, catalogue_items, ks, valid=rows >= 0
        )

    return eval_step
