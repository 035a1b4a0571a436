"""hvae_jax: hierarchical variational autoencoders for collaborative filtering, as pure JAX functions."""

from hvae_jax.configs import PRESETS, ModelConfig, Preset, TrainConfig
from hvae_jax.data.interactions import DataFormatError, Interactions, from_raw_ids
from hvae_jax.data.splits import EvalSet, Split, given_split, load_split, save_split, strong_generalization
from hvae_jax.data.synthetic import synthetic_interactions
from hvae_jax.evaluate import evaluate, make_eval_step, model_scorer, neural_eval_step
from hvae_jax.experiment import RunSettings, evaluate_workdir, run
from hvae_jax.metrics import ranking_metrics, summarize
from hvae_jax.models.hvae import HierarchicalVAE, MultDAE, Noise, Output, build_model, draw_noise, init_params
from hvae_jax.objectives import batch_loss, importance_weighted_bound, user_terms
from hvae_jax.train import FitResult, TrainState, fit

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "ModelConfig", "Preset", "TrainConfig",
    "DataFormatError", "Interactions", "from_raw_ids",
    "EvalSet", "Split", "given_split", "load_split", "save_split", "strong_generalization",
    "synthetic_interactions",
    "evaluate", "make_eval_step", "model_scorer", "neural_eval_step",
    "RunSettings", "evaluate_workdir", "run",
    "ranking_metrics", "summarize",
    "HierarchicalVAE", "MultDAE", "Noise", "Output", "build_model", "draw_noise", "init_params",
    "batch_loss", "importance_weighted_bound", "user_terms",
    "FitResult", "TrainState", "fit",
]
