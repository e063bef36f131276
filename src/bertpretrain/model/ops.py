"""The non-GEMM primitives of the model, each a function of ``F`` (``mx.nd``/``mx.sym``) and arrays.

Every block calls these instead of MXNet operators directly, so that this one module decides how
layer normalisation (alone or after a residual add with dropout), dropout, the masked attention
softmax, activations and the pretraining losses are computed. All functions work imperatively and
inside hybridized graphs.

Two paths, same functions: where :func:`bertpretrain.kernels.enabled_for` says so (the fused C++
kernels are loaded and the computation runs on a CPU), layer normalisation, the residual add +
dropout + layer normalisation, dropout, the length-masked attention softmax (with its dropout) and
the pretraining cross-entropies (with their accuracy counts) run as fused kernels; otherwise as MXNet
builtin operators, in the formulations below that were each measured to speed up the d2l training
step with MXNet 1.9.1 on CPU (see benchmarks/bench_model.py). The choice is made when a graph is
traced (the first call of a hybridized block): ``BERTPRETRAIN_KERNELS=0`` or
``with bertpretrain.kernels.builtin_only():`` around that call gives the builtin path. With dropout
off both paths compute the same function; with dropout on they draw different masks.
"""
from .. import kernels

# Added to the attention scores of keys that must be ignored: exp() of it underflows to exactly 0.
_MASKED_SCORE = -1e30


def add(F, *arrays):
    """Elementwise sum of same-shape arrays.

    MXNet's ``add_n`` hands the output gradient to every input unchanged, with no backward
    kernel, while numpy ``add`` runs a broadcast-aware backward that copies the gradient.
    """
    return F.add_n(*[array.as_nd_ndarray() for array in arrays]).as_np_ndarray()


def dropout(F, x, rate):
    """Zero each element of ``x`` with probability ``rate`` (and rescale), in training mode only."""
    if rate > 0 and kernels.enabled_for(F, x):
        return kernels.dropout(F, x, rate)
    return F.npx.dropout(x, p=rate) if rate > 0 else x


def layer_norm(F, x, gamma, beta, eps, num_features):
    """Normalise ``x`` (..., H) over its last axis, then scale by ``gamma`` (H,) and shift by ``beta``.

    ``num_features`` is H (graph operators need it as a number). The affine part runs as a
    (H, H) diagonal fully-connected layer after an affine-free ``layer_norm``: MXNet 1.9.1's CPU
    LayerNorm backward is slow at the gamma/beta gradients (77 ms -> 41 ms forward+backward for
    a 32768 x 128 input, 2 threads) while a small GEMM computes them cheaply. Same function.
    The fused kernel, when enabled, does it all in one pass.
    """
    if kernels.enabled_for(F, x):
        return kernels.layer_norm(F, x, gamma, beta, eps=eps)
    normalized = F.npx.layer_norm(x, F.np.ones_like(gamma), F.np.zeros_like(beta), axis=-1, eps=eps)
    return F.npx.fully_connected(normalized, F.np.diag(gamma), beta, num_hidden=num_features,
                                 flatten=False)


def add_layer_norm(F, x, residual, gamma, beta, eps, num_features, rate):
    """The post-LN sublayer output ``layer_norm(residual + dropout(x, rate))``; shapes (..., H)."""
    if kernels.enabled_for(F, x):
        return kernels.add_layer_norm(F, x, residual, gamma, beta, p=rate, eps=eps)
    return layer_norm(F, add(F, residual, dropout(F, x, rate)), gamma, beta, eps, num_features)


def activation(F, x, name):
    """Apply the named elementwise activation: ``"relu"``, ``"gelu"`` (exact, erf) or ``"tanh"``."""
    if name == "gelu":
        return F.npx.leaky_relu(x, act_type="gelu")
    return F.npx.activation(x, act_type=name)


