"""Which hierarchical VAE generalises on small data: candidate regularisations of the two-level model, each trained
on ml-1m with the selection seed and compared on validation NDCG@100 only; the best became `--model hvae`'s
default (now `--model hvae-recvae`: benchmarks/accuracy.py's wider grid chose another). Records go to
benchmarks/results/runs/<data set>/hvae--<candidate>--seed<seed>.json like every accuracy run.

  python -m benchmarks.hierarchy ablate --datasets ml-1m [--candidates name,...]
  python -m benchmarks.hierarchy table --datasets ml-1m --out benchmarks/results/hierarchy-ablation
  python -m benchmarks.hierarchy curves --datasets ml-1m     # benchmarks/results/curves-ml-1m.png
"""

from __future__ import annotations

import argparse
import json
import pathlib

from benchmarks.accuracy import LIBRARY_DEFAULTS, RECVAE_STYLE, RECVAE_STYLE_TRAIN, ROOT, SEEDS, run_one, run_path

# The candidates are written over the two-level gated VampPrior model that `--model hvae` was before this ablation
# (its train settings: the library's defaults, Liang's annealing), so that each record stays reproducible.
VAMP_GATED = dict(latents=(200, 200), hidden=600, encoder="mlp", encoder_layers=1, decoder_layers=1, prior="vamp",
                  gated=True, logvar_clip=(-12.0, 4.0), init="glorot")
JOINT = dict(LIBRARY_DEFAULTS, schedule="joint", kl_weight_per_item=0.0, learning_rate=1e-3, eval_every=1)
AVERAGE = dict(JOINT, learning_rate=3e-3, average_decay=0.998)
# Two levels in the RecVAE style: densely connected encoder, composite prior on the top level, a linear decoder
# from both levels, beta_u = gamma |x_u|, alternating encoder and decoder epochs.
# (benchmarks/accuracy.py's RecVAE-style base, with the fields that undo VAMP_GATED's.)
RECVAE_TWO_LEVELS = dict(RECVAE_STYLE, latents=(200, 200), gated=False, logvar_clip=None)

# candidate -> (model fields over the `hvae` named model, train fields over its train settings); the winner,
# recvae-2level, is `--model hvae-recvae` (and was `--model hvae` until the accuracy grid's `mv-2level` replaced it,
# itself replaced by `mv-2level-composite`). Every candidate names its prior, whatever `hvae`'s default becomes.
CANDIDATES: dict[str, tuple[dict, dict]] = {
    "vamp-gated": (VAMP_GATED, JOINT),
    "vamp-gated-avg": (VAMP_GATED, AVERAGE),
    "standard-gated-avg": (dict(VAMP_GATED, prior="standard"), AVERAGE),
    "vamp-gated-avg-beta0.4": (VAMP_GATED, dict(AVERAGE, beta_cap=0.4)),
    "recvae-2level": (RECVAE_TWO_LEVELS, RECVAE_STYLE_TRAIN),
    "recvae-2level-avg": (RECVAE_TWO_LEVELS, dict(RECVAE_STYLE_TRAIN, average_decay=0.998)),
}


def cmd_ablate(args) -> None:
    names = args.candidates.split(",") if args.candidates else list(CANDIDATES)
    for dataset in args.datasets.split(","):
        for name in names:
            record = run_one(dataset, "hvae", name, SEEDS[0], pathlib.Path(args.workroot),
                             overrides=CANDIDATES[name])
            result = record["results"]
            print(f"{dataset} hvae {name}: valid {result['valid']['ndcg@100']:.4f} (test "
                  f"{result['test']['ndcg@100']:.4f}) best epoch {result.get('best_epoch')} of {result.get('epochs')} "
                  f"KL {result.get('kl_per_level')} active {result.get('active_units_per_level')} "
                  f"({record['wall_seconds']:.0f} s)", flush=True)


