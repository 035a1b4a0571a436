"""Fetching a data set by name: download its archive once, verify its SHA-256, unpack the needed files into the cache.

The table of data sets and the reading of the cache are in `datasets.py`; their names are importable from here too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import glob
import hashlib
import http.client
import json
import lzma
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from hvae_jax.data.datasets import (
    CACHE_ENV,
    DATASETS,
    MANIFEST_NAME,
    NETFLIX_MESSAGE,
    DatasetSource,
    NotDownloadableError,
    NotFetchedError,
    SourceError,
    UnknownDatasetError,
    cache_dir,
    dataset_paths,
    downloadable_source,
    get_source,
    list_datasets,
    read_manifest,
)

try:
    import fcntl
except ImportError:  # Windows: fetches into one cache are not serialised there.
    fcntl = None

__all__ = [
    "CACHE_ENV", "DATASETS", "EXTRACTED_BYTES_ENV", "MANIFEST_NAME", "MEMBERS_ENV", "MIRROR_ENV", "NETFLIX_MESSAGE",
    "RATIO_ENV", "DatasetSource", "ExtractionLimits", "cache_dir", "dataset_paths", "fetch", "get_source",
    "list_datasets",
    "ArchiveError", "ChecksumError", "DownloadError", "ExtractionLimitError", "NotDownloadableError",
    "NotFetchedError", "SourceError", "UnknownDatasetError", "UnverifiedDownloadWarning",
]

# Environment variables the user can set: a mirror for the whole registry, and the limits of `ExtractionLimits`.
MIRROR_ENV = "HVAE_JAX_MIRROR"
EXTRACTED_BYTES_ENV = "HVAE_JAX_MAX_EXTRACTED_BYTES"
RATIO_ENV = "HVAE_JAX_MAX_COMPRESSION_RATIO"
MEMBERS_ENV = "HVAE_JAX_MAX_ARCHIVE_MEMBERS"

_CHUNK_BYTES = 1 << 20
_USER_AGENT = "hvae_jax-data-fetch"

# Members smaller than this are exempt from the ratio limit: a short file of repeated text may legitimately compress
# a hundredfold, and a few of them cannot fill a disk.
_RATIO_EXEMPT_BYTES = 1 << 20

# What zipfile and its decompressors raise on a member they cannot read: a bad header or CRC, a corrupt deflate or
# LZMA stream, a stream that ends early, a compression method zipfile does not implement. (bzip2 raises OSError,
# which is caught where a member is read, and only there, so that a full disk is never blamed on the archive.)
_UNREADABLE = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError)


class DownloadError(SourceError):
    """The archive could not be downloaded whole: offline, HTTP error, or the connection was cut."""


class ChecksumError(SourceError):
    """The downloaded (or cached) archive does not have the published SHA-256."""


class ArchiveError(SourceError):
    """The archive is damaged, not a zip file, or lacks the interactions file; it is deleted from the cache."""


class ExtractionLimitError(SourceError):
    """The archive would unpack to more than `ExtractionLimits` allows; it is kept, so the limit can be raised."""


class UnverifiedDownloadWarning(UserWarning):
    """An archive was accepted without a published SHA-256 to check it against."""


@dataclasses.dataclass(frozen=True)
class ExtractionLimits:
    """How far an archive may expand when unpacked: a guard against zip bombs, checked before anything is written.

    The defaults admit every data set in the table with room to spare (the largest file, MSD's train_triplets.txt, is
    about 3 GB from a 0.5 GB archive; MovieLens CSV files compress 3-5 fold) and stop a zip bomb, whose deflate
    stream expands hundreds to a thousand fold.

    Attributes:
      total_bytes: most bytes the unpacked members of one archive may take together (`$HVAE_JAX_MAX_EXTRACTED_BYTES`).
      ratio: most uncompressed bytes per compressed byte of any unpacked member over 1 MiB
        (`$HVAE_JAX_MAX_COMPRESSION_RATIO`).
      members: most entries an archive may list (`$HVAE_JAX_MAX_ARCHIVE_MEMBERS`).
    """

    total_bytes: int = 8 << 30
    ratio: int = 100
    members: int = 10_000

    @classmethod
    def from_environment(cls) -> ExtractionLimits:
        """The defaults, each replaced by its environment variable where that is set and non-empty.

        Raises:
          SourceError: a variable is set to something other than a positive whole number.
        """
        defaults = cls()
        values = {}
        for field, variable in (("total_bytes", EXTRACTED_BYTES_ENV), ("ratio", RATIO_ENV), ("members", MEMBERS_ENV)):
            text = os.environ.get(variable, "").strip()
            if not text:
                continue
            if not text.isdigit() or int(text) == 0:
                raise SourceError(
                    f"{variable}={text!r} is not a positive whole number; set it to one (the default is "
                    f"{getattr(defaults, field)}) or unset it."
                )
            values[field] = int(text)
        return cls(**values)


def fetch(
    name: str,
    *,
    cache: str | os.PathLike[str] | None = None,
    url: str | None = None,
    sha256: str | None = None,
    limits: ExtractionLimits | None = None,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download, verify and unpack a registered data set, doing only what the cache does not already hold.

    Steps: (1) if `cache/<name>/` is a finished extraction of an archive with the expected hash, return at once;
    (2) otherwise take the cache's lock (one fetch at a time writes into a cache) and delete what a killed fetch of
    this data set left behind; (3) if `cache/<archive>` exists and has the expected SHA-256, use it without
    downloading; (4) otherwise download to a temporary file beside it, and move it into place only once the byte count
    equals Content-Length and the SHA-256 matches; (5) check the archive against `limits`, extract the interactions,
    titles and user-features members into a temporary folder and rename it to `cache/<name>/`. A failed, interrupted
    (Ctrl-C) or terminated (SIGTERM) call leaves no partial file.

    The URL is `url` if given, else `$HVAE_JAX_MIRROR/<archive>` if that variable is set (to point the whole
    registry at a mirror), else the registry's URL.

    Args:
      name: a key of `DATASETS`.
      cache: cache root; defaults to `cache_dir()`.
      url: download address overriding the registry and the mirror.
      sha256: expected SHA-256 overriding the registry's (for a mirror serving its own build of the archive).
      limits: how far the archive may expand; defaults to `ExtractionLimits.from_environment()`.
      progress: show a tqdm progress bar while downloading.
      timeout: seconds to wait for the server to connect or to send more bytes.

    Returns:
      Path of the extracted interactions file.

    Raises:
      UnknownDatasetError: `name` is not registered.
      NotDownloadableError: the data set is not distributed (Netflix Prize).
      DownloadError: offline, HTTP error, or connection cut mid-file.
      ChecksumError: the archive's SHA-256 differs from the published one.
      ArchiveError: the archive is not a zip file, is damaged, or lacks the interactions file; it is deleted.
      ExtractionLimitError: the archive would expand beyond `limits`; it is kept.
      SourceError: a limit's environment variable is malformed.
    """
    source = downloadable_source(name)
    if sha256 is not None:
        source = dataclasses.replace(source, sha256=sha256.lower())
    root = cache_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    extracted = root / name
    target = root / source.archive

    finished = _finished_extraction(extracted, source)
    if finished is not None:
        return finished
    if limits is None:
        limits = ExtractionLimits.from_environment()

    with _cache_lock(root, progress=progress), _terminate_as_exit():
        _remove_leftovers(root, source)
        # Another process may have finished this very fetch while we waited for the lock.
        finished = _finished_extraction(extracted, source)
        if finished is not None:
            return finished
        resolved_url = _resolve_url(source, url)
        digest = _cached_archive_digest(target, source)
        if digest is None:
            digest = _download(resolved_url, target, source, progress=progress, timeout=timeout)
        if source.sha256 is None:
            warnings.warn(
                f"No published SHA-256 for {source.archive}; accepted it unchecked with SHA-256 {digest} "
                f"(recorded in {extracted / MANIFEST_NAME})",
                UnverifiedDownloadWarning,
                stacklevel=2,
            )
        return _extract(source, target, extracted, digest=digest, url=resolved_url, limits=limits)


