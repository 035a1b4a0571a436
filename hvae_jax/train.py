"""Training: a set-up built once (model, input path, optimizer, schedule, keys, jitted updates), one jitted and
donated call per chunk of updates as a `lax.scan` over batches built on the device, and a short loop whose
validation, best-parameter keeping, early stopping, logging, checkpoints and progress are hooks (`hooks.py`).

Keys: `key(seed)` splits once into init / train / shuffle keys; evaluation draws from its own stream. Update `s`
uses `fold_in(train_key, s)` inside the jit and epoch `e` shuffles with `fold_in(shuffle_key, e)`, so a resumed run
draws exactly the numbers an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import signal
import threading
import time
from typing import Any, Callable, NamedTuple

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from hvae_jax import hooks, input_paths, parallel
from hvae_jax.checkpoint import Checkpoints, abstract_like
from hvae_jax.configs import CHECKPOINT_UPDATES, TrainConfig
from hvae_jax.data.batches import epoch_order, to_device
from hvae_jax.data.splits import Split
from hvae_jax.evaluate import DEFAULT_KS
from hvae_jax.hyperparameters import Hyperparameters, changed, member_configs, stacked
from hvae_jax.logs import MetricsLog
from hvae_jax.models.hvae import init_params, parameter_group
from hvae_jax.models.likelihoods import LIKELIHOODS
from hvae_jax.models.priors import PRIORS
from hvae_jax.objectives import needs_snapshot
from hvae_jax.optimizers import GroupedOptimizer
from hvae_jax.rundir import RunPaths
from hvae_jax.schedules import SCHEDULES, Phase, Schedule, build_schedule

EVAL_STREAM = 0xE7A1


class TrainState(NamedTuple):
    """Everything an update changes: the update counter, parameters, optimizer state (one per parameter group), and
    the encoder snapshot that priors such as RecVAE's look at (None when the prior does not)."""

    step: jax.Array
    params: Any
    opt_state: Any
    snapshot: Any = None


class RunKeys(NamedTuple):
    init: jax.Array
    train: jax.Array
    shuffle: jax.Array
    eval: jax.Array


def run_keys(seed: int) -> RunKeys:
    """The run's independent key streams: init / train / shuffle split once from the seed, evaluation folded in."""
    root = jax.random.key(seed)
    return RunKeys(*jax.random.split(root, 3), jax.random.fold_in(root, EVAL_STREAM))


