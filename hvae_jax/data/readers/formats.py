"""The text formats: rating files with a fixed separator, read by Arrow's CSV engine, and line formats (pairs,
adjacency lists, Netflix Prize) split by Arrow's string kernels.

The grammar every text format shares, and that `_slow_rows`, `_slow_adjacency` and `_slow_netflix` spell out line by
line: lines end in '\\n' or '\\r\\n' (checked for the whole file by `textfile.open_text`, with NUL bytes and the
encoding); a line of spaces and tabs that holds no separator is blank and skipped; spaces and tabs around a field are
not part of it; an id is any non-empty text, and in MovieLens, Last.fm, adjacency and Netflix files ASCII digits,
kept as written (so `007` and `7` are two ids); a rating or value is a finite decimal number
(`[+-]digits[.digits][e[+-]digits]`); CSV fields may be quoted with '"' (doubled inside), but not across lines.

Why Arrow (pyarrow) is the engine. On a 20M-row ML-20M-shaped ratings.csv (536 MB), on this project's shared 2-core
machine (`python -m benchmarks.readers --engines`, medians of 3 in benchmarks/results/readers-cpu-2core.json, load
average about 10), reading user and item ids as text and keeping rating > 3.5: pyarrow's dataset scanner 5.4 s at
379 MB peak, polars' lazy scanner 7.7 s at 596 MB, pandas `read_csv` (whole table, integer ids) 15.4 s at 1.84 GB.
Beyond speed, Arrow's CSV reader refuses a row with the wrong number of fields (polars fills missing fields with
nulls, so a short line would pass unseen), hands each such row to a callback (so blank lines are skipped and
counted), numbers ids by first appearance in one hash pass (`dictionary_encode`) and reads Parquet itself: one
library for every format here. All of `read_interactions` on that file took 0.98x pandas' time at 0.63x its memory.

A line means one thing wherever it sits: the engine reads the whole file in blocks of `_CHUNK_BYTES` with options
that follow the grammar above, vectorised checks test every row it returned, and only when the engine or those
checks refuse something does a line-by-line reference (`_slow_*`) read the file to name the first line that breaks
the format. Clean files never take that path.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as pa_dataset

from hvae_jax.data.interactions import DataFormatError
from hvae_jax.data.readers.columns import Columns, keep_above
from hvae_jax.data.readers.errors import line_error, show
from hvae_jax.data.readers.names import VALUE_NAMES, pick_columns
from hvae_jax.data.readers.textfile import TextFile, open_text

# Bytes the engine parses per block (blocks are parsed in parallel). A line longer than a block is read by retrying
# with larger blocks, so this bounds memory, not what can be read.
_CHUNK_BYTES = 1 << 22
# Bytes per block when looking for the first bad line of a file the engine refused.
_LOCATE_BLOCK_BYTES = 1 << 20
_BLANKS = " \t"
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NUMBER_PATTERN = f"^(?:{_NUMBER.pattern})$"
NumberedLines = Iterable[tuple[int, str]]


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the fields of one row of a delimited text file are laid out.

    Attributes:
      separator: "\\t", "::" or ","; None for runs of spaces, tabs and commas (pairs).
      field_names: one name per field, used in error messages and as the name of the value column.
      user_field, item_field, value_field: 0-based field indices; value_field None when the file has none.
      integer_ids: user and item ids must be ASCII digits (MovieLens, Last.fm).
      quoted: fields may be quoted with '"' (CSV).
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
    def value_name(self) -> str | None:
        return None if self.value_field is None else self.field_names[self.value_field]

    def expected(self) -> str:
        """What a row should look like, for error messages."""
        if self.separator == "\t":
            return f"{self.n_fields} tab-separated fields ({' '.join(self.field_names)})"
        if self.separator is None:
            return f"{self.n_fields} fields separated by spaces, tabs or commas ({' '.join(self.field_names)})"
        label = "comma" if self.separator == "," else repr(self.separator)
        return f"{self.n_fields} {label}-separated fields ({self.separator.join(self.field_names)})"

    def is_blank(self, line: str) -> bool:
        """Spaces and tabs only, and no separator (so a line of tabs in a tab-separated file is a row of empties)."""
        return not line.strip(_BLANKS) and (self.separator is None or self.separator not in line)

    def split(self, line: str) -> list[str]:
        """The fields of one line, before trimming."""
        if self.separator is None:
            return [token for token in re.split(r"[ \t,]+", line) if token]
        if self.quoted and '"' in line:
            return next(csv.reader([line]))
        return line.split(self.separator)


@dataclasses.dataclass(frozen=True)
class Header:
    """The header line of a file: its 1-based number, its text, and how many empty lines come before it."""

    line_number: int
    line: str
    n_empty_before: int


# ----------------------------------------------------------------------------------------------------------------
# The formats


def read_movielens_tsv(path: Path, min_rating: float | None) -> Columns:
    layout = Layout("\t", ("user", "item", "rating", "timestamp"), value_field=2, integer_ids=True)
    return _read_delimited(open_text(path), layout, min_rating=min_rating)


def read_movielens_dat(path: Path, min_rating: float | None) -> Columns:
    layout = Layout("::", ("user", "item", "rating", "timestamp"), value_field=2, integer_ids=True)
    return _read_delimited(open_text(path), layout, min_rating=min_rating)


def read_lastfm(path: Path, min_rating: float | None) -> Columns:
    text = open_text(path)
    layout = Layout("\t", ("user", "artist", "weight"), value_field=2, integer_ids=True)
    header = first_nonblank_line(text, layout.is_blank)
    if header is not None and header.line.strip().lower().split("\t") != ["userid", "artistid", "weight"]:
        header = None
    return _read_delimited(text, layout, header=header, min_rating=min_rating)


def read_csv(path: Path, min_rating: float | None) -> Columns:
    text = open_text(path)
    header = first_nonblank_line(text, Layout(",", (), quoted=True).is_blank)
    if header is None:
        raise DataFormatError(f"{path}:1: expected a CSV header naming the columns (e.g. userId,movieId,rating,"
                              "timestamp), found an empty file")
    try:
        names = [name.strip(_BLANKS) for name in next(csv.reader([header.line]))]
    except csv.Error as error:
        raise line_error(path, header.line_number, "a CSV header", f"unreadable CSV ({error})", header.line) from None
    if len(names) < 2:
        raise line_error(path, header.line_number, "a header of at least 2 comma-separated columns "
                         "(user,item[,rating])", f"{len(names)} column", header.line)
    if all(is_number(name) for name in names):
        raise line_error(path, header.line_number, "a header naming the columns (e.g. userId,movieId,rating,timestamp)",
                         "numbers (for a file without header use format='pairs')", header.line)
    user_field, item_field, value_field = pick_columns(names)
    if min_rating is not None and value_field is None:
        raise ValueError(f"min_rating={min_rating} needs a rating/value column, but the header of {path} names none: "
                         f"{header.line!r} (recognised names: {', '.join(sorted(VALUE_NAMES))})")
    layout = Layout(",", tuple(names), user_field, item_field, value_field, quoted=True)
    return _read_delimited(text, layout, header=header, min_rating=min_rating)


def read_recbole(path: Path, min_rating: float | None) -> Columns:
    """RecBole atomic files (.inter): tab-separated, a header of `name:type` fields (token, float, token_seq,
    float_seq); ids are tokens (text), the value column a float field."""
    text = open_text(path)
    header = first_nonblank_line(text, Layout("\t", ()).is_blank)
    expected = "a RecBole header of tab-separated name:type fields (user_id:token\\titem_id:token\\trating:float)"
    if header is None:
        raise DataFormatError(f"{path}:1: expected {expected}, found an empty file")
    fields = [field.strip(_BLANKS).partition(":") for field in header.line.split("\t")]
    types = {"token", "float", "token_seq", "float_seq"}
    if len(fields) < 2 or any(not name or kind not in types for name, _, kind in fields):
        raise line_error(path, header.line_number, expected, "other fields", header.line)
    names = [name for name, _, _ in fields]
    user_field, item_field, value_field = pick_columns(names)
    if value_field is not None and fields[value_field][2] != "float":
        value_field = None
    if min_rating is not None and value_field is None:
        raise ValueError(f"min_rating={min_rating} needs a float rating/value column, but the header of {path} has "
                         f"none: {header.line!r}")
    layout = Layout("\t", tuple(names), user_field, item_field, value_field)
    return _read_delimited(text, layout, header=header, min_rating=min_rating)


def read_pairs(path: Path, min_rating: float | None) -> Columns:
    """Reads 'user item [value]' lines; the first data line fixes whether there are 2 or 3 fields.

    The first line is a header only if its first field contains "user" (any case) and none of its fields is a
    number: ids may be words, so a looser rule could swallow a real first row.
    """
    text = open_text(path)
    lines = _line_array(text)
    nonblank = np.flatnonzero(_lengths(pc.utf8_trim(lines, _BLANKS)) > 0)
    if len(nonblank) == 0:
        raise DataFormatError(f"{path}:1: expected lines 'user item [value]', found an empty file")
    first_line = lines[int(nonblank[0])].as_py()
    header_tokens = _pairs_tokens(first_line)
    has_header = (bool(header_tokens) and "user" in header_tokens[0].lower()
                  and not any(is_number(token) for token in header_tokens))
    data_rows = nonblank[1:] if has_header else nonblank
    if len(data_rows) == 0:
        raise DataFormatError(f"{path}:{nonblank[0] + 2}: expected lines 'user item [value]' after the header, "
                              "found none")
    first_data = lines[int(data_rows[0])].as_py()
    n_fields = len(_pairs_tokens(first_data))
    if n_fields not in (2, 3):
        raise line_error(path, int(data_rows[0]) + 1, "2 or 3 fields (user item [value]) separated by spaces, tabs or "
                         "commas", str(n_fields), first_data)
    names = tuple(header_tokens) if has_header and len(header_tokens) == n_fields else ("user", "item", "value")
    layout = Layout(None, names[:n_fields], value_field=2 if n_fields == 3 else None)
    if min_rating is not None and layout.value_field is None:
        raise ValueError(f"min_rating={min_rating} needs a value column, but {path} has 2 fields per line (user "
                         "item); leave min_rating unset")
    trimmed = pc.utf8_trim(lines.take(pa.array(data_rows)), _BLANKS + ",")
    tokens = pc.split_pattern_regex(trimmed, "[ \t,]+")
    n_tokens = np.where(_lengths(trimmed) == 0, 0, _lengths(tokens))
    bad = n_tokens != n_fields
    well_formed = pc.filter(tokens, pa.array(~bad))
    values = None
    if layout.value_field is not None:
        value_bad, values = _numbers(pc.list_element(well_formed, 2))
        bad[np.flatnonzero(~bad)[value_bad]] = True
    if bad.any():
        _name_bad_line(path, lines, int(data_rows[np.argmax(bad)]),
                       lambda numbered: _slow_rows(path, numbered, layout))
    users, items = pc.list_element(tokens, 0), pc.list_element(tokens, 1)
    notes = list(text.notes) + ([f"header line {first_line!r} skipped"] if has_header else [])
    notes += _blank_note(len(lines) - len(nonblank))
    return keep_above(Columns(users, items, n_rows=len(data_rows), value_name=layout.value_name, notes=notes),
                       values, min_rating)


def read_adjacency(path: Path, min_rating: float | None) -> Columns:
    """Reads 'user item item ...' lines (LightGCN/NGCF train.txt): one line per user, ids separated by spaces."""
    if min_rating is not None:
        raise ValueError(f"min_rating={min_rating} needs a rating column, but {path} is an adjacency list of "
                         "positives without ratings; leave min_rating unset")
    text = open_text(path)
    lines = _line_array(text)
    trimmed = pc.utf8_trim(lines, _BLANKS)
    nonblank = np.flatnonzero(_lengths(trimmed) > 0)
    if len(nonblank) == 0:
        raise DataFormatError(f"{path}:1: expected lines 'user item item ...', found an empty file")
    tokens = pc.split_pattern_regex(trimmed.take(pa.array(nonblank)), "[ \t]+")
    flat = pc.list_flatten(tokens)
    bad_tokens = np.flatnonzero(~_flags(pc.ascii_is_decimal(flat)))
    if len(bad_tokens):
        offsets = tokens.offsets.to_numpy()
        row = int(np.searchsorted(offsets, bad_tokens[0], side="right") - 1)
        _name_bad_line(path, lines, int(nonblank[row]), lambda numbered: _slow_adjacency(path, numbered))
    n_tokens = _lengths(tokens)
    first = pc.list_element(tokens, 0)
    users = first.take(pa.array(np.repeat(np.arange(len(n_tokens)), n_tokens - 1)))
    items = pc.list_flatten(pc.list_slice(tokens, 1))
    notes = list(text.notes) + _blank_note(len(lines) - len(nonblank))
    n_without_items = int(np.sum(n_tokens == 1))
    if n_without_items:
        notes.append(f"{n_without_items} users with no items skipped")
    return Columns(users, items, n_rows=len(items), notes=notes)


def read_netflix_files(files: list[Path], min_rating: float | None) -> Columns:
    """Reads Netflix Prize files: 'MOVIEID:' lines, each followed by 'user,rating,date' lines for that movie."""
    users, items, ratings, notes = [], [], [], []
    n_blank = 0
    for path in files:
        file_users, file_items, file_ratings, file_blank, file_notes = _read_netflix_file(path)
        notes += [f"{path.name}: {note}" for note in file_notes]
        users.append(file_users)
        items.append(file_items)
        ratings.append(file_ratings)
        n_blank += file_blank
    n_rows = sum(len(chunk) for chunk in users)
    if n_rows == 0:
        raise DataFormatError(f"{files[0]}:1: expected 'MOVIEID:' lines followed by user,rating,date lines, found "
                              "no ratings")
    if len(files) > 1:
        notes.append(f"read {len(files)} Netflix Prize files from {files[0].parent}")
    notes += _blank_note(n_blank)
    columns = Columns(pa.chunked_array(users, pa.large_string()), pa.chunked_array(items, pa.large_string()),
                      n_rows=n_rows, value_name="rating", notes=notes)
    return keep_above(columns, np.concatenate(ratings), min_rating)


def _read_netflix_file(path: Path) -> tuple[pa.Array, pa.Array, np.ndarray, int, tuple[str, ...]]:
    """(users, movies, ratings, blank lines, notes) of one Netflix Prize file."""
    text = open_text(path)
    lines = _line_array(text)
    trimmed = pc.utf8_trim(lines, _BLANKS)
    nonblank = np.flatnonzero(_lengths(trimmed) > 0)
    trimmed = trimmed.take(pa.array(nonblank))
    is_movie = _flags(pc.ends_with(trimmed, ":"))
    movie_ids = pc.utf8_trim(pc.utf8_slice_codeunits(trimmed.filter(pa.array(is_movie)), 0, -1), _BLANKS)
    bad = np.zeros(len(nonblank), bool)
    bad[is_movie] = ~_flags(pc.ascii_is_decimal(movie_ids))
    movie_of_line = np.cumsum(is_movie) - 1  # -1: no 'MOVIEID:' line yet
    rating_rows = np.flatnonzero(~is_movie)
    fields = pc.split_pattern(trimmed.take(pa.array(rating_rows)), ",")
    row_bad = (_lengths(fields) != 3) | (movie_of_line[rating_rows] < 0)
    well_formed = pc.filter(fields, pa.array(~row_bad))
    users = pc.utf8_trim(pc.list_element(well_formed, 0), _BLANKS)
    value_bad, ratings = _numbers(pc.list_element(well_formed, 1))
    row_bad[np.flatnonzero(~row_bad)] = ~_flags(pc.ascii_is_decimal(users)) | value_bad
    bad[rating_rows] = row_bad
    if bad.any():
        first_bad = int(np.argmax(bad))
        n_movies_before = int(np.count_nonzero(is_movie[:first_bad]))
        movie = None if n_movies_before == 0 else movie_ids[n_movies_before - 1].as_py()
        _name_bad_line(path, lines, int(nonblank[first_bad]), lambda numbered: _slow_netflix(path, numbered, movie))
    items = movie_ids.take(pa.array(movie_of_line[rating_rows]))
    return users, items, ratings, len(lines) - len(nonblank), text.notes


# ----------------------------------------------------------------------------------------------------------------
# Delimited files through the engine


def _read_delimited(
    text: TextFile, layout: Layout, *, header: Header | None = None, min_rating: float | None = None
) -> Columns:
    """Reads every row of a file with a fixed separator; see the module docstring for what happens on errors."""
    engine = _EngineColumns(layout)
    path = text.path
    strip = _BLANKS if text.has_space or (text.has_tab and layout.separator != "\t") else ""
    skipped_blank: list[str] = []

    def on_invalid_row(row: pa_csv.InvalidRow) -> str:
        if layout.is_blank(row.text):
            skipped_blank.append(row.text)
            return "skip"
        return "error"

    # The rating filter runs while parsing, so dropped rows never take memory; rows that break the format are kept
    # by it whatever their rating, so that a bad line is an error with or without min_rating. Quoted files are
    # filtered afterwards, when the row count has been checked against the line count.
    push_down = min_rating is not None and not (layout.quoted and text.has_quote)
    row_filter = None
    if push_down:
        row_filter = pc.or_kleene(pc.greater(pc.field(engine.value), min_rating), engine.problems(pc.field, strip))
    skip_lines = header.line_number if header else 0
    n_empty_after_header = text.n_empty_lines - (header.n_empty_before if header else 0)
    if text.n_lines - skip_lines - n_empty_after_header == 0:  # nothing to parse (Arrow refuses an empty input)
        raise DataFormatError(f"{path}:1: expected rows of {layout.expected()}, found "
                              f"{'only a header' if header else 'an empty file'}")
    block_bytes = _CHUNK_BYTES
    file_bytes = text.path.stat().st_size
    while True:
        skipped_blank.clear()
        try:
            table = _scan(text, engine, skip_lines, block_bytes, on_invalid_row, row_filter)
            break
        except pa.ArrowInvalid as error:
            _name_first_bad_line(text, engine, skip_lines)
            if block_bytes >= file_bytes:
                raise DataFormatError(f"{path}: expected rows of {layout.expected()}; the CSV engine refused the file "
                                      f"({error}) although no line breaks the format") from None
            block_bytes *= 16  # a line longer than a block: the engine needs larger blocks
    if pc.any(engine.problems(table.column, strip)).as_py():
        _name_first_bad_line(text, engine, skip_lines)
        raise DataFormatError(f"{path}: expected rows of {layout.expected()}; a row the engine read breaks the format "
                              "but no line does")
    n_rows = text.n_lines - skip_lines - n_empty_after_header - len(skipped_blank)
    if not push_down:
        if table.num_rows != n_rows:  # a quoted field ran past the end of its line and joined lines
            _name_first_bad_line(text, engine, skip_lines)
            raise DataFormatError(f"{path}: expected rows of {layout.expected()}; the engine read {table.num_rows} "
                                  f"rows from {n_rows} lines")
        if min_rating is not None:
            table = table.filter(pc.greater(table.column(engine.value), min_rating))
    if n_rows == 0:
        raise DataFormatError(f"{path}:1: expected rows of {layout.expected()}, found "
                              f"{'only a header' if header else 'an empty file'}")
    notes = list(text.notes)
    if header:
        notes.append(f"header line {header.line!r} skipped")
    notes += _blank_note(skip_lines - (1 if header else 0) + n_empty_after_header + len(skipped_blank))
    return Columns(table.column(engine.user), table.column(engine.item), n_rows=n_rows, value_name=layout.value_name,
                   strip=strip, notes=notes)


class _EngineColumns:
    """The columns the engine sees for a layout: a '::' separator is read as ':' with an empty column between
    fields, since Arrow's separator is one byte."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.delimiter = layout.separator[0]
        double = layout.separator == "::"
        n_columns = 2 * layout.n_fields - 1 if double else layout.n_fields
        self.names = [f"f{k}" for k in range(n_columns)]
        column = (lambda field: 2 * field) if double else (lambda field: field)
        self.user = self.names[column(layout.user_field)]
        self.item = self.names[column(layout.item_field)]
        self.value = None if layout.value_field is None else self.names[column(layout.value_field)]
        self.between = self.names[1::2] if double else []
        self.types = {self.user: pa.string(), self.item: pa.string(), **{name: pa.string() for name in self.between}}
        if self.value is not None:
            self.types[self.value] = pa.float64()

    def problems(self, get: Callable, strip: str):
        """Rows that break the format, as an Arrow expression (get=pc.field) or array (get=table.column)."""
        bad = None

        def add(flags):
            nonlocal bad
            bad = flags if bad is None else pc.or_kleene(bad, flags)

        for name in (self.user, self.item):
            ids = pc.utf8_trim(get(name), strip) if strip else get(name)
            add(pc.invert(pc.ascii_is_decimal(ids)) if self.layout.integer_ids
                else pc.equal(pc.binary_length(ids), 0))
        for name in self.between:
            add(pc.not_equal(pc.binary_length(get(name)), 0))
        if self.value is not None:
            add(pc.or_kleene(pc.is_null(get(self.value)), pc.invert(pc.is_finite(get(self.value)))))
        return bad


