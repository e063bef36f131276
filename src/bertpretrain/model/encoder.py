"""BERT's input embeddings and its stack of transformer encoder layers (post-LN, or pre-LN with a final
LayerNorm)."""
from mxnet.gluon import HybridBlock, nn

from .attention import MultiHeadSelfAttention
from .layers import Dense, LayerNorm


class BERTEmbeddings(HybridBlock):
    """Sum of token, segment and learned position embeddings.

    ``tokens``, ``segments`` (B, T) and ``positions`` (B, T) (each row 0..T-1) -> (B, T, H).
    Positions are looked up per token, like the other two, so that the three embeddings add with
    the same shape (a broadcast add's backward is slow in MXNet 1.9.1). With
    ``config.embedding_layer_norm`` the sum is layer-normalised, as in the original BERT; it is
    dropped out then, and in every pre-LN model (Megatron-BERT, GPT-2); d2l does neither.
    ``ops`` is the model's op layer.
    """

    def __init__(self, config, ops, **kwargs):
        super().__init__(**kwargs)
        self._ops = ops
        self._dropout = config.dropout if config.embedding_layer_norm or config.pre_layer_norm else 0.0
        self.token_embedding = nn.Embedding(config.vocab_size, config.num_hiddens)
        self.segment_embedding = nn.Embedding(config.num_segments, config.num_hiddens)
        self.position_embedding = nn.Embedding(config.max_len, config.num_hiddens)
        self.norm = (LayerNorm(config.num_hiddens, config.layer_norm_eps, ops)
                     if config.embedding_layer_norm else None)

    def hybrid_forward(self, F, tokens, segments, positions):
        embedded = self._ops.add(F, self.token_embedding(tokens), self.segment_embedding(segments),
                                 self.position_embedding(positions))
        if self.norm is not None:
            embedded = self.norm(embedded)
        return self._ops.dropout(F, embedded, self._dropout)


class TransformerEncoderLayer(HybridBlock):
    """One post-LN transformer layer: x = LN(x + Drop(SelfAttn(x))); x = LN(x + Drop(FFN(x))).

    With ``config.pre_layer_norm``: x = x + Drop(SelfAttn(LN(x))); x = x + Drop(FFN(LN(x))).
    ``x`` (B, T, H) and the batch's :class:`~bertpretrain.model.ops.AttentionMask` -> (B, T, H).
    ``ops`` is the model's op layer.
    """

    def __init__(self, config, ops, **kwargs):
        super().__init__(**kwargs)
        self._ops = ops
        self._pre_layer_norm, self._dropout = config.pre_layer_norm, config.dropout
        self.attention = MultiHeadSelfAttention(config.num_hiddens, config.num_heads, config.dropout,
                                                ops)
        self.attention_norm = LayerNorm(config.num_hiddens, config.layer_norm_eps, ops,
                                        config.dropout)
        self.ffn_in = Dense(config.ffn_num_hiddens, config.num_hiddens, ops, config.activation)
        self.ffn_out = Dense(config.num_hiddens, config.ffn_num_hiddens, ops)
        self.ffn_norm = LayerNorm(config.num_hiddens, config.layer_norm_eps, ops, config.dropout)

    def hybrid_forward(self, F, x, mask):
        if self._pre_layer_norm:
            ops = self._ops
            x = ops.add(F, x, ops.dropout(F, self.attention(self.attention_norm(x), mask), self._dropout))
            ffn = self.ffn_out(self.ffn_in(self.ffn_norm(x)))
            return ops.add(F, x, ops.dropout(F, ffn, self._dropout))
        x = self.attention_norm(self.attention(x, mask), x)
        return self.ffn_norm(self.ffn_out(self.ffn_in(x)), x)


class BERTEncoder(HybridBlock):
    """Embeddings followed by ``config.num_layers`` transformer layers (and, with
    ``config.final_layer_norm``, a LayerNorm of the last layer's output: pre-LN layers leave it
    unnormalised).

    ``tokens``, ``segments`` (B, T) int, ``valid_lens`` (B,) int -> encoded (B, T, H). Keys at
    positions >= ``valid_lens[b]`` are ignored by every attention softmax, so the encodings of the
    valid positions do not depend on the padding tokens. ``ops`` is the model's op layer.
    """

    def __init__(self, config, ops, **kwargs):
        super().__init__(**kwargs)
        self._ops = ops
        self.embeddings = BERTEmbeddings(config, ops)
        self.layers = nn.HybridSequential()
        for _ in range(config.num_layers):
            self.layers.add(TransformerEncoderLayer(config, ops))
        self.final_norm = (LayerNorm(config.num_hiddens, config.layer_norm_eps, ops)
                           if config.final_layer_norm else None)

    def hybrid_forward(self, F, tokens, segments, valid_lens):
        positions = F.npx.arange_like(tokens, axis=1).astype("int32")  # (T,)
        mask = self._ops.attention_mask(F, valid_lens, positions)
        x = self.embeddings(tokens, segments, F.np.zeros_like(tokens) + positions)
        for layer in self.layers:
            x = layer(x, mask)
        return x if self.final_norm is None else self.final_norm(x)
