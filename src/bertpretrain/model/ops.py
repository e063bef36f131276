"""The model's one op layer: every non-GEMM primitive, on a backend chosen once per model.

Every block calls the methods of the :class:`BuiltinOps` or :class:`FusedOps` object its model was
built with (``BERTModel(..., backend=...)``, see :func:`for_backend`) instead of MXNet operators,
so that this one module decides how layer normalisation (alone or after a residual add with
dropout), dropout, the masked attention softmax, activations and the pretraining losses are
computed. Each method takes ``F`` (``mx.nd`` or ``mx.sym``, as Gluon passes it) and works
imperatively and inside hybridized graphs. No global switch: models of different backends run
side by side in one process.

Backends:

- ``"builtin"``: MXNet's builtin operators, in the formulations below that were each measured to
  speed up the d2l training step with MXNet 1.9.1 on CPU (see benchmarks/bench_model.py).
- ``"fused"``: the fused C++ kernels of :mod:`bertpretrain.kernels` for the ops that have one,
  wherever they can run: the library is loaded (on the first trace) and the computation runs on a
  CPU. Elsewhere (no compiler, a GPU, kept off for Horovod) each op falls back to its builtin
  formulation, and the kernel loader logs once why. Self-attention runs as one packed q/k/v GEMM,
  one kernel for every head and one output projection; the masked-LM decoder and its
  cross-entropy run as one kernel over chunks of rows, its gradients computed in the forward.
  Layer normalisation (alone, or after the residual add and dropout), dropout and the NSP
  cross-entropy each run as one kernel.

The default (``backend=None``) is ``"fused"`` unless ``BERTPRETRAIN_KERNELS=0``. With dropout off
both backends compute the same function; with dropout on they draw different masks. A hybridized
block keeps the operators it was traced with.

Precision (:data:`PRECISIONS`, see :func:`resolve_precision`): ``"fp32"`` computes everything in
float32. ``"bf16"`` (the ``"fused"`` backend on a CPU with AVX512_BF16) computes the matrix
products -- the dense layers (:meth:`BuiltinOps.dense`), attention's products and the masked-LM
decoder -- with bfloat16 operands and float32 accumulation, in the kernels' GEMM
(``bp::gemm_bf16``); every array stays float32 (weights, gradients, activations), and so do layer
normalisation, softmax, dropout and the losses. ``"auto"`` is ``"bf16"`` where it can run, else
``"fp32"``. MXNet 1.9.1's own bfloat16 route (FullyConnected on bfloat16 arrays, oneDNN) is not
used: its outputs and weight gradients are bfloat16 (a cast around every layer of a float32 model,
gradients rounded before the optimizer), its ``dot``/``batch_dot`` refuse bfloat16, and per layer,
casts counted, it measured from 1.9x slower (d2l) to 1.25x faster (BERT-base's FFN) than the
kernels' layer (benchmarks/bench_dense_bf16.py, a shared machine).

Adding an op: write its builtin formulation as a method of :class:`BuiltinOps` (the reference, and
the fallback); if a fused kernel computes it, override the method in :class:`FusedOps`: call the
raw kernel from :mod:`bertpretrain.kernels.ops` when ``self._fused(F, x)``, else ``super()``.
Blocks then call ``self._ops.<name>(F, ...)``.
"""
import logging
import math
from typing import NamedTuple

from mxnet.gluon import HybridBlock

from .. import kernels
from ..errors import UserError
from ..kernels import ops as kernel_ops

BACKENDS = ("fused", "builtin")
PRECISIONS = ("fp32", "bf16", "auto")

logger = logging.getLogger("bertpretrain.model")

# Added to the attention scores of keys that must be ignored: exp() of it underflows to exactly 0.
_MASKED_SCORE = -1e30


class AttentionWeights(NamedTuple):
    """The parameters of one self-attention layer, as its op takes them (H = hidden size).

    ``query_weight``, ``key_weight``, ``value_weight`` and ``proj_weight`` are (H, H), the biases
    (H,). Head h uses rows h*d:(h+1)*d of the first three (d = H / heads) and the same columns of
    ``proj_weight``, whichever backend computes it: the parameters are the same for all.
    """

    query_weight: object
    query_bias: object
    key_weight: object
    key_bias: object
    value_weight: object
    value_bias: object
    proj_weight: object
    proj_bias: object

    def with_scaled_queries(self, scale):
        """These weights with the query weight and bias times ``scale``: scores scaled for free."""
        return self._replace(query_weight=self.query_weight * scale,
                             query_bias=self.query_bias * scale)


