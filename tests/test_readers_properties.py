"""Property-based tests of hvae_jax.data.readers on random files of every text format.

Valid files (random ids with leading zeros, unicode and, where the format allows them, spaces, commas and quotes;
random blank lines, CRLF and LF line ends, a BOM, a Latin-1 encoding) read back exactly as written. Corrupted files
(random bytes inserted or deleted, lines cut short or broken by stray line ends, NUL bytes, stray bytes) end either
in a DataFormatError naming the file and the first bad line, or in exactly what the simple reference parser below
reads; never in another exception. The reference is written here from the grammar stated in
hvae_jax/data/readers/formats.py, independently of the readers' code.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from hvae_jax.data.interactions import DataFormatError, Interactions, from_raw_ids
from hvae_jax.data.readers import read_interactions

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT_FORMATS = ("movielens-tsv", "movielens-dat", "lastfm", "csv", "recbole", "pairs", "adjacency", "netflix")

# ----------------------------------------------------------------------------------------------------------------
# The reference parser


class Refused(Exception):
    """The reference refuses the file at this 1-based line."""

    def __init__(self, line: int):
        super().__init__(line)
        self.line = line


@dataclasses.dataclass(frozen=True)
class Delimited:
    separator: str
    n_fields: int
    value: int | None
    integer_ids: bool
    header: str  # "none", "required" or "lastfm" (optional, recognised by its names)
    user: int = 0
    item: int = 1


DELIMITED = {
    "movielens-tsv": Delimited("\t", 4, 2, True, "none"),
    "movielens-dat": Delimited("::", 4, 2, True, "none"),
    "lastfm": Delimited("\t", 3, 2, True, "lastfm"),
    "csv": Delimited(",", 4, 2, False, "required"),
    "recbole": Delimited("\t", 4, 2, False, "required"),
}
NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def number(text: str) -> float | None:
    """A finite decimal number, spaces and tabs around it allowed; None for anything else."""
    text = text.strip(" \t")
    if NUMBER.fullmatch(text) is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def is_digits(text: str) -> bool:
    return bool(re.fullmatch(r"[0-9]+", text))


def reference_lines(data: bytes) -> list[str]:
    """One decoding for the whole file (UTF-8, else Latin-1); lines end in '\\n' or '\\r\\n'; a NUL or any other
    '\\r' refuses the file at its line."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    bodies = []
    for line_number, line in enumerate(lines, 1):
        body = line[:-1] if line.endswith("\r") else line
        if "\x00" in line or "\r" in body:
            raise Refused(line_number)
        bodies.append(body)
    return bodies


def quote_left_open(line: str) -> bool:
    """Does a quoted CSV field on `line` run past its end? The csv module then swallows the next line too."""
    return len(list(csv.reader(io.StringIO(line + "\n\x01\n")))) == 1


def reference_delimited(lines: list[str], spec: Delimited) -> list[tuple[str, str, float | None]]:
    def blank(line: str) -> bool:
        return line.strip(" \t") == "" and spec.separator not in line

    first = next((k for k, line in enumerate(lines) if not blank(line)), None)
    start = 0
    if spec.header == "required":
        if first is None:
            raise Refused(1)
        start = first + 1
    elif spec.header == "lastfm" and first is not None and \
            lines[first].strip().lower().split("\t") == ["userid", "artistid", "weight"]:
        start = first + 1
    rows = []
    for line_number, line in enumerate(lines[start:], start + 1):
        if blank(line):
            continue
        if spec.separator == ",":
            if quote_left_open(line):
                raise Refused(line_number)
            fields = next(csv.reader([line]))
        else:
            fields = line.split(spec.separator)
        if len(fields) != spec.n_fields or (spec.separator == "::" and any(":" in field for field in fields)):
            raise Refused(line_number)
        fields = [field.strip(" \t") for field in fields]
        for text in (fields[spec.user], fields[spec.item]):
            if not text or (spec.integer_ids and not is_digits(text)):
                raise Refused(line_number)
        value = None
        if spec.value is not None:
            value = number(fields[spec.value])
            if value is None:
                raise Refused(line_number)
        rows.append((fields[spec.user], fields[spec.item], value))
    if not rows:
        raise Refused(1)
    return rows


