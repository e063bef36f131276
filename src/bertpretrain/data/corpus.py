"""Reading a corpus into documents of sentences, and encoding it, streaming, into flat id arrays.

Two text formats (see :mod:`bertpretrain.data.textfiles`):

- WikiText's, read by d2l's rules: one paragraph per line, lower-cased, sentences split on
  ``' . '``, words split on whitespace.
- Google BERT's (``create_pretraining_data.py``'s input): one sentence per line, a blank line
  between documents; the text is kept as it is (the tokenizer normalises it).

Either way a document (a WikiText paragraph, a BERT document) is a run of sentences: next-sentence
pairs are drawn inside a document and their negatives from another one. Only documents of at least
two sentences are kept (the others cannot give a pair); empty sentences are dropped; the documents
of several files follow each other (a file ends its last document).

The files are read line by line and encoded as they are read, a few thousand sentences at a time,
into ``.npy`` files (or in-memory buffers) that grow by appending: memory holds one batch of
sentences, never the corpus as Python strings or as one array built from pieces. A word-level
vocabulary is counted batch by batch and the ids are rewritten in place, a chunk at a time, once it
is known.
"""
import contextlib
import io
import itertools
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from ..display import progress_bar
from . import seeding
from .errors import DataError
from .textfiles import TextFile, describe
from .vocab import Vocab

_FLUSH_SENTENCES = 1 << 14      # sentences encoded per batch (one call of a subword tokenizer)
_REMAP_IDS = 1 << 20            # ids rewritten per chunk once the word vocabulary is known
_PROGRESS_MIN_BYTES = 32 << 20  # show a progress bar for files at least this large
_HEADER_BYTES = 128             # the .npy header, padded to a fixed size so the length can be written last
ARRAYS = ("token_ids", "sentence_lengths", "paragraph_sizes")


def split_file(data_dir, split):
    """Path of ``wiki.<split>.tokens`` in ``data_dir``; a clear error if it is not there."""
    path = os.path.join(data_dir, f"wiki.{split}.tokens")
    if not os.path.isfile(path):
        raise DataError(f"split file {path} does not exist: data_dir must be a folder holding "
                        f"wiki.{split}.tokens (as extracted from wikitext-2-v1.zip); pass another data_dir "
                        "or split, or leave data_dir=None to download the dataset")
    return path


def _wikitext_documents(lines, lowercase):
    """d2l's reading: a line is a paragraph, its sentences split on ``' . '``."""
    for line in lines:
        stripped = line.strip()
        sentences = [s for s in (stripped.lower() if lowercase else stripped).split(" . ") if s.strip()]
        if len(sentences) >= 2:
            yield sentences


def _bert_documents(lines, lowercase):
    """BERT's format: a line is a sentence, a blank line ends a document."""
    document = []
    for line in lines:
        stripped = line.strip()
        if stripped:
            document.append(stripped.lower() if lowercase else stripped)
            continue
        if len(document) >= 2:
            yield document
        document = []
    if len(document) >= 2:
        yield document


_READERS = {"wikitext": _wikitext_documents, "bert": _bert_documents}


def iter_paragraphs(path, progress=None, *, text_format="wikitext", lowercase=True):
    """Yield the documents of ``path`` with at least two non-empty sentences, as lists of sentence strings.

    A document is a paragraph (a line) of WikiText, or a document (lines up to a blank line) of BERT's
    format (``text_format='bert'``). ``lowercase``: lower-case the text (d2l's reading of WikiText).
    Reads line by line (``.gz`` files decompressed); errors name the file (and the byte offset of text
    that is not UTF-8). ``progress``: show a progress bar (None: for large files on a terminal).
    """
    reader = _READERS[text_format]
    has_text = False
    with TextFile(path) as f:
        show = (f.size >= _PROGRESS_MIN_BYTES and None) if progress is None else progress
        with progress_bar(show, total=f.size, unit="B", unit_scale=True,
                          desc=f"reading {os.path.basename(path)}") as bar:
            def lines():
                nonlocal has_text
                for number, line in enumerate(f):
                    if number % 4096 == 0:
                        bar.update(f.tell() - bar.n)
                    has_text = has_text or not line.isspace()
                    yield line
                bar.update(f.tell() - bar.n)
            yield from reader(lines(), lowercase)
    if not has_text:
        raise DataError(f"{path} is empty: it holds no text to pretrain on; download or extract it again, or "
                        "leave it out")


