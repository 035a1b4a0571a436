"""Figures of a run's training curves (from `metrics.jsonl`) and of a benchmark's throughput (from its JSON),
written as PNG files with matplotlib's Agg backend, so they work without a display.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from hvae_jax.rundir import RunPaths  # noqa: E402

_DPI = 120


def read_metrics(workdir: str | pathlib.Path | RunPaths) -> list[dict]:
    """The rows of the run directory's metrics.jsonl, in order; a last line cut short by an interruption is skipped."""
    path = RunPaths.of(workdir).metrics_path
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {path.parent} the --workdir of a neural `hvae train` run?")
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not rows:
        raise ValueError(f"{path} holds no epochs yet (EASE and popularity runs do not train and log none)")
    return rows


def _no_data(ax: Axes, title: str, message: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _has_kl(rows: list[dict]) -> bool:
    return any(row.get("kl") for row in rows)


def _draw_loss(ax: Axes, rows: list[dict]) -> None:
    epochs = [row["epoch"] for row in rows]
    ax.plot(epochs, [row["loss"] for row in rows], marker=".", label="loss (NLL + β·KL)" if _has_kl(rows) else "loss")
    if any("nll" in row for row in rows):
        ax.plot(epochs, [row.get("nll", math.nan) for row in rows], marker=".", linestyle="--", label="NLL")
    ax.set_title("Training loss per user")
    _epoch_axis(ax)
    ax.set_ylabel("nats")
    ax.legend()


def _draw_kl(ax: Axes, rows: list[dict]) -> bool:
    n_levels = max((len(row.get("kl") or []) for row in rows), default=0)
    if n_levels == 0:
        _no_data(ax, "KL per level", "no latent variables (Mult-DAE)")
        return False
    epochs = [row["epoch"] for row in rows]
    for level in range(n_levels):
        values = [row["kl"][level] if len(row.get("kl") or []) > level else math.nan for row in rows]
        name = f"level {level + 1}" + (" (bottom)" if level == 0 and n_levels > 1 else "")
        name += " (top)" if level == n_levels - 1 and n_levels > 1 else ""
        ax.plot(epochs, values, marker=".", label=name)
    ax.set_title("KL(q ‖ p) per level")
    _epoch_axis(ax)
    ax.set_ylabel("nats per user")
    ax.legend()
    return True


def _draw_validation(ax: Axes, rows: list[dict]) -> bool:
    validated = [row for row in rows if isinstance(row.get("valid"), dict)]
    if not validated:
        _no_data(ax, "Validation", "no validation users in this run")
        return False
    epochs = [row["epoch"] for row in validated]
    for metric, label, marker in (("ndcg@100", "NDCG@100", "o"), ("recall@20", "Recall@20", "s")):
        if not any(metric in row["valid"] for row in validated):
            continue
        values = [row["valid"].get(metric, math.nan) for row in validated]
        errors = [row["valid"].get(f"{metric}_se", 0.0) for row in validated]
        ax.errorbar(epochs, values, yerr=errors, marker=marker, markersize=4, capsize=2, label=label)
    best = max(validated, key=lambda row: row["valid"].get("ndcg@100", -math.inf))
    if "ndcg@100" in best["valid"]:
        ax.axvline(best["epoch"], color="0.6", linestyle=":", label=f"best NDCG@100 (epoch {best['epoch']})")
    ax.set_title("Validation ranking (± standard error)")
    _epoch_axis(ax)
    ax.set_ylabel("metric")
    ax.legend()
    return True


def _draw_beta(ax: Axes, rows: list[dict]) -> bool:
    if not _has_kl(rows) or not any("beta" in row for row in rows):
        _no_data(ax, "KL weight β", "no KL term (Mult-DAE)" if not _has_kl(rows) else "no β logged")
        return False
    ax.plot([row["epoch"] for row in rows], [row.get("beta", math.nan) for row in rows], marker=".", color="tab:purple")
    ax.set_title("KL weight β (end of epoch)")
    _epoch_axis(ax)
    ax.set_ylabel("β")
    ax.set_ylim(bottom=0)
    return True


def _epoch_axis(ax: Axes) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    low, high = ax.get_xlim()
    if high - low < 2:  # a single epoch: widen the axis so it still shows whole epochs
        middle = round((low + high) / 2)
        ax.set_xlim(middle - 1, middle + 1)


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def plot_training(workdir: str | pathlib.Path | RunPaths) -> list[pathlib.Path]:
    """Writes the training curves of a run into its run directory's plots/ and returns the files written.

    `training.png` has four panels: loss and NLL, KL per level, validation NDCG@100 and Recall@20 with standard
    errors, and β. The panels that have data are also written alone: loss.png, kl.png, validation.png, beta.png.
    """
    run_paths = RunPaths.of(workdir)
    rows = read_metrics(run_paths)
    out = run_paths.plots_dir
    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    _draw_loss(axes[0, 0], rows)
    _draw_kl(axes[0, 1], rows)
    _draw_validation(axes[1, 0], rows)
    _draw_beta(axes[1, 1], rows)
    fig.suptitle(f"Training of {run_paths.path.resolve().name} ({len(rows)} epoch{'s' if len(rows) != 1 else ''})")
    written.append(_save(fig, out / "training.png"))

    for name, draw in (("loss", _draw_loss), ("kl", _draw_kl), ("validation", _draw_validation), ("beta", _draw_beta)):
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        has_data = draw(ax, rows)
        if has_data is False:
            plt.close(fig)
            continue
        written.append(_save(fig, out / f"{name}.png"))
    return written


def _group_label(run: dict, varying: Sequence[str]) -> str:
    names = {"model": "{}", "shape": "{}", "batch_size": "batch {}", "phase": "{}", "precision": "{}"}
    return "\n".join(names[key].format(_shape_text(run.get(key)) if key == "shape" else run.get(key))
                     for key in varying)


def _shape_text(shape: Any) -> str:
    if isinstance(shape, dict):
        return " ".join(f"{key}={value}" for key, value in shape.items())
    if isinstance(shape, (list, tuple)):
        return "×".join(str(part) for part in shape)
    return str(shape)


def plot_benchmark(json_file: str | pathlib.Path, out: str | pathlib.Path | None = None) -> pathlib.Path:
    """A grouped bar chart of a benchmark's throughput: users per second on a log axis, one group per
    (model, shape, batch size, phase, precision) combination, one bar per framework, labelled with the roofline
    fraction where the run reports it.

    Args:
      json_file: a benchmark result with top-level `device`, `date` and `runs` (each with framework, model, shape,
        batch_size, phase, precision, users_per_second and optionally roofline_fraction).
      out: the PNG to write; default `json_file` with the suffix .png.

    Returns:
      The path written.
    """
    json_file = pathlib.Path(json_file)
    report = json.loads(json_file.read_text())
    runs = [run for run in report.get("runs", []) if run.get("users_per_second")]
    if not runs:
        raise ValueError(f"{json_file} has no runs with users_per_second")
    out = pathlib.Path(out) if out is not None else json_file.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)

    group_keys = ("model", "shape", "batch_size", "phase", "precision")
    # Only the keys that differ between runs name the groups; the others go into the title.
    varying = [key for key in group_keys if len({json.dumps(run.get(key), sort_keys=True) for run in runs}) > 1]
    constant = [key for key in group_keys if key not in varying and runs[0].get(key) is not None]
    group_of = lambda run: tuple(json.dumps(run.get(key), sort_keys=True) for key in varying)  # noqa: E731
    groups: dict[tuple, dict] = {}
    for run in runs:
        groups.setdefault(group_of(run), run)
    frameworks = list(dict.fromkeys(str(run.get("framework", "?")) for run in runs))

    width = 0.8 / len(frameworks)
    fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(groups) * max(1, len(frameworks)) + 2), 5.5))
    for index, framework in enumerate(frameworks):
        xs, heights, fractions = [], [], []
        for position, key in enumerate(groups):
            match = [run for run in runs if group_of(run) == key and str(run.get("framework", "?")) == framework]
            if not match:
                continue
            xs.append(position - 0.4 + width * (index + 0.5))
            heights.append(float(match[0]["users_per_second"]))
            fractions.append(match[0].get("roofline_fraction"))
        bars = ax.bar(xs, heights, width, label=framework)
        labels = [_rate_text(h) + (f"\n{100 * f:.0f}%" if isinstance(f, (int, float)) else "")
                  for h, f in zip(heights, fractions)]
        ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
    ax.set_yscale("log")
    lowest = min(float(run["users_per_second"]) for run in runs)
    ax.set_ylim(bottom=10 ** math.floor(math.log10(lowest)))  # bars grow from a power of ten, not the smallest bar
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([_group_label(run, varying) for run in groups.values()] if varying else ["all runs"],
                       fontsize=8)
    ax.set_ylabel("users per second (log scale)")
    detail = ", ".join(f"{key} {_shape_text(runs[0][key])}" for key in constant)
    title = f"Throughput on {report.get('device', 'unknown device')}"
    if report.get("date"):
        title += f" ({report['date']})"
    ax.set_title(title + (f"\n{detail}" if detail else ""), fontsize=10)
    has_roofline = any(run.get("roofline_fraction") for run in runs)
    legend_title = "framework\nlabels: users/s" + (", roofline fraction" if has_roofline else "")
    ax.legend(title=legend_title, fontsize=8, title_fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.set_axisbelow(True)
    _, top = ax.get_ylim()
    ax.set_ylim(top=top * 2)  # room for the bar labels
    return _save(fig, out)


def _rate_text(users_per_second: float) -> str:
    for divisor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if users_per_second >= divisor:
            return f"{users_per_second / divisor:.3g}{suffix}"
    return f"{users_per_second:.3g}"


def plot_cli(workdir: str | None = None, bench: str | None = None, out: str | None = None) -> str:
    """What `hvae plot` prints: the files written for `--workdir DIR` and/or `--bench FILE`."""
    if workdir is None and bench is None:
        raise ValueError("pass --workdir DIR (training curves) or --bench FILE (benchmark chart)")
    written = []
    if workdir is not None:
        written += plot_training(workdir)
    if bench is not None:
        written.append(plot_benchmark(bench, out))
    return "\n".join(f"wrote {path}" for path in written)
