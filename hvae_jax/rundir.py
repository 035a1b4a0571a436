"""The run directory (`--workdir`): one owner for what a run keeps there (config.json, the split, results.json, the
metric log, TensorBoard events, checkpoints, plots). A directory holds one run: training resumes only when every
setting that changes results matches the fingerprint in config.json, and otherwise refuses before writing anything.

The fingerprint is every setting of the three sections of config.json ("settings", "model", "train") except those
named in `NOT_FINGERPRINTED`, which change only speed, reporting or where files go:

  settings.workdir             where the run lives; a moved directory must still resume.
  settings.devices,            data parallelism splits each batch over devices with the same global batch and the
  settings.distributed         same keys; results agree up to the order of float reductions.
  settings.ks                  the reported cut-offs. Training picks the best epoch on validation ndcg@100 whatever
                               else is listed; on resuming, later metric rows and results.json use the new list.
  settings.iw_samples          an extra estimate computed once, after training, from the best parameters.
  settings.logits_budget_mb    used by the item-sharded path only.
  model.name                   a label.
  train.steps_per_dispatch     how many updates one jitted call runs: the same updates in the same order.
  train.checkpoint_every       how often `latest` is saved: `best` is kept exactly and a resumed run draws the same
                               numbers, so this only sets how much work an interruption costs.

With item sharding on (settings.item_shards != 0) `ks` and `logits_budget_mb` do enter: they set the logits chunk,
hence the padded catalogue, hence the parameters' shapes and initial values (`CATALOGUE_LAYOUT_SETTINGS`).
Everything else enters, including settings added later, unless someone adds them here with a reason. Of note:
`train.eval_every` (which epochs are validated decides the best epoch and early stopping), `train.input_path`
(the sparse path draws input dropout per interaction), `settings.item_shards` (the padded catalogue).

`train.epochs` may grow: a larger value continues the run ("train 20 more epochs"); a smaller one is refused, since
the run may already be past it. The KL weight of Liang et al.'s schedule rises over all the run's updates when
neither `anneal_epochs` nor `total_anneal_steps` is set, so the fingerprint records that length as resolved:
`total_anneal_steps` = "all updates of E epochs". More epochs then change every beta already trained and are refused,
with the way to continue: `--anneal-steps N`, N the run's updates in its E epochs (read from its metrics.jsonl), is
the same schedule and resumes. A warm-up in epochs (`--anneal-epochs E`) is a different schedule (beta constant within
an epoch, reaching the cap at epoch E rather than after cap x E epochs) and is refused like any other change.
Fingerprints written before this rule recorded the unset length as `anneal_epochs = epochs`; `config.json`'s own
train section tells such a run from one with that warm-up set, and it compares as if written today. (Continuing a run
also validates its old last epoch, which a run trained to the new length from scratch would skip unless `eval_every`
divides it; that can add one candidate for the best epoch and one count towards early stopping, never change an
update.)

A config.json without this module's "format" key was written by an older hvae_jax, which wrote config.json before
checking anything: it may describe other settings than the checkpoints beside it. Such a directory is read
(`open_for_reading`, for evaluate and recommend) but not resumed: training there needs `--overwrite` or a new
`--workdir`. Files of a run without any config.json (an older run that crashed early, or a deleted config.json) are
refused the same way. A config.json with no other file of the run beside it (a run that stopped before saving its
split, say on a malformed data file) describes nothing to mix with, so a new run replaces it whatever it holds.

Every JSON file is written atomically (`write_json`) and read with a check that names the file, what it should hold
and what to do (`read_json`). While a run trains, it holds an exclusive lock on `.hvae_jax.lock` in the directory, so
that a second `hvae train` on the same directory is refused instead of mixing its epochs into the first one's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import secrets
import shutil
import tempfile
import zipfile
import zlib
from typing import Any, Mapping, NamedTuple

from hvae_jax.data import splits as splits_lib

try:
    import fcntl
except ImportError:  # not POSIX: runs go unlocked
    fcntl = None

FORMAT = 1
SECTIONS = ("settings", "model", "train")

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
SPLIT_FILE = "split.npz"
SPLIT_INFO_FILE = "split.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
PLOTS_DIR = "plots"
LOCK_FILE = ".hvae_jax.lock"
# What `--overwrite` removes, and nothing else. config.json goes last, so that an overwrite cut short leaves a
# directory whose config.json still describes every run file left in it. split.tmp.npz and split.tmp.json are
# the half-written split of `data.splits.save_split` called on the directory itself.
OWNED = (RESULTS_FILE, SPLIT_INFO_FILE, SPLIT_FILE, "split.tmp.npz", "split.tmp.json", METRICS_FILE,
         TENSORBOARD_DIR, CHECKPOINTS_DIR, PLOTS_DIR, CONFIG_FILE)
# The temporaries of `write_json` and `RunDir.save_split`, left behind only when a process is killed mid-write.
_TEMPORARY = re.compile(
    r"^\.(?:%s)\.[0-9a-f]{12}\.tmp$|^\.split\.[a-z0-9_]{8}\.tmp$"
    % "|".join(re.escape(name) for name in (CONFIG_FILE, RESULTS_FILE, SPLIT_INFO_FILE))
)

NOT_FINGERPRINTED: Mapping[str, frozenset[str]] = {
    "settings": frozenset({"workdir", "devices", "distributed", "ks", "iw_samples", "logits_budget_mb"}),
    "model": frozenset({"name"}),
    "train": frozenset({"steps_per_dispatch", "checkpoint_every"}),
}
CATALOGUE_LAYOUT_SETTINGS = frozenset({"ks", "logits_budget_mb"})

# Settings added after runs were already written, with the value that behaves as those runs did: a stored config
# without one resumes when the new run asks for that value (and is refused, by name, for any other).
ADDED_SETTINGS: Mapping[tuple[str, str], Any] = {("train", "early_stopping_updates"): None,
                                                  ("train", "max_anneal_steps"): None,
                                                  ("train", "average_updates"): None}
_DIRECTORIES = (TENSORBOARD_DIR, CHECKPOINTS_DIR, PLOTS_DIR)
WAYS_OUT = ("To keep that run, train in a new --workdir; to discard it, pass --overwrite, which deletes the run's "
            f"files there ({', '.join(sorted(n + '/' if n in _DIRECTORIES else n for n in OWNED if '.tmp' not in n))}"
            " and half-written temporaries) and nothing else, and starts clean.")


class RunDirError(ValueError):
    """A run directory that cannot be used as asked; the message names the file or settings and what to do.

    Attributes:
      differences: the settings that differ from the stored run (empty when the error is about something else).
    """

    def __init__(self, message: str, differences: tuple[Difference, ...] = ()):
        super().__init__(message)
        self.differences = differences


_ABSENT = object()


class Difference(NamedTuple):
    """One setting that changes results and differs between the stored run and the new one."""

    section: str
    name: str
    old: Any
    new: Any
    note: str = ""

    def __str__(self) -> str:
        line = f"{self.section}.{self.name}: {_show(self.old)} -> {_show(self.new)}"
        return f"{line} ({self.note})" if self.note else line


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(not recorded)"
    return "unset" if value is None else json.dumps(value)


# ------------------------------------------------------------------------------------------------------------------
# JSON files


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # NumPy and JAX arrays and scalars
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _fsync_directory(directory: pathlib.Path) -> None:
    """Makes a rename in `directory` durable (where the platform can open a directory)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_json(path: str | pathlib.Path, value: Mapping[str, Any]) -> None:
    """Writes `value` to `path` so that the file holds either its old content or all of the new one, whenever the
    process stops: a temporary file in the same directory, flushed and fsynced, renamed over `path`, and the
    directory fsynced. The temporary is removed if anything fails before the rename.
    """
    path = pathlib.Path(path)
    if not isinstance(value, Mapping):
        raise TypeError(f"{path.name} holds a JSON object; got {type(value).__name__}")
    # Serialised before touching the disk, so that a value JSON cannot hold leaves no file behind.
    text = json.dumps(value, indent=2, default=_json_default) + "\n"
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, as open() would
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    _fsync_directory(path.parent)


