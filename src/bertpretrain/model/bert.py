"""The BERT model: encoder plus masked-LM and next-sentence heads."""
from mxnet import np as mx_np
from mxnet.gluon import HybridBlock

from . import ops
from .config import BERTConfig
from .encoder import BERTEncoder
from .heads import MaskedLMHead, NextSentenceHead


class BERTModel(HybridBlock):
    """BERT with its two pretraining heads, as a hybridizable Gluon block.

    ``net(tokens, segments, valid_lens, pred_positions)`` with ``tokens``, ``segments`` (B, T)
    int32, ``valid_lens`` (B,) int32 and ``pred_positions`` (B, P) int32 returns
    ``(encoded, mlm_logits, nsp_logits)``: encoded (B, T, num_hiddens), mlm_logits
    (B, P, vocab_size) computed only at ``pred_positions``, nsp_logits (B, 2).
    ``pred_positions=None`` skips the MLM head and returns ``mlm_logits=None``.

    ``config_options`` are the fields of :class:`BERTConfig` other than ``vocab_size`` (its
    defaults: d2l's small BERT); the configuration is kept as ``net.config``. To build from a
    configuration (e.g. a named one, :func:`~bertpretrain.model.bert_base`) use :meth:`from_config`.
    ``backend`` (``"fused"``, ``"builtin"`` or None: fused unless ``BERTPRETRAIN_KERNELS=0``) fixes
    how every op of this model is computed, see :mod:`bertpretrain.model.ops`; ``net.backend``
    names it. ``precision`` (``"fp32"``, ``"bf16"``: matrix products with bfloat16 operands on
    CPUs with AVX512_BF16, or ``"auto"``) is kept as ``net.precision`` (see :meth:`set_precision`).
    Initialise with e.g. ``net.initialize(init.Xavier())`` and hybridize with ``net.hybridize(static_alloc=True, static_shape=True)`` for speed. Input
    shapes are checked on every imperative call (and, with ``check_token_ids``, the token id range,
    which costs one small synchronisation; ``train_bert`` checks each batch on the host instead);
    calls inside another hybridized block are not checked.
    """

    def __init__(self, vocab_size, check_token_ids=True, backend=None, precision="fp32",
                 **config_options):
        super().__init__()
        self.config = BERTConfig(vocab_size=vocab_size, **config_options)
        self.check_token_ids = check_token_ids
        self.ops = ops.for_backend(backend, precision)
        self.encoder = BERTEncoder(self.config, self.ops)
        token_embedding = self.encoder.embeddings.token_embedding
        tied = token_embedding.weight if self.config.tie_mlm_weights else None
        self.mlm = MaskedLMHead(self.config, self.ops, tied_weight=tied)
        self.nsp = NextSentenceHead(self.config)

    @classmethod
    def from_config(cls, config, check_token_ids=True, backend=None, precision="fp32"):
        """Build an (uninitialised) model from a :class:`BERTConfig` or its dict form (``to_dict()``)."""
        if isinstance(config, dict):
            config = BERTConfig.from_dict(config)
        if not isinstance(config, BERTConfig):
            raise TypeError(f"config must be a BERTConfig or a dict of its fields, got "
                            f"{type(config).__name__}")
        return cls(check_token_ids=check_token_ids, backend=backend, precision=precision,
                   **config.to_dict())

    @property
    def backend(self):
        """``"fused"`` or ``"builtin"``: how this model's ops are computed (see :mod:`.ops`)."""
        return self.ops.backend

    @property
    def precision(self):
        """``"fp32"`` or ``"bf16"``: the precision of this model's matrix products (see :mod:`.ops`)."""
        return self.ops.precision

    def set_precision(self, precision):
        """Compute in ``precision`` (``"fp32"``, ``"bf16"`` or ``"auto"``, see
        :func:`~bertpretrain.model.ops.resolve_precision`) from the next trace on: hybridize again
        (or wrap anew) a block already traced. Returns ``"fp32"`` or ``"bf16"``. Parameters,
        checkpoints and exports are float32 in either precision.
        """
        self.ops.precision = ops.resolve_precision(precision, self.backend)
        return self.ops.precision

    def forward(self, tokens, segments, valid_lens, pred_positions=None):
        self.ops.follow_grad_req(self)
        if isinstance(tokens, mx_np.ndarray):
            check_inputs(self.config, tokens, segments, valid_lens, pred_positions,
                         check_token_ids=self.check_token_ids)
        if pred_positions is None:
            # A hybridized block caches the graph of one argument structure, usually the one with
            # pred_positions: without them, call the encoder and the NSP head (hybridized with this
            # block, each with its own cached graph) instead of this block's graph.
            encoded = self.encoder(tokens, segments, valid_lens)
            return encoded, None, self.nsp(encoded)
        return super().forward(tokens, segments, valid_lens, pred_positions)

    def hybrid_forward(self, F, tokens, segments, valid_lens, pred_positions):
        encoded = self.encoder(tokens, segments, valid_lens)
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
        check_token_range(config.vocab_size, low, high)


def check_token_range(vocab_size, low, high):
    """Raise ValueError unless token ids from ``low`` to ``high`` fit a vocabulary of ``vocab_size``."""
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"tokens contains ids in [{low}, {high}] but vocab_size={vocab_size}: ids must "
            f"lie in [0, {vocab_size}); build the model with the vocabulary's size")
