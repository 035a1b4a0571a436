"""One experiment from settings to `results.json`: load the data, split it (or reuse the saved split), train or fit
the chosen model, evaluate it and the popularity yardstick on validation and test users, and write the results.

The CLI only parses flags into `RunSettings` and calls `run` / `evaluate_workdir`; scripts can do the same.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hvae_jax import input_paths, parallel
from hvae_jax.checkpoint import Checkpoints, abstract_like
from hvae_jax.configs import EASEConfig, TrainConfig, is_neural, model_config_from_dict, model_config_to_dict
from hvae_jax.data import sources
from hvae_jax.data import splits as splits_lib
from hvae_jax.data.batches import host_dense_rows
from hvae_jax.data.features import read_user_features
from hvae_jax.data.interactions import Interactions
from hvae_jax.data.readers import read_interactions
from hvae_jax.data.splits import Split
from hvae_jax.data.synthetic import synthetic_interactions
from hvae_jax.evaluate import DEFAULT_KS, active_units, evaluate, make_eval_step, posterior_means, side_rows
from hvae_jax.models import baselines
from hvae_jax.models.hvae import init_params, kl_estimators
from hvae_jax.objectives import importance_weighted_bound
from hvae_jax.train import fit

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
    user_features: str | None = None
    split_seed: int = 98765
    workdir: str = "runs/default"
    ks: tuple[int, ...] = DEFAULT_KS
    iw_samples: int = 0
    devices: int = 1
    distributed: bool = False
    item_shards: int = 0
    logits_budget_mb: float = 64.0


def catalogue_options(settings: RunSettings) -> dict:
    """`fit`'s item-sharding arguments for these settings (empty when item_shards is 0)."""
    if settings.item_shards == 0:
        return {}
    mesh = parallel.item_mesh(None if settings.item_shards < 0 else settings.item_shards)
    return {"catalogue_mesh": mesh, "logits_budget_bytes": int(settings.logits_budget_mb * 2**20)}


def _read(path: str, settings: RunSettings) -> Interactions:
    return read_interactions(path, settings.format, min_rating=settings.min_rating)


def resolve_data(settings: RunSettings) -> tuple[str, Callable[[], Interactions], dict]:
    """(dataset label, loader, extra paths such as titles and user features) for the settings' data."""
    if settings.protocol == "given":
        return pathlib.Path(settings.train_file).parent.name or "given", None, {}
    if settings.data is None or settings.data == "synthetic":
        return "synthetic", synthetic_interactions, {}
    if settings.data in sources.DATASETS:
        try:
            paths = sources.dataset_paths(settings.data)
        except sources.NotFetchedError:
            sources.fetch(settings.data)
            paths = sources.dataset_paths(settings.data)
        min_rating = settings.min_rating if settings.min_rating is not None else paths.get("default_min_rating")
        loader = lambda: read_interactions(paths["interactions"], paths["format"], min_rating=min_rating)  # noqa: E731
        return settings.data, loader, {"titles": paths.get("titles"), "user_features": paths.get("user_features")}
    path = pathlib.Path(settings.data)
    if not path.exists():
        raise FileNotFoundError(
            f"--data {settings.data!r} is neither a registered data set ({', '.join(sources.DATASETS)}) nor an "
            "existing path"
        )
    return path.name if path.is_dir() else path.stem, lambda: _read(str(path), settings), {}


