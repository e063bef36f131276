"""The shared file helpers: atomic files and folders, stale leftovers, the cache root."""
import hashlib
import os
import re

import pytest

from bertpretrain import files


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "a.txt"
    files.atomic_write(path, "one")
    files.atomic_write(path, b"two")
    assert path.read_text() == "two"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("writer failed")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_atomic_folder_replace_and_first_wins(tmp_path):
    folder = tmp_path / "f"
    with files.atomic_folder(folder) as staging:
        (open(os.path.join(staging, "x"), "w")).close()
    assert os.listdir(folder) == ["x"]
    with files.atomic_folder(folder, replace=False) as staging:
        (open(os.path.join(staging, "y"), "w")).close()
    assert os.listdir(folder) == ["x"]  # the existing complete folder wins
    with files.atomic_folder(folder) as staging:
        (open(os.path.join(staging, "y"), "w")).close()
    assert os.listdir(folder) == ["y"]
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_remove_stale_only_old_temporaries(tmp_path):
    old = tmp_path / f".x{files.TMP_MARK}1"
    old.mkdir()
    os.utime(old, (0, 0))
    fresh = tmp_path / f".y{files.TMP_MARK}2"
    fresh.write_text("")
    keep = tmp_path / "data"
    keep.write_text("")
    assert files.remove_stale(tmp_path, older_than=60) == [old.name]
    assert sorted(os.listdir(tmp_path)) == sorted([fresh.name, "data"])


def test_cache_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTPRETRAIN_HOME", str(tmp_path / "home"))
    assert files.cache_root(tmp_path / "explicit") == str(tmp_path / "explicit")
    assert files.cache_root() == str(tmp_path / "home")
    monkeypatch.delenv("BERTPRETRAIN_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert files.cache_root() == str(tmp_path / "xdg" / "bertpretrain")


def test_a_lock_that_cannot_be_created_raises_lock_error_naming_the_path(tmp_path):
    (tmp_path / "a-file").write_text("")
    lock = tmp_path / "a-file" / "cache" / ".lock"
    reason = f"(Not a directory: {tmp_path / 'a-file' / 'cache'})"
    with pytest.raises(files.LockError, match=re.escape(f"cannot create the lock file {lock} {reason}")):
        with files.exclusive_lock(lock):
            pass
    with files.exclusive_lock(tmp_path / "cache" / ".lock") as locked:
        assert locked and (tmp_path / "cache" / ".lock").is_file()


def test_a_manifest_round_trips_and_names_the_first_file_that_changed(tmp_path):
    (tmp_path / "a").write_bytes(b"alpha")
    (tmp_path / "b").write_bytes(b"beta")
    records = files.manifest(tmp_path, ["a", "b"])
    assert records["a"] == {"size": 5, "sha256": hashlib.sha256(b"alpha").hexdigest()}
    files.write_manifest(tmp_path / "m.json", records, format=3, files_of="run")
    read = files.read_manifest(tmp_path / "m.json")
    assert read == {"format": 3, "files_of": "run", "files": records}
    assert files.manifest_problem(tmp_path, read["files"]) is None

    (tmp_path / "b").write_bytes(b"bet")
    assert files.manifest_problem(tmp_path, records) == ("b", "it has 3 bytes, 4 were recorded")
    (tmp_path / "b").write_bytes(b"beTa")
    assert files.manifest_problem(tmp_path, records) == ("b", "its SHA-256 differs from the recorded one")
    (tmp_path / "a").unlink()
    assert files.manifest_problem(tmp_path, records) == ("a", "it is missing")
    assert files.file_problem(tmp_path / "b", {"size": 4}) == "its record {'size': 4} holds no digest (sha256 or sha1)"


def test_trust_mtime_skips_hashing_only_a_file_whose_size_and_mtime_are_recorded(tmp_path):
    path = tmp_path / "split"
    path.write_bytes(b"one two")
    record = files.file_record(path, "sha1", mtime=True)
    assert record["sha1"] == hashlib.sha1(b"one two").hexdigest()
    info = os.stat(path)
    path.write_bytes(b"one tw0")  # same size, then the old mtime restored: the shortcut cannot tell
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert files.file_problem(path, record, trust_mtime=True) is None
    assert files.file_problem(path, record) == "its SHA-1 differs from the recorded one"
    without_size = {k: v for k, v in record.items() if k != "size"}
    assert files.file_problem(path, without_size, trust_mtime=True) == "its SHA-1 differs from the recorded one"


@pytest.mark.parametrize("text, fault", [
    ('{"files": ', "not a JSON manifest"),
    ("[1, 2]", 'no "files" object'),
    ('{"files": {"a": [5, "00"]}}', "records 'a' as \\[5, '00'\\], not as a size and a digest"),
])
def test_what_is_not_a_manifest_is_refused_naming_the_file(tmp_path, text, fault):
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(files.ManifestError, match=f"{tmp_path / 'm.json'}.*{fault}"):
        files.read_manifest(tmp_path / "m.json")


def test_an_older_layout_is_read_through_its_converter(tmp_path):
    (tmp_path / "m.json").write_text('{"a": [5, "00"]}')
    read = files.read_manifest(tmp_path / "m.json", legacy=lambda old: {"files": {
        name: {"size": size, "sha1": sha1} for name, (size, sha1) in old.items()}})
    assert read == {"files": {"a": {"size": 5, "sha1": "00"}}}
    (tmp_path / "m.json").write_text('{"a": 5}')
    with pytest.raises(files.ManifestError, match="nor of an older layout"):
        files.read_manifest(tmp_path / "m.json", legacy=lambda old: {"files": {
            name: {"size": size, "sha1": sha1} for name, (size, sha1) in old.items()}})