def cmd_table(args) -> None:
    lines = ["| data set | candidate | valid NDCG@100 | test NDCG@100 | best epoch / run | KL per level | active units |",
             "|---|---|---|---|---|---|---|"]
    rows = []
    for dataset in args.datasets.split(","):
        for name in CANDIDATES:
            path = run_path(dataset, "hvae", name, SEEDS[0])
            if not path.exists():
                continue
            record = json.loads(path.read_text())
            result = record["results"]
            rows.append({"dataset": dataset, "candidate": name, "overrides": CANDIDATES[name],
                         "valid": result["valid"]["ndcg@100"], "test": result["test"]["ndcg@100"],
                         "best_epoch": result.get("best_epoch"), "epochs": result.get("epochs"),
                         "kl_per_level": result.get("kl_per_level"),
                         "active_units": result.get("active_units_per_level")})
            kl = ", ".join(f"{v:.1f}" for v in result.get("kl_per_level") or [])
            lines.append(f"| {dataset} | {name} | {rows[-1]['valid']:.4f} | {rows[-1]['test']:.4f} | "
                         f"{rows[-1]['best_epoch']} / {rows[-1]['epochs']} | {kl} | {rows[-1]['active_units']} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = pathlib.Path(args.out)
        out.with_suffix(".json").write_text(json.dumps({"seed": SEEDS[0], "rows": rows}, indent=1))
        out.with_suffix(".md").write_text(table + "\n")


def cmd_curves(args) -> None:
    """Learning curves of recorded runs, one PNG per data set: validation NDCG@100, training NLL and KL per level
    against the epoch (what explains a hierarchy that wins or loses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.accuracy import RUNS

    for dataset in args.datasets.split(","):
        paths = sorted((RUNS / dataset).glob(f"*--seed{SEEDS[0]}.json"))
        records = [json.loads(path.read_text()) for path in paths]
        records = [r for r in records if r["model"] not in ("ease", "popularity") and
                   (not args.runs or f"{r['model']}--{r['tag']}" in args.runs.split(","))]
        if not records:
            print(f"{dataset}: no neural runs recorded")
            continue
        figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
        for index, record in enumerate(records):
            color = f"C{index}"
            label = f"{record['model']} ({record['tag']})"
            history = record["history"]
            validated = [row for row in history if row.get("valid_ndcg@100") is not None]
            axes[0].plot([row["epoch"] for row in validated], [row["valid_ndcg@100"] for row in validated],
                         label=label, color=color)
            axes[1].plot([row["epoch"] for row in history], [row["nll"] for row in history], label=label, color=color)
            for level in range(len(history[0].get("kl") or [])):
                axes[2].plot([row["epoch"] for row in history], [row["kl"][level] for row in history], color=color,
                             linestyle=("-", "--", ":")[level % 3], label=f"{label} level {level + 1}")
        for axis, title in zip(axes, ("validation NDCG@100", "training NLL (per user, with dropout)",
                                      "KL per level (nats per user)")):
            axis.set_title(title)
            axis.set_xlabel("epoch")
            axis.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        axes[2].legend(fontsize=6)
        figure.suptitle(f"{dataset}, training seed {SEEDS[0]} (benchmarks/results/runs/{dataset}/)")
        figure.tight_layout()
        out = pathlib.Path(args.out_dir) / f"curves-{dataset}.png"
        figure.savefig(out, dpi=110)
        plt.close(figure)
        print(f"wrote {out} ({len(records)} runs)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ablate = commands.add_parser("ablate")
    ablate.add_argument("--datasets", default="ml-1m")
    ablate.add_argument("--candidates")
    ablate.add_argument("--workroot", default=str(ROOT / "runs" / "accuracy"))
    ablate.set_defaults(handler=cmd_ablate)
    table = commands.add_parser("table")
    table.add_argument("--datasets", default="ml-1m")
    table.add_argument("--out")
    table.set_defaults(handler=cmd_table)
    curves = commands.add_parser("curves")
    curves.add_argument("--datasets", default="ml-1m")
    curves.add_argument("--runs", help="model--tag,... (default: every neural run of the selection seed)")
    curves.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    curves.set_defaults(handler=cmd_curves)
    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
