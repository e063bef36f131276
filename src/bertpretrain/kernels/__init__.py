"""Fused CPU kernels for BERT pretraining: the raw C++ operators and their loading.

What: C++ operators (OpenMP, float32) for the steps where MXNet's own CPU kernels are
slow: LayerNorm (alone or fused with the residual add and dropout before it), dropout, the
weighted softmax cross-entropy (with its accuracy count), whole multi-head self-attention from a
packed q/k/v projection (length-masked softmax and dropout inside), the masked-LM decoder with its
cross-entropy in chunks of rows, and (on CPUs with AVX512_BF16, :func:`bf16`) a dense layer in
bfloat16. They are compiled on first use against the installed MXNet, cached, and loaded once per
process (:mod:`.build`, :mod:`.loader`); :mod:`.ops` calls them.

Use: the model's op layer, :mod:`bertpretrain.model.ops`, chooses per model between these and
MXNet's builtin operators. ``BERTPRETRAIN_KERNELS=0`` (off), ``=1`` (required), unset (use
when possible).
"""
from .loader import (ENV_VAR, Bf16Support, KernelsSettingError, KernelStatus, KernelsUnavailableError, available,
                     bf16, keep_off, load, usable_on, wanted)

__all__ = ["ENV_VAR", "Bf16Support", "KernelsSettingError", "KernelStatus", "KernelsUnavailableError", "available",
           "bf16", "keep_off", "load", "usable_on", "wanted"]
