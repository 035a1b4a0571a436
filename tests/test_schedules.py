"""Training schedules and optimizers: RecVAE's alternating updates leave the frozen half bit-identical (parameters and
optimizer state), the snapshot is taken as each cycle starts, the grouped optimizer equals one Adam over everything,
Kim & Suh's AdamNormGrad normalises each tensor's gradient, and their warm-up reaches the cap exactly at epoch 100."""

from __future__ import annotations

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import random_binary_csr

from hvae_jax.configs import KIMSUH_TRAIN, RECVAE, RECVAE_TRAIN, TrainConfig, VAEConfig
from hvae_jax.data.batches import to_device
from hvae_jax.models.hvae import parameter_group
from hvae_jax.optimizers import GroupedOptimizer, make_optimizer, normalize_gradients
from hvae_jax.schedules import Alternating, Phase, build_schedule
from hvae_jax.train import TrainSetup

pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")

SMALL_RECVAE = VAEConfig(name="recvae", latents=(6,), hidden=12, encoder="densenet", encoder_layers=3,
                         decoder_layers=0, prior="composite", init="torch")
ROWS = jnp.asarray(list(range(40)) + [-1] * 8, jnp.int32)


def flat(tree) -> dict:
    """The leaves by path, copied to the host (a donated state's buffers are gone after the next update)."""
    return {path: np.asarray(leaf) for path, leaf in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def recvae_setup(**train_fields):
    train = TrainConfig(**{**dict(RECVAE_TRAIN), "batch_size": len(ROWS), **train_fields})
    matrix = random_binary_csr(60, 50, 0.2, seed=0)
    return TrainSetup.build(SMALL_RECVAE, train, matrix), matrix


@pytest.mark.parametrize("frozen", ["encoder", "decoder"])
def test_alternating_updates_leave_the_frozen_half_bit_identical(frozen):
    setup, matrix = recvae_setup()
    updated = "decoder" if frozen == "encoder" else "encoder"
    phase = next(p for p in setup.schedule.phases if p.groups == (updated,))
    state = setup.init_state()
    update = jax.jit(setup.make_update(phase))
    new_state, metrics = update(state, ROWS, jax.random.key(1), to_device(matrix), None)
    assert np.isfinite(float(metrics["loss"]))
    label = setup.optimizer.label
    before, after = flat(state.params), flat(new_state.params)
    moved = {path for path in before if not np.array_equal(np.asarray(before[path]), np.asarray(after[path]))}
    assert moved and all(label(path) == updated for path in moved)
    for path in before:
        if label(path) == frozen:
            assert np.asarray(after[path]).tobytes() == np.asarray(before[path]).tobytes(), path
    # The frozen group's optimizer state (Adam's count and moments) did not move either.
    for old, new in zip(jax.tree.leaves(state.opt_state[frozen]), jax.tree.leaves(new_state.opt_state[frozen])):
        assert np.asarray(old).tobytes() == np.asarray(new).tobytes()
    assert int(new_state.opt_state[updated][0].count) == 1


def test_recvae_groups_put_the_linear_decoder_alone_on_the_generative_side():
    setup, _ = recvae_setup()
    groups = {path: parameter_group(RECVAE, path) for path in flat(setup.init_state().params)}
    assert {path for path, group in groups.items() if group == "decoder"} == {
        ("decoder_output", "kernel"), ("decoder_output", "bias")}


def test_alternating_schedule_cycles_and_takes_the_snapshot_as_each_cycle_starts():
    schedule = build_schedule(TrainConfig(schedule="alternating", encoder_epochs=3, decoder_epochs=1), n_levels=1,
                              steps_per_epoch=5)
    assert isinstance(schedule, Alternating)
    names = [schedule.phase_of(epoch).name for epoch in range(1, 9)]
    assert names == ["encoder"] * 3 + ["decoder"] + ["encoder"] * 3 + ["decoder"]
    assert [epoch for epoch in range(1, 13) if schedule.takes_snapshot(epoch)] == [1, 5, 9]
    assert schedule.phase_of(4).dropout is False and schedule.phase_of(1).dropout is True


def test_run_epoch_refreshes_the_snapshot_at_a_cycle_start_only():
    setup, matrix = recvae_setup(encoder_epochs=1, decoder_epochs=1, steps_per_dispatch=1)
    state = setup.init_state()
    device_matrix = to_device(matrix)
    state, _ = setup.run_epoch(state, 1, device_matrix, None)  # encoder epoch: snapshot = initial parameters
    snapshot_after_1 = flat(state.snapshot)
    state, _ = setup.run_epoch(state, 2, device_matrix, None)  # decoder epoch: snapshot unchanged
    for path, leaf in flat(state.snapshot).items():
        np.testing.assert_array_equal(leaf, snapshot_after_1[path])
    params_after_2 = flat(state.params)
    state, _ = setup.run_epoch(state, 3, device_matrix, None)  # next cycle: the snapshot is the parameters then
    for path, leaf in flat(state.snapshot).items():
        np.testing.assert_array_equal(leaf, params_after_2[path])


def test_per_user_kl_weight_is_gamma_times_the_users_items():
    schedule = build_schedule(TrainConfig(kl_weight_per_item=0.005), n_levels=1, steps_per_epoch=3)
    np.testing.assert_allclose(np.asarray(schedule.per_user_kl_weights(jnp.asarray([0, 10, 200]))),
                               [0.0, 0.05, 1.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(schedule.betas(jnp.asarray(7, jnp.int32))), [1.0])
    assert build_schedule(TrainConfig(), n_levels=1, steps_per_epoch=3).per_user_kl_weights(jnp.ones(2)) is None


def test_faithful_warm_up_reaches_exactly_max_beta_at_epoch_100():
    train = TrainConfig(**dict(KIMSUH_TRAIN))
    steps_per_epoch = 24  # ml-1m's 4,840 training users in batches of 200 (the last one padded: 25 in practice)
    schedule = build_schedule(train, n_levels=2, steps_per_epoch=steps_per_epoch)
    beta_at = lambda epoch: float(schedule.beta(jnp.asarray((epoch - 1) * steps_per_epoch, jnp.int32)))  # noqa
    assert beta_at(1) == pytest.approx(0.3 / 100)
    assert beta_at(99) < 0.3
    assert beta_at(100) == np.float32(0.3) and beta_at(101) == np.float32(0.3) and beta_at(400) == np.float32(0.3)


@pytest.mark.parametrize("steps_per_epoch, anneal_steps", [(142, 3000), (10, 3000), (4, 1200), (1, 300)])
def test_the_anneal_over_the_run_is_bounded_by_max_anneal_steps(steps_per_epoch, anneal_steps):
    # 300 epochs of amazon-book's given split, ml-1m, Last.fm and ml-latest-small at batch 500.
    train = TrainConfig(epochs=300, max_anneal_steps=3000)
    schedule = build_schedule(train, n_levels=1, steps_per_epoch=steps_per_epoch)
    assert schedule.anneal_steps == anneal_steps
    beta = lambda step: float(schedule.beta(jnp.asarray(step, jnp.int32)))  # noqa: E731
    assert beta(anneal_steps // 10) == pytest.approx(0.1, rel=1e-6)
    assert beta(anneal_steps // 5) == np.float32(0.2) and beta(anneal_steps) == np.float32(0.2)
    unbounded = build_schedule(TrainConfig(epochs=300), n_levels=1, steps_per_epoch=steps_per_epoch)
    assert unbounded.anneal_steps == 300 * steps_per_epoch
    # An explicit length is the length.
    given = build_schedule(TrainConfig(epochs=300, total_anneal_steps=200_000, max_anneal_steps=3000), n_levels=1,
                           steps_per_epoch=steps_per_epoch)
    assert given.anneal_steps == 200_000
    with pytest.raises(ValueError, match="max_anneal_steps must be positive"):
        TrainConfig(max_anneal_steps=0)


def test_grouped_adam_equals_one_adam_over_every_parameter():
    setup, _ = recvae_setup(schedule="joint")
    params = setup.init_state().params
    grads = jax.tree.map(lambda p: jnp.sin(3.0 * p) + 0.1, params)
    grouped = GroupedOptimizer(setup.train, setup.optimizer.label)
    state = grouped.init(params)
    one = make_optimizer(setup.train)
    one_state = one.init(params)
    for _ in range(3):
        params_grouped, state = grouped.update(grads, state, params, None)
        updates, one_state = one.update(grads, one_state, params)
        params_one = optax.apply_updates(params, updates)
        for path, leaf in flat(params_grouped).items():
            np.testing.assert_array_equal(leaf, flat(params_one)[path])
        params = params_grouped


def test_normalize_gradients_divides_each_tensor_by_its_norm():
    grads = {"a": jnp.asarray([3.0, 4.0]), "b": jnp.asarray([[0.0, 2.0], [0.0, 0.0]])}
    normalized, _ = normalize_gradients().update(grads, optax.EmptyState())
    np.testing.assert_allclose(np.asarray(normalized["a"]), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(normalized["b"]), [[0.0, 1.0], [0.0, 0.0]], rtol=1e-6)
    # AdamNormGrad: a tensor's Adam step ignores its gradient's scale.
    train = TrainConfig(optimizer="adam_normgrad", learning_rate=0.1)
    params = {"w": jnp.ones(3)}
    steps = []
    for scale in (1.0, 1000.0):
        optimizer = make_optimizer(train)
        updates, _ = optimizer.update({"w": scale * jnp.asarray([1.0, -2.0, 0.5])}, optimizer.init(params), params)
        steps.append(np.asarray(updates["w"]))
    np.testing.assert_allclose(steps[0], steps[1], rtol=1e-5)


def test_a_phase_without_groups_updates_everything():
    setup, matrix = recvae_setup(schedule="joint")
    state = setup.init_state()
    new_state, _ = jax.jit(setup.make_update(Phase("joint")))(state, ROWS, jax.random.key(2), to_device(matrix), None)
    before, after = flat(state.params), flat(new_state.params)
    assert all(not np.array_equal(np.asarray(before[path]), np.asarray(after[path])) for path in before
               if "norm" not in path[-2])
