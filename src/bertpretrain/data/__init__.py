"""Text to BERT pretraining batches: files, sentences, vocabulary, NSP pairs, MLM masks, padding.

The usual entry points are :func:`load_data_text` (your own files, in BERT's format or WikiText's)
and :func:`load_data_wiki` (a WikiText split, downloaded); the steps below them are plain functions
on numpy arrays that can be used and tested one by one.
"""
from .cache import load_encoded_corpus
from .config import DataConfig
from .corpus import EncodedCorpus, iter_paragraphs, read_wiki, split_file, tokenize
from .dataset import PretrainingBatch, PretrainingDataset
from .download import DATA_HUB, DatasetEntry, cache_root, download_extract
from .errors import DataError, DownloadError
from .loader import PretrainingLoader, build_dataset, load_data, load_data_text, load_data_wiki
from .masking import (choose_mlm_positions, choose_whole_word_positions, num_mlm_predictions, num_mlm_slots,
                      replace_masked_tokens)
from .pairs import EpochPairs, SentencePairs, get_tokens_and_segments, make_nsp_pairs, truncate_pair_lengths
from .textfiles import TEXT_FORMATS, describe, detect_format, resolve_files
from .tokenizer import WordPieceTokenizer, load_saved_vocab, load_tokenizer, train_wordpiece, word_level_tokenizer
from .vocab import (CLS, CLS_ID, MASK, MASK_ID, NUM_RESERVED, PAD, PAD_ID, RESERVED_TOKENS, SEP, SEP_ID, UNK,
                    UNK_ID, Vocab)

__all__ = [
    "DATA_HUB", "DataConfig", "DatasetEntry", "DataError", "DownloadError", "EpochPairs", "PretrainingBatch",
    "PretrainingDataset", "PretrainingLoader", "SentencePairs", "EncodedCorpus", "Vocab", "build_dataset",
    "cache_root", "describe", "iter_paragraphs", "load_encoded_corpus", "split_file", "choose_mlm_positions", "detect_format",
    "download_extract", "get_tokens_and_segments", "load_data", "load_data_text", "load_data_wiki", "resolve_files",
    "TEXT_FORMATS", "make_nsp_pairs",
    "num_mlm_predictions", "num_mlm_slots", "read_wiki", "replace_masked_tokens", "tokenize",
    "truncate_pair_lengths", "CLS", "CLS_ID", "MASK", "MASK_ID", "NUM_RESERVED", "PAD", "PAD_ID", "RESERVED_TOKENS",
    "SEP", "SEP_ID", "UNK", "UNK_ID", "WordPieceTokenizer", "choose_whole_word_positions", "load_saved_vocab",
    "load_tokenizer", "train_wordpiece", "word_level_tokenizer",
]
