"""Turns a throughput JSON from `benchmarks.throughput` into a markdown table (JAX / PyTorch ratios, compile time,
peak memory, roofline fraction) and a bar chart, written next to the JSON.

  python -m benchmarks.report benchmarks/results/cpu-2core-2026-11-27.json           # writes .md and .png
  python -m benchmarks.report FILE --print                                             # also prints the table
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections import defaultdict

FRAMEWORK_ORDER = ("jax", "torch", "torch-optimized")
LABELS = {"jax": "JAX", "torch": "PyTorch", "torch-optimized": "PyTorch opt."}


def _label(run: dict) -> str:
    """The row's model: "recvae (encoder)" for a phase of an alternating schedule (older results: the model)."""
    return run.get("label") or run["model"]


def _group(results: dict) -> dict[tuple, dict[str, dict]]:
    """{(model label, shape, batch_size, phase): {framework: run}} in the order the runs were measured."""
    groups: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for run in results["runs"]:
        groups[(_label(run), run["shape"], run["batch_size"], run["phase"])][run["framework"]] = run
    return groups


def _rate(run: dict | None) -> float | None:
    return None if run is None else run.get("users_per_second")


def _format_rate(value: float | None, run: dict | None = None) -> str:
    if value is None:
        return "n/a" if run is not None and run.get("skipped") else "failed"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}x"


def _per_framework(runs: dict[str, dict], frameworks, field: str, formatter) -> str:
    values = []
    for framework in frameworks:
        value = runs.get(framework, {}).get(field)
        values.append("-" if value is None else formatter(value))
    return " / ".join(values)


def backfill_executed_flops(results: dict) -> dict:
    """Results written before the executed-FLOP count (benchmarks/flops.py) get it from their own figures: the
    shape's mean interactions per user (benchmarks/synthetic_shapes.py; evaluation folds in 80% of them), each
    framework's first layer (JAX's input path from its notes, PyTorch opt.'s embedding bag), and the run's matmul
    rate. Runs that have it are left alone."""
    from benchmarks import runners
    from benchmarks.flops import flops_breakdown
    from benchmarks.synthetic_shapes import SHAPES

    for run in results["runs"]:
        if run.get("executed_roofline_fraction") is not None or not run.get("users_per_second"):
            continue
        if run["shape"] not in SHAPES or run["model"] not in runners.NEURAL_MODELS:
            continue
        nnz = SHAPES[run["shape"]].mean_items_per_user * (1.0 if run["phase"] == "train" else 0.8)
        if run["framework"] == "jax":
            sparse = any("input_path: sparse" in note for note in run.get("notes", []))
        else:
            sparse = run["framework"] == "torch-optimized"
        executed = flops_breakdown(runners.model_config(run["model"]), run["n_items"], run["batch_size"],
                                   training=run["phase"] == "train", phase=run.get("schedule_phase") or "joint",
                                   nnz_per_user=nnz if sparse else None)
        run["executed_flops_per_user"] = sum(executed.values()) / run["batch_size"]
        run["executed_flops_per_second"] = run["executed_flops_per_user"] * run["users_per_second"]
        run["executed_roofline_fraction"] = run["executed_flops_per_second"] / results["matmul_flops_per_second"]
        run.setdefault("notes", []).append("executed FLOPs back-filled by benchmarks.report from the shape's mean "
                                           "interactions per user")
    return results


