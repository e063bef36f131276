"""The raw fused operators: thin calls of the C++ kernels, from ``hybrid_forward`` of numpy-interface blocks.

What: each function takes ``F`` (``mx.ndarray`` or ``mx.symbol``, as Gluon passes it) and
numpy-interface arrays or symbols, and runs its ``bp_*`` kernel; the library must be loaded
(:func:`bertpretrain.kernels.load`) and the arrays on a CPU. Only float32 is supported. The
model reaches them through its op layer, :mod:`bertpretrain.model.ops`, which chooses between
these and MXNet's builtin operators; nothing here falls back.

Why: MXNet's builtin CPU kernels for these steps (LayerNorm backward, broadcast-reduce
backwards, dropout, length-masked softmax, log-softmax over the vocabulary) dominate a
BERT training step on a CPU; these do the same math in one pass each. Two replace whole
sub-graphs: :func:`attention` (every head's scores, masked softmax, dropout and context from
one packed q/k/v projection, no per-head splits or transposes) and :func:`mlm_cross_entropy`
(the masked-LM decoder GEMM and its cross-entropy in chunks of rows, no (N, V) logits, its
gradients computed in the training forward).

Semantics:

- Dropout is active only in training mode (``autograd.is_training()`` when the graph
  runs). The kernels draw their mask from a 64-entry key made by builtin dropout of
  ones, so ``mx.random.seed`` makes runs reproducible and inference is exact identity.
  They draw different masks from builtin dropout (both Bernoulli(1 - p), scaled by 1/(1 - p)).
- Gradients: a kernel's backward overwrites the gradients it writes, whatever the parameter's
  ``grad_req``. So parameters (``gamma``, ``beta``, weights, biases) reach a kernel through a
  builtin copy, whose backward adds under ``grad_req='add'``, unless ``copy_params=False``:
  the model's op layer passes that while none of its parameters accumulates (the copies and
  their backward cost 9% of a bfloat16 BERT-base step). Lengths, labels and weights receive no
  gradient.
"""
import mxnet
import numpy

from .loader import KernelsUnavailableError

KEY_SIZE = 64
# Logits per chunk of mlm_cross_entropy (rows = MLM_CHUNK // V; 16 MiB): at d2l's shape 2^20-2^23 take
# the same time on a quiet machine (bench_kernels.py); larger chunks, fewer synchronisations, suffer
# less when other work shares the cores, and 2^22 already holds less than the 1,024-word vocabulary
# blocks of the kernel before (5,120 x 1,024 logits).
MLM_CHUNK = 1 << 22


def context_of(F, x):
    """The context a computation on ``x`` runs in: the array's, or the one being traced under."""
    if F is mxnet.symbol:
        return mxnet.context.current_context()
    return x.ctx


def _kernel(F, name):
    """The registered operator ``name`` of ``F``; a clear error when the library is not loaded."""
    try:
        return getattr(F, name)
    except AttributeError:
        raise KernelsUnavailableError(
            f"the fused operator {name} is not registered: call bertpretrain.kernels.load() first "
            "(it says why the kernels are unavailable), or use the builtin backend") from None


def _legacy(x):
    return x.as_nd_ndarray()


def _check_p(p):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p={p} must be in [0, 1)")


def _param(F, param, copy):
    """``param`` as a kernel's input: with ``copy``, through a builtin copy, whose backward honours
    grad_req='add'; else as it is."""
    return F.np.copy(param) if copy else param


def _dropout_key(F, x, p):
    """The kernels' dropout key (see DropoutMask in common.h): builtin dropout of ones.

    Training: 64 entries of 0 or 2 (random bits from MXNet's RNG). Inference: all 1.
    With p == 0 a constant of ones, which the kernels treat as "keep everything".
    """
    if F is mxnet.symbol:
        ones = F.np.ones((KEY_SIZE,))
    else:
        ones = mxnet.np.ones((KEY_SIZE,), ctx=x.ctx)
    return F.npx.dropout(ones, p=0.5) if p > 0 else ones


def _mode_key(F, x):
    """A key that tells a kernel whether MXNet runs in training mode (training_mode in common.h),
    which MXNet's extension API does not pass to operators: a dropout key, all 1 in inference."""
    return _dropout_key(F, x, 0.5)