def _cached_archive_digest(target: Path, source: DatasetSource) -> str | None:
    """The SHA-256 of the archive already at `target` when it may be used as it is, else None (download it)."""
    if not target.is_file():
        return None
    digest = _sha256_of_file(target)
    if source.sha256 is not None and digest != source.sha256:
        # A stale or damaged copy (or one placed by hand from elsewhere): replace it with a fresh download.
        warnings.warn(f"{target} has SHA-256 {digest}, expected {source.sha256}; downloading it again", stacklevel=3)
        return None
    return digest


def _finished_extraction(extracted: Path, source: DatasetSource) -> Path | None:
    """The interactions file of a finished extraction of the expected archive in `extracted`, else None."""
    manifest = read_manifest(extracted)
    if manifest is None:
        return None
    if source.sha256 is not None and manifest.get("sha256") != source.sha256:
        return None
    return extracted / manifest["files"]["interactions"]


@contextlib.contextmanager
def _cache_lock(root: Path, *, progress: bool) -> Iterator[None]:
    """Hold an exclusive lock on the cache folder `root`, across processes, for as long as the context lasts.

    The kernel drops the lock when its holder dies, however it dies, so while the lock is held any temporary file in
    the cache was left by a process that is gone and can be deleted. Fetches that find their data set already
    unpacked never take it. Without flock (Windows) or where the file system refuses it, fetches go unserialised.
    """
    if fcntl is None:
        yield
        return
    descriptor = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"waiting for another fetch into {root} to finish", file=sys.stderr)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError:
            pass  # Some network file systems have no locks: proceed as on Windows.
        yield
    finally:
        os.close(descriptor)  # Releases the lock.