def check_registered(model_config, train) -> None:
    """Raises ValueError naming a prior, likelihood or schedule that no registry knows (the configs hold names
    only; the registries live with their implementations)."""
    checks = [("schedule", train.schedule, SCHEDULES)]
    if model_config.kind in ("vae", "dae"):
        checks.append(("likelihood", model_config.likelihood, LIKELIHOODS))
    if model_config.kind == "vae":
        checks.append(("prior", model_config.prior, PRIORS))
    for what, name, registry in checks:
        if name not in registry:
            raise ValueError(f"unknown {what} {name!r}; registered: {', '.join(registry)} (register_{what} adds one)")


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss; the message names the epoch and update."""


@dataclasses.dataclass(frozen=True, eq=False)
class TrainSetup:
    """Everything a training run needs, built once from (model config, train config, training matrix, devices).

    `fit`, `fit_ensemble` and the benchmarks share it: `init_state`, `run_epoch` (one pass, jitted chunks) and
    `make_update` (one update, un-jitted, for vmapping or inspection).
    """

    model_config: Any
    train: Any
    path: input_paths.InputPath
    optimizer: GroupedOptimizer
    schedule: Schedule
    keys: RunKeys
    n_train: int
    batch_size: int
    steps_per_epoch: int
    uses_snapshot: bool
    _chunks: dict = dataclasses.field(default_factory=dict, repr=False)  # jitted programs, built on first use

    @classmethod
    def build(
        cls,
        model_config,
        train,
        train_matrix,
        *,
        mesh: Mesh | None = None,
        catalogue_mesh: Mesh | None = None,
        logits_budget_bytes: int = input_paths.DEFAULT_LOGITS_BUDGET_BYTES,
        ks=DEFAULT_KS,
    ) -> "TrainSetup":
        check_registered(model_config, train)
        n_train = train_matrix.shape[0]
        if n_train == 0:
            raise ValueError("the training matrix has no users")
        batch_size = min(train.batch_size, n_train)
        if mesh is not None:
            parallel.check_batch_size(batch_size, mesh)
        steps_per_epoch = math.ceil(n_train / batch_size)
        # The epoch budget and the average's decay scaled to the data are resolved here, once: everything below
        # reads `setup.train.epochs` and `setup.train.average_decay`.
        train = dataclasses.replace(train, epochs=epochs_for(train, steps_per_epoch),
                                    average_decay=average_decay_for(train, steps_per_epoch))
        path = input_paths.resolve(model_config, train, train_matrix, batch_size=batch_size, mesh=mesh,
                                   catalogue_mesh=catalogue_mesh, logits_budget_bytes=logits_budget_bytes, ks=ks)
        schedule = build_schedule(train, n_levels=model_config.n_levels, steps_per_epoch=steps_per_epoch)
        optimizer = GroupedOptimizer(train, functools.partial(parameter_group, model_config))
        return cls(model_config, train, path, optimizer, schedule, run_keys(train.seed), n_train, batch_size,
                   steps_per_epoch, needs_snapshot(path.model))

    @property
    def model(self):
        return self.path.model

    def init_state(self, n_side_features: int = 0, *, key: jax.Array | None = None) -> TrainState:
        """The initial state (from the run's init key unless `key` is given), placed on the path's devices."""
        # One compiled program (built once per side-feature width, so an ensemble's members share it): run op by
        # op, the initialisers and the optimizer's zeros cost a dispatch and a first-time compilation each, twice
        # the time of compiling them together.
        if ("init", n_side_features) not in self._chunks:
            def initial_state(key):
                params = init_params(self.model, n_side_features, key=key)
                snapshot = jax.tree.map(jnp.copy, params) if self.uses_snapshot else None
                return TrainState(jnp.zeros((), jnp.int32), params, self.optimizer.init(params), snapshot)

            self._chunks["init", n_side_features] = jax.jit(initial_state)
        return self.path.place(self._chunks["init", n_side_features](self.keys.init if key is None else key))

    def evaluation_params(self, state: TrainState):
        """The parameters to validate and report: the debiased running average with `average_decay`."""
        return self.optimizer.evaluation_params(state.opt_state, state.params)

    def make_update(self, phase: Phase) -> Callable:
        """`update(state, rows, train_key, matrix, side, hyper=None) -> (state, metrics)`, un-jitted: one optimizer
        step of `phase`'s parameter groups on the training rows `rows` ([batch], -1 pads). `hyper`
        (`hyperparameters.Hyperparameters`, scalars) replaces the config's values of its non-None fields."""
        path, schedule, optimizer = self.path, self.schedule, self.optimizer

        def update(state: TrainState, rows: jax.Array, train_key, matrix, side, hyper: Hyperparameters | None = None):
            if hyper is None:
                hyper = Hyperparameters()
            key = jax.random.fold_in(train_key, state.step)
            betas = schedule.betas(state.step, hyper.beta_cap)
            kl_weights_fn = functools.partial(schedule.per_user_kl_weights, gamma=hyper.kl_weight_per_item)

            def loss(params):
                return path.loss_of_rows(params, state.snapshot, rows, matrix, side, key=key, betas=betas,
                                         kl_weights_fn=kl_weights_fn, dropout=phase.dropout,
                                         weight_decay=hyper.weight_decay)

            if phase.groups is None:
                (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
            else:
                # Differentiate the updated groups only: the frozen ones cost no backward pass.
                trainable, frozen = _partition(state.params, optimizer.label, phase.groups)
                (_, metrics), grads = jax.value_and_grad(lambda t: loss(_merge(t, frozen)), has_aux=True)(trainable)
            params, opt_state = optimizer.update(grads, state.opt_state, state.params, phase.groups,
                                                 hyper.learning_rate)
            metrics = dict(metrics, beta=betas[0] if betas.shape[0] else jnp.zeros(()))
            return TrainState(state.step + 1, params, opt_state, state.snapshot), metrics

        return update

    def update_chunk(self, phase: Phase) -> Callable:
        """`chunk(state, user_order, train_key, matrix, side) -> (state, metrics)`: `user_order` [n_steps, batch]
        scanned, one update per row, in one jit with the state donated; per-update metrics stacked."""
        if phase.name not in self._chunks:
            update = self.make_update(phase)

            @functools.partial(jax.jit, donate_argnums=(0,))
            def chunk(state, user_order, train_key, matrix, side):
                return jax.lax.scan(lambda s, rows: update(s, rows, train_key, matrix, side), state, user_order)

            self._chunks[phase.name] = chunk
        return self._chunks[phase.name]

    def run_epoch(self, state: TrainState, epoch: int, matrix, side) -> tuple[TrainState, dict[str, np.ndarray]]:
        """One pass over the training users in the order epoch `epoch` (from 1) shuffles them."""
        phase = self.schedule.phase_of(epoch)
        if self.uses_snapshot and self.schedule.takes_snapshot(epoch):
            state = state._replace(snapshot=jax.tree.map(jnp.copy, state.params))
        order = epoch_order(jax.random.fold_in(self.keys.shuffle, epoch), self.n_train, self.batch_size)
        chunk_update = self.update_chunk(phase)
        chunk_metrics = []
        for start in range(0, self.steps_per_epoch, self.train.steps_per_dispatch):
            rows = order[start : start + self.train.steps_per_dispatch]
            if self.path.mesh is not None:
                rows = jax.device_put(rows, parallel.batch_rows(self.path.mesh))
            state, metrics = chunk_update(state, rows, self.keys.train, matrix, side)
            chunk_metrics.append(metrics)
        return state, jax.tree.map(lambda *m: np.concatenate([np.asarray(a) for a in m]), *chunk_metrics)


def _partition(params, label: Callable, groups: tuple[str, ...]):
    """(the leaves of `groups`, the others), each a nested dict with the parameters' paths."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    inside = {path: leaf for path, leaf in flat.items() if label(path) in groups}
    outside = {path: leaf for path, leaf in flat.items() if label(path) not in groups}
    return flax.traverse_util.unflatten_dict(inside), flax.traverse_util.unflatten_dict(outside)


def _merge(*trees):
    merged = {}
    for tree in trees:
        merged.update(flax.traverse_util.flatten_dict(tree))
    return flax.traverse_util.unflatten_dict(merged)


def epochs_covering(updates: int, steps_per_epoch: int) -> int:
    """The whole epochs that hold at least `updates` updates: ceil(updates / steps_per_epoch)."""
    return -(-updates // max(1, steps_per_epoch))


# `TrainConfig.epochs = None` (`--epochs auto`, the default of `--model multvae` and `--model multdae`): an epoch
# budget scaled to the data. On the four catalogues of benchmarks/catalogue_study.py the runs with few updates per
# epoch (ml-1m: 10, Last.fm: 4, ml-latest-small: 1) were still improving at epoch 100 and peaked between 130 and 290
# of 300, while amazon-book (142 an epoch) peaked by epoch 30 of 100 and gained nothing from a longer, slower
# anneal. The rule gives each of them the budget that won there (README "Defaults across catalogue shapes").
AUTO_EPOCHS_UPDATES = 10_000
AUTO_EPOCHS_RANGE = (100, 300)


def epochs_for(train: TrainConfig, steps_per_epoch: int) -> int:
    """The run's epochs: `train.epochs`, or where that is None, the epochs holding `AUTO_EPOCHS_UPDATES` updates
    of `steps_per_epoch`, clipped to `AUTO_EPOCHS_RANGE` (ML-20M at batch 500, 233 updates an epoch: 100)."""
    if train.epochs is not None:
        return train.epochs
    low, high = AUTO_EPOCHS_RANGE
    return min(high, max(low, epochs_covering(AUTO_EPOCHS_UPDATES, steps_per_epoch)))


AVERAGE_EPOCHS = 4  # `average_updates` spans at most this many epochs


def average_decay_for(train: TrainConfig, steps_per_epoch: int) -> float:
    """The running average's decay: `train.average_decay` where given, else from `train.average_updates`, a horizon
    of h = min(average_updates, AVERAGE_EPOCHS x steps_per_epoch) updates: d = 1 - 1 / h (0, no average, where
    h < 2). On small data a run is still improving when it ends, and an average over a long stretch of it trails;
    bounded by epochs, the average smooths only the last few."""
    if train.average_decay or train.average_updates is None:
        return train.average_decay
    horizon = min(train.average_updates, AVERAGE_EPOCHS * steps_per_epoch)
    return 1.0 - 1.0 / horizon if horizon >= 2 else 0.0


def checkpoint_interval(checkpoint_every: int | None, steps_per_epoch: int) -> int:
    """Epochs between two `latest` checkpoints: `checkpoint_every`, or by `CHECKPOINT_UPDATES` when None."""
    if checkpoint_every is not None:
        return checkpoint_every
    return max(1, epochs_covering(CHECKPOINT_UPDATES, steps_per_epoch))


def early_stopping_patience(train: TrainConfig, steps_per_epoch: int) -> int | None:
    """Epochs without a better validation before a run stops: the longer of `early_stopping` and
    `early_stopping_updates` in whole epochs; None (never) when neither is set."""
    if train.early_stopping is None and train.early_stopping_updates is None:
        return None
    return max(train.early_stopping or 0, epochs_covering(train.early_stopping_updates or 0, steps_per_epoch))


def check_finite(metrics: dict[str, np.ndarray], epoch: int, last_step: int) -> None:
    """Raises `DivergenceError` naming the first update of the epoch whose loss is not finite."""
    losses = np.asarray(metrics["loss"])
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
        step = last_step - len(losses) + int(bad[0]) + 1
        raise DivergenceError(
            f"training diverged: the loss became {losses[bad[0]]} at update {step} (epoch {epoch}); the checkpoint of "
            "the last finished epoch is kept. Lower the learning rate (--lr) or check the input data"
        )


@dataclasses.dataclass
class FitResult:
    """What `fit` hands back.

    Attributes:
      best_epoch: the validated epoch whose parameters `best_params` are, or None when nothing was validated (then
        `best_params` are the last epoch's evaluation parameters and `epochs_run` says which epoch that was).
      path: the input path (its model, and the item-sharded catalogue layout where used).
      snapshot: the encoder snapshot of the final state (priors that need it), else None.
      epochs_planned: the run's epoch budget (`TrainConfig.epochs`, resolved for the data where it was None).
      seconds_by_phase: wall seconds of this call by phase: "train" (the update chunks, compilation included) and
        one entry per hook ("Validation", "KeepBest", "Checkpointing", ...), so a run shows where its time goes.
    """

    model: Any
    best_params: Any
    final_params: Any
    history: list[dict]
    best_epoch: int | None
    best_validation: dict | None
    epochs_run: int
    train_seconds: float
    compile_seconds: float
    users_per_second: float
    resumed_from: int | None
    path: input_paths.InputPath | None = None
    snapshot: Any = None
    stopped_early: bool = False
    epochs_planned: int | None = None
    seconds_by_phase: dict = dataclasses.field(default_factory=dict)

    @property
    def catalogue(self) -> input_paths.Catalogue | None:
        return getattr(self.path, "catalogue", None)


def fit(
    model_config,
    train,
    split: Split,
    workdir: str | pathlib.Path | RunPaths,
    *,
    side_features: dict[str, np.ndarray] | None = None,
    ks: tuple[int, ...] = DEFAULT_KS,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    mesh: Mesh | None = None,
    catalogue_mesh: Mesh | None = None,
    logits_budget_bytes: int = input_paths.DEFAULT_LOGITS_BUDGET_BYTES,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Trains a neural model on `split.train`, validating on `split.valid` after every `eval_every` epochs.

    Resumes from the run directory's `latest` checkpoint when it exists. Writes its metrics.jsonl, one JSON line per
    epoch (loss, nll, KL per level, beta, validation metrics, seconds).

    Args:
      workdir: the run directory: a path (created if missing), or the `RunDir` that `experiment.run` opened after
        checking that the directory holds this run.
      side_features: optional {"train": [n_train, F], "valid": [n_valid, F], "test": [n_test, F]} aligned with the
        split's users.
      stop_after_epochs: end this call after so many epochs (to simulate an interruption); the checkpoint lets a
        later call continue.
      mesh: train data-parallel over this mesh's devices (`parallel.data_parallel_mesh()`); None: one device.
      catalogue_mesh: split the model's n_items-wide layers over this mesh's devices (`parallel.item_mesh()`) and
        score items in chunks whose [batch, chunk] float32 logits fit `logits_budget_bytes` per device
        (`input_paths.ItemShardedPath`); the model is built at the padded catalogue size.
    """
    run_paths = RunPaths.of(workdir)
    if run_paths is not workdir:
        run_paths.path.mkdir(parents=True, exist_ok=True)
    setup = TrainSetup.build(model_config, train, split.train, mesh=mesh, catalogue_mesh=catalogue_mesh,
                             logits_budget_bytes=logits_budget_bytes, ks=ks)
    if catalogue_mesh is not None:
        log(input_paths.describe(setup.path))
    if train.epochs is None:
        log(f"epochs: {setup.train.epochs}, scaled to the data ({setup.steps_per_epoch} updates an epoch; "
            f"train.epochs_for; --epochs N sets them)")
    if not train.average_decay and train.average_updates is not None:
        log(f"parameter average: decay {setup.train.average_decay:.4g} (a horizon of min({train.average_updates}, "
            f"{AVERAGE_EPOCHS} epochs of {setup.steps_per_epoch}) updates; train.average_decay_for; --average-decay D "
            f"sets it, --average-updates none turns it off)")
    side = side_features or {}
    matrix, train_side = _training_data(split, side, mesh)
    checkpoints = Checkpoints(run_paths)
    state, loop, resumed_from = _restore(setup, checkpoints, 0 if train_side is None else train_side.shape[1],
                                         run_paths, log)
    # In a multi-host run every process trains; the first one alone writes the log.
    metrics_log = MetricsLog(run_paths, resume_epoch=resumed_from) if jax.process_index() == 0 else None
    loop_hooks = _default_hooks(setup, split, side, checkpoints, metrics_log, ks=ks, progress=progress, log=log,
                                initial_epoch=loop.epoch)
    try:
        with _InterruptAfterEpoch(log) as interrupt:
            state, clock = _run_epochs(setup, state, loop, loop_hooks, matrix, train_side, stop_after_epochs,
                                       interrupt)
    finally:
        checkpoints.wait()  # an interrupt (Ctrl-C, a divergence) keeps every checkpoint already begun
    best_params = loop.best_params if loop.best_epoch is not None and loop.best_params is not None else (
        setup.evaluation_params(state))
    return FitResult(
        model=setup.model,
        best_params=best_params,
        final_params=state.params,
        history=loop.history,
        best_epoch=loop.best_epoch,
        best_validation=loop.best_validation,
        epochs_run=loop.history[-1]["epoch"] if loop.history else loop.epoch,
        train_seconds=clock.train_seconds,
        compile_seconds=clock.compile_seconds,
        users_per_second=clock.users_per_second(setup.n_train),
        resumed_from=resumed_from,
        path=setup.path,
        snapshot=state.snapshot,
        stopped_early=loop.stopped_early,
        epochs_planned=setup.train.epochs,
        seconds_by_phase=clock.seconds_by_phase,
    )


def _training_data(split: Split, side: dict, mesh: Mesh | None):
    """(the training matrix as device CSR, the training users' side features or None), replicated over `mesh`."""
    matrix = to_device(split.train)
    train_side = None if side.get("train") is None else jnp.asarray(side["train"], jnp.float32)
    if mesh is not None:
        matrix, train_side = jax.device_put((matrix, train_side), parallel.replicated(mesh))
    return matrix, train_side


def _restore(setup: TrainSetup, checkpoints: Checkpoints, n_side: int, run_paths, log):
    """(state, loop state, epoch resumed from or None): the `latest` checkpoint and the `best` parameters when the
    run directory holds them, else a fresh state."""
    state = setup.init_state(n_side)
    restored = checkpoints.restore("latest", abstract_like(state))
    if restored is None:
        return state, hooks.LoopState(), None
    state, record = restored
    loop = hooks.LoopState.from_record(record)
    log(f"resuming from epoch {loop.epoch} (update {int(state.step)}) in {run_paths.path}")
    if loop.best_epoch is not None:
        best = checkpoints.restore("best", abstract_like(state.params))
        loop.best_params = None if best is None else best[0]
    return state, loop, loop.epoch


@dataclasses.dataclass
class _Clock:
    """Where a `fit` call's time went: the first epoch (compilation included) apart from the others."""

    train_seconds: float = 0.0
    compile_seconds: float = 0.0
    timed_epochs: int = 0
    epochs: int = 0
    seconds_by_phase: dict = dataclasses.field(default_factory=dict)

    def users_per_second(self, n_train: int) -> float:
        if self.train_seconds > 0:
            return n_train * self.timed_epochs / self.train_seconds
        # With a single epoch there is no compile-free timing; then the first epoch's time stands in.
        return n_train * self.epochs / self.compile_seconds if self.compile_seconds > 0 else 0.0


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal after finishing and checkpointing an epoch; `signum` names the signal, so the
    command can exit with 128 + its number as shells expect (130 for Ctrl-C, 143 for `kill`)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class _InterruptAfterEpoch:
    """The first Ctrl-C (SIGINT) or `kill` (SIGTERM, what schedulers send before they stop a job) lets the epoch
    under way finish, its hooks run and the `latest` checkpoint be written, then raises `Interrupted`; a second one
    acts at once (Ctrl-C raises KeyboardInterrupt, SIGTERM ends the process). So the default checkpoint interval
    (every 200 updates or more) loses no finished epoch to either. Installed only in the main thread of a
    one-process run (in a multi-host run one process stopping alone would stall the others), and for each signal
    only where its handler is Python's default: a shell starts background jobs with SIGINT ignored, and that stays
    so; `kill` still stops them cleanly."""

    DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    AGAIN = {signal.SIGINT: "Ctrl-C again to stop at once", signal.SIGTERM: "a second SIGTERM ends the process"}

    def __init__(self, log: Callable[[str], None]):
        self.log, self.signum, self._previous = log, None, {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> _InterruptAfterEpoch:
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            for signum, default in self.DEFAULTS.items():
                if signal.getsignal(signum) == default:
                    self._previous[signum] = signal.signal(signum, self._request)
        return self

    def _request(self, signum, frame) -> None:
        del frame
        if self.signum is None:
            self.signum = signum
        signal.signal(signum, self._previous[signum])  # the same signal again acts at once
        self.log(f"{signal.Signals(signum).name}: finishing this epoch and writing its checkpoint "
                 f"({self.AGAIN[signum]})")

    def __exit__(self, *exc_info) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._request:
                signal.signal(signum, previous)


def _run_epochs(setup: TrainSetup, state: TrainState, loop: hooks.LoopState, loop_hooks: list[hooks.Hook], matrix,
                train_side, stop_after_epochs: int | None,
                interrupt: _InterruptAfterEpoch | None = None) -> tuple[TrainState, _Clock]:
    """The loop: an epoch of updates, then every hook, until the last epoch, early stopping or `stop_after_epochs`;
    after a requested interrupt, the hooks close (the last epoch is checkpointed) and KeyboardInterrupt is raised."""
    clock = _Clock(seconds_by_phase={"train": 0.0, **{type(hook).__name__: 0.0 for hook in loop_hooks}})

    def timed(name: str, action: Callable[[], Any]):
        start = time.perf_counter()
        action()
        clock.seconds_by_phase[name] += time.perf_counter() - start

    start_epoch = loop.epoch + 1
    for epoch in range(start_epoch, setup.train.epochs + 1):
        if loop.should_stop or (stop_after_epochs is not None and clock.epochs >= stop_after_epochs):
            break
        epoch_start = time.perf_counter()
        state, metrics = setup.run_epoch(state, epoch, matrix, train_side)
        seconds = time.perf_counter() - epoch_start
        clock.seconds_by_phase["train"] += seconds
        check_finite(metrics, epoch, int(state.step))
        if epoch == start_epoch:
            clock.compile_seconds = seconds  # the first epoch of a call includes compilation
        else:
            clock.train_seconds += seconds
            clock.timed_epochs += 1
        loop.epoch, loop.state = epoch, state
        loop.row = hooks.epoch_row(epoch, int(state.step), metrics, seconds, setup.schedule.phase_of(epoch).name)
        loop.evaluation_params = setup.evaluation_params(state)
        for hook in loop_hooks:
            timed(type(hook).__name__, lambda: hook.after_epoch(loop))
        clock.epochs += 1
        if interrupt is not None and interrupt.requested:
            break
    for hook in loop_hooks:
        timed(type(hook).__name__, lambda: hook.close(loop))
    if interrupt is not None and interrupt.requested:
        raise Interrupted(interrupt.signum, f"{signal.Signals(interrupt.signum).name} after epoch {loop.epoch}, "
                                            "which is checkpointed")
    return state, clock


def _default_hooks(setup: TrainSetup, split: Split, side: dict, checkpoints: Checkpoints, metrics_log, *, ks,
                   progress: bool, log, initial_epoch: int) -> list[hooks.Hook]:
    """Validation, best keeping, early stopping, logging, checkpoints and progress, in that order."""
    train = setup.train
    loop_hooks: list[hooks.Hook] = []
    if split.valid is not None:
        loop_hooks += [
            hooks.Validation(
                setup.path.eval_step(ks), split.valid, every=train.eval_every, last_epoch=train.epochs,
                side=side.get("valid"), path=setup.path, with_active_units=setup.model_config.kind == "vae",
            ),
            hooks.KeepBest(),
            hooks.EarlyStopping(early_stopping_patience(train, setup.steps_per_epoch), every=train.eval_every,
                                start=train.early_stopping_from,
                                log=log),
        ]
    loop_hooks += [
        hooks.MetricsLogging(metrics_log),
        hooks.Checkpointing(checkpoints, every=checkpoint_interval(train.checkpoint_every, setup.steps_per_epoch),
                            last_epoch=train.epochs),
        hooks.Progress(total=train.epochs, initial=initial_epoch, desc=f"train {setup.model_config.label}",
                       enabled=progress),
    ]
    return loop_hooks


@dataclasses.dataclass
class EnsembleResult:
    """Per member (one per seed, or per setting and seed): final parameters, and with validation the best
    parameters, epoch and metrics and the learning curve; plus the ensemble's training throughput.

    Attributes:
      seeds: each member's seed.
      settings: each member's hyperparameters where they differ from the run's `TrainConfig` ({} for none).
      best_params: each member's evaluation parameters at its best validated epoch (its last epoch's without
        validation).
      best_epochs: each member's best validated epoch, or None without validation.
      histories: each member's rows (epoch, loss, nll, kl, valid) as `fit` logs them.
    """

    model: Any
    params: list
    seeds: tuple[int, ...]
    train_seconds: float
    compile_seconds: float
    users_per_second: float
    path: input_paths.InputPath | None = None
    best_params: list = dataclasses.field(default_factory=list)
    best_epochs: list = dataclasses.field(default_factory=list)
    best_validations: list = dataclasses.field(default_factory=list)
    histories: list = dataclasses.field(default_factory=list)
    stopped_early: bool = False
    settings: list = dataclasses.field(default_factory=list)


def fit_ensemble(
    model_config, train, split: Split, seeds: tuple[int, ...], *, settings=None, progress: bool = True,
    validate: bool = True, ks: tuple[int, ...] = DEFAULT_KS,
) -> EnsembleResult:
    """Trains one model per seed, or per (setting, seed), in a single program: the update is vmapped over stacked
    states.

    `settings`: dicts of `TrainConfig` fields among `hyperparameters.VARIABLE` (learning rate, L2 weight, KL cap,
    per-item KL weight), e.g. `[{"learning_rate": 1e-3}, {"learning_rate": 3e-3, "weight_decay": 2e-5}]`. Every
    setting trains with every seed, setting-major: members (settings[0], seeds[0]), (settings[0], seeds[1]), ...,
    (settings[1], seeds[0]), ... Other fields shape the compiled program and are refused.

    Member m draws exactly the keys `fit` draws with its seed (init, per-update noise, per-epoch shuffle) and uses
    its setting's values, so its parameters equal training it alone with that `TrainConfig`, up to float
    reassociation in the batched matmuls. With `validate` and
    validation users, every member is validated as `fit` validates (every `eval_every` epochs, the best evaluation
    parameters kept, averaging included), and the ensemble stops early once every member has gone
    `early_stopping` epochs without improving. No checkpoints or side features here.
    """
    member_trains = member_configs(train, seeds, settings)
    hyper = stacked(train, member_trains)
    setup = TrainSetup.build(model_config, train, split.train)
    train = setup.train  # the epoch budget resolved for this data
    member_keys = [run_keys(member.seed) for member in member_trains]
    states = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[setup.init_state(key=keys.init) for keys in member_keys])
    train_keys = jnp.stack([keys.train for keys in member_keys])
    shuffle_keys = jnp.stack([keys.shuffle for keys in member_keys])
    matrix = to_device(split.train)
    chunks = {phase.name: _ensemble_chunk(setup, phase) for phase in setup.schedule.phases}
    orders_for = jax.jit(jax.vmap(
        lambda key, epoch: epoch_order(jax.random.fold_in(key, epoch), setup.n_train, setup.batch_size),
        in_axes=(0, None)))
    members = [hooks.LoopState() for _ in member_trains]
    validation = None
    if validate and split.valid is not None:
        validation = hooks.Validation(setup.path.eval_step(ks), split.valid, every=train.eval_every,
                                      last_epoch=train.epochs)
    keep_best = hooks.KeepBest()
    stopping = hooks.EarlyStopping(early_stopping_patience(train, setup.steps_per_epoch), every=train.eval_every,
                                   start=train.early_stopping_from,
                                   log=lambda message: None)
    clock = _Clock()
    all_stopped = False
    for epoch in tqdm(range(1, train.epochs + 1), desc=f"ensemble x{len(members)}", disable=not progress):
        if all_stopped:
            break
        start = time.perf_counter()
        phase = setup.schedule.phase_of(epoch)
        if setup.uses_snapshot and setup.schedule.takes_snapshot(epoch):
            states = states._replace(snapshot=jax.tree.map(jnp.copy, states.params))
        orders = orders_for(shuffle_keys, epoch)
        chunk_metrics = []
        for chunk_start in range(0, setup.steps_per_epoch, train.steps_per_dispatch):
            states, metrics = chunks[phase.name](
                states, orders[:, chunk_start : chunk_start + train.steps_per_dispatch], train_keys, matrix, hyper)
            chunk_metrics.append(metrics)
        metrics = jax.tree.map(lambda *m: np.concatenate([np.asarray(a) for a in m]), *chunk_metrics)
        seconds = time.perf_counter() - start
        if epoch == 1:
            clock.compile_seconds = seconds
        else:
            clock.train_seconds += seconds
            clock.timed_epochs += 1
        clock.epochs += 1
        for m, loop in enumerate(members):
            if loop.stopped_early:
                continue  # where `fit` would have stopped: its best and its history stay as they were
            member_metrics = jax.tree.map(lambda leaf: leaf[:, m], metrics)
            check_finite(member_metrics, epoch, int(states.step[m]))
            member_state = jax.tree.map(lambda leaf: leaf[m], states)
            loop.epoch = epoch
            loop.row = hooks.epoch_row(epoch, int(member_state.step), member_metrics, seconds, phase.name)
            loop.evaluation_params = setup.evaluation_params(member_state)
            for hook in ([validation, keep_best, stopping] if validation is not None else []):
                hook.after_epoch(loop)
            loop.history.append(loop.row)
        all_stopped = validation is not None and all(loop.stopped_early for loop in members)
    params = [jax.tree.map(lambda leaf: leaf[m], states.params) for m in range(len(members))]
    return EnsembleResult(
        model=setup.model,
        params=params,
        seeds=tuple(member.seed for member in member_trains),
        train_seconds=clock.train_seconds,
        compile_seconds=clock.compile_seconds,
        users_per_second=clock.users_per_second(setup.n_train * len(members)),
        path=setup.path,
        best_params=[loop.best_params if loop.best_params is not None else loop.evaluation_params
                     for loop in members],
        best_epochs=[loop.best_epoch for loop in members],
        best_validations=[loop.best_validation for loop in members],
        histories=[loop.history for loop in members],
        stopped_early=all_stopped,
        settings=[changed(train, member) for member in member_trains],
    )


def _ensemble_chunk(setup: TrainSetup, phase: Phase):
    """The ensemble's jitted chunk: `lax.scan` over steps of the update vmapped over stacked member states."""
    update = setup.make_update(phase)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def chunk(states, member_orders, train_keys, matrix, hyper):
        # member_orders: [n_members, n_steps, batch] -> scan over steps, vmap over members (and their
        # hyperparameters: [n_members] arrays, or None where every member has the config's value).
        members_update = jax.vmap(lambda s, rows, key, h: update(s, rows, key, matrix, None, h))
        return jax.lax.scan(lambda s, rows: members_update(s, rows, train_keys, hyper), states,
                            jnp.swapaxes(member_orders, 0, 1))

    return chunk
