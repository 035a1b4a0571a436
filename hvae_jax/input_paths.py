"""How a batch of users reaches the model's n_items-wide first and last layers: three strategies with one small
interface, chosen once per run (`resolve`) and used by training, evaluation and recommendation alike.

  dense          rows densified on the device, the first layer a dense matmul, the likelihood on dense rows.
  sparse         the first layer a gather-and-sum over each user's items (`models/sparse.py`), the likelihood
                 read at the positives (sum_S l_i and one row statistic, `models/likelihoods.py`); no dense x.
  item_sharded   the first and last layers split over the devices of an "items" mesh and scored in chunks under a
                 memory budget (`models/item_sharded.py`): catalogues too large for [batch, n_items] logits.

Between the first and the last layer every path runs the same one-user model, vmapped over the batch with keys
split from the update's key, so the paths agree on the loss up to the dropout stream (tested).

  path = resolve(model_config, train_config, train_matrix)        # or catalogue_mesh=... for item_sharded
  loss, metrics = path.loss_of_rows(params, snapshot, rows, matrix, side, key=key, betas=betas, dropout=True)
  step = path.eval_step(ks)                                        # for evaluate.evaluate
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hvae_jax import metrics, parallel, ranking
from hvae_jax.data.batches import (BatchSlots, DeviceCSR, batch_slots, densify, max_batch_nnz, power_of_two_at_least,
                                    to_device)
from hvae_jax.data.splits import EvalSet
from hvae_jax.evaluate import DEFAULT_KS, make_eval_step, model_scorer
from hvae_jax.models import item_sharded
from hvae_jax.models import shared_rows
from hvae_jax.models import sparse as sparse_layer
from hvae_jax.models.hvae import build_model, draw_noise, output_bias_path, output_layer_path, project_first_layers
from hvae_jax.models.layers import Projected
from hvae_jax.models.likelihoods import build_likelihood
from hvae_jax.objectives import UserTerms, combine_terms, per_user_terms, prior_context

DEFAULT_LOGITS_BUDGET_BYTES = 64 * 2**20
SPARSE_DROPOUT_STREAM = 0x5D0F
PSEUDO_INPUT_STREAM = 0x95E0


class Catalogue(NamedTuple):
    """A catalogue's split over devices (static under jit)."""

    layout: item_sharded.CatalogueLayout
    mesh: Mesh


def plan_catalogue(
    n_items: int, batch_size: int, logits_budget_bytes: int, mesh: Mesh, ks: Sequence[int] = DEFAULT_KS
) -> Catalogue:
    """The layout whose [batch_size, chunk] float32 logits block fits the budget on each of the mesh's devices."""
    min_chunk = min(max(ks), n_items)
    layout = item_sharded.catalogue_layout(n_items, mesh.devices.size, batch_size, logits_budget_bytes, min_chunk)
    return Catalogue(layout, mesh)


