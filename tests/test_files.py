"""The shared file helpers: atomic files and folders, stale leftovers, the cache root."""
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
