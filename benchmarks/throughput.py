"""Training and evaluation throughput of hvae_jax against the PyTorch reference and its optimised variant, on
synthetic data shaped like ML-20M and ML-1M, written as JSON for `benchmarks.report`.

  python -m benchmarks.throughput                      # CPU suite, ~10 minutes on 2 cores
  python -m benchmarks.throughput --quick              # smoke run, a minute or two
  python -m benchmarks.throughput --device-kind gpu    # GPU suite (benchmarks/gpu.sh runs this)
  python -m benchmarks.throughput --models hvae,hvae-recvae,hvae-vamp,hvamp,recvae --frameworks jax   # the hierarchical models

Models are the named ones of `hvae_jax.configs.MODELS` with their own training settings at the suite's batch sizes;
RecVAE's training rows are its two alternating phases (encoder, decoder), each timed on its own. For models with a
VampPrior the JAX worker also times the prior's per-step pass (K pseudo-inputs through the encoder, forward and
backward) alone, as a fraction of the update. The PyTorch reference runs only the architectures it implements
(`runners.torch_unsupported`); the others are recorded as skipped, with the reason.

Each configuration (framework x model x shape x batch size x phase) runs in a fresh worker process, one after the
other, so that its peak memory is its own; frameworks are interleaved per configuration so that slow drifts of the
machine hit all three alike. The parent process only draws the data and collects results; the matmul roofline is
measured in a worker of its own, in the same run. Results are rewritten after every configuration, so an interrupted
run keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

from benchmarks import runners
from benchmarks.flops import flops_breakdown
from benchmarks.synthetic_shapes import SHAPES, make_shape, split_heldout

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
LARGE_BATCH = {"cpu": 8192, "gpu": 24576}
# Users per timed repetition (rounded up to whole updates or evaluation batches): enough to swamp timer noise, few
# enough that the default CPU suite stays near ten minutes on two cores and the GPU suite inside its 8-minute slot
# (on a GPU, evaluation is bound by densifying rows on the host, so it gets fewer users).
USERS_PER_REPEAT = {
    ("cpu", "train"): {"ml-20m": 1000, "ml-1m": 2000},
    ("cpu", "eval"): {"ml-20m": 1000, "ml-1m": 2000},
    ("gpu", "train"): {"ml-20m": 50_000, "ml-1m": 20_000},
    ("gpu", "eval"): {"ml-20m": 24_576, "ml-1m": 10_000},
}
REPEATS = {"cpu": 3, "gpu": 3}
MATMUL_SIZE = {"cpu": 3072, "gpu": 8192}


@dataclasses.dataclass(frozen=True)
class Plan:
    """The sweep one invocation runs."""

    device_kind: str
    shapes: tuple[str, ...]
    models: tuple[str, ...]
    frameworks: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    phases: tuple[str, ...]
    precision: str
    repeats: int
    quick: bool
    torch_compile: bool
    worker_timeout: float
    prior_probe: bool = True
    users_per_repeat: int | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device-kind", choices=("auto", "cpu", "gpu"), default="auto",
                        help="cpu or gpu suite (batch sizes, work per repeat); auto: gpu if nvidia-smi sees one")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: at most 3000 training users per shape, batch 500 only, 1 update, 2 repeats")
    parser.add_argument("--out", type=pathlib.Path, help="JSON file to write (default results/<device>-<date>.json)")
    parser.add_argument("--results-dir", type=pathlib.Path, default=RESULTS_DIR, help="where --out defaults to")
    parser.add_argument("--device-name", help="label of this machine in the results (default: cpu-<n>core or GPU name)")
    parser.add_argument("--shapes", default="ml-20m,ml-1m", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--models", default="multvae",
                        help=f"comma-separated, of {', '.join(runners.NEURAL_MODELS)} (hvae_jax.configs.MODELS)")
    parser.add_argument("--frameworks", default=",".join(runners.FRAMEWORKS), help="comma-separated")
    parser.add_argument("--batch-sizes", help="comma-separated (default: 500 and 8192 on CPU, 500 and 24576 on GPU)")
    parser.add_argument("--phases", default="train,eval", help="train, eval or both")
    parser.add_argument("--precision", choices=("float32", "tf32"), default="float32",
                        help="matmul precision on both sides: float32 (exact) or tf32 (GPU tensor cores)")
    parser.add_argument("--repeats", type=int, help="timed repetitions per configuration (median reported)")
    parser.add_argument("--no-torch-compile", action="store_true", help="run torch-optimized eagerly")
    parser.add_argument("--no-prior-probe", action="store_true",
                        help="skip timing the VampPrior's pseudo-input pass on its own")
    parser.add_argument("--users-per-repeat", type=int,
                        help="users per timed repetition, overriding the per-shape defaults")
    parser.add_argument("--worker-timeout", type=float, default=900.0, help="seconds before a worker is abandoned")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: JSON RunSpec of one measurement
    parser.add_argument("--measure-matmul", type=str, help=argparse.SUPPRESS)  # internal: "<size>,<precision>"
    return parser.parse_args(argv)


def detect_device_kind() -> str:
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30, check=True).stdout.strip()
        return "gpu" if names else "cpu"
    except (OSError, subprocess.SubprocessError):
        return "cpu"


def default_device_name(device_kind: str) -> str:
    if device_kind == "gpu":
        try:
            name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=30, check=True).stdout.strip().splitlines()[0]
            return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        except (OSError, subprocess.SubprocessError, IndexError):
            return "gpu"
    return f"cpu-{runners.cpu_count()}core"


def make_plan(args: argparse.Namespace) -> Plan:
    device_kind = detect_device_kind() if args.device_kind == "auto" else args.device_kind
    if args.batch_sizes:
        batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    else:
        batch_sizes = (500,) if args.quick else (500, LARGE_BATCH[device_kind])
    return Plan(
        device_kind=device_kind,
        shapes=tuple(args.shapes.split(",")),
        models=tuple(args.models.split(",")),
        frameworks=tuple(args.frameworks.split(",")),
        batch_sizes=batch_sizes,
        phases=tuple(args.phases.split(",")),
        precision=args.precision,
        repeats=args.repeats or (2 if args.quick else REPEATS[device_kind]),
        quick=args.quick,
        torch_compile=not args.no_torch_compile,
        worker_timeout=args.worker_timeout,
        prior_probe=not args.no_prior_probe,
        users_per_repeat=args.users_per_repeat,
    )


def updates_per_repeat(plan: Plan, shape: str, batch_size: int, phase: str) -> int:
    """Updates (train) or evaluation batches (eval) in one timed repetition."""
    if plan.quick:
        return 1
    users = plan.users_per_repeat or USERS_PER_REPEAT[(plan.device_kind, phase)].get(shape, 1000)
    return max(1, math.ceil(users / batch_size))


def prepare_data(plan: Plan, directory: pathlib.Path, log) -> dict[str, dict]:
    """Draws each shape's training matrix and enough evaluation users; returns paths and sizes per shape."""
    prepared = {}
    for seed, name in enumerate(plan.shapes):
        shape = SHAPES[name]
        n_train = min(shape.n_users, 3000) if plan.quick else shape.n_users
        start = time.perf_counter()
        train = make_shape(shape, seed=2 * seed, n_users=n_train)
        batches = {b: min(b, n_train) for b in plan.batch_sizes}
        n_eval = max(updates_per_repeat(plan, name, b, "eval") * b for b in batches.values())
        fold_in, heldout = split_heldout(make_shape(shape, seed=2 * seed + 1, n_users=n_eval), seed=seed)
        paths = {"train": str(directory / f"{name}-train.npz"), "eval": str(directory / f"{name}-eval.npz")}
        runners.save_csr(paths["train"], train=train)
        runners.save_csr(paths["eval"], fold_in=fold_in, heldout=heldout)
        prepared[name] = {**paths, "n_users": n_train, "n_items": shape.n_items, "batches": batches,
                          "interactions_per_user": train.nnz / n_train,
                          "eval_fold_in_interactions_per_user": fold_in.nnz / max(fold_in.shape[0], 1)}
        log(f"{name}: {n_train} x {shape.n_items}, {train.nnz / n_train:.1f} interactions per user "
            f"(+{n_eval} evaluation users), drawn in {time.perf_counter() - start:.1f} s")
    return prepared


