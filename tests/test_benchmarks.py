"""The benchmark scripts run on the current API and report what they promise. No timing is asserted anywhere:
only that every part runs, and that the figures are present, finite and consistent.

The quick suite (`bash benchmarks/gpu.sh DIR --quick`: every benchmark at small sizes on CPU) takes 10-30 minutes
on a 2-core machine, too long for the default suite: `HVAE_JAX_BENCH_SUITE=1 python -m pytest tests/test_benchmarks.py`
runs it. The FLOP counts, the run specs, the report and the JAX runner are checked in every run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import flops, report, runners
from hvae_jax.configs import MODELS

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_flop_counts_match_liang_multvae_by_hand():
    config = MODELS["multvae-liang"].config
    assert runners.model_config("multvae") == dataclasses.replace(config, name="multvae")  # what the suite times
    items, batch = 20_108, 500
    dense = flops.flops_breakdown(config, items, batch, training=True)
    # [I-600-200-600-I]: the first layer has no input gradient (2 matmuls), every other layer 3.
    assert dense["first_layer"] == 2 * 2 * items * 600 * batch
    assert dense["output_layer"] == 3 * 2 * 600 * items * batch
    assert dense["other_layers"] == 3 * 2 * (600 * 400 + 200 * 600) * batch
    assert dense["prior_pass"] == 0 and dense["snapshot_encoder"] == 0
    evaluation = flops.flops_per_step(config, items, batch, training=False)
    assert evaluation == 2 * (items * 600 + 600 * 400 + 200 * 600 + 600 * items) * batch


def test_executed_flops_count_the_sparse_first_layer_by_interactions():
    config = MODELS["multvae-liang"].config
    dense = flops.flops_breakdown(config, 20_108, 500, training=True)
    executed = flops.flops_breakdown(config, 20_108, 500, training=True, nnz_per_user=73.0)
    assert executed["first_layer"] == 2 * 2 * 73.0 * 600 * 500
    assert executed["output_layer"] == dense["output_layer"]  # the log-sum-exp needs every logit


@pytest.mark.parametrize("name", ["hvae-vamp", "hvamp"])
def test_vamp_prior_pass_is_counted_once_per_step(name):
    config = runners.model_config(name)
    small = flops.flops_breakdown(config, 3_706, 100, training=True)
    large = flops.flops_breakdown(config, 3_706, 1_000, training=True)
    assert small["prior_pass"] > 0 and small["prior_pass"] == large["prior_pass"]
    assert flops.flops_breakdown(config, 3_706, 100, training=False)["prior_pass"] == 0


def test_recvae_phases_differ_in_their_gradients():
    config = MODELS["recvae"].config
    encoder = flops.flops_breakdown(config, 20_108, 500, training=True, phase="encoder")
    decoder = flops.flops_breakdown(config, 20_108, 500, training=True, phase="decoder")
    assert decoder["first_layer"] < encoder["first_layer"]  # no weight gradient for the encoder's first layer
    assert encoder["snapshot_encoder"] == decoder["snapshot_encoder"] > 0


@pytest.mark.parametrize("name", runners.NEURAL_MODELS)
def test_every_benchmarked_model_has_a_training_config(name):
    train = runners.train_config(name, 500)
    assert train.batch_size == 500
    alternating = name in ("recvae", "hvae-recvae")  # RecVAE and the two-level model in its style
    assert runners.schedule_phases(name) == (("encoder", "decoder") if alternating else ("joint",))
    assert runners.torch_unsupported(runners.model_config("multvae")) is None


def test_report_table_shows_skipped_runs_and_the_prior_probe():
    run = dict(model="hvae", label="hvae", shape="tiny", batch_size=500, phase="train", users_per_second=100.0,
               compile_seconds=1.0, peak_memory_bytes=2**20, roofline_fraction=0.1, executed_roofline_fraction=0.2,
               update_seconds=0.5, prior_pass_seconds_per_update=0.2, prior_pass_fraction_of_update=0.4,
               prior_pass_share_of_dense_flops=0.5, prior_pass_share_of_executed_flops=0.6)
    results = {"device": "cpu", "date": "today", "precision": "float32", "matmul_flops_per_second": 1e9,
               "runs": [dict(run, framework="jax"),
                        dict(model="hvamp", label="hvamp", shape="tiny", batch_size=500, phase="train",
                             framework="torch", users_per_second=None, skipped="not implemented")]}
    table = report.markdown_table(results)
    assert "n/a" in table and "not implemented" in table and "| hvae | tiny | 500 | 500.0 | 200.0 | 40% |" in table


@pytest.mark.usefixtures("standard_dtype_promotion")  # optax's Adam (see conftest.py)
def test_jax_runner_trains_and_probes_the_prior_in_process(tmp_path):
    from benchmarks.synthetic_shapes import SHAPES, make_shape, split_heldout

    train = make_shape(SHAPES["tiny"], seed=0, n_users=300)
    fold_in, heldout = split_heldout(make_shape(SHAPES["tiny"], seed=1, n_users=200), seed=0)
    runners.save_csr(str(tmp_path / "train.npz"), train=train)
    runners.save_csr(str(tmp_path / "eval.npz"), fold_in=fold_in, heldout=heldout)
    common = dict(framework="jax", shape="tiny", batch_size=100, precision="float32", updates=1, repeats=1,
                  train_path=str(tmp_path / "train.npz"), eval_path=str(tmp_path / "eval.npz"))
    spec = runners.RunSpec(model="hvae-vamp", phase="train", prior_probe=True, **common)
    measured = runners.run_jax(spec, train)
    assert measured.users_per_second > 0 and measured.extra["input_path"] == "dense"
    assert 0 < measured.extra["prior_pass_fraction_of_update"] and math.isfinite(
        measured.extra["prior_pass_fraction_of_update"])
    decoder = runners.run_jax(runners.RunSpec(model="recvae", phase="train", schedule_phase="decoder", **common), train)
    assert decoder.extra["schedule_phase"] == "decoder"
    evaluated = runners.run_jax(runners.RunSpec(model="multvae", phase="eval", **common), train)
    assert evaluated.users_per_second > 0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HVAE_JAX_BENCH_SUITE") != "1",
                    reason="the whole benchmark suite at small sizes takes 10-30 minutes on 2 cores; "
                           "HVAE_JAX_BENCH_SUITE=1 runs it")
def test_gpu_script_quick_mode_runs_every_part_on_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, BENCH_BUDGET_SECONDS="5400", JAX_PLATFORMS="cpu")
    completed = subprocess.run(["bash", "benchmarks/gpu.sh", str(tmp_path), "--quick"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=6000)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (path,) = tmp_path.glob("suite-*-quick.json")
    suite = json.loads(path.read_text())
    assert {part: status["returncode"] for part, status in suite["part_status"].items()} == dict.fromkeys(
        ("throughput", "hierarchical", "end_to_end", "scaling", "huge_catalogue"), 0)
    assert path.with_suffix(".md").read_text().strip() and path.with_suffix(".png").exists()

    throughput = suite["parts"]["throughput"]["runs"]
    assert {(run["framework"], run["phase"]) for run in throughput} == {
        (framework, phase) for framework in runners.FRAMEWORKS for phase in ("train", "eval")}
    assert all(run["users_per_second"] > 0 and run["executed_roofline_fraction"] > 0 for run in throughput)

    hierarchical = suite["parts"]["hierarchical"]["runs"]
    jax_rows = {run["label"]: run for run in hierarchical if run["framework"] == "jax"}
    assert set(jax_rows) == {"hvae", "hvae-recvae (encoder)", "hvae-recvae (decoder)", "hvae-vamp", "hvamp",
                             "recvae (encoder)", "recvae (decoder)"}
    assert all(run["users_per_second"] > 0 for run in jax_rows.values())
    for name in ("hvae-vamp", "hvamp"):
        assert 0 < jax_rows[name]["prior_pass_fraction_of_update"]
    for run in hierarchical:
        if run["framework"] != "jax":
            assert run.get("users_per_second") or run.get("skipped"), run

    end_to_end = suite["parts"]["end_to_end"]["runs"]
    assert [run["framework"] for run in end_to_end] == list(runners.FRAMEWORKS)
    for run in end_to_end:
        phases = run["phases_seconds"]
        assert {"data_to_device", "setup", "compile", "train", "Validation", "Checkpointing", "test"} <= set(phases)
        assert all(value >= 0 for value in phases.values())

    scaling = suite["parts"]["scaling"]["points"]
    assert {point["axis"] for point in scaling} == {"catalogue", "batch", "levels", "ensemble"}
    assert all(point.get("users_per_second", 0) > 0 and point["peak_memory_bytes"] >= 0 for point in scaling)

    huge = suite["parts"]["huge_catalogue"]
    assert huge["loss_is_finite"] and huge["layout"]["n_padded"] >= huge["n_items"]


def _recorded_hierarchy_runs():
    """(data set, tag, source) of every recorded selection run of the hierarchy: benchmarks/hierarchy.py's candidates
    and benchmarks/accuracy.py's grid."""
    from benchmarks.accuracy import GRIDS, RUNS
    from benchmarks.hierarchy import CANDIDATES

    runs = []
    for record in sorted(RUNS.glob("*/hvae--*--seed1.json")):
        tag = record.name[len("hvae--"):-len("--seed1.json")]
        if tag in CANDIDATES:
            runs.append((record.parent.name, tag, "hierarchy"))
        if tag in GRIDS["hvae"]:
            runs.append((record.parent.name, tag, "grid"))
    return runs


