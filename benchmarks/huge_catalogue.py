"""A 1,000,000-item catalogue trained and evaluated with the item-sharded, chunked layers, on forced host devices:

  python -m benchmarks.huge_catalogue --devices 4 --out benchmarks/results/huge-catalogue-cpu-2core.json

Synthetic users (power-law item popularity, log-normal basket sizes) over a catalogue of --items columns, every
column kept. The model's n_items-wide layers are split over --devices devices; each scores items in chunks whose
[batch, chunk] float32 logits fit --logits-budget-mb. Writes: the layout, seconds per update and per evaluated user
(after compilation), XLA's compiled temporary memory for the update and the evaluation step next to the dense
[batch, n_items] logits they avoid, the parameter and optimizer bytes, and the process's peak resident memory.
Forced host devices share one machine's memory and cores: this shows the memory bound and that the program runs,
not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import sys


def _force_devices_before_jax(argv: list[str]) -> None:
    # XLA reads the flag when JAX initialises its backend, so it must be set before `import jax`.
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--devices", type=int, default=4)
    known, _ = parser.parse_known_args(argv)
    if "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={known.devices}".strip()


_force_devices_before_jax(sys.argv[1:])

import datetime
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from benchmarks.runners import peak_resident_bytes, reset_peak_rss
from hvae_jax import input_paths
from hvae_jax.configs import TrainConfig, VAEConfig
from hvae_jax.data.batches import epoch_order, to_device
from hvae_jax.data.splits import EvalSet
from hvae_jax.evaluate import evaluate
from hvae_jax.parallel import item_mesh
from hvae_jax.train import TrainSetup

MIB = 2**20


def power_law_users(n_users: int, n_items: int, mean_items: float, seed: int) -> sp.csr_matrix:
    """[n_users, n_items] binary CSR: each user draws a log-normal number of distinct items, item i (after a random
    relabelling) with probability proportional to (i + 1)^-0.8."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, n_items + 1, dtype=np.float64) ** -0.8
    cumulative = np.cumsum(weights[rng.permutation(n_items)])
    cumulative /= cumulative[-1]
    sizes = np.clip(rng.lognormal(np.log(mean_items) - 0.5, 1.0, n_users).astype(int), 5, 2000)
    rows, cols = [], []
    for user, size in enumerate(sizes):
        items = np.unique(np.searchsorted(cumulative, rng.random(size)))
        rows.append(np.full(items.size, user))
        cols.append(np.minimum(items, n_items - 1))
    data = np.ones(sum(c.size for c in cols), np.float32)
    return sp.csr_matrix((data, (np.concatenate(rows), np.concatenate(cols))), shape=(n_users, n_items))


def held_out(matrix: sp.csr_matrix, seed: int) -> EvalSet:
    """Liang et al.'s fold-in / held-out split of every row (20% held out)."""
    rng = np.random.default_rng(seed)
    fold_rows, fold_cols, held_rows, held_cols = [], [], [], []
    for user in range(matrix.shape[0]):
        items = matrix.indices[matrix.indptr[user] : matrix.indptr[user + 1]]
        mask = np.zeros(items.size, bool)
        mask[rng.choice(items.size, int(0.2 * items.size), replace=False)] = True
        held_rows.append(np.full(mask.sum(), user)), held_cols.append(items[mask])
        fold_rows.append(np.full((~mask).sum(), user)), fold_cols.append(items[~mask])

    def csr(rows, cols):
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        return sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=matrix.shape)

    fold_in = csr(fold_rows, fold_cols)
    return EvalSet(fold_in=fold_in, heldout=csr(held_rows, held_cols), exclude=fold_in,
                   user_ids=np.arange(matrix.shape[0]))