def markdown_table(results: dict) -> str:
    """The results as a markdown table, one row per (model, shape, batch size, phase)."""
    frameworks = [f for f in FRAMEWORK_ORDER if any(run["framework"] == f for run in results["runs"])]
    short = "/".join({"jax": "J", "torch": "T", "torch-optimized": "T*"}[f] for f in frameworks)
    header = (
        ["model", "shape", "batch", "phase"]
        + [f"{LABELS[f]} users/s" for f in frameworks]
        + ["JAX / PyTorch", "JAX / PyTorch opt.", f"compile s ({short})", f"peak MiB ({short})",
           f"roofline dense ({short})", f"roofline executed ({short})"]
    )
    lines = [
        f"Device `{results['device']}` ({results.get('device_description', '')}), {results['date']}, precision "
        f"{results['precision']}, sustained matmul {results['matmul_flops_per_second'] / 1e9:,.0f} GFLOP/s"
        + (", quick run" if results.get("quick") else ""),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if i >= 2 else "---" for i in range(len(header))) + "|",
    ]
    for (model, shape, batch_size, phase), runs in _group(results).items():
        rates = {f: _rate(runs.get(f)) for f in frameworks}
        row = [model, shape, f"{batch_size:,}", phase]
        row += [_format_rate(rates[f], runs[f]) if f in runs else "-" for f in frameworks]
        row += [_ratio(rates.get("jax"), rates.get("torch")), _ratio(rates.get("jax"), rates.get("torch-optimized"))]
        row.append(_per_framework(runs, frameworks, "compile_seconds", lambda v: f"{v:.1f}"))
        row.append(_per_framework(runs, frameworks, "peak_memory_bytes", lambda v: f"{v / 2**20:,.0f}"))
        row.append(_per_framework(runs, frameworks, "roofline_fraction", lambda v: f"{v:.3f}"))
        row.append(_per_framework(runs, frameworks, "executed_roofline_fraction", lambda v: f"{v:.3f}"))
        lines.append("| " + " | ".join(row) + " |")
    notes = sorted({f"{run['shape']}: {note}" if "input_path" in note else note
                    for run in results["runs"] for note in run.get("notes", [])
                    if any(word in note for word in ("compile", "capped", "input_path"))})
    errors = [f"{run['framework']} {_label(run)} {run['shape']} {run['batch_size']} {run['phase']}: {run['error']}"
              for run in results["runs"] if run.get("error")]
    skipped = sorted({f"{LABELS[run['framework']]} {run['model']}: {run['skipped']}"
                      for run in results["runs"] if run.get("skipped")})
    if notes or errors or skipped:
        lines.append("")
        lines += [f"- {note}" for note in notes + errors + skipped]
    probes = [run for run in results["runs"] if run.get("prior_pass_fraction_of_update") is not None]
    if probes:
        lines += ["", "VampPrior pass (K pseudo-inputs through the encoder, forward and backward, timed alone) per "
                  "JAX update:", "",
                  "| model | shape | batch | update ms | prior pass ms | share of the update (timed) | share of "
                  "executed FLOPs | share of dense FLOPs |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for run in probes:
            lines.append(
                f"| {_label(run)} | {run['shape']} | {run['batch_size']:,} | {run['update_seconds'] * 1e3:,.1f} | "
                f"{run['prior_pass_seconds_per_update'] * 1e3:,.1f} | {run['prior_pass_fraction_of_update']:.0%} | "
                f"{run.get('prior_pass_share_of_executed_flops', 0.0):.0%} | "
                f"{run.get('prior_pass_share_of_dense_flops', 0.0):.0%} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: pathlib.Path) -> None:
    """Grouped bars of users/second (log scale), one panel per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _group(results)
    phases = [p for p in ("train", "eval") if any(key[3] == p for key in groups)]
    frameworks = [f for f in FRAMEWORK_ORDER if any(run["framework"] == f for run in results["runs"])]
    n_groups = max((sum(key[3] == phase for key in groups) for phase in phases), default=1)
    figure, axes = plt.subplots(1, len(phases), figsize=(max(6.5, 0.8 * n_groups) * len(phases), 5.5),
                                squeeze=False)
    width = 0.8 / len(frameworks)
    colors = {"jax": "#1f77b4", "torch": "#d62728", "torch-optimized": "#ff9896"}
    for axis, phase in zip(axes[0], phases):
        keys = [key for key in groups if key[3] == phase]
        for index, framework in enumerate(frameworks):
            heights = [_rate(groups[key].get(framework)) or 0.0 for key in keys]
            positions = [i + (index - (len(frameworks) - 1) / 2) * width for i in range(len(keys))]
            bars = axis.bar(positions, heights, width, label=LABELS[framework], color=colors[framework])
            for bar, height in zip(bars, heights):
                if height:
                    axis.annotate(_format_rate(height), (bar.get_x() + bar.get_width() / 2, height),
                                  ha="center", va="bottom", fontsize=7, rotation=90, xytext=(0, 2),
                                  textcoords="offset points")
        axis.set_xticks(range(len(keys)))
        axis.set_xticklabels([f"{model}\n{shape}\nbatch {batch:,}" for model, shape, batch, _ in keys], fontsize=8,
                             rotation=90 if len(keys) > 8 else 0)
        axis.set_yscale("log")
        axis.set_ylabel("users / second (log scale)")
        axis.set_title(f"{phase}: {'update (forward + backward + Adam)' if phase == 'train' else 'scores + top-100'}")
        axis.grid(axis="y", which="both", alpha=0.3)
        tallest = max((_rate(run) or 0.0 for key in keys for run in groups[key].values()), default=0.0)
        if tallest:
            axis.set_ylim(top=tallest * 4)  # room for the rotated labels above the bars on the log scale
    axes[0][0].legend(loc="upper right", fontsize=8)
    figure.suptitle(f"hvae_jax vs PyTorch, {results['device']} ({results['date']}, {results['precision']})")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Markdown table and chart of a throughput JSON.")
    parser.add_argument("results", type=pathlib.Path, help="JSON written by benchmarks.throughput")
    parser.add_argument("--print", action="store_true", help="print the markdown table to stdout")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG chart")
    args = parser.parse_args(argv)
    results = backfill_executed_flops(json.loads(args.results.read_text()))
    table = markdown_table(results)
    args.results.with_suffix(".md").write_text(table)
    if not args.no_plot:
        plot(results, args.results.with_suffix(".png"))
    if args.print:
        print(table)


if __name__ == "__main__":
    main()
