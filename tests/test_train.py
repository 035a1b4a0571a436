"""Tests of hvae_jax.train.fit on a tiny synthetic split: reproducibility, exact resume after an interruption, no
recompilation after the first epoch, best-epoch bookkeeping, Mult-DAE, and early stopping.

Adam's update does not survive strict dtype promotion (optax computes `decay ** count` with a Python float and an
int32 count), so this module runs with standard dtype promotion; rank promotion still raises (see conftest.py).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import hvae_jax.train as train_module
from hvae_jax.configs import DAEConfig, TrainConfig
from hvae_jax.configs import VAEConfig as ModelConfig
from hvae_jax.data.splits import strong_generalization
from hvae_jax.data.synthetic import synthetic_interactions
from hvae_jax.evaluate import evaluate
from hvae_jax.hooks import VALIDATION_METRIC
from hvae_jax.input_paths import neural_eval_step
from hvae_jax.train import fit

MODEL = ModelConfig(latents=(6,), hidden=12)
# 260 training users in batches of 64: 5 updates per epoch (the last one padded), dispatched as chunks of 2, 2, 1.
TRAIN = TrainConfig(epochs=3, batch_size=64, steps_per_dispatch=2, seed=3)


@pytest.fixture(scope="module")
def standard_dtype_promotion():
    with jax.numpy_dtype_promotion("standard"):
        yield


@pytest.fixture(autouse=True)
def _standard_dtype_promotion(standard_dtype_promotion):
    yield


@pytest.fixture(scope="module")
def split():
    split = strong_generalization(synthetic_interactions(n_users=340, n_items=80, seed=1), n_heldout_users=40)
    assert split.train.shape[0] == 260
    return split


def without_timings(history: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if "seconds" not in key} for row in history]


def assert_trees_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration")


@pytest.fixture(scope="module")
def baseline(standard_dtype_promotion, split, tmp_path_factory):
    """One uninterrupted run, with JAX's compile events counted per epoch.

    Each epoch starts with one call of `epoch_order`, so wrapping it marks where epochs begin in the event stream.
    """
    events: list[str] = []
    epoch_starts: list[int] = []

    def on_event(event: str, duration: float, **kwargs) -> None:
        if event in COMPILE_EVENTS:
            events.append(event)

    original_epoch_order = train_module.epoch_order

    def marked_epoch_order(*args, **kwargs):
        epoch_starts.append(len(events))
        return original_epoch_order(*args, **kwargs)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(train_module, "epoch_order", marked_epoch_order)
            result = fit(MODEL, TRAIN, split, tmp_path_factory.mktemp("baseline"), progress=False, log=lambda _: None)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    return result, events, epoch_starts


def test_same_seed_gives_identical_history_and_params(split, baseline, tmp_path):
    first = baseline[0]
    again = fit(MODEL, TRAIN, split, tmp_path, progress=False, log=lambda _: None)
    assert without_timings(again.history) == without_timings(first.history)
    assert_trees_equal(again.final_params, first.final_params)
    assert_trees_equal(again.best_params, first.best_params)
    assert again.best_epoch == first.best_epoch


def test_resume_after_interruption_equals_an_uninterrupted_run(split, baseline, tmp_path):
    uninterrupted = baseline[0]
    messages: list[str] = []
    interrupted = fit(MODEL, TRAIN, split, tmp_path, progress=False, stop_after_epochs=1, log=messages.append)
    assert interrupted.epochs_run == 1 and interrupted.resumed_from is None
    resumed = fit(MODEL, TRAIN, split, tmp_path, progress=False, log=messages.append)
    assert resumed.resumed_from == 1 and resumed.epochs_run == TRAIN.epochs
    assert any("resuming from epoch 1" in message for message in messages)

    assert without_timings(resumed.history) == without_timings(uninterrupted.history)
    assert_trees_equal(resumed.final_params, uninterrupted.final_params)
    assert_trees_equal(resumed.best_params, uninterrupted.best_params)
    assert resumed.best_epoch == uninterrupted.best_epoch
    assert resumed.best_validation == uninterrupted.best_validation
    # The metrics log holds each epoch once, across the two calls.
    logged = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(logged) == TRAIN.epochs


def test_no_compilation_after_the_first_epoch(baseline):
    result, events, epoch_starts = baseline
    assert len(epoch_starts) == TRAIN.epochs == result.epochs_run
    first_epoch = events[epoch_starts[0] : epoch_starts[1]]
    assert "/jax/core/compile/backend_compile_duration" in first_epoch  # the listener sees compilations at all
    later = events[epoch_starts[1] :]
    assert later == [], f"{len(later)} traces/compilations during epochs 2..{TRAIN.epochs}"


def test_validation_metric_and_best_epoch(split, baseline):
    result = baseline[0]
    ndcg = [row["valid"][VALIDATION_METRIC] for row in result.history]
    assert len(ndcg) == TRAIN.epochs and np.all(np.isfinite(ndcg)) and all(0.0 < v <= 1.0 for v in ndcg)
    assert result.best_epoch == int(np.argmax(ndcg)) + 1
    assert result.best_validation == result.history[result.best_epoch - 1]["valid"]
    assert [row["epoch"] for row in result.history] == list(range(1, TRAIN.epochs + 1))
    assert all(np.isfinite(row["loss"]) and np.isfinite(row["nll"]) and len(row["kl"]) == 1 for row in result.history)
    # best_params are the parameters that scored best: evaluating them again gives the recorded numbers.
    eval_step = neural_eval_step(result.model)
    rescored = evaluate(eval_step, result.best_params, split.valid)
    np.testing.assert_allclose(rescored[VALIDATION_METRIC], result.best_validation[VALIDATION_METRIC], rtol=1e-6)
    rescored_final = evaluate(eval_step, result.final_params, split.valid)
    np.testing.assert_allclose(rescored_final[VALIDATION_METRIC], ndcg[-1], rtol=1e-6)


def test_mult_dae_trains(split, tmp_path):
    config = DAEConfig(latents=(12,))
    train = dataclasses.replace(TRAIN, weight_decay=0.01, learning_rate=3e-3)
    result = fit(config, train, split, tmp_path, progress=False, log=lambda _: None)
    assert result.epochs_run == train.epochs
    losses = [row["loss"] for row in result.history]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(row["kl"] == [] for row in result.history)
    assert np.isfinite(result.best_validation[VALIDATION_METRIC])
    assert set(result.final_params) == {"encoder", "decoder_output"}


@pytest.mark.parametrize("stopping, patience", [
    (dict(early_stopping=1), 1),
    (dict(early_stopping_updates=6), 2),  # 5 updates an epoch: 6 updates are 2 whole epochs
    (dict(early_stopping=1, early_stopping_updates=6), 2),  # the longer of the two
])
def test_early_stopping_stops_and_stays_stopped(split, tmp_path, stopping, patience):
    # A learning rate too small to move float32 parameters leaves validation flat, so the run stops `patience`
    # epochs after its first; whatever the numbers, the stop must follow the patience rule.
    epochs = 8
    train = dataclasses.replace(TRAIN, epochs=epochs, learning_rate=1e-9, **stopping)
    messages: list[str] = []
    result = fit(MODEL, train, split, tmp_path, progress=False, log=messages.append)
    ndcg = [row["valid"][VALIDATION_METRIC] for row in result.history]

    best, without_improvement, expected_stop = -np.inf, 0, epochs
    for epoch, value in enumerate(ndcg, start=1):
        if value > best:
            best, without_improvement = value, 0
        else:
            without_improvement += 1
        if without_improvement >= patience:
            expected_stop = epoch
            break
    assert result.epochs_run == expected_stop < epochs
    assert any("early stopping after epoch" in message for message in messages)
    assert result.best_epoch == int(np.argmax(ndcg)) + 1

    assert f"no validation improvement in {patience} epochs" in " ".join(messages)

    # Calling fit again in the same workdir resumes into the stopped state and trains no further.
    again = fit(MODEL, train, split, tmp_path, progress=False, log=messages.append)
    assert again.epochs_run == expected_stop
    assert without_timings(again.history) == without_timings(result.history)
    assert_trees_equal(again.final_params, result.final_params)


def test_parameter_average_is_the_running_mean_validated_and_resumed_exactly(split, tmp_path):
    import dataclasses

    import jax.numpy as jnp
    import optax

    from hvae_jax.optimizers import averaged_params, parameter_average

    # The transformation against the formula: weights (1 - d) d^(t - s) on the parameters after update s, divided by
    # their sum 1 - d^t; before any update, the parameters themselves.
    params = {"w": jnp.asarray([1.0, -2.0])}
    transform = parameter_average(0.9)
    state = transform.init(params)
    np.testing.assert_array_equal(averaged_params(state, 0.9, params)["w"], params["w"])
    history = []
    for step in range(3):
        updates = {"w": jnp.asarray([0.5, 0.25]) * (step + 1)}
        _, state = transform.update(updates, state, params)
        params = optax.apply_updates(params, updates)
        history.append(np.asarray(params["w"]))
        weights = np.asarray([0.1 * 0.9 ** (len(history) - 1 - s) for s in range(len(history))])
        expected = (weights[:, None] * np.stack(history)).sum(axis=0) / weights.sum()
        np.testing.assert_allclose(averaged_params(state, 0.9, params)["w"], expected, rtol=1e-6)
    assert int(state.count) == 3

    # In fit: the averaged parameters are what is validated and kept, and an interruption resumes exactly.
    averaged = dataclasses.replace(TRAIN, average_decay=0.8)
    uninterrupted = fit(MODEL, averaged, split, tmp_path / "whole", progress=False, log=lambda m: None)
    rescored = evaluate(neural_eval_step(uninterrupted.model), uninterrupted.best_params, split.valid)
    np.testing.assert_allclose(rescored[VALIDATION_METRIC], uninterrupted.best_validation[VALIDATION_METRIC], rtol=1e-6)
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(uninterrupted.final_params), jax.tree.leaves(uninterrupted.best_params))) > 1e-4
    fit(MODEL, averaged, split, tmp_path / "cut", progress=False, stop_after_epochs=1, log=lambda m: None)
    resumed = fit(MODEL, averaged, split, tmp_path / "cut", progress=False, log=lambda m: None)
    assert without_timings(resumed.history) == without_timings(uninterrupted.history)
    assert_trees_equal(resumed.best_params, uninterrupted.best_params)


def test_fit_in_a_run_dir_writes_where_it_says_and_equals_fit_in_a_path(split, baseline, tmp_path):
    from hvae_jax.experiment import RunSettings, run_config
    from hvae_jax.rundir import RunDir

    configuration = run_config(RunSettings(workdir=str(tmp_path)), MODEL, TRAIN)
    with RunDir.open_for_training(tmp_path / "run", **configuration) as run:
        result = fit(MODEL, TRAIN, split, run, progress=False, log=lambda _: None)
    assert without_timings(result.history) == without_timings(baseline[0].history)
    assert_trees_equal(result.final_params, baseline[0].final_params)
    assert [int(p.name) for p in (run.checkpoints_dir / "latest").iterdir() if p.name.isdigit()] == [TRAIN.epochs]
    assert len(run.metrics_path.read_text().splitlines()) == TRAIN.epochs
    assert list(run.tensorboard_dir.glob("events.out.tfevents.*"))


def test_checkpoint_interval_by_updates():
    from hvae_jax.configs import CHECKPOINT_UPDATES
    from hvae_jax.train import checkpoint_interval

    assert CHECKPOINT_UPDATES == 200
    assert checkpoint_interval(None, 10) == 20  # ml-1m at batch 500: 10 updates per epoch
    assert checkpoint_interval(None, 233) == 1  # ML-20M at batch 500
    assert checkpoint_interval(None, 150) == 2
    assert checkpoint_interval(None, 1) == 200
    assert checkpoint_interval(3, 10) == 3  # given: kept as given


def test_epochs_scaled_to_the_data():
    from hvae_jax.train import epochs_for

    scaled = TrainConfig(epochs=None)
    # Updates per epoch at batch 500: ml-latest-small, ml-1m, two shapes between, amazon-book's given split, ML-20M.
    assert [epochs_for(scaled, steps) for steps in (1, 10, 34, 60, 100, 142, 233)] == [300, 300, 295, 167, 100,
                                                                                           100, 100]
    assert epochs_for(TrainConfig(epochs=7), steps_per_epoch=1) == 7
    with pytest.raises(ValueError, match="epochs must be a whole number"):
        TrainConfig(epochs=-1)


def test_a_scaled_budget_is_resolved_once_and_trains_as_the_same_epochs_given(split, baseline, tmp_path, monkeypatch):
    # 5 updates an epoch here: a rule of 12 updates gives ceil(12 / 5) = 3 epochs, the baseline's.
    monkeypatch.setattr(train_module, "AUTO_EPOCHS_UPDATES", 12)
    monkeypatch.setattr(train_module, "AUTO_EPOCHS_RANGE", (1, 10))
    lines = []
    scaled = fit(MODEL, dataclasses.replace(TRAIN, epochs=None), split, tmp_path, progress=False, log=lines.append)
    assert scaled.epochs_planned == 3 and scaled.epochs_run == 3
    assert any(line.startswith("epochs: 3, scaled to the data (5 updates an epoch") for line in lines)
    # The KL anneal runs over the resolved epochs: every update as with `epochs=3`.
    assert without_timings(scaled.history) == without_timings(baseline[0].history)
    assert_trees_equal(scaled.final_params, baseline[0].final_params)


def test_the_average_horizon_is_bounded_by_epochs():
    from hvae_jax.train import average_decay_for

    horizon = TrainConfig(average_updates=500)
    # Updates an epoch: amazon-book's given split (a horizon of 500), ml-1m (4 epochs: 40), Last.fm (12),
    # ml-latest-small (4); a horizon under 2 updates is no average.
    decays = [average_decay_for(horizon, steps) for steps in (142, 10, 3, 1)]
    assert decays == [0.998, 1 - 1 / 40, 1 - 1 / 12, 0.75]
    assert average_decay_for(dataclasses.replace(horizon, average_updates=1), 142) == 0.0
    # A decay given replaces the horizon; without either there is no average.
    assert average_decay_for(TrainConfig(epochs=100, average_decay=0.9, average_updates=500), 142) == 0.9
    assert average_decay_for(TrainConfig(epochs=100), 142) == 0.0
    with pytest.raises(ValueError, match="average_updates must be positive"):
        TrainConfig(average_updates=0)


def test_an_average_horizon_trains_as_the_decay_it_resolves_to(split, tmp_path):
    # 5 updates an epoch: a horizon of min(100, 4 x 5) = 20 updates, a decay of 0.95.
    lines = []
    horizon = fit(MODEL, dataclasses.replace(TRAIN, average_updates=100), split, tmp_path / "horizon",
                  progress=False, log=lines.append)
    decay = fit(MODEL, dataclasses.replace(TRAIN, average_decay=0.95), split, tmp_path / "decay", progress=False,
                log=lambda _: None)
    assert any(line.startswith("parameter average: decay 0.95 (a horizon of min(100, 4 epochs of 5) updates")
               for line in lines)
    assert without_timings(horizon.history) == without_timings(decay.history)
    assert_trees_equal(horizon.best_params, decay.best_params)
    assert_trees_equal(horizon.final_params, decay.final_params)


def test_best_goes_to_disk_with_latest_and_a_resumed_run_keeps_it(split, tmp_path, monkeypatch):
    from hvae_jax.checkpoint import Checkpoints

    train = dataclasses.replace(TRAIN, epochs=6, checkpoint_every=4, learning_rate=3e-3)
    whole = fit(MODEL, train, split, tmp_path / "whole", progress=False, log=lambda _: None)
    saved: list[tuple[str, int]] = []
    save = Checkpoints.save
    monkeypatch.setattr(Checkpoints, "save", lambda self, name, epoch, *rest: (saved.append((name, epoch)),
                                                                               save(self, name, epoch, *rest)))
    fit(MODEL, train, split, tmp_path / "parts", progress=False, log=lambda _: None, stop_after_epochs=5)
    # `latest` at epoch 4 (every 4) and 5 (where the run stopped); `best` only just before them, when it changed.
    assert [epoch for name, epoch in saved if name == "latest"] == [4, 5]
    assert all(name == "latest" or saved[i + 1][0] == "latest" for i, (name, _) in enumerate(saved))
    checkpoints = Checkpoints(tmp_path / "parts", create=False)
    try:
        _, record = checkpoints.restore("latest", None)
        assert checkpoints.latest_epoch("best") == record["best"]["epoch"]
    finally:
        checkpoints.close()
    resumed = fit(MODEL, train, split, tmp_path / "parts", progress=False, log=lambda _: None)
    assert without_timings(resumed.history) == without_timings(whole.history)
    assert resumed.best_epoch == whole.best_epoch
    assert_trees_equal(resumed.best_params, whole.best_params)


def test_ctrl_c_finishes_the_epoch_checkpoints_it_and_the_run_resumes_exactly(split, tmp_path, monkeypatch):
    import signal

    from hvae_jax import hooks
    from hvae_jax.checkpoint import Checkpoints

    train = dataclasses.replace(TRAIN, epochs=4)  # default checkpoint interval: no checkpoint before epoch 4
    whole = fit(MODEL, train, split, tmp_path / "whole", progress=False, log=lambda _: None)
    validate = hooks.Validation.after_epoch

    def ctrl_c_in_epoch_2(self, loop):
        validate(self, loop)
        if loop.epoch == 2:
            signal.raise_signal(signal.SIGINT)  # arrives while the epoch's hooks run

    messages: list[str] = []
    # A shell without job control starts background jobs with SIGINT ignored (`cmd &` in a script), and Python then
    # keeps it ignored: give this test the disposition of a terminal, where fit installs its handler.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(hooks.Validation, "after_epoch", ctrl_c_in_epoch_2)
            with pytest.raises(KeyboardInterrupt, match="after epoch 2"):
                fit(MODEL, train, split, tmp_path / "run", progress=False, log=messages.append)
        assert any("finishing this epoch" in message for message in messages)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, inherited)
    checkpoints = Checkpoints(tmp_path / "run", create=False)
    try:
        assert checkpoints.latest_epoch("latest") == 2
    finally:
        checkpoints.close()
    resumed = fit(MODEL, train, split, tmp_path / "run", progress=False, log=lambda _: None)
    assert resumed.resumed_from == 2
    assert without_timings(resumed.history) == without_timings(whole.history)
    assert_trees_equal(resumed.final_params, whole.final_params)


def test_early_stopping_patience_counts_updates_in_whole_epochs_and_takes_the_longer_rule():
    patience = train_module.early_stopping_patience
    assert patience(TrainConfig(), steps_per_epoch=5) is None
    assert patience(TrainConfig(early_stopping=7), steps_per_epoch=5) == 7
    # amazon-book's given split at batch 500 (142 updates an epoch), ml-1m's strong split (10), a small set (1).
    assert patience(TrainConfig(early_stopping_updates=1500), steps_per_epoch=142) == 11
    assert patience(TrainConfig(early_stopping_updates=1500), steps_per_epoch=10) == 150
    assert patience(TrainConfig(early_stopping_updates=1500), steps_per_epoch=1) == 1500
    assert patience(TrainConfig(early_stopping=80, early_stopping_updates=1500), steps_per_epoch=142) == 80
    assert patience(TrainConfig(early_stopping=80, early_stopping_updates=1500), steps_per_epoch=10) == 150
    with pytest.raises(ValueError, match="early_stopping_updates must be a positive"):
        TrainConfig(early_stopping_updates=0)
