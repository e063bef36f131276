"""An on-disk cache of encoded corpora, so a large split is tokenised once and later runs start in seconds.

An entry is keyed by the corpus file's SHA1, every option that changes the encoding (``min_freq``,
or the given vocabulary), and :data:`FORMAT_VERSION`. It holds the flat id arrays, the vocabulary
and a ``meta.json``: a manifest (:mod:`bertpretrain.files`) of each file's size and SHA-256. It is
built in a temporary folder and renamed into place; on load every file is checked, and an entry
that is incomplete or corrupt is rebuilt, never trusted. An entry another process completed first
is kept (not replaced under its readers), and build folders that killed processes left behind are
removed by the next build.
"""
import hashlib
import logging
import os

import numpy as np

from ..files import (VOCAB_FILE, atomic_folder, cache_root, file_digest, manifest, manifest_problem, read_manifest,
                     remove_stale, write_manifest)
from .corpus import EncodedCorpus
from .vocab import Vocab

logger = logging.getLogger(__name__)

#: Bump when the reading rules or the array layout change: older entries are then ignored.
FORMAT_VERSION = 1
AUTO_CACHE_BYTES = 32 << 20   # cache='auto' caches files at least this large
_ARRAYS = ("token_ids", "sentence_lengths", "paragraph_sizes")
_META = "meta.json"


def entry_key(corpus_sha1, vocab=None, min_freq=5):
    """The cache key of a corpus encoded with ``vocab`` (or with its own vocabulary at ``min_freq``)."""
    digest = hashlib.sha1(f"bertpretrain-corpus-v{FORMAT_VERSION}\n{corpus_sha1}\n".encode())
    if vocab is None:
        digest.update(f"min_freq={min_freq}".encode())
    elif hasattr(vocab, "digest"):  # a subword tokenizer: its whole definition, not just the pieces
        digest.update(f"tokenizer\n{vocab.digest}".encode())
    else:
        digest.update("vocab\n".encode() + "\n".join(vocab.idx_to_token).encode())
    return digest.hexdigest()


def _meta_before_manifests(meta):
    """A ``meta.json`` as versions up to c41b35a wrote it (files as ``[size, sha1]``), as a manifest: the
    entry stays valid."""
    return {**meta, "files": {name: {"size": size, "sha1": sha1} for name, (size, sha1) in meta["files"].items()}}


def _load(folder, path, vocab=None):
    """The cached corpus and vocabulary in ``folder``, or None when it is missing, incomplete or corrupt."""
    try:
        files = read_manifest(os.path.join(folder, _META), legacy=_meta_before_manifests)["files"]
        mismatch = manifest_problem(folder, files)
        if mismatch is not None:
            raise ValueError("%s: %s" % mismatch)
        arrays = {name: np.load(os.path.join(folder, f"{name}.npy"), allow_pickle=False) for name in _ARRAYS}
        vocab = vocab if vocab is not None else Vocab.load(os.path.join(folder, VOCAB_FILE))
    except FileNotFoundError:
        if os.path.isdir(folder):
            logger.warning("cache %s is incomplete: rebuilding it", folder)
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("cache %s is corrupt (%s): rebuilding it", folder, error)
        return None
    return EncodedCorpus(path=path, **arrays), vocab


def _store(folder, corpus, vocab, corpus_sha1, min_freq, replace):
    """Write the entry ``folder``; ``replace``: whether an existing (corrupt) one goes, else it wins."""
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    for stale in remove_stale(parent):
        logger.info("removed %s, left in %s by an interrupted build", stale, parent)
    with atomic_folder(folder, replace=replace) as staging:
        for name in _ARRAYS:
            np.save(os.path.join(staging, f"{name}.npy"), getattr(corpus, name))
        vocab.save(os.path.join(staging, VOCAB_FILE))
        files = manifest(staging, [f"{a}.npy" for a in _ARRAYS] + [VOCAB_FILE])
        write_manifest(os.path.join(staging, _META), files, format=FORMAT_VERSION, source=corpus.path,
                       source_sha1=corpus_sha1, min_freq=min_freq)


def load_encoded_corpus(path, vocab=None, min_freq=5, cache="auto", cache_dir=None, progress=None):
    """Encode the split file ``path`` (see :class:`EncodedCorpus`), through the on-disk cache.

    Args:
        cache: True to use the cache, False to always encode in memory, ``'auto'`` to cache files of
            at least 32 MB (WikiText-103's training split; WikiText-2 encodes in a fraction of a second).
        cache_dir: the cache root (default: ``$BERTPRETRAIN_HOME``, else the user's cache folder);
            entries live in ``<root>/preprocessed/<key>``.
    Returns:
        ``(corpus, vocab)``.
    """
    if cache == "auto":
        cache = os.path.getsize(path) >= AUTO_CACHE_BYTES
    if not cache:
        return EncodedCorpus.read(path, vocab, min_freq, progress)
    corpus_sha1 = file_digest(path, "sha1")
    folder = os.path.join(cache_root(cache_dir), "preprocessed", entry_key(corpus_sha1, vocab, min_freq))
    corrupt = os.path.isdir(folder)  # when _load finds nothing usable in an existing folder
    cached = _load(folder, path, vocab)
    if cached is not None:
        logger.info("using the cached encoding of %s (%s)", path, folder)
        corpus, cached_vocab = cached
        return corpus, vocab if vocab is not None else cached_vocab
    corpus, vocab = EncodedCorpus.read(path, vocab, min_freq, progress)
    _store(folder, corpus, vocab, corpus_sha1, min_freq, replace=corrupt)
    logger.info("cached the encoding of %s in %s", path, folder)
    return corpus, vocab