def _no_paragraph_error(path, text_format):
    if text_format == "bert":
        return DataError(f"{path} has no document of at least two sentences (one sentence per line, a blank line "
                         "between documents), so it gives no next-sentence pair; if it is WikiText (one paragraph "
                         "per line) pass text_format='wikitext'")
    return DataError(f"{path} has no paragraph of at least two sentences (sentences are separated by "
                     "' . '), so it gives no next-sentence pair; use a larger or real WikiText split")


def read_wiki(data_dir, split="train", seed=None):
    """Paragraphs of ``wiki.<split>.tokens`` in ``data_dir``, as lists of lower-case sentence strings.

    Paragraphs with fewer than two sentences are dropped; the rest are shuffled with ``seed``
    (None: a fresh random order).
    """
    path = split_file(data_dir, split)
    paragraphs = list(iter_paragraphs(path))
    if not paragraphs:
        raise _no_paragraph_error(path, "wikitext")
    order = seeding.stream(seeding.resolve_seed(seed), seeding.PARAGRAPH_SHUFFLE).permutation(len(paragraphs))
    return [paragraphs[i] for i in order]


def tokenize(sentences):
    """Split each sentence string on whitespace: a list of token lists."""
    return [sentence.split() for sentence in sentences]


class _FirstSeenIds(dict):
    """token -> provisional id in order of first appearance (the final ids need the full counts)."""

    def __missing__(self, token):
        self[token] = new_id = len(self)
        return new_id