def attention_mask(F, valid_lens, positions):
    """The per-batch mask that :func:`masked_softmax` applies, built once and shared by all layers.

    ``valid_lens`` (B,) int, ``positions`` (T,) the key positions 0..T-1. With the fused kernels:
    (B, T) int32, ``mask[b, query]`` the number of keys that query may attend to (sequence b's
    valid length). Otherwise (B, T, T) float32: ``mask[b, query, key]`` is 0 for keys before
    sequence b's valid length and a huge negative number from there on. Pass it only to
    :func:`masked_softmax` of the same graph (which takes the same path). A valid length of 0
    (never produced by bertpretrain.data: [CLS] is always valid) gives all-zero attention
    weights with the kernels and uniform ones without.
    """
    if kernels.enabled_for(F, valid_lens):
        return F.np.expand_dims(valid_lens.astype("int32"), -1) + F.np.expand_dims(
            F.np.zeros_like(positions).astype("int32"), 0)
    key_is_padding = F.np.expand_dims(positions.astype("float32"), 0) >= F.np.expand_dims(
        valid_lens.astype("float32"), -1)  # (B, T)
    bias = key_is_padding.astype("float32") * _MASKED_SCORE
    return F.np.expand_dims(bias, 1) + F.np.expand_dims(F.np.zeros_like(bias[0]), -1)


def masked_softmax(F, scores, mask, rate):
    """Attention weights: softmax over the last axis of ``scores`` (B, T_query, T_key), then dropout.

    ``mask`` comes from :func:`attention_mask`; masked keys get weight exactly 0. A same-shape add
    and the plain softmax (which oneDNN runs) were measured ~2x faster per layer, forward plus
    backward, than MXNet 1.9.1's ``softmax(..., use_length=True)`` and much faster than a
    broadcast mask. Scale the scores beforehand: a softmax ``temperature`` disables oneDNN.
    With the fused kernels the mask holds lengths and one kernel does softmax and dropout.
    """
    if kernels.enabled_for(F, scores):
        return kernels.masked_softmax(F, scores, mask, p=rate)
    return dropout(F, F.npx.softmax(add(F, scores, mask), axis=-1), rate)


def softmax_cross_entropy(F, logits, labels, weights=None, count_correct=False):
    """Per-row cross-entropy of ``logits`` (..., C) against integer ``labels`` (...).

    Returns the losses (...), multiplied by ``weights`` (...) when given; with ``count_correct``
    returns ``(losses, num_correct)`` where ``num_correct`` is the (weighted) number of rows whose
    arg-max is the label, a float32 scalar without gradient. The arg-max over a large vocabulary
    costs ~3% of a d2l training step, hence optional (with the fused kernels it is free: one
    kernel computes the losses and the counts without materialising the log-probabilities).
    """
    if kernels.enabled_for(F, logits):
        return _fused_softmax_cross_entropy(F, logits, labels, weights, count_correct)
    losses = -F.npx.pick(F.npx.log_softmax(logits, axis=-1), labels, axis=-1)
    if weights is not None:
        losses = losses * weights
    if not count_correct:
        return losses
    predictions = F.np.argmax(logits, axis=-1).astype("int32")
    correct = F.np.equal(predictions, labels.astype("int32")).astype("float32")
    if weights is not None:
        correct = correct * weights
    return losses, F.np.sum(correct)


def _fused_softmax_cross_entropy(F, logits, labels, weights, count_correct):
    """:func:`softmax_cross_entropy` through the fused kernel, for logits of any rank >= 2."""
    flat_labels = F.np.reshape(labels, (-1,))  # (N,)
    # (..., C) -> (N, C), whatever the rank (the graph does not know it)
    flat_logits = F.reshape_like(logits.as_nd_ndarray(), flat_labels.as_nd_ndarray(), lhs_begin=0,
                                 lhs_end=-1, rhs_begin=0, rhs_end=1).as_np_ndarray()
    if weights is None:
        flat_weights = F.np.ones_like(flat_labels).astype("float32")
    else:
        flat_weights = F.np.reshape(weights, (-1,))
    out = kernels.softmax_ce(F, flat_logits, flat_labels, flat_weights, return_correct=True)
    losses = F.reshape_like(out[0].as_nd_ndarray(), labels.as_nd_ndarray()).as_np_ndarray()
    if not count_correct:
        return losses
    return losses, F.np.sum(out[1])
