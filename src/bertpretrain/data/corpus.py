"""Reading a WikiText split into paragraphs of sentences of tokens, streaming, as flat id arrays.

The rules are d2l's: one paragraph per line, lower-cased, sentences split on ``' . '``, words split
on whitespace, only paragraphs of at least two sentences kept (the others cannot give a
next-sentence pair), paragraphs shuffled. Empty sentences are dropped.

The file is read line by line and encoded into integer arrays as it goes, so memory grows with
the number of tokens (4 bytes each), never with the text as Python strings: WikiText-103's 103M
words fit in about 0.5 GB.
"""
import os
from dataclasses import dataclass

import numpy as np

from ..display import progress_bar
from . import seeding
from .errors import DataError
from .vocab import Vocab

_FLUSH_TOKENS = 1 << 20       # tokens encoded per numpy conversion
_FLUSH_SENTENCES = 1 << 14    # sentences per batch call of a subword tokenizer
_PROGRESS_MIN_BYTES = 32 << 20  # show a progress bar for files at least this large


def split_file(data_dir, split):
    """Path of ``wiki.<split>.tokens`` in ``data_dir``; a clear error if it is not there."""
    path = os.path.join(data_dir, f"wiki.{split}.tokens")
    if not os.path.isfile(path):
        raise DataError(f"split file {path} does not exist: data_dir must be a folder holding "
                        f"wiki.{split}.tokens (as extracted from wikitext-2-v1.zip); pass another data_dir "
                        "or split, or leave data_dir=None to download the dataset")
    return path


def iter_paragraphs(path, progress=None):
    """Yield the paragraphs of ``path`` with at least two non-empty sentences, as lists of sentence strings.

    Reads line by line; errors name the file (and the byte offset of text that is not UTF-8).
    ``progress``: show a progress bar (None: for large files on a terminal).
    """
    size = os.path.getsize(path)
    show = (size >= _PROGRESS_MIN_BYTES and None) if progress is None else progress
    offset, has_text = 0, False
    with open(path, "rb") as f, progress_bar(show, total=size, unit="B", unit_scale=True,
                                             desc=f"reading {os.path.basename(path)}") as bar:
        for number, raw in enumerate(f):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                position = offset + error.start
                raise DataError(f"{path} is not UTF-8 text (invalid byte {raw[error.start:error.start + 1]!r} at "
                                f"offset {position}); WikiText files are UTF-8: download or extract the file "
                                "again") from None
            offset += len(raw)
            if number % 4096 == 0:
                bar.update(offset - bar.n)
            stripped = line.strip()
            has_text = has_text or bool(stripped)
            sentences = [s for s in stripped.lower().split(" . ") if s.strip()]
            if len(sentences) >= 2:
                yield sentences
        bar.update(offset - bar.n)
    if not has_text:
        raise DataError(f"{path} is empty: it holds no text to pretrain on; download or extract it again")


def _no_paragraph_error(path):
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
        raise _no_paragraph_error(path)
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


@dataclass
class EncodedCorpus:
    """A split as flat arrays, in file order: what the pair and masking code works on.

    Attributes:
        token_ids: (T,) int32, every token of every kept sentence; sentences are contiguous.
        sentence_lengths: (S,) int32, tokens per sentence.
        paragraph_sizes: (P,) int32, sentences per paragraph (each >= 2); paragraphs are contiguous.
        path: the file it was read from (for error messages).
    """
    token_ids: np.ndarray
    sentence_lengths: np.ndarray
    paragraph_sizes: np.ndarray
    path: str

    @classmethod
    def read(cls, path, vocab=None, min_freq=5, progress=None):
        """Encode ``path`` in one streaming pass; return ``(corpus, vocab)``.

        With ``vocab=None`` the vocabulary is counted from this file (words seen ``min_freq`` times);
        a :class:`~bertpretrain.data.tokenizer.WordPieceTokenizer` as ``vocab`` encodes subword pieces.
        """
        if hasattr(vocab, "encode_sentences"):
            return cls._read_pieces(path, vocab, progress), vocab
        lookup = vocab.token_to_idx if vocab is not None else _FirstSeenIds()
        chunks, buffer, sentence_lengths, paragraph_sizes = [], [], [], []
        for paragraph in iter_paragraphs(path, progress):
            for sentence in paragraph:
                tokens = sentence.split()
                buffer += tokens
                sentence_lengths.append(len(tokens))
            paragraph_sizes.append(len(paragraph))
            if len(buffer) >= _FLUSH_TOKENS:
                chunks.append(np.fromiter(map(lookup.__getitem__, buffer), dtype=np.int32, count=len(buffer)))
                buffer = []
        if not paragraph_sizes:
            raise _no_paragraph_error(path)
        chunks.append(np.fromiter(map(lookup.__getitem__, buffer), dtype=np.int32, count=len(buffer)))
        token_ids = np.concatenate(chunks)
        del chunks, buffer
        if vocab is None:
            vocab = cls._vocab_and_final_ids(lookup, token_ids, min_freq)
        return cls(token_ids, np.asarray(sentence_lengths, dtype=np.int32),
                   np.asarray(paragraph_sizes, dtype=np.int32), path), vocab

    @classmethod
    def _read_pieces(cls, path, tokenizer, progress):
        """Encode ``path`` with a subword tokenizer, many sentences per call of its batch encoder."""
        chunks, lengths, sentences, paragraph_sizes = [], [], [], []

        def flush():
            ids, sizes = tokenizer.encode_sentences(sentences)
            chunks.append(ids)
            lengths.append(sizes)
            sentences.clear()

        for paragraph in iter_paragraphs(path, progress):
            sentences += paragraph
            paragraph_sizes.append(len(paragraph))
            if len(sentences) >= _FLUSH_SENTENCES:
                flush()
        if not paragraph_sizes:
            raise _no_paragraph_error(path)
        flush()
        return cls(np.concatenate(chunks), np.concatenate(lengths), np.asarray(paragraph_sizes, dtype=np.int32),
                   path)

    @staticmethod
    def _vocab_and_final_ids(first_seen, token_ids, min_freq):
        """Count the provisional ids, build the vocabulary and rewrite ``token_ids`` in place with its ids."""
        counts = np.bincount(token_ids, minlength=len(first_seen))
        tokens = list(first_seen)
        vocab = Vocab(dict(zip(tokens, counts.tolist())), min_freq=min_freq)
        final = vocab.lookup_array(tokens)
        for start in range(0, len(token_ids), _FLUSH_TOKENS):
            part = token_ids[start:start + _FLUSH_TOKENS]
            part[:] = final[part]
        return vocab

    def shuffled_sentences(self, seed):
        """Sentences with the paragraphs in an order drawn from ``seed``; the tokens do not move.

        Returns ``(sentence_starts, sentence_lengths, paragraph_sizes)`` int64 arrays: sentence i starts at
        ``token_ids[sentence_starts[i]]``, and paragraphs are runs of consecutive sentences.
        """
        sizes = self.paragraph_sizes.astype(np.int64)
        starts = np.concatenate(([0], np.cumsum(self.sentence_lengths, dtype=np.int64)[:-1]))
        order = seeding.stream(seed, seeding.PARAGRAPH_SHUFFLE).permutation(len(sizes))
        first_sentence = np.cumsum(sizes) - sizes
        new_sizes = sizes[order]
        within = np.arange(new_sizes.sum()) - np.repeat(np.cumsum(new_sizes) - new_sizes, new_sizes)
        sentences = np.repeat(first_sentence[order], new_sizes) + within
        return starts[sentences], self.sentence_lengths[sentences].astype(np.int64), new_sizes
