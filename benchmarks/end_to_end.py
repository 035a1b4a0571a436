"""End-to-end check: Mult-VAE trained by hvae_jax and by the PyTorch reference (and its optimised variant) on the
same ml-1m-implicit split with the same hyperparameters; validation NDCG@100, wall time, and where the time goes
(per phase) for each, as JSON.

  python -m benchmarks.end_to_end                  # 50 epochs, all three implementations
  python -m benchmarks.end_to_end --epochs 10 --frameworks jax,torch
  python -m benchmarks.end_to_end --data synthetic:ml-1m --epochs 3     # no data files needed (timings only)

Protocol: Liang et al.'s strong generalization (users with >= 5 items, 600 validation and 600 test users, split seed
98765, 80/20 fold-in/held-out). Every implementation validates after each epoch and keeps its best epoch by validation
NDCG@100, whose test NDCG@100 is reported too. The JAX run is the library's own `hvae_jax.train.fit` (which also
writes its orbax checkpoints as its defaults say: `latest` every 200 updates or more and at the end, `best` beside it);
the PyTorch runs are plain loops over `benchmarks.torch_reference.training` that do the same work per epoch: train,
validate, keep the best parameters, and on the same epochs write a checkpoint (model and optimizer state,
`torch.save`).

Per-phase breakdown (`phases_seconds`), the same names on both sides:
  data_to_device  the training matrix to the device (JAX: `to_device`, timed alone before `fit`, which repeats it
                  inside `setup`; PyTorch: none, batches are built on the host inside `train`)
  setup           JAX: what `fit` does before its first epoch and outside its timed phases (the training set-up,
                  the data to the device, initial state, looking for a checkpoint, hooks); PyTorch: model, optimizer
  compile         the first epoch's excess over the median later epoch (jit / torch.compile)
  train           the update chunks without that excess
  Validation, KeepBest, EarlyStopping, MetricsLogging, Checkpointing, Progress
                  JAX: `FitResult.seconds_by_phase`; PyTorch: the same steps of its loop, timed there
  test            evaluating the best parameters on the test users
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

from benchmarks import runners
from hvae_jax.configs import TrainConfig, VAEConfig, model_config_to_dict

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m-implicit"
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
HOOK_PHASES = ("Validation", "KeepBest", "EarlyStopping", "MetricsLogging", "Checkpointing", "Progress")


def load_ml1m_split(data: pathlib.Path, workdir: pathlib.Path, seed: int, heldout_users: int):
    """The strong-generalization split through the library's loader."""
    from hvae_jax.experiment import RunSettings, prepare_split

    settings = RunSettings(data=str(data), format="adjacency", heldout_users=heldout_users, split_seed=seed,
                           workdir=str(workdir))
    split, _ = prepare_split(settings, log=lambda message: None)
    return split


