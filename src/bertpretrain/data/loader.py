"""Iterating over pretraining batches; ``load_data_text`` (files to batches), ``load_data_wiki`` (a WikiText split)."""
import logging
import math

import numpy as np
from mxnet import gluon
from mxnet import np as mnp

from . import seeding
from .cache import load_encoded_corpus
from .config import DataConfig
from .corpus import split_file
from .dataset import BATCH_DTYPES, PretrainingBatch, PretrainingDataset
from .download import download_extract
from .errors import DataError
from .pairs import EpochPairs, make_nsp_pairs
from ..options import OptionError
from .textfiles import describe, detect_format, resolve_files
from .tokenizer import load_tokenizer, train_wordpiece
from .vocab import UNK_ID, Vocab

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


def _lowercases(tokenizer):
    """Whether a WordPiece tokenizer lower-cases the text it encodes (its normaliser)."""
    normalizer = tokenizer.tokenizer.normalizer
    return normalizer is not None and normalizer.normalize_str("A") == "a"


def _encoder(config, vocab, paths, text_format):
    """What encodes ``paths``, and whether their reader lower-cases the text: ``(vocab, reader_lowercase)``.

    ``vocab`` when given (e.g. the training files' for held-out ones), else ``config.tokenizer``: None for
    ``'word'`` (a vocabulary counted from the files, WikiText only: raw text needs subwords), a WordPiece
    tokenizer trained on the files for ``'wordpiece'``, or the tokenizer of a file or object. ``config.lowercase``:
    None reads WikiText lower-cased (d2l) and leaves BERT's format to the tokenizer. Refuses what cannot work.
    """
    name, lowercase, spec = describe(paths), config.lowercase, config.tokenizer
    if vocab is None and spec == "wordpiece":
        vocab = train_wordpiece(paths, vocab_size=config.vocab_size, lowercase=lowercase is not False)
    elif vocab is None and spec not in (None, "word"):
        vocab = load_tokenizer(spec, lowercase=lowercase is not False)
    if vocab is None or isinstance(vocab, Vocab):  # a word-level vocabulary
        if text_format == "bert":
            raise DataError(f"{name} is in BERT's format (raw text), which needs a subword tokenizer: pass "
                            "--tokenizer wordpiece (tokenizer='wordpiece', trained on these files) or a "
                            "tokenizer.json / vocab.txt. The word-level vocabulary splits on spaces only, so raw "
                            "text's 'end.' and 'end' would be different words; it is meant for WikiText, whose "
                            "punctuation is already split off")
        if lowercase is False:
            raise OptionError("lowercase (--no-lowercase) keeps the case, but the word-level vocabulary is lower-cased "
                              "(d2l's reading of WikiText, and its exported tokenizer lower-cases): keep the case with "
                              "a WordPiece tokenizer (--tokenizer wordpiece)")
        return vocab, True
    if lowercase is False and _lowercases(vocab):
        raise OptionError(f"lowercase (--no-lowercase) keeps the case, but {vocab.source} lower-cases the text it "
                          "encodes: pass a cased tokenizer, or leave lowercase unset")
    return vocab, (lowercase is not False if text_format == "wikitext" else bool(lowercase))


