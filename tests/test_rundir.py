"""Tests of hvae_jax.rundir: a run directory resumes only the same run, refuses any other before changing a byte,
overwrites only its own files, names damaged JSON files, and writes JSON that survives SIGKILL at any moment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import pytest

from hvae_jax import rundir
from hvae_jax.rundir import RunDir, RunDirError

SETTINGS = {
    "data": None, "format": None, "min_rating": None, "protocol": "strong", "heldout_users": None,
    "train_file": None, "valid_file": None, "test_file": None, "user_features": None, "split_seed": 98765,
    "workdir": "runs/a", "ks": (10, 20, 50, 100), "iw_samples": 0, "devices": 1, "distributed": False,
    "item_shards": 0, "logits_budget_mb": 64.0,
}
MODEL = {"kind": "vae", "name": "multvae", "latents": (200,), "hidden": 600, "input_dropout": 0.5,
         "prior": "standard", "logvar_clip": None}
TRAIN = {
    "epochs": 30, "batch_size": 500, "learning_rate": 1e-3, "beta_cap": 0.2, "total_anneal_steps": None,
    "anneal_epochs": None, "early_stopping": None, "eval_every": 1, "checkpoint_every": 1,
    "steps_per_dispatch": 64, "seed": 98765, "average_decay": 0.0, "input_path": "auto",
}


def configuration(**changes) -> dict:
    """open_for_training's keyword arguments with `section__name=value` changes, e.g. train__seed=1."""
    sections = {"settings": dict(SETTINGS), "model": dict(MODEL), "train": dict(TRAIN)}
    for key, value in changes.items():
        section, name = key.split("__")
        sections[section][name] = value
    return sections


def make_run(workdir: pathlib.Path, **changes) -> None:
    """A finished-looking run: config.json and results.json written by RunDir, the other files as fit writes them."""
    with RunDir.open_for_training(workdir, **configuration(**changes)) as run:
        run.write_results({"model": "multvae", "test": {"ndcg@100": 0.42}})
        run.metrics_path.write_text('{"epoch": 1, "loss": 2.5}\n')
        state = run.checkpoints_dir / "latest" / "30"
        state.mkdir(parents=True)
        (state / "state.bin").write_bytes(bytes(range(256)) * 8)
        run.tensorboard_dir.mkdir()
        (run.tensorboard_dir / "events.out.tfevents.1").write_bytes(b"event")
        run.plots_dir.mkdir()
        (run.plots_dir / "training.png").write_bytes(b"png")
        run.split_path.write_bytes(b"arrays")
        run.split_info_path.write_text('{"key": "k", "statistics": {}}')


def add_user_files(workdir: pathlib.Path) -> None:
    """Files a user may keep beside a run, some with names close to the run's own."""
    (workdir / "notes.md").write_text("lr 1e-3 looked best\n")
    (workdir / "analysis").mkdir()
    (workdir / "analysis" / "table.csv").write_text("a,b\n1,2\n")
    (workdir / "checkpoints.bak").write_text("mine")
    (workdir / ".results.json.backup").write_text("{}")


def snapshot(root: pathlib.Path) -> dict:
    """Every entry under `root` (and root itself) with its bytes, mode and modification time in nanoseconds: a
    directory's mtime changes when an entry is created, renamed or removed in it, even a temporary one."""
    entries = {".": (None, root.stat().st_mode, root.stat().st_mtime_ns)}
    for path in sorted(root.rglob("*")):
        status = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        entries[str(path.relative_to(root))] = (content, status.st_mode, status.st_mtime_ns)
    return entries


def read_config(workdir: pathlib.Path) -> dict:
    return json.loads((workdir / rundir.CONFIG_FILE).read_text())


# ------------------------------------------------------------------------------------------------------------------
# Resuming the same run


def test_a_new_directory_is_created_and_claimed(tmp_path):
    workdir = tmp_path / "deep" / "run"
    with RunDir.open_for_training(workdir, **configuration()) as run:
        assert not run.resumed and run.notes == ()
        config = read_config(workdir)
        assert config["format"] == rundir.FORMAT
        assert config["settings"]["ks"] == [10, 20, 50, 100]  # tuples stored as JSON lists
        assert config["fingerprint"] == rundir.fingerprint(SETTINGS, MODEL, TRAIN)
        assert run.settings == config["settings"] and run.model["kind"] == "vae" and run.train["epochs"] == 30


def test_identical_settings_resume_and_leave_the_run_files_alone(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir)
    before = snapshot(workdir)
    with RunDir.open_for_training(workdir, **configuration()) as run:
        assert run.resumed and run.notes == ()
    after = snapshot(workdir)
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    # config.json is rewritten (same content), so it and the directory's mtime change; nothing else does.
    assert changed <= {".", rundir.CONFIG_FILE, rundir.LOCK_FILE}
    assert before[rundir.CONFIG_FILE][0] == after[rundir.CONFIG_FILE][0]


