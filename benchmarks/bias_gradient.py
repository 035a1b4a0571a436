"""Why the decoder phase trails at the ML-20M shape: XLA's CPU reduction over the batch axis, timed and profiled.

  python -m benchmarks.bias_gradient                      # writes benchmarks/results/bias-gradient-cpu-2core.json
  python -m benchmarks.bias_gradient --skip-profile       # the reduction timings only

Part 1 times the gradient of a catalogue-wide bias, the sum of the logits' cotangent [batch, n_items] over the
batch, written three ways: `g.sum(0)` (what JAX's vmap transpose emits for a parameter shared by every user), the
same sum over the other axis of the transposed array, and the product `ones[batch] @ g`. Part 2 profiles one
jitted update of a model's schedule phase at a synthetic shape (`jax.profiler`, the XLA operations of the trace
with the model code each comes from) and reports the operations that take the most time per update.

Part 3 (`--ab`) measures the fix, `hvae_jax.models.shared_rows` (the output bias handed to each user as a row of
its own, its gradient summed by a product), against the bias closed over as before: the same update compiled twice
in one process, once with `shared_rows.per_user` replaced by a pass-through (every parameter closed over, the vmap
transpose's reduction), from the same state and batches. It checks that both give the same loss and parameters,
then times single calls alternated (the order flipped every round) and reports the median ratio before / after.

  python -m benchmarks.bias_gradient --ab multvae:joint:ml-20m,hvae:decoder:ml-20m --skip-profile --items ""
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import statistics
import sys
import tempfile
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def median_ms(fn, x, repeats: int) -> tuple[float, jax.Array]:
    """(median milliseconds of the jitted `fn(x)` after a warm-up call, its output)."""
    compiled = jax.jit(fn)
    output = jax.block_until_ready(compiled(x))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(x))
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) * 1e3, output


def reduction_timings(batch: int, n_items: int, repeats: int) -> dict:
    g = jax.random.normal(jax.random.key(0), (batch, n_items), jnp.float32)
    ways = {
        "g.sum(0)": lambda g: g.sum(0),
        "g.T.sum(1)": lambda g: g.T.sum(1),
        "ones[batch] @ g": lambda g: jnp.ones((g.shape[0],), g.dtype) @ g,
    }
    measured = {name: median_ms(fn, g, repeats) for name, fn in ways.items()}
    reference = np.asarray(g, np.float64).sum(0)  # the sums checked against numpy in double precision
    agree = all(np.allclose(np.asarray(output), reference, rtol=1e-4, atol=1e-3) for _, output in measured.values())
    return {"batch": batch, "n_items": n_items, "median_ms": {name: ms for name, (ms, _) in measured.items()},
            "same_sums": agree}


def _op_sources(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the op_name metadata (the model code it comes from)."""
    sources = {}
    for match in re.finditer(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo_text):
        sources[match.group(1)] = match.group(2)
    return sources


UPDATES_PER_CALL = 2


class CompiledUpdate(NamedTuple):
    """One jitted chunk of UPDATES_PER_CALL updates of a model's schedule phase, compiled, with what it is called on."""

    compiled: Any
    state: Any
    order: jax.Array
    key: jax.Array
    input_path: str
    compile_seconds: float

    def __call__(self, state, matrix):
        return self.compiled(state, self.order, self.key, matrix, None)


def synthetic_matrix(shape: str, n_users: int):
    """(host CSR, device CSR) of `n_users` synthetic training users shaped like `shape`."""
    from benchmarks.synthetic_shapes import SHAPES, make_shape
    from hvae_jax.data.batches import to_device

    matrix_host = make_shape(SHAPES[shape], n_users=n_users)
    return matrix_host, to_device(matrix_host)


def compile_update(model: str, phase_name: str, matrix_host, matrix) -> CompiledUpdate:
    """The update chunk the throughput suite times (`TrainSetup`, batch 500), lowered and compiled now (so that a
    patch active around this call is what gets traced), with its initial state and the epoch's first batches."""
    from benchmarks import runners
    from hvae_jax.data.batches import epoch_order
    from hvae_jax.train import TrainSetup

    setup = TrainSetup.build(runners.model_config(model), runners.train_config(model, 500), matrix_host)
    phase = runners.schedule_phase(setup, phase_name)
    order = epoch_order(jax.random.fold_in(setup.keys.shuffle, 0), setup.n_train, setup.batch_size)
    order = order[:UPDATES_PER_CALL]
    state = setup.init_state()
    start = time.perf_counter()
    compiled = setup.update_chunk(phase).lower(state, order, setup.keys.train, matrix, None).compile()
    return CompiledUpdate(compiled, state, order, setup.keys.train, setup.path.name, time.perf_counter() - start)


def profile_update(model: str, phase_name: str, shape: str, n_users: int, top: int) -> dict:
    matrix_host, matrix = synthetic_matrix(shape, n_users)
    update = compile_update(model, phase_name, matrix_host, matrix)
    state = update.state
    for _ in range(2):  # warm up; the state is donated, so each call takes the last one's
        state, metrics = update(state, matrix)
        jax.block_until_ready((state, metrics))
    calls = 3
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        with jax.profiler.trace(directory):
            for _ in range(calls):
                state, metrics = update(state, matrix)
                jax.block_until_ready((state, metrics))
        wall = time.perf_counter() - start
        trace_file = next(pathlib.Path(directory).rglob("*.trace.json.gz"))
        with gzip.open(trace_file) as trace:
            events = json.load(trace)["traceEvents"]
    sources = _op_sources(update.compiled.as_text())
    per_op = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in sources:
            per_op[event["name"]] += event["dur"]
    per_update = calls * UPDATES_PER_CALL
    rows = [{"op": name, "ms_per_update": micros / per_update / 1e3, "source": sources[name]}
            for name, micros in per_op.most_common(top)]
    return {"model": model, "phase": phase_name, "shape": shape, "input_path": update.input_path,
            "ms_per_update_traced": wall / per_update * 1e3, "top_ops": rows}


