"""Saving a model with its configuration, rebuilding it from the folder, and exporting its graph."""
import errno
import json
import os
import shutil

import mxnet as mx

from .. import kernels
from ..files import atomic_path
from .bert import BERTModel
from .config import BERTConfig

CONFIG_FILE = "config.json"
PARAMS_FILE = "model.params"
_FULL_BYTES = 1 << 20  # a write that failed with less free space than this failed for want of space


def save_pretrained(net, folder):
    """Write ``config.json`` and ``model.params`` of ``net`` (a BERTModel) into ``folder``.

    Each file is written to a temporary name in the folder first, synced and then moved into place,
    so an interrupted save never leaves a truncated file under the final name. Returns the folder.
    A full disk raises ``OSError(ENOSPC)`` naming the file.
    """
    if not isinstance(net, BERTModel):
        raise ValueError(f"net must be a BERTModel (pass `.bert` of a BERTForPretraining), "
                         f"got {type(net).__name__}")
    os.makedirs(folder, exist_ok=True)
    _write_atomically(os.path.join(folder, CONFIG_FILE),
                      lambda path: _write_json(path, net.config.to_dict()))
    _write_atomically(os.path.join(folder, PARAMS_FILE),
                      lambda path: net.save_parameters(path, deduplicate=True))
    return folder


def load_pretrained(folder, device=None, **model_kwargs):
    """Rebuild the BERTModel saved by :func:`save_pretrained` in ``folder``, on ``device``.

    ``device`` is an MXNet context (default: the current one); ``model_kwargs`` go to
    :class:`BERTModel` (e.g. ``check_token_ids``).
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


def _write_json(path, values):
    with open(path, "w") as file:
        json.dump(values, file, indent=2, sort_keys=True)
        file.write("\n")


def _write_atomically(path, write):
    """Run ``write(temporary)`` and move the file into place (:func:`~bertpretrain.files.atomic_path`).

    A full disk raises ``OSError(ENOSPC)`` naming ``path``: MXNet's own writer only says
    "FileStream.Write incomplete", with no file name and no reason.
    """
    with atomic_path(path) as temporary:
        try:
            write(temporary)
        except (OSError, mx.base.MXNetError) as error:
            if not _disk_full(error, temporary):
                raise
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (the disk is full)", path) from error


def _disk_full(error, temporary):
    """Whether writing ``temporary`` (still on disk) failed because its disk is full."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return ("Write incomplete" in str(error)
            and shutil.disk_usage(os.path.dirname(os.path.abspath(temporary))).free < _FULL_BYTES)
