"""Downloading, verifying and caching WikiText (and any dataset a user adds to ``DATA_HUB``).

A dataset is fetched from its first mirror that works, streamed to a temporary file, and kept only
once verified: the archive's SHA1 matches, or, since a mirror may re-zip the same files, every
split file inside matches its own SHA1. Split files are checked after every extraction and the
verified folder is moved into place in one rename, so a crash never leaves a folder a later run
would trust. A verified cache is reused without any network access.

A mirror that stalls (less than :data:`MIN_BYTES_PER_SECOND` over any :data:`STALL_SECONDS`) is
given up for the next one. Downloads into one cache take turns under a lock, so that every worker
of a distributed job can call :func:`download_extract`: the first downloads, the others then find
its verified folder, which is never replaced while they read it. Staging folders that a killed
download left behind are removed by the next one.
"""
import contextlib
import dataclasses
import hashlib
import logging
import os
import posixpath
import shutil
import time
import zipfile

import requests
import urllib3

from .. import __version__
from ..display import progress_bar
from ..files import (DISK_FULL_ERRNOS, LockError, atomic_folder, cache_root, exclusive_lock, file_problem, manifest,
                     read_manifest, remove_stale, write_manifest)
from .errors import DownloadError

logger = logging.getLogger(__name__)

USER_AGENT = f"bertpretrain/{__version__} (+https://pypi.org/project/bertpretrain/)"
TIMEOUT_SECONDS = 30
#: A mirror that delivers less than MIN_BYTES_PER_SECOND on average over STALL_SECONDS (or nothing at all
#: for STALL_SECONDS) is abandoned for the next one.
STALL_SECONDS = 30
MIN_BYTES_PER_SECOND = 1024
_CHUNK_BYTES = 1 << 20
_STAMP = ".verified.json"


@dataclasses.dataclass
class DatasetEntry:
    """Where a dataset comes from and how to verify it.

    Attributes:
        urls: mirrors of the zip archive, tried in order.
        sha1: SHA1 of the archive as published (None if unknown: then ``files`` alone verify it).
        files: split file name (e.g. ``'wiki.train.tokens'``) -> SHA1 of its contents.
        local_dir: a folder that already holds the split files (e.g. one shipped with the package);
            used instead of downloading, after the same SHA1 check.
    """
    urls: list = dataclasses.field(default_factory=list)
    sha1: str = None
    files: dict = dataclasses.field(default_factory=dict)
    local_dir: str = None


def _wikitext(name, sha1, train, valid, test):
    return DatasetEntry(
        urls=[f"https://wikitext.smerity.com/{name}-v1.zip",
              f"https://s3.amazonaws.com/research.metamind.io/wikitext/{name}-v1.zip"],
        sha1=sha1,
        files={"wiki.train.tokens": train, "wiki.valid.tokens": valid, "wiki.test.tokens": test})


#: Dataset name -> :class:`DatasetEntry`. Add your own entries (or dicts with the same fields).
DATA_HUB = {
    "wikitext-2": _wikitext("wikitext-2", "3c914d17d80b1459be871a5039ac23e752a53cbe",
                            "863f29c46ef9d167fff4940ec821195882fe29d1",
                            "0418625c8b4da6e4b5c7a0b9e78d4ae8f7ee5422",
                            "c7b8ce0aa086fb34dab808c5c49224211eb2b172"),
    "wikitext-103": _wikitext("wikitext-103", "0aec09a7537b58d4bb65362fee27650eeaba625a",
                              "b7497e2dfe77e72cfef5e3dbc61b7b53712ac211",
                              "c326ac59dc587676d58c422eb8a03e119582f92b",
                              "8a5befc548865cec54ed4273cf87dbbad60d1e47"),
    # An excerpt of WikiText-2 shipped with the package, to try the library offline (see its README).
    "wikitext-2-sample": DatasetEntry(
        local_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample"),
        files={"wiki.train.tokens": "0c8183b715615a21cec4743c64fb7ebbe603c25d",
               "wiki.valid.tokens": "0d3cb5f1f61b5636a4ca7f67b3ba687aab9ed5ca"}),
}


def _entry(name):
    if name not in DATA_HUB:
        raise KeyError(f"unknown dataset {name!r}: DATA_HUB has {sorted(DATA_HUB)}; add an entry "
                       "(DATA_HUB[name] = DatasetEntry(urls=[...], sha1=..., files={...})) or pass data_dir")
    entry = DATA_HUB[name]
    if isinstance(entry, dict):
        entry = DatasetEntry(**entry)
    if not (entry.urls or entry.local_dir) or not entry.files:
        raise ValueError(f"DATA_HUB[{name!r}] needs at least one URL in 'urls' (or a 'local_dir') and the "
                         "split files with their SHA1 in 'files'")
    return entry


