"""Training: one jitted, donated call runs a chunk of updates as a `lax.scan` over batches densified on the device;
the host loop validates, keeps the best parameters, logs, checkpoints and resumes exactly where it stopped.

Keys: `key(seed)` splits once into init / train / shuffle keys. Update `s` uses `fold_in(train_key, s)` inside the
jit and epoch `e` shuffles with `fold_in(shuffle_key, e)`, so a resumed run draws exactly the numbers an
uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jax.sharding import Mesh

from hvae_jax import large_catalogue, parallel
from hvae_jax.checkpoint import Checkpoints, abstract_like
from hvae_jax.configs import ModelConfig, TrainConfig
from hvae_jax.data.batches import DeviceCSR, batch_slots, epoch_order, max_batch_nnz, to_device
from hvae_jax.models import sparse as sparse_layer
from hvae_jax.data.splits import Split
from hvae_jax.evaluate import DEFAULT_KS, active_units, evaluate, make_means_step, neural_eval_step, posterior_means
from hvae_jax.logs import MetricsLog
from hvae_jax.models.hvae import build_model, init_params
from hvae_jax.objectives import batch_loss, beta_per_level

VALIDATION_METRIC = "ndcg@100"
SPARSE_DROPOUT_STREAM = 0x5D0F


class TrainState(NamedTuple):
    """Everything an update changes: the update counter, parameters and optimizer state."""

    step: jax.Array
    params: Any
    opt_state: Any


class RunKeys(NamedTuple):
    init: jax.Array
    train: jax.Array
    shuffle: jax.Array


def run_keys(seed: int) -> RunKeys:
    """The run's three independent key streams, split once from the seed."""
    return RunKeys(*jax.random.split(jax.random.key(seed), 3))


def total_anneal_steps(train: TrainConfig, steps_per_epoch: int) -> int:
    """Updates over which beta rises: the configured number, or `anneal_epochs` epochs of updates."""
    if train.total_anneal_steps is not None:
        return train.total_anneal_steps
    epochs = train.anneal_epochs if train.anneal_epochs is not None else train.epochs
    return max(1, epochs * steps_per_epoch)


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


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    """Adam at `train.learning_rate`, followed by `parameter_average` when `train.average_decay` is set."""
    adam = optax.adam(train.learning_rate)
    return optax.chain(adam, parameter_average(train.average_decay)) if train.average_decay else adam


def evaluation_params(train: TrainConfig, state: "TrainState"):
    """The parameters to validate and report: the debiased running average when `train.average_decay` is set."""
    if not train.average_decay:
        return state.params
    return averaged_params(state.opt_state[1], train.average_decay, state.params)


def create_state(model: nn.Module, optimizer: optax.GradientTransformation, n_side_features: int, *, key) -> TrainState:
    params = init_params(model, n_side_features, key=key)
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


SPARSE_BELOW_DENSITY = 0.01


def resolve_input_path(train: TrainConfig, matrix) -> str:
    """"dense" or "sparse" for `train.input_path`, deciding "auto" from the training matrix's density."""
    if train.input_path != "auto":
        return train.input_path
    density = matrix.nnz / max(1, matrix.shape[0] * matrix.shape[1])
    return "sparse" if density < SPARSE_BELOW_DENSITY else "dense"


