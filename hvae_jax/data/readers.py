"""Readers that turn rating and interaction files in the common public formats into `Interactions`, plus item titles.

Text files are read in chunks by a vectorised parser over the raw bytes; a chunk is re-read line by line only when
the fast parser rejects it, either to name the first malformed line or to parse an unusual but valid file.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from hvae_jax.data.interactions import DataFormatError, Interactions, from_raw_ids

FORMATS: dict[str, str] = {
    "movielens-tsv": "MovieLens 100K u.data: user<TAB>item<TAB>rating<TAB>timestamp, no header",
    "movielens-dat": "MovieLens 1M/10M ratings.dat: user::item::rating::timestamp",
    "csv": "CSV with a header naming the columns, e.g. userId,movieId,rating,timestamp; quoted fields allowed",
    "lastfm": "Last.fm HetRec 2011 user_artists.dat: user<TAB>artist<TAB>weight, header line optional",
    "adjacency": "one line per user, 'user item item ...' separated by spaces (LightGCN/NGCF train.txt)",
    "pairs": "'user item [value]' per line, separated by spaces, tabs or commas; a 'user ...' first line is a header",
    "npy": "NumPy .npy integer array [n, 2] of (user, item), or [n, 3] with a value column",
    "netflix": "Netflix Prize: a folder of mv_*.txt files or a combined_data_*.txt ('MOVIEID:', user,rating,date)",
}

# Files a folder is searched for, so that e.g. `read_interactions("ml-100k/")` finds `u.data`.
_KNOWN_FILES = ("u.data", "ratings.dat", "ratings.csv", "user_artists.dat", "interactions.txt", "train.txt")
_TITLE_FILES = ("movies.csv", "movies.dat", "u.item")

# Text is parsed this many bytes at a time, which bounds the temporary arrays on 20M-row files (a few hundred MB).
_CHUNK_BYTES = 1 << 25
# Longer tokens are not ids; the fast path declines them rather than allocating [rows, width] byte matrices.
_MAX_TOKEN_BYTES = 256
_NEWLINE, _CARRIAGE_RETURN, _COLON = ord("\n"), ord("\r"), ord(":")
_UTF8_BOM = b"\xef\xbb\xbf"


def _byte_table(characters: bytes) -> np.ndarray:
    table = np.zeros(256, bool)
    table[list(characters)] = True
    return table


_BLANKS = _byte_table(b" \t")
_PAIRS_DELIMITERS = _byte_table(b" \t,\r\n")
_ADJACENCY_DELIMITERS = _byte_table(b" \t\r\n")


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How the fields of one row of a delimited text file are laid out.

    Attributes:
      separator: "\\t", "::" or ","; None for runs of spaces, tabs and commas.
      field_names: one name per field, used in error messages and as the name of the value column.
      value_field: index of the rating/value field, or None when the file has none.
      integer_ids: user and item ids must be non-negative integers (MovieLens, Last.fm, Netflix).
      quoted: fields may be quoted (CSV), so lines with a quote are split by the `csv` module.
    """

    separator: str | None
    field_names: tuple[str, ...]
    user_field: int = 0
    item_field: int = 1
    value_field: int | None = None
    integer_ids: bool = False
    quoted: bool = False

    @property
    def n_fields(self) -> int:
        return len(self.field_names)

    @property
    def value_name(self) -> str:
        return "value" if self.value_field is None else self.field_names[self.value_field]

    def expected(self) -> str:
        """What a row should look like, for error messages."""
        if self.separator == "\t":
            return f"{self.n_fields} tab-separated fields ({' '.join(self.field_names)})"
        if self.separator is None:
            return f"{self.n_fields} fields separated by spaces, tabs or commas ({' '.join(self.field_names)})"
        label = "comma" if self.separator == "," else repr(self.separator)
        return f"{self.n_fields} {label}-separated fields ({self.separator.join(self.field_names)})"

    def split(self, line: str) -> list[str]:
        """The fields of one line, as the line-by-line path sees them."""
        if self.separator is None:
            return [token for token in re.split(r"[ \t,]+", line) if token]
        if self.quoted and '"' in line:
            return next(csv.reader([line]))
        return line.split(self.separator)


