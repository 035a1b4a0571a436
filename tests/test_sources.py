"""Tests of hvae_jax.data.sources against a real HTTP server on 127.0.0.1 that serves zip files built here."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import http.server
import io
import json
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from hvae_jax.data import sources

U_DATA = b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
U_USER = b"1|24|M|technician|85711\n2|53|F|other|94043\n"
U_ITEM = "1|Toy Story (1995)|01-Jan-1995||http://x\n".encode("latin-1")


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, content in members.items():
            bundle.writestr(name, content)
    return buffer.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves the server's `routes`: path -> (body, declared Content-Length or None for the true length)."""

    def do_GET(self) -> None:  # noqa: N802 (name fixed by http.server)
        server = self.server
        with server.lock:
            server.requests.append(self.path)
        route = server.routes.get(self.path)
        if route is None:
            self.send_error(404, "no such archive")
            return
        body, declared = route
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body) if declared is None else declared))
        self.end_headers()
        stall = server.stalls.get(self.path)
        if stall is not None:
            # Half the body, then silence until the test sets the event: a download caught in mid-transfer.
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            stall.wait(timeout=60)
            body = body[len(body) // 2 :]
        self.wfile.write(body)
        self.wfile.flush()
        # A declared length larger than the body simulates a cut connection: close instead of sending the rest.
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature fixed by http.server)
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes = {}
    httpd.stalls = {}
    httpd.requests = []
    httpd.lock = threading.Lock()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    for stall in httpd.stalls.values():
        stall.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def archive_bytes() -> bytes:
    return make_zip(
        {"ml-100k/u.data": U_DATA, "ml-100k/u.user": U_USER, "ml-100k/u.item": U_ITEM, "ml-100k/README": b"x"}
    )


@pytest.fixture
def toy(monkeypatch, server, archive_bytes):
    """A registry entry 'toy' whose archive the local server serves, with its true SHA-256."""
    monkeypatch.delenv(sources.MIRROR_ENV, raising=False)
    server.routes["/toy.zip"] = (archive_bytes, None)
    source = dataclasses.replace(
        sources.DATASETS["ml-100k"],
        name="toy",
        url=f"{server.base}/toy.zip",
        sha256=hashlib.sha256(archive_bytes).hexdigest(),
        archive="toy.zip",
        size=len(archive_bytes),
    )
    monkeypatch.setitem(sources.DATASETS, "toy", source)
    return source


@pytest.fixture
def closed_port_url() -> str:
    # Bind then close: nothing listens there any more, so connecting is refused at once.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/toy.zip"


