"""The binary formats: NumPy .npy arrays of (user, item[, value]) rows and Parquet tables with named columns.

Rows have no line numbers here, so errors name the 1-based row. An .npy header is checked against the file's size
before anything is allocated, and float ids are accepted only where they are whole numbers that fit in 64-bit
integers, so two ids are never merged by a conversion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hvae_jax.data.interactions import DataFormatError
from hvae_jax.data.readers.columns import Columns, keep_above
from hvae_jax.data.readers.errors import show
from hvae_jax.data.readers.names import VALUE_NAMES, pick_columns

_NPY_EXPECTED = "a NumPy integer array of shape (n, 2) (user, item) or (n, 3) (user, item, value)"
_INT64_LIMIT = 2.0**63  # float64 ids at or beyond this do not fit in int64 and would all become one number


def read_npy(path: Path, min_rating: float | None) -> Columns:
    shape, dtype, data_bytes = _npy_header(path)
    if len(shape) != 2 or shape[1] not in (2, 3):
        raise DataFormatError(f"{path}: expected {_NPY_EXPECTED}, found shape {shape}")
    if shape[0] == 0:
        raise DataFormatError(f"{path}: expected {_NPY_EXPECTED}, found an empty array of shape {shape}")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataFormatError(f"{path}: expected {_NPY_EXPECTED}, found dtype {dtype}")
    expected_bytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if data_bytes != expected_bytes:
        raise DataFormatError(f"{path}: expected {_NPY_EXPECTED}; its header says shape {shape} of {dtype}, "
                              f"{expected_bytes} bytes, but {data_bytes} bytes follow the header")
    array = np.load(path, allow_pickle=False)
    ids = array[:, :2]
    if np.issubdtype(dtype, np.floating):
        # Float arrays are common after np.save of a mixed (user, item, rating) matrix; ids must still be whole.
        not_whole = ~(np.isfinite(ids) & (ids == np.floor(ids)))
        if not_whole.any():
            row = int(np.flatnonzero(not_whole.any(axis=1))[0])
            raise DataFormatError(f"{path}: row {row + 1}: expected integer user and item ids, found "
                                  f"{array[row].tolist()}")
        too_large = (ids >= _INT64_LIMIT) | (ids < -_INT64_LIMIT)
        if too_large.any():
            row = int(np.flatnonzero(too_large.any(axis=1))[0])
            raise DataFormatError(f"{path}: row {row + 1}: expected user and item ids that fit in 64-bit integers "
                                  f"(below 2**63), found {array[row].tolist()}; store ids as integers or strings")
        ids = ids.astype(np.int64)
    values = None
    if shape[1] == 3:
        values = array[:, 2].astype(np.float64)
        not_finite = ~np.isfinite(values)
        if not_finite.any():
            row = int(np.flatnonzero(not_finite)[0])
            raise DataFormatError(f"{path}: row {row + 1}: expected a finite value in column 3, found "
                                  f"{array[row].tolist()}")
    elif min_rating is not None:
        raise ValueError(f"min_rating={min_rating} needs a value column, but {path} has shape {shape} "
                         "(user, item); leave min_rating unset")
    columns = Columns(pa.array(ids[:, 0]), pa.array(ids[:, 1]), n_rows=shape[0],
                      value_name=None if values is None else "value")
    return keep_above(columns, values, min_rating)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes after the header) from an .npy header, without reading the array."""
    with open(path, "rb") as file:
        start = file.read(4)
        file.seek(0)
        if start == b"PK\x03\x04":
            raise DataFormatError(f"{path}: expected {_NPY_EXPECTED}, found a .npz archive")
        try:
            version = np.lib.format.read_magic(file)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(file)
            offset = file.tell()
        except (ValueError, OSError, EOFError, SyntaxError) as error:
            raise DataFormatError(f"{path}: expected {_NPY_EXPECTED}, found a file np.load cannot read "
                                  f"({error})") from None
    if dtype.hasobject:
        raise DataFormatError(f"{path}: expected {_NPY_EXPECTED}, found dtype {dtype} (Python objects)")
    return tuple(shape), dtype, path.stat().st_size - offset


