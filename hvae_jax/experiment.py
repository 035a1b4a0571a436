"""One experiment from settings to `results.json`: check the settings, claim the run directory (`rundir.RunDir`),
load the data, split it (or reuse the run's saved split), train or fit the chosen model, evaluate it and the
popularity yardstick on validation and test users, and write the results.

The CLI only parses flags into `RunSettings` and calls `run` / `evaluate_workdir`; scripts can do the same.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hvae_jax import parallel
from hvae_jax.checkpoint import Checkpoints, abstract_like
from hvae_jax.configs import (CHECKPOINT_UPDATES, EASEConfig, TrainConfig, is_neural, model_config_from_dict,
                              model_config_to_dict)
from hvae_jax.data import sources
from hvae_jax.data import splits as splits_lib
from hvae_jax.data.batches import host_dense_rows
from hvae_jax.data.features import read_user_features
from hvae_jax.data.interactions import Interactions
from hvae_jax.data.readers import read_interactions
from hvae_jax.data.splits import Split
from hvae_jax.data.synthetic import synthetic_interactions
from hvae_jax.evaluate import DEFAULT_KS, active_units, evaluate, make_eval_step, side_rows
from hvae_jax.hooks import LoopState
from hvae_jax.models import baselines
from hvae_jax.models.hvae import init_params, kl_estimators
from hvae_jax.objectives import importance_weighted_bound
from hvae_jax.rundir import RunDir, RunDirError
from hvae_jax.train import DivergenceError, FitResult, TrainSetup, check_registered, fit

EASE_LAMBDAS = EASEConfig().lambdas


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Where the data comes from and how it is split; the model and training configs travel beside it.

    Attributes:
      data: None for the built-in synthetic data set, a registered data set name (see `hvae data list`), or a path.
      format: reader format, None to detect it.
      min_rating: keep ratings strictly above it; None keeps every row (a named data set applies its default).
      protocol: "strong" or "given".
      heldout_users: validation and test users each (strong protocol); None: 10% of users, at most 10,000.
      train_file, valid_file, test_file: the given protocol's files.
      carve_validation: with the given protocol and no validation file, carve validation data out of the training
        file: "items" (a seeded 20% of the training items of a seeded 10% of the users, at most 10,000; the
        default), "users" (those users leave training and are held out as Liang et al.'s validation users) or
        "none" (no validation: the last epoch is reported, EASE takes the middle of its L2 grid).
      user_features: optional path of per-user side features.
      split_seed: seed of the strong split's permutation and held-out draws (Liang et al.: 98765).
      workdir: where everything is written.
      ks: metric cut-offs.
      iw_samples: report the importance-weighted bound with this many samples (0: not at all).
      devices: train data-parallel over this many devices; 0 means every device JAX sees (as does 1 with
        `distributed`, so that the processes train one model together).
      distributed: join a multi-host run first (`parallel.initialize_distributed`).
      item_shards: split the model's n_items-wide layers over this many devices and score items in chunks
        (`input_paths.ItemShardedPath`, for catalogues too large for dense logits); 0: off, -1: every device.
      logits_budget_mb: with item_shards, the largest [batch, chunk] float32 logits block per device, in MiB.
    """

    data: str | None = None
    format: str | None = None
    min_rating: float | None = None
    protocol: str = "strong"
    heldout_users: int | None = None
    train_file: str | None = None
    valid_file: str | None = None
    test_file: str | None = None
    carve_validation: str = "items"
    user_features: str | None = None
    split_seed: int = 98765
    workdir: str = "runs/default"
    ks: tuple[int, ...] = DEFAULT_KS
    iw_samples: int = 0
    devices: int = 1
    distributed: bool = False
    item_shards: int = 0
    logits_budget_mb: float = 64.0

    def __post_init__(self):
        # Every setting is checked here, before any data is read or any file written; each message names the flag.
        if self.protocol not in ("strong", "given"):
            raise ValueError(f"protocol (--protocol) must be 'strong' or 'given', got {self.protocol!r}")
        if self.protocol == "given" and not (self.train_file and self.test_file):
            raise ValueError("--protocol given needs --train and --test files (and optionally --valid)")
        if self.protocol == "strong" and (self.train_file or self.valid_file or self.test_file):
            raise ValueError("--train, --valid and --test are the files of --protocol given; with the strong protocol "
                             "give the data with --data")
        if self.carve_validation not in ("items", "users", "none"):
            raise ValueError(f"carve_validation (--carve-validation) must be items, users or none, got "
                             f"{self.carve_validation!r}")
        if self.heldout_users is not None and (_not_int(self.heldout_users) or self.heldout_users < 1):
            raise ValueError(f"heldout_users (--heldout-users) must be at least 1, got {self.heldout_users!r}; leave it "
                             "unset for the default (10% of the users, at most 10,000)")
        if _not_int(self.split_seed) or not 0 <= self.split_seed < 2**32:
            raise ValueError(f"split_seed (--split-seed) must be an integer in [0, 2**32), got {self.split_seed!r}")
        if self.min_rating is not None and not math.isfinite(self.min_rating):
            raise ValueError(f"min_rating (--min-rating) must be a finite number, got {self.min_rating!r}")
        if not self.workdir:
            raise ValueError("workdir (--workdir) must name a directory")
        if not self.ks or any(_not_int(k) or k < 1 for k in self.ks):
            raise ValueError(f"ks (--ks) must be positive cut-offs such as 10,20,50,100, got {self.ks!r}")
        if _not_int(self.iw_samples) or self.iw_samples < 0:
            raise ValueError(f"iw_samples (--iw-samples) must be >= 0 (0: not reported), got {self.iw_samples!r}")
        if _not_int(self.devices) or self.devices < 0:
            raise ValueError(f"devices (--devices) must be >= 0 (0: every device), got {self.devices!r}")
        if _not_int(self.item_shards) or self.item_shards < -1:
            raise ValueError(f"item_shards (--item-shards) must be >= -1 (0: off, -1: every device), got "
                             f"{self.item_shards!r}")
        if not (math.isfinite(self.logits_budget_mb) and self.logits_budget_mb > 0):
            raise ValueError(f"logits_budget_mb (--logits-budget-mb) must be a positive number, got "
                             f"{self.logits_budget_mb!r}")


