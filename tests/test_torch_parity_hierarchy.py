"""Parity of the PyTorch reference with the JAX library for the published hierarchies: Kim & Suh's faithful H+Vamp
(`configs.KIMSUH_HVAMP`: separate input branches with their own dropout, two-layer gated stacks, clipped
log-variances, one-sample KL at every level, a VampPrior whose unnormalised pseudo-inputs pass the input dropout, He
init) and RecVAE (`configs.RECVAE`: densely connected encoder with layer norms, linear decoder, composite prior on
the encoder's snapshot, per-user KL weight gamma |x_u|, PyTorch init).

Both sides get identical parameters (transferred from Flax) and identical noise: the per-user dropout masks and
epsilons the library draws from each user's key, and the pseudo-inputs' dropout mask drawn from the key the training
path hands `prepare_prior` (`input_paths.PSEUDO_INPUT_STREAM`), recomputed here and given to PyTorch. Then logits,
each ELBO term, the batch loss, the gradients (1e-4 relative in float32, 1e-8 in float64) and the optimizer's steps
(AdamNormGrad; RecVAE's alternating encoder and decoder optimizers) must agree.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

torch = pytest.importorskip("torch")

from test_torch_parity import _assert_close, _assert_trees_close, _to_torch, _torch_dtype  # noqa: E402

from benchmarks.torch_reference import models as torch_models  # noqa: E402
from benchmarks.torch_reference import objectives as torch_objectives  # noqa: E402
from benchmarks.torch_reference import optimizers as torch_optimizers  # noqa: E402
from benchmarks.torch_reference import training as torch_training  # noqa: E402
from benchmarks.torch_reference.training import sparse_rows  # noqa: E402
from benchmarks.torch_reference.transfer import flax_path, jax_to_torch, torch_to_jax  # noqa: E402
from hvae_jax.configs import KIMSUH_HVAMP, KIMSUH_TRAIN, RECVAE, RECVAE_TRAIN, TrainConfig, VAEConfig  # noqa: E402
from hvae_jax.data.batches import to_device  # noqa: E402
from hvae_jax.input_paths import PSEUDO_INPUT_STREAM  # noqa: E402
from hvae_jax.models import keep_masks  # noqa: E402
from hvae_jax.models.hvae import build_model, draw_noise, init_params, input_branches, parameter_group  # noqa: E402
from hvae_jax.models.likelihoods import build_likelihood  # noqa: E402
from hvae_jax.objectives import UserTerms, combine_terms, prior_context  # noqa: E402
from hvae_jax.schedules import Phase  # noqa: E402
from hvae_jax.train import TrainSetup, TrainState  # noqa: E402

N_ITEMS = 30
BATCH = 5
N_SIDE = 3

HVAMP = dataclasses.replace(KIMSUH_HVAMP, latents=(6, 4), hidden=8, n_pseudo_inputs=5)
CONFIGS = {
    "hvamp": (HVAMP, 0),
    "hvamp-bernoulli": (dataclasses.replace(HVAMP, likelihood="bernoulli"), 0),
    # Separate branches at other depths: three levels through three-layer stacks (the middle level's path embeds x
    # and z_3 separately), with side features; and one layer per network (each path a single gated layer).
    "hvamp-3-levels-3-layers-side": (
        dataclasses.replace(HVAMP, latents=(6, 5, 4), encoder_layers=3, decoder_layers=3), N_SIDE),
    "hvamp-1-layer": (dataclasses.replace(HVAMP, encoder_layers=1, decoder_layers=1), 0),
    "recvae": (dataclasses.replace(RECVAE, latents=(4,), hidden=8), 0),
}
# The methods' own training settings at this batch size; RecVAE's gamma raised so the KL weighs in the gradients.
TRAINS = {
    "hvamp": TrainConfig(**dict(KIMSUH_TRAIN, batch_size=BATCH, input_path="dense")),
    "recvae": TrainConfig(**dict(RECVAE_TRAIN, batch_size=BATCH, input_path="dense", kl_weight_per_item=0.05)),
}


# Each test program runs once or twice: XLA's backend optimisations would cost more compile time than they save.
fast_compiling_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})


def train_of(name: str) -> TrainConfig:
    return TRAINS["recvae" if name.startswith("recvae") else "hvamp"]


@functools.cache
def get_case(name: str, dtype_name: str) -> Case:
    return Case(name, jnp.dtype(dtype_name))


class Case:
    """One configuration's shared inputs: the Flax model, random parameters (and a different snapshot for the
    composite prior), a batch whose last row is an empty padding row, and the keys of the update's noise."""

    def __init__(self, name: str, dtype):
        self.name = name
        self.config, self.n_side = CONFIGS[name]
        self.train = train_of(name)
        self.dtype = dtype
        self.model = build_model(self.config, N_ITEMS)
        # Random parameters of the Flax model's shapes (initialising them op by op would dominate the test's time),
        # at scales where every term matters: biases, layer-norm scales and pseudo-inputs as much as weights.
        shapes = jax.eval_shape(lambda key: init_params(self.model, self.n_side, key=key), jax.random.key(0))
        rng = np.random.default_rng(1)
        self.params = jax.tree_util.tree_map_with_path(lambda path, leaf: jnp.asarray(_draw(path, leaf, rng), dtype),
                                                       shapes)
        self.snapshot = None
        if self.config.prior == "composite":
            self.snapshot = jax.tree.map(lambda leaf: leaf + jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), dtype),
                                         self.params)
        self.x = (rng.random((BATCH, N_ITEMS)) < 0.3).astype(np.float64)
        self.x[0, :3] = 1.0
        self.x[-1] = 0.0  # a padding row: empty, weight 0
        self.user_weights = np.array([1.0] * (BATCH - 1) + [0.0])
        self.side = rng.normal(size=(BATCH, self.n_side)) if self.n_side else None
        self.betas = np.array([0.3 * (1.0 + 0.5 * level) for level in range(self.config.n_levels)])
        gamma = self.train.kl_weight_per_item
        self.kl_weights = gamma * self.x.sum(axis=1) if gamma > 0 else None
        self.key = jax.random.key(7)
        self.prior_key = jax.random.fold_in(self.key, PSEUDO_INPUT_STREAM)
        self.jax_results = None

    def jnp(self, array):
        return None if array is None else jnp.asarray(array, self.dtype)

    def tensor(self, array):
        return None if array is None else _to_torch(array, self.dtype)

    def torch_module(self, params=None, *, sparse_input: bool = False):
        module = torch_models.build_model(self.config, N_ITEMS, self.n_side, sparse_input=sparse_input)
        return jax_to_torch(self.params if params is None else params, module.to(_torch_dtype(self.dtype)))

    def torch_snapshot(self):
        return None if self.snapshot is None else self.torch_module(self.snapshot).requires_grad_(False)

    def torch_noise(self) -> torch_models.Noise:
        """The noise the library draws for this batch from `key` (users) and `prior_key` (pseudo-inputs)."""
        return torch_noise_of(self.config, self.key, self.prior_key, self.dtype)


