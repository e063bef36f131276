"""Subword (WordPiece) tokenization, the tokenizer of the original BERT, built on Hugging Face ``tokenizers``.

The word-level :class:`~bertpretrain.data.Vocab` is d2l's (the Python defaults); the command's recipe
trains a :class:`WordPieceTokenizer` on the training split. It takes the vocabulary's place in
:func:`~bertpretrain.data.load_data_wiki` (``tokenizer=``): sentences are encoded in batches by the
Rust tokenizer, never token by token in Python. Its reserved tokens sit at the ids this library
reserves (``<unk>`` 0, ``[PAD]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4), so the pair and masking
code work unchanged. ``tokenizers`` (a dependency of the package, no torch) is imported only when a
tokenizer is made.
"""
import hashlib
import itertools
import json
import os

import numpy as np

from ..files import TOKENIZER_FILE, atomic_write, saved_vocab_file
from .errors import DataError
from .textfiles import TextFile, describe, resolve_files
from .vocab import (CLS, CLS_ID, MASK, NUM_RESERVED, PAD, RESERVED_TOKENS, SEP, SEP_ID, UNK, TokenTable, Vocab,
                    _TokenToId)

CONTINUATION_PREFIX = "##"


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError("the WordPiece tokenizer and Hugging Face export need the 'tokenizers' package, a "
                          "dependency of bertpretrain: pip install 'tokenizers>=0.15,<1'") from None
    return tokenizers


def _pair_template(tokenizers, cls_id=CLS_ID, sep_id=SEP_ID):
    """BERT's post-processor: ``[CLS] A [SEP]`` and ``[CLS] A [SEP] B [SEP]`` (B's segment id 1)."""
    return tokenizers.processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)])


def _wordpiece_pipeline(tk, model, lowercase):
    """A ``tokenizers.Tokenizer`` of a WordPiece ``model`` with BERT's normalizer, pre-tokenizer and decoder."""
    tokenizer = tk.Tokenizer(model)
    tokenizer.normalizer = tk.normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = tk.decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    return tokenizer


class WordPieceTokenizer(TokenTable):
    """A ``tokenizers.Tokenizer`` whose reserved tokens sit at bertpretrain's ids, usable where a Vocab is.

    ``len(tok)`` is the vocabulary size; ``tok[token]`` / ``tok[list_of_tokens]`` look up ids (unknown
    -> 0) and :meth:`to_tokens` maps back, as for :class:`~bertpretrain.data.Vocab`;
    :meth:`tokenize` splits text into pieces and :meth:`encode_sentences` encodes many sentences at once.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` with a WordPiece model whose first five ids are
            :data:`~bertpretrain.data.RESERVED_TOKENS` (``<unk>`` may be spelled ``[UNK]``); its padding
            and truncation are turned off (a sentence must encode whole).
        source: where it came from, named in error messages.
        source_order: the permutation loading applied to the source's ids (see :class:`TokenTable`), or None.
    """

    FILE_NAME = TOKENIZER_FILE  # what it is saved as beside a model

    def __init__(self, tokenizer, source="the tokenizer", source_order=None):
        model = json.loads(tokenizer.to_str())["model"]
        if model.get("type") != "WordPiece":
            raise DataError(f"{source} is a {model.get('type')} tokenizer; a WordPiece one was expected "
                            "(train one with train_wordpiece)")
        specials = [tokenizer.id_to_token(i) for i in range(NUM_RESERVED)]
        if specials[1:] != list(RESERVED_TOKENS[1:]) or specials[0] != model.get("unk_token"):
            raise DataError(f"{source} has {specials} at ids 0-{NUM_RESERVED - 1}; bertpretrain needs "
                            f"{list(RESERVED_TOKENS)} there: load it with load_tokenizer(), which moves them")
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.source = source
        self.source_order = source_order
        self.unk_token = specials[0]
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.idx_to_token = [None] * tokenizer.get_vocab_size(with_added_tokens=True)
        for token, idx in vocab.items():
            self.idx_to_token[idx] = token
        self.token_to_idx = _TokenToId(vocab)
        prefix = model.get("continuing_subword_prefix", CONTINUATION_PREFIX)
        #: (V,) bool: True for pieces that continue a word (``##ing``), for whole-word masking.
        self.continuation = np.array([t.startswith(prefix) for t in self.idx_to_token], dtype=bool)

    def tokenize(self, text):
        """The pieces of ``text`` (no special tokens), e.g. ``['a', 'crane', 'fly', '##ing']``."""
        return self.tokenizer.encode(text, add_special_tokens=False).tokens

    def encode_sentences(self, sentences):
        """Encode a list of sentence strings in one batch call of the Rust tokenizer.

        Returns ``(ids, lengths)``: (N,) int32 ids of all sentences, concatenated, and (S,) int32
        pieces per sentence.
        """
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets, which are not needed here
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        encodings = encode(sentences, add_special_tokens=False)
        lengths = np.fromiter(map(len, encodings), dtype=np.int32, count=len(encodings))
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int32,
                          count=int(lengths.sum()))
        return ids, lengths

    @property
    def digest(self):
        """SHA1 of the tokenizer's full JSON form (model, normalizer, pre-tokenizer): part of cache keys."""
        return hashlib.sha1(self.tokenizer.to_str().encode("utf-8")).hexdigest()

    def to_json(self):
        """The text of the tokenizer's ``tokenizer.json`` (:func:`load_tokenizer` reads it back)."""
        return self.tokenizer.to_str(pretty=True)

    def save(self, path):
        """Write the tokenizer as a ``tokenizer.json`` file (atomically)."""
        atomic_write(path, self.to_json())

    def __repr__(self):
        return f"WordPieceTokenizer(size={len(self)}, source={self.source!r})"


