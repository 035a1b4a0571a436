"""Data-parallel training over forced host devices and vmapped ensembles equal their one-device, one-model runs."""

import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from helpers import subprocess_xla_flags
from hvae_jax.configs import TrainConfig
from hvae_jax.configs import VAEConfig as ModelConfig
from hvae_jax.data.splits import strong_generalization
from hvae_jax.data.synthetic import synthetic_interactions
from hvae_jax.train import fit, fit_ensemble

MODEL = ModelConfig(latents=(8,), hidden=16)


# optax's Adam bias correction mixes a Python float with an int32 count (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


def _split():
    return strong_generalization(synthetic_interactions(n_users=500, n_items=100, seed=3), n_heldout_users=50)


def _max_difference(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_ensemble_members_equal_training_alone(tmp_path):
    split = _split()
    train = TrainConfig(epochs=2, batch_size=64, steps_per_dispatch=3)
    ensemble = fit_ensemble(MODEL, train, split, (1, 2), progress=False)
    for seed, member_params in zip((1, 2), ensemble.params):
        alone = fit(MODEL, TrainConfig(**{**train.__dict__, "seed": seed}), split, tmp_path / f"seed{seed}",
                    progress=False, log=lambda message: None)
        assert _max_difference(alone.final_params, member_params) < 1e-6
    # Different seeds must give different members, or the comparison above proves nothing.
    assert _max_difference(ensemble.params[0], ensemble.params[1]) > 1e-3
    assert ensemble.users_per_second > 0


def test_validated_ensemble_members_keep_the_best_epoch_fit_keeps(tmp_path):
    # Averaged parameters, validation every other epoch, early stopping: each member's best epoch, its validation
    # metrics and its best (averaged) parameters are what `fit` alone keeps for that seed.
    split = _split()
    train = TrainConfig(epochs=6, batch_size=64, steps_per_dispatch=3, average_decay=0.9, eval_every=2,
                        early_stopping=4)
    ensemble = fit_ensemble(MODEL, train, split, (1, 2), progress=False)
    for m, seed in enumerate((1, 2)):
        alone = fit(MODEL, TrainConfig(**{**train.__dict__, "seed": seed}), split, tmp_path / f"v{seed}",
                    progress=False, log=lambda message: None)
        assert ensemble.best_epochs[m] == alone.best_epoch
        assert ensemble.best_validations[m]["ndcg@100"] == pytest.approx(alone.best_validation["ndcg@100"], abs=1e-6)
        assert _max_difference(alone.best_params, ensemble.best_params[m]) < 1e-6
        assert [row["epoch"] for row in ensemble.histories[m] if "valid" in row] == [
            row["epoch"] for row in alone.history if "valid" in row]



def test_an_ensemble_member_that_stops_early_does_not_stop_the_others(tmp_path):
    # Alone, seed 2 stops early at epoch 7 and seed 1 at epoch 10 (best epochs 5 and 8): with seed 2 as the first
    # member, the ensemble must train on until seed 1 stops too, and keep seed 2 as it was when it stopped.
    split = _split()
    train = TrainConfig(epochs=14, batch_size=64, steps_per_dispatch=3, learning_rate=3e-3, early_stopping=2)
    ensemble = fit_ensemble(MODEL, train, split, (2, 1), progress=False)
    for m, seed in enumerate((2, 1)):
        alone = fit(MODEL, TrainConfig(**{**train.__dict__, "seed": seed}), split, tmp_path / f"s{seed}",
                    progress=False, log=lambda message: None)
        assert alone.stopped_early
        assert ensemble.best_epochs[m] == alone.best_epoch
        assert [row["epoch"] for row in ensemble.histories[m]] == [row["epoch"] for row in alone.history]
        assert _max_difference(alone.best_params, ensemble.best_params[m]) < 1e-6
    assert ensemble.best_epochs[0] != ensemble.best_epochs[1]  # the members did stop at different epochs
    assert ensemble.stopped_early

def test_ensemble_members_with_their_own_settings_equal_training_alone(tmp_path):
    # Two settings x two seeds in one program: each member's learning rate, L2 weight and KL cap are traced numbers
    # of the shared update, and each member must equal `fit` run alone with that TrainConfig.
    split = _split()
    train = TrainConfig(epochs=2, batch_size=64, steps_per_dispatch=3)
    settings = [{}, {"learning_rate": 3e-3, "weight_decay": 1e-3, "beta_cap": 0.5}]
    ensemble = fit_ensemble(MODEL, train, split, (1, 2), settings=settings, progress=False)
    assert ensemble.seeds == (1, 2, 1, 2)
    assert ensemble.settings == [{}, {}, settings[1], settings[1]]
    for m, (setting, seed) in enumerate([(s, seed) for s in settings for seed in (1, 2)]):
        config = TrainConfig(**{**train.__dict__, **setting, "seed": seed})
        alone = fit(MODEL, config, split, tmp_path / f"m{m}", progress=False, log=lambda message: None)
        assert _max_difference(alone.final_params, ensemble.params[m]) < 1e-6
        assert [row["loss"] for row in ensemble.histories[m]] == pytest.approx(
            [row["loss"] for row in alone.history], rel=1e-5)
    # The same seed under the two settings must differ, or the settings never reached the update.
    assert _max_difference(ensemble.params[0], ensemble.params[2]) > 1e-3


def test_ensemble_members_with_their_own_per_user_kl_weight_equal_training_alone(tmp_path):
    split = _split()
    train = TrainConfig(epochs=2, batch_size=64, steps_per_dispatch=3, kl_weight_per_item=0.005)
    settings = [{"kl_weight_per_item": 0.002}, {"kl_weight_per_item": 0.05}]
    ensemble = fit_ensemble(MODEL, train, split, (1,), settings=settings, progress=False)
    for m, setting in enumerate(settings):
        alone = fit(MODEL, TrainConfig(**{**train.__dict__, **setting, "seed": 1}), split, tmp_path / f"g{m}",
                    progress=False, log=lambda message: None)
        assert _max_difference(alone.final_params, ensemble.params[m]) < 1e-6
    assert _max_difference(ensemble.params[0], ensemble.params[1]) > 1e-4


def test_the_readme_ensemble_example_trains_each_setting_with_each_seed(capsys):
    from tests.test_priors import readme_block

    import hvae_jax as hv

    namespace = {"hv": hv, "split": _split()}
    exec(compile(readme_block("example: seeds and settings in one program"), "README.md", "exec"), namespace)  # noqa: S102
    ensemble = namespace["ensemble"]
    fast = {"learning_rate": 3e-3, "weight_decay": 2e-5}
    assert list(zip(ensemble.seeds, ensemble.settings)) == [(1, {}), (2, {}), (1, fast), (2, fast)]
    assert all(0 < best["ndcg@100"] <= 1 for best in ensemble.best_validations)
    assert len(capsys.readouterr().out.splitlines()) == 4


@pytest.mark.parametrize("settings, message", [
    ([{"batch_size": 32}], "changes batch_size: an ensemble's members share one compiled program"),
    ([{"learning_rate": -1.0}], "learning_rate must be in"),
    ([{"kl_weight_per_item": 0.005}], "a per-user KL weight and an annealed one are different objectives"),
    ([], "at least one setting"),
])
def test_ensemble_settings_that_cannot_share_one_program_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        fit_ensemble(MODEL, TrainConfig(epochs=1, batch_size=64), _split(), (1,), settings=settings, progress=False)


DATA_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from hvae_jax.configs import TrainConfig
    from hvae_jax.configs import VAEConfig as ModelConfig
    from hvae_jax.data.splits import strong_generalization
    from hvae_jax.data.synthetic import synthetic_interactions
    from hvae_jax.parallel import data_parallel_mesh
    from hvae_jax.train import fit
    assert len(jax.devices()) == 4, jax.devices()
    split = strong_generalization(synthetic_interactions(n_users=500, n_items=100, seed=3), n_heldout_users=50)
    train = TrainConfig(epochs=3, batch_size=64, steps_per_dispatch=3, seed=1)
    model = ModelConfig(latents=(8,), hidden=16)
    quiet = lambda message: None
    one = fit(model, train, split, sys.argv[1] + "/one", progress=False, log=quiet)
    four = fit(model, train, split, sys.argv[1] + "/four", progress=False, log=quiet, mesh=data_parallel_mesh())
    leaf = jax.tree.leaves(four.final_params)[0]
    print(json.dumps({
        "max_difference": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                              for a, b in zip(jax.tree.leaves(one.final_params), jax.tree.leaves(four.final_params))),
        "devices_holding_params": len(leaf.sharding.device_set),
        "losses_one": [row["loss"] for row in one.history],
        "losses_four": [row["loss"] for row in four.history],
        "valid_one": one.best_validation["ndcg@100"],
        "valid_four": four.best_validation["ndcg@100"],
    }))
    """
)


def test_data_parallel_on_four_forced_devices_equals_one_device(tmp_path):
    import json

    env = dict(os.environ, XLA_FLAGS=subprocess_xla_flags("--xla_force_host_platform_device_count=4"),
               JAX_PLATFORMS="cpu")
    completed = subprocess.run(
        [sys.executable, "-c", DATA_PARALLEL_SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["devices_holding_params"] == 4
    assert report["max_difference"] < 1e-5
    np.testing.assert_allclose(report["losses_one"], report["losses_four"], rtol=1e-5)
    assert abs(report["valid_one"] - report["valid_four"]) < 1e-4


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


TRAIN_ARGS = ["train", "--epochs", "2", "--latents", "8", "--hidden", "16", "--no-progress", "--devices", "0"]
RUN_CLI = "import sys; from hvae_jax.cli import main; sys.exit(main(sys.argv[1:]))"


def test_two_processes_train_like_one_process_with_two_devices(tmp_path):
    """The README's multi-host recipe, run as two CPU processes on this host (one device each)."""
    base = dict(os.environ, XLA_FLAGS=subprocess_xla_flags())
    base["JAX_PLATFORMS"] = "cpu"
    distributed_dir = tmp_path / "two_processes"
    env = dict(base, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES="2")
    # Output to files, not pipes (a full pipe would stall a process, and its peer with it); on a hang both
    # processes are killed and both outputs shown.
    outputs = [tmp_path / f"process{index}.log" for index in (0, 1)]
    processes = [
        subprocess.Popen([sys.executable, "-c", RUN_CLI, *TRAIN_ARGS, "--distributed", "on", "--workdir",
                          str(distributed_dir)], env=dict(env, JAX_PROCESS_ID=str(index)),
                         stdout=output.open("w"), stderr=subprocess.STDOUT, text=True)
        for index, output in zip((0, 1), outputs)
    ]
    deadline = time.monotonic() + 420
    try:
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
            process.wait()
        pytest.fail("the two processes did not finish in 420 s:\n" + "\n".join(
            f"--- process {index}:\n{output.read_text()[-3000:]}" for index, output in enumerate(outputs)))
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output.read_text()[-3000:]
    single_dir = tmp_path / "one_process"
    completed = subprocess.run(
        [sys.executable, "-c", RUN_CLI, *TRAIN_ARGS, "--workdir", str(single_dir)],
        env=dict(base, XLA_FLAGS=subprocess_xla_flags("--xla_force_host_platform_device_count=2")),
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    distributed = json.loads((distributed_dir / "results.json").read_text())
    single = json.loads((single_dir / "results.json").read_text())
    for part in ("valid", "test"):
        np.testing.assert_allclose(distributed[part]["ndcg@100"], single[part]["ndcg@100"], atol=1e-6)
    # Only the first process writes the log: one line per epoch, not one per process.
    assert len((distributed_dir / "metrics.jsonl").read_text().splitlines()) == 2
