"""Where an evaluation step's time goes at one shape: the logits, the top-K selection, and the alternatives tried for
the selection (splitting the batch, `approx_max_k`, `hvae_jax.ranking`'s host top-K, the sparse first layer), beside
`torch.topk` on one and two threads; and whole `evaluate` calls with XLA's and the host's top-K alternated. Medians of
interleaved calls in one process, written as JSON.

  python -m benchmarks.eval_breakdown --shape ml-1m --batch-sizes 500,4840 [--densities 20,60,130,260,500]

The question it answers: why JAX's ML-1M evaluation rows trail the optimised PyTorch's on a CPU (README, "Throughput
against PyTorch").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import statistics
import time

import numpy as np

from benchmarks.throughput import RESULTS_DIR, write_results


def _medians_ms(functions: dict, repeats: int) -> dict[str, float]:
    """Median wall time of each zero-argument function (which blocks until done), the functions interleaved."""
    for function in functions.values():
        function()  # compile and warm up
    seconds = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - start)
    return {name: round(statistics.median(values) * 1e3, 3) for name, values in seconds.items()}


def step_parts(model: str, shape_name: str, batch_size: int, k: int, repeats: int) -> dict:
    """Milliseconds of the jitted scoring pieces of one evaluation batch of `model` at `shape_name`."""
    import jax
    import jax.numpy as jnp

    from benchmarks.runners import model_config, train_config
    from benchmarks.synthetic_shapes import SHAPES, make_shape
    from hvae_jax import ranking
    from hvae_jax.evaluate import model_scorer
    from hvae_jax.train import TrainSetup

    train = make_shape(SHAPES[shape_name], seed=1, n_users=max(batch_size, 1000))
    setup = TrainSetup.build(model_config(model), train_config(model, batch_size), train)
    params = setup.init_state().params
    x = jnp.asarray(train[:batch_size].toarray(), jnp.float32)
    model_ = setup.path.model

    def logits_of(p, rows):
        return model_scorer(model_, p)(rows, None)

    def split_top_k(values, parts):
        pieces = [jax.lax.top_k(chunk, k) for chunk in jnp.split(values, parts, axis=0)]
        return jnp.concatenate([p[0] for p in pieces]), jnp.concatenate([p[1] for p in pieces])

    logits_fn = jax.jit(logits_of)
    scored_fn = jax.jit(lambda p, rows: jax.lax.top_k(jnp.where(rows > 0, -jnp.inf, logits_of(p, rows)), k))
    logits = jax.block_until_ready(logits_fn(params, x))
    top_k_fn = jax.jit(lambda values: jax.lax.top_k(values, k))
    split2_fn = jax.jit(lambda values: split_top_k(values, 2))
    approx_fn = jax.jit(lambda values: jax.lax.approx_max_k(values, k, recall_target=1.0))
    with host_top_k_forced(True):
        scored_host_fn = jax.jit(
            lambda p, rows: ranking.top_k(jnp.where(rows > 0, -jnp.inf, logits_of(p, rows)), k)).lower(
            params, x).compile()
        host_fn = jax.jit(lambda values: ranking.top_k(values, k)).lower(logits).compile()
    np.testing.assert_array_equal(np.asarray(host_fn(logits)[1]), np.asarray(top_k_fn(logits)[1]))
    block = jax.block_until_ready
    functions = {
        "logits": lambda: block(logits_fn(params, x)),
        "logits_and_top_k": lambda: block(scored_fn(params, x)),
        "logits_and_host_top_k": lambda: block(scored_host_fn(params, x)),
        "top_k": lambda: block(top_k_fn(logits)),
        "host_top_k": lambda: block(host_fn(logits)),
        "approx_max_k": lambda: block(approx_fn(logits)),
    }
    if batch_size % 2 == 0:  # two equal halves
        functions["top_k_batch_split_in_2"] = lambda: block(split2_fn(logits))
    times = _medians_ms(functions, repeats)
    try:
        import torch

        values = torch.from_numpy(np.array(logits))  # a writable copy: JAX's buffers are read-only to torch
        before = torch.get_num_threads()
        for threads in (1, 2):
            torch.set_num_threads(threads)
            times[f"torch_topk_{threads}_threads"] = _medians_ms({"t": lambda: torch.topk(values, k)}, repeats)["t"]
        torch.set_num_threads(before)
    except ImportError:
        pass
    times["top_k_share_of_step"] = round(times["top_k"] / times["logits_and_top_k"], 3)
    times["step_lax_over_host_top_k"] = round(times["logits_and_top_k"] / times["logits_and_host_top_k"], 3)
    return {"model": model, "shape": shape_name, "batch_size": batch_size, "n_items": int(train.shape[1]),
            "k": k, "milliseconds": times, "jax_backend": jax.default_backend()}


@contextlib.contextmanager
def host_top_k_forced(on: bool):
    """`ranking.top_k` on the host (where it can run at all) or never, for what is traced inside."""
    from hvae_jax import ranking

    before = ranking.HOST_TOP_K_MIN_ELEMENTS, ranking.HOST_TOP_K_MAX_ITEMS
    ranking.HOST_TOP_K_MIN_ELEMENTS, ranking.HOST_TOP_K_MAX_ITEMS = (0, 1 << 62) if on else (1 << 62, 0)
    try:
        yield
    finally:
        ranking.HOST_TOP_K_MIN_ELEMENTS, ranking.HOST_TOP_K_MAX_ITEMS = before


def _eval_fixture(model: str, shape, batch_size: int, n_users: int):
    """(set-up, initial parameters, evaluation set) of `model` on synthetic data of `shape`: training users drawn with
    seed 1, `n_users` evaluation users with seed 3 split into fold-in and held-out items."""
    from benchmarks.runners import model_config, train_config
    from benchmarks.synthetic_shapes import make_shape, split_heldout
    from hvae_jax.data.splits import EvalSet
    from hvae_jax.train import TrainSetup

    train = make_shape(shape, seed=1, n_users=min(shape.n_users, 5000))
    fold_in, heldout = split_heldout(make_shape(shape, seed=3, n_users=n_users), seed=0)
    eval_set = EvalSet(fold_in, heldout, fold_in, np.arange(n_users).astype(str))
    setup = TrainSetup.build(model_config(model), train_config(model, batch_size), train)
    return setup, setup.init_state().params, eval_set


def _alternated_evaluations(steps: dict, params, eval_set, batch_size: int, pairs: int) -> dict[str, list[float]]:
    """Seconds of a whole `evaluate` call with each step per pair, the order swapped every other pair."""
    import jax

    from hvae_jax.evaluate import evaluate

    names = list(steps)
    seconds = {name: [] for name in names}
    for pair in range(pairs):
        for name in (names if pair % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            jax.block_until_ready(evaluate(steps[name], params, eval_set, batch_size=batch_size))
            seconds[name].append(time.perf_counter() - start)
    return seconds


def _pair_ratios(seconds: dict[str, list[float]], numerator: str, denominator: str, pairs: int) -> dict:
    ratios = [n / d for n, d in zip(seconds[numerator], seconds[denominator])]
    return {"median": statistics.median(ratios),
            "quartiles": statistics.quantiles(ratios, n=4) if pairs > 1 else None, "pairs": pairs}


def top_k_paths_pairs(model: str, shape_name: str, batch_size: int, n_users: int, pairs: int) -> dict:
    """The whole `evaluate` call with XLA's top-K and with the host's (`hvae_jax.ranking`), alternated; per-pair
    time ratios, and the metrics of both (which must be identical)."""
    from benchmarks.synthetic_shapes import SHAPES
    from hvae_jax.evaluate import evaluate

    setup, params, eval_set = _eval_fixture(model, SHAPES[shape_name], batch_size, n_users)
    steps, summaries = {}, {}
    for name, on in (("xla", False), ("host", True)):
        steps[name] = setup.path.eval_step((20, 50, 100))
        with host_top_k_forced(on):  # traced (and cached) on the first call
            summaries[name] = evaluate(steps[name], params, eval_set, batch_size=batch_size)
    identical = all(np.array_equal(summaries["xla"][key], summaries["host"][key]) for key in summaries["xla"])
    seconds = _alternated_evaluations(steps, params, eval_set, batch_size, pairs)
    return {"model": model, "shape": shape_name, "batch_size": batch_size, "n_users": n_users,
            "users_per_second": {name: n_users / statistics.median(values) for name, values in seconds.items()},
            "xla_over_host_time": _pair_ratios(seconds, "xla", "host", pairs),
            "metrics_identical": identical}


def input_paths_pairs(model: str, shape_name: str, batch_size: int, n_users: int, pairs: int,
                      items_per_user: float | None = None) -> dict:
    """The whole `evaluate` call with the dense and the sparse first layer, alternated; per-pair time ratios. With
    `items_per_user`, the shape's catalogue with users that hold that many items on average (another density)."""
    import dataclasses

    from benchmarks.synthetic_shapes import SHAPES
    from hvae_jax import input_paths
    from hvae_jax.evaluate import evaluate

    shape = SHAPES[shape_name]
    if items_per_user is not None:
        shape = dataclasses.replace(shape, name=f"{shape_name}-{items_per_user:g}-per-user",
                                    mean_items_per_user=items_per_user)
    setup, params, eval_set = _eval_fixture(model, shape, batch_size, n_users)
    steps = {cls.name: cls(setup.path.model, setup.train, setup.path.max_nnz).eval_step((100,))
             for cls in (input_paths.DensePath, input_paths.SparsePath)}
    ndcg = {name: float(np.mean(evaluate(step, params, eval_set, batch_size=batch_size)["ndcg@100"]))
            for name, step in steps.items()}
    seconds = _alternated_evaluations(steps, params, eval_set, batch_size, pairs)
    fold_in = eval_set.fold_in
    return {"model": model, "shape": shape.name, "batch_size": batch_size, "n_users": n_users,
            "fold_in_density": fold_in.nnz / (fold_in.shape[0] * fold_in.shape[1]),
            "users_per_second": {name: n_users / statistics.median(values) for name, values in seconds.items()},
            "dense_over_sparse_time": _pair_ratios(seconds, "dense", "sparse", pairs),
            "ndcg@100_of_untrained_model": ndcg}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="multvae")
    parser.add_argument("--shape", default="ml-1m")
    parser.add_argument("--batch-sizes", default="500,4840")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--pairs", type=int, default=9,
                        help="evaluate() pairs, dense/sparse input and XLA/host top-K (0: skip)")
    parser.add_argument("--eval-users", type=int, default=2000)
    parser.add_argument("--densities", default="",
                        help="mean items per user, comma-separated: dense/sparse evaluate() pairs at each (the "
                             "crossover behind input_paths.EVAL_SPARSE_BELOW_DENSITY; e.g. 20,60,130,260,500)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS_DIR / "eval-breakdown-cpu-2core.json")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor() or
               platform.machine(), "load_average_before": list(os.getloadavg()), "steps": []}
    for batch_size in batches:
        results["steps"].append(step_parts(args.model, args.shape, batch_size, 100, args.repeats))
        print(json.dumps(results["steps"][-1]), flush=True)
    if args.pairs:
        results["top_k_paths"] = [top_k_paths_pairs(args.model, args.shape, batch_size, max(args.eval_users, batch_size),
                                                    args.pairs)
                                  for batch_size in batches]
        for row in results["top_k_paths"]:
            print(json.dumps(row), flush=True)
        results["input_paths"] = input_paths_pairs(args.model, args.shape, batches[0], args.eval_users, args.pairs)
        print(json.dumps(results["input_paths"]), flush=True)
    if args.densities:
        results["input_paths_by_density"] = []
        for items_per_user in (float(value) for value in args.densities.split(",")):
            row = input_paths_pairs(args.model, args.shape, batches[0], args.eval_users, args.pairs or 7,
                                    items_per_user)
            results["input_paths_by_density"].append(row)
            print(json.dumps(row), flush=True)
    results["load_average_after"] = list(os.getloadavg())
    write_results(args.out, results)
    print(f"written {args.out}")
    return results


if __name__ == "__main__":
    main()