def make_update(
    model: nn.Module,
    train: TrainConfig,
    optimizer: optax.GradientTransformation,
    *,
    max_nnz: int,
    anneal_steps: int,
    mesh: Mesh | None = None,
    catalogue: large_catalogue.Catalogue | None = None,
) -> Callable:
    """Builds one update, `update(state, rows, train_key, matrix, side) -> (state, metrics)`, un-jitted.

    The batch `rows` ([batch] training-row indices, -1 pads) is densified on the device; with a `mesh` the dense
    batch is sharded over its devices and XLA reduces the gradient across them. `train.input_path` "auto" means
    "dense" here; `fit` resolves it from the data first (`resolve_input_path`). With a `catalogue` the model's
    n_items-wide layers are split over its devices and scored in chunks (`large_catalogue.py`); the input is sparse.
    """
    config: ModelConfig = model.config
    if catalogue is not None:
        large_catalogue.check_supported(config)
        if mesh is not None:
            raise ValueError("an item-sharded catalogue and a data-parallel mesh cannot be combined (yet)")
        train = dataclasses.replace(train, input_path="sparse")

    n_slots = sparse_layer.padded_slots(max_nnz) if train.input_path == "sparse" else max_nnz
    # The sparse path reads the multinomial likelihood at the positives and never builds the dense rows.
    dense_rows = train.input_path == "dense" or config.likelihood != "multinomial"

    def update(state: TrainState, rows: jax.Array, train_key, matrix: DeviceCSR, side):
        slots = batch_slots(matrix, rows, n_slots)
        x = None
        if dense_rows:
            x = jnp.zeros((rows.shape[0], model.n_items), jnp.float32)
            x = x.at[slots.row, slots.item].add(slots.is_real.astype(jnp.float32))
            if mesh is not None:
                x = jax.lax.with_sharding_constraint(x, parallel.batch_matrix(mesh))
        batch_side = None if side is None else side[jnp.maximum(rows, 0)]
        betas = beta_per_level(train, config, state.step, anneal_steps)
        key = jax.random.fold_in(train_key, state.step)
        user_weights = (rows >= 0).astype(jnp.float32)
        sparse_input = None
        if train.input_path == "sparse":
            # A stream of its own, so the users' keys (and their epsilons) match the dense path's.
            dropout_key = jax.random.fold_in(key, SPARSE_DROPOUT_STREAM)
            sparse_input = sparse_layer.sparse_input_from_slots(slots, config.input_dropout, key=dropout_key)
        if catalogue is not None:
            loss_fn = functools.partial(
                large_catalogue.batch_loss, model=model, train=train, catalogue=catalogue, slots=slots,
                sparse_input=sparse_input, side=batch_side, user_weights=user_weights, betas=betas, key=key,
            )
        else:
            loss_fn = functools.partial(
                batch_loss, model=model, train=train, x=x, side=batch_side, user_weights=user_weights, betas=betas,
                key=key, sparse_input=sparse_input, positives=None if dense_rows else slots,
            )
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, beta=betas[0] if betas.shape[0] else jnp.zeros(()))
        return TrainState(state.step + 1, params, opt_state), metrics

    return update


def make_update_chunk(model: nn.Module, train: TrainConfig, optimizer: optax.GradientTransformation, **kwargs):
    """Builds `update_chunk(state, user_order, train_key, matrix, side) -> (state, metrics)`.

    `user_order` is [n_steps, batch] training-row indices (-1 pads); the call scans over its rows, one update per
    row, inside a single jit with the state donated. Returns per-update metrics stacked along the first axis.
    Keyword arguments go to `make_update`.
    """
    update = make_update(model, train, optimizer, **kwargs)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def update_chunk(state, user_order, train_key, matrix, side):
        return jax.lax.scan(lambda s, rows: update(s, rows, train_key, matrix, side), state, user_order)

    return update_chunk


@dataclasses.dataclass
class FitResult:
    """What `fit` hands back: the best parameters and the loop's record."""

    model: nn.Module
    best_params: Any
    final_params: Any
    history: list[dict]
    best_epoch: int
    best_validation: dict | None
    epochs_run: int
    train_seconds: float
    compile_seconds: float
    users_per_second: float
    resumed_from: int | None
    catalogue: large_catalogue.Catalogue | None = None