def _remove_leftovers(root: Path, source: DatasetSource) -> None:
    """Delete the temporary files of earlier fetches of `source` that were killed before they could clean up.

    Called with the cache lock held, so no living process is writing them. What cannot be deleted (a file still open
    on Windows, where there is no lock) is left for a later call.
    """
    name, archive = glob.escape(source.name), glob.escape(source.archive)
    for pattern in (f".{archive}.*.part", f".{name}.*.part", f".{name}.*.old"):
        for leftover in root.glob(pattern):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    leftover.unlink()


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit for as long as the context lasts, so that `kill` cleans up as Ctrl-C does.

    Python's default on SIGTERM is to die on the spot, without running `finally` blocks, which would leave partial
    files behind. Only the main thread may set a handler, and a handler the program installed itself is left alone.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def exit_cleanly(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_cleanly)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _resolve_url(source: DatasetSource, url: str | None) -> str:
    if url is not None:
        return url
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return f"{mirror.rstrip('/')}/{source.archive}"
    assert source.url is not None
    return source.url


def _sha256_of_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _offline_message(url: str, reason: object, target: Path, name: str) -> str:
    return (
        f"Could not reach {url} ({reason}). This machine seems to be offline or the server is unreachable. "
        f"To install the data set by hand, download {url} on a machine with internet access and copy it to "
        f"{target} ; then `hvae data fetch {name}` verifies and unpacks it without downloading."
    )


