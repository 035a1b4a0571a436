"""Reading an ML-20M-shaped ratings.csv: pandas against hvae_jax's reader, time and peak memory, written to JSON.

  python -m benchmarks.readers                      # generate the file in a temporary folder, 3 runs of each case
  python -m benchmarks.readers --engines            # also the bare engines (pyarrow, polars) behind the choice
  python -m benchmarks.readers --keep /tmp/r.csv    # keep the generated file; --csv /tmp/r.csv reuses it

The file is synthetic (seeded) and shaped like MovieLens 20M's ratings.csv: 20,000,263 rows `userId,movieId,rating,
timestamp` from 138,493 users (each with 20 to 9,254 distinct items, heavy-tailed) on 26,744 items (Zipf-like
popularity, ids spread over 1..131262), ratings 0.5..5 in halves with ML-20M's shares, sorted by user; about 536 MB.
It is written to a temporary folder and deleted afterwards: it never belongs in the repository.

Each run of a case is a fresh Python process, which reports the seconds of the work itself (imports excluded, for
every case alike) and its own peak resident memory, `resource.getrusage(RUSAGE_SELF).ru_maxrss`, imports included
(checked against /proc's VmHWM; the file is generated in another child, since a child's ru_maxrss starts at its
parent's size):
  pandas:          `pandas.read_csv(path)` and keep rating > 3.5 (the baseline);
  read:            `read_interactions(path, min_rating=3.5)`;
  read_and_split:  the same, then `strong_generalization(interactions, n_heldout_users=10000)`;
  with --engines:  pyarrow's dataset scanner and polars' lazy scanner reading user and item ids as text and rating >
                   3.5, nothing else (what hvae_jax's choice of engine rests on; polars is needed only for this).
Runs go round the cases in turn, so that a change in the machine's load falls on all of them. The JSON holds every
run, the medians and the ratios of the medians to pandas'.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

N_ROWS, N_USERS, N_ITEMS = 20_000_263, 138_493, 26_744
MIN_PER_USER, MAX_PER_USER = 20, 9_254  # ML-20M's least and most active users
MAX_MOVIE_ID = 131_262
RATINGS = np.arange(1, 11) / 2
# Share of each rating 0.5, 1, ..., 5 in ML-20M (percent, rounded); about half the rows are above 3.5.
RATING_SHARES = np.array([1.2, 3.3, 1.4, 7.2, 4.4, 21.4, 11.0, 27.8, 7.7, 14.6])
ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "readers-cpu-2core.json"

# Each case: (imports, work); the child times only the work.
CASES = {
    "pandas": ("import pandas", """
frame = pandas.read_csv(PATH)
frame = frame[frame["rating"] > 3.5]
result = len(frame)
"""),
    "read": ("from hvae_jax.data.readers import read_interactions", """
interactions = read_interactions(PATH, min_rating=3.5)
result = (len(interactions), interactions.n_users, interactions.n_items)
"""),
    "read_and_split": ("""
from hvae_jax.data.readers import read_interactions
from hvae_jax.data.splits import strong_generalization
""", """
interactions = read_interactions(PATH, min_rating=3.5)
split = strong_generalization(interactions, n_heldout_users=10000)
result = (len(interactions), split.train.shape, split.test.n_users)
"""),
}
ENGINE_CASES = {
    "pyarrow_engine": ("import pyarrow as pa, pyarrow.csv as pa_csv, pyarrow.dataset as ds, pyarrow.compute as pc", """
types = {"userId": pa.string(), "movieId": pa.string(), "rating": pa.float64()}
file_format = ds.CsvFileFormat(convert_options=pa_csv.ConvertOptions(column_types=types))
table = ds.dataset(PATH, format=file_format).to_table(columns=["userId", "movieId"], filter=pc.field("rating") > 3.5)
result = table.num_rows
"""),
    "polars_engine": ("import polars as pl", """
types = {"userId": pl.String, "movieId": pl.String, "rating": pl.Float64}
frame = pl.scan_csv(PATH, schema_overrides=types).select("userId", "movieId", "rating")
frame = frame.filter(pl.col("rating") > 3.5).collect()
result = len(frame)
"""),
}
CHILD = """
import json, resource, time
{imports}
PATH = {path!r}
rss_after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
{work}
seconds = time.perf_counter() - start
try:  # the kernel's own high-water mark of this process's memory, a check on ru_maxrss
    with open("/proc/self/status") as status:
        vm_hwm_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
except OSError:
    vm_hwm_mb = None
print(json.dumps({{"seconds": seconds, "result": str(result),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "vm_hwm_mb": vm_hwm_mb, "rss_after_imports_mb": rss_after_imports / 1024}}))
"""


def user_counts(rng: np.random.Generator) -> np.ndarray:
    """[N_USERS] items per user: a heavy tail above 20, capped at ML-20M's maximum, summing to exactly N_ROWS."""
    weights = rng.lognormal(0.0, 1.2, N_USERS)
    extra = np.floor(weights / weights.sum() * (N_ROWS - MIN_PER_USER * N_USERS)).astype(np.int64)
    counts = np.minimum(MIN_PER_USER + extra, MAX_PER_USER)
    while counts.sum() < N_ROWS:
        below_cap = np.flatnonzero(counts < MAX_PER_USER)
        short = N_ROWS - int(counts.sum())
        counts[rng.choice(below_cap, size=min(short, len(below_cap)), replace=False)] += 1
    return counts


