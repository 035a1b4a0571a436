"""PyTorch layers matching `hvae_jax.models.layers`: the three initialisations (Liang et al.'s Glorot-uniform weights
with N(0, 0.001) biases, Kim & Suh's He-normal weights, PyTorch's default), the hidden layer tanh(sum_i W_i x_i + b_i)
or its gated form, Kim & Suh's multi-input stacks and RecVAE's densely connected encoder.

`SparseInputLinear` is the optimised variant's first layer: the same affine map, with its weight stored [in, out]
so that a batch given as (item index, value) pairs is an `embedding_bag` over the weight's rows.

Submodules and parameters carry the Flax model's names (`linear_0`, `gate_0`, `embed_1`, `layer_0`, `norm_2`,
`scale`), so that `transfer.py` maps them by rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

BIAS_STDDEV = 0.001
INITS = ("glorot", "he", "torch")


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


def init_weight_(weight: torch.Tensor, fan_in: int, fan_out: int, init: str = "glorot") -> None:
    """The weight initialisation of `init`, whatever the storage layout.

    glorot: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); he: N(0, 2 / fan_in) (Kim & Suh's `he_init`);
    torch: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (nn.Linear's default, RecVAE).
    """
    with torch.no_grad():
        if init == "glorot":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            weight.uniform_(-bound, bound)
        elif init == "he":
            weight.normal_(0.0, math.sqrt(2.0 / max(fan_in, 1)))
        elif init == "torch":
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            weight.uniform_(-bound, bound)
        else:
            raise ValueError(f"unknown init {init!r}; expected one of {', '.join(INITS)}")


def init_bias_(bias: torch.Tensor, fan_in: int = 1, init: str = "glorot") -> None:
    """glorot: N(0, 0.001^2) truncated to +-2 standard deviations (flax's `truncated_normal(stddev=0.001)`);
    he and torch: nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    if init == "glorot":
        nn.init.trunc_normal_(bias, std=BIAS_STDDEV, a=-2 * BIAS_STDDEV, b=2 * BIAS_STDDEV)
        return
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    with torch.no_grad():
        bias.uniform_(-bound, bound)


def dense(in_features: int, out_features: int, init: str = "glorot") -> nn.Linear:
    """An `nn.Linear` (weight [out, in]) with the initialisation `init`."""
    layer = nn.Linear(in_features, out_features)
    init_weight_(layer.weight, in_features, out_features, init)
    init_bias_(layer.bias, in_features, init)
    return layer


class SeparateHeads(nn.Module):
    """A Gaussian head as two layers (`mean`, `logvar`), output [mean, logvar] side by side, as the library's
    `layers.SeparateHeads`."""

    def __init__(self, in_features: int, features: int, init: str = "glorot"):
        super().__init__()
        self.mean = dense(in_features, features, init)
        self.logvar = dense(in_features, features, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mean(x), self.logvar(x)], dim=-1)


def gaussian_head(in_features: int, features: int, init: str, separate: bool) -> nn.Module:
    """[mean, logvar] of `features` dimensions: one [in, 2 * features] layer, or two (`SeparateHeads`)."""
    return SeparateHeads(in_features, features, init) if separate else dense(in_features, 2 * features, init)


class SparseInputLinear(nn.Module):
    """y = x W + b with W stored [in, out]; x is dense [batch, in] or `SparseRows` (then one `embedding_bag`)."""

    def __init__(self, in_features: int, out_features: int, init: str = "glorot"):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        init_weight_(self.weight, in_features, out_features, init)
        init_bias_(self.bias, in_features, init)

    def forward(self, x: torch.Tensor | SparseRows) -> torch.Tensor:
        if isinstance(x, SparseRows):
            return F.embedding_bag(
                x.items, self.weight, x.offsets, mode="sum", per_sample_weights=x.values
            ) + self.bias
        return torch.addmm(self.bias, x, self.weight)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


class Hidden(nn.Module):
    """activation(sum_i W_i x_i + b_i) (tanh by default), or with `gated` (sum_i W_i x_i + b_i) * sigmoid(sum_i V_i
    x_i + c_i).

    Each input position has its own projection `linear_<i>` (and `gate_<i>`), named as in the Flax model so that
    parameters transfer by name; positions whose width is None take no input.

    Args:
      in_features: width of each input position, None for an absent one (e.g. no side features).
      out_features: the layer's width.
      gated: gated linear unit instead of the activation.
      sparse_first_input: position 0 is a `SparseInputLinear` (accepts `SparseRows`).
      activation: the nonlinearity of an ungated layer.
      init: "glorot", "he" or "torch".
    """

    def __init__(
        self,
        in_features: Sequence[int | None],
        out_features: int,
        gated: bool = False,
        sparse_first_input: bool = False,
        activation: Callable[[torch.Tensor], torch.Tensor] = torch.tanh,
        init: str = "glorot",
    ):
        super().__init__()
        self.gated = gated
        self.activation = activation
        self.positions = [i for i, width in enumerate(in_features) if width is not None]
        for i in self.positions:
            for prefix in ("linear", "gate") if gated else ("linear",):
                if sparse_first_input and i == 0:
                    layer = SparseInputLinear(in_features[i], out_features, init)
                else:
                    layer = dense(in_features[i], out_features, init)
                self.add_module(f"{prefix}_{i}", layer)

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
            return self.activation(pre_activation)
        return pre_activation * torch.sigmoid(self._sum("gate", inputs))


class Stack(nn.Module):
    """`n_layers` hidden layers from one or more inputs (and side features) to one [features] output, as
    `hvae_jax.models.layers.Stack`.

    One input, or one layer: `layer_0` takes every input and the side features, `layer_1`... follow. Several inputs
    and two or more layers (Kim & Suh's q(z1 | x, z2) and p(x | z1, z2)): `embed_<i>` embeds input i alone, the
    embeddings are concatenated and pass `layer_0` (with the side features) and `n_layers - 2` further layers. The
    first input's first layer (`layer_0` or `embed_0`) may be sparse (`sparse_first_input`).
    """

    def __init__(
        self,
        in_features: Sequence[int],
        features: int,
        n_layers: int,
        n_side_features: int | None = None,
        *,
        gated: bool = False,
        init: str = "glorot",
        sparse_first_input: bool = False,
    ):
        super().__init__()
        self.embedded = len(in_features) > 1 and n_layers >= 2
        hidden = lambda widths, sparse=False: Hidden(widths, features, gated, sparse, init=init)  # noqa: E731
        if self.embedded:
            for i, width in enumerate(in_features):
                self.add_module(f"embed_{i}", hidden([width], sparse_first_input and i == 0))
            self.layer_0 = hidden([len(in_features) * features, n_side_features])
            n_joint = n_layers - 1
        else:
            self.layer_0 = hidden([*in_features, n_side_features], sparse_first_input)
            n_joint = n_layers
        for k in range(1, n_joint):
            self.add_module(f"layer_{k}", hidden([features]))
        self.n_joint = n_joint

    def forward(self, inputs: Sequence[torch.Tensor | SparseRows], side: torch.Tensor | None = None) -> torch.Tensor:
        if self.embedded:
            embedded = [getattr(self, f"embed_{i}")(x) for i, x in enumerate(inputs)]
            h = self.layer_0(torch.cat(embedded, dim=-1), side)
        else:
            h = self.layer_0(*inputs, side)
        for k in range(1, self.n_joint):
            h = getattr(self, f"layer_{k}")(h)
        return h


class LayerNorm(nn.Module):
    """Layer normalisation with the Flax parameter names `scale` and `bias` (biased variance, as flax's
    `nn.LayerNorm(use_fast_variance=False)` and `torch.nn.LayerNorm`)."""

    def __init__(self, features: int, epsilon: float):
        super().__init__()
        self.epsilon = epsilon
        self.scale = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.bias, self.epsilon)


class DenseNetStack(nn.Module):
    """RecVAE's encoder body (Shenbin et al.): h_1 = LN(swish(W_1 x)), h_k = LN(swish(W_k h_{k-1} + h_1 + ... +
    h_{k-1})), layer norms with epsilon 0.1. `layer_0` takes the input (sparse with `sparse_first_input`) and the side
    features."""

    def __init__(
        self,
        in_features: int,
        features: int,
        n_layers: int,
        n_side_features: int | None = None,
        *,
        init: str = "torch",
        sparse_first_input: bool = False,
    ):
        super().__init__()
        self.n_layers = n_layers
        for k in range(n_layers):
            widths = [in_features, n_side_features] if k == 0 else [features]
            self.add_module(f"layer_{k}", Hidden(widths, features, False, sparse_first_input and k == 0,
                                                 activation=identity, init=init))
            self.add_module(f"norm_{k}", LayerNorm(features, epsilon=0.1))

    def forward(self, x: torch.Tensor | SparseRows, side: torch.Tensor | None = None) -> torch.Tensor:
        earlier: list[torch.Tensor] = []
        h = None
        for k in range(self.n_layers):
            linear = getattr(self, f"layer_{k}")
            pre = linear(x, side) if k == 0 else linear(h) + sum(earlier)
            h = getattr(self, f"norm_{k}")(F.silu(pre))
            earlier.append(h)
        return h
