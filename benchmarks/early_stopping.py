"""What an early-stopping rule would have cost on every recorded learning curve, without training anything.

  python -m benchmarks.early_stopping                      # Mult-VAE and Mult-DAE records, the rules below
  python -m benchmarks.early_stopping --models multvae,multdae,hvae --updates 500,1500

Each record under `benchmarks/results/runs/` (and the amazon-book record of the default Mult-VAE) keeps its
validation NDCG@100 per epoch. A rule "stop after P validated epochs without a better one" is replayed on that
curve: where it would have stopped, and the best validation it would have kept as a fraction of the best the
recorded run reached. Patience in updates becomes ceil(updates / updates per epoch) epochs (as `fit` converts it),
the updates per epoch being ceil(training users / batch size), the training users those of the record's split
(rebuilt from its settings, which is deterministic, or read from the split summary it stores). Patience counts
epochs since the best one, as `fit`'s rule does, so a curve validated every few epochs replays right too. A rule
that does not stop within the recorded epochs keeps everything recorded; the run may have been cut by its own,
shorter rule, so "kept 1.0" means "no loss within what was recorded".
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pathlib
import statistics

from hvae_jax.train import epochs_covering

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXTRA_RECORDS = (RESULTS / "amazon-book-given-multvae-default.json",)


def validation_curve(history: list[dict]) -> list[tuple[int, float]]:
    """(epoch, validation NDCG@100) of every validated epoch, in order."""
    return [(row["epoch"], row["valid_ndcg@100"]) for row in history if row.get("valid_ndcg@100") is not None]


def replay(curve: list[tuple[int, float]], patience: int) -> dict:
    """Where "stop once `patience` epochs have passed since the best validation" stops on `curve` (checked at the
    validated epochs), and what it keeps."""
    best, best_epoch, stop, stopped = -math.inf, None, curve[-1][0], False
    for epoch, value in curve:
        if value > best:
            best, best_epoch = value, epoch
        elif epoch - best_epoch >= patience:
            stop, stopped = epoch, True
            break
    overall = max(value for _, value in curve)
    return {"stop_epoch": stop, "stopped": stopped, "kept_epoch": best_epoch,
            "kept_fraction_of_best": best / overall, "epochs_recorded": curve[-1][0]}


@functools.cache
def _training_users_of(settings_json: str) -> int:
    from hvae_jax.experiment import RunSettings, prepare_split

    split, _ = prepare_split(RunSettings(**json.loads(settings_json)), log=lambda message: None)
    return split.train.shape[0]


def updates_per_epoch(record: dict) -> int | None:
    """ceil(training users / batch size) of the record's run (None when the record cannot say)."""
    train = record.get("train_config") or record.get("config", {}).get("train", {})
    users = record["results"].get("split", {}).get("train", {}).get("users")
    if users is None and record.get("settings"):
        users = _training_users_of(json.dumps(record["settings"], sort_keys=True))
    if users is None or not train.get("batch_size"):
        return None
    return epochs_covering(users, train["batch_size"])  # batches of the training users


def records(models: set[str]) -> list[tuple[str, dict]]:
    found = []
    for path in sorted((RESULTS / "runs").glob("*/*.json")) + [p for p in EXTRA_RECORDS if p.exists()]:
        record = json.loads(path.read_text())
        model = record.get("model") or record.get("results", {}).get("model")
        if model in models and len(validation_curve(record.get("history") or [])) >= 2:
            found.append((str(path.relative_to(RESULTS)), record))
    return found


def study(models: set[str], epoch_rules: list[int], update_rules: list[int]) -> dict:
    rows = []
    for name, record in records(models):
        curve = validation_curve(record["history"])
        steps = updates_per_epoch(record)
        row = {"record": name, "updates_per_epoch": steps, "best_epoch": max(curve, key=lambda c: c[1])[0],
               "epochs_recorded": curve[-1][0], "rules": {}}
        for patience in epoch_rules:
            row["rules"][f"{patience} epochs"] = replay(curve, patience)
        for updates in update_rules:
            if steps is not None:
                row["rules"][f"{updates} updates"] = replay(curve, epochs_covering(updates, steps))
        rows.append(row)
    summary = {}
    for rule in [f"{p} epochs" for p in epoch_rules] + [f"{u} updates" for u in update_rules]:
        outcomes = [row["rules"][rule] for row in rows if rule in row["rules"]]
        kept = [outcome["kept_fraction_of_best"] for outcome in outcomes]
        if outcomes:
            summary[rule] = {"records": len(kept), "worst_kept": min(kept), "median_kept": statistics.median(kept),
                             "below_0.99": sum(k < 0.99 for k in kept),
                             "epochs_saved_total": sum(o["epochs_recorded"] - o["stop_epoch"] for o in outcomes)}
    return {"models": sorted(models), "rows": rows, "summary": summary}


def markdown(result: dict) -> str:
    rules = list(result["summary"])
    lines = ["| record | updates/epoch | best epoch | " + " | ".join(rules) + " |",
             "|---|---:|---:|" + "---:|" * len(rules)]
    for row in result["rows"]:
        cells = []
        for rule in rules:
            outcome = row["rules"].get(rule)
            cells.append("-" if outcome is None else
                         f"{outcome['kept_fraction_of_best']:.3f} @{outcome['stop_epoch']}")
        lines.append(f"| {row['record']} | {row['updates_per_epoch']} | {row['best_epoch']} | " + " | ".join(cells)
                     + " |")
    lines.append("| **worst kept (records below 0.99)** | | | " + " | ".join(
        f"{result['summary'][r]['worst_kept']:.3f} ({result['summary'][r]['below_0.99']})" for r in rules) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="multvae,multdae")
    parser.add_argument("--epochs", default="10,20,40", help="patience rules in validated epochs")
    parser.add_argument("--updates", default="500,1000,1500,3000", help="patience rules in updates")
    parser.add_argument("--out", default=str(RESULTS / "early-stopping-replay"), help="path without suffix")
    args = parser.parse_args(argv)
    ints = lambda text: [int(v) for v in text.split(",") if v]
    result = study(set(args.models.split(",")), ints(args.epochs), ints(args.updates))
    pathlib.Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    pathlib.Path(args.out + ".md").write_text(markdown(result))
    for rule, summary in result["summary"].items():
        print(f"{rule:>13}: worst kept {summary['worst_kept']:.4f}, median {summary['median_kept']:.4f}, "
              f"{summary['below_0.99']} of {summary['records']} records below 0.99, "
              f"{summary['epochs_saved_total']} epochs saved")
    print(f"wrote {args.out}.json and .md")
    return result


if __name__ == "__main__":
    main()