def _not_int(value) -> bool:
    return isinstance(value, bool) or not isinstance(value, (int, np.integer))


def evaluation_ks(settings: RunSettings) -> tuple[int, ...]:
    """The cut-offs evaluated: the settings' `ks` and those the results table and the choice of the best epoch read
    (NDCG@100, Recall@20 and Recall@50), whatever `--ks` lists."""
    return tuple(sorted(set(settings.ks) | set(DEFAULT_KS)))


def catalogue_options(settings: RunSettings) -> dict:
    """`fit`'s item-sharding arguments for these settings (empty when item_shards is 0)."""
    if settings.item_shards == 0:
        return {}
    mesh = parallel.item_mesh(None if settings.item_shards < 0 else settings.item_shards)
    return {"catalogue_mesh": mesh, "logits_budget_bytes": int(settings.logits_budget_mb * 2**20)}


def _read(path: str, settings: RunSettings) -> Interactions:
    return read_interactions(path, settings.format, min_rating=settings.min_rating)


def data_label(settings: RunSettings) -> str:
    """The data set's name in results.json: a registered name, the file's stem or folder's name, or "synthetic"."""
    if settings.protocol == "given":
        return pathlib.Path(settings.train_file).parent.name or "given"
    if settings.data is None or settings.data == "synthetic" or settings.data in sources.DATASETS:
        return settings.data or "synthetic"
    path = pathlib.Path(settings.data)
    return path.name if path.is_dir() else path.stem


