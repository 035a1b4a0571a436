"""Does compiling validation in a thread during the first epoch (`hooks.Validation.before_training`) shorten a run?
Short `fit` runs of Mult-VAE on ml-1m-implicit (the end-to-end benchmark's model and split), each in a fresh process
so that every run compiles, with the warm-up on and off, alternated pair by pair (the order flipped every second
pair); wall seconds, the phases, and the pair ratios, as JSON:

  python -m benchmarks.warm_up_ab --pairs 8 --epochs 3 --out benchmarks/results/warm-up-ab-cpu-2core.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.throughput import RESULTS_DIR, library_revision, write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]


def one_run(mode: str, epochs: int) -> dict:
    """`--run MODE`: one fit in this process; returns its wall seconds and phases."""
    from benchmarks.end_to_end import DATA, _configs, load_ml1m_split
    from hvae_jax import hooks
    from hvae_jax.train import fit

    split = load_ml1m_split(DATA, pathlib.Path(tempfile.mkdtemp(prefix="hvae-warm-up-")) / "split", 98765, 600)
    if mode == "cold":
        hooks.Validation.before_training = lambda self, loop: None
    model_config, train = _configs(argparse.Namespace(epochs=epochs, seed=98765))
    start = time.perf_counter()
    fitted = fit(model_config, train, split, pathlib.Path(tempfile.mkdtemp(prefix="hvae-warm-up-")), progress=False,
                 log=lambda message: None)
    return {"mode": mode, "wall_seconds": time.perf_counter() - start, "phases": fitted.seconds_by_phase,
            "last_valid_ndcg@100": fitted.history[-1]["valid"]["ndcg@100"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS_DIR / "warm-up-ab-cpu-2core.json")
    parser.add_argument("--run", choices=("warm", "cold"), help=argparse.SUPPRESS)  # internal: one run
    args = parser.parse_args(argv)
    if args.run:
        print("RESULT " + json.dumps(one_run(args.run, args.epochs)), flush=True)
        return {}

    def run(mode: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "benchmarks.warm_up_ab", "--run", mode, "--epochs",
                               str(args.epochs)], capture_output=True, text=True, cwd=ROOT, check=True)
        return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])

    pairs = []
    for index in range(args.pairs):
        order = ("warm", "cold") if index % 2 == 0 else ("cold", "warm")
        runs = {mode: run(mode) for mode in order}
        pairs.append(runs)
        print(f"pair {index + 1}: warm {runs['warm']['wall_seconds']:.2f} s, cold {runs['cold']['wall_seconds']:.2f} s",
              flush=True)
    ratios = [pair["warm"]["wall_seconds"] / pair["cold"]["wall_seconds"] for pair in pairs]
    summary = {mode: statistics.median(pair[mode]["wall_seconds"] for pair in pairs) for mode in ("warm", "cold")}
    results = {
        "date": datetime.date.today().isoformat(), "load_average_at_start": list(os.getloadavg()),
        "library_revision": library_revision(), "epochs": args.epochs,
        "median_wall_seconds": summary, "warm_over_cold_ratios": ratios,
        "median_ratio": statistics.median(ratios), "pairs": pairs,
    }
    write_results(args.out, results)
    print(f"median wall: warm {summary['warm']:.2f} s, cold {summary['cold']:.2f} s; "
          f"median pair ratio {statistics.median(ratios):.3f}; wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