def _json_kind(value: Any) -> str:
    kinds = {list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _unclosed(text: str) -> str | None:
    """"string", "object" or "list" when `text` ends inside one (as a file cut short does), else None."""
    open_brackets, in_string, escaped = [], False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            open_brackets.append(char)
        elif char in "}]" and open_brackets:
            open_brackets.pop()
    if in_string:
        return "string"
    if open_brackets:
        return "object" if open_brackets[-1] == "{" else "list"
    return None


def read_json(path: str | pathlib.Path, *, expected: str, remedy: str) -> dict:
    """The JSON object in `path`.

    Args:
      expected: what the file should hold, for the message ("the run's settings: ...").
      remedy: what the user can do if it is damaged.

    Raises:
      FileNotFoundError: there is no file.
      RunDirError: the file is empty, cut short, not JSON or not a JSON object; the message names the file,
        `expected` and `remedy`.
    """
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: expected {expected}. {remedy}") from None
    problem = None
    if not raw.strip():
        problem = "is empty" if not raw else "holds only whitespace"
    else:
        try:
            text = raw.decode("utf-8")
            value = json.loads(text)
        except UnicodeDecodeError as error:
            problem = f"is not UTF-8 text (byte {error.start})"
        except json.JSONDecodeError as error:
            unclosed = _unclosed(text)
            if unclosed is not None:
                problem = f"ends inside an unclosed {unclosed} after {len(raw)} bytes (cut short?)"
            else:
                problem = f"is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        else:
            if not isinstance(value, dict):
                problem = f"holds a JSON {_json_kind(value)}, not an object"
    if problem is not None:
        raise RunDirError(f"{path} {problem}: expected {expected}. {remedy}")
    return value


# ------------------------------------------------------------------------------------------------------------------
# The fingerprint


def _plain(section: str, values: Mapping[str, Any]) -> dict:
    """`values` as JSON gives it back (tuples become lists), so stored and new settings compare equal."""
    if not isinstance(values, Mapping):
        raise TypeError(f"the {section} settings must be a dict (dataclasses.asdict), got {type(values).__name__}")
    try:
        return json.loads(json.dumps(dict(values), default=_json_default))
    except TypeError as error:
        raise TypeError(f"the {section} settings must be JSON-able: {error}") from None


def fingerprint(settings: Mapping[str, Any], model: Mapping[str, Any], train: Mapping[str, Any]) -> dict:
    """The settings that change a run's results, by section: everything but `NOT_FINGERPRINTED` (see the module
    docstring), with an unset KL warm-up resolved to the run's epochs."""
    sections = {"settings": _plain("settings", settings), "model": _plain("model", model),
                "train": _plain("train", train)}
    if not isinstance(sections["model"].get("kind"), str):
        raise ValueError("the model settings must carry the model's 'kind' (configs.model_config_to_dict)")
    result = {}
    for section, values in sections.items():
        left_out = NOT_FINGERPRINTED[section]
        if section == "settings" and values.get("item_shards"):
            left_out = left_out - CATALOGUE_LAYOUT_SETTINGS
        result[section] = {name: value for name, value in sorted(values.items()) if name not in left_out}
    if _length_unset(result["train"]):
        result["train"]["total_anneal_steps"] = _all_updates(result["train"].get("epochs"))
    return result


def _length_unset(train: Mapping[str, Any]) -> bool:
    """Liang's schedule with neither length set: beta rises over all the run's updates."""
    return "anneal_epochs" in train and train["anneal_epochs"] is None and train.get("total_anneal_steps") is None


def _all_updates(epochs: Any) -> str:
    return f"all updates of {'the epochs scaled to the data' if epochs is None else f'{epochs} epochs'}"


def _as_written_today(stored: Mapping[str, Any]) -> dict:
    """The stored fingerprint as this version writes it. Older versions resolved an unset anneal length to
    `anneal_epochs = epochs`, as if a warm-up of that many epochs were set; the stored train section (the settings
    as given) tells the two apart."""
    fingerprinted = {section: dict(values) for section, values in stored["fingerprint"].items()}
    train = fingerprinted.get("train", {})
    if (isinstance(train.get("anneal_epochs"), int) and train.get("total_anneal_steps") is None
            and _length_unset(stored.get("train", {}))):
        train["anneal_epochs"] = None
        train["total_anneal_steps"] = _all_updates(train.get("epochs"))
    return fingerprinted


def _updates_per_epoch(path: pathlib.Path) -> int | None:
    """Updates per epoch of the run in `path`, from the first row of its metrics.jsonl (None where unknown)."""
    try:
        with (path / METRICS_FILE).open() as lines:
            row = json.loads(next(lines))
        steps, epoch = row["step"], row["epoch"]
    except (OSError, StopIteration, ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (steps, epoch)) or steps % epoch:
        return None
    return steps // epoch


def fingerprint_id(section: Mapping[str, Any]) -> str:
    """A short stable hash of a fingerprint (or one section of it)."""
    return hashlib.sha256(json.dumps(section, sort_keys=True).encode()).hexdigest()[:16]


def _same(old: Any, new: Any) -> bool:
    return old == new and isinstance(old, bool) == isinstance(new, bool)


def _grows(old: Any, new: Any) -> bool:
    numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (old, new))
    return numbers and new > old


