"""Next-sentence-prediction pairs, built for all sentences at once with numpy.

A pair is ``[CLS] a [SEP] b [SEP]``: ``a`` is a sentence that has a successor in its paragraph,
``b`` is that successor half the time (label 1) and otherwise a sentence drawn uniformly from the
OTHER paragraphs (label 0), so a label never lies. Sentences are addressed by their offset and
length in the corpus' flat token array, so pairs cost a few integers each, whatever max_len is.
"""
from typing import NamedTuple

import numpy as np

from . import seeding
from .errors import DataError
from .vocab import CLS, SEP

NUM_PAIR_SPECIALS = 3  # [CLS], [SEP], [SEP]


def get_tokens_and_segments(tokens_a, tokens_b=None):
    """``['[CLS]', *a, '[SEP]', *b, '[SEP]']`` and its segment ids (0 for the first part, 1 for ``b [SEP]``)."""
    tokens = [CLS, *tokens_a, SEP]
    segments = [0] * len(tokens)
    if tokens_b is not None:
        tokens += [*tokens_b, SEP]
        segments += [1] * (len(tokens_b) + 1)
    return tokens, segments


class SentencePairs(NamedTuple):
    """E sentence pairs as arrays of shape (E,): where ``a`` and ``b`` start in the flat token array (int64),
    their lengths after any truncation (int32), and the NSP label (int8, 1 = ``b`` follows ``a``)."""
    a_start: np.ndarray
    a_len: np.ndarray
    b_start: np.ndarray
    b_len: np.ndarray
    is_next: np.ndarray

    def __len__(self):
        return len(self.is_next)

    def lengths(self):
        """(E,) tokens per example, the special tokens included (the valid length)."""
        return self.a_len + self.b_len + NUM_PAIR_SPECIALS


def truncate_pair_lengths(a_len, b_len, max_tokens):
    """Shorten pairs to at most ``max_tokens`` words by trimming the longer sentence first.

    Equivalent to removing one token at a time from the end of the longer sentence (``b`` on ties)
    until the pair fits: the shorter keeps its length when it is at most half the budget.
    Returns the new ``(a_len, b_len)``.
    """
    new_a = np.minimum(a_len, np.maximum(max_tokens - b_len, (max_tokens + 1) // 2))
    new_b = np.minimum(b_len, max_tokens - new_a)
    return new_a, new_b


def make_nsp_pairs(sentence_lengths, paragraph_sizes, max_len, rng, truncate=False, path="the corpus",
                   sentence_starts=None):
    """Build next-sentence pairs for every sentence that has a successor in its paragraph.

    Args:
        sentence_lengths: (S,) tokens per sentence.
        paragraph_sizes: (P,) sentences per paragraph (runs of consecutive sentences), each >= 2.
        max_len: the longest allowed example, ``[CLS]``/``[SEP]`` included.
        rng: a ``numpy.random.Generator``.
        truncate: shorten pairs that do not fit instead of dropping them (d2l drops them).
        path: named in error messages.
        sentence_starts: (S,) offset of each sentence in the flat token array (default: sentences
            are contiguous, in order).
    Returns:
        :class:`SentencePairs` of the kept pairs, in sentence order.
    """
    sentence_lengths = np.asarray(sentence_lengths)
    paragraph_sizes = np.asarray(paragraph_sizes, dtype=np.int64)
    num_sentences = len(sentence_lengths)
    if len(paragraph_sizes) < 2:
        raise DataError(f"{path} has only one paragraph of two or more sentences; next-sentence pairs "
                        "need a second paragraph to draw 'not next' sentences from: use a larger corpus")
    if sentence_starts is None:
        sentence_starts = np.cumsum(sentence_lengths, dtype=np.int64)
        sentence_starts -= sentence_lengths
    else:
        sentence_starts = np.asarray(sentence_starts, dtype=np.int64)
    # (S,)-sized arrays dominate the memory of a large corpus: sentence numbers are int32 where they fit,
    # and temporaries are dropped as soon as they are used.
    index = np.int32 if num_sentences < 2 ** 31 else np.int64
    paragraph_first = np.cumsum(paragraph_sizes) - paragraph_sizes
    paragraph = np.repeat(np.arange(len(paragraph_sizes), dtype=index), paragraph_sizes - 1)  # of each a
    a = np.arange(len(paragraph), dtype=index)
    a += paragraph  # every sentence but the last of its paragraph (each paragraph before drops one)

    is_next = rng.random(len(a)) < 0.5
    # A uniform sentence outside a's paragraph: draw among the S - size others, then skip the paragraph.
    size = paragraph_sizes[paragraph]
    other = rng.integers(0, num_sentences - size)
    other += (other >= paragraph_first[paragraph]) * size
    del paragraph, size
    b = np.where(is_next, a + 1, other)
    del other

    a_len, b_len = sentence_lengths[a].astype(np.int32), sentence_lengths[b].astype(np.int32)
    budget = max_len - NUM_PAIR_SPECIALS
    if truncate:
        if budget < 2:
            raise DataError(f"max_len={max_len} leaves no room for one token of each sentence "
                            f"({NUM_PAIR_SPECIALS} special tokens); use max_len >= {NUM_PAIR_SPECIALS + 2}")
        a_len, b_len = truncate_pair_lengths(a_len, b_len, budget)
    else:
        keep = a_len + b_len <= budget
        if not keep.any():
            shortest = int((a_len + b_len).min()) + NUM_PAIR_SPECIALS
            raise DataError(f"no sentence pair of {path} fits max_len={max_len}: the shortest needs {shortest} "
                            "tokens with [CLS] and two [SEP]; raise max_len or pass truncate_pairs=True")
        a, b, a_len, b_len, is_next = a[keep], b[keep], a_len[keep], b_len[keep], is_next[keep]
    return SentencePairs(sentence_starts[a], a_len, sentence_starts[b], b_len, is_next.astype(np.int8))


class EpochPairs:
    """Next-sentence pairs drawn anew for every epoch, so that a model cannot memorise them.

    ``pairs(epoch)`` gives that epoch's :class:`SentencePairs` (the last one is kept), drawn by
    :func:`make_nsp_pairs` from the stream ``(seed, NSP_PARTNERS, epoch)``: new labels and new
    negatives, every epoch (epoch 0 has the pairs drawn once without this option). Pairs that do
    not fit ``max_len`` are truncated, never dropped, so every epoch has the same number of
    examples, one per sentence with a successor, in the same order.
    The arguments are those of :func:`make_nsp_pairs`, and the data's ``seed``.
    """

    def __init__(self, sentence_lengths, paragraph_sizes, max_len, seed, sentence_starts=None, path="the corpus"):
        self._args = (sentence_lengths, paragraph_sizes, max_len)
        self._seed, self._starts, self._path = seed, sentence_starts, path
        self._epoch, self._pairs = None, None

    def __call__(self, epoch):
        if epoch != self._epoch:
            key = (seeding.NSP_PARTNERS,) if epoch == 0 else (seeding.NSP_PARTNERS, epoch)
            rng = seeding.stream(self._seed, *key)
            self._pairs = make_nsp_pairs(*self._args, rng, truncate=True, path=self._path,
                                         sentence_starts=self._starts)
            self._epoch = epoch
        return self._pairs
