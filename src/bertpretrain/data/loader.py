"""Iterating over pretraining batches; ``load_data_text`` (files to batches), ``load_data_wiki`` (a WikiText split)."""
import logging
import math

import numpy as np
from mxnet import gluon
from mxnet import np as mnp

from . import seeding
from .cache import load_encoded_corpus
from .corpus import split_file
from .dataset import BATCH_DTYPES, PretrainingBatch, PretrainingDataset
from .download import download_extract
from .errors import DataError
from .pairs import EpochPairs, make_nsp_pairs
from .textfiles import check_text_format, describe, detect_format, resolve_files
from .tokenizer import load_tokenizer, train_wordpiece
from .vocab import NUM_RESERVED, UNK_ID, Vocab

logger = logging.getLogger(__name__)


def _to_mxnet(batch):
    """numpy :class:`PretrainingBatch` -> the same batch of MXNet numpy arrays on the CPU."""
    return PretrainingBatch(*(mnp.array(field, dtype=BATCH_DTYPES[name])
                              for name, field in zip(PretrainingBatch._fields, batch)))


class _EpochBatches(gluon.data.Dataset):
    """The batches of one epoch as a dataset of whole batches, for Gluon's multi-process DataLoader."""

    def __init__(self, dataset, batches, epoch):
        self.dataset, self.batches, self.epoch = dataset, batches, epoch

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.dataset.batch(self.batches[i], self.epoch)


def _single_batch(items):
    """Gluon batchify function for a dataset whose items are already whole batches."""
    return items[0]


class PretrainingLoader:
    """Batches of a :class:`PretrainingDataset` as :class:`PretrainingBatch` es of MXNet numpy arrays.

    Each ``iter()`` starts the next epoch (also after a ``break``): examples in a fresh order drawn from ``(seed, epoch)`` (in
    order when ``shuffle`` is False), the last batch smaller when the batch size does not divide the
    dataset, or left out with ``drop_last`` (its examples come in other epochs' batches when
    shuffled). :meth:`state_dict` / :meth:`load_state_dict` save and restore the position (epoch and
    batches already given), so an interrupted run can resume exactly where it stopped.

    For data-parallel training over several processes, :meth:`shard` makes each process read its
    own share of every epoch.
    """

    def __init__(self, dataset, batch_size, shuffle=True, num_workers=0, drop_last=False):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.num_workers = int(num_workers)
        self.drop_last = bool(drop_last)
        if self.drop_last and len(dataset) < self.batch_size:
            raise ValueError(f"drop_last=True with batch_size={self.batch_size} leaves no batch of the "
                             f"{len(dataset)} examples: lower batch_size or pass drop_last=False")
        self._next_epoch = 0        # the epoch a fresh iter() starts
        self._position = (0, 0)     # (epoch, batches given): just after the last batch given
        self._resume = False        # True after load_state_dict: the next iter() starts at _position
        self.shard_index, self.num_shards = 0, 1

    def shard(self, index, count):
        """Read only share ``index`` of ``count`` of every epoch (e.g. this worker's, by rank).

        Every shard draws the same epoch order (from the seed) and takes every ``count``-th example
        of it, starting at ``index``, cut to the same length for all shards (so that workers take
        the same number of steps per epoch). Returns the loader.
        """
        if not 0 <= index < count:
            raise ValueError(f"shard index must be in [0, {count}), got {index}")
        if len(self.dataset) < count:
            raise ValueError(f"{len(self.dataset)} examples cannot be shared by {count} workers")
        self.shard_index, self.num_shards = int(index), int(count)
        return self

    def _examples_per_epoch(self):
        return len(self.dataset) // self.num_shards

    def __len__(self):
        batches = self._examples_per_epoch() / self.batch_size
        return math.floor(batches) if self.drop_last else math.ceil(batches)

    def _epoch_batches(self, epoch):
        order = (seeding.stream(self.dataset.seed, seeding.EPOCH_ORDER, epoch).permutation(len(self.dataset))
                 if self.shuffle else np.arange(len(self.dataset)))
        order = order[self.shard_index:self._examples_per_epoch() * self.num_shards:self.num_shards]
        return [order[i:i + self.batch_size] for i in range(0, len(self) * self.batch_size, self.batch_size)]

    def __iter__(self):
        epoch, first = self._position if self._resume else (self._next_epoch, 0)
        self._resume, self._next_epoch, self._position = False, epoch + 1, (epoch, first)
        batches = self._epoch_batches(epoch)[first:]
        if self.num_workers:
            loader = gluon.data.DataLoader(_EpochBatches(self.dataset, batches, epoch), batch_size=1,
                                           batchify_fn=_single_batch, num_workers=self.num_workers)
        else:
            loader = (self.dataset.batch(b, epoch) for b in batches)
        for given, batch in enumerate(loader, start=first + 1):
            self._position = (epoch, given) if given < len(self) else (epoch + 1, 0)
            yield _to_mxnet(batch)

    def state_dict(self):
        """Where the next ``iter()`` would resume: ``{'epoch': e, 'batches_given': k}``.

        Taken while an epoch is being iterated, it points just after the last batch given.
        """
        epoch, given = self._position
        return {"epoch": epoch, "batches_given": given}

    def load_state_dict(self, state):
        """Make the next ``iter()`` continue from a position returned by :meth:`state_dict`."""
        self._position, self._resume = (int(state["epoch"]), int(state["batches_given"])), True