def _scan(
    text: TextFile,
    engine: _EngineColumns,
    skip_lines: int,
    block_bytes: int,
    on_invalid_row: Callable,
    row_filter: pc.Expression | None,
) -> pa.Table:
    """Parses the file (from disk, or the transcoded bytes) into the id and value columns, filtered if asked."""
    read_options = pa_csv.ReadOptions(column_names=engine.names, skip_rows=skip_lines, block_size=block_bytes)
    parse_options = pa_csv.ParseOptions(
        delimiter=engine.delimiter,
        quote_char='"' if engine.layout.quoted else False,
        double_quote=True,
        escape_char=False,
        newlines_in_values=False,
        ignore_empty_lines=True,
        invalid_row_handler=on_invalid_row,
    )
    convert_options = pa_csv.ConvertOptions(
        column_types=engine.types,
        null_values=[""],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        check_utf8=False,  # open_text checked (or made) the whole file UTF-8
    )
    columns = list(engine.types)
    if text.transcoded is None:
        file_format = pa_dataset.CsvFileFormat(parse_options, convert_options=convert_options,
                                               read_options=read_options)
        schema = pa.schema([(name, engine.types[name]) for name in columns])
        dataset = pa_dataset.dataset(text.path, format=file_format, schema=schema)
        return dataset.to_table(columns=columns, filter=row_filter)
    convert_options.include_columns = columns
    table = pa_csv.read_csv(pa.BufferReader(text.transcoded), read_options, parse_options, convert_options)
    return table if row_filter is None else table.filter(row_filter)


