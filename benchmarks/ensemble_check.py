"""Seeds trained as one vmapped ensemble against the same seeds trained one by one, on a real data set.

Trains seeds 2 and 3 of a recorded (data set, model, setting) of `benchmarks.accuracy` with `run_seeds_together`
(one `fit_ensemble` program) into a scratch directory, and sets each member's validation and test metrics, best
epoch and epochs run beside the record that `run_one` wrote for that seed. Each member draws its seed's keys, so the
two should agree up to float reassociation in the batched matmuls.

  python -m benchmarks.ensemble_check --dataset ml-latest-small --model multvae --tag wd-1e-4
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import tempfile
import time

import benchmarks.accuracy as accuracy

ROOT = pathlib.Path(__file__).resolve().parents[1]
METRICS = ("ndcg@100", "recall@20", "recall@50")


def compare(dataset: str, model: str, tag: str, seeds: tuple[int, ...], scratch: pathlib.Path) -> dict:
    recorded = {}
    for seed in seeds:
        path = accuracy.run_path(dataset, model, tag, seed)
        if not path.exists():
            raise SystemExit(f"{path}: no sequential record to compare with (run benchmarks.accuracy first)")
        recorded[seed] = json.loads(path.read_text())
    start = time.perf_counter()
    # The ensemble's records go to the scratch directory, never over the sequential ones.
    together = accuracy.run_seeds_together(dataset, model, tag, seeds, force=True, root=scratch)
    wall = time.perf_counter() - start
    members = []
    for record in together:
        alone = recorded[record["seed"]]["results"]
        metrics = {f"{part} {metric}": {"ensemble": record["results"][part][metric], "alone": alone[part][metric]}
                   for part in ("valid", "test") for metric in METRICS}
        members.append({
            "seed": record["seed"], **metrics,
            **{key: {"ensemble": record["results"][key], "alone": alone[key]} for key in ("best_epoch", "epochs")},
            "largest metric difference": max(abs(pair["ensemble"] - pair["alone"]) for pair in metrics.values()),
        })
    return {
        "dataset": dataset, "model": model, "tag": tag, "seeds": list(seeds),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "ensemble_wall_seconds": wall,
        "alone_wall_seconds": sum(recorded[seed]["wall_seconds"] for seed in seeds),
        "note": "wall times are from different sessions and loads; the comparison is the metrics",
        "members": members,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-latest-small", choices=list(accuracy.DATASETS))
    parser.add_argument("--model", default="multvae")
    parser.add_argument("--tag", default="wd-1e-4")
    parser.add_argument("--seeds", default="2,3")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/ensemble-check-<dataset>.json)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        result = compare(args.dataset, args.model, args.tag, tuple(int(s) for s in args.seeds.split(",")),
                         pathlib.Path(scratch))
    out = pathlib.Path(args.out or ROOT / "benchmarks" / "results" / f"ensemble-check-{args.dataset}.json")
    out.write_text(json.dumps(result, indent=1))
    for row in result["members"]:
        print(f"seed {row['seed']}: test NDCG@100 ensemble {row['test ndcg@100']['ensemble']:.4f} alone "
              f"{row['test ndcg@100']['alone']:.4f}; best epoch {row['best_epoch']['ensemble']} / "
              f"{row['best_epoch']['alone']}; largest metric difference {row['largest metric difference']:.2e}")
    print(f"ensemble {result['ensemble_wall_seconds']:.0f} s; {out}")


if __name__ == "__main__":
    main()