def fit(
    model_config: ModelConfig,
    train: TrainConfig,
    split: Split,
    workdir: str | pathlib.Path,
    *,
    side_features: dict[str, np.ndarray] | None = None,
    ks: tuple[int, ...] = DEFAULT_KS,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    mesh: Mesh | None = None,
    catalogue_mesh: Mesh | None = None,
    logits_budget_bytes: int = large_catalogue.DEFAULT_LOGITS_BUDGET_BYTES,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Trains a neural model on `split.train`, validating on `split.valid` after every `eval_every` epochs.

    Resumes from `workdir/checkpoints/latest` when it exists. Writes `workdir/metrics.jsonl`, one JSON line per
    epoch (loss, nll, KL per level, beta, validation metrics, seconds).

    Args:
      side_features: optional {"train": [n_train, F], "valid": [n_valid, F], "test": [n_test, F]} aligned with the
        split's users.
      stop_after_epochs: end this call after so many epochs (to simulate an interruption); the checkpoint lets a
        later call continue.
      mesh: train data-parallel over this mesh's devices (`parallel.data_parallel_mesh()`); None: one device.
      catalogue_mesh: split the model's n_items-wide layers over this mesh's devices
        (`models/item_sharded.item_mesh()`) and score items in chunks whose [batch, chunk] float32 logits fit
        `logits_budget_bytes` per device (`large_catalogue.py`), for catalogues too large for dense logits. The
        model is built at the padded catalogue size `FitResult.catalogue.layout.n_padded`; active units are not
        logged on this path.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    catalogue = None
    if catalogue_mesh is not None:
        catalogue = large_catalogue.plan(
            split.n_items, min(train.batch_size, split.train.shape[0]), logits_budget_bytes, catalogue_mesh, ks
        )
        layout = catalogue.layout
        log(f"item-sharded catalogue: {layout.n_items} items padded to {layout.n_padded}, {layout.n_shards} devices "
            f"x {layout.chunks_per_shard} chunks of {layout.chunk}")
    model = build_model(model_config, split.n_items if catalogue is None else catalogue.layout.n_padded)
    optimizer = make_optimizer(train)
    keys = run_keys(train.seed)
    side = side_features or {}
    n_side = 0 if side.get("train") is None else side["train"].shape[1]

    n_train = split.train.shape[0]
    batch_size = min(train.batch_size, n_train)
    steps_per_epoch = math.ceil(n_train / batch_size)
    anneal_steps = total_anneal_steps(train, steps_per_epoch)
    train = dataclasses.replace(train, input_path=resolve_input_path(train, split.train))
    update_chunk = make_update_chunk(
        model, train, optimizer, max_nnz=max_batch_nnz(split.train, batch_size), anneal_steps=anneal_steps, mesh=mesh,
        catalogue=catalogue,
    )
    matrix = to_device(split.train)
    train_side = None if n_side == 0 else jnp.asarray(side["train"], jnp.float32)
    if mesh is not None:
        parallel.check_batch_size(batch_size, mesh)
        matrix, train_side = jax.device_put((matrix, train_side), parallel.replicated(mesh))
    if catalogue is None:
        eval_step = neural_eval_step(model, ks, input_path=train.input_path)
    else:
        eval_step = large_catalogue.make_eval_step(model, catalogue, ks)
    means_step = make_means_step(model) if model_config.kind == "vae" and catalogue is None else None

    checkpoints = Checkpoints(workdir)
    state = create_state(model, optimizer, n_side, key=keys.init)
    if catalogue is not None:
        state = large_catalogue.shard_params(model_config, state, catalogue)
    history: list[dict] = []
    best = {"epoch": 0, "validation": None, "metric": -math.inf, "epochs_without_improvement": 0}
    start_epoch = 1
    resumed_from = None
    restored = checkpoints.restore("latest", abstract_like(state))
    if restored is not None:
        state, record = restored
        best = record["best"]
        history = record["history"]
        start_epoch = record["epoch"] + 1
        resumed_from = record["epoch"]
        log(f"resuming from epoch {record['epoch']} (update {int(state.step)}) in {workdir}")
    # In a multi-host run every process trains; the first one alone writes the log.
    metrics_log = MetricsLog(workdir, resume_epoch=resumed_from) if jax.process_index() == 0 else None
    if mesh is not None:
        state = jax.device_put(state, parallel.replicated(mesh))
    best_params = state.params
    if resumed_from is not None and best["validation"] is not None:
        best_restored = checkpoints.restore("best", abstract_like(state.params))
        best_params = best_restored[0] if best_restored is not None else state.params
    best_params = jax.tree.map(jnp.copy, best_params)

    train_seconds = 0.0
    compile_seconds = 0.0
    timed_users = 0
    epochs_done = 0
    stopped_early = best.get("stopped_early", False)
    bar = tqdm(
        total=train.epochs, initial=start_epoch - 1, desc=f"train {model_config.kind}", unit="epoch",
        disable=not progress, dynamic_ncols=True,
    )
    for epoch in range(start_epoch, train.epochs + 1):
        if stopped_early or (stop_after_epochs is not None and epochs_done >= stop_after_epochs):
            break
        epoch_start = time.perf_counter()
        order = epoch_order(jax.random.fold_in(keys.shuffle, epoch), n_train, batch_size)
        chunk_metrics = []
        for chunk_start in range(0, steps_per_epoch, train.steps_per_dispatch):
            chunk = order[chunk_start : chunk_start + train.steps_per_dispatch]
            if mesh is not None:
                chunk = jax.device_put(chunk, parallel.batch_rows(mesh))
            state, metrics = update_chunk(state, chunk, keys.train, matrix, train_side)
            chunk_metrics.append(metrics)
        epoch_metrics = jax.tree.map(lambda *m: np.concatenate([np.asarray(a) for a in m]), *chunk_metrics)
        seconds = time.perf_counter() - epoch_start
        if epoch == start_epoch:
            compile_seconds = seconds  # the first epoch of a call includes compilation
        else:
            train_seconds += seconds
            timed_users += n_train

        loss = float(np.mean(epoch_metrics["loss"]))
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} in epoch {epoch}; lower --learning-rate or check the input data"
            )
        row = {
            "epoch": epoch,
            "step": int(state.step),
            "loss": loss,
            "nll": float(np.mean(epoch_metrics["nll"])),
            "kl": [float(v) for v in np.mean(epoch_metrics["kl"], axis=0)] if epoch_metrics["kl"].ndim == 2 else [],
            "beta": float(epoch_metrics["beta"][-1]),
            "train_seconds": seconds,
        }
        if split.valid is not None and (epoch % train.eval_every == 0 or epoch == train.epochs):
            params = evaluation_params(train, state)
            validation = evaluate(eval_step, params, split.valid, side_features=side.get("valid"))
            row["valid"] = validation
            if means_step is not None:
                # Burda et al.'s active units per level, every validated epoch, so posterior collapse shows.
                level_means = posterior_means(model, params, split.valid, side.get("valid"), means_step=means_step)
                row["active_units"] = [active_units(means) for means in level_means]
            if validation[VALIDATION_METRIC] > best["metric"]:
                best.update(epoch=epoch, validation=validation, metric=validation[VALIDATION_METRIC])
                best["epochs_without_improvement"] = 0
                best_params = jax.tree.map(jnp.copy, params)
                checkpoints.save("best", epoch, best_params, {"epoch": epoch, "validation": validation})
            else:
                best["epochs_without_improvement"] += train.eval_every
            if train.early_stopping is not None and best["epochs_without_improvement"] >= train.early_stopping:
                stopped_early = True
                best["stopped_early"] = True
                log(f"early stopping after epoch {epoch}: no validation improvement in {train.early_stopping} epochs")
        history.append(row)
        if metrics_log is not None:
            metrics_log.write(row)
        checkpoints.save("latest", epoch, state, {"epoch": epoch, "best": best, "history": history})
        epochs_done += 1
        postfix = {"loss": f"{loss:.2f}", "beta": f"{row['beta']:.3f}"}
        if "valid" in row:
            postfix[VALIDATION_METRIC] = f"{row['valid'][VALIDATION_METRIC]:.4f}"
        bar.set_postfix(postfix)
        bar.update(1)
    bar.close()
    if metrics_log is not None:
        metrics_log.close()
    checkpoints.close()

    if split.valid is None or best["validation"] is None:
        best_params = evaluation_params(train, state)
    return FitResult(
        model=model,
        best_params=best_params,
        final_params=state.params,
        history=history,
        best_epoch=best["epoch"],
        best_validation=best["validation"],
        epochs_run=history[-1]["epoch"] if history else 0,
        train_seconds=train_seconds,
        compile_seconds=compile_seconds,
        # With a single epoch there is no compile-free timing; then the first epoch's time stands in.
        users_per_second=(timed_users / train_seconds) if train_seconds > 0 else (
            n_train * epochs_done / compile_seconds if compile_seconds > 0 else 0.0
        ),
        resumed_from=resumed_from,
        catalogue=catalogue,
    )


