"""Parameters both ways between the Flax models (nested dicts, Dense kernels [in, out]) and the PyTorch modules.

The PyTorch modules name their submodules as the Flax model does, so a PyTorch parameter name maps to a Flax path by
rule: list indices join their list's name (`posterior_heads.0` -> `posterior_heads_0`), `weight` becomes `kernel`
(layer norms call their scale `scale`, as Flax does, so it keeps its name).
`nn.Linear` stores its weight [out, in] and is transposed; `SparseInputLinear` already stores [in, out].
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

FlaxPath = tuple[str, ...]


def flax_path(torch_name: str) -> FlaxPath:
    """The Flax parameter path of a PyTorch parameter name, e.g. `prior_hidden.0.linear_1.weight` ->
    ("prior_hidden_0", "linear_1", "kernel")."""
    path: list[str] = []
    for part in torch_name.split("."):
        if part.isdigit():
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    if path[-1] == "weight":
        path[-1] = "kernel"
    return tuple(path)


def _is_transposed(module: nn.Module, torch_name: str) -> bool:
    """Whether the PyTorch tensor is the transpose of the Flax one ([out, in] weights of nn.Linear)."""
    owner_name, _, leaf = torch_name.rpartition(".")
    return leaf == "weight" and isinstance(module.get_submodule(owner_name), nn.Linear)


def _leaves(params: Any, prefix: FlaxPath = ()) -> dict[FlaxPath, Any]:
    if isinstance(params, dict) or hasattr(params, "items"):
        leaves = {}
        for key, value in params.items():
            leaves.update(_leaves(value, prefix + (str(key),)))
        return leaves
    return {prefix: params}


def jax_to_torch(params: Any, module: nn.Module) -> nn.Module:
    """Copies Flax `params` into `module` in place (keeping the module's dtype and device) and returns it.

    Raises:
      KeyError / ValueError: if a parameter is missing on either side or has another shape.
    """
    flax_leaves = _leaves(params)
    used = set()
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            path = flax_path(name)
            if path not in flax_leaves:
                raise KeyError(f"PyTorch parameter {name} has no Flax counterpart {'/'.join(path)}")
            value = np.asarray(flax_leaves[path])
            if _is_transposed(module, name):
                value = value.T
            if tuple(value.shape) != tuple(parameter.shape):
                raise ValueError(
                    f"{name}: Flax shape {value.shape} (in PyTorch layout) vs PyTorch {tuple(parameter.shape)}"
                )
            parameter.copy_(torch.from_numpy(np.array(value, copy=True)).to(parameter))
            used.add(path)
    unused = sorted("/".join(path) for path in set(flax_leaves) - used)
    if unused:
        raise KeyError(f"Flax parameters without a PyTorch counterpart: {unused}")
    return module


def torch_to_jax(module: nn.Module, *, gradients: bool = False) -> dict:
    """The module's parameters (or, with `gradients`, their `.grad`) as a Flax params dict: jax arrays in the
    module's dtype, kernels [in, out]. A parameter without a gradient gives zeros."""
    params: dict = {}
    for name, parameter in module.named_parameters():
        tensor = parameter
        if gradients:
            tensor = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        value = tensor.detach().cpu().numpy()
        if _is_transposed(module, name):
            value = value.T
        *parents, leaf = flax_path(name)
        node = params
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = jnp.asarray(np.ascontiguousarray(value))
    return params
