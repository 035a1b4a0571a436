"""The `hvae` command: parses flags (over a preset and a TOML config file) and wires the library together.

  hvae train [--data NAME_OR_PATH] [--model multvae|multdae|hvae|ease|popularity] [...]
  hvae evaluate --workdir DIR
  hvae data list | hvae data fetch NAME
  hvae recommend --workdir DIR --items 1,2,3 [-k 20]
  hvae plot --workdir DIR | --bench FILE
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import tomllib
from typing import Any, Callable

from hvae_jax.configs import PRESETS, ModelConfig, TrainConfig


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in str(text).split(",") if part.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in str(text).split(",") if part.strip())


def _optional_int(text: str) -> int | None:
    return None if str(text).lower() in ("none", "off", "0") else int(text)


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
    Flag("--user-features", "settings", "user_features", str, "per-user side features (u.user, users.dat or CSV)"),
    Flag("--split-seed", "settings", "split_seed", int, "seed of the strong split (default 98765)"),
    Flag("--workdir", "settings", "workdir", str, "output directory (default runs/default)"),
    Flag("--ks", "settings", "ks", _ints, "metric cut-offs, e.g. 10,20,50,100"),
    Flag("--iw-samples", "settings", "iw_samples", int, "report the importance-weighted log-likelihood with K samples"),
    Flag("--devices", "settings", "devices", int,
         "data-parallel over N devices; 0 = all (default 1; all with --distributed)"),
    Flag("--distributed", "settings", "distributed", lambda t: str(t).lower() in ("1", "true", "yes", "on"),
         "on: join a multi-host run via jax.distributed.initialize (see hvae_jax/parallel.py)"),
    Flag("--item-shards", "settings", "item_shards", int,
         "split the n_items-wide layers over N devices, chunked (huge catalogues); 0 = off, -1 = all"),
    Flag("--logits-budget-mb", "settings", "logits_budget_mb", float,
         "with --item-shards: largest [batch, chunk] logits block per device, MiB (64)"),
    Flag("--compute-dtype", "model", "compute_dtype", str, "matmul dtype (mixed precision)", ("float32", "bfloat16")),
    Flag("--latents", "model", "latents", _ints, "latent widths, bottom level first, e.g. 200,64"),
    Flag("--hidden", "model", "hidden", int, "hidden layer width (600)"),
    Flag("--inference", "model", "inference", str, "hierarchical inference scheme", ("bottom_up", "ladder")),
    Flag("--prior", "model", "prior", str, "prior of the top level", ("standard", "vamp")),
    Flag("--pseudo-inputs", "model", "n_pseudo_inputs", int, "VampPrior components (1000)"),
    Flag("--gated", "model", "gated", lambda t: str(t).lower() in ("1", "true", "yes", "on"), "gated layers: on/off"),
    Flag("--likelihood", "model", "likelihood", str, "p(x|z)", ("multinomial", "bernoulli", "gaussian")),
    Flag("--dropout", "model", "input_dropout", float, "input dropout rate (0.5)"),
    Flag("--logvar-clip", "model", "logvar_clip", _floats, "clip log-variances to LOW,HIGH, e.g. -12,4"),
    Flag("--epochs", "train", "epochs", int, "epochs"),
    Flag("--batch-size", "train", "batch_size", int, "users per update (500)"),
    Flag("--lr", "train", "learning_rate", float, "Adam learning rate (1e-3)"),
    Flag("--weight-decay", "train", "weight_decay", float, "L2 weight lam * ||W||^2"),
    Flag("--average-decay", "train", "average_decay", float,
         "validate and report an exponential moving average of the parameters with this decay (0: off)"),
    Flag("--beta-cap", "train", "beta_cap", float, "largest KL weight (0.2)"),
    Flag("--anneal-steps", "train", "total_anneal_steps", _optional_int, "updates for beta to reach its cap"),
    Flag("--anneal-epochs", "train", "anneal_epochs", _optional_int, "epochs for beta to reach its cap (default all)"),
    Flag("--beta-per-level", "train", "beta_per_level", _floats, "beta multiplier per level, bottom first"),
    Flag("--free-bits", "train", "free_bits", float, "minimum KL per level, nats"),
    Flag("--early-stopping", "train", "early_stopping", _optional_int, "stop after N epochs without improvement"),
    Flag("--eval-every", "train", "eval_every", int, "validate every N epochs"),
    Flag("--steps-per-dispatch", "train", "steps_per_dispatch", int, "updates per jitted scan call"),
    Flag("--seed", "train", "seed", int, "seed of initialisation, shuffling and noise"),
    Flag("--input-path", "train", "input_path", str, "first layer as dense matmul or sparse gather (auto)",
         ("auto", "dense", "sparse")),
)

MODEL_NAMES = {
    "multvae": {"kind": "vae", "latents": (200,)},
    "hvae": {"kind": "vae", "latents": (200, 200), "prior": "vamp", "gated": True, "logvar_clip": (-12.0, 4.0)},
    "multdae": {"kind": "dae"},
    "ease": {"kind": "ease"},
    "popularity": {"kind": "popularity"},
}


def _flag_dest(flag: Flag) -> str:
    return flag.name.lstrip("-").replace("-", "_")


def resolve_train_config(args: argparse.Namespace) -> tuple[dict, ModelConfig, TrainConfig]:
    """Settings, model and training configs: defaults < preset < `--config` TOML < explicit flags."""
    from hvae_jax.experiment import RunSettings

    sections: dict[str, dict] = {"settings": {}, "model": {}, "train": {}}
    if args.preset:
        if args.preset not in PRESETS:
            raise SystemExit(f"unknown preset {args.preset!r}; known presets: {', '.join(PRESETS)}")
        preset = PRESETS[args.preset]
        sections["model"].update(dataclasses.asdict(preset.model))
        sections["train"].update(dataclasses.asdict(preset.train))
        sections["settings"].update(dict(preset.settings))
    flags_by_key = {_flag_dest(flag): flag for flag in TRAIN_FLAGS}
    table: dict = {}
    if args.config:
        path = pathlib.Path(args.config)
        try:
            table = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SystemExit(f"config file {path} not found")
        except tomllib.TOMLDecodeError as error:
            raise SystemExit(f"{path}: not valid TOML: {error}")
    # A model name brings that model's defaults, above the preset and below every explicit setting.
    model_name = args.model or (_model_name(table["model"], args.config) if "model" in table else None)
    if model_name:
        sections["model"].update(MODEL_NAMES[model_name])
    for key, value in table.items():
        normalized = key.replace("-", "_")
        if normalized == "model":
            continue
        if normalized not in flags_by_key:
            raise SystemExit(f"{args.config}: unknown setting {key!r}; settings are the long flag names of `hvae train`")
        flag = flags_by_key[normalized]
        sections[flag.section][flag.field] = flag.parse(",".join(map(str, value)) if isinstance(value, list) else str(value))
    for flag in TRAIN_FLAGS:
        value = getattr(args, _flag_dest(flag))
        if value is not None:
            sections[flag.section][flag.field] = value
    if sections["model"].get("kind") == "dae" and "weight_decay" not in sections["train"]:
        sections["train"]["weight_decay"] = 0.01 / sections["train"].get("batch_size", 500)
    try:
        model_config = ModelConfig(**sections["model"])
        train_config = TrainConfig(**sections["train"])
        settings = RunSettings(**sections["settings"])
    except (TypeError, ValueError) as error:
        raise SystemExit(f"invalid configuration: {error}")
    return settings, model_config, train_config


def _model_name(value: str, source) -> str:
    if value not in MODEL_NAMES:
        raise SystemExit(f"{source}: unknown model {value!r}; expected one of {', '.join(MODEL_NAMES)}")
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
    from hvae_jax.experiment import run

    settings, model_config, train_config = resolve_train_config(args)
    if args.print_config:
        print(json.dumps(
            {"settings": dataclasses.asdict(settings), "model": dataclasses.asdict(model_config),
             "train": dataclasses.asdict(train_config)}, indent=2))
        return 0
    results = run(settings, model_config, train_config, progress=not args.no_progress)
    print(format_results_table(results))
    print(f"results written to {pathlib.Path(settings.workdir) / 'results.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hvae_jax.experiment import evaluate_workdir

    results = evaluate_workdir(args.workdir)
    print(format_results_table(results))
    print(f"results written to {pathlib.Path(args.workdir) / 'results.json'}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from hvae_jax.data import sources

    if args.data_command == "list":
        for row in sources.list_datasets():
            status = "cached" if row.get("cached") else ("download" if row.get("downloadable") else "bring your own")
            print(f"{row['name']:<10} {status:<15} {row.get('description', '')}")
        return 0
    path = sources.fetch(args.name, url=args.url, sha256=args.sha256, progress=True)
    print(f"{args.name}: {path}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from hvae_jax.recommend import recommend_cli

    if not args.items and not args.history and not args.export:
        raise SystemExit("hvae recommend: give --items, --history or --export")
    print(recommend_cli(args.workdir, args.items, args.history, args.k, export=args.export,
                        skip_unknown=args.skip_unknown))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from hvae_jax.plots import plot_cli

    if not args.workdir and not args.bench:
        raise SystemExit("hvae plot: give --workdir DIR or --bench FILE")
    print(plot_cli(args.workdir, args.bench, args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvae", description="Hierarchical VAEs for collaborative filtering in JAX")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train and evaluate a model; writes WORKDIR/results.json")
    train.add_argument("--model", choices=tuple(MODEL_NAMES), help="model (default multvae)")
    train.add_argument("--preset", help=f"published set-up: {', '.join(PRESETS)}")
    train.add_argument("--config", help="TOML file whose keys are long flag names (e.g. epochs = 50)")
    train.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    for flag in TRAIN_FLAGS:
        train.add_argument(flag.name, dest=_flag_dest(flag), type=flag.parse, choices=flag.choices, help=flag.help)
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("evaluate", help="re-evaluate the best checkpoint of a run")
    evaluate.add_argument("--workdir", required=True)
    evaluate.set_defaults(handler=cmd_evaluate)

    data = commands.add_parser("data", help="list or fetch data sets by name")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    data_commands.add_parser("list", help="registered data sets and whether they are cached")
    fetch = data_commands.add_parser("fetch", help="download, verify and unpack a data set into the cache")
    fetch.add_argument("name")
    fetch.add_argument("--url", help="download from this address instead of the registry's (or $HVAE_JAX_MIRROR)")
    fetch.add_argument("--sha256", help="expected SHA-256 of the archive, overriding the registry's")
    data.set_defaults(handler=cmd_data)

    recommend = commands.add_parser("recommend", help="top-K unseen items for users given by raw item ids")
    recommend.add_argument("--workdir", required=True, help="the --workdir of an `hvae train` run")
    users = recommend.add_mutually_exclusive_group()
    users.add_argument("--items", help="comma-separated raw item ids of one user, e.g. 1,2,3")
    users.add_argument("--history", help="file with one line per user: 'user item item ...'")
    recommend.add_argument("-k", type=int, default=20, help="items per user (20)")
    recommend.add_argument("--export", metavar="DIR", help="write item embeddings and users' latent means (.npy)")
    recommend.add_argument("--skip-unknown", action="store_true", help="skip unknown item ids with a warning")
    recommend.set_defaults(handler=cmd_recommend)

    plot = commands.add_parser("plot", help="training curves of a run, or a benchmark chart, as PNG files")
    plot.add_argument("--workdir", help="run whose metrics.jsonl is plotted into WORKDIR/plots/")
    plot.add_argument("--bench", metavar="FILE", help="benchmark JSON to chart")
    plot.add_argument("--out", help="PNG path for --bench (default: FILE with .png)")
    plot.set_defaults(handler=cmd_plot)
    return parser


def _source_error() -> type[Exception]:
    from hvae_jax.data.sources import SourceError

    return SourceError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted: the latest checkpoint is kept; run the same command again to resume", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, _source_error()) as error:
        # DataFormatError is a ValueError: its message already names file, line and expectation.
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