def _stamp_before_manifests(stamp):
    """A stamp as versions up to c41b35a wrote it, ``{file: [size, mtime_ns, sha1]}``, as a manifest."""
    return {"files": {file: {"size": size, "mtime_ns": mtime_ns, "sha1": sha1}
                      for file, (size, mtime_ns, sha1) in stamp.items()}}


def _cache_is_verified(folder, entry, verify=False):
    """True when every split file in ``folder`` has its expected SHA1.

    Shortcut: files whose size and mtime (to the nanosecond) still match the stamp (a manifest, see
    :mod:`bertpretrain.files`) written at verification are not hashed again, so an edit that restores
    both is not noticed; ``verify=True`` hashes every file regardless.
    """
    try:
        stamped = read_manifest(os.path.join(folder, _STAMP), legacy=_stamp_before_manifests)["files"]
    except (OSError, ValueError):
        stamped = {}
    for file, sha1 in entry.files.items():
        path = os.path.join(folder, file)
        if not os.path.isfile(path):
            return False
        record = stamped.get(file, {})
        if record.get("sha1") != sha1:  # not stamped, or stamped as another version of the file
            record = {"sha1": sha1}
        if file_problem(path, record, trust_mtime=not verify) is not None:
            logger.warning("cached %s does not match its SHA1 %s: downloading it again", path, sha1)
            return False
    return True


class _MirrorFailed(Exception):
    """One mirror did not give a verified archive; the message says why."""


def _fetch(url, destination):
    """Stream ``url`` into ``destination``; return the SHA1 of the bytes received.

    Reads whatever has arrived (``read1``), so that a mirror trickling bytes is measured against the
    stall rule as it goes rather than once a whole chunk has come.
    """
    received, expected = 0, None
    try:
        with requests.get(url, stream=True, timeout=(TIMEOUT_SECONDS, STALL_SECONDS),
                          headers={"User-Agent": USER_AGENT}) as r:
            if r.status_code != 200:
                raise _MirrorFailed(f"HTTP {r.status_code} {r.reason}")
            expected = r.headers.get("Content-Length")
            expected = int(expected) if expected and "Content-Encoding" not in r.headers else None
            digest = hashlib.sha1()
            with open(destination, "wb") as f, progress_bar(None, total=expected, unit="B", unit_scale=True,
                                                            desc=posixpath.basename(url)) as bar:
                window_start, window_bytes = time.monotonic(), 0
                for chunk in iter(lambda: r.raw.read1(_CHUNK_BYTES, decode_content=True), b""):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    elapsed = time.monotonic() - window_start
                    if elapsed >= STALL_SECONDS:
                        if received - window_bytes < MIN_BYTES_PER_SECOND * elapsed:
                            raise _MirrorFailed(
                                f"stalled: {received - window_bytes} bytes in the last {elapsed:.0f} s "
                                f"(less than {MIN_BYTES_PER_SECOND} B/s) after {received} bytes")
                        window_start, window_bytes = time.monotonic(), received
    except urllib3.exceptions.ReadTimeoutError:
        raise _MirrorFailed(f"stalled: no data for {STALL_SECONDS} s after {received} bytes") from None
    except urllib3.exceptions.ProtocolError as error:
        raise _MirrorFailed(f"truncated download: the connection broke after {received} of "
                            f"{expected or 'unknown'} bytes ({error})") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
        raise _MirrorFailed(f"{type(error).__name__}: {error}") from None
    if expected is not None and received != expected:
        raise _MirrorFailed(f"truncated download: {received} of {expected} bytes")
    return digest.hexdigest()


