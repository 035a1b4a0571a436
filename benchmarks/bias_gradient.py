"""Why the decoder phase trails at the ML-20M shape: XLA's CPU reduction over the batch axis, timed and profiled.

  python -m benchmarks.bias_gradient                      # writes benchmarks/results/bias-gradient-cpu-2core.json
  python -m benchmarks.bias_gradient --skip-profile       # the reduction timings only

Part 1 times the gradient of a catalogue-wide bias, the sum of the logits' cotangent [batch, n_items] over the
batch, written three ways: `g.sum(0)` (what JAX's vmap transpose emits for a parameter shared by every user), the
same sum over the other axis of the transposed array, and the product `ones[batch] @ g`. Part 2 profiles one
jitted update of a model's schedule phase at a synthetic shape (`jax.profiler`, the XLA operations of the trace
with the model code each comes from) and reports the operations that take the most time per update.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import statistics
import tempfile
import time

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


def profile_update(model: str, phase_name: str, shape: str, n_users: int, top: int) -> dict:
    from benchmarks import runners
    from benchmarks.synthetic_shapes import SHAPES, make_shape
    from hvae_jax.data.batches import epoch_order, to_device
    from hvae_jax.train import TrainSetup

    matrix_host = make_shape(SHAPES[shape], n_users=n_users)
    setup = TrainSetup.build(runners.model_config(model), runners.train_config(model, 500), matrix_host)
    matrix, state = to_device(matrix_host), setup.init_state()
    phase = runners.schedule_phase(setup, phase_name)
    updates = 2
    order = epoch_order(jax.random.fold_in(setup.keys.shuffle, 0), setup.n_train, setup.batch_size)[:updates]
    compiled = setup.update_chunk(phase).lower(state, order, setup.keys.train, matrix, None).compile()
    for _ in range(2):  # warm up; the state is donated, so each call takes the last one's
        state, metrics = compiled(state, order, setup.keys.train, matrix, None)
        jax.block_until_ready((state, metrics))
    calls = 3
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        with jax.profiler.trace(directory):
            for _ in range(calls):
                state, metrics = compiled(state, order, setup.keys.train, matrix, None)
                jax.block_until_ready((state, metrics))
        wall = time.perf_counter() - start
        trace_file = next(pathlib.Path(directory).rglob("*.trace.json.gz"))
        with gzip.open(trace_file) as trace:
            events = json.load(trace)["traceEvents"]
    sources = _op_sources(compiled.as_text())
    per_op = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in sources:
            per_op[event["name"]] += event["dur"]
    per_update = calls * updates
    rows = [{"op": name, "ms_per_update": micros / per_update / 1e3, "source": sources[name]}
            for name, micros in per_op.most_common(top)]
    return {"model": model, "phase": phase_name, "shape": shape, "input_path": setup.path.name,
            "ms_per_update_traced": wall / per_update * 1e3, "top_ops": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--items", default="3706,20108", help="catalogue sizes for the reduction timings")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--profile", default="hvae:decoder,hvae:encoder", help="model:phase pairs to profile")
    parser.add_argument("--shape", default="ml-20m")
    parser.add_argument("--profile-users", type=int, default=3000)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "bias-gradient-cpu-2core.json")
    args = parser.parse_args(argv)
    result = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
              "reductions": [reduction_timings(args.batch, int(n), args.repeats) for n in args.items.split(",")],
              "profiles": []}
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
