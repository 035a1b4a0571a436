"""One throughput measurement per call: a framework (jax, torch, torch-optimized) training or evaluating one model on
one data shape at one batch size. `benchmarks.throughput` runs each in a fresh process so that peak memory is that
configuration's alone.

Every runner warms up first (compilation is timed separately), then times `repeats` repetitions of a fixed amount of
work (`updates` training updates, or `updates` evaluation batches) and reports the median.

The JAX side trains exactly as `hvae_jax.train.fit` does, through the library's one training set-up
(`hvae_jax.train.TrainSetup`: input path, model, grouped optimizer, schedule, keys and the jitted, donated chunk of
updates); the models are the named ones of `hvae_jax.configs.MODELS`, with the training settings that belong to
each method (Kim & Suh's optimizer, RecVAE's per-user KL weight and alternating phases) at the benchmark's batch
size.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

FRAMEWORKS = ("jax", "torch", "torch-optimized")
NEURAL_MODELS = ("multvae", "multdae", "hvae", "hvae-recvae", "hvae-vamp", "hvamp", "recvae")
# Benchmark-only architectures, beside the named models: "hvae-vamp" is the two-level gated VampPrior model (K = 1000
# pseudo-inputs) that `--model hvae` was before the hierarchy ablation (benchmarks/hierarchy.py, "vamp-gated"),
# kept to time the VampPrior's pass.
BENCHMARK_ONLY = {"hvae-vamp": "vamp-gated"}
# The benchmarks' "multvae" is Liang et al.'s published [I-600-200-600-I], the network of the PyTorch reference and
# of the accuracy tables' Mult-VAE rows; `--model multvae` has a linear decoder since the catalogue study (README
# "Defaults across catalogue shapes") and Liang's network is `--model multvae-liang`.
PUBLISHED = {"multvae": "multvae-liang"}


def published_model(name: str):
    """The named model of `hvae_jax.configs.MODELS` that the benchmarks' `name` trains, carrying `name` as its
    label (Liang's network for "multvae")."""
    from hvae_jax.configs import MODELS

    named = MODELS[PUBLISHED.get(name, name)]
    return dataclasses.replace(named, name=name, config=dataclasses.replace(named.config, name=name))


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What one worker measures.

    Attributes:
      framework: "jax", "torch" or "torch-optimized".
      model: a neural model of `hvae_jax.configs.MODELS` ("multvae", "multdae", "hvae", "hvamp", "recvae").
      shape: data shape name ("ml-20m", "ml-1m", ...).
      batch_size: users per update / per evaluation batch.
      phase: "train" or "eval".
      precision: "float32" or "tf32" (GPU matmuls).
      updates: updates (train) or batches (eval) per timed repetition.
      repeats: timed repetitions; the median is reported.
      train_path: .npz of the training CSR matrix.
      eval_path: .npz of the evaluation fold-in and held-out CSR matrices.
      torch_compile: try torch.compile in the torch-optimized runner.
      schedule_phase: which phase of the model's training schedule the updates run ("joint"; RecVAE: "encoder" or
        "decoder"); None: the schedule's first.
      prior_probe: also time the prior's per-batch pass (the VampPrior's K pseudo-inputs through the encoder,
        forward and backward) alone, as a fraction of the update.
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
    schedule_phase: str | None = None
    prior_probe: bool = False


@dataclasses.dataclass
class Measurement:
    """What a runner reports (`peak_memory_bytes` is filled in by the worker)."""

    users_per_second: float
    seconds_per_repeat: list[float]
    compile_seconds: float
    users_per_repeat: int
    peak_memory_bytes: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    extra: dict = dataclasses.field(default_factory=dict)


def model_config(name: str):
    """The benchmarked architecture: the named model of `hvae_jax.configs.MODELS`, at its published size."""
    import dataclasses

    from hvae_jax.configs import MODELS, is_neural

    if name in BENCHMARK_ONLY:
        from benchmarks.hierarchy import CANDIDATES

        return dataclasses.replace(MODELS["hvae"].config, name=name, **CANDIDATES[BENCHMARK_ONLY[name]][0])
    if name not in MODELS or not is_neural(MODELS[name].config):
        raise ValueError(f"unknown neural model {name!r}; expected one of {', '.join(NEURAL_MODELS)}")
    return published_model(name).config