def _name_first_bad_line(text: TextFile, engine: _EngineColumns, skip_lines: int) -> None:
    """Raises `DataFormatError` at the first line after `skip_lines` that breaks the format.

    The engine reads the file again a block of whole lines at a time, and the line-by-line reference reads only the
    first block the engine or the checks refuse (or holding quotes), so that naming a bad line of a 20M-line file
    takes seconds. Returns only if no line breaks the format.
    """
    layout = engine.layout
    data = text.read_bytes()
    start, first_line = 0, skip_lines + 1
    for _ in range(skip_lines):
        start = data.find(b"\n", start) + 1
        if start == 0:
            return
    while start < len(data):
        end = data.find(b"\n", start + _LOCATE_BLOCK_BYTES)
        end = len(data) if end < 0 else end + 1
        block = data[start:end]
        if (layout.quoted and b'"' in block) or not _engine_accepts(block, engine):
            lines = block.decode("utf-8").split("\n")
            numbered = ((first_line + k, line.removesuffix("\r")) for k, line in enumerate(lines) if k < len(lines) - 1
                        or line)
            _slow_rows(text.path, numbered, layout)
        first_line += block.count(b"\n")
        start = end
    _slow_rows(text.path, text.lines(skip_lines + 1), layout)  # no block alone breaks the format: the whole file