def prepare_split(
    settings: RunSettings, log: Callable[[str], None] = print, *, shared_files: bool = True
) -> tuple[Split, str]:
    """The split for `settings`, reused from `workdir` when it was made with the same settings.

    `shared_files=False` (the other processes of a multi-host run) makes the split without reading or writing the
    saved copy, which the first process owns; the split is a deterministic function of the settings."""
    key = splits_lib.fingerprint(
        data=settings.data, format=settings.format, min_rating=settings.min_rating, protocol=settings.protocol,
        heldout_users=settings.heldout_users, train=settings.train_file, valid=settings.valid_file,
        test=settings.test_file, seed=settings.split_seed,
    )
    directory = pathlib.Path(settings.workdir)
    label, loader, _ = resolve_data(settings)
    split = splits_lib.load_split(directory, key) if shared_files else None
    if split is not None:
        log(f"reusing the split saved in {directory / 'split.npz'}")
        return split, label
    if settings.protocol == "given":
        if not settings.train_file or not settings.test_file:
            raise ValueError("--protocol given needs --train and --test files (and optionally --valid)")
        split = splits_lib.given_split(
            _read(settings.train_file, settings),
            _read(settings.test_file, settings),
            _read(settings.valid_file, settings) if settings.valid_file else None,
        )
    elif settings.protocol == "strong":
        interactions = loader()
        n_heldout = settings.heldout_users or min(10_000, max(1, interactions.n_users // 10))
        split = splits_lib.strong_generalization(interactions, n_heldout_users=n_heldout, seed=settings.split_seed)
    else:
        raise ValueError(f"unknown protocol {settings.protocol!r}; expected 'strong' or 'given'")
    for note in split.notes:
        log(f"note: {note}")
    if shared_files:
        splits_lib.save_split(split, directory, key)
    return split, label


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


def _latent_diagnostics(model, params, split: Split, side) -> dict:
    eval_set = split.valid if split.valid is not None else split.test
    side_rows = None if side is None else side.get("valid" if split.valid is not None else "test")
    level_means = posterior_means(model, params, eval_set, side_rows)
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
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Trains / fits the model, evaluates it and popularity, writes `workdir/results.json` and returns it."""
    workdir = pathlib.Path(settings.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    primary = True
    if settings.distributed:
        # Before anything touches a JAX backend. Every process runs the same program; only the first writes the
        # workdir's files (orbax coordinates the checkpoints itself).
        parallel.initialize_distributed()
        primary = jax.process_index() == 0
    split, label = prepare_split(settings, log, shared_files=primary)
    side = load_side_features(settings, split)
    stats = split.statistics()
    log(
        f"{label}: {stats['train']['users']} training users, {stats['n_items']} items, "
        f"{stats['train']['interactions']} training interactions"
    )
    if primary:
        (workdir / "config.json").write_text(json.dumps(run_config(settings, model_config, train_config), indent=2))
    results: dict = {
        "model": model_config.label,
        "dataset": label,
        "protocol": split.protocol,
        "n_users": int(split.train.shape[0] + (split.valid.n_users if split.valid else 0) + split.test.n_users),
        "n_items": int(split.n_items),
        "split": stats,
    }
    start = time.perf_counter()
    if is_neural(model_config):
        results.update(_train_neural(settings, model_config, train_config, split, side, log=log, progress=progress))
    elif model_config.kind == "ease":
        evaluated, l2 = ease_results(split, model_config.lambdas, log=log)
        results.update(evaluated, ease_lambda=l2, epochs=0)
    elif model_config.kind == "popularity":
        results.update(popularity_results(split), epochs=0)
    if not is_neural(model_config):
        seconds = time.perf_counter() - start
        results.update(train_seconds=seconds, compile_seconds=0.0,
                       train_users_per_second=split.train.shape[0] / seconds if seconds > 0 else 0.0)
    if model_config.kind != "popularity":
        results["baselines"] = {"popularity": popularity_results(split)}
    if primary:
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def run_config(settings: RunSettings, model_config, train_config: TrainConfig) -> dict:
    """config.json's content: the data settings, the model (with its kind) and the training config."""
    return {
        "settings": dataclasses.asdict(settings),
        "model": model_config_to_dict(model_config),
        "train": dataclasses.asdict(train_config),
    }


def _train_neural(settings: RunSettings, model_config, train_config: TrainConfig, split: Split, side, *, log,
                  progress: bool) -> dict:
    """`fit` on the split, then the best parameters' validation and test metrics and the latent diagnostics."""
    mesh = None
    # A multi-host run trains over every process's devices; one device would leave each process on its own.
    n_devices = 0 if settings.distributed and settings.devices == 1 else settings.devices
    if n_devices != 1:
        mesh = parallel.data_parallel_mesh(None if n_devices == 0 else n_devices)
        log(f"data-parallel over {mesh.devices.size} devices")
    fitted = fit(model_config, train_config, split, settings.workdir, side_features=side, ks=settings.ks,
                 progress=progress, mesh=mesh, log=log, **catalogue_options(settings))
    results: dict = {"input_path": fitted.path.name}
    if fitted.catalogue is not None:
        # The model is built at the padded size; re-evaluation and recommendations rebuild it from this.
        layout = fitted.catalogue.layout
        results["catalogue_layout"] = dict(layout._asdict(), n_padded=layout.n_padded)
    results.update(_evaluate_both(fitted.path.eval_step(settings.ks), fitted.best_params, split, side))
    results.update(
        epochs=fitted.epochs_run,
        # None when nothing was validated: the reported parameters are then the last epoch's.
        best_epoch=fitted.best_epoch,
        selected_on="validation" if fitted.best_epoch is not None else "last epoch (no validation users)",
        stopped_early=fitted.stopped_early,
        train_seconds=fitted.train_seconds + fitted.compile_seconds,
        compile_seconds=fitted.compile_seconds,
        train_users_per_second=fitted.users_per_second,
    )
    if model_config.kind == "vae" and fitted.catalogue is not None:
        log("item-sharded run: latent diagnostics and the importance-weighted bound need dense rows; skipped")
    elif model_config.kind == "vae":
        last = fitted.history[-1] if fitted.history else {}
        results["kl_per_level"] = last.get("kl", [])
        results["kl_estimator_per_level"] = list(kl_estimators(model_config))
        results.update(_latent_diagnostics(fitted.model, fitted.best_params, split, side))
        if settings.iw_samples:
            results["importance_weighted"] = importance_weighted_loglik(
                fitted.model, fitted.best_params, split, side, settings.iw_samples, train_config.seed,
                snapshot=fitted.snapshot,
            )
    return results


def evaluate_workdir(workdir: str | pathlib.Path, *, log: Callable[[str], None] = print) -> dict:
    """Re-evaluates the best checkpoint of a finished (or interrupted) neural run and rewrites its results.json."""
    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {workdir} the --workdir of an `hvae train` run?")
    config = json.loads(config_path.read_text())
    settings = RunSettings(**{**config["settings"], "ks": tuple(config["settings"]["ks"])})
    model_config = model_config_from_dict(config["model"])
    split = splits_lib.load_split(workdir)
    if split is None:
        raise FileNotFoundError(f"no saved split in {workdir}")
    previous = json.loads((workdir / "results.json").read_text()) if (workdir / "results.json").exists() else {}
    train_config = TrainConfig(**_tuples(config["train"]))
    if not is_neural(model_config):
        return run(settings, model_config, train_config, progress=False, log=log)
    side = load_side_features(settings, split)
    options = catalogue_options(settings)
    path = input_paths.resolve(model_config, train_config, split.train, ks=settings.ks, **options)
    trained = previous.get("catalogue_layout")
    if path.name == "item_sharded" and trained is not None and trained["n_padded"] != path.catalogue.layout.n_padded:
        layout = path.catalogue.layout
        raise ValueError(
            f"{workdir} was trained with its catalogue padded to {trained['n_padded']} items over "
            f"{trained['n_shards']} devices; here it would be {layout.n_padded} over {layout.n_shards}: evaluate "
            "with as many devices (--item-shards) as training had"
        )
    model = path.model
    n_side = 0 if side is None else side["train"].shape[1]
    abstract = abstract_like(jax.eval_shape(lambda: init_params(model, n_side, key=jax.random.key(0))))
    checkpoints = Checkpoints(workdir)
    restored = checkpoints.restore("best", abstract)
    if restored is None:
        log("no best checkpoint (no validation users?): evaluating the latest parameters")
        latest = checkpoints.restore("latest", None)
        if latest is None:
            raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
        params = latest[0]["params"]
    else:
        params = restored[0]
    checkpoints.close()
    results = dict(previous)
    results.update(_evaluate_both(path.eval_step(settings.ks), path.place(params), split, side))
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _tuples(fields: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
