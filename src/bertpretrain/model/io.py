"""Saving a model with its configuration, rebuilding it from the folder, and exporting its graph."""
import json
import os

import mxnet as mx

from ..errors import UserError
from ..files import CONFIG_FILE, PARAMS_FILE, atomic_path, atomic_write, vocab_file_name
from .bert import BERTModel
from .config import BERTConfig
from .pretraining import BERTForPretraining


class ModelFolderError(UserError, FileNotFoundError):
    """A folder that does not hold a saved model (or its vocabulary); the message names the missing file."""


def save_pretrained(net, folder, vocab=None):
    """Write ``config.json`` and ``model.params`` of ``net`` (a BERTModel) into ``folder``.

    ``vocab`` (a :class:`bertpretrain.data.Vocab` or tokenizer, optional) is saved beside them, as
    ``vocab.json`` or ``tokenizer.json`` (:func:`~bertpretrain.files.vocab_file_name`), so that
    ``bertpretrain.load_pretrained(folder)`` gives back the network and its vocabulary. Each file is
    written atomically (:mod:`bertpretrain.files`), so an interrupted save never leaves a truncated file
    under the final name. Returns the folder. A full disk raises ``OSError(ENOSPC)`` naming the file.
    """
    if not isinstance(net, BERTModel):
        raise ValueError(f"net must be a BERTModel (pass `.bert` of a BERTForPretraining), "
                         f"got {type(net).__name__}")
    os.makedirs(folder, exist_ok=True)
    atomic_write(os.path.join(folder, CONFIG_FILE),
                 json.dumps(net.config.to_dict(), indent=2, sort_keys=True) + "\n")
    with atomic_path(os.path.join(folder, PARAMS_FILE)) as temporary:  # a full disk: OSError(ENOSPC) naming it
        net.save_parameters(temporary, deduplicate=True)
    if vocab is not None:  # duck-typed: this package does not import data
        vocab.save(os.path.join(folder, vocab_file_name(vocab)))
    return folder


def load_pretrained(folder, device=None, **model_kwargs):
    """Rebuild the BERTModel saved by :func:`save_pretrained` in ``folder``, on ``device``.

    ``device`` is an MXNet context (default: the current one); ``model_kwargs`` go to
    :meth:`BERTModel.from_config` (``check_token_ids``, ``backend``). Gives the network alone: the
    top-level ``bertpretrain.load_pretrained(folder)`` also reads the vocabulary saved beside it.
    """
    config_path = os.path.join(folder, CONFIG_FILE)
    params_path = os.path.join(folder, PARAMS_FILE)
    for path in (config_path, params_path):
        if not os.path.isfile(path):
            raise ModelFolderError(f"{path} not found: a folder written by save_pretrained() holds "
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

    Where ``net`` (a BERTModel or BERTForPretraining) runs the fused CPU kernels (its ``"fused"``
    backend, see :mod:`bertpretrain.model.ops`) the graph holds their operators (``bp_*``): a
    process must call ``bertpretrain.kernels.load()`` before importing it, and it runs on CPUs
    only. ``builtin_ops=True`` exports the graph of a copy of ``net`` on the ``"builtin"`` backend
    with the same parameter values instead, loadable anywhere MXNet is (the same function, a
    slower CPU graph). Either way ``net`` itself is left hybridized.
    """
    net.hybridize(static_alloc=True, static_shape=True)
    exported = _on_builtin_backend(net) if builtin_ops else net
    if exported is not net:
        exported.hybridize(static_alloc=True, static_shape=True)
    exported(*example_inputs)
    exported.export(path_prefix, epoch=0)
    return f"{path_prefix}-symbol.json", f"{path_prefix}-0000.params"


def _on_builtin_backend(net):
    """``net`` itself if its backend is builtin, else a builtin-backend copy holding its parameter values."""
    bert = net.bert if isinstance(net, BERTForPretraining) else net
    if not isinstance(bert, BERTModel):
        raise ValueError(f"export(builtin_ops=True) rebuilds a BERTModel or BERTForPretraining on the "
                         f"builtin backend, got {type(net).__name__}: export it with builtin_ops=False")
    if bert.backend == "builtin":
        return net
    copy = BERTModel.from_config(bert.config, check_token_ids=bert.check_token_ids, backend="builtin")
    if isinstance(net, BERTForPretraining):
        copy = BERTForPretraining(copy, count_correct=net._count_correct)
    sources = net._collect_params_with_prefix()
    copy.initialize(ctx=next(iter(sources.values())).list_ctx())
    for name, param in copy._collect_params_with_prefix().items():
        param.set_data(sources[name].data())
    return copy
