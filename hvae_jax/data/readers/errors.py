"""Decoding a file's bytes one way, whole, and the `file:line: expected ..., found ...` errors every reader raises."""

from __future__ import annotations

import os

from hvae_jax.data.interactions import DataFormatError


def decode_text(data: bytes) -> str:
    """The text of a whole file: UTF-8, or Latin-1 (which never fails) when the file is not valid UTF-8 anywhere.

    Decided once for all the bytes, never per chunk or per field, so an id is the same string wherever it appears.
    ML-1M movies.dat and ML-100K u.item are Latin-1.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def show(line: str, limit: int = 120) -> str:
    """`line` for an error message: quoted, escapes visible, cut to `limit` characters."""
    return repr(line if len(line) <= limit else line[: limit - 3] + "...")


def line_error(
    path: str | os.PathLike[str], line_number: int, expected: str, found: str, line: str
) -> DataFormatError:
    """The error for one bad line: `path:line: expected <expected>, found <found>: '<line>'`."""
    return DataFormatError(f"{path}:{line_number}: expected {expected}, found {found}: {show(line)}")
