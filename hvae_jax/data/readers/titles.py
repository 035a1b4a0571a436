"""Item titles from MovieLens `movies.csv`, ML-1M/10M `movies.dat` and ML-100K `u.item` (small files: Python's csv
module reads them, after the whole file is decoded one way)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable

from hvae_jax.data.interactions import DataFormatError
from hvae_jax.data.readers.errors import decode_text, line_error, show
from hvae_jax.data.readers.names import normalise_name
from hvae_jax.data.readers.registry import one_known_file

_TITLE_FILES = ("movies.csv", "movies.dat", "u.item")


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
        path = one_known_file(path, _TITLE_FILES, "titles")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    lines = decode_text(path.read_bytes().removeprefix(b"\xef\xbb\xbf")).split("\n")
    nonblank = [(number, line.removesuffix("\r")) for number, line in enumerate(lines, 1) if line.strip()]
    if not nonblank:
        raise DataFormatError(f"{path}:1: expected item titles (movies.csv, movies.dat or u.item), found an empty file")
    first_line = nonblank[0][1]
    split: Callable[[str], list[str]]
    if path.suffix.lower() == ".csv":
        header = next(csv.reader([first_line]))
        names = [normalise_name(name) for name in header]
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
                              f"id::title::genres or id|title|...), found {show(first_line)}")
    titles: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for line_number, line in rows:
        try:
            fields = split(line)
        except csv.Error as error:
            raise line_error(path, line_number, expected, f"unreadable CSV ({error})", line) from None
        if len(fields) < min_fields or (max_fields is not None and len(fields) > max_fields):
            raise line_error(path, line_number, expected, str(len(fields)), line)
        item_id = fields[id_field].strip()
        if not item_id:
            raise line_error(path, line_number, f"a non-empty item id in field {id_field + 1}", "''", line)
        if item_id in titles:
            raise line_error(path, line_number, f"each item id once (item {item_id!r} is already on line "
                             f"{first_seen[item_id]})", "it again", line)
        titles[item_id] = fields[title_field].strip()
        first_seen[item_id] = line_number
    return titles
