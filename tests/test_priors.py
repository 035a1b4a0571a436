"""Priors as a protocol (hvae_jax/models/priors.py): RecVAE's composite prior against a direct numpy mixture, the
VampPrior's per-batch preparation shared by the users of a batch, and a prior written outside the package (the
README's example, run exactly as printed there) trained through `fit`."""

from __future__ import annotations

import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hvae_jax as hv
from hvae_jax.configs import RECVAE, TrainConfig, VAEConfig
from hvae_jax.train import check_registered
from hvae_jax.models.priors import PRIORS, CompositePrior, PriorContext, StandardNormal, VampPrior, build_prior

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def numpy_composite_log_density(z, old_mean, old_logvar, weights=(3 / 20, 3 / 4, 1 / 10), wide_logvar=10.0):
    """sum_d log sum_k w_k N(z_d; m_kd, v_kd), one dimension at a time, in float64."""
    total = 0.0
    for d in range(len(z)):
        density = 0.0
        for weight, mean, logvar in ((weights[0], 0.0, 0.0), (weights[1], old_mean[d], old_logvar[d]),
                                     (weights[2], 0.0, wide_logvar)):
            variance = math.exp(logvar)
            density += weight * math.exp(-0.5 * (z[d] - mean) ** 2 / variance) / math.sqrt(2 * math.pi * variance)
        total += math.log(density)
    return total


def test_composite_prior_log_density_equals_the_numpy_mixture():
    rng = np.random.default_rng(0)
    prior = build_prior(RECVAE)
    assert isinstance(prior, CompositePrior) and prior.needs_previous_posterior
    for _ in range(5):
        z = rng.normal(0.0, 2.0, 7)
        old_mean, old_logvar = rng.normal(0.0, 1.0, 7), rng.normal(-1.0, 1.0, 7)
        context = PriorContext((jnp.asarray(old_mean, jnp.float32), jnp.asarray(old_logvar, jnp.float32)))
        got = float(prior.log_prob(None, jnp.asarray(z, jnp.float32), context))
        np.testing.assert_allclose(got, numpy_composite_log_density(z, old_mean, old_logvar), rtol=1e-5)


def test_composite_prior_needs_the_snapshot_posterior():
    with pytest.raises(ValueError, match="previous encoder"):
        build_prior(RECVAE).log_prob(None, jnp.zeros(3), PriorContext())


def test_standard_normal_kl_is_the_closed_form_and_the_log_density_the_gaussian():
    prior = StandardNormal()
    mean, logvar = jnp.asarray([0.3, -1.2]), jnp.asarray([0.1, -0.7])
    expected_kl = 0.5 * np.sum(-np.asarray(logvar) + np.exp(np.asarray(logvar)) + np.asarray(mean) ** 2 - 1.0)
    np.testing.assert_allclose(float(prior.kl(None, mean, logvar, PriorContext())), expected_kl, rtol=1e-6)
    z = np.asarray([0.5, -2.0])
    np.testing.assert_allclose(float(prior.log_prob(None, jnp.asarray(z), PriorContext())),
                               -0.5 * np.sum(z**2 + math.log(2 * math.pi)), rtol=1e-6)


def test_vamp_prior_dropout_uses_one_mask_for_the_batch_and_none_without_a_key():
    prior = VampPrior(4, normalize=False, dropout_rate=0.5)
    params = {"pseudo_inputs": jnp.full((4, 50), 0.5)}
    seen = []
    prior.prepare(params, lambda u: (seen.append(u), (u[:, :2], u[:, :2]))[1], key=jax.random.key(0))
    prior.prepare(params, lambda u: (seen.append(u), (u[:, :2], u[:, :2]))[1], key=None)
    dropped, plain = (np.asarray(u) for u in seen)
    np.testing.assert_array_equal(plain, np.full((4, 50), 0.5))  # no normalisation, no dropout
    kept = dropped > 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(dropped[kept], 1.0)  # inverted dropout: 0.5 / (1 - 0.5)


def test_a_registered_prior_is_reachable_by_name_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown prior"):
        check_registered(VAEConfig(prior="no-such-prior"), TrainConfig())
    with pytest.raises(ValueError, match="unknown likelihood"):
        check_registered(VAEConfig(likelihood="poisson"), TrainConfig())
    with pytest.raises(ValueError, match="unknown schedule"):
        check_registered(VAEConfig(), TrainConfig(schedule="no-such-schedule"))
    assert {"standard", "vamp", "composite"} <= set(PRIORS)


def readme_block(marker: str) -> str:
    """The python block of README.md that follows the HTML comment `<!-- marker -->`."""
    text = README.read_text()
    match = re.search(rf"<!-- {re.escape(marker)} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README.md has no python block after <!-- {marker} -->"
    return match.group(1)


@pytest.mark.usefixtures("standard_dtype_promotion")
def test_the_readme_from_python_example_trains_and_evaluates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_block("example: from Python"), "README.md", "exec"), namespace)  # noqa: S102
    ndcg, se = (float(value) for value in capsys.readouterr().out.split())
    assert 0 < ndcg <= 1 and 0 < se < ndcg
    assert namespace["test"]["ndcg@100"] == pytest.approx(ndcg)
    assert len(namespace["result"].history) == 5 and (tmp_path / "runs" / "py" / "metrics.jsonl").exists()


@pytest.mark.usefixtures("standard_dtype_promotion")
def test_the_readme_prior_example_runs_through_fit(tmp_path, monkeypatch):
    code = readme_block("example: a new prior")
    assert len(code.strip().splitlines()) < 60
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    result = namespace["result"]
    assert result.history and all(np.isfinite(row["loss"]) for row in result.history)
    params = result.best_params["prior"]
    assert set(params) == {"logits", "means", "logvars"}
    # The mixture's parameters were trained: they moved from their initial values.
    setup = hv.TrainSetup.build(namespace["config"], namespace["train"], namespace["split"].train)
    initial = setup.init_state().params["prior"]
    for name in ("logits", "means", "logvars"):
        assert float(jnp.max(jnp.abs(params[name] - initial[name]))) > 1e-4, name
    assert 0.0 < result.best_validation["ndcg@100"] <= 1.0
    PRIORS.pop("mixture", None)