def train_config(name: str, batch_size: int):
    """The model's own training settings (its optimizer, KL weighting and schedule) at `batch_size`.

    Liang et al.'s annealing over 200,000 updates stands in for a run's length where the method anneals by update;
    Kim & Suh's warm-up (by epoch) and RecVAE's per-user weight keep theirs.
    """
    from hvae_jax.configs import MODELS, TrainConfig

    if name in BENCHMARK_ONLY:
        from benchmarks.hierarchy import CANDIDATES

        settings = {**dict(MODELS["hvae"].train), **CANDIDATES[BENCHMARK_ONLY[name]][1]}
    else:
        settings = dict(published_model(name).train)
    settings.update(batch_size=batch_size)
    settings.setdefault("learning_rate", 1e-3)
    if name == "multdae":
        settings.setdefault("weight_decay", 0.01 / 500)  # Liang et al.'s notebook: lam = 0.01 / batch size
    if settings.get("anneal_epochs") is None:
        settings.setdefault("total_anneal_steps", 200_000)
    return TrainConfig(**settings)


def schedule_phases(name: str) -> tuple[str, ...]:
    """The phases of the model's training schedule ("joint"; RecVAE: "encoder", "decoder")."""
    from hvae_jax.schedules import build_schedule

    train = train_config(name, 500)
    schedule = build_schedule(train, n_levels=model_config(name).n_levels, steps_per_epoch=1)
    return tuple(phase.name for phase in schedule.phases)


def row_label(model: str, schedule_phase: str | None) -> str:
    """The model's label in tables: "recvae (encoder)" for a phase of an alternating schedule."""
    return model if schedule_phase in (None, "joint") else f"{model} ({schedule_phase})"


def torch_unsupported(config) -> str | None:
    """Why the PyTorch reference (benchmarks/torch_reference) cannot run `config` faithfully, or None when it can:
    the reference's own answer where it gives one (`models.unsupported`)."""
    from benchmarks.torch_reference import models

    if hasattr(models, "unsupported"):
        return models.unsupported(config)
    # An older reference: shared-branch MLP encoders with one hidden layer per network, standard or VampPrior.
    if config.kind == "vae" and (config.encoder != "mlp" or config.branches != "shared" or config.encoder_layers != 1
                                 or config.decoder_layers != 1 or config.prior not in ("standard", "vamp")):
        return "this PyTorch reference implements shared-branch MLP encoders with the standard or VampPrior only"
    return None


def run_module_worker(module: str, arguments: list[str], timeout: float, *, code: pathlib.Path | None = None,
                      env: dict[str, str] | None = None) -> tuple[dict | None, str | None]:
    """Runs `python -m <module> <arguments>` in a fresh process (from the `code` snapshot when given) and returns
    (the JSON of its `RESULT ` line, None), or (None, why there is none).

    The process gets no GPU memory preallocation, quiet TensorFlow-style logs, `env` on top, and sleeping OpenMP
    waiters unless the caller's environment says otherwise: PyTorch's spinning waiters collapse its CPU throughput
    (2-5x, erratic) whenever other processes share the cores.
    """
    environment = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    environment.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if code is not None:
        environment["PYTHONPATH"] = str(code)
    command = [sys.executable, "-m", module, *arguments]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment,
                                   cwd=code or pathlib.Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return None, f"worker timed out after {timeout:.0f} s"
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]), None
    tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
    return None, f"worker exited with {completed.returncode}: {' | '.join(tail)[-800:]}"


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
# JAX: the library's own training set-up (one jit scanning over updates, data on the device) and evaluation path.


def jax_setup(spec: RunSpec, train_matrix: sp.csr_matrix, **build):
    """`hvae_jax.train.TrainSetup` for this measurement, built as `fit` builds it (input path "auto")."""
    from hvae_jax.train import TrainSetup

    return TrainSetup.build(model_config(spec.model), train_config(spec.model, spec.batch_size), train_matrix, **build)


def schedule_phase(setup, name: str | None):
    phases = {phase.name: phase for phase in setup.schedule.phases}
    if name is None:
        return setup.schedule.phases[0]
    if name not in phases:
        raise ValueError(f"{setup.model_config.label} has schedule phases {', '.join(phases)}, not {name!r}")
    return phases[name]


def run_jax(spec: RunSpec, train_matrix: sp.csr_matrix) -> Measurement:
    import jax

    from hvae_jax.data.batches import epoch_order, to_device

    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if spec.precision == "tf32" else "float32")
    setup = jax_setup(spec, train_matrix)
    if spec.phase == "eval":
        return _run_jax_eval(spec, setup)

    phase = schedule_phase(setup, spec.schedule_phase)
    update_chunk = setup.update_chunk(phase)
    matrix = to_device(train_matrix)
    state = setup.init_state()

    def user_order(repeat: int):
        order = epoch_order(jax.random.fold_in(setup.keys.shuffle, repeat), setup.n_train, setup.batch_size)
        return order[: spec.updates]

    start = time.perf_counter()
    compiled = update_chunk.lower(state, user_order(0), setup.keys.train, matrix, None).compile()
    compile_seconds = time.perf_counter() - start

    def run_once(repeat: int) -> None:
        nonlocal state
        state, metrics = compiled(state, user_order(repeat), setup.keys.train, matrix, None)
        jax.block_until_ready((state, metrics))

    run_once(0)
    seconds = _time_repeats(run_once, spec.repeats)
    users = spec.updates * spec.batch_size
    measurement = Measurement(
        _median_rate(seconds, users), seconds, compile_seconds, users,
        notes=["hvae_jax.train.TrainSetup.update_chunk: all updates of a repeat in one jitted lax.scan",
               f"jax input_path: {setup.path.name} (as fit resolves 'auto')"],
        extra={"input_path": setup.path.name, "schedule_phase": phase.name, "max_batch_nnz": setup.path.max_nnz},
    )
    if spec.prior_probe:
        measurement.extra.update(_prior_probe(setup, state, spec, statistics.median(seconds) / spec.updates))
    return measurement