def _engine_accepts(block: bytes, engine: _EngineColumns) -> bool:
    """Whether the engine reads `block` (whole lines, no header) and every row passes the checks."""
    layout = engine.layout
    read_options = pa_csv.ReadOptions(column_names=engine.names, block_size=len(block) + 1, use_threads=False)
    parse_options = pa_csv.ParseOptions(
        delimiter=engine.delimiter, quote_char=False, escape_char=False, ignore_empty_lines=True,
        invalid_row_handler=lambda row: "skip" if layout.is_blank(row.text) else "error")
    convert_options = pa_csv.ConvertOptions(column_types=engine.types, include_columns=list(engine.types),
                                            null_values=[""], strings_can_be_null=False, check_utf8=False)
    try:
        table = pa_csv.read_csv(pa.BufferReader(block), read_options, parse_options, convert_options)
    except pa.ArrowInvalid:
        return False
    return table.num_rows == 0 or not pc.any(engine.problems(table.column, _BLANKS)).as_py()


# ----------------------------------------------------------------------------------------------------------------
# The line-by-line reference: names the first line that breaks a format


def _slow_rows(path: Path, numbered_lines: NumberedLines, layout: Layout) -> None:
    """Reads delimited rows one by one; raises `DataFormatError` at the first line that breaks the format."""
    expected = layout.expected()
    for line_number, line in numbered_lines:
        if layout.is_blank(line):
            continue
        if layout.quoted and _ends_inside_quotes(line):
            raise line_error(path, line_number, expected, "a quoted field that does not end on its line", line)
        fields = layout.split(line)
        if len(fields) != layout.n_fields:
            raise line_error(path, line_number, expected, str(len(fields)), line)
        if layout.separator == "::" and any(":" in field for field in fields):
            raise line_error(path, line_number, expected, "a single ':' inside a field", line)
        fields = [field.strip(_BLANKS) for field in fields]
        for index in (layout.user_field, layout.item_field):
            _check_id(path, line_number, line, fields, index, layout.field_names[index], layout.integer_ids)
        if layout.value_field is not None:
            _check_number(path, line_number, line, fields, layout.value_field, layout.field_names[layout.value_field])


