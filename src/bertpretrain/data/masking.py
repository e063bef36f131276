"""Masked-language-model targets, drawn for many examples at once with numpy.

For an example of L tokens (specials included), ``max(1, round(0.15 * L))`` positions are chosen
uniformly among all positions but ``[CLS]`` and the two ``[SEP]`` (and, as an option, the
``<unk>`` words). Each chosen token becomes ``[MASK]`` with probability 0.8, a uniformly random
real word (never ``<unk>`` or another reserved token) with probability 0.1, and stays unchanged
otherwise. Positions are sorted.
"""
import numpy as np

from .vocab import MASK_ID, NUM_RESERVED

MASK_RATE = 0.15


def num_mlm_slots(max_len):
    """Prediction slots per example after padding: ``round(0.15 * max_len)`` (at least 1)."""
    return max(1, round(MASK_RATE * max_len))


def num_mlm_predictions(lengths):
    """(E,) predictions per example: ``max(1, round(0.15 * L))``, L counting the special tokens."""
    return np.maximum(1, np.round(MASK_RATE * np.asarray(lengths))).astype(np.int64)


def candidate_positions(a_len, width):
    """(E, width) token position of candidate j of each example: word j of "a b" (1..a_len, then after a's [SEP])."""
    j = np.arange(width)
    return np.where(j < np.asarray(a_len)[:, None], j + 1, j + 2)


def choose_mlm_positions(a_len, b_len, num_slots, rng, excluded=None):
    """Choose the positions to predict in each ``[CLS] a [SEP] b [SEP]`` example.

    Args:
        a_len, b_len: (E,) lengths of the two sentences.
        num_slots: width of the output; must be >= every example's number of predictions.
        rng: a ``numpy.random.Generator`` or a :class:`~bertpretrain.data.seeding.KeyedRandom`.
        excluded: optional (E, max(a_len + b_len)) bool, True for candidates (words of "a b", see
            :func:`candidate_positions`) never to choose, e.g. the ``<unk>`` words: predicting them
            teaches nothing. An example then gets at most as many predictions as it has other words
            (possibly none). The random numbers drawn are the same with or without it.
    Returns:
        positions (E, num_slots) int64, sorted ascending in each row's first n entries and 0 after;
        counts (E,) int64, n = the number of real predictions of each row.
    """
    a_len, b_len = np.asarray(a_len), np.asarray(b_len)
    counts = num_mlm_predictions(a_len + b_len + 3)
    if not len(counts):
        return np.zeros((0, num_slots), dtype=np.int64), counts
    if counts.max() > num_slots:
        raise ValueError(f"num_slots={num_slots} is smaller than the {counts.max()} predictions an example needs")
    num_candidates = a_len + b_len
    width = int(num_candidates.max())
    allowed = np.arange(width) < num_candidates[:, None]
    if excluded is not None:
        allowed &= ~np.asarray(excluded, dtype=bool)[:, :width]
        counts = np.minimum(counts, allowed.sum(axis=1))
    # Candidate j of a row is word j of "a b". Each gets a random key with j in its low bits; sorting
    # the packed uint32 keys per row (much faster than argsort) ranks the candidates in a uniformly
    # random order (keys tie with probability < 1e-4 per row; a tie keeps the lower j first).
    # Keys past a row's end (or excluded) are all ones, so they sort last.
    index_bits = max(1, (width - 1).bit_length())
    keys = rng.integers(0, 1 << (32 - index_bits), size=(len(a_len), width), dtype=np.uint32)
    keys = (keys << np.uint32(index_bits)) | np.arange(width, dtype=np.uint32)
    keys[~allowed] = np.iinfo(np.uint32).max
    k = min(num_slots, width)
    ranked = (np.sort(keys, axis=1)[:, :k] & np.uint32((1 << index_bits) - 1)).astype(np.int64)
    chosen = np.arange(k) < counts[:, None]
    positions = np.where(ranked < a_len[:, None], ranked + 1, ranked + 2)  # candidate_positions, per rank
    positions = np.sort(np.where(chosen, positions, np.iinfo(np.int64).max), axis=1)
    positions[~chosen] = 0
    out = np.zeros((len(a_len), num_slots), dtype=np.int64)
    out[:, :k] = positions
    return out, counts