def snapshot_code(directory: pathlib.Path) -> pathlib.Path:
    """Copies hvae_jax/ and benchmarks/ into `directory`, where the workers then run: every configuration measures
    the same code even while the checkout is being edited."""
    import shutil

    root = pathlib.Path(__file__).resolve().parents[1]
    ignore = shutil.ignore_patterns("__pycache__", "results", "*.pyc")
    for package in ("hvae_jax", "benchmarks"):
        shutil.copytree(root / package, directory / package, ignore=ignore)
    return directory


def source_digest(directory: pathlib.Path) -> str:
    """sha256 over hvae_jax's Python sources under `directory`, to say exactly which code was measured."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((directory / "hvae_jax").rglob("*.py")):
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_worker_process(
    arguments: list[str], timeout: float, compile_cache: pathlib.Path | None = None, code: pathlib.Path | None = None
) -> tuple[dict | None, str | None]:
    """Runs `python -m benchmarks.throughput <arguments>` (from the `code` snapshot when given) and returns (its
    RESULT json, error message).

    `compile_cache`: a directory for PyTorch's inductor and Triton caches, so that compile times are those of this run
    (a cache warmed by earlier runs on the machine would hide them); JAX's persistent cache is off by default.
    """
    env = {}
    if compile_cache is not None:
        env = {"TORCHINDUCTOR_CACHE_DIR": str(compile_cache / "inductor"),
               "TRITON_CACHE_DIR": str(compile_cache / "triton")}
    return runners.run_module_worker("benchmarks.throughput", arguments, timeout, code=code, env=env)


def worker_main(spec_json: str) -> None:
    """Measures one configuration in this (fresh) process and prints `RESULT <json>`."""
    spec = runners.RunSpec(**json.loads(spec_json))
    train_matrix = runners.load_csr(spec.train_path, "train")
    reset_worked = runners.reset_peak_rss()
    baseline = runners.resident_bytes() if reset_worked else runners.peak_resident_bytes()
    if spec.framework == "jax":
        measurement = runners.run_jax(spec, train_matrix)
    else:
        measurement = runners.run_torch(spec, train_matrix)
    host_peak = max(runners.peak_resident_bytes() - baseline, 0)
    result = dataclasses.asdict(measurement)
    result["host_peak_memory_bytes"] = host_peak
    result["peak_memory_bytes"] = host_peak
    result["peak_memory_kind"] = "host resident-set growth (VmHWM minus VmRSS after loading the data)"
    device_peak = _device_peak_bytes(spec.framework)
    if device_peak is not None:
        result["peak_memory_bytes"] = device_peak
        result["peak_memory_kind"] = "device: " + ("jax memory_stats peak_bytes_in_use" if spec.framework == "jax"
                                                   else "torch.cuda.max_memory_allocated")
    print("RESULT " + json.dumps(result), flush=True)


def _device_peak_bytes(framework: str) -> int | None:
    if framework == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "cpu":
            return None
        stats = device.memory_stats() or {}
        return stats.get("peak_bytes_in_use")
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def matmul_worker_main(argument: str) -> None:
    from benchmarks.flops import measure_matmul_flops_per_second

    size, precision = argument.split(",")
    import jax

    flops = measure_matmul_flops_per_second(int(size), precision="tensorfloat32" if precision == "tf32" else "float32")
    print("RESULT " + json.dumps({"flops_per_second": flops, "device": str(jax.devices()[0].device_kind)}), flush=True)


def sparse_first_layer(framework: str, jax_input_path: str | None) -> bool:
    """Whether this framework's first layer gathers rows per interaction rather than multiplying a dense input."""
    if framework == "jax":
        return jax_input_path in ("sparse", "item_sharded")
    return framework == "torch-optimized"