def _check_float32(F, **arrays):
    """In imperative mode, reject non-float32 arrays early with a clear message."""
    if F is mxnet.symbol:
        return
    for name, a in arrays.items():
        if a.dtype != numpy.float32:
            raise TypeError(f"'{name}' must be float32 for the fused kernels, got {a.dtype}; "
                            "cast it with .astype('float32')")


def layer_norm(F, x, gamma, beta, eps=1e-5, copy_params=True):
    """LayerNorm over the last axis: ``(x - mean) / sqrt(var + eps) * gamma + beta``.

    x: (..., D) float32; gamma, beta: (D,). Returns (..., D). ``copy_params``: see the module docstring.
    """
    _check_float32(F, x=x, gamma=gamma, beta=beta)
    return _kernel(F, "bp_layer_norm")(_legacy(x), _legacy(_param(F, gamma, copy_params)),
                                       _legacy(_param(F, beta, copy_params)), eps=eps).as_np_ndarray()


def add_layer_norm(F, x, residual, gamma, beta, p=0.0, eps=1e-5, copy_params=True):
    """The post-LN residual block ``layer_norm(dropout(x, p) + residual)`` in one pass.

    x, residual: (..., D) float32; gamma, beta: (D,). Returns (..., D). ``copy_params``: see the
    module docstring.
    """
    _check_p(p)
    _check_float32(F, x=x, residual=residual, gamma=gamma, beta=beta)
    key = _dropout_key(F, x, p)
    return _kernel(F, "bp_add_layer_norm")(_legacy(x), _legacy(residual),
                                           _legacy(_param(F, gamma, copy_params)),
                                           _legacy(_param(F, beta, copy_params)),
                                           _legacy(key), eps=eps, p=p).as_np_ndarray()


def dropout(F, x, p):
    """Inverted dropout: in training, zero each element with probability p and scale by 1/(1-p).

    x: any shape, float32. Identity in inference mode or when p == 0.
    """
    _check_p(p)
    if p == 0:
        return x
    _check_float32(F, x=x)
    return _kernel(F, "bp_dropout")(_legacy(x), _legacy(_dropout_key(F, x, p)),
                                    p=p).as_np_ndarray()


def softmax_ce(F, logits, labels, weights, return_correct=False):
    """Per-row weighted softmax cross-entropy, without materialising the probabilities.

    logits: (N, V) float32; labels: (N,) int32 in [0, V); weights: (N,) float32 (no
    gradient). Returns loss (N,): ``weights * (logsumexp(logits) - logits[labels])``;
    rows of weight 0 cost nothing and give 0. Sum it and divide by ``weights.sum()`` for
    the mean. With ``return_correct``, returns ``(loss, correct)`` where correct (N,) is
    ``weights`` where the first arg-max of a row is its label and 0 elsewhere (the
    weighted accuracy count, for free: the kernel already scans each row for its max).
    """
    weights = F.stop_gradient(_legacy(weights)).as_np_ndarray()
    _check_float32(F, logits=logits, weights=weights)
    out = _kernel(F, "bp_softmax_ce")(_legacy(logits), _legacy(labels), _legacy(weights))
    loss = out[0].as_np_ndarray()
    return (loss, out[2].as_np_ndarray()) if return_correct else loss


def attention(F, qkv, valid_lens, num_heads, p=0.0, scale=None, bf16=False):
    """Multi-head self-attention context from one packed projection, every head in one kernel.

    qkv: (B, T, 3H) float32, queries | keys | values side by side, head h in columns
    h*d:(h+1)*d of each (d = H / num_heads); valid_lens: (B,) int32, keys at or beyond a
    sequence's length are ignored (a length of 0 gives a zero context). Scores are scaled by
    ``scale`` (default 1/sqrt(d)); the probabilities get dropout(p) in training mode and are
    recomputed in backward from a saved (B, heads, T) logsumexp rather than stored. With ``bf16``
    every product (scores, context and backward's four) has bfloat16 operands and float32
    accumulation (kernels built with AVX512_BF16 only); softmax and all arrays stay float32.
    Returns the context (B, T, H), heads side by side in the same column order.
    """
    _check_p(p)
    _check_float32(F, qkv=qkv)
    attrs = {"num_heads": num_heads, "p": p}
    if bf16:
        attrs["bf16"] = 1
    if scale is not None:
        attrs["scale"] = scale
    out = _kernel(F, "bp_attention")(_legacy(qkv), _legacy(valid_lens),
                                     _legacy(_dropout_key(F, qkv, p)), **attrs)
    return out[0].as_np_ndarray()