def _build(paths, config, seed, vocab, cache, cache_dir, text_format):
    """:func:`build_dataset` of a checked :class:`DataConfig` on the file(s) ``paths`` in ``text_format``."""
    given = vocab
    vocab, reader_lowercase = _encoder(config, vocab, paths, text_format)
    seed = seeding.resolve_seed(seed)
    corpus, vocab = load_encoded_corpus(paths, vocab, config.min_freq, cache, cache_dir, text_format=text_format,
                                        lowercase=reader_lowercase)
    name = corpus.path
    if given is not None:
        _warn_if_foreign(name, corpus.token_ids, given)
    if vocab.num_words < 1:
        raise ValueError(f"the vocabulary of {name} has no word seen at least min_freq={config.min_freq} times; "
                         "lower min_freq or use a larger corpus")
    max_len = config.max_len
    starts, lengths, paragraph_sizes = corpus.shuffled_sentences(seed)
    epoch_pairs = EpochPairs(lengths, paragraph_sizes, max_len, seed, starts, name) if config.dynamic_pairs else None
    pairs = (epoch_pairs(0) if config.dynamic_pairs else
             make_nsp_pairs(lengths, paragraph_sizes, max_len, seeding.stream(seed, seeding.NSP_PARTNERS),
                            truncate=config.truncate_pairs, path=name, sentence_starts=starts))
    continuation = getattr(vocab, "continuation", None) if config.whole_word_masking else None
    dataset = PretrainingDataset(corpus.token_ids, pairs, len(vocab), max_len, seed, config.dynamic_masking,
                                 config.unk_targets, epoch_pairs, continuation)
    logger.info("%s: %d documents, %d sentences, %d tokens -> %d examples (max_len %d, vocab %d)", name,
                len(paragraph_sizes), len(lengths), len(corpus.token_ids), len(dataset), max_len, len(vocab))
    return dataset, vocab


def _check_one_vocabulary(vocab, options):
    """Refuse both ``vocab`` and a ``tokenizer`` option from a caller of the keyword forms."""
    if vocab is not None and options.get("tokenizer") not in (None, "word"):
        raise ValueError("pass either vocab= (the training split's vocabulary or tokenizer) or tokenizer=, not both")


def build_dataset(path, max_len=DataConfig.max_len, *, seed=None, vocab=None, cache="auto", cache_dir=None,
                  **options):
    """Read the file(s) ``path`` into a :class:`PretrainingDataset`, returning ``(dataset, vocab)``.

    ``options`` are fields of :class:`DataConfig` (``min_freq``, ``dynamic_masking``, ``truncate_pairs``,
    ``tokenizer``, ``text_format`` (default here: ``'wikitext'``), ``lowercase``, ...), checked there. The
    vocabulary is counted from the files unless ``vocab`` (e.g. the training split's) or a ``tokenizer`` is
    given, which is then returned as ``vocab``; ``seed``: see :func:`load_data`; ``cache`` and ``cache_dir``:
    see :func:`~bertpretrain.data.cache.load_encoded_corpus`.
    """
    _check_one_vocabulary(vocab, options)
    config = DataConfig(max_len=max_len, **{"text_format": "wikitext", **options})
    paths = resolve_files(path, "path")
    text_format = detect_format(paths) if config.text_format == "auto" else config.text_format
    return _build(paths, config, seed, vocab, cache, cache_dir, text_format)


def _split_files(config, split, cache_dir):
    """The files of ``split`` and their format: ``config.train_files`` / ``valid_files`` (their format
    detected when ``text_format`` is ``'auto'``), else ``wiki.<split>.tokens`` of ``config.data_dir`` or of the
    dataset ``config.dataset`` (downloaded and verified on first use)."""
    own = {"train": config.train_files, "valid": config.valid_files}.get(split)
    if config.train_files:
        if own is None:
            raise DataError(f"there are no {split} files: pass --valid-file (valid_files=) for held-out text"
                            if split == "valid" else f"split {split!r} has no files of its own: use 'train' or "
                            "'valid'")
        paths = resolve_files(own, f"--{split}-file")
        text_format = config.text_format
        if text_format == "auto":
            text_format = detect_format(paths)
            logger.info("%s: read as %s", describe(paths), "BERT's format" if text_format == "bert" else "WikiText")
        return paths, text_format
    data_dir = config.data_dir
    if data_dir is None:
        data_dir = download_extract(config.dataset, cache_dir=cache_dir, verify=config.verify)
    return [split_file(data_dir, split)], "wikitext"