@pytest.mark.parametrize("dataset,tag,source", _recorded_hierarchy_runs())
def test_hierarchy_settings_reproduce_their_recorded_configs(dataset, tag, source):
    """A recorded accuracy run can be re-run: its setting still builds the model and train configs it recorded,
    whatever `--model hvae`'s defaults have become since."""
    import dataclasses

    from benchmarks.accuracy import configs_for, ran_whole_cap, run_path
    from benchmarks.hierarchy import CANDIDATES
    from hvae_jax.configs import model_config_to_dict
    from hvae_jax.rundir import ADDED_SETTINGS, NOT_FINGERPRINTED

    record = json.loads(run_path(dataset, "hvae", tag, 1).read_text())
    _, model, train = configs_for(dataset, "hvae", tag, 1, CANDIDATES[tag] if source == "hierarchy" else None)
    as_json = lambda fields: json.loads(json.dumps(fields))  # tuples as lists, as the record stores them
    # separate_heads came after some of these runs; its default is what they ran
    assert as_json(model_config_to_dict(model)) == {"separate_heads": False, **record["model_config"]}
    # Settings that do not change results (how often `latest` is written: its default changed since) are left out.
    results_only = lambda fields: {k: v for k, v in fields.items() if k not in NOT_FINGERPRINTED["train"]}  # noqa: E731
    # Settings added after a run: rundir.ADDED_SETTINGS holds the value that behaves as it did.
    added = {name: value for (section, name), value in ADDED_SETTINGS.items() if section == "train"}
    recorded = {**added, **record["train_config"]}
    if recorded["epochs"] != train.epochs:
        # The budget's cap was raised since (BUDGET in benchmarks/accuracy.py): a run whose patience stopped it
        # before its cap is the same run under the higher one; one that ran its whole cap must train again.
        assert recorded["epochs"] < train.epochs and not ran_whole_cap(record)
        recorded["epochs"] = train.epochs
    assert results_only(as_json(dataclasses.asdict(train))) == results_only(recorded)


