"""The pretraining examples of one corpus, padded to fixed arrays one batch at a time."""
from typing import NamedTuple

import numpy as np
from mxnet import gluon

from . import seeding
from .masking import (candidate_positions, choose_mlm_positions, choose_whole_word_positions, num_mlm_slots,
                      replace_masked_tokens)
from .pairs import NUM_PAIR_SPECIALS, SentencePairs
from .vocab import CLS_ID, PAD_ID, SEP_ID, UNK_ID

# dtypes the model and the losses take as they are (integer lengths for the length-aware softmax).
BATCH_DTYPES = {"tokens": np.int32, "segments": np.int32, "valid_lens": np.int32,
                "pred_positions": np.int32, "mlm_weights": np.float32, "mlm_labels": np.int32,
                "nsp_labels": np.int32}


class PretrainingBatch(NamedTuple):
    """One batch of B examples, padded to ``max_len`` tokens and ``P = round(0.15 * max_len)`` predictions.

    Attributes:
        tokens: (B, max_len) int32 token ids, ``[PAD]`` after the valid length, masks applied.
        segments: (B, max_len) int32, 0 for ``[CLS] a [SEP]``, 1 for ``b [SEP]``, 0 for padding.
        valid_lens: (B,) int32, real tokens per example.
        pred_positions: (B, P) int32, positions to predict, sorted; 0 in padding slots.
        mlm_weights: (B, P) float32, 1.0 for real predictions, 0.0 for padding slots.
        mlm_labels: (B, P) int32, the original ids at ``pred_positions``; 0 in padding slots.
        nsp_labels: (B,) int32, 1 when ``b`` is the sentence after ``a``, else 0.
    """
    tokens: object
    segments: object
    valid_lens: object
    pred_positions: object
    mlm_weights: object
    mlm_labels: object
    nsp_labels: object


