"""Parity of the PyTorch reference in `benchmarks/torch_reference` with the JAX library.

Both sides get identical parameters (transferred from Flax) and identical noise (the dropout masks and epsilons the
library's `batch_loss` draws from its key, handed to PyTorch explicitly); then logits, each ELBO term, the batch loss,
the gradients and one Adam update must agree: 1e-4 relative in float32, 1e-8 in float64.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from benchmarks.torch_reference import models as torch_models  # noqa: E402
from benchmarks.torch_reference import objectives as torch_objectives  # noqa: E402
from benchmarks.torch_reference import training as torch_training  # noqa: E402
from benchmarks.torch_reference.training import ranking_metrics as torch_ranking_metrics  # noqa: E402
from benchmarks.torch_reference.training import sparse_rows  # noqa: E402
from benchmarks.torch_reference.transfer import flax_path, jax_to_torch, torch_to_jax  # noqa: E402
from hvae_jax import metrics  # noqa: E402
from hvae_jax.configs import DAEConfig, TrainConfig  # noqa: E402
from hvae_jax.configs import VAEConfig as ModelConfig  # noqa: E402
from hvae_jax.models.hvae import build_model, draw_noise, init_params  # noqa: E402
from hvae_jax.models.hvae import project_first_layers  # noqa: E402
from hvae_jax.models.likelihoods import build_likelihood  # noqa: E402
from hvae_jax.objectives import UserTerms, batch_loss, combine_terms  # noqa: E402


def log_likelihood(kind, logits, x):
    return build_likelihood(kind).log_prob(logits, x)

N_ITEMS = 40
BATCH = 6
N_SIDE = 3

CONFIGS = {
    "multvae": (ModelConfig(latents=(8,), hidden=16), 0),
    "multdae": (DAEConfig(latents=(8,)), 0),
    "hvae-bottom-up-vamp-gated": (
        ModelConfig(latents=(8, 6), hidden=16, prior="vamp", n_pseudo_inputs=7, gated=True, logvar_clip=(-12.0, 4.0)),
        0,
    ),
    "hvae-ladder-side-features": (ModelConfig(latents=(8, 6), hidden=16, inference="ladder"), N_SIDE),
}
# KL weights, free bits and weight decay all switched on, so every term of the objective is exercised.
TRAIN = TrainConfig(batch_size=BATCH, learning_rate=1e-3, weight_decay=0.01, free_bits=0.05)
BETA_STEP, ANNEAL_STEPS = 30, 100


@functools.lru_cache(maxsize=None)
def get_case(name: str, dtype_name: str) -> "Case":
    """Cases are built once per session: Flax initialisation runs op by op and is the slow part."""
    return Case(name, jnp.dtype(dtype_name))


class Case:
    """One configuration's shared inputs: Flax model and parameters, a batch, side features and the noise key."""

    def __init__(self, name: str, dtype):
        self.config, self.n_side = CONFIGS[name]
        self.dtype = dtype
        self.model = build_model(self.config, N_ITEMS)
        params = init_params(self.model, self.n_side, key=jax.random.key(0))
        # Perturb the initial parameters so that biases and pseudo-inputs matter as much as weights do.
        leaves, treedef = jax.tree.flatten(params)
        rng = np.random.default_rng(1)
        self.params = jax.tree.unflatten(
            treedef, [jnp.asarray(np.asarray(leaf) + rng.normal(0.0, 0.1, leaf.shape), dtype) for leaf in leaves]
        )
        self.x = (rng.random((BATCH, N_ITEMS)) < 0.25).astype(np.float64)
        self.x[0, :3] = 1.0  # no empty row
        self.side = rng.normal(size=(BATCH, self.n_side)) if self.n_side else None
        self.key = jax.random.key(7)
        self.jax_results = None  # filled by _jax_results
        self.user_weights = np.array([1.0] * (BATCH - 1) + [0.0])  # the last row plays a padding row
        self.betas = np.array([min(TRAIN.beta_cap, BETA_STEP / ANNEAL_STEPS) * (1.0 + 0.5 * level)
                               for level in range(self.config.n_levels)])

    def jnp(self, array):
        return None if array is None else jnp.asarray(array, self.dtype)

    def jax_noise(self):
        """The noise `batch_loss` draws for each user from `self.key`: [batch, ...] arrays."""
        user_keys = jax.random.split(self.key, BATCH)
        return jax.vmap(lambda key: draw_noise(self.config, N_ITEMS, key=key))(user_keys)

    def torch_module(self):
        module = torch_models.build_model(self.config, N_ITEMS, self.n_side).to(_torch_dtype(self.dtype))
        return jax_to_torch(self.params, module)

    def torch_noise(self) -> torch_models.Noise:
        noise = self.jax_noise()
        epsilons = None
        if self.config.kind == "vae":
            epsilons = tuple(_to_torch(e, self.dtype) for e in noise.epsilons)
        return torch_models.Noise(_to_torch(noise.keep_mask, self.dtype), epsilons)

    def tensor(self, array):
        return None if array is None else _to_torch(array, self.dtype)


