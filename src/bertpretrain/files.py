"""Files that are never half-written, and the one cache root: the file helpers every package uses.

A file is written under a temporary name in its final folder, flushed to disk (``fsync``) and
renamed into place; the folder is then synced too, so that after a crash or power loss a reader
sees either the old file or the whole new one. Folders (checkpoints, extracted datasets, encoded
corpora) are filled under a temporary name and renamed the same way. Temporary names start with
``.`` and contain ``.tmp-``, so that :func:`remove_stale` can clean up after killed processes.

Digest records ("manifests": a JSON object whose ``"files"`` maps file names to their size and
digest) are written and checked here, for every record the package keeps: a verified download's
stamp, an encoded corpus's entry, the kernel library's record and a checkpoint's ``state.json``.

Imports nothing from the rest of the package: ``data``, ``model``, ``kernels`` and ``train`` all
use it.
"""
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time

TMP_MARK = ".tmp-"
_FULL_BYTES = 1 << 20
#: The errnos of a write that failed for want of space (a full disk, or a full quota).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

# The files of a saved model (save_pretrained, checkpoints, recipes): the names model, train and
# data all use.
CONFIG_FILE = "config.json"  # the BERTConfig, as JSON
PARAMS_FILE = "model.params"  # the BERTModel's parameters
VOCAB_FILE = "vocab.json"  # the Vocab
TOKENIZER_FILE = "tokenizer.json"  # a WordPiece (Hugging Face) tokenizer, in place of a Vocab


def vocab_file_name(vocab):
    """The name ``vocab`` is saved under beside a model: its class's ``FILE_NAME`` (``tokenizer.json`` for a
    WordPiece tokenizer), else ``vocab.json``. The one rule that save_pretrained and checkpoints follow."""
    return getattr(vocab, "FILE_NAME", VOCAB_FILE)


