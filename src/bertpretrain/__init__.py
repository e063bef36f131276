"""bertpretrain: pretrain BERT (masked LM + next-sentence prediction) on WikiText with MXNet Gluon.

Subpackages: :mod:`bertpretrain.data` (WikiText to batches), :mod:`bertpretrain.model` (the Gluon BERT)
and :mod:`bertpretrain.train` (the training loop, checkpoints and evaluation).

The package also has d2l's flat face, so that code written for the d2l chapter reads the same::

    import bertpretrain as bp
    train_iter, vocab = bp.load_data_wiki(512, 64)
    net = bp.BERTModel(len(vocab))
    bp.train_bert(train_iter, net, num_steps=50)
    bp.get_bert_encoding(net, ["a", "crane", "is", "flying"], vocab=vocab)

Those names (:data:`D2L_NAMES`) are imported on first use, so that ``import bertpretrain`` stays as
fast as importing MXNet and the data pipeline.
"""
import importlib

__version__ = "0.1.0"

from . import _mxnet  # noqa: F401,E402  (fails early, with install instructions, if MXNet is missing)
from . import data  # noqa: E402

# name -> the module that defines it (relative to this package)
D2L_NAMES = {
    "DATA_HUB": ".data", "Vocab": ".data", "download_extract": ".data", "load_data_wiki": ".data",
    "load_data_text": ".data",
    "BERTModel": ".model", "BERTForPretraining": ".model", "save_pretrained": ".model",
    "load_pretrained": ".pretrained",
    "train_bert": ".train", "evaluate_bert": ".train",
    "get_bert_encoding": ".encoding",
    "WordPieceTokenizer": ".data", "load_tokenizer": ".data", "train_wordpiece": ".data",
    "export_huggingface": ".hf", "import_huggingface": ".hf",
}
SUBMODULES = ("data", "model", "train", "encoding", "kernels", "pretrained", "hf")


def __getattr__(name):
    """Import a submodule or one of :data:`D2L_NAMES` on first access (PEP 562)."""
    if name in SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in D2L_NAMES:
        value = getattr(importlib.import_module(D2L_NAMES[name], __name__), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *D2L_NAMES, *SUBMODULES})
