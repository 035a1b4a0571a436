"""The `hvae` command: parses flags (over a preset and a TOML config file) and wires the library together.

  hvae train [--data NAME_OR_PATH] [--model multvae|multvae-liang|multdae|hvae|ease|popularity] [--overwrite] [...]
  hvae evaluate --workdir DIR
  hvae data list | hvae data fetch NAME
  hvae recommend --workdir DIR --items 1,2,3 [-k 20]
  hvae plot --workdir DIR | --bench FILE

Every anticipated failure (a bad setting, a missing or malformed file, a run directory holding another run, a
diverged training) prints one `error: ...` line saying what, where and what to do, and exits with status 2; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import signal
import sys
import tomllib
from typing import Any, Callable

from hvae_jax.configs import CHECKPOINT_UPDATES, CONFIG_CLASSES, MODELS, PRESETS, TrainConfig, model_config_to_dict
from hvae_jax.data import sources
from hvae_jax.experiment import RunSettings, evaluate_workdir, run, run_config
from hvae_jax.plots import plot_cli
from hvae_jax.recommend import Recommendation, Recommender, export_folder


class UsageError(ValueError):
    """A flag or configuration file the CLI cannot use; the message names it."""


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in str(text).split(",") if part.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in str(text).split(",") if part.strip())


def _optional_int(text: str) -> int | None:
    return None if str(text).lower() in ("none", "off", "0") else int(text)


def _epochs(text: str) -> int | None:
    return None if str(text).lower() == "auto" else int(text)


_epochs.__name__ = "number of epochs (or auto)"  # argparse: "invalid number of epochs (or auto) value: 'x'"


def _bool(text: str) -> bool:
    value = str(text).lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected on/off (true/false, yes/no, 1/0), got {text!r}")


@dataclasses.dataclass(frozen=True)
class Flag:
    """One `hvae train` flag: where its value goes (`model`, `train` or `settings`) and under which field."""

    name: str
    section: str
    field: str
    parse: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None


TRAIN_FLAGS = (
    Flag("--data", "settings", "data", str, "registered data set (`hvae data list`) or path; default: built-in synthetic"),
    Flag("--format", "settings", "format", str, "reader format (default: detect)"),
    Flag("--min-rating", "settings", "min_rating", float, "keep ratings strictly above R (Liang et al.: 3.5)"),
    Flag("--protocol", "settings", "protocol", str, "evaluation protocol", ("strong", "given")),
    Flag("--heldout-users", "settings", "heldout_users", int, "validation and test users each (strong protocol)"),
    Flag("--train", "settings", "train_file", str, "training file (given protocol)"),
    Flag("--valid", "settings", "valid_file", str, "validation file (given protocol)"),
    Flag("--test", "settings", "test_file", str, "test file (given protocol)"),
    Flag("--carve-validation", "settings", "carve_validation", str,
         "given protocol without --valid: validation from 20%% of the training items of 10%% of the users (items, "
         "the default), from held-out users (users), or none", ("items", "users", "none")),
    Flag("--user-features", "settings", "user_features", str, "per-user side features (u.user, users.dat or CSV)"),
    Flag("--split-seed", "settings", "split_seed", int, "seed of the strong split (default 98765)"),
    Flag("--workdir", "settings", "workdir", str, "output directory (default runs/default)"),
    Flag("--ks", "settings", "ks", _ints, "metric cut-offs, e.g. 10,20,50,100"),
    Flag("--iw-samples", "settings", "iw_samples", int, "report the importance-weighted log-likelihood with K samples"),
    Flag("--devices", "settings", "devices", int,
         "data-parallel over N devices; 0 = all (default 1; all with --distributed)"),
    Flag("--distributed", "settings", "distributed", _bool,
         "on: join a multi-host run via jax.distributed.initialize (see hvae_jax/parallel.py)"),
    Flag("--item-shards", "settings", "item_shards", int,
         "split the n_items-wide layers over N devices, chunked (huge catalogues); 0 = off, -1 = all"),
    Flag("--logits-budget-mb", "settings", "logits_budget_mb", float,
         "with --item-shards: largest [batch, chunk] logits block per device, MiB (64)"),
    Flag("--compute-dtype", "model", "compute_dtype", str, "matmul dtype (mixed precision)", ("float32", "bfloat16")),
    Flag("--latents", "model", "latents", _ints, "latent widths, bottom level first, e.g. 200,64 (Mult-DAE: code width)"),
    Flag("--hidden", "model", "hidden", int, "hidden layer width (600)"),
    Flag("--encoder", "model", "encoder", str, "encoder body: tanh/gated layers or RecVAE's", ("mlp", "densenet")),
    Flag("--encoder-layers", "model", "encoder_layers", int, "hidden layers from the input to a posterior (1)"),
    Flag("--decoder-layers", "model", "decoder_layers", int, "hidden layers from the latents to the logits (1)"),
    Flag("--branches", "model", "branches", str, "one input path for all levels, or one per level",
         ("shared", "separate")),
    Flag("--inference", "model", "inference", str, "hierarchical inference scheme", ("bottom_up", "ladder")),
    Flag("--prior", "model", "prior", str, "prior of the top level: standard, vamp, composite or a registered one"),
    Flag("--pseudo-inputs", "model", "n_pseudo_inputs", int, "VampPrior components (1000)"),
    Flag("--pseudo-input-dropout", "model", "pseudo_input_dropout", _bool,
         "pass pseudo-inputs through the input dropout in training (Kim & Suh): on/off"),
    Flag("--normalize-pseudo-inputs", "model", "normalize_pseudo_inputs", _bool,
         "L2-normalise pseudo-inputs as user inputs: on/off (on)"),
    Flag("--gated", "model", "gated", _bool, "gated layers: on/off"),
    Flag("--likelihood", "model", "likelihood", str, "p(x|z): multinomial, bernoulli, gaussian or a registered one"),
    Flag("--dropout", "model", "input_dropout", float, "input dropout rate (0.5)"),
    Flag("--logvar-clip", "model", "logvar_clip", _floats, "clip log-variances to LOW,HIGH, e.g. -12,4"),
    Flag("--kl-estimator", "model", "kl_estimator", str, "KL between Gaussian levels", ("analytic", "sample")),
    Flag("--init", "model", "init", str, "weight initialisation", ("glorot", "he", "torch")),
    Flag("--ease-lambdas", "model", "lambdas", _floats, "EASE: L2 weights to choose from on validation"),
    Flag("--epochs", "train", "epochs", _epochs,
         "epochs, or auto: enough for 10,000 updates, 100 to 300 (the default of --model multvae and multdae)"),
    Flag("--batch-size", "train", "batch_size", int, "users per update (500)"),
    Flag("--lr", "train", "learning_rate", float, "learning rate (1e-3)"),
    Flag("--optimizer", "train", "optimizer", str, "Adam, or Adam on unit-norm gradients (Kim & Suh)",
         ("adam", "adam_normgrad")),
    Flag("--weight-decay", "train", "weight_decay", float, "L2 weight lam * ||W||^2"),
    Flag("--average-decay", "train", "average_decay", float,
         "validate and report an exponential moving average of the parameters with this decay (0: off)"),
    Flag("--average-updates", "train", "average_updates", _optional_int,
         "without --average-decay: average over N updates, at most 4 epochs (--model multvae: 500; "
         "none: off)"),
    Flag("--beta-cap", "train", "beta_cap", float, "largest KL weight (0.2; --model multvae: 0.4)"),
    Flag("--anneal-steps", "train", "total_anneal_steps", _optional_int,
         "Liang's schedule: beta = min(cap, update / N), rising towards 1 (default: all updates of the run)"),
    Flag("--max-anneal-steps", "train", "max_anneal_steps", _optional_int,
         "without --anneal-steps: N = all updates of the run, at most this many (--model multvae: 3000)"),
    Flag("--anneal-epochs", "train", "anneal_epochs", _optional_int,
         "warm-up: beta = cap * min(1, epoch / N), reaching its cap at epoch N (Kim & Suh: 100)"),
    Flag("--kl-weight-per-item", "train", "kl_weight_per_item", float,
         "RecVAE's user-specific KL weight gamma: beta_u = gamma |x_u| (0: off)"),
    Flag("--beta-per-level", "train", "beta_per_level", _floats, "beta multiplier per level, bottom first"),
    Flag("--free-bits", "train", "free_bits", float, "minimum KL per level, nats"),
    Flag("--schedule", "train", "schedule", str, "joint updates, or RecVAE's alternating encoder/decoder epochs"),
    Flag("--encoder-epochs", "train", "encoder_epochs", int, "alternating schedule: encoder epochs per cycle (3)"),
    Flag("--decoder-epochs", "train", "decoder_epochs", int, "alternating schedule: decoder epochs per cycle (1)"),
    Flag("--early-stopping", "train", "early_stopping", _optional_int, "stop after N epochs without improvement"),
    Flag("--early-stopping-updates", "train", "early_stopping_updates", _optional_int,
         "stop after N updates (in whole epochs) without improvement; with --early-stopping, the longer wins"),
    Flag("--early-stopping-from", "train", "early_stopping_from", int,
         "epochs before this one never count towards early stopping"),
    Flag("--eval-every", "train", "eval_every", int, "validate every N epochs"),
    Flag("--checkpoint-every", "train", "checkpoint_every", int,
         f"write the latest checkpoint every N epochs (default: every {CHECKPOINT_UPDATES} updates or more)"),
    Flag("--steps-per-dispatch", "train", "steps_per_dispatch", int, "updates per jitted scan call"),
    Flag("--seed", "train", "seed", int, "seed of initialisation, shuffling and noise"),
    Flag("--input-path", "train", "input_path", str, "first layer as dense matmul or sparse gather (auto)",
         ("auto", "dense", "sparse")),
)

def _flag_dest(flag: Flag) -> str:
    return flag.name.lstrip("-").replace("-", "_")


def _model_fields(config) -> dict:
    """A config's fields that differ from its kind's defaults, with its kind: what a model name brings."""
    defaults = model_config_to_dict(type(config)())
    fields = {key: value for key, value in model_config_to_dict(config).items() if defaults.get(key) != value}
    return {"kind": config.kind, **fields}


def _read_toml(path_text: str) -> dict:
    """The settings of a `--config` file: top-level `key = value` pairs only, every key a long flag name."""
    path = pathlib.Path(path_text)
    if path.is_dir():
        raise UsageError(f"--config {path} is a folder; give a TOML file (keys are long flag names)")
    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"--config {path} is not valid TOML ({error}); keys are long flag names, e.g. "
                         "`epochs = 50`") from None
    for key, value in table.items():
        if isinstance(value, dict):
            raise UsageError(
                f"{path}: [{key}] is a table, but settings are top-level keys named after the long flags "
                f"(e.g. `epochs = 50`, not `[{key}]` then `epochs = 50`); move its keys to the top of the file"
            )
    return table


def _toml_value(path: str, key: str, value, flag: Flag):
    """A TOML value parsed as the flag would parse its text, with an error naming the key on a wrong type."""
    if isinstance(value, list):
        text = ",".join(map(str, value))
    elif isinstance(value, bool):
        text = "on" if value else "off"
    else:
        text = str(value)
    try:
        parsed = flag.parse(text)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{path}: {key} = {value!r} is not a valid {flag.name} ({error}); fix it in the file")
    if flag.choices is not None and parsed not in flag.choices:
        raise UsageError(f"{path}: {key} = {value!r}: expected one of {', '.join(flag.choices)}")
    return parsed


def resolve_train_config(args: argparse.Namespace) -> tuple:
    """Settings, model and training configs: defaults < preset < model name < `--config` TOML < explicit flags.

    A model name brings its architecture and the training settings that define the method (`configs.MODELS`);
    a setting that does not apply to the chosen kind of model is an error naming it.
    """
    sections: dict[str, dict] = {"settings": {}, "model": {}, "train": {}}
    if args.preset:
        if args.preset not in PRESETS:
            raise UsageError(f"--preset {args.preset}: unknown preset; known presets: {', '.join(PRESETS)}")
        preset = PRESETS[args.preset]
        sections["model"].update(model_config_to_dict(preset.model))
        sections["train"].update(dataclasses.asdict(preset.train))
        sections["settings"].update(dict(preset.settings))
    flags_by_key = {_flag_dest(flag): flag for flag in TRAIN_FLAGS}
    table = _read_toml(args.config) if args.config else {}
    model_name = args.model or (_model_name(table["model"], args.config) if "model" in table else None)
    if model_name is None and not args.preset:
        model_name = "multvae"  # `hvae train` alone: the default model with its training settings
    if model_name:
        named = MODELS[model_name]
        if sections["model"].get("kind", named.config.kind) != named.config.kind:
            sections["model"] = {}  # a preset of another kind of model: its architecture does not carry over
        sections["model"].update(_model_fields(named.config))
        sections["train"].update(dict(named.train))
    for key, value in table.items():
        normalized = key.replace("-", "_")
        if normalized == "model":
            continue
        if normalized not in flags_by_key:
            raise UsageError(f"{args.config}: unknown setting {key!r}; settings are the long flag names of "
                             "`hvae train` (see `hvae train --help`)")
        flag = flags_by_key[normalized]
        sections[flag.section][flag.field] = _toml_value(args.config, key, value, flag)
    explicit_model_flags = set()
    for flag in TRAIN_FLAGS:
        if not hasattr(args, _flag_dest(flag)):
            continue  # not given (the parser leaves it out); a given `none` is a value: it overrides
        sections[flag.section][flag.field] = getattr(args, _flag_dest(flag))
        if flag.section == "model":
            explicit_model_flags.add(flag.name)
    if getattr(args, "no_valid", False):
        sections["settings"]["carve_validation"] = "none"
    kind = sections["model"].pop("kind", "vae")
    config_class = CONFIG_CLASSES[kind]
    allowed = {field.name for field in dataclasses.fields(config_class)}
    stray = sorted(set(sections["model"]) - allowed)
    if stray:
        names = {flag.field: flag.name for flag in TRAIN_FLAGS if flag.section == "model"}
        raise UsageError(f"{', '.join(names.get(field, field) for field in stray)} do(es) not apply to a "
                         f"{kind} model (--model {model_name or sections['model'].get('name') or kind}); leave "
                         "them out")
    if kind == "dae" and "weight_decay" not in sections["train"]:
        # Liang et al.'s notebook: lam = 0.01 / batch size, added as 2 * lam * ||W||^2 / 2.
        sections["train"]["weight_decay"] = 0.01 / sections["train"].get("batch_size", 500)
    built = {}
    for section, build in (("model", config_class), ("train", TrainConfig), ("settings", RunSettings)):
        try:
            built[section] = build(**sections[section])
        except (TypeError, ValueError) as error:
            raise UsageError(f"invalid configuration: {_naming_flags(str(error), section)}; fix the value and run "
                             "again") from None
    return built["settings"], built["model"], built["train"]


def _naming_flags(message: str, section: str) -> str:
    """`message` with the flags that set the fields it names, where it does not name them already."""
    flags = [flag.name for flag in TRAIN_FLAGS
             if flag.section == section and re.search(rf"\b{flag.field}\b", message) and flag.name not in message]
    return f"{message} ({', '.join(flags)})" if flags else message


def _model_name(value: str, source) -> str:
    if value not in MODELS:
        raise UsageError(f"{source}: unknown model {value!r}; expected one of {', '.join(MODELS)}")
    return value


def format_results_table(results: dict) -> str:
    """A plain-text table of the run's test (and validation) metrics beside popularity's."""
    rows = [(results["model"], results)]
    for name, baseline in results.get("baselines", {}).items():
        rows.append((name, baseline))
    metric_names = ("ndcg@100", "recall@20", "recall@50")
    lines = [f"{'model':<12} {'part':<6} " + " ".join(f"{m:>17}" for m in metric_names) + f" {'users':>7}"]
    for name, block in rows:
        for part in ("valid", "test"):
            if part not in block:
                continue
            values = block[part]
            cells = " ".join(f"{values[m]:.4f} ± {values[m + '_se']:.4f}".rjust(17) for m in metric_names)
            lines.append(f"{name:<12} {part:<6} {cells} {values['n_users']:>7}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    settings, model_config, train_config = resolve_train_config(args)
    if args.print_config:
        print(json.dumps(run_config(settings, model_config, train_config), indent=2))
        return 0
    results = run(settings, model_config, train_config, overwrite=args.overwrite, progress=not args.no_progress)
    print(format_results_table(results))
    import jax  # noqa: PLC0415 (loaded by `run` already)

    if not settings.distributed or jax.process_index() == 0:  # only a multi-host run's first process writes
        print(f"results written to {pathlib.Path(settings.workdir) / 'results.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    results = evaluate_workdir(args.workdir)
    if results.get("interrupted"):
        print(f"note: the run stopped after epoch {results['epochs']}; these are the results of its best epoch so far")
    print(format_results_table(results))
    print(f"results written to {pathlib.Path(args.workdir) / 'results.json'}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "list":
        for row in sources.list_datasets():
            status = "cached" if row.get("cached") else ("download" if row.get("downloadable") else "bring your own")
            print(f"{row['name']:<10} {status:<15} {row.get('description', '')}")
        return 0
    path = sources.fetch(args.name, url=args.url, sha256=args.sha256, progress=True)
    print(f"{args.name}: {path}")
    return 0


def _parse_history_file(path: pathlib.Path) -> tuple[list[str], list[list[str]]]:
    """(user ids, item-id lists) of a `user item item ...` file; blank and '#' lines are skipped."""
    if not path.exists():
        raise FileNotFoundError(f"--history {path}: no such file")
    if not path.is_file():
        raise IsADirectoryError(f"--history {path} is a folder: give a file with one line per user, "
                                "'user item item ...'")
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise ValueError(f"--history {path} is not UTF-8 text ({error.reason} at byte {error.start}): expected one "
                         "line per user, 'user item item ...'") from None
    users, histories = [], []
    for line in text.splitlines():
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        users.append(tokens[0])
        histories.append(tokens[1:])
    if not users:
        raise ValueError(f"{path}: no users; expected one line per user, 'user item item ...'")
    return users, histories


def _format_line(rank: int, recommendation: Recommendation) -> str:
    title = f" ({recommendation.title})" if recommendation.title else ""
    return f"{rank}. {recommendation.item_id}{title} {recommendation.score:.4f}"


def recommend_cli(
    workdir: str | pathlib.Path,
    items: str | None,
    history_file: str | None,
    k: int = 20,
    *,
    export: str | None = None,
    skip_unknown: bool = False,
) -> str:
    """What `hvae recommend` prints.

    Args:
      workdir: the run's directory.
      items: comma-separated raw item ids of one user ("1,2,3"), or None.
      history_file: a file with one line per user, `user item item ...` (whitespace separated), or None.
      k: items per user.
      export: a directory to write the embeddings and latents into (see `Recommender.export`), or None.
      skip_unknown: skip unknown item ids with a warning instead of failing.

    Returns:
      For --items, lines `rank. item (title) score`; for --history, lines `user: rank. item (title) score`; then
      the files exported.
    """
    if items is None and history_file is None and export is None:
        raise ValueError("nothing to do: pass --items 1,2,3, --history FILE or --export DIR")
    if items is not None and history_file is not None:
        raise ValueError("pass either --items or --history, not both")
    # Every argument is checked before the run is loaded.
    if k < 1:
        raise ValueError(f"-k {k}: ask for at least 1 item per user")
    history = None
    if items is not None:
        history = [item.strip() for item in items.split(",") if item.strip()]
        if not history:
            raise ValueError(f"--items {items!r} names no items; expected comma-separated ids, e.g. 1,2,3")
    parsed = _parse_history_file(pathlib.Path(history_file)) if history_file is not None else None
    if export is not None:
        export_folder(export)
    recommender = Recommender.load(workdir)
    on_unknown = "skip" if skip_unknown else "raise"
    lines: list[str] = []
    if history is not None:
        if recommender.n_side_features:
            raise ValueError("this model was trained with --user-features: an anonymous --items user has none; use "
                             "--history FILE with user ids that the features file knows")
        (ranked,) = recommender.recommend([history], k, on_unknown=on_unknown)
        lines += [_format_line(rank, r) for rank, r in enumerate(ranked, 1)]
    if parsed is not None:
        users, histories = parsed
        side = recommender.side_features_for(users) if recommender.n_side_features else None
        for user, ranked in zip(users, recommender.recommend(histories, k, side_features=side, on_unknown=on_unknown)):
            lines += [f"{user}: {_format_line(rank, r)}" for rank, r in enumerate(ranked, 1)]
    if export is not None:
        lines += [f"wrote {path}" for path in recommender.export(export)]
    return "\n".join(lines)


def cmd_recommend(args: argparse.Namespace) -> int:
    if not args.items and not args.history and not args.export:
        raise UsageError("hvae recommend: nothing to do; give --items 1,2,3, --history FILE or --export DIR")
    print(recommend_cli(args.workdir, args.items, args.history, args.k, export=args.export,
                        skip_unknown=args.skip_unknown))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    if not args.workdir and not args.bench:
        raise UsageError("hvae plot: nothing to do; give --workdir DIR or --bench FILE")
    print(plot_cli(args.workdir, args.bench, args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvae", description="Hierarchical VAEs for collaborative filtering in JAX")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    # Also accepted after the command; SUPPRESS keeps a subcommand from resetting a --debug given before it.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", parents=[debug],
                                help="train and evaluate a model; writes WORKDIR/results.json")
    train.add_argument("--model", choices=tuple(MODELS), help="model (default multvae): " + "; ".join(
        f"{name}: {named.doc}" for name, named in MODELS.items()))
    train.add_argument("--preset", help=f"published set-up: {', '.join(PRESETS)}")
    train.add_argument("--config", help="TOML file whose keys are long flag names (e.g. epochs = 50)")
    train.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--no-valid", action="store_true",
                       help="given protocol without --valid: no validation data (same as --carve-validation none)")
    train.add_argument("--overwrite", action="store_true",
                       help="if --workdir holds a run with other settings, delete that run's files and start clean "
                            "(otherwise such a run is refused, naming the settings that differ)")
    for flag in TRAIN_FLAGS:
        train.add_argument(flag.name, dest=_flag_dest(flag), type=flag.parse, choices=flag.choices, help=flag.help,
                           default=argparse.SUPPRESS)
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("evaluate", parents=[debug],
                                   help="evaluate a run's best checkpoint again (also an interrupted run's)")
    evaluate.add_argument("--workdir", required=True)
    evaluate.set_defaults(handler=cmd_evaluate)

    data = commands.add_parser("data", parents=[debug], help="list or fetch data sets by name")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    data_commands.add_parser("list", help="registered data sets and whether they are cached")
    fetch = data_commands.add_parser("fetch", help="download, verify and unpack a data set into the cache")
    fetch.add_argument("name")
    fetch.add_argument("--url", help="download from this address instead of the registry's (or $HVAE_JAX_MIRROR)")
    fetch.add_argument("--sha256", help="expected SHA-256 of the archive, overriding the registry's")
    data.set_defaults(handler=cmd_data)

    recommend = commands.add_parser("recommend", parents=[debug], help="top-K unseen items for users given by raw item ids")
    recommend.add_argument("--workdir", required=True, help="the --workdir of an `hvae train` run")
    users = recommend.add_mutually_exclusive_group()
    users.add_argument("--items", help="comma-separated raw item ids of one user, e.g. 1,2,3")
    users.add_argument("--history", help="file with one line per user: 'user item item ...'")
    recommend.add_argument("-k", type=int, default=20, help="items per user (20)")
    recommend.add_argument("--export", metavar="DIR", help="write item embeddings and users' latent means (.npy)")
    recommend.add_argument("--skip-unknown", action="store_true", help="skip unknown item ids with a warning")
    recommend.set_defaults(handler=cmd_recommend)

    plot = commands.add_parser("plot", parents=[debug], help="training curves of a run, or a benchmark chart, as PNG files")
    plot.add_argument("--workdir", help="run whose metrics.jsonl is plotted into WORKDIR/plots/")
    plot.add_argument("--bench", metavar="FILE", help="benchmark JSON to chart")
    plot.add_argument("--out", help="PNG path for --bench (default: FILE with .png)")
    plot.set_defaults(handler=cmd_plot)
    return parser


def _anticipated() -> tuple[type[BaseException], ...]:
    """The errors `main` reports as one line: their messages say what failed, where and what to do.

    ValueError covers bad settings, `rundir.RunDirError` and the readers' `DataFormatError`; OSError missing,
    unreadable or misplaced files; FloatingPointError `train.DivergenceError`; MemoryError data too large for this
    machine."""
    return ValueError, OSError, FloatingPointError, MemoryError, sources.SourceError


def _describe(error: BaseException) -> str:
    if isinstance(error, MemoryError):
        return f"out of memory ({error or 'no details'}): the data or the model is too large for this machine"
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        return f"{error.filename}: {error.strerror}"  # rather than "[Errno 21] Is a directory: 'x'"
    return str(error) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt as interrupt:
        if args.debug:
            raise
        signum = getattr(interrupt, "signum", signal.SIGINT)  # train.Interrupted names SIGTERM; Ctrl-C otherwise
        print(f"{'terminated' if signum == signal.SIGTERM else 'interrupted'}: the latest checkpoint is kept; run the "
              "same command again to resume, or `hvae evaluate` for the results so far", file=sys.stderr)
        return 128 + signum
    except _anticipated() as error:
        if args.debug:
            raise
        print(f"error: {_describe(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
