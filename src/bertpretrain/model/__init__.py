"""The Gluon BERT: encoder, masked-LM and next-sentence heads, in-graph losses, save/load/export.

Build a model with ``BERTModel.from_config(bert_tiny(vocab_size))`` (or another named
configuration), ``BERTModel(vocab_size, **options)``, or from :class:`ModelOptions` (what the command does). Never imports :mod:`bertpretrain.data`
or :mod:`bertpretrain.train`: data flows one way.
"""
from .bert import BERTModel
from .config import (ARCHITECTURES, DEFAULT_POSITIONS, NAMED_CONFIGS, BERTConfig, ModelOptions, SequenceLengthError,
                     bert_base, bert_d2l_small, bert_medium, bert_mini, bert_small, bert_tiny, check_max_len,
                     estimate_step_memory)
from .io import export, load_pretrained, save_pretrained
from .pretraining import BERTForPretraining, PretrainingOutput

__all__ = ["ARCHITECTURES", "NAMED_CONFIGS", "BERTConfig", "BERTModel", "BERTForPretraining", "ModelOptions",
           "PretrainingOutput", "save_pretrained", "load_pretrained", "export", "bert_d2l_small", "bert_tiny",
           "bert_mini", "bert_small", "bert_medium", "bert_base", "DEFAULT_POSITIONS", "SequenceLengthError",
           "check_max_len", "estimate_step_memory"]
