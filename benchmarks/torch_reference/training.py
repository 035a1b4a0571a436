"""Training and evaluation loops for the PyTorch models, in two flavours.

`ReferenceTrainer` is written the way common public Mult-VAE ports are: the training matrix stays a scipy CSR matrix
on the host, each batch is densified there (`matrix[rows].toarray()`) and copied to the device, and the optimizer
(`torch.optim.Adam`, or Kim & Suh's AdamNormGrad) updates an `nn.Module` that sees dense [batch, n_items] rows.

`OptimizedTrainer` keeps the maths and changes the data path: a batch travels as (item, row, value) triples padded
to a fixed length, every input branch's first layer is an `embedding_bag` over those items, dropout is drawn per
interaction, the likelihood reads the logits at the interactions only, and the loss (forward and backward) goes
through `torch.compile` when it builds; otherwise the trainer runs eagerly and says why in `compile_error`.

Both follow the library's training schedule: every parameter at every update, or RecVAE's alternation of encoder
and decoder epochs with one optimizer each and the encoder snapshot its composite prior reads.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from benchmarks.torch_reference.layers import SparseRows
from benchmarks.torch_reference.models import draw_noise, needs_snapshot
from benchmarks.torch_reference.objectives import batch_loss, beta_per_level, per_user_kl_weights
from benchmarks.torch_reference.optimizers import make_optimizer, parameter_groups
from hvae_jax.configs import TrainConfig
from hvae_jax.schedules import Phase, build_schedule


def dense_rows(matrix: sp.csr_matrix, rows: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """[len(rows), n_items] float32 rows of `matrix`, densified on the host and copied to `device`."""
    return torch.from_numpy(matrix[rows].toarray().astype(np.float32, copy=False)).to(device)


def sparse_rows(
    matrix: sp.csr_matrix,
    rows: np.ndarray,
    *,
    batch_size: int | None = None,
    pad_to_nnz: int | None = None,
    device: torch.device | str = "cpu",
) -> SparseRows:
    """The interactions of `rows` as `SparseRows`, optionally padded to `batch_size` rows and `pad_to_nnz` entries.

    Padding entries have value 0 and sit in the last row, so they change no sum; padding rows are empty.
    """
    batch_size = batch_size or len(rows)
    starts, stops = matrix.indptr[rows], matrix.indptr[rows + 1]
    lengths = (stops - starts).astype(np.int64)
    nnz = int(lengths.sum())
    total = nnz if pad_to_nnz is None else pad_to_nnz
    if total < nnz:
        raise ValueError(f"batch has {nnz} interactions, more than pad_to_nnz={pad_to_nnz}")
    items = np.zeros(total, np.int64)
    values = np.zeros(total, np.float32)
    row_of_entry = np.full(total, batch_size - 1, np.int64)
    # Gather every row's slice of `indices` in one vectorised step.
    entry_rows = np.repeat(np.arange(len(rows)), lengths)
    offsets_in_batch = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    source = np.repeat(starts, lengths) + (np.arange(nnz) - np.repeat(offsets_in_batch, lengths))
    items[:nnz] = matrix.indices[source]
    values[:nnz] = matrix.data[source]
    row_of_entry[:nnz] = entry_rows
    offsets = np.full(batch_size, nnz, np.int64)
    offsets[: len(rows)] = offsets_in_batch
    to = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return SparseRows(to(items), to(row_of_entry), to(offsets), to(values), matrix.shape[1])


def max_batch_nnz(matrix: sp.csr_matrix, batch_size: int) -> int:
    """Interactions in the `batch_size` longest rows: a bound on any batch's entries (static padding length)."""
    lengths = np.sort(np.diff(matrix.indptr))[::-1]
    return max(int(lengths[:batch_size].sum()), 1)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Trainer:
    """What both trainers share: the optimizers (one, or RecVAE's encoder and decoder optimizers), the training
    schedule's phase and the encoder snapshot, the KL weights of an update, and an epoch as `step` over
    consecutive batches of a user order.

    The schedule is the library's (`hvae_jax.schedules`): with `schedule="alternating"` (RecVAE) epochs run the
    "encoder" phase (input dropout on, the encoder's optimizer steps) or the "decoder" phase (dropout off, the
    decoder's optimizer steps), and the snapshot of the model that the composite prior reads is refreshed as each
    cycle starts, as Shenbin et al.'s run.py (`run(opts=[optimizer_encoder])`, `update_prior()`,
    `run(opts=[optimizer_decoder])`) does.
    """

    def _setup(self, model: nn.Module, train: TrainConfig, anneal_steps: int | None, fused: bool | None) -> None:
        self.model = model
        self.train = train
        self.anneal_steps = anneal_steps
        # Only the phases and snapshot times of the schedule are read here; they do not depend on steps_per_epoch.
        self.schedule = build_schedule(train, n_levels=model.config.n_levels, steps_per_epoch=1)
        grouped = any(phase.groups is not None for phase in self.schedule.phases)
        groups = parameter_groups(model) if grouped else {"joint": list(model.parameters())}
        self.optimizers = {name: _optimizer(train, params, fused) for name, params in groups.items()}
        self.snapshot = None
        if needs_snapshot(model.config):
            self.snapshot = copy.deepcopy(model).requires_grad_(False)
        self.step_count = 0
        self.epoch = 0
        self.phase = self.schedule.phase_of(1)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer of a joint schedule (one for all parameters)."""
        if list(self.optimizers) != ["joint"]:
            raise AttributeError(f"this trainer has one optimizer per group: {', '.join(self.optimizers)}")
        return self.optimizers["joint"]

    def take_snapshot(self) -> None:
        """Copies the current parameters into the snapshot (RecVAE's `update_prior`)."""
        if self.snapshot is not None:
            self.snapshot.load_state_dict(self.model.state_dict())

    def set_phase(self, name: str) -> Phase:
        """Runs the following updates in the schedule's phase `name` ("joint"; RecVAE: "encoder" or "decoder")."""
        phases = {phase.name: phase for phase in self.schedule.phases}
        if name not in phases:
            raise ValueError(f"schedule {self.train.schedule!r} has phases {', '.join(phases)}, not {name!r}")
        self.phase = phases[name]
        return self.phase

    def begin_epoch(self, epoch: int) -> Phase:
        """Enters epoch `epoch` (from 1): its phase, and a fresh snapshot where the schedule takes one."""
        self.epoch = epoch
        self.set_phase(self.schedule.phase_of(epoch).name)
        if self.snapshot is not None and self.schedule.takes_snapshot(epoch):
            self.take_snapshot()
        return self.phase

    def run_epoch(self, matrix: sp.csr_matrix, order: np.ndarray) -> float:
        """The next epoch: updates over `order` in batches of `train.batch_size`; returns the mean loss."""
        self.begin_epoch(self.epoch + 1)
        losses = [
            self.step(matrix, order[start : start + self.train.batch_size])["loss"]
            for start in range(0, len(order), self.train.batch_size)
        ]
        return float(torch.stack(losses).mean())

    def _betas(self) -> torch.Tensor:
        return beta_per_level(self.train, self.model.config, self.step_count, self.anneal_steps,
                              epoch=max(self.epoch, 1))

    def _apply(self, loss: torch.Tensor) -> None:
        """Backward, then the phase's optimizers step (the others keep their parameters and moments)."""
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for name, optimizer in self.optimizers.items():
            if self.phase.groups is None or name in self.phase.groups:
                optimizer.step()
        self.step_count += 1


def _optimizer(train: TrainConfig, params: list, fused: bool | None) -> torch.optim.Optimizer:
    if not fused:
        return make_optimizer(train, params)
    try:
        return make_optimizer(train, params, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return make_optimizer(train, params, fused=None)


class ReferenceTrainer(_Trainer):
    """The optimizer (`optimizers.make_optimizer`: Adam or AdamNormGrad) on dense host-densified batches, one update
    per call of `step`. In an alternating schedule every gradient is computed and the phase's optimizer steps, as the
    authors' run.py does.

    Args:
      anneal_steps: updates over which Liang et al.'s beta rises (None where the schedule does not anneal by update:
        Kim & Suh's warm-up counts `run_epoch`/`begin_epoch` epochs, RecVAE weighs each user).
    """

    def __init__(self, model: nn.Module, train: TrainConfig, *, anneal_steps: int | None,
                 device: torch.device | str = "cpu"):
        self._setup(model, train, anneal_steps, fused=None)
        self.device = torch.device(device)

    def step(self, matrix: sp.csr_matrix, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """One update on the users `rows` of `matrix` (no padding: the last batch of an epoch is just smaller)."""
        self.model.train()
        x = dense_rows(matrix, rows, self.device)
        noise = draw_noise(self.model.config, x, dropout=self.phase.dropout)
        loss, metrics = batch_loss(self.model, self.train, x, None, torch.ones(len(rows), device=self.device),
                                   self._betas().to(self.device), noise,
                                   kl_weights=per_user_kl_weights(self.train, x), snapshot=self.snapshot)
        self._apply(loss)
        return metrics


class OptimizedTrainer(_Trainer):
    """The optimizer (fused where available) on sparse, padded batches with a compiled loss; every batch has the same
    shapes, so one compile serves (one per phase of an alternating schedule). In an alternating schedule the frozen
    group's parameters do not require gradients, so its backward pass is skipped.

    Args:
      model: built with `sparse_input=True` (every input branch's first layer an embedding bag).
      train: the training config (its batch size fixes the padded batch shape).
      max_nnz: padded entries per batch (`max_batch_nnz` of the training matrix).
      anneal_steps: updates over which Liang et al.'s beta rises (None where the schedule does not anneal by update).
      compile: try `torch.compile`; failures fall back to eager and are recorded in `compile_error`.
    """

    def __init__(
        self,
        model: nn.Module,
        train: TrainConfig,
        *,
        max_nnz: int,
        anneal_steps: int | None,
        device: torch.device | str = "cpu",
        compile: bool = True,
    ):
        if not getattr(model, "sparse_input", False):
            raise ValueError("OptimizedTrainer needs a model built with sparse_input=True")
        self.device = torch.device(device)
        self._setup(model, train, anneal_steps, fused=self.device.type in ("cuda", "cpu"))
        self.max_nnz = max_nnz
        self.compile_error: str | None = None
        self._loss = self._eager_loss
        if compile:
            self._loss = torch.compile(self._eager_loss)
        self.compiled = compile
        self.set_phase(self.phase.name)

    def set_phase(self, name: str) -> Phase:
        phase = super().set_phase(name)
        if phase.groups is not None:
            for group, optimizer in self.optimizers.items():
                for param_group in optimizer.param_groups:
                    for parameter in param_group["params"]:
                        parameter.requires_grad_(group in phase.groups)
        return phase

    def _eager_loss(self, x: SparseRows, user_weights: torch.Tensor, betas: torch.Tensor, dropout: bool):
        noise = draw_noise(self.model.config, x, dropout=dropout)
        return batch_loss(self.model, self.train, x, None, user_weights, betas, noise,
                          kl_weights=per_user_kl_weights(self.train, x), snapshot=self.snapshot)

    def batch(self, matrix: sp.csr_matrix, rows: np.ndarray) -> tuple[SparseRows, torch.Tensor]:
        """The padded `SparseRows` of `rows` and their [batch_size] user weights (0 on padding rows)."""
        batch = sparse_rows(matrix, rows, batch_size=self.train.batch_size, pad_to_nnz=self.max_nnz,
                            device=self.device)
        weights = torch.zeros(self.train.batch_size, device=self.device)
        weights[: len(rows)] = 1.0
        return batch, weights

    def step(self, matrix: sp.csr_matrix, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """One update on the users `rows` of `matrix` (at most `train.batch_size` of them)."""
        self.model.train()
        x, weights = self.batch(matrix, rows)
        betas = self._betas().to(self.device)
        try:
            loss, metrics = self._loss(x, weights, betas, self.phase.dropout)
        except Exception as error:  # noqa: BLE001 - any compiler failure means: run eagerly and record why
            if self._loss is self._eager_loss:
                raise
            self.compile_error = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            self._loss = self._eager_loss
            self.compiled = False
            loss, metrics = self._loss(x, weights, betas, self.phase.dropout)
        self._apply(loss)
        return metrics


def ranking_metrics(
    scores: torch.Tensor, exclude: torch.Tensor, heldout: torch.Tensor, k: int = 100
) -> dict[str, torch.Tensor]:
    """Per-user NDCG@k and Recall@k (Liang et al.'s min(k, H) denominator) from dense [batch, n_items] masks.

    Excluded items get score -inf before `torch.topk`; users without held-out items get 0 (the caller skips them).
    """
    k = min(k, scores.shape[1])
    masked = scores.masked_fill(exclude, -math.inf)
    top_items = torch.topk(masked, k, dim=1).indices
    hits = (heldout & ~exclude).gather(1, top_items).to(scores.dtype)
    discounts = 1.0 / torch.log2(torch.arange(k, device=scores.device, dtype=scores.dtype) + 2.0)
    n_heldout = heldout.sum(dim=1)
    n_ideal = torch.clamp(n_heldout, max=k)
    ideal_dcg = torch.cumsum(discounts, 0)[torch.clamp(n_ideal - 1, min=0)]
    has_heldout = n_heldout > 0
    ndcg = torch.where(has_heldout, (hits * discounts).sum(dim=1) / ideal_dcg, torch.zeros_like(ideal_dcg))
    recall = torch.where(has_heldout, hits.sum(dim=1) / torch.clamp(n_ideal, min=1), torch.zeros_like(ideal_dcg))
    return {f"ndcg@{k}": ndcg, f"recall@{k}": recall, "n_heldout": n_heldout}


@torch.no_grad()
def evaluate_reference(
    model: nn.Module,
    fold_in: sp.csr_matrix,
    heldout: sp.csr_matrix,
    *,
    batch_size: int,
    k: int = 100,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Mean NDCG@k / Recall@k over users with held-out items: host-densified fold-in and held-out rows per batch."""
    model.eval()
    per_user: dict[str, list[torch.Tensor]] = {}
    for start in range(0, fold_in.shape[0], batch_size):
        rows = np.arange(start, min(start + batch_size, fold_in.shape[0]))
        x = dense_rows(fold_in, rows, device)
        scores = model(x, logits_only=True).logits
        batch = ranking_metrics(scores, x > 0, dense_rows(heldout, rows, device) > 0, k)
        for name, values in batch.items():
            per_user.setdefault(name, []).append(values.cpu())
    return _summarize(per_user)


def make_sparse_scorer(model: nn.Module, compile: bool = True) -> Callable[[SparseRows], torch.Tensor]:
    """Evaluation scores (no dropout, z = mean) of a sparse-input model, compiled when `compile`."""

    def score(x: SparseRows) -> torch.Tensor:
        return model(x, logits_only=True).logits

    return torch.compile(score) if compile else score


@torch.no_grad()
def evaluate_optimized(
    scorer: Callable[[SparseRows], torch.Tensor],
    fold_in: sp.csr_matrix,
    heldout: sp.csr_matrix,
    *,
    batch_size: int,
    k: int = 100,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """As `evaluate_reference`, with sparse fold-in rows (padded to one shape) and masks built on the device."""
    per_user: dict[str, list[torch.Tensor]] = {}
    fold_in_nnz = max_batch_nnz(fold_in, batch_size)
    n_items = fold_in.shape[1]
    for start in range(0, fold_in.shape[0], batch_size):
        rows = np.arange(start, min(start + batch_size, fold_in.shape[0]))
        x = sparse_rows(fold_in, rows, batch_size=batch_size, pad_to_nnz=fold_in_nnz, device=device)
        scores = scorer(x)
        exclude = _dense_mask(x, batch_size, n_items)
        held = sparse_rows(heldout, rows, batch_size=batch_size, device=device)
        batch = ranking_metrics(scores, exclude, _dense_mask(held, batch_size, n_items), k)
        for name, values in batch.items():
            per_user.setdefault(name, []).append(values[: len(rows)].cpu())
    return _summarize(per_user)


def _dense_mask(x: SparseRows, batch_size: int, n_items: int) -> torch.Tensor:
    """[batch, n_items] bool, True at the (non-padding) entries of `x`."""
    real = x.values > 0  # padding entries (value 0) may repeat a real entry's position: leave them out
    mask = torch.zeros(batch_size, n_items, dtype=torch.bool, device=x.values.device)
    return mask.index_put_((x.rows[real], x.items[real]), torch.ones((), dtype=torch.bool, device=mask.device))


def _summarize(per_user: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    joined = {name: torch.cat(chunks) for name, chunks in per_user.items()}
    counted = joined.pop("n_heldout") > 0
    summary = {name: float(values[counted].double().mean()) for name, values in joined.items()}
    summary["n_users"] = int(counted.sum())
    return summary


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds `fn()` takes, with the device synchronised before and after."""
    device = torch.device(device)
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start