def _warn_if_foreign(path, token_ids, vocab):
    """Warn when far more of ``token_ids`` (T,) are ``<unk>`` than in the corpus ``vocab`` was built from
    (more than twice its rate plus 2 points): the vocabulary then most likely comes from another corpus.
    A split of the same corpus stays well below (WikiText-2's test split has 1.5 times its valid split's rate
    with the valid split's vocabulary)."""
    if getattr(vocab, "unk_rate", None) is None or not len(token_ids):  # tokenizers record no rate
        return
    rate = np.count_nonzero(token_ids == UNK_ID) / len(token_ids)
    if rate > 2 * vocab.unk_rate + 0.02:
        logger.warning("%s: %.0f%% of its tokens become <unk> with the vocabulary given, against %.0f%% in the "
                       "corpus it was built from: the vocabulary most likely comes from another corpus. Build it "
                       "from this corpus's training split (vocab=None), or pass the vocabulary that belongs to "
                       "it", path, 100 * rate, 100 * vocab.unk_rate)


def _check_dataset_options(max_len, min_freq, dynamic_masking, truncate_pairs, dynamic_pairs):
    if not isinstance(max_len, (int, np.integer)) or max_len < 5:
        raise ValueError(f"max_len must be an integer >= 5 ([CLS] a [SEP] b [SEP] with one word each), "
                         f"got {max_len!r}")
    if not isinstance(min_freq, (int, np.integer)) or min_freq < 1:
        raise ValueError(f"min_freq must be an integer >= 1, got {min_freq!r}")
    if dynamic_pairs and not (dynamic_masking and truncate_pairs):
        raise ValueError("dynamic_pairs=True draws new pairs every epoch: it needs dynamic_masking=True (new masks "
                         "for the new pairs) and truncate_pairs=True (the same number of examples every epoch)")


