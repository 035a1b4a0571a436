"""The `hvae` command: configuration precedence, clear errors on bad input, fetch against a local server, and a
train -> evaluate -> recommend round trip."""

import hashlib
import http.server
import io
import json
import os
import signal
import threading
import zipfile

import jax
import pytest

from hvae_jax.cli import main


# optax's Adam bias correction mixes a Python float with an int32 count (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


def _printed_config(capsys, *argv) -> dict:
    assert main(["train", "--print-config", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_flags_override_config_file_which_overrides_preset(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('epochs = 7\nlatents = [64, 32]\nmodel = "hvae"\nlr = 0.002\n')
    resolved = _printed_config(capsys, "--preset", "liang-multvae-ml20m", "--config", str(config), "--epochs", "3")
    assert resolved["train"]["epochs"] == 3  # flag beats file
    assert resolved["train"]["learning_rate"] == 0.002  # file beats preset
    assert resolved["train"]["total_anneal_steps"] == 200_000  # preset beats defaults
    assert resolved["model"]["latents"] == [64, 32]
    # `model = "hvae"` brings the hierarchical model's defaults: Mult-VAE's encoder, a linear decoder, RecVAE's
    # composite prior on the top level and Mult-VAE's training
    assert (resolved["model"]["prior"], resolved["model"]["encoder"], resolved["model"]["decoder_layers"]) == (
        "composite", "mlp", 0)
    assert (resolved["train"]["schedule"], resolved["train"]["beta_cap"]) == ("joint", 0.4)
    assert resolved["settings"]["data"] == "ml-20m"


def test_mult_dae_gets_liangs_weight_decay(capsys):
    resolved = _printed_config(capsys, "--model", "multdae", "--batch-size", "100")
    assert resolved["train"]["weight_decay"] == pytest.approx(0.01 / 100)


def test_early_stopping_defaults_and_a_given_none_overrides_them(capsys):
    train = lambda *argv: _printed_config(capsys, *argv)["train"]  # noqa: E731
    assert (train("--model", "multvae")["early_stopping_updates"], train("--model", "multdae")["early_stopping_updates"]
            ) == (1500, 1500)
    assert train("--model", "hvae")["early_stopping_updates"] == 1500
    assert train("--model", "hvae-recvae")["early_stopping"] == 80
    # `none` given on the command line is a value: it switches the named model's rule off.
    assert train("--model", "multvae", "--early-stopping-updates", "none")["early_stopping_updates"] is None
    assert train("--model", "hvae-recvae", "--early-stopping", "none")["early_stopping"] is None
    # The reproduction presets keep their papers' fixed epochs.
    assert train("--preset", "liang-multvae-ml20m")["early_stopping_updates"] is None


def test_multvae_is_the_linear_decoder_with_epochs_scaled_to_the_data_and_liangs_network_keeps_a_name(
        tmp_path, capsys):
    alone = _printed_config(capsys)
    named = _printed_config(capsys, "--model", "multvae")
    assert alone["model"] == named["model"] and alone["train"] == named["train"]  # `hvae train` is `--model multvae`
    assert (named["model"]["decoder_layers"], named["model"]["hidden"], named["model"]["latents"]) == (0, 600, [200])
    assert named["train"]["epochs"] is None and named["train"]["early_stopping_updates"] == 1500
    assert named["train"]["max_anneal_steps"] == 3000 and named["train"]["total_anneal_steps"] is None
    assert named["train"]["beta_cap"] == 0.4 and named["train"]["average_updates"] == 500
    assert _printed_config(capsys, "--average-updates", "none")["train"]["average_updates"] is None
    liang = _printed_config(capsys, "--model", "multvae-liang")
    assert (liang["model"]["decoder_layers"], liang["model"]["hidden"], liang["train"]["epochs"]) == (1, 600, 100)
    assert liang["train"]["max_anneal_steps"] is None
    assert liang["train"]["early_stopping_updates"] == 1500
    assert _printed_config(capsys, "--model", "multdae")["train"]["epochs"] is None
    # A given number of epochs replaces the scaled budget; `auto` asks for it with any model.
    assert _printed_config(capsys, "--epochs", "50")["train"]["epochs"] == 50
    assert _printed_config(capsys, "--model", "multvae-liang", "--epochs", "auto")["train"]["epochs"] is None
    config = tmp_path / "run.toml"
    config.write_text('model = "multvae-liang"\nepochs = "auto"\n')
    assert _printed_config(capsys, "--config", str(config))["train"]["epochs"] is None
    with pytest.raises(SystemExit):
        main(["train", "--print-config", "--epochs", "many"])
    assert "argument --epochs: invalid number of epochs (or auto) value: 'many'" in capsys.readouterr().err


def test_unknown_config_key_is_named(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("epochz = 3\n")
    assert main(["train", "--config", str(config), "--print-config"]) == 2
    assert "unknown setting 'epochz'" in capsys.readouterr().err


def test_malformed_data_file_gives_file_and_line_not_a_traceback(tmp_path, capsys):
    data = tmp_path / "u.data"
    data.write_text("1\t2\t5\t100\n1\t3\t4\n")
    code = main(["train", "--data", str(data), "--workdir", str(tmp_path / "run"), "--no-progress"])
    error = capsys.readouterr().err
    assert code == 2
    assert "u.data:2" in error and "Traceback" not in error


def test_data_fetch_from_a_local_server(tmp_path, monkeypatch, capsys):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        # 8 users x 8 items, every rating 4 or 5 except user 8's 1s (dropped by the > 3.5 threshold).
        rows = [f"{u}\t{i}\t{4 + (u + i) % 2}\t1" for u in range(1, 8) for i in range(10, 18)]
        rows += [f"8\t{i}\t1\t1" for i in range(10, 18)]
        archive.writestr("ml-100k/u.data", "\n".join(rows) + "\n")
        archive.writestr("ml-100k/u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
        archive.writestr("ml-100k/u.item", "10|Toy Story (1995)|01-Jan-1995||http://x|0\n")
    payload = buffer.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HVAE_JAX_CACHE", str(tmp_path / "cache"))
        url = f"http://127.0.0.1:{server.server_address[1]}/ml-100k.zip"
        digest = hashlib.sha256(payload).hexdigest()
        assert main(["data", "fetch", "ml-100k", "--url", url, "--sha256", digest]) == 0
        assert (tmp_path / "cache" / "ml-100k" / "u.data").read_text().startswith("1\t10\t5")
        # The fetched data set now trains by name, with MovieLens's default rating threshold (> 3.5).
        workdir = tmp_path / "by-name"
        assert main(["train", "--data", "ml-100k", "--model", "popularity", "--heldout-users", "1",
                     "--workdir", str(workdir), "--no-progress"]) == 0
        by_name = json.loads((workdir / "results.json").read_text())
        assert by_name["dataset"] == "ml-100k"
        assert by_name["n_users"] == 7 and by_name["n_items"] == 8  # user 8 rated everything 1: below 3.5
        capsys.readouterr()
        # A wrong hash is refused and leaves nothing behind.
        assert main(["data", "fetch", "ml-1m", "--url", url, "--sha256", "0" * 64]) == 2
        assert "SHA-256" in capsys.readouterr().err
        assert not list((tmp_path / "cache").glob("ml-1m*"))
    finally:
        server.shutdown()


def _evaluate_again_then_recommend(workdir, trained: dict, capsys) -> None:
    """`hvae evaluate` reproduces the trained run's test NDCG@100; `hvae recommend` gives 5 unseen items."""
    assert main(["evaluate", "--workdir", str(workdir)]) == 0
    evaluated = json.loads((workdir / "results.json").read_text())
    assert evaluated["test"]["ndcg@100"] == pytest.approx(trained["test"]["ndcg@100"], abs=1e-6)
    capsys.readouterr()
    assert main(["recommend", "--workdir", str(workdir), "--items", "i1,i2,i3", "-k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and not any(f" i{n} " in f" {line} " for line in lines for n in (1, 2, 3))


def test_train_evaluate_recommend_round_trip(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--latents", "16", "--hidden", "32", "--workdir", str(workdir),
                 "--no-progress"]) == 0
    trained = json.loads((workdir / "results.json").read_text())
    for key in ("model", "dataset", "protocol", "n_users", "n_items", "valid", "test", "epochs", "train_seconds",
                "train_users_per_second"):
        assert key in trained
    assert trained["epochs_planned"] == 2 and trained["interrupted"] is False
    for metric in ("ndcg@100", "recall@20", "recall_all@20", "ndcg@100_se"):
        assert metric in trained["test"]
    _evaluate_again_then_recommend(workdir, trained, capsys)


def test_item_sharded_train_evaluate_and_recommend_round_trip(tmp_path, capsys):
    workdir = tmp_path / "sharded"
    # 0.3 MiB at batch 500 gives chunks of 143 items: the 1000-item catalogue is padded to 1001.
    assert main(["train", "--epochs", "2", "--latents", "8", "--hidden", "16", "--item-shards", "1",
                 "--logits-budget-mb", "0.3", "--workdir", str(workdir), "--no-progress"]) == 0
    assert "item-sharded catalogue: 1000 items padded to 1001" in capsys.readouterr().out
    trained = json.loads((workdir / "results.json").read_text())
    assert trained["catalogue_layout"]["n_padded"] == 1001
    assert 0.0 < trained["test"]["ndcg@100"] < 1.0
    _evaluate_again_then_recommend(workdir, trained, capsys)


# ------------------------------------------------------------------------------------------------------------------
# One run per directory (issue 11): a finished run is refused to other settings and stays usable; --overwrite starts
# clean; an interrupted run evaluates to a complete results.json; a damaged split is named.

TINY = ["--epochs", "2", "--latents", "8", "--hidden", "16", "--batch-size", "100", "--no-progress"]


def snapshot(directory) -> dict:
    """Every file under `directory` (but the lock) with its bytes and modification time."""
    return {str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(directory.rglob("*")) if path.is_file() and path.name != ".hvae_jax.lock"}


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


def copy_of(run, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns(".hvae_jax.lock"))
    return target


def assert_evaluate_and_recommend_work(workdir, capsys) -> None:
    trained = json.loads((workdir / "results.json").read_text())
    capsys.readouterr()
    _evaluate_again_then_recommend(workdir, trained, capsys)


@pytest.mark.parametrize("flags, difference", [
    (["--lr", "0.002"], "train.learning_rate: 0.001 -> 0.002"),
    (["--seed", "5"], "train.seed: 98765 -> 5"),
    (["--split-seed", "1"], "settings.split_seed: 98765 -> 1"),
    (["--hidden", "32"], "model.hidden: 16 -> 32"),
])
def test_other_settings_on_a_finished_run_are_refused_and_change_nothing(finished_run, tiny_data, tmp_path, capsys,
                                                                        flags, difference):
    workdir = copy_of(finished_run, tmp_path)
    before = snapshot(workdir)
    capsys.readouterr()
    code = main(["train", "--data", str(tiny_data), *TINY, *flags, "--workdir", str(workdir)])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(f"error: {workdir} holds a run whose settings differ") and "Traceback" not in error
    assert f"  {difference}\n" in error and "--overwrite" in error and "new --workdir" in error
    assert snapshot(workdir) == before
    assert_evaluate_and_recommend_work(workdir, capsys)


def test_overwrite_trains_clean_and_keeps_other_files(finished_run, tiny_data, tmp_path, capsys):
    workdir = copy_of(finished_run, tmp_path)
    (workdir / "notes.md").write_text("mine")
    capsys.readouterr()
    assert main(["train", "--data", str(tiny_data), *TINY, "--lr", "0.002", "--overwrite",
                 "--workdir", str(workdir)]) == 0
    assert "resuming" not in capsys.readouterr().out
    assert json.loads((workdir / "config.json").read_text())["train"]["learning_rate"] == 0.002
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]  # trained from scratch, not resumed
    assert json.loads((workdir / "results.json").read_text())["epochs"] == 2
    assert (workdir / "notes.md").read_text() == "mine"


def test_evaluate_completes_the_results_of_an_interrupted_run(finished_run, tiny_data, tmp_path, monkeypatch, capsys):
    from hvae_jax import hooks

    save = hooks.Checkpointing.after_epoch

    def interrupt_after_epoch_1(self, loop):
        save(self, loop)
        if loop.epoch == 1:
            raise KeyboardInterrupt

    workdir = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        patch.setattr(hooks.Checkpointing, "after_epoch", interrupt_after_epoch_1)
        # Checkpoints every epoch: by default this run's few updates would leave its first checkpoint at the end.
        assert main(["train", "--data", str(tiny_data), *TINY, "--checkpoint-every", "1", "--workdir",
                     str(workdir)]) == 130
    assert not (workdir / "results.json").exists()
    capsys.readouterr()
    assert main(["evaluate", "--workdir", str(workdir)]) == 0
    assert "stopped after epoch 1" in capsys.readouterr().out
    results = json.loads((workdir / "results.json").read_text())
    finished = json.loads((finished_run / "results.json").read_text())
    assert set(results) == set(finished)
    assert results["epochs"] == 1 and results["best_epoch"] == 1 and results["interrupted"] is True
    assert finished["interrupted"] is False
    assert len(results["kl_per_level"]) == 1 and 0.0 < results["test"]["ndcg@100"] < 1.0
    assert results["baselines"]["popularity"] == finished["baselines"]["popularity"]
    # The same command resumes the run and finishes it.
    assert main(["train", "--data", str(tiny_data), *TINY, "--checkpoint-every", "1", "--workdir", str(workdir)]) == 0
    resumed = json.loads((workdir / "results.json").read_text())
    assert resumed["epochs"] == 2 and resumed["interrupted"] is False


@pytest.mark.parametrize("command", ["evaluate", "recommend", "train"])
def test_an_empty_split_json_is_named(finished_run, tiny_data, tmp_path, capsys, command):
    workdir = copy_of(finished_run, tmp_path)
    (workdir / "split.json").write_text("")
    arguments = {"evaluate": [], "recommend": ["--items", "i1"], "train": ["--data", str(tiny_data), *TINY]}[command]
    capsys.readouterr()
    assert main([command, "--workdir", str(workdir), *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {workdir / 'split.json'} is empty: expected the statistics of the split")
    assert "Delete split.npz and split.json" in error and "Traceback" not in error


def test_baseline_runs_evaluate_without_training_again(tiny_data, tmp_path, capsys):
    workdir = tmp_path / "ease"
    assert main(["train", "--data", str(tiny_data), "--model", "ease", "--ease-lambdas", "10,100",
                 "--workdir", str(workdir), "--no-progress"]) == 0
    trained = json.loads((workdir / "results.json").read_text())
    config = (workdir / "config.json").read_bytes()
    (workdir / "results.json").unlink()
    assert main(["evaluate", "--workdir", str(workdir)]) == 0
    evaluated = json.loads((workdir / "results.json").read_text())
    assert set(evaluated) == set(trained) and evaluated["ease_lambda"] == trained["ease_lambda"]
    assert evaluated["test"] == trained["test"]
    assert (workdir / "config.json").read_bytes() == config
    assert sorted(path.name for path in workdir.iterdir()) == [".hvae_jax.lock", "config.json", "results.json",
                                                               "split.json", "split.npz"]


def test_a_run_without_validation_users_evaluates_its_last_epoch_again(tmp_path, capsys):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("user,item\n" + "".join(f"u{u},i{(u * 7 + k) % 40}\n" for u in range(120) for k in range(8)))
    test.write_text("user,item\n" + "".join(f"u{u},i{(u * 7 + 8 + k) % 40}\n" for u in range(30) for k in range(2)))
    workdir = tmp_path / "run"
    assert main(["train", "--protocol", "given", "--train", str(train), "--test", str(test), *TINY,
                 "--workdir", str(workdir), "--no-valid"]) == 0
    trained = json.loads((workdir / "results.json").read_text())
    assert trained["best_epoch"] is None and "valid" not in trained
    assert not (workdir / "checkpoints" / "best").exists() or not any((workdir / "checkpoints" / "best").iterdir())
    (workdir / "results.json").unlink()
    assert main(["evaluate", "--workdir", str(workdir)]) == 0
    evaluated = json.loads((workdir / "results.json").read_text())
    assert evaluated["test"]["ndcg@100"] == pytest.approx(trained["test"]["ndcg@100"], abs=1e-6)
    assert evaluated["epochs"] == 2 and evaluated["interrupted"] is False


def test_plot_writes_into_the_run_directory(finished_run, tmp_path, capsys):
    workdir = copy_of(finished_run, tmp_path)
    capsys.readouterr()
    assert main(["plot", "--workdir", str(workdir)]) == 0
    assert f"wrote {workdir / 'plots' / 'training.png'}" in capsys.readouterr().out
    assert main(["plot", "--workdir", str(tmp_path / "none")]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err


def _given_files(tmp_path):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("user,item\n" + "".join(f"u{u},i{(u * 7 + k) % 40}\n" for u in range(120) for k in range(8)))
    test.write_text("user,item\n" + "".join(f"u{u},i{(u * 7 + 8 + k) % 40}\n" for u in range(30) for k in range(2)))
    return train, test


def test_a_given_split_without_validation_carves_one_and_selects_on_it(tmp_path, capsys):
    train, test = _given_files(tmp_path)
    workdir = tmp_path / "carved"
    assert main(["train", "--protocol", "given", "--train", str(train), "--test", str(test), *TINY,
                 "--workdir", str(workdir)]) == 0
    assert "no --valid file: validation carved from training" in capsys.readouterr().out
    results = json.loads((workdir / "results.json").read_text())
    assert results["selected_on"] == "validation" and 1 <= results["best_epoch"] <= results["epochs"]
    assert results["split"]["valid"]["users"] == 12  # 10% of the 120 users
    assert any("carved" in note for note in results["split"]["notes"])


def test_no_valid_reproduces_the_last_epoch_figures_of_a_split_without_validation(tmp_path, capsys):
    from hvae_jax.configs import MODELS, TrainConfig
    from hvae_jax.data.readers import read_interactions
    from hvae_jax.data.splits import given_split
    from hvae_jax.evaluate import evaluate
    from hvae_jax.train import fit

    train, test = _given_files(tmp_path)
    workdir = tmp_path / "no-valid"
    assert main(["train", "--protocol", "given", "--train", str(train), "--test", str(test), *TINY,
                 "--workdir", str(workdir), "--no-valid", "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert main(["train", "--protocol", "given", "--train", str(train), "--test", str(test), *TINY,
                 "--workdir", str(workdir), "--no-valid"]) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert results["best_epoch"] is None and results["epochs"] == config["train"]["epochs"]
    # The same training through the library, as before carving existed: given split, fit, the last parameters.
    split = given_split(read_interactions(train), read_interactions(test))
    fitted = fit(MODELS["multvae"].config.__class__(**{k: tuple(v) if isinstance(v, list) else v
                                                      for k, v in config["model"].items() if k != "kind"}),
                 TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["train"].items()}),
                 split, tmp_path / "library", progress=False, log=lambda message: None)
    direct = evaluate(fitted.path.eval_step(), fitted.best_params, split.test)
    assert results["test"]["ndcg@100"] == pytest.approx(direct["ndcg@100"], abs=1e-6)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_kill_finishes_the_epoch_checkpoints_it_and_the_run_resumes(tiny_data, tmp_path, monkeypatch,
                                                                                capsys, request, signum, status):
    """The signal arrives in epoch 1's first hook; the epoch's other hooks still run (its checkpoint is written), no
    later epoch starts, the command exits with 128 + the signal's number and puts the handlers back as they were."""
    from hvae_jax import hooks

    # A shell starts a background job (`pytest &`) with SIGINT ignored, and the command leaves an ignored signal
    # ignored; this test is about the handled case, so it starts from Python's own handlers whoever launched it.
    for handled, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        previous = signal.signal(handled, handler)
        request.addfinalizer(lambda handled=handled, previous=previous: signal.signal(handled, previous))

    validate = hooks.Validation.after_epoch

    def signal_in_epoch_1(self, loop):
        if loop.epoch == 1:
            os.kill(os.getpid(), signum)
        validate(self, loop)

    workdir = tmp_path / "signalled"
    argv = ["train", "--data", str(tiny_data), *TINY, "--epochs", "3", "--workdir", str(workdir)]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with monkeypatch.context() as patch:
        patch.setattr(hooks.Validation, "after_epoch", signal_in_epoch_1)
        assert main(argv) == status
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    printed = capsys.readouterr()
    assert f"{signal.Signals(signum).name}: finishing this epoch" in printed.out + printed.err
    assert ("terminated" if signum == signal.SIGTERM else "interrupted") in printed.err
    logged = [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1] and not (workdir / "results.json").exists()
    assert main(argv) == 0
    resumed = json.loads((workdir / "results.json").read_text())
    assert (resumed["resumed_from_epoch"], resumed["epochs"], resumed["interrupted"]) == (1, 3, False)