def _slow_adjacency(path: Path, numbered_lines: NumberedLines) -> None:
    for line_number, line in numbered_lines:
        for token in re.split(r"[ \t]+", line.strip(_BLANKS)):
            if token and not (token.isascii() and token.isdigit()):
                raise line_error(path, line_number, "integer ids separated by spaces (user item item ...)",
                                 repr(token), line)


def _slow_netflix(path: Path, numbered_lines: NumberedLines, movie: str | None) -> None:
    """`movie` is the last 'MOVIEID:' before the first line, None if there is none."""
    for line_number, line in numbered_lines:
        stripped = line.strip(_BLANKS)
        if not stripped:
            continue
        if stripped.endswith(":"):
            movie_id = stripped[:-1].strip(_BLANKS)
            if not (movie_id.isascii() and movie_id.isdigit()):
                raise line_error(path, line_number, "an integer movie id in a 'MOVIEID:' line", repr(movie_id), line)
            movie = movie_id
            continue
        fields = [value.strip(_BLANKS) for value in stripped.split(",")]
        if len(fields) != 3:
            raise line_error(path, line_number, "'MOVIEID:' or 3 comma-separated fields (user,rating,date)",
                             f"{len(fields)} fields", line)
        if movie is None:
            raise line_error(path, line_number, "a 'MOVIEID:' line before the first rating", "a rating line", line)
        _check_id(path, line_number, line, fields, 0, "user", integer_ids=True)
        _check_number(path, line_number, line, fields, 1, "rating")


