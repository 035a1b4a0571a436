"""The table of public data sets by name, and where a fetched copy lives in the local cache.

Each entry says where a data set is published, its SHA-256, which files of its archive the readers need and its
default rating threshold. This module only reads the cache; `sources.py` downloads and unpacks into it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

# Environment variable naming the cache root.
CACHE_ENV = "HVAE_JAX_CACHE"

# Written last into an extracted data set's folder: its presence means the extraction finished.
MANIFEST_NAME = "source.json"

NETFLIX_MESSAGE = (
    "The Netflix Prize data is no longer distributed; pass the path to your copy "
    "(training_set/ directory or combined_data_*.txt) with --data PATH --format netflix"
)


class SourceError(Exception):
    """Base class of every error about data sets by name (table, cache, download), so a command line can catch
    them in one place."""


class NotDownloadableError(SourceError):
    """The data set is known but cannot be downloaded (e.g. Netflix Prize); the user must supply a copy."""


class NotFetchedError(SourceError):
    """The data set has not been fetched into the cache yet."""


class UnknownDatasetError(SourceError, ValueError):
    """No data set of that name is registered."""


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


def cache_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """Root folder of downloaded archives and extracted data sets.

    Args:
      cache: an explicit root, which wins when given.

    Returns:
      `cache`, else `$HVAE_JAX_CACHE` if set and non-empty, else `~/.cache/hvae_jax`. The folder is not created here.
    """
    if cache is not None:
        return Path(cache).expanduser()
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


def downloadable_source(name: str) -> DatasetSource:
    """Registry entry of a data set that can be downloaded.

    Raises:
      UnknownDatasetError: `name` is not in `DATASETS`.
      NotDownloadableError: the data set is not distributed (Netflix Prize); the message says what to do instead.
    """
    source = get_source(name)
    if not source.downloadable:
        raise NotDownloadableError(NETFLIX_MESSAGE if name == "netflix" else f"{name} cannot be downloaded")
    return source


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
    source = downloadable_source(name)
    extracted = cache_dir(cache) / name
    manifest = read_manifest(extracted)
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
    root = cache_dir(cache)
    rows = []
    for name, source in DATASETS.items():
        rows.append(
            {
                "name": name,
                "description": source.description,
                "size": source.size,
                "downloadable": source.downloadable,
                "cached": source.downloadable and read_manifest(root / name) is not None,
                "path": root / name,
                "licence": source.licence,
                "citation": source.citation,
            }
        )
    return rows


def read_manifest(extracted: Path) -> dict[str, Any] | None:
    """The manifest of a finished extraction in folder `extracted`, or None if the extraction is missing or
    incomplete (no manifest, an unreadable one, or one whose files were deleted since)."""
    try:
        manifest = json.loads((extracted / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = manifest.get("files") or {}
    if not files.get("interactions"):
        return None
    if not all((extracted / local).is_file() for local in files.values() if local):
        return None
    return manifest
