"""Reading a WikiText split into paragraphs of sentences of tokens.

The rules are d2l's: one paragraph per line, lower-cased, sentences split on ``' . '``, words split
on whitespace, only paragraphs of at least two sentences kept (the others cannot give a
next-sentence pair), paragraphs shuffled. Empty sentences are dropped.
"""
import os
from dataclasses import dataclass

import numpy as np

from . import seeding
from .errors import DataError


def split_file(data_dir, split):
    """Path of ``wiki.<split>.tokens`` in ``data_dir``; a clear error if it is not there."""
    path = os.path.join(data_dir, f"wiki.{split}.tokens")
    if not os.path.isfile(path):
        raise DataError(f"split file {path} does not exist: data_dir must be a folder holding "
                        f"wiki.{split}.tokens (as extracted from wikitext-2-v1.zip); pass another data_dir "
                        "or split, or leave data_dir=None to download the dataset")
    return path


def _read_text(path):
    """The whole file as lower-case text, with errors that name the file."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (invalid byte {raw[error.start:error.start + 1]!r} at "
                        f"offset {error.start}); WikiText files are UTF-8: download or extract the file "
                        "again") from None
    if not text.strip():
        raise DataError(f"{path} is empty: it holds no text to pretrain on; download or extract it again")
    return text.lower()


def _paragraph_sentences(text):
    """Paragraphs (lists of sentence strings) with at least two non-empty sentences, in file order."""
    paragraphs = []
    for line in text.split("\n"):
        sentences = [s for s in line.strip().split(" . ") if s.strip()]
        if len(sentences) >= 2:
            paragraphs.append(sentences)
    return paragraphs


def _shuffled(paragraphs, seed, path):
    if not paragraphs:
        raise DataError(f"{path} has no paragraph of at least two sentences (sentences are separated by "
                        "' . '), so it gives no next-sentence pair; use a larger or real WikiText split")
    order = seeding.stream(seed, seeding.PARAGRAPH_SHUFFLE).permutation(len(paragraphs))
    return [paragraphs[i] for i in order]


def read_wiki(data_dir, split="train", seed=None):
    """Paragraphs of ``wiki.<split>.tokens`` in ``data_dir``, as lists of lower-case sentence strings.

    Paragraphs with fewer than two sentences are dropped; the rest are shuffled with ``seed``
    (None: a fresh random order).
    """
    path = split_file(data_dir, split)
    return _shuffled(_paragraph_sentences(_read_text(path)), seeding.resolve_seed(seed), path)


def tokenize(sentences):
    """Split each sentence string on whitespace: a list of token lists."""
    return [sentence.split() for sentence in sentences]


@dataclass
class TokenizedCorpus:
    """A split as flat arrays: what the pair and masking code works on, memory linear in tokens.

    Attributes:
        words: every token of every kept sentence, in order (list of str, length T).
        sentence_lengths: (S,) int64, tokens per sentence; sentences are contiguous in ``words``.
        paragraph_sizes: (P,) int64, sentences per paragraph; paragraphs are contiguous too.
        path: the file it was read from (for error messages).
    """
    words: list
    sentence_lengths: np.ndarray
    paragraph_sizes: np.ndarray
    path: str

    @classmethod
    def read(cls, path, seed):
        """Read and shuffle the paragraphs of ``path`` (see :func:`read_wiki`)."""
        paragraphs = _shuffled(_paragraph_sentences(_read_text(path)), seed, path)
        words, sentence_lengths = [], []
        for paragraph in paragraphs:
            for sentence in paragraph:
                tokens = sentence.split()
                words.extend(tokens)
                sentence_lengths.append(len(tokens))
        paragraph_sizes = np.fromiter(map(len, paragraphs), dtype=np.int64, count=len(paragraphs))
        return cls(words, np.asarray(sentence_lengths, dtype=np.int64), paragraph_sizes, path)
