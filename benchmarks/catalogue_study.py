"""Defaults across catalogue shapes: Mult-VAE and Mult-DAE settings on amazon-book (KGAT's given split, validation
carved from training: 70,679 users, 24,915 items, 12 interactions a user) and ml-1m-implicit (strong
generalization, 600 + 600 held-out users, split seed 98765: 6,040 users, 3,706 items, 166 a user), and a few
settings on the small sets of the accuracy tables, Last.fm (1,892 users, 17,632 artists) and ml-latest-small
(ratings > 3.5).

Each setting is one `hvae train` command: the data set's flags, the setting's flags, every other flag at its default
(early stopping included). One record per (data set, setting) under benchmarks/results/catalogue-study/, with the
per-epoch curve, so the table and the curves are rebuilt without retraining.

  python -m benchmarks.catalogue_study run --datasets ml-1m --settings multvae-default,multdae-default
  python -m benchmarks.catalogue_study record --dataset amazon-book --setting multdae-default --workdir DIR
  python -m benchmarks.catalogue_study table          # catalogue-study.{json,md,png} under benchmarks/results/

The table marks the setting with the best validation NDCG@100 on each data set (never test) and gives every
setting's test Recall@20 and NDCG@20 relative to it: the issue's question is whether the default lands within 2%.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import time

from benchmarks.accuracy import record_of

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = "../shared/data"  # as the commands are written: relative to the repository root
RESULTS = ROOT / "benchmarks" / "results" / "catalogue-study"

DATASETS = {
    "amazon-book": ["--protocol", "given", "--train", f"{SHARED}/amazon-book/train.txt",
                    "--test", f"{SHARED}/amazon-book/test.txt", "--format", "adjacency"],
    "ml-1m": ["--data", f"{SHARED}/ml-1m-implicit", "--format", "adjacency", "--heldout-users", "600"],
    # The two small sets of the accuracy tables, with their splits there (10% + 10% held-out users, seed 98765).
    "lastfm": ["--data", f"{SHARED}/lastfm-hetrec2011", "--format", "lastfm"],
    "ml-latest-small": ["--data", f"{SHARED}/ml-latest-small", "--format", "csv", "--min-rating", "3.5"],
}

# Setting name -> the flags it adds to the data set's. "default" means every other flag at its default.
# Liang et al.'s Mult-VAE [I-600-200-600-I], 100 epochs: `--model multvae` until this study made the linear decoder
# and the scaled epochs its default (records made before then ran `--model multvae`; they keep that command as
# `command_as_run`).
LIANG = ["--model", "multvae-liang"]
# `--model multvae` without the parameter average and, with the cap of 0.2 as well, the default before the last
# change (`multvae-cap-0.2`): the settings named `multvae-default-<x>` and `multvae-linear-decoder-<x>` add <x> to
# it, as they ran then.
NO_AVERAGE = ["--model", "multvae", "--average-updates", "none"]
CAP_02 = [*NO_AVERAGE, "--beta-cap", "0.2"]


def linear_decoder(*flags: str, cap: str = "0.2") -> list[str]:
    """The linear decoder ([I-600-200-I], RecVAE's) at the 100 epochs its first runs had, with `flags`; its runs came
    before the anneal was bounded, so they spell the unbounded anneal out."""
    return [*NO_AVERAGE, "--beta-cap", cap, "--max-anneal-steps", "none", "--epochs", "100", *flags]


LINEAR_DECODER = linear_decoder()
SETTINGS = {
    # Today's `--model multvae`: the linear decoder, epochs scaled to the data (100 on amazon-book, 300 on the
    # others: train.epochs_for), the anneal over the run's updates but no more than 3,000 (amazon-book: 3,000 of
    # 14,200; the others: all of them), a KL cap of 0.4, and the parameters averaged over 500 updates, at most 4
    # epochs (train.average_decay_for: decay 0.998 on amazon-book, 1 - 1/40 on ml-1m, 1 - 1/12 on Last.fm, 0.75 on
    # ml-latest-small).
    "multvae-default": ["--model", "multvae"],
    # The default before the cap of 0.4 and the average (records made then ran `--model multvae` and keep that
    # command as `command_as_run`).
    "multvae-cap-0.2": CAP_02,
    # The same before the anneal was bounded: on amazon-book it reaches the cap at epoch 20 of 100.
    "multvae-scaled-epochs": [*CAP_02, "--max-anneal-steps", "none"],
    "multvae-liang": LIANG,
    # Liang et al.'s schedule as their code runs it: beta rises by 1 / 200,000 per update, so on these data sets
    # (10 and 142 updates an epoch) it stays far below the cap of 0.2; the default reaches the cap after
    # cap x epochs x updates per epoch (epoch 20 of 100).
    "multvae-anneal-200k": [*LIANG, "--anneal-steps", "200000"],
    # The KL weight's cap: Liang et al. chose 0.2 on ML-20M; a stronger pull towards the prior.
    "multvae-beta-0.5": [*LIANG, "--beta-cap", "0.5"],
    "multvae-dropout-0.2": [*LIANG, "--dropout", "0.2"],
    # Mult-DAE's L2 weight (0.01 / batch size, Liang et al.'s notebook) on Mult-VAE.
    "multvae-wd-2e-5": [*LIANG, "--weight-decay", "2e-5"],
    "multvae-lr3e-3-avg": [*LIANG, "--lr", "3e-3", "--average-decay", "0.998"],
    "multvae-batch-100": [*LIANG, "--batch-size", "100"],
    # Mult-DAE's capacity with a latent variable: its [I-200-I] has a third of Mult-VAE's [I-600-200-600-I]
    # weights. One tanh layer of 200 to the posterior, logits linear in z ([I-200-200-I]); and the linear decoder
    # alone ([I-600-200-I], RecVAE's decoder).
    "multvae-narrow-linear": [*LINEAR_DECODER, "--hidden", "200"],
    "multvae-linear-decoder": LINEAR_DECODER,
    "multvae-linear-decoder-lr3e-3-avg": [*LINEAR_DECODER, "--lr", "3e-3", "--average-decay", "0.998"],
    # Mult-DAE's network and L2 with a latent variable: [I-200-200-I] differs from Mult-DAE's [I-200-I] by the
    # 200 x 200 map to the posterior's mean, the sampling and the KL term.
    "multvae-narrow-linear-wd-2e-5": [*LINEAR_DECODER, "--hidden", "200", "--weight-decay", "2e-5"],
    # The pull towards the prior with the linear decoder: other caps, and RecVAE's KL weight per user
    # (beta_u = 0.005 |x_u|, constant from the first update): about 0.05 for amazon-book's mean user (9.2 items in
    # train.txt), 0.8 for ml-1m's (166).
    "multvae-linear-decoder-beta-0.1": linear_decoder(cap="0.1"),
    "multvae-linear-decoder-beta-0.05": linear_decoder(cap="0.05"),
    "multvae-linear-decoder-beta-0.4": linear_decoder(cap="0.4"),
    "multvae-linear-decoder-kl-per-item": [*LINEAR_DECODER, "--kl-weight-per-item", "0.005"],
    # Input dropout {0, 0.2} beside the default 0.5 (the grid): amazon-book's users hold 9 training items,
    # so half of them dropped leaves about 4 to encode, and the sampled z is noise of its own.
    "multvae-linear-decoder-dropout-0.2": [*LINEAR_DECODER, "--dropout", "0.2"],
    "multvae-linear-decoder-dropout-0": [*LINEAR_DECODER, "--dropout", "0"],
    # and above it, since amazon-book's validation rose with the rate (0: 0.1478, 0.2: 0.1529, 0.5: 0.1612).
    "multvae-linear-decoder-dropout-0.7": [*LINEAR_DECODER, "--dropout", "0.7"],
    "multvae-linear-decoder-batch-100": [*LINEAR_DECODER, "--batch-size", "100"],
    # A stronger pull sooner: on amazon-book every linear run peaked at epoch 16 with beta still rising (0.16), and
    # lower caps did worse; Kim & Suh's warm-up reaches the cap at epoch N and stays there.
    "multvae-linear-decoder-warmup-5": [*LINEAR_DECODER, "--anneal-epochs", "5"],
    "multvae-linear-decoder-beta-0.4-warmup-10": linear_decoder("--anneal-epochs", "10", cap="0.4"),
    # Liang's per-update schedule over 3,000 updates: the cap of 0.2 after 600, as the default reaches it on ml-1m
    # (300 epochs of 10 updates) and about as soon as the 5-epoch warm-up does on amazon-book (710).
    "multvae-linear-decoder-anneal-3000": [*LINEAR_DECODER, "--anneal-steps", "3000"],
    # The same anneal with the scaled epochs (on ml-1m the default's own schedule: 300 epochs of 10 updates).
    "multvae-default-anneal-3000": [*CAP_02, "--anneal-steps", "3000"],
    "multvae-linear-decoder-lr5e-4": [*LINEAR_DECODER, "--lr", "5e-4"],
    # After the bound: on amazon-book every cap reached sooner did better (the unbounded anneal at epoch 16: 0.05,
    # 0.1 then 0.16 gave 0.1558, 0.1599, 0.1612; the bound, 0.2 from update 600: 0.1651), so caps above 0.2 reached
    # as fast; and Mult-DAE's smaller network and L2 (Mult-DAE led amazon-book at 0.1706) under the same anneal.
    "multvae-default-beta-0.3": [*NO_AVERAGE, "--beta-cap", "0.3"],
    "multvae-default-beta-0.4": [*NO_AVERAGE, "--beta-cap", "0.4"],
    "multvae-default-narrow-wd-2e-5": [*CAP_02, "--hidden", "200", "--weight-decay", "2e-5"],
    "multvae-default-lr5e-4": [*CAP_02, "--lr", "5e-4"],
    # The cap of 0.4 (amazon-book's best Mult-VAE so far) with a running average of the parameters, or with
    # Mult-DAE's L2 weight: what else separates it from Mult-DAE there.
    "multvae-default-beta-0.4-avg": [*NO_AVERAGE, "--beta-cap", "0.4", "--average-decay", "0.998"],
    "multvae-default-beta-0.4-wd-2e-5": [*NO_AVERAGE, "--beta-cap", "0.4", "--weight-decay", "2e-5"],
    # Mult-DAE at 100 epochs (`--model multdae` scales its epochs to the data since this study, like Mult-VAE).
    "multdae-default": ["--model", "multdae", "--epochs", "100"],
    # Longer budgets (the curves to 300 epochs): early stopping still applies; the default anneal then reaches its
    # cap at epoch 60 rather than 20, since it rises over all the run's updates.
    "multvae-300-epochs": [*LIANG, "--epochs", "300"],
    "multdae-300-epochs": ["--model", "multdae", "--epochs", "300"],
    "multvae-linear-decoder-300-epochs": [*CAP_02, "--epochs", "300"],
    "multvae-linear-decoder-beta-0.1-300-epochs": [*NO_AVERAGE, "--beta-cap", "0.1", "--epochs", "300"],
    "multvae-linear-decoder-lr3e-3-avg-300-epochs": [*CAP_02, "--lr", "3e-3",
                                                     "--average-decay", "0.998", "--epochs", "300"],
    # The hierarchy in RecVAE's style (`--model hvae-recvae`, RecVAE's encoder, two levels, the composite prior,
    # alternating 3 encoder / 1 decoder passes; `--model hvae` when it ran, which its record keeps as
    # `command_as_run`) under an epoch budget this study's machine affords on amazon-book: 140 passes (35 cycles,
    # about 20,000 updates), against its default of 400 passes with 80 of patience.
    "hvae-140-epochs": ["--model", "hvae-recvae", "--epochs", "140"],
    # Today's `--model hvae`: `--model multvae` with a second level and the composite prior, trained as it is.
    "hvae-default": ["--model", "hvae"],
    # `--model hvae` from December 1 to 2, 2026, written out (benchmarks/accuracy.py's `mv-2level`; on ml-1m its
    # record keeps the command as it ran, `--model hvae`, as `command_as_run`): its one
    # 600-wide tanh encoder layer, logits linear in both 200-d levels, a standard normal top, joint updates, the
    # anneal bounded by 3,000 updates, the cap of 0.4, the average over 500 updates, epochs scaled to the data and
    # early stopping after 1,500 updates without a better validation NDCG@100.
    "hvae-mv-2level": ["--model", "hvae", "--encoder", "mlp", "--encoder-layers", "1", "--decoder-layers", "0",
                       "--prior", "standard", "--init", "glorot", "--schedule", "joint", "--kl-weight-per-item", "0",
                       "--lr", "1e-3", "--eval-every", "1", "--max-anneal-steps", "3000", "--beta-cap", "0.4",
                       "--average-updates", "500", "--epochs", "auto", "--early-stopping-updates", "1500",
                       "--early-stopping", "none"],
    "ease": ["--model", "ease", "--ease-lambdas", "200,500,1000"],
}
# Beside the sweep of one-level settings: EASE and the hierarchy's runs, reported (and compared with the setting
# validation chose), never "the best setting" of a study of `--model multvae`'s defaults.
BASELINES = ("ease", "hvae-140-epochs", "hvae-mv-2level", "hvae-default")
DEFAULT = "multvae-default"
COMPARED = ("recall@20", "ndcg@20")


def record_path(dataset: str, setting: str) -> pathlib.Path:
    return RESULTS / dataset / f"{setting}.json"


def command_of(dataset: str, setting: str, workdir: str) -> list[str]:
    if dataset not in DATASETS:
        raise SystemExit(f"unknown data set {dataset!r}: one of {', '.join(DATASETS)}")
    if setting not in SETTINGS:
        raise SystemExit(f"unknown setting {setting!r}: one of {', '.join(SETTINGS)}")
    return ["train", *DATASETS[dataset], *SETTINGS[setting], "--workdir", workdir]


def write_record(dataset: str, setting: str, workdir: pathlib.Path, note: str | None,
                 wall_seconds: float | None) -> dict:
    command = "hvae " + shlex.join(command_of(dataset, setting, f"runs/catalogue-study/{dataset}/{setting}"))
    record = {"dataset": dataset, "setting": setting, "wall_seconds": wall_seconds,
              **record_of(workdir, command, note)}
    path = record_path(dataset, setting)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record


def cmd_run(args) -> None:
    from hvae_jax import cli

    for dataset in args.datasets.split(","):
        for setting in args.settings.split(","):
            if record_path(dataset, setting).exists() and not args.force:
                print(f"{dataset} {setting}: recorded ({record_path(dataset, setting)})")
                continue
            workdir = pathlib.Path(args.workroot) / dataset / setting
            argv = command_of(dataset, setting, str(workdir))
            print(f"{dataset} {setting}: hvae {shlex.join(argv)}", flush=True)
            start = time.perf_counter()
            status = cli.main(argv)
            if status in (130, 143):  # stopped by Ctrl-C or SIGTERM after a checkpointed epoch
                raise SystemExit(f"{dataset} {setting}: stopped; `hvae evaluate --workdir {workdir}` gives the results "
                                 f"so far, then `python -m benchmarks.catalogue_study record --dataset {dataset} "
                                 f"--setting {setting} --workdir {workdir} --note ...` keeps them")
            if status:
                raise SystemExit(f"{dataset} {setting}: hvae train exited with {status}")
            record = write_record(dataset, setting, workdir, args.note, time.perf_counter() - start)
            print(f"{dataset} {setting}: {record['epochs_run']} epochs, test "
                  f"{_metric(record, 'test', 'ndcg@100'):.4f} NDCG@100", flush=True)


def cmd_record(args) -> None:
    record = write_record(args.dataset, args.setting, pathlib.Path(args.workdir), args.note, args.wall_seconds)
    print(f"{record_path(args.dataset, args.setting)}: {record['epochs_run']} epochs; "
          f"{record['time_to_99%_of_best_valid']}")


def _metric(record: dict, part: str, name: str) -> float:
    return record["results"][part][name]


def _test_figures(results: dict) -> dict:
    """The test metrics a row shows, and the standard errors it prints beside them."""
    return {"test": {name: results["test"][name] for name in ("ndcg@100", "recall@20", "recall@50", "ndcg@20")},
            "test_se": {name: results["test"][f"{name}_se"] for name in ("ndcg@100", "recall@20", "ndcg@20")}}


def rows_of(dataset: str) -> list[dict]:
    """One row per recorded setting of `dataset`, in SETTINGS order, with each setting's test metrics relative to
    the neural setting that validation chose."""
    records = {setting: json.loads(record_path(dataset, setting).read_text())
               for setting in SETTINGS if record_path(dataset, setting).exists()}
    finished = {setting: record for setting, record in records.items() if record["results"] is not None}
    sweep = [setting for setting in finished if setting not in BASELINES]
    chosen = max(sweep, key=lambda setting: _metric(finished[setting], "valid", "ndcg@100")) if sweep else None
    rows = []
    for setting, record in finished.items():
        results = record["results"]
        row = {
            "setting": setting, "flags": SETTINGS[setting], "command": record["command"],
            "chosen_on_validation": setting == chosen,
            "best_epoch": results.get("best_epoch"), "epochs_run": record["epochs_run"],
            "stopped_early": results.get("stopped_early"), "interrupted": bool(results.get("interrupted")),
            "valid_ndcg@100": _metric(record, "valid", "ndcg@100"), **_test_figures(results),
            "train_seconds": results.get("train_seconds"), "wall_seconds": record.get("wall_seconds"),
            "time_to_99%_of_best_valid": record.get("time_to_99%_of_best_valid"),
        }
        if chosen is not None:
            row["vs_chosen"] = {name: row["test"][name] / _metric(finished[chosen], "test", name) - 1
                                for name in (*COMPARED, "ndcg@100")}
        rows.append(row)
    popularity = next((record["results"]["baselines"]["popularity"] for record in finished.values()
                       if (record["results"].get("baselines") or {}).get("popularity")), None)
    if popularity is not None:
        rows.append({"setting": "popularity", "flags": [], "command": "(computed beside every neural run)",
                     "chosen_on_validation": False, "valid_ndcg@100": popularity["valid"]["ndcg@100"],
                     **_test_figures(popularity)})
    return rows


def _blank(value) -> str:
    return "" if value is None or value == 0 else str(value)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.1f}%"


def markdown(dataset: str, rows: list[dict]) -> str:
    lines = [f"**{dataset}**", "",
             "| setting | best epoch / run | valid NDCG@100 | test NDCG@100 | test Recall@20 | test NDCG@20 | "
             "test Recall@50 | Recall@20 / NDCG@20 vs chosen | training s | first epoch within 1% of best valid |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for row in rows:
        test, se = row["test"], row["test_se"]
        mark = " (chosen on validation)" if row["chosen_on_validation"] else ""
        vs = row.get("vs_chosen")
        to99 = row.get("time_to_99%_of_best_valid") or {}
        seconds = row.get("train_seconds")
        relative = "" if vs is None else f"{_percent(vs['recall@20'])} / {_percent(vs['ndcg@20'])}"
        first = "" if not to99 else str(to99["epoch"]) + (
            f" ({to99['train_seconds']:,.0f} s)" if to99.get("train_seconds") else "")
        lines.append(
            f"| {row['setting']}{mark} | {_blank(row.get('best_epoch'))} / {_blank(row.get('epochs_run'))}"
            f"{' (stopped by hand)' if row.get('interrupted') else ''} | "
            f"{row['valid_ndcg@100']:.4f} | {test['ndcg@100']:.4f} ± {se['ndcg@100']:.4f} | "
            f"{test['recall@20']:.4f} ± {se['recall@20']:.4f} | {test['ndcg@20']:.4f} | {test['recall@50']:.4f} | "
            f"{relative} | {'' if seconds is None else f'{seconds:,.0f}'} | {first} |")
    return "\n".join(lines)


def plot(datasets: dict[str, list[dict]], out: pathlib.Path) -> None:
    """Validation NDCG@100 against the epoch and against training seconds, and beta, per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(datasets), 3, figsize=(16, 4.2 * len(datasets)), squeeze=False)
    for axes_row, (dataset, rows) in zip(axes, datasets.items()):
        for index, row in enumerate(r for r in rows if r["setting"] in SETTINGS and r["setting"] not in BASELINES):
            record = json.loads(record_path(dataset, row["setting"]).read_text())
            history = record["history"]
            validated = [h for h in history if h.get("valid_ndcg@100") is not None]
            seconds, elapsed = [], 0.0
            for h in history:
                elapsed += h.get("train_seconds") or 0.0
                if h.get("valid_ndcg@100") is not None:
                    seconds.append(elapsed)
            style = dict(color=f"C{index}", linewidth=2.2 if row["setting"] == DEFAULT else 1.2,
                         label=row["setting"] + (" (chosen)" if row["chosen_on_validation"] else ""))
            axes_row[0].plot([h["epoch"] for h in validated], [h["valid_ndcg@100"] for h in validated], **style)
            axes_row[1].plot(seconds, [h["valid_ndcg@100"] for h in validated], **style)
            # With a KL weight per item (beta_u = gamma |x_u|, the hierarchy) the logged beta is a multiplier of 1,
            # not the weight itself: no line to draw.
            if not record["config"]["train"].get("kl_weight_per_item"):
                axes_row[2].plot([h["epoch"] for h in history], [h.get("beta") or 0.0 for h in history], **style)
        titles = ("validation NDCG@100", "validation NDCG@100", "KL weight beta")
        xlabels = ("epoch", "training seconds (most runs shared the machine: see notes)", "epoch")
        for axis, title, xlabel in zip(axes_row, titles, xlabels):
            axis.set_title(f"{dataset}: {title}")
            axis.set_xlabel(xlabel)
            axis.grid(alpha=0.3)
        axes_row[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def cmd_table(args) -> None:
    tables, summary = {}, {}
    for dataset in args.datasets.split(","):
        rows = rows_of(dataset)
        if not rows:
            print(f"{dataset}: nothing recorded under {RESULTS / dataset}")
            continue
        tables[dataset] = rows
        default = next((row for row in rows if row["setting"] == DEFAULT), None)
        if default is not None and "vs_chosen" in default:
            # Against how many neural settings: with the default alone the answer says nothing.
            compared = [row["setting"] for row in rows if "vs_chosen" in row and row["setting"] not in BASELINES]
            # Read two ways: against every setting (Mult-DAE included) and against the default's own model only.
            same_model = [row for row in rows if row["setting"].split("-")[0] == DEFAULT.split("-")[0]]
            own = max(same_model, key=lambda row: row["valid_ndcg@100"])
            summary[dataset] = {"settings_compared": compared,
                                "chosen_on_validation": next(row["setting"] for row in rows
                                                             if row["chosen_on_validation"]),
                                **{f"default_{name}_within_2%": default["vs_chosen"][name] >= -0.02
                                   for name in COMPARED},
                                "chosen_among_the_same_model": own["setting"],
                                **{f"default_{name}_vs_the_same_model's_choice":
                                   default["test"][name] / own["test"][name] - 1 for name in COMPARED}}
    text = "\n\n".join(markdown(dataset, rows) for dataset, rows in tables.items())
    print(text)
    print(json.dumps(summary, indent=1))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"settings": SETTINGS, "datasets": DATASETS, "default": DEFAULT,
                                                    "summary": summary, "rows": tables}, indent=1))
    if tables:
        plot(tables, out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.md')}, .json, .png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train settings not yet recorded")
    run.add_argument("--datasets", default="ml-1m")
    run.add_argument("--settings", default=",".join(SETTINGS))
    run.add_argument("--workroot", default=str(ROOT / "runs" / "catalogue-study"))
    run.add_argument("--note")
    run.add_argument("--force", action="store_true", help="train again where a record exists")
    run.set_defaults(handler=cmd_run)
    record = commands.add_parser("record", help="record a run made with the setting's command elsewhere")
    record.add_argument("--dataset", required=True, choices=list(DATASETS))
    record.add_argument("--setting", required=True, choices=list(SETTINGS))
    record.add_argument("--workdir", required=True)
    record.add_argument("--note")
    record.add_argument("--wall-seconds", type=float)
    record.set_defaults(handler=cmd_record)
    table = commands.add_parser("table", help="the table, its JSON and the curves")
    table.add_argument("--datasets", default=",".join(DATASETS))
    table.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "catalogue-study"))
    table.set_defaults(handler=cmd_table)
    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