def test_a_setting_missing_from_a_models_grid_is_an_error_not_a_run_of_its_defaults(tmp_path):
    import argparse

    from benchmarks import accuracy

    # Under another model's tag the hierarchy would train its own defaults and record them as that setting.
    with pytest.raises(ValueError, match=r"hvae has no setting 'default-beta0.8'.*mv-2level-composite"):
        accuracy.configs_for("amazon-book", "hvae", "default-beta0.8", 1)
    assert accuracy.configs_for("amazon-book", "multvae", "default-beta0.8", 1)[2].beta_cap == 0.8
    # Models without a grid have one setting, `default`; overrides name their own setting.
    assert accuracy.configs_for("ml-1m", "ease", "default", 1)[1].kind == "ease"
    with pytest.raises(ValueError, match="ease has no setting 'tuned'"):
        accuracy.configs_for("ml-1m", "ease", "tuned", 1)
    assert accuracy.configs_for("ml-1m", "ease", "tuned", 1, ({}, {}))[1].kind == "ease"
    # `run --tags` names the tag and every model's settings before anything trains.
    args = argparse.Namespace(workroot=str(tmp_path), datasets="amazon-book", models="multvae,hvae",
                              tags="default-beta0.8,mv-2level-composit", stage="select", settings_from=None,
                              force=False, ensemble=False)
    with pytest.raises(SystemExit, match=r"no setting 'mv-2level-composit' in the grid of multvae \(liang, .*; hvae"):
        accuracy.cmd_run(args)
    assert not any(tmp_path.iterdir())


