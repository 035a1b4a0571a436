"""The sparse first layer (gather-and-sum over a user's items) equals the dense matmul path, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import one_update, random_binary_csr

from hvae_jax import input_paths
from hvae_jax.configs import DAEConfig, TrainConfig
from hvae_jax.configs import VAEConfig as ModelConfig
from hvae_jax.data.batches import batch_slots, max_batch_nnz, to_device
from hvae_jax.data.splits import EvalSet
from hvae_jax.evaluate import evaluate
from hvae_jax.input_paths import choose_path_name, neural_eval_step
from hvae_jax.models import sparse as sparse_layer
from hvae_jax.models.hvae import build_model, init_params
from hvae_jax.models.sparse import sparse_input_from_slots

pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


def _matrix(n_rows=200, n_items=300, density=0.05, seed=1):
    return random_binary_csr(n_rows, n_items, density, seed)


ROWS = jnp.asarray(list(range(0, 120, 2)) + [-1] * 4, jnp.int32)


def test_project_equals_dense_matmul_and_its_gradient():
    matrix = _matrix()
    slots = batch_slots(to_device(matrix), ROWS, sparse_layer.padded_slots(max_batch_nnz(matrix, len(ROWS))))
    values = slots.is_real.astype(jnp.float32) * jax.random.uniform(jax.random.key(0), slots.is_real.shape)
    sparse_input = sparse_layer.SparseInput(slots.row, slots.item, values, slots.n_real)
    # The dense input the slots describe, built independently with numpy.
    dense = np.zeros((len(ROWS), matrix.shape[1]), np.float32)
    np.add.at(dense, (np.asarray(slots.row), np.asarray(slots.item)), np.asarray(values))
    kernel = jax.random.normal(jax.random.key(1), (matrix.shape[1], 16))
    projected = sparse_layer.gather_project(kernel, sparse_input, len(ROWS))
    np.testing.assert_allclose(projected, dense @ np.asarray(kernel), rtol=1e-5, atol=1e-5)
    loss_sparse = lambda k: jnp.sum(jnp.sin(sparse_layer.gather_project(k, sparse_input, len(ROWS))))  # noqa: E731
    loss_dense = lambda k: jnp.sum(jnp.sin(jnp.asarray(dense) @ k))  # noqa: E731
    np.testing.assert_allclose(jax.jit(jax.grad(loss_sparse))(kernel), jax.grad(loss_dense)(kernel), atol=1e-5)


def test_slots_hold_exactly_the_rows_entries():
    matrix = _matrix()
    slots = batch_slots(to_device(matrix), ROWS, max_batch_nnz(matrix, len(ROWS)))
    real = np.asarray(slots.is_real)
    assert int(slots.n_real) == real.sum() and real[: int(slots.n_real)].all()
    for batch_row, row in enumerate(np.asarray(ROWS)):
        items = np.sort(np.asarray(slots.item)[real & (np.asarray(slots.row) == batch_row)])
        expected = matrix[row].indices if row >= 0 else np.array([], int)
        np.testing.assert_array_equal(items, np.sort(expected))


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(latents=(8,), hidden=16, input_dropout=0.0),
        DAEConfig(latents=(8,), input_dropout=0.0),
        ModelConfig(latents=(8, 4), hidden=16, gated=True, prior="vamp", n_pseudo_inputs=5, input_dropout=0.0),
    ],
    ids=["multvae", "multdae", "two_level_vamp_gated"],
)
def test_sparse_update_equals_dense_update(config):
    matrix = _matrix()
    results = {}
    for path in ("dense", "sparse"):
        setup, results[path] = one_update(config, matrix, ROWS, input_path=path)
        assert setup.path.name == path
    (dense_state, dense_metrics), (sparse_state, sparse_metrics) = results["dense"], results["sparse"]
    np.testing.assert_allclose(dense_metrics["loss"], sparse_metrics["loss"], rtol=1e-5)
    for dense_leaf, sparse_leaf in zip(jax.tree.leaves(dense_state.params), jax.tree.leaves(sparse_state.params)):
        np.testing.assert_allclose(dense_leaf, sparse_leaf, atol=1e-6)


def test_sparse_dropout_keeps_the_expected_fraction_and_scale():
    matrix = _matrix(n_rows=400, density=0.2)
    rows = jnp.arange(400, dtype=jnp.int32)
    slots = batch_slots(to_device(matrix), rows, max_batch_nnz(matrix, 400))
    sparse_input = sparse_input_from_slots(slots, 0.5, key=jax.random.key(3))
    values = np.asarray(sparse_input.value)[np.asarray(slots.is_real)]
    lengths = np.diff(matrix.indptr)[np.asarray(slots.row)[np.asarray(slots.is_real)]]
    kept = values > 0
    assert abs(kept.mean() - 0.5) < 0.02
    # Normalise then inverted dropout: a kept entry is 1 / sqrt(n) / (1 - rate).
    np.testing.assert_allclose(values[kept], 2.0 / np.sqrt(lengths[kept]), rtol=1e-6)


def test_auto_input_path_follows_density():
    assert choose_path_name(TrainConfig(), _matrix(density=0.005)) == "sparse"
    assert choose_path_name(TrainConfig(), _matrix(density=0.05)) == "dense"
    assert choose_path_name(TrainConfig(input_path="dense"), _matrix(density=0.005)) == "dense"
    # Evaluation's crossover is higher (no dropout there, only cost decides).
    assert choose_path_name(TrainConfig(), _matrix(density=0.03), "eval") == "sparse"
    assert choose_path_name(TrainConfig(), _matrix(density=0.2), "eval") == "dense"
    assert choose_path_name(TrainConfig(input_path="dense"), _matrix(density=0.03), "eval") == "dense"


def test_dense_training_evaluates_sparse_between_the_crossovers():
    config = ModelConfig(latents=(8,), hidden=16)
    between = input_paths.resolve(config, TrainConfig(), _matrix(density=0.03))
    assert (between.name, between.eval_name) == ("dense", "sparse")
    assert "evaluation: sparse" in input_paths.describe(between)
    forced = input_paths.resolve(config, TrainConfig(input_path="dense"), _matrix(density=0.03))
    assert (forced.name, forced.eval_name) == ("dense", "dense")
    # The sparse path takes no data-parallel mesh: with one, evaluation stays dense.
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",))
    assert input_paths.resolve(config, TrainConfig(), _matrix(density=0.03), mesh=mesh).eval_name == "dense"


@pytest.mark.parametrize("config", [ModelConfig(latents=(8,), hidden=16), DAEConfig(latents=(8,)),
                                    ModelConfig(latents=(8, 4), hidden=16, gated=True)],
                         ids=["multvae", "multdae", "two_level_gated"])
def test_sparse_evaluation_equals_dense_evaluation(config):
    fold_in = _matrix(n_rows=90, density=0.05, seed=2)
    heldout = _matrix(n_rows=90, density=0.02, seed=3)
    heldout = (heldout - heldout.multiply(fold_in)).tocsr()
    heldout.eliminate_zeros()
    eval_set = EvalSet(fold_in=fold_in, heldout=heldout, exclude=fold_in, user_ids=np.arange(90))
    model = build_model(config, fold_in.shape[1])
    params = init_params(model, key=jax.random.key(4))
    dense = evaluate(neural_eval_step(model), params, eval_set, batch_size=32)
    sparse = evaluate(neural_eval_step(model, input_path="sparse"), params, eval_set, batch_size=32)
    assert dense.keys() == sparse.keys()
    for name, value in dense.items():
        np.testing.assert_allclose(sparse[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_active_units_of_a_dense_run_read_through_its_evaluation_first_layer():
    # Between the crossovers a dense run evaluates sparse; its validation's posterior means go the same way, and
    # equal the dense path's to summation order (two levels, so each level's means are compared).
    config = ModelConfig(latents=(8, 4), hidden=16)
    train_matrix = _matrix(density=0.03)
    fold_in = _matrix(n_rows=70, density=0.03, seed=5)
    eval_set = EvalSet(fold_in=fold_in, heldout=fold_in, exclude=fold_in, user_ids=np.arange(70))
    between = input_paths.resolve(config, TrainConfig(), train_matrix)
    forced = input_paths.resolve(config, TrainConfig(input_path="dense"), train_matrix)
    assert (between.eval_name, forced.eval_name) == ("sparse", "dense")
    params = init_params(between.model, key=jax.random.key(6))
    through_sparse = between.posterior_means(params, eval_set, batch_size=32)
    through_dense = forced.posterior_means(params, eval_set, batch_size=32)
    # The sparse twin's program has no dense [batch, n_items] rows: what it lowers to shows which layer ran.
    rows, device_fold_in = jnp.arange(32, dtype=jnp.int32), to_device(fold_in)
    bound = max_batch_nnz(fold_in, 32)
    lowered = jax.jit(between.means_of_rows, static_argnames="bound").lower(params, rows, device_fold_in, None,
                                                                          bound=bound).as_text()
    assert f"32x{fold_in.shape[1]}xf32" not in lowered
    assert [m.shape for m in through_sparse] == [(70, 8), (70, 4)]
    for sparse_level, dense_level in zip(through_sparse, through_dense):
        np.testing.assert_allclose(sparse_level, dense_level, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("input_path", ["dense", "sparse", "auto"])
def test_validation_and_the_final_evaluation_share_one_compiled_step(input_path):
    config = ModelConfig(latents=(8,), hidden=16)
    path = input_paths.resolve(config, TrainConfig(input_path=input_path), _matrix(density=0.03))
    ks = (20, 100)
    step = path.eval_step(ks)
    assert path.eval_step(list(ks)) is step and path.eval_step((10,)) is not step
    params = init_params(path.model, key=jax.random.key(1))
    # Sets of different sizes (as validation and test users are): their sizes round to the same powers of two.
    valid, test = _matrix(n_rows=60, density=0.03, seed=7), _matrix(n_rows=60, density=0.036, seed=8)
    assert valid.nnz != test.nnz
    for fold_in in (valid, test):
        evaluate(step, params, EvalSet(fold_in=fold_in, heldout=fold_in, exclude=fold_in, user_ids=np.arange(60)))
    assert step._cache_size() == 1  # one compilation for both sets
    # The posterior-means step is built once too.
    path.posterior_means(params, EvalSet(fold_in=valid, heldout=valid, exclude=valid, user_ids=np.arange(60)))
    means_step = path._steps["means"]
    path.posterior_means(params, EvalSet(fold_in=test, heldout=test, exclude=test, user_ids=np.arange(60)))
    assert path._steps["means"] is means_step and means_step._cache_size() == 1
