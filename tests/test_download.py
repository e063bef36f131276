"""The whole download path against a loopback HTTP server serving archives built from real WikiText-2."""
import hashlib
import json
import http.server
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from bertpretrain.data import DATA_HUB, DatasetEntry, DownloadError, download_extract, load_data_wiki
from bertpretrain.data import download as download_module

SPLITS = ("train", "valid", "test")


def _zip(files, prefix="wikitext-2/", compression=zipfile.ZIP_DEFLATED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(prefix + name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def split_bytes(wikitext2_splits):
    valid = (wikitext2_splits / "wiki.valid.tokens").read_bytes()
    test = (wikitext2_splits / "wiki.test.tokens").read_bytes()
    return {"wiki.train.tokens": valid + test, "wiki.valid.tokens": valid, "wiki.test.tokens": test}


@pytest.fixture(scope="module")
def server(split_bytes):
    """A loopback server; ``server.requests`` lists the paths asked for."""
    tampered = dict(split_bytes, **{"wiki.valid.tokens": split_bytes["wiki.valid.tokens"].replace(b" the ", b" a ")})
    routes = {
        "/wikitext-2-v1.zip": _zip(split_bytes),
        "/rezipped.zip": _zip(dict(reversed(list(split_bytes.items()))), prefix="", compression=zipfile.ZIP_STORED),
        "/tampered.zip": _zip(tampered),
        "/escape.zip": _zip({**split_bytes, "../../escaped.txt": b"gotcha"}),
        "/error-page.zip": b"<html><body>it works!</body></html>",
    }
    requests_seen = []
    release = threading.Event()  # lets /gated.zip and /silent.zip go on

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests_seen.append(self.path)
            body = routes["/wikitext-2-v1.zip"]
            if self.path in ("/trickle.zip", "/silent.zip"):
                # A whole archive announced; then 20 bytes every 0.1 s, or 100 bytes and a wait.
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if self.path == "/silent.zip":
                        self.wfile.write(body[:100])
                        self.wfile.flush()
                        release.wait(30)
                        self.wfile.write(body[100:])
                        return
                    deadline = time.monotonic() + 30
                    for start in range(0, len(body), 20):
                        if time.monotonic() > deadline:
                            break
                        self.wfile.write(body[start:start + 20])
                        self.wfile.flush()
                        time.sleep(0.1)
                except OSError:  # the client gave up
                    pass
                self.close_connection = True
                return
            if self.path == "/gated.zip":
                release.wait(30)
                self.path = "/wikitext-2-v1.zip"
            if self.path == "/forbidden.zip":
                body = b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>"
                self.send_response(403)
            elif self.path == "/truncated.zip":
                body = routes["/wikitext-2-v1.zip"]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            elif self.path in routes:
                body = routes[self.path]
                self.send_response(200)
            else:
                body = b"not found"
                self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.requests = requests_seen
    httpd.release = release
    httpd.archive_sha1 = hashlib.sha1(routes["/wikitext-2-v1.zip"]).hexdigest()
    yield httpd
    httpd.shutdown()


@pytest.fixture
def register(server, split_bytes, monkeypatch):
    """Add a DATA_HUB entry ``test-wiki`` whose mirrors are the given server paths."""
    real = DATA_HUB["wikitext-2"].files
    files = {"wiki.train.tokens": hashlib.sha1(split_bytes["wiki.train.tokens"]).hexdigest(),
             "wiki.valid.tokens": real["wiki.valid.tokens"], "wiki.test.tokens": real["wiki.test.tokens"]}

    def add(*paths):
        monkeypatch.setitem(DATA_HUB, "test-wiki", DatasetEntry(
            urls=[server.url + p for p in paths], sha1=server.archive_sha1, files=files))
        server.requests.clear()
        server.release.clear()
    return add


def _leftovers(cache):
    datasets = cache / "datasets"
    kept = ("test-wiki", ".download.lock")
    return sorted(p.name for p in datasets.iterdir() if p.name not in kept) if datasets.exists() else []


def test_published_split_checksums_match_the_real_files(wikitext2_splits):
    for split in ("valid", "test"):
        data = (wikitext2_splits / f"wiki.{split}.tokens").read_bytes()
        assert hashlib.sha1(data).hexdigest() == DATA_HUB["wikitext-2"].files[f"wiki.{split}.tokens"]


def test_download_verifies_extracts_and_then_hits_the_cache_without_network(register, server, split_bytes,
                                                                           tmp_path):
    register("/wikitext-2-v1.zip")
    folder = download_extract("test-wiki", cache_dir=tmp_path)
    assert server.requests == ["/wikitext-2-v1.zip"]
    for name, data in split_bytes.items():
        assert open(os.path.join(folder, name), "rb").read() == data
    assert _leftovers(tmp_path) == [], "temporary files left in the cache"
    assert download_extract("test-wiki", cache_dir=tmp_path) == folder
    assert server.requests == ["/wikitext-2-v1.zip"], "a verified cache must not touch the network"


def test_cache_root_from_environment(register, server, tmp_path, monkeypatch):
    register("/wikitext-2-v1.zip")
    monkeypatch.setenv("BERTPRETRAIN_HOME", str(tmp_path / "home"))
    assert download_extract("test-wiki") == str(tmp_path / "home" / "datasets" / "test-wiki")


def test_corrupted_cache_is_downloaded_again(register, server, tmp_path):
    register("/wikitext-2-v1.zip")
    folder = download_extract("test-wiki", cache_dir=tmp_path)
    with open(os.path.join(folder, "wiki.test.tokens"), "ab") as f:
        f.write(b"tampered")
    download_extract("test-wiki", cache_dir=tmp_path)
    assert server.requests == ["/wikitext-2-v1.zip"] * 2
    assert hashlib.sha1(open(os.path.join(folder, "wiki.test.tokens"), "rb").read()).hexdigest() == \
        DATA_HUB["test-wiki"].files["wiki.test.tokens"]


def test_failing_mirror_is_followed_by_one_that_works(register, server, tmp_path, caplog):
    register("/forbidden.zip", "/wikitext-2-v1.zip")
    download_extract("test-wiki", cache_dir=tmp_path)
    assert server.requests == ["/forbidden.zip", "/wikitext-2-v1.zip"]
    assert "HTTP 403" in caplog.text


def test_rezipped_archive_is_accepted_when_every_split_file_matches(register, server, tmp_path):
    register("/rezipped.zip")
    folder = download_extract("test-wiki", cache_dir=tmp_path)
    assert sorted(os.listdir(folder)) == [".verified.json", "wiki.test.tokens", "wiki.train.tokens",
                                          "wiki.valid.tokens"]


@pytest.mark.parametrize("path, reason", [
    ("/forbidden.zip", "HTTP 403 Forbidden"),
    ("/error-page.zip", "not a valid zip archive"),
    ("/truncated.zip", "ChunkedEncodingError|truncated"),
    ("/tampered.zip", "archive SHA1 [0-9a-f]{40} differs .* SHA1 mismatch for wiki.valid.tokens"),
    ("/escape.zip", r"member '[^']*\.\./\.\./escaped\.txt' would escape"),
])
def test_each_failure_is_named_with_its_url_and_nothing_is_left(register, server, tmp_path, path, reason):
    register(path)
    with pytest.raises(DownloadError) as error:
        download_extract("test-wiki", cache_dir=tmp_path / "cache")
    message = str(error.value)
    assert server.url + path in message
    assert __import__("re").search(reason, message), message
    assert "data_dir" in message, "the error must say what to do"
    assert _leftovers(tmp_path / "cache") == []
    assert not (tmp_path / "cache" / "datasets" / "test-wiki").exists()
    assert not list(tmp_path.rglob("escaped.txt"))


def test_unreachable_host_says_what_to_do(monkeypatch, tmp_path):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    monkeypatch.setitem(DATA_HUB, "offline", {"urls": [f"http://127.0.0.1:{closed_port}/x.zip"], "sha1": None,
                                              "files": {"wiki.train.tokens": "0" * 40}})
    with pytest.raises(DownloadError, match=r"(?s)ConnectionError.*Check your network connection.*data_dir"):
        download_extract("offline", cache_dir=tmp_path)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(KeyError, match="wikitext-103"):
        download_extract("wikitext-3")


def test_load_data_wiki_downloads_by_name(register, server, tmp_path):
    register("/wikitext-2-v1.zip")
    train_iter, vocab = load_data_wiki(16, 64, "test-wiki", cache_dir=tmp_path, seed=0)
    assert next(iter(train_iter)).tokens.shape == (16, 64) and len(vocab) > 5000
    assert server.requests == ["/wikitext-2-v1.zip"]


def _in_thread(function, *args, **kwargs):
    """Start ``function`` in a daemon thread; return the thread and a dict that gets its result or error."""
    outcome = {}

    def run():
        try:
            outcome["result"] = function(*args, **kwargs)
        except BaseException as error:  # reported by the test
            outcome["error"] = error
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("path, reason", [
    ("/trickle.zip", r"stalled: \d+ bytes in the last \d+ s \(less than 1024 B/s\)"),
    ("/silent.zip", r"stalled: no data for 1 s after 100 bytes"),
])
def test_stalled_mirror_is_abandoned_for_the_next_one(register, server, tmp_path, caplog, monkeypatch,
                                                      path, reason):
    monkeypatch.setattr(download_module, "STALL_SECONDS", 1)
    register(path, "/wikitext-2-v1.zip")
    thread, outcome = _in_thread(download_extract, "test-wiki", cache_dir=tmp_path)
    thread.join(15)
    server.release.set()
    assert not thread.is_alive(), f"{path} held the download for 15 s; the stall rule allows 1 s"
    assert "error" not in outcome, outcome.get("error")
    assert server.requests == [path, "/wikitext-2-v1.zip"]
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert server.url + path in warning and re.search(reason, warning) and "trying the next mirror" in warning


def test_verify_rehashes_files_whose_size_and_mtime_were_restored(register, server, tmp_path):
    register("/wikitext-2-v1.zip")
    folder = download_extract("test-wiki", cache_dir=tmp_path)
    path = os.path.join(folder, "wiki.valid.tokens")
    info = os.stat(path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data.replace(b" the ", b" tha "))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert download_extract("test-wiki", cache_dir=tmp_path) == folder
    assert server.requests == ["/wikitext-2-v1.zip"], "the documented shortcut trusts size and mtime"
    assert download_extract("test-wiki", cache_dir=tmp_path, verify=True) == folder
    assert server.requests == ["/wikitext-2-v1.zip"] * 2
    assert open(path, "rb").read() == data


@pytest.mark.parametrize("stamp", ["before manifests", "unreadable"])
def test_a_stamp_of_an_older_layout_or_unreadable_is_never_a_crash(register, server, tmp_path, monkeypatch, stamp):
    """A verified folder stamped by c41b35a or before ({file: [size, mtime_ns, sha1]}) is still trusted without
    hashing; an unreadable stamp makes it hashed, then trusted, without the network either way."""
    from bertpretrain import files
    register("/wikitext-2-v1.zip")
    folder = download_extract("test-wiki", cache_dir=tmp_path)
    expected = DATA_HUB["test-wiki"].files
    if stamp == "before manifests":
        old = {}
        for name, sha1 in expected.items():
            info = os.stat(os.path.join(folder, name))
            old[name] = [info.st_size, info.st_mtime_ns, sha1]
        open(os.path.join(folder, ".verified.json"), "w").write(json.dumps(old))
    else:
        open(os.path.join(folder, ".verified.json"), "w").write('{"files": ')
    hashed = []
    real_digest = files.file_digest
    monkeypatch.setattr(files, "file_digest", lambda path, *a, **k: hashed.append(path) or real_digest(path, *a, **k))
    assert download_extract("test-wiki", cache_dir=tmp_path) == folder
    assert server.requests == ["/wikitext-2-v1.zip"]
    assert len(hashed) == (0 if stamp == "before manifests" else len(expected))


def test_verify_data_flag_reaches_the_download(register, server, tmp_path, monkeypatch):
    from bertpretrain.cli import pretrain_options
    from bertpretrain.recipe import _data_folder
    register("/wikitext-2-v1.zip")
    monkeypatch.setenv("BERTPRETRAIN_HOME", str(tmp_path))
    options = pretrain_options(["--dataset", "test-wiki", "--verify-data"])
    folder, _ = _data_folder(options.data, options.run)
    path = os.path.join(folder, "wiki.test.tokens")
    info = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"X")
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert _data_folder(options.data, options.run)[0] == folder
    assert server.requests == ["/wikitext-2-v1.zip"] * 2
    assert open(path, "rb").read(1) != b"X"


def test_concurrent_downloads_take_turns_and_keep_the_first_folder(register, server, tmp_path):
    """Two processes downloading at once: one fetches, the other waits and reuses its folder untouched."""
    register("/gated.zip")
    first, first_outcome = _in_thread(download_extract, "test-wiki", cache_dir=tmp_path)
    deadline = time.monotonic() + 10
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    second, second_outcome = _in_thread(download_extract, "test-wiki", cache_dir=tmp_path)
    while len(server.requests) < 2 and time.monotonic() < deadline - 8:  # give it 2 s to ask too
        time.sleep(0.01)
    server.release.set()
    first.join(20)
    folder = first_outcome["result"]
    inode = os.stat(folder).st_ino
    second.join(20)
    assert second_outcome["result"] == folder
    assert os.stat(folder).st_ino == inode, "the first verified folder was replaced under its readers"
    assert server.requests == ["/gated.zip"], "the second download should have waited and reused the first"


KILLED_DOWNLOAD = """
import sys
from bertpretrain.data import DATA_HUB, DatasetEntry, download_extract
DATA_HUB["test-wiki"] = DatasetEntry(urls=[sys.argv[1]], files={"wiki.train.tokens": "0" * 40})
download_extract("test-wiki", cache_dir=sys.argv[2])
"""


def test_staging_left_by_a_killed_download_is_removed_by_the_next(register, server, tmp_path):
    register("/silent.zip")
    datasets = tmp_path / "datasets"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen([sys.executable, "-c", KILLED_DOWNLOAD, server.url + "/silent.zip", str(tmp_path)],
                             env=env)
    try:
        deadline = time.monotonic() + 60
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the first 100 bytes are in the staging folder
        assert _leftovers(tmp_path), "the download should be under way in a staging folder"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    server.release.set()
    register("/wikitext-2-v1.zip")
    download_extract("test-wiki", cache_dir=tmp_path)
    assert _leftovers(tmp_path) == [], "the killed download's staging folder is still there"
    assert sorted(p.name for p in datasets.iterdir()) == [".download.lock", "test-wiki"]


@pytest.mark.parametrize("where", ["under a file", "on a read-only disk"])
def test_a_cache_that_cannot_be_written_is_refused_naming_it_and_the_way_out(register, server, tmp_path, tmpfs,
                                                                             where):
    """Root writes through chmod, so the unwritable caches are a path below a regular file (ENOTDIR) and a
    read-only tmpfs (EROFS, skipped where it cannot be mounted)."""
    register("/wikitext-2-v1.zip")
    if where == "under a file":
        (tmp_path / "a-file").write_text("")
        cache = tmp_path / "a-file" / "cache"
    else:
        cache = tmpfs("read-only", "size=1m,ro")
    with pytest.raises(DownloadError) as raised:
        download_extract("test-wiki", cache_dir=cache)
    message = str(raised.value)
    assert f"the dataset cache {cache / 'datasets'} must be a writable folder" in message
    assert "BERTPRETRAIN_HOME" in message and "--data-dir" in message
    assert server.requests == []  # refused before downloading anything


def test_a_file_where_the_dataset_folder_goes_is_refused_before_downloading(register, server, tmp_path):
    register("/wikitext-2-v1.zip")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "test-wiki").write_text("not a folder")
    with pytest.raises(DownloadError) as raised:
        download_extract("test-wiki", cache_dir=tmp_path)
    message = str(raised.value)
    assert f"{tmp_path / 'datasets' / 'test-wiki'} is a file, where dataset 'test-wiki' goes" in message
    assert "move or remove it" in message and "BERTPRETRAIN_HOME" in message
    assert server.requests == []  # refused before the download, not after it