def test_the_named_hierarchies_are_the_settings_validation_chose():
    """`--model hvae` is the grid's `mv-2level-composite`; `--model hvae-recvae` is the ml-1m ablation's winner."""
    import dataclasses

    from benchmarks.accuracy import configs_for
    from benchmarks.hierarchy import CANDIDATES

    def named(model):
        _, config, train = configs_for("ml-1m", model, "default", 1, ({}, {}))
        return dataclasses.replace(config, name="hvae"), train

    assert named("hvae") == configs_for("ml-1m", "hvae", "mv-2level-composite", 1)[1:]
    assert named("hvae-recvae") == configs_for("ml-1m", "hvae", "recvae-2level", 1, CANDIDATES["recvae-2level"])[1:]


def test_eval_breakdown_times_every_part_and_both_input_paths_score_alike():
    from benchmarks import eval_breakdown

    parts = eval_breakdown.step_parts("multvae", "ml-1m", 50, 100, repeats=1)
    times = parts["milliseconds"]
    for name in ("logits", "logits_and_top_k", "logits_and_host_top_k", "top_k", "host_top_k",
                 "top_k_batch_split_in_2", "approx_max_k"):
        assert math.isfinite(times[name]) and times[name] > 0, name
    assert 0 < times["top_k_share_of_step"] == round(times["top_k"] / times["logits_and_top_k"], 3)
    top_k = eval_breakdown.top_k_paths_pairs("multvae", "ml-1m", 50, 100, pairs=1)
    # The host's top-K is XLA's, so every metric of every user is the same.
    assert top_k["metrics_identical"] is True and set(top_k["users_per_second"]) == {"xla", "host"}
    pairs = eval_breakdown.input_paths_pairs("multvae", "ml-1m", 50, 100, pairs=1)
    ndcg = pairs["ndcg@100_of_untrained_model"]
    # No dropout in evaluation: the dense and the sparse first layer give the same scores up to summation order.
    assert ndcg["dense"] == pytest.approx(ndcg["sparse"], abs=1e-6) and ndcg["dense"] > 0
    assert pairs["dense_over_sparse_time"]["pairs"] == 1 and len(pairs["users_per_second"]) == 2
    sparser = eval_breakdown.input_paths_pairs("multvae", "ml-1m", 50, 100, pairs=1, items_per_user=20)
    assert sparser["shape"] == "ml-1m-20-per-user" and sparser["fold_in_density"] < pairs["fold_in_density"] / 3


