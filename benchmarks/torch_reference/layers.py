"""PyTorch layers matching `hvae_jax.models.layers`: Glorot-uniform weights, N(0, 0.001) biases truncated at two
standard deviations, and the hidden layer tanh(sum_i W_i x_i + b_i) or its gated form.

`SparseInputLinear` is the optimised variant's first layer: the same affine map, with its weight stored [in, out]
so that a batch given as (item index, value) pairs is an `embedding_bag` over the weight's rows.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

BIAS_STDDEV = 0.001


class SparseRows(NamedTuple):
    """A batch of sparse rows in the layout `embedding_bag` takes.

    Attributes:
      items: [nnz] int64 column of each entry, rows one after the other.
      rows: [nnz] int64 row of each entry (non-decreasing).
      offsets: [batch] int64 position in `items` where each row starts.
      values: [nnz] float entry values (1.0 for implicit feedback; 0.0 marks padding entries).
      n_columns: width of the dense rows (the catalogue size).
    """

    items: torch.Tensor
    rows: torch.Tensor
    offsets: torch.Tensor
    values: torch.Tensor
    n_columns: int

    @property
    def batch_size(self) -> int:
        return self.offsets.shape[0]

    def to_dense(self) -> torch.Tensor:
        """[batch, n_columns] dense rows (used by tests and by the VampPrior's pseudo-input path)."""
        dense = torch.zeros(self.batch_size, self.n_columns, dtype=self.values.dtype, device=self.values.device)
        return dense.index_put_((self.rows, self.items), self.values, accumulate=True)


def init_weight_(weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
    """Glorot uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), whatever the storage layout."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def init_bias_(bias: torch.Tensor) -> None:
    """N(0, 0.001^2) truncated to +-2 standard deviations, as flax's `truncated_normal(stddev=0.001)`."""
    nn.init.trunc_normal_(bias, std=BIAS_STDDEV, a=-2 * BIAS_STDDEV, b=2 * BIAS_STDDEV)


def dense(in_features: int, out_features: int) -> nn.Linear:
    """An `nn.Linear` (weight [out, in]) with the project's initialisation."""
    layer = nn.Linear(in_features, out_features)
    init_weight_(layer.weight, in_features, out_features)
    init_bias_(layer.bias)
    return layer


class SparseInputLinear(nn.Module):
    """y = x W + b with W stored [in, out]; x is dense [batch, in] or `SparseRows` (then one `embedding_bag`)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        init_weight_(self.weight, in_features, out_features)
        init_bias_(self.bias)

    def forward(self, x: torch.Tensor | SparseRows) -> torch.Tensor:
        if isinstance(x, SparseRows):
            return F.embedding_bag(
                x.items, self.weight, x.offsets, mode="sum", per_sample_weights=x.values
            ) + self.bias
        return torch.addmm(self.bias, x, self.weight)


class Hidden(nn.Module):
    """tanh(sum_i W_i x_i + b_i), or with `gated` (sum_i W_i x_i + b_i) * sigmoid(sum_i V_i x_i + c_i).

    Each input position has its own projection `linear_<i>` (and `gate_<i>`), named as in the Flax model so that
    parameters transfer by name; positions whose width is None take no input.

    Args:
      in_features: width of each input position, None for an absent one (e.g. no side features).
      out_features: the layer's width.
      gated: gated linear unit instead of tanh.
      sparse_first_input: position 0 is a `SparseInputLinear` (accepts `SparseRows`).
    """

    def __init__(
        self,
        in_features: Sequence[int | None],
        out_features: int,
        gated: bool = False,
        sparse_first_input: bool = False,
    ):
        super().__init__()
        self.gated = gated
        self.positions = [i for i, width in enumerate(in_features) if width is not None]
        for i in self.positions:
            for prefix in ("linear", "gate") if gated else ("linear",):
                make = SparseInputLinear if (sparse_first_input and i == 0) else dense
                self.add_module(f"{prefix}_{i}", make(in_features[i], out_features))

    def _sum(self, prefix: str, inputs: Sequence[torch.Tensor | SparseRows | None]) -> torch.Tensor:
        total = None
        for i in self.positions:
            if i >= len(inputs) or inputs[i] is None:
                continue
            term = getattr(self, f"{prefix}_{i}")(inputs[i])
            total = term if total is None else total + term
        return total

    def forward(self, *inputs: torch.Tensor | SparseRows | None) -> torch.Tensor:
        pre_activation = self._sum("linear", inputs)
        if not self.gated:
            return torch.tanh(pre_activation)
        return pre_activation * torch.sigmoid(self._sum("gate", inputs))