def _closed_over(params, paths, batch):
    """The pass-through that `--ab` puts in place of `shared_rows.per_user`: every parameter closed over."""
    del paths, batch
    return params, jax.tree.map(lambda _: None, params)


def ab_update(model: str, phase_name: str, shape: str, n_users: int, rounds: int) -> dict:
    """One update chunk of `model`'s `phase_name` at `shape`, compiled with the output bias as per-user rows
    ("after") and closed over ("before"): same state, same batches; values compared, single calls timed in turn."""
    from unittest import mock

    from hvae_jax.models import shared_rows

    matrix_host, matrix = synthetic_matrix(shape, n_users)
    updates = {"after": compile_update(model, phase_name, matrix_host, matrix)}
    with mock.patch.object(shared_rows, "per_user", _closed_over):
        updates["before"] = compile_update(model, phase_name, matrix_host, matrix)
    states, outputs = {}, {}
    for name, update in updates.items():  # the first call of each from the same initial state: the same update
        states[name], metrics = update(update.state, matrix)
        outputs[name] = jax.device_get((states[name].params, metrics))
    same = all(np.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(jax.tree.leaves(outputs["after"]),
                                                                           jax.tree.leaves(outputs["before"])))
    seconds = {"after": [], "before": []}
    for round_index in range(rounds):
        for name in (("after", "before") if round_index % 2 == 0 else ("before", "after")):
            start = time.perf_counter()
            states[name], metrics = updates[name](states[name], matrix)
            jax.block_until_ready((states[name], metrics))
            seconds[name].append(time.perf_counter() - start)
    ratios = sorted(b / a for a, b in zip(seconds["after"], seconds["before"]))
    quartile = lambda q: float(np.quantile(ratios, q))
    return {"model": model, "phase": phase_name, "shape": shape, "input_path": updates["after"].input_path,
            "updates_per_call": UPDATES_PER_CALL, "batch_size": 500, "rounds": rounds, "same_update": bool(same),
            "programs_differ": updates["after"].compiled.as_text() != updates["before"].compiled.as_text(),
            "ms_per_update_median": {name: statistics.median(values) / UPDATES_PER_CALL * 1e3 for name, values in
                                     seconds.items()},
            "compile_seconds": {name: update.compile_seconds for name, update in updates.items()},
            "speedup_before_over_after": {"median": statistics.median(ratios), "q1": quartile(0.25),
                                          "q3": quartile(0.75), "min": ratios[0], "max": ratios[-1]},
            "seconds": seconds, "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--items", default="3706,20108", help="catalogue sizes for the reduction timings")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--profile", default="hvae:decoder,hvae:encoder", help="model:phase pairs to profile")
    parser.add_argument("--shape", default="ml-20m")
    parser.add_argument("--profile-users", type=int, default=3000)
    parser.add_argument("--ab", default="", help="model:phase:shape triples to time before / after shared_rows")
    parser.add_argument("--ab-users", type=int, default=3000, help="synthetic training users for --ab")
    parser.add_argument("--ab-rounds", type=int, default=15)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "bias-gradient-cpu-2core.json")
    args = parser.parse_args(argv)
    result = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
              "command": "python -m benchmarks.bias_gradient " + " ".join(argv if argv is not None else sys.argv[1:]),
              "reductions": [reduction_timings(args.batch, int(n), args.repeats) for n in args.items.split(",") if n],
              "profiles": [], "ab": []}
    for row in result["reductions"]:
        print(f"[{row['batch']}, {row['n_items']}]: " + ", ".join(
            f"{name} {ms:.1f} ms" for name, ms in row["median_ms"].items()) + f"; same sums: {row['same_sums']}")
    if not args.skip_profile:
        for pair in args.profile.split(","):
            model, phase = pair.split(":")
            profile = profile_update(model, phase, args.shape, args.profile_users, top=8)
            result["profiles"].append(profile)
            print(f"{model} {phase} at {args.shape} ({profile['input_path']} input): "
                  f"{profile['ms_per_update_traced']:.0f} ms an update (traced)")
            for op in profile["top_ops"]:
                print(f"  {op['ms_per_update']:7.1f} ms  {op['op']:<28} {op['source'][-90:]}")
    for triple in filter(None, args.ab.split(",")):
        model, phase, shape = triple.split(":")
        row = ab_update(model, phase, shape, args.ab_users, args.ab_rounds)
        result["ab"].append(row)
        speedup = row["speedup_before_over_after"]
        ms = row["ms_per_update_median"]
        print(f"{model} {phase} at {shape} ({row['input_path']} input): before {ms['before']:.0f} ms, after "
              f"{ms['after']:.0f} ms an update; before / after {speedup['median']:.2f} ({speedup['q1']:.2f}-"
              f"{speedup['q3']:.2f}, {row['rounds']} rounds); same update: {row['same_update']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
