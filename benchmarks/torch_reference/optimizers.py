"""PyTorch optimizers matching `hvae_jax.optimizers`: Adam, and Kim & Suh's Adam on unit-norm gradients
(Tomczak & Welling's `AdamNormGrad`), built from a `TrainConfig`; and the split of a module's parameters into the
library's groups ("encoder", "decoder") for RecVAE's alternating updates.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from benchmarks.torch_reference.transfer import flax_path
from hvae_jax.configs import TrainConfig
from hvae_jax.models.hvae import parameter_group


class AdamNormGrad(torch.optim.Adam):
    """Adam on gradients divided, tensor by tensor, by their L2 norm plus `norm_epsilon` (1e-7):
    g <- g / (||g||_2 + 1e-7), then `torch.optim.Adam` (whose moments and bias correction equal optax's `adam`).

    The normalised gradient replaces `.grad` in place, as the update consumes it.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, *, norm_epsilon: float = 1e-7, **adam_options):
        super().__init__(params, lr=lr, **adam_options)
        self.norm_epsilon = norm_epsilon

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            norms = torch._foreach_norm(grads)
            torch._foreach_add_(norms, self.norm_epsilon)
            torch._foreach_div_(grads, norms)
        super().step()
        return loss


def make_optimizer(train: TrainConfig, params: Iterable, *, fused: bool | None = None) -> torch.optim.Optimizer:
    """Adam at `train.learning_rate`, after per-tensor gradient normalisation for `optimizer="adam_normgrad"`, as
    `hvae_jax.optimizers.make_optimizer`. `fused` picks PyTorch's fused kernels (None: its default)."""
    if train.average_decay:
        raise NotImplementedError("average_decay (a running average of the parameters) has no PyTorch counterpart")
    options = {} if fused is None else {"fused": fused}
    if train.optimizer == "adam_normgrad":
        return AdamNormGrad(params, lr=train.learning_rate, **options)
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.learning_rate, **options)
    raise ValueError(f"unknown optimizer {train.optimizer!r}")


def parameter_groups(module: nn.Module) -> dict[str, list[nn.Parameter]]:
    """{group: parameters} by the library's rule (`hvae_jax.models.hvae.parameter_group` of the Flax path): the
    generative side (p(z_l | z_{l+1}), p(x | z), the prior's parameters) is "decoder", the rest "encoder"."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, parameter in module.named_parameters():
        groups.setdefault(parameter_group(module.config, flax_path(name)), []).append(parameter)
    return dict(sorted(groups.items()))