def tree_bytes(tree) -> int:
    return int(sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=4, help="devices of the items axis (forced on a CPU host)")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--train-users", type=int, default=3000)
    parser.add_argument("--eval-users", type=int, default=500)
    parser.add_argument("--mean-items", type=float, default=60.0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--updates", type=int, default=6, help="updates timed after the compiling call")
    parser.add_argument("--logits-budget-mb", type=float, default=64.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/huge-catalogue-cpu-2core.json")
    args = parser.parse_args()
    reset_peak_rss()

    mesh = item_mesh(args.devices)
    matrix = power_law_users(args.train_users + args.eval_users, args.items, args.mean_items, args.seed)
    train_matrix, eval_set = matrix[: args.train_users], held_out(matrix[args.train_users :], args.seed + 1)
    print(f"{args.items} items, {train_matrix.nnz} training interactions, {len(jax.devices())} devices", flush=True)

    config = VAEConfig(name="multvae", latents=(args.latent,), hidden=args.hidden)
    budget = int(args.logits_budget_mb * MIB)
    train = TrainConfig(batch_size=args.batch_size, learning_rate=1e-3, total_anneal_steps=1000, seed=args.seed)
    # The one training set-up `fit` uses: the item-sharded input path plans the catalogue's layout over the mesh.
    start = time.perf_counter()
    setup = TrainSetup.build(config, train, train_matrix, catalogue_mesh=mesh, logits_budget_bytes=budget)
    layout = setup.path.catalogue.layout
    print(input_paths.describe(setup.path), flush=True)
    state = setup.init_state()
    jax.block_until_ready(state)
    init_seconds = time.perf_counter() - start
    keys = setup.keys
    update_chunk = setup.update_chunk(setup.schedule.phases[0])
    device_matrix = to_device(train_matrix)
    order = epoch_order(keys.shuffle, args.train_users, args.batch_size)
    n_steps = order.shape[0]
    steps = jnp.tile(order, (math.ceil((args.updates + 1) / n_steps), 1))[: args.updates + 1]

    start = time.perf_counter()
    compiled_update = update_chunk.lower(state, steps[:1], keys.train, device_matrix, None).compile()
    compile_seconds = time.perf_counter() - start
    update_memory = compiled_update.memory_analysis()
    start = time.perf_counter()
    state, metrics = update_chunk(state, steps[:1], keys.train, device_matrix, None)
    jax.block_until_ready(state)
    first_call = time.perf_counter() - start
    update_seconds = []
    for step in range(1, args.updates + 1):
        start = time.perf_counter()
        state, metrics = update_chunk(state, steps[step : step + 1], keys.train, device_matrix, None)
        jax.block_until_ready(state)
        update_seconds.append(time.perf_counter() - start)
    loss = float(metrics["loss"][-1])
    print(f"update: median {np.median(update_seconds):.2f} s, loss {loss:.1f}", flush=True)

    eval_step = setup.path.eval_step(ks=(20, 100))
    eval_batch = min(args.batch_size, eval_set.n_users)
    start = time.perf_counter()
    evaluate(eval_step, state.params, eval_set, batch_size=eval_batch)
    eval_first = time.perf_counter() - start
    start = time.perf_counter()
    results = evaluate(eval_step, state.params, eval_set, batch_size=eval_batch)
    eval_seconds = time.perf_counter() - start
    print(f"evaluation: {eval_seconds:.2f} s for {eval_set.n_users} users, ndcg@100 {results['ndcg@100']:.4f}",
          flush=True)

    dense_logits = args.batch_size * args.items * 4
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": (f"CPU host, {os.cpu_count()} cores, {len(jax.devices())} forced host devices sharing its memory"
                    if jax.devices()[0].platform == "cpu"
                    else f"{len(jax.devices())} x {jax.devices()[0].device_kind}"),
        "command": "python -m benchmarks.huge_catalogue " + " ".join(sys.argv[1:]),
        "model": f"Mult-VAE [I-{args.hidden}-{args.latent}-{args.hidden}-I], multinomial, Adam",
        "n_items": args.items,
        "train_users": args.train_users,
        "train_interactions": int(train_matrix.nnz),
        "eval_users": eval_set.n_users,
        "batch_size": args.batch_size,
        "layout": {"n_padded": layout.n_padded, "devices": layout.n_shards, "chunk": layout.chunk,
                   "chunks_per_device": layout.chunks_per_shard},
        "logits_budget_bytes": budget,
        "largest_logits_block_bytes_per_device": args.batch_size * layout.chunk * 4,
        "dense_logits_bytes_avoided": dense_logits,
        "update_compiled_temp_bytes_per_device": int(update_memory.temp_size_in_bytes),
        "parameter_bytes": tree_bytes(state.params),
        "optimizer_state_bytes": tree_bytes(state.opt_state),
        "setup_and_init_seconds": init_seconds,
        "update_compile_seconds": compile_seconds,
        "first_update_seconds": first_call,
        "update_seconds": update_seconds,
        "median_update_seconds": float(np.median(update_seconds)),
        "train_users_per_second": args.batch_size / float(np.median(update_seconds)),
        "final_loss": loss,
        "loss_is_finite": bool(np.isfinite(loss)),
        "eval_first_seconds_incl_compile": eval_first,
        "eval_seconds": eval_seconds,
        "eval_users_per_second": eval_set.n_users / eval_seconds,
        "eval_ndcg@100_after_few_updates": results["ndcg@100"],
        "eval_recall@20_after_few_updates": results["recall@20"],
        "peak_resident_bytes": peak_resident_bytes(),
        "note": "temp bytes: XLA's memory analysis of the compiled SPMD update (one device's program); the dense "
                "path would hold at least one [batch, n_items] float32 logits matrix (dense_logits_bytes) and its "
                "gradient. Peak resident bytes: the whole process, all forced devices, parameters, Adam state, data",
    }
    print(json.dumps({k: v for k, v in report.items() if k != "update_seconds"}, indent=2))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