def test_a_run_is_cut_short_when_it_ran_its_whole_cap_and_the_budget_now_allows_more(monkeypatch):
    from benchmarks import accuracy

    monkeypatch.setitem(accuracy.BUDGET, "ml-1m", dict(epochs=400, early_stopping=40))

    def record(model, cap, ran):
        return {"dataset": "ml-1m", "model": model, "tag": accuracy.tags_of(model)[0], "seed": 1,
                "train_config": {"epochs": cap}, "results": {"epochs": ran}}

    assert accuracy.cut_short(record("multvae", 200, 200))  # ran the old cap: train again
    assert not accuracy.cut_short(record("multvae", 200, 163))  # its patience stopped it first
    assert not accuracy.cut_short(record("multvae", 400, 400))  # today's cap: `plan` says it ran the whole cap
    assert accuracy.ran_whole_cap(record("multvae", 400, 400))
    assert not accuracy.ran_whole_cap(record("multvae", 400, 399))
    # The alternating schedule's cap is twice the budget's: 400 was the old cap, 800 today's.
    assert accuracy.cut_short(record("recvae", 400, 400))
    assert not accuracy.cut_short(record("recvae", 800, 800))
    assert not accuracy.cut_short({"dataset": "ml-1m", "model": "ease", "tag": "default", "seed": 1,
                                   "train_config": {}, "results": {}})


@pytest.mark.usefixtures("standard_dtype_promotion")  # optax's Adam (see conftest)
def test_epoch_cost_weights_the_alternating_cycle_and_counts_fewer_pseudo_inputs_as_less_work(tmp_path):
    from benchmarks import epoch_cost

    out = tmp_path / "epoch-cost.json"
    results = epoch_cost.main(["--models", "multvae,recvae,hvae-vamp:k20,hvae-vamp:k10", "--users", "600",
                               "--batch-size", "300", "--rounds", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    rows = {row["model"]: row for row in results["rows"]}
    assert rows["multvae"]["flops_ratio_to_multvae"] == 1.0 and rows["multvae"]["measured_ratio_to_multvae"] == 1.0
    assert rows["hvae-vamp:k20"]["n_pseudo_inputs"] == 20 and rows["recvae"]["n_pseudo_inputs"] is None
    assert rows["hvae-vamp:k10"]["flops_per_epoch"] < rows["hvae-vamp:k20"]["flops_per_epoch"]
    for row in rows.values():
        assert len(row["epoch_seconds"]) == 2 and all(math.isfinite(s) and s > 0 for s in row["epoch_seconds"])
    # RecVAE's cycle: three encoder epochs for each decoder epoch.
    from benchmarks.synthetic_shapes import SHAPES, make_shape

    setup = epoch_cost._setup("recvae", 300, make_shape(SHAPES["ml-1m"], seed=1, n_users=600))
    assert [(count, phase.name) for count, phase in epoch_cost.phase_weights(setup)] == [(45, "encoder"),
                                                                                          (15, "decoder")]
    with pytest.raises(ValueError, match="pseudo-inputs"):
        epoch_cost._setup("hvae-vamp:x3", 300, None)


def test_record_of_an_interrupted_run_says_when_it_came_within_one_percent_of_its_best(tmp_path):
    from benchmarks import accuracy

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"format": 1, "fingerprint": {"model": {"kind": "vae"}}}))
    rows = [(1, 0.10, 10.0), (2, 0.20, 11.0), (3, None, 12.0), (4, 0.299, 13.0), (5, 0.30, 14.0), (6, 0.25, 15.0)]
    (workdir / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "loss": 1.0, "train_seconds": s} | ({"valid": {"ndcg@100": v}} if v else {})) + "\n"
        for e, v, s in rows))
    out = tmp_path / "record.json"
    accuracy.main(["record", "--workdir", str(workdir), "--out", str(out), "--command-line", "hvae train ...",
                   "--note", "interrupted"])
    record = json.loads(out.read_text())
    assert record["results"] is None and record["epochs_run"] == 6 and record["note"] == "interrupted"
    assert [row["valid_ndcg@100"] for row in record["history"]] == [0.10, 0.20, None, 0.299, 0.30, 0.25]
    # 0.299 >= 0.99 * 0.30: epoch 4, after 10 + 11 + 12 + 13 training seconds (the unvalidated epoch 3 counts).
    assert record["time_to_99%_of_best_valid"] == {"fraction": 0.99, "best_valid_ndcg@100": 0.30, "epoch": 4,
                                                   "valid_ndcg@100": 0.299, "train_seconds": 46.0}
    assert accuracy.time_to_fraction_of_best([{"epoch": 1, "valid_ndcg@100": None}]) is None
    # A history without training times (older records) gives the epoch but no seconds, never a sum of zeros.
    untimed = [{"epoch": 1, "valid_ndcg@100": 0.2}, {"epoch": 2, "valid_ndcg@100": 0.3, "train_seconds": 5.0}]
    assert accuracy.time_to_fraction_of_best(untimed) == {"fraction": 0.99, "best_valid_ndcg@100": 0.3, "epoch": 2,
                                                          "valid_ndcg@100": 0.3, "train_seconds": None}