def _check_id(path: Path, line_number: int, line: str, fields: list[str], index: int, name: str,
              integer_ids: bool) -> None:
    value = fields[index]
    if integer_ids and not (value.isascii() and value.isdigit()):
        raise line_error(path, line_number, f"an integer {name} id in field {index + 1}", repr(value), line)
    if not value:
        raise line_error(path, line_number, f"a non-empty id ({name}) in field {index + 1}", "''", line)


def _check_number(path: Path, line_number: int, line: str, fields: list[str], index: int, name: str) -> None:
    if not is_number(fields[index]):
        raise line_error(path, line_number, f"a number ({name}) in field {index + 1}", repr(fields[index]), line)


def is_number(text: str) -> bool:
    """A finite decimal number: digits with an optional sign, point and exponent (not 'nan', '1_000' or '٣')."""
    return _NUMBER.fullmatch(text) is not None and math.isfinite(float(text))


def _ends_inside_quotes(line: str) -> bool:
    """True if a quoted CSV field opens on `line` and does not close on it (quotes count only at a field's start)."""
    inside, field_start, position = False, True, 0
    while position < len(line):
        character = line[position]
        if inside:
            if character == '"':
                if line[position + 1 : position + 2] == '"':
                    position += 1  # a doubled quote stands for one
                else:
                    inside = False
        elif character == ",":
            field_start = True
            position += 1
            continue
        elif character == '"' and field_start:
            inside = True
        field_start = False
        position += 1
    return inside