def load_data(config, split="train", *, vocab=None, seed=None, shuffle=True, cache="auto", cache_dir=None):
    """Pretraining batches of a split, and its vocabulary (or tokenizer), as :class:`DataConfig` ``config`` says.

    Args:
        config: the data options (:class:`DataConfig`): your own files (``train_files``, ``valid_files``: files,
            folders or globs, ``.gz`` too, in BERT's format or WikiText's) or a WikiText dataset.
        split: ``'train'`` or ``'valid'`` (your own files), or ``'train'``, ``'valid'``, ``'test'`` of WikiText.
        vocab: the vocabulary or tokenizer to encode with (e.g. the training split's when loading the validation
            split); default: ``config.tokenizer`` (a word vocabulary counted from this split, a WordPiece
            tokenizer trained on it, or a tokenizer file).
        seed: seed of every random choice (None: fresh randomness).
        shuffle: a new example order every epoch.
        cache: keep the encoded corpus on disk for later runs: True, False, or ``'auto'`` (32 MB of text or more;
            a cached corpus is memory-mapped, so memory does not grow with the corpus).
        cache_dir: cache root for downloads and encoded corpora (default ``$BERTPRETRAIN_HOME``, else the
            user's cache folder).
    Returns:
        ``(loader, vocab)``: a :class:`PretrainingLoader` of :class:`PretrainingBatch` es and the vocabulary or
        tokenizer (pass it as ``vocab=`` for the held-out split).
    """
    paths, text_format = _split_files(config, split, cache_dir)
    data, vocab = _build(paths, config, seed, vocab, cache, cache_dir, text_format)
    return PretrainingLoader(data, config.batch_size, shuffle=shuffle, num_workers=config.num_workers,
                             drop_last=config.drop_last), vocab


def load_data_text(files, batch_size, max_len=DataConfig.max_len, *, vocab=None, seed=None, shuffle=True,
                   cache="auto", cache_dir=None, **options):
    """Pretraining batches of your own text files, and their vocabulary (or tokenizer).

    ``files``: a file, a folder (its ``*.txt``, ``*.text``, ``*.tokens``, ``*.raw`` files at any depth), a glob
    (``'shards/*.txt.gz'``), or a list of them; ``.gz`` files are decompressed as they are read. The documents
    of all files follow each other (a file ends its last document). ``options`` are fields of
    :class:`DataConfig` (``text_format``: ``'bert'``, Google BERT's input, one sentence per line and a blank
    line between documents; ``'wikitext'``, one paragraph per line; ``'auto'``, detected; ``tokenizer``:
    ``'wordpiece'`` (trained on these files), a tokenizer file or object, or ``'word'`` (WikiText only);
    ``lowercase``; ``vocab_size``; ...), checked there; the other arguments are those of :func:`load_data`.
    For held-out files pass the training files' vocabulary or tokenizer as ``vocab``.

    Returns:
        ``(loader, vocab)``: a :class:`PretrainingLoader` of :class:`PretrainingBatch` es and the vocabulary.
    """
    _check_one_vocabulary(vocab, options)
    config = DataConfig(train_files=files, batch_size=batch_size, max_len=max_len, **options)
    return load_data(config, "train", vocab=vocab, seed=seed, shuffle=shuffle, cache=cache, cache_dir=cache_dir)


def load_data_wiki(batch_size, max_len=DataConfig.max_len, dataset=DataConfig.dataset, *, split="train", vocab=None,
                   seed=None, shuffle=True, cache="auto", cache_dir=None, **options):
    """Pretraining batches of a WikiText split, and its vocabulary (or tokenizer): d2l's ``load_data_wiki``.

    ``batch_size``, ``max_len``, ``dataset`` and ``options`` are the fields of :class:`DataConfig` (its
    defaults are d2l's; e.g. ``data_dir=`` a folder already holding ``wiki.<split>.tokens``,
    ``dynamic_masking=True``, ``tokenizer=`` a :class:`~bertpretrain.data.tokenizer.WordPieceTokenizer`, a
    ``tokenizer.json`` or a BERT ``vocab.txt``), made into one and checked there; the other arguments are
    those of :func:`load_data`, which this calls.

    Returns:
        ``(loader, vocab)``: a :class:`PretrainingLoader` of :class:`PretrainingBatch` es and the vocabulary.
    """
    _check_one_vocabulary(vocab, options)
    config = DataConfig(batch_size=batch_size, max_len=max_len, dataset=dataset, **options)
    return load_data(config, split, vocab=vocab, seed=seed, shuffle=shuffle, cache=cache, cache_dir=cache_dir)
