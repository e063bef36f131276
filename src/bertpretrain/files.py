"""Files that are never half-written, and the one cache root: the file helpers every package uses.

A file is written under a temporary name in its final folder, flushed to disk (``fsync``) and
renamed into place; the folder is then synced too, so that after a crash or power loss a reader
sees either the old file or the whole new one. Folders (checkpoints, extracted datasets, encoded
corpora) are filled under a temporary name and renamed the same way. Temporary names start with
``.`` and contain ``.tmp-``, so that :func:`remove_stale` can clean up after killed processes.

Imports nothing from the rest of the package: ``data``, ``model``, ``kernels`` and ``train`` all
use it.
"""
import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import time

TMP_MARK = ".tmp-"
_FULL_BYTES = 1 << 20

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
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
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
