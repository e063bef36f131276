"""The Gluon BERT: encoder, masked-LM and next-sentence heads, in-graph losses, save/load/export.

Never imports :mod:`bertpretrain.data` or :mod:`bertpretrain.train`: data flows one way.
"""
from .bert import BERTModel
from .config import BERTConfig
from .io import export, load_pretrained, save_pretrained
from .pretraining import BERTForPretraining

__all__ = ["BERTConfig", "BERTModel", "BERTForPretraining", "save_pretrained", "load_pretrained",
           "export"]
