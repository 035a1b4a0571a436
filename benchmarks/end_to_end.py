"""End-to-end check: Mult-VAE trained by hvae_jax and by the PyTorch reference (and its optimised variant) on the
same ml-1m-implicit split with the same hyperparameters; validation NDCG@100 and wall time for each, as JSON.

  python -m benchmarks.end_to_end                  # 50 epochs, all three implementations
  python -m benchmarks.end_to_end --epochs 10 --frameworks jax,torch

Protocol: Liang et al.'s strong generalization (users with >= 5 items, 600 validation and 600 test users, split seed
98765, 80/20 fold-in/held-out). Every implementation validates after each epoch and keeps its best epoch by validation
NDCG@100, whose test NDCG@100 is reported too. The JAX run is the library's own `hvae_jax.train.fit` (which also
writes an orbax checkpoint every epoch); the PyTorch runs are plain loops over `benchmarks.torch_reference.training`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

from benchmarks import runners
from hvae_jax.configs import ModelConfig, TrainConfig

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m-implicit"
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def load_ml1m_split(data: pathlib.Path, workdir: pathlib.Path, seed: int, heldout_users: int):
    """The strong-generalization split through the library's loader; a plain adjacency parser if readers are absent."""
    try:
        from hvae_jax.experiment import RunSettings, load_split

        settings = RunSettings(data=str(data), format="adjacency", heldout_users=heldout_users, split_seed=seed,
                               workdir=str(workdir))
        split, _ = load_split(settings, log=lambda message: None)
        return split
    except ImportError:
        from hvae_jax.data.interactions import from_raw_ids
        from hvae_jax.data.splits import strong_generalization

        users, items = [], []
        path = data / "interactions.txt" if data.is_dir() else data
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) > 1:
                users += [fields[0]] * (len(fields) - 1)
                items += fields[1:]
        return strong_generalization(from_raw_ids(users, items, source=str(path)), n_heldout_users=heldout_users,
                                     seed=seed)


def train_jax(split, model_config: ModelConfig, train: TrainConfig, workdir: pathlib.Path) -> dict:
    from hvae_jax.evaluate import evaluate, neural_eval_step
    from hvae_jax.train import fit

    start = time.perf_counter()
    fitted = fit(model_config, train, split, workdir / "jax", progress=False, log=lambda message: None)
    wall = time.perf_counter() - start
    test = evaluate(neural_eval_step(fitted.model, (100,)), fitted.best_params, split.test)
    return {
        "framework": "jax",
        "wall_seconds": wall,
        "train_seconds_excluding_first_epoch": fitted.train_seconds,
        "first_epoch_seconds_including_compile": fitted.compile_seconds,
        "train_users_per_second": fitted.users_per_second,
        "valid_ndcg@100_per_epoch": [row["valid"]["ndcg@100"] for row in fitted.history if "valid" in row],
        "best_epoch": fitted.best_epoch,
        "best_valid_ndcg@100": fitted.best_validation["ndcg@100"],
        "final_valid_ndcg@100": fitted.history[-1]["valid"]["ndcg@100"],
        "test_ndcg@100_at_best": test["ndcg@100"],
        "notes": ["hvae_jax.train.fit: scanned jitted updates, validation and an orbax checkpoint every epoch"],
    }