def test_resuming_removes_the_temporaries_of_a_killed_write_and_nothing_of_the_user(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir)
    add_user_files(workdir)
    (workdir / ".config.json.0123456789ab.tmp").write_text('{"format": ')
    (workdir / ".split.ab_12cd9.tmp").mkdir()
    with RunDir.open_for_training(workdir, **configuration()):
        pass
    names = {path.name for path in workdir.iterdir()}
    assert ".config.json.0123456789ab.tmp" not in names and ".split.ab_12cd9.tmp" not in names
    assert {"notes.md", "analysis", "checkpoints.bak", ".results.json.backup"} <= names


def test_a_directory_holding_only_user_files_is_a_fresh_run(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    add_user_files(workdir)
    before = snapshot(workdir)
    with RunDir.open_for_training(workdir, **configuration()) as run:
        assert not run.resumed
    after = snapshot(workdir)
    assert all(after[name] == before[name] for name in before if name != ".")


@pytest.mark.parametrize("section, name, value", [
    ("settings", "workdir", "elsewhere/a"),
    ("settings", "devices", 4),
    ("settings", "distributed", True),
    ("settings", "ks", (5, 100)),
    ("settings", "iw_samples", 100),
    ("settings", "logits_budget_mb", 16.0),
    ("model", "name", "mine"),
    ("train", "steps_per_dispatch", 8),
    ("train", "checkpoint_every", 5),
])
def test_settings_that_do_not_change_results_resume_and_are_recorded(tmp_path, section, name, value):
    workdir = tmp_path / "run"
    make_run(workdir)
    results = (workdir / rundir.RESULTS_FILE).read_bytes()
    with RunDir.open_for_training(workdir, **configuration(**{f"{section}__{name}": value})) as run:
        assert run.resumed
        assert len(run.notes) == 1 and run.notes[0].startswith(f"{section}.{name}: ")
        assert "does not change results" in run.notes[0]
    assert read_config(workdir)[section][name] == json.loads(json.dumps(value))
    assert (workdir / rundir.RESULTS_FILE).read_bytes() == results


def test_more_epochs_continue_a_run_whose_warm_up_does_not_depend_on_them(tmp_path):
    for anneal in ({"train__anneal_epochs": 10}, {"train__total_anneal_steps": 2000}):
        workdir = tmp_path / str(anneal)
        make_run(workdir, **anneal)
        with RunDir.open_for_training(workdir, **configuration(train__epochs=50, **anneal)) as run:
            assert run.resumed
            assert run.notes == ("train.epochs: 30 -> 50: continuing the run to 50 epochs",)
        assert read_config(workdir)["train"]["epochs"] == 50


def test_more_epochs_with_the_anneal_over_all_updates_are_refused_with_the_way_to_continue(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir)
    (workdir / rundir.METRICS_FILE).write_text("".join(
        json.dumps({"epoch": epoch, "step": 10 * epoch, "loss": 2.5}) + "\n" for epoch in range(1, 31)))
    before = snapshot(workdir)
    with pytest.raises(RunDirError) as refused:
        RunDir.open_for_training(workdir, **configuration(train__epochs=50))
    assert snapshot(workdir) == before
    (difference,) = refused.value.differences
    assert (difference.section, difference.name, difference.old, difference.new) == (
        "train", "total_anneal_steps", "all updates of 30 epochs", "all updates of 50 epochs")
    # 30 epochs of 10 updates (metrics.jsonl): the length in updates that the unset one stood for.
    assert "--anneal-steps 300 keeps this run's schedule" in str(refused.value)
    # Following the advice resumes: the same schedule, and config.json now says so explicitly.
    with RunDir.open_for_training(workdir, **configuration(train__epochs=50, train__total_anneal_steps=300)) as run:
        assert run.resumed
        assert "train.total_anneal_steps: unset -> 300: the same schedule, its length in updates now given" in run.notes
    assert read_config(workdir)["train"]["total_anneal_steps"] == 300


def test_more_epochs_of_a_bounded_anneal_are_advised_the_bound(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir, train__max_anneal_steps=200)
    (workdir / rundir.METRICS_FILE).write_text("".join(
        json.dumps({"epoch": epoch, "step": 10 * epoch, "loss": 2.5}) + "\n" for epoch in range(1, 31)))
    with pytest.raises(RunDirError) as refused:
        RunDir.open_for_training(workdir, **configuration(train__epochs=50, train__max_anneal_steps=200))
    # 30 epochs of 10 updates, bounded by 200: beta rose over 200 updates.
    assert "--anneal-steps 200 keeps this run's schedule" in str(refused.value)


def test_the_anneal_over_all_updates_and_a_warm_up_of_as_many_epochs_are_different_runs(tmp_path):
    from hvae_jax.configs import TrainConfig
    from hvae_jax.schedules import build_schedule

    # The maths: unset = min(cap, update / (epochs x updates per epoch)), i.e. 300 updates here; a warm-up of 30
    # epochs is cap x epoch / 30, constant within an epoch. They differ from the first update on.
    betas = lambda train: [float(build_schedule(train, n_levels=1, steps_per_epoch=10).beta(jnp.asarray(step)))
                           for step in range(400)]
    unset = betas(TrainConfig(epochs=30, beta_cap=0.2))
    assert unset == betas(TrainConfig(epochs=50, beta_cap=0.2, total_anneal_steps=300))
    warm_up = betas(TrainConfig(epochs=30, beta_cap=0.2, anneal_epochs=30))
    assert unset[5] == pytest.approx(5 / 300) and warm_up[5] == pytest.approx(0.2 / 30)
    # So a run trained with the length unset is not resumed as one with that warm-up (an interrupted run would
    # continue with other betas), in a config.json written today or by an older version, which recorded the unset
    # length as anneal_epochs = epochs.
    workdir = tmp_path / "run"
    make_run(workdir)
    for written in ("today", "older"):
        if written == "older":
            config = read_config(workdir)
            config["fingerprint"]["train"].update(anneal_epochs=30, total_anneal_steps=None)
            (workdir / rundir.CONFIG_FILE).write_text(json.dumps(config))
        with pytest.raises(RunDirError) as refused:
            RunDir.open_for_training(workdir, **configuration(train__anneal_epochs=30))
        assert {(d.name, d.old, d.new) for d in refused.value.differences} == {
            ("anneal_epochs", None, 30), ("total_anneal_steps", "all updates of 30 epochs", None)}
        with RunDir.open_for_training(workdir, **configuration()) as run:  # the same settings resume
            assert run.resumed
    # An older config.json whose warm-up was set explicitly keeps it.
    explicit = tmp_path / "explicit"
    make_run(explicit, train__anneal_epochs=30)
    with RunDir.open_for_training(explicit, **configuration(train__anneal_epochs=30)) as run:
        assert run.resumed


# ------------------------------------------------------------------------------------------------------------------
# Refusing another run


REFUSED = [
    ("settings", "data", "ml-1m"),
    ("settings", "format", "csv"),
    ("settings", "min_rating", 3.5),
    ("settings", "protocol", "given"),
    ("settings", "heldout_users", 100),
    ("settings", "train_file", "train.csv"),
    ("settings", "user_features", "features.csv"),
    ("settings", "split_seed", 1),
    ("settings", "item_shards", 2),
    ("model", "hidden", 300),
    ("model", "latents", (200, 200)),
    ("model", "input_dropout", 0.2),
    ("model", "logvar_clip", (-12.0, 4.0)),
    ("model", "prior", "vamp"),
    ("train", "learning_rate", 3e-3),
    ("train", "seed", 1),
    ("train", "batch_size", 100),
    ("train", "beta_cap", 0.5),
    ("train", "eval_every", 5),
    ("train", "early_stopping", 10),
    ("train", "early_stopping_updates", 1500),  # absent from the stored run: written before the setting existed
    ("train", "average_decay", 0.999),
    ("train", "input_path", "sparse"),
    ("train", "some_future_setting", 1),
]


@pytest.mark.parametrize("section, name, value", REFUSED)
def test_a_changed_setting_is_refused_by_name_and_nothing_changes(tmp_path, section, name, value):
    workdir = tmp_path / "run"
    make_run(workdir)
    add_user_files(workdir)
    before = snapshot(workdir)
    with pytest.raises(RunDirError) as refused:
        RunDir.open_for_training(workdir, **configuration(**{f"{section}__{name}": value}))
    assert snapshot(workdir) == before
    assert isinstance(refused.value, ValueError)  # the CLI prints ValueErrors as `error: ...` and exits 2
    old = configuration()[section].get(name, "(not recorded)")
    old = old if old == "(not recorded)" else rundir._show(json.loads(json.dumps(old)))
    new = rundir._show(json.loads(json.dumps(value)))
    message = str(refused.value)
    assert f"{section}.{name}: {old} -> {new}" in message
    assert "new --workdir" in message and "--overwrite" in message
    assert [(d.section, d.name) for d in refused.value.differences] == [(section, name)]


def test_a_run_written_before_a_setting_existed_resumes_with_the_value_that_behaves_as_it_did(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir)  # TRAIN has no early_stopping_updates, as config.json files written before it existed
    assert "early_stopping_updates" not in read_config(workdir)["train"]
    assert rundir.ADDED_SETTINGS[("train", "early_stopping_updates")] is None
    with pytest.raises(RunDirError, match=r"\(not recorded\) -> 1500 \(the run was written before this setting "
                                          r"existed; --early-stopping-updates none resumes it as it was\)"):
        RunDir.open_for_training(workdir, **configuration(train__early_stopping_updates=1500))
    with RunDir.open_for_training(workdir, **configuration(train__early_stopping_updates=None)) as run:
        assert run.resumed
    assert read_config(workdir)["train"]["early_stopping_updates"] is None
    # Once recorded, the setting compares as any other.
    with pytest.raises(RunDirError, match=r"train.early_stopping_updates: unset -> 1500"):
        RunDir.open_for_training(workdir, **configuration(train__early_stopping_updates=1500))


def test_every_difference_is_named_at_once(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir)
    with pytest.raises(RunDirError) as refused:
        RunDir.open_for_training(
            workdir, **configuration(train__learning_rate=3e-3, train__seed=1, model__hidden=300, settings__ks=(5,))
        )
    message = str(refused.value)
    assert "train.learning_rate: 0.001 -> 0.003" in message
    assert "train.seed: 98765 -> 1" in message
    assert "model.hidden: 600 -> 300" in message
    assert "ks" not in message  # outside the fingerprint: not a reason to refuse
    assert len(refused.value.differences) == 3


def test_a_run_with_epochs_scaled_to_the_data_resumes_as_auto_and_says_why_not_otherwise(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir, train__epochs=None)
    with RunDir.open_for_training(workdir, **configuration(train__epochs=None)) as run:
        assert run.resumed
    with pytest.raises(RunDirError) as refused:
        RunDir.open_for_training(workdir, **configuration(train__epochs=400))
    differences = {(d.section, d.name): d for d in refused.value.differences}
    assert (differences["train", "epochs"].old, differences["train", "epochs"].new) == (None, 400)
    assert "scaled to the data (--epochs auto" in differences["train", "epochs"].note
    assert differences["train", "total_anneal_steps"].old == "all updates of the epochs scaled to the data"
    assert "None epochs" not in str(refused.value)


def test_fewer_epochs_are_refused(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir, train__anneal_epochs=10)
    before = snapshot(workdir)
    with pytest.raises(RunDirError, match=r"train\.epochs: 30 -> 20 \(a run continues to more epochs, never fewer\)"):
        RunDir.open_for_training(workdir, **configuration(train__epochs=20, train__anneal_epochs=10))
    assert snapshot(workdir) == before


def test_another_model_kind_is_named_alone(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir)
    with pytest.raises(RunDirError) as refused:
        RunDir.open_for_training(workdir, settings=SETTINGS, model={"kind": "ease", "lambdas": [500.0]}, train=TRAIN)
    assert [str(d) for d in refused.value.differences] == ['model.kind: "vae" -> "ease"']


@pytest.mark.parametrize("name, value", [("ks", (10, 20, 50, 100, 200)), ("logits_budget_mb", 16.0)])
def test_ks_and_logits_budget_enter_when_items_are_sharded(tmp_path, name, value):
    """They set the chunk, hence the padded catalogue, hence the parameters' shapes and initial values."""
    workdir = tmp_path / "run"
    make_run(workdir, settings__item_shards=4)
    before = snapshot(workdir)
    with pytest.raises(RunDirError, match=rf"settings\.{name}: "):
        RunDir.open_for_training(workdir, **configuration(settings__item_shards=4, **{f"settings__{name}": value}))
    assert snapshot(workdir) == before


def test_a_legacy_config_without_fingerprint_is_read_but_not_resumed(tmp_path):
    """An older hvae_jax wrote config.json before checking anything: it may not describe the checkpoints."""
    workdir = tmp_path / "run"
    make_run(workdir)
    legacy = {section: configuration()[section] for section in rundir.SECTIONS}
    (workdir / rundir.CONFIG_FILE).write_text(json.dumps(legacy))
    before = snapshot(workdir)
    with pytest.raises(RunDirError, match="older hvae_jax") as refused:
        RunDir.open_for_training(workdir, **configuration())
    assert "new --workdir" in str(refused.value) and "--overwrite" in str(refused.value)
    assert snapshot(workdir) == before
    run = RunDir.open_for_reading(workdir)
    assert run.legacy and run.model["hidden"] == 600 and "predates" in run.notes[0]
    assert snapshot(workdir) == before
    with RunDir.open_for_training(workdir, **configuration(), overwrite=True) as run:
        assert not run.resumed and not (workdir / rundir.RESULTS_FILE).exists()


def test_run_files_without_a_config_are_refused(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir)
    (workdir / rundir.CONFIG_FILE).unlink()
    before = snapshot(workdir)
    with pytest.raises(RunDirError, match=r"holds files of a run \(results\.json, split\.json, split\.npz") as refused:
        RunDir.open_for_training(workdir, **configuration())
    assert "--overwrite" in str(refused.value)
    assert snapshot(workdir) == before


@pytest.mark.parametrize("content, problem", [
    (b"", "is empty"),
    (b'{"format": 1, "settings": {"data": nu', "ends inside an unclosed object after 37 bytes (cut short?)"),
    (b"[1, 2]", "holds a JSON list, not an object"),
])
def test_a_damaged_config_is_named_and_refused_and_overwrite_replaces_it(tmp_path, content, problem):
    workdir = tmp_path / "run"
    make_run(workdir)
    (workdir / rundir.CONFIG_FILE).write_bytes(content)
    before = snapshot(workdir)
    with pytest.raises(RunDirError) as refused:
        RunDir.open_for_training(workdir, **configuration())
    message = str(refused.value)
    assert f"{workdir / rundir.CONFIG_FILE} {problem}: expected the run's settings" in message
    assert "--overwrite" in message
    assert snapshot(workdir) == before
    with RunDir.open_for_training(workdir, **configuration(), overwrite=True):
        pass
    assert read_config(workdir)["format"] == rundir.FORMAT


@pytest.mark.parametrize("stored", ["other settings", "legacy", "damaged"])
def test_a_config_alone_describes_nothing_to_mix_and_is_replaced(tmp_path, stored):
    """A run that stopped before saving its split (a malformed data file, say) leaves only config.json."""
    workdir = tmp_path / "run"
    with RunDir.open_for_training(workdir, **configuration(train__seed=1)):
        pass
    if stored == "legacy":
        (workdir / rundir.CONFIG_FILE).write_text(json.dumps(configuration(train__seed=1)))
    elif stored == "damaged":
        (workdir / rundir.CONFIG_FILE).write_text("")
    add_user_files(workdir)
    with RunDir.open_for_training(workdir, **configuration()) as run:
        assert not run.resumed and "saved nothing else" in run.notes[0]
    assert read_config(workdir)["train"]["seed"] == TRAIN["seed"]
    assert (workdir / "notes.md").exists()
    (workdir / rundir.SPLIT_INFO_FILE).write_text("{}")  # now there is something to mix
    with pytest.raises(RunDirError, match="train.seed"):
        RunDir.open_for_training(workdir, **configuration(train__seed=1))


def test_run_paths_name_the_files_of_a_directory_and_a_run_dir_is_one(tmp_path):
    paths = rundir.RunPaths(tmp_path)
    assert rundir.RunPaths.of(tmp_path).checkpoints_dir == paths.checkpoints_dir == tmp_path / "checkpoints"
    assert (paths.metrics_path, paths.tensorboard_dir) == (tmp_path / "metrics.jsonl", tmp_path / "tensorboard")
    assert (paths.results_path, paths.plots_dir) == (tmp_path / "results.json", tmp_path / "plots")
    with RunDir.open_for_training(tmp_path / "run", **configuration()) as run:
        assert rundir.RunPaths.of(run) is run and run.writer
    assert not RunDir.open_for_training(tmp_path / "other", **configuration(), writer=False).writer
    assert not any(path.exists() for path in (paths.checkpoints_dir, paths.metrics_path))  # naming creates nothing


def test_checkpoints_and_metrics_log_write_where_the_run_dir_says(tmp_path):
    import jax.numpy as jnp

    from hvae_jax.checkpoint import Checkpoints
    from hvae_jax.logs import MetricsLog

    with RunDir.open_for_training(tmp_path / "run", **configuration()) as run:
        checkpoints = Checkpoints(run)
        checkpoints.save("latest", 3, {"w": jnp.ones(2)}, {"epoch": 3})
        checkpoints.close()
        with MetricsLog(run, tensorboard=True) as metrics_log:
            metrics_log.write({"epoch": 1, "loss": 2.0})
    assert (run.checkpoints_dir / "latest" / "3").is_dir()
    assert run.metrics_path.read_text() == '{"epoch": 1, "loss": 2.0}\n'
    assert list(run.tensorboard_dir.glob("events.out.tfevents.*"))
    shutil.rmtree(run.checkpoints_dir / "best")  # a run that never validated
    reading = Checkpoints(RunDir.open_for_reading(run.path), create=False)
    assert reading.latest_epoch("latest") == 3 and reading.restore("best", None) is None
    reading.close()
    assert not (run.checkpoints_dir / "best").exists()  # reading created nothing


def test_a_file_is_not_a_workdir(tmp_path):
    workdir = tmp_path / "run"
    workdir.write_text("x")
    for overwrite in (False, True):
        with pytest.raises(RunDirError, match="is a file, not a directory"):
            RunDir.open_for_training(workdir, **configuration(), overwrite=overwrite)
    assert workdir.read_text() == "x"


def test_configurations_must_be_json_dicts_with_a_model_kind(tmp_path):
    with pytest.raises(ValueError, match="'kind'"):
        RunDir.open_for_training(tmp_path / "a", settings=SETTINGS, model={"hidden": 600}, train=TRAIN)
    with pytest.raises(TypeError, match="train settings must be JSON-able"):
        RunDir.open_for_training(tmp_path / "b", settings=SETTINGS, model=MODEL, train={"epochs": object()})
    with pytest.raises(TypeError, match="settings must be a dict"):
        RunDir.open_for_training(tmp_path / "c", settings=[1], model=MODEL, train=TRAIN)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------------------------
# Overwriting


def test_overwrite_starts_clean_and_keeps_everything_else(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir)
    add_user_files(workdir)
    (workdir / ".results.json.0123456789ab.tmp").write_text('{"half": ')  # a write killed before its rename
    (workdir / ".split.a_b1xyz9.tmp").mkdir()
    (workdir / "split.tmp.npz").write_bytes(b"half")  # an older hvae_jax's half-written split
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.bin").write_bytes(b"keep")
    user_files = {n: v for n, v in snapshot(workdir).items()
                  if n.split("/")[0] in ("notes.md", "analysis", "checkpoints.bak", ".results.json.backup")}
    with RunDir.open_for_training(workdir, **configuration(model__hidden=300), overwrite=True) as run:
        assert not run.resumed
    after = snapshot(workdir)
    assert {n: v for n, v in after.items() if n in user_files} == user_files
    assert set(after) - set(user_files) == {".", rundir.CONFIG_FILE, rundir.LOCK_FILE}
    assert read_config(workdir)["model"]["hidden"] == 300
    assert (outside / "keep.bin").read_bytes() == b"keep"


def test_overwrite_removes_a_link_never_what_it_points_to(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir)
    shared = tmp_path / "shared_checkpoints"
    (shared / "latest").mkdir(parents=True)
    (shared / "latest" / "state.bin").write_bytes(b"precious")
    shutil.rmtree(workdir / rundir.CHECKPOINTS_DIR)
    (workdir / rundir.CHECKPOINTS_DIR).symlink_to(shared, target_is_directory=True)
    with RunDir.open_for_training(workdir, **configuration(), overwrite=True):
        pass
    assert not (workdir / rundir.CHECKPOINTS_DIR).exists() and not (workdir / rundir.CHECKPOINTS_DIR).is_symlink()
    assert (shared / "latest" / "state.bin").read_bytes() == b"precious"


# ------------------------------------------------------------------------------------------------------------------
# One process at a time, and the other processes of a multi-host run


@pytest.mark.skipif(rundir.fcntl is None, reason="locks need POSIX")
def test_a_second_trainer_is_refused_while_the_first_holds_the_directory(tmp_path):
    workdir = tmp_path / "run"
    first = RunDir.open_for_training(workdir, **configuration())
    before = snapshot(workdir)
    with pytest.raises(RunDirError, match=rf"in use by another training process \(pid {os.getpid()}"):
        RunDir.open_for_training(workdir, **configuration())
    with pytest.raises(RunDirError, match="in use"):
        RunDir.open_for_training(workdir, **configuration(train__seed=1), overwrite=True)
    assert snapshot(workdir) == before
    first.close()
    first.close()
    with RunDir.open_for_training(workdir, **configuration()) as second:
        assert second.resumed


def test_a_non_writing_process_checks_but_writes_nothing(tmp_path):
    fresh = tmp_path / "fresh"
    run = RunDir.open_for_training(fresh, **configuration(), writer=False)
    assert not run.resumed and not fresh.exists()
    workdir = tmp_path / "run"
    make_run(workdir)
    before = snapshot(workdir)
    assert RunDir.open_for_training(workdir, **configuration(), writer=False).resumed
    with pytest.raises(RunDirError, match="train.seed"):
        RunDir.open_for_training(workdir, **configuration(train__seed=1), writer=False)
    with pytest.raises(RuntimeError, match="writer=False"):
        run.write_results({"model": "x"})
    assert snapshot(workdir) == before


# ------------------------------------------------------------------------------------------------------------------
# Reading a run (evaluate, recommend)


def test_reading_a_run_writes_nothing_and_gives_its_configuration(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir)
    before = snapshot(workdir)
    run = RunDir.open_for_reading(workdir)
    assert not run.legacy and run.resumed
    assert run.model["kind"] == "vae" and run.settings["ks"] == [10, 20, 50, 100]
    assert run.read_results() == {"model": "multvae", "test": {"ndcg@100": 0.42}}
    assert run.checkpoints_dir == workdir / "checkpoints" and run.metrics_path == workdir / "metrics.jsonl"
    assert run.tensorboard_dir == workdir / "tensorboard" and run.plots_dir == workdir / "plots"
    assert snapshot(workdir) == before


def test_reading_explains_a_missing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory: is it the --workdir of an `hvae train` run"):
        RunDir.open_for_reading(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match=r"config\.json not found: is .* the --workdir of an `hvae train`"):
        RunDir.open_for_reading(tmp_path)


@pytest.mark.parametrize("config, problem", [
    ({"format": 1, "fingerprint": {}, "settings": {}, "train": {}}, "has no 'model' object"),
    ({"format": 1, "settings": {}, "model": {}, "train": {}}, "has no valid 'fingerprint' object"),
    ({"format": 99, "settings": {}, "model": {}, "train": {}}, "has format 99; this hvae_jax reads format 1"),
])
def test_reading_names_what_config_json_lacks(tmp_path, config, problem):
    (tmp_path / rundir.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(RunDirError, match=problem):
        RunDir.open_for_reading(tmp_path)


def test_damaged_config_and_results_are_named_on_reading(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir)
    results = workdir / rundir.RESULTS_FILE
    results.write_text(results.read_text()[:20])
    run = RunDir.open_for_reading(workdir)
    truncated = rf"{results} ends inside an unclosed string after 20 bytes .*hvae evaluate --workdir"
    with pytest.raises(RunDirError, match=truncated):
        run.read_results()
    results.unlink()
    assert run.read_results() is None
    (workdir / rundir.CONFIG_FILE).write_text("")
    with pytest.raises(RunDirError, match=r"config\.json is empty: expected the run's settings"):
        RunDir.open_for_reading(workdir)


def test_results_are_written_atomically_with_numpy_values(tmp_path):
    workdir = tmp_path / "run"
    make_run(workdir)
    run = RunDir.open_for_reading(workdir)
    run.write_results({"model": "multvae", "ndcg": np.float32(0.5), "per_level": np.arange(3)})
    assert run.read_results() == {"model": "multvae", "ndcg": 0.5, "per_level": [0, 1, 2]}
    assert not [p for p in workdir.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------------------------
# The split


@pytest.fixture(scope="module")
def small_split():
    from hvae_jax.data.splits import strong_generalization
    from hvae_jax.data.synthetic import synthetic_interactions

    return strong_generalization(synthetic_interactions(n_users=300, n_items=80), n_heldout_users=30, seed=3)


def test_split_round_trip(tmp_path, small_split):
    with RunDir.open_for_training(tmp_path / "run", **configuration()) as run:
        assert run.load_split() is None
        run.save_split(small_split)
        loaded = run.load_split(required=True)
    assert (loaded.train != small_split.train).nnz == 0
    np.testing.assert_array_equal(loaded.item_ids, small_split.item_ids)
    np.testing.assert_array_equal(loaded.test.user_ids, small_split.test.user_ids)
    assert (loaded.valid.heldout != small_split.valid.heldout).nnz == 0
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names == {rundir.CONFIG_FILE, rundir.LOCK_FILE, rundir.SPLIT_FILE, rundir.SPLIT_INFO_FILE}


def test_a_damaged_split_is_named(tmp_path, small_split):
    workdir = tmp_path / "run"
    with RunDir.open_for_training(workdir, **configuration()) as run:
        run.save_split(small_split)
    run = RunDir.open_for_reading(workdir)
    arrays = run.split_path.read_bytes()
    run.split_path.write_bytes(arrays[: len(arrays) // 2])
    with pytest.raises(RunDirError, match=rf"{run.split_path} cannot be read .*Delete split\.npz and split\.json"):
        run.load_split()
    run.split_path.write_bytes(arrays)
    run.split_info_path.write_text("")  # the empty split.json of issue 11
    with pytest.raises(RunDirError, match=rf"{run.split_info_path} is empty: expected the statistics"):
        run.load_split()
    run.split_info_path.write_text('{"key": "k"}')
    with pytest.raises(RunDirError, match="has no 'statistics' object"):
        run.load_split()
    run.split_info_path.unlink()  # arrays without statistics: a save cut short, so no split yet
    assert run.load_split() is None
    with pytest.raises(FileNotFoundError, match="no complete split"):
        run.load_split(required=True)


# ------------------------------------------------------------------------------------------------------------------
# JSON files


@pytest.mark.parametrize("content, problem", [
    (b"", "is empty"),
    (b"  \n\t", "holds only whitespace"),
    (b'{"a": 1, "b": [1, 2', "ends inside an unclosed list after 19 bytes (cut short?)"),
    (b'{"a": "x\\"y', "ends inside an unclosed string after 11 bytes (cut short?)"),
    (b'{"a": 1,, "b": 2}', "is not valid JSON (Expecting property name enclosed in double quotes at line 1, column 9)"),
    (b"[1, 2]", "holds a JSON list, not an object"),
    (b"null", "holds a JSON null, not an object"),
    (b'"text"', "holds a JSON string, not an object"),
    (b"3.5", "holds a JSON number, not an object"),
    (b'{"a": "\xff"}', "is not UTF-8 text (byte 7)"),
])
def test_read_json_names_the_file_the_problem_the_expectation_and_the_remedy(tmp_path, content, problem):
    path = tmp_path / "thing.json"
    path.write_bytes(content)
    with pytest.raises(RunDirError) as error:
        rundir.read_json(path, expected="the thing", remedy="Make it again.")
    assert str(error.value) == f"{path} {problem}: expected the thing. Make it again."


def test_read_json_of_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"thing\.json not found: expected the thing\. Make it again\."):
        rundir.read_json(tmp_path / "thing.json", expected="the thing", remedy="Make it again.")


def test_write_json_round_trip_permissions_and_failures(tmp_path):
    path = tmp_path / "results.json"
    rundir.write_json(path, {"a": (1, 2), "b": None})
    assert rundir.read_json(path, expected="", remedy="") == {"a": [1, 2], "b": None}
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    before = path.read_bytes()
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        rundir.write_json(path, {"a": object()})
    with pytest.raises(TypeError, match="holds a JSON object"):
        rundir.write_json(path, [1, 2])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


WRITER = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("rundir_under_test", sys.argv[1])
    rundir = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rundir)
    contents = [{"version": "A", "payload": "a" * 6_000_000}, {"version": "B", "payload": "b" * 9_000_000,
                "rows": list(range(20_000))}]
    print("ready", flush=True)
    written = 0
    while True:
        rundir.write_json(sys.argv[2], contents[written % 2])
        written += 1
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_write_json_leaves_the_old_or_the_new_file_when_killed_at_any_moment(tmp_path):
    """A process rewrites one JSON file in a loop, alternating two large contents, and is killed with SIGKILL at
    random moments; the file must always parse as one of the two whole contents. The kills go on (8 to 40 of them)
    until both contents have been seen and at least one kill has landed between a temporary's creation and its
    rename, so the test cannot pass without exercising the moment that matters."""
    path = tmp_path / "results.json"
    rundir.write_json(path, {"version": "start"})
    generator = random.Random(11)
    seen, killed_mid_write, kills = set(), 0, 0
    while kills < 8 or (kills < 40 and not ({"A", "B"} <= seen and killed_mid_write)):
        kills += 1
        child = subprocess.Popen([sys.executable, "-c", WRITER, rundir.__file__, str(path)], stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\n"
        try:
            time.sleep(generator.uniform(0.05, 0.6))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        content = json.loads(path.read_text())  # never cut short, never empty
        assert content["version"] in ("start", "A", "B")
        if content["version"] == "A":
            assert content == {"version": "A", "payload": "a" * 6_000_000}
        elif content["version"] == "B":
            assert content["payload"] == "b" * 9_000_000 and content["rows"] == list(range(20_000))
        seen.add(content["version"])
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "results.json"]
        assert all(rundir._TEMPORARY.match(name) for name in leftovers), leftovers  # what open_for_training cleans
        killed_mid_write += bool(leftovers)
        for name in leftovers:
            (tmp_path / name).unlink()
    assert {"A", "B"} <= seen
    assert killed_mid_write > 0, "no kill landed between creating the temporary and renaming it"


# ------------------------------------------------------------------------------------------------------------------
# The fingerprint rule


def test_the_fingerprint_leaves_out_exactly_the_listed_settings_and_resolves_the_warm_up():
    printed = rundir.fingerprint(SETTINGS, MODEL, TRAIN)
    for section, values in configuration().items():
        assert set(printed[section]) == set(values) - rundir.NOT_FINGERPRINTED[section]
    assert printed["train"]["total_anneal_steps"] == f"all updates of {TRAIN['epochs']} epochs"
    assert printed["train"]["anneal_epochs"] is None
    assert rundir.fingerprint(SETTINGS, MODEL, dict(TRAIN, total_anneal_steps=5))["train"]["total_anneal_steps"] == 5
    assert rundir.fingerprint(SETTINGS, MODEL, dict(TRAIN, anneal_epochs=5))["train"]["total_anneal_steps"] is None
    sharded = rundir.fingerprint(dict(SETTINGS, item_shards=2), MODEL, TRAIN)["settings"]
    assert {"ks", "logits_budget_mb", "item_shards"} <= set(sharded)


@pytest.mark.parametrize("kind", ["VAEConfig", "DAEConfig", "EASEConfig", "PopularityConfig"])
def test_the_real_configurations_fingerprint_and_resume(tmp_path, kind):
    from hvae_jax import configs
    from hvae_jax.configs import TrainConfig
    from hvae_jax.experiment import RunSettings, run_config, stored_configuration

    settings, model, train = RunSettings(workdir=str(tmp_path)), getattr(configs, kind)(), TrainConfig()
    arguments = run_config(settings, model, train)
    assert arguments["model"]["kind"] == model.kind
    with RunDir.open_for_training(tmp_path, **arguments) as run:
        run.write_results({"model": model.label})
    with RunDir.open_for_training(tmp_path, **arguments) as run:
        assert run.resumed
    assert stored_configuration(RunDir.open_for_reading(tmp_path)) == (settings, model, train)
    other = run_config(settings, model, dataclasses.replace(train, seed=1))
    with pytest.raises(RunDirError, match=r"train\.seed: 98765 -> 1"):
        RunDir.open_for_training(tmp_path, **other)
