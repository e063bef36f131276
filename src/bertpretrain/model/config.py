"""The hyperparameters that define a BERT architecture, validated and (de)serialisable as a dict.

A :class:`BERTConfig` is everything needed to rebuild a :class:`~bertpretrain.model.BERTModel`
before loading its parameters, so it is saved next to them (``config.json``).
"""
import dataclasses
from dataclasses import dataclass

from ..errors import UserError

ACTIVATIONS = ("relu", "gelu")
#: The positions (learned position embeddings) of the architectures bertpretrain names, d2l's small BERT and the
#: original BERT's sizes: the longest sequence they take, unless a configuration says otherwise.
DEFAULT_POSITIONS = 512


class SequenceLengthError(UserError, ValueError):
    """A sequence length beyond a model's positions; the message estimates the memory it would have taken."""


@dataclass(frozen=True)
class BERTConfig:
    """Sizes and options of a BERT encoder with its masked-LM and next-sentence heads.

    The defaults are d2l's small BERT (ReLU, post-LN, no LayerNorm after the embeddings, untied
    MLM decoder). ``activation="gelu"``, ``embedding_layer_norm=True`` and ``tie_mlm_weights=True``
    together give the original BERT architecture (use ``layer_norm_eps=1e-12`` to match its
    checkpoints exactly); :func:`bert_tiny`, :func:`bert_mini`, :func:`bert_small` and
    :func:`bert_base` are the original sizes with those options, :func:`bert_d2l_small` the defaults.

    Attributes:
        vocab_size: number of token ids; every id must lie in ``[0, vocab_size)``.
        num_hiddens: width H of every hidden state (must be divisible by ``num_heads``).
        ffn_num_hiddens: inner width of the position-wise feed-forward network.
        num_heads: attention heads per layer.
        num_layers: transformer encoder layers.
        dropout: drop probability for attention weights and after every sublayer (and after the
            embeddings when ``embedding_layer_norm``).
        max_len: size of the learned position table: the longest sequence the model accepts.
        num_segments: size of the segment (token type) table; 2 for sentence pairs.
        activation: ``"relu"`` (d2l) or ``"gelu"`` (BERT), used in the FFN and the MLM transform.
        embedding_layer_norm: LayerNorm and dropout after summing the three embeddings (BERT).
        tie_mlm_weights: use the token embedding matrix as the MLM output projection (BERT).
        layer_norm_eps: epsilon of every LayerNorm.
        pre_layer_norm: pre-LN transformer layers, ``x + Drop(Sublayer(LN(x)))``, known to train
            stably at higher learning rates (Xiong et al., 2020); False: post-LN, as BERT and d2l.
            The original BERT (and Hugging Face's ``BertModel``) cannot express it.
    """

    vocab_size: int
    num_hiddens: int = 128
    ffn_num_hiddens: int = 256
    num_heads: int = 2
    num_layers: int = 2
    dropout: float = 0.2
    max_len: int = 512
    num_segments: int = 2
    activation: str = "relu"
    embedding_layer_norm: bool = False
    tie_mlm_weights: bool = False
    layer_norm_eps: float = 1e-5
    pre_layer_norm: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "num_hiddens", "ffn_num_hiddens", "num_heads", "num_layers",
                     "max_len", "num_segments"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_hiddens % self.num_heads:
            raise ValueError(
                f"num_hiddens ({self.num_hiddens}) must be divisible by num_heads ({self.num_heads}): "
                f"each head gets num_hiddens // num_heads features; choose e.g. num_heads="
                f"{_largest_divisor_at_most(self.num_hiddens, self.num_heads)} or num_hiddens="
                f"{-(-self.num_hiddens // self.num_heads) * self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}")

    @property
    def head_size(self):
        """Features per attention head."""
        return self.num_hiddens // self.num_heads

    def check_max_len(self, max_len, batch_size=1, name="max_len", source=None):
        """Refuse sequences of ``max_len`` tokens when they exceed this configuration's positions (``max_len``),
        before anything is allocated for them.

        ``name`` is how the caller's user calls the length (``'--max-len'``), ``source`` where this
        configuration comes from (e.g. a Hugging Face folder), for the message.

        Raises:
            SequenceLengthError: naming both lengths, the memory a training step of ``batch_size`` sequences of
                ``max_len`` tokens would take (:func:`estimate_step_memory`), and the way out.
        """
        if max_len <= self.max_len:
            return
        where = f" of {source}" if source else ""
        raise SequenceLengthError(
            f"{name} {max_len} is more than the {self.max_len} positions{where} (the longest sequence the model "
            f"takes): a training step of {batch_size} sequences of {max_len} tokens would need about "
            f"{_gigabytes(estimate_step_memory(self, batch_size, max_len))} of memory. Use {name} {self.max_len} "
            "or less")

    def to_dict(self):
        """The configuration as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Build a configuration from :meth:`to_dict` output; unknown keys are an error."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown BERTConfig keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**values)


def estimate_step_memory(config, batch_size, seq_len):
    """Bytes that one training step of ``config`` on ``batch_size`` sequences of ``seq_len`` tokens needs, roughly:
    the float32 activations kept for the backward pass, about ``num_layers * (14 H + 2 FFN) + 4 H`` numbers per
    token, and one (seq_len, seq_len) attention score matrix (the least any backend holds at once).

    Measured on the fused backend (one thread, bert-preln layout, H=128, FFN=256, 2 layers, AMD EPYC Zen 5): 0.62
    GB above the process for 32 x 1,024 tokens, 1.21 GB for 32 x 2,048, 0.64 GB for 8 x 4,096; this estimate
    gives 0.67, 1.36 and 0.74 GB. MXNet's builtin attention holds every head's scores, which this leaves out.
    """
    per_token = config.num_layers * (14 * config.num_hiddens + 2 * config.ffn_num_hiddens) + 4 * config.num_hiddens
    return 4 * (batch_size * seq_len * per_token + seq_len * seq_len)


def check_max_len(max_len, batch_size=1, name="max_len", config=None, source=None):
    """Refuse a sequence length beyond the positions of ``config`` (default: a named architecture's
    :data:`DEFAULT_POSITIONS`), before any data or model is made; see :meth:`BERTConfig.check_max_len`."""
    (config or BERTConfig(vocab_size=1)).check_max_len(max_len, batch_size, name, source)


def _gigabytes(num_bytes):
    return f"{num_bytes / 1e9:,.0f} GB" if num_bytes >= 1e10 else f"{num_bytes / 1e9:.2g} GB"


def bert_d2l_small(vocab_size, **overrides):
    """d2l's small BERT (the :class:`BERTConfig` defaults): 2 layers, H=128, 2 heads, FFN 256, ReLU,
    dropout 0.2, no embedding LayerNorm, untied decoder. ``overrides`` replace any other field."""
    return BERTConfig(vocab_size=vocab_size, **overrides)


def _original_bert(vocab_size, num_layers, num_hiddens, overrides):
    """An original-BERT configuration (Devlin et al. 2019; Turc et al. 2019 for the small sizes):
    GELU, LayerNorm after the embeddings, MLM decoder tied to the token embeddings, LayerNorm
    epsilon 1e-12, dropout 0.1, 64 features per head, FFN 4H, 512 positions."""
    options = dict(num_hiddens=num_hiddens, ffn_num_hiddens=4 * num_hiddens,
                   num_heads=num_hiddens // 64, num_layers=num_layers, dropout=0.1, max_len=512,
                   activation="gelu", embedding_layer_norm=True, tie_mlm_weights=True,
                   layer_norm_eps=1e-12)
    options.update(overrides)
    return BERTConfig(vocab_size=vocab_size, **options)


def bert_tiny(vocab_size, **overrides):
    """BERT-Tiny: 2 layers, H=128, 2 heads, FFN 512, original-BERT options; ``overrides`` replace
    fields."""
    return _original_bert(vocab_size, 2, 128, overrides)


def bert_mini(vocab_size, **overrides):
    """BERT-Mini: 4 layers, H=256, 4 heads, FFN 1024, original-BERT options; ``overrides`` replace
    fields."""
    return _original_bert(vocab_size, 4, 256, overrides)


def bert_small(vocab_size, **overrides):
    """BERT-Small: 4 layers, H=512, 8 heads, FFN 2048, original-BERT options; ``overrides`` replace
    fields."""
    return _original_bert(vocab_size, 4, 512, overrides)


def bert_base(vocab_size, **overrides):
    """BERT-Base: 12 layers, H=768, 12 heads, FFN 3072, original-BERT options; ``overrides`` replace
    fields."""
    return _original_bert(vocab_size, 12, 768, overrides)


def _largest_divisor_at_most(number, limit):
    return max(d for d in range(1, limit + 1) if number % d == 0)
