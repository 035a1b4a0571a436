"""Accuracy tables on the real data sets in ../shared/data: every model through `hvae_jax.experiment.run` on the same
strong-generalization split, test NDCG@100 / Recall@20 / Recall@50 with standard errors, written as JSON and markdown.

  python -m benchmarks.accuracy --datasets ml-1m,ml-100k,lastfm --models multvae,multdae,ease,popularity
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics

from hvae_jax.cli import MODEL_NAMES
from hvae_jax.configs import ModelConfig, TrainConfig
from hvae_jax.experiment import RunSettings, run

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Data sets of ../shared/data with the protocol settings the issues ask for.
DATASETS = {
    "ml-1m": dict(data=str(SHARED / "ml-1m-implicit"), format="adjacency", heldout_users=600),
    "ml-100k": dict(data=str(SHARED / "ml-100k"), format="movielens-tsv", min_rating=3.5),
    "lastfm": dict(data=str(SHARED / "lastfm-hetrec2011"), format="lastfm"),
    "ml-latest-small": dict(data=str(SHARED / "ml-latest-small"), format="csv", min_rating=3.5),
}

TRAIN = {
    "multvae": dict(epochs=100, batch_size=500, learning_rate=1e-3, beta_cap=0.2),
    "multdae": dict(epochs=100, batch_size=500, learning_rate=1e-3, weight_decay=0.01 / 500),
    "hvae": dict(epochs=100, batch_size=500, learning_rate=1e-3, beta_cap=0.2),
}

METRICS = ("ndcg@100", "recall@20", "recall@50")


def run_one(
    dataset: str, model: str, seed: int, workroot: pathlib.Path, model_overrides: dict, epochs: int | None,
    train_overrides: dict | None = None, label: str | None = None, settings_overrides: dict | None = None,
):
    workdir = workroot / f"{dataset}-{label or model}-seed{seed}"
    settings = RunSettings(**{**DATASETS[dataset], **(settings_overrides or {})}, workdir=str(workdir))
    model_fields = {**MODEL_NAMES[model], **model_overrides}
    train_fields = {**TRAIN.get(model, {}), **(train_overrides or {}), "seed": seed}
    if epochs is not None:
        train_fields["epochs"] = epochs
    return run(settings, ModelConfig(**model_fields), TrainConfig(**train_fields), progress=False, log=lambda m: None)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| data set | model | seeds | test NDCG@100 | test Recall@20 | test Recall@50 | valid NDCG@100 | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = []
        for metric in METRICS:
            values = row["test"][metric]
            if len(values) > 1:
                cells.append(f"{statistics.mean(values):.4f} (sd {statistics.stdev(values):.4f} over seeds)")
            else:
                cells.append(f"{values[0]:.4f} ± {row['test_se'][metric][0]:.4f}")
        valid = row["valid"]["ndcg@100"]
        lines.append(
            f"| {row['dataset']} | {row['label']} | {len(valid)} | " + " | ".join(cells)
            + f" | {statistics.mean(valid):.4f} | {statistics.mean(row['train_seconds']):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-1m,ml-100k,lastfm")
    parser.add_argument("--models", default="multvae,multdae,ease,popularity")
    parser.add_argument("--seeds", default="98765", help="comma-separated training seeds (the split seed stays 98765)")
    parser.add_argument("--epochs", type=int, help="override the epochs of every neural model")
    parser.add_argument("--model-overrides", default="{}", help='JSON of ModelConfig fields, e.g. {"latents": [200, 64]}')
    parser.add_argument("--train-overrides", default="{}", help='JSON of TrainConfig fields, e.g. {"epochs": 200}')
    parser.add_argument("--settings-overrides", default="{}", help='JSON of RunSettings fields, e.g. {"user_features": "..."}')
    parser.add_argument("--label", help="row label (default: the model name)")
    parser.add_argument("--workroot", default="runs/accuracy")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/accuracy-<date>.json)")
    args = parser.parse_args()
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.model_overrides).items()}
    train_overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.train_overrides).items()}
    settings_overrides = json.loads(args.settings_overrides)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for dataset in args.datasets.split(","):
        for model in args.models.split(","):
            row = {"dataset": dataset, "model": model, "label": args.label or model, "overrides": overrides,
                   "train_overrides": train_overrides, "settings_overrides": settings_overrides,
                   "test": {m: [] for m in METRICS}, "test_se": {m: [] for m in METRICS},
                   "valid": {m: [] for m in METRICS}, "train_seconds": [], "results": []}
            for seed in seeds:
                results = run_one(dataset, model, seed, pathlib.Path(args.workroot), overrides, args.epochs,
                                  train_overrides, args.label, settings_overrides)
                for metric in METRICS:
                    row["test"][metric].append(results["test"][metric])
                    row["test_se"][metric].append(results["test"][metric + "_se"])
                    row["valid"][metric].append(results["valid"][metric])
                row["train_seconds"].append(results["train_seconds"])
                row["results"].append(results)
                print(f"{dataset} {row['label']} seed {seed}: test ndcg@100 {results['test']['ndcg@100']:.4f} "
                      f"valid {results['valid']['ndcg@100']:.4f} ({results['train_seconds']:.0f} s)", flush=True)
            rows.append(row)
    out = pathlib.Path(args.out or f"benchmarks/results/accuracy-{datetime.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "rows": rows}, indent=2))
    table = markdown(rows)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