class AttentionMask(NamedTuple):
    """Which keys each query of a batch may attend to, built once per batch and shared by all layers.

    Made by :meth:`BuiltinOps.attention_mask`, read by ``self_attention`` of either backend (each
    reads the field it needs; a hybridized graph computes only that one). Gluon hands a hybridized
    block's nested inputs over as lists: blocks rebuild it with ``AttentionMask(*mask)``.

    Attributes:
        valid_lens: (B,) int32, sequence b attends to its first ``valid_lens[b]`` keys; what the
            fused attention takes.
        bias: (B, T, T) float32, ``bias[b, query, key]`` 0 for keys before sequence b's valid length
            and a huge negative number from there on; added to the scores by the builtin softmax.
    """

    valid_lens: object
    bias: object


def resolve_backend(backend=None):
    """The backend name a model uses: ``backend`` checked, or by default ``"fused"`` unless
    ``BERTPRETRAIN_KERNELS=0`` (whether the kernels can run is found out when a graph is traced)."""
    if backend is None:
        return "fused" if kernels.wanted() else "builtin"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None (fused unless "
                         f"{kernels.ENV_VAR}=0), got {backend!r}")
    return backend


def for_backend(backend=None, precision="fp32"):
    """The op layer of ``backend`` (see :func:`resolve_backend`): :class:`FusedOps` or :class:`BuiltinOps`,
    computing in ``precision`` (see :func:`resolve_precision`)."""
    ops = {"fused": FusedOps, "builtin": BuiltinOps}[resolve_backend(backend)]()
    ops.precision = resolve_precision(precision, ops.backend)
    return ops


class PrecisionUnavailableError(UserError, RuntimeError):
    """``precision="bf16"`` was asked for where bfloat16 cannot run (CPU, build or backend)."""