@dataclasses.dataclass(frozen=True, eq=False)
class InputPath:
    """The interface. `model` is built at `n_model_items` columns (the item-sharded path pads the catalogue).

    Attributes:
      model: the one-user Flax module.
      train: the training config (free bits and weight decay enter the loss).
      max_nnz: static bound on a batch's training entries (`data.batches.max_batch_nnz`).
      mesh: a data-parallel mesh (dense path only), or None.
    """

    name: ClassVar[str]
    model: nn.Module
    train: Any
    max_nnz: int
    mesh: Mesh | None = None
    # The jitted evaluation and posterior-means steps, built once per path (and cut-offs): validation every epoch
    # and the evaluation after training share one compilation.
    _steps: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def config(self):
        return self.model.config

    @property
    def n_slots(self) -> int:
        return self.max_nnz

    @property
    def eval_name(self) -> str:
        """The input path of `eval_step`'s first layer."""
        return self.name

    # -- training -------------------------------------------------------------------------------------------------

    def loss_of_rows(
        self, params, snapshot, rows: jax.Array, matrix: DeviceCSR, side: jax.Array | None, *,
        key: jax.Array, betas: jax.Array, kl_weights_fn=None, dropout: bool = True,
        weight_decay: jax.Array | None = None,
    ) -> tuple[jax.Array, dict]:
        """The batch objective (`objectives.combine_terms`) of training rows `rows` ([batch], -1 pads).

        Args:
          params: the parameters (differentiated).
          snapshot: the encoder snapshot's parameters, for priors that need it (else None).
          matrix: the training matrix on the device; side: [n_train, n_features] or None.
          key: this update's key; each user gets its own split of it.
          betas: [L] KL weights.
          kl_weights_fn: lengths [batch] -> per-user KL weights (RecVAE's gamma |x_u|), or None.
          dropout: input dropout on.
          weight_decay: the L2 weight, replacing the config's (None: the config's).
        """
        slots = batch_slots(matrix, rows, self.n_slots)
        batch_side = None if side is None else side[jnp.maximum(rows, 0)]
        user_keys = jax.random.split(key, rows.shape[0])
        prior_key = jax.random.fold_in(key, PSEUDO_INPUT_STREAM) if dropout else None
        prior_state = self.model.apply({"params": params}, prior_key, method="prepare_prior")
        terms = self.user_terms(params, snapshot, slots, batch_side, user_keys, prior_state, key=key, dropout=dropout)
        kl_weights = None if kl_weights_fn is None else kl_weights_fn(slots.lengths)
        return combine_terms(params, self.train, terms, (rows >= 0).astype(jnp.float32), betas, kl_weights,
                             weight_decay)

    def user_terms(self, params, snapshot, slots: BatchSlots, side, user_keys, prior_state, *, key, dropout):
        raise NotImplementedError

    # -- evaluation -----------------------------------------------------------------------------------------------

    def eval_step(self, ks: Sequence[int] = DEFAULT_KS):
        """The `evaluate.evaluate` step: `eval_step(params, rows, fold_in, exclude, heldout, side, *, n_items,
        bounds)` on device CSR matrices; the same jitted function for the same cut-offs."""
        ks = tuple(ks)
        if ("eval", ks) not in self._steps:
            self._steps["eval", ks] = self.build_eval_step(ks)
        return self._steps["eval", ks]

    def build_eval_step(self, ks: tuple[int, ...]):
        """A new jitted evaluation step for cut-offs `ks` (each path its own; `eval_step` keeps them)."""
        raise NotImplementedError

    def top_k(self, params, fold_in: jax.Array, side: jax.Array | None, k: int) -> tuple[jax.Array, jax.Array]:
        """([batch, k] scores, [batch, k] items) of dense fold-in rows [batch, n_items], fold-in items excluded."""
        logits = model_scorer(self.model, params)(pad_columns(fold_in, self.model.n_items), side)
        logits = logits[:, : fold_in.shape[1]]  # padding items (item-sharded runs) are never recommended
        return ranking.top_k(jnp.where(fold_in > 0, -jnp.inf, logits), k)

    def means_of_rows(self, params, rows: jax.Array, fold_in: DeviceCSR, side, bound: int):
        """Posterior means per level (bottom first), [batch, d_l] each, of the fold-in rows `rows` (-1 pads)."""
        x = densify(fold_in, rows, self.model.n_items, bound)
        one_user = lambda x_u, s_u: self.model.apply({"params": params}, x_u, s_u, None, with_kl=False).means  # noqa
        return jax.vmap(one_user, in_axes=(0, None if side is None else 0))(x, side)

    def posterior_means(self, params, eval_set: EvalSet, side_features=None, batch_size: int = 1000) -> list:
        """Posterior means of every latent level for the users of `eval_set`, fed as training feeds the model: a
        list (bottom first) of [n_users, d_l] arrays. The set's CSR matrix goes to the device once."""
        if "means" not in self._steps:
            self._steps["means"] = jax.jit(self.means_of_rows, static_argnames="bound")
        step = self._steps["means"]
        batch_size = max(1, min(batch_size, eval_set.n_users))
        # Sizes rounded up to powers of two as `evaluate.evaluate` rounds them, so similar sets share a compilation.
        fold_in = to_device(eval_set.fold_in, padded_nnz=power_of_two_at_least(eval_set.fold_in.nnz))
        bound = power_of_two_at_least(max_batch_nnz(eval_set.fold_in, batch_size))
        side = None if side_features is None else jnp.asarray(side_features, jnp.float32)
        chunks = []
        for start in range(0, eval_set.n_users, batch_size):
            rows = np.arange(start, start + batch_size, dtype=np.int32)
            rows[rows >= eval_set.n_users] = -1
            batch_side = None if side is None else side[np.maximum(rows, 0)]
            real = rows >= 0
            chunks.append([np.asarray(level)[real] for level in step(params, jnp.asarray(rows), fold_in, batch_side,
                                                                      bound=bound)])
        return [np.concatenate([chunk[level] for chunk in chunks]) for level in range(len(chunks[0]))]

    def place(self, tree):
        """`tree` (parameters or a training state) placed on this path's devices."""
        if self.mesh is None:
            return tree
        return jax.device_put(tree, parallel.replicated(self.mesh))


