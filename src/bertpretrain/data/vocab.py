"""The token vocabulary: reserved tokens first, then words by descending frequency."""
import collections
import collections.abc
import json
import os

import numpy as np

from ..files import VOCAB_FILE, atomic_write
from .errors import DataError

UNK, PAD, CLS, SEP, MASK = "<unk>", "[PAD]", "[CLS]", "[SEP]", "[MASK]"
RESERVED_TOKENS = (UNK, PAD, CLS, SEP, MASK)
UNK_ID, PAD_ID, CLS_ID, SEP_ID, MASK_ID = range(len(RESERVED_TOKENS))
NUM_RESERVED = len(RESERVED_TOKENS)
_FORMAT = "bertpretrain-vocab-v1"


class _TokenToId(dict):
    """token -> id; an unknown token maps to ``<unk>``'s id without a Python-level branch per token."""

    def __missing__(self, token):
        return UNK_ID


class TokenTable:
    """Lookups shared by :class:`Vocab` and :class:`~bertpretrain.data.tokenizer.WordPieceTokenizer`: a
    subclass sets ``idx_to_token`` (list) and ``token_to_idx`` (a :class:`_TokenToId`, unknown -> ``<unk>``).

    ``source_order`` is None when the ids are those of the file the table was read from, else the (V,) int64
    permutation ``source_order[id] = the file's id`` that loading applied (to put the reserved tokens at ids
    0-4, see :func:`~bertpretrain.data.load_tokenizer`): reorder a model's token rows with it.
    """

    source_order = None

    def __len__(self):
        return len(self.idx_to_token)

    def __contains__(self, token):
        return token in self.token_to_idx

    def __getitem__(self, tokens):
        """The id of a token, or the list of ids of a list/tuple of tokens (unknown -> 0)."""
        if isinstance(tokens, (list, tuple)):
            return list(map(self.token_to_idx.__getitem__, tokens))
        return self.token_to_idx[tokens]

    def lookup_array(self, tokens):
        """Ids of a sequence of tokens as an int32 array of shape (len(tokens),)."""
        return np.fromiter(map(self.token_to_idx.__getitem__, tokens), dtype=np.int32, count=len(tokens))

    def to_tokens(self, ids):
        """The token of an id, or the list of tokens of a sequence/array of ids."""
        if isinstance(ids, (int, np.integer)):
            return self.idx_to_token[ids]
        return [self.idx_to_token[int(i)] for i in ids]

    @property
    def num_words(self):
        """How many ids are real words or pieces (neither ``<unk>`` nor another reserved token)."""
        return len(self) - NUM_RESERVED


class Vocab(TokenTable):
    """Maps tokens to integer ids and back.

    Ids: ``<unk>`` 0, ``[PAD]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4, then every word seen at
    least ``min_freq`` times, by descending frequency with ties in alphabetical order (so the ids
    do not depend on the order the corpus was read in). Words spelled like a reserved token
    (WikiText contains the literal ``<unk>``) keep the reserved id.

    Args:
        tokens: an iterable of tokens (str), or a mapping token -> count.
        min_freq: the least count for a word to get its own id.

    ``unk_rate`` is the share of those tokens that map to ``<unk>`` (rare words and WikiText's literal
    ``<unk>``; None for an empty corpus): what a corpus encoded with this vocabulary is expected to
    show, so that a vocabulary from another corpus can be recognised.
    """

    FILE_NAME = VOCAB_FILE  # what it is saved as beside a model

    def __init__(self, tokens=(), min_freq=5):
        if not isinstance(min_freq, (int, np.integer)) or min_freq < 1:
            raise ValueError(f"min_freq must be an integer >= 1, got {min_freq!r}")
        counts = tokens if isinstance(tokens, collections.abc.Mapping) else collections.Counter(tokens)
        words = sorted((word for word, count in counts.items()
                        if count >= min_freq and word not in RESERVED_TOKENS),
                       key=lambda word: (-counts[word], word))
        self._set_tokens(list(RESERVED_TOKENS) + words)
        self.min_freq = int(min_freq)
        total = sum(counts.values())
        unknown = total - sum(counts[token] for token in counts if self.token_to_idx[token] != UNK_ID)
        self.unk_rate = unknown / total if total else None

    def _set_tokens(self, idx_to_token):
        self.idx_to_token = idx_to_token
        self.token_to_idx = _TokenToId((token, idx) for idx, token in enumerate(idx_to_token))

    def save(self, path):
        """Write the vocabulary as JSON (atomically: a crash never leaves a half-written file)."""
        payload = {"format": _FORMAT, "min_freq": self.min_freq, "unk_rate": self.unk_rate,
                   "idx_to_token": self.idx_to_token}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write(path, json.dumps(payload, ensure_ascii=False))

    @classmethod
    def load(cls, path):
        """Read a vocabulary written by :meth:`save`."""
        try:
            with open(path, encoding="utf-8") as f:
                payload = json.load(f)
        except FileNotFoundError:
            raise DataError(f"vocabulary file {path} does not exist; save one with Vocab.save(path)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"vocabulary file {path} is not valid JSON ({error}); "
                            "write it again with Vocab.save(path)") from None
        tokens = payload.get("idx_to_token") if isinstance(payload, dict) else None
        if (payload.get("format") != _FORMAT or not isinstance(tokens, list)
                or tuple(tokens[:NUM_RESERVED]) != RESERVED_TOKENS):
            raise DataError(f"{path} is not a bertpretrain vocabulary (expected format {_FORMAT!r} whose "
                            f"first tokens are {list(RESERVED_TOKENS)}); write it again with Vocab.save(path)")
        vocab = cls.__new__(cls)
        vocab._set_tokens(tokens)
        vocab.min_freq = int(payload.get("min_freq", 1))
        vocab.unk_rate = payload.get("unk_rate")  # None in files written before it was recorded
        return vocab

    def __repr__(self):
        return f"Vocab(size={len(self)}, min_freq={self.min_freq})"
