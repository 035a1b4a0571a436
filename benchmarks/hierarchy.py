"""The hierarchical VAE against Mult-VAE and EASE on real data, and its ablations.

  python -m benchmarks.hierarchy compare --datasets ml-1m,lastfm,ml-latest-small
      For each data set: every candidate hierarchical configuration trained with the first seed, the one with the
      best validation NDCG@100 kept (test metrics are not looked at), then it and Mult-VAE trained with every seed;
      EASE once (it is deterministic). Reports test metrics as mean and standard deviation over seeds.
  python -m benchmarks.hierarchy ablate
      On ml-1m: levels 1 / 2 / 3, bottom-up vs ladder, standard vs VampPrior, gated vs not; on ml-100k: with and
      without the u.user side features.

Both write JSON and a markdown table under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics

from benchmarks.accuracy import SHARED, run_one

METRICS = ("ndcg@100", "recall@20", "recall@50")

# Candidate hierarchical configurations: label -> ModelConfig fields (over the `hvae` defaults of the CLI).
# 200 pseudo-inputs rather than Kim & Suh's 1000: encoding 1000 pseudo-inputs every update costs twice a batch of
# 500 users, more than this project's 2-core machine could spend on three data sets x three seeds.
VAMP = {"n_pseudo_inputs": 200}
CANDIDATES = {
    "hvamp200-gated": VAMP,
    "bottomup-standard-gated": {"prior": "standard"},
    "ladder-standard": {"prior": "standard", "inference": "ladder", "gated": False, "logvar_clip": None},
}

ABLATIONS = {
    "1 level (Mult-VAE)": ("multvae", {}),
    "2 levels, bottom-up, standard": ("hvae", {"prior": "standard", "gated": False, "logvar_clip": None}),
    "3 levels, bottom-up, standard": (
        "hvae", {"latents": (200, 200, 200), "prior": "standard", "gated": False, "logvar_clip": None}),
    "2 levels, ladder, standard": (
        "hvae", {"inference": "ladder", "prior": "standard", "gated": False, "logvar_clip": None}),
    "2 levels, bottom-up, VampPrior": ("hvae", {"gated": False, **VAMP}),
    "2 levels, bottom-up, standard, gated": ("hvae", {"prior": "standard"}),
    "2 levels, bottom-up, VampPrior, gated (H+Vamp gated)": ("hvae", VAMP),
}


def summary(results: list[dict]) -> dict:
    out = {}
    for part in ("test", "valid"):
        for metric in METRICS:
            values = [r[part][metric] for r in results]
            out[f"{part}_{metric}"] = {
                "mean": statistics.mean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values,
            }
    out["train_seconds"] = statistics.mean(r["train_seconds"] for r in results)
    out["kl_per_level"] = [r.get("kl_per_level") for r in results]
    out["active_units_per_level"] = [r.get("active_units_per_level") for r in results]
    return out


def _cell(entry: dict) -> str:
    return f"{entry['mean']:.4f} ± {entry['sd']:.4f}" if entry["sd"] else f"{entry['mean']:.4f}"


def _ease(dataset: str, seed: int, workroot: pathlib.Path) -> dict:
    """EASE is deterministic and slow on large catalogues: reuse the accuracy table's run when there is one."""
    cached = pathlib.Path("runs/accuracy") / f"{dataset}-ease-seed{seed}" / "results.json"
    if cached.exists():
        return json.loads(cached.read_text())
    return run_one(dataset, "ease", seed, workroot, {}, None)


def compare(args) -> tuple[dict, str]:
    seeds = [int(s) for s in args.seeds.split(",")]
    workroot = pathlib.Path(args.workroot)
    train = json.loads(args.train_overrides)
    report: dict = {"seeds": seeds, "train_overrides": train, "datasets": {}}
    lines = [
        "| data set | model | seeds | test NDCG@100 | test Recall@20 | test Recall@50 | valid NDCG@100 | vs Mult-VAE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset in args.datasets.split(","):
        entry: dict = {"selection": {}}
        for label, fields in CANDIDATES.items():
            result = run_one(dataset, "hvae", seeds[0], workroot, fields, None, train, label)
            entry["selection"][label] = result["valid"]["ndcg@100"]
            print(f"{dataset} candidate {label}: valid ndcg@100 {result['valid']['ndcg@100']:.4f}", flush=True)
        chosen = max(entry["selection"], key=entry["selection"].get)
        entry["chosen"] = chosen
        rows = {
            "multvae": [run_one(dataset, "multvae", s, workroot, {}, None, train) for s in seeds],
            f"hvae ({chosen})": [run_one(dataset, "hvae", s, workroot, CANDIDATES[chosen], None, train, chosen)
                                 for s in seeds],
            "ease": [_ease(dataset, seeds[0], workroot)],
        }
        entry["rows"] = {name: summary(results) for name, results in rows.items()}
        base = entry["rows"]["multvae"]["test_ndcg@100"]["mean"]
        for name, row in entry["rows"].items():
            relative = (row["test_ndcg@100"]["mean"] / base - 1) * 100
            lines.append(
                f"| {dataset} | {name} | {len(row['test_ndcg@100']['values'])} | "
                + " | ".join(_cell(row[f"test_{m}"]) for m in METRICS)
                + f" | {row['valid_ndcg@100']['mean']:.4f} | {relative:+.1f}% |"
            )
            print(lines[-1], flush=True)
        report["datasets"][dataset] = entry
    return report, "\n".join(lines)


def ablate(args) -> tuple[dict, str]:
    workroot = pathlib.Path(args.workroot)
    train = json.loads(args.train_overrides)
    seed = int(args.seeds.split(",")[0])
    report: dict = {"seed": seed, "train_overrides": train, "rows": {}}
    lines = [
        "| data set | configuration | test NDCG@100 | test Recall@20 | valid NDCG@100 | KL per level | active units |",
        "|---|---|---|---|---|---|---|",
    ]

    def add(dataset, label, model, fields, settings=None):
        tag = "ablate-" + "".join(ch if ch.isalnum() else "-" for ch in label)
        result = run_one(dataset, model, seed, workroot, fields, None, train, tag, settings)
        report["rows"][f"{dataset}: {label}"] = result
        kl = ", ".join(f"{v:.1f}" for v in result.get("kl_per_level", []))
        units = ", ".join(str(v) for v in result.get("active_units_per_level", []))
        lines.append(
            f"| {dataset} | {label} | {result['test']['ndcg@100']:.4f} ± {result['test']['ndcg@100_se']:.4f} | "
            f"{result['test']['recall@20']:.4f} | {result['valid']['ndcg@100']:.4f} | {kl} | {units} |"
        )
        print(lines[-1], flush=True)

    for label, (model, fields) in ABLATIONS.items():
        add("ml-1m", label, model, fields)
    features = {"user_features": str(SHARED / "ml-100k" / "u.user")}
    for label, settings in (("2 levels, no side features", None), ("2 levels, u.user side features", features)):
        add("ml-100k", label, "hvae", {"prior": "standard", "gated": False, "logvar_clip": None}, settings)
    return report, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("compare", "ablate"))
    parser.add_argument("--datasets", default="ml-1m,lastfm,ml-latest-small")
    parser.add_argument("--seeds", default="98765,1,2")
    parser.add_argument("--train-overrides", default="{}", help="JSON of TrainConfig fields for every neural model")
    parser.add_argument("--workroot", default="runs/hierarchy")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    report, table = compare(args) if args.command == "compare" else ablate(args)
    report["date"] = datetime.date.today().isoformat()
    out = pathlib.Path(args.out or f"benchmarks/results/hierarchy-{args.command}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
