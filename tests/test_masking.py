"""Masked-LM statistics over many draws: what is chosen, how many, and what replaces it."""
import os

import numpy as np
import pytest

from bertpretrain.data import (CLS_ID, MASK_ID, NUM_RESERVED, PAD_ID, SEP_ID, build_dataset, choose_mlm_positions,
                               num_mlm_predictions, num_mlm_slots, replace_masked_tokens)
from masking_checks import check_masks  # (tests/ is on sys.path)


def test_number_of_predictions_follows_the_15_percent_rule():
    lengths = np.arange(5, 600)
    expected = [max(1, round(0.15 * n)) for n in lengths]
    assert num_mlm_predictions(lengths).tolist() == expected
    assert num_mlm_slots(64) == 10 and num_mlm_slots(128) == 19 and num_mlm_slots(512) == 77


def test_positions_are_sorted_distinct_and_never_special():
    rng = np.random.default_rng(0)
    a_len, b_len = rng.integers(1, 60, 5000), rng.integers(1, 60, 5000)
    slots = num_mlm_slots(123)
    positions, counts = choose_mlm_positions(a_len, b_len, slots, rng)
    assert positions.shape == (5000, slots)
    assert counts.tolist() == [max(1, round(0.15 * (a + b + 3))) for a, b in zip(a_len, b_len)]
    for row, n, a, b in zip(positions, counts, a_len, b_len):
        chosen = row[:n]
        assert (np.diff(chosen) > 0).all()
        assert (chosen >= 1).all() and (chosen <= a + b + 1).all()
        assert a + 1 not in chosen, "[SEP] after sentence a was chosen"
        assert (row[n:] == 0).all()


def test_every_candidate_position_is_equally_likely():
    rng = np.random.default_rng(1)
    draws = 40000
    a_len, b_len = np.full(draws, 7), np.full(draws, 12)  # L = 22 -> 3 predictions among 19 candidates
    positions, counts = choose_mlm_positions(a_len, b_len, 5, rng)
    hits = np.bincount(positions[:, :3].ravel(), minlength=22)
    candidates = [p for p in range(22) if p not in (0, 8, 21)]
    assert hits[[0, 8, 21]].sum() == 0
    frequency = hits[candidates] / draws
    assert np.allclose(frequency, 3 / 19, atol=0.01), frequency


def test_replacements_are_80_10_10_and_random_words_are_never_special():
    rng = np.random.default_rng(2)
    vocab_size = 1000
    labels = rng.integers(NUM_RESERVED, vocab_size, size=(50000, 4))
    valid = np.ones_like(labels, dtype=bool)
    out = replace_masked_tokens(labels, valid, vocab_size, rng)
    masked = out == MASK_ID
    kept = out == labels
    random_word = ~masked & ~kept
    assert abs(masked.mean() - 0.8) < 0.006
    assert abs(kept.mean() - (0.1 + 0.1 / (vocab_size - NUM_RESERVED))) < 0.004
    assert abs(random_word.mean() - 0.1) < 0.004
    assert out[random_word].min() >= NUM_RESERVED and out[random_word].max() < vocab_size
    # the random words are spread over the whole vocabulary, not one id (the draft inserted <unk>)
    assert len(np.unique(out[random_word])) > 0.9 * (vocab_size - NUM_RESERVED)


def test_padding_slots_are_left_alone():
    rng = np.random.default_rng(3)
    labels = np.full((1000, 3), 42)
    valid = np.zeros_like(labels, dtype=bool)
    assert (replace_masked_tokens(labels, valid, 100, rng) == 42).all()


def test_vocab_without_words_is_rejected():
    with pytest.raises(ValueError, match="no real word"):
        replace_masked_tokens(np.zeros((1, 1), int), np.ones((1, 1), bool), NUM_RESERVED, np.random.default_rng())


def test_masking_on_real_corpus(wiki_dir):
    """The whole pipeline: 15% of tokens predicted, 80/10/10, labels are the original tokens."""
    dataset, vocab = build_dataset(str(wiki_dir / "wiki.train.tokens"), 64, seed=5)
    assert [vocab[t] for t in ("[CLS]", "[SEP]", "[PAD]")] == [CLS_ID, SEP_ID, PAD_ID]  # what check_masks excludes
    check_masks(dataset)


def test_excluded_candidates_are_never_chosen_and_cap_the_count():
    rng = np.random.default_rng(4)
    a_len, b_len = np.array([3, 4, 2]), np.array([4, 3, 2])
    excluded = np.zeros((3, 7), dtype=bool)
    excluded[0, [0, 5]] = True      # words 0 and 5 of row 0: positions 1 and 7
    excluded[2, :3] = True          # row 2 keeps only word 3 (position 5)
    for _ in range(200):
        positions, counts = choose_mlm_positions(a_len, b_len, 3, rng, excluded)
        assert counts.tolist() == [2, 2, 1]
        assert not {1, 7} & set(positions[0, :2].tolist())
        assert positions[2].tolist() == [5, 0, 0]
    every = np.ones((3, 7), dtype=bool)
    positions, counts = choose_mlm_positions(a_len, b_len, 3, rng, every)
    assert counts.tolist() == [0, 0, 0] and (positions == 0).all()


def test_unk_targets_false_never_predicts_unk():
    from bertpretrain.data import UNK_ID, download_extract
    path = os.path.join(download_extract("wikitext-2-sample"), "wiki.train.tokens")
    with_unk, _ = build_dataset(path, 64, seed=5)
    without, _ = build_dataset(path, 64, seed=5, unk_targets=False)
    everything = np.arange(len(with_unk))
    before, after = with_unk.batch(everything), without.batch(everything)
    targets = before.mlm_weights.astype(bool)
    assert (before.mlm_labels[targets] == UNK_ID).mean() > 0.05  # the sample has <unk> targets to avoid
    kept = after.mlm_weights.astype(bool)
    assert not (after.mlm_labels[kept] == UNK_ID).any()
    assert kept.sum() > 0.95 * targets.sum()  # examples with few other words give up slots, not many
    # an <unk> is then never replaced either: every <unk> of the input is still there
    np.testing.assert_array_equal(after.tokens == UNK_ID,
                                  without._tokens_at(without.pairs, np.broadcast_to(np.arange(64), after.tokens.shape))
                                  == UNK_ID)