def pad_columns(x: jax.Array, width: int) -> jax.Array:
    """x [batch, n] widened with zero columns to `width` (an item-sharded run's padded catalogue)."""
    return x if x.shape[-1] == width else jnp.pad(x, ((0, 0), (0, width - x.shape[-1])))


@dataclasses.dataclass(frozen=True, eq=False)
class DensePath(InputPath):
    """Dense [batch, n_items] rows, built on the device from the CSR slots. With `sparse_evaluation` the evaluation
    step scores through the sparse first layer instead (no dropout there: the same scores up to summation order)."""

    name: ClassVar[str] = "dense"
    sparse_evaluation: bool = False

    def user_terms(self, params, snapshot, slots, side, user_keys, prior_state, *, key, dropout):
        del key
        x = jnp.zeros((slots.lengths.shape[0], self.model.n_items), jnp.float32)
        x = x.at[slots.row, slots.item].add(slots.is_real.astype(jnp.float32))
        if self.mesh is not None:
            x = jax.lax.with_sharding_constraint(x, parallel.batch_matrix(self.mesh))
        return per_user_terms(self.model, params, x, side, user_keys, prior_state=prior_state, snapshot=snapshot,
                              dropout=dropout)

    def _sparse_twin(self) -> SparsePath:
        """The sparse path over the same model: evaluation's first layer under `sparse_evaluation`."""
        return SparsePath(self.model, self.train, self.max_nnz)

    def build_eval_step(self, ks):
        if self.sparse_evaluation:
            return self._sparse_twin().build_eval_step(ks)
        return make_eval_step(lambda params, fold_in, side: model_scorer(self.model, params)(fold_in, side), ks)

    def means_of_rows(self, params, rows, fold_in, side, bound):
        # The validation hook's active units: read through the same first layer as the metrics beside them.
        if self.sparse_evaluation:
            return self._sparse_twin().means_of_rows(params, rows, fold_in, side, bound)
        return super().means_of_rows(params, rows, fold_in, side, bound)

    @property
    def eval_name(self) -> str:
        return "sparse" if self.sparse_evaluation else self.name