def distinct_pairs(rng: np.random.Generator, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) [N_ROWS] sorted by user then item, each user with counts[user] distinct items.

    Items are drawn by a Zipf-like popularity; a user's repeated draws are replaced by uniform ones until none repeats.
    """
    popularity = 1.0 / (np.arange(N_ITEMS) + 10.0) ** 0.9
    users = np.repeat(np.arange(N_USERS), counts)
    keys = np.unique(users * N_ITEMS + rng.choice(N_ITEMS, size=len(users), p=popularity / popularity.sum()))
    while len(keys) < N_ROWS:
        missing = counts - np.bincount(keys // N_ITEMS, minlength=N_USERS)
        extra = np.unique(np.repeat(np.arange(N_USERS), missing) * N_ITEMS + rng.integers(0, N_ITEMS, missing.sum()))
        position = np.minimum(np.searchsorted(keys, extra), len(keys) - 1)
        keys = np.sort(np.concatenate([keys, extra[keys[position] != extra]]))
    return keys // N_ITEMS, keys % N_ITEMS


def write_ratings(path: pathlib.Path, seed: int = 0) -> dict:
    """Writes the ML-20M-shaped `ratings.csv` (see the module docstring) to `path`; returns its shape."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    rng = np.random.default_rng(seed)
    users, items = distinct_pairs(rng, user_counts(rng))
    # Popular items get small ids, as old films do in MovieLens.
    movie_ids = np.sort(rng.choice(np.arange(1, MAX_MOVIE_ID + 1), N_ITEMS, replace=False))
    movie_ids[: N_ITEMS // 2] = rng.permutation(movie_ids[: N_ITEMS // 2])
    labels = pa.array([f"{rating:.1f}" for rating in RATINGS])
    shares = RATING_SHARES / RATING_SHARES.sum()
    ratings = rng.choice(len(RATINGS), size=len(users), p=shares)
    table = pa.table({
        "userId": users + 1,
        "movieId": movie_ids[items],
        "rating": labels.take(ratings),
        "timestamp": rng.integers(789_652_009, 1_427_784_002, len(users)),
    })
    with open(path, "wb") as file:
        file.write(b"userId,movieId,rating,timestamp\n")
        pa_csv.write_csv(table, file, pa_csv.WriteOptions(include_header=False, quoting_style="none"))
    shape = {"rows": len(users), "users": len(np.unique(users)), "items": len(np.unique(items)),
             "rows_rating_above_3.5": int(np.sum(RATINGS[ratings] > 3.5)), "bytes": path.stat().st_size,
             "seed": seed}
    assert (shape["rows"], shape["users"], shape["items"]) == (N_ROWS, N_USERS, N_ITEMS), shape
    return shape


def _generate_in_child(path: pathlib.Path) -> dict:
    """Writes the file from a child process: a child's ru_maxrss starts at its parent's RSS at fork, so the parent of
    the measured runs must stay small."""
    code = f"import json, pathlib\nfrom benchmarks.readers import write_ratings\n" \
           f"print(json.dumps(write_ratings(pathlib.Path({str(path)!r}))))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_case(imports: str, work: str, path: pathlib.Path) -> dict:
    """One run in a fresh interpreter: the work's seconds and the child's own peak RSS."""
    code = CHILD.format(imports=imports, path=str(path), work=work)
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    if completed.returncode != 0:
        raise RuntimeError(f"a case failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=pathlib.Path, help="an ML-20M-shaped ratings.csv written earlier with --keep")
    parser.add_argument("--keep", type=pathlib.Path, help="write the generated file here and keep it")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", action="store_true", help="also time the bare pyarrow and polars scanners")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()
    cases = {**CASES, **(ENGINE_CASES if args.engines else {})}
    report: dict = {"date": datetime.date.today().isoformat(), "machine": _machine(), "runs": args.runs}
    with tempfile.TemporaryDirectory() as folder:
        path = args.csv
        if path is None:
            path = args.keep or pathlib.Path(folder) / "ratings.csv"
            start = time.perf_counter()
            report["file"] = _generate_in_child(path)
            report["file"]["generate_seconds"] = time.perf_counter() - start
        else:
            report["file"] = {"path": str(path), "bytes": path.stat().st_size}
        print(f"{path}: {path.stat().st_size / 1e6:.0f} MB", flush=True)
        runs: dict[str, list[dict]] = {name: [] for name in cases}
        for run in range(args.runs):
            for name, (imports, work) in cases.items():
                runs[name].append(run_case(imports, work, path))
                print(f"run {run}: {name} {runs[name][-1]}", flush=True)
    report["load_average_after"] = os.getloadavg()
    report["cases"] = {
        name: {
            "median_seconds": statistics.median(run["seconds"] for run in case_runs),
            "median_peak_rss_mb": statistics.median(run["peak_rss_mb"] for run in case_runs),
            "runs": case_runs,
        }
        for name, case_runs in runs.items()
    }
    baseline = report["cases"]["pandas"]
    report["ratios_to_pandas"] = {
        name: {"seconds": case["median_seconds"] / baseline["median_seconds"],
               "peak_rss": case["median_peak_rss_mb"] / baseline["median_peak_rss_mb"]}
        for name, case in report["cases"].items()
    }
    report["target"] = "read_and_split within 1.2x pandas' seconds and below pandas' peak RSS"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios_to_pandas"], indent=2))


def _machine() -> dict:
    versions = {}
    for module in ("numpy", "scipy", "pyarrow", "pandas", "polars"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "versions": versions, "load_average_before": os.getloadavg()}


if __name__ == "__main__":
    main()
