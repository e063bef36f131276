"""The hyperparameters that define a BERT architecture, validated and (de)serialisable as a dict.

A :class:`BERTConfig` is everything needed to rebuild a :class:`~bertpretrain.model.BERTModel`
before loading its parameters, so it is saved next to them (``config.json``).
"""
import dataclasses
from dataclasses import dataclass

ACTIVATIONS = ("relu", "gelu")


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
        dropout: drop probability for attention weights and after every sublayer, and after the
            embeddings when ``embedding_layer_norm`` or ``pre_layer_norm`` (BERT; Megatron-BERT and GPT-2
            drop out the embeddings of their pre-LN models too; d2l does not).
        max_len: size of the learned position table: the longest sequence the model accepts.
        num_segments: size of the segment (token type) table; 2 for sentence pairs.
        activation: ``"relu"`` (d2l) or ``"gelu"`` (BERT), used in the FFN and the MLM transform.
        embedding_layer_norm: LayerNorm and dropout after summing the three embeddings (BERT).
        tie_mlm_weights: use the token embedding matrix as the MLM output projection (BERT).
        layer_norm_eps: epsilon of every LayerNorm.
        pre_layer_norm: pre-LN transformer layers, ``x + Drop(Sublayer(LN(x)))``, known to train
            stably at higher learning rates (Xiong et al., 2020); False: post-LN, as BERT and d2l.
            The original BERT (and Hugging Face's ``BertModel``) cannot express it.
        final_layer_norm: a LayerNorm after the last layer, which every pre-LN design applies (GPT-2,
            Megatron-BERT, Xiong et al. 2020): without it the encoder returns the raw residual stream.
            Default (None): the same as ``pre_layer_norm``. Post-LN layers already end in a LayerNorm,
            so True needs ``pre_layer_norm``. Saved configurations that predate this field have none
            (:meth:`from_dict` reads its absence as False).
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
    final_layer_norm: bool = None

    def __post_init__(self):
        if self.final_layer_norm is None:
            object.__setattr__(self, "final_layer_norm", bool(self.pre_layer_norm))
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
        if self.final_layer_norm and not self.pre_layer_norm:
            raise ValueError("final_layer_norm=True needs pre_layer_norm=True: post-LN layers already end in a "
                             "LayerNorm; leave final_layer_norm unset")

    @property
    def head_size(self):
        """Features per attention head."""
        return self.num_hiddens // self.num_heads

    def to_dict(self):
        """The configuration as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Build a configuration from :meth:`to_dict` output (a saved ``config.json``); unknown keys are an
        error. A dict without ``final_layer_norm`` was saved before that field existed, when no model had
        a final LayerNorm: it reads as False."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown BERTConfig keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**{"final_layer_norm": False, **values})


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