def _draw(path, leaf, rng) -> np.ndarray:
    name = getattr(path[-1], "key", "")
    if name == "kernel":
        return rng.normal(0.0, 1.0 / np.sqrt(leaf.shape[0]), leaf.shape)
    if name == "scale":
        return 1.0 + rng.normal(0.0, 0.1, leaf.shape)
    if name == "pseudo_inputs":  # about a third of them clipped at 0 by the prior
        return rng.normal(0.05, 0.1, leaf.shape)
    return rng.normal(0.0, 0.1, leaf.shape)


def jax_user_noise(config, key, *, dropout: bool = True):
    """Per-user noise as `objectives.per_user_terms` draws it from the update's key: [batch, ...] arrays."""
    return jax.vmap(lambda k: draw_noise(config, N_ITEMS, key=k, dropout=dropout))(jax.random.split(key, BATCH))


def pseudo_input_mask(config, prior_key):
    """The keep mask `VampPrior.prepare` draws from its key (`priors.VampPrior.prepare`), or None."""
    if config.prior != "vamp" or not config.pseudo_input_dropout or prior_key is None:
        return None
    keep = keep_masks.draw(prior_key, 1.0 - config.input_dropout, (config.n_pseudo_inputs, N_ITEMS))
    return keep.astype(jnp.float32)


_jitted_user_noise = fast_compiling_jit(jax_user_noise, static_argnums=0, static_argnames="dropout")


