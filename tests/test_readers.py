"""Tests of hvae_jax.data.readers: every format on tiny files built here, malformed input, detection, real data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from hvae_jax.data.readers import formats as readers
from hvae_jax.data.interactions import DataFormatError, Interactions
from hvae_jax.data.readers import FORMATS, detect_format, read_interactions, read_titles

# The licensed data sets live beside the project (../shared/data), never inside it.
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def raw_pairs(data: Interactions) -> dict[tuple[str, str], int]:
    """(raw user, raw item) -> count, the representation tests compare against hand-written expectations."""
    return {
        (str(data.user_ids[u]), str(data.item_ids[i])): int(c)
        for u, i, c in zip(data.users, data.items, data.counts)
    }


def real(folder: str) -> Path:
    path = DATA / folder
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is missing")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Each format on a tiny file


def test_movielens_tsv_exact_parse_with_duplicate(tmp_path):
    path = write(tmp_path, "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t242\t5\t881250950\n"
                                     "22\t377\t1\t878887116\n")
    data = read_interactions(path)
    assert list(data.user_ids) == ["196", "186", "22"]
    assert list(data.item_ids) == ["242", "302", "377"]
    np.testing.assert_array_equal(data.users, [0, 1, 2])
    np.testing.assert_array_equal(data.items, [0, 1, 2])
    np.testing.assert_array_equal(data.counts, [2, 1, 1])
    assert data.source == str(path)
    assert any("duplicate" in note for note in data.notes)


def test_movielens_dat(tmp_path):
    path = write(tmp_path, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    data = read_interactions(path)
    assert raw_pairs(data) == {("1", "1193"): 1, ("1", "661"): 1, ("2", "1193"): 1}
    assert list(data.item_ids) == ["1193", "661"]


def test_csv_movielens_header_crlf_and_bom(tmp_path):
    path = write(tmp_path, "ratings.csv", b"\xef\xbb\xbfuserId,movieId,rating,timestamp\r\n1,1,4.0,964982703\r\n"
                                          b"1,3,4.0,964981247\r\n2,1,0.5,964982224\r\n")
    data = read_interactions(path)
    assert raw_pairs(data) == {("1", "1"): 1, ("1", "3"): 1, ("2", "1"): 1}


def test_csv_columns_found_by_name_and_quoted_fields(tmp_path):
    path = write(tmp_path, "log.csv", 'timestamp,itemId,userId,score\n5,"a,1",u1,2\n6,b,"u2",3.5\n7,b,u1,1\n')
    data = read_interactions(path, min_rating=1.5)
    assert raw_pairs(data) == {("u1", "a,1"): 1, ("u2", "b"): 1}


def test_csv_generic_header_first_two_columns(tmp_path):
    path = write(tmp_path, "x.csv", "a,b\nalice,book\nbob,book\n")
    data = read_interactions(path)
    assert raw_pairs(data) == {("alice", "book"): 1, ("bob", "book"): 1}
    with pytest.raises(ValueError, match="needs a rating/value column"):
        read_interactions(path, min_rating=1)


def test_csv_without_header_is_refused(tmp_path):
    path = write(tmp_path, "noheader.csv", "1,2,4.0\n1,3,5.0\n")
    with pytest.raises(DataFormatError, match=r"noheader\.csv:1: expected a header .*format='pairs'"):
        read_interactions(path)


@pytest.mark.parametrize("header", ["", "userID\tartistID\tweight\r\n"])
def test_lastfm_crlf_with_and_without_header(tmp_path, header):
    path = write(tmp_path, "user_artists.dat", header + "2\t51\t13883\r\n2\t52\t11690\r\n3\t51\t7\r\n")
    data = read_interactions(path)
    assert raw_pairs(data) == {("2", "51"): 1, ("2", "52"): 1, ("3", "51"): 1}
    assert any("header" in note for note in data.notes) == bool(header)
    assert len(read_interactions(path, min_rating=100)) == 2


def test_adjacency_with_user_without_items(tmp_path):
    path = write(tmp_path, "train.txt", "0 5 7 9\n1\n2 5  5\n")
    data = read_interactions(path)
    assert raw_pairs(data) == {("0", "5"): 1, ("0", "7"): 1, ("0", "9"): 1, ("2", "5"): 2}
    assert "1 users with no items skipped" in data.notes
    with pytest.raises(ValueError, match="min_rating"):
        read_interactions(path, min_rating=3.5)


@pytest.mark.parametrize(
    "content",
    [
        "u1 i1\nu2 i2\nu1 i2\n",
        "u1,i1\nu2,i2\nu1,i2\n",
        "u1\ti1\n\nu2 , i2\nu1\t i2 \n",
        "user item\nu1 i1\nu2 i2\nu1 i2\n",
    ],
)
def test_pairs_separators_and_header(tmp_path, content):
    path = write(tmp_path, "pairs.txt", content)
    data = read_interactions(path, format="pairs")
    assert raw_pairs(data) == {("u1", "i1"): 1, ("u2", "i2"): 1, ("u1", "i2"): 1}
    assert any("header" in note for note in data.notes) == content.startswith("user")


def test_pairs_triples_values_and_numeric_first_line_is_data(tmp_path):
    path = write(tmp_path, "triples.txt", "1 10 3.5\n1 11 4\n2 10 1\n")
    data = read_interactions(path, format="pairs", min_rating=3.5)
    assert raw_pairs(data) == {("1", "11"): 1}
    pairs = write(tmp_path, "two.txt", "1 10\n")
    with pytest.raises(ValueError, match="needs a value column"):
        read_interactions(pairs, format="pairs", min_rating=1)


def test_npy_two_and_three_columns(tmp_path):
    path = tmp_path / "pairs.npy"
    np.save(path, np.array([[3, 7], [1, 7], [3, 7]], np.int32))
    data = read_interactions(path)
    assert raw_pairs(data) == {("3", "7"): 2, ("1", "7"): 1}
    triples = tmp_path / "triples.npy"
    np.save(triples, np.array([[3, 7, 3.5], [1, 7, 4.0]]))  # float array: ids are whole numbers, so accepted
    assert raw_pairs(read_interactions(triples, min_rating=3.5)) == {("1", "7"): 1}
    with pytest.raises(ValueError, match="needs a value column"):
        read_interactions(path, min_rating=1)


NETFLIX_COMBINED = "1:\n1488844,3,2005-09-06\n822109,5,2005-05-13\n2:\n1488844,4,2005-01-01\n822109,2,2005-02-02\n"


def test_netflix_combined_file_and_folder_of_movie_files(tmp_path):
    combined = write(tmp_path, "combined_data_1.txt", NETFLIX_COMBINED)
    expected = {("1488844", "1"): 1, ("822109", "1"): 1, ("1488844", "2"): 1, ("822109", "2"): 1}
    assert raw_pairs(read_interactions(combined)) == expected
    assert raw_pairs(read_interactions(combined, min_rating=3.5)) == {("822109", "1"): 1, ("1488844", "2"): 1}
    folder = tmp_path / "netflix"
    write(folder, "mv_0000001.txt", "1:\r\n1488844,3,2005-09-06\r\n822109,5,2005-05-13\r\n")
    write(folder, "mv_0000002.txt", "2:\n1488844,4,2005-01-01\n822109,2,2005-02-02")
    assert detect_format(folder) == (folder, "netflix")
    assert raw_pairs(read_interactions(folder)) == expected


# ----------------------------------------------------------------------------------------------------------------
# min_rating


def test_min_rating_is_strict_and_noted(tmp_path):
    path = write(tmp_path, "u.data", "1\t1\t3.5\t0\n1\t2\t4\t0\n2\t1\t3\t0\n2\t3\t5\t0\n")
    data = read_interactions(path, min_rating=3.5)
    assert raw_pairs(data) == {("1", "2"): 1, ("2", "3"): 1}
    assert any("2 of 4 rows dropped" in note for note in data.notes)
    assert len(read_interactions(path)) == 4


# ----------------------------------------------------------------------------------------------------------------
# Malformed input: the message names the file and the 1-based line


def test_error_message_names_file_line_expected_and_found(tmp_path):
    lines = "".join(f"{u}\t{u + 1}\t3\t881250949\n" for u in range(16)) + "196\t242\t3\n"
    path = write(tmp_path, "u.data", lines)
    with pytest.raises(DataFormatError) as error:
        read_interactions(path)
    assert str(error.value) == (
        f"{path}:17: expected 4 tab-separated fields (user item rating timestamp), found 3: '196\\t242\\t3'"
    )


MALFORMED = [
    ("movielens-tsv", "u.data", "1\t2\t3\t4\n1\t2\tfive\t4\n", 2, "a number (rating) in field 3"),
    ("movielens-tsv", "u.data", "1\t2\t3\t4\n\n1 2 3 4\n", 3, "expected 4 tab-separated fields"),
    ("movielens-dat", "ratings.dat", "1::2::3::4\n1:2:3:4\n", 2, "expected 4 '::'-separated fields"),
    ("movielens-dat", "ratings.dat", "1::2::3::4\n1::x2::3::4\n", 2, "an integer item id in field 2"),
    ("csv", "ratings.csv", "userId,movieId,rating,timestamp\n1,2,4.0,5\n1,3,4.0\n", 3, "expected 4 comma-separated"),
    ("csv", "ratings.csv", 'userId,movieId,rating\n1,2,4.0\n"1",3,"good"\n', 3, "a number (rating) in field 3"),
    ("csv", "ratings.csv", "userId;movieId;rating\n1;2;4.0\n", 1, "at least 2 comma-separated columns"),
    ("lastfm", "user_artists.dat", "2\t51\t13883\r\n2\tabc\t1\r\n", 2, "an integer artist id in field 2"),
    ("lastfm", "user_artists.dat", "2\t51\t13883\r\n2\t52\r\n", 2, "expected 3 tab-separated fields"),
    ("adjacency", "train.txt", "0 1 2 3\n1 4 x5\n", 2, "found 'x5'"),
    ("adjacency", "train.txt", "0 1 2 3\n\n1,4,5\n", 3, "integer ids separated by spaces"),
    ("pairs", "pairs.txt", "a b\nc d\ne f g\n", 3, "expected 2 fields"),
    ("pairs", "pairs.txt", "a b 1\nc d x\n", 2, "a number (value) in field 3"),
    ("pairs", "pairs.txt", "a b c d\n", 1, "2 or 3 fields"),
    ("netflix", "combined_data_1.txt", "1488844,3,2005-09-06\n", 1, "a 'MOVIEID:' line before the first rating"),
    ("netflix", "combined_data_1.txt", "1:\n1488844,3,2005-09-06\n822109;5;2005\n", 3, "found 1 fields"),
    ("netflix", "combined_data_1.txt", "1:\n1488844,3,2005-09-06\nx7:\n", 3, "an integer movie id"),
]


@pytest.mark.parametrize("file_format, name, content, line, message", MALFORMED)
def test_malformed_line_is_named(tmp_path, file_format, name, content, line, message):
    path = write(tmp_path, name, content)
    with pytest.raises(DataFormatError) as error:
        read_interactions(path, format=file_format)
    assert f"{path}:{line}: " in str(error.value)
    assert message in str(error.value)


def test_malformed_movie_file_in_netflix_folder_is_named(tmp_path):
    folder = tmp_path / "training_set"
    write(folder, "mv_0000001.txt", "1:\n1488844,3,2005-09-06\n")
    bad = write(folder, "mv_0000002.txt", "2:\n1488844,4,2005-01-01\n822109,2\n")
    with pytest.raises(DataFormatError, match=f"{bad}:3: expected 'MOVIEID:' or 3 comma-separated fields"):
        read_interactions(tmp_path)


@pytest.mark.parametrize("file_format", sorted(set(FORMATS) - {"npy", "netflix"}))
def test_empty_file(tmp_path, file_format):
    path = write(tmp_path, "empty.txt", "\n  \n")
    with pytest.raises(DataFormatError, match=f"{path}:1: expected .*found"):
        read_interactions(path, format=file_format)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 4), np.int64), r"found shape \(4, 4\)"),
        (np.zeros(4, np.int64), r"found shape \(4,\)"),
        (np.array([["a", "b"]]), "found dtype <U1"),
        (np.array([[1.0, 2.5]]), "row 1: expected integer user and item ids"),
        (np.zeros((0, 2), np.int64), "empty array"),
    ],
)
def test_malformed_npy(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(DataFormatError, match=message) as error:
        read_interactions(path)
    assert str(path) in str(error.value)


def test_not_a_npy_file(tmp_path):
    path = write(tmp_path, "bad.npy", "1 2\n")
    with pytest.raises(DataFormatError, match="bad.npy: expected a NumPy integer array"):
        read_interactions(path)


# ----------------------------------------------------------------------------------------------------------------
# Fast path and chunking


def test_clean_files_never_take_the_line_by_line_path(tmp_path, monkeypatch):
    """The vectorised path must handle ordinary files itself; the slow path is what makes 20M rows slow."""

    def refuse(*args, **kwargs):
        raise AssertionError("line-by-line path taken")

    for name in ("_slow_rows", "_slow_adjacency", "_slow_netflix"):
        monkeypatch.setattr(readers, name, refuse)
    files = {
        "u.data": "1\t2\t3\t4\n5\t6\t7\t8\n",
        "ratings.dat": "1::2::3::4\n",
        "ratings.csv": "userId,movieId,rating,timestamp\r\n1,2,3.5,4\r\n",
        "user_artists.dat": "userID\tartistID\tweight\r\n1\t2\t3\r\n",
        "train.txt": "0 1 2\n1\n",
        "pairs.txt": "a b 1\nc,d,2\n",
        "combined_data_1.txt": NETFLIX_COMBINED,
    }
    for name, content in files.items():
        assert len(read_interactions(write(tmp_path, name, content))) > 0


def test_slow_path_agrees_with_fast_path(tmp_path):
    clean = write(tmp_path, "clean.tsv", "1\t2\t3\t4\n5\t6\t7\t8\n")
    # The whitespace-only line sends the chunk down the line-by-line path, which must give the same result.
    unusual = write(tmp_path, "unusual.tsv", "1\t2\t3\t4\n   \n5\t6\t7\t8")
    first = read_interactions(clean, format="movielens-tsv")
    second = read_interactions(unusual, format="movielens-tsv")
    assert raw_pairs(first) == raw_pairs(second)


@pytest.mark.parametrize(
    "name, content, file_format",
    [
        ("u.data", "".join(f"{u % 7}\t{u % 11}\t{u % 5 + 1}\t0\n" for u in range(60)), None),
        ("ratings.csv", "userId,movieId,rating\n" + "".join(f"{u % 7},{u % 11},{u % 5}\n" for u in range(60)), None),
        ("train.txt", "".join(f"{u} {u + 1} {u + 2} {u + 3}\n" for u in range(40)), None),
        ("pairs.txt", "user item\n" + "".join(f"{u % 7} {u % 11}\n" for u in range(60)), "pairs"),
        ("combined_data_1.txt", "".join(f"{m}:\n" + "".join(f"{u},{u % 5 + 1},d\n" for u in range(9))
                                        for m in range(1, 8)), None),
    ],
)
def test_small_chunks_give_the_same_result(tmp_path, monkeypatch, name, content, file_format):
    path = write(tmp_path, name, content)
    whole = read_interactions(path, file_format)
    monkeypatch.setattr(readers, "_CHUNK_BYTES", 16)
    chunked = read_interactions(path, file_format)
    for field in ("users", "items", "counts", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(chunked, field))
    assert whole.notes == chunked.notes


def test_line_number_in_a_later_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_CHUNK_BYTES", 32)
    path = write(tmp_path, "u.data", "".join(f"{u}\t{u}\t3\t0\n" for u in range(49)) + "49\t49\t3\n")
    with pytest.raises(DataFormatError, match=f"{path}:50: expected 4 tab-separated"):
        read_interactions(path)


# ----------------------------------------------------------------------------------------------------------------
# Detection


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("u.data", "1\t2\t3\t4\n", "movielens-tsv"),
        ("u1.base", "1\t2\t3\t4\n", "movielens-tsv"),
        ("ratings.dat", "1::2::3::4\n", "movielens-dat"),
        ("user_artists.dat", "2\t51\t13883\r\n", "lastfm"),
        ("ratings.csv", "userId,movieId\n1,2\n", "csv"),
        ("combined_data_2.txt", "1:\n1,2,d\n", "netflix"),
        ("probe_like.txt", "7:\n1,2,d\n", "netflix"),
        ("train.txt", "0 1 2 3 4\n1 2\n", "adjacency"),
        ("train2.txt", "0 1 2\n1\n", "adjacency"),
        ("pairs.txt", "0 1\n1 2\n", "pairs"),
        ("triples.txt", "0,1,4.5\n1,2,3\n", "pairs"),
        ("log.tsv", "1\t2\t3\t4\n5\t6\t7\t8\n", "movielens-tsv"),
    ],
)
def test_detect_format_from_name_and_first_lines(tmp_path, name, content, expected):
    path = write(tmp_path, name, content)
    assert detect_format(path) == (path, expected)


def test_detect_npy_and_folders(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.int64))
    assert detect_format(tmp_path / "x.npy")[1] == "npy"
    folder = tmp_path / "ml-1m"
    ratings = write(folder, "ratings.dat", "1::2::3::4\n")
    write(folder, "movies.dat", "1::Toy Story (1995)::Animation\n")
    assert detect_format(folder) == (ratings, "movielens-dat")
    assert raw_pairs(read_interactions(folder)) == {("1", "2"): 1}


def test_undetectable_format_lists_formats(tmp_path):
    path = write(tmp_path, "ratings.parquet", "PAR1")
    with pytest.raises(DataFormatError, match="pass format=") as error:
        read_interactions(path)
    assert all(name in str(error.value) for name in FORMATS)


def test_folder_without_or_with_several_known_files(tmp_path):
    with pytest.raises(DataFormatError, match="found none"):
        read_interactions(tmp_path)
    write(tmp_path, "u.data", "1\t2\t3\t4\n")
    write(tmp_path, "ratings.csv", "userId,movieId\n1,2\n")
    with pytest.raises(DataFormatError, match="found several"):
        read_interactions(tmp_path)


def test_unknown_format_and_missing_file(tmp_path):
    path = write(tmp_path, "u.data", "1\t2\t3\t4\n")
    with pytest.raises(ValueError, match="unknown format 'tsv'"):
        read_interactions(path, format="tsv")
    with pytest.raises(FileNotFoundError):
        read_interactions(tmp_path / "nothing.csv")


# ----------------------------------------------------------------------------------------------------------------
# Titles


def test_titles_from_movies_csv_dat_and_u_item(tmp_path):
    movies_csv = write(tmp_path, "movies.csv", 'movieId,title,genres\r\n1,Toy Story (1995),Animation\r\n'
                                               '11,"American President, The (1995)",Comedy|Drama\r\n')
    assert read_titles(movies_csv) == {"1": "Toy Story (1995)", "11": "American President, The (1995)"}
    movies_dat = write(tmp_path, "movies.dat", "73::Misérables, Les (1995)::Drama|Musical\n".encode("latin-1"))
    assert read_titles(movies_dat) == {"73": "Misérables, Les (1995)"}
    u_item = write(tmp_path, "u.item", "1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n".encode("latin-1"))
    assert read_titles(u_item) == {"1": "Toy Story (1995)"}


@pytest.mark.parametrize(
    "name, content, line",
    [
        ("movies.dat", "1::Toy Story (1995)::Animation\n2::Jumanji (1995)\n", 2),
        ("movies.csv", "movieId,title,genres\n1,Toy Story,Animation\n1,Again,Drama\n", 3),
        ("movies.csv", "movieId,title,genres\n1,Toy Story,Animation\n\n2\n", 4),
    ],
)
def test_malformed_titles(tmp_path, name, content, line):
    path = write(tmp_path, name, content)
    with pytest.raises(DataFormatError, match=f"{path}:{line}: expected"):
        read_titles(path)


# ----------------------------------------------------------------------------------------------------------------
# Real data in ../shared/data (skipped where missing)


def test_real_ml100k():
    data = read_interactions(real("ml-100k"))
    assert (len(data), data.n_users, data.n_items) == (100_000, 943, 1_682)
    assert int(data.counts.sum()) == 100_000


def test_real_ml100k_min_rating_matches_plain_python():
    with open(real("ml-100k") / "u.data") as file:
        rows = [line.split("\t") for line in file if line.strip()]
    expected = {(row[0], row[1]) for row in rows if int(row[2]) >= 4}
    data = read_interactions(real("ml-100k"), min_rating=3.5)
    assert len(data) == len(expected)
    assert set(raw_pairs(data)) == expected


def test_real_ml1m_implicit():
    data = read_interactions(real("ml-1m-implicit"))
    assert detect_format(real("ml-1m-implicit"))[1] == "adjacency"
    assert (len(data), data.n_users, data.n_items) == (1_000_209, 6_040, 3_706)


def test_real_lastfm():
    data = read_interactions(real("lastfm-hetrec2011"))
    assert (len(data), data.n_users, data.n_items) == (92_834, 1_892, 17_632)


def test_real_ml_latest_small_and_titles():
    folder = real("ml-latest-small")
    data = read_interactions(folder)
    assert (len(data), data.n_users, data.n_items) == (100_836, 610, 9_724)
    with open(folder / "movies.csv", newline="", encoding="utf-8") as file:
        # A few titles end in a space in the source; read_titles strips them.
        expected = {row["movieId"]: row["title"].strip() for row in csv.DictReader(file)}
    titles = read_titles(folder / "movies.csv")
    assert titles == expected
    assert set(data.item_ids) <= set(titles)


# ----------------------------------------------------------------------------------------------------------------
# Issue 11: one decoding per file, exact ids, one meaning per line, careful detection, checked .npy headers


def test_one_stray_latin1_byte_does_not_split_a_user(tmp_path, monkeypatch):
    """The whole file is decoded one way: a stray Latin-1 byte anywhere makes every id Latin-1, noted."""
    monkeypatch.setattr(readers, "_CHUNK_BYTES", 64)
    rows = ["josé,1,5"] + [f"u{k},{k},4" for k in range(30)] + ["caf\xe9,2,4", "josé,3,5"]
    content = "userId,movieId,rating\n".encode() + "\n".join(rows[:-2]).encode() + b"\n"
    content += rows[-2].encode("latin-1") + b"\n" + rows[-1].encode() + b"\n"
    data = read_interactions(write(tmp_path, "ratings.csv", content))
    pairs = raw_pairs(data)
    jose = "josé".encode().decode("latin-1")  # the UTF-8 bytes of "josé", read as Latin-1 like the rest of the file
    assert {item for user, item in pairs if user == jose} == {"1", "3"}
    assert ("café", "2") in pairs
    assert data.n_users == 32
    assert any("Latin-1" in note for note in data.notes)


def test_utf8_file_keeps_unicode_ids_and_says_nothing_about_encoding(tmp_path):
    data = read_interactions(write(tmp_path, "ratings.csv", "userId,movieId,rating\njosé,ß,5\n名前,ß,4\n"))
    assert raw_pairs(data) == {("josé", "ß"): 1, ("名前", "ß"): 1}
    assert not any("Latin-1" in note for note in data.notes)


def test_npy_float_ids_beyond_int64_are_refused_not_merged(tmp_path):
    path = tmp_path / "big.npy"
    np.save(path, np.array([[1e19 + k * 1e16, 7.0] for k in range(41)]))  # 41 distinct users beyond 2**63
    with pytest.raises(DataFormatError, match=r"big\.npy: row 1: .*64-bit"):
        read_interactions(path)


def test_npy_float_ids_within_int64_stay_exact(tmp_path):
    path = tmp_path / "ids.npy"
    ids = [2.0**60 + k * 2.0**10 for k in range(3)]  # distinct, above 2**53, exactly representable
    np.save(path, np.array([[user, 1.0] for user in ids]))
    data = read_interactions(path)
    assert list(data.user_ids) == [str(int(user)) for user in ids]


def test_npy_header_larger_than_the_file_is_refused(tmp_path):
    path = tmp_path / "huge.npy"
    header = {"descr": "<i8", "fortran_order": False, "shape": (10**13, 2)}
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, header)
        file.write(np.arange(8, dtype="<i8").tobytes())
    with pytest.raises(DataFormatError, match=r"huge\.npy: .*10000000000000.*bytes"):
        read_interactions(path)


@pytest.mark.parametrize(
    "name, content, file_format, line",
    [
        ("u.data", b"1\t2\t3\t4\n1\x00\t3\t3\t4\n", None, 2),
        ("ratings.csv", b"userId,movieId,rating\n1,2,3\n1,2\x00,3\n", None, 3),
        ("pairs.txt", b"u1 i1\nu2 i2\x00\n", "pairs", 2),
        ("train.txt", b"0 1 2\n1 2\x00 3\n", "adjacency", 2),
    ],
)
def test_nul_byte_is_an_error_naming_the_line(tmp_path, name, content, file_format, line):
    path = write(tmp_path, name, content)
    with pytest.raises(DataFormatError, match=rf"{path.name}:{line}: .*NUL"):
        read_interactions(path, file_format)


@pytest.mark.parametrize(
    "name, content, file_format, line",
    [
        ("pairs.txt", b"u1 i1\nu2\ri2\nu3 i3\n", "pairs", 2),
        ("u.data", b"1\t2\t3\t4\r\n1\t3\t3\t4\r5\n", None, 2),
        ("ratings.csv", b"userId,movieId,rating\r\n1,2,3\r1,3,4\r\n", None, 2),
    ],
)
def test_carriage_return_inside_a_line_is_an_error_naming_the_line(tmp_path, name, content, file_format, line):
    path = write(tmp_path, name, content)
    with pytest.raises(DataFormatError, match=rf"{path.name}:{line}: .*carriage return"):
        read_interactions(path, file_format)


def test_adjacency_with_two_items_per_line_is_not_read_as_ratings(tmp_path):
    lines = "".join(f"{user} {100 + 3 * user} {101 + 3 * user}\n" for user in range(40))
    path = write(tmp_path, "train.txt", lines)
    assert detect_format(path) == (path, "adjacency")
    data = read_interactions(path)
    assert len(data) == 80 and data.n_users == 40 and data.n_items == 80


def test_ambiguous_three_column_file_asks_for_format(tmp_path):
    path = write(tmp_path, "train.txt", "0 10 4\n1 11 5\n2 12 3\n")  # users unique: 2 items each, or ratings?
    with pytest.raises(DataFormatError, match="--format"):
        detect_format(path)
    assert raw_pairs(read_interactions(path, format="pairs", min_rating=3.5)) == {("0", "10"): 1, ("1", "11"): 1}


def test_triples_with_repeated_users_are_pairs(tmp_path):
    path = write(tmp_path, "log.txt", "".join(f"{user} {item} {1 + (user + item) % 5}\n"
                                             for user in range(5) for item in range(4)))
    assert detect_format(path) == (path, "pairs")


def test_space_separated_rating_log_is_not_read_as_adjacency(tmp_path):
    path = write(tmp_path, "log.txt", "".join(f"{user} {item} 4 88125094{item}\n" for user in range(5)
                                              for item in range(3)))
    with pytest.raises(DataFormatError, match="--format"):
        detect_format(path)


def test_string_ids_keep_leading_zeros(tmp_path):
    path = write(tmp_path, "ratings.csv", "user,item,rating\n007,1,5\n7,1,5\n 007 ,2,5\n")
    data = read_interactions(path)
    assert raw_pairs(data) == {("007", "1"): 1, ("7", "1"): 1, ("007", "2"): 1}


def test_recbole_atomic_inter_file(tmp_path):
    path = write(tmp_path, "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                            "196\t242\t3\t881250949\n186\t302\t3\t891717742\nu 3\t0042\t5\t1\n")
    assert detect_format(path) == (path, "recbole")
    data = read_interactions(path, min_rating=3.5)
    assert raw_pairs(data) == {("u 3", "0042"): 1}
    assert any("header" in note for note in data.notes)
    assert detect_format(tmp_path) == (path, "recbole")


def test_recbole_malformed_line_is_named(tmp_path):
    path = write(tmp_path, "x.inter", "user_id:token\titem_id:token\trating:float\n1\t2\t4\n1\t3\tgood\n")
    with pytest.raises(DataFormatError, match=rf"{path.name}:3: expected a number \(rating\) in field 3"):
        read_interactions(path)


def test_parquet_columns_found_by_name(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "ratings.parquet"
    pq.write_table(pa.table({"timestamp": [1, 2, 3], "movieId": [10, 10, 11], "userId": ["007", "7", "007"],
                             "rating": [4.0, 2.0, 5.0]}), path)
    assert detect_format(path) == (path, "parquet")
    assert raw_pairs(read_interactions(path)) == {("007", "10"): 1, ("7", "10"): 1, ("007", "11"): 1}
    assert raw_pairs(read_interactions(path, min_rating=3.5)) == {("007", "10"): 1, ("007", "11"): 1}


def test_parquet_null_id_is_named_by_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "ratings.parquet"
    pq.write_table(pa.table({"user": ["a", None], "item": [1, 2]}), path)
    with pytest.raises(DataFormatError, match=r"ratings\.parquet: row 2: expected a user id"):
        read_interactions(path)


def test_notes_say_what_was_skipped(tmp_path):
    path = write(tmp_path, "ratings.csv", "\nuserId,movieId,rating\n1,2,4\n\n   \n1,3,2\n2,2,5\n")
    data = read_interactions(path, min_rating=3.5)
    assert raw_pairs(data) == {("1", "2"): 1, ("2", "2"): 1}
    notes = " | ".join(data.notes)
    assert "header line 'userId,movieId,rating' skipped" in notes
    assert "3 blank lines skipped" in notes
    assert "1 of 3 rows dropped with rating <= 3.5" in notes


def test_quoted_field_running_past_its_line_is_named(tmp_path):
    # Arrow would join lines 2 and 3 into one valid row ('1', 'a\n', '4'); a CSV row never spans lines here.
    path = write(tmp_path, "ratings.csv", 'userId,movieId,rating\n1,"a\n",4\n2,b,5\n')
    with pytest.raises(DataFormatError, match=rf"{path.name}:2: .*quoted field that does not end on its line"):
        read_interactions(path)
    with pytest.raises(DataFormatError, match=rf"{path.name}:2: "):
        read_interactions(path, min_rating=3.5)


def test_empty_and_blank_only_files(tmp_path):
    for content in ("", "\n\n", "\r\n  \r\n"):
        path = write(tmp_path, "u.data", content)
        with pytest.raises(DataFormatError, match=rf"{path.name}:1: expected rows of 4 tab-separated fields"):
            read_interactions(path)
    header_only = write(tmp_path, "ratings.csv", "userId,movieId,rating\n\n")
    with pytest.raises(DataFormatError, match="found only a header"):
        read_interactions(header_only)


@pytest.mark.parametrize(
    "name, content, file_format",
    [
        ("pairs.txt", "josé café 4\nbob café 5\n".encode("latin-1"), "pairs"),
        ("x.inter", "user_id:token\titem_id:token\njosé\tcafé\n".encode("latin-1"), "recbole"),
        ("combined_data_1.txt", "1:\n7,4,2005-é\n".encode("latin-1"), "netflix"),
    ],
)
def test_latin1_fallback_is_noted_in_every_text_format(tmp_path, name, content, file_format):
    data = read_interactions(write(tmp_path, name, content), file_format)
    assert any("Latin-1" in note for note in data.notes)
    if file_format != "netflix":
        assert "josé" in data.user_ids and "café" in data.item_ids