def train_wordpiece(files, vocab_size=30522, min_frequency=2, lowercase=True):
    """Train BERT's WordPiece tokenizer on text files with Hugging Face ``tokenizers``.

    ``files``: a file, a folder of text files, a glob, or a list of them, plain or ``.gz`` (see
    :func:`~bertpretrain.data.textfiles.resolve_files`); every line is read, in either text format.
    BERT's normalizer (lower-casing when ``lowercase``: uncased BERT; False keeps the case) and
    pre-tokenizer (whitespace and punctuation); the reserved tokens take ids 0-4, so the literal
    ``<unk>`` of WikiText is the unknown token. Returns a :class:`WordPieceTokenizer` of at most
    ``vocab_size`` ids.

    Training twice on the same text may give different pieces or ids (``tokenizers`` breaks ties
    between equally frequent pieces arbitrarily): save the result (:meth:`WordPieceTokenizer.save`)
    and load it (:func:`load_tokenizer`) wherever the same ids are needed.
    """
    paths = resolve_files(files, "WordPiece training file")
    if not isinstance(vocab_size, (int, np.integer)) or vocab_size <= NUM_RESERVED:
        raise ValueError(f"vocab_size must be an integer > {NUM_RESERVED} (the reserved tokens), got {vocab_size!r}")
    tk = _tokenizers()
    tokenizer = _wordpiece_pipeline(
        tk, tk.models.WordPiece(unk_token=UNK, continuing_subword_prefix=CONTINUATION_PREFIX), lowercase)
    trainer = tk.trainers.WordPieceTrainer(vocab_size=int(vocab_size), min_frequency=min_frequency,
                                           special_tokens=list(RESERVED_TOKENS), show_progress=False,
                                           continuing_subword_prefix=CONTINUATION_PREFIX)
    tokenizer.train_from_iterator(_line_batches(paths), trainer)
    tokenizer.post_processor = _pair_template(tk)
    return WordPieceTokenizer(tokenizer, source=f"WordPiece trained on {describe(paths)}")


def _line_batches(paths, size=4096):
    """The lines of the files ``paths`` (decompressed, checked UTF-8), in lists of ``size``."""
    batch = []
    for path in paths:
        with TextFile(path) as f:
            for line in f:
                batch.append(line)
                if len(batch) >= size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def word_level_tokenizer(vocab):
    """The ``tokenizers`` form of a word-level :class:`Vocab`: lower-casing, whitespace split, BERT's template.

    It gives the same ids as ``vocab`` for the same text (unknown words -> ``<unk>``).
    """
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.WordLevel({t: i for i, t in enumerate(vocab.idx_to_token)}, unk_token=UNK))
    tokenizer.normalizer = tk.normalizers.Lowercase()
    tokenizer.pre_tokenizer = tk.pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = _pair_template(tk)
    tokenizer.add_special_tokens(list(RESERVED_TOKENS))
    return tokenizer


def _move_specials(config, source):
    """Rewrite a tokenizer's JSON so its reserved tokens take ids 0-4 by swapping ids.

    Returns ``(config, order)``: the new JSON dict and the (V,) int64 permutation with
    ``order[new_id] = old_id`` (the identity when nothing moved), to reorder a model's rows alike.
    """
    vocab = config["model"]["vocab"]
    unk = config["model"].get("unk_token", UNK)
    names = [unk, PAD, CLS, SEP, MASK]  # the reserved tokens; only <unk> may be spelled otherwise ([UNK])
    missing = [name for name in names if name not in vocab]
    if missing:
        raise DataError(f"{source} has no {missing} token(s); a BERT tokenizer needs {names}")
    order = np.arange(len(vocab), dtype=np.int64)
    for target, name in enumerate(names):
        current = int(np.flatnonzero(order == vocab[name])[0])
        order[[target, current]] = order[[current, target]]
    if (order == np.arange(len(order))).all():
        return config, order
    new_id = np.argsort(order)
    config["model"]["vocab"] = {token: int(new_id[i]) for token, i in vocab.items()}
    for added in config.get("added_tokens") or []:
        added["id"] = int(new_id[added["id"]])
    post = config.get("post_processor") or {}
    for special in (post.get("special_tokens") or {}).values():
        special["ids"] = [int(new_id[i]) for i in special["ids"]]
    for key in ("cls", "sep"):
        if isinstance(post.get(key), list):
            post[key][1] = int(new_id[post[key][1]])
    return config, order