def torch_noise_of(config, key, prior_key, dtype, *, dropout: bool = True) -> torch_models.Noise:
    noise = _jitted_user_noise(config, key, dropout=dropout)
    keep_mask = None
    if noise.keep_mask is not None:
        keep_mask = np.asarray(noise.keep_mask)
        if len(input_branches(config)) > 1:
            keep_mask = np.moveaxis(keep_mask, 1, 0)  # [batch, branch, items] -> the reference's [branch, batch, items]
        keep_mask = _to_torch(keep_mask, dtype)
    epsilons = tuple(_to_torch(e, dtype) for e in noise.epsilons)
    pseudo = pseudo_input_mask(config, prior_key if dropout else None)
    return torch_models.Noise(keep_mask, epsilons, None if pseudo is None else _to_torch(pseudo, dtype))


def _jax_results(case: Case) -> dict:
    """The batch loss as the training path computes it (the prior prepared once from the pseudo-input key, each
    user's terms with the library's noise and the snapshot's posterior, `combine_terms` with the per-user KL
    weights), its gradient, and the forward pass's outputs on the way, in one compiled call."""
    if case.jax_results is not None:
        return case.jax_results
    model, config = case.model, case.config
    likelihood = build_likelihood(config.likelihood)

    @fast_compiling_jit
    def everything(params, snapshot, x, side, user_weights, betas, kl_weights, key, prior_key):
        noise = jax_user_noise(config, key)  # as `objectives.user_terms` draws it from each user's key

        def loss(p):
            prior_state = model.apply({"params": p}, prior_key, method="prepare_prior")

            def one_user(x_u, side_u, noise_u):
                output = model.apply({"params": p}, x_u, side_u, noise_u, prior_state=prior_state,
                                     prior_context=prior_context(model, snapshot, x_u, side_u))
                return output, UserTerms(-likelihood.log_prob(output.logits, x_u), output.kl)

            outputs, terms = jax.vmap(one_user, in_axes=(0, None if side is None else 0, 0))(x, side, noise)
            value, aux = combine_terms(p, case.train, terms, user_weights, betas, kl_weights)
            return value, (aux, outputs, terms.nll, prior_state)

        (value, (aux, output, nll, prior_state)), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return {"output": output, "prior_state": prior_state, "nll": nll, "loss": value, "aux": aux, "grads": grads}

    case.jax_results = everything(case.params, case.snapshot, case.jnp(case.x), case.jnp(case.side),
                                  case.jnp(case.user_weights), case.jnp(case.betas), case.jnp(case.kl_weights),
                                  case.key, case.prior_key)
    return case.jax_results


def _torch_loss(case: Case, module, noise=None):
    return torch_objectives.batch_loss(
        module, case.train, case.tensor(case.x), case.tensor(case.side), case.tensor(case.user_weights),
        case.tensor(case.betas), case.torch_noise() if noise is None else noise,
        kl_weights=case.tensor(case.kl_weights), snapshot=case.torch_snapshot(),
    )


def _check_parity(case: Case, rtol: float):
    expected = _jax_results(case)
    module = case.torch_module()
    noise = case.torch_noise()
    x, side = case.tensor(case.x), case.tensor(case.side)
    if case.config.prior == "vamp":
        means, logvars = module.prepare_prior(noise.pseudo_keep_mask)
        _assert_close(means.detach(), expected["prior_state"][0], rtol, "VampPrior component means")
        _assert_close(logvars.detach(), expected["prior_state"][1], rtol, "VampPrior component log-variances")
    previous = torch_objectives.prior_context(case.torch_snapshot(), x, side)
    actual = module(x, side, noise, previous_posterior=previous)
    _assert_close(actual.logits.detach(), expected["output"].logits, rtol, "logits")
    for field in ("kl", "log_q", "log_p"):
        _assert_close(getattr(actual, field).detach(), getattr(expected["output"], field), rtol, field)
    for level, (mean_actual, mean_expected) in enumerate(zip(actual.means, expected["output"].means)):
        _assert_close(mean_actual.detach(), mean_expected, rtol, f"posterior mean of level {level}")
    nll = -torch_objectives.log_likelihood(case.config.likelihood, actual.logits, x)
    _assert_close(nll.detach(), expected["nll"], rtol, "per-user nll")

    loss, aux = _torch_loss(case, module, noise)
    module.zero_grad()
    loss.backward()
    _assert_close(loss.detach(), expected["loss"], rtol, "loss")
    _assert_close(aux["nll"], expected["aux"]["nll"], rtol, "batch nll")
    _assert_close(aux["kl"], expected["aux"]["kl"], rtol, "batch KL per level")
    _assert_trees_close(torch_to_jax(module, gradients=True), expected["grads"], rtol, "gradient")


