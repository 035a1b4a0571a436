"""hvae_jax: hierarchical variational autoencoders for collaborative filtering, as pure JAX functions."""

from hvae_jax.configs import (
    MODELS,
    PRESETS,
    DAEConfig,
    EASEConfig,
    ModelConfig,
    PopularityConfig,
    Preset,
    TrainConfig,
    VAEConfig,
    model_config_from_dict,
)
from hvae_jax.data.interactions import DataFormatError, Interactions, from_raw_ids
from hvae_jax.data.splits import EvalSet, Split, given_split, load_split, save_split, strong_generalization
from hvae_jax.data.synthetic import synthetic_interactions
from hvae_jax.evaluate import evaluate, make_eval_step, model_scorer
from hvae_jax.experiment import RunSettings, evaluate_workdir, run
from hvae_jax.input_paths import DensePath, InputPath, ItemShardedPath, SparsePath, neural_eval_step
from hvae_jax.metrics import ranking_metrics, summarize
from hvae_jax.models import gaussian
from hvae_jax.models.hvae import HierarchicalVAE, MultDAE, Noise, Output, build_model, draw_noise, init_params
from hvae_jax.models.likelihoods import Likelihood, register_likelihood
from hvae_jax.models.priors import Prior, PriorContext, register_prior
from hvae_jax.objectives import importance_weighted_bound, user_terms
from hvae_jax.schedules import Phase, Schedule, register_schedule
from hvae_jax.train import FitResult, TrainSetup, TrainState, fit, fit_ensemble

__version__ = "0.2.0"

__all__ = [
    "MODELS", "PRESETS", "DAEConfig", "EASEConfig", "ModelConfig", "PopularityConfig", "Preset", "TrainConfig",
    "VAEConfig", "model_config_from_dict",
    "DataFormatError", "Interactions", "from_raw_ids",
    "EvalSet", "Split", "given_split", "load_split", "save_split", "strong_generalization",
    "synthetic_interactions",
    "evaluate", "make_eval_step", "model_scorer",
    "RunSettings", "evaluate_workdir", "run",
    "DensePath", "InputPath", "ItemShardedPath", "SparsePath", "neural_eval_step",
    "ranking_metrics", "summarize",
    "gaussian",
    "HierarchicalVAE", "MultDAE", "Noise", "Output", "build_model", "draw_noise", "init_params",
    "Likelihood", "register_likelihood", "Prior", "PriorContext", "register_prior",
    "importance_weighted_bound", "user_terms",
    "Phase", "Schedule", "register_schedule",
    "FitResult", "TrainSetup", "TrainState", "fit", "fit_ensemble",
]
