"""How the cost of training grows: users/s and peak memory of hvae_jax's training update against catalogue size, batch
size, number of latent levels and number of ensemble members, as JSON and a PNG chart.

  python -m benchmarks.scaling                         # CPU: about 10-15 minutes on 2 cores
  python -m benchmarks.scaling --quick                 # smoke run, small sizes
  python -m benchmarks.scaling --device-kind gpu       # larger sizes (benchmarks/gpu.sh)

Axes (each point a fresh worker process, so that its peak memory is its own; synthetic power-law users,
benchmarks/synthetic_shapes.py):
  catalogue  Mult-VAE [I-200-64-200-I] (narrow enough that 1M items fit a small machine), batch 500, n_items from
             1,000 to 1,000,000: the input path `fit` resolves ("auto": dense, or sparse below 1% density) while
             one dense [batch, n_items] float32 logits matrix stays under --dense-logits-limit-mb, the item-sharded
             path (one device, logits scored in chunks under a 64 MiB budget) above it, and both at the crossover.
  batch      Mult-VAE [I-600-200-600-I] at the ML-20M shape (20,108 items, fewer users), batch 50 to 4,000.
  levels     1 to 4 latent levels of 200 (standard prior, hidden 600), ML-20M shape, batch 500.
  ensemble   `hvae_jax.train.fit_ensemble` with 1 to 8 members (Mult-VAE, ML-1M shape, batch 500): users/s
             counts every member's users, the first epoch (compilation) excluded.

Each point also carries the executed matmul FLOPs per user (benchmarks/flops.py) and, against the axis's first
point, how much the cost of a user grew and how much its work grew: `relative_efficiency` stays at 1.0 while cost
grows linearly with the work, falls where it grows faster (memory traffic, the dense logits) and rises where fixed
overheads are being amortised.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

from benchmarks import runners

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
NARROW = dict(latents=(64,), hidden=200)
MIB = 2**20


@dataclasses.dataclass(frozen=True)
class Point:
    """One measurement.

    Attributes:
      axis: "catalogue", "batch", "levels" or "ensemble".
      x: the axis value (items, batch size, levels, members).
      n_items, n_users, mean_items: the synthetic data's shape.
      batch_size: users per update.
      latents, hidden: the Mult-VAE / hierarchical VAE's widths.
      path: "auto" (as `fit` resolves it) or "item_sharded".
      updates: updates per timed repetition (train), or epochs (ensemble).
      repeats: timed repetitions (median).
      members: ensemble members (ensemble axis).
    """

    axis: str
    x: int
    n_items: int
    n_users: int
    mean_items: float
    batch_size: int
    latents: tuple[int, ...]
    hidden: int
    path: str = "auto"
    updates: int = 2
    repeats: int = 3
    members: int = 1


def plan(device_kind: str, quick: bool, dense_logits_limit_mb: float,
         catalogue_sizes: tuple[int, ...] | None = None) -> list[Point]:
    """The points of every axis for this device and mode (`catalogue_sizes` replaces the catalogue axis's)."""
    if quick:
        catalogue = (1_000, 20_000)
        batches, levels, members = (100, 500), (1, 2), (1, 2)
        users, ml20m_users, ml20m_items, ml1m = 1_000, 1_000, 5_000, (1_000, 1_000, 30.0)
        updates, repeats, ensemble_epochs = 1, 2, 2
    elif device_kind == "gpu":
        catalogue = (1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000)
        batches, levels, members = (100, 500, 2_000, 8_000, 24_576), (1, 2, 3, 4, 6), (1, 2, 4, 8, 16)
        users, ml20m_users, ml20m_items, ml1m = 30_000, 60_000, 20_108, (4_840, 3_706, 165.0)
        updates, repeats, ensemble_epochs = 8, 3, 3
    else:
        catalogue = (1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000)
        batches, levels, members = (50, 100, 250, 500, 1_000, 2_000, 4_000), (1, 2, 3, 4), (1, 2, 4, 8)
        users, ml20m_users, ml20m_items, ml1m = 2_000, 8_000, 20_108, (4_840, 3_706, 165.0)
        updates, repeats, ensemble_epochs = 2, 3, 3
    catalogue = catalogue_sizes or catalogue
    points = []
    for n_items in catalogue:
        fits_dense = 500 * n_items * 4 <= dense_logits_limit_mb * MIB
        paths = ["auto"] if fits_dense else ["item_sharded"]
        # At the first size past the limit, also the path below it: the two paths side by side at one size.
        if not fits_dense and 500 * (n_items // 3) * 4 <= dense_logits_limit_mb * MIB:
            paths.insert(0, "auto")
        for path in paths:
            points.append(Point("catalogue", n_items, n_items, users, min(60.0, n_items / 4), 500, NARROW["latents"],
                                NARROW["hidden"], path, updates, repeats))
    latent, hidden = (32, 64) if quick else (200, 600)  # Liang's widths, narrower in smoke runs
    for batch in batches:
        points.append(Point("batch", batch, ml20m_items, max(ml20m_users, batch), 73.0, batch, (latent,), hidden,
                            "auto", max(1, -(-2_000 // batch)) if not quick else 1, repeats))
    for n_levels in levels:
        points.append(Point("levels", n_levels, ml20m_items, ml20m_users, 73.0, 500, (latent,) * n_levels, hidden,
                            "auto", updates, repeats))
    for n_members in members:
        points.append(Point("ensemble", n_members, ml1m[1], ml1m[0], ml1m[2], 500, (latent,), hidden, "auto",
                            ensemble_epochs, 1, n_members))
    return points


# ----------------------------------------------------------------------------------------------------------------
# Worker: one point in a fresh process.


def _device_peak_bytes() -> int | None:
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    return (device.memory_stats() or {}).get("peak_bytes_in_use")


def measure(point: Point) -> dict:
    import jax

    from benchmarks.synthetic_shapes import power_law_csr
    from hvae_jax.configs import TrainConfig, VAEConfig

    jax.config.update("jax_default_matmul_precision", "float32")
    matrix = power_law_csr(point.n_users, point.n_items, point.mean_items, seed=point.x)
    config = VAEConfig(name="scaling", latents=point.latents, hidden=point.hidden)
    train = TrainConfig(batch_size=point.batch_size, learning_rate=1e-3, total_anneal_steps=200_000,
                        epochs=point.updates if point.axis == "ensemble" else 1)
    reset = runners.reset_peak_rss()
    baseline = runners.resident_bytes() if reset else runners.peak_resident_bytes()
    if point.axis == "ensemble":
        result = _measure_ensemble(point, config, train, matrix)
    else:
        result = _measure_update(point, config, train, matrix)
    result["host_peak_memory_bytes"] = max(runners.peak_resident_bytes() - baseline, 0)
    device_peak = _device_peak_bytes()
    result["peak_memory_bytes"] = device_peak if device_peak is not None else result["host_peak_memory_bytes"]
    result["peak_memory_kind"] = ("device: jax memory_stats peak_bytes_in_use" if device_peak is not None
                                  else "host resident-set growth after drawing the data (VmHWM - VmRSS)")
    result["interactions_per_user"] = matrix.nnz / matrix.shape[0]
    return result


def _measure_update(point: Point, config, train, matrix) -> dict:
    import jax

    from hvae_jax import input_paths, parallel
    from hvae_jax.data.batches import epoch_order, to_device
    from hvae_jax.train import TrainSetup

    build = {}
    if point.path == "item_sharded":
        build = dict(catalogue_mesh=parallel.item_mesh(1), logits_budget_bytes=64 * MIB)
    start = time.perf_counter()
    setup = TrainSetup.build(config, train, matrix, **build)
    state = setup.init_state()
    device_matrix = to_device(matrix)
    jax.block_until_ready((state, device_matrix))
    setup_seconds = time.perf_counter() - start
    chunk = setup.update_chunk(setup.schedule.phases[0])

    def order(repeat: int):
        rows = epoch_order(jax.random.fold_in(setup.keys.shuffle, repeat), setup.n_train, setup.batch_size)
        while rows.shape[0] < point.updates:
            rows = jax.numpy.concatenate([rows, rows])
        return rows[: point.updates]

    start = time.perf_counter()
    compiled = chunk.lower(state, order(0), setup.keys.train, device_matrix, None).compile()
    compile_seconds = time.perf_counter() - start
    temp_bytes = getattr(compiled.memory_analysis(), "temp_size_in_bytes", None)
    state, metrics = compiled(state, order(0), setup.keys.train, device_matrix, None)
    jax.block_until_ready(state)
    seconds = []
    for repeat in range(1, point.repeats + 1):
        start = time.perf_counter()
        state, metrics = compiled(state, order(repeat), setup.keys.train, device_matrix, None)
        jax.block_until_ready((state, metrics))
        seconds.append(time.perf_counter() - start)
    users = point.updates * setup.batch_size
    return {
        "users_per_second": users / statistics.median(seconds),
        "seconds_per_update": statistics.median(seconds) / point.updates,
        "seconds_per_repeat": seconds,
        "compile_seconds": compile_seconds,
        "setup_seconds": setup_seconds,
        "input_path": setup.path.name,
        "path_description": input_paths.describe(setup.path),
        "update_temp_bytes": None if temp_bytes is None else int(temp_bytes),
        "parameter_bytes": int(sum(leaf.nbytes for leaf in jax.tree.leaves(state.params))),
        "loss_is_finite": bool(jax.numpy.isfinite(metrics["loss"][-1])),
    }


def _measure_ensemble(point: Point, config, train, matrix) -> dict:
    import numpy as np

    from hvae_jax.data.splits import EvalSet, Split
    from hvae_jax.train import fit_ensemble

    empty = EvalSet(matrix[:1], matrix[:1], matrix[:1], np.asarray(["0"]))
    split = Split(matrix, np.arange(matrix.shape[0]).astype(str), None, empty, np.arange(matrix.shape[1]).astype(str),
                  "strong")
    start = time.perf_counter()
    result = fit_ensemble(config, train, split, tuple(range(point.members)), progress=False)
    wall = time.perf_counter() - start
    return {
        "users_per_second": result.users_per_second,
        "users_per_second_per_member": result.users_per_second / point.members,
        "seconds_per_epoch": result.train_seconds / max(train.epochs - 1, 1),
        "compile_seconds": result.compile_seconds,
        "wall_seconds": wall,
        "input_path": result.path.name,
        "epochs": train.epochs,
    }


def worker_main(point_json: str) -> None:
    fields = json.loads(point_json)
    fields["latents"] = tuple(fields["latents"])
    print("RESULT " + json.dumps(measure(Point(**fields))), flush=True)


def run_worker(point: Point, timeout: float, code: pathlib.Path | None) -> tuple[dict | None, str | None]:
    return runners.run_module_worker("benchmarks.scaling", ["--worker", json.dumps(dataclasses.asdict(point))],
                                     timeout, code=code)


# ----------------------------------------------------------------------------------------------------------------
# Summary and chart.

UNITS = {"catalogue": "items", "batch": "batch size", "levels": "latent levels", "ensemble": "ensemble members"}


def executed_flops_per_user(point: dict) -> float:
    """Matmul FLOPs one user costs this point's update as its input path executes them (benchmarks/flops.py)."""
    from benchmarks.flops import flops_per_step
    from hvae_jax.configs import VAEConfig

    config = VAEConfig(name="scaling", latents=tuple(point["latents"]), hidden=point["hidden"])
    sparse = point.get("input_path") in ("sparse", "item_sharded")
    nnz = point.get("interactions_per_user", point["mean_items"])
    return flops_per_step(config, point["n_items"], point["batch_size"], training=True,
                          nnz_per_user=nnz if sparse else None) / point["batch_size"]


def add_relative_costs(points: list[dict]) -> None:
    """Per point, against its axis's first point: `relative_seconds_per_user` (how the cost of a user grew),
    `relative_flops_per_user` (how the work grew, as executed), and `relative_efficiency` = their ratio: 1.0 means
    the cost grew exactly as the work did (linear), below 1 it grew faster (memory traffic, the dense logits), above
    1 slower (fixed overheads amortised). The ensemble axis counts every member's users."""
    for axis in UNITS:
        series = [p for p in points if p["axis"] == axis and p.get("users_per_second")]
        for p in series:
            p["executed_flops_per_user"] = executed_flops_per_user(p)
            p["achieved_gflops_per_second"] = p["executed_flops_per_user"] * p["users_per_second"] / 1e9
        if not series:
            continue
        first = series[0]
        for p in series:
            p["relative_seconds_per_user"] = first["users_per_second"] / p["users_per_second"]
            p["relative_flops_per_user"] = p["executed_flops_per_user"] / first["executed_flops_per_user"]
            p["relative_efficiency"] = p["relative_flops_per_user"] / p["relative_seconds_per_user"]


def plot(results: dict, path: pathlib.Path) -> None:
    """Per axis: users/s, peak memory, and the efficiency (work grown / cost grown; 1.0 = linear)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_present = [axis for axis in UNITS if any(p["axis"] == axis for p in results["points"])]
    figure, axes = plt.subplots(3, len(axes_present), figsize=(4.2 * len(axes_present), 9.5), squeeze=False)
    for column, axis in enumerate(axes_present):
        series = [p for p in results["points"] if p["axis"] == axis and p.get("users_per_second")]
        by_path: dict[str, list[dict]] = {}
        for p in series:
            by_path.setdefault(p.get("input_path", "?"), []).append(p)
        for name, ps in by_path.items():
            xs = [p["x"] for p in ps]
            axes[0][column].plot(xs, [p["users_per_second"] for p in ps], "o-", label=name)
            axes[1][column].plot(xs, [p["peak_memory_bytes"] / MIB for p in ps], "o-", label=name)
            axes[2][column].plot(xs, [p.get("relative_efficiency", float("nan")) for p in ps], "o-", label=name)
        axes[2][column].axhline(1.0, color="grey", linewidth=0.8)
        axes[2][column].set_ylim(bottom=0)
        for row in (0, 1, 2):
            axes[row][column].set_xscale("log" if axis in ("catalogue", "batch") else "linear")
            if row < 2:
                axes[row][column].set_yscale("log")
            axes[row][column].grid(alpha=0.3, which="both")
            axes[row][column].set_xlabel(UNITS[axis])
        axes[0][column].set_title(f"{axis}")
        axes[0][column].set_ylabel("training users / s" + (" (all members)" if axis == "ensemble" else ""))
        axes[1][column].set_ylabel("peak memory MiB")
        axes[2][column].set_ylabel("efficiency (work / cost growth)")
        if len(by_path) > 1:
            axes[0][column].legend(fontsize=8)
    figure.suptitle(f"hvae_jax training cost, {results['device']} ({results['date']})"
                    + (", quick run" if results.get("quick") else ""))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown(results: dict) -> str:
    lines = ["| axis | x | path | users/s | s per update | peak MiB | cost per user (x first) | work per user (x "
             "first) | efficiency | GFLOP/s executed | compile s |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in results["points"]:
        if not p.get("users_per_second"):
            lines.append(f"| {p['axis']} | {p['x']:,} | {p['path']} | failed: {p.get('error', '')[:80]} | | | | | | | |")
            continue
        per_update = p.get("seconds_per_update", p.get("seconds_per_epoch"))
        lines.append(f"| {p['axis']} | {p['x']:,} | {p.get('input_path', p['path'])} | {p['users_per_second']:,.0f} | "
                     f"{per_update:.3f} | {p['peak_memory_bytes'] / MIB:,.0f} | {p['relative_seconds_per_user']:.2f} | "
                     f"{p['relative_flops_per_user']:.2f} | {p['relative_efficiency']:.2f} | "
                     f"{p['achieved_gflops_per_second']:.1f} | {p['compile_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device-kind", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke tests")
    parser.add_argument("--axes", default=",".join(UNITS), help="comma-separated, of " + ", ".join(UNITS))
    parser.add_argument("--dense-logits-limit-mb", type=float, default=256.0,
                        help="largest [batch, n_items] float32 logits matrix before the item-sharded path is used")
    parser.add_argument("--device-name", default=None)
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--worker-timeout", type=float, default=600.0)
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="stop starting new points after this many seconds (what finished is kept)")
    parser.add_argument("--catalogue-sizes", help="comma-separated item counts replacing the catalogue axis's")
    parser.add_argument("--update", action="store_true",
                        help="add to --out's points, replacing those of the same axis, size and path (e.g. to "
                             "rerun a point that timed out with a longer --worker-timeout)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return {}
    from benchmarks.throughput import (
        library_revision,
        snapshot_code,
        source_digest,
        write_results,
    )

    log = lambda message: print(message, file=sys.stderr, flush=True)
    device_name = args.device_name or (f"cpu-{runners.cpu_count()}core" if args.device_kind == "cpu" else "gpu")
    out = args.out or RESULTS_DIR / f"scaling-{device_name}{'-quick' if args.quick else ''}.json"
    sizes = tuple(int(n) for n in args.catalogue_sizes.split(",")) if args.catalogue_sizes else None
    points = [p for p in plan(args.device_kind, args.quick, args.dense_logits_limit_mb, sizes)
              if p.axis in args.axes.split(",")]
    results = {
        "device": device_name, "device_kind": args.device_kind, "date": datetime.date.today().isoformat(),
        "quick": args.quick,
        "command": "python -m benchmarks.scaling " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu_count": runners.cpu_count(), "load_average_at_start": list(os.getloadavg()),
        "library_revision": library_revision(), "dense_logits_limit_mb": args.dense_logits_limit_mb,
        "notes": [
            "each point ran in a fresh process; users/s is the median over timed repeats after a compiling call "
            "and a warm-up call; ensemble points: fit_ensemble's users/s (all members, first epoch excluded)",
            "peak memory: see peak_memory_kind (host resident-set growth on CPU, which includes parameters, "
            "optimizer state, gradients and XLA's temporaries; the device's peak bytes on a GPU)",
            "relative_efficiency = (executed FLOPs per user / the axis's first point's) / (seconds per user / the "
            "first point's): 1.0 = cost grew exactly as the work (see add_relative_costs)",
            "catalogue axis: Mult-VAE [I-200-64-200-I] so that 1M items fit beside other jobs on a 23 GiB "
            "machine; the other axes at Liang's widths [I-600-200-600-I]",
        ],
        "points": [],
    }
    kept = []
    if args.update and out.exists():
        earlier = json.loads(out.read_text())
        new = {(p.axis, p.x, p.path) for p in points}
        kept = [p for p in earlier["points"] if (p["axis"], p["x"], p["path"]) not in new]
        results["notes"] += earlier["notes"][len(results["notes"]):]
        results["updates"] = earlier.get("updates", []) + [{"command": results["command"],
                                                           "load_average_at_start": results["load_average_at_start"],
                                                           "points": [[p.axis, p.x, p.path] for p in points]}]
        for field in ("command", "load_average_at_start", "date"):
            results[field] = earlier[field]
    results["points"] = kept
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hvae-scaling-") as scratch:
        code = snapshot_code(pathlib.Path(scratch) / "code")
        results["hvae_jax_source_sha256"] = source_digest(code)
        for point in points:
            if args.budget_seconds is not None and time.perf_counter() - started > args.budget_seconds:
                log(f"budget of {args.budget_seconds:.0f} s spent: {point.axis} {point.x} and later points not run")
                results.setdefault("not_run", []).append(dataclasses.asdict(point))
                continue
            log(f"[{time.perf_counter() - started:6.0f} s] {point.axis} {point.x} ({point.path}) ...")
            entry = dataclasses.asdict(point)
            entry["load_average"] = os.getloadavg()[0]
            measured, error = run_worker(point, args.worker_timeout, code)
            if measured is None:
                entry["error"] = error
                log(f"          failed: {error}")
            else:
                entry.update(measured)
                log(f"          {measured['users_per_second']:10.1f} users/s, peak "
                    f"{measured['peak_memory_bytes'] / MIB:,.0f} MiB ({measured.get('input_path')})")
            results["points"].append(entry)
            results["points"].sort(key=lambda p: (list(UNITS).index(p["axis"]), p["x"], p["path"]))
            add_relative_costs(results["points"])
            results["wall_seconds"] = time.perf_counter() - started
            write_results(out, results)
    results["load_average_at_end"] = list(os.getloadavg())
    results["markdown"] = markdown(results)
    write_results(out, results)
    if not args.no_plot:
        plot(results, out.with_suffix(".png"))
    log(f"wrote {out}")
    print(results["markdown"])
    return results


if __name__ == "__main__":
    main()
