"""Tests of hvae_jax.data.features: MovieLens demographics and numeric CSV features, aligned to given users."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hvae_jax.data.features import UserFeatures, read_user_features
from hvae_jax.data.interactions import DataFormatError
from hvae_jax.data.readers import read_interactions

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

U_USER = "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n4|17|M|technician|43537\n"
USERS_DAT = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n"


def write(folder: Path, name: str, content: str) -> Path:
    path = folder / name
    path.write_text(content)
    return path


def column(features: UserFeatures, name: str) -> np.ndarray:
    return features.values[:, features.names.index(name)]


def test_u_user_aligned_to_given_order(tmp_path):
    path = write(tmp_path, "u.user", U_USER)
    features = read_user_features(path, np.array(["3", "1", "4"]))
    assert features.values.dtype == np.float32 and features.values.shape == (3, features.n_features)
    ages = np.array([23.0, 24.0, 17.0])
    np.testing.assert_allclose(column(features, "age"), (ages - ages.mean()) / ages.std(), rtol=1e-6)
    np.testing.assert_array_equal(column(features, "gender=M"), [1, 1, 1])
    np.testing.assert_array_equal(column(features, "gender=F"), [0, 0, 0])  # category of a user not asked for
    np.testing.assert_array_equal(column(features, "occupation=writer"), [1, 0, 0])
    np.testing.assert_array_equal(column(features, "occupation=technician"), [0, 1, 1])
    np.testing.assert_array_equal(column(features, "age=18-24"), [1, 1, 0])
    np.testing.assert_array_equal(column(features, "age=under 18"), [0, 0, 1])
    # Exactly one category per group and per user.
    for prefix in ("age=", "gender=", "occupation="):
        group = [k for k, name in enumerate(features.names) if name.startswith(prefix)]
        np.testing.assert_array_equal(features.values[:, group].sum(axis=1), [1, 1, 1])
    assert not any("zip" in name for name in features.names)


def test_users_dat_codes(tmp_path):
    path = write(tmp_path, "users.dat", USERS_DAT)
    features = read_user_features(path, np.array(["1", "2", "3"]))
    np.testing.assert_array_equal(column(features, "gender=F"), [1, 0, 0])
    np.testing.assert_array_equal(column(features, "age=56+"), [0, 1, 0])
    np.testing.assert_array_equal(column(features, "occupation=K-12 student"), [1, 0, 0])
    np.testing.assert_array_equal(column(features, "occupation=self-employed"), [0, 1, 0])
    np.testing.assert_array_equal(column(features, "occupation=scientist"), [0, 0, 1])
    assert abs(float(column(features, "age").mean())) < 1e-6
    np.testing.assert_allclose(column(features, "age").std(), 1.0, rtol=1e-6)


def test_numeric_csv_used_as_is(tmp_path):
    path = write(tmp_path, "side.csv", 'user,f1,"f 2"\nb,1.5,-2\na,0,3e2\nextra,9,9\n')
    features = read_user_features(path, np.array(["a", "b"]))
    assert features.names == ("f1", "f 2")
    np.testing.assert_array_equal(features.values, np.array([[0, 300], [1.5, -2]], np.float32))


def test_missing_users_are_named_with_count(tmp_path):
    path = write(tmp_path, "u.user", U_USER)
    wanted = np.array(["1"] + [str(u) for u in range(100, 112)])
    with pytest.raises(ValueError, match=r"12 of 13 users have no features") as error:
        read_user_features(path, wanted)
    message = str(error.value)
    assert "'100'" in message and "'109'" in message and "'110'" not in message and message.endswith("...")


@pytest.mark.parametrize(
    "name, content, file_format, line, message",
    [
        ("u.user", "1|24|M|technician|85711\n2|53|F|other\n", None, 2, "expected 5 '|'-separated fields"),
        ("u.user", "1|24|M|technician|85711\n\n2|old|F|other|1\n", None, 3, "an age in whole years"),
        ("u.user", "1|24|M|technician|85711\n1|25|M|writer|1\n", None, 2, "already on line 1"),
        ("users.dat", "1::F::1::10::48067\n2::M::57::16::70072\n", None, 2, "an age-group code"),
        ("users.dat", "1::F::1::10::48067\n2::X::56::16::70072\n", None, 2, "gender 'F' or 'M'"),
        ("users.dat", "1::F::1::10::48067\n2::M::56::21::70072\n", None, 2, "an occupation code 0-20"),
        ("side.csv", "user,f1,f2\na,1,2\nb,1\n", None, 3, "expected 3 comma-separated fields"),
        ("side.csv", "user,f1,f2\na,1,2\nb,1,nan\n", None, 3, "a finite number (f2) in field 3"),
        ("demo.txt", "1|24|M|technician|85711\n2|x|F|other|1\n", "movielens-100k", 2, "an age in whole years"),
    ],
)
def test_malformed_lines(tmp_path, name, content, file_format, line, message):
    path = write(tmp_path, name, content)
    with pytest.raises(DataFormatError) as error:
        read_user_features(path, np.array(["1"]), format=file_format)
    assert f"{path}:{line}: " in str(error.value)
    assert message in str(error.value)


def test_detection_from_first_line_and_errors(tmp_path):
    path = write(tmp_path, "demographics.txt", USERS_DAT)
    assert read_user_features(path, np.array(["2"])).values.shape[0] == 1
    unknown = write(tmp_path, "demographics2.txt", "1 2 3\n")
    with pytest.raises(DataFormatError, match="pass format="):
        read_user_features(unknown, np.array(["1"]))
    with pytest.raises(ValueError, match="unknown user feature format"):
        read_user_features(path, np.array(["1"]), format="json")


def test_real_u_user_aligns_with_ml100k():
    folder = DATA / "ml-100k"
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is missing")
    data = read_interactions(folder)
    features = read_user_features(folder / "u.user", data.user_ids)
    assert features.values.shape == (943, features.n_features)
    assert not np.isnan(features.values).any()
    # Check every row against the file, read here with plain Python.
    by_user = {}
    for line in (folder / "u.user").read_text(encoding="latin-1").splitlines():
        user, age, gender, occupation, _ = line.split("|")
        by_user[user] = (int(age), gender, occupation)
    ages = np.array([by_user[user][0] for user in data.user_ids], np.float64)
    np.testing.assert_allclose(column(features, "age"), (ages - ages.mean()) / ages.std(), rtol=1e-5, atol=1e-6)
    for row, user in enumerate(data.user_ids):
        _, gender, occupation = by_user[user]
        assert features.values[row, features.names.index(f"gender={gender}")] == 1
        assert features.values[row, features.names.index(f"occupation={occupation}")] == 1
    assert features.values[:, 1:].sum() == 3 * 943  # one age group, one gender, one occupation per user
