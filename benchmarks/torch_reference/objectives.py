"""The training objective in PyTorch, term for term as `hvae_jax.objectives`: per-user negative log-likelihood and
KL per level, their weighted batch mean, beta-weighted KL with free bits, and L2 weight decay on weight matrices.

loss = mean_u nll_u + sum_l beta_l max(mean_u KL_ul, free_bits) + weight_decay * ||W||^2
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_reference.layers import SparseRows
from benchmarks.torch_reference.models import Noise
from hvae_jax.configs import ModelConfig, TrainConfig


def _row_sums(x: SparseRows, per_entry: torch.Tensor) -> torch.Tensor:
    """[batch] sum of `per_entry` ([nnz]) over each row's entries."""
    return torch.zeros(x.batch_size, dtype=per_entry.dtype, device=per_entry.device).index_add(0, x.rows, per_entry)


def log_likelihood(kind: str, logits: torch.Tensor, x: torch.Tensor | SparseRows) -> torch.Tensor:
    """[batch] log p(x | z) up to parameter-free constants; `x` dense [batch, n_items] or `SparseRows`.

    multinomial: sum_i x_i log softmax(logits)_i
    bernoulli:   sum_i x_i log sigmoid(l_i) + (1 - x_i) log sigmoid(-l_i)
    gaussian:    -1/2 sum_i (x_i - l_i)^2

    For sparse rows the sums over all items are rewritten so that x enters only at its non-zeros:
    multinomial = sum_e x_e l_e - (sum_e x_e) logsumexp(l); bernoulli = sum_i log sigmoid(-l_i) + sum_e x_e l_e
    (for 0/1 x); gaussian = -1/2 [sum_i l_i^2 - 2 sum_e x_e l_e + sum_e x_e^2].
    """
    if not isinstance(x, SparseRows):
        if kind == "multinomial":
            return torch.sum(F.log_softmax(logits, dim=-1) * x, dim=-1)
        if kind == "bernoulli":
            return torch.sum(x * F.logsigmoid(logits) + (1.0 - x) * F.logsigmoid(-logits), dim=-1)
        if kind == "gaussian":
            return -0.5 * torch.sum(torch.square(x - logits), dim=-1)
        raise ValueError(f"unknown likelihood {kind!r}")
    entry_logits = logits[x.rows, x.items]
    weighted = _row_sums(x, x.values * entry_logits)
    if kind == "multinomial":
        return weighted - _row_sums(x, x.values) * torch.logsumexp(logits, dim=-1)
    if kind == "bernoulli":
        return torch.sum(F.logsigmoid(-logits), dim=-1) + weighted
    if kind == "gaussian":
        return -0.5 * (torch.sum(torch.square(logits), dim=-1) - 2.0 * weighted + _row_sums(x, torch.square(x.values)))
    raise ValueError(f"unknown likelihood {kind!r}")


class UserTerms(NamedTuple):
    """Per-user ELBO terms: nll [batch] and kl [batch, L] (L = 0 for Mult-DAE)."""

    nll: torch.Tensor
    kl: torch.Tensor


def user_terms(
    model: nn.Module, x: torch.Tensor | SparseRows, side: torch.Tensor | None, noise: Noise | None
) -> UserTerms:
    """Negative log-likelihood and KL per level for every user of the batch; `noise=None` evaluates."""
    output = model(x, side, noise)
    return UserTerms(-log_likelihood(model.config.likelihood, output.logits, x), output.kl)


def beta_per_level(train: TrainConfig, config: ModelConfig, step: int, total_anneal_steps: int) -> torch.Tensor:
    """[L] KL weights at update `step`: min(beta_cap, step / total_anneal_steps) times each level's multiplier."""
    beta = min(train.beta_cap, step / max(total_anneal_steps, 1))
    multipliers = torch.tensor(train.beta_per_level or (1.0,) * config.n_levels, dtype=torch.float32)
    if multipliers.shape != (config.n_levels,):
        raise ValueError(f"beta_per_level has {multipliers.shape[0]} entries for {config.n_levels} latent levels")
    return beta * multipliers


def weight_l2(model: nn.Module) -> torch.Tensor:
    """Sum of squared weight-matrix entries (biases and pseudo-inputs excluded, as Liang et al.)."""
    squares = [torch.sum(torch.square(p)) for name, p in model.named_parameters() if name.endswith(".weight")]
    return torch.stack(squares).sum()


def batch_loss(
    model: nn.Module,
    train: TrainConfig,
    x: torch.Tensor | SparseRows,
    side: torch.Tensor | None,
    user_weights: torch.Tensor,
    betas: torch.Tensor,
    noise: Noise,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The batch objective (see the module docstring).

    Args:
      x: [batch, n_items] or `SparseRows`; side: [batch, n_features] or None.
      user_weights: [batch] 1.0 for real users, 0.0 for padding rows.
      betas: [L] KL weights.
      noise: this step's dropout mask and epsilons.

    Returns:
      (loss, metrics) with metrics "loss", "nll" and "kl" ([L] mean KL per level), as the JAX `batch_loss`.
    """
    terms = user_terms(model, x, side, noise)
    weights = user_weights / torch.clamp(torch.sum(user_weights), min=1.0)
    nll = torch.sum(weights * terms.nll)
    kl = torch.sum(weights[:, None] * terms.kl, dim=0)
    if kl.shape[0]:
        kl_term = torch.sum(betas.to(kl) * torch.clamp(kl, min=train.free_bits))
    else:
        kl_term = torch.zeros((), dtype=nll.dtype, device=nll.device)
    loss = nll + kl_term
    if train.weight_decay:
        loss = loss + train.weight_decay * weight_l2(model)
    return loss, {"loss": loss.detach(), "nll": nll.detach(), "kl": kl.detach()}
