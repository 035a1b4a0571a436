"""The training objective in PyTorch, term for term as `hvae_jax.objectives`: per-user negative log-likelihood and
KL per level, their weighted batch mean, beta-weighted KL (optionally per user, RecVAE's gamma |x_u|) with free
bits, L2 weight decay on weight matrices, and the snapshot's posterior that RecVAE's composite prior looks at.

loss = mean_u nll_u + sum_l beta_l max(mean_u w_u KL_ul, free_bits) + weight_decay * ||W||^2
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_reference.layers import SparseRows
from benchmarks.torch_reference.models import Noise, needs_snapshot
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


def row_totals(x: torch.Tensor | SparseRows) -> torch.Tensor:
    """[batch] sum of each row's values: |x_u| for 0/1 rows (RecVAE's `user_ratings.sum(dim=-1)`)."""
    if isinstance(x, SparseRows):
        return _row_sums(x, x.values)
    return torch.sum(x, dim=-1)


class UserTerms(NamedTuple):
    """Per-user ELBO terms: nll [batch] and kl [batch, L] (L = 0 for Mult-DAE)."""

    nll: torch.Tensor
    kl: torch.Tensor


@torch.no_grad()
def prior_context(
    snapshot: nn.Module | None, x: torch.Tensor | SparseRows, side: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The composite prior's view of the batch: q(z_L | x) under the snapshot module (the encoder as it was at the
    start of the cycle), without dropout and without gradient; None without a snapshot."""
    if snapshot is None:
        return None
    return snapshot.top_posterior(x, side)


def user_terms(
    model: nn.Module,
    x: torch.Tensor | SparseRows,
    side: torch.Tensor | None,
    noise: Noise | None,
    *,
    snapshot: nn.Module | None = None,
) -> UserTerms:
    """Negative log-likelihood and KL per level for every user of the batch; `noise=None` evaluates."""
    if snapshot is None and needs_snapshot(model.config):
        raise ValueError(f"prior {model.config.prior!r} needs the encoder's snapshot (a copy of the module)")
    output = model(x, side, noise, previous_posterior=prior_context(snapshot, x, side))
    return UserTerms(-log_likelihood(model.config.likelihood, output.logits, x), output.kl)


def beta_per_level(
    train: TrainConfig, config: ModelConfig, step: int, total_anneal_steps: int | None, *,
    steps_per_epoch: int | None = None, epoch: int | None = None,
) -> torch.Tensor:
    """[L] KL weights at update `step` (from 0), as `hvae_jax.schedules.Schedule.betas`: Liang et al.'s
    min(beta_cap, step / total_anneal_steps), Kim & Suh's beta_cap * min(1, epoch / anneal_epochs) (the epoch, from
    1, given or step // steps_per_epoch + 1), or 1 when RecVAE's per-user weight replaces beta; times each level's
    multiplier."""
    if train.kl_weight_per_item > 0:
        beta = 1.0
    elif train.anneal_epochs is not None:
        if epoch is None:
            if steps_per_epoch is None:
                raise ValueError("anneal_epochs (a warm-up by epoch) needs the epoch or steps_per_epoch")
            epoch = step // steps_per_epoch + 1
        beta = train.beta_cap * min(1.0, epoch / train.anneal_epochs)
    else:
        if total_anneal_steps is None:
            raise ValueError("Liang et al.'s annealing needs total_anneal_steps")
        beta = min(train.beta_cap, step / max(total_anneal_steps, 1))
    multipliers = torch.tensor(train.beta_per_level or (1.0,) * config.n_levels, dtype=torch.float32)
    if multipliers.shape != (config.n_levels,):
        raise ValueError(f"beta_per_level has {multipliers.shape[0]} entries for {config.n_levels} latent levels")
    return beta * multipliers


def per_user_kl_weights(train: TrainConfig, x: torch.Tensor | SparseRows) -> torch.Tensor | None:
    """[batch] RecVAE's beta_u = gamma |x_u| (`kl_weight_per_item`), or None."""
    if train.kl_weight_per_item <= 0:
        return None
    return train.kl_weight_per_item * row_totals(x)


def weight_l2(model: nn.Module) -> torch.Tensor:
    """Sum of squared weight-matrix entries (biases, layer-norm scales and pseudo-inputs excluded, as Liang et al.)."""
    squares = [torch.sum(torch.square(p)) for name, p in model.named_parameters() if name.endswith(".weight")]
    return torch.stack(squares).sum()


def combine_terms(
    model: nn.Module,
    train: TrainConfig,
    terms: UserTerms,
    user_weights: torch.Tensor,
    betas: torch.Tensor,
    kl_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The batch objective from per-user terms, as `hvae_jax.objectives.combine_terms`: free bits apply only when
    positive (a sampled KL may average below zero and then enters as it is)."""
    weights = user_weights / torch.clamp(torch.sum(user_weights), min=1.0)
    nll = torch.sum(weights * terms.nll)
    kl = torch.sum(weights[:, None] * terms.kl, dim=0)
    weighted_kl = kl if kl_weights is None else torch.sum((weights * kl_weights)[:, None] * terms.kl, dim=0)
    if train.free_bits > 0:
        weighted_kl = torch.clamp(weighted_kl, min=train.free_bits)
    if kl.shape[0]:
        kl_term = torch.sum(betas.to(kl) * weighted_kl)
    else:
        kl_term = torch.zeros((), dtype=nll.dtype, device=nll.device)
    loss = nll + kl_term
    if train.weight_decay:
        loss = loss + train.weight_decay * weight_l2(model)
    return loss, {"loss": loss.detach(), "nll": nll.detach(), "kl": kl.detach()}


def batch_loss(
    model: nn.Module,
    train: TrainConfig,
    x: torch.Tensor | SparseRows,
    side: torch.Tensor | None,
    user_weights: torch.Tensor,
    betas: torch.Tensor,
    noise: Noise | None,
    *,
    kl_weights: torch.Tensor | None = None,
    snapshot: nn.Module | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The batch objective (see the module docstring).

    Args:
      x: [batch, n_items] or `SparseRows`; side: [batch, n_features] or None.
      user_weights: [batch] 1.0 for real users, 0.0 for padding rows.
      betas: [L] KL weights.
      noise: this step's dropout masks and epsilons.
      kl_weights: [batch] per-user KL weights (RecVAE's gamma |x_u|, `per_user_kl_weights`), or None.
      snapshot: the encoder's snapshot (a copy of the module) for priors that need it (RecVAE's composite prior).

    Returns:
      (loss, metrics) with metrics "loss", "nll" and "kl" ([L] mean KL per level), as the JAX `combine_terms`.
    """
    terms = user_terms(model, x, side, noise, snapshot=snapshot)
    return combine_terms(model, train, terms, user_weights, betas, kl_weights)
