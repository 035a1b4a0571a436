"""One throughput measurement per call: a framework (jax, torch, torch-optimized) training or evaluating one model on
one data shape at one batch size. `benchmarks.throughput` runs each in a fresh process so that peak memory is that
configuration's alone.

Every runner warms up first (compilation is timed separately), then times `repeats` repetitions of a fixed amount of
work (`updates` training updates, or `updates` evaluation batches) and reports the median.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Callable

import numpy as np
import scipy.sparse as sp

FRAMEWORKS = ("jax", "torch", "torch-optimized")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What one worker measures.

    Attributes:
      framework: "jax", "torch" or "torch-optimized".
      model: "multvae", "multdae" or "hvae" (2-level bottom-up VampPrior, gated: Kim & Suh's H+Vamp).
      shape: data shape name ("ml-20m", "ml-1m").
      batch_size: users per update / per evaluation batch.
      phase: "train" or "eval".
      precision: "float32" or "tf32" (GPU matmuls).
      updates: updates (train) or batches (eval) per timed repetition.
      repeats: timed repetitions; the median is reported.
      train_path: .npz of the training CSR matrix.
      eval_path: .npz of the evaluation fold-in and held-out CSR matrices.
      torch_compile: try torch.compile in the torch-optimized runner.
    """

    framework: str
    model: str
    shape: str
    batch_size: int
    phase: str
    precision: str
    updates: int
    repeats: int
    train_path: str
    eval_path: str
    torch_compile: bool = True


@dataclasses.dataclass
class Measurement:
    """What a runner reports (`peak_memory_bytes` is filled in by the worker)."""

    users_per_second: float
    seconds_per_repeat: list[float]
    compile_seconds: float
    users_per_repeat: int
    peak_memory_bytes: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def model_config(name: str):
    """The benchmarked architectures, at their published sizes."""
    from hvae_jax.configs import ModelConfig

    if name == "multvae":
        return ModelConfig(kind="vae", latents=(200,), hidden=600)
    if name == "multdae":
        return ModelConfig(kind="dae", dae_latent=200)
    if name == "hvae":
        return ModelConfig(kind="vae", latents=(200, 200), hidden=600, prior="vamp", n_pseudo_inputs=1000, gated=True,
                           logvar_clip=(-12.0, 4.0))
    raise ValueError(f"unknown model {name!r}; expected multvae, multdae or hvae")


def train_config(name: str, batch_size: int):
    from hvae_jax.configs import TrainConfig

    weight_decay = 0.01 / 500 if name == "multdae" else 0.0
    return TrainConfig(batch_size=batch_size, learning_rate=1e-3, weight_decay=weight_decay, total_anneal_steps=200_000)


def load_csr(path: str, prefix: str) -> sp.csr_matrix:
    with np.load(path) as arrays:
        return sp.csr_matrix(
            (np.ones(len(arrays[f"{prefix}_indices"]), np.float32), arrays[f"{prefix}_indices"],
             arrays[f"{prefix}_indptr"]),
            shape=tuple(arrays[f"{prefix}_shape"]),
        )


def save_csr(path: str, **matrices: sp.csr_matrix) -> None:
    arrays = {}
    for prefix, matrix in matrices.items():
        arrays.update({f"{prefix}_indices": matrix.indices, f"{prefix}_indptr": matrix.indptr,
                       f"{prefix}_shape": np.asarray(matrix.shape)})
    np.savez(path, **arrays)


def _median_rate(seconds: list[float], users: int) -> float:
    return users / statistics.median(seconds)


def _time_repeats(run_once: Callable[[int], None], repeats: int) -> list[float]:
    """Wall seconds of `run_once(r)` for r = 1..repeats (r = 0 was the warm-up)."""
    seconds = []
    for repeat in range(1, repeats + 1):
        start = time.perf_counter()
        run_once(repeat)
        seconds.append(time.perf_counter() - start)
    return seconds


# ----------------------------------------------------------------------------------------------------------------------
# JAX: the library's own training chunk (one jit scanning over updates, data on the device) and evaluation path.