def load_tokenizer(source, lowercase=True):
    """A tokenizer for :func:`~bertpretrain.data.load_data_wiki` from what you have.

    Args:
        source: a :class:`WordPieceTokenizer` or :class:`Vocab` (returned as is), a ``tokenizers.Tokenizer``,
            a ``tokenizer.json`` file or its text (:meth:`WordPieceTokenizer.to_json`), a BERT ``vocab.txt``
            file (one piece per line), or a folder holding one.
        lowercase: for ``vocab.txt``: lower-case the text (uncased BERT).
    Returns:
        a :class:`WordPieceTokenizer` (or the :class:`Vocab` of a word-level ``tokenizer.json``). Where the
        file keeps the reserved tokens at other ids (a Google ``vocab.txt``: ``[PAD]`` 0, ``[UNK]`` 100, ...)
        they are swapped into ids 0-4, and its ``source_order`` is the permutation ``source_order[new_id] =
        old_id`` (None when the ids are the file's own): reorder a model's token rows with it.
    """
    if isinstance(source, (WordPieceTokenizer, Vocab)):
        return source
    tk = _tokenizers()
    if isinstance(source, str) and source.lstrip().startswith("{"):  # the text of a tokenizer.json
        source = tk.Tokenizer.from_str(source)
    if isinstance(source, tk.Tokenizer):
        config, name = json.loads(source.to_str()), "the given tokenizer"
    else:
        path = os.fspath(source)
        if os.path.isdir(path):
            for candidate in (TOKENIZER_FILE, "vocab.txt"):
                if os.path.isfile(os.path.join(path, candidate)):
                    path = os.path.join(path, candidate)
                    break
            else:
                raise DataError(f"{source} holds neither {TOKENIZER_FILE} nor vocab.txt; pass a tokenizer file")
        if not os.path.isfile(path):
            raise DataError(f"tokenizer file {path} does not exist; pass a tokenizer.json or vocab.txt")
        name = path
        if path.endswith(".txt"):
            config = json.loads(_from_vocab_txt(tk, path, lowercase).to_str())
        else:
            try:
                with open(path, encoding="utf-8") as f:
                    config = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise DataError(f"{path} is not a tokenizer.json ({error}); pass a file written by "
                                "tokenizers' Tokenizer.save or save_pretrained") from None
    kind = (config.get("model") or {}).get("type")
    if kind == "WordLevel":
        return _vocab_from_word_level(config, name)
    if kind != "WordPiece":
        raise DataError(f"{name} holds a {kind} tokenizer; bertpretrain reads WordPiece (BERT) and its own "
                        "word-level tokenizers")
    config, order = _move_specials(config, name)
    moved = not (order == np.arange(len(order))).all()
    tokenizer = tk.Tokenizer.from_str(json.dumps(config))
    return WordPieceTokenizer(tokenizer, source=name, source_order=order if moved else None)


def load_saved_vocab(folder):
    """The vocabulary saved beside a model in ``folder`` (by save_pretrained or a checkpoint): the
    :class:`Vocab` of its ``vocab.json``, or the tokenizer of its ``tokenizer.json`` (a
    :class:`WordPieceTokenizer`); None when neither file is there."""
    path = saved_vocab_file(folder)
    if path is None:
        return None
    return load_tokenizer(path) if os.path.basename(path) == TOKENIZER_FILE else Vocab.load(path)


def _from_vocab_txt(tk, path, lowercase):
    """BERT's tokenizer for a ``vocab.txt`` (one piece per line, the line number is the id)."""
    with open(path, encoding="utf-8") as f:
        pieces = [line.rstrip("\n") for line in f]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    unk = "[UNK]" if "[UNK]" in vocab else UNK
    tokenizer = _wordpiece_pipeline(
        tk, tk.models.WordPiece(vocab, unk_token=unk, continuing_subword_prefix=CONTINUATION_PREFIX), lowercase)
    tokenizer.add_special_tokens([t for t in (unk, PAD, CLS, SEP, MASK) if t in vocab])
    tokenizer.post_processor = _pair_template(tk, vocab.get(CLS, CLS_ID), vocab.get(SEP, SEP_ID))
    return tokenizer


def _vocab_from_word_level(config, name):
    """The :class:`Vocab` of a word-level ``tokenizer.json`` written by :func:`word_level_tokenizer`."""
    vocab = config["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, idx in vocab.items():
        tokens[idx] = token
    if tuple(tokens[:NUM_RESERVED]) != RESERVED_TOKENS:
        raise DataError(f"{name} is a word-level tokenizer whose first ids are {tokens[:NUM_RESERVED]}, "
                        f"not bertpretrain's {list(RESERVED_TOKENS)}")
    result = Vocab.__new__(Vocab)
    result._set_tokens(tokens)
    result.min_freq = 1
    return result