def reference_pairs(lines: list[str]) -> list[tuple[str, str, float | None]]:
    def tokens(line: str) -> list[str]:
        return [token for token in re.split(r"[ \t,]+", line) if token]

    nonblank = [(k, line) for k, line in enumerate(lines, 1) if line.strip(" \t")]
    if not nonblank:
        raise Refused(1)
    head = tokens(nonblank[0][1])
    has_header = bool(head) and "user" in head[0].lower() and not any(number(token) is not None for token in head)
    data = nonblank[1:] if has_header else nonblank
    if not data:
        raise Refused(nonblank[0][0] + 1)
    n_fields = len(tokens(data[0][1]))
    if n_fields not in (2, 3):
        raise Refused(data[0][0])
    rows = []
    for line_number, line in data:
        fields = tokens(line)
        value = number(fields[2]) if len(fields) == 3 else None
        if len(fields) != n_fields or (n_fields == 3 and value is None):
            raise Refused(line_number)
        rows.append((fields[0], fields[1], value))
    return rows


def reference_adjacency(lines: list[str]) -> list[tuple[str, str, float | None]]:
    rows = []
    n_nonblank = 0
    for line_number, line in enumerate(lines, 1):
        ids = [token for token in re.split(r"[ \t]+", line) if token]
        n_nonblank += bool(ids)
        if not all(is_digits(token) for token in ids):
            raise Refused(line_number)
        rows += [(ids[0], item, None) for item in ids[1:]]
    if not n_nonblank:
        raise Refused(1)
    return rows


def reference_netflix(lines: list[str]) -> list[tuple[str, str, float | None]]:
    rows, movie = [], None
    for line_number, line in enumerate(lines, 1):
        text = line.strip(" \t")
        if not text:
            continue
        if text.endswith(":"):
            movie = text[:-1].strip(" \t")
            if not is_digits(movie):
                raise Refused(line_number)
            continue
        fields = [field.strip(" \t") for field in text.split(",")]
        if len(fields) != 3 or movie is None or not is_digits(fields[0]) or number(fields[1]) is None:
            raise Refused(line_number)
        rows.append((fields[0], movie, number(fields[1])))
    if not rows:
        raise Refused(1)
    return rows


def reference(data: bytes, file_format: str) -> list[tuple[str, str, float | None]]:
    """(user, item, value) rows of a file, or Refused(line)."""
    lines = reference_lines(data)
    if file_format in DELIMITED:
        return reference_delimited(lines, DELIMITED[file_format])
    return {"pairs": reference_pairs, "adjacency": reference_adjacency, "netflix": reference_netflix}[file_format](
        lines)


def pair_counts(rows: list[tuple[str, str, float | None]], min_rating: float | None) -> collections.Counter:
    return collections.Counter((user, item) for user, item, value in rows if min_rating is None or value > min_rating)


def read_counts(data: Interactions) -> collections.Counter:
    return collections.Counter({(str(data.user_ids[u]), str(data.item_ids[i])): int(c)
                                for u, i, c in zip(data.users, data.items, data.counts)})