@dataclasses.dataclass
class EnsembleResult:
    """Members' final parameters (one pytree per seed) and the ensemble's training throughput."""

    model: nn.Module
    params: list
    seeds: tuple[int, ...]
    train_seconds: float
    compile_seconds: float
    users_per_second: float


def fit_ensemble(
    model_config: ModelConfig,
    train: TrainConfig,
    split: Split,
    seeds: tuple[int, ...],
    *,
    progress: bool = True,
) -> EnsembleResult:
    """Trains one model per seed in a single program: the update is vmapped over stacked states.

    Member m draws exactly the keys `fit` draws with `seed=seeds[m]` (init, per-update noise, per-epoch shuffle), so
    its parameters equal training it alone, up to float reassociation in the batched matmuls. No validation,
    checkpoints or side features here: evaluate the returned members with `evaluate.evaluate`.
    """
    model = build_model(model_config, split.n_items)
    optimizer = make_optimizer(train)
    n_train = split.train.shape[0]
    batch_size = min(train.batch_size, n_train)
    steps_per_epoch = math.ceil(n_train / batch_size)
    train = dataclasses.replace(train, input_path=resolve_input_path(train, split.train))
    update = make_update(
        model, train, optimizer, max_nnz=max_batch_nnz(split.train, batch_size),
        anneal_steps=total_anneal_steps(train, steps_per_epoch),
    )
    member_keys = [run_keys(seed) for seed in seeds]
    states = [create_state(model, optimizer, 0, key=keys.init) for keys in member_keys]
    states = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    train_keys = jnp.stack([keys.train for keys in member_keys])
    shuffle_keys = jnp.stack([keys.shuffle for keys in member_keys])
    matrix = to_device(split.train)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def ensemble_chunk(states, member_orders, train_keys, matrix):
        # member_orders: [n_members, n_steps, batch] -> scan over steps, vmap over members.
        members_update = jax.vmap(lambda s, rows, key: update(s, rows, key, matrix, None))
        return jax.lax.scan(
            lambda s, rows: members_update(s, rows, train_keys), states, jnp.swapaxes(member_orders, 0, 1)
        )

    orders_for = jax.jit(
        jax.vmap(lambda key, epoch: epoch_order(jax.random.fold_in(key, epoch), n_train, batch_size),
                 in_axes=(0, None))
    )
    train_seconds = compile_seconds = 0.0
    for epoch in tqdm(range(1, train.epochs + 1), desc=f"ensemble x{len(seeds)}", disable=not progress):
        start = time.perf_counter()
        orders = orders_for(shuffle_keys, epoch)
        for chunk_start in range(0, steps_per_epoch, train.steps_per_dispatch):
            states, _ = ensemble_chunk(states, orders[:, chunk_start : chunk_start + train.steps_per_dispatch],
                                       train_keys, matrix)
        jax.block_until_ready(states)
        seconds = time.perf_counter() - start
        if epoch == 1:
            compile_seconds = seconds
        else:
            train_seconds += seconds
    timed_epochs = train.epochs - 1
    users = n_train * len(seeds) * (timed_epochs if timed_epochs else 1)
    params = [jax.tree.map(lambda leaf: leaf[m], states.params) for m in range(len(seeds))]
    return EnsembleResult(
        model=model,
        params=params,
        seeds=tuple(seeds),
        train_seconds=train_seconds,
        compile_seconds=compile_seconds,
        users_per_second=users / (train_seconds if timed_epochs else compile_seconds),
    )
