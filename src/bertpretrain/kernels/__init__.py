"""Fused CPU kernels for BERT pretraining, with MXNet's builtin operators as fallback.

What: C++ operators (OpenMP, float32) for the steps where MXNet's own CPU kernels are
slow: LayerNorm (alone or fused with the residual add and dropout before it), dropout,
length-masked attention softmax (with its dropout), and the weighted softmax
cross-entropy (with its accuracy count) of the masked-LM head. They are compiled on first use against the installed MXNet, cached,
and loaded once per process (:mod:`.build`, :mod:`.loader`).

Use: call the functions of :mod:`.ops` (re-exported here) from ``hybrid_forward``; they
fall back to builtin operators, with the same results, when the kernels are off:
``BERTPRETRAIN_KERNELS=0`` (off), ``=1`` (required), unset (use when possible).
"""
from .loader import (KernelStatus, KernelsUnavailableError, available, builtin_only, keep_off, load,
                     usable_on)
from .ops import add_layer_norm, dropout, enabled_for, layer_norm, masked_softmax, softmax_ce

__all__ = [
    "KernelStatus", "KernelsUnavailableError", "available", "builtin_only", "keep_off", "load", "usable_on",
    "add_layer_norm", "dropout", "enabled_for", "layer_norm", "masked_softmax", "softmax_ce",
]
