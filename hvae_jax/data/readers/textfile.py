"""A text file checked as a whole before any parsing, so that a line means the same thing wherever it sits.

The checks: one encoding for all the bytes (UTF-8, or Latin-1 for every byte when the file is not valid UTF-8), no NUL
bytes, and lines that end in '\\n' or '\\r\\n' (a carriage return anywhere else is an error, not a line break). They
also count the lines and the empty lines, so the readers can say how many blank lines they skipped. The file is
scanned through a memory map with NumPy and `bytes.find`, about 0.3 s per 500 MB; it is not held in memory unless
it had to be transcoded.
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import mmap
from pathlib import Path
from typing import Iterator

import numpy as np

from hvae_jax.data.readers.errors import line_error

UTF8_BOM = b"\xef\xbb\xbf"
_SCAN_BYTES = 1 << 22
_NEWLINE, _CARRIAGE_RETURN = 10, 13


@dataclasses.dataclass(frozen=True)
class TextFile:
    """What the whole-file checks learned about a text file.

    Attributes:
      path: the file.
      encoding: "utf-8" or "latin-1" (the file is not valid UTF-8; every byte is read as Latin-1).
      transcoded: the file as UTF-8 bytes (BOM removed) when it had to be transcoded from Latin-1, else None: the
        engine then reads `path` itself.
      n_lines: lines in the file ('\\n' ends a line; a last line without one counts).
      n_empty_lines: lines with nothing on them but an optional '\\r'.
      has_space, has_tab, has_quote: whether the bytes ' ', '\\t', '"' occur anywhere (ids need trimming only if so;
        quoted CSV fields need a closer look only if so).
      notes: what the checks did that a user should know (the Latin-1 fallback).
    """

    path: Path
    encoding: str = "utf-8"
    transcoded: bytes | None = None
    n_lines: int = 0
    n_empty_lines: int = 0
    has_space: bool = False
    has_tab: bool = False
    has_quote: bool = False
    notes: tuple[str, ...] = ()

    def read_bytes(self) -> bytes:
        """The whole file as UTF-8 bytes, without a BOM."""
        if self.transcoded is not None:
            return self.transcoded
        return self.path.read_bytes().removeprefix(UTF8_BOM)

    def lines(self, start: int = 1) -> Iterator[tuple[int, str]]:
        """(1-based line number, line without '\\n' or '\\r\\n') for every line from line `start` on."""
        text = self.read_bytes().decode("utf-8")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the text after the last '\n' is a line only if it is not empty
        for number in range(start, len(lines) + 1):
            yield number, lines[number - 1].removesuffix("\r")

    def head_lines(self, block_bytes: int = 1 << 16) -> Iterator[tuple[int, str]]:
        """Like `lines()`, but reads the file a block at a time, for readers that need only its first lines."""
        number, pending = 0, b""
        with (io.BytesIO(self.transcoded) if self.transcoded is not None else open(self.path, "rb")) as file:
            block = file.read(block_bytes).removeprefix(UTF8_BOM)
            while block:
                *complete, pending = (pending + block).split(b"\n")
                for line in complete:
                    number += 1
                    yield number, line.decode("utf-8").removesuffix("\r")
                block = file.read(block_bytes)
        if pending:
            yield number + 1, pending.decode("utf-8").removesuffix("\r")


def open_text(path: Path) -> TextFile:
    """Checks `path` as a whole (see the module docstring) and returns what it learned.

    Raises:
      DataFormatError: a NUL byte or a carriage return inside a line; the message names the line.
    """
    size = path.stat().st_size
    if size == 0:
        return TextFile(path)
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        start = len(UTF8_BOM) if mapped[: len(UTF8_BOM)] == UTF8_BOM else 0
        encoding, first_bad_byte = _encoding(mapped, start)
        transcoded = None
        notes: tuple[str, ...] = ()
        if encoding == "latin-1":
            transcoded = mapped[start:].decode("latin-1").encode("utf-8")
            bad_line = mapped[:first_bad_byte].count(b"\n") + 1
            notes = (f"not valid UTF-8 (first at line {bad_line}): the whole file was read as Latin-1",)
        nul = mapped.find(b"\x00", start)
        n_lines, n_empty_lines, stray = _scan_lines(mapped, start, has_carriage_return=mapped.find(b"\r", start) >= 0)
        problems = [(nul, "a NUL byte")] if nul >= 0 else []
        if stray >= 0:
            problems.append((stray, "a carriage return ('\\r') inside the line"))
        if problems:
            position, what = min(problems)
            raise _byte_error(path, mapped, position, encoding, what)
        return TextFile(
            path=path,
            encoding=encoding,
            transcoded=transcoded,
            n_lines=n_lines,
            n_empty_lines=n_empty_lines,
            has_space=mapped.find(b" ", start) >= 0,
            has_tab=mapped.find(b"\t", start) >= 0,
            has_quote=mapped.find(b'"', start) >= 0,
            notes=notes,
        )


def _encoding(mapped: mmap.mmap, start: int) -> tuple[str, int]:
    """("utf-8", -1) if the bytes from `start` are valid UTF-8, else ("latin-1", offset of the first invalid byte)."""
    data = np.frombuffer(mapped, np.uint8)
    try:
        if len(data) <= start or int(data[start:].max()) < 128:
            return "utf-8", -1  # ASCII, the common case: one vectorised pass decides
    finally:
        del data  # a live view would keep the map open
    decoder = codecs.getincrementaldecoder("utf-8")()
    for offset in range(start, len(mapped), _SCAN_BYTES):
        try:
            decoder.decode(mapped[offset : offset + _SCAN_BYTES], final=offset + _SCAN_BYTES >= len(mapped))
        except UnicodeDecodeError as error:
            return "latin-1", max(start, offset + error.start)
    return "utf-8", -1


def _scan_lines(mapped: mmap.mmap, start: int, *, has_carriage_return: bool) -> tuple[int, int, int]:
    """(lines, empty lines, offset of the first stray '\\r' or -1) of the bytes from `start`.

    An empty line holds nothing or only '\\r'; a stray '\\r' is one followed by neither '\\n' nor the end of the file.
    """
    data = np.frombuffer(mapped, np.uint8)
    size = len(data)
    n_newlines = n_empty = 0
    stray = -1
    try:
        previous = np.array([_NEWLINE, _NEWLINE], np.uint8)  # the file's start behaves like the end of a line
        for offset in range(start, size, _SCAN_BYTES):
            block = np.concatenate([previous, data[offset : offset + _SCAN_BYTES]])  # block[k] is byte offset-2+k
            newline = block == _NEWLINE
            n_newlines += int(np.count_nonzero(newline[2:]))
            n_empty += int(np.count_nonzero(newline[2:] & newline[1:-1]))
            if has_carriage_return:
                carriage_return = block == _CARRIAGE_RETURN
                n_empty += int(np.count_nonzero(newline[2:] & carriage_return[1:-1] & newline[:-2]))
                # Bytes offset-1 .. end-2 of this block: the last one is judged with the next block.
                strays = np.flatnonzero(carriage_return[1:-1] & ~newline[2:])
                if len(strays):
                    stray = offset - 1 + int(strays[0])
                    break
            previous = block[-2:]
        tail = bytes(data[max(start, size - 2) :])
    finally:
        del data
    unterminated = size > start and tail[-1:] != b"\n"
    if unterminated and (tail == b"\n\r" or (tail == b"\r" and size - start == 1)):
        n_empty += 1  # a last line holding only '\r'
    return n_newlines + int(unterminated), n_empty, stray


def _byte_error(path: Path, mapped: mmap.mmap, position: int, encoding: str, what: str) -> Exception:
    line_start = mapped.rfind(b"\n", 0, position) + 1
    line_end = mapped.find(b"\n", position)
    line = mapped[line_start : len(mapped) if line_end < 0 else line_end].removeprefix(UTF8_BOM)
    line_number = mapped[:position].count(b"\n") + 1
    return line_error(path, line_number, "text (lines ending in '\\n' or '\\r\\n')", what,
                      line.decode(encoding, errors="replace"))
