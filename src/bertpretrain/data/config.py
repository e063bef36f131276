"""The data options of a pretraining run, declared once (default, help, check)."""
import os
from dataclasses import dataclass
from typing import Optional

from ..options import OptionError, boolean, integer, option, validate
from .download import DATA_HUB
from .textfiles import TEXT_FORMATS, resolve_files
from .vocab import NUM_RESERVED

TOKENIZER_KINDS = ("word", "wordpiece")


def _tokenizer(value):
    """The check of ``tokenizer``: a kind, a file or folder, or (from Python) a tokenizer object."""
    if not isinstance(value, (str, os.PathLike)) or value in TOKENIZER_KINDS or os.path.exists(value):
        return None
    return "'word', 'wordpiece', or an existing tokenizer.json / vocab.txt file (or a folder holding one)"


@dataclass
class DataConfig:
    """How a corpus becomes pretraining batches: WikiText (``dataset`` or ``data_dir``) or your own files
    (``train_files``, ``valid_files``). The defaults are d2l's (WikiText-2, batch 512, 64 tokens, d2l's word
    vocabulary, masks and next-sentence pairs drawn once, pairs longer than ``max_len`` dropped).

    :func:`~bertpretrain.data.load_data` takes one; ``load_data_wiki(batch_size, max_len, ...)`` and
    ``build_dataset`` take the same options as keywords and check them here. A bad value raises
    :class:`~bertpretrain.options.OptionError` naming the option and its command-line flag.
    """
    dataset: str = option("wikitext-2", "the DATA_HUB dataset to download: " + ", ".join(sorted(DATA_HUB)))
    data_dir: str = option(None, "a folder already holding wiki.train.tokens and wiki.valid.tokens (no download)",
                           metavar="DIR")
    train_files: Optional[list] = option(None, "your own training text instead of --dataset: files, folders "
                                         "(their *.txt, *.text, *.tokens, *.raw files) or globs, .gz too",
                                         flag="--train-file", metavar="PATH")
    valid_files: Optional[list] = option(None, "held-out text read like --train-file (evaluated during and after "
                                         "training)", flag="--valid-file", metavar="PATH")
    text_format: str = option("auto", "the format of --train-file / --valid-file: bert, one sentence per line and a "
                              "blank line between documents (Google BERT's input); wikitext, one paragraph per "
                              "line; auto, detected (an error names a file that fits neither)",
                              choices=("auto",) + TEXT_FORMATS)
    lowercase: Optional[bool] = option(None, "lower-case the text (default: WikiText yes, as d2l; BERT's format as "
                                       "the tokenizer does: one trained here is uncased)",
                                       check=boolean(optional=True))
    verify: bool = option(False, "hash the cached dataset files again instead of trusting their recorded size and "
                          "mtime", flag="--verify-data", check=boolean())
    batch_size: int = option(512, "examples per batch (per worker)", check=integer(1))
    max_len: int = option(64, "tokens per example, [CLS] and [SEP] included", check=integer(5))
    tokenizer: str = option("word", "word: d2l's word vocabulary; wordpiece: BERT's, trained on the training "
                            "split; or a tokenizer.json / vocab.txt file", check=_tokenizer)
    vocab_size: int = option(30522, "ids of the WordPiece vocabulary trained with --tokenizer wordpiece",
                             check=integer(NUM_RESERVED + 1))
    min_freq: int = option(5, "least count of a word to get its own id in the word vocabulary", check=integer(1))
    whole_word_masking: bool = option(False, "mask all pieces of a chosen word together (WordPiece)",
                                      check=boolean())
    dynamic_masking: bool = option(False, "draw new masks every epoch (RoBERTa) instead of once (d2l)",
                                   check=boolean())
    dynamic_pairs: bool = option(False, "draw new next-sentence pairs every epoch (needs dynamic masking and "
                                 "truncated pairs) instead of once (d2l)", check=boolean())
    truncate_pairs: bool = option(False, "shorten pairs longer than --max-len instead of dropping them (d2l)",
                                  check=boolean())
    unk_targets: bool = option(True, "let the unknown token be a masked-LM target too (d2l)", check=boolean())
    drop_last: bool = option(False, "leave out each epoch's short last batch", check=boolean())
    num_workers: int = option(0, "worker processes preparing batches (0: in this process)", check=integer(0),
                              cli=False)

    def __post_init__(self):
        validate(self)
        if self.train_files is not None:
            if self.data_dir is not None:
                raise OptionError("pass either train_files (--train-file) or data_dir (--data-dir), not both")
            resolve_files(self.train_files, "train_files (--train-file)")
        if self.valid_files is not None:
            if self.train_files is None:
                raise OptionError("valid_files (--valid-file) is held-out text for --train-file: pass --train-file "
                                  "too (a WikiText dataset has its own validation split)")
            resolve_files(self.valid_files, "valid_files (--valid-file)")
        if self.train_files is None and self.data_dir is None and self.dataset not in DATA_HUB:
            raise OptionError(f"unknown dataset {self.dataset!r} (--dataset): choose one of "
                              f"{', '.join(sorted(DATA_HUB))}, or pass --data-dir with your own split files")
        if self.dynamic_pairs and not (self.dynamic_masking and self.truncate_pairs):
            raise OptionError("dynamic_pairs (--dynamic-pairs) draws new pairs every epoch: it needs dynamic_masking "
                              "(--dynamic-masking: new masks for the new pairs) and truncate_pairs "
                              "(--truncate-pairs: the same number of examples every epoch)")
