"""TensorBoard event files written directly: scalar summaries only, with no TensorBoard package to import.

`tensorboardX` imports PyTorch when it is installed, which costs seconds at the start of every run (8.9 s here, see
benchmarks/results/end_to_end-*.json); scalars need none of that. An event file is a sequence of TFRecords
(`[uint64 length][uint32 masked CRC-32C of the length][data][uint32 masked CRC-32C of the data]`, little-endian),
each holding one serialised `tensorflow.Event` protocol buffer. The few fields written here:

  Event       wall_time = 1 (double), step = 2 (int64), file_version = 3 (string), summary = 5, session_log = 7
  Summary     value = 1 (repeated Summary.Value)
  Value       tag = 1 (string), simple_value = 2 (float)
  SessionLog  status = 1 (enum; START = 1: TensorBoard hides the earlier events at and after this step)

tests/test_logs.py reads the files back with tensorboardX's generated protobuf classes and an independent CRC.
"""

from __future__ import annotations

import pathlib
import socket
import struct
import time
from typing import Iterable

_CASTAGNOLI = 0x82F63B78  # CRC-32C's reflected polynomial


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_CASTAGNOLI if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, *, file_version: str | None = None, summary: bytes | None = None,
           session_start: bool = False) -> bytes:
    message = _varint(1 << 3 | 1) + struct.pack("<d", time.time()) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        message += _length_delimited(3, file_version.encode())
    if summary is not None:
        message += _length_delimited(5, summary)
    if session_start:
        message += _length_delimited(7, _varint(1 << 3 | 0) + _varint(1))
    return message


def _scalar_summary(scalars: Iterable[tuple[str, float]]) -> bytes:
    values = (_length_delimited(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)
              for tag, value in scalars)
    return b"".join(_length_delimited(1, value) for value in values)


class EventFileWriter:
    """Appends scalar summaries to a new event file in `log_dir`, flushed after every write.

    Args:
      log_dir: the directory (created if missing).
      purge_step: a resumed run's first step: a SessionLog START there makes TensorBoard drop the earlier files'
        events at and after it, which the interrupted process wrote after its checkpoint.
      suffix: appended to the file name (after the host name), to keep files opened in the same second apart.
    """

    def __init__(self, log_dir: str | pathlib.Path, *, purge_step: int | None = None, suffix: str = ""):
        log_dir = pathlib.Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}{suffix}"
        self._file = self.path.open("wb")
        self._write_record(_event(0, file_version="brain.Event:2"))
        if purge_step is not None:
            self._write_record(_event(purge_step, session_start=True))
        self._file.flush()

    def add_scalars(self, scalars: Iterable[tuple[str, float]], step: int) -> None:
        """One event at `step` holding every (tag, value); tags are kept as given (`valid/ndcg@100`)."""
        self._write_record(_event(step, summary=_scalar_summary(scalars)))
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def _write_record(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)) + data
                         + struct.pack("<I", masked_crc32c(data)))
