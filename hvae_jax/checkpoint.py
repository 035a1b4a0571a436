"""Orbax checkpoints of a run: `latest` (the full training state, to resume) and `best` (parameters with the best
validation metric), each with a JSON record of the loop's bookkeeping, in the run directory's `checkpoints/`
(named by `rundir.RunPaths`).
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp

from hvae_jax.rundir import RunPaths


class Checkpoints:
    """The `latest` and `best` checkpoints of a run.

    In a multi-host run every process opens them (orbax's primary process writes, the others wait), and saves are
    synchronous: orbax's asynchronous saves meet across processes with collective-based barriers on a background
    thread, which orbax warns must not run beside other collectives such as the training steps' (the likely cause
    of a two-process test run that hung once in CI).

    Args:
      run: the run directory: its path, or the `RunDir` that opened it.
      create: create the folders on the first save; False to read a run without writing to it (evaluate,
        recommend), where a missing checkpoint restores as None.
    """

    def __init__(self, run: str | pathlib.Path | RunPaths, *, create: bool = True):
        root = RunPaths.of(run).checkpoints_dir.resolve()
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=create,
                                               enable_async_checkpointing=jax.process_count() == 1)
        self._managers = {name: ocp.CheckpointManager(root / name, options=options) for name in ("latest", "best")}

    def save(self, name: str, epoch: int, state, record: dict) -> None:
        """Saves `state` (any pytree of arrays) and the JSON-able `record` as checkpoint `name` at `epoch`.

        Asynchronous in a one-process run: the arrays are copied to the host before this returns (so the caller
        may donate them to the next update), and written while training goes on. A `latest` save first waits for a
        pending `best` save, so a `latest` record on disk never names a best epoch whose parameters are not on disk
        yet; a killed process leaves the last finished checkpoint of each, as orbax finalises a checkpoint by
        renaming it."""
        if name == "latest":
            self._managers["best"].wait_until_finished()
        manager = self._managers[name]
        manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)))

    def latest_epoch(self, name: str) -> int | None:
        return self._managers[name].latest_step()

    def restore(self, name: str, abstract_state) -> tuple[object, dict] | None:
        """(state, record) of checkpoint `name`, restored into the structure and shardings of `abstract_state`
        (e.g. from `jax.eval_shape`), or None when there is none."""
        manager = self._managers[name]
        manager.wait_until_finished()
        epoch = manager.latest_step()
        if epoch is None:
            return None
        restored = manager.restore(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()),
        )
        return restored["state"], restored["record"]

    def wait(self) -> None:
        """Blocks until every pending save is on disk (an interrupted loop calls this before it lets go)."""
        for manager in self._managers.values():
            manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves, then releases the managers."""
        for manager in self._managers.values():
            manager.wait_until_finished()
            manager.close()


def abstract_like(tree):
    """Shape/dtype structs of `tree`, for restoring without holding a second copy."""
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None)), tree)