@pytest.mark.parametrize("name", CONFIGS)
def test_transfer_round_trip_and_same_parameter_set(name):
    case = get_case(name, "float32")
    back = torch_to_jax(case.torch_module())
    assert jax.tree.structure(back) == jax.tree.structure(case.params)
    jax.tree.map(np.testing.assert_array_equal, back, case.params)
    fresh = torch_to_jax(torch_models.build_model(case.config, N_ITEMS, case.n_side))
    assert jax.tree.map(jnp.shape, fresh) == jax.tree.map(jnp.shape, case.params)


@pytest.mark.parametrize("name", CONFIGS)
def test_parity_float32(name):
    _check_parity(get_case(name, "float32"), rtol=1e-4)


@pytest.mark.parametrize("name", ["hvamp", "hvamp-bernoulli", "recvae"])
def test_parity_float64(name):
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        _check_parity(Case(name, jnp.dtype("float64")), rtol=1e-8)


@pytest.mark.parametrize("init", ["he", "torch", "glorot"])
def test_fresh_modules_follow_the_library_initialisation(init):
    """A freshly built PyTorch module draws every parameter from the distribution the Flax model draws it from
    (`hvae_jax.models.layers.initializers`, `priors.VampPrior.init`, flax's LayerNorm): per tensor, the standard
    deviation within sampling error of a large sample of the library's initializer, and no entry outside its range."""
    from hvae_jax.models.layers import initializers

    base = {"he": HVAMP, "torch": CONFIGS["recvae"][0],
            "glorot": dataclasses.replace(VAEConfig(latents=(8, 4), prior="vamp", n_pseudo_inputs=5), hidden=8)}[init]
    config = dataclasses.replace(base, hidden=64, latents=tuple(4 * d for d in base.latents), n_pseudo_inputs=20)
    assert config.init == init
    torch.manual_seed(0)
    flat = {jax.tree_util.keystr(path): (path, np.asarray(leaf)) for path, leaf in
            jax.tree_util.tree_leaves_with_path(torch_to_jax(torch_models.build_model(config, 400)))}
    samplers, checks = {}, []
    for name, (path, actual) in flat.items():
        leaf_name = path[-1].key
        if leaf_name in ("scale", "bias") and "norm_" in str(path[-2].key):
            np.testing.assert_array_equal(actual, np.ones_like(actual) if leaf_name == "scale" else 0.0 * actual)
            continue
        fan_in = None if leaf_name == "pseudo_inputs" else flat[name.replace("['bias']", "['kernel']")][1].shape[0]
        distribution = f"{leaf_name} {fan_in} {actual.shape}"
        if leaf_name == "pseudo_inputs":
            samplers[distribution] = lambda key, shape=actual.shape: 0.05 + 0.01 * jax.random.normal(key, shape)
        else:
            kernel_init, bias_init = initializers(init, fan_in)
            samplers[distribution] = functools.partial(kernel_init if leaf_name == "kernel" else bias_init,
                                                       shape=actual.shape, dtype=jnp.float32)
        checks.append((name, actual, distribution))
    # 32 draws of each distinct distribution, in one program (drawing op by op is slow).
    references = fast_compiling_jit(lambda keys: {d: jax.vmap(f)(keys) for d, f in samplers.items()})(
        jax.random.split(jax.random.key(3), 32))
    for name, actual, distribution in checks:
        reference = np.asarray(references[distribution])
        standard_error = 1.0 / np.sqrt(2.0 * actual.size)
        assert abs(actual.std() / reference.std() - 1.0) < 5 * standard_error + 0.01, f"{name}: spread"
        assert abs(actual.mean() - reference.mean()) < 5 * reference.std() / np.sqrt(actual.size) + 1e-6, name
        assert np.abs(actual).max() <= 1.05 * np.abs(reference).max(), f"{name}: range"


# ----------------------------------------------------------------------------------------------------------------
# Optimizer steps: the library's own update (`TrainSetup.make_update`: training path, grouped optimizer, schedule)
# against the reference's optimizers fed the same noise.


