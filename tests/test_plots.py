"""Tests of hvae_jax.plots: training curves from handcrafted metrics.jsonl files (two levels with validation, one
level without, Mult-DAE without KL) and the benchmark chart from a handcrafted JSON; each PNG must be a real image.
"""

from __future__ import annotations

import json
import pathlib

import matplotlib.image
import numpy as np
import pytest

from hvae_jax.plots import plot_benchmark, plot_cli, plot_training

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path: pathlib.Path, min_size: tuple[int, int] = (300, 300)) -> None:
    assert path.exists() and path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] >= min_size[1] and pixels.shape[1] >= min_size[0]
    # Something is drawn: a good share of the pixels are not the white background.
    assert np.mean(np.any(pixels[..., :3] < 0.9, axis=-1)) > 0.01


def write_metrics(workdir: pathlib.Path, n_epochs: int, n_levels: int, validate: bool) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for epoch in range(1, n_epochs + 1):
        row = {
            "epoch": epoch, "step": 10 * epoch, "loss": 300.0 - 5 * epoch, "nll": 298.0 - 5.5 * epoch,
            "kl": [4.0 * (level + 1) + epoch for level in range(n_levels)], "beta": min(0.2, 0.05 * epoch),
            "train_seconds": 1.0,
        }
        if validate:
            row["valid"] = {"ndcg@100": 0.1 + 0.01 * epoch, "ndcg@100_se": 0.005, "recall@20": 0.08 + 0.01 * epoch,
                            "recall@20_se": 0.006, "n_users": 300}
        rows.append(row)
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_training_plots_for_a_hierarchical_run_with_validation(tmp_path):
    write_metrics(tmp_path, n_epochs=6, n_levels=2, validate=True)
    written = plot_training(tmp_path)
    assert [path.name for path in written] == ["training.png", "loss.png", "kl.png", "validation.png", "beta.png"]
    assert all(path.parent == tmp_path / "plots" for path in written)
    assert_real_png(written[0], (1000, 800))
    for path in written[1:]:
        assert_real_png(path)


def test_training_plots_with_one_level_and_no_validation(tmp_path):
    write_metrics(tmp_path, n_epochs=1, n_levels=1, validate=False)
    written = plot_training(tmp_path)
    assert [path.name for path in written] == ["training.png", "loss.png", "kl.png", "beta.png"]
    for path in written:
        assert_real_png(path)


def test_training_plots_of_multdae_have_no_kl_or_beta_files(tmp_path):
    write_metrics(tmp_path, n_epochs=3, n_levels=0, validate=True)
    names = [path.name for path in plot_training(tmp_path)]
    assert names == ["training.png", "loss.png", "validation.png"]


def test_training_plots_need_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_training(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no epochs"):
        plot_training(tmp_path)


def benchmark_json(path: pathlib.Path) -> pathlib.Path:
    runs = []
    for framework, speed in (("jax", 1.0), ("torch", 0.6)):
        for batch_size in (500, 2000):
            for phase, phase_speed in (("train", 1.0), ("eval", 8.0)):
                runs.append({
                    "framework": framework, "model": "multvae", "shape": [20108, 600, 200],
                    "batch_size": batch_size, "phase": phase, "precision": "float32",
                    "users_per_second": 1e5 * speed * phase_speed * batch_size / 500,
                    "roofline_fraction": 0.4 * speed if framework == "jax" else None,
                })
    path.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "date": "2025-06-01", "runs": runs}))
    return path


def test_benchmark_chart(tmp_path):
    source = benchmark_json(tmp_path / "bench.json")
    assert_real_png(plot_benchmark(source), (600, 400))
    assert (tmp_path / "bench.png").exists()
    out = plot_benchmark(source, tmp_path / "charts" / "throughput.png")
    assert out == tmp_path / "charts" / "throughput.png"
    assert_real_png(out)


def test_benchmark_chart_needs_runs(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"device": "cpu", "date": "today", "runs": []}))
    with pytest.raises(ValueError, match="no runs"):
        plot_benchmark(empty)


def test_plot_cli_lists_the_files(tmp_path):
    write_metrics(tmp_path / "run", n_epochs=2, n_levels=1, validate=True)
    text = plot_cli(str(tmp_path / "run"), str(benchmark_json(tmp_path / "bench.json")))
    assert text.splitlines()[0] == f"wrote {tmp_path / 'run' / 'plots' / 'training.png'}"
    assert text.splitlines()[-1] == f"wrote {tmp_path / 'bench.png'}"
    with pytest.raises(ValueError, match="--workdir"):
        plot_cli()