def _prior_probe(setup, state, spec: RunSpec, step_seconds: float) -> dict:
    """Seconds per update of the prior's per-batch pass alone (`model.apply(..., method="prepare_prior")`: the
    VampPrior's K pseudo-inputs through the top encoder path), forward and backward to the parameters, scanned over
    as many updates as the timed step; and its share of the whole update."""
    import jax
    import jax.numpy as jnp

    from hvae_jax.input_paths import PSEUDO_INPUT_STREAM

    model = setup.model

    def prior_loss(params, key):
        prepared = model.apply({"params": params}, key, method="prepare_prior")
        return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(prepared))

    @jax.jit
    def probe(params, key):
        def one(carry, step):
            step_key = jax.random.fold_in(jax.random.fold_in(key, step), PSEUDO_INPUT_STREAM)
            value, grads = jax.value_and_grad(prior_loss)(params, step_key)
            # Feed the result forward so that no iteration can be dropped or hoisted.
            return carry + value + sum(jnp.sum(g[..., :1]) for g in jax.tree.leaves(grads)), None

        return jax.lax.scan(one, jnp.zeros(()), jnp.arange(spec.updates))[0]

    params = state.params
    start = time.perf_counter()
    jax.block_until_ready(probe(params, setup.keys.train))
    first = time.perf_counter() - start
    seconds = []
    for _ in range(spec.repeats):
        start = time.perf_counter()
        jax.block_until_ready(probe(params, setup.keys.train))
        seconds.append(time.perf_counter() - start)
    per_step = statistics.median(seconds) / spec.updates
    return {
        "prior_pass_seconds_per_update": per_step,
        "prior_pass_seconds_per_repeat": seconds,
        "prior_pass_compile_seconds": max(first - statistics.median(seconds), 0.0),
        "update_seconds": step_seconds,
        "prior_pass_fraction_of_update": per_step / step_seconds,
        "prior_pass_note": "jitted value_and_grad of sum(prepare_prior(params)) over the parameters, the same K "
                           "pseudo-inputs (and their dropout) as an update; measured in the same process right after "
                           "the update",
    }


def _run_jax_eval(spec: RunSpec, setup) -> Measurement:
    import jax

    from hvae_jax.data.splits import EvalSet
    from hvae_jax.evaluate import evaluate

    fold_in, heldout = load_csr(spec.eval_path, "fold_in"), load_csr(spec.eval_path, "heldout")
    n_users = spec.updates * spec.batch_size
    fold_in = fold_in[:n_users]
    # Strong generalization: the exclusions are the fold-in items, the same matrix object (the library keys on it).
    eval_set = EvalSet(fold_in, heldout[:n_users], fold_in, np.arange(n_users).astype(str))
    params = setup.init_state().params
    # The evaluation step `fit` validates with: the input path resolved from the training matrix.
    eval_step = setup.path.eval_step(ks=(100,))

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
               f"jax eval input_path: {setup.path.eval_name} (as fit resolves 'auto')"],
        extra={"input_path": setup.path.eval_name},
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
    reason = torch_unsupported(config)
    if reason is not None:
        raise NotImplementedError(reason)
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
    if hasattr(trainer, "begin_epoch"):
        trainer.begin_epoch(1)  # the schedule's first epoch: its phase, and the snapshot RecVAE's prior reads
    if spec.schedule_phase is not None:
        trainer.set_phase(spec.schedule_phase)
    notes.append(f"phase: {trainer.phase.name}" if hasattr(trainer, "phase") else "phase: joint")
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
        evaluate = lambda: training.evaluate_optimized(scorer, fold_in, heldout, batch_size=spec.batch_size,
                                                       device=device)
    else:
        evaluate = lambda: training.evaluate_reference(model, fold_in, heldout, batch_size=spec.batch_size,
                                                       device=device)

    def run_once(repeat: int) -> None:
        evaluate()
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    compile_error = None
    try:
        run_once(0)
    except Exception as error:
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
