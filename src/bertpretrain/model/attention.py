"""Multi-head self-attention whose softmax ignores the padding keys of each sequence."""
from mxnet.gluon import HybridBlock

from .ops import AttentionMask, AttentionWeights


class MultiHeadSelfAttention(HybridBlock):
    """Scaled dot-product self-attention over ``num_heads`` heads, then an output projection.

    Input ``x`` (B, T, H) and the batch's :class:`~bertpretrain.model.ops.AttentionMask`;
    output (B, T, H); ``ops`` is the model's op layer (:func:`bertpretrain.model.ops.for_backend`),
    whose ``self_attention`` computes it (per head with builtin operators, as one packed
    projection and one kernel with the fused ones). The query, key, value and output projections
    are the usual (H, H) weights with (H,) biases, the same parameters on every backend; head
    ``h`` uses rows ``h*d:(h+1)*d`` of the first three (d = H / heads) and the same columns of
    the output weight.
    """

    def __init__(self, num_hiddens, num_heads, dropout, ops, **kwargs):
        super().__init__(**kwargs)
        self._ops = ops
        self._num_hiddens = num_hiddens
        self._num_heads = num_heads
        self._dropout = dropout
        for name in ("query", "key", "value", "proj"):
            setattr(self, f"{name}_weight", self.params.get(f"{name}_weight",
                                                            shape=(num_hiddens, num_hiddens)))
            setattr(self, f"{name}_bias", self.params.get(f"{name}_bias", shape=(num_hiddens,),
                                                          init="zeros"))

    def hybrid_forward(self, F, x, mask, query_weight, query_bias, key_weight, key_bias,
                       value_weight, value_bias, proj_weight, proj_bias):
        weights = AttentionWeights(query_weight, query_bias, key_weight, key_bias, value_weight,
                                   value_bias, proj_weight, proj_bias)
        return self._ops.self_attention(F, x, AttentionMask(*mask), weights, self._num_hiddens,
                                        self._num_heads, self._dropout)