def _name_bad_line(path: Path, lines: pa.Array, index: int, reference: Callable[[NumberedLines], None]) -> None:
    """Runs the reference on line `index` (0-based), which the vectorised checks found bad; it raises."""
    line = lines[index].as_py()
    reference([(index + 1, line)])
    raise DataFormatError(f"{path}:{index + 1}: the vectorised checks refused this line and the line-by-line "
                          f"reference accepts it: {show(line)}")


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def first_nonblank_line(text: TextFile, is_blank: Callable[[str], bool]) -> Header | None:
    """The first line that is not blank, read from the start of the file only."""
    n_empty = 0
    for line_number, line in text.head_lines():
        if not is_blank(line):
            return Header(line_number, line, n_empty)
        n_empty += line in ("", "\r")
    return None


def _line_array(text: TextFile) -> pa.Array:
    """Every line of the file as an Arrow string array (BOM, '\\n' and the '\\r' of '\\r\\n' removed)."""
    data = text.read_bytes()
    if not data:
        return pa.array([], pa.large_string())
    offsets = pa.py_buffer(np.array([0, len(data)], np.int64))
    whole = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)])
    lines = pc.list_flatten(pc.split_pattern(whole, "\n"))
    if data.endswith(b"\n"):
        lines = lines.slice(0, len(lines) - 1)
    return pc.utf8_rtrim(lines, "\r") if b"\r" in data else lines


def _pairs_tokens(line: str) -> list[str]:
    return [token for token in re.split(r"[ \t,]+", line) if token]


def _numbers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(bad [n] bool, values [n] float64, 0 where bad) of number fields, trimmed of spaces and tabs."""
    texts = pc.utf8_trim(texts, _BLANKS)
    bad = ~_flags(pc.match_substring_regex(texts, _NUMBER_PATTERN))
    values = np.zeros(len(texts))
    if len(texts):
        values[~bad] = pc.cast(texts.filter(pa.array(~bad)), pa.float64()).to_numpy(zero_copy_only=False)
        bad |= ~np.isfinite(values)
    return bad, values


def _lengths(array: pa.Array) -> np.ndarray:
    """[n] int64 lengths of a string or list array."""
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return pc.list_value_length(array).to_numpy(zero_copy_only=False).astype(np.int64)
    return pc.binary_length(array).to_numpy(zero_copy_only=False).astype(np.int64)


def _flags(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False), bool)


def _blank_note(n_blank: int) -> list[str]:
    return [f"{n_blank} blank lines skipped"] if n_blank else []
