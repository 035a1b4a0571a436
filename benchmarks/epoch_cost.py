"""What an epoch of each model costs against a Mult-VAE epoch, at one shape: measured (one process, the models'
epochs interleaved round by round, the median of per-round ratios) beside the ratio of their matmul FLOPs
(`benchmarks/flops.py`). An epoch is the updates that cover the training users once, trained as `fit` trains them
(`TrainSetup.update_chunk`, one jitted scan); for RecVAE's alternating schedule it is the mean over one cycle
(encoder epochs, then decoder epochs).

  python -m benchmarks.epoch_cost --models multvae,hvae,recvae,hvae-vamp,hvae-vamp:k200 --rounds 7

`NAME:kK` is the model NAME with K pseudo-inputs. The question it answers: can the two-level VampPrior model's epoch
cost at most 1.6x a Mult-VAE epoch (README, "Throughput against PyTorch")?
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import statistics
import time

from benchmarks.throughput import RESULTS_DIR, write_results


def _setup(name: str, batch_size: int, train_matrix):
    from benchmarks.runners import model_config, train_config
    from hvae_jax.train import TrainSetup

    base, _, variant = name.partition(":")
    config = model_config(base)
    if variant:
        if not variant.startswith("k"):
            raise ValueError(f"{name}: the only variant is ':k<pseudo-inputs>', e.g. hvae-vamp:k200")
        config = dataclasses.replace(config, n_pseudo_inputs=int(variant[1:]))
    return TrainSetup.build(config, train_config(base, batch_size), train_matrix)


def phase_weights(setup, epochs: int = 60) -> list[tuple[int, object]]:
    """(epochs out of `epochs`, phase) for each phase of the schedule: how often each runs."""
    names = [setup.schedule.phase_of(epoch).name for epoch in range(1, epochs + 1)]
    return [(names.count(phase.name), phase) for phase in setup.schedule.phases]


def _flops_per_epoch(setup, n_items: int) -> float:
    """Matmul FLOPs of one epoch (a cycle's mean for an alternating schedule)."""
    from benchmarks import flops

    weights = phase_weights(setup)
    total = sum(count * setup.steps_per_epoch * flops.flops_per_step(
        setup.model_config, n_items, setup.batch_size, training=True,
        phase=phase.name if phase.name in ("encoder", "decoder") else "joint") for count, phase in weights)
    return total / sum(count for count, _ in weights)


def main(argv: list[str] | None = None) -> dict:
    import jax

    from benchmarks.synthetic_shapes import SHAPES, make_shape
    from hvae_jax.data.batches import epoch_order, to_device

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="multvae,hvae,recvae,hvae-vamp,hvae-vamp:k200")
    parser.add_argument("--shape", default="ml-1m", choices=sorted(SHAPES))
    parser.add_argument("--users", type=int, help="training users (default: the shape's)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS_DIR / "epoch-cost-cpu-2core.json")
    args = parser.parse_args(argv)

    names = args.models.split(",")
    if names[0] != "multvae":
        names = ["multvae"] + [name for name in names if name != "multvae"]
    train_matrix = make_shape(SHAPES[args.shape], seed=1, n_users=args.users)
    matrix = to_device(train_matrix)
    epochs = {}
    for name in names:
        setup = _setup(name, args.batch_size, train_matrix)
        state = setup.init_state()
        chunks = [(count, setup.update_chunk(phase)) for count, phase in phase_weights(setup)]
        epochs[name] = {"setup": setup, "state": state, "chunks": chunks,
                        "flops": _flops_per_epoch(setup, train_matrix.shape[1])}

    def one_epoch(name: str, round_: int) -> float:
        """Seconds per epoch: one pass of each phase, weighted by its epochs in the cycle."""
        entry = epochs[name]
        setup = entry["setup"]
        order = epoch_order(jax.random.fold_in(setup.keys.shuffle, round_), setup.n_train, setup.batch_size)
        weighted, cycle = 0.0, 0
        for phase_epochs, chunk in entry["chunks"]:
            start = time.perf_counter()
            entry["state"], metrics = chunk(entry["state"], order, setup.keys.train, matrix, None)
            jax.block_until_ready((entry["state"], metrics))
            weighted += phase_epochs * (time.perf_counter() - start)
            cycle += phase_epochs
        return weighted / cycle

    for name in names:
        one_epoch(name, 0)  # compile
    seconds = {name: [] for name in names}
    for round_ in range(1, args.rounds + 1):
        for name in (names if round_ % 2 else names[::-1]):
            seconds[name].append(one_epoch(name, round_))
    base = epochs["multvae"]["flops"]
    rows = []
    for name in names:
        ratios = [s / m for s, m in zip(seconds[name], seconds["multvae"])]
        config = epochs[name]["setup"].model_config
        vamp = getattr(config, "prior", None) == "vamp"
        rows.append({
            "model": name, "n_pseudo_inputs": config.n_pseudo_inputs if vamp else None,
            "epoch_seconds_median": statistics.median(seconds[name]), "epoch_seconds": seconds[name],
            "measured_ratio_to_multvae": statistics.median(ratios),
            "measured_ratio_quartiles": statistics.quantiles(ratios, n=4) if len(ratios) > 1 else None,
            "flops_per_epoch": epochs[name]["flops"], "flops_ratio_to_multvae": epochs[name]["flops"] / base,
        })
        print(f"{name:18s} epoch {rows[-1]['epoch_seconds_median']:.2f} s, x{rows[-1]['measured_ratio_to_multvae']:.2f}"
              f" a Mult-VAE epoch (FLOPs x{rows[-1]['flops_ratio_to_multvae']:.2f})", flush=True)
    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "shape": args.shape,
        "train_users": train_matrix.shape[0], "n_items": train_matrix.shape[1], "batch_size": args.batch_size,
        "rounds": args.rounds, "backend": jax.default_backend(), "load_average": list(os.getloadavg()),
        "rows": rows,
    }
    write_results(args.out, results)
    print(f"written {args.out}")
    return results


if __name__ == "__main__":
    main()
