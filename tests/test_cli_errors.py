"""Anticipated failures of the `hvae` command (issue 11, "Tracebacks where a clear error belongs"): each prints one
`error: ...` line naming what failed, where and what to do, exits with status 2 and leaves no traceback; settings are
refused before any data is read or any file written; `--debug` shows the traceback instead."""

import json
import shutil

import jax
import numpy as np
import pytest

from hvae_jax.cli import main

TINY = ["--epochs", "2", "--latents", "8", "--hidden", "16", "--batch-size", "100", "--no-progress"]


# optax's Adam bias correction mixes a Python float with an int32 count (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """300 synthetic users over 80 items as a CSV of raw ids u*/i*: trains in seconds."""
    from hvae_jax.data.synthetic import synthetic_interactions

    interactions = synthetic_interactions(n_users=300, n_items=80, seed=3)
    path = tmp_path_factory.mktemp("data") / "ratings.csv"
    path.write_text("user,item\n" + "".join(f"{interactions.user_ids[u]},{interactions.item_ids[i]}\n"
                                            for u, i in zip(interactions.users, interactions.items)))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_data):
    workdir = tmp_path_factory.mktemp("finished") / "run"
    with jax.numpy_dtype_promotion("standard"):
        assert main(["train", "--data", str(tiny_data), *TINY, "--workdir", str(workdir)]) == 0
    return workdir


def fails_cleanly(capsys, argv) -> str:
    """Runs `hvae argv`, asserts status 2 and one error line without a traceback, and returns that line."""
    capsys.readouterr()
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "Traceback" not in error, error
    return error


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "learning_rate must be a finite number, got nan (--lr)"),
    (["--lr", "1e30"], "learning_rate must be in (0, 10], got 1e+30 (--lr)"),
    (["--beta-cap", "nan"], "beta_cap must be a finite number, got nan (--beta-cap)"),
    (["--prior", "vamp", "--pseudo-inputs", "0"], "n_pseudo_inputs must be positive, got 0 (--pseudo-inputs)"),
    (["--hidden", "0"], "hidden must be a positive width, got 0 (--hidden)"),
    (["--iw-samples", "-1"], "iw_samples (--iw-samples) must be >= 0"),
    (["--ks", "0"], "ks (--ks) must be positive cut-offs"),
    (["--checkpoint-every", "0"], "checkpoint_every must be positive"),
    (["--heldout-users", "0"], "heldout_users (--heldout-users) must be at least 1, got 0; leave it unset"),
    (["--split-seed", "-1"], "split_seed (--split-seed) must be an integer in [0, 2**32)"),
    (["--protocol", "given"], "--protocol given needs --train and --test files"),
    (["--prior", "nonexistent"], "unknown prior 'nonexistent'; registered: standard"),
])
def test_settings_are_refused_before_the_data_is_read(tmp_path, capsys, flags, message):
    malformed = tmp_path / "u.data"  # reading it first would fail with another error, naming its line 2
    malformed.write_text("1\t2\t5\t100\n1\t3\n")
    error = fails_cleanly(capsys, ["train", "--data", str(malformed), *TINY, *flags, "--workdir", str(tmp_path / "run")])
    assert message in error
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="learning_rate"):
        main(["--debug", "train", "--lr", "nan", "--workdir", str(tmp_path / "run")])
    with pytest.raises(ValueError, match="learning_rate"):
        main(["train", "--lr", "nan", "--debug", "--workdir", str(tmp_path / "run")])


def test_a_missing_data_file_writes_nothing(tmp_path, capsys):
    error = fails_cleanly(capsys, ["train", "--data", str(tmp_path / "nope.csv"), "--workdir", str(tmp_path / "run")])
    assert "nope.csv' is neither a registered data set" in error
    assert not (tmp_path / "run").exists()


def test_divergence_is_an_error_and_keeps_the_last_finished_epoch(tiny_data, tmp_path, monkeypatch, capsys):
    from hvae_jax.checkpoint import Checkpoints
    from hvae_jax.train import TrainSetup

    run_epoch = TrainSetup.run_epoch

    def diverging_in_epoch_2(self, state, epoch, matrix, side):
        state, metrics = run_epoch(self, state, epoch, matrix, side)
        if epoch == 2:
            metrics = dict(metrics, loss=np.where(np.arange(len(metrics["loss"])) >= 1, np.nan, metrics["loss"]))
        return state, metrics

    monkeypatch.setattr(TrainSetup, "run_epoch", diverging_in_epoch_2)
    workdir = tmp_path / "run"
    error = fails_cleanly(capsys, ["train", "--data", str(tiny_data), *TINY, "--epochs", "3", "--checkpoint-every",
                                   "1", "--workdir", str(workdir)])
    # 240 training users in batches of 100: 3 updates per epoch, the second of epoch 2 is update 5.
    assert "training diverged: the loss became nan at update 5 (epoch 2)" in error
    assert f"{workdir} keeps the checkpoint of epoch 1" in error and "--overwrite" in error
    checkpoints = Checkpoints(workdir, create=False)
    assert checkpoints.latest_epoch("latest") == 1
    checkpoints.close()
    assert not (workdir / "results.json").exists()
    monkeypatch.undo()
    assert main(["evaluate", "--workdir", str(workdir)]) == 0
    assert json.loads((workdir / "results.json").read_text())["epochs"] == 1