def build_dataset(path, max_len=64, *, min_freq=5, seed=None, vocab=None, dynamic_masking=False,
                  truncate_pairs=False, unk_targets=True, dynamic_pairs=False, cache="auto", cache_dir=None,
                  tokenizer=None, whole_word_masking=False, text_format="wikitext", lowercase=True):
    """Read the file(s) ``path`` into a :class:`PretrainingDataset`, returning ``(dataset, vocab)``.

    The vocabulary is counted from these files unless ``vocab`` is given, or ``tokenizer`` (see
    :func:`load_data_wiki`), which is then returned as ``vocab``. ``cache``, ``cache_dir``, ``text_format``
    (``'wikitext'`` or ``'bert'``) and ``lowercase``: see :func:`~bertpretrain.data.cache.load_encoded_corpus`.
    """
    if tokenizer is not None:
        if vocab is not None:
            raise ValueError("pass either vocab= (word-level) or tokenizer=, not both")
        vocab, _ = load_tokenizer(tokenizer)
    _check_dataset_options(max_len, min_freq, dynamic_masking, truncate_pairs, dynamic_pairs)
    seed = seeding.resolve_seed(seed)
    given = vocab
    corpus, vocab = load_encoded_corpus(path, vocab, min_freq, cache, cache_dir, text_format=text_format,
                                        lowercase=lowercase)
    name = corpus.path
    if given is not None:
        _warn_if_foreign(name, corpus.token_ids, given)
    if vocab.num_words < 1:
        raise ValueError(f"the vocabulary of {name} has no word seen at least min_freq={min_freq} times; "
                         "lower min_freq or use a larger corpus")
    starts, lengths, paragraph_sizes = corpus.shuffled_sentences(seed)
    epoch_pairs = EpochPairs(lengths, paragraph_sizes, max_len, seed, starts, name) if dynamic_pairs else None
    pairs = (epoch_pairs(0) if dynamic_pairs else
             make_nsp_pairs(lengths, paragraph_sizes, max_len, seeding.stream(seed, seeding.NSP_PARTNERS),
                            truncate=truncate_pairs, path=name, sentence_starts=starts))
    continuation = getattr(vocab, "continuation", None) if whole_word_masking else None
    dataset = PretrainingDataset(corpus.token_ids, pairs, len(vocab), max_len, seed, dynamic_masking, unk_targets,
                                 epoch_pairs, continuation)
    logger.info("%s: %d documents, %d sentences, %d tokens -> %d examples (max_len %d, vocab %d)", name,
                len(paragraph_sizes), len(lengths), len(corpus.token_ids), len(dataset), max_len, len(vocab))
    return dataset, vocab


def _lowercases(tokenizer):
    """Whether a WordPiece tokenizer lower-cases the text it encodes (its normaliser)."""
    normalizer = tokenizer.tokenizer.normalizer
    return normalizer is not None and normalizer.normalize_str("A") == "a"


def _text_tokenizer(tokenizer, vocab, paths, text_format, lowercase, vocab_size):
    """What encodes the text, and whether the reader lower-cases it: ``(vocab, tokenizer, reader_lowercase)``.

    The rules of :func:`load_data_text`'s ``tokenizer`` and ``lowercase``; refuses what cannot work.
    """
    name = describe(paths)
    if isinstance(tokenizer, str) and tokenizer == "wordpiece":
        if vocab is not None:
            raise ValueError("pass either vocab= (word-level) or tokenizer='wordpiece', not both")
        tokenizer = train_wordpiece(paths, vocab_size=vocab_size, lowercase=lowercase is not False)
    elif tokenizer is not None:
        if vocab is not None:
            raise ValueError("pass either vocab= (word-level) or tokenizer=, not both")
        tokenizer, _ = load_tokenizer(tokenizer, lowercase=lowercase is not False)
        if isinstance(tokenizer, Vocab):  # a word-level tokenizer.json, or a Vocab passed as tokenizer=
            tokenizer, vocab = None, tokenizer
    if tokenizer is None:
        if text_format == "bert":
            raise DataError(f"{name} is in BERT's format (raw text), which needs a subword tokenizer: pass "
                            "tokenizer='wordpiece' (trained on these files) or a tokenizer.json / vocab.txt. The "
                            "word-level vocabulary splits on spaces only, so raw text's 'end.' and 'end' would be "
                            "different words; it is meant for WikiText, whose punctuation is already split off")
        if lowercase is False:
            raise ValueError("lowercase=False: the word-level vocabulary is lower-cased (d2l's reading of WikiText, "
                             "and its exported tokenizer lower-cases); keep the case with a WordPiece tokenizer "
                             "(tokenizer='wordpiece')")
        return vocab, None, True
    if lowercase is False and _lowercases(tokenizer):
        raise ValueError(f"lowercase=False, but {tokenizer.source} lower-cases the text it encodes: pass a cased "
                         "tokenizer, or leave lowercase unset")
    reader_lowercase = lowercase is not False if text_format == "wikitext" else bool(lowercase)
    return None, tokenizer, reader_lowercase


