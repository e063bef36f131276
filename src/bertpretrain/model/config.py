"""The hyperparameters that define a BERT architecture, validated and (de)serialisable as a dict.

A :class:`BERTConfig` is everything needed to rebuild a :class:`~bertpretrain.model.BERTModel`
before loading its parameters, so it is saved next to them (``config.json``). :class:`ModelOptions`
is how the command (and a recipe) chooses one: a named size, a layout and overrides.
"""
import dataclasses
from dataclasses import dataclass
from typing import Optional

from ..options import OptionError, boolean, integer, number, option, validate

from ..errors import UserError

ACTIVATIONS = ("relu", "gelu")
#: The positions (learned position embeddings) of the architectures bertpretrain names, d2l's small BERT and the
#: original BERT's sizes: the longest sequence they take, unless a configuration says otherwise.
DEFAULT_POSITIONS = 512


class SequenceLengthError(OptionError):
    """A sequence length beyond a model's positions; the message estimates the memory it would have taken."""


@dataclass(frozen=True)
class BERTConfig:
    """Sizes and options of a BERT encoder with its masked-LM and next-sentence heads.

    The defaults are d2l's small BERT (ReLU, post-LN, no LayerNorm after the embeddings, untied
    MLM decoder). ``activation="gelu"``, ``embedding_layer_norm=True`` and ``tie_mlm_weights=True``
    together give the original BERT architecture (use ``layer_norm_eps=1e-12`` to match its
    checkpoints exactly); :func:`bert_tiny`, :func:`bert_mini`, :func:`bert_small`, :func:`bert_medium`
    and :func:`bert_base` are the original sizes with those options, :func:`bert_d2l_small` the defaults.
    A bad value raises :class:`~bertpretrain.options.OptionError` naming the field (and the command's flag
    for the sizes the command sets).

    ``pre_layer_norm``: pre-LN transformer layers, ``x + Drop(Sublayer(LN(x)))``, known to train
    stably at higher learning rates (Xiong et al., 2020); False: post-LN, as BERT and d2l. The
    original BERT (and Hugging Face's ``BertModel``) cannot express it. ``dropout`` also applies after
    the embeddings when ``embedding_layer_norm`` or ``pre_layer_norm`` (BERT; Megatron-BERT and GPT-2
    drop out the embeddings of their pre-LN models too; d2l does not).

    ``final_layer_norm``: a LayerNorm after the last layer, which every pre-LN design applies (GPT-2,
    Megatron-BERT, Xiong et al. 2020): without it the encoder returns the raw residual stream. Default
    (None): the same as ``pre_layer_norm``. Post-LN layers already end in a LayerNorm, so True needs
    ``pre_layer_norm``. Saved configurations that predate this field have none (:meth:`from_dict` reads
    its absence as False).
    """

    vocab_size: int = option(help="number of token ids; every id must lie in [0, vocab_size)", check=integer(1),
                             cli=False)
    num_hiddens: int = option(128, "width H of every hidden state (a multiple of --num-heads)", check=integer(1),
                              flag="--hidden-size", cli=False)
    ffn_num_hiddens: int = option(256, "inner width of the position-wise feed-forward network", check=integer(1),
                                  flag="--ffn-size", cli=False)
    num_heads: int = option(2, "attention heads per layer", check=integer(1), flag="--num-heads", cli=False)
    num_layers: int = option(2, "transformer encoder layers", check=integer(1), flag="--num-layers", cli=False)
    dropout: float = option(0.2, "drop probability of the attention weights and after every sublayer (and after "
                            "the embeddings when they are layer-normalised)", check=number(at_least=0, less_than=1),
                            flag="--dropout", cli=False)
    max_len: int = option(512, "size of the learned position table: the longest sequence the model accepts",
                          check=integer(1), cli=False)
    num_segments: int = option(2, "size of the segment (token type) table; 2 for sentence pairs", check=integer(1),
                               cli=False)
    activation: str = option("relu", "the activation of the FFN and the MLM transform (relu: d2l, gelu: BERT)",
                             choices=ACTIVATIONS, cli=False)
    embedding_layer_norm: bool = option(False, "LayerNorm and dropout after summing the three embeddings (BERT)",
                                        check=boolean(), cli=False)
    tie_mlm_weights: bool = option(False, "the token embedding matrix is the MLM output projection (BERT)",
                                   check=boolean(), cli=False)
    layer_norm_eps: float = option(1e-5, "epsilon of every LayerNorm", check=number(greater_than=0), cli=False)
    pre_layer_norm: bool = option(False, "pre-LN layers (LayerNorm before each sublayer) instead of post-LN",
                                  check=boolean(), cli=False)
    final_layer_norm: Optional[bool] = option(None, "a LayerNorm after the last layer (unset: with pre-LN layers)",
                                              check=boolean(optional=True), cli=False)

    def __post_init__(self):
        if self.final_layer_norm is None:
            object.__setattr__(self, "final_layer_norm", bool(self.pre_layer_norm))
        validate(self)
        if self.num_hiddens % self.num_heads:
            raise OptionError(
                f"num_hiddens ({self.num_hiddens}, --hidden-size) must be divisible by num_heads ({self.num_heads}, "
                f"--num-heads): each head gets num_hiddens // num_heads features; choose e.g. num_heads="
                f"{_largest_divisor_at_most(self.num_hiddens, self.num_heads)} or num_hiddens="
                f"{-(-self.num_hiddens // self.num_heads) * self.num_heads}")
        if self.final_layer_norm and not self.pre_layer_norm:
            raise OptionError("final_layer_norm=True needs pre_layer_norm=True: post-LN layers already end in a "
                              "LayerNorm; leave final_layer_norm unset")

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
        """Build a configuration from :meth:`to_dict` output (a saved ``config.json``); unknown keys are an
        error. A dict without ``final_layer_norm`` was saved before that field existed, when no model had
        a final LayerNorm: it reads as False."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown BERTConfig keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**{"final_layer_norm": False, **values})


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


def _original_size(name, num_layers, num_hiddens):
    """The factory of an original BERT size (see :func:`_original_bert`): ``factory(vocab_size, **overrides)``."""
    def factory(vocab_size, **overrides):
        return _original_bert(vocab_size, num_layers, num_hiddens, overrides)
    factory.__name__ = factory.__qualname__ = f"bert_{name.lower()}"
    factory.__doc__ = (f"BERT-{name}: {num_layers} layers, H={num_hiddens}, {num_hiddens // 64} heads, FFN "
                       f"{4 * num_hiddens}, original-BERT options; ``overrides`` replace fields.")
    return factory


bert_tiny = _original_size("Tiny", 2, 128)
bert_mini = _original_size("Mini", 4, 256)
bert_small = _original_size("Small", 4, 512)
bert_medium = _original_size("Medium", 8, 512)
bert_base = _original_size("Base", 12, 768)


def _largest_divisor_at_most(value, limit):
    return max(d for d in range(1, limit + 1) if value % d == 0)


#: The named sizes of :class:`ModelOptions` (``--model``): d2l's small BERT, and the original BERT's sizes
#: (Devlin et al. 2019; Turc et al. 2019 for tiny to medium).
NAMED_CONFIGS = {"d2l-small": bert_d2l_small, "bert-tiny": bert_tiny, "bert-mini": bert_mini,
                 "bert-small": bert_small, "bert-medium": bert_medium, "bert-base": bert_base}

#: The layouts of :class:`ModelOptions` (``--architecture``), whatever the size: ``d2l``, d2l's own (ReLU, post-LN,
#: no LayerNorm after the embeddings, untied decoder); ``bert``, the original BERT's (GELU, LayerNorm after the
#: embeddings, tied decoder, epsilon 1e-12; exported as transformers' BertForPreTraining); ``bert-preln``, the
#: same with pre-LN layers and a final LayerNorm, which learns best in a short CPU run (exported as
#: RobertaPreLayerNormForMaskedLM); ``megatron-bert``, that without the LayerNorm after the embeddings
#: (exported as MegatronBertForPreTraining).
ARCHITECTURES = {
    "d2l": dict(activation="relu", embedding_layer_norm=False, tie_mlm_weights=False, layer_norm_eps=1e-5,
                pre_layer_norm=False),
    "bert": dict(activation="gelu", embedding_layer_norm=True, tie_mlm_weights=True, layer_norm_eps=1e-12,
                 pre_layer_norm=False),
    "bert-preln": dict(activation="gelu", embedding_layer_norm=True, tie_mlm_weights=True, layer_norm_eps=1e-5,
                       pre_layer_norm=True),
    "megatron-bert": dict(activation="gelu", embedding_layer_norm=False, tie_mlm_weights=True, layer_norm_eps=1e-5,
                          pre_layer_norm=True),
}


def _override(name):
    """A :class:`ModelOptions` field overriding :class:`BERTConfig`'s ``name`` (None: the named size's value),
    with that field's help and flag."""
    field = {f.name: f for f in dataclasses.fields(BERTConfig)}[name]
    return option(None, f"{field.metadata['help']} (overrides --model / --architecture)", flag=field.metadata["flag"])