def compare(stored: Mapping[str, Any], new: Mapping[str, Any], updates_per_epoch: int | None = None
            ) -> list[Difference]:
    """The settings of `new` that differ from `stored` (both from `fingerprint`); a larger train.epochs is not a
    difference, nor an anneal length in updates equal to the stored run's unset one (its epochs times
    `updates_per_epoch`, where known). A different model kind is reported alone: its other settings differ because
    of it."""
    old_kind, new_kind = stored.get("model", {}).get("kind", _ABSENT), new["model"]["kind"]
    if old_kind != new_kind:
        return [Difference("model", "kind", old_kind, new_kind)]
    differences = []
    for section in SECTIONS:
        old_values, new_values = stored.get(section, {}), new[section]
        for name in sorted(set(old_values) | set(new_values)):
            old, value = old_values.get(name, _ABSENT), new_values.get(name, _ABSENT)
            if _same(old, value) or ((section, name) == ("train", "epochs") and _grows(old, value)):
                continue
            # The stored run's anneal length was unset: the same length in updates is the same schedule.
            unset_before = (section, name) == ("train", "total_anneal_steps") and old == _all_updates(
                old_values.get("epochs"))
            same_length = (old_values["epochs"] * updates_per_epoch
                           if unset_before and updates_per_epoch and isinstance(old_values["epochs"], int) else None)
            if same_length is not None and isinstance(old_values.get("max_anneal_steps"), int):
                same_length = min(same_length, old_values["max_anneal_steps"])
            if same_length is not None and _same(value, same_length):
                continue
            if section == "settings" and name in CATALOGUE_LAYOUT_SETTINGS and _ABSENT in (old, value):
                continue  # recorded on one side only because item sharding was switched: item_shards says it
            added_since = old is _ABSENT and (section, name) in ADDED_SETTINGS
            if added_since and _same(ADDED_SETTINGS[section, name], value):
                continue  # written before the setting existed, resumed with the value that behaves the same
            note = ""
            if (section, name) == ("train", "epochs") and old is None:
                note = ("the run's epochs were scaled to the data (--epochs auto, given in its results.json as "
                        "epochs_planned): it resumes with --epochs auto, and does not continue to a given number")
            elif (section, name) == ("train", "epochs"):
                note = "a run continues to more epochs, never fewer"
            elif added_since:
                as_it_was = ADDED_SETTINGS[section, name]
                note = (f"the run was written before this setting existed; "
                        f"--{name.replace('_', '-')} {'none' if as_it_was is None else as_it_was} resumes it as it was")
            elif unset_before:
                count = same_length if same_length is not None else "N"
                epochs = old_values.get("epochs")
                where = "" if same_length is not None else (
                    f", N the run's updates in its {epochs} epochs (the 'step' of epoch {epochs} in {METRICS_FILE})"
                    if epochs is not None
                    else f", N the run's updates (the 'step' of its last epoch in {METRICS_FILE})")
                note = (f"beta rose over all the run's updates, so their number sets every beta already trained; "
                        f"--anneal-steps {count} keeps this run's schedule{where}")
            differences.append(Difference(section, name, old, value, note))
    return differences