def _download(url: str, target: Path, source: DatasetSource, *, progress: bool, timeout: float) -> str:
    """Stream `url` into `target` through a temporary file; return the SHA-256 of what was written."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        message = f"Downloading {url} failed: the server answered HTTP {error.code} {error.reason}"
        raise DownloadError(message) from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(_offline_message(url, reason, target, source.name)) from error
    except http.client.HTTPException as error:
        raise DownloadError(f"Downloading {url} failed: the server sent a malformed answer ({error!r})") from error

    with response:
        header = response.headers.get("Content-Length")
        expected_bytes = int(header) if header and header.isdigit() else None
        # Same directory as the target so that os.replace is an atomic rename, never a cross-device copy.
        handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False)
        temporary = Path(handle.name)
        hasher = hashlib.sha256()
        received = 0
        try:
            with handle, tqdm(
                total=expected_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=target.name,
                disable=not progress,
            ) as bar:
                while True:
                    chunk = _read_chunk(response, url)
                    if not chunk:
                        break
                    handle.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if expected_bytes is not None and received != expected_bytes:
                raise DownloadError(
                    f"Downloading {url} was cut off after {received} of {expected_bytes} bytes; "
                    "nothing was kept, run the command again."
                )
            digest = hasher.hexdigest()
            if source.sha256 is not None and digest != source.sha256:
                raise ChecksumError(
                    f"{url} does not have the published checksum: expected SHA-256 {source.sha256}, "
                    f"got {digest} ({received} bytes); the file was deleted."
                )
            os.replace(temporary, target)
        except BaseException:
            # Covers KeyboardInterrupt too: a half-written archive must never look like a finished one.
            temporary.unlink(missing_ok=True)
            raise
    return digest


def _read_chunk(response: BinaryIO, url: str) -> bytes:
    try:
        return response.read(_CHUNK_BYTES)
    except (OSError, http.client.HTTPException) as error:
        # Resets, timeouts and IncompleteRead all mean the same to the user: the transfer broke, try again.
        raise DownloadError(
            f"Downloading {url} was interrupted ({error!r}); nothing was kept, run the command again."
        ) from error


def _extract(
    source: DatasetSource, archive: Path, extracted: Path, *, digest: str, url: str, limits: ExtractionLimits
) -> Path:
    """Unpack the needed members of `archive` into `extracted`, atomically, and write the manifest last.

    A damaged archive is deleted, since no later call could use it; one over the limits is kept for a retry with
    higher limits.
    """
    staging = Path(tempfile.mkdtemp(dir=extracted.parent, prefix=f".{extracted.name}.", suffix=".part"))
    try:
        try:
            files = _unpack(source, archive, staging, limits)
        except ArchiveError as error:
            archive.unlink(missing_ok=True)
            raise ArchiveError(
                f"{error}; it was deleted, run `hvae data fetch {source.name}` again to download it afresh (if that "
                "fails the same way, the copy at the source is damaged)."
            ) from error.__cause__
        manifest = {
            "name": source.name,
            "url": url,
            "archive": source.archive,
            "sha256": digest,
            "sha256_verified": source.sha256 is not None,
            "bytes": archive.stat().st_size,
            "format": source.format,
            "files": files,
            "fetched_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _swap_in(staging, extracted)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return extracted / files["interactions"]


def _unpack(source: DatasetSource, archive: Path, staging: Path, limits: ExtractionLimits) -> dict[str, str | None]:
    """Write the interactions, titles and user-features members of `archive` into `staging`, under their base names.

    Returns:
      The file name in `staging` of each of the three, or None for an optional member the archive lacks.
    """
    wanted = {
        "interactions": source.member,
        "titles": source.titles_member,
        "user_features": source.user_features_member,
    }
    try:
        bundle = zipfile.ZipFile(archive)
    except _UNREADABLE as error:
        raise ArchiveError(f"{archive} is not a readable zip file ({error})") from error
    with bundle:
        listed = len(bundle.infolist())
        if listed > limits.members:
            raise _over_limit(archive, f"it lists {listed} members", f"{limits.members} members", "members", listed)
        chosen: dict[str, zipfile.ZipInfo | None] = {}
        for key, member in wanted.items():
            try:
                chosen[key] = bundle.getinfo(member) if member is not None else None
            except KeyError:
                if key == "interactions":
                    raise ArchiveError(f"{archive} has no member {member!r}") from None
                chosen[key] = None
        members = [info for info in chosen.values() if info is not None]
        for info in members:
            _check_member(info, archive, limits)
        total = sum(info.file_size for info in members)
        if total > limits.total_bytes:
            names = ", ".join(repr(info.filename) for info in members)
            finding = f"members {names} would unpack to {total:,} bytes"
            raise _over_limit(archive, finding, f"{limits.total_bytes:,} bytes", "total_bytes", total)
        for info in members:
            # Flattened to the base name: readers need no archive layout and no member can escape the folder.
            _copy_member(bundle, info, staging / Path(info.filename).name, archive)
    return {key: Path(info.filename).name if info is not None else None for key, info in chosen.items()}


def _check_member(info: zipfile.ZipInfo, archive: Path, limits: ExtractionLimits) -> None:
    """Refuse, before anything is written, a member that is a link, encrypted, or expands like a zip bomb."""
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ArchiveError(f"{archive}: member {info.filename!r} is a symbolic link, not a file")
    if info.flag_bits & 0x1:
        raise ArchiveError(f"{archive}: member {info.filename!r} is encrypted")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > _RATIO_EXEMPT_BYTES and ratio > limits.ratio:
        finding = (
            f"member {info.filename!r} would expand {ratio:.0f} fold ({info.compress_size:,} bytes to "
            f"{info.file_size:,})"
        )
        raise _over_limit(archive, finding, f"{limits.ratio} fold", "ratio", int(ratio) + 1)


def _copy_member(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, destination: Path, archive: Path) -> None:
    """Decompress member `info` into `destination`, refusing to write more than its header declared.

    The limits were checked against the declared sizes; zipfile happens to stop there too, but this does not rely on it.
    """

    def damaged(reason: object) -> ArchiveError:
        return ArchiveError(
            f"{archive}: member {info.filename!r} cannot be unpacked ({reason}): the archive is damaged or uses a "
            "feature zipfile cannot read"
        )

    try:
        origin = bundle.open(info)
    except _UNREADABLE as error:
        raise damaged(error) from error
    written = 0
    with origin, open(destination, "wb") as copy:
        while True:
            try:
                chunk = origin.read(_CHUNK_BYTES)
            except (*_UNREADABLE, OSError) as error:
                raise damaged(error) from error
            if not chunk:
                return
            written += len(chunk)
            if written > info.file_size:
                raise damaged(f"it holds more than the {info.file_size:,} bytes its header declares")
            copy.write(chunk)


def _over_limit(archive: Path, finding: str, limit: str, field: str, suggestion: int) -> ExtractionLimitError:
    variable = {"total_bytes": EXTRACTED_BYTES_ENV, "ratio": RATIO_ENV, "members": MEMBERS_ENV}[field]
    return ExtractionLimitError(
        f"{archive}: {finding}, over the limit of {limit} that guards against zip bombs. Nothing was unpacked and "
        f"the archive was kept: if you trust it, raise the limit ({variable}={suggestion} in the environment, or "
        f"fetch(..., limits=ExtractionLimits({field}={suggestion}))) and run the same command again."
    )


def _swap_in(staging: Path, extracted: Path) -> None:
    """Rename `staging` to `extracted`, moving any older (possibly half-built) folder out of the way first."""
    if extracted.exists():
        retired = Path(tempfile.mkdtemp(dir=extracted.parent, prefix=f".{extracted.name}.", suffix=".old"))
        os.replace(extracted, retired / extracted.name)
        shutil.rmtree(retired, ignore_errors=True)
    try:
        os.replace(staging, extracted)
    except OSError:
        # Another process finished the same extraction between our check and the rename: keep theirs.
        if read_manifest(extracted) is None:
            raise
        shutil.rmtree(staging, ignore_errors=True)