def _torch_dtype(dtype):
    return torch.float64 if jnp.dtype(dtype) == jnp.float64 else torch.float32


def _to_torch(array, dtype):
    return torch.from_numpy(np.array(array, dtype=jnp.dtype(dtype)))


def _assert_close(actual, expected, rtol, what):
    """|actual - expected| <= rtol * max(|expected|, max over the array of |expected| * 1e-2): relative, with an
    absolute floor for entries that are tiny next to the rest of their array (where rounding dominates)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    scale = np.maximum(np.abs(expected), 1e-2 * np.max(np.abs(expected), initial=0.0))
    error = np.max(np.abs(actual - expected) / np.where(scale > 0, scale, 1.0), initial=0.0)
    assert error <= rtol, f"{what}: relative error {error:.3g} > {rtol:g}"


def _assert_trees_close(actual: dict, expected: dict, rtol: float, what: str):
    flat_actual = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(actual)}
    flat_expected = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(expected)}
    assert flat_actual.keys() == flat_expected.keys(), f"{what}: parameter names differ"
    for name in flat_expected:
        _assert_close(flat_actual[name], flat_expected[name], rtol, f"{what} {name}")


class JaxResults(NamedTuple):
    output: object  # hvae_jax Output, batched: logits [batch, n_items], kl [batch, L], ...
    nll: jax.Array  # [batch]
    loss: jax.Array
    aux: dict
    grads: dict


def _jax_results(case: Case) -> JaxResults:
    """Forward pass with the library's noise, per-user nll, `batch_loss` and its gradient, in one compiled call
    (cached per case: compiling dominates the cost of these tests)."""
    if case.jax_results is None:

        @jax.jit
        def everything(params, x, side, user_weights, betas, key, noise):
            apply = lambda x_u, side_u, noise_u: case.model.apply({"params": params}, x_u, side_u, noise_u)  # noqa
            output = jax.vmap(apply, in_axes=(0, None if side is None else 0, 0))(x, side, noise)
            nll = jax.vmap(lambda logits, x_u: -log_likelihood(case.config.likelihood, logits, x_u))(output.logits, x)
            loss = lambda p: batch_loss(p, case.model, TRAIN, x, side, user_weights, betas, key=key)  # noqa: E731
            (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
            return JaxResults(output, nll, value, aux, grads)

        case.jax_results = everything(case.params, case.jnp(case.x), case.jnp(case.side),
                                      case.jnp(case.user_weights), case.jnp(case.betas), case.key, case.jax_noise())
    return case.jax_results


def _torch_loss_and_grads(case: Case, module):
    loss, aux = torch_objectives.batch_loss(
        module, TRAIN, case.tensor(case.x), case.tensor(case.side), case.tensor(case.user_weights),
        case.tensor(case.betas), case.torch_noise(),
    )
    module.zero_grad()
    loss.backward()
    return loss.detach(), aux, torch_to_jax(module, gradients=True)


def _check_parity(case: Case, rtol: float):
    module = case.torch_module()
    expected = _jax_results(case)
    actual = module(case.tensor(case.x), case.tensor(case.side), case.torch_noise())
    _assert_close(actual.logits.detach(), expected.output.logits, rtol, "logits")
    for field in ("kl", "log_q", "log_p"):
        _assert_close(getattr(actual, field).detach(), getattr(expected.output, field), rtol, field)
    for level, (mean_actual, mean_expected) in enumerate(zip(actual.means, expected.output.means)):
        _assert_close(mean_actual.detach(), mean_expected, rtol, f"posterior mean of level {level}")
    nll_actual = -torch_objectives.log_likelihood(case.config.likelihood, actual.logits, case.tensor(case.x))
    _assert_close(nll_actual.detach(), expected.nll, rtol, "per-user nll")

    loss_actual, aux_actual, grads_actual = _torch_loss_and_grads(case, module)
    _assert_close(loss_actual, expected.loss, rtol, "loss")
    _assert_close(aux_actual["nll"], expected.aux["nll"], rtol, "batch nll")
    _assert_close(aux_actual["kl"], expected.aux["kl"], rtol, "batch KL per level")
    _assert_trees_close(grads_actual, expected.grads, rtol, "gradient")


@pytest.mark.parametrize("name", CONFIGS)
def test_transfer_round_trip_and_same_parameter_set(name):
    case = get_case(name, "float32")
    module = case.torch_module()
    back = torch_to_jax(module)
    assert jax.tree.structure(back) == jax.tree.structure(case.params)
    jax.tree.map(np.testing.assert_array_equal, back, case.params)
    # A freshly initialised PyTorch module has exactly the Flax model's parameters, with the Flax shapes.
    fresh = torch_to_jax(torch_models.build_model(case.config, N_ITEMS, case.n_side))
    assert jax.tree.map(jnp.shape, fresh) == jax.tree.map(jnp.shape, case.params)


def test_flax_path_names():
    assert flax_path("prior_hidden.0.linear_1.weight") == ("prior_hidden_0", "linear_1", "kernel")
    assert flax_path("posterior_heads.1.bias") == ("posterior_heads_1", "bias")
    assert flax_path("pseudo_inputs") == ("pseudo_inputs",)


@pytest.mark.parametrize("name", CONFIGS)
def test_parity_float32(name):
    _check_parity(get_case(name, "float32"), rtol=1e-4)


def _float64_blocker(name: str) -> str | None:
    """Why the Flax model cannot run in float64 at present, or None when it can (dtypes via `jax.eval_shape`)."""
    config, n_side = CONFIGS[name]
    model = build_model(config, N_ITEMS)
    abstract_params = jax.eval_shape(lambda: init_params(model, n_side, key=jax.random.key(0)))
    params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.float64), abstract_params)
    side = jax.ShapeDtypeStruct((n_side,), jnp.float64) if n_side else None
    x = jax.ShapeDtypeStruct((N_ITEMS,), jnp.float64)
    output = jax.eval_shape(lambda p, x_u, s: model.apply({"params": p}, x_u, s, None), params, x, side)
    reasons = []
    if output.logits.dtype != jnp.float64:
        reasons.append("hvae_jax.models.layers.dense fixes the Dense compute dtype to ModelConfig.compute_dtype, "
                       "which allows only float32/bfloat16")
    if config.kind == "vae" and output.kl.dtype != jnp.float64:
        reasons.append("HierarchicalVAE._split_head casts means and log-variances to float32")
    # log softmax([1e-12, 0])[0] = 1e-12 - log(1 + e^1e-12): float32 arithmetic misses it by ~1e-8.
    probe = log_likelihood("multinomial", jnp.array([1e-12, 0.0], jnp.float64), jnp.array([1.0, 0.0], jnp.float64))
    if abs(float(probe) - (1e-12 - np.logaddexp(1e-12, 0.0))) > 1e-14:
        reasons.append("objectives.log_likelihood casts logits to float32")
    return "; ".join(reasons) or None


@pytest.mark.parametrize("name", CONFIGS)
def test_parity_float64(name):
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        assert _float64_blocker(name) is None
        _check_parity(Case(name, jnp.dtype("float64")), rtol=1e-8)


@pytest.mark.parametrize("name", CONFIGS)
def test_one_adam_step_leaves_the_same_parameters(name):
    case = get_case(name, "float32")
    module = case.torch_module()
    optimizer = torch.optim.Adam(module.parameters(), lr=TRAIN.learning_rate)
    _torch_loss_and_grads(case, module)
    optimizer.step()

    optax_adam = optax.adam(TRAIN.learning_rate)
    grads = _jax_results(case).grads
    # optax's bias correction mixes a Python float with an int32 count, which strict promotion rejects (conftest.py).
    with jax.numpy_dtype_promotion("standard"):
        updates, _ = optax_adam.update(grads, optax_adam.init(case.params), case.params)
        expected = optax.apply_updates(case.params, updates)
    _assert_trees_close(torch_to_jax(module), expected, 1e-4, "parameters after one Adam step")


@pytest.mark.parametrize("name", ["multvae", "hvae-bottom-up-vamp-gated"])
def test_sparse_first_layer_matches_dense_reference(name):
    """The optimised variant (embedding-bag first layer, sparse likelihood) equals the dense reference, float64."""
    case = get_case(name, "float32")
    dense_module = case.torch_module().double()
    sparse_module = torch_models.build_model(case.config, N_ITEMS, case.n_side, sparse_input=True).double()
    jax_to_torch(case.params, sparse_module)
    matrix = sp.csr_matrix(case.x)
    rows = sparse_rows(matrix, np.arange(BATCH), pad_to_nnz=matrix.nnz + 5)
    rows = rows._replace(values=rows.values.double())
    noise = case.torch_noise()
    noise = torch_models.Noise(noise.keep_mask.double(), tuple(e.double() for e in noise.epsilons))
    sparse_noise = noise._replace(keep_mask=noise.keep_mask[rows.rows, rows.items])
    weights, betas = torch.ones(BATCH, dtype=torch.float64), torch.tensor(case.betas)
    x = torch.from_numpy(case.x)

    dense_loss, dense_aux = torch_objectives.batch_loss(dense_module, TRAIN, x, None, weights, betas, noise)
    sparse_loss, sparse_aux = torch_objectives.batch_loss(sparse_module, TRAIN, rows, None, weights, betas,
                                                          sparse_noise)
    torch.testing.assert_close(sparse_loss, dense_loss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sparse_aux["kl"], dense_aux["kl"], rtol=1e-10, atol=1e-10)
    dense_loss.backward()
    sparse_loss.backward()
    _assert_trees_close(torch_to_jax(sparse_module, gradients=True), torch_to_jax(dense_module, gradients=True),
                        1e-8, "sparse vs dense gradient")


@pytest.mark.parametrize("kind", ["multinomial", "bernoulli", "gaussian"])
def test_likelihoods_dense_sparse_and_jax_agree(kind):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(BATCH, N_ITEMS))
    x = (rng.random((BATCH, N_ITEMS)) < 0.3).astype(np.float64)
    expected = jax.vmap(lambda l, v: log_likelihood(kind, l, v))(jnp.asarray(logits, jnp.float32),
                                                                 jnp.asarray(x, jnp.float32))
    dense = torch_objectives.log_likelihood(kind, torch.from_numpy(logits), torch.from_numpy(x))
    rows = sparse_rows(sp.csr_matrix(x), np.arange(BATCH), pad_to_nnz=int(x.sum()) + 4)
    sparse = torch_objectives.log_likelihood(kind, torch.from_numpy(logits), rows._replace(values=rows.values.double()))
    torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-12)
    _assert_close(dense, expected, 1e-5, f"{kind} log-likelihood")


def test_sparse_rows_padding_and_dense_round_trip():
    matrix = sp.csr_matrix(np.array([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]], np.float32))
    rows = sparse_rows(matrix, np.array([2, 0]), batch_size=3, pad_to_nnz=7)
    assert rows.items.shape == (7,) and rows.offsets.tolist() == [0, 2, 4]
    np.testing.assert_array_equal(rows.to_dense().numpy(), [[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="pad_to_nnz"):
        sparse_rows(matrix, np.array([0, 2]), pad_to_nnz=3)


def test_torch_ranking_metrics_match_the_library():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(8, 150)).astype(np.float32)
    exclude = rng.random((8, 150)) < 0.2
    heldout = (rng.random((8, 150)) < 0.1) & ~exclude
    heldout[3] = False  # a user without held-out items
    expected = metrics.ranking_metrics(jnp.asarray(scores), jnp.asarray(heldout), jnp.asarray(exclude), (100,))
    actual = torch_ranking_metrics(torch.from_numpy(scores), torch.from_numpy(exclude), torch.from_numpy(heldout), 100)
    for name in ("ndcg@100", "recall@100"):
        np.testing.assert_allclose(actual[name].numpy(), np.asarray(expected[name]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimized", [False, True], ids=["reference", "optimized-eager"])
def test_trainers_take_finite_steps_and_learn(optimized):
    """Both trainers run (the optimised one eagerly: compiling is too slow for the suite) and lower the loss on a
    fixed batch; the last batch of an epoch is partial and is padded (optimised) or just smaller (reference)."""
    torch.manual_seed(0)
    config = ModelConfig(latents=(8,), hidden=16)
    train = TrainConfig(batch_size=8, learning_rate=1e-2)
    rng = np.random.default_rng(0)
    matrix = sp.csr_matrix((rng.random((20, N_ITEMS)) < 0.2).astype(np.float32))
    model = torch_models.build_model(config, N_ITEMS, sparse_input=optimized)
    if optimized:
        trainer = torch_training.OptimizedTrainer(model, train, max_nnz=torch_training.max_batch_nnz(matrix, 8),
                                                  anneal_steps=10, compile=False)
    else:
        trainer = torch_training.ReferenceTrainer(model, train, anneal_steps=10)
    first = trainer.run_epoch(matrix, np.arange(20))
    for _ in range(30):
        last = trainer.run_epoch(matrix, np.arange(20))
    assert np.isfinite(first) and np.isfinite(last) and last < first
    assert trainer.step_count == 31 * 3


@pytest.mark.parametrize("name", ["multvae", "hvae-bottom-up-vamp-gated"])
def test_library_sparse_input_path_matches_the_optimized_variant(name):
    """hvae_jax's sparse first layer (`batch_loss(..., sparse_input=...)`) against the PyTorch embedding-bag
    variant, fed the same per-interaction dropout mask and the same epsilons: loss and gradients agree (float32)."""
    from hvae_jax.models import sparse as jax_sparse

    case = get_case(name, "float32")
    rng = np.random.default_rng(11)
    user_rows, user_items = np.nonzero(case.x)  # row-major, items ascending: the order `sparse_rows` uses
    keep = (rng.random(len(user_rows)) < 1.0 - case.config.input_dropout).astype(np.float32)
    lengths = case.x.sum(axis=1)
    values = keep / (1.0 - case.config.input_dropout) / np.sqrt(lengths[user_rows])
    n_slots = jax_sparse.padded_slots(len(user_rows))
    pad = n_slots - len(user_rows)
    sparse_input = jax_sparse.SparseInput(
        jnp.asarray(np.concatenate([user_rows, np.zeros(pad, int)]), jnp.int32),
        jnp.asarray(np.concatenate([user_items, np.zeros(pad, int)]), jnp.int32),
        jnp.asarray(np.concatenate([values, np.zeros(pad)]), jnp.float32),
        jnp.asarray(len(user_rows), jnp.int32),
    )

    def sparse_batch_loss(p):
        # The first layer from the slots; the rest of the model and the likelihood per user, as batch_loss does.
        projections = project_first_layers(
            case.config, p, lambda branch, kernel: jax_sparse.gather_project(kernel, sparse_input, BATCH))
        x = case.jnp(case.x)

        def one_user(projections_u, key_u, x_u):
            noise = draw_noise(case.config, N_ITEMS, key=key_u, dropout=False)
            output = case.model.apply({"params": p}, None, None, noise, projections=projections_u)
            return UserTerms(-log_likelihood(case.config.likelihood, output.logits, x_u), output.kl)

        terms = jax.vmap(one_user)(projections, jax.random.split(case.key, BATCH), x)
        return combine_terms(p, TRAIN, terms, case.jnp(case.user_weights), case.jnp(case.betas))

    @jax.jit
    def jax_loss_and_grads(params):
        return jax.value_and_grad(sparse_batch_loss, has_aux=True)(params)

    (loss_expected, aux_expected), grads_expected = jax_loss_and_grads(case.params)

    module = jax_to_torch(case.params, torch_models.build_model(case.config, N_ITEMS, sparse_input=True))
    rows = sparse_rows(sp.csr_matrix(case.x), np.arange(BATCH))
    noise = torch_models.Noise(torch.from_numpy(keep), case.torch_noise().epsilons)
    loss_actual, aux_actual = torch_objectives.batch_loss(
        module, TRAIN, rows, None, case.tensor(case.user_weights), case.tensor(case.betas), noise)
    module.zero_grad()
    loss_actual.backward()
    _assert_close(loss_actual.detach(), loss_expected, 1e-4, "loss")
    _assert_close(aux_actual["kl"], aux_expected["kl"], 1e-4, "batch KL per level")
    _assert_trees_close(torch_to_jax(module, gradients=True), grads_expected, 1e-4, "gradient")


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_only_scoring_path_gives_the_same_logits(name):
    case = get_case(name, "float32")
    module = case.torch_module()
    x, side = case.tensor(case.x), case.tensor(case.side)
    for noise in (None, case.torch_noise()):
        full = module(x, side, noise)
        scores = module(x, side, noise, logits_only=True)
        torch.testing.assert_close(scores.logits, full.logits, rtol=0, atol=0)
        for mean_scores, mean_full in zip(scores.means, full.means):
            torch.testing.assert_close(mean_scores, mean_full, rtol=0, atol=0)