@dataclasses.dataclass(frozen=True, eq=False)
class SparsePath(InputPath):
    """Slots instead of dense rows: the first layer gathers and sums kernel rows, the likelihood reads the logits
    at the positives."""

    name: ClassVar[str] = "sparse"

    @property
    def n_slots(self) -> int:
        return sparse_layer.padded_slots(self.max_nnz)

    def project(self, kernel: jax.Array, sparse_input: sparse_layer.SparseInput, n_rows: int) -> jax.Array:
        return sparse_layer.gather_project(kernel, sparse_input, n_rows)

    def projections(self, params, slots: BatchSlots, *, dropout_key: jax.Array | None) -> tuple[Projected, ...]:
        """Each input branch's first-layer products, each branch with its own dropout (`dropout_key` None: none)."""
        n_rows = slots.lengths.shape[0]
        rate = self.config.input_dropout if dropout_key is not None else 0.0

        def project(branch: int, kernel):
            # Branch 0 keeps the stream of a one-branch model, so its draws do not depend on the branch count.
            branch_key = None if dropout_key is None else (
                dropout_key if branch == 0 else jax.random.fold_in(dropout_key, branch))
            return self.project(kernel, sparse_layer.sparse_input_from_slots(slots, rate, key=branch_key), n_rows)

        return project_first_layers(self.config, params, project)

    def middle(self, params, snapshot, slots, side, user_keys, prior_state, *, key, dropout, output_layer: bool):
        """The one-user model vmapped over the batch from the projections (`user_keys` None: evaluation)."""
        model = self.model
        dropout_key = jax.random.fold_in(key, SPARSE_DROPOUT_STREAM) if dropout and key is not None else None
        projections = self.projections(params, slots, dropout_key=dropout_key)
        previous = None if snapshot is None else self.projections(snapshot, slots, dropout_key=None)

        def one_user(params_u, projections_u, side_u, key_u, previous_u):
            noise = None if key_u is None else draw_noise(model.config, model.n_items, key=key_u, dropout=False)
            context = None if previous_u is None else prior_context(model, snapshot, None, side_u, previous_u)
            return model.apply({"params": params_u}, None, side_u, noise, projections=projections_u,
                               prior_state=prior_state, prior_context=context, output_layer=output_layer,
                               with_kl=user_keys is not None)

        # In training the output bias reaches each user as a row of its own: its gradient is summed by a product.
        shared = [output_bias_path(self.config)] if output_layer and user_keys is not None else []
        rows, axes = shared_rows.per_user(params, shared, slots.lengths.shape[0])
        in_axes = (axes, 0, None if side is None else 0, None if user_keys is None else 0,
                   None if previous is None else 0)
        return jax.vmap(one_user, in_axes=in_axes)(rows, projections, side, user_keys, previous)

    def user_terms(self, params, snapshot, slots, side, user_keys, prior_state, *, key, dropout):
        output = self.middle(params, snapshot, slots, side, user_keys, prior_state, key=key, dropout=dropout,
                             output_layer=True)
        likelihood = build_likelihood(self.config.likelihood)
        logits = output.logits.astype(jnp.promote_types(output.logits.dtype, jnp.float32))
        at_positives = jnp.where(slots.is_real, logits[slots.row, slots.item], 0.0)
        positive_sum = jnp.zeros(logits.shape[:1], logits.dtype).at[slots.row].add(at_positives)
        log_likelihood = likelihood.from_positives(positive_sum, slots.lengths.astype(logits.dtype),
                                                   likelihood.row_statistic(logits))
        return UserTerms(-log_likelihood, output.kl)

    def means_of_rows(self, params, rows, fold_in, side, bound):
        slots = batch_slots(fold_in, rows, sparse_layer.padded_slots(bound))
        return self.middle(params, None, slots, side, None, None, key=None, dropout=False, output_layer=False).means

    def scores(self, params, fold_in: BatchSlots, side) -> jax.Array:
        """[batch, n_items] scores of fold-in given as slots (no dropout, z = posterior mean)."""
        return self.middle(params, None, fold_in, side, None, None, key=None, dropout=False, output_layer=True).logits

    def build_eval_step(self, ks):
        return make_eval_step(self.scores, ks, fold_in_as_slots=True)