def load_data_text(files, batch_size, max_len=64, *, text_format="auto", tokenizer=None, vocab=None,
                   lowercase=None, vocab_size=30522, min_freq=5, seed=None, shuffle=True, num_workers=0,
                   dynamic_masking=False, truncate_pairs=False, unk_targets=True, dynamic_pairs=False,
                   drop_last=False, cache="auto", cache_dir=None, whole_word_masking=False):
    """Pretraining batches of your own text files, and their vocabulary (or tokenizer).

    Args:
        files: a file, a folder (its ``*.txt``, ``*.text``, ``*.tokens``, ``*.raw`` files at any depth), a glob
            (``'shards/*.txt.gz'``), or a list of them; ``.gz`` files are decompressed as they are read. The
            documents of all files follow each other (a file ends its last document).
        batch_size: examples per batch (the last batch of an epoch may be smaller, see ``drop_last``).
        max_len: tokens per example, ``[CLS]`` and ``[SEP]`` included.
        text_format: ``'bert'``: Google BERT's pretraining input, one sentence per line and a blank line
            between documents, raw text; ``'wikitext'``: WikiText's, one paragraph per line (a document),
            sentences split on ``' . '``, words and punctuation separated by spaces; ``'auto'``: detected
            from each file's first 256 KB, with an error naming the file when it fits neither or both.
            Next-sentence pairs are drawn inside a document, their negatives from other documents.
        tokenizer: None: a word-level vocabulary (``vocab``, or counted from these files at ``min_freq``),
            for WikiText only (raw text needs subwords); ``'wordpiece'``: BERT's WordPiece tokenizer,
            trained on these files (``vocab_size`` ids); or a tokenizer to reuse: a
            :class:`~bertpretrain.data.tokenizer.WordPieceTokenizer`, a ``tokenizer.json`` or a BERT
            ``vocab.txt`` (see :func:`~bertpretrain.data.tokenizer.load_tokenizer`).
        vocab: a word-level :class:`Vocab` to reuse (e.g. the training files' for validation files).
        lowercase: lower-case the text. None: WikiText yes (d2l's reading); BERT's format as the tokenizer
            does (one trained here lower-cases: uncased BERT). False keeps the case: it needs a cased
            WordPiece tokenizer (one trained here is, with ``lowercase=False``).
        vocab_size: the size of the WordPiece vocabulary trained with ``tokenizer='wordpiece'``.
        min_freq, seed, shuffle, num_workers, dynamic_masking, truncate_pairs, unk_targets, dynamic_pairs,
        drop_last, whole_word_masking, cache, cache_dir: as for :func:`load_data_wiki`. Through the cache
            (``'auto'``: corpora of 32 MB or more) the encoded corpus is memory-mapped, so memory does not
            grow with the corpus.
    Returns:
        ``(loader, vocab)``: a :class:`PretrainingLoader` of :class:`PretrainingBatch` es and the vocabulary
        or tokenizer (pass it as ``tokenizer=`` / ``vocab=`` for the validation files).
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    check_text_format(text_format)
    if lowercase not in (None, True, False):
        raise ValueError(f"lowercase must be True, False or None (the tokenizer's own), got {lowercase!r}")
    if not isinstance(vocab_size, (int, np.integer)) or vocab_size <= NUM_RESERVED:
        raise ValueError(f"vocab_size must be an integer > {NUM_RESERVED} (the reserved tokens), got {vocab_size!r}")
    _check_dataset_options(max_len, min_freq, dynamic_masking, truncate_pairs, dynamic_pairs)
    paths = resolve_files(files, "files")
    if text_format == "auto":
        text_format = detect_format(paths)
        logger.info("%s: read as %s", describe(paths), "BERT's format" if text_format == "bert" else "WikiText")
    vocab, tokenizer, reader_lowercase = _text_tokenizer(tokenizer, vocab, paths, text_format, lowercase,
                                                         vocab_size)
    data, vocab = build_dataset(paths, max_len, min_freq=min_freq, seed=seed, vocab=vocab, tokenizer=tokenizer,
                                dynamic_masking=dynamic_masking, truncate_pairs=truncate_pairs,
                                unk_targets=unk_targets, dynamic_pairs=dynamic_pairs, cache=cache,
                                cache_dir=cache_dir, whole_word_masking=whole_word_masking,
                                text_format=text_format, lowercase=reader_lowercase)
    return PretrainingLoader(data, batch_size, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last), vocab


def load_data_wiki(batch_size, max_len=64, dataset="wikitext-2", *, split="train", data_dir=None,
                   min_freq=5, seed=None, shuffle=True, num_workers=0, dynamic_masking=False, vocab=None,
                   truncate_pairs=False, unk_targets=True, dynamic_pairs=False, drop_last=False, cache="auto",
                   cache_dir=None, verify=False, tokenizer=None, whole_word_masking=False):
    """Pretraining batches of a WikiText split, and its vocabulary (or tokenizer).

    :func:`load_data_text` on the file ``wiki.<split>.tokens``, read as WikiText.

    Args:
        batch_size: examples per batch (the last batch of an epoch may be smaller, see ``drop_last``).
        max_len: tokens per example, ``[CLS]`` and ``[SEP]`` included.
        dataset: a name in :data:`~bertpretrain.data.DATA_HUB`, downloaded and verified on first use.
        split: ``'train'``, ``'valid'`` or ``'test'``: reads ``wiki.<split>.tokens``.
        data_dir: a folder already holding ``wiki.<split>.tokens``; no download then.
        min_freq: least count of a word to get its own id (others become ``<unk>``).
        seed: seed of every random choice (None: fresh randomness).
        shuffle: a new example order every epoch.
        drop_last: leave out each epoch's last batch when it is short, so every step has ``batch_size``
            examples (False: keep it, as d2l).
        num_workers: worker processes preparing batches (0: in this process).
        dynamic_masking: new masks every epoch (RoBERTa) rather than once (d2l, the default).
        vocab: a :class:`Vocab` to reuse (e.g. the training one when loading the validation split).
        truncate_pairs: shorten pairs longer than ``max_len`` instead of dropping them.
        unk_targets: False never chooses a ``<unk>`` word as an MLM target (True: any word, as d2l).
        dynamic_pairs: new NSP pairs and negatives every epoch (needs ``dynamic_masking`` and
            ``truncate_pairs``), so that they cannot be memorised; False: drawn once (d2l).
        cache: keep the encoded corpus on disk for later runs: True, False, or ``'auto'`` (files >= 32 MB).
        cache_dir: cache root for downloads and encoded corpora (default ``$BERTPRETRAIN_HOME``, else the
            user's cache folder).
        verify: hash a cached download's files again rather than trust their recorded size and mtime.
        tokenizer: encode subword pieces instead of words: a
            :class:`~bertpretrain.data.tokenizer.WordPieceTokenizer` (e.g. from ``train_wordpiece``), a
            ``tokenizer.json`` or a BERT ``vocab.txt`` (see ``load_tokenizer``); ``min_freq`` is then unused.
        whole_word_masking: mask all pieces of a chosen word together (with a WordPiece tokenizer;
            words are single tokens otherwise).
    Returns:
        ``(loader, vocab)``: a :class:`PretrainingLoader` of :class:`PretrainingBatch` es and the vocabulary.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if data_dir is None:
        data_dir = download_extract(dataset, cache_dir=cache_dir, verify=verify)
    return load_data_text(split_file(data_dir, split), batch_size, max_len, text_format="wikitext",
                          tokenizer=tokenizer, vocab=vocab, min_freq=min_freq, seed=seed, shuffle=shuffle,
                          num_workers=num_workers, dynamic_masking=dynamic_masking, truncate_pairs=truncate_pairs,
                          unk_targets=unk_targets, dynamic_pairs=dynamic_pairs, drop_last=drop_last, cache=cache,
                          cache_dir=cache_dir, whole_word_masking=whole_word_masking)
