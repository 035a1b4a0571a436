"""Fetching a data set by name: download its archive once, verify its SHA-256, unpack the needed files into the cache.

The table of data sets and the reading of the cache are in `datasets.py`; their names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import http.client
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

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

__all__ = [
    "CACHE_ENV", "DATASETS", "MANIFEST_NAME", "MIRROR_ENV", "NETFLIX_MESSAGE",
    "DatasetSource", "cache_dir", "dataset_paths", "fetch", "get_source", "list_datasets",
    "ArchiveError", "ChecksumError", "DownloadError", "NotDownloadableError", "NotFetchedError", "SourceError",
    "UnknownDatasetError", "UnverifiedDownloadWarning",
]

# Environment variable pointing the whole registry at a mirror.
MIRROR_ENV = "HVAE_JAX_MIRROR"

_CHUNK_BYTES = 1 << 20
_USER_AGENT = "hvae_jax-data-fetch"


class DownloadError(SourceError):
    """The archive could not be downloaded whole: offline, HTTP error, or the connection was cut."""


class ChecksumError(SourceError):
    """The downloaded (or cached) archive does not have the published SHA-256."""


class ArchiveError(SourceError):
    """The archive is not a readable zip file or lacks the interactions file."""


class UnverifiedDownloadWarning(UserWarning):
    """An archive was accepted without a published SHA-256 to check it against."""


def fetch(
    name: str,
    *,
    cache: str | os.PathLike[str] | None = None,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download, verify and unpack a registered data set, doing only what the cache does not already hold.

    Steps: (1) if `cache/<name>/` is a finished extraction of an archive with the expected hash, return at once;
    (2) if `cache/<archive>` exists and has the expected SHA-256, use it without downloading; (3) otherwise
    download to a temporary file beside it, and move it into place only once the byte count equals
    Content-Length and the SHA-256 matches; (4) extract the interactions, titles and user-features members into a
    temporary folder and rename it to `cache/<name>/`. An interrupted or failed call leaves no partial file.

    The URL is `url` if given, else `$HVAE_JAX_MIRROR/<archive>` if that variable is set (to point the whole
    registry at a mirror), else the registry's URL.

    Args:
      name: a key of `DATASETS`.
      cache: cache root; defaults to `cache_dir()`.
      url: download address overriding the registry and the mirror.
      sha256: expected SHA-256 overriding the registry's (for a mirror serving its own build of the archive).
      progress: show a tqdm progress bar while downloading.
      timeout: seconds to wait for the server to connect or to send more bytes.

    Returns:
      Path of the extracted interactions file.

    Raises:
      UnknownDatasetError: `name` is not registered.
      NotDownloadableError: the data set is not distributed (Netflix Prize).
      DownloadError: offline, HTTP error, or connection cut mid-file.
      ChecksumError: the archive's SHA-256 differs from the published one.
      ArchiveError: the archive is not a zip file or lacks the interactions file.
    """
    source = downloadable_source(name)
    if sha256 is not None:
        source = dataclasses.replace(source, sha256=sha256.lower())
    root = cache_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    extracted = root / name
    target = root / source.archive

    manifest = read_manifest(extracted)
    if manifest is not None and _manifest_matches(manifest, source):
        return extracted / manifest["files"]["interactions"]

    resolved_url = _resolve_url(source, url)
    digest = None
    if target.is_file():
        digest = _sha256_of_file(target)
        if source.sha256 is not None and digest != source.sha256:
            # A stale or damaged copy (or one placed by hand from elsewhere): replace it with a fresh download.
            warnings.warn(
                f"{target} has SHA-256 {digest}, expected {source.sha256}; downloading it again",
                stacklevel=2,
            )
            digest = None
    if digest is None:
        digest = _download(resolved_url, target, source, progress=progress, timeout=timeout)

    if source.sha256 is None:
        warnings.warn(
            f"No published SHA-256 for {source.archive}; accepted it unchecked with SHA-256 {digest} "
            f"(recorded in {extracted / MANIFEST_NAME})",
            UnverifiedDownloadWarning,
            stacklevel=2,
        )
    return _extract(source, target, extracted, digest=digest, url=resolved_url)


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


def _extract(source: DatasetSource, archive: Path, extracted: Path, *, digest: str, url: str) -> Path:
    """Unpack the needed members of `archive` into `extracted`, atomically, and write the manifest last."""
    wanted = {
        "interactions": source.member,
        "titles": source.titles_member,
        "user_features": source.user_features_member,
    }
    staging = Path(tempfile.mkdtemp(dir=extracted.parent, prefix=f".{extracted.name}.", suffix=".part"))
    try:
        files: dict[str, str | None] = {}
        try:
            with zipfile.ZipFile(archive) as bundle:
                names = set(bundle.namelist())
                for key, member in wanted.items():
                    if member is None or member not in names:
                        if key == "interactions":
                            raise ArchiveError(
                                f"{archive} has no member {member!r}; delete it and run `hvae data fetch "
                                f"{source.name}` again."
                            )
                        files[key] = None
                        continue
                    # Flattened to the base name: readers need no archive layout and no member can escape the folder.
                    local_name = Path(member).name
                    with bundle.open(member) as origin, open(staging / local_name, "wb") as copy:
                        shutil.copyfileobj(origin, copy, _CHUNK_BYTES)
                    files[key] = local_name
        except zipfile.BadZipFile as error:
            raise ArchiveError(
                f"{archive} is not a readable zip file ({error}); delete it and run `hvae data fetch "
                f"{source.name}` again."
            ) from error
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


def _manifest_matches(manifest: dict[str, Any], source: DatasetSource) -> bool:
    if source.sha256 is None:
        return True
    return manifest.get("sha256") == source.sha256
