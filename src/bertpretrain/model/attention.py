"""Multi-head self-attention whose softmax ignores the padding keys of each sequence."""
import math

from mxnet.gluon import HybridBlock

from ..kernels import fused
from . import ops


class MultiHeadSelfAttention(HybridBlock):
    """Scaled dot-product self-attention over ``num_heads`` heads, then an output projection.

    Input ``x`` (B, T, H) and the batch's ``mask`` from :func:`ops.attention_mask`;
    output (B, T, H). The query, key, value and output projections are the usual (H, H) weights
    with (H,) biases; head ``h`` uses rows ``h*d:(h+1)*d`` of the first three (d = H / heads) and
    the same columns of the output weight.

    Each head is computed separately, from its slices of the weights, so that its queries, keys,
    values and context are contiguous (B, T, d) arrays. The usual reshape-and-transpose into a
    (B * heads, T, d) layout costs ~7 ms per transpose per 4M floats on this CPU, 16 of them per
    step; per-head projections made the whole d2l training step ~8% faster (1 thread). The
    1/sqrt(d) score scaling is folded into the query weight and bias (an (H, H) multiply instead
    of one over every score). The output bias is added inside the first head's projection, since
    a separate broadcast bias add has a slow backward in MXNet 1.9.1.

    With the fused kernels (:func:`bertpretrain.kernels.fused.usable`) the three projections run
    as one GEMM of width 3H on the concatenated weights, one kernel computes every head's
    scores, masked softmax, dropout and context with the heads addressed by stride, and one
    projection of width H follows: no per-head splits, transposes or ``add_n``. The parameters
    are the same either way.
    """

    def __init__(self, num_hiddens, num_heads, dropout, **kwargs):
        super().__init__(**kwargs)
        self._num_hiddens = num_hiddens
        self._num_heads = num_heads
        self._head_size = num_hiddens // num_heads
        self._dropout = dropout
        for name in ("query", "key", "value", "proj"):
            setattr(self, f"{name}_weight", self.params.get(f"{name}_weight",
                                                            shape=(num_hiddens, num_hiddens)))
            setattr(self, f"{name}_bias", self.params.get(f"{name}_bias", shape=(num_hiddens,),
                                                          init="zeros"))

    def hybrid_forward(self, F, x, mask, query_weight, query_bias, key_weight, key_bias,
                       value_weight, value_bias, proj_weight, proj_bias):
        scale = 1.0 / math.sqrt(self._head_size)
        query_weight, query_bias = query_weight * scale, query_bias * scale
        if fused.usable(F, x):
            # mask: (B, T) valid lengths repeated over the queries (ops.attention_mask)
            packed_weight = F.np.concatenate([query_weight, key_weight, value_weight], axis=0)
            packed_bias = F.np.concatenate([query_bias, key_bias, value_bias], axis=0)
            qkv = _project(F, x, packed_weight, packed_bias, 3 * self._num_hiddens)  # (B, T, 3H)
            context = fused.attention(F, qkv, mask[:, 0], self._num_heads, self._dropout,
                                      scale=1.0)  # (B, T, H)
            return _project(F, context, proj_weight, proj_bias, self._num_hiddens)
        head_outputs = []  # (B, T, H) each
        for head in range(self._num_heads):
            rows = slice(head * self._head_size, (head + 1) * self._head_size)
            queries = _project(F, x, query_weight[rows], query_bias[rows], self._head_size)
            keys = _project(F, x, key_weight[rows], key_bias[rows], self._head_size)
            values = _project(F, x, value_weight[rows], value_bias[rows], self._head_size)  # (B, T, d)
            scores = F.npx.batch_dot(queries, keys, transpose_b=True)  # (B, T, T)
            weights = ops.masked_softmax(F, scores, mask, self._dropout)
            context = F.npx.batch_dot(weights, values)  # (B, T, d)
            head_outputs.append(_project(F, context, proj_weight[:, rows],
                                         None if head_outputs else proj_bias, self._num_hiddens))
        return ops.add(F, *head_outputs)


def _project(F, x, weight, bias, num_outputs):
    """``x @ weight.T + bias`` over the last axis of ``x`` (no bias when ``bias`` is None)."""
    if bias is None:
        return F.npx.fully_connected(x, weight, num_hidden=num_outputs, no_bias=True, flatten=False)
    return F.npx.fully_connected(x, weight, bias, num_hidden=num_outputs, flatten=False)