def test_the_default_across_data_sets_is_the_best_mean_ratio_to_the_chosen_one_level_model(tmp_path, monkeypatch):
    from benchmarks import accuracy

    monkeypatch.setattr(accuracy, "RUNS", tmp_path)
    monkeypatch.setitem(accuracy.GRIDS, "multvae", {"a": ({}, {}), "b": ({}, {})})
    monkeypatch.setitem(accuracy.GRIDS, "hvae", {"x": ({}, {}), "y": ({}, {}), "z": ({}, {})})
    valid = {("d1", "multvae", "a"): 0.40, ("d1", "multvae", "b"): 0.50, ("d2", "multvae", "a"): 0.20,
             ("d1", "hvae", "x"): 0.55, ("d2", "hvae", "x"): 0.18,
             ("d1", "hvae", "y"): 0.45, ("d2", "hvae", "y"): 0.23,
             ("d1", "hvae", "z"): 0.90}  # z has no run on d2: left out, however good
    for (dataset, model, tag), value in valid.items():
        path = accuracy.run_path(dataset, model, tag, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"results": {"valid": {"ndcg@100": value}}}))
    choice = accuracy.default_choice("hvae", ["d1", "d2"])
    # multvae's chosen settings: b on d1 (0.50), a on d2 (0.20). x: (1.1 + 0.9) / 2 = 1.0; y: (0.9 + 1.15) / 2.
    assert [score["tag"] for score in choice] == ["y", "x"]
    assert choice[0]["valid_ratio_to_multvae"] == pytest.approx({"d1": 0.9, "d2": 1.15})
    assert [score["mean_ratio"] for score in choice] == pytest.approx([1.025, 1.0])