def test_config_file_errors(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert "--config " + str(folder) + " is a folder" in fails_cleanly(capsys, ["train", "--config", str(folder)])
    gated = tmp_path / "gated.toml"
    gated.write_text('gated = "maybe"\n')
    error = fails_cleanly(capsys, ["train", "--config", str(gated), "--workdir", str(tmp_path / "run")])
    assert f"{gated}: gated = 'maybe' is not a valid --gated (expected on/off" in error
    assert not (tmp_path / "run").exists()
    assert "no such file" in fails_cleanly(capsys, ["train", "--config", str(tmp_path / "none.toml")])
    table = tmp_path / "table.toml"
    table.write_text("[train]\nepochs = 3\n")
    assert "[train] is a table" in fails_cleanly(capsys, ["train", "--config", str(table)])


def test_recommend_arguments_are_checked_before_the_run_is_loaded(finished_run, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    error = fails_cleanly(capsys, ["recommend", "--workdir", str(finished_run), "--history", str(folder)])
    assert f"--history {folder} is a folder" in error
    existing = tmp_path / "embeddings"
    existing.write_text("keep")
    error = fails_cleanly(capsys, ["recommend", "--workdir", str(finished_run), "--export", str(existing)])
    assert f"--export {existing} is an existing file, not a folder" in error
    assert existing.read_text() == "keep"
    assert "-k 0" in fails_cleanly(capsys, ["recommend", "--workdir", str(finished_run), "--items", "i1", "-k", "0"])
    assert "nothing to do" in fails_cleanly(capsys, ["recommend", "--workdir", str(finished_run)])
    assert "is not a directory" in fails_cleanly(capsys, ["recommend", "--workdir", str(tmp_path / "none"),
                                                          "--items", "i1"])


def test_a_truncated_split_npz_is_named(finished_run, tiny_data, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir, ignore=shutil.ignore_patterns(".hvae_jax.lock"))
    arrays = (workdir / "split.npz").read_bytes()
    (workdir / "split.npz").write_bytes(arrays[: len(arrays) // 2])
    for argv in (["evaluate"], ["train", "--data", str(tiny_data), *TINY], ["recommend", "--items", "i1"]):
        error = fails_cleanly(capsys, [*argv, "--workdir", str(workdir)])
        assert f"{workdir / 'split.npz'} cannot be read (BadZipFile" in error
        assert "Delete split.npz and split.json" in error


def test_a_given_split_without_known_test_items_is_refused_before_training(tmp_path, capsys):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("user,item\n" + "".join(f"u{u},i{(u * 7 + k) % 40}\n" for u in range(60) for k in range(8)))
    test.write_text("user,item\n" + "".join(f"u{u},x{k}\n" for u in range(10) for k in range(3)))
    workdir = tmp_path / "run"
    error = fails_cleanly(capsys, ["train", "--protocol", "given", "--train", str(train), "--test", str(test), *TINY,
                                   "--workdir", str(workdir)])
    assert f"{test}: no test user has an item to find among the 40 items of {train}" in error
    assert not (workdir / "checkpoints").exists() and not (workdir / "split.npz").exists()


def test_too_few_users_says_what_can_help(tmp_path, capsys):
    few = tmp_path / "few.csv"
    few.write_text("user,item\n" + "".join(f"u{u},i{k}\n" for u in range(2) for k in range(8))
                   + "".join(f"s{u},i{u % 8}\n" for u in range(40)))
    error = fails_cleanly(capsys, ["train", "--data", str(few), *TINY, "--workdir", str(tmp_path / "a")])
    assert "2 of 42 users have at least 5 interactions" in error and "whatever --heldout-users is" in error
    assert "lower --heldout-users" not in error
    some = tmp_path / "some.csv"
    some.write_text("user,item\n" + "".join(f"u{u},i{k}\n" for u in range(9) for k in range(8)))
    error = fails_cleanly(capsys, ["train", "--data", str(some), *TINY, "--heldout-users", "5",
                                   "--workdir", str(tmp_path / "b")])
    assert "--heldout-users 5 asks for 10 held-out users, but only 9 users" in error
    assert "pass --heldout-users 4 or fewer" in error


def test_an_npy_header_claiming_too_many_rows_is_an_error(tmp_path, capsys):
    path = tmp_path / "huge.npy"
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (10000000000000, 2), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 160)
    error = fails_cleanly(capsys, ["train", "--data", str(path), *TINY, "--workdir", str(tmp_path / "run")])
    assert str(path) in error