def run_jax(spec: RunSpec, train_matrix: sp.csr_matrix) -> Measurement:
    import jax
    import optax

    from hvae_jax.data.batches import epoch_order, max_batch_nnz, to_device
    from hvae_jax.models.hvae import build_model
    from hvae_jax.train import create_state, make_update_chunk, resolve_input_path

    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if spec.precision == "tf32" else "float32")
    config = model_config(spec.model)
    n_items = train_matrix.shape[1]
    model = build_model(config, n_items)
    keys = jax.random.split(jax.random.key(0), 3)

    if spec.phase == "eval":
        return _run_jax_eval(spec, model, keys[0])

    # As `hvae_jax.train.fit` does: "auto" becomes the sparse first layer below 1% density (ML-20M), dense above.
    train = dataclasses.replace(train_config(spec.model, spec.batch_size),
                                input_path=resolve_input_path(train_config(spec.model, spec.batch_size), train_matrix))
    optimizer = optax.adam(train.learning_rate)
    n_users = train_matrix.shape[0]
    update_chunk = make_update_chunk(model, train, optimizer, max_nnz=max_batch_nnz(train_matrix, spec.batch_size),
                                     anneal_steps=train.total_anneal_steps)
    matrix = to_device(train_matrix)
    state = create_state(model, optimizer, 0, key=keys[0])

    def user_order(repeat: int):
        return epoch_order(jax.random.fold_in(keys[1], repeat), n_users, spec.batch_size)[: spec.updates]

    start = time.perf_counter()
    compiled = update_chunk.lower(state, user_order(0), keys[2], matrix, None).compile()
    compile_seconds = time.perf_counter() - start

    def run_once(repeat: int) -> None:
        nonlocal state
        state, metrics = compiled(state, user_order(repeat), keys[2], matrix, None)
        jax.block_until_ready((state, metrics))

    run_once(0)
    seconds = _time_repeats(run_once, spec.repeats)
    users = spec.updates * spec.batch_size
    return Measurement(_median_rate(seconds, users), seconds, compile_seconds, users,
                       notes=["hvae_jax.train.make_update_chunk: all updates of a repeat in one jitted lax.scan",
                              f"jax input_path: {train.input_path} (as fit resolves 'auto')"])


def _run_jax_eval(spec: RunSpec, model, init_key) -> Measurement:
    import jax

    from hvae_jax.configs import TrainConfig
    from hvae_jax.data.splits import EvalSet
    from hvae_jax.evaluate import evaluate, neural_eval_step
    from hvae_jax.models.hvae import init_params
    from hvae_jax.train import resolve_input_path

    fold_in, heldout = load_csr(spec.eval_path, "fold_in"), load_csr(spec.eval_path, "heldout")
    n_users = spec.updates * spec.batch_size
    fold_in = fold_in[:n_users]
    # Strong generalization: the exclusions are the fold-in items, the same matrix object (the library keys on it).
    eval_set = EvalSet(fold_in, heldout[:n_users], fold_in, np.arange(n_users).astype(str))
    params = init_params(model, key=init_key)
    # The first layer is fed as `fit` would train and evaluate this data: sparse below 1% density.
    input_path = resolve_input_path(TrainConfig(), fold_in)
    eval_step = neural_eval_step(model, ks=(100,), input_path=input_path)

    def run_once(repeat: int) -> None:
        jax.block_until_ready(evaluate(eval_step, params, eval_set, batch_size=spec.batch_size))

    start = time.perf_counter()
    run_once(0)
    first_call = time.perf_counter() - start
    seconds = _time_repeats(run_once, spec.repeats)
    return Measurement(
        _median_rate(seconds, n_users), seconds, max(first_call - statistics.median(seconds), 0.0), n_users,
        notes=["hvae_jax.evaluate.evaluate (the whole call: CSR to the device, per batch densify + scores + top-100 "
               "+ metrics, summary); compile_seconds = first call - median call",
               f"jax eval input_path: {input_path} (as fit resolves 'auto')"],
    )


# ----------------------------------------------------------------------------------------------------------------------
# PyTorch: the reference (host-densified batches, eager) and the optimised variant (sparse first layer, compiled).