@dataclasses.dataclass(frozen=True, eq=False)
class ItemShardedPath(SparsePath):
    """The sparse path with the n_items-wide layers split over `catalogue.mesh` and scored in chunks."""

    name: ClassVar[str] = "item_sharded"
    catalogue: Catalogue | None = None

    def __post_init__(self):
        item_sharded.catalogue_param_paths(self.config)  # raises for what this path cannot split
        if self.mesh is not None:
            raise ValueError("an item-sharded catalogue and a data-parallel mesh cannot be combined (yet)")

    def project(self, kernel, sparse_input, n_rows):
        return item_sharded.sharded_gather_project(kernel, sparse_input, n_rows, *self.catalogue)

    def _output_layer(self, params):
        layer = params
        for name in output_layer_path(self.config):
            layer = layer[name]
        return layer["kernel"], layer["bias"]

    def user_terms(self, params, snapshot, slots, side, user_keys, prior_state, *, key, dropout):
        middle = self.middle(params, snapshot, slots, side, user_keys, prior_state, key=key, dropout=dropout,
                             output_layer=False)
        kernel, bias = self._output_layer(params)
        positive_sum, logsumexp = item_sharded.positive_sum_and_logsumexp(
            middle.decoder_hidden, kernel, bias, slots, *self.catalogue, compute_dtype=self.config.compute_dtype
        )
        likelihood = build_likelihood(self.config.likelihood)
        return UserTerms(-likelihood.from_positives(positive_sum, slots.lengths.astype(jnp.float32), logsumexp),
                         middle.kl)

    def top_k_of_slots(self, params, fold_in: BatchSlots, exclude: BatchSlots, side, k: int):
        """([batch, k] scores, [batch, k] items): each user's best items given the fold-in slots, `exclude` out."""
        hidden = self.middle(params, None, fold_in, side, None, None, key=None, dropout=False,
                             output_layer=False).decoder_hidden
        kernel, bias = self._output_layer(params)
        return item_sharded.top_k(hidden, kernel, bias, exclude, k, *self.catalogue,
                                  compute_dtype=self.config.compute_dtype)

    def build_eval_step(self, ks):
        n_items = self.catalogue.layout.n_items
        k = min(max(ks), n_items)

        @functools.partial(jax.jit, static_argnames=("n_items", "bounds"))
        def eval_step(params, rows, fold_in, exclude, heldout, side, *, n_items, bounds):
            del n_items  # the catalogue's real size is static in `catalogue`
            fold_in_slots = batch_slots(fold_in, rows, sparse_layer.padded_slots(bounds[0]))
            exclude_slots = batch_slots(exclude, rows, bounds[1])
            heldout_slots = batch_slots(heldout, rows, bounds[2])
            batch_side = None if side is None else side[jnp.maximum(rows, 0)]
            scores, items = self.top_k_of_slots(params, fold_in_slots, exclude_slots, batch_side, k)
            return metrics.metrics_from_hits(_hits(scores, items, heldout_slots), heldout_slots.lengths,
                                             self.catalogue.layout.n_items, ks, valid=rows >= 0)

        del n_items
        return eval_step

    def place(self, tree):
        return jax.device_put(tree, item_sharded.param_shardings(self.config, tree, self.catalogue.mesh))


def _hits(scores: jax.Array, items: jax.Array, heldout: BatchSlots) -> jax.Array:
    """[batch, k] bool: is the item at each rank held out (ranks holding no rankable item, score -inf, never are)."""
    matches = (items[heldout.row] == heldout.item[:, None]) & heldout.is_real[:, None]  # [slots, k]
    hits = jnp.zeros(items.shape, jnp.int32).at[heldout.row].max(matches.astype(jnp.int32))
    return (hits > 0) & jnp.isfinite(scores)