@pytest.mark.usefixtures("standard_dtype_promotion")  # optax's Adam (see conftest)
def test_seeds_trained_together_write_the_records_that_training_each_alone_writes(tmp_path, monkeypatch):
    from benchmarks import accuracy

    # A small stand-in for a data set and a setting of the grid: the built-in synthetic data, a narrow Mult-VAE.
    monkeypatch.setitem(accuracy.DATASETS, "tiny", dict(data=None, heldout_users=100))
    monkeypatch.setitem(accuracy.BUDGET, "tiny", dict(epochs=5, early_stopping=2))
    monkeypatch.setitem(accuracy.GRIDS["multvae"], "tiny",
                        (dict(hidden=16, latents=(8,)), dict(batch_size=256, average_decay=0.9)))
    monkeypatch.setattr(accuracy, "RUNS", tmp_path / "alone")
    alone = [accuracy.run_one("tiny", "multvae", "tiny", seed, tmp_path / "work") for seed in (2, 3)]
    together_root = tmp_path / "together"
    together = accuracy.run_seeds_together("tiny", "multvae", "tiny", (2, 3), root=together_root)
    assert [record["seed"] for record in together] == [2, 3]
    # One wall time for the ensemble, shared by its members' records; each names the code that trained it.
    assert together[0]["wall_seconds"] == together[1]["wall_seconds"] > 0
    assert together[0]["library_revision"].keys() == alone[0]["library_revision"].keys() == {
        "commit", "hvae_jax_uncommitted_changes"}
    for one, member in zip(alone, together):
        as_written = json.loads(json.dumps(member))  # tuples as lists
        path = accuracy.run_path("tiny", "multvae", "tiny", member["seed"], together_root)
        assert json.loads(path.read_text()) == as_written
        assert member["train_config"] == json.loads(json.dumps(one["train_config"]))
        assert member["results"]["best_epoch"] == one["results"]["best_epoch"]
        assert member["results"]["epochs"] == one["results"]["epochs"]
        for part in ("valid", "test"):
            for metric in ("ndcg@100", "recall@20", "recall@50"):
                assert member["results"][part][metric] == pytest.approx(one["results"][part][metric], abs=1e-6)
        assert [row["valid_ndcg@100"] for row in member["history"]] == pytest.approx(
            [row["valid_ndcg@100"] for row in one["history"]], abs=1e-6)
    # Different seeds, different models: otherwise the comparison above could not tell members apart.
    assert together[0]["results"]["test"]["ndcg@100"] != together[1]["results"]["test"]["ndcg@100"]
    # Records that exist are kept, as run_one keeps them.
    assert accuracy.run_seeds_together("tiny", "multvae", "tiny", (2, 3), root=together_root) == json.loads(
        json.dumps(together))


def test_early_stopping_replay_follows_the_patience_rule_and_counts_updates_per_epoch(tmp_path):
    from benchmarks import early_stopping

    # Best at epoch 3 (0.40); a later 0.41 at epoch 9 is seen only with patience above 5.
    curve = list(enumerate([0.30, 0.35, 0.40, 0.39, 0.38, 0.40, 0.37, 0.36, 0.41, 0.39], start=1))
    short = early_stopping.replay(curve, patience=5)
    assert (short["stop_epoch"], short["kept_epoch"], short["stopped"]) == (8, 3, True)
    assert short["kept_fraction_of_best"] == pytest.approx(0.40 / 0.41)
    long = early_stopping.replay(curve, patience=6)
    assert (long["stop_epoch"], long["kept_epoch"], long["kept_fraction_of_best"]) == (10, 9, 1.0)
    assert not long["stopped"]
    # The training users come from the split summary a given-split record stores.
    record = {"results": {"split": {"train": {"users": 70_679}}}, "train_config": {"batch_size": 500}}
    assert early_stopping.updates_per_epoch(record) == 142
    assert early_stopping.updates_per_epoch({"results": {}, "train_config": {"batch_size": 500}}) is None


def test_bias_gradient_sums_agree_and_hlo_ops_are_traced_to_their_source():
    from benchmarks import bias_gradient

    row = bias_gradient.reduction_timings(batch=8, n_items=30, repeats=1)
    assert row["same_sums"] is True  # every way, against a numpy float64 sum
    assert set(row["median_ms"]) == {"g.sum(0)", "g.T.sum(1)", "ones[batch] @ g"}
    assert all(ms >= 0 for ms in row["median_ms"].values())
    text = ('%ynn_fusion.23 = f32[20108]{0} fusion(%a, %b), kind=kCustom, calls=%c, metadata={op_name="jit(chunk)/'
            'decoder_output/reduce_sum" stack_frame_id=580}\n  %dot.21 = f32[4,5]{1,0} dot(%x, %y), metadata={op_name='
            '"jit(chunk)/decoder_output/transpose"}\n  %constant.1 = f32[] constant(0)')
    assert bias_gradient._op_sources(text) == {"ynn_fusion.23": "jit(chunk)/decoder_output/reduce_sum",
                                               "dot.21": "jit(chunk)/decoder_output/transpose"}