@dataclass
class ModelOptions:
    """The model a recipe builds: a named size (:data:`NAMED_CONFIGS`), a layout (:data:`ARCHITECTURES`) and
    optional overrides of single sizes. :meth:`config` gives the :class:`BERTConfig` once the vocabulary is
    known. The defaults are d2l's small BERT. Sizes are checked by :class:`BERTConfig` when the options are
    made, so a bad one is refused before any data is read."""

    model: str = option("d2l-small", "the size: d2l's small BERT or one of the original BERT sizes",
                        choices=tuple(NAMED_CONFIGS))
    architecture: str = option("d2l", "the layout: d2l's own; bert, the original BERT's; bert-preln, BERT's with "
                               "pre-LN layers and a final LayerNorm; megatron-bert, that without the LayerNorm "
                               "after the embeddings (all but d2l export to Hugging Face)",
                               choices=tuple(ARCHITECTURES))
    num_layers: Optional[int] = _override("num_layers")
    num_hiddens: Optional[int] = _override("num_hiddens")
    num_heads: Optional[int] = _override("num_heads")
    ffn_num_hiddens: Optional[int] = _override("ffn_num_hiddens")
    dropout: Optional[float] = _override("dropout")
    final_layer_norm: Optional[bool] = _override("final_layer_norm")

    def __post_init__(self):
        validate(self)
        self.config(vocab_size=1, max_len=1)  # the sizes, checked by BERTConfig's own validators

    def config(self, vocab_size, max_len):
        """The :class:`BERTConfig` of these options for a vocabulary of ``vocab_size`` ids and ``max_len``
        positions."""
        overrides = {name: getattr(self, name) for name in ("num_layers", "num_hiddens", "num_heads",
                                                            "ffn_num_hiddens", "dropout", "final_layer_norm")
                     if getattr(self, name) is not None}
        return NAMED_CONFIGS[self.model](vocab_size, max_len=max_len, **ARCHITECTURES[self.architecture],
                                         **overrides)
