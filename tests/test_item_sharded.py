"""The item-sharded, chunked first and last layers (models/item_sharded.py, input_paths.ItemShardedPath) equal the
dense computations they replace, on one device here and on four forced host devices in a subprocess, and never hold
a [batch, n_items] logits buffer."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import random_binary_csr, subprocess_xla_flags

from hvae_jax import input_paths
from hvae_jax.configs import DAEConfig, TrainConfig
from hvae_jax.configs import VAEConfig as ModelConfig
from hvae_jax.data.batches import batch_slots, max_batch_nnz, to_device
from hvae_jax.data.splits import EvalSet
from hvae_jax.evaluate import evaluate
from hvae_jax.input_paths import neural_eval_step
from hvae_jax.models import item_sharded
from hvae_jax.models import sparse as sparse_layer
from hvae_jax.models.hvae import build_model, init_params
from hvae_jax.models.likelihoods import Multinomial
from hvae_jax.parallel import item_mesh
from hvae_jax.train import TrainSetup

pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")
_binary = random_binary_csr


def _slots(matrix):
    rows = jnp.arange(matrix.shape[0], dtype=jnp.int32)
    return batch_slots(to_device(matrix), rows, sparse_layer.padded_slots(max_batch_nnz(matrix, matrix.shape[0])))


def _output_layer(n_rows, hidden, n_padded, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(keys[0], (n_rows, hidden)), jax.random.normal(keys[1], (hidden, n_padded)),
            jax.random.normal(keys[2], (n_padded,)))


def test_layout_fits_the_budget_and_pads_to_whole_chunks():
    layout = item_sharded.catalogue_layout(1_000_000, 4, 500, logits_budget_bytes=64 * 2**20)
    assert 500 * layout.chunk * 4 <= 64 * 2**20
    assert layout.n_padded >= 1_000_000 and layout.n_padded % (4 * layout.chunk) == 0
    assert layout.n_padded - 1_000_000 < 4 * layout.chunk
    with pytest.raises(ValueError, match="at least 100 are needed"):
        item_sharded.catalogue_layout(1000, 1, 500, logits_budget_bytes=500 * 4 * 99, min_chunk=100)


def test_log_likelihood_and_gradients_equal_dense_log_softmax():
    n_items = 1000  # padded to 1024: the last chunk holds 24 padding items that must not count
    matrix = _binary(7, n_items, 0.02, seed=1)
    matrix = sp.vstack([matrix, sp.csr_matrix((1, n_items))]).tocsr()  # a user without items
    layout = item_sharded.catalogue_layout(n_items, 1, 8, logits_budget_bytes=8 * 4 * 128)
    assert layout.chunks_per_shard > 1 and layout.n_padded > n_items
    mesh = item_mesh(1)
    slots = _slots(matrix)
    h, kernel, bias = _output_layer(8, 5, layout.n_padded)
    dense_x = jnp.asarray(matrix.toarray(), jnp.float32)
    weights = jnp.arange(1.0, 9.0)

    def sharded(h, kernel, bias):
        positive_sum, logsumexp = item_sharded.positive_sum_and_logsumexp(h, kernel, bias, slots, layout, mesh)
        return Multinomial().from_positives(positive_sum, slots.lengths.astype(jnp.float32), logsumexp)

    def dense(h, kernel, bias):
        # The independent computation: a full log-softmax over the real items only.
        return jnp.sum(jax.nn.log_softmax((h @ kernel + bias[None, :])[:, :n_items]) * dense_x, axis=1)

    np.testing.assert_allclose(jax.jit(sharded)(h, kernel, bias), dense(h, kernel, bias), rtol=1e-5, atol=1e-4)
    assert float(jax.jit(sharded)(h, kernel, bias)[-1]) == 0.0
    sharded_grads = jax.jit(jax.grad(lambda *a: jnp.sum(weights * sharded(*a)), argnums=(0, 1, 2)))(h, kernel, bias)
    dense_grads = jax.grad(lambda *a: jnp.sum(weights * dense(*a)), argnums=(0, 1, 2))(h, kernel, bias)
    for got, expected in zip(sharded_grads, dense_grads):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # Padding items get no gradient.
    assert float(jnp.max(jnp.abs(sharded_grads[1][:, n_items:]))) == 0.0


def test_top_k_equals_full_row_top_k_with_ties_and_exclusions():
    n_items, k = 300, 100
    layout = item_sharded.catalogue_layout(n_items, 1, 4, logits_budget_bytes=4 * 4 * 128, min_chunk=k)
    mesh = item_mesh(1)
    h, kernel, bias = _output_layer(4, 3, layout.n_padded, seed=2)
    # Ties across chunks: items 5, 140 and 290 score alike, as do 7 and 260.
    kernel = kernel.at[:, 140].set(kernel[:, 5]).at[:, 290].set(kernel[:, 5]).at[:, 260].set(kernel[:, 7])
    bias = bias.at[140].set(bias[5]).at[290].set(bias[5]).at[260].set(bias[7])
    exclude = np.zeros((4, n_items), np.float32)
    exclude[1, ::3] = 1.0
    exclude[2, :250] = 1.0  # only 50 rankable items for a top 100
    slots = _slots(sp.csr_matrix(exclude))
    scores, items = jax.jit(lambda *a: item_sharded.top_k(*a, slots, k, layout, mesh))(h, kernel, bias)
    full = jnp.where(exclude > 0, -jnp.inf, (h @ kernel + bias[None, :])[:, :n_items])
    expected_scores, expected_items = jax.lax.top_k(full, k)
    finite = np.isfinite(np.asarray(expected_scores))
    assert finite[2].sum() == 50 and not np.isfinite(np.asarray(scores)[2, 50:]).any()
    np.testing.assert_array_equal(np.asarray(items)[finite], np.asarray(expected_items)[finite])
    np.testing.assert_allclose(np.asarray(scores)[finite], np.asarray(expected_scores)[finite], rtol=1e-5, atol=1e-5)


def test_project_equals_dense_matmul():
    matrix = _binary(6, 700, 0.03, seed=4)
    layout = item_sharded.catalogue_layout(700, 1, 6, logits_budget_bytes=6 * 4 * 128)
    slots = _slots(matrix)
    values = slots.is_real.astype(jnp.float32) * jax.random.uniform(jax.random.key(5), slots.is_real.shape)
    sparse_input = sparse_layer.SparseInput(slots.row, slots.item, values, slots.n_real)
    kernel = jax.random.normal(jax.random.key(6), (layout.n_padded, 4))
    dense = np.zeros((6, layout.n_padded), np.float32)
    np.add.at(dense, (np.asarray(slots.row), np.asarray(slots.item)), np.asarray(values))
    got = jax.jit(lambda k: item_sharded.sharded_gather_project(k, sparse_input, 6, layout, item_mesh(1)))(kernel)
    np.testing.assert_allclose(got, dense @ np.asarray(kernel), rtol=1e-5, atol=1e-5)


CONFIGS = [
    ModelConfig(latents=(8,), hidden=16),
    DAEConfig(latents=(8,)),
    ModelConfig(latents=(8, 4), hidden=16, gated=True, inference="ladder"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["multvae", "multdae", "ladder_gated"])
def test_loss_and_gradients_equal_the_sparse_path(config):
    # The claim is about the loss and its gradient. Parameters after an Adam step are not compared: for a gradient
    # entry near 0, Adam's g / (|g| + eps) turns float reassociation noise of 1e-10 into steps of O(lr).
    n_items = 512  # a whole number of chunks: the same model serves both paths
    matrix = _binary(80, n_items, 0.03, seed=7)
    rows = jnp.asarray(list(range(0, 60)) + [-1] * 4, jnp.int32)
    results = []
    for options in ({"input_path": "sparse"}, {"catalogue_mesh": item_mesh(1), "logits_budget_bytes": 64 * 4 * 128}):
        setup = TrainSetup.build(config, TrainConfig(batch_size=len(rows), total_anneal_steps=100, **{
            k: v for k, v in options.items() if k == "input_path"}), matrix,
            **{k: v for k, v in options.items() if k != "input_path"})
        state = setup.init_state(key=jax.random.key(0))

        def loss(params, setup=setup, state=state):
            return setup.path.loss_of_rows(params, state.snapshot, rows, to_device(matrix), None,
                                           key=jax.random.key(1), betas=setup.schedule.betas(jnp.int32(50)))

        results.append((setup, jax.jit(jax.value_and_grad(loss, has_aux=True))(state.params)))
    (plain_setup, ((plain_loss, _), plain_grads)), (sharded_setup, ((sharded_loss, _), sharded_grads)) = results
    layout = sharded_setup.path.catalogue.layout
    assert plain_setup.path.name == "sparse" and sharded_setup.path.name == "item_sharded"
    assert layout.n_padded == n_items and layout.chunks_per_shard == 4
    np.testing.assert_allclose(plain_loss, sharded_loss, rtol=1e-5)
    for plain_leaf, sharded_leaf in zip(jax.tree.leaves(plain_grads), jax.tree.leaves(sharded_grads)):
        np.testing.assert_allclose(plain_leaf, sharded_leaf, atol=2e-6)


def test_evaluation_equals_dense_evaluation():
    n_items = 512
    fold_in = _binary(90, n_items, 0.05, seed=8)
    heldout = _binary(90, n_items, 0.01, seed=9)
    heldout = (heldout - heldout.multiply(fold_in)).tocsr()
    heldout.eliminate_zeros()
    eval_set = EvalSet(fold_in=fold_in, heldout=heldout, exclude=fold_in, user_ids=np.arange(90))
    config = ModelConfig(latents=(8,), hidden=16)
    model = build_model(config, n_items)
    params = init_params(model, key=jax.random.key(3))
    path = input_paths.resolve(config, TrainConfig(batch_size=32), fold_in, catalogue_mesh=item_mesh(1),
                               logits_budget_bytes=32 * 4 * 128)
    assert path.model.n_items == n_items
    sharded = evaluate(path.eval_step(), path.place(params), eval_set, batch_size=32)
    dense = evaluate(neural_eval_step(model), params, eval_set, batch_size=32)
    assert sharded.keys() == dense.keys()
    for name, value in dense.items():
        np.testing.assert_allclose(sharded[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_vamp_prior_and_other_likelihoods_are_refused_clearly():
    with pytest.raises(ValueError, match="VampPrior"):
        item_sharded.catalogue_param_paths(ModelConfig(prior="vamp"))
    with pytest.raises(ValueError, match="multinomial"):
        item_sharded.catalogue_param_paths(ModelConfig(likelihood="bernoulli"))


def test_compiled_update_holds_no_dense_logits():
    n_items, batch = 100_000, 256
    matrix = _binary(batch, n_items, 0.0005, seed=10)
    config = ModelConfig(latents=(4,), hidden=4)
    train = TrainConfig(input_path="sparse", total_anneal_steps=10, batch_size=batch)
    dense_logits_bytes = batch * n_items * 4
    temp_bytes = {}
    for label, options in (("plain", {}), ("sharded", {"catalogue_mesh": item_mesh(1),
                                                       "logits_budget_bytes": batch * 4 * 1024})):
        setup = TrainSetup.build(config, train, matrix, **options)
        update = jax.jit(setup.make_update(setup.schedule.phases[0]))
        compiled = update.lower(setup.init_state(), jnp.arange(batch, dtype=jnp.int32), jax.random.key(1),
                                to_device(matrix), None).compile()
        temp_bytes[label] = compiled.memory_analysis().temp_size_in_bytes
    # The measure sees the plain path's logits; the sharded path stays far below one [batch, n_items] buffer.
    assert temp_bytes["plain"] > dense_logits_bytes
    assert temp_bytes["sharded"] < dense_logits_bytes / 4, temp_bytes


FOUR_DEVICES_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from hvae_jax.configs import TrainConfig
    from hvae_jax.configs import VAEConfig as ModelConfig
    from hvae_jax.data.splits import strong_generalization
    from hvae_jax.data.synthetic import synthetic_interactions
    from hvae_jax.parallel import item_mesh
    from hvae_jax.train import fit
    n_devices = int(sys.argv[2])
    assert len(jax.devices()) == 4, jax.devices()
    split = strong_generalization(synthetic_interactions(n_users=400, n_items=1000, seed=3), n_heldout_users=60)
    result = fit(ModelConfig(latents=(8,), hidden=16), TrainConfig(epochs=2, batch_size=64, steps_per_dispatch=3),
                 split, sys.argv[1], progress=False, log=lambda m: None, catalogue_mesh=item_mesh(n_devices),
                 logits_budget_bytes=64 * 4 * 128)
    layout = result.catalogue.layout
    print(json.dumps({"valid": result.best_validation["ndcg@100"], "loss": result.history[-1]["loss"],
                      "shards": layout.n_shards, "chunks": layout.chunks_per_shard,
                      "kernel": np.asarray(result.final_params["decoder_output"]["kernel"])[:, :layout.n_items].sum().item()}))
    """
)


def test_four_forced_devices_train_and_evaluate_as_one(tmp_path):
    env = dict(os.environ, XLA_FLAGS=subprocess_xla_flags("--xla_force_host_platform_device_count=4"),
               JAX_PLATFORMS="cpu")
    outputs = {}
    for n_devices in (1, 4):
        completed = subprocess.run(
            [sys.executable, "-c", FOUR_DEVICES_SCRIPT, str(tmp_path / f"d{n_devices}"), str(n_devices)],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        outputs[n_devices] = json.loads(completed.stdout.strip().splitlines()[-1])
    assert outputs[4]["shards"] == 4 and outputs[1]["shards"] == 1
    assert outputs[4]["chunks"] < outputs[1]["chunks"]
    for key in ("valid", "loss", "kernel"):
        np.testing.assert_allclose(outputs[4][key], outputs[1][key], rtol=1e-4, err_msg=key)
    assert 0.0 < outputs[4]["valid"] < 1.0
