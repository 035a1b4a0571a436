"""Public data sets by name: where to download them, how to verify them, and where they live in the local cache.

`fetch` downloads, checks and unpacks an archive once; `dataset_paths` tells the readers where the files are afterwards.
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

# Environment variables the user can set.
CACHE_ENV = "HVAE_JAX_CACHE"
MIRROR_ENV = "HVAE_JAX_MIRROR"

# Written last into an extracted data set's folder: its presence means the extraction finished.
MANIFEST_NAME = "source.json"

_CHUNK_BYTES = 1 << 20
_USER_AGENT = "hvae_jax-data-fetch"

NETFLIX_MESSAGE = (
    "The Netflix Prize data is no longer distributed; pass the path to your copy "
    "(training_set/ directory or combined_data_*.txt) with --data PATH --format netflix"
)


class SourceError(Exception):
    """Base class of every error raised by this module, so a command line can catch them in one place."""


class DownloadError(SourceError):
    """The archive could not be downloaded whole: offline, HTTP error, or the connection was cut."""


class ChecksumError(SourceError):
    """The downloaded (or cached) archive does not have the published SHA-256."""


class ArchiveError(SourceError):
    """The archive is not a readable zip file or lacks the interactions file."""


class NotDownloadableError(SourceError):
    """The data set is known but cannot be downloaded (e.g. Netflix Prize); the user must supply a copy."""


class NotFetchedError(SourceError):
    """The data set has not been fetched into the cache yet."""


class UnknownDatasetError(SourceError, ValueError):
    """No data set of that name is registered."""


class UnverifiedDownloadWarning(UserWarning):
    """An archive was accepted without a published SHA-256 to check it against."""


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """Where a public data set comes from and which files of its archive the readers need.

    Attributes:
      name: registry key, also the name of the data set's folder in the cache.
      description: one line for `hvae data list`.
      url: download address of the archive, or None when the data set is not distributed any more.
      sha256: published SHA-256 of the archive as lowercase hex, or None when none is known (a warning is then
        printed and the computed hash is recorded in the cache).
      archive: file name of the archive in the cache directory (e.g. `ml-20m.zip`).
      member: path inside the zip of the interactions file.
      format: reader format name of the interactions file (`movielens-tsv`, `movielens-dat`, `csv`, `pairs`,
        `netflix`).
      default_min_rating: rating threshold for positives, 3.5 for MovieLens and Netflix as in Liang et al. 2018,
        whose preprocessing keeps `rating > 3.5` (strictly above, i.e. 4 stars and up); None where every row is a
        positive (play counts).
      titles_member: path inside the zip of the item titles file, in the data set's own layout.
      user_features_member: path inside the zip of the user demographics file.
      size: archive size in bytes, where published.
      licence: short note on the terms of use.
      citation: the reference to cite when publishing results on the data set.
    """

    name: str
    description: str
    url: str | None
    sha256: str | None
    archive: str | None
    member: str | None
    format: str
    default_min_rating: float | None = None
    titles_member: str | None = None
    user_features_member: str | None = None
    size: int | None = None
    licence: str = ""
    citation: str = ""

    @property
    def downloadable(self) -> bool:
        return self.url is not None and self.archive is not None and self.member is not None


_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
_MOVIELENS_LICENCE = (
    "GroupLens usage licence: research use, no commercial use or redistribution without permission, "
    "cite Harper & Konstan (2015); see the README inside the archive."
)
_MOVIELENS_CITATION = (
    "F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context. "
    "ACM Transactions on Interactive Intelligent Systems 5(4), 19:1-19:19. https://doi.org/10.1145/2827872"
)
# Liang et al. 2018 (Mult-VAE) keep ratings of 3.5 and above as positives on MovieLens.
_MOVIELENS_MIN_RATING = 3.5

DATASETS: dict[str, DatasetSource] = {
    "ml-100k": DatasetSource(
        name="ml-100k",
        description="MovieLens 100K: 100,000 ratings (1-5) from 943 users on 1,682 movies, 1997-98",
        url=f"{_GROUPLENS}/ml-100k.zip",
        # sha256 and size: TensorFlow Datasets, tensorflow_datasets/url_checksums/movielens.txt.
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        size=4_924_029,
        archive="ml-100k.zip",
        member="ml-100k/u.data",
        format="movielens-tsv",
        default_min_rating=_MOVIELENS_MIN_RATING,
        # u.item is pipe-separated latin-1 (id|title|date|...), unlike the movies files of the larger sets.
        titles_member="ml-100k/u.item",
        user_features_member="ml-100k/u.user",
        licence=_MOVIELENS_LICENCE,
        citation=_MOVIELENS_CITATION,
    ),
    "ml-1m": DatasetSource(
        name="ml-1m",
        description="MovieLens 1M: 1,000,209 ratings (1-5) from 6,040 users on about 3,900 movies, 2000-03",
        url=f"{_GROUPLENS}/ml-1m.zip",
        # sha256 and size: TensorFlow Datasets, tensorflow_datasets/url_checksums/movielens.txt.
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        size=5_917_549,
        archive="ml-1m.zip",
        member="ml-1m/ratings.dat",
        format="movielens-dat",
        default_min_rating=_MOVIELENS_MIN_RATING,
        titles_member="ml-1m/movies.dat",
        user_features_member="ml-1m/users.dat",
        licence=_MOVIELENS_LICENCE,
        citation=_MOVIELENS_CITATION,
    ),
    "ml-20m": DatasetSource(
        name="ml-20m",
        description="MovieLens 20M: 20,000,263 ratings (0.5-5) from 138,493 users on 27,278 movies, 1995-2015",
        url=f"{_GROUPLENS}/ml-20m.zip",
        # sha256 and size: TensorFlow Datasets, tensorflow_datasets/url_checksums/movielens.txt.
        sha256="96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
        size=198_702_078,
        archive="ml-20m.zip",
        member="ml-20m/ratings.csv",
        format="csv",
        default_min_rating=_MOVIELENS_MIN_RATING,
        titles_member="ml-20m/movies.csv",
        licence=_MOVIELENS_LICENCE,
        citation=_MOVIELENS_CITATION,
    ),
    "ml-25m": DatasetSource(
        name="ml-25m",
        description="MovieLens 25M: 25,000,095 ratings (0.5-5) from 162,541 users on 62,423 movies, 1995-2019",
        url=f"{_GROUPLENS}/ml-25m.zip",
        # sha256 and size: TensorFlow Datasets, tensorflow_datasets/url_checksums/movielens.txt.
        sha256="8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
        size=261_978_986,
        archive="ml-25m.zip",
        member="ml-25m/ratings.csv",
        format="csv",
        default_min_rating=_MOVIELENS_MIN_RATING,
        titles_member="ml-25m/movies.csv",
        licence=_MOVIELENS_LICENCE,
        citation=_MOVIELENS_CITATION,
    ),
    "ml-32m": DatasetSource(
        name="ml-32m",
        description="MovieLens 32M: 32,000,204 ratings (0.5-5) from 200,948 users on 87,585 movies, 1995-2023",
        url=f"{_GROUPLENS}/ml-32m.zip",
        # GroupLens publishes only an MD5 for this archive (ml-32m.zip.md5: d472be332d4daa821edc399621853b57).
        # The SHA-256 is the one ankane/disco-cli pins in src/download.rs; other public projects record the same
        # value next to the same size (238,950,008 bytes) and the official MD5.
        sha256="e4a68655d7386b8f95f2f2424b2ff975dfdd15ffd59e0d864a14dca43e99d6ee",
        size=238_950_008,
        archive="ml-32m.zip",
        member="ml-32m/ratings.csv",
        format="csv",
        default_min_rating=_MOVIELENS_MIN_RATING,
        titles_member="ml-32m/movies.csv",
        licence=_MOVIELENS_LICENCE,
        citation=_MOVIELENS_CITATION,
    ),
    "msd": DatasetSource(
        name="msd",
        description=(
            "Million Song Dataset, Echo Nest Taste Profile subset: 48,373,586 (user, song, play count) triplets "
            "from 1,019,318 users on 384,546 songs"
        ),
        url="http://millionsongdataset.com/sites/default/files/challenge/train_triplets.txt.zip",
        # No SHA-256 (or size) for train_triplets.txt.zip is published by the MSD site, and none was found in
        # public loaders (RecPack, implicit, TFDS); the hash computed at first download is recorded instead.
        sha256=None,
        archive="train_triplets.txt.zip",
        member="train_triplets.txt",
        format="pairs",
        default_min_rating=None,
        licence="Echo Nest Taste Profile: free for non-commercial research; see millionsongdataset.com/tasteprofile.",
        citation=(
            "Thierry Bertin-Mahieux, Daniel P.W. Ellis, Brian Whitman and Paul Lamere. 2011. The Million Song "
            "Dataset. In Proceedings of the 12th International Society for Music Information Retrieval Conference "
            "(ISMIR 2011)."
        ),
    ),
    "netflix": DatasetSource(
        name="netflix",
        description=(
            "Netflix Prize: 100,480,507 ratings (1-5) from 480,189 users on 17,770 movies; not downloadable, "
            "bring your own copy"
        ),
        url=None,
        sha256=None,
        archive=None,
        member=None,
        format="netflix",
        # Liang et al. 2018 binarise Netflix with the same rule as MovieLens.
        default_min_rating=_MOVIELENS_MIN_RATING,
        licence="Netflix Prize rules: non-commercial research; Netflix no longer distributes the data.",
        citation="James Bennett and Stan Lanning. 2007. The Netflix Prize. In Proceedings of KDD Cup and Workshop.",
    ),
}


def cache_dir() -> Path:
    """Root folder of downloaded archives and extracted data sets.

    Returns:
      `$HVAE_JAX_CACHE` if set and non-empty, else `~/.cache/hvae_jax`. The folder is not created here.
    """
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "hvae_jax"


def get_source(name: str) -> DatasetSource:
    """Registry entry of a data set.

    Raises:
      UnknownDatasetError: `name` is not in `DATASETS`; the message lists the known names.
    """
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise UnknownDatasetError(f"Unknown data set {name!r}; known data sets: {known}") from None


def archive_path(name: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """Where the downloaded archive of `name` is kept, which is also where to place it by hand when offline."""
    source = get_source(name)
    if source.archive is None:
        raise NotDownloadableError(NETFLIX_MESSAGE if name == "netflix" else f"{name} has no archive to download")
    return _root(cache) / source.archive


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
    source = get_source(name)
    if not source.downloadable:
        raise NotDownloadableError(NETFLIX_MESSAGE if name == "netflix" else f"{name} cannot be downloaded")
    if sha256 is not None:
        source = dataclasses.replace(source, sha256=sha256.lower())
    root = _root(cache)
    root.mkdir(parents=True, exist_ok=True)
    extracted = root / name
    target = root / source.archive

    manifest = _read_manifest(extracted)
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


def dataset_paths(name: str, cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Where the files of an already-fetched data set are, and how to read them.

    Args:
      name: a key of `DATASETS`.
      cache: cache root; defaults to `cache_dir()`.

    Returns:
      A dict with `interactions` (Path), `format` (reader format name), `titles` (Path or None),
      `user_features` (Path or None) and `default_min_rating` (float or None).

    Raises:
      NotDownloadableError: for the Netflix Prize, which is read from the user's own copy.
      NotFetchedError: the data set is not in the cache; the message says to run `hvae data fetch NAME`.
    """
    source = get_source(name)
    if not source.downloadable:
        raise NotDownloadableError(NETFLIX_MESSAGE if name == "netflix" else f"{name} cannot be downloaded")
    extracted = _root(cache) / name
    manifest = _read_manifest(extracted)
    if manifest is None:
        raise NotFetchedError(
            f"Data set {name!r} is not in the cache ({extracted}); run `hvae data fetch {name}` first."
        )
    files = manifest["files"]

    def optional(key: str) -> Path | None:
        return extracted / files[key] if files.get(key) else None

    return {
        "interactions": extracted / files["interactions"],
        "format": source.format,
        "titles": optional("titles"),
        "user_features": optional("user_features"),
        "default_min_rating": source.default_min_rating,
    }