def _torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_torch(spec: RunSpec, train_matrix: sp.csr_matrix) -> Measurement:
    import torch

    from benchmarks.torch_reference import training
    from benchmarks.torch_reference.models import build_model

    device = _torch_device()
    tf32 = spec.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.manual_seed(0)
    optimized = spec.framework == "torch-optimized"
    config = model_config(spec.model)
    n_items = train_matrix.shape[1]
    model = build_model(config, n_items, sparse_input=optimized).to(device)
    notes = [f"torch {torch.__version__} on {device.type}, {torch.get_num_threads()} threads"]

    if spec.phase == "eval":
        return _run_torch_eval(spec, model, optimized, device, notes)

    train = train_config(spec.model, spec.batch_size)
    if optimized:
        trainer = training.OptimizedTrainer(
            model, train, max_nnz=training.max_batch_nnz(train_matrix, spec.batch_size),
            anneal_steps=train.total_anneal_steps, device=device, compile=spec.torch_compile,
        )
    else:
        trainer = training.ReferenceTrainer(model, train, anneal_steps=train.total_anneal_steps, device=device)
    rng = np.random.default_rng(0)
    n_users = train_matrix.shape[0]

    def run_once(repeat: int) -> None:
        order = rng.permutation(n_users)
        for update in range(spec.updates):
            trainer.step(train_matrix, order[update * spec.batch_size : (update + 1) * spec.batch_size])
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    run_once(0)
    first_repeat = time.perf_counter() - start
    seconds = _time_repeats(run_once, spec.repeats)
    compile_seconds = 0.0
    if optimized:
        compile_seconds = max(first_repeat - statistics.median(seconds), 0.0)
        notes.append(_compile_note(trainer.compiled, trainer.compile_error, spec.torch_compile))
    users = spec.updates * spec.batch_size
    return Measurement(_median_rate(seconds, users), seconds, compile_seconds, users, notes=notes)


def _compile_note(compiled: bool, error: str | None, requested: bool) -> str:
    if compiled:
        return "torch.compile (inductor) on the loss; compile_seconds = first repeat - median repeat"
    if not requested:
        return "torch.compile switched off (--no-torch-compile): eager"
    return f"torch.compile failed, ran eagerly: {error}"


def _run_torch_eval(spec: RunSpec, model, optimized: bool, device, notes: list[str]) -> Measurement:
    import torch

    from benchmarks.torch_reference import training

    fold_in, heldout = load_csr(spec.eval_path, "fold_in"), load_csr(spec.eval_path, "heldout")
    n_users = spec.updates * spec.batch_size
    fold_in, heldout = fold_in[:n_users], heldout[:n_users]
    model.eval()
    if optimized:
        scorer = training.make_sparse_scorer(model, compile=spec.torch_compile)
        evaluate = lambda: training.evaluate_optimized(scorer, fold_in, heldout, batch_size=spec.batch_size,  # noqa
                                                       device=device)
    else:
        evaluate = lambda: training.evaluate_reference(model, fold_in, heldout, batch_size=spec.batch_size,  # noqa
                                                       device=device)

    def run_once(repeat: int) -> None:
        evaluate()
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    compile_error = None
    try:
        run_once(0)
    except Exception as error:  # noqa: BLE001 - a compiler failure: measure the eager scorer instead
        if not (optimized and spec.torch_compile):
            raise
        compile_error = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        scorer = training.make_sparse_scorer(model, compile=False)
        start = time.perf_counter()
        run_once(0)
    first_call = time.perf_counter() - start
    seconds = _time_repeats(run_once, spec.repeats)
    compile_seconds = max(first_call - statistics.median(seconds), 0.0) if optimized else 0.0
    if optimized:
        notes.append(_compile_note(compile_error is None and spec.torch_compile, compile_error, spec.torch_compile))
    return Measurement(_median_rate(seconds, n_users), seconds, compile_seconds, n_users, notes=notes)


# ----------------------------------------------------------------------------------------------------------------------
# Peak memory of this process.


def reset_peak_rss() -> bool:
    """Resets the kernel's resident-set high-water mark (VmHWM); False where /proc does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def resident_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def peak_resident_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