def _library_update(case: Case, phase: Phase):
    """(setup, jitted update, initial state, rows, device matrix) for the case's batch as a training matrix, its
    last row padding (-1)."""
    matrix = sp.csr_matrix(case.x)
    setup = TrainSetup.build(case.config, case.train, matrix)
    # The case's parameters in place of `setup.init_state()`'s (whose op-by-op initialisation would be the slow part).
    state = TrainState(jnp.zeros((), jnp.int32), case.params, setup.optimizer.init(case.params), case.snapshot)
    rows = jnp.asarray(list(range(BATCH - 1)) + [-1], jnp.int32)
    return setup, fast_compiling_jit(setup.make_update(phase)), state, rows, to_device(matrix)


def _torch_step_loss(case: Case, setup, module, snapshot, step: int, phase: Phase):
    """The reference's loss of update `step` with the noise `make_update` draws (its key is fold_in(train, step))."""
    key = jax.random.fold_in(setup.keys.train, step)
    noise = torch_noise_of(case.config, key, jax.random.fold_in(key, PSEUDO_INPUT_STREAM), case.dtype,
                           dropout=phase.dropout)
    betas = torch_objectives.beta_per_level(case.train, case.config, step, setup.schedule.anneal_steps,
                                            steps_per_epoch=setup.steps_per_epoch)
    np.testing.assert_allclose(betas.numpy(), np.asarray(setup.schedule.betas(jnp.asarray(step))), rtol=1e-6)
    x = case.tensor(case.x)
    return torch_objectives.batch_loss(module, case.train, x, None, case.tensor(case.user_weights), betas, noise,
                                       kl_weights=torch_objectives.per_user_kl_weights(case.train, x),
                                       snapshot=snapshot)


def _updates(after, before):
    return jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), after, before)


@pytest.mark.usefixtures("standard_dtype_promotion")  # optax's Adam (tests/conftest.py)
def test_two_adam_normgrad_steps_leave_the_same_parameters():
    """Kim & Suh's optimizer: two updates (the second mixes two normalised gradients of different norms) through
    the library's training path and grouped optimizer, and through the reference's AdamNormGrad."""
    case = get_case("hvamp", "float32")
    assert case.train.optimizer == "adam_normgrad"
    phase = Phase("joint")
    setup, update, state, rows, matrix = _library_update(case, phase)
    for _ in range(2):
        state, _ = update(state, rows, setup.keys.train, matrix, None)

    def torch_steps(optimizer_class):
        module = case.torch_module()
        optimizer = optimizer_class(module.parameters(), lr=case.train.learning_rate)
        for step in range(2):
            loss, _ = _torch_step_loss(case, setup, module, None, step, phase)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return torch_to_jax(module)

    assert isinstance(torch_optimizers.make_optimizer(case.train, case.torch_module().parameters()),
                      torch_optimizers.AdamNormGrad)
    actual = torch_steps(torch_optimizers.AdamNormGrad)
    _assert_trees_close(actual, state.params, 1e-4, "parameters after two AdamNormGrad steps")
    # The changes themselves (about lr each) agree to 1e-2: the second step's first moment nearly cancels for some
    # entries, which magnifies float32 rounding of the gradients there.
    _assert_trees_close(_updates(actual, case.params), _updates(state.params, case.params), 1e-2,
                        "AdamNormGrad's change of the parameters")
    # The comparison can fail: plain Adam leaves measurably different parameters.
    with pytest.raises(AssertionError):
        _assert_trees_close(torch_steps(torch.optim.Adam), state.params, 1e-4, "plain Adam")