def synthetic_split(shape_name: str, seed: int, heldout_users: int):
    """A strong-generalization split of synthetic users shaped like `shape_name` (benchmarks/synthetic_shapes.py):
    for timing where the data files are absent (a GPU machine, smoke tests); its accuracy means nothing."""
    from benchmarks.synthetic_shapes import SHAPES, make_shape, split_heldout
    from hvae_jax.data.splits import EvalSet, Split

    shape = SHAPES[shape_name]
    heldout_users = min(heldout_users, max(shape.n_users // 8, 1))
    matrix = make_shape(shape, seed=seed % 2**31, n_users=shape.n_users + 2 * heldout_users)
    train = matrix[: shape.n_users]

    def eval_set(rows: slice, part: int) -> EvalSet:
        fold_in, heldout = split_heldout(matrix[rows], seed=seed % 2**31 + part)
        return EvalSet(fold_in, heldout, fold_in, np.arange(fold_in.shape[0]).astype(str))

    n = shape.n_users
    return Split(train, np.arange(n).astype(str), eval_set(slice(n, n + heldout_users), 1),
                 eval_set(slice(n + heldout_users, n + 2 * heldout_users), 2), np.arange(shape.n_items).astype(str),
                 "strong", (f"synthetic {shape_name}-shaped users",))


def compile_excess(epoch_seconds: list[float]) -> float:
    """The first epoch's excess over the median later epoch: compilation (and warm-up), 0 with one epoch."""
    if len(epoch_seconds) < 2:
        return 0.0
    return max(epoch_seconds[0] - statistics.median(epoch_seconds[1:]), 0.0)


def train_jax(split, model_config, train: TrainConfig, workdir: pathlib.Path) -> dict:
    import jax

    from hvae_jax.data.batches import to_device
    from hvae_jax.evaluate import evaluate
    from hvae_jax.train import fit

    start = time.perf_counter()
    jax.block_until_ready(to_device(split.train))
    data_to_device = time.perf_counter() - start

    start = time.perf_counter()
    fitted = fit(model_config, train, split, workdir / "jax", progress=False, log=lambda message: None)
    wall = time.perf_counter() - start
    test_start = time.perf_counter()
    # The step validation compiled (fit's cut-offs), as `hvae train` evaluates after training.
    test = evaluate(fitted.path.eval_step(), fitted.best_params, split.test)
    test_seconds = time.perf_counter() - test_start
    epoch_seconds = [row["train_seconds"] for row in fitted.history]
    compile_seconds = compile_excess(epoch_seconds)
    by_phase = dict(fitted.seconds_by_phase)
    phases = {
        "data_to_device": data_to_device,
        "setup": wall - sum(by_phase.values()),
        "compile": compile_seconds,
        "train": by_phase.pop("train") - compile_seconds,
        **{name: by_phase.pop(name, 0.0) for name in HOOK_PHASES},
        **by_phase,
        "test": test_seconds,
    }
    return {
        "framework": "jax",
        "wall_seconds": wall,
        "train_seconds_excluding_first_epoch": fitted.train_seconds,
        "first_epoch_seconds_including_compile": fitted.compile_seconds,
        "train_users_per_second": fitted.users_per_second,
        "input_path": fitted.path.name,
        "valid_ndcg@100_per_epoch": [row["valid"]["ndcg@100"] for row in fitted.history if "valid" in row],
        "best_epoch": fitted.best_epoch,
        "best_valid_ndcg@100": fitted.best_validation["ndcg@100"],
        "final_valid_ndcg@100": fitted.history[-1]["valid"]["ndcg@100"],
        "test_ndcg@100_at_best": test["ndcg@100"],
        "epoch_train_seconds": epoch_seconds,
        "fit_seconds_by_phase": fitted.seconds_by_phase,
        "phases_seconds": phases,
        "notes": ["hvae_jax.train.fit with its defaults: scanned jitted updates, validation every epoch, orbax checkpoints "
                  "every `checkpoint_interval` epochs",
                  "phases: data_to_device timed alone before fit (fit repeats it inside setup); setup = fit's wall "
                  "time outside seconds_by_phase; compile = first epoch - median later epoch"],
    }


def train_torch(split, model_config, train: TrainConfig, optimized: bool, workdir: pathlib.Path,
                torch_compile: bool = True) -> dict:
    import torch

    from benchmarks.torch_reference import training
    from benchmarks.torch_reference.models import build_model
    from hvae_jax.schedules import build_schedule
    from hvae_jax.train import checkpoint_interval

    phases = dict.fromkeys(("data_to_device", "setup", "compile", "train", *HOOK_PHASES, "test"), 0.0)
    start = time.perf_counter()
    torch.manual_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    n_train = split.train.shape[0]
    steps_per_epoch = -(-n_train // train.batch_size)
    # The same KL schedule as the library's (Liang's annealing over the whole run when total_anneal_steps is None).
    anneal_steps = build_schedule(train, n_levels=model_config.n_levels, steps_per_epoch=steps_per_epoch).anneal_steps
    model = build_model(model_config, split.n_items, sparse_input=optimized)
    if optimized:
        trainer = training.OptimizedTrainer(model, train, max_nnz=training.max_batch_nnz(split.train, train.batch_size),
                                            anneal_steps=anneal_steps, compile=torch_compile)
        scorer = training.make_sparse_scorer(model, compile=False)
        validate = lambda: training.evaluate_optimized(
            scorer, split.valid.fold_in, split.valid.heldout, batch_size=1000)
    else:
        trainer = training.ReferenceTrainer(model, train, anneal_steps=anneal_steps)
        validate = lambda: training.evaluate_reference(
            model, split.valid.fold_in, split.valid.heldout, batch_size=1000)
    checkpoint = workdir / ("torch-optimized" if optimized else "torch") / "latest.pt"
    checkpoint_every = checkpoint_interval(train.checkpoint_every, steps_per_epoch)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    phases["setup"] = time.perf_counter() - start

    def timed(phase: str, fn):
        phase_start = time.perf_counter()
        value = fn()
        phases[phase] += time.perf_counter() - phase_start
        return value

    per_epoch, epoch_seconds = [], []
    best = (-1.0, 0, None)
    for epoch in range(1, train.epochs + 1):
        epoch_start = time.perf_counter()
        trainer.run_epoch(split.train, rng.permutation(n_train))
        epoch_seconds.append(time.perf_counter() - epoch_start)
        ndcg = timed("Validation", validate)["ndcg@100"]
        per_epoch.append(ndcg)
        if ndcg > best[0]:
            best = timed("KeepBest", lambda ndcg=ndcg, epoch=epoch: (ndcg, epoch, copy.deepcopy(model.state_dict())))
        timed("MetricsLogging", lambda: None)
        if epoch % checkpoint_every == 0 or epoch == train.epochs:  # the library's policy (`checkpoint_interval`)
            timed("Checkpointing", lambda epoch=epoch: torch.save({"model": model.state_dict(),
                                                       "optimizer": trainer.optimizer.state_dict(), "epoch": epoch},
                                                      checkpoint))
    phases["compile"] = compile_excess(epoch_seconds)
    phases["train"] = sum(epoch_seconds) - phases["compile"]
    wall = sum(phases.values())
    model.load_state_dict(best[2])
    test_start = time.perf_counter()
    if optimized:
        test = training.evaluate_optimized(scorer, split.test.fold_in, split.test.heldout, batch_size=1000)
    else:
        test = training.evaluate_reference(model, split.test.fold_in, split.test.heldout, batch_size=1000)
    phases["test"] = time.perf_counter() - test_start
    later_epochs = sum(epoch_seconds[1:])
    notes = [f"torch {torch.__version__}, {torch.get_num_threads()} threads",
             "a plain loop: train an epoch, validate, keep the best state_dict (deepcopy), torch.save model and "
             f"optimizer state every {checkpoint_every} epochs and at the end (the library's interval); phases timed "
             "in it"]
    if optimized:
        notes.append(runners._compile_note(trainer.compiled, trainer.compile_error, torch_compile))
    return {
        "framework": "torch-optimized" if optimized else "torch",
        "wall_seconds": wall,
        "train_seconds_excluding_first_epoch": later_epochs,
        "first_epoch_seconds_including_compile": epoch_seconds[0],
        "train_users_per_second": n_train * (len(epoch_seconds) - 1) / later_epochs if later_epochs else None,
        "valid_ndcg@100_per_epoch": per_epoch,
        "best_epoch": best[1],
        "best_valid_ndcg@100": best[0],
        "final_valid_ndcg@100": per_epoch[-1],
        "test_ndcg@100_at_best": test["ndcg@100"],
        "epoch_train_seconds": epoch_seconds,
        "phases_seconds": phases,
        "notes": notes,
    }


def probe_jax_setup(split, model_config, train: TrainConfig) -> dict:
    """Seconds of each step `fit` takes before its first epoch, in a fresh process (so first-time imports count as
    they do in a user's run), and of one `latest` checkpoint; beside them the same initial state built by one jitted
    call, to show what eager, op-by-op initialisation costs."""
    times: dict[str, float] = {}

    def timed(name, fn):
        import jax

        start = time.perf_counter()
        value = fn()
        jax.block_until_ready(jax.tree.leaves(value)) if name.startswith("init_state") else None
        times[name] = time.perf_counter() - start
        return value

    import jax

    from hvae_jax import hooks
    from hvae_jax.checkpoint import Checkpoints
    from hvae_jax.data.batches import to_device
    from hvae_jax.logs import MetricsLog
    from hvae_jax.train import TrainSetup

    timed("backend start (first op)", lambda: jax.block_until_ready(jax.numpy.zeros(1) + 1))
    with tempfile.TemporaryDirectory(prefix="hvae-e2e-probe-") as scratch:
        setup = timed("TrainSetup.build", lambda: TrainSetup.build(model_config, train, split.train))
        timed("to_device", lambda: jax.block_until_ready(to_device(split.train)))
        state = timed("init_state", lambda: setup.init_state())
        timed("init_state again (eager, op-by-op executables cached)", lambda: setup.init_state())
        # A different process would be needed for a cold jitted call; this one shares nothing but the backend.
        timed("init_state_jitted (compile + run)", lambda: jax.jit(lambda key: setup.init_state(key=key))(
            jax.random.fold_in(setup.keys.init, 1)))
        metrics_log = timed("MetricsLog (imports tensorboardX)", lambda: MetricsLog(pathlib.Path(scratch)))
        checkpoints = timed("Checkpoints", lambda: Checkpoints(pathlib.Path(scratch)))
        loop = hooks.LoopState(epoch=1, state=state)
        for index in range(3):
            timed(f"checkpoint latest #{index + 1}",
                  lambda index=index: checkpoints.save("latest", index + 1, state, loop.record()))
        timed("checkpoints close (waits for saves)", checkpoints.close)
        metrics_log.close()
        # What one validation costs, and its two parts: the ranking metrics, and the active units of every level
        # (posterior means of the validation users, as the Validation hook computes them), first and second call.
        from hvae_jax.evaluate import evaluate

        eval_step = setup.path.eval_step()
        for call in ("first", "second"):
            timed(f"validation metrics ({call} call)", lambda: evaluate(eval_step, state.params, split.valid))
            timed(f"validation active units ({call} call)",
                  lambda: setup.path.posterior_means(state.params, split.valid))
    return times


def probe_worker(args) -> None:
    """`--probe-setup`: `probe_jax_setup` on the run's split in this (fresh) process; prints RESULT <json>."""
    split = _split(args, pathlib.Path(tempfile.mkdtemp(prefix="hvae-e2e-split-")))
    model_config, train = _configs(args)
    print("RESULT " + json.dumps(probe_jax_setup(split, model_config, train)), flush=True)


def run_probe(argv: list[str]) -> dict | None:
    import subprocess

    done = subprocess.run([sys.executable, "-m", "benchmarks.end_to_end", *argv, "--probe-setup"],
                          capture_output=True, text=True, cwd=pathlib.Path(__file__).resolve().parents[1])
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": " | ".join(done.stderr.strip().splitlines()[-3:])}


def _configs(args):
    model_config = VAEConfig(name="multvae", latents=(200,), hidden=600, input_dropout=0.5)
    # Beta rises linearly to 0.2 over the whole run (the library's default when total_anneal_steps is None).
    train = TrainConfig(epochs=args.epochs, batch_size=500, learning_rate=1e-3, beta_cap=0.2, total_anneal_steps=None,
                        seed=args.seed)
    return model_config, train


def _split(args, workdir: pathlib.Path):
    if args.data.startswith("synthetic:"):
        return synthetic_split(args.data.split(":", 1)[1], args.seed, args.heldout_users)
    return load_ml1m_split(pathlib.Path(args.data), workdir / "split", args.seed, args.heldout_users)


def breakdown_table(results: dict) -> str:
    """Markdown: one row per phase, one column per framework (seconds and share of the wall time)."""
    runs = results["runs"]
    names = []
    for run in runs:
        names += [name for name in run["phases_seconds"] if name not in names]
    lines = ["| phase | " + " | ".join(run["framework"] for run in runs) + " |",
             "|---|" + "---:|" * len(runs)]
    for name in names:
        cells = []
        for run in runs:
            value = run["phases_seconds"].get(name)
            total = sum(run["phases_seconds"].values())
            cells.append("-" if value is None else f"{value:.2f} s ({value / total:.0%})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| total | " + " | ".join(f"{sum(run['phases_seconds'].values()):.1f} s" for run in runs) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Mult-VAE on ml-1m-implicit: hvae_jax vs the PyTorch reference.")
    parser.add_argument("--data", default=str(DATA),
                        help="the ml-1m-implicit folder, or synthetic:<shape> (benchmarks/synthetic_shapes.py)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--frameworks", default="jax,torch,torch-optimized")
    parser.add_argument("--seed", type=int, default=98765, help="split seed (Liang et al.'s) and training seed")
    parser.add_argument("--heldout-users", type=int, default=600)
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--device-name", default=f"cpu-{runners.cpu_count()}core")
    parser.add_argument("--no-torch-compile", action="store_true", help="run PyTorch opt. eagerly")
    parser.add_argument("--no-setup-probe", action="store_true", help="skip timing fit's set-up steps one by one")
    parser.add_argument("--probe-setup", action="store_true", help=argparse.SUPPRESS)  # internal: the probe's worker
    args = parser.parse_args(argv)
    if args.probe_setup:
        probe_worker(args)
        return {}
    model_config, train = _configs(args)
    today = datetime.date.today().isoformat()
    synthetic = args.data.startswith("synthetic:")
    data_name = args.data.split(":", 1)[1] if synthetic else "ml-1m"
    out = args.out or RESULTS_DIR / f"end_to_end-{data_name}-{args.device_name}-{today}.json"
    import os

    results = {
        "device": args.device_name, "date": today, "data": args.data, "protocol": "strong generalization",
        "heldout_users": args.heldout_users, "split_seed": args.seed, "epochs": args.epochs,
        "model": model_config_to_dict(model_config), "train": dataclasses.asdict(train),
        "load_average_at_start": list(os.getloadavg()), "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="hvae-e2e-") as scratch:
        workdir = pathlib.Path(scratch)
        split = _split(args, workdir)
        results["split"] = split.statistics()
        for framework in args.frameworks.split(","):
            print(f"training {framework} for {args.epochs} epochs ...", file=sys.stderr, flush=True)
            if framework == "jax":
                run = train_jax(split, model_config, train, workdir)
                if not args.no_setup_probe:
                    # In a fresh process, after the timed run, so that neither disturbs the other.
                    run["setup_probe_seconds"] = run_probe(["--data", args.data, "--epochs", str(args.epochs),
                                                            "--seed", str(args.seed),
                                                            "--heldout-users", str(args.heldout_users)])
            else:
                run = train_torch(split, model_config, train, framework == "torch-optimized", workdir,
                                  torch_compile=not args.no_torch_compile)
            run["load_average_after"] = list(os.getloadavg())
            print(f"  {framework}: best valid NDCG@100 {run['best_valid_ndcg@100']:.4f} (epoch {run['best_epoch']}), "
                  f"final {run['final_valid_ndcg@100']:.4f}, test {run['test_ndcg@100_at_best']:.4f}, "
                  f"wall {run['wall_seconds']:.0f} s", file=sys.stderr, flush=True)
            results["runs"].append(run)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")
    results["breakdown_markdown"] = breakdown_table(results)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({run["framework"]: {k: run[k] for k in ("best_valid_ndcg@100", "final_valid_ndcg@100",
                                                              "test_ndcg@100_at_best", "wall_seconds")}
                      for run in results["runs"]}, indent=2))
    print(results["breakdown_markdown"])
    return results


if __name__ == "__main__":
    main()
