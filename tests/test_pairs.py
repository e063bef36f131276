"""Next-sentence pairs: balance, truthful labels, lengths, truncation."""
import numpy as np
import pytest

from bertpretrain.data import DataError, get_tokens_and_segments, make_nsp_pairs, truncate_pair_lengths


def test_tokens_and_segments_of_a_pair_and_a_single_sentence():
    tokens, segments = get_tokens_and_segments(["a", "b"], ["c"])
    assert tokens == ["[CLS]", "a", "b", "[SEP]", "c", "[SEP]"]
    assert segments == [0, 0, 0, 0, 1, 1]
    assert get_tokens_and_segments(["a"]) == (["[CLS]", "a", "[SEP]"], [0, 0, 0])


def _corpus(rng, paragraphs=400):
    paragraph_sizes = rng.integers(2, 9, paragraphs)
    sentence_lengths = rng.integers(1, 40, paragraph_sizes.sum())
    return sentence_lengths, paragraph_sizes


def _paragraph_of_start(sentence_lengths, paragraph_sizes):
    starts = np.concatenate(([0], np.cumsum(sentence_lengths)[:-1]))
    return dict(zip(starts.tolist(), np.repeat(np.arange(len(paragraph_sizes)), paragraph_sizes).tolist())), starts


def test_labels_never_lie_and_are_balanced():
    rng = np.random.default_rng(0)
    lengths, sizes = _corpus(rng)
    pairs = make_nsp_pairs(lengths, sizes, 10_000, rng)
    paragraph_of, starts = _paragraph_of_start(lengths, sizes)
    assert len(pairs) == (sizes - 1).sum(), "every sentence with a successor gives one pair"
    for a_start, a_len, b_start, is_next in zip(pairs.a_start, pairs.a_len, pairs.b_start, pairs.is_next):
        if is_next:
            assert b_start == a_start + a_len and paragraph_of[b_start] == paragraph_of[a_start]
        else:
            assert paragraph_of[b_start] != paragraph_of[a_start]
    assert abs(pairs.is_next.mean() - 0.5) < 0.03
    sentence_length = dict(zip(starts.tolist(), lengths.tolist()))
    assert all(sentence_length[s] == n for s, n in zip(pairs.b_start.tolist(), pairs.b_len.tolist()))


def test_random_sentences_cover_other_paragraphs_uniformly():
    rng = np.random.default_rng(1)
    sizes = np.array([2, 2, 2, 2])  # 8 sentences of length 1: offsets are sentence numbers
    counts = np.zeros(8)
    for _ in range(300):
        pairs = make_nsp_pairs(np.ones(8, int), sizes, 64, rng)
        negative = pairs.is_next == 0
        # pairs start in paragraph 0 (sentence 0): the partners must be spread over sentences 2..7
        from_first = negative & (pairs.a_start == 0)
        np.add.at(counts, pairs.b_start[from_first], 1)
    assert counts[:2].sum() == 0
    assert counts[2:].min() > 0.6 * counts[2:].mean()


def test_long_pairs_are_dropped_by_default():
    rng = np.random.default_rng(2)
    lengths, sizes = _corpus(rng)
    pairs = make_nsp_pairs(lengths, sizes, 30, rng)
    assert 0 < len(pairs) < (sizes - 1).sum()
    assert pairs.lengths().max() <= 30


def test_truncation_keeps_every_pair_within_max_len():
    rng = np.random.default_rng(3)
    lengths, sizes = _corpus(rng)
    pairs = make_nsp_pairs(lengths, sizes, 30, rng, truncate=True)
    assert len(pairs) == (sizes - 1).sum()
    assert pairs.lengths().max() <= 30 and pairs.a_len.min() >= 1 and pairs.b_len.min() >= 1


def test_truncation_trims_the_longer_sentence_first():
    a, b = truncate_pair_lengths(np.array([10, 2, 5, 5, 3]), np.array([2, 10, 5, 4, 3]), 8)
    assert a.tolist() == [6, 2, 4, 4, 3]
    assert b.tolist() == [2, 6, 4, 4, 3]
    # brute force: drop one token at a time from the longer sentence (b on ties)
    for la in range(1, 15):
        for lb in range(1, 15):
            x, y = la, lb
            while x + y > 9:
                if x > y:
                    x -= 1
                else:
                    y -= 1
            assert truncate_pair_lengths(np.array([la]), np.array([lb]), 9) == ([x], [y])


def test_one_paragraph_cannot_give_negative_pairs():
    with pytest.raises(DataError, match="only one paragraph"):
        make_nsp_pairs(np.array([3, 4, 5]), np.array([3]), 64, np.random.default_rng())


def test_max_len_too_small_for_any_pair_names_max_len():
    with pytest.raises(DataError, match=r"max_len=8.*shortest needs 9.*truncate_pairs=True"):
        make_nsp_pairs(np.array([3, 3, 3, 3]), np.array([2, 2]), 8, np.random.default_rng(0))