def all_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def test_fetch_downloads_and_extracts_members(tmp_path, toy, server, archive_bytes):
    cache = tmp_path / "cache"
    interactions = sources.fetch("toy", cache=cache, progress=False)

    assert interactions == cache / "toy" / "u.data"
    assert interactions.read_bytes() == U_DATA
    assert (cache / "toy.zip").read_bytes() == archive_bytes
    paths = sources.dataset_paths("toy", cache=cache)
    assert paths["interactions"] == interactions
    assert paths["format"] == "movielens-tsv"
    assert paths["titles"].read_bytes() == U_ITEM
    assert paths["user_features"].read_bytes() == U_USER
    assert paths["default_min_rating"] == 3.5
    # Only the needed members are unpacked, and no temporary file is left behind.
    assert sorted(p.name for p in (cache / "toy").iterdir()) == ["source.json", "u.data", "u.item", "u.user"]
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []
    manifest = json.loads((cache / "toy" / "source.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(archive_bytes).hexdigest()
    assert manifest["sha256_verified"] is True
    assert server.requests == ["/toy.zip"]


def test_second_fetch_does_not_download(tmp_path, toy, server):
    cache = tmp_path / "cache"
    first = sources.fetch("toy", cache=cache, progress=False)
    second = sources.fetch("toy", cache=cache, progress=False)
    assert first == second
    assert len(server.requests) == 1


def test_cached_archive_is_reused_when_extraction_is_missing(tmp_path, toy, server):
    cache = tmp_path / "cache"
    sources.fetch("toy", cache=cache, progress=False)
    (cache / "toy" / "u.data").unlink()  # An incomplete extraction no longer counts as fetched.
    interactions = sources.fetch("toy", cache=cache, progress=False)
    assert interactions.read_bytes() == U_DATA
    assert len(server.requests) == 1


def test_archive_placed_by_hand_needs_no_network(tmp_path, toy, archive_bytes, closed_port_url):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "toy.zip").write_bytes(archive_bytes)
    interactions = sources.fetch("toy", cache=cache, url=closed_port_url, progress=False)
    assert interactions.read_bytes() == U_DATA


def test_corrupted_archive_raises_checksum_error_and_leaves_nothing(tmp_path, toy, server, archive_bytes):
    corrupted = bytearray(archive_bytes)
    corrupted[len(corrupted) // 2] ^= 0xFF
    server.routes["/toy.zip"] = (bytes(corrupted), None)
    cache = tmp_path / "cache"

    with pytest.raises(sources.ChecksumError) as raised:
        sources.fetch("toy", cache=cache, progress=False)

    message = str(raised.value)
    assert toy.sha256 in message
    assert hashlib.sha256(bytes(corrupted)).hexdigest() in message
    assert all_files(cache) == []
    assert list(cache.iterdir()) == []


def test_connection_cut_mid_file_raises_download_error_and_leaves_nothing(tmp_path, toy, server, archive_bytes):
    server.routes["/toy.zip"] = (archive_bytes[: len(archive_bytes) // 2], len(archive_bytes))
    cache = tmp_path / "cache"

    with pytest.raises(sources.DownloadError, match="cut off|interrupted"):
        sources.fetch("toy", cache=cache, progress=False)

    assert list(cache.iterdir()) == []
    with pytest.raises(sources.NotFetchedError):
        sources.dataset_paths("toy", cache=cache)


def test_keyboard_interrupt_mid_download_leaves_no_partial_file(tmp_path, toy, monkeypatch):
    class InterruptingBar:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return False

        def update(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr(sources, "tqdm", InterruptingBar)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        sources.fetch("toy", cache=cache, progress=True)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("failure", [ConnectionResetError(104, "reset by peer"), http.client.IncompleteRead(b"")])
def test_exception_while_reading_is_a_download_error(failure):
    class BrokenResponse:
        def read(self, size):
            raise failure

    with pytest.raises(sources.DownloadError, match="interrupted"):
        sources._read_chunk(BrokenResponse(), "http://127.0.0.1:1/toy.zip")


def test_offline_raises_download_error_naming_the_cache_path(tmp_path, toy, closed_port_url):
    cache = tmp_path / "cache"
    with pytest.raises(sources.DownloadError) as raised:
        sources.fetch("toy", cache=cache, url=closed_port_url, progress=False, timeout=5)
    message = str(raised.value)
    assert "offline" in message
    assert str(cache / "toy.zip") in message
    assert not isinstance(raised.value, sources.ChecksumError)
    assert list(cache.iterdir()) == []


def test_http_error_is_a_download_error(tmp_path, toy, server):
    with pytest.raises(sources.DownloadError, match="404"):
        sources.fetch("toy", cache=tmp_path, url=f"{server.base}/missing.zip", progress=False)


def test_netflix_explains_how_to_use_a_local_copy(tmp_path):
    with pytest.raises(sources.NotDownloadableError) as raised:
        sources.fetch("netflix", cache=tmp_path)
    assert "no longer distributed" in str(raised.value)
    assert "--data PATH --format netflix" in str(raised.value)
    with pytest.raises(sources.NotDownloadableError):
        sources.dataset_paths("netflix", cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(sources.UnknownDatasetError, match="ml-1m"):
        sources.fetch("ml-3m", cache=tmp_path)


def test_not_fetched_tells_the_command_to_run(tmp_path):
    with pytest.raises(sources.NotFetchedError, match="hvae data fetch ml-20m"):
        sources.dataset_paths("ml-20m", cache=tmp_path)


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert sources.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(sources.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sources.cache_dir() == tmp_path / "home" / ".cache" / "hvae_jax"


def test_fetch_uses_hvae_jax_cache_by_default(tmp_path, toy, monkeypatch):
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path / "env-cache"))
    interactions = sources.fetch("toy", progress=False)
    assert interactions == tmp_path / "env-cache" / "toy" / "u.data"
    assert sources.dataset_paths("toy")["interactions"] == interactions


def test_mirror_points_the_registry_at_another_server(tmp_path, server, archive_bytes, monkeypatch):
    # The real ml-100k entry, with the hash of our stand-in archive so that verification passes.
    server.routes["/ml-100k.zip"] = (archive_bytes, None)
    monkeypatch.setitem(
        sources.DATASETS,
        "ml-100k",
        dataclasses.replace(sources.DATASETS["ml-100k"], sha256=hashlib.sha256(archive_bytes).hexdigest()),
    )
    monkeypatch.setenv(sources.MIRROR_ENV, server.base + "/")
    interactions = sources.fetch("ml-100k", cache=tmp_path, progress=True)
    assert interactions.read_bytes() == U_DATA
    assert server.requests == ["/ml-100k.zip"]


def test_unknown_hash_warns_and_records_the_computed_one(tmp_path, server, monkeypatch):
    triplets = b"u1\tSOAAA\t3\nu2\tSOBBB\t1\n"
    archive = make_zip({"train_triplets.txt": triplets})
    server.routes["/train_triplets.txt.zip"] = (archive, None)
    monkeypatch.setenv(sources.MIRROR_ENV, server.base)
    assert sources.DATASETS["msd"].sha256 is None

    with pytest.warns(sources.UnverifiedDownloadWarning, match=hashlib.sha256(archive).hexdigest()):
        interactions = sources.fetch("msd", cache=tmp_path, progress=False)

    assert interactions.read_bytes() == triplets
    manifest = json.loads((tmp_path / "msd" / "source.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(archive).hexdigest()
    assert manifest["sha256_verified"] is False
    paths = sources.dataset_paths("msd", cache=tmp_path)
    assert paths["format"] == "pairs"
    assert paths["titles"] is None and paths["user_features"] is None
    assert paths["default_min_rating"] is None


def test_list_datasets_shows_cached_status(tmp_path, toy):
    rows = {row["name"]: row for row in sources.list_datasets(cache=tmp_path)}
    assert {"ml-100k", "ml-1m", "ml-20m", "ml-25m", "ml-32m", "msd", "netflix"} <= set(rows)
    assert rows["toy"]["cached"] is False
    assert rows["ml-20m"]["size"] == 198_702_078
    assert rows["netflix"]["downloadable"] is False

    sources.fetch("toy", cache=tmp_path, progress=False)
    rows = {row["name"]: row for row in sources.list_datasets(cache=tmp_path)}
    assert rows["toy"]["cached"] is True
    assert rows["ml-1m"]["cached"] is False


def test_registry_entries_are_consistent():
    for name, source in sources.DATASETS.items():
        assert source.name == name
        assert source.format in {"movielens-tsv", "movielens-dat", "csv", "pairs", "netflix"}
        assert source.description and source.licence and source.citation
        if source.sha256 is not None:
            assert len(source.sha256) == 64 and int(source.sha256, 16) >= 0
            assert source.sha256 == source.sha256.lower()
        if source.downloadable:
            assert source.url.endswith("/" + source.archive)
    for name in ("ml-100k", "ml-1m", "ml-20m", "ml-25m", "ml-32m"):
        source = sources.DATASETS[name]
        assert source.url.startswith("https://files.grouplens.org/datasets/movielens/")
        assert source.member.startswith(name + "/")
        assert source.default_min_rating == 3.5
        assert source.sha256 is not None
    assert sources.DATASETS["ml-1m"].user_features_member == "ml-1m/users.dat"
    assert sources.DATASETS["ml-20m"].titles_member == "ml-20m/movies.csv"
    assert sources.DATASETS["netflix"].url is None


def test_finished_extraction_needs_neither_archive_nor_network(tmp_path, toy, closed_port_url):
    cache = tmp_path / "cache"
    sources.fetch("toy", cache=cache, progress=False)
    (cache / "toy.zip").unlink()  # Users may delete the archive to save space once it is unpacked.
    interactions = sources.fetch("toy", cache=cache, url=closed_port_url, progress=False)
    assert interactions.read_bytes() == U_DATA


def test_damaged_cached_archive_is_downloaded_again(tmp_path, toy, server, archive_bytes):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "toy.zip").write_bytes(b"not the archive")
    with pytest.warns(UserWarning, match="downloading it again"):
        interactions = sources.fetch("toy", cache=cache, progress=False)
    assert interactions.read_bytes() == U_DATA
    assert (cache / "toy.zip").read_bytes() == archive_bytes
    assert server.requests == ["/toy.zip"]


def serve_as_toy(monkeypatch, server, toy, archive: bytes) -> None:
    """Serve `archive` as toy.zip and register its true SHA-256, so that only what happens after the download is
    under test."""
    server.routes["/toy.zip"] = (archive, None)
    monkeypatch.setitem(
        sources.DATASETS, "toy", dataclasses.replace(toy, sha256=hashlib.sha256(archive).hexdigest(), size=len(archive))
    )


def corrupt_deflate(archive: bytes, member: str) -> bytes:
    """`archive` with the first byte of `member`'s deflate stream flipped; headers and directory stay intact."""
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo(member)
    name_length, extra_length = struct.unpack_from("<HH", archive, info.header_offset + 26)
    damaged = bytearray(archive)
    damaged[info.header_offset + 30 + name_length + extra_length] ^= 0xFF
    return bytes(damaged)


@pytest.mark.parametrize("member", ["ml-100k/u.data", "ml-100k/u.user"])
def test_corrupt_deflate_data_is_an_archive_error_naming_archive_and_member(
    tmp_path, toy, server, archive_bytes, monkeypatch, member
):
    damaged = corrupt_deflate(archive_bytes, member)
    with pytest.raises(zlib.error):  # What zipfile itself raises on this archive.
        zipfile.ZipFile(io.BytesIO(damaged)).read(member)
    serve_as_toy(monkeypatch, server, toy, damaged)
    cache = tmp_path / "cache"

    with pytest.raises(sources.ArchiveError) as raised:
        sources.fetch("toy", cache=cache, progress=False)

    message = str(raised.value)
    assert str(cache / "toy.zip") in message and repr(member) in message
    assert "hvae data fetch toy" in message
    # u.user is unpacked last: what came before it must not stay behind either, nor the useless archive.
    assert list(cache.iterdir()) == []


def test_symlink_member_is_refused_and_nothing_is_linked(tmp_path, toy, server, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("ml-100k/u.data", U_DATA)
        link = zipfile.ZipInfo("ml-100k/u.item")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(link, "/etc/passwd")
    serve_as_toy(monkeypatch, server, toy, buffer.getvalue())
    cache = tmp_path / "cache"

    with pytest.raises(sources.ArchiveError, match="ml-100k/u.item.*symbolic link"):
        sources.fetch("toy", cache=cache, progress=False)
    assert list(cache.iterdir()) == []


def test_path_traversal_members_are_never_written(tmp_path, toy, server, monkeypatch):
    escape = b"written outside the cache\n"
    archive = make_zip(
        {"../../escaped.txt": escape, "ml-100k/../../../escaped.txt": escape, "/tmp/escaped.txt": escape,
         "ml-100k/u.data": U_DATA}
    )
    serve_as_toy(monkeypatch, server, toy, archive)
    cache = tmp_path / "deep" / "cache"

    sources.fetch("toy", cache=cache, progress=False)

    assert all_files(tmp_path) == [cache / "toy" / "source.json", cache / "toy" / "u.data", cache / "toy.zip"]


def bomb(uncompressed_bytes: int) -> bytes:
    """A toy archive whose interactions member is `uncompressed_bytes` of zeros: a thousandfold expansion."""
    return make_zip({"ml-100k/u.data": bytes(uncompressed_bytes)})


def test_zip_bomb_is_stopped_by_the_compression_ratio_limit(tmp_path, toy, server, monkeypatch):
    archive = bomb(20 << 20)
    assert len(archive) < 100_000
    serve_as_toy(monkeypatch, server, toy, archive)
    cache = tmp_path / "cache"

    with pytest.raises(sources.ExtractionLimitError) as raised:
        sources.fetch("toy", cache=cache, progress=False)

    message = str(raised.value)
    assert str(cache / "toy.zip") in message and "'ml-100k/u.data'" in message
    assert str(sources.ExtractionLimits().ratio) in message
    assert sources.RATIO_ENV in message and "ExtractionLimits(" in message
    # Nothing unpacked; the verified archive is kept so that a raised limit needs no second download.
    assert sorted(path.name for path in cache.iterdir()) == ["toy.zip"]
    with pytest.raises(sources.NotFetchedError):
        sources.dataset_paths("toy", cache=cache)


def test_raised_ratio_limit_admits_the_same_archive_without_downloading_again(tmp_path, toy, server, monkeypatch):
    serve_as_toy(monkeypatch, server, toy, bomb(20 << 20))
    cache = tmp_path / "cache"
    with pytest.raises(sources.ExtractionLimitError):
        sources.fetch("toy", cache=cache, progress=False)

    monkeypatch.setenv(sources.RATIO_ENV, "5000")
    interactions = sources.fetch("toy", cache=cache, progress=False)

    assert interactions.stat().st_size == 20 << 20
    assert server.requests == ["/toy.zip"]


def test_total_extracted_size_limit_from_environment_and_keyword(tmp_path, toy, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(sources.EXTRACTED_BYTES_ENV, "100")

    with pytest.raises(sources.ExtractionLimitError) as raised:
        sources.fetch("toy", cache=cache, progress=False)
    message = str(raised.value)
    assert str(cache / "toy.zip") in message
    assert "100 bytes" in message and sources.EXTRACTED_BYTES_ENV in message
    assert sorted(path.name for path in cache.iterdir()) == ["toy.zip"]

    # The keyword argument wins over the environment.
    limits = sources.ExtractionLimits(total_bytes=10_000)
    assert sources.fetch("toy", cache=cache, progress=False, limits=limits).read_bytes() == U_DATA


def test_member_count_limit(tmp_path, toy, server, monkeypatch):
    members = {f"ml-100k/extra/{index}.txt": b"x" for index in range(30)}
    serve_as_toy(monkeypatch, server, toy, make_zip({"ml-100k/u.data": U_DATA, **members}))
    monkeypatch.setenv(sources.MEMBERS_ENV, "20")
    with pytest.raises(sources.ExtractionLimitError, match=f"31 members.*limit of 20.*{sources.MEMBERS_ENV}"):
        sources.fetch("toy", cache=tmp_path, progress=False)


def test_member_longer_than_its_header_declares_is_refused(tmp_path):
    # zipfile stops at the declared size on its own; the copy must not depend on that.
    class LyingBundle:
        def open(self, info):
            return io.BytesIO(bytes(2 * info.file_size))

    info = zipfile.ZipInfo("ml-100k/u.data")
    info.file_size = 1000
    with pytest.raises(sources.ArchiveError, match="more than the 1,000 bytes its header declares"):
        sources._copy_member(LyingBundle(), info, tmp_path / "u.data", tmp_path / "toy.zip")
    assert (tmp_path / "u.data").stat().st_size <= 1000


def test_malformed_limit_in_environment_is_a_clear_error(tmp_path, toy, monkeypatch):
    monkeypatch.setenv(sources.EXTRACTED_BYTES_ENV, "lots")
    with pytest.raises(sources.SourceError, match=f"{sources.EXTRACTED_BYTES_ENV}='lots'"):
        sources.fetch("toy", cache=tmp_path, progress=False)


def test_default_limits_admit_the_largest_data_sets():
    limits = sources.ExtractionLimits()
    # MSD's train_triplets.txt, the largest file in the table, is about 3 GB from a 0.5 GB archive; MovieLens
    # CSV files compress 3-5 fold. A deflate bomb expands by hundreds to about a thousand.
    assert limits.total_bytes >= 2 * 3 * 10**9
    assert 20 <= limits.ratio <= 200
    assert limits.members >= 1_000


def test_stale_partial_files_of_a_killed_fetch_are_removed(tmp_path, toy, server):
    cache = tmp_path / "cache"
    cache.mkdir()
    # What a fetch killed with SIGKILL leaves: a half-downloaded archive, a half-built folder, a retired folder.
    (cache / ".toy.zip.k1ll3d00.part").write_bytes(b"half an archive")
    (cache / ".toy.s74g1ng0.part").mkdir()
    (cache / ".toy.s74g1ng0.part" / "u.data").write_bytes(U_DATA[:10])
    (cache / ".toy.r371r3d0.old" / "toy").mkdir(parents=True)
    # Another data set's leftovers are its own fetch's business.
    (cache / ".ml-1m.zip.07h3r000.part").write_bytes(b"x")

    interactions = sources.fetch("toy", cache=cache, progress=False)

    assert interactions.read_bytes() == U_DATA
    assert sorted(path.name for path in cache.iterdir()) == [".ml-1m.zip.07h3r000.part", "toy", "toy.zip"]


def test_a_second_fetch_waits_for_the_first_and_spares_its_partial_file(tmp_path, toy, server):
    pytest.importorskip("fcntl")
    cache = tmp_path / "cache"
    cache.mkdir()
    in_flight = cache / ".toy.zip.1nf11gh7.part"
    results = []
    with sources._cache_lock(cache, progress=False):
        in_flight.write_bytes(b"being written by the lock holder")
        second = threading.Thread(target=lambda: results.append(sources.fetch("toy", cache=cache, progress=False)))
        second.start()
        second.join(timeout=0.5)
        assert second.is_alive()
        assert in_flight.exists() and server.requests == []
    second.join(timeout=30)
    # The holder is gone, so whatever it left is stale.
    assert results == [cache / "toy" / "u.data"]
    assert sorted(path.name for path in cache.iterdir()) == ["toy", "toy.zip"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_terminated_download_leaves_no_partial_file(tmp_path, server, archive_bytes):
    server.routes["/ml-100k.zip"] = (archive_bytes, None)
    server.stalls["/ml-100k.zip"] = threading.Event()
    cache = tmp_path / "cache"
    script = (
        "import sys; from hvae_jax.data import sources; "
        "sources.fetch('ml-100k', cache=sys.argv[1], url=sys.argv[2], sha256=sys.argv[3], progress=False)"
    )
    command = [sys.executable, "-c", script, str(cache), f"{server.base}/ml-100k.zip",
               hashlib.sha256(archive_bytes).hexdigest()]
    repository = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(command, cwd=repository, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(cache.glob(".ml-100k.zip.*.part")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)  # What `kill`, `timeout` and batch schedulers send first.
        process.wait(timeout=60)
    finally:
        process.kill()
        process.communicate()
    assert list(cache.iterdir()) == []
    assert process.returncode == 128 + signal.SIGTERM


def test_table_names_stay_importable_from_sources():
    # Callers do `from hvae_jax.data import sources` and use the table through it; patching one patches both.
    from hvae_jax.data import datasets

    for name in ("DATASETS", "DatasetSource", "cache_dir", "dataset_paths", "get_source", "list_datasets",
                 "SourceError", "NotDownloadableError", "NotFetchedError", "UnknownDatasetError"):
        assert getattr(sources, name) is getattr(datasets, name)
    assert not hasattr(sources, "archive_path")
