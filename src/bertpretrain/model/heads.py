"""The two pretraining heads: masked language model (at chosen positions) and next-sentence."""
from mxnet import symbol
from mxnet.gluon import HybridBlock, nn

from .layers import Dense, LayerNorm


def gather_positions(F, encoded, positions):
    """The hidden states at given positions of each sequence.

    ``encoded`` (B, T, H), integer ``positions`` (B, P) -> (B, P, H) with
    ``out[b, i] = encoded[b, positions[b, i]]``.
    """
    positions = positions.astype("int32")
    rows = F.npx.arange_like(positions, axis=0).astype("int32")  # (B,)
    rows = F.np.expand_dims(rows, axis=-1) + F.np.zeros_like(positions)  # (B, P)
    return F.npx.gather_nd(encoded, F.np.stack([rows, positions], axis=0))


class MaskedLMHead(HybridBlock):
    """Predicts the original tokens at the masked positions only.

    ``encoded`` (B, T, H), ``pred_positions`` (B, P) -> logits (B, P, vocab_size), through
    Dense(H) -> activation -> LayerNorm -> Dense(vocab_size). The states are gathered before the
    transform, so the cost scales with P, not T. With ``tied_weight`` (the token embedding
    matrix, (vocab_size, H)) the output projection reuses it and only a bias is learned.
    ``ops`` is the model's op layer.

    Called with integer ``labels`` and float32 ``weights`` (B, P) as well, it returns the
    weighted cross-entropies (B, P) and the weighted number of correct arg-maxes (a scalar)
    instead of the logits, through the op layer's ``mlm_cross_entropy``: with the fused kernels
    the decoder and the loss run as one kernel over chunks of the predictions and the
    (B * P, vocab_size) logits never exist. A hybridized caller that ignores the count does not
    compute it.
    """

    def __init__(self, config, ops, tied_weight=None, **kwargs):
        super().__init__(**kwargs)
        self._ops = ops
        self._vocab_size = config.vocab_size
        self.transform = Dense(config.num_hiddens, config.num_hiddens, ops, config.activation)
        self.norm = LayerNorm(config.num_hiddens, config.layer_norm_eps, ops)
        if tied_weight is None:
            self.decoder = nn.Dense(config.vocab_size, flatten=False, in_units=config.num_hiddens)
        else:
            self.decoder = None
            self.decoder_weight = tied_weight
            # also among this block's own parameters, so that it can run as a hybridized graph of
            # its own: BERTForPretraining calls it (with the labels) outside BERTModel's graph
            self.params.update({tied_weight.name: tied_weight})
            self.decoder_bias = self.params.get("decoder_bias", shape=(config.vocab_size,),
                                                init="zeros")

    def hybrid_forward(self, F, encoded, pred_positions, labels=None, weights=None,
                       decoder_weight=None, decoder_bias=None):
        hidden = self.norm(self.transform(gather_positions(F, encoded, pred_positions)))  # (B, P, H)
        if labels is not None:
            if self.decoder is not None:  # the untied decoder's parameters belong to its Dense child
                decoder_weight, decoder_bias = (
                    param.var() if F is symbol else param.data(hidden.ctx)
                    for param in (self.decoder.weight, self.decoder.bias))
            return self._ops.mlm_cross_entropy(F, hidden, decoder_weight, decoder_bias, labels,
                                               weights, self._vocab_size, count_correct=True)
        if self.decoder is not None:
            return self.decoder(hidden)
        return F.npx.fully_connected(hidden, decoder_weight, decoder_bias,
                                     num_hidden=self._vocab_size, flatten=False)


class NextSentenceHead(HybridBlock):
    """Classifies whether segment B follows segment A, from the ``[CLS]`` (position 0) state.

    ``encoded`` (B, T, H) -> logits (B, 2) via a tanh Dense(H) "pooler" and Dense(2).
    """

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.pooler = nn.Dense(config.num_hiddens, activation="tanh", flatten=False,
                               in_units=config.num_hiddens)
        self.classifier = nn.Dense(2, flatten=False, in_units=config.num_hiddens)

    def hybrid_forward(self, F, encoded):
        return self.classifier(self.pooler(encoded[:, 0, :]))