def mlm_cross_entropy(F, hidden, weight, bias, labels, weights, return_correct=False,
                      chunk=MLM_CHUNK, bf16=False, copy_params=True):
    """Per-row weighted cross-entropy of ``hidden @ weight.T + bias`` without the logits.

    hidden: (N, K) float32; weight: (V, K) (a decoder weight or the tied embedding matrix);
    bias: (V,); labels: (N,) int32 in [0, V); weights: (N,) float32, no gradient. Returns loss
    (N,) = ``weights * (logsumexp(logits) - logits[labels])``, and with ``return_correct`` also
    correct (N,) = ``weights`` where the first arg-max of a row is its label, else 0.

    The rows are projected ``max(1, chunk // V)`` at a time (16 MiB of logits by default), so
    the (N, V) logits and their gradient never exist; the GEMMs run on the kernels' own GEMM
    (``kernels/gemm.h``). In training mode (``autograd.is_training()``) the forward also
    computes the gradients of ``sum(loss)``: backward then only scales them when its upstream
    gradient is the same on every row of non-zero weight (a summed or averaged loss, as in
    pretraining: three GEMMs in all instead of four), and recomputes the logits otherwise. In
    inference mode (evaluation) the forward computes only the loss, one GEMM: at d2l's shape
    70-90 ms against 200-260 ms with the gradients (2 threads, AMD EPYC Zen 4). The kernel
    learns the mode from a dropout key at run time, not from an attribute the op layer would set
    while tracing: one hybridized graph serves both training and evaluation (train_bert), and
    MXNet's extension API passes operators no training flag.

    With ``bf16`` the three GEMMs have bfloat16 operands and float32 accumulation (kernels built
    with AVX512_BF16 only); the softmax, the losses and every array stay float32. ``copy_params``:
    see the module docstring.
    """
    weights = F.stop_gradient(_legacy(weights)).as_np_ndarray()
    _check_float32(F, hidden=hidden, weight=weight, bias=bias, weights=weights)
    attrs = {"chunk": chunk, "bf16": 1} if bf16 else {"chunk": chunk}
    out = _kernel(F, "bp_mlm_ce")(_legacy(hidden), _legacy(_param(F, weight, copy_params)),
                                  _legacy(_param(F, bias, copy_params)), _legacy(labels), _legacy(weights),
                                  _legacy(_mode_key(F, hidden)), **attrs)
    loss = out[0].as_np_ndarray()
    return (loss, out[1].as_np_ndarray()) if return_correct else loss


DENSE_ACTIVATIONS = (None, "relu", "gelu")


def dense_bf16(F, x, weight, bias, act=None, copy_params=True):
    """``act(x @ weight.T + bias)`` over the last axis, the products in bfloat16 with float32
    accumulation.

    x: (..., K) float32; weight: (N, K); bias: (N,); act: None, ``"relu"`` or ``"gelu"`` (exact,
    erf-based, as ``F.npx.leaky_relu(..., act_type="gelu")``). Returns (..., N) float32. Backward
    computes dx and dweight the same way (float32 results) and dbias in float32; every array stays
    float32, only the GEMM's packed operands are bfloat16 (kernels/gemm.h, ``bp::gemm_bf16``).
    The activation is inside the operator so that the pre-activation is not kept for backward
    (relu; gelu keeps it, as MXNet's own gelu does). Needs kernels built with AVX512_BF16
    (:func:`bertpretrain.kernels.bf16`). ``copy_params``: see the module docstring.
    """
    if act not in DENSE_ACTIVATIONS:
        raise ValueError(f"act={act!r} must be one of {DENSE_ACTIVATIONS}")
    _check_float32(F, x=x, weight=weight, bias=bias)
    out = _kernel(F, "bp_dense_bf16")(_legacy(x), _legacy(_param(F, weight, copy_params)),
                                      _legacy(_param(F, bias, copy_params)), act=act or "none")
    return (out[0] if act == "gelu" else out).as_np_ndarray()