def list_datasets(cache: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """One row per registered data set, for `hvae data list`.

    Args:
      cache: cache root; defaults to `cache_dir()`.

    Returns:
      Dicts with `name`, `description`, `size` (archive bytes, or None if not published), `downloadable`,
      `cached` (True once `fetch` has finished for it), `path` (its cache folder), `licence` and `citation`.
    """
    root = _root(cache)
    rows = []
    for name, source in DATASETS.items():
        rows.append(
            {
                "name": name,
                "description": source.description,
                "size": source.size,
                "downloadable": source.downloadable,
                "cached": source.downloadable and _read_manifest(root / name) is not None,
                "path": root / name,
                "licence": source.licence,
                "citation": source.citation,
            }
        )
    return rows


def _root(cache: str | os.PathLike[str] | None) -> Path:
    return Path(cache).expanduser() if cache is not None else cache_dir()


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
        if _read_manifest(extracted) is None:
            raise
        shutil.rmtree(staging, ignore_errors=True)


def _read_manifest(extracted: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((extracted / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = manifest.get("files") or {}
    if not files.get("interactions"):
        return None
    # A manifest whose files were deleted since does not count as fetched.
    if not all((extracted / local).is_file() for local in files.values() if local):
        return None
    return manifest


def _manifest_matches(manifest: dict[str, Any], source: DatasetSource) -> bool:
    if source.sha256 is None:
        return True
    return manifest.get("sha256") == source.sha256
