"""The BERT model: encoder plus masked-LM and next-sentence heads."""
from mxnet import np as mx_np
from mxnet.gluon import HybridBlock

from .config import BERTConfig
from .encoder import BERTEncoder
from .heads import MaskedLMHead, NextSentenceHead


class BERTModel(HybridBlock):
    """BERT with its two pretraining heads, as a hybridizable Gluon block.

    ``net(tokens, segments, valid_lens, pred_positions)`` with ``tokens``, ``segments`` (B, T)
    int32, ``valid_lens`` (B,) int32 and ``pred_positions`` (B, P) int32 returns
    ``(encoded, mlm_logits, nsp_logits)``: encoded (B, T, num_hiddens), mlm_logits
    (B, P, vocab_size) computed only at ``pred_positions``, nsp_logits (B, 2).
    ``pred_positions=None`` skips the MLM head and returns ``mlm_logits=None``. With ``mlm_labels``
    and ``mlm_weights`` (B, P) as well, and the fused kernels usable, the MLM head returns
    ``(losses, correct)`` (B, P) in place of the logits (see :class:`MaskedLMHead`).

    The keyword arguments are those of :class:`BERTConfig` (defaults: d2l's small BERT); the
    configuration is kept as ``net.config``. Initialise with e.g. ``net.initialize(init.Xavier())``
    and hybridize with ``net.hybridize(static_alloc=True, static_shape=True)`` for speed. Input
    shapes are checked on every imperative call (and, with ``check_token_ids``, the token id range,
    which costs one small synchronisation); calls inside another hybridized block are not checked.
    """

    def __init__(self, vocab_size, num_hiddens=128, ffn_num_hiddens=256, num_heads=2, num_layers=2,
                 dropout=0.2, max_len=512, check_token_ids=True, **config_options):
        super().__init__()
        self.config = BERTConfig(vocab_size=vocab_size, num_hiddens=num_hiddens,
                                 ffn_num_hiddens=ffn_num_hiddens, num_heads=num_heads,
                                 num_layers=num_layers, dropout=dropout, max_len=max_len,
                                 **config_options)
        self.check_token_ids = check_token_ids
        self.encoder = BERTEncoder(self.config)
        token_embedding = self.encoder.embeddings.token_embedding
        tied = token_embedding.weight if self.config.tie_mlm_weights else None
        self.mlm = MaskedLMHead(self.config, tied_weight=tied)
        self.nsp = NextSentenceHead(self.config)

    @classmethod
    def from_config(cls, config, **kwargs):
        """Build an (uninitialised) model from a :class:`BERTConfig` or its dict form."""
        if isinstance(config, dict):
            config = BERTConfig.from_dict(config)
        return cls(**config.to_dict(), **kwargs)

    def forward(self, tokens, segments, valid_lens, pred_positions=None, mlm_labels=None,
                mlm_weights=None):
        if isinstance(tokens, mx_np.ndarray):
            check_inputs(self.config, tokens, segments, valid_lens, pred_positions,
                         check_token_ids=self.check_token_ids)
        if pred_positions is None:  # a hybridized graph cannot output None: add it back here
            encoded, nsp_logits = super().forward(tokens, segments, valid_lens)
            return encoded, None, nsp_logits
        if mlm_labels is not None:
            return super().forward(tokens, segments, valid_lens, pred_positions, mlm_labels,
                                   mlm_weights)
        return super().forward(tokens, segments, valid_lens, pred_positions)

    def hybrid_forward(self, F, tokens, segments, valid_lens, pred_positions=None, mlm_labels=None,
                       mlm_weights=None):
        encoded = self.encoder(tokens, segments, valid_lens)
        if pred_positions is None:
            return encoded, self.nsp(encoded)
        if mlm_labels is not None:
            return encoded, self.mlm(encoded, pred_positions, mlm_labels, mlm_weights), self.nsp(encoded)
        return encoded, self.mlm(encoded, pred_positions), self.nsp(encoded)


def check_inputs(config, tokens, segments, valid_lens, pred_positions=None, check_token_ids=True):
    """Raise ValueError if a batch cannot be fed to a model of ``config`` (see :class:`BERTModel`)."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape (batch, seq_len), got {tokens.shape}")
    batch_size, seq_len = tokens.shape
    if seq_len > config.max_len:
        raise ValueError(
            f"tokens has sequence length {seq_len} but the position table has max_len="
            f"{config.max_len} rows: build the model with max_len >= {seq_len} or shorten the batch")
    if segments.shape != tokens.shape:
        raise ValueError(f"segments must have the shape of tokens {tokens.shape}, got {segments.shape}")
    if valid_lens.shape != (batch_size,):
        raise ValueError(f"valid_lens must have shape ({batch_size},), got {valid_lens.shape}")
    if pred_positions is not None and (pred_positions.ndim != 2 or pred_positions.shape[0] != batch_size):
        raise ValueError(f"pred_positions must have shape ({batch_size}, num_preds), "
                         f"got {pred_positions.shape}")
    if check_token_ids:
        low, high = (int(v) for v in mx_np.stack([tokens.min(), tokens.max()]).asnumpy())
        if low < 0 or high >= config.vocab_size:
            raise ValueError(
                f"tokens contains ids in [{low}, {high}] but vocab_size={config.vocab_size}: ids must "
                f"lie in [0, {config.vocab_size}); build the model with the vocabulary's size")
