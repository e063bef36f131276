"""Raw wrappers of the fused attention and masked-LM decoder kernels (no builtin fallback).

What: :func:`attention` (packed q/k/v projection -> context, every head at once) and
:func:`mlm_cross_entropy` (decoder projection + softmax cross-entropy in blocks of the
vocabulary), callable from ``hybrid_forward`` with ``F`` and numpy-interface arrays or symbols.

Why: these replace whole sub-graphs (per-head projections, transposes, ``batch_dot``, ``add_n``;
the (N, V) logits and their gradient), so a builtin equivalent is a different graph that the
model keeps itself; callers check :func:`bertpretrain.kernels.enabled_for` first. Dropout keys
and the grad_req='add'-safe parameter copies work as in :mod:`.ops`.
"""
import contextlib
import threading

from . import loader
from .ops import _check_float32, _check_p, _dropout_key, _identity, _legacy, enabled_for

DEFAULT_BLOCK = 1024  # vocabulary entries per block: the fastest of 256-4096 in bench_kernels.py

_lock = threading.Lock()
_previous_depth = 0


@contextlib.contextmanager
def previous_kernels():
    """Within this block :func:`usable` is False: models trace the per-op kernel path of before.

    Like :func:`bertpretrain.kernels.builtin_only`, it acts when a graph is traced (the first call
    of a hybridized block), so that benchmarks can compare both paths in one process.
    """
    global _previous_depth
    with _lock:
        _previous_depth += 1
    try:
        yield
    finally:
        with _lock:
            _previous_depth -= 1


def usable(F, x):
    """True when a model should call the fused ops here: kernels on for ``x``'s context and not
    inside :func:`previous_kernels`."""
    return not _previous_depth and enabled_for(F, x)


def _require(F, x, name):
    if not enabled_for(F, x):
        status = loader.load()
        raise RuntimeError(f"kernels.fused.{name} needs the fused kernels on a CPU context, but "
                           f"they are off here ({status.reason}); check "
                           "bertpretrain.kernels.enabled_for() and use the builtin path instead")


def attention(F, qkv, valid_lens, num_heads, p=0.0, scale=None):
    """Multi-head self-attention context from one packed projection.

    qkv: (B, T, 3H) float32, queries | keys | values side by side, head h in columns
    h*d:(h+1)*d of each (d = H / num_heads); valid_lens: (B,) int, keys at or beyond a
    sequence's length are ignored (a length of 0 gives a zero context). Scores are scaled by
    ``scale`` (default 1/sqrt(d)); the probabilities get dropout(p) in training mode.
    Returns the context (B, T, H), heads side by side in the same column order.
    """
    _check_p(p)
    _require(F, qkv, "attention")
    _check_float32(F, qkv=qkv)
    attrs = {"num_heads": num_heads, "p": p}
    if scale is not None:
        attrs["scale"] = scale
    out = F.bp_attention(_legacy(qkv), _legacy(valid_lens), _legacy(_dropout_key(F, qkv, p)),
                         **attrs)
    return out[0].as_np_ndarray()


def mlm_cross_entropy(F, hidden, weight, bias, labels, weights, return_correct=False,
                      block=DEFAULT_BLOCK):
    """Per-row weighted cross-entropy of ``hidden @ weight.T + bias`` without the logits.

    hidden: (N, K) float32; weight: (V, K) (a decoder weight or the tied embedding matrix);
    bias: (V,); labels: (N,) int in [0, V); weights: (N,) float32, no gradient. Returns loss
    (N,) = ``weights * (logsumexp(logits) - logits[labels])``, and with ``return_correct`` also
    correct (N,) = ``weights`` where the first arg-max of a row is its label, else 0. ``block``
    vocabulary entries are projected at a time.
    """
    _require(F, hidden, "mlm_cross_entropy")
    _check_float32(F, hidden=hidden, weight=weight, bias=bias, weights=weights)
    weights = F.stop_gradient(_legacy(weights))
    out = F.bp_mlm_ce(_legacy(hidden), _legacy(_identity(F, weight)), _legacy(_identity(F, bias)),
                      _legacy(labels), weights, block=block)
    loss = out[0].as_np_ndarray()
    return (loss, out[2].as_np_ndarray()) if return_correct else loss
