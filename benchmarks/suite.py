"""Every benchmark of this folder in one call, under one time budget, into one JSON (benchmarks/gpu.sh runs it):

  python -m benchmarks.suite --device-kind gpu                 # one GPU, under 8 minutes
  python -m benchmarks.suite --quick --device-kind cpu         # small sizes on CPU (tests/test_benchmarks.py)

Parts, in order (each a subprocess with its share of the budget; each writes its JSON as it goes, so a part cut
short keeps what it measured):
  throughput       hvae_jax against the PyTorch reference and its optimised variant, Mult-VAE, ML-20M and ML-1M
                   shapes, train and eval, dense and executed-FLOP rooflines (benchmarks/throughput.py)
  hierarchical     the same for the hierarchical models: hvae (2 levels, Mult-VAE's recipe: the default), hvae-recvae
                   (2 levels, RecVAE's style, both phases), hvae-vamp (2 levels, gated, VampPrior K=1000: `--model
                   hvae` before the ablation), hvamp (Kim & Suh's H+Vamp), recvae (both alternating phases), with the
                   VampPrior pass's share
  end_to_end       Mult-VAE trained by each framework with validation and checkpoints, per-phase breakdown
  scaling          users/s and peak memory against catalogue size, batch size, levels, ensemble members
  huge_catalogue   1,000,000 items through the item-sharded path on the one device

The combined file holds every part's JSON under "parts" and, per part, its command, exit status and seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from benchmarks import runners

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
ROOT = pathlib.Path(__file__).resolve().parents[1]

# Share of the budget per part (the rest is the report); a part that finishes early leaves its time to the next.
SHARES = {"throughput": 0.32, "hierarchical": 0.26, "end_to_end": 0.12, "scaling": 0.18, "huge_catalogue": 0.10}


def part_commands(device_kind: str, quick: bool, scratch: pathlib.Path, data: str | None) -> dict[str, list[str]]:
    """{part: argv after `python -m`}, each writing its JSON under `scratch`."""
    out = lambda name: str(scratch / f"{name}.json")
    gpu = device_kind == "gpu"
    if quick:
        shapes, batches = "tiny", "500"
        e2e = ["--data", "synthetic:tiny", "--epochs", "2", "--heldout-users", "100", "--no-torch-compile",
               "--frameworks", "jax,torch,torch-optimized"]
        huge = ["--devices", "1", "--items", "20000", "--train-users", "600", "--eval-users", "100", "--updates", "1",
                "--hidden", "64", "--latent", "32"]
        quick_flags = ["--quick", "--no-torch-compile"]
    else:
        shapes, batches = "ml-20m,ml-1m", "500," + ("24576" if gpu else "8192")
        e2e = ["--data", data or ("synthetic:ml-1m" if gpu else str(ROOT.parent / "shared/data/ml-1m-implicit")),
               "--epochs", "10" if gpu else "50"]
        huge = ["--devices", "1", "--items", "1000000", "--hidden", "600" if gpu else "200",
                "--latent", "200" if gpu else "64", "--updates", "6"]
        quick_flags = []
    kind = ["--device-kind", device_kind]
    throughput = ["benchmarks.throughput", *kind, "--shapes", shapes, "--models", "multvae",
                  "--batch-sizes", batches, "--phases", "train,eval", *quick_flags]
    hierarchical = ["benchmarks.throughput", *kind, "--shapes", shapes, "--models",
                    "hvae,hvae-recvae,hvae-vamp,hvamp,recvae",
                    "--batch-sizes", "500", *quick_flags]
    # Quick: training only, and not the optimised PyTorch (its rows are the Mult-VAE part's business).
    hierarchical += ["--phases", "train", "--frameworks", "jax,torch"] if quick else ["--phases", "train,eval"]
    return {
        "throughput": [*throughput, "--out", out("throughput")],
        "hierarchical": [*hierarchical, "--out", out("hierarchical")],
        "end_to_end": ["benchmarks.end_to_end", *e2e, "--device-name", device_kind, "--out", out("end_to_end")],
        # Quick: a small dense-logits limit, so that the item-sharded path runs too (at 20,000 items).
        "scaling": ["benchmarks.scaling", *kind, *(["--quick", "--dense-logits-limit-mb", "16"] if quick else []),
                    "--no-plot", "--out", out("scaling")],
        "huge_catalogue": ["benchmarks.huge_catalogue", *huge, "--out", out("huge_catalogue")],
    }


def run_part(name: str, argv: list[str], budget: float, log) -> dict:
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    start = time.perf_counter()
    log(f"== {name}: python -m {' '.join(argv)} (budget {budget:.0f} s)")
    status: dict = {"command": "python -m " + " ".join(argv), "budget_seconds": budget}
    process = subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    try:
        output, _ = process.communicate(timeout=max(budget, 1.0))
        tail = output.strip().splitlines()[-12:]
        status["returncode"] = process.returncode
    except subprocess.TimeoutExpired:
        # SIGINT first: the parts write their JSON after every measurement, so what finished is already on disk.
        process.send_signal(2)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        tail = (output or "").strip().splitlines()[-12:]
        status["returncode"] = "timeout"
    status["seconds"] = time.perf_counter() - start
    status["output_tail"] = tail
    log(f"   {name}: {status['returncode']} after {status['seconds']:.0f} s")
    return status


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device-kind", choices=("cpu", "gpu"), default="gpu")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of every part")
    parser.add_argument("--budget-seconds", type=float, default=450.0, help="the whole suite's wall-clock budget")
    parser.add_argument("--parts", default=",".join(SHARES), help="comma-separated, of " + ", ".join(SHARES))
    parser.add_argument("--data", help="end_to_end's data (default: ml-1m-implicit on CPU, synthetic:ml-1m on GPU)")
    parser.add_argument("--device-name")
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args(argv)
    log = lambda message: print(message, file=sys.stderr, flush=True)
    from benchmarks.throughput import (
        default_device_name,
        library_revision,
        write_results,
    )

    device_name = args.device_name or default_device_name(args.device_kind)
    today = datetime.date.today().isoformat()
    out = args.out or RESULTS_DIR / f"suite-{device_name}-{today}{'-quick' if args.quick else ''}.json"
    parts = [part for part in SHARES if part in args.parts.split(",")]
    started = time.perf_counter()
    results: dict = {
        "device": device_name, "device_kind": args.device_kind, "date": today, "quick": args.quick,
        "command": "python -m benchmarks.suite " + " ".join(argv if argv is not None else sys.argv[1:]),
        "budget_seconds": args.budget_seconds, "cpu_count": runners.cpu_count(),
        "load_average_at_start": list(os.getloadavg()), "library_revision": library_revision(),
        "parts": {}, "part_status": {},
    }
    with tempfile.TemporaryDirectory(prefix="hvae-suite-") as scratch:
        scratch = pathlib.Path(scratch)
        commands = part_commands(args.device_kind, args.quick, scratch, args.data)
        for index, part in enumerate(parts):
            remaining = args.budget_seconds - (time.perf_counter() - started)
            later_share = sum(SHARES[p] for p in parts[index:])
            budget = remaining * SHARES[part] / later_share if later_share else remaining
            if remaining < 5:
                results["part_status"][part] = {"returncode": "not run: the budget was spent"}
                continue
            results["part_status"][part] = run_part(part, commands[part], budget, log)
            part_file = scratch / f"{part}.json"
            results["parts"][part] = json.loads(part_file.read_text()) if part_file.exists() else None
            results["wall_seconds"] = time.perf_counter() - started
            results["load_average_at_end"] = list(os.getloadavg())
            write_results(out, results)
    results["summary"] = summary(results)
    write_results(out, results)
    log(f"wrote {out} in {time.perf_counter() - started:.0f} s")
    print(results["summary"])
    return results


def summary(results: dict) -> str:
    """A short markdown digest of every part that produced results."""
    from benchmarks import report

    lines = [f"Suite on `{results['device']}` ({results['date']}), {results.get('wall_seconds', 0):.0f} s"
             + (", quick" if results["quick"] else ""), ""]
    for part in ("throughput", "hierarchical"):
        data = results["parts"].get(part)
        if data and data.get("runs"):
            lines += [f"### {part}", "", report.markdown_table(data)]
    e2e = results["parts"].get("end_to_end")
    if e2e and e2e.get("runs"):
        from benchmarks.end_to_end import breakdown_table

        lines += ["### end_to_end (seconds by phase)", "", breakdown_table(e2e), ""]
    scaling = results["parts"].get("scaling")
    if scaling and scaling.get("points"):
        from benchmarks.scaling import markdown

        lines += ["### scaling", "", markdown(scaling)]
    huge = results["parts"].get("huge_catalogue")
    if huge:
        lines += ["### huge_catalogue", "",
                  f"{huge['n_items']:,} items, layout {huge['layout']}, {huge['train_users_per_second']:.1f} training "
                  f"users/s, {huge['eval_users_per_second']:.1f} evaluation users/s, peak resident "
                  f"{huge['peak_resident_bytes'] / 2**30:.2f} GiB", ""]
    failed = {part: status.get("returncode") for part, status in results["part_status"].items()
              if status.get("returncode") not in (0,)}
    if failed:
        lines += [f"- parts that did not finish cleanly: {failed}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
