"""An on-disk cache of encoded corpora, so a large corpus is tokenised once and later runs start in seconds.

An entry is keyed by the SHA1 of every corpus file (in order), every option that changes the encoding
(the text format, lower-casing, ``min_freq`` or the given vocabulary), and :data:`FORMAT_VERSION`. It
holds the flat id arrays as ``.npy`` files, the vocabulary and a ``meta.json``: a manifest
(:mod:`bertpretrain.files`) of each file's size and SHA-256. It is built in a temporary folder (the encoder writes the arrays there as it reads, so
memory never holds the whole corpus) and renamed into place; on load every file is checked, and an
entry that is incomplete or corrupt is rebuilt, never trusted. The arrays are then memory-mapped,
not read: the pages a run touches come from the file and the kernel can drop them again. An entry
another process completed first is kept (not replaced under its readers), and build folders that
killed processes left behind are removed by the next build.
"""
import hashlib
import logging
import os

from ..files import (VOCAB_FILE, atomic_folder, cache_root, file_digest, manifest, manifest_problem, read_manifest,
                     remove_stale, write_manifest)
from .corpus import ARRAYS, EncodedCorpus, as_paths, load_arrays
from .textfiles import describe, text_bytes
from .vocab import Vocab

logger = logging.getLogger(__name__)

#: Bump when the reading rules or the array layout change: older entries are then ignored.
FORMAT_VERSION = 2
AUTO_CACHE_BYTES = 32 << 20   # cache='auto' caches corpora of at least this many bytes of text
_META = "meta.json"


def entry_key(corpus_sha1, vocab=None, min_freq=5, text_format="wikitext", lowercase=True):
    """The cache key of a corpus (``corpus_sha1``: see :func:`corpus_digest`) read as ``text_format``
    (lower-cased or not) and encoded with ``vocab`` (or with its own vocabulary at ``min_freq``)."""
    digest = hashlib.sha1(f"bertpretrain-corpus-v{FORMAT_VERSION}\n{corpus_sha1}\n{text_format}\n"
                          f"lowercase={bool(lowercase)}\n".encode())
    if vocab is None:
        digest.update(f"min_freq={min_freq}".encode())
    elif hasattr(vocab, "digest"):  # a subword tokenizer: its whole definition, not just the pieces
        digest.update(f"tokenizer\n{vocab.digest}".encode())
    else:
        digest.update("vocab\n".encode() + "\n".join(vocab.idx_to_token).encode())
    return digest.hexdigest()


def corpus_digest(paths):
    """SHA1s of the files ``paths`` (read in chunks) and one digest of them all, in order: ``(digest, sha1s)``."""
    sha1s = [file_digest(path, "sha1") for path in paths]
    return (sha1s[0] if len(sha1s) == 1 else hashlib.sha1("\n".join(sha1s).encode()).hexdigest()), sha1s


def _meta_before_manifests(meta):
    """A ``meta.json`` as versions before manifests wrote it (files as ``[size, sha1]``), as a manifest: the
    entry stays valid."""
    return {**meta, "files": {name: {"size": size, "sha1": sha1} for name, (size, sha1) in meta["files"].items()}}


def _load(folder, name, vocab=None, verify=True):
    """The cached corpus and vocabulary in ``folder``, or None when it is missing, incomplete or corrupt.

    ``verify``: check every file against its recorded size and digest (False, just built by this process:
    files whose size and modification time are the recorded ones are not hashed again).
    """
    try:
        files = read_manifest(os.path.join(folder, _META), legacy=_meta_before_manifests)["files"]
        mismatch = manifest_problem(folder, files, trust_mtime=not verify)
        if mismatch is not None:
            raise ValueError("%s: %s" % mismatch)
        arrays = load_arrays(folder)
        vocab = vocab if vocab is not None else Vocab.load(os.path.join(folder, VOCAB_FILE))
    except FileNotFoundError:
        if os.path.isdir(folder):
            logger.warning("cache %s is incomplete: rebuilding it", folder)
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("cache %s is corrupt (%s): rebuilding it", folder, error)
        return None
    return EncodedCorpus(path=name, **arrays), vocab


def _build(folder, paths, vocab, min_freq, progress, text_format, lowercase, sha1s, replace):
    """Encode ``paths`` into the entry ``folder``; ``replace``: whether an existing (corrupt) one goes, else it
    wins. Returns the vocabulary."""
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    for stale in remove_stale(parent):
        logger.info("removed %s, left in %s by an interrupted build", stale, parent)
    with atomic_folder(folder, replace=replace) as staging:
        _, vocab = EncodedCorpus.read(paths, vocab, min_freq, progress, text_format=text_format,
                                      lowercase=lowercase, folder=staging)
        vocab.save(os.path.join(staging, VOCAB_FILE))
        files = manifest(staging, [f"{a}.npy" for a in ARRAYS] + [VOCAB_FILE], mtime=True)
        write_manifest(os.path.join(staging, _META), files, format=FORMAT_VERSION, sources=paths, source_sha1s=sha1s,
                       text_format=text_format, lowercase=bool(lowercase), min_freq=min_freq)
    return vocab


def load_encoded_corpus(paths, vocab=None, min_freq=5, cache="auto", cache_dir=None, progress=None, *,
                        text_format="wikitext", lowercase=True):
    """Encode the file(s) ``paths`` (see :class:`EncodedCorpus`), through the on-disk cache.

    Args:
        paths: a file or a list of files (their documents follow each other).
        cache: True to use the cache, False to always encode in memory, ``'auto'`` to cache corpora of
            at least 32 MB of text, ``.gz`` files counted uncompressed (WikiText-103's training split;
            WikiText-2 encodes in a fraction of a second).
        cache_dir: the cache root (default: ``$BERTPRETRAIN_HOME``, else the user's cache folder);
            entries live in ``<root>/preprocessed/<key>``.
        text_format, lowercase: how the text is read (see :func:`~bertpretrain.data.corpus.iter_paragraphs`).
    Returns:
        ``(corpus, vocab)``; through the cache, the corpus's arrays are read-only memory maps.
    """
    paths = as_paths(paths)
    options = dict(text_format=text_format, lowercase=lowercase)
    if cache == "auto":
        cache = sum(text_bytes(path) for path in paths) >= AUTO_CACHE_BYTES
    if not cache:
        return EncodedCorpus.read(paths, vocab, min_freq, progress, **options)
    name = describe(paths)
    digest, sha1s = corpus_digest(paths)
    folder = os.path.join(cache_root(cache_dir), "preprocessed", entry_key(digest, vocab, min_freq, **options))
    corrupt = os.path.isdir(folder)  # when _load finds nothing usable in an existing folder
    cached = _load(folder, name, vocab)
    if cached is not None:
        logger.info("using the cached encoding of %s (%s)", name, folder)
        return cached
    built_vocab = _build(folder, paths, vocab, min_freq, progress, text_format, lowercase, sha1s, replace=corrupt)
    cached = _load(folder, name, vocab if vocab is not None else built_vocab, verify=False)
    if cached is None:
        raise OSError(f"the cache entry {folder} for {name} vanished or broke just after it was built: "
                      "is another process removing it? Pass cache=False or another cache_dir")
    logger.info("cached the encoding of %s in %s", name, folder)
    return cached
