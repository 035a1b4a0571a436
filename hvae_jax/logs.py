"""A run's metric log: one JSON line per epoch in the run directory's `metrics.jsonl` and the same numbers as
TensorBoard scalars in its `tensorboard/`, kept consistent when a run resumes from a checkpoint. The files' names
come from `rundir.RunPaths`.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any, Iterator, Mapping

from hvae_jax.rundir import RunPaths
from hvae_jax.tensorboard_events import EventFileWriter


def flatten_scalars(row: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) for every number in `row`: nested dicts join with '/', lists become `name/level{i}` (from 1).

    `{"kl": [0.5, 0.1], "valid": {"ndcg@100": 0.3}}` gives `kl/level1`, `kl/level2` and `valid/ndcg@100`.
    Strings, None and booleans are not scalars and are left out.
    """
    for key, value in row.items():
        tag = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten_scalars(value, f"{tag}/")
            continue
        if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:  # NumPy / JAX vectors
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            for index, element in enumerate(value, start=1):
                number = _number(element)
                if number is not None:
                    yield f"{tag}/level{index}", number
        else:
            number = _number(value)
            if number is not None:
                yield tag, number


def _number(value: Any) -> float | None:
    """`value` as a float if it is a real number (Python, NumPy or JAX scalar), else None; booleans are not."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # NumPy and JAX arrays and scalars
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class MetricsLog:
    """Appends metric rows to the run directory's metrics.jsonl and, optionally, to TensorBoard.

    A fresh run (`resume_epoch=None`) empties metrics.jsonl and removes earlier event files, so the log describes
    this run only. A resumed run passes the epoch its checkpoint holds: rows after that epoch (written after the
    checkpoint by the interrupted process) are dropped from metrics.jsonl, and TensorBoard purges its events from
    the next epoch on, so both show each epoch once.

    Usage:
      with MetricsLog(workdir) as metrics_log:
          metrics_log.write({"epoch": 1, "loss": 2.5, "kl": [0.3], "valid": {"ndcg@100": 0.31}})

    Args:
      run: the run directory: its path, or the `RunDir` that opened it.
    """

    def __init__(self, run: str | pathlib.Path | RunPaths, tensorboard: bool = True, *,
                 resume_epoch: int | None = None):
        paths = RunPaths.of(run)
        self.workdir = paths.path
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = paths.metrics_path
        self._log_dir = paths.tensorboard_dir
        self._rows_written = 0
        if resume_epoch is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_epoch)
        self._writer = None
        self._tensorboard = tensorboard
        if tensorboard:
            log_dir = self._log_dir
            if resume_epoch is None and log_dir.is_dir():
                for old in log_dir.glob("events.out.tfevents.*"):
                    old.unlink()
            purge = None if resume_epoch is None else resume_epoch + 1
            # The nanosecond suffix keeps a resumed writer from reusing (and overwriting) an event file opened in
            # the same second, and sorts the files of one second in writing order.
            self._writer = EventFileWriter(log_dir, purge_step=purge, suffix=f".{time.time_ns()}")
        self._file = self.path.open("a")

    def _truncate_after(self, epoch: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                row_epoch = json.loads(line).get("epoch")
            except json.JSONDecodeError:
                continue  # a line cut short by the interruption
            if row_epoch is None or row_epoch <= epoch:
                kept.append(line)
        self.path.write_text("".join(f"{line}\n" for line in kept))

    @property
    def tensorboard_dir(self) -> pathlib.Path | None:
        """Where the event files go, or None without TensorBoard."""
        return self._log_dir if self._tensorboard else None

    def write(self, row: Mapping[str, Any]) -> None:
        """Appends `row` as one JSON line (flushed at once) and logs its numbers as scalars at step `row["epoch"]`.

        Rows without an epoch use the count of rows written by this log as the step.
        """
        self._file.write(json.dumps(dict(row), default=_json_default) + "\n")
        self._file.flush()
        self._rows_written += 1
        if self._writer is not None:
            step = int(row.get("epoch", self._rows_written))
            self._writer.add_scalars(((tag, value) for tag, value in flatten_scalars(row) if tag != "epoch"), step)

    def flush(self) -> None:
        self._file.flush()  # the event file is flushed after every row already

    def close(self) -> None:
        """Flushes and closes the JSON file and the TensorBoard writer; safe to call twice."""
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