@pytest.mark.usefixtures("standard_dtype_promotion")  # optax's Adam (tests/conftest.py)
def test_recvae_alternating_steps_match_and_a_decoder_step_leaves_the_encoder_untouched():
    """An encoder update (dropout on, the encoder's optimizer) then a decoder update (dropout off, the decoder's
    optimizer), with the composite prior on the snapshot: the same parameters on both sides, and on both sides the
    decoder update leaves the encoder's parameters and optimizer state bit-identical (and vice versa)."""
    case = get_case("recvae", "float32")
    phases = {"encoder": Phase("encoder", ("encoder",), dropout=True),
              "decoder": Phase("decoder", ("decoder",), dropout=False)}
    setup, encoder_update, state_0, rows, matrix = _library_update(case, phases["encoder"])
    decoder_update = fast_compiling_jit(setup.make_update(phases["decoder"]))
    state_1, _ = encoder_update(state_0, rows, setup.keys.train, matrix, None)
    state_2, _ = decoder_update(state_1, rows, setup.keys.train, matrix, None)

    def group(params, name):
        return {key: value for key, value in params.items() if key.startswith("decoder") == (name == "decoder")}

    jax.tree.map(np.testing.assert_array_equal, group(state_1.params, "decoder"), group(state_0.params, "decoder"))
    jax.tree.map(np.testing.assert_array_equal, group(state_2.params, "encoder"), group(state_1.params, "encoder"))
    jax.tree.map(np.testing.assert_array_equal, state_2.opt_state["encoder"], state_1.opt_state["encoder"])

    module, snapshot = case.torch_module(), case.torch_snapshot()
    groups = torch_optimizers.parameter_groups(module)
    assert set(groups) == {"encoder", "decoder"}
    optimizers = {name: torch_optimizers.make_optimizer(case.train, params) for name, params in groups.items()}
    for step, (name, expected) in enumerate([("encoder", state_1), ("decoder", state_2)]):
        before = {key: value.clone() for key, value in module.state_dict().items()}
        frozen = "decoder" if name == "encoder" else "encoder"
        frozen_optimizer_state = copy.deepcopy(optimizers[frozen].state_dict())
        loss, _ = _torch_step_loss(case, setup, module, snapshot, step, phases[name])
        for optimizer in optimizers.values():
            optimizer.zero_grad()
        loss.backward()
        optimizers[name].step()
        _assert_trees_close(torch_to_jax(module), expected.params, 1e-4, f"parameters after the {name} step")
        for parameter_name, value in module.state_dict().items():
            if parameter_group(case.config, flax_path(parameter_name)) == frozen:
                torch.testing.assert_close(value, before[parameter_name], rtol=0, atol=0)
        _assert_state_dicts_equal(optimizers[frozen].state_dict(), frozen_optimizer_state)


def _assert_state_dicts_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for key in actual:
        if isinstance(actual[key], dict):
            _assert_state_dicts_equal(actual[key], expected[key])
        elif isinstance(actual[key], torch.Tensor):
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)
        else:
            assert actual[key] == expected[key], key


# ----------------------------------------------------------------------------------------------------------------
# The optimised variant: an embedding bag as every input branch's first layer.


