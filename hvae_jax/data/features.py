"""User side features (MovieLens demographics or any numeric CSV) as a float matrix aligned to the data's users.

Categorical fields become one-hot columns over the categories of the whole file, so the columns do not depend on
which users a split keeps; age is standardised over the users asked for.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from pathlib import Path
from typing import Callable, Collection

import numpy as np

from hvae_jax.data.interactions import DataFormatError
from hvae_jax.data.readers.errors import decode_text as _decode, line_error as _line_error

FEATURE_FORMATS: dict[str, str] = {
    "movielens-100k": "MovieLens 100K u.user: user|age|gender|occupation|zip",
    "movielens-1m": "MovieLens 1M users.dat: user::gender::age group::occupation code::zip",
    "csv": "numeric CSV with a header user,f1,f2,... (values used as they are)",
}

# Age groups of ML-1M users.dat (the code is the group's lowest age, 1 for under 18); ML-100K ages are binned alike.
_AGE_GROUPS: dict[int, str] = {1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55",
                               56: "56+"}
# Occupation codes 0-20 of ML-1M users.dat, as listed in its README.
_ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)
_FEATURE_FILES = ("u.user", "users.dat")


@dataclasses.dataclass(frozen=True)
class UserFeatures:
    """Side features of users, one row per user in the order of the user ids they were read for.

    Attributes:
      values: [n_users, n_features] float32.
      names: [n_features] column names, e.g. "age", "gender=F", "occupation=writer".
    """

    values: np.ndarray
    names: tuple[str, ...]

    @property
    def n_features(self) -> int:
        return len(self.names)


@dataclasses.dataclass(frozen=True)
class _Demographics:
    """One parsed MovieLens user line: age in years (ML-100K) or the age-group code (ML-1M)."""

    age: int
    gender: str
    occupation: str


def read_user_features(
    path: str | os.PathLike[str],
    user_ids: np.ndarray,
    format: str | None = None,  # noqa: A002 - same name as in read_interactions.
) -> UserFeatures:
    """Reads user side features and aligns them to `user_ids`.

    MovieLens files give: "age" standardised to mean 0 / std 1 over `user_ids` (ML-1M only has age-group codes,
    used as the age), one-hot age groups, gender and occupation; zip codes are dropped. A CSV gives its numeric
    columns unchanged. Users of the file that are not in `user_ids` are ignored.

    Args:
      path: u.user, users.dat or a CSV file (or a folder holding u.user or users.dat).
      user_ids: [n_users] raw user ids as strings, e.g. `Interactions.user_ids`.
      format: one of `FEATURE_FORMATS`; None detects it from the file name and first line.

    Returns:
      `UserFeatures` with `values` [n_users, n_features], row i for `user_ids[i]`.

    Raises:
      DataFormatError: a malformed line (the message names the file and line) or an undetectable format.
      ValueError: some of `user_ids` have no features (the message names up to 10 of them and the count), or an
        unknown `format`.
    """
    path = Path(path)
    if path.is_dir():
        present = [path / name for name in _FEATURE_FILES if (path / name).is_file()]
        if len(present) != 1:
            raise DataFormatError(f"{path}: expected a folder holding one of {', '.join(_FEATURE_FILES)}, found "
                                  f"{len(present)}; pass the file itself")
        path = present[0]
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    lines = [(number, line.rstrip("\r")) for number, line in enumerate(_decode(path.read_bytes()).split("\n"), 1)]
    lines = [(number, line) for number, line in lines if line.strip()]
    if format is None:
        format = _detect(path, lines)
    if format not in FEATURE_FORMATS:
        raise ValueError(f"unknown user feature format {format!r}; known: {', '.join(FEATURE_FORMATS)}")
    if not lines:
        raise DataFormatError(f"{path}:1: expected user features ({FEATURE_FORMATS[format]}), found an empty file")
    user_ids = np.asarray(user_ids).astype(str)
    if format == "csv":
        rows, names = _read_numeric_csv(path, lines)
        return UserFeatures(_align(path, rows, user_ids).astype(np.float32), names)
    parse = _parse_ml100k_line if format == "movielens-100k" else _parse_ml1m_line
    demographics = _read_user_lines(path, lines, parse)
    return _encode_demographics(path, demographics, user_ids, ml1m=format == "movielens-1m")


def _detect(path: Path, lines: list[tuple[int, str]]) -> str:
    name = path.name.lower()
    if name == "u.user":
        return "movielens-100k"
    if name == "users.dat":
        return "movielens-1m"
    if path.suffix.lower() == ".csv":
        return "csv"
    first = lines[0][1] if lines else ""
    if "::" in first:
        return "movielens-1m"
    if first.count("|") == 4:
        return "movielens-100k"
    formats = "\n".join(f"  {key}: {description}" for key, description in FEATURE_FORMATS.items())
    raise DataFormatError(f"cannot tell the user feature format of {path}; pass format= one of:\n{formats}")


def _read_user_lines(
    path: Path, lines: list[tuple[int, str]], parse: Callable[[Path, int, str], tuple[str, _Demographics]]
) -> dict[str, _Demographics]:
    by_user: dict[str, _Demographics] = {}
    line_of_user: dict[str, int] = {}
    for line_number, line in lines:
        user, demographics = parse(path, line_number, line)
        if user in by_user:
            raise _line_error(path, line_number, f"each user once (user {user!r} is already on line "
                              f"{line_of_user[user]})", "it again", line)
        by_user[user] = demographics
        line_of_user[user] = line_number
    return by_user


def _parse_ml100k_line(path: Path, line_number: int, line: str) -> tuple[str, _Demographics]:
    fields = [field.strip() for field in line.split("|")]
    if len(fields) != 5:
        raise _line_error(path, line_number, "5 '|'-separated fields (user|age|gender|occupation|zip)",
                          str(len(fields)), line)
    user, age, gender, occupation, _zip = fields
    if not user:
        raise _line_error(path, line_number, "a user id in field 1", "''", line)
    if not (age.isascii() and age.isdigit()):
        raise _line_error(path, line_number, "an age in whole years in field 2", repr(age), line)
    for index, value in ((3, gender), (4, occupation)):
        if not value:
            raise _line_error(path, line_number, f"a non-empty field {index}", "''", line)
    return user, _Demographics(int(age), gender, occupation)


def _parse_ml1m_line(path: Path, line_number: int, line: str) -> tuple[str, _Demographics]:
    fields = [field.strip() for field in line.split("::")]
    if len(fields) != 5:
        raise _line_error(path, line_number, "5 '::'-separated fields (user::gender::age::occupation::zip)",
                          str(len(fields)), line)
    user, gender, age, occupation, _zip = fields
    if not user:
        raise _line_error(path, line_number, "a user id in field 1", "''", line)
    if gender not in ("F", "M"):
        raise _line_error(path, line_number, "gender 'F' or 'M' in field 2", repr(gender), line)
    if not (age.isascii() and age.isdigit() and int(age) in _AGE_GROUPS):
        raise _line_error(path, line_number, f"an age-group code ({', '.join(map(str, _AGE_GROUPS))}) in field 3",
                          repr(age), line)
    if not (occupation.isascii() and occupation.isdigit() and int(occupation) < len(_ML1M_OCCUPATIONS)):
        raise _line_error(path, line_number, f"an occupation code 0-{len(_ML1M_OCCUPATIONS) - 1} in field 4",
                          repr(occupation), line)
    return user, _Demographics(int(age), gender, _ML1M_OCCUPATIONS[int(occupation)])


def _age_group(age: int) -> int:
    """The ML-1M age-group code of an age in years."""
    return max(code for code in _AGE_GROUPS if code <= max(age, 1))


def _encode_demographics(
    path: Path, by_user: dict[str, _Demographics], user_ids: np.ndarray, *, ml1m: bool
) -> UserFeatures:
    if ml1m:
        genders, occupations = ["F", "M"], list(_ML1M_OCCUPATIONS)
    else:
        genders = sorted({person.gender for person in by_user.values()})
        occupations = sorted({person.occupation for person in by_user.values()})
    group_codes = list(_AGE_GROUPS)
    _check_coverage(path, by_user, user_ids)
    people = [by_user[user] for user in user_ids]
    ages = np.array([person.age for person in people], np.float64)
    spread = ages.std() if len(ages) else 0.0
    standardised_age = (ages - ages.mean()) / spread if spread > 0 else np.zeros_like(ages)
    n_columns = 1 + len(group_codes) + len(genders) + len(occupations)
    values = np.zeros((len(people), n_columns), np.float32)
    values[:, 0] = standardised_age
    group_column = {code: 1 + k for k, code in enumerate(group_codes)}
    gender_column = {gender: 1 + len(group_codes) + k for k, gender in enumerate(genders)}
    occupation_column = {name: 1 + len(group_codes) + len(genders) + k for k, name in enumerate(occupations)}
    for row, person in enumerate(people):
        values[row, group_column[person.age if ml1m else _age_group(person.age)]] = 1.0
        values[row, gender_column[person.gender]] = 1.0
        values[row, occupation_column[person.occupation]] = 1.0
    names = (
        ("age",)
        + tuple(f"age={_AGE_GROUPS[code]}" for code in group_codes)
        + tuple(f"gender={gender}" for gender in genders)
        + tuple(f"occupation={name}" for name in occupations)
    )
    return UserFeatures(values, names)


def _read_numeric_csv(path: Path, lines: list[tuple[int, str]]) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Returns (user id -> [n_features] float64, feature names) of a CSV with header user,f1,f2,..."""
    header_number, header_line = lines[0]
    header = [name.strip() for name in next(csv.reader([header_line]))]
    if len(header) < 2:
        raise _line_error(path, header_number, "a header user,f1,f2,... with at least one feature column",
                          f"{len(header)} column", header_line)
    if re.fullmatch(r"[-+.0-9eE]+", header[0]):
        raise _line_error(path, header_number, "a header user,f1,f2,... naming the columns", "a number",
                          header_line)
    expected = f"{len(header)} comma-separated fields ({','.join(header)})"
    rows: dict[str, np.ndarray] = {}
    line_of_user: dict[str, int] = {}
    for line_number, line in lines[1:]:
        try:
            fields = [field.strip() for field in next(csv.reader([line]))]
        except csv.Error as error:
            raise _line_error(path, line_number, expected, f"unreadable CSV ({error})", line) from None
        if len(fields) != len(header):
            raise _line_error(path, line_number, expected, str(len(fields)), line)
        user = fields[0]
        if not user:
            raise _line_error(path, line_number, "a user id in field 1", "''", line)
        if user in rows:
            raise _line_error(path, line_number, f"each user once (user {user!r} is already on line "
                              f"{line_of_user[user]})", "it again", line)
        numbers = []
        for index, field in enumerate(fields[1:], 2):
            try:
                number = float(field)
            except ValueError:
                number = float("nan")
            if not np.isfinite(number):
                raise _line_error(path, line_number, f"a finite number ({header[index - 1]}) in field {index}",
                                  repr(field), line)
            numbers.append(number)
        rows[user] = np.array(numbers)
        line_of_user[user] = line_number
    return rows, tuple(header[1:])


def _check_coverage(path: Path, known_users: Collection[str], user_ids: np.ndarray) -> None:
    """Raises ValueError naming (up to 10 of) the users of `user_ids` that the file has no line for."""
    missing = [user for user in user_ids if user not in known_users]
    if missing:
        shown = ", ".join(repr(str(user)) for user in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise ValueError(f"{len(missing)} of {len(user_ids)} users have no features in {path}: {shown}")


def _align(path: Path, rows: dict[str, np.ndarray], user_ids: np.ndarray) -> np.ndarray:
    """Stacks rows[user] for every user in `user_ids` into [n_users, n_features]."""
    _check_coverage(path, rows, user_ids)
    n_features = len(next(iter(rows.values()))) if rows else 0
    return np.stack([rows[user] for user in user_ids]) if len(user_ids) else np.zeros((0, n_features))