def resolve_precision(precision, backend):
    """``"fp32"`` or ``"bf16"``: what ``precision`` (one of :data:`PRECISIONS`) means for a model
    on ``backend`` here.

    ``"bf16"`` needs the ``"fused"`` backend and kernels built for a CPU with AVX512_BF16
    (:func:`bertpretrain.kernels.bf16`, which loads the kernels): elsewhere it raises
    :class:`PrecisionUnavailableError` saying what is missing. ``"auto"`` is ``"bf16"`` where it can
    run, else ``"fp32"``, and logs which, with why, in one line.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return "fp32"
    if backend == "fused":
        support = kernels.bf16()
        available, reason = support.available, support.reason
    else:
        available, reason = False, (f"the {backend!r} backend computes in float32 only (bfloat16 "
                                    "runs on the fused kernels)")
    if precision == "bf16":
        if not available:
            raise PrecisionUnavailableError(f"precision='bf16' cannot run here: {reason}; use "
                                            "precision='fp32' (or 'auto': bf16 where possible)")
        return "bf16"
    resolved = "bf16" if available else "fp32"
    logger.info("precision auto: %s (%s)", resolved, reason)
    return resolved


class BuiltinOps:
    """The primitives as MXNet builtin operators: the reference every backend must match."""

    backend = "builtin"
    precision = "fp32"

    def follow_grad_req(self, block):
        """Called by ``block``, a top-level block of this op layer's model, before each call (see
        :meth:`FusedOps.follow_grad_req`); builtin operators honour ``grad_req`` themselves."""

    def dense(self, F, x, weight, bias, num_outputs, activation=None):
        """A dense layer over the last axis: ``activation(x @ weight.T + bias)``; x (..., K), weight
        (``num_outputs``, K), bias (``num_outputs``,) -> (..., ``num_outputs``); ``activation``
        None or a name :meth:`activation` knows."""
        y = _project(F, x, weight, bias, num_outputs)
        return y if activation is None else self.activation(F, y, activation)

    def add(self, F, *arrays):
        """Elementwise sum of same-shape arrays.

        MXNet's ``add_n`` hands the output gradient to every input unchanged, with no backward
        kernel, while numpy ``add`` runs a broadcast-aware backward that copies the gradient.
        """
        return F.add_n(*[array.as_nd_ndarray() for array in arrays]).as_np_ndarray()

    def dropout(self, F, x, rate):
        """Zero each element of ``x`` with probability ``rate`` (and rescale), in training mode only."""
        return F.npx.dropout(x, p=rate) if rate > 0 else x

    def layer_norm(self, F, x, gamma, beta, eps, num_features):
        """Normalise ``x`` (..., H) over its last axis, then scale by ``gamma`` (H,) and shift by ``beta``.

        ``num_features`` is H (graph operators need it as a number). The affine part runs as a
        (H, H) diagonal fully-connected layer after an affine-free ``layer_norm``: MXNet 1.9.1's CPU
        LayerNorm backward is slow at the gamma/beta gradients (77 ms -> 41 ms forward+backward for
        a 32768 x 128 input, 2 threads) while a small GEMM computes them cheaply. Same function.
        """
        normalized = F.npx.layer_norm(x, F.np.ones_like(gamma), F.np.zeros_like(beta), axis=-1,
                                      eps=eps)
        return F.npx.fully_connected(normalized, F.np.diag(gamma), beta, num_hidden=num_features,
                                     flatten=False)

    def add_layer_norm(self, F, x, residual, gamma, beta, eps, num_features, rate):
        """The post-LN sublayer output ``layer_norm(residual + dropout(x, rate))``; shapes (..., H)."""
        return self.layer_norm(F, self.add(F, residual, self.dropout(F, x, rate)), gamma, beta, eps,
                               num_features)

    def activation(self, F, x, name):
        """Apply the named elementwise activation: ``"relu"``, ``"gelu"`` (exact, erf) or ``"tanh"``."""
        if name == "gelu":
            return F.npx.leaky_relu(x, act_type="gelu")
        return F.npx.activation(x, act_type=name)

    def attention_mask(self, F, valid_lens, positions):
        """The :class:`AttentionMask` of a batch: ``valid_lens`` (B,) int, ``positions`` (T,) 0..T-1.

        A valid length of 0 (never produced by bertpretrain.data: [CLS] is always valid) gives
        a zero context with the fused attention and uniform attention weights with the builtin one.
        """
        key_is_padding = F.np.expand_dims(positions.astype("float32"), 0) >= F.np.expand_dims(
            valid_lens.astype("float32"), -1)  # (B, T)
        bias = key_is_padding.astype("float32") * _MASKED_SCORE
        return AttentionMask(valid_lens.astype("int32"), F.np.expand_dims(bias, 1) + F.np.expand_dims(
            F.np.zeros_like(bias[0]), -1))

    def masked_softmax(self, F, scores, mask, rate):
        """Attention weights: softmax over the last axis of ``scores`` (B, T_query, T_key), then dropout.

        ``mask`` is the batch's :class:`AttentionMask`; masked keys get weight exactly 0. A
        same-shape add of ``mask.bias`` and the plain softmax (which oneDNN runs) were measured ~2x
        faster per layer, forward plus backward, than MXNet 1.9.1's ``softmax(..., use_length=True)``
        and much faster than a broadcast mask. Scale the scores beforehand: a softmax
        ``temperature`` disables oneDNN.
        """
        return self.dropout(F, F.npx.softmax(self.add(F, scores, mask.bias), axis=-1), rate)

    def softmax_cross_entropy(self, F, logits, labels, weights=None, count_correct=False):
        """Per-row cross-entropy of ``logits`` (..., C) against integer ``labels`` (...).

        Returns the losses (...), multiplied by ``weights`` (...) when given; with ``count_correct``
        returns ``(losses, num_correct)`` where ``num_correct`` is the (weighted) number of rows whose
        arg-max is the label, a float32 scalar without gradient. The arg-max over a large vocabulary
        costs ~3% of a d2l training step on this backend, hence optional.
        """
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

    def self_attention(self, F, x, mask, weights, num_hiddens, num_heads, rate):
        """Multi-head scaled dot-product self-attention of ``x`` (B, T, H), then its output projection.

        ``mask`` is the batch's :class:`AttentionMask`; ``weights`` the :class:`AttentionWeights`
        (H = ``num_hiddens``, d = H / ``num_heads``); ``rate`` the dropout of the attention
        probabilities. Returns (B, T, H).

        Each head is computed separately, from its slices of the weights, so that its queries,
        keys, values and context are contiguous (B, T, d) arrays. The usual reshape-and-transpose
        into a (B * heads, T, d) layout costs ~7 ms per transpose per 4M floats on this CPU, 16 of
        them per step; per-head projections made the whole d2l training step ~8% faster (1
        thread). The 1/sqrt(d) score scaling is folded into the query weight and bias (an (H, H)
        multiply instead of one over every score). The output bias is added inside the first
        head's projection, since a separate broadcast bias add has a slow backward in MXNet 1.9.1.
        """
        head_size = num_hiddens // num_heads
        weights = weights.with_scaled_queries(1.0 / math.sqrt(head_size))
        head_outputs = []  # (B, T, H) each
        for head in range(num_heads):
            rows = slice(head * head_size, (head + 1) * head_size)
            queries = _project(F, x, weights.query_weight[rows], weights.query_bias[rows], head_size)
            keys = _project(F, x, weights.key_weight[rows], weights.key_bias[rows], head_size)
            values = _project(F, x, weights.value_weight[rows], weights.value_bias[rows],
                              head_size)  # (B, T, d)
            scores = F.npx.batch_dot(queries, keys, transpose_b=True)  # (B, T, T)
            probabilities = self.masked_softmax(F, scores, mask, rate)
            context = F.npx.batch_dot(probabilities, values)  # (B, T, d)
            head_outputs.append(_project(F, context, weights.proj_weight[:, rows],
                                         None if head_outputs else weights.proj_bias, num_hiddens))
        return self.add(F, *head_outputs)

    def mlm_cross_entropy(self, F, hidden, weight, bias, labels, weights, vocab_size,
                          count_correct=False):
        """The masked-LM decoder ``hidden @ weight.T + bias`` and its cross-entropy against ``labels``.

        ``hidden`` (B, P, H) the transformed states at the prediction slots, ``weight`` (V, H) (the
        decoder's, or the tied token embedding; V = ``vocab_size``), ``bias`` (V,), integer ``labels`` and float32
        ``weights`` (B, P). Returns what :meth:`softmax_cross_entropy` returns for the (B, P, V)
        logits: the weighted losses (B, P), and with ``count_correct`` the weighted number of
        slots whose arg-max is the label.
        """
        logits = F.npx.fully_connected(hidden, weight, bias, num_hidden=vocab_size,
                                       flatten=False)
        return self.softmax_cross_entropy(F, logits, labels, weights, count_correct)


class FusedOps(BuiltinOps):
    """The fused CPU kernels where they can run, builtin operators elsewhere (``"fused"``).

    Self-attention and the masked-LM decoder with its cross-entropy each run as one kernel; layer
    normalisation, the residual add + dropout + layer normalisation, dropout and the cross-entropy
    (with its accuracy count, for free) each as one kernel too. The builtin attention's masked
    softmax is never reached here: where the attention kernel cannot run, no kernel can. With
    ``precision == "bf16"`` the dense layers, attention's products and the masked-LM decoder compute
    with bfloat16 operands and float32 accumulation (see the module docstring).
    """

    backend = "fused"
    #: Whether the graph passes parameters to the kernels through builtin copies (see
    #: :mod:`bertpretrain.kernels.ops`): needed while a gradient accumulates (``grad_req='add'``),
    #: which a kernel's backward would overwrite; set by :meth:`follow_grad_req`.
    copy_params = True

    def follow_grad_req(self, block):
        """Parameters reach the kernels through copies exactly while some parameter of ``block`` has
        ``grad_req='add'`` (gradient accumulation): the copies cost 9% of a bfloat16 BERT-base step.
        When that changes, the cached graphs of ``block`` and its children are dropped, to be traced
        again with or without the copies on the next call."""
        accumulating = any(param.grad_req == "add" for param in block.collect_params().values())
        self.copy_params = accumulating
        if getattr(block, "_copy_params", None) != accumulating:
            block.apply(lambda child: child._clear_cached_op() if isinstance(child, HybridBlock) else None)
            block._copy_params = accumulating

    @staticmethod
    def _fused(F, x):
        """True when the kernels can compute on ``x``'s context (the current one while tracing)."""
        return kernels.usable_on(kernel_ops.context_of(F, x))

    def dropout(self, F, x, rate):
        if rate > 0 and self._fused(F, x):
            return kernel_ops.dropout(F, x, rate)
        return super().dropout(F, x, rate)

    def layer_norm(self, F, x, gamma, beta, eps, num_features):
        if self._fused(F, x):
            return kernel_ops.layer_norm(F, x, gamma, beta, eps=eps, copy_params=self.copy_params)
        return super().layer_norm(F, x, gamma, beta, eps, num_features)

    def add_layer_norm(self, F, x, residual, gamma, beta, eps, num_features, rate):
        if self._fused(F, x):
            return kernel_ops.add_layer_norm(F, x, residual, gamma, beta, p=rate, eps=eps,
                                             copy_params=self.copy_params)
        return super().add_layer_norm(F, x, residual, gamma, beta, eps, num_features, rate)

    def softmax_cross_entropy(self, F, logits, labels, weights=None, count_correct=False):
        """One kernel computes the losses and the counts, without materialising the log-probabilities."""
        if not self._fused(F, logits):
            return super().softmax_cross_entropy(F, logits, labels, weights, count_correct)
        flat_labels = F.np.reshape(labels, (-1,))  # (N,)
        # (..., C) -> (N, C), whatever the rank (the graph does not know it)
        flat_logits = F.reshape_like(logits.as_nd_ndarray(), flat_labels.as_nd_ndarray(),
                                     lhs_begin=0, lhs_end=-1, rhs_begin=0,
                                     rhs_end=1).as_np_ndarray()
        if weights is None:
            flat_weights = F.np.ones_like(flat_labels).astype("float32")
        else:
            flat_weights = F.np.reshape(weights, (-1,))
        flat_losses, correct = kernel_ops.softmax_ce(F, flat_logits, flat_labels, flat_weights,
                                                        return_correct=True)
        losses = F.reshape_like(flat_losses.as_nd_ndarray(), labels.as_nd_ndarray()).as_np_ndarray()
        if not count_correct:
            return losses
        return losses, F.np.sum(correct)

    @property
    def _bf16(self):
        return self.precision == "bf16"

    def dense(self, F, x, weight, bias, num_outputs, activation=None):
        """In bfloat16, one kernel (``bp_dense_bf16``, the activation included) whose arrays all
        stay float32."""
        if self._bf16 and self._fused(F, x) and activation in kernel_ops.DENSE_ACTIVATIONS:
            return kernel_ops.dense_bf16(F, x, weight, bias, act=activation, copy_params=self.copy_params)
        return super().dense(F, x, weight, bias, num_outputs, activation)

    def self_attention(self, F, x, mask, weights, num_hiddens, num_heads, rate):
        """One packed (B, T, 3H) q/k/v GEMM on the concatenated weights, one kernel that computes
        every head's scores, masked softmax, dropout and context with the heads addressed by stride
        (no per-head splits, transposes or ``add_n``), and one output projection."""
        if not self._fused(F, x):
            return super().self_attention(F, x, mask, weights, num_hiddens, num_heads, rate)
        weights = weights.with_scaled_queries(1.0 / math.sqrt(num_hiddens // num_heads))
        packed_weight = F.np.concatenate([weights.query_weight, weights.key_weight,
                                          weights.value_weight], axis=0)  # (3H, H)
        packed_bias = F.np.concatenate([weights.query_bias, weights.key_bias, weights.value_bias],
                                       axis=0)  # (3H,)
        qkv = self.dense(F, x, packed_weight, packed_bias, 3 * num_hiddens)  # (B, T, 3H)
        context = kernel_ops.attention(F, qkv, mask.valid_lens, num_heads, p=rate, scale=1.0,
                                       bf16=self._bf16)  # (B, T, H)
        return self.dense(F, context, weights.proj_weight, weights.proj_bias, num_hiddens)

    def mlm_cross_entropy(self, F, hidden, weight, bias, labels, weights, vocab_size,
                          count_correct=False):
        """One kernel projects chunks of rows and computes their cross-entropy: the (B * P, V)
        logits and their gradient never exist (the largest arrays of a d2l step). In training it
        computes the gradients in the forward, which backward scales by the loss's uniform
        upstream gradient (``sum(losses) / num_preds``): three GEMMs instead of four."""
        if not self._fused(F, hidden):
            return super().mlm_cross_entropy(F, hidden, weight, bias, labels, weights, vocab_size,
                                             count_correct)
        losses, correct = kernel_ops.mlm_cross_entropy(
            F, F.npx.reshape(hidden, (-5, -2)), weight, bias, F.np.reshape(labels, (-1,)),
            F.np.reshape(weights, (-1,)), return_correct=True, bf16=self._bf16,
            copy_params=self.copy_params)  # (B * P,) each
        losses = F.reshape_like(losses.as_nd_ndarray(), labels.as_nd_ndarray()).as_np_ndarray()
        return (losses, F.np.sum(correct)) if count_correct else losses


def _project(F, x, weight, bias, num_outputs):
    """``x @ weight.T + bias`` over the last axis of ``x`` (no bias when ``bias`` is None)."""
    if bias is None:
        return F.npx.fully_connected(x, weight, num_hidden=num_outputs, no_bias=True, flatten=False)
    return F.npx.fully_connected(x, weight, bias, num_hidden=num_outputs, flatten=False)
