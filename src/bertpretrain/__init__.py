"""bertpretrain: pretrain BERT (masked LM + next-sentence prediction) on WikiText with MXNet Gluon.

Subpackages: :mod:`bertpretrain.data` (WikiText to batches), :mod:`bertpretrain.model` (the Gluon BERT)
and :mod:`bertpretrain.train` (the training loop, checkpoints and evaluation).
"""
__version__ = "0.1.0"

from . import _mxnet  # noqa: F401,E402  (fails early, with install instructions, if MXNet is missing)
from . import data  # noqa: E402

# Hugging Face interop and the WordPiece tokenizer (issue 11): top-level names.
from .data import WordPieceTokenizer, load_tokenizer, train_wordpiece  # noqa: E402
from .hf import export_huggingface, import_huggingface  # noqa: E402
