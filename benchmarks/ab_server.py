"""A long-lived measuring process for `benchmarks.refactor_ab`: it builds one JAX Mult-VAE training or evaluation step
with whichever version of hvae_jax is on its PYTHONPATH (the refactored `TrainSetup`, or the earlier
`create_state` / `make_update_chunk` API), compiles it, warms it up, then times one repetition per `run` line read
from stdin and answers with its seconds. Two such processes, one per version, let the driver alternate single
repetitions A, B, A, B, ... seconds apart, so the machine's drift hits both versions alike.

Run by path (it imports nothing from benchmarks/, which differs between versions):
  PYTHONPATH=<version> python benchmarks/ab_server.py '<spec json>'
Protocol: prints `READY <json>` once built; then for each stdin line `run` prints `SECONDS <float>`; `quit` ends.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import scipy.sparse as sp


def load_csr(path: str, prefix: str) -> sp.csr_matrix:
    with np.load(path) as arrays:
        return sp.csr_matrix(
            (np.ones(len(arrays[f"{prefix}_indices"]), np.float32), arrays[f"{prefix}_indices"],
             arrays[f"{prefix}_indptr"]),
            shape=tuple(arrays[f"{prefix}_shape"]),
        )


def build_train(spec: dict, train_matrix):
    """(run_once, info): one timed repetition = `updates` training updates in one jitted, donated chunk."""
    import jax

    import hvae_jax.train as train_module
    from hvae_jax.data.batches import epoch_order, to_device

    matrix = to_device(train_matrix)
    n_users = train_matrix.shape[0]
    if hasattr(train_module, "TrainSetup"):  # the refactored API
        from hvae_jax.configs import MODELS, TrainConfig

        train = TrainConfig(batch_size=spec["batch_size"], learning_rate=1e-3, total_anneal_steps=200_000)
        liang = MODELS.get("multvae-liang", MODELS["multvae"])  # one name or the other, by version
        setup = train_module.TrainSetup.build(liang.config, train, train_matrix)
        chunk = setup.update_chunk(setup.schedule.phases[0])
        state = setup.init_state()
        shuffle_key, train_key, path = setup.keys.shuffle, setup.keys.train, setup.path.name
    else:  # the API before the refactor (commit 62ce15e)
        import dataclasses

        import optax

        from hvae_jax.configs import ModelConfig, TrainConfig
        from hvae_jax.data.batches import max_batch_nnz
        from hvae_jax.models.hvae import build_model

        config = ModelConfig(kind="vae", latents=(200,), hidden=600)
        train = TrainConfig(batch_size=spec["batch_size"], learning_rate=1e-3, total_anneal_steps=200_000)
        train = dataclasses.replace(train, input_path=train_module.resolve_input_path(train, train_matrix))
        model = build_model(config, train_matrix.shape[1])
        optimizer = optax.adam(train.learning_rate)
        keys = train_module.run_keys(train.seed)
        chunk = train_module.make_update_chunk(model, train, optimizer,
                                               max_nnz=max_batch_nnz(train_matrix, spec["batch_size"]),
                                               anneal_steps=train.total_anneal_steps)
        state = train_module.create_state(model, optimizer, 0, key=keys.init)
        shuffle_key, train_key, path = keys.shuffle, keys.train, train.input_path

    def order(repeat: int):
        return epoch_order(jax.random.fold_in(shuffle_key, repeat), n_users, spec["batch_size"])[: spec["updates"]]

    start = time.perf_counter()
    compiled = chunk.lower(state, order(0), train_key, matrix, None).compile()
    compile_seconds = time.perf_counter() - start
    holder = {"state": state, "repeat": 0}

    def run_once() -> float:
        holder["repeat"] += 1
        rows = order(holder["repeat"])
        jax.block_until_ready(rows)  # drawing the order is not part of the update
        start = time.perf_counter()
        holder["state"], metrics = compiled(holder["state"], rows, train_key, matrix, None)
        jax.block_until_ready((holder["state"], metrics))
        return time.perf_counter() - start

    return run_once, {"compile_seconds": compile_seconds, "input_path": path,
                      "users_per_repeat": spec["updates"] * spec["batch_size"]}


def build_eval(spec: dict, train_matrix):
    """(run_once, info): one timed repetition = `evaluate` over `updates` batches of users (the whole call)."""
    import jax

    import hvae_jax.train as train_module
    from hvae_jax.data.splits import EvalSet
    from hvae_jax.evaluate import evaluate

    fold_in, heldout = load_csr(spec["eval_path"], "fold_in"), load_csr(spec["eval_path"], "heldout")
    n_users = spec["updates"] * spec["batch_size"]
    fold_in = fold_in[:n_users]
    eval_set = EvalSet(fold_in, heldout[:n_users], fold_in, np.arange(n_users).astype(str))
    if hasattr(train_module, "TrainSetup"):
        from hvae_jax.configs import MODELS, TrainConfig

        train = TrainConfig(batch_size=spec["batch_size"], learning_rate=1e-3, total_anneal_steps=200_000)
        liang = MODELS.get("multvae-liang", MODELS["multvae"])  # one name or the other, by version
        setup = train_module.TrainSetup.build(liang.config, train, train_matrix)
        params, eval_step, path = setup.init_state().params, setup.path.eval_step(ks=(100,)), setup.path.name
    else:
        from hvae_jax.configs import ModelConfig, TrainConfig
        from hvae_jax.evaluate import neural_eval_step
        from hvae_jax.models.hvae import build_model, init_params

        model = build_model(ModelConfig(kind="vae", latents=(200,), hidden=600), train_matrix.shape[1])
        params = init_params(model, key=train_module.run_keys(98765).init)
        path = train_module.resolve_input_path(TrainConfig(), fold_in)
        eval_step = neural_eval_step(model, ks=(100,), input_path=path)

    def run_once() -> float:
        start = time.perf_counter()
        jax.block_until_ready(evaluate(eval_step, params, eval_set, batch_size=spec["batch_size"]))
        return time.perf_counter() - start

    first = run_once()
    return run_once, {"compile_seconds": first, "compile_seconds_note": "first call, compilation included",
                      "input_path": path, "users_per_repeat": n_users}


def main() -> None:
    spec = json.loads(sys.argv[1])
    import jax

    jax.config.update("jax_default_matmul_precision", "float32")
    train_matrix = load_csr(spec["train_path"], "train")
    run_once, info = (build_train if spec["phase"] == "train" else build_eval)(spec, train_matrix)
    for _ in range(spec.get("warmup", 2)):
        run_once()
    import hvae_jax

    info["hvae_jax_path"] = hvae_jax.__file__
    print("READY " + json.dumps(info), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            print(f"SECONDS {run_once()!r}", flush=True)
        elif command == "quit":
            break


if __name__ == "__main__":
    main()