def _extract_splits(archive, entry, target):
    """Extract the split files of ``entry`` from ``archive`` into ``target`` (flat) and verify them; return
    their records (size, mtime, SHA1: the stamp's manifest, see :func:`_cache_is_verified`).

    Every member name is checked first: an absolute path or a ``..`` that would escape the folder
    rejects the whole archive, before anything is written.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for member in members:
                name = member.filename.replace("\\", "/")
                if (name.startswith("/") or ":" in name.split("/")[0]
                        or ".." in posixpath.normpath(name).split("/")):
                    raise _MirrorFailed(f"unsafe archive: member {member.filename!r} would escape the "
                                        "extraction folder")
            for file, sha1 in entry.files.items():
                matches = [m for m in members if posixpath.basename(m.filename) == file and not m.is_dir()]
                if len(matches) != 1:
                    raise _MirrorFailed(f"the archive holds {len(matches)} members named {file!r}, expected one")
                path = os.path.join(target, file)
                with zf.open(matches[0]) as source, open(path, "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK_BYTES)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise _MirrorFailed(f"not a valid zip archive ({error})") from None
    records = manifest(target, entry.files, "sha1", mtime=True)
    for file, sha1 in entry.files.items():
        if records[file]["sha1"] != sha1:
            raise _MirrorFailed(f"SHA1 mismatch for {file}: expected {sha1}, got {records[file]['sha1']}")
    return records


def download_extract(name, cache_dir=None, verify=False):
    """Download the dataset ``name`` of :data:`DATA_HUB` if needed; return the folder of its split files.

    Datasets with a ``local_dir`` (``wikitext-2-sample``) are only verified, never downloaded.

    The folder is ``<cache root>/datasets/<name>`` (cache root: ``cache_dir``, else
    ``$BERTPRETRAIN_HOME``, else the user's cache folder). A verified cache is returned without any
    network access. It is trusted without hashing while each split file keeps the size and mtime
    recorded when it was verified; ``verify=True`` hashes every file again (a few seconds per GB) and
    downloads the dataset anew if one differs. Raises :class:`DownloadError` naming each mirror and
    why it failed, or naming the cache folder when it cannot be written (before any download).
    """
    entry = _entry(name)
    if entry.local_dir:
        for file, sha1 in entry.files.items():
            path = os.path.join(entry.local_dir, file)
            if file_problem(path, {"sha1": sha1}) is not None:
                raise DownloadError(f"{path} is missing or does not match its SHA1 {sha1}: the installation of "
                                    f"dataset {name!r} is damaged; reinstall bertpretrain")
        return entry.local_dir
    datasets = os.path.join(cache_root(cache_dir), "datasets")
    folder = os.path.join(datasets, name)
    if _cache_is_verified(folder, entry, verify):
        return folder
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise DownloadError(f"{folder} is a file, where dataset {name!r} goes (a folder of its split files): move or "
                            "remove it, or set BERTPRETRAIN_HOME (or cache_dir) to another cache folder")
    try:
        with exclusive_lock(os.path.join(datasets, ".download.lock")) as locked:
            # Another process may have finished this download while we waited for the lock.
            if _cache_is_verified(folder, entry, verify):
                return folder
            # Under the lock no other download runs, so every staging folder is a killed one's.
            for stale in remove_stale(datasets, older_than=0 if locked else 3600):
                logger.info("removed %s, left in %s by an interrupted download", stale, datasets)
            return _download(name, entry, folder)
    except LockError as error:
        raise DownloadError(
            f"cannot download dataset {name!r}: the dataset cache {datasets} must be a writable folder, but "
            f"{error.strerror}. Set BERTPRETRAIN_HOME (or cache_dir) to a writable folder, or download the "
            f"archive yourself, extract it and pass its folder as data_dir (--data-dir)") from error


@contextlib.contextmanager
def _writing_named(name, folder):
    """Turn a failure to write the download of dataset ``name`` into ``folder`` (a full disk, most likely: the
    staging folder's errors name no path the user knows) into a :class:`DownloadError` naming the folder and the
    ways out."""
    try:
        yield
    except OSError as error:
        if isinstance(error, LockError):
            raise
        problem = ("the disk is full" if error.errno in DISK_FULL_ERRNOS
                   else f"writing failed ({error.strerror or error})")
        raise DownloadError(
            f"cannot download dataset {name!r} into {folder}: {problem}; nothing was kept. Free some space, or set "
            "BERTPRETRAIN_HOME (or cache_dir) to a folder on another disk, or download the archive yourself, "
            "extract it and pass its folder as data_dir (--data-dir)") from error


def _download(name, entry, folder):
    """Fetch ``entry`` from its first mirror that gives a verified archive into ``folder``; return it.

    An existing ``folder`` has failed verification and is replaced; a folder that appears meanwhile
    (a process that does not take the lock) wins over this download.
    """
    failures = []
    for number, url in enumerate(entry.urls, 1):
        try:
            with _writing_named(name, folder), atomic_folder(folder, replace=os.path.isdir(folder)) as staging:
                archive = os.path.join(staging, "archive.zip")
                archive_sha1 = _fetch(url, archive)
                try:
                    records = _extract_splits(archive, entry, staging)
                except _MirrorFailed as error:
                    if entry.sha1 and archive_sha1 != entry.sha1:
                        raise _MirrorFailed(f"archive SHA1 {archive_sha1} differs from the expected "
                                            f"{entry.sha1} and {error}") from None
                    raise
                os.unlink(archive)
                write_manifest(os.path.join(staging, _STAMP), records)
            logger.info("downloaded %s from %s into %s", name, url, folder)
            return folder
        except _MirrorFailed as error:
            logger.warning("mirror %s failed: %s%s", url, error,
                           "; trying the next mirror" if number < len(entry.urls) else "")
            failures.append(f"  {url}: {error}")
    raise DownloadError(
        f"could not download dataset {name!r}; every mirror failed:\n" + "\n".join(failures) +
        f"\nCheck your network connection, or download the archive yourself, extract it and pass its folder "
        f"(the one holding {', '.join(entry.files)}) as data_dir.")