def flop_counts(model: str, data: dict, batch_size: int, phase: str, schedule_phase: str | None,
                sparse: bool) -> dict:
    """Dense and executed model FLOPs per user of one configuration (benchmarks/flops.py)."""
    config = runners.model_config(model)
    training = phase == "train"
    nnz = data["interactions_per_user"] if training else data["eval_fold_in_interactions_per_user"]
    common = dict(training=training, phase=schedule_phase or "joint")
    dense = flops_breakdown(config, data["n_items"], batch_size, **common)
    executed = flops_breakdown(config, data["n_items"], batch_size, nnz_per_user=nnz if sparse else None, **common)
    # Per step, then per user: the VampPrior's pseudo-input pass runs once per step, whatever the batch size.
    return {
        "model_flops_per_user": sum(dense.values()) / batch_size,
        "executed_flops_per_user": sum(executed.values()) / batch_size,
        "executed_flops_breakdown_per_step": executed,
        "prior_pass_share_of_dense_flops": dense["prior_pass"] / max(sum(dense.values()), 1.0),
        "prior_pass_share_of_executed_flops": executed["prior_pass"] / max(sum(executed.values()), 1.0),
        "sparse_first_layer": sparse,
    }


def measure_one(
    plan: Plan, data: dict, framework: str, model: str, shape: str, batch_size: int, phase: str, results: dict, log,
    schedule_phase: str | None = None,
) -> dict:
    """Runs one configuration in a worker and returns its results entry (with `error` when the worker failed, or
    `skipped` when the framework has no implementation of the model)."""
    updates = updates_per_repeat(plan, shape, batch_size, phase)
    config = runners.model_config(model)
    entry = {
        "framework": framework, "model": model, "schedule_phase": schedule_phase,
        "label": runners.row_label(model, schedule_phase), "shape": shape, "batch_size": batch_size,
        "phase": phase, "precision": plan.precision, "n_users": data["n_users"], "n_items": data["n_items"],
        "updates_per_repeat": updates, "repeats": plan.repeats, "load_average": os.getloadavg()[0],
    }
    skip = runners.torch_unsupported(config) if framework != "jax" else None
    if skip is not None:
        entry.update(users_per_second=None, compile_seconds=None, peak_memory_bytes=None, roofline_fraction=None,
                     skipped=skip)
        log(f"          skipped: {skip}")
        return entry
    spec = runners.RunSpec(
        framework=framework, model=model, shape=shape, batch_size=batch_size, phase=phase, precision=plan.precision,
        updates=updates, repeats=plan.repeats, train_path=data["train"], eval_path=data["eval"],
        torch_compile=plan.torch_compile, schedule_phase=schedule_phase,
        prior_probe=(plan.prior_probe and framework == "jax" and phase == "train" and config.kind == "vae"
                     and config.prior == "vamp"),
    )
    scratch = pathlib.Path(data["train"]).parent
    measured, error = run_worker_process(["--worker", json.dumps(dataclasses.asdict(spec))], plan.worker_timeout,
                                         scratch / "compile-cache", scratch / "code")
    if measured is None:
        entry.update(users_per_second=None, compile_seconds=None, peak_memory_bytes=None, roofline_fraction=None,
                     error=error)
        log(f"          failed: {error}")
        return entry
    extra = measured.pop("extra", {}) or {}
    counts = flop_counts(model, data, batch_size, phase, schedule_phase,
                         sparse_first_layer(framework, extra.get("input_path")))
    entry.update(counts)
    peak = results["matmul_flops_per_second"]
    achieved = counts["model_flops_per_user"] * measured["users_per_second"]
    executed = counts["executed_flops_per_user"] * measured["users_per_second"]
    entry.update(measured, **extra, achieved_flops_per_second=achieved, executed_flops_per_second=executed,
                 roofline_fraction=achieved / peak, executed_roofline_fraction=executed / peak)
    probe = ""
    if "prior_pass_fraction_of_update" in extra:
        probe = f", prior pass {extra['prior_pass_fraction_of_update']:.0%} of the update"
    log(f"          {measured['users_per_second']:10.1f} users/s, compile {measured['compile_seconds']:.1f} s, peak "
        f"{measured['peak_memory_bytes'] / 2**20:.0f} MiB, roofline {entry['roofline_fraction']:.3f} dense / "
        f"{entry['executed_roofline_fraction']:.3f} executed{probe}")
    return entry