def test_a_full_disk_during_the_download_names_the_cache_and_leaves_nothing(register, server, tmpfs):
    register("/wikitext-2-v1.zip")
    cache = tmpfs("small", "size=256k")  # the archive is about 1 MB
    with pytest.raises(DownloadError) as raised:
        download_extract("test-wiki", cache_dir=cache)
    message = str(raised.value)
    assert f"cannot download dataset 'test-wiki' into {cache / 'datasets' / 'test-wiki'}: the disk is full" in message
    assert "BERTPRETRAIN_HOME" in message and "--data-dir" in message
    assert sorted(p.name for p in (cache / "datasets").iterdir()) == [".download.lock"]


def test_the_command_falls_back_to_the_sample_when_the_download_fills_the_disk(register, server, tmpfs, tmp_path,
                                                                              monkeypatch, capsys, caplog):
    from bertpretrain import cli
    register("/wikitext-2-v1.zip")
    monkeypatch.setenv("BERTPRETRAIN_HOME", str(tmpfs("small", "size=256k")))
    quick = ["--dataset", "test-wiki", "--num-steps", "2", "--batch-size", "16", "--max-len", "32", "--no-progress"]
    assert cli.main(["pretrain", *quick, "--output-dir", str(tmp_path / "run")]) == 0
    fallback = caplog.text  # the library's warning, which the command shows on stderr
    assert "the disk is full" in fallback and "FALLING BACK" in fallback
    assert cli.main(["pretrain", *quick, "--no-fallback", "--output-dir", str(tmp_path / "other")]) == 1
    err = capsys.readouterr().err
    assert "error: cannot download dataset 'test-wiki'" in err and "the disk is full" in err
    assert "checkpoints" not in err and "Traceback" not in err