@pytest.mark.parametrize("name", ["hvamp", "hvamp-3-levels-3-layers-side", "recvae"])
def test_sparse_first_layers_match_the_dense_reference(name):
    """Embedding-bag first layers (one per input branch, each with its own per-interaction dropout mask), the sparse
    likelihood and per-user KL weights equal the dense reference in float64; the pseudo-inputs and the snapshot's
    posterior go through the same modules."""
    case = get_case(name, "float32")
    to64 = lambda tensor: None if tensor is None else tensor.double()  # noqa: E731
    dense_module = case.torch_module().double()
    sparse_module = case.torch_module(sparse_input=True).double()
    snapshots = {sparse: None if case.snapshot is None else
                 case.torch_module(case.snapshot, sparse_input=sparse).double().requires_grad_(False)
                 for sparse in (False, True)}
    rows = sparse_rows(sp.csr_matrix(case.x), np.arange(BATCH), pad_to_nnz=int(case.x.sum()) + 5)
    rows = rows._replace(values=rows.values.double())
    noise = case.torch_noise()
    noise = torch_models.Noise(to64(noise.keep_mask), tuple(e.double() for e in noise.epsilons),
                               to64(noise.pseudo_keep_mask))
    sparse_noise = noise._replace(keep_mask=noise.keep_mask[..., rows.rows, rows.items])
    x = torch.from_numpy(case.x)
    side = None if case.side is None else torch.from_numpy(case.side)
    weights, betas = torch.from_numpy(case.user_weights), torch.from_numpy(case.betas)

    losses = {}
    for sparse, module, batch, batch_noise in ((False, dense_module, x, noise), (True, sparse_module, rows,
                                                                                  sparse_noise)):
        losses[sparse] = torch_objectives.batch_loss(
            module, case.train, batch, side, weights, betas, batch_noise,
            kl_weights=torch_objectives.per_user_kl_weights(case.train, batch), snapshot=snapshots[sparse])
        losses[sparse][0].backward()
    torch.testing.assert_close(losses[True][0], losses[False][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(losses[True][1]["kl"], losses[False][1]["kl"], rtol=1e-10, atol=1e-10)
    _assert_trees_close(torch_to_jax(sparse_module, gradients=True), torch_to_jax(dense_module, gradients=True),
                        1e-8, "sparse vs dense gradient")
    scores = sparse_module(rows, side, logits_only=True).logits
    torch.testing.assert_close(scores, dense_module(x, side, logits_only=True).logits, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# Trainers and schedules.


@pytest.mark.parametrize("optimized", [False, True], ids=["reference", "optimized-eager"])
@pytest.mark.parametrize("name", ["hvamp", "recvae"])
def test_trainers_follow_the_method_schedules(name, optimized):
    """Both trainers run the methods' own settings (the optimised one eagerly): H+Vamp with AdamNormGrad and the
    warm-up by epoch; RecVAE alternating 3 encoder epochs and 1 decoder epoch with one optimizer each, the snapshot
    refreshed as each cycle starts, and a decoder epoch leaving the encoder and its optimizer state untouched."""
    torch.manual_seed(0)
    config = CONFIGS[name][0]
    train = dataclasses.replace(train_of(name), batch_size=4, learning_rate=1e-2)
    rng = np.random.default_rng(0)
    matrix = sp.csr_matrix((rng.random((12, N_ITEMS)) < 0.25).astype(np.float32))
    model = torch_models.build_model(config, N_ITEMS, sparse_input=optimized)
    if optimized:
        trainer = torch_training.OptimizedTrainer(model, train, max_nnz=torch_training.max_batch_nnz(matrix, 4),
                                                  anneal_steps=None, compile=False)
    else:
        trainer = torch_training.ReferenceTrainer(model, train, anneal_steps=None)
    order = np.arange(12)
    if name == "hvamp":
        assert isinstance(trainer.optimizer, torch_optimizers.AdamNormGrad)
        losses = [trainer.run_epoch(matrix, order) for _ in range(3)]
        assert np.all(np.isfinite(losses)) and trainer.step_count == 9 and trainer.phase.name == "joint"
        # Kim & Suh's warm-up: beta rises by epoch (the third of 100 to the cap 0.3).
        np.testing.assert_allclose(trainer._betas().numpy(), [0.3 * 3 / 100] * 2, rtol=1e-6)
        return

    assert set(trainer.optimizers) == {"encoder", "decoder"}
    encoder_names = [n for n, _ in model.named_parameters() if not n.startswith("decoder")]
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    phases, losses = [], []
    for _ in range(3):
        losses.append(trainer.run_epoch(matrix, order))
        phases.append(trainer.phase.name)
    encoder_after_cycle = {n: p.detach().clone() for n, p in model.named_parameters() if n in encoder_names}
    encoder_state = copy.deepcopy(trainer.optimizers["encoder"].state_dict())
    losses.append(trainer.run_epoch(matrix, order))
    phases.append(trainer.phase.name)
    assert phases == ["encoder"] * 3 + ["decoder"]
    for n, p in model.named_parameters():
        if n in encoder_names:
            torch.testing.assert_close(p.detach(), encoder_after_cycle[n], rtol=0, atol=0)
        else:
            assert not torch.equal(p.detach(), initial[n]), f"{n} did not move in the decoder epoch"
    _assert_state_dicts_equal(trainer.optimizers["encoder"].state_dict(), encoder_state)
    # The snapshot is the model as the cycle started; the next cycle refreshes it.
    snapshot = dict(trainer.snapshot.named_parameters())
    for n in encoder_names:
        torch.testing.assert_close(snapshot[n].detach(), initial[n], rtol=0, atol=0)
    trainer.begin_epoch(5)
    for n in encoder_names:
        torch.testing.assert_close(snapshot[n].detach(), encoder_after_cycle[n], rtol=0, atol=0)
    assert np.all(np.isfinite(losses))


@pytest.mark.parametrize("settings", [
    {"total_anneal_steps": 40}, {"anneal_epochs": 5, "beta_cap": 0.3}, {"kl_weight_per_item": 0.005},
    {"total_anneal_steps": 40, "beta_per_level": (1.0, 0.5)},
], ids=["liang", "kim-suh-warm-up", "recvae-per-user", "per-level"])
def test_reference_betas_follow_the_library_schedule(settings):
    from hvae_jax.schedules import build_schedule

    train = TrainConfig(**settings)
    schedule = build_schedule(train, n_levels=2, steps_per_epoch=7)
    for step in (0, 6, 7, 20, 100):
        actual = torch_objectives.beta_per_level(train, HVAMP, step, schedule.anneal_steps, steps_per_epoch=7)
        np.testing.assert_allclose(actual.numpy(), np.asarray(schedule.betas(jnp.asarray(step))), rtol=1e-6)