def check_inputs(settings: RunSettings) -> None:
    """Raises FileNotFoundError naming the flag when a file the settings name is missing; reads and writes nothing,
    so that a mistyped path fails before the run directory is touched."""
    named = [("--train", settings.train_file), ("--valid", settings.valid_file), ("--test", settings.test_file),
             ("--user-features", settings.user_features)]
    if settings.protocol == "strong" and settings.data not in (None, "synthetic", *sources.DATASETS):
        if not pathlib.Path(settings.data).exists():
            raise FileNotFoundError(
                f"--data {settings.data!r} is neither a registered data set ({', '.join(sources.DATASETS)}) nor an "
                "existing path; `hvae data list` shows the registered ones"
            )
    for flag, path in named:
        if path is not None and not pathlib.Path(path).exists():
            raise FileNotFoundError(f"{flag} {path}: no such file")


def resolve_data(settings: RunSettings) -> tuple[str, Callable[[], Interactions], dict]:
    """(dataset label, loader, extra paths such as titles and user features) for the settings' data; fetches a
    registered data set that is not cached yet."""
    label = data_label(settings)
    if settings.protocol == "given":
        return label, None, {}
    if settings.data is None or settings.data == "synthetic":
        return label, synthetic_interactions, {}
    if settings.data in sources.DATASETS:
        try:
            paths = sources.dataset_paths(settings.data)
        except sources.NotFetchedError:
            sources.fetch(settings.data)
            paths = sources.dataset_paths(settings.data)
        min_rating = settings.min_rating if settings.min_rating is not None else paths.get("default_min_rating")
        loader = lambda: read_interactions(paths["interactions"], paths["format"], min_rating=min_rating)  # noqa: E731
        return label, loader, {"titles": paths.get("titles"), "user_features": paths.get("user_features")}
    check_inputs(settings)
    return label, lambda: _read(settings.data, settings), {}


# Users with fewer interactions are dropped by the strong protocol (Liang et al.).
MIN_USER_COUNT = 5