@dataclasses.dataclass
class _Columns:
    """Raw ids and values gathered chunk by chunk; `values` stays None for files without a value column."""

    users: list[np.ndarray] = dataclasses.field(default_factory=list)
    items: list[np.ndarray] = dataclasses.field(default_factory=list)
    values: list[np.ndarray] | None = None
    value_name: str = "rating"
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, users: np.ndarray, items: np.ndarray, values: np.ndarray | None) -> None:
        self.users.append(users)
        self.items.append(items)
        if values is not None:
            self.values = (self.values or []) + [values]

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Returns (raw users [n], raw items [n], values [n] float64 or None)."""
        users = np.concatenate(self.users) if self.users else np.array([], str)
        items = np.concatenate(self.items) if self.items else np.array([], str)
        values = np.concatenate(self.values) if self.values else None
        return users, items, values


# ----------------------------------------------------------------------------------------------------------------
# Public API


def read_interactions(
    path: str | os.PathLike[str],
    format: str | None = None,  # noqa: A002 - the name users expect, as in pandas/numpy readers.
    *,
    min_rating: float | None = None,
) -> Interactions:
    """Reads a ratings or interactions file (or a folder holding one known file) into `Interactions`.

    Args:
      path: a file, or a folder holding exactly one of u.data, ratings.dat, ratings.csv, user_artists.dat,
        interactions.txt, train.txt (or Netflix Prize mv_*.txt / combined_data_*.txt files).
      format: one of `FORMATS`; None detects it from the file name and first lines (see `detect_format`).
      min_rating: keep only rows whose rating/value is strictly greater than this (Liang et al. 2018 keep
        rating > 3.5, i.e. 4 and 5 stars); None keeps every row.

    Returns:
      `Interactions` with duplicate (user, item) rows merged and counted, `source` the file read, and `notes`
      saying which rows were dropped or skipped and why.

    Raises:
      DataFormatError: the file does not match the format; the message names the file, the line, what was
        expected and what was found. Also raised when `format` is None and the format cannot be detected.
      ValueError: unknown `format`, or `min_rating` given for a file without a rating/value column.
      FileNotFoundError: `path` does not exist.
    """
    file_path, file_format = _resolve(Path(path), format)
    if min_rating is not None and file_format == "adjacency":
        raise ValueError(f"min_rating={min_rating} needs a rating column, but {file_path} is an adjacency list of "
                         "positives without ratings; leave min_rating unset")
    require_values = None if min_rating is None else f"min_rating={min_rating}"
    columns = _READERS[file_format](file_path, require_values)
    users, items, values = columns.arrays()
    notes = list(columns.notes)
    if min_rating is not None:
        if values is None:  # The readers raise earlier, naming the file; this guards new readers.
            raise ValueError(f"min_rating={min_rating} needs a rating/value column, but {file_path} has none")
        keep = values > min_rating
        n_dropped = int(len(keep) - keep.sum())
        name = columns.value_name
        notes.append(f"{n_dropped} of {len(keep)} rows dropped with {name} <= {min_rating} "
                     f"(min_rating keeps {name} > {min_rating})")
        users, items = users[keep], items[keep]
    return from_raw_ids(users, items, source=str(file_path), notes=notes)


def detect_format(path: str | os.PathLike[str]) -> tuple[Path, str]:
    """Finds the file to read under `path` and its format, without parsing it.

    Rules, in order: a folder is searched for one known file (`_KNOWN_FILES`) or Netflix Prize files;
    `user_artists.dat` is lastfm; `u.data`/`u1.base`/`ua.test` are movielens-tsv; `.npy` is npy; `.csv` is csv;
    `mv_*.txt` and `combined_data*` are netflix. Other `.txt`, `.tsv`, `.dat`, `.data` files and files without a
    suffix are judged from their first lines: a `NNN:` first line is netflix, `::` is movielens-dat, exactly four
    tab-separated fields on every line is movielens-tsv, varying field counts or more than 3 fields is adjacency,
    anything else pairs.

    Returns:
      (file or Netflix folder to read, format name).

    Raises:
      DataFormatError: the format cannot be told; the message lists `FORMATS` to pass as `format=`.
      FileNotFoundError: `path` does not exist.
    """
    return _resolve(Path(path), None)


def read_titles(path: str | os.PathLike[str]) -> dict[str, str]:
    """Reads item titles from MovieLens `movies.csv`, ML-1M/10M `movies.dat` or ML-100K `u.item`.

    Args:
      path: the titles file, or a folder holding exactly one of movies.csv, movies.dat, u.item.

    Returns:
      Raw item id (as in `Interactions.item_ids`) -> title, with surrounding spaces stripped (a few ML titles end
      in a space).

    Raises:
      DataFormatError: a malformed line or a repeated item id; the message names the file and the line.
    """
    path = Path(path)
    if path.is_dir():
        path = _one_known_file(path, _TITLE_FILES, "titles")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    lines = _decode(path.read_bytes()).split("\n")
    nonblank = [(number, line.rstrip("\r")) for number, line in enumerate(lines, 1) if line.strip()]
    if not nonblank:
        raise DataFormatError(f"{path}:1: expected item titles (movies.csv, movies.dat or u.item), found an empty file")
    first_line = nonblank[0][1]
    split: Callable[[str], list[str]]
    if path.suffix.lower() == ".csv":
        header = next(csv.reader([first_line]))
        names = [_normalise_name(name) for name in header]
        id_field = next((k for k, name in enumerate(names) if name in ("movieid", "itemid", "id")), 0)
        title_field = names.index("title") if "title" in names else 1
        min_fields, max_fields = max(id_field, title_field) + 1, None
        expected = f"at least {min_fields} comma-separated fields ({','.join(header)})"
        split, rows = (lambda line: next(csv.reader([line]))), nonblank[1:]
    elif "::" in first_line:
        id_field, title_field, min_fields, max_fields = 0, 1, 3, 3
        expected = "3 '::'-separated fields (id::title::genres)"
        split, rows = (lambda line: line.split("::")), nonblank
    elif "|" in first_line:
        id_field, title_field, min_fields, max_fields = 0, 1, 2, None
        expected = "at least 2 '|'-separated fields (id|title|release date|...)"
        split, rows = (lambda line: line.split("|")), nonblank
    else:
        raise DataFormatError(f"{path}:{nonblank[0][0]}: expected a titles file (movies.csv with a header, "
                              f"id::title::genres or id|title|...), found {_show(first_line)}")
    titles: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for line_number, line in rows:
        try:
            fields = split(line)
        except csv.Error as error:
            raise _line_error(path, line_number, expected, f"unreadable CSV ({error})", line) from None
        if len(fields) < min_fields or (max_fields is not None and len(fields) > max_fields):
            raise _line_error(path, line_number, expected, str(len(fields)), line)
        item_id = fields[id_field].strip()
        if not item_id:
            raise _line_error(path, line_number, f"a non-empty item id in field {id_field + 1}", "''", line)
        if item_id in titles:
            raise _line_error(path, line_number, f"each item id once (item {item_id!r} is already on line "
                              f"{first_seen[item_id]})", "it again", line)
        titles[item_id] = fields[title_field].strip()
        first_seen[item_id] = line_number
    return titles


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
        path = _one_known_file(path, _KNOWN_FILES, "interactions")
    if file_format is not None:
        return path, file_format
    return path, _detect_file_format(path)


def _one_known_file(folder: Path, names: tuple[str, ...], what: str) -> Path:
    present = [folder / name for name in names if (folder / name).is_file()]
    if len(present) == 1:
        return present[0]
    if not present:
        raise DataFormatError(f"{folder}: expected a folder holding one {what} file ({', '.join(names)}), found "
                              "none; pass the file itself (and format=)")
    raise DataFormatError(f"{folder}: expected a folder holding one {what} file, found several "
                          f"({', '.join(p.name for p in present)}); pass the one you mean")


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
    return DataFormatError(f"cannot tell the format of {path} ({reason}); pass format= one of:\n{_format_list()}")


def _detect_file_format(path: Path) -> str:
    name = path.name.lower()
    suffix = path.suffix.lower()
    if name == "user_artists.dat":
        return "lastfm"
    if re.fullmatch(r"u[0-9ab]?\.(data|base|test)", name):
        return "movielens-tsv"
    if suffix == ".npy":
        return "npy"
    if suffix == ".csv":
        return "csv"
    if name.startswith("combined_data") or re.fullmatch(r"mv_\d+\.txt", name):
        return "netflix"
    if suffix not in (".txt", ".tsv", ".dat", ".data", ""):
        raise _cannot_detect(path, f"unknown suffix {path.suffix!r}")
    lines = [line for _, line in _first_lines(path, 1000)]
    if not lines:
        raise _cannot_detect(path, "the file is empty")
    if re.fullmatch(r"\s*\d+\s*:\s*", lines[0]):
        return "netflix"
    if "::" in lines[0]:
        return "movielens-dat"
    if all(len(line.split("\t")) == 4 for line in lines):
        # A rating log (user item rating timestamp); read as adjacency it would turn ratings into items.
        return "movielens-tsv"
    field_counts = {len([token for token in re.split(r"[ \t,]+", line) if token]) for line in lines}
    if len(field_counts) > 1 or max(field_counts) > 3:
        return "adjacency"
    return "pairs"


def _first_lines(path: Path, count: int, sample_bytes: int = 1 << 16) -> list[tuple[int, str]]:
    """Up to `count` (line number, text) pairs of the first non-blank lines, from the first `sample_bytes`."""
    with open(path, "rb") as file:
        sample = file.read(sample_bytes)
        cut_last_line = len(sample) == sample_bytes and file.read(1) != b""
    lines = _decode(sample.removeprefix(_UTF8_BOM)).split("\n")
    if cut_last_line and len(lines) > 1:
        lines = lines[:-1]
    numbered = [(number, line.rstrip("\r")) for number, line in enumerate(lines, 1) if line.strip()]
    return numbered[:count]


# ----------------------------------------------------------------------------------------------------------------
# Format readers: each returns the raw columns of one file; `require_values` names the option needing a value column


def _read_movielens_tsv(path: Path, require_values: str | None) -> _Columns:
    layout = _Layout("\t", ("user", "item", "rating", "timestamp"), value_field=2, integer_ids=True)
    return _read_rows(path, layout)


def _read_movielens_dat(path: Path, require_values: str | None) -> _Columns:
    layout = _Layout("::", ("user", "item", "rating", "timestamp"), value_field=2, integer_ids=True)
    return _read_rows(path, layout)


def _read_lastfm(path: Path, require_values: str | None) -> _Columns:
    layout = _Layout("\t", ("user", "artist", "weight"), value_field=2, integer_ids=True)
    first = _first_lines(path, 1)
    has_header = bool(first) and first[0][1].strip().lower().split("\t") == ["userid", "artistid", "weight"]
    columns = _read_rows(path, layout, skip_header=has_header)
    if has_header:
        columns.notes.insert(0, "header line 'userID\\tartistID\\tweight' skipped")
    return columns


def _read_csv(path: Path, require_values: str | None) -> _Columns:
    first = _first_lines(path, 1)
    if not first:
        raise DataFormatError(f"{path}:1: expected a CSV header naming the columns (e.g. userId,movieId,rating,"
                              "timestamp), found an empty file")
    line_number, header_line = first[0]
    try:
        header = [name.strip() for name in next(csv.reader([header_line]))]
    except csv.Error as error:
        raise _line_error(path, line_number, "a CSV header", f"unreadable CSV ({error})", header_line) from None
    if len(header) < 2:
        raise _line_error(path, line_number, "a header of at least 2 comma-separated columns (user,item[,rating])",
                          f"{len(header)} column", header_line)
    if all(_is_number(name) for name in header):
        raise _line_error(path, line_number, "a header naming the columns (e.g. userId,movieId,rating,timestamp)",
                          "numbers (for a file without header use format='pairs')", header_line)
    user_field, item_field, value_field = _csv_columns(header)
    layout = _Layout(",", tuple(header), user_field, item_field, value_field, quoted=True)
    if require_values and value_field is None:
        raise ValueError(f"{require_values} needs a rating/value column, but the header of {path} names none: "
                         f"{header_line!r} (recognised names: {', '.join(sorted(_VALUE_NAMES))})")
    return _read_rows(path, layout, skip_header=True)


def _read_pairs(path: Path, require_values: str | None) -> _Columns:
    """Reads 'user item [value]' lines; the first data line fixes whether there are 2 or 3 fields.

    The first line is a header only if its first field contains "user" (any case) and none of its fields is a
    number: ids may be words, so a looser rule could swallow a real first row.
    """
    first = _first_lines(path, 2)
    if not first:
        raise DataFormatError(f"{path}:1: expected lines 'user item [value]', found an empty file")

    def tokens(line: str) -> list[str]:
        return [token for token in re.split(r"[ \t,]+", line) if token]

    header_tokens = tokens(first[0][1])
    has_header = (
        bool(header_tokens)
        and "user" in header_tokens[0].lower()
        and not any(_is_number(token) for token in header_tokens)
    )
    data_lines = first[1:] if has_header else first[:1]
    if not data_lines:
        raise DataFormatError(f"{path}:{first[0][0] + 1}: expected lines 'user item [value]' after the header, "
                              "found none")
    line_number, line = data_lines[0]
    n_fields = len(tokens(line))
    if n_fields not in (2, 3):
        raise _line_error(path, line_number, "2 or 3 fields (user item [value]) separated by spaces, tabs or commas",
                          str(n_fields), line)
    names = tuple(header_tokens) if has_header and len(header_tokens) == n_fields else ("user", "item", "value")
    layout = _Layout(None, names[:n_fields], value_field=2 if n_fields == 3 else None)
    if require_values and layout.value_field is None:
        raise ValueError(f"{require_values} needs a value column, but {path} has 2 fields per line (user item); "
                         "leave min_rating unset")
    columns = _read_rows(path, layout, skip_header=has_header)
    if has_header:
        columns.notes.insert(0, f"header line {first[0][1]!r} skipped")
    return columns


def _read_adjacency(path: Path, require_values: str | None) -> _Columns:
    columns = _Columns()
    n_without_items = 0
    for first_line, chunk in _read_chunks(path):
        parsed = _fast_adjacency(chunk)
        if parsed is None:
            parsed = _slow_adjacency(path, first_line, chunk)
        users, items, n_empty = parsed
        columns.add(users, items, None)
        n_without_items += n_empty
    if sum(len(users) for users in columns.users) == 0 and n_without_items == 0:
        raise DataFormatError(f"{path}:1: expected lines 'user item item ...', found an empty file")
    if n_without_items:
        columns.notes.append(f"{n_without_items} users with no items skipped")
    return columns


def _read_npy(path: Path, require_values: str | None) -> _Columns:
    expected = "a NumPy integer array of shape (n, 2) (user, item) or (n, 3) (user, item, value)"
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataFormatError(f"{path}: expected {expected}, found a file np.load cannot read ({error})") from None
    if not isinstance(array, np.ndarray):
        raise DataFormatError(f"{path}: expected {expected}, found a .npz archive")
    if array.ndim != 2 or array.shape[1] not in (2, 3):
        raise DataFormatError(f"{path}: expected {expected}, found shape {array.shape}")
    if len(array) == 0:
        raise DataFormatError(f"{path}: expected {expected}, found an empty array of shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataFormatError(f"{path}: expected {expected}, found dtype {array.dtype}")
    ids = array[:, :2]
    if np.issubdtype(array.dtype, np.floating):
        # Float arrays are common after np.save of a mixed (user, item, rating) matrix; ids must still be whole.
        not_whole = ~(np.isfinite(ids) & (ids == np.floor(ids)))
        if not_whole.any():
            row = int(np.flatnonzero(not_whole.any(axis=1))[0])
            raise DataFormatError(f"{path}: row {row + 1}: expected integer user and item ids, found "
                                  f"{array[row].tolist()}")
        ids = ids.astype(np.int64)
    values = None
    if array.shape[1] == 3:
        values = array[:, 2].astype(np.float64)
        not_finite = ~np.isfinite(values)
        if not_finite.any():
            row = int(np.flatnonzero(not_finite)[0])
            raise DataFormatError(f"{path}: row {row + 1}: expected a finite value in column 3, found "
                                  f"{array[row].tolist()}")
    elif require_values:
        raise ValueError(f"{require_values} needs a value column, but {path} has shape {array.shape} "
                         "(user, item); leave min_rating unset")
    columns = _Columns(value_name="value")
    columns.add(ids[:, 0].astype(str), ids[:, 1].astype(str), values)
    return columns


def _read_netflix(path: Path, require_values: str | None) -> _Columns:
    columns = _Columns()
    files = _netflix_files(path)
    for file in files:
        movie: str | None = None  # Rating lines belong to the last 'MOVIEID:' line, which may sit in an earlier chunk.
        for first_line, chunk in _read_chunks(file):
            parsed = _fast_netflix(chunk, movie)
            if parsed is None:
                parsed = _slow_netflix(file, first_line, chunk, movie)
            users, items, ratings, movie = parsed
            columns.add(users, items, ratings)
    if not any(len(users) for users in columns.users):
        raise DataFormatError(f"{files[0]}:1: expected 'MOVIEID:' lines followed by user,rating,date lines, found "
                              "no ratings")
    if len(files) > 1:
        columns.notes.append(f"read {len(files)} Netflix Prize files from {path}")
    return columns


_READERS: dict[str, Callable[[Path, str | None], _Columns]] = {
    "movielens-tsv": _read_movielens_tsv,
    "movielens-dat": _read_movielens_dat,
    "csv": _read_csv,
    "lastfm": _read_lastfm,
    "adjacency": _read_adjacency,
    "pairs": _read_pairs,
    "npy": _read_npy,
    "netflix": _read_netflix,
}

# Normalised (lower case, letters and digits only) CSV column names.
_USER_PREFIXES = ("user", "customer", "reviewer", "member", "visitor")
_ITEM_PREFIXES = ("item", "movie", "artist", "track", "song", "book", "product", "business", "isbn", "asin")
_VALUE_NAMES = frozenset({"rating", "ratings", "value", "weight", "count", "score", "playcount", "plays", "clicks",
                          "stars", "preference", "frequency", "confidence"})
_NOT_VALUE_NAMES = frozenset({"timestamp", "time", "date", "datetime", "ts", "tag", "tags", "title", "genres", "genre",
                              "name"})


def _normalise_name(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _csv_columns(header: list[str]) -> tuple[int, int, int | None]:
    """Picks (user, item, value) columns of a CSV header.

    User and item columns are found by name (userId, user_id, movieId, itemId, artistID, ...) and otherwise are
    the first two columns. The value column is the first one named like a rating (rating, value, weight, count,
    score, ...); failing that the third column, unless it is named like a timestamp, tag, title or genre.
    """
    names = [_normalise_name(name) for name in header]
    user_field = next((k for k, name in enumerate(names) if name.startswith(_USER_PREFIXES) or name == "uid"), None)
    item_field = next((k for k, name in enumerate(names)
                       if k != user_field and (name.startswith(_ITEM_PREFIXES) or name == "iid")), None)
    if user_field is None or item_field is None:
        user_field, item_field = 0, 1
    value_field = next((k for k, name in enumerate(names) if name in _VALUE_NAMES), None)
    if value_field is None and len(names) >= 3 and 2 not in (user_field, item_field) and (
        names[2] not in _NOT_VALUE_NAMES
    ):
        value_field = 2
    return user_field, item_field, value_field


# ----------------------------------------------------------------------------------------------------------------
# Chunked, vectorised parsing of delimited rows


def _read_chunks(path: Path, chunk_bytes: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Yields (1-based number of the chunk's first line, chunk) with every chunk made of whole lines."""
    chunk_bytes = chunk_bytes or _CHUNK_BYTES
    line_number = 1
    leftover = b""
    with open(path, "rb") as file:
        block = file.read(chunk_bytes).removeprefix(_UTF8_BOM)
        while block:
            block = leftover + block
            cut = block.rfind(b"\n") + 1
            chunk, leftover = block[:cut], block[cut:]
            if chunk:
                yield line_number, chunk
                line_number += chunk.count(b"\n")
            block = file.read(chunk_bytes)
    if leftover:
        yield line_number, leftover