def _changes_kept(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Lines saying which settings outside the fingerprint (and a longer train.epochs) change on resuming."""
    notes = []
    for section in SECTIONS:
        old_values, new_values = stored.get(section, {}), new[section]
        for name in sorted(set(old_values) | set(new_values)):
            old, value = old_values.get(name, _ABSENT), new_values.get(name, _ABSENT)
            if _same(old, value):
                continue
            change = f"{section}.{name}: {_show(old)} -> {_show(value)}"
            if (section, name) == ("train", "epochs"):
                notes.append(f"{change}: continuing the run to {value} epochs")
            elif (section, name) == ("train", "total_anneal_steps") and _length_unset(old_values):
                notes.append(f"{change}: the same schedule, its length in updates now given")
            else:
                notes.append(f"{change}: does not change results; recorded in {CONFIG_FILE}")
    return notes


# ------------------------------------------------------------------------------------------------------------------
# The directory


def _config_remedy(path: pathlib.Path) -> str:
    return (f"It records the settings the run in {path} was trained with, without which its files cannot be used. "
            f"Train again in a new --workdir, or pass --overwrite to start clean in this one.")


def _existing_owned(path: pathlib.Path) -> list[str]:
    return [name for name in OWNED if (path / name).exists() or (path / name).is_symlink()]


def _check_resumable(path: pathlib.Path, config: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """(whether a run with `config`'s fingerprint is already there, notes to log); reads only.

    Raises:
      RunDirError: the directory holds another run, a run this module cannot vouch for, or a damaged config.json.
    """
    config_path = path / CONFIG_FILE
    leftovers = [name for name in _existing_owned(path) if name != CONFIG_FILE] if path.is_dir() else []
    if not config_path.exists():
        if leftovers:
            raise RunDirError(f"{path} holds files of a run ({', '.join(leftovers)}) but no {CONFIG_FILE}, so the "
                              f"settings that produced them are unknown. {WAYS_OUT}")
        return False, []
    if not leftovers:
        try:
            resumed, notes = _check_resumable_config(path, config)
        except RunDirError:
            return False, [f"{config_path} is replaced: the run it describes saved nothing else"]
        return resumed, notes
    return _check_resumable_config(path, config)


def _check_resumable_config(path: pathlib.Path, config: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """`_check_resumable` once config.json is known to exist."""
    config_path = path / CONFIG_FILE
    stored = read_json(config_path, expected="the run's settings", remedy=_config_remedy(path))
    if "format" not in stored:
        raise RunDirError(
            f"{config_path} was written by an older hvae_jax, which wrote {CONFIG_FILE} before checking anything, so "
            f"it may describe other settings than the checkpoints beside it; that run is not resumed. {WAYS_OUT}"
        )
    _check_format(config_path, stored)
    differences = compare(_as_written_today(stored), config["fingerprint"], _updates_per_epoch(path))
    if differences:
        lines = "\n".join(f"  {difference}" for difference in differences)
        raise RunDirError(
            f"{path} holds a run whose settings differ in what changes results:\n{lines}\n"
            f"Resuming it would mix the two runs. {WAYS_OUT}",
            tuple(differences),
        )
    return True, _changes_kept(stored, config)


def _check_format(config_path: pathlib.Path, config: Mapping[str, Any]) -> None:
    """Raises RunDirError unless `config` is a config.json of this format with its three sections."""
    if config.get("format", FORMAT) != FORMAT:
        raise RunDirError(f"{config_path} has format {config['format']!r}; this hvae_jax reads format {FORMAT}: "
                          "use the hvae_jax that trained the run")
    for key in SECTIONS:
        if not isinstance(config.get(key), dict):
            raise RunDirError(f"{config_path} has no {key!r} object: expected the run's settings, model and "
                              f"training configuration. {_config_remedy(config_path.parent)}")
    stored = config.get("fingerprint") if "format" in config else {section: {} for section in SECTIONS}
    if not (isinstance(stored, dict) and all(isinstance(stored.get(section), dict) for section in SECTIONS)):
        raise RunDirError(f"{config_path} has no valid 'fingerprint' object: expected the settings that change the "
                          f"run's results. {_config_remedy(config_path.parent)}")


def _remove(entry: pathlib.Path) -> None:
    if entry.is_symlink() or entry.is_file():
        entry.unlink()  # a link goes, never what it points to
    elif entry.is_dir():
        shutil.rmtree(entry)


def _remove_owned(path: pathlib.Path) -> None:
    for entry in path.iterdir():
        if _TEMPORARY.match(entry.name):
            _remove(entry)
    for name in OWNED:
        _remove(path / name)


def _lock(path: pathlib.Path):
    """An exclusive lock on the directory's lock file, held until the returned file is closed (None off POSIX)."""
    if fcntl is None:
        return None
    lock_path = path / LOCK_FILE
    handle = open(lock_path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirError(f"{path} is in use by another training process (pid {holder}, holding {lock_path}): wait "
                          "for it to finish, or train in a new --workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class RunPaths:
    """Where a run's files are in directory `path`: the one place that names them.

    `RunDir` (a directory checked and opened for a run) is a `RunPaths`; a bare `RunPaths(workdir)` serves code
    given only a directory, such as `train.fit(..., workdir)` called from a script, or `hvae plot`.
    """

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)

    @classmethod
    def of(cls, run: str | pathlib.Path | RunPaths) -> RunPaths:
        """`run` itself when it is already a `RunPaths` (a `RunDir`), else the paths of directory `run`."""
        return run if isinstance(run, RunPaths) else cls(run)

    @property
    def config_path(self) -> pathlib.Path:
        return self.path / CONFIG_FILE

    @property
    def results_path(self) -> pathlib.Path:
        return self.path / RESULTS_FILE

    @property
    def split_path(self) -> pathlib.Path:
        return self.path / SPLIT_FILE

    @property
    def split_info_path(self) -> pathlib.Path:
        return self.path / SPLIT_INFO_FILE

    @property
    def metrics_path(self) -> pathlib.Path:
        return self.path / METRICS_FILE

    @property
    def tensorboard_dir(self) -> pathlib.Path:
        return self.path / TENSORBOARD_DIR

    @property
    def checkpoints_dir(self) -> pathlib.Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def plots_dir(self) -> pathlib.Path:
        return self.path / PLOTS_DIR

    def __repr__(self) -> str:
        return f"RunPaths({str(self.path)!r})"


class RunDir(RunPaths):
    """One run's directory. Open it with `open_for_training` or `open_for_reading`; nothing else builds its paths.

    Attributes:
      path: the directory.
      config: config.json's content: "format", "fingerprint", "settings", "model" and "train".
      resumed: a run with the same fingerprint was already there (training) / always True (reading).
      legacy: config.json predates fingerprints (reading only).
      notes: lines worth logging (settings that changed without changing results, a run continued to more epochs,
        a legacy config.json).
    """

    def __init__(self, path: pathlib.Path, config: dict, *, resumed: bool, legacy: bool = False,
                 notes: tuple[str, ...] = (), writable: bool = True, lock=None):
        super().__init__(path)
        self.config = config
        self.resumed = resumed
        self.legacy = legacy
        self.notes = notes
        self._writable = writable
        self._lock = lock

    @classmethod
    def open_for_training(
        cls,
        workdir: str | pathlib.Path,
        *,
        settings: Mapping[str, Any],
        model: Mapping[str, Any],
        train: Mapping[str, Any],
        overwrite: bool = False,
        writer: bool = True,
    ) -> RunDir:
        """Claims `workdir` for a run of these settings, checking any run already there before writing anything.

        When the checks pass, it creates the directory, takes the run's lock (released by `close`), removes the
        previous run's files with `overwrite`, and writes config.json with the fingerprint.

        Args:
          settings, model, train: the resolved configuration as plain dicts (`dataclasses.asdict`); `model` carries
            the model's "kind".
          overwrite: remove the files of any run there (only `OWNED`, never anything else) and start clean.
          writer: False for the processes of a multi-host run other than the first: they check (unless `overwrite`)
            but neither lock nor write.

        Raises:
          RunDirError: another run is there (the message lists each differing setting, old -> new, and the two ways
            out), config.json is damaged or from an older hvae_jax, run files are there without a config.json, or
            another process is training in the directory.
        """
        path = pathlib.Path(workdir)
        config = {"format": FORMAT, "fingerprint": fingerprint(settings, model, train),
                  "settings": _plain("settings", settings), "model": _plain("model", model),
                  "train": _plain("train", train)}
        if path.exists() and not path.is_dir():
            raise RunDirError(f"--workdir {path} is a file, not a directory")
        resumed, notes = (False, []) if overwrite else _check_resumable(path, config)
        if not writer:
            return cls(path, config, resumed=resumed, notes=tuple(notes), writable=False)
        path.mkdir(parents=True, exist_ok=True)
        lock = _lock(path)
        try:
            if overwrite:
                _remove_owned(path)
            else:  # again under the lock: another process may have claimed the directory since
                resumed, notes = _check_resumable(path, config)
                for entry in path.iterdir():
                    if _TEMPORARY.match(entry.name):
                        _remove(entry)
            write_json(path / CONFIG_FILE, config)
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        return cls(path, config, resumed=resumed, notes=tuple(notes), lock=lock)

    @classmethod
    def open_for_reading(cls, workdir: str | pathlib.Path) -> RunDir:
        """The run in `workdir`, for evaluating it or recommending with it; writes nothing (but `write_results`).

        Raises:
          FileNotFoundError: no directory or no config.json there.
          RunDirError: config.json is damaged, lacks a section, or has a format this version does not read.
        """
        path = pathlib.Path(workdir)
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory: is it the --workdir of an `hvae train` run?")
        config_path = path / CONFIG_FILE
        if not config_path.exists():
            raise FileNotFoundError(f"{config_path} not found: is {path} the --workdir of an `hvae train` run?")
        config = read_json(config_path, expected="the run's settings", remedy=_config_remedy(path))
        _check_format(config_path, config)
        legacy = "format" not in config
        notes = (f"{config_path} predates fingerprinted run directories: it is trusted to describe the run",) \
            if legacy else ()
        return cls(path, config, resumed=True, legacy=legacy, notes=notes)

    @property
    def settings(self) -> dict:
        return self.config["settings"]

    @property
    def model(self) -> dict:
        return self.config["model"]

    @property
    def train(self) -> dict:
        return self.config["train"]

    @property
    def writer(self) -> bool:
        """False for a multi-host run's other processes, which check the directory but write nothing."""
        return self._writable

    def _require_writable(self) -> None:
        if not self._writable:
            raise RuntimeError(f"{self.path} was opened with writer=False (a multi-host run's other process)")

    def read_results(self) -> dict | None:
        """results.json, or None before the run has written it."""
        if not self.results_path.exists():
            return None
        remedy = f"Run `hvae evaluate --workdir {self.path}` to write it again from the run's checkpoints."
        return read_json(self.results_path, expected="the run's results", remedy=remedy)

    def write_results(self, results: Mapping[str, Any]) -> None:
        """Replaces results.json atomically."""
        self._require_writable()
        write_json(self.results_path, results)

    def _split_remedy(self) -> str:
        return (f"Delete {SPLIT_FILE} and {SPLIT_INFO_FILE} from {self.path} to split again from the settings in "
                f"{CONFIG_FILE} (the same settings and data give the same split), or train with --overwrite.")

    def _complete_split(self, required: bool) -> bool:
        """Whether a complete split is saved (split.json, written last, marks it so), with split.json checked.

        Raises:
          FileNotFoundError: `required` and no complete split is saved.
          RunDirError: split.json is damaged.
        """
        if not (self.split_path.exists() and self.split_info_path.exists()):
            if required:
                raise FileNotFoundError(f"no complete split in {self.path} ({SPLIT_FILE} and {SPLIT_INFO_FILE}): the "
                                        "run stopped before saving it; train it again")
            return False
        info = read_json(self.split_info_path, expected=f"the statistics of the split in {SPLIT_FILE}",
                         remedy=self._split_remedy())
        if not isinstance(info.get("statistics"), dict):
            raise RunDirError(f"{self.split_info_path} has no 'statistics' object: expected the statistics of the "
                              f"split in {SPLIT_FILE}. {self._split_remedy()}")
        return True

    def _read_split_arrays(self, read):
        try:
            return read(self.path)
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error) as error:
            raise RunDirError(f"{self.split_path} cannot be read ({type(error).__name__}: {error}): expected the "
                              f"run's split arrays. {self._split_remedy()}") from error

    def load_split(self, *, required: bool = False):
        """The run's saved split, or None when there is none (split.json is written last and marks it complete).

        Raises:
          FileNotFoundError: `required` and no complete split is saved.
          RunDirError: split.json or split.npz is damaged (the message names it).
        """
        if not self._complete_split(required):
            return None
        return self._read_split_arrays(splits_lib.load_split)

    def split_ids(self):
        """(item ids [n_items], training user ids [n_train]) of the run's saved split, as strings, without reading
        its matrices. Raises as `load_split(required=True)` does."""
        self._complete_split(required=True)
        return self._read_split_arrays(splits_lib.load_split_ids)

    def save_split(self, split) -> None:
        """Saves `split` (a `data.splits.Split`): split.npz replaced atomically, then split.json written last."""
        self._require_writable()
        staging = pathlib.Path(tempfile.mkdtemp(prefix=".split.", suffix=".tmp", dir=self.path))
        try:
            splits_lib.save_split(split, staging, fingerprint_id(self.config["fingerprint"]["settings"]))
            with open(staging / SPLIT_FILE, "rb") as file:
                os.fsync(file.fileno())
            info = read_json(staging / SPLIT_INFO_FILE, expected="the split's statistics", remedy="")
            # Without split.json the old split counts as absent, so no moment pairs the new arrays with old statistics.
            self.split_info_path.unlink(missing_ok=True)
            os.replace(staging / SPLIT_FILE, self.split_path)
            write_json(self.split_info_path, info)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def close(self) -> None:
        """Releases the run's lock; safe to call twice."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, resumed={self.resumed}, legacy={self.legacy})"