def _npy_header(length):
    """The header of a 1-D int32 ``.npy`` file (format 1.0) of ``length`` items, always ``_HEADER_BYTES`` long."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)), "fortran_order": False,
                 "shape": (int(length),)})
    text = text.ljust(_HEADER_BYTES - 11) + "\n"
    return np.lib.format.magic(1, 0) + struct.pack("<H", len(text)) + text.encode("latin1")


class _GrowingArray:
    """A 1-D int32 ``.npy`` array appended to a binary file (on disk or ``io.BytesIO``) piece by piece.

    Its length goes into the header at :meth:`finish`; :meth:`remap` rewrites the values in place, a
    chunk at a time, so that the array is never in memory whole.
    """

    def __init__(self, file):
        self.file, self.length = file, 0
        file.write(_npy_header(0))

    def append(self, values):
        values = np.ascontiguousarray(values, dtype=np.int32)
        self.file.write(values.data.cast("B"))
        self.length += len(values)

    def remap(self, table):
        """Replace every value ``v`` with ``table[v]``."""
        buffer = np.empty(_REMAP_IDS, dtype=np.int32)
        for start in range(0, self.length, _REMAP_IDS):
            part = buffer[:min(_REMAP_IDS, self.length - start)]
            position = _HEADER_BYTES + part.itemsize * start
            self.file.seek(position)
            if self.file.readinto(part.data.cast("B")) != part.nbytes:
                raise OSError(f"short read while rewriting the ids in {getattr(self.file, 'name', 'memory')}")
            self.file.seek(position)
            self.file.write(table[part].astype(np.int32).data.cast("B"))
        self.file.seek(0, os.SEEK_END)

    def finish(self):
        self.file.seek(0)
        self.file.write(_npy_header(self.length))
        self.file.seek(0, os.SEEK_END)


class _Encoder:
    """Documents in, three growing arrays out: ids of every kept sentence, sentence lengths, document sizes.

    With a subword tokenizer (an object with ``encode_sentences``) the pieces are its ids; otherwise words
    (whitespace-separated) are looked up in ``vocab``, or, with ``vocab=None``, given provisional ids in order
    of first appearance and counted, to be rewritten by :meth:`finish`.
    """

    def __init__(self, arrays, vocab):
        self.arrays = arrays
        self.pieces = hasattr(vocab, "encode_sentences")
        self.tokenizer = vocab if self.pieces else None
        self.lookup = (None if self.pieces else vocab.token_to_idx if vocab is not None else _FirstSeenIds())
        self.counts = None if self.pieces or vocab is not None else np.zeros(0, dtype=np.int64)
        self.sentences, self.sizes = [], []
        self.num_documents = 0

    def add(self, document):
        self.sentences += document
        self.sizes.append(len(document))
        if len(self.sentences) >= _FLUSH_SENTENCES:
            self.flush()

    def _encode(self):
        if self.pieces:
            return self.tokenizer.encode_sentences(self.sentences)
        words = [sentence.split() for sentence in self.sentences]
        lengths = np.fromiter(map(len, words), dtype=np.int32, count=len(words))
        ids = np.fromiter(map(self.lookup.__getitem__, itertools.chain.from_iterable(words)), dtype=np.int32,
                          count=int(lengths.sum()))
        return ids, lengths

    def flush(self):
        if not self.sentences:
            return
        ids, lengths = self._encode()
        sizes = np.asarray(self.sizes, dtype=np.int64)
        # A subword tokenizer may encode a sentence to nothing (only characters it removes): drop such
        # sentences, then the documents left with fewer than two.
        document = np.repeat(np.arange(len(sizes)), sizes)
        kept = lengths > 0
        sizes = np.bincount(document[kept], minlength=len(sizes))
        kept &= (sizes >= 2)[document]
        if not kept.all():
            ids, lengths, sizes = ids[np.repeat(kept, lengths)], lengths[kept], sizes[sizes >= 2]
        if self.counts is not None and len(ids):
            counts = np.bincount(ids, minlength=len(self.lookup))
            counts[:len(self.counts)] += self.counts
            self.counts = counts
        self.arrays["token_ids"].append(ids)
        self.arrays["sentence_lengths"].append(lengths)
        self.arrays["paragraph_sizes"].append(sizes)
        self.num_documents += len(sizes)
        self.sentences, self.sizes = [], []

    def finish(self, vocab, min_freq):
        """Flush; with a counted vocabulary, build it and rewrite the ids with its ids. Returns the vocabulary."""
        self.flush()
        if self.counts is not None:
            tokens = list(self.lookup)
            counts = np.zeros(len(tokens), dtype=np.int64)
            counts[:len(self.counts)] = self.counts
            vocab = Vocab(dict(zip(tokens, counts.tolist())), min_freq=min_freq)
            self.arrays["token_ids"].remap(vocab.lookup_array(tokens))
        for array in self.arrays.values():
            array.finish()
        return vocab


def as_paths(paths):
    """``paths`` (a file, or a list of files) as a list of ``str`` paths."""
    return [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]


@dataclass
class EncodedCorpus:
    """A corpus as flat arrays, in file order: what the pair and masking code works on.

    Attributes:
        token_ids: (T,) int32, every token of every kept sentence; sentences are contiguous.
        sentence_lengths: (S,) int32, tokens per sentence.
        paragraph_sizes: (P,) int32, sentences per document (paragraph), each >= 2; documents are contiguous.
        path: the file(s) it was read from, as named in error messages.

    The arrays may be read-only memory maps of an on-disk cache entry (see
    :func:`~bertpretrain.data.cache.load_encoded_corpus`).
    """
    token_ids: np.ndarray
    sentence_lengths: np.ndarray
    paragraph_sizes: np.ndarray
    path: str

    @classmethod
    def read(cls, paths, vocab=None, min_freq=5, progress=None, *, text_format="wikitext", lowercase=True,
             folder=None):
        """Encode the file(s) ``paths`` in one streaming pass; return ``(corpus, vocab)``.

        With ``vocab=None`` the vocabulary is counted from these files (words seen ``min_freq`` times);
        a :class:`~bertpretrain.data.tokenizer.WordPieceTokenizer` as ``vocab`` encodes subword pieces.
        ``text_format`` and ``lowercase``: see :func:`iter_paragraphs`. ``folder``: write the arrays there as
        ``<name>.npy`` and return them memory-mapped (None: in memory).
        """
        paths = as_paths(paths)
        name = describe(paths)
        with contextlib.ExitStack() as stack:
            files = {array: (io.BytesIO() if folder is None else
                             stack.enter_context(open(os.path.join(folder, f"{array}.npy"), "w+b")))
                     for array in ARRAYS}
            encoder = _Encoder({array: _GrowingArray(f) for array, f in files.items()}, vocab)
            for path in paths:
                for document in iter_paragraphs(path, progress, text_format=text_format, lowercase=lowercase):
                    encoder.add(document)
            encoder.flush()
            if not encoder.num_documents:
                raise _no_paragraph_error(name, text_format)
            vocab = encoder.finish(vocab, min_freq)
            if folder is None:
                arrays = {array: np.frombuffer(f.getbuffer(), dtype=np.int32, offset=_HEADER_BYTES,
                                               count=encoder.arrays[array].length) for array, f in files.items()}
        if folder is not None:
            arrays = load_arrays(folder)
        return cls(path=name, **arrays), vocab

    def shuffled_sentences(self, seed):
        """Sentences with the paragraphs in an order drawn from ``seed``; the tokens do not move.

        Returns ``(sentence_starts, sentence_lengths, paragraph_sizes)``: (S,) int64 offsets (sentence i starts
        at ``token_ids[sentence_starts[i]]``), (S,) int32 lengths and (P,) int64 sizes; paragraphs are runs of
        consecutive sentences. Built with as few (S,) temporaries as possible: a corpus of 100M words has
        millions of sentences.
        """
        sizes = self.paragraph_sizes.astype(np.int64)
        order = seeding.stream(seed, seeding.PARAGRAPH_SHUFFLE).permutation(len(sizes))
        new_sizes = sizes[order]
        num_sentences = int(new_sizes.sum())
        index = np.int32 if num_sentences < 2 ** 31 else np.int64
        # new position j of old paragraph p holds its sentence first[p] + (j - new_first[p])
        shift = (np.cumsum(sizes) - sizes)[order] - (np.cumsum(new_sizes) - new_sizes)
        sentences = np.repeat(shift.astype(index), new_sizes)
        sentences += np.arange(num_sentences, dtype=index)
        starts = np.cumsum(self.sentence_lengths, dtype=np.int64)
        starts -= self.sentence_lengths
        starts = starts[sentences]
        return starts, np.asarray(self.sentence_lengths[sentences], dtype=np.int32), new_sizes


def _map_npy(path, random_access=False):
    """A 1-D ``.npy`` file as a read-only array over a memory map of it.

    ``random_access``: tell the kernel that reads will be scattered (``MADV_RANDOM``), so that a page fault
    reads that page from disk, not the next hundred KB too (read-ahead): a batch reads a few hundred short
    spans of the token array. The pages read count in the process's RSS as file-backed memory, which the
    kernel drops again when memory is needed (they are clean).
    """
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
        if len(shape) != 1:
            raise ValueError(f"{path} holds an array of shape {shape}, not 1-D")
        if shape[0] == 0:
            return np.zeros(0, dtype=dtype)
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if random_access and hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(mapped, dtype=dtype, count=shape[0], offset=offset)


def load_arrays(folder):
    """The arrays of an encoded corpus saved in ``folder`` (``<name>.npy``), memory-mapped read-only."""
    return {array: _map_npy(os.path.join(folder, f"{array}.npy"), random_access=array == "token_ids")
            for array in ARRAYS}