SPARSE_BELOW_DENSITY = 0.01
# Evaluation has no dropout, so there the two paths give the same scores up to summation order and only cost decides.
# Whole `evaluate` calls at the ML-1M catalogue on this project's 2-core CPU (`python -m benchmarks.eval_breakdown
# --densities 20,60,130,260,500`, benchmarks/results/eval-breakdown-cpu-2core-2026-12-01.json, medians of 9 alternated
# pairs), dense / sparse time: 1.36 at a fold-in density of 0.45%, 1.24 at 1.3%, 1.18 at 2.8%, 1.00 at 3.5% (the ML-1M
# shape), 0.98 at 5.4%, 0.71 at 9.4%. The fold-in holds 80% of a user's items: the crossover, 3.5-5% of the fold-in,
# is 4.5-6% of the training matrix. A GPU, where the dense matmul gains more, is unmeasured.
EVAL_SPARSE_BELOW_DENSITY = 0.05


def choose_path_name(train, matrix, phase: str = "train") -> str:
    """"dense" or "sparse" for `train.input_path` in `phase` ("train" or "eval"), deciding "auto" from the training
    matrix's density against the phase's crossover."""
    if train.input_path != "auto":
        return train.input_path
    density = matrix.nnz / max(1, matrix.shape[0] * matrix.shape[1])
    threshold = {"train": SPARSE_BELOW_DENSITY, "eval": EVAL_SPARSE_BELOW_DENSITY}[phase]
    return "sparse" if density < threshold else "dense"


def resolve(
    model_config,
    train,
    matrix,
    *,
    batch_size: int | None = None,
    mesh: Mesh | None = None,
    catalogue_mesh: Mesh | None = None,
    logits_budget_bytes: int = DEFAULT_LOGITS_BUDGET_BYTES,
    ks: Sequence[int] = DEFAULT_KS,
) -> InputPath:
    """The input path for this model, training config and [n_train, n_items] training matrix, with the model built
    at the catalogue size the path needs. `catalogue_mesh` selects the item-sharded path."""
    n_items = matrix.shape[1]
    batch_size = min(batch_size or train.batch_size, max(matrix.shape[0], 1))
    max_nnz = max_batch_nnz(matrix, batch_size)
    if catalogue_mesh is not None:
        catalogue = plan_catalogue(n_items, batch_size, logits_budget_bytes, catalogue_mesh, ks)
        model = build_model(model_config, catalogue.layout.n_padded)
        return ItemShardedPath(model, train, max_nnz, mesh, catalogue)
    model = build_model(model_config, n_items)
    name = choose_path_name(train, matrix)
    if name == "sparse":
        return SparsePath(model, train, max_nnz, mesh)
    # The sparse path has no data-parallel mesh: with one, evaluation stays dense too.
    sparse_evaluation = mesh is None and choose_path_name(train, matrix, "eval") == "sparse"
    return DensePath(model, train, max_nnz, mesh, sparse_evaluation)


def neural_eval_step(model: nn.Module, ks: Sequence[int] = DEFAULT_KS, input_path: str = "dense"):
    """An `evaluate.evaluate` step for a Flax model whose state is its parameters; "sparse" feeds the first layer by
    gather-and-sum over the fold-in items (as training's sparse path) instead of a dense matmul."""
    paths = {"dense": DensePath, "sparse": SparsePath}
    if input_path not in paths:
        raise ValueError(f"input_path must be 'dense' or 'sparse' here, got {input_path!r}")
    return paths[input_path](model, None, 1).eval_step(ks)


def describe(path: InputPath) -> str:
    """One line for logs: which path, and the catalogue layout for the item-sharded one."""
    if isinstance(path, ItemShardedPath):
        layout = path.catalogue.layout
        return (f"item-sharded catalogue: {layout.n_items} items padded to {layout.n_padded}, {layout.n_shards} "
                f"devices x {layout.chunks_per_shard} chunks of {layout.chunk}")
    if path.eval_name != path.name:
        return f"input path: {path.name} (evaluation: {path.eval_name}, no dropout there)"
    return f"input path: {path.name}"
