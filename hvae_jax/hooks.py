"""What the training loop does between epochs, as hooks: validation, keeping the best parameters, early stopping,
the metric log, checkpoints and the progress bar (in the spirit of big_vision's evaluators and CLU's periodic
actions). `train.fit` runs them in order after every epoch; each reads and writes the shared `LoopState`, and the
parts of it that must survive an interruption travel in the `latest` checkpoint's record.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from hvae_jax.checkpoint import Checkpoints
from hvae_jax.data.splits import EvalSet
from hvae_jax.evaluate import active_units, evaluate
from hvae_jax.logs import MetricsLog

VALIDATION_METRIC = "ndcg@100"


@dataclasses.dataclass
class LoopState:
    """The loop's bookkeeping. `record()` is what a checkpoint keeps to resume exactly.

    Attributes:
      epoch: the last epoch run.
      history: one row per epoch (loss, nll, KL per level, beta, validation metrics, seconds).
      best_epoch: the validated epoch with the best metric, or None while nothing was validated.
      best_metric: its validation metric.
      best_validation: its validation metrics.
      best_params: its evaluation parameters (not in the record: the `best` checkpoint holds them).
      epochs_without_improvement: validated epochs since the best one (counting from `early_stopping_from`).
      stopped_early: early stopping ended the run.
      state: the training state after `epoch` (set by the loop before the hooks run).
      row: the current epoch's row, which hooks add to.
    """

    epoch: int = 0
    history: list = dataclasses.field(default_factory=list)
    best_epoch: int | None = None
    best_metric: float = -math.inf
    best_validation: dict | None = None
    best_params: Any = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    state: Any = None
    row: dict = dataclasses.field(default_factory=dict)
    evaluation_params: Any = None

    def record(self) -> dict:
        return {
            "epoch": self.epoch,
            "history": self.history,
            "best": {
                "epoch": self.best_epoch,
                "metric": self.best_metric if math.isfinite(self.best_metric) else None,
                "validation": self.best_validation,
                "epochs_without_improvement": self.epochs_without_improvement,
                "stopped_early": self.stopped_early,
            },
        }

    @classmethod
    def from_record(cls, record: dict) -> "LoopState":
        best = record["best"]
        epoch = best.get("epoch")
        return cls(
            epoch=record["epoch"],
            history=list(record["history"]),
            # Records written before validation could be absent stored 0 for "no best epoch".
            best_epoch=epoch if best.get("validation") is not None else None,
            best_metric=best["metric"] if best.get("metric") is not None else -math.inf,
            best_validation=best.get("validation"),
            epochs_without_improvement=best.get("epochs_without_improvement", 0),
            stopped_early=best.get("stopped_early", False),
        )

    @property
    def should_stop(self) -> bool:
        return self.stopped_early


class Hook:
    """The protocol: `after_epoch` runs after every epoch with the loop's state; `close` once at the end."""

    def after_epoch(self, loop: LoopState) -> None:
        raise NotImplementedError

    def close(self, loop: LoopState) -> None:
        del loop


class Validation(Hook):
    """Every `every` epochs (and the last): validation metrics of the evaluation parameters into the row, and the
    active units per level (Burda et al.) of VAEs, so posterior collapse shows."""

    def __init__(self, eval_step, eval_set: EvalSet, *, every: int, last_epoch: int, side=None, path=None,
                 with_active_units: bool = False):
        self.eval_step, self.eval_set, self.every, self.last_epoch = eval_step, eval_set, every, last_epoch
        self.side, self.path = side, path
        self.with_active_units = with_active_units and path is not None

    def due(self, epoch: int) -> bool:
        return epoch % self.every == 0 or epoch == self.last_epoch

    def after_epoch(self, loop):
        if not self.due(loop.epoch):
            return
        loop.row["valid"] = evaluate(self.eval_step, loop.evaluation_params, self.eval_set, side_features=self.side)
        if self.with_active_units:
            level_means = self.path.posterior_means(loop.evaluation_params, self.eval_set, self.side)
            loop.row["active_units"] = [active_units(means) for means in level_means]