class PretrainingDataset(gluon.data.Dataset):
    """BERT pretraining examples, stored compactly, masked and padded when they are read.

    Storage grows with the corpus' tokens, not with examples x max_len: the flat token ids and five
    integers per pair. An example's masks are drawn when its batch is made, from random numbers
    keyed by (seed, example id) (and the epoch, for dynamic masking; see
    :class:`~bertpretrain.data.seeding.KeyedRandom`), so static masks are the same every epoch
    without being stored. ``dataset[i]`` is one padded example (a :class:`PretrainingBatch` of
    numpy arrays without the batch axis); :meth:`batch` pads many at once, vectorised.

    Args:
        token_ids: (T,) int32 ids of the corpus' flat token array.
        pairs: :class:`~bertpretrain.data.pairs.SentencePairs` into ``token_ids``.
        vocab_size: size of the vocabulary (random replacement words are drawn below it).
        max_len: tokens per padded example.
        seed: the seed of every random draw (see :mod:`bertpretrain.data.seeding`).
        dynamic_masking: draw new masks every epoch (RoBERTa) instead of once at construction (d2l).
        continuation: (vocab_size,) bool, True for ids of pieces that continue a word (WordPiece's
            ``##`` pieces): with it, all pieces of a chosen word are masked together (whole-word
            masking); None masks tokens independently.
        unk_targets: False never chooses the unknown token as an MLM target (nor, with whole-word
            masking, a word that has it): predicting ``<unk>`` teaches nothing; True (d2l) treats it as
            any token.
        epoch_pairs: with dynamic masking, an :class:`~bertpretrain.data.pairs.EpochPairs` giving each
            epoch its own pairs (``pairs`` must be its epoch 0); None: ``pairs`` every epoch (d2l).
    """

    def __init__(self, token_ids, pairs, vocab_size, max_len, seed, dynamic_masking=False, unk_targets=True,
                 epoch_pairs=None, continuation=None):
        if epoch_pairs is not None and not dynamic_masking:
            raise ValueError("new pairs every epoch (dynamic_pairs) need dynamic_masking=True: with static masks "
                             "the masks of an example would not follow its new pair")
        if len(pairs) and int(pairs.lengths().max()) > max_len:
            raise ValueError(f"a pair has {int(pairs.lengths().max())} tokens, more than max_len={max_len}")
        self.token_ids = np.asarray(token_ids, dtype=np.int32)
        self.pairs = pairs
        self.vocab_size = int(vocab_size)
        self.max_len = int(max_len)
        self.num_slots = num_mlm_slots(max_len)
        self.seed = seed
        self.dynamic_masking = dynamic_masking
        self.continuation = None if continuation is None else np.asarray(continuation, dtype=bool)
        self.unk_targets = unk_targets
        self.epoch_pairs = epoch_pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        return PretrainingBatch(*(field[0] for field in self.batch(np.array([index]))))

    def _draw_masks(self, indices, pairs, epoch):
        """Masks of the examples ``indices``: (n, P) positions (0 = padding slot), validity and the ids to put there."""
        key = (seeding.DYNAMIC_MASKS, epoch) if self.dynamic_masking else (seeding.STATIC_MASKS,)
        rng = seeding.KeyedRandom(self.seed, key, indices)
        width = int((pairs.a_len + pairs.b_len).max(initial=0))
        candidates = self._tokens_at(pairs, candidate_positions(pairs.a_len, width))  # (n, width) ids of "a b"
        excluded = None if self.unk_targets else candidates == UNK_ID
        if self.continuation is None:
            positions, counts = choose_mlm_positions(pairs.a_len, pairs.b_len, self.num_slots, rng, excluded)
        else:
            word_start = ~self.continuation[candidates]
            positions, counts = choose_whole_word_positions(pairs.a_len, pairs.b_len, word_start,
                                                            self.num_slots, rng, excluded)
        valid = np.arange(self.num_slots) < counts[:, None]
        replacements = replace_masked_tokens(self._tokens_at(pairs, positions), valid, self.vocab_size, rng)
        return positions, valid, replacements

    def _tokens_at(self, pairs, positions):
        """Ids of the unmasked examples of ``pairs`` at ``positions`` ((n, K) -> (n, K) int32)."""
        a_len = pairs.a_len[:, None]
        in_a = (positions >= 1) & (positions <= a_len)
        in_b = (positions >= a_len + 2) & (positions < a_len + 2 + pairs.b_len[:, None])
        source = np.where(in_a, pairs.a_start[:, None] + positions - 1,
                          np.where(in_b, pairs.b_start[:, None] + positions - a_len - 2, 0))
        ids = self.token_ids[source]
        length = (pairs.a_len + pairs.b_len + NUM_PAIR_SPECIALS)[:, None]
        specials = np.where(positions == 0, CLS_ID, np.where(positions < length, SEP_ID, PAD_ID))
        return np.where(in_a | in_b, ids, specials).astype(np.int32)

    def batch(self, indices, epoch=0):
        """Mask and pad the examples ``indices`` ((B,) ints) into a :class:`PretrainingBatch` of numpy arrays.

        ``epoch`` keys the masks when masking is dynamic, and the pairs with ``epoch_pairs`` (ignored otherwise).
        """
        indices = np.asarray(indices)
        source = self.pairs if self.epoch_pairs is None else self.epoch_pairs(epoch)
        pairs = SentencePairs(*(field[indices] for field in source))
        positions, valid, replacements = self._draw_masks(indices, pairs, epoch)

        tokens = self._tokens_at(pairs, np.broadcast_to(np.arange(self.max_len), (len(indices), self.max_len)))
        labels = np.take_along_axis(tokens, positions, axis=1)
        rows = np.broadcast_to(np.arange(len(indices))[:, None], positions.shape)
        tokens[rows[valid], positions[valid]] = replacements[valid]

        valid_lens = pairs.lengths()
        columns = np.arange(self.max_len)
        segments = (columns >= pairs.a_len[:, None] + 2) & (columns < valid_lens[:, None])
        return PretrainingBatch(
            tokens=tokens,
            segments=segments.astype(np.int32),
            valid_lens=valid_lens.astype(np.int32),
            pred_positions=positions.astype(np.int32),
            mlm_weights=valid.astype(np.float32),
            mlm_labels=np.where(valid, labels, 0).astype(np.int32),
            nsp_labels=pairs.is_next.astype(np.int32),
        )
