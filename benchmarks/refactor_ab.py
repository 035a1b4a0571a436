"""Did the refactor cost speed? The throughput suite's JAX Mult-VAE rows measured with two versions of the code in
the same session, alternated A, B, A, B, ... so that the machine's drift hits both alike; medians and pair-by-pair
ratios, as JSON:

  git worktree add /tmp/pre 62ce15e; git worktree add /tmp/post 6c220df
  python -m benchmarks.refactor_ab --pre /tmp/pre --post /tmp/post \
      --out benchmarks/results/refactor-throughput-cpu-2core.json

A is the refactored library (`--post`; default this checkout's hvae_jax/), B the library before the refactor
(`--pre`), each copied to a scratch directory first so that edits during the run change nothing. For each
configuration one long-lived process per version (benchmarks/ab_server.py, run with PYTHONPATH set to that
version) loads the same data file, builds the step the throughput worker times (training: one jitted chunk of
updates; evaluation: the whole `evaluate` call) with that version's API, compiles it and warms it up; then the
driver asks them in turn for one timed repetition each, A, B, A, B, ..., a second or so apart. Each pair gives a
ratio A / B; the medians of the rates and of the ratios are reported, with the spread.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile

from benchmarks import runners
from benchmarks.synthetic_shapes import SHAPES, make_shape, split_heldout
from benchmarks.throughput import (
    USERS_PER_REPEAT,
    library_revision,
    snapshot_code,
    source_digest,
    write_results,
)

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
BASELINE = RESULTS_DIR / "cpu-2core-2026-11-27.json"


class Server:
    """One version's measuring process (benchmarks/ab_server.py)."""

    def __init__(self, code: pathlib.Path, server: pathlib.Path, spec: dict, timeout: float):
        env = dict(os.environ, PYTHONPATH=str(code), XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="2")
        self.process = subprocess.Popen([sys.executable, str(server), json.dumps(spec)], cwd=code, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.timeout = timeout
        self.info = json.loads(self._expect("READY "))

    def _expect(self, prefix: str) -> str:
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the measuring process ended: {self.process.stderr.read()[-800:]}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def run(self) -> float:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return float(self._expect("SECONDS "))

    def close(self) -> None:
        try:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()


def baseline_rate(shape: str, phase: str, batch_size: int) -> float | None:
    """users/s of JAX in the committed table measured before the refactor (another day, another load)."""
    if not BASELINE.exists():
        return None
    for run in json.loads(BASELINE.read_text())["runs"]:
        if (run["framework"], run["model"], run["shape"], run["phase"], run["batch_size"]) == (
                "jax", "multvae", shape, phase, batch_size):
            return run["users_per_second"]
    return None


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return " ".join(f"{load:.2f}" for load in os.getloadavg())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pre", type=pathlib.Path, default=pathlib.Path("/tmp/pre"),
                        help="a checkout of the code before the refactor (git worktree add /tmp/pre 62ce15e)")
    parser.add_argument("--post", type=pathlib.Path,
                        help="a checkout of the refactored library (default: this checkout's hvae_jax/)")
    parser.add_argument("--rounds", type=int, default=40, help="A/B pairs of timed repetitions per configuration")
    parser.add_argument("--order", choices=("ab", "abba"), default="ab",
                        help="ab: A then B in every pair; abba: the order flips every pair (A B, B A, ...)")
    parser.add_argument("--shapes", default="ml-20m,ml-1m")
    parser.add_argument("--phases", default="train,eval")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--users-per-repeat", type=int, help="default: the CPU suite's per shape and phase")
    parser.add_argument("--worker-timeout", type=float, default=600.0)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS_DIR / "refactor-throughput-cpu-2core.json")
    args = parser.parse_args(argv)
    log = lambda message: print(message, file=sys.stderr, flush=True)
    pre = args.pre.resolve()
    if not (pre / "hvae_jax").is_dir():
        raise SystemExit(f"{pre} holds no hvae_jax/: git worktree add {pre} 62ce15e")
    pre_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=pre, capture_output=True, text=True).stdout.strip()

    results = {
        "what": "JAX Mult-VAE throughput (the throughput suite's timed step) of the refactored library (A) against "
                "the library before the refactor (B), same session, same data files, single repetitions of A and "
                "B alternated",
        "date": datetime.date.today().isoformat(),
        "command": "python -m benchmarks.refactor_ab " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu_count": runners.cpu_count(),
        "a": {"label": "refactored", **library_revision()},
        "b": {"label": "pre-refactor", "commit": pre_commit, "path": str(pre)},
        "uptime_at_start": uptime(),
        "baseline_table": str(BASELINE.relative_to(RESULTS_DIR.parents[1])),
        "notes": [
            "each configuration: one measuring process per version, built, compiled and warmed up (2 "
            "repetitions), then single timed repetitions alternated A, B, A, B, ...; users_per_second of a "
            "repetition = users in it / its wall seconds",
            "ratio = A / B of each pair (timed one right after the other, in the pair's `order`); summaries quote "
            "the median over pairs, the quartiles and the min and max",
            "baseline_table_users_per_second: the committed table's JAX figure (2026-11-27, an idle machine); "
            "absolute figures today depend on the load, which other workers' tests and training share",
        ],
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="hvae-ab-") as scratch:
        scratch = pathlib.Path(scratch)
        code_a = snapshot_code(scratch / "code")
        server_a = code_a / "benchmarks" / "ab_server.py"
        code_b = scratch / "pre"
        shutil.copytree(pre / "hvae_jax", code_b / "hvae_jax", ignore=shutil.ignore_patterns("__pycache__"))
        server_b = code_b / "ab_server.py"
        shutil.copy(server_a, server_b)
        if args.post is not None:
            post = args.post.resolve()
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            for package in ("hvae_jax", "benchmarks/torch_reference"):
                shutil.rmtree(code_a / package)
                shutil.copytree(post / package, code_a / package, ignore=ignore)
            results["a"].update(commit=subprocess.run(["git", "rev-parse", "HEAD"], cwd=post, capture_output=True,
                                                      text=True).stdout.strip(), path=str(post),
                                hvae_jax_uncommitted_changes=bool(subprocess.run(
                                    ["git", "status", "--porcelain", "--", "hvae_jax"], cwd=post, capture_output=True,
                                    text=True).stdout.strip()))
        results["a"]["hvae_jax_source_sha256"] = source_digest(code_a)
        results["b"]["hvae_jax_source_sha256"] = source_digest(code_b)
        data = {}
        for seed, name in enumerate(args.shapes.split(",")):
            shape = SHAPES[name]
            train = make_shape(shape, seed=2 * seed)
            fold_in, heldout = split_heldout(make_shape(shape, seed=2 * seed + 1, n_users=4000), seed=seed)
            paths = {"train": str(scratch / f"{name}-train.npz"), "eval": str(scratch / f"{name}-eval.npz")}
            runners.save_csr(paths["train"], train=train)
            runners.save_csr(paths["eval"], fold_in=fold_in, heldout=heldout)
            data[name] = paths
            log(f"{name}: {train.shape[0]} x {train.shape[1]}, {train.nnz / train.shape[0]:.1f} per user")
        for phase in args.phases.split(","):
            for shape in args.shapes.split(","):
                users = args.users_per_repeat or USERS_PER_REPEAT[("cpu", phase)][shape]
                updates = max(1, -(-users // args.batch_size))
                spec = dict(shape=shape, batch_size=args.batch_size, phase=phase, updates=updates,
                            train_path=data[shape]["train"], eval_path=data[shape]["eval"], warmup=2)
                row = {"model": "multvae", "shape": shape, "batch_size": args.batch_size, "phase": phase,
                       "updates_per_repeat": updates, "rounds": [],
                       "baseline_table_users_per_second": baseline_rate(shape, phase, args.batch_size)}
                servers = {"a": Server(code_a, server_a, spec, args.worker_timeout),
                           "b": Server(code_b, server_b, spec, args.worker_timeout)}
                for side, server in servers.items():
                    row[f"{side}_info"] = server.info
                users_per_repeat = servers["a"].info["users_per_repeat"]
                for round_index in range(args.rounds):
                    pair = {"load_average": os.getloadavg()[0]}
                    sides = ("b", "a") if args.order == "abba" and round_index % 2 else ("a", "b")
                    pair["order"] = "".join(sides)
                    for side in sides:
                        pair[side] = users_per_repeat / servers[side].run()
                    pair["ratio_a_over_b"] = pair["a"] / pair["b"]
                    row["rounds"].append(pair)
                    if (round_index + 1) % 10 == 0 or round_index + 1 == args.rounds:
                        summarize(row)
                        log(f"{phase} {shape} {round_index + 1} pairs: A {row['a_median_users_per_second']:,.0f} / "
                            f"B {row['b_median_users_per_second']:,.0f} users/s, ratio median "
                            f"{row['ratio_median']:.3f} ({row['ratio_q1']:.3f}-{row['ratio_q3']:.3f}), load "
                            f"{pair['load_average']:.1f}")
                        write_results(args.out, {**results, "rows": results["rows"] + [row]})
                for server in servers.values():
                    server.close()
                results["rows"].append(row)
    results["uptime_at_end"] = uptime()
    write_results(args.out, results)
    log(f"wrote {args.out}")
    print(table(results))
    return results


def summarize(row: dict) -> None:
    import numpy as np

    for side in ("a", "b"):
        rates = [pair[side] for pair in row["rounds"]]
        row[f"{side}_median_users_per_second"] = statistics.median(rates)
        row[f"{side}_min_max_users_per_second"] = [min(rates), max(rates)]
        row[f"{side}_compile_seconds"] = row[f"{side}_info"]["compile_seconds"]
    ratios = [pair["ratio_a_over_b"] for pair in row["rounds"]]
    row["ratio_median"] = statistics.median(ratios)
    row["ratio_q1"], row["ratio_q3"] = (float(q) for q in np.percentile(ratios, [25, 75]))
    row["ratio_min"], row["ratio_max"] = min(ratios), max(ratios)
    row["median_rate_ratio"] = row["a_median_users_per_second"] / row["b_median_users_per_second"]
    row["pairs"] = len(ratios)


def table(results: dict) -> str:
    lines = ["| shape | batch | phase | refactored users/s | pre-refactor users/s | ratio A/B median (quartiles) | "
             "pairs | compile s (A / B) | committed table users/s |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        base = row.get("baseline_table_users_per_second")
        lines.append(
            f"| {row['shape']} | {row['batch_size']} | {row['phase']} | {row['a_median_users_per_second']:,.0f} | "
            f"{row['b_median_users_per_second']:,.0f} | {row['ratio_median']:.3f} ({row['ratio_q1']:.3f}-"
            f"{row['ratio_q3']:.3f}) | {row['pairs']} | {row['a_compile_seconds']:.1f} / {row['b_compile_seconds']:.1f}"
            f" | {'-' if base is None else f'{base:,.0f}'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