def choose_whole_word_positions(a_len, b_len, word_start, num_slots, rng, excluded=None):
    """Like :func:`choose_mlm_positions`, but all pieces of a chosen word are predicted together.

    Words are visited in a uniformly random order and taken whole while the example's
    ``max(1, round(0.15 * L))`` predictions are not exceeded; a word that does not fit is skipped
    (Google's whole-word masking), so an example may get fewer predictions when its words are long.

    Args:
        a_len, b_len: (E,) lengths of the two sentences, in pieces.
        word_start: (E, W) bool, W >= every ``a_len + b_len``: whether piece j of "a b" starts a word
            (the first piece of each sentence always does).
        num_slots: width of the output.
        rng: a ``numpy.random.Generator`` or a :class:`~bertpretrain.data.seeding.KeyedRandom`.
        excluded: optional (E, W) bool, True for pieces never to predict (e.g. the unknown token): a word
            with such a piece is never chosen.
    Returns:
        positions (E, num_slots) int64 and counts (E,) int64, as :func:`choose_mlm_positions`.
    """
    a_len, b_len = np.asarray(a_len), np.asarray(b_len)
    num_examples, width = len(a_len), int((a_len + b_len).max(initial=0))
    targets = np.minimum(num_mlm_predictions(a_len + b_len + 3), num_slots)
    columns = np.arange(width)
    real = columns < (a_len + b_len)[:, None]
    starts = real & (np.asarray(word_start)[:, :width] | (columns == 0) | (columns == a_len[:, None]))
    word_of = np.cumsum(starts, axis=1) - 1                                  # (E, W) word index of each piece
    rows = np.broadcast_to(np.arange(num_examples)[:, None], (num_examples, width))
    sizes = np.bincount((rows * width + word_of)[real], minlength=num_examples * width).reshape(
        num_examples, width)                                                # (E, W) pieces per word
    if excluded is not None:
        barred = real & np.asarray(excluded, dtype=bool)[:, :width]
        barred_words = np.bincount((rows * width + word_of)[barred], minlength=num_examples * width).reshape(
            num_examples, width) > 0                                         # (E, W) words with such a piece
        sizes = np.where(barred_words, 0, sizes)                             # size 0: never taken
    keys = np.where(sizes > 0, rng.random((num_examples, width)), 2.0)
    order = np.argsort(keys, axis=1)                                         # words in random order
    ordered_sizes = np.take_along_axis(sizes, order, axis=1)
    totals = np.zeros(num_examples, dtype=np.int64)
    taken = np.zeros((num_examples, width), dtype=bool)
    for rank in range(int(starts.sum(axis=1).max(initial=0))):  # vectorised over examples
        size = ordered_sizes[:, rank]
        fits = (size > 0) & (totals + size <= targets)
        totals += np.where(fits, size, 0)
        taken[:, rank] = fits
    word_taken = np.zeros_like(taken)
    np.put_along_axis(word_taken, order, taken, axis=1)
    chosen = real & np.take_along_axis(word_taken, np.maximum(word_of, 0), axis=1)
    positions = np.where(columns < a_len[:, None], columns + 1, columns + 2)
    positions = np.sort(np.where(chosen, positions, np.iinfo(np.int64).max), axis=1)[:, :num_slots]
    out = np.zeros((num_examples, num_slots), dtype=np.int64)
    out[:, :positions.shape[1]] = np.where(np.arange(positions.shape[1]) < totals[:, None], positions, 0)
    return out, totals


def replace_masked_tokens(labels, valid, vocab_size, rng):
    """The ids to put at the chosen positions: 80% ``[MASK]``, 10% a random word, 10% unchanged.

    Args:
        labels: (E, P) original ids at the chosen positions.
        valid: (E, P) bool, True for real predictions (padding slots are left as they are).
        vocab_size: size of the vocabulary; random words are drawn uniformly from ids
            ``NUM_RESERVED .. vocab_size - 1``, never a reserved token.
        rng: a ``numpy.random.Generator``.
    Returns:
        (E, P) int64 replacement ids.
    """
    if vocab_size <= NUM_RESERVED:
        raise ValueError(f"vocab_size={vocab_size} has no real word to draw the 10% random replacements "
                         f"from (ids below {NUM_RESERVED} are reserved); lower min_freq or use a larger corpus")
    draw = rng.random(labels.shape)
    random_words = rng.integers(NUM_RESERVED, vocab_size, size=labels.shape)
    replaced = np.where(draw < 0.8, MASK_ID, np.where(draw < 0.9, random_words, labels))
    return np.where(valid, replaced, labels)
