"""Diagonal-Gaussian maths over a batch, term for term as `hvae_jax.models.gaussian` (there written for one user)."""

from __future__ import annotations

import math

import torch

_LOG_2PI = math.log(2.0 * math.pi)


def log_normal(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, exp(logvar)) summed over the last axis: -1/2 sum_d [log 2 pi + logvar + (z - mean)^2 / var]."""
    return -0.5 * torch.sum(_LOG_2PI + logvar + torch.square(z - mean) * torch.exp(-logvar), dim=-1)


def kl_normal(
    mean_q: torch.Tensor, logvar_q: torch.Tensor, mean_p: torch.Tensor, logvar_p: torch.Tensor
) -> torch.Tensor:
    """KL(N_q || N_p) = 1/2 sum_d [logvar_p - logvar_q + (var_q + (mean_q - mean_p)^2) / var_p - 1]."""
    return 0.5 * torch.sum(
        logvar_p - logvar_q + (torch.exp(logvar_q) + torch.square(mean_q - mean_p)) * torch.exp(-logvar_p) - 1.0,
        dim=-1,
    )


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) = 1/2 sum_d [-logvar + exp(logvar) + mean^2 - 1]."""
    return 0.5 * torch.sum(-logvar + torch.exp(logvar) + torch.square(mean) - 1.0, dim=-1)


def precision_weighted(
    mean_a: torch.Tensor, logvar_a: torch.Tensor, mean_b: torch.Tensor, logvar_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Ladder VAE's merge: var = 1 / (1/var_a + 1/var_b), mean = var (mean_a / var_a + mean_b / var_b)."""
    logvar = -torch.logaddexp(-logvar_a, -logvar_b)
    mean = torch.exp(logvar - logvar_a) * mean_a + torch.exp(logvar - logvar_b) * mean_b
    return mean, logvar


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, epsilon: torch.Tensor | None) -> torch.Tensor:
    """z = mean + exp(logvar / 2) * epsilon; z = mean when epsilon is None (evaluation)."""
    if epsilon is None:
        return mean
    return mean + torch.exp(0.5 * logvar) * epsilon