class KeepBest(Hook):
    """Keeps the parameters of the best validated epoch (by `metric`) in memory; `Checkpointing` writes them to the
    `best` checkpoint beside each `latest` one."""

    def __init__(self, metric: str = VALIDATION_METRIC):
        self.metric = metric

    def after_epoch(self, loop):
        validation = loop.row.get("valid")
        if validation is None:
            return
        if validation[self.metric] > loop.best_metric:
            loop.best_epoch, loop.best_metric, loop.best_validation = loop.epoch, validation[self.metric], validation
            loop.epochs_without_improvement = 0
            loop.best_params = jax.tree.map(jnp.copy, loop.evaluation_params)
        else:
            loop.epochs_without_improvement += 1


class EarlyStopping(Hook):
    """Stops after `patience` validated epochs without improvement; epochs before `start` (Kim & Suh's warm-up)
    never count."""

    def __init__(self, patience: int | None, *, every: int, start: int = 0, log: Callable[[str], None] = print):
        self.patience, self.every, self.start, self.log = patience, every, start, log

    def after_epoch(self, loop):
        if "valid" not in loop.row:
            return
        if loop.epoch < self.start:
            loop.epochs_without_improvement = 0
            return
        if self.patience is not None and loop.epochs_without_improvement * self.every >= self.patience:
            loop.stopped_early = True
            self.log(f"early stopping after epoch {loop.epoch}: no validation improvement in {self.patience} epochs")


class MetricsLogging(Hook):
    """Appends the row to the history and to metrics.jsonl / TensorBoard (`metrics_log` None: history only)."""

    def __init__(self, metrics_log: MetricsLog | None):
        self.metrics_log = metrics_log

    def after_epoch(self, loop):
        loop.history.append(loop.row)
        if self.metrics_log is not None:
            self.metrics_log.write(loop.row)

    def close(self, loop):
        if self.metrics_log is not None:
            self.metrics_log.close()


class Checkpointing(Hook):
    """Writes the `latest` checkpoint (training state and the loop's record) every `every` epochs and at the end,
    so an interrupted run resumes from it exactly, and before it the `best` parameters when a better epoch was
    validated since the last write.

    `best` goes to disk with `latest` rather than at every improvement: a checkpoint costs as much as several
    updates of a small model, and a resumed run needs only the `best` that its `latest` record names."""

    def __init__(self, checkpoints: Checkpoints, *, every: int, last_epoch: int):
        self.checkpoints, self.every, self.last_epoch = checkpoints, every, last_epoch
        self.saved_epoch = None

    def after_epoch(self, loop):
        if loop.epoch % self.every == 0 or loop.epoch == self.last_epoch or loop.should_stop:
            self.save(loop)

    def save(self, loop):
        best_on_disk = self.checkpoints.latest_epoch("best")
        if loop.best_params is not None and loop.best_epoch not in (None, best_on_disk):
            self.checkpoints.save("best", loop.best_epoch, loop.best_params,
                                  {"epoch": loop.best_epoch, "validation": loop.best_validation})
        self.checkpoints.save("latest", loop.epoch, loop.state, loop.record())
        self.saved_epoch = loop.epoch

    def close(self, loop):
        # A run cut short between checkpoints (stop_after_epochs) still leaves its last epoch to resume from.
        if loop.epoch and self.saved_epoch != loop.epoch:
            self.save(loop)
        self.checkpoints.close()


class Progress(Hook):
    """A tqdm bar over epochs showing the loss, beta and the validation metric."""

    def __init__(self, *, total: int, initial: int, desc: str, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="epoch", disable=not enabled, dynamic_ncols=True)

    def after_epoch(self, loop):
        postfix = {"loss": f"{loop.row['loss']:.2f}", "beta": f"{loop.row['beta']:.3f}"}
        if "valid" in loop.row:
            postfix[VALIDATION_METRIC] = f"{loop.row['valid'][VALIDATION_METRIC]:.4f}"
        self.bar.set_postfix(postfix)
        self.bar.update(1)

    def close(self, loop):
        self.bar.close()


def epoch_row(epoch: int, step: int, metrics: dict[str, np.ndarray], seconds: float, phase: str) -> dict:
    """The metric row of one epoch from its per-update metrics."""
    kl = metrics["kl"]
    return {
        "epoch": epoch,
        "step": step,
        "phase": phase,
        "loss": float(np.mean(metrics["loss"])),
        "nll": float(np.mean(metrics["nll"])),
        "kl": [float(v) for v in np.mean(kl, axis=0)] if kl.ndim == 2 else [],
        "beta": float(metrics["beta"][-1]),
        "train_seconds": seconds,
    }