def read_file(name: str, content: bytes, file_format: str, min_rating: float | None):
    """Writes `content` to a fresh folder and reads it; returns (path, Interactions or the DataFormatError)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        try:
            return path, read_interactions(path, file_format, min_rating=min_rating)
        except DataFormatError as error:
            return path, error


def assert_reads_like_reference(content: bytes, file_format: str, min_rating: float | None) -> None:
    try:
        expected = pair_counts(reference(content, file_format), min_rating)
    except Refused as refused:
        expected = refused
    path, result = read_file("data.txt", content, file_format, min_rating)
    if isinstance(result, DataFormatError):
        match = re.match(rf"{re.escape(str(path))}:(\d+): ", str(result))
        assert match, f"the error names no line: {result}"
        assert isinstance(expected, Refused), f"refused what the reference reads: {result}"
        assert int(match.group(1)) == expected.line, f"reference refuses line {expected.line}: {result}"
        event(f"refused: {str(result).removeprefix(str(path))[:40]}")
    else:
        assert not isinstance(expected, Refused), f"read what the reference refuses at line {expected.line}"
        assert read_counts(result) == expected
        event("read")


# ----------------------------------------------------------------------------------------------------------------
# Random valid files


INTEGER_IDS = st.from_regex(r"\A[0-9]{1,4}\Z")
NUMBER_TEXTS = st.from_regex(r"\A[+-]?([0-9]{1,2}(\.[0-9]{0,2})?|\.[0-9]{1,2})([eE][+-]?[0-9])?\Z")


def text_ids(forbidden: str) -> st.SearchStrategy[str]:
    """Ids of any characters but `forbidden`, without spaces or tabs at their ends (those are not part of ids)."""
    return st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00" + forbidden),
                   min_size=1, max_size=6).filter(lambda text: text == text.strip(" \t"))


def csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"') else text


@st.composite
def valid_files(draw, file_format: str) -> tuple[bytes, list[tuple[str, str, float | None]]]:
    """(file bytes, the (user, item, value) rows written) of a random valid file."""
    spec = DELIMITED.get(file_format)
    integer_ids = file_format in ("movielens-tsv", "movielens-dat", "lastfm", "adjacency", "netflix")
    ids = INTEGER_IDS if integer_ids else text_ids({"pairs": " \t,", "recbole": "\t"}.get(file_format, ""))
    n_rows = draw(st.integers(1, 12))
    rows = [(draw(ids), draw(ids), draw(NUMBER_TEXTS)) for _ in range(n_rows)]
    pad = st.sampled_from(["", "", " ", "  "])
    lines: list[str] = []
    written: list[tuple[str, str, float | None]] = []
    if file_format == "adjacency":
        for user, _, _ in rows:
            items = draw(st.lists(INTEGER_IDS, max_size=4))
            separator = draw(st.sampled_from([" ", "\t", "  ", " \t"]))
            lines.append(draw(pad) + separator.join([user] + items) + draw(pad))
            written += [(user, item, None) for item in items]
    elif file_format == "netflix":
        for user, movie, value in rows:
            if not lines or draw(st.booleans()):
                lines.append(f"{movie}:")
            current = next(line[:-1] for line in reversed(lines) if line.endswith(":"))
            lines.append(f"{user}{draw(pad)},{draw(pad)}{value},2005-09-06")
            written.append((user, current, float(value)))
    elif file_format == "pairs":
        n_fields = draw(st.sampled_from([2, 3]))
        if draw(st.booleans()):
            lines.append(" ".join(["user", "item", "rating"][:n_fields]))
        else:
            assume(not ("user" in rows[0][0].lower() and (n_fields == 2 or number(rows[0][2]) is None)))
        for user, item, value in rows:
            separator = draw(st.sampled_from([" ", "\t", ",", " , ", "\t\t", ", "]))
            lines.append(separator.join([user, item, value][:n_fields]))
            written.append((user, item, float(value) if n_fields == 3 else None))
    else:
        header = {"csv": "userId,movieId,rating,timestamp", "lastfm": "userID\tartistID\tweight",
                  "recbole": "user_id:token\titem_id:token\trating:float\ttimestamp:float"}.get(file_format)
        if header and (spec.header == "required" or draw(st.booleans())):
            lines.append(header)
        for user, item, value in rows:
            fields = [user, item, value, "881250949"][: spec.n_fields]
            if file_format == "csv":
                fields = [csv_field(field) if csv_field(field) != field else draw(pad) + field + draw(pad)
                          for field in fields]
            elif not integer_ids:
                fields = [draw(pad) + field + draw(pad) for field in fields]
            else:
                fields = [draw(pad) + field + draw(pad) for field in fields]
            lines.append(spec.separator.join(fields))
            written.append((user, item, float(value)))
    blank = st.sampled_from(["", " ", "  "] + (["\t", " \t "] if file_format not in ("movielens-tsv", "lastfm",
                                                                                       "recbole") else []))
    body = ""
    header_first = file_format in ("csv", "recbole")
    for index, line in enumerate(lines):
        if draw(st.integers(0, 5)) == 0 and not (header_first and index == 0):
            body += draw(blank) + draw(st.sampled_from(["\n", "\r\n"]))
        body += line + draw(st.sampled_from(["\n", "\r\n"]))
    if draw(st.booleans()):
        body = body.removesuffix("\n").removesuffix("\r")
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1"])) if not integer_ids else "utf-8"
    try:
        content = body.encode(encoding)
    except UnicodeEncodeError:
        content = body.encode("utf-8")
    if content != body.encode("utf-8"):
        assume(_not_utf8(content))  # else the whole-file rule rightly reads it as UTF-8: other ids than written
    if draw(st.booleans()) and encoding == "utf-8":
        content = b"\xef\xbb\xbf" + content
    return content, written


def _not_utf8(content: bytes) -> bool:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.parametrize("file_format", TEXT_FORMATS)
@SETTINGS
@given(data=st.data())
def test_valid_files_read_back_exactly(file_format, data):
    content, written = data.draw(valid_files(file_format))
    min_rating = None
    if file_format != "adjacency" and written[0][2] is not None:
        min_rating = data.draw(st.sampled_from([None, 0.0, 3.5, float(sorted(row[2] for row in written)[0])]))
    path, result = read_file("data.txt", content, file_format, min_rating)
    assert not isinstance(result, DataFormatError), str(result)
    assert read_counts(result) == pair_counts(written, min_rating)
    assert read_counts(result) == pair_counts(reference(content, file_format), min_rating)
    # Indices too: ids numbered by first appearance among the kept rows, pairs sorted, as from_raw_ids does.
    kept = [(user, item) for user, item, value in written if min_rating is None or value > min_rating]
    expected = from_raw_ids(np.array([user for user, _ in kept], str), np.array([item for _, item in kept], str))
    for field in ("users", "items", "counts", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(result, field), getattr(expected, field))


# ----------------------------------------------------------------------------------------------------------------
# Random corruptions

STRAY = [b"\x00", b"\r", b"\n", b"\r\n", b"\t", b" ", b",", b":", b"::", b'"', b"\xff", b"\xe9", b"\xc3", b"x", b"-",
         b".", b"e", b"5", b"nan", b"inf", b"1e999", b"\xef\xbb\xbf", "é".encode(), b"\x85", b"\x0b"]


@st.composite
def corrupted_files(draw, file_format: str) -> bytes:
    content, _ = draw(valid_files(file_format))
    # The header line stays intact: which columns a changed header names is another question than its rows.
    protected = content.index(b"\n") + 1 if file_format in ("csv", "recbole") and b"\n" in content else 0
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(protected, len(content)))
        # Half the time next to a separator or line end, where a stray byte changes the fields the most.
        boundaries = [k for k in range(protected, len(content)) if content[k : k + 1] in b"\t:, \n"]
        if boundaries and draw(st.booleans()):
            position = draw(st.sampled_from(boundaries)) + draw(st.integers(0, 1))
        kind = draw(st.sampled_from(["insert", "insert", "delete", "cut line"]))
        if kind == "insert":
            content = content[:position] + draw(st.sampled_from(STRAY)) + content[position:]
        elif kind == "delete":
            content = content[:position] + content[position + draw(st.integers(1, 3)):]
        else:
            end = content.find(b"\n", position)
            content = content[:position] + (b"" if end < 0 else content[end:])
    return content


@pytest.mark.parametrize("file_format", TEXT_FORMATS)
@SETTINGS
@given(data=st.data())
def test_corrupted_files_are_refused_at_their_line_or_read_as_the_reference_reads_them(file_format, data):
    content = data.draw(corrupted_files(file_format))
    min_rating = None if file_format in ("pairs", "adjacency") else data.draw(st.sampled_from([None, 3.5]))
    assert_reads_like_reference(content, file_format, min_rating)


@settings(max_examples=100, deadline=None)
@given(text=st.text(st.sampled_from("0123456789+-.eEnaifINFty_ \t\x0b٣"), max_size=8))
def test_ratings_are_exactly_the_decimal_numbers(text):
    """A rating field parses to exactly float(text) when it is a finite decimal number, and is an error otherwise."""
    content = f"1\t2\t{text}\t0\n".encode()
    try:
        value = reference(content, "movielens-tsv")[0][2]
    except Refused:
        path, result = read_file("u.data", content, "movielens-tsv", None)
        assert isinstance(result, DataFormatError) and str(result).startswith(f"{path}:1: "), result
        return
    below = read_file("u.data", content, "movielens-tsv", math.nextafter(value, -math.inf))[1]
    at = read_file("u.data", content, "movielens-tsv", value)[1]
    assert len(below) == 1 and len(at) == 0  # the row's rating is value itself, not a neighbour