def train_torch(split, model_config: ModelConfig, train: TrainConfig, optimized: bool) -> dict:
    import torch

    from benchmarks.torch_reference import training
    from benchmarks.torch_reference.models import build_model
    from hvae_jax.train import total_anneal_steps

    torch.manual_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    n_train = split.train.shape[0]
    steps_per_epoch = -(-n_train // train.batch_size)
    anneal_steps = total_anneal_steps(train, steps_per_epoch)
    model = build_model(model_config, split.n_items, sparse_input=optimized)
    if optimized:
        trainer = training.OptimizedTrainer(model, train, max_nnz=training.max_batch_nnz(split.train, train.batch_size),
                                            anneal_steps=anneal_steps)
        scorer = training.make_sparse_scorer(model, compile=False)
        validate = lambda: training.evaluate_optimized(  # noqa: E731
            scorer, split.valid.fold_in, split.valid.heldout, batch_size=1000)
    else:
        trainer = training.ReferenceTrainer(model, train, anneal_steps=anneal_steps)
        validate = lambda: training.evaluate_reference(  # noqa: E731
            model, split.valid.fold_in, split.valid.heldout, batch_size=1000)

    per_epoch, epoch_seconds = [], []
    best = (-1.0, 0, None)
    start = time.perf_counter()
    for epoch in range(1, train.epochs + 1):
        epoch_start = time.perf_counter()
        trainer.run_epoch(split.train, rng.permutation(n_train))
        epoch_seconds.append(time.perf_counter() - epoch_start)
        ndcg = validate()["ndcg@100"]
        per_epoch.append(ndcg)
        if ndcg > best[0]:
            best = (ndcg, epoch, copy.deepcopy(model.state_dict()))
    wall = time.perf_counter() - start
    model.load_state_dict(best[2])
    if optimized:
        test = training.evaluate_optimized(scorer, split.test.fold_in, split.test.heldout, batch_size=1000)
    else:
        test = training.evaluate_reference(model, split.test.fold_in, split.test.heldout, batch_size=1000)
    later_epochs = sum(epoch_seconds[1:])
    notes = [f"torch {torch.__version__}, {torch.get_num_threads()} threads"]
    if optimized:
        notes.append(runners._compile_note(trainer.compiled, trainer.compile_error, True))
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
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Mult-VAE on ml-1m-implicit: hvae_jax vs the PyTorch reference.")
    parser.add_argument("--data", type=pathlib.Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--frameworks", default="jax,torch,torch-optimized")
    parser.add_argument("--seed", type=int, default=98765, help="split seed (Liang et al.'s) and training seed")
    parser.add_argument("--heldout-users", type=int, default=600)
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--device-name", default=f"cpu-{runners.cpu_count()}core")
    args = parser.parse_args(argv)

    model_config = ModelConfig(kind="vae", latents=(200,), hidden=600, input_dropout=0.5)
    # Beta rises linearly to 0.2 over the whole run (the library's default when total_anneal_steps is None).
    train = TrainConfig(epochs=args.epochs, batch_size=500, learning_rate=1e-3, beta_cap=0.2, total_anneal_steps=None,
                        seed=args.seed)
    today = datetime.date.today().isoformat()
    out = args.out or RESULTS_DIR / f"end_to_end-ml-1m-{args.device_name}-{today}.json"
    results = {
        "device": args.device_name, "date": today, "data": str(args.data), "protocol": "strong generalization",
        "heldout_users": args.heldout_users, "split_seed": args.seed, "epochs": args.epochs,
        "model": dataclasses.asdict(model_config), "train": dataclasses.asdict(train), "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="hvae-e2e-") as scratch:
        workdir = pathlib.Path(scratch)
        split = load_ml1m_split(args.data, workdir / "split", args.seed, args.heldout_users)
        results["split"] = split.statistics()
        for framework in args.frameworks.split(","):
            print(f"training {framework} for {args.epochs} epochs ...", file=sys.stderr, flush=True)
            if framework == "jax":
                run = train_jax(split, model_config, train, workdir)
            else:
                run = train_torch(split, model_config, train, optimized=framework == "torch-optimized")
            print(f"  {framework}: best valid NDCG@100 {run['best_valid_ndcg@100']:.4f} (epoch {run['best_epoch']}), "
                  f"final {run['final_valid_ndcg@100']:.4f}, test {run['test_ndcg@100_at_best']:.4f}, "
                  f"wall {run['wall_seconds']:.0f} s", file=sys.stderr, flush=True)
            results["runs"].append(run)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({run["framework"]: {k: run[k] for k in ("best_valid_ndcg@100", "final_valid_ndcg@100",
                                                              "test_ndcg@100_at_best", "wall_seconds")}
                      for run in results["runs"]}, indent=2))
    return results


if __name__ == "__main__":
    main()
