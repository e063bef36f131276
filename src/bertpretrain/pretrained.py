"""A pretrained model together with its vocabulary: what d2l's ``load_pretrained_model`` gives back.

Lives at the top level because it joins both halves of the package: :mod:`bertpretrain.model`
rebuilds the network (it does not know the vocabulary type) and :mod:`bertpretrain.data` reads
the vocabulary.
"""
import os
from typing import NamedTuple

from .data import Vocab, load_saved_vocab
from .files import TOKENIZER_FILE, VOCAB_FILE
from .model import BERTModel
from .model import io as model_io
from .model.io import ModelFolderError


class Pretrained(NamedTuple):
    """The network and its vocabulary (a Vocab, or the WordPiece tokenizer it was trained with); unpacks as
    ``net, vocab = load_pretrained(folder)``."""
    net: BERTModel
    vocab: Vocab


def load_pretrained(folder, device=None, **model_kwargs):
    """Rebuild the model saved in ``folder`` and read its vocabulary: a :class:`Pretrained` (net, vocab).

    ``folder`` is one written by ``save_pretrained(net, folder, vocab=vocab)``: the ``model/`` folder of
    a ``bertpretrain pretrain`` run, or one of its checkpoints. ``device`` (an MXNet context, default:
    the current one) and ``model_kwargs`` go to :func:`bertpretrain.model.load_pretrained`, which
    gives the network alone.
    """
    net = model_io.load_pretrained(folder, device, **model_kwargs)
    vocab = load_saved_vocab(folder)
    if vocab is not None:
        return Pretrained(net, vocab)
    raise ModelFolderError(
        f"{os.path.join(folder, VOCAB_FILE)} not found: save the vocabulary (or a {TOKENIZER_FILE}) with the "
        f"model, save_pretrained(net, folder, vocab=vocab), or load the network alone with "
        f"bertpretrain.model.load_pretrained(folder)")
