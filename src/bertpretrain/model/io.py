"""Saving a model with its configuration, rebuilding it from the folder, and exporting its graph."""
import json
import os

import mxnet as mx

from .. import kernels
from ..files import atomic_path, atomic_write
from .bert import BERTModel
from .config import BERTConfig

CONFIG_FILE = "config.json"
PARAMS_FILE = "model.params"
VOCAB_FILE = "vocab.json"


def save_pretrained(net, folder, vocab=None):
    """Write ``config.json`` and ``model.params`` of ``net`` (a BERTModel) into ``folder``.

    ``vocab`` (a :class:`bertpretrain.data.Vocab`, optional) is saved beside them as ``vocab.json``,
    so that ``bertpretrain.load_pretrained(folder)`` gives back the network and its vocabulary.
    Each file is written atomically, so an interrupted save never leaves a truncated file under
    the final name. Returns the folder.
    """
    if not isinstance(net, BERTModel):
        raise ValueError(f"net must be a BERTModel (pass `.bert` of a BERTForPretraining), "
                         f"got {type(net).__name__}")
    os.makedirs(folder, exist_ok=True)
    config = json.dumps(net.config.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write(os.path.join(folder, CONFIG_FILE), config)
    with atomic_path(os.path.join(folder, PARAMS_FILE)) as path:
        net.save_parameters(path, deduplicate=True)
    if vocab is not None:
        vocab.save(os.path.join(folder, VOCAB_FILE))  # duck-typed: this package does not import data
    return folder


def load_pretrained(folder, device=None, **model_kwargs):
    """Rebuild the BERTModel saved by :func:`save_pretrained` in ``folder``, on ``device``.

    ``device`` is an MXNet context (default: the current one); ``model_kwargs`` go to
    :class:`BERTModel` (e.g. ``check_token_ids``). Gives the network alone: the top-level
    ``bertpretrain.load_pretrained(folder)`` also reads the vocabulary saved beside it.
    """
    config_path = os.path.join(folder, CONFIG_FILE)
    params_path = os.path.join(folder, PARAMS_FILE)
    for path in (config_path, params_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: a folder written by save_pretrained() holds "
                                    f"{CONFIG_FILE} and {PARAMS_FILE}")
    with open(config_path) as file:
        config = BERTConfig.from_dict(json.load(file))
    net = BERTModel.from_config(config, **model_kwargs)
    net.load_parameters(params_path, ctx=device or mx.current_context())
    return net


def export(net, path_prefix, *example_inputs, builtin_ops=False):
    """Hybridize ``net``, run it once on ``example_inputs`` and export the graph and parameters.

    Writes ``<path_prefix>-symbol.json`` and ``<path_prefix>-0000.params`` and returns their paths.
    Load them with ``SymbolBlock.imports(symbol_file, ["data0", "data1", ...], params_file)``,
    one input name per example input, in order.

    Where the fused CPU kernels are enabled (see :mod:`bertpretrain.kernels`) the graph holds
    their operators (``bp_*``): a process must call ``bertpretrain.kernels.load()`` before
    importing it, and it runs on CPUs only. ``builtin_ops=True`` exports a graph of MXNet's builtin
    operators instead, loadable anywhere MXNet is (the same function, a slower CPU graph). Either
    way ``net`` is left hybridized, to be traced again (with the kernels if enabled) on its next call.
    """
    net.hybridize(static_alloc=True, static_shape=True)
    if builtin_ops:
        with kernels.builtin_only():
            net(*example_inputs)
    else:
        net(*example_inputs)
    net.export(path_prefix, epoch=0)
    if builtin_ops:
        net.hybridize(static_alloc=True, static_shape=True)  # drop the builtin-only graph
    return f"{path_prefix}-symbol.json", f"{path_prefix}-0000.params"