def measure_matmul(plan: Plan) -> dict:
    """{"flops_per_second", "device"} of a large float32 matmul in JAX, measured in a worker process."""
    matmul, error = run_worker_process(["--measure-matmul", f"{MATMUL_SIZE[plan.device_kind]},{plan.precision}"],
                                       plan.worker_timeout)
    if matmul is None:
        raise RuntimeError(f"matmul roofline measurement failed: {error}")
    return matmul


def library_revision() -> dict:
    """The git commit of the checkout and whether hvae_jax/ differs from it (read-only git commands)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30,
                                check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "hvae_jax"], cwd=root, capture_output=True,
                                 text=True, timeout=30, check=True).stdout.strip()
        return {"commit": commit, "hvae_jax_uncommitted_changes": bool(changed)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "hvae_jax_uncommitted_changes": None}


def _versions() -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("jax", "jaxlib", "flax", "optax", "torch", "numpy", "scipy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def write_results(path: pathlib.Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2) + "\n")
    temporary.replace(path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return {}
    if args.measure_matmul:
        matmul_worker_main(args.measure_matmul)
        return {}
    plan = make_plan(args)
    log = lambda message: print(message, file=sys.stderr, flush=True)
    device_name = args.device_name or default_device_name(plan.device_kind)
    today = datetime.date.today().isoformat()
    out = args.out or args.results_dir / f"{device_name}-{today}.json"
    started = time.perf_counter()

    matmul = measure_matmul(plan)
    log(f"sustained float32 matmul ({MATMUL_SIZE[plan.device_kind]}^3, {plan.precision}): "
        f"{matmul['flops_per_second'] / 1e9:.1f} GFLOP/s on {matmul['device']}")
    results = {
        "device": device_name,
        "device_kind": plan.device_kind,
        "device_description": matmul["device"] if plan.device_kind == "gpu" else platform.processor() or "cpu",
        "date": today,
        "command": " ".join(["python -m benchmarks.throughput", *(argv if argv is not None else sys.argv[1:])]),
        "quick": plan.quick,
        "precision": plan.precision,
        "matmul_flops_per_second": matmul["flops_per_second"],
        "matmul_flops_per_second_measurements": [matmul["flops_per_second"]],
        "matmul_size": MATMUL_SIZE[plan.device_kind],
        "cpu_count": runners.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "versions": _versions(),
        "library_revision_at_start": library_revision(),
        "notes": [
            "users_per_second: median over repeats of (users per repeat / wall seconds), after a warm-up repeat",
            "train users are counted per update (one update = batch_size users); eval = scores, fold-in excluded, "
            "top-100 and NDCG/Recall@100",
            "roofline_fraction = model matmul FLOPs per user (benchmarks/flops.py: dense-equivalent for every "
            "framework, so a sparse first layer, which skips most of them, can look better than its dense work) x "
            "users_per_second / matmul_flops_per_second (the best of the matmul measurements at the start and end "
            "of the run)",
            "executed_roofline_fraction = the same from the FLOPs each framework's input path actually executes: a "
            "sparse first layer (hvae_jax's sparse path, PyTorch opt.) counts nnz x hidden instead of n_items x "
            "hidden, forward and weight gradient; the output layer stays dense everywhere",
            "prior_pass_fraction_of_update (VampPrior models, JAX): seconds of the K pseudo-inputs' pass through "
            "the encoder (forward and backward, timed alone in the worker) over seconds of the whole update",
            "each configuration ran in a fresh process; peak memory is that process's growth (see peak_memory_kind)",
            "compile_seconds are cold: PyTorch's inductor/Triton caches start empty in each run (JAX's persistent "
            "compilation cache is off by default)",
            f"workers ran with OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')} (PyTorch's OpenMP "
            "threads sleep rather than spin while waiting, which keeps it stable on a shared machine)",
        ],
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="hvae-bench-") as scratch:
        prepared = prepare_data(plan, pathlib.Path(scratch), log)
        code = snapshot_code(pathlib.Path(scratch) / "code")
        results["hvae_jax_source_sha256"] = source_digest(code)
        # Training first (it is what most readers want, and what a time-boxed GPU run must not lose), then
        # evaluation; the three frameworks back to back within each configuration.
        for phase, shape, model, requested_batch, framework in itertools.product(
            plan.phases, plan.shapes, plan.models, plan.batch_sizes, plan.frameworks
        ):
            data = prepared[shape]
            batch_size = data["batches"][requested_batch]
            # RecVAE trains in two alternating phases with different work: each is a row of its own.
            schedule_phases = runners.schedule_phases(model) if phase == "train" else (None,)
            for schedule_phase in schedule_phases:
                schedule_phase = None if schedule_phase == "joint" else schedule_phase
                log(f"[{time.perf_counter() - started:6.0f} s] {framework:15s} "
                    f"{runners.row_label(model, schedule_phase)} {shape} batch {batch_size} {phase} ...")
                entry = measure_one(plan, data, framework, model, shape, batch_size, phase, results, log,
                                    schedule_phase)
                if batch_size != requested_batch:
                    entry.setdefault("notes", []).append(
                        f"batch capped at the {data['n_users']} training users of the shape (requested "
                        f"{requested_batch})")
                entry["requested_batch_size"] = requested_batch
                results["runs"].append(entry)
                results["wall_seconds"] = time.perf_counter() - started
                results["load_average_at_end"] = list(os.getloadavg())
                write_results(out, results)
    # The machine may be busier at one moment than another: the roofline uses the best of the measurements taken at
    # the start and at the end of the run, and the fractions are recomputed against it.
    results["matmul_flops_per_second_measurements"].append(measure_matmul(plan)["flops_per_second"])
    results["matmul_flops_per_second"] = max(results["matmul_flops_per_second_measurements"])
    for entry in results["runs"]:
        if entry.get("achieved_flops_per_second") is not None:
            entry["roofline_fraction"] = entry["achieved_flops_per_second"] / results["matmul_flops_per_second"]
            entry["executed_roofline_fraction"] = (entry["executed_flops_per_second"]
                                                   / results["matmul_flops_per_second"])
    results["library_revision_at_end"] = library_revision()
    if results["library_revision_at_end"] != results["library_revision_at_start"]:
        log("note: the checkout changed during the run; every worker measured the snapshot taken at its start "
            "(hvae_jax_source_sha256)")
    write_results(out, results)
    log(f"wrote {out} in {time.perf_counter() - started:.0f} s")
    from benchmarks.report import markdown_table

    print(markdown_table(results))
    return results


if __name__ == "__main__":
    main()