def saved_vocab_file(folder):
    """The path of the vocabulary saved in the model or checkpoint ``folder`` (``vocab.json`` or
    ``tokenizer.json``, whichever is there), or None when neither is."""
    for name in (VOCAB_FILE, TOKENIZER_FILE):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def cache_root(cache_dir=None):
    """The cache folder: ``cache_dir``, else ``$BERTPRETRAIN_HOME``, else ``$XDG_CACHE_HOME/bertpretrain``,
    else ``~/.cache/bertpretrain`` (an absolute path; not created here)."""
    if cache_dir:
        return os.path.abspath(os.path.expanduser(str(cache_dir)))
    if os.environ.get("BERTPRETRAIN_HOME"):
        return os.path.abspath(os.path.expanduser(os.environ["BERTPRETRAIN_HOME"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.abspath(os.path.join(base, "bertpretrain"))


def fsync_dir(folder):
    """Flush a folder's entries (new and renamed names) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; once the block has written it, sync it and rename it to
    ``path``. On an error the temporary file is removed and ``path`` is left as it was; a full disk
    raises ``OSError(ENOSPC)`` naming ``path``, whatever the writer raised.

    For writers that take a file name (``mx.nd.save``, ``trainer.save_states``, ``savefig``)::

        with atomic_path("model.params") as tmp:
            net.save_parameters(tmp)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}{TMP_MARK}")
    os.close(fd)
    try:
        try:
            yield tmp
            _fsync_file(tmp)
            os.replace(tmp, path)
        except Exception as error:
            if _disk_full(error, folder):
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (the disk is full)", path) from error
            raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(folder)


def _disk_full(error, folder):
    """Whether a write into ``folder`` failed for want of space. Writers that report no errno (MXNet's
    says only "FileStream.Write incomplete") count when the disk has under 1 MiB free."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    try:
        return shutil.disk_usage(folder).free < _FULL_BYTES
    except OSError:
        return False


def atomic_write(path, data):
    """Write ``data`` (``str``, as UTF-8, or ``bytes``) to ``path`` atomically (see :func:`atomic_path`)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


@contextlib.contextmanager
def atomic_folder(folder, replace=True):
    """Yield an empty staging folder beside ``folder``; once the block has filled it, sync its files and
    rename it to ``folder``.

    With ``replace=True`` an existing ``folder`` is replaced (removed just before the rename). With
    ``replace=False`` an existing ``folder`` wins: the staging folder is discarded, so that a folder
    other processes may be reading is never removed under them (the first complete result stays).
    Yields the staging path; returns nothing. On an error the staging folder is removed, and an
    ``OSError`` naming a file in it names that file under ``folder`` instead (the name a user knows).
    """
    folder = os.path.abspath(os.fspath(folder))
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(folder)}{TMP_MARK}")
    try:
        yield staging
        for root, _, names in os.walk(staging):
            for name in names:
                _fsync_file(os.path.join(root, name))
            fsync_dir(root)
        if os.path.isdir(folder):
            if not replace:
                shutil.rmtree(staging, ignore_errors=True)
                return
            shutil.rmtree(folder)
        try:
            os.replace(staging, folder)
        except OSError as error:  # another process put a complete folder there first
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST) or replace:
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        filename = os.fspath(error.filename) if isinstance(error, OSError) and error.filename else ""
        if filename == staging or filename.startswith(staging + os.sep):
            raise OSError(error.errno, error.strerror, folder + filename[len(staging):]) from error
        raise
    fsync_dir(parent)


class LockError(OSError):
    """The lock file of :func:`exclusive_lock` cannot be created: its folder cannot be made or written
    (read-only, permission denied, a path below a regular file). Its message (``strerror``) names the
    lock file and the reason; callers add what was expected and what to do (choose another folder)."""


def _open_lock(path):
    """Open (creating it and its folder) the lock file ``path`` for appending, or raise :class:`LockError`."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        return open(path, "a")
    except OSError as error:
        where = f": {error.filename}" if error.filename and os.fspath(error.filename) != path else ""
        raise LockError(error.errno, f"cannot create the lock file {path} ({error.strerror}{where})") from error


@contextlib.contextmanager
def exclusive_lock(path):
    """Hold an exclusive lock on the file ``path`` (created if missing, never removed) for the block.

    Serialises writers of a shared cache across processes (e.g. every worker of a distributed job
    downloading the same dataset): the second waits, then finds the first one's result. The
    operating system releases the lock when its holder dies, even by ``kill -9``. Yields True, or
    False where the file system cannot lock (then the block runs unlocked).

    Raises:
        LockError: the lock file (or its folder) cannot be created, before the block runs.
    """
    path = os.fspath(path)
    with _open_lock(path) as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def remove_stale(parent, older_than=3600.0):
    """Remove temporary files and folders (names with ``.tmp-``) in ``parent`` older than ``older_than``
    seconds: what killed processes left behind. Returns the removed names."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not (name.startswith(".") and TMP_MARK in name):
            continue
        path = os.path.join(parent, name)
        try:
            if now - os.lstat(path).st_mtime < older_than:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(name)
        except OSError:
            pass
    return removed


def file_digest(path, algorithm="sha256", chunk_size=1 << 20):
    """Hex digest of a file's bytes, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------- manifests

#: The digests a manifest may record a file by: SHA-256 (what the package writes), SHA-1 (what
#: dataset publishers give).
DIGESTS = ("sha256", "sha1")
_DIGEST_NAMES = {"sha256": "SHA-256", "sha1": "SHA-1"}


class ManifestError(ValueError):
    """A manifest file that is not one: not JSON, not an object, or without a ``"files"`` object of
    file records. The message names the file and what is wrong."""


def file_record(path, algorithm="sha256", mtime=False):
    """What a manifest records about the file ``path``: ``{"size": bytes, algorithm: hex digest}``, and
    its modification time ``"mtime_ns"`` when ``mtime`` (see ``trust_mtime`` in :func:`file_problem`)."""
    info = os.stat(path)
    record = {"size": info.st_size, algorithm: file_digest(path, algorithm)}
    if mtime:
        record["mtime_ns"] = info.st_mtime_ns
    return record


def manifest(folder, names, algorithm="sha256", mtime=False):
    """The records (see :func:`file_record`) of the files ``names`` in ``folder``: ``{name: record}``."""
    return {name: file_record(os.path.join(folder, name), algorithm, mtime) for name in names}


def file_problem(path, record, trust_mtime=False):
    """Why the file ``path`` does not match its ``record``, as a phrase ("it is missing", "it has 10 bytes,
    12 were recorded", "its SHA-256 differs from the recorded one"), or None when it matches.

    ``record`` holds one digest of :data:`DIGESTS` and optionally ``"size"`` (checked first: a truncated
    file is found without reading it) and ``"mtime_ns"``. With ``trust_mtime``, a file whose size and
    modification time (to the nanosecond) equal the recorded ones is not hashed again: an edit that
    restores both is then not noticed.
    """
    algorithm = next((name for name in DIGESTS if isinstance(record, dict) and name in record), None)
    if algorithm is None:
        return f"its record {record!r} holds no digest ({' or '.join(DIGESTS)})"
    try:
        info = os.stat(path)
        if "size" in record and info.st_size != record["size"]:
            return f"it has {info.st_size} bytes, {record['size']} were recorded"
        if trust_mtime and "size" in record and record.get("mtime_ns") == info.st_mtime_ns:
            return None
        actual = file_digest(path, algorithm)
    except FileNotFoundError:
        return "it is missing"
    except OSError as error:
        return f"it cannot be read ({error.strerror or error})"
    if actual != record[algorithm]:
        return f"its {_DIGEST_NAMES[algorithm]} differs from the recorded one"
    return None


def manifest_problem(folder, files, trust_mtime=False):
    """The first file of ``files`` (``{name: record}``, in name order) in ``folder`` that does not match
    its record, as ``(name, phrase)`` (see :func:`file_problem`), or None when all match."""
    for name, record in sorted(files.items()):
        problem = file_problem(os.path.join(folder, name), record, trust_mtime)
        if problem is not None:
            return name, problem
    return None


def write_manifest(path, files, /, **fields):
    """Write the manifest ``path`` atomically: a JSON object of ``fields`` and ``"files": files``."""
    atomic_write(path, json.dumps({**fields, "files": files}, indent=1))


def read_manifest(path, legacy=None):
    """The manifest in ``path``: its JSON object, whose ``"files"`` maps names to records (see
    :func:`file_record`; each holds a digest of :data:`DIGESTS`).

    ``legacy``: a function that turns the JSON object of an older layout (one that is not a manifest)
    into a manifest's, so that records written by earlier versions stay readable; its ``KeyError``,
    ``TypeError`` or ``ValueError`` (another layout still) makes a :class:`ManifestError`.
    Raises:
        OSError: the file cannot be read (``FileNotFoundError`` when it does not exist).
        ManifestError: it is not a manifest (naming ``path`` and why).
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as error:  # not UTF-8, not JSON
        raise ManifestError(f"{path} is not a JSON manifest ({error})") from None
    fault = _manifest_fault(data)
    if fault and legacy is not None:
        try:
            data = legacy(data)
        except (KeyError, TypeError, ValueError) as error:
            raise ManifestError(f"{path} is not a manifest ({fault}) nor of an older layout "
                                f"({type(error).__name__}: {error})") from None
        fault = _manifest_fault(data)
    if fault:
        raise ManifestError(f"{path} is not a manifest: {fault}")
    return data


def _manifest_fault(data):
    """What keeps the JSON value ``data`` from being a manifest, or None."""
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return 'no "files" object'
    for name, record in files.items():
        if not (isinstance(record, dict) and any(isinstance(record.get(d), str) for d in DIGESTS)):
            return f"it records {name!r} as {record!r}, not as a size and a digest"
    return None
