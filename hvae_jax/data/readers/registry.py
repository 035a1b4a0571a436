"""The formats by name, how a file's format is told from its name and first lines, and `read_interactions`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from hvae_jax.data.interactions import DataFormatError, Interactions
from hvae_jax.data.readers import arrays, formats
from hvae_jax.data.readers.columns import Columns, to_interactions

FORMATS: dict[str, str] = {
    "movielens-tsv": "MovieLens 100K u.data: user<TAB>item<TAB>rating<TAB>timestamp, no header",
    "movielens-dat": "MovieLens 1M/10M ratings.dat: user::item::rating::timestamp",
    "csv": "CSV with a header naming the columns, e.g. userId,movieId,rating,timestamp; quoted fields allowed",
    "lastfm": "Last.fm HetRec 2011 user_artists.dat: user<TAB>artist<TAB>weight, header line optional",
    "adjacency": "one line per user, 'user item item ...' separated by spaces (LightGCN/NGCF train.txt)",
    "pairs": "'user item [value]' per line, separated by spaces, tabs or commas; a 'user ...' first line is a header",
    "npy": "NumPy .npy integer array [n, 2] of (user, item), or [n, 3] with a value column",
    "netflix": "Netflix Prize: a folder of mv_*.txt files or a combined_data_*.txt ('MOVIEID:', user,rating,date)",
    "recbole": "RecBole atomic .inter file: tab-separated, header of name:type fields "
               "(user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float)",
    "parquet": "Parquet table; user, item and rating columns found by name as for csv (userId, item_id, rating, ...)",
}

_READERS: dict[str, Callable[[Path, float | None], Columns]] = {
    "movielens-tsv": formats.read_movielens_tsv,
    "movielens-dat": formats.read_movielens_dat,
    "csv": formats.read_csv,
    "lastfm": formats.read_lastfm,
    "adjacency": formats.read_adjacency,
    "pairs": formats.read_pairs,
    "npy": arrays.read_npy,
    "netflix": lambda path, min_rating: formats.read_netflix_files(_netflix_files(path), min_rating),
    "recbole": formats.read_recbole,
    "parquet": arrays.read_parquet,
}

# Files a folder is searched for, so that e.g. `read_interactions("ml-100k/")` finds `u.data`.
_KNOWN_FILES = ("u.data", "ratings.dat", "ratings.csv", "ratings.parquet", "user_artists.dat", "interactions.txt",
                "train.txt", "*.inter")
# Detection reads at most this much of a file's start, and at most this many non-blank lines of it.
_SAMPLE_BYTES = 1 << 20
_SAMPLE_LINES = 10_000


def read_interactions(
    path: str | os.PathLike[str],
    format: str | None = None,  # noqa: A002 - the name users expect, as in pandas/numpy readers.
    *,
    min_rating: float | None = None,
) -> Interactions:
    """Reads a ratings or interactions file (or a folder holding one known file) into `Interactions`.

    Args:
      path: a file, or a folder holding exactly one of u.data, ratings.dat, ratings.csv, ratings.parquet,
        user_artists.dat, interactions.txt, train.txt, *.inter (or Netflix Prize mv_*.txt / combined_data_*.txt).
      format: one of `FORMATS`; None detects it from the file name and first lines (see `detect_format`).
      min_rating: keep only rows whose rating/value is strictly greater than this (Liang et al. 2018 keep
        rating > 3.5, i.e. 4 and 5 stars); None keeps every row.

    Returns:
      `Interactions` with duplicate (user, item) rows merged and counted, `source` the file read, and `notes`
      saying what was skipped and why (header, blank lines, rows below min_rating, a Latin-1 fallback).

    Raises:
      DataFormatError: the file does not match the format; the message names the file, the line (the row for npy
        and Parquet), what was expected and what was found. Also raised when `format` is None and the format
        cannot be told.
      ValueError: unknown `format`, or `min_rating` given for a file without a rating/value column.
      FileNotFoundError: `path` does not exist.
    """
    file_path, file_format = _resolve(Path(path), format)
    columns = _READERS[file_format](file_path, min_rating)
    notes = list(columns.notes)
    if min_rating is not None:
        name = columns.value_name
        if name is None:  # the readers raise earlier, naming the file; this guards new readers
            raise ValueError(f"min_rating={min_rating} needs a rating/value column, but {file_path} has none")
        n_dropped = columns.n_rows - len(columns.users)
        notes.append(f"{n_dropped} of {columns.n_rows} rows dropped with {name} <= {min_rating} "
                     f"(min_rating keeps {name} > {min_rating})")
    return to_interactions(columns, source=str(file_path), notes=notes)


def detect_format(path: str | os.PathLike[str]) -> tuple[Path, str]:
    """Finds the file to read under `path` and its format, without parsing it.

    Rules, in order: a folder is searched for one known file (`_KNOWN_FILES`) or Netflix Prize files;
    `user_artists.dat` is lastfm; `u.data`/`u1.base`/`ua.test` are movielens-tsv; `.npy` is npy; `.parquet`/`.pq`
    starting and ending with 'PAR1' is parquet; `.inter` is recbole; `.csv` is csv; `mv_*.txt` and `combined_data*`
    are netflix. Other `.txt`, `.tsv`, `.dat`, `.data` files and files without a suffix are judged from up to 10,000
    first lines: a `NNN:` first line is netflix, `::` is movielens-dat, a header of `name:type` fields is recbole,
    exactly four tab-separated fields on every line is movielens-tsv; otherwise see `_whitespace_format`.

    Returns:
      (file or Netflix folder to read, format name).

    Raises:
      DataFormatError: the format cannot be told, or the lines fit two formats; the message lists `FORMATS` to pass
        as `format=` (`--format` on the command line).
      FileNotFoundError: `path` does not exist.
    """
    return _resolve(Path(path), None)


def one_known_file(folder: Path, names: tuple[str, ...], what: str) -> Path:
    """The one file of `folder` named in `names` (which may hold glob patterns)."""
    present = sorted({match for name in names for match in folder.glob(name) if match.is_file()},
                     key=lambda match: (names.index(match.name) if match.name in names else len(names), match.name))
    if len(present) == 1:
        return present[0]
    if not present:
        raise DataFormatError(f"{folder}: expected a folder holding one {what} file ({', '.join(names)}), found "
                              "none; pass the file itself (and format=)")
    raise DataFormatError(f"{folder}: expected a folder holding one {what} file, found several "
                          f"({', '.join(p.name for p in present)}); pass the one you mean")


# ----------------------------------------------------------------------------------------------------------------
# Finding the file and its format


def _resolve(path: Path, file_format: str | None) -> tuple[Path, str]:
    """Returns (file or Netflix folder to read, format), detecting what was not given."""
    if file_format is not None and file_format not in FORMATS:
        raise ValueError(f"unknown format {file_format!r}; known formats:\n{_format_list()}")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        if file_format in (None, "netflix") and _has_netflix_files(path):
            return path, "netflix"
        if file_format == "netflix":
            raise DataFormatError(f"{path}: expected Netflix Prize files (mv_*.txt, training_set/ or "
                                  "combined_data_*.txt), found none")
        path = one_known_file(path, _KNOWN_FILES, "interactions")
    if file_format is not None:
        return path, file_format
    return path, _detect_file_format(path)


def _has_netflix_files(folder: Path) -> bool:
    for pattern in ("mv_*.txt", "combined_data*.txt", "training_set/mv_*.txt"):
        if next(iter(folder.glob(pattern)), None) is not None:
            return True
    return False


def _netflix_files(path: Path) -> list[Path]:
    """The Netflix Prize files to read: one combined_data file, or all mv_*.txt / combined_data_*.txt of a folder."""
    if not path.is_dir():
        return [path]
    for pattern in ("mv_*.txt", "training_set/mv_*.txt", "combined_data*.txt"):
        files = sorted(path.glob(pattern))
        if files:
            return files
    raise DataFormatError(f"{path}: expected Netflix Prize files (mv_*.txt, training_set/ or combined_data_*.txt), "
                          "found none")


def _format_list() -> str:
    return "\n".join(f"  {name}: {description}" for name, description in FORMATS.items())


def _cannot_detect(path: Path, reason: str) -> DataFormatError:
    return DataFormatError(f"cannot tell the format of {path} ({reason}); pass format= (--format on the command "
                           f"line) one of:\n{_format_list()}")


def _detect_file_format(path: Path) -> str:
    name = path.name.lower()
    suffix = path.suffix.lower()
    if name == "user_artists.dat":
        return "lastfm"
    if re.fullmatch(r"u[0-9ab]?\.(data|base|test)", name):
        return "movielens-tsv"
    if suffix == ".npy":
        return "npy"
    if suffix in (".parquet", ".pq"):
        if not _is_parquet(path):
            raise _cannot_detect(path, "a .parquet name, but the file does not start and end with 'PAR1'")
        return "parquet"
    if suffix == ".inter":
        return "recbole"
    if suffix == ".csv":
        return "csv"
    if name.startswith("combined_data") or re.fullmatch(r"mv_\d+\.txt", name):
        return "netflix"
    if suffix not in (".txt", ".tsv", ".dat", ".data", ""):
        raise _cannot_detect(path, f"unknown suffix {path.suffix!r}")
    lines = _sample_lines(path)
    if not lines:
        raise _cannot_detect(path, "the file is empty")
    if re.fullmatch(r"\s*\d+\s*:\s*", lines[0]):
        return "netflix"
    if "::" in lines[0]:
        return "movielens-dat"
    if re.fullmatch(r"[^\t:]+:(token|float|token_seq|float_seq)(\t[^\t:]+:(token|float|token_seq|float_seq))+",
                    lines[0].strip()):
        return "recbole"
    if all(len(line.split("\t")) == 4 for line in lines):
        # A rating log (user item rating timestamp); read as adjacency it would turn ratings into items.
        return "movielens-tsv"
    return _whitespace_format(path, lines)


def _whitespace_format(path: Path, lines: list[str]) -> str:
    """Tells 'user item [value]' pairs from 'user item item ...' adjacency lists by the sampled lines.

    Adjacency lists have one line per user and never commas; rating logs repeat users and hold numbers in the third
    field. Lines of different lengths are an adjacency list; 2 fields are pairs (both readings agree). With 3 or
    more fields on every line the file is an adjacency list only if no user repeats (and, for 3 fields, the third
    field holds more than 10 different integers, as items do and ratings do not); a file that fits both readings
    is refused rather than guessed, since reading items as ratings would silently drop half of them.
    """
    tokens = [[token for token in re.split(r"[ \t,]+", line) if token] for line in lines]
    lengths = {len(line_tokens) for line_tokens in tokens}
    has_comma = any("," in line for line in lines)
    if len(lengths) > 1:
        return "pairs" if has_comma else "adjacency"
    n_fields = lengths.pop()
    if n_fields <= 2 or has_comma:
        return "pairs"
    users_repeat = len({line_tokens[0] for line_tokens in tokens}) < len(tokens)
    all_integers = all(token.isascii() and token.isdigit() for line_tokens in tokens for token in line_tokens)
    if n_fields >= 4:
        if users_repeat or not all_integers:
            raise _cannot_detect(path, f"every sampled line has {n_fields} fields separated by spaces and users "
                                 "repeat: a rating log, but only tab-separated (movielens-tsv) and comma-separated "
                                 "(csv) logs are read; convert it, or pass format='adjacency' if it is one")
        return "adjacency"
    third = [line_tokens[2] for line_tokens in tokens]
    if users_repeat:
        return "pairs"
    if all_integers and len(set(third)) > 10:
        return "adjacency"
    if not all_integers and all(formats.is_number(value) for value in third):
        return "pairs"
    raise _cannot_detect(path, f"every one of the {len(lines)} sampled lines has 3 fields and no user repeats: "
                         "an adjacency list with 2 items per user (format='adjacency') or user item rating "
                         "triples (format='pairs')")


def _sample_lines(path: Path) -> list[str]:
    """Up to `_SAMPLE_LINES` non-blank lines from the first `_SAMPLE_BYTES` of `path`."""
    with open(path, "rb") as file:
        sample = file.read(_SAMPLE_BYTES)
        cut_last_line = len(sample) == _SAMPLE_BYTES and file.read(1) != b""
    lines = sample.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace").split("\n")
    if cut_last_line and len(lines) > 1:
        lines = lines[:-1]
    return [line.rstrip("\r") for line in lines if line.strip()][:_SAMPLE_LINES]


def _is_parquet(path: Path) -> bool:
    """Parquet files start and end with the magic bytes 'PAR1' around at least a footer length."""
    if path.stat().st_size < 12:
        return False
    with open(path, "rb") as file:
        start = file.read(4)
        file.seek(-4, os.SEEK_END)
        return start == b"PAR1" and file.read(4) == b"PAR1"