def _heldout_users(settings: RunSettings, interactions: Interactions) -> int:
    """The validation (and test) user count of the strong split, with an error that says what can help."""
    label = f"--data {settings.data or 'synthetic'}"
    counts = np.bincount(interactions.users, minlength=interactions.n_users)
    kept = int(np.sum(counts >= MIN_USER_COUNT))
    if kept < 3:
        raise ValueError(
            f"{label}: {kept} of {interactions.n_users} users have at least {MIN_USER_COUNT} interactions; the strong "
            "protocol needs at least 3 of them (a validation, a test and a training user) whatever --heldout-users "
            "is: use more data, or split it yourself and pass --protocol given --train FILE --test FILE"
        )
    largest = (kept - 1) // 2
    if settings.heldout_users is not None:
        if settings.heldout_users > largest:
            raise ValueError(
                f"{label}: --heldout-users {settings.heldout_users} asks for {2 * settings.heldout_users} held-out "
                f"users, but only {kept} users have at least {MIN_USER_COUNT} interactions and some must train: "
                f"pass --heldout-users {largest} or fewer"
            )
        return settings.heldout_users
    default = min(10_000, max(1, interactions.n_users // 10))
    if default > largest:
        raise ValueError(
            f"{label}: the default --heldout-users ({default}, 10% of {interactions.n_users} users) is too many: "
            f"only {kept} users have at least {MIN_USER_COUNT} interactions; pass --heldout-users {largest} or fewer"
        )
    return default


def prepare_split(
    settings: RunSettings, log: Callable[[str], None] = print, *, run_dir: RunDir | None = None
) -> tuple[Split, str]:
    """(split, data set label) for `settings`: the split saved in `run_dir` when there is one, else a new one, which
    is saved there. Without `run_dir` (a script, or a multi-host run's other processes) nothing is read from or
    written to a run directory; the split is a deterministic function of the settings and the data."""
    label, loader, _ = resolve_data(settings)
    split = run_dir.load_split() if run_dir is not None else None
    if split is not None:
        log(f"reusing the split saved in {run_dir.split_path}")
        return split, label
    if settings.protocol == "given":
        split = splits_lib.given_split(
            _read(settings.train_file, settings),
            _read(settings.test_file, settings),
            _read(settings.valid_file, settings) if settings.valid_file else None,
        )
        if split.valid is None and settings.carve_validation != "none":
            split = splits_lib.carve_validation(split, method=settings.carve_validation, seed=settings.split_seed)
            log(f"no --valid file: {split.notes[-1]} (--carve-validation none keeps every training item for training)")
    else:
        interactions = loader()
        n_heldout = _heldout_users(settings, interactions)
        split = splits_lib.strong_generalization(interactions, n_heldout_users=n_heldout, seed=settings.split_seed,
                                                 min_user_count=MIN_USER_COUNT)
    for note in split.notes:
        log(f"note: {note}")
    check_split(split, settings)
    if run_dir is not None:
        run_dir.save_split(split)
    return split, label


def check_split(split: Split, settings: RunSettings) -> None:
    """Raises ValueError, naming the data, when training or evaluating on `split` could not give results: no
    training users, or no validation / test user with a held-out item (checked before any training)."""
    source = (f"--train {settings.train_file}, --test {settings.test_file}" if settings.protocol == "given"
              else f"--data {settings.data or 'synthetic'}")
    if split.train.shape[0] == 0 or split.train.nnz == 0:
        raise ValueError(f"{source}: the split has no training interactions")
    parts = [("test", split.test, settings.test_file)]
    if split.valid is not None:
        parts.append(("validation", split.valid, settings.valid_file))
    for name, eval_set, path in parts:
        users_with_heldout = int(np.sum(np.diff(eval_set.heldout.indptr) > 0))
        if users_with_heldout:
            continue
        if settings.protocol == "given":
            raise ValueError(
                f"{path}: no {name} user has an item to find among the {split.n_items} items of {settings.train_file} "
                f"(users or items absent from the training file are dropped): nothing to evaluate; check that both "
                "files use the same user and item ids"
            )
        raise ValueError(f"{source}: no {name} user has a held-out item (every one has fewer than 5 interactions "
                         "among the training items): nothing to evaluate; use more data")


def load_side_features(settings: RunSettings, split: Split) -> dict[str, np.ndarray] | None:
    """Side features aligned with the train / valid / test users, or None without `--user-features`.

    Read once for all users together, so standardised columns use one mean and spread across the parts.
    """
    if not settings.user_features:
        return None
    parts = {"train": split.train_user_ids, "test": split.test.user_ids}
    if split.valid is not None:
        parts["valid"] = split.valid.user_ids
    every_user = np.concatenate(list(parts.values()))
    values = np.asarray(read_user_features(settings.user_features, every_user).values, np.float32)
    offsets = np.cumsum([0] + [len(ids) for ids in parts.values()])
    return {name: values[start:stop] for name, start, stop in zip(parts, offsets[:-1], offsets[1:])}


def _evaluate_both(eval_step, state, split: Split, side) -> dict:
    side = side or {}
    results = {"test": evaluate(eval_step, state, split.test, side_features=side.get("test"))}
    if split.valid is not None:
        results["valid"] = evaluate(eval_step, state, split.valid, side_features=side.get("valid"))
    return results


def popularity_results(split: Split) -> dict:
    """Popularity's validation and test metrics: the yardstick every table shows."""
    popularity = jnp.asarray(baselines.fit_popularity(split.train))
    step = make_eval_step(lambda pop, fold_in, side: baselines.popularity_scores(pop, fold_in), DEFAULT_KS)
    return _evaluate_both(step, popularity, split, None)


def ease_results(split: Split, lambdas=EASE_LAMBDAS, log: Callable[[str], None] = print) -> tuple[dict, float]:
    """EASE with its L2 weight chosen on validation NDCG@100 (test metrics of the chosen weight only)."""
    step = make_eval_step(lambda weights, fold_in, side: baselines.ease_scores(weights, fold_in), DEFAULT_KS)
    if split.valid is None:
        lambdas = (lambdas[len(lambdas) // 2],)
        log(f"no validation users: EASE uses lambda {lambdas[0]} without selection")
    best = (-1.0, None, None)
    for l2 in lambdas:
        weights = jnp.asarray(baselines.fit_ease(split.train, l2))
        if split.valid is None:
            best = (0.0, l2, weights)
            break
        score = evaluate(step, weights, split.valid)["ndcg@100"]
        log(f"EASE lambda {l2:g}: validation ndcg@100 {score:.4f}")
        if score > best[0]:
            best = (score, l2, weights)
    _, l2, weights = best
    return _evaluate_both(step, weights, split, None), l2


def _latent_diagnostics(path, params, split: Split, side) -> dict:
    """Active units per level of the validation users (else the test users), read as the validation hook reads
    them (the path's posterior-means step, compiled once)."""
    eval_set = split.valid if split.valid is not None else split.test
    eval_side = None if side is None else side.get("valid" if split.valid is not None else "test")
    level_means = path.posterior_means(params, eval_set, eval_side)
    return {"active_units_per_level": [active_units(m) for m in level_means]}


def importance_weighted_loglik(model, params, split: Split, side, n_samples: int, seed: int, snapshot=None) -> dict:
    """Mean importance-weighted bound and ELBO of the test users' full histories (fold-in + held-out)."""
    full = (split.test.fold_in + split.test.heldout).tocsr()
    test_side = None if side is None else side.get("test")

    @jax.jit
    def bounds(x, side, key):
        keys = jax.random.split(key, x.shape[0])
        return jax.vmap(
            lambda x_u, s_u, k: importance_weighted_bound(model, params, x_u, s_u, n_samples, key=k,
                                                          snapshot=snapshot),
            in_axes=(0, None if side is None else 0, 0),
        )(x, side, keys)

    iw_total, elbo_total, n = 0.0, 0.0, 0
    key = jax.random.key(seed)
    for start in range(0, full.shape[0], 500):
        x, real = host_dense_rows(full, start, 500)
        iw, elbo = bounds(x, side_rows(test_side, start, 500), jax.random.fold_in(key, start))
        iw_total += float(np.sum(np.asarray(iw)[real]))
        elbo_total += float(np.sum(np.asarray(elbo)[real]))
        n += int(real.sum())
    return {"samples": n_samples, "iw_bound": iw_total / n, "elbo": elbo_total / n, "users": n}


def run(
    settings: RunSettings,
    model_config,
    train_config: TrainConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Trains / fits the model in the run directory `settings.workdir`, evaluates it and popularity, writes
    results.json there and returns it.

    The settings are checked before anything is read (`RunSettings`, `check_registered`, `check_inputs`), and the directory is claimed
    for this run before anything is written (`RunDir.open_for_training`): a run with the same settings resumes (a
    larger `epochs` continues it), another run there is refused naming each setting that differs, unless `overwrite`
    removes that run's files first. In a multi-host run (`settings.distributed`) every process trains and checks the
    directory; only the first writes to it (orbax coordinates the checkpoints).

    Raises:
      RunDirError: the directory holds another run, or files this hvae_jax cannot vouch for (see `rundir`).
      DivergenceError: the loss stopped being finite; the checkpoints of the finished epochs are kept.
      ValueError, FileNotFoundError: settings, data or split that cannot give a result (the message names them).
    """
    primary = True
    if settings.distributed:
        # Before anything touches a JAX backend.
        parallel.initialize_distributed()
        primary = jax.process_index() == 0
    check_registered(model_config, train_config)
    check_inputs(settings)
    configuration = run_config(settings, model_config, train_config)
    with RunDir.open_for_training(settings.workdir, **configuration, overwrite=overwrite, writer=primary) as run_dir:
        for note in run_dir.notes:
            log(note)
        split, label = prepare_split(settings, log, run_dir=run_dir if primary else None)
        side = load_side_features(settings, split)
        stats = split.statistics()
        log(
            f"{label}: {stats['train']['users']} training users, {stats['n_items']} items, "
            f"{stats['train']['interactions']} training interactions"
        )
        results = _results_header(model_config, label, split)
        if is_neural(model_config):
            try:
                fitted = _fit(settings, model_config, train_config, split, side, run_dir, log=log, progress=progress)
            except DivergenceError as error:
                raise DivergenceError(f"{error}. {_checkpoint_left(run_dir)}; to train with other settings, pass "
                                      "--overwrite or a new --workdir") from None
            results.update(_neural_results(settings, model_config, train_config, split, side, fitted, log=log))
        else:
            results.update(_baseline_results(model_config, split, log))
        if primary:
            run_dir.write_results(results)
    return results


def _checkpoint_left(run_dir: RunDir) -> str:
    """What a run that stopped on an error left to evaluate or resume."""
    checkpoints = Checkpoints(run_dir, create=False)
    try:
        epoch = checkpoints.latest_epoch("latest")
    finally:
        checkpoints.close()
    if epoch is None:
        return (f"{run_dir.path} holds no checkpoint yet (it writes one every --checkpoint-every epochs, by default "
                f"every {CHECKPOINT_UPDATES} updates or more)")
    return f"{run_dir.path} keeps the checkpoint of epoch {epoch}: `hvae evaluate --workdir {run_dir.path}` reports it"


def run_config(settings: RunSettings, model_config, train_config: TrainConfig) -> dict:
    """config.json's content: the data settings, the model (with its kind) and the training config."""
    return {
        "settings": dataclasses.asdict(settings),
        "model": model_config_to_dict(model_config),
        "train": dataclasses.asdict(train_config),
    }


def stored_configuration(run_dir: RunDir) -> tuple[RunSettings, object, TrainConfig]:
    """(settings, model config, training config) of the run in `run_dir`, from its config.json.

    Raises:
      RunDirError: config.json holds settings this hvae_jax cannot read (the message names the file).
    """
    try:
        settings = dict(run_dir.settings)
        settings["ks"] = tuple(settings.get("ks", DEFAULT_KS))
        if settings.get("heldout_users") == 0:
            settings["heldout_users"] = None  # what an older hvae_jax made of 0
        return (RunSettings(**settings), model_config_from_dict(run_dir.model),
                TrainConfig(**{key: _tuples(value) for key, value in run_dir.train.items()}))
    except (TypeError, ValueError) as error:
        raise RunDirError(f"{run_dir.config_path} holds settings this hvae_jax cannot use ({error}): use the hvae_jax "
                          "that trained the run") from None


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _results_header(model_config, label: str, split: Split) -> dict:
    return {
        "model": model_config.label,
        "dataset": label,
        "protocol": split.protocol,
        "n_users": int(split.train.shape[0] + (split.valid.n_users if split.valid else 0) + split.test.n_users),
        "n_items": int(split.n_items),
        "split": split.statistics(),
    }


def _baseline_results(model_config, split: Split, log) -> dict:
    """EASE's or popularity's metrics and fitting time, with popularity's beside EASE's."""
    start = time.perf_counter()
    if model_config.kind == "ease":
        evaluated, l2 = ease_results(split, model_config.lambdas, log=log)
        results = dict(evaluated, ease_lambda=l2, epochs=0)
    else:
        results = dict(popularity_results(split), epochs=0)
    seconds = time.perf_counter() - start
    results.update(train_seconds=seconds, compile_seconds=0.0,
                   train_users_per_second=split.train.shape[0] / seconds if seconds > 0 else 0.0)
    if model_config.kind != "popularity":
        results["baselines"] = {"popularity": popularity_results(split)}
    return results


def _fit(settings: RunSettings, model_config, train_config: TrainConfig, split: Split, side, run_dir: RunDir, *, log,
         progress: bool) -> FitResult:
    mesh = None
    # A multi-host run trains over every process's devices; one device would leave each process on its own.
    n_devices = 0 if settings.distributed and settings.devices == 1 else settings.devices
    if n_devices != 1:
        mesh = parallel.data_parallel_mesh(None if n_devices == 0 else n_devices)
        log(f"data-parallel over {mesh.devices.size} devices")
    return fit(model_config, train_config, split, run_dir, side_features=side, ks=evaluation_ks(settings),
               progress=progress, mesh=mesh, log=log, **catalogue_options(settings))


def _neural_results(settings: RunSettings, model_config, train_config: TrainConfig, split: Split, side,
                    fitted: FitResult, *, log) -> dict:
    """The best parameters' validation and test metrics, the run's epochs and timing, the latent diagnostics and
    the importance-weighted bound, and popularity's metrics beside them."""
    results: dict = {"input_path": fitted.path.name, "eval_input_path": fitted.path.eval_name}
    if fitted.catalogue is not None:
        # The model is built at the padded size; re-evaluation and recommendations rebuild it from this.
        layout = fitted.catalogue.layout
        results["catalogue_layout"] = dict(layout._asdict(), n_padded=layout.n_padded)
    results.update(_evaluate_both(fitted.path.eval_step(evaluation_ks(settings)), fitted.best_params, split, side))
    results.update(
        epochs=fitted.epochs_run,
        # The epoch budget: --epochs, or the epochs scaled to the data where it was `auto` (train.epochs_for).
        epochs_planned=fitted.epochs_planned,
        # None when nothing was validated: the reported parameters are then the last epoch's.
        best_epoch=fitted.best_epoch,
        selected_on="validation" if fitted.best_epoch is not None else "last epoch (no validation users)",
        stopped_early=fitted.stopped_early,
        # Stopped before its last epoch other than by early stopping (results of `hvae evaluate` on such a run).
        interrupted=fitted.epochs_run < fitted.epochs_planned and not fitted.stopped_early,
        train_seconds=fitted.train_seconds + fitted.compile_seconds,
        compile_seconds=fitted.compile_seconds,
        train_users_per_second=fitted.users_per_second,
        # A resumed run's timings above are this session's; these count every session's epochs.
        resumed_from_epoch=fitted.resumed_from,
        train_seconds_all_sessions=sum(row.get("train_seconds", 0.0) for row in fitted.history),
    )
    if model_config.kind == "vae" and fitted.catalogue is not None:
        log("item-sharded run: latent diagnostics and the importance-weighted bound need dense rows; skipped")
    elif model_config.kind == "vae":
        last = fitted.history[-1] if fitted.history else {}
        results["kl_per_level"] = last.get("kl", [])
        results["kl_estimator_per_level"] = list(kl_estimators(model_config))
        results.update(_latent_diagnostics(fitted.path, fitted.best_params, split, side))
        if settings.iw_samples:
            results["importance_weighted"] = importance_weighted_loglik(
                fitted.model, fitted.best_params, split, side, settings.iw_samples, train_config.seed,
                snapshot=fitted.snapshot,
            )
    results["baselines"] = {"popularity": popularity_results(split)}
    return results


# What `hvae evaluate` keeps from the results.json of training: how long training took, which it cannot measure.
TIMING_KEYS = ("train_seconds", "compile_seconds", "train_users_per_second")


def evaluate_workdir(workdir: str | pathlib.Path, *, log: Callable[[str], None] = print) -> dict:
    """Evaluates the run in `workdir` again from what it saved and rewrites its results.json, as complete as the
    one training writes, whether the run finished or was interrupted.

    A neural run is evaluated from its best checkpoint (else the latest training state), with its epochs, best epoch
    and KL from the latest checkpoint's record; EASE and popularity are refitted from the saved split (both fits are
    deterministic). The run is read, not claimed for training (`RunDir.open_for_reading`): only results.json is
    written. The timing of training comes from the previous results.json; for an interrupted run, from the metric
    rows in the checkpoint (compilation included, `compile_seconds` None).

    Raises:
      FileNotFoundError: no run, split or checkpoint there (the message says which).
      RunDirError: config.json, split.json or split.npz is damaged or from an hvae_jax that cannot read it.
    """
    run_dir = RunDir.open_for_reading(workdir)
    for note in run_dir.notes:
        log(note)
    settings, model_config, train_config = stored_configuration(run_dir)
    split = run_dir.load_split(required=True)
    try:
        previous = run_dir.read_results() or {}
    except RunDirError as error:
        log(f"{error}; writing it again")
        previous = {}
    results = _results_header(model_config, data_label(settings), split)
    if is_neural(model_config):
        side = load_side_features(settings, split)
        fitted = _restore_fit(run_dir, settings, model_config, train_config, split, side, previous, log=log)
        results.update(_neural_results(settings, model_config, train_config, split, side, fitted, log=log))
        if all(key in previous for key in TIMING_KEYS):
            results.update({key: previous[key] for key in TIMING_KEYS})
        else:
            results["compile_seconds"] = None
    else:
        results.update(_baseline_results(model_config, split, log))
    run_dir.write_results(results)
    return results


def _restore_fit(run_dir: RunDir, settings: RunSettings, model_config, train_config: TrainConfig, split: Split, side,
                 previous: dict, *, log) -> FitResult:
    """What `fit` returned, or would have at the run's last checkpoint, restored without training or writing.

    The latest checkpoint is read as saved (its record holds the epochs run and their metric rows), so that a run
    whose optimizer state predates this hvae_jax still evaluates; only a run without a best checkpoint (no validation
    users) restores the whole training state, for its evaluation parameters (the running average, where used)."""
    setup = TrainSetup.build(model_config, train_config, split.train, ks=evaluation_ks(settings),
                             **catalogue_options(settings))
    trained = previous.get("catalogue_layout")
    if setup.path.name == "item_sharded" and trained is not None:
        layout = setup.path.catalogue.layout
        if trained["n_padded"] != layout.n_padded:
            raise ValueError(
                f"{run_dir.path} was trained with its catalogue padded to {trained['n_padded']} items over "
                f"{trained['n_shards']} devices; here it would be {layout.n_padded} over {layout.n_shards}: evaluate "
                "with as many devices (--item-shards) as training had"
            )
    n_side = 0 if side is None else side["train"].shape[1]
    params_shape = jax.eval_shape(lambda: init_params(setup.model, n_side, key=jax.random.key(0)))
    checkpoints = Checkpoints(run_dir, create=False)
    try:
        latest = checkpoints.restore("latest", None)
        best = checkpoints.restore("best", abstract_like(params_shape))
        if latest is None and best is None:
            raise FileNotFoundError(f"no checkpoint in {run_dir.checkpoints_dir}: the run stopped before its first "
                                    f"checkpoint (written every {CHECKPOINT_UPDATES} updates or more, or every "
                                    "--checkpoint-every epochs); run the same `hvae train` command to train it")
        if best is None:
            log("no best checkpoint (no validation users?): evaluating the latest parameters")
            state = setup.init_state(n_side)
            state = checkpoints.restore("latest", abstract_like(state))[0]
            best_params = setup.evaluation_params(state)
        else:
            best_params = setup.path.place(best[0])
    except (ValueError, KeyError, TypeError) as error:
        raise RunDirError(f"the checkpoints in {run_dir.checkpoints_dir} do not fit the model that "
                          f"{run_dir.config_path} describes ({type(error).__name__}: {error})") from error
    finally:
        checkpoints.close()
    loop = LoopState.from_record(latest[1]) if latest is not None else LoopState()
    if best is not None:
        loop.best_epoch, loop.best_validation = best[1].get("epoch"), best[1].get("validation")
        loop.epoch = max(loop.epoch, loop.best_epoch or 0)  # saved `latest` may lag (checkpoint_every > 1)
    snapshot = (latest[0].get("snapshot") if latest is not None and isinstance(latest[0], dict) else None)
    seconds = sum(row.get("train_seconds", 0.0) for row in loop.history)
    return FitResult(
        model=setup.model, best_params=best_params, final_params=None, history=loop.history,
        best_epoch=loop.best_epoch, best_validation=loop.best_validation, epochs_run=loop.epoch,
        train_seconds=seconds, compile_seconds=0.0,
        users_per_second=setup.n_train * len(loop.history) / seconds if seconds > 0 else 0.0,
        resumed_from=loop.epoch, path=setup.path, stopped_early=loop.stopped_early,
        epochs_planned=setup.train.epochs,
        snapshot=None if snapshot is None else setup.path.place(snapshot),
    )