@pytest.mark.usefixtures("standard_dtype_promotion")  # the update runs optax's Adam (tests/conftest.py)
def test_bias_gradient_ab_compiles_two_programs_with_the_same_update():
    from benchmarks import bias_gradient

    row = bias_gradient.ab_update("multvae", "joint", "tiny", n_users=600, rounds=2)
    assert row["programs_differ"] is True  # the pass-through really replaced shared_rows.per_user
    assert row["same_update"] is True  # and the update it compiles equals the shared-rows one
    assert len(row["seconds"]["before"]) == len(row["seconds"]["after"]) == 2
    assert row["speedup_before_over_after"]["min"] > 0


@pytest.mark.usefixtures("standard_dtype_promotion")  # optax's Adam (see tests/conftest.py)
def test_catalogue_study_records_each_command_and_compares_test_metrics_with_the_validation_choice(
        tmp_path, monkeypatch):
    from benchmarks import catalogue_study as study

    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("user,item\n" + "".join(f"u{u},i{(u * 7 + k) % 40}\n" for u in range(120) for k in range(8)))
    test.write_text("user,item\n" + "".join(f"u{u},i{(u * 7 + 8 + k) % 40}\n" for u in range(30) for k in range(2)))
    tiny = ["--epochs", "3", "--latents", "8", "--hidden", "16", "--batch-size", "50", "--no-progress"]
    monkeypatch.setattr(study, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(study, "DATASETS", {"tiny": ["--protocol", "given", "--train", str(train), "--test",
                                                     str(test)]})
    monkeypatch.setattr(study, "SETTINGS", {"multvae-default": ["--model", "multvae", *tiny],
                                            "multvae-dropout-0.2": ["--model", "multvae", "--dropout", "0.2", *tiny],
                                            "ease": ["--model", "ease", "--no-progress"]})
    study.main(["run", "--datasets", "tiny", "--settings", "multvae-default,multvae-dropout-0.2,ease",
                "--workroot", str(tmp_path / "runs")])
    records = {setting: json.loads((tmp_path / "results" / "tiny" / f"{setting}.json").read_text())
               for setting in ("multvae-default", "multvae-dropout-0.2", "ease")}
    assert "--dropout 0.2" in records["multvae-dropout-0.2"]["command"]
    assert records["multvae-default"]["epochs_run"] == 3 and len(records["multvae-default"]["history"]) == 3
    assert records["multvae-dropout-0.2"]["config"]["model"]["input_dropout"] == 0.2

    out = tmp_path / "study"
    study.main(["table", "--datasets", "tiny", "--out", str(out)])
    table = json.loads(out.with_suffix(".json").read_text())
    rows = {row["setting"]: row for row in table["rows"]["tiny"]}
    # The choice is the neural setting with the best validation NDCG@100; EASE is reported beside, never chosen.
    neural = ("multvae-default", "multvae-dropout-0.2")
    chosen = max(neural, key=lambda s: records[s]["results"]["valid"]["ndcg@100"])
    assert [s for s, row in rows.items() if row["chosen_on_validation"]] == [chosen]
    for setting in (*neural, "ease"):
        for name in ("recall@20", "ndcg@20"):
            expected = (records[setting]["results"]["test"][name] / records[chosen]["results"]["test"][name] - 1)
            assert rows[setting]["vs_chosen"][name] == pytest.approx(expected)
    assert rows["popularity"]["test"]["ndcg@100"] == records["multvae-default"]["results"]["baselines"][
        "popularity"]["test"]["ndcg@100"]
    assert table["summary"]["tiny"]["settings_compared"] == list(neural)
    assert table["summary"]["tiny"]["chosen_among_the_same_model"] == chosen  # both settings are Mult-VAE here
    assert table["summary"]["tiny"]["default_recall@20_within_2%"] == (
        rows["multvae-default"]["vs_chosen"]["recall@20"] >= -0.02)
    assert out.with_suffix(".png").stat().st_size > 0 and "multvae-dropout-0.2" in out.with_suffix(".md").read_text()