def _read_rows(path: Path, layout: _Layout, *, skip_header: bool = False) -> _Columns:
    """Reads every row of a delimited file; with `skip_header` its first non-blank line is not data."""
    columns = _Columns(value_name=layout.value_name)
    header_pending = skip_header
    n_rows = 0
    for first_line, chunk in _read_chunks(path):
        if header_pending:
            chunk, header_pending = _blank_first_line(chunk)
        parsed = _fast_rows(chunk, layout)
        if parsed is None:
            parsed = _slow_rows(path, first_line, chunk, layout)
        columns.add(*parsed)
        n_rows += len(parsed[0])
    if n_rows == 0:
        raise DataFormatError(f"{path}:1: expected rows of {layout.expected()}, found "
                              f"{'only a header' if skip_header else 'an empty file'}")
    return columns


def _blank_first_line(chunk: bytes) -> tuple[bytes, bool]:
    """Empties the first non-blank line of `chunk` (keeping line numbers); returns (chunk, still pending)."""
    start = 0
    while start < len(chunk):
        end = chunk.find(b"\n", start)
        end = len(chunk) if end < 0 else end
        if chunk[start:end].strip():
            return chunk[:start] + chunk[end:], False
        start = end + 1
    return chunk, True


def _line_bounds(chunk: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (bytes [size] uint8, starts [n_lines], ends [n_lines]) of the non-empty lines, without '\\r\\n'."""
    buffer = np.frombuffer(chunk, np.uint8)
    line_ends = np.flatnonzero(buffer == _NEWLINE)
    if len(buffer) and buffer[-1] != _NEWLINE:
        line_ends = np.append(line_ends, len(buffer))
    line_starts = np.concatenate([[0], line_ends[:-1] + 1]).astype(np.int64)
    line_ends = line_ends.astype(np.int64)
    crlf = line_ends > line_starts
    crlf[crlf] = buffer[line_ends[crlf] - 1] == _CARRIAGE_RETURN
    line_ends[crlf] -= 1
    non_empty = line_ends > line_starts
    return buffer, line_starts[non_empty], line_ends[non_empty]


def _field_bounds(
    buffer: np.ndarray, line_starts: np.ndarray, line_ends: np.ndarray, separator: str | None, n_fields: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Byte ranges of the fields of every line, or None unless every line has exactly `n_fields` fields.

    Args:
      buffer: [size] uint8 bytes of the chunk.
      line_starts, line_ends: [n_lines] byte range of each line to split; bytes outside them are ignored.
      separator: one- or two-byte separator, or None for runs of spaces, tabs and commas.

    Returns:
      (field_starts, field_ends), each [n_lines, n_fields] int64.
    """
    n_lines = len(line_starts)
    if separator is None:
        is_token = ~_PAIRS_DELIMITERS[buffer]
        edges = np.diff(np.concatenate([[False], is_token, [False]]).view(np.int8))
        token_starts, token_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        line = np.searchsorted(line_starts, token_starts, side="right") - 1
        inside = line >= 0
        inside[inside] = token_ends[inside] <= line_ends[line[inside]]
        if np.any(np.bincount(line[inside], minlength=n_lines) != n_fields):
            return None
        return token_starts[inside].reshape(n_lines, n_fields), token_ends[inside].reshape(n_lines, n_fields)
    encoded = separator.encode()
    if len(encoded) == 1:
        positions = np.flatnonzero(buffer == encoded[0])
    else:
        positions = np.flatnonzero((buffer[:-1] == encoded[0]) & (buffer[1:] == encoded[1]))
    line = np.searchsorted(line_starts, positions, side="right") - 1
    inside = line >= 0
    inside[inside] = positions[inside] + len(encoded) <= line_ends[line[inside]]
    if np.any(np.bincount(line[inside], minlength=n_lines) != n_fields - 1):
        return None
    positions = positions[inside].reshape(n_lines, n_fields - 1)
    field_starts = np.concatenate([line_starts[:, None], positions + len(encoded)], axis=1)
    field_ends = np.concatenate([positions, line_ends[:, None]], axis=1)
    return field_starts, field_ends


def _trim(buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Moves [starts, ends) byte ranges inwards past spaces and tabs, as str.strip(' \\t') does."""
    starts, ends = starts.copy(), ends.copy()
    while True:
        open_ranges = np.flatnonzero(starts < ends)
        leading = open_ranges[_BLANKS[buffer[starts[open_ranges]]]]
        starts[leading] += 1
        open_ranges = np.flatnonzero(starts < ends)
        trailing = open_ranges[_BLANKS[buffer[ends[open_ranges] - 1]]]
        ends[trailing] -= 1
        if len(leading) == 0 and len(trailing) == 0:
            return starts, ends


def _gather(buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray | None:
    """Copies byte ranges into a zero-padded [n, width] uint8 matrix; None if a range is implausibly long."""
    lengths = ends - starts
    width = max(int(lengths.max(initial=0)), 1)
    if width > _MAX_TOKEN_BYTES:
        return None
    matrix = np.zeros((len(starts), width), np.uint8)
    for offset in range(width):
        rows = np.flatnonzero(lengths > offset)
        matrix[rows, offset] = buffer[starts[rows] + offset]
    return matrix


def _ids_ok(matrix: np.ndarray, integer_ids: bool) -> bool:
    """True if no id is empty and, with `integer_ids`, every byte is a digit (zero bytes are padding)."""
    if not matrix[:, 0].all():
        return False
    # uint8 wrap-around: byte - '0' is below 10 exactly for the digits.
    return not integer_ids or bool((((matrix - ord("0")) < 10) | (matrix == 0)).all())


def _as_strings(matrix: np.ndarray) -> np.ndarray:
    """[n, width] uint8 bytes -> [n] str array, decoded as UTF-8 (Latin-1 where that fails)."""
    n_rows, width = matrix.shape
    if not (matrix >= 128).any():
        # ASCII bytes are their own code points: widening to UCS-4 is the decode, and much faster than astype(str).
        return np.ascontiguousarray(matrix, np.uint32).view(f"<U{width}").reshape(n_rows)
    as_bytes = np.ascontiguousarray(matrix).view(f"S{width}").reshape(n_rows)
    try:
        return np.char.decode(as_bytes, "utf-8")
    except UnicodeDecodeError:
        return np.char.decode(as_bytes, "latin-1")


def _as_numbers(matrix: np.ndarray) -> np.ndarray | None:
    """[n, width] uint8 bytes -> [n] float64, or None if a field is not a finite number."""
    numbers = _plain_decimals(matrix)
    if numbers is None:
        try:
            numbers = np.ascontiguousarray(matrix).view(f"S{matrix.shape[1]}").reshape(len(matrix)).astype(np.float64)
        except ValueError:
            return None
    return numbers if np.isfinite(numbers).all() else None


def _plain_decimals(matrix: np.ndarray) -> np.ndarray | None:
    """Parses fields like '4', '3.5', '.5' ([n, width] uint8) without a per-field call; None for anything else.

    value = mantissa / 10**decimals, both exact in float64 (hence at most 15 bytes), so the one division rounds
    exactly as strtod does; summing digit * 10**-k instead could give 3.5000000000000004 and break `rating > 3.5`.
    """
    if matrix.shape[1] > 15:
        return None
    mantissa = np.zeros(len(matrix), np.int64)
    n_digits = np.zeros(len(matrix), np.int64)
    n_decimals = np.zeros(len(matrix), np.int64)
    n_dots = np.zeros(len(matrix), np.int64)
    for column in matrix.T:  # Horner's rule, one byte column at a time; fields are a few bytes wide.
        digit = column - np.uint8(ord("0"))  # uint8 wrap-around: below 10 exactly for the digit bytes.
        is_digit = digit < 10
        is_dot = column == ord(".")
        if not (is_digit | is_dot | (column == 0)).all():
            return None
        mantissa = np.where(is_digit, mantissa * 10 + digit, mantissa)
        n_digits += is_digit
        n_decimals += is_digit & (n_dots > 0)
        n_dots += is_dot
    if (n_dots > 1).any() or (n_digits == 0).any():
        return None
    return mantissa / 10.0**n_decimals


def _fast_rows(chunk: bytes, layout: _Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """Parses a chunk of delimited rows with array operations; None sends it to the line-by-line path."""
    if layout.quoted and b'"' in chunk:
        return None
    buffer, line_starts, line_ends = _line_bounds(chunk)
    if len(line_starts) == 0:
        empty = np.array([], str)
        return empty, empty, None if layout.value_field is None else np.array([], np.float64)
    bounds = _field_bounds(buffer, line_starts, line_ends, layout.separator, layout.n_fields)
    if bounds is None:
        return None
    field_starts, field_ends = bounds

    def field(index: int) -> np.ndarray | None:
        return _gather(buffer, *_trim(buffer, field_starts[:, index], field_ends[:, index]))

    users, items = field(layout.user_field), field(layout.item_field)
    if users is None or items is None or not (_ids_ok(users, layout.integer_ids) and
                                              _ids_ok(items, layout.integer_ids)):
        return None
    values = None
    if layout.value_field is not None:
        value_bytes = field(layout.value_field)
        values = None if value_bytes is None else _as_numbers(value_bytes)
        if values is None:
            return None
    return _as_strings(users), _as_strings(items), values


def _slow_rows(
    path: Path, first_line: int, chunk: bytes, layout: _Layout
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Parses a chunk line by line, raising `DataFormatError` at its first malformed line."""
    users, items, values = [], [], []
    for line_number, line in _numbered_lines(chunk, first_line):
        if not line.strip():
            continue
        try:
            fields = layout.split(line)
        except csv.Error as error:
            raise _line_error(path, line_number, layout.expected(), f"unreadable CSV ({error})", line) from None
        if len(fields) != layout.n_fields:
            raise _line_error(path, line_number, layout.expected(), str(len(fields)), line)
        fields = [value.strip(" \t") for value in fields]
        for ids, index in ((users, layout.user_field), (items, layout.item_field)):
            ids.append(_check_id(path, line_number, line, fields, index, layout.field_names[index],
                                 layout.integer_ids))
        if layout.value_field is not None:
            values.append(_check_number(path, line_number, line, fields, layout.value_field, layout.value_name))
    return (np.array(users, str), np.array(items, str),
            None if layout.value_field is None else np.array(values, np.float64))


def _fast_adjacency(chunk: bytes) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Parses 'user item item ...' lines; returns (raw users [n], raw items [n], users without items) or None."""
    buffer = np.frombuffer(chunk, np.uint8)
    is_token = ~_ADJACENCY_DELIMITERS[buffer]
    edges = np.diff(np.concatenate([[False], is_token, [False]]).view(np.int8))
    token_starts, token_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if len(token_starts) == 0:
        empty = np.array([], str)
        return empty, empty, 0
    tokens = _gather(buffer, token_starts, token_ends)
    if tokens is None or not _ids_ok(tokens, integer_ids=True):
        return None
    token_line = np.searchsorted(np.flatnonzero(buffer == _NEWLINE), token_starts)
    first_of_line = np.concatenate([[True], token_line[1:] != token_line[:-1]])
    owner = np.cumsum(first_of_line) - 1
    token_strings = _as_strings(tokens)
    line_users = token_strings[first_of_line]
    tokens_per_line = np.bincount(owner)
    return line_users[owner[~first_of_line]], token_strings[~first_of_line], int((tokens_per_line == 1).sum())


def _slow_adjacency(path: Path, first_line: int, chunk: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    users, items, n_without_items = [], [], 0
    for line_number, line in _numbered_lines(chunk, first_line):
        tokens = [token for token in re.split(r"[ \t]+", line) if token]
        for token in tokens:
            if not (token.isascii() and token.isdigit()):
                raise _line_error(path, line_number, "integer ids separated by spaces (user item item ...)",
                                  repr(token), line)
        if len(tokens) == 1:
            n_without_items += 1
        users.extend(tokens[:1] * (len(tokens) - 1))
        items.extend(tokens[1:])
    return np.array(users, str), np.array(items, str), n_without_items


def _fast_netflix(
    chunk: bytes, movie: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None] | None:
    """Parses 'MOVIEID:' and 'user,rating,date' lines; returns (users, items, ratings, last movie id) or None."""
    buffer, line_starts, line_ends = _line_bounds(chunk)
    is_header = buffer[line_ends - 1] == _COLON
    header_ids = _gather(buffer, *_trim(buffer, line_starts[is_header], line_ends[is_header] - 1))
    if header_ids is None or (is_header.any() and not _ids_ok(header_ids, integer_ids=True)):
        return None
    movie_ids = np.concatenate([np.array([movie or ""], str), _as_strings(header_ids)])
    # Index 0 stands for the movie carried over from before this chunk.
    movie_of_line = np.cumsum(is_header)[~is_header]
    if movie is None and np.any(movie_of_line == 0):
        return None
    bounds = _field_bounds(buffer, line_starts[~is_header], line_ends[~is_header], ",", 3)
    if bounds is None:
        return None
    field_starts, field_ends = bounds
    users = _gather(buffer, *_trim(buffer, field_starts[:, 0], field_ends[:, 0]))
    rating_bytes = _gather(buffer, *_trim(buffer, field_starts[:, 1], field_ends[:, 1]))
    if users is None or rating_bytes is None or (len(users) and not _ids_ok(users, integer_ids=True)):
        return None
    ratings = _as_numbers(rating_bytes) if len(rating_bytes) else np.array([], np.float64)
    if ratings is None:
        return None
    return _as_strings(users), movie_ids[movie_of_line], ratings, str(movie_ids[-1]) or None


def _slow_netflix(
    path: Path, first_line: int, chunk: bytes, movie: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None]:
    expected = "'MOVIEID:' or 3 comma-separated fields (user,rating,date)"
    users, items, ratings = [], [], []
    for line_number, line in _numbered_lines(chunk, first_line):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.endswith(":"):
            movie_id = stripped[:-1].strip()
            if not (movie_id.isascii() and movie_id.isdigit()):
                raise _line_error(path, line_number, "an integer movie id in a 'MOVIEID:' line", repr(movie_id), line)
            movie = movie_id
            continue
        fields = [value.strip(" \t") for value in stripped.split(",")]
        if len(fields) != 3:
            raise _line_error(path, line_number, expected, f"{len(fields)} fields", line)
        if movie is None:
            raise _line_error(path, line_number, "a 'MOVIEID:' line before the first rating", "a rating line", line)
        users.append(_check_id(path, line_number, line, fields, 0, "user", integer_ids=True))
        items.append(movie)
        ratings.append(_check_number(path, line_number, line, fields, 1, "rating"))
    return np.array(users, str), np.array(items, str), np.array(ratings, np.float64), movie


# ----------------------------------------------------------------------------------------------------------------
# Line-by-line helpers and messages


def _decode(data: bytes) -> str:
    """UTF-8, falling back to Latin-1 (ML-1M movies.dat, ML-100K u.item), which never fails."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _numbered_lines(chunk: bytes, first_line: int) -> Iterator[tuple[int, str]]:
    for offset, line in enumerate(_decode(chunk).split("\n")):
        yield first_line + offset, line.removesuffix("\r")


def _show(line: str, limit: int = 120) -> str:
    return repr(line if len(line) <= limit else line[: limit - 3] + "...")


def _line_error(path: Path, line_number: int, expected: str, found: str, line: str) -> DataFormatError:
    return DataFormatError(f"{path}:{line_number}: expected {expected}, found {found}: {_show(line)}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_id(path: Path, line_number: int, line: str, fields: list[str], index: int, name: str,
              integer_ids: bool) -> str:
    """Returns fields[index] if it is a valid id; `name` is the field's name ("user", "artist", "userId")."""
    value = fields[index]
    if integer_ids and not (value.isascii() and value.isdigit()):
        raise _line_error(path, line_number, f"an integer {name} id in field {index + 1}", repr(value), line)
    if not value:
        raise _line_error(path, line_number, f"a non-empty id ({name}) in field {index + 1}", "''", line)
    return value


def _check_number(path: Path, line_number: int, line: str, fields: list[str], index: int, name: str) -> float:
    try:
        number = float(fields[index])
    except ValueError:
        number = float("nan")
    if not np.isfinite(number):
        raise _line_error(path, line_number, f"a number ({name}) in field {index + 1}", repr(fields[index]), line)
    return number