def read_parquet(path: Path, min_rating: float | None) -> Columns:
    """Reads a Parquet table, picking the user, item and value columns by name as the CSV reader does."""
    try:
        parquet_file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        with open(path, "rb") as file:
            start = file.read(120).split(b"\n")[0].decode("utf-8", errors="replace")
        raise DataFormatError(f"{path}:1: expected a Parquet file (it starts and ends with 'PAR1'), found one pyarrow "
                              f"cannot read ({error}): {show(start)}") from None
    names = parquet_file.schema_arrow.names
    if len(names) < 2:
        raise DataFormatError(f"{path}: expected a table of at least 2 columns (user, item[, rating]), found "
                              f"columns {names}")
    user_field, item_field, value_field = pick_columns(names)
    if min_rating is not None and value_field is None:
        raise ValueError(f"min_rating={min_rating} needs a rating/value column, but {path} has none among {names} "
                         f"(recognised names: {', '.join(sorted(VALUE_NAMES))})")
    picked = [names[user_field], names[item_field]] + ([] if value_field is None else [names[value_field]])
    table = parquet_file.read(columns=picked)
    if table.num_rows == 0:
        raise DataFormatError(f"{path}: expected rows of {', '.join(picked)}, found an empty table")
    users = _parquet_ids(path, table.column(0), picked[0], "user")
    items = _parquet_ids(path, table.column(1), picked[1], "item")
    values = None if value_field is None else _parquet_values(path, table.column(2), picked[2])
    columns = Columns(users, items, n_rows=table.num_rows, value_name=None if values is None else picked[2])
    return keep_above(columns, values, min_rating)


def _parquet_ids(path: Path, ids: pa.ChunkedArray, name: str, role: str) -> pa.ChunkedArray:
    """String or integer ids as they are; whole float ids as int64; anything else is an error naming the row."""
    if pa.types.is_dictionary(ids.type):
        ids = ids.cast(ids.type.value_type)
    _refuse_nulls(path, ids, f"a {role} id in column {name!r}")
    kind = ids.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        empty = pc.equal(pc.binary_length(ids), 0)
        if pc.any(empty).as_py():
            raise DataFormatError(f"{path}: row {_first(empty) + 1}: expected a non-empty {role} id in column "
                                  f"{name!r}, found ''")
        return ids
    if pa.types.is_integer(kind):
        return ids
    if pa.types.is_floating(kind):
        numbers = ids.to_numpy()
        bad = ~(np.isfinite(numbers) & (numbers == np.floor(numbers)) & (np.abs(numbers) < _INT64_LIMIT))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataFormatError(f"{path}: row {row + 1}: expected a {role} id in column {name!r} that is a whole "
                                  f"number below 2**63, found {numbers[row]!r}")
        return pa.chunked_array([pa.array(numbers.astype(np.int64))])
    raise DataFormatError(f"{path}: expected string or integer {role} ids in column {name!r}, found type {kind}")


def _parquet_values(path: Path, values: pa.ChunkedArray, name: str) -> np.ndarray:
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
            or pa.types.is_decimal(values.type)):
        raise DataFormatError(f"{path}: expected numbers in the value column {name!r}, found type {values.type}")
    _refuse_nulls(path, values, f"a value in column {name!r}")
    numbers = values.cast(pa.float64()).to_numpy()
    not_finite = ~np.isfinite(numbers)
    if not_finite.any():
        row = int(np.flatnonzero(not_finite)[0])
        raise DataFormatError(f"{path}: row {row + 1}: expected a finite value in column {name!r}, found "
                              f"{numbers[row]!r}")
    return numbers


def _refuse_nulls(path: Path, column: pa.ChunkedArray, expected: str) -> None:
    if column.null_count:
        raise DataFormatError(f"{path}: row {_first(pc.is_null(column)) + 1}: expected {expected}, found null")


def _first(flags: pa.ChunkedArray) -> int:
    return int(np.argmax(np.asarray(flags.to_numpy(zero_copy_only=False), bool)))
