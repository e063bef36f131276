"""Hugging Face interop: export a BERTModel as a ``transformers`` folder, and import one back.

Each exportable architecture is expressed exactly by one ``transformers`` class (a :class:`Layout`, see
:data:`LAYOUTS`):

- ``--architecture bert`` (post-LN, LayerNorm after the embeddings): ``BertForPreTraining``;
- ``--architecture bert-preln`` (pre-LN, LayerNorm after the embeddings, final LayerNorm, GELU):
  ``RobertaPreLayerNormForMaskedLM``, whose positions start at the padding id + 1 = 2 and which has no
  next-sentence head (the export leaves ours out);
- ``--architecture megatron-bert`` (pre-LN, no LayerNorm after the embeddings, final LayerNorm):
  ``MegatronBertForPreTraining``.

:func:`export_huggingface` writes what ``AutoModelForPreTraining.from_pretrained(folder)`` (or the class
above) and ``AutoTokenizer.from_pretrained(folder)`` load with no code of ours: ``config.json``,
``model.safetensors`` (Hugging Face parameter names) and the tokenizer files. :func:`import_huggingface`
reads such a folder (also one written by ``save_pretrained`` in ``transformers``) into a
:class:`~bertpretrain.model.BERTModel` and its tokenizer, so pretraining can continue from a published
checkpoint. Only ``safetensors`` (``pip install 'bertpretrain[hf]'``) and ``tokenizers`` are needed,
never ``transformers`` or ``torch``.

Like :mod:`bertpretrain.train`, this module sits above :mod:`bertpretrain.model` and
:mod:`bertpretrain.data` and joins them.
"""
import dataclasses
import json
import logging
import os

import mxnet as mx
import numpy as np

from .data import (CLS_ID, PAD_ID, RESERVED_TOKENS, SEP_ID, DataError, Vocab, WordPieceTokenizer, load_tokenizer,
                   word_level_tokenizer)
from .errors import UserError
from .files import CONFIG_FILE, TOKENIZER_FILE, atomic_folder
from .model import BERTConfig, BERTModel
from .pretrained import load_pretrained

logger = logging.getLogger(__name__)


class ExportError(UserError, ValueError):
    """A model that transformers cannot express, or a folder that cannot be written; the message says why and what
    to do."""

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = WEIGHTS_FILE + ".index.json"  # the shards of a large model: {"weight_map": {name: file}}
_ACTIVATIONS = ("gelu", "relu")  # bertpretrain's activations; transformers' hidden_act of the same name is the same
_FLOAT_DTYPES = ("F16", "F32", "F64")  # safetensors dtypes read (as float32)
_CONVERT_HINT = ("convert it to safetensors with transformers installed: python -c \"from transformers import "
                 "AutoModelForPreTraining as M; M.from_pretrained('{0}').save_pretrained('{0}')\"")

# How a tensor's rows differ between bertpretrain and transformers (see _to_hf / _from_hf).
_TOKEN_ROWS = "token rows"  # one row per token id: reordered on import when the tokenizer's reserved ids move
_POSITION_ROWS = "position rows"  # transformers' row ``offset + t`` is our position t
_NSP_ROWS = "nsp rows"  # transformers' NSP class 0 is "B follows A", ours is 1: the two rows swap


@dataclasses.dataclass(frozen=True)
class Layout:
    """One transformers class that expresses a bertpretrain architecture exactly, and its parameter names.

    Attributes:
        model_type: ``config.json``'s ``model_type``.
        hf_class: the class ``AutoModelForPreTraining`` builds for it (and ``architectures`` names).
        embedding_layer_norm, pre_layer_norm: the :class:`~bertpretrain.model.BERTConfig` fields it needs
            (pre-LN layouts also end in a final LayerNorm, ``final_layer_norm``).
        base: prefix of the encoder's parameters.
        attention_norm, ffn_norm: names of a layer's two LayerNorms inside ``{base}encoder.layer.{i}.``
            (after each sublayer for post-LN, before it for pre-LN).
        final_norm: name of the LayerNorm after the last layer (None: post-LN has none).
        mlm, mlm_transform, mlm_norm: the MLM head's prefix and its transform's dense and LayerNorm names.
        mlm_activation: the MLM transform's activation when the class fixes it (None: ``hidden_act``).
        nsp: whether the class has the next-sentence head (pooler and classifier).
        position_offset: the row of transformers' position table that holds our position 0.
    """

    model_type: str
    hf_class: str
    embedding_layer_norm: bool
    pre_layer_norm: bool
    base: str
    attention_norm: str
    ffn_norm: str
    final_norm: str
    mlm: str
    mlm_transform: str
    mlm_norm: str
    mlm_activation: str
    nsp: bool
    position_offset: int


LAYOUTS = {layout.model_type: layout for layout in (
    Layout("bert", "BertForPreTraining", embedding_layer_norm=True, pre_layer_norm=False, base="bert.",
           attention_norm="attention.output.LayerNorm", ffn_norm="output.LayerNorm", final_norm=None,
           mlm="cls.predictions.", mlm_transform="transform.dense", mlm_norm="transform.LayerNorm",
           mlm_activation=None, nsp=True, position_offset=0),
    # RoBERTa numbers positions from pad id + 1 (fairseq's make_positions); its LM head applies GELU whatever
    # hidden_act says, and its ForMaskedLM class has no pooler.
    Layout("roberta-prelayernorm", "RobertaPreLayerNormForMaskedLM", embedding_layer_norm=True,
           pre_layer_norm=True, base="roberta_prelayernorm.", attention_norm="attention.LayerNorm",
           ffn_norm="intermediate.LayerNorm", final_norm="roberta_prelayernorm.LayerNorm", mlm="lm_head.",
           mlm_transform="dense", mlm_norm="layer_norm", mlm_activation="gelu", nsp=False,
           position_offset=PAD_ID + 1),
    Layout("megatron-bert", "MegatronBertForPreTraining", embedding_layer_norm=False, pre_layer_norm=True,
           base="bert.", attention_norm="attention.ln", ffn_norm="ln", final_norm="bert.encoder.ln",
           mlm="cls.predictions.", mlm_transform="transform.dense", mlm_norm="transform.LayerNorm",
           mlm_activation=None, nsp=True, position_offset=0),
)}


def layout_of(config):
    """The :class:`Layout` a model of ``config`` (a :class:`~bertpretrain.model.BERTConfig`) exports as.

    Raises:
        ValueError: no transformers class computes the same function; the message says which architecture
            to train instead.
    """
    if not config.embedding_layer_norm and not config.pre_layer_norm:
        raise ExportError("this model has no LayerNorm after the embeddings and post-LN layers (d2l's default), a "
                         "combination no transformers BERT expresses, so it cannot be exported exactly: train with "
                         "embedding_layer_norm=True ('bertpretrain pretrain --architecture bert') or a pre-LN "
                         "architecture (--architecture bert-preln or megatron-bert)")
    if config.pre_layer_norm and not config.final_layer_norm:
        raise ExportError("this pre-LN model has no final LayerNorm (it was saved before bertpretrain added one), "
                         "while transformers' pre-LN models (Megatron-BERT, RoBERTa-PreLayerNorm) end in one, so it "
                         "cannot be exported exactly: train it again with this version (--architecture bert-preln "
                         "or megatron-bert)")
    layout = next(layout for layout in LAYOUTS.values()
                  if (layout.embedding_layer_norm, layout.pre_layer_norm) ==
                  (config.embedding_layer_norm, config.pre_layer_norm))
    if layout.mlm_activation and config.activation != layout.mlm_activation:
        raise ExportError(f"transformers' {layout.hf_class} applies {layout.mlm_activation} in its MLM head while "
                         f"this model uses {config.activation}, so it cannot be exported exactly: train with "
                         f"activation={layout.mlm_activation!r} (--architecture bert-preln does)")
    return layout


def _tensors(net, layout):
    """(Hugging Face name, Gluon Parameter, row kind) of every parameter of ``net`` in ``layout``, in a fixed
    order. A tied MLM decoder has no entry of its own (it is the word embedding matrix); a layout without the
    NSP head leaves ours out."""
    enc, emb, mlm, nsp = net.encoder, net.encoder.embeddings, net.mlm, net.nsp

    def dense(name, block, kind=None):
        return [(f"{name}.weight", block.weight, kind), (f"{name}.bias", block.bias, kind)]

    def norm(name, block):
        return [(f"{name}.weight", block.gamma, None), (f"{name}.bias", block.beta, None)]

    base = layout.base
    pairs = [(f"{base}embeddings.word_embeddings.weight", emb.token_embedding.weight, _TOKEN_ROWS),
             (f"{base}embeddings.position_embeddings.weight", emb.position_embedding.weight, _POSITION_ROWS),
             (f"{base}embeddings.token_type_embeddings.weight", emb.segment_embedding.weight, None)]
    if emb.norm is not None:
        pairs += norm(f"{base}embeddings.LayerNorm", emb.norm)
    for i, layer in enumerate(enc.layers):
        prefix, att = f"{base}encoder.layer.{i}.", layer.attention
        for hf_name, ours in (("self.query", "query"), ("self.key", "key"), ("self.value", "value"),
                              ("output.dense", "proj")):
            pairs += [(f"{prefix}attention.{hf_name}.weight", getattr(att, f"{ours}_weight"), None),
                      (f"{prefix}attention.{hf_name}.bias", getattr(att, f"{ours}_bias"), None)]
        pairs += (norm(prefix + layout.attention_norm, layer.attention_norm)
                  + dense(f"{prefix}intermediate.dense", layer.ffn_in) + dense(f"{prefix}output.dense", layer.ffn_out)
                  + norm(prefix + layout.ffn_norm, layer.ffn_norm))
    if enc.final_norm is not None:
        pairs += norm(layout.final_norm, enc.final_norm)
    pairs += dense(layout.mlm + layout.mlm_transform, mlm.transform) + norm(layout.mlm + layout.mlm_norm, mlm.norm)
    if mlm.decoder is None:
        pairs.append((f"{layout.mlm}bias", mlm.decoder_bias, _TOKEN_ROWS))
    else:
        pairs += [(f"{layout.mlm}decoder.weight", mlm.decoder.weight, _TOKEN_ROWS),
                  (f"{layout.mlm}bias", mlm.decoder.bias, _TOKEN_ROWS)]
    if layout.nsp:
        pairs += dense(f"{base}pooler.dense", nsp.pooler) + dense("cls.seq_relationship", nsp.classifier, _NSP_ROWS)
    return pairs


def _to_hf(array, kind, layout):
    """Our parameter value as transformers stores it (see the row kinds above)."""
    if kind == _POSITION_ROWS and layout.position_offset:  # rows before our position 0: never read for real tokens
        return np.concatenate([np.zeros((layout.position_offset, array.shape[1]), array.dtype), array])
    if kind == _NSP_ROWS:
        return np.ascontiguousarray(array[::-1])
    return array


def _from_hf(array, kind, layout, source_order=None):
    """A stored value as our parameter takes it: the inverse of :func:`_to_hf`, and the token rows put in
    the tokenizer's order (``source_order``, see :class:`~bertpretrain.data.vocab.TokenTable`)."""
    if kind == _TOKEN_ROWS and source_order is not None:
        return array[source_order]
    if kind == _POSITION_ROWS:
        return array[layout.position_offset:]
    if kind == _NSP_ROWS:
        return np.ascontiguousarray(array[::-1])
    return array


def _hf_shape(shape, kind, layout):
    """The shape transformers stores a parameter of ``shape`` in."""
    return (shape[0] + layout.position_offset, *shape[1:]) if kind == _POSITION_ROWS else tuple(shape)


def _hf_config(config, layout):
    """The ``config.json`` of ``layout``'s transformers class for a :class:`BERTConfig`."""
    hf = {
        "architectures": [layout.hf_class], "model_type": layout.model_type,
        "vocab_size": config.vocab_size, "hidden_size": config.num_hiddens,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "intermediate_size": config.ffn_num_hiddens, "hidden_act": config.activation,
        "hidden_dropout_prob": config.dropout, "attention_probs_dropout_prob": config.dropout,
        "max_position_embeddings": config.max_len + layout.position_offset, "type_vocab_size": config.num_segments,
        "layer_norm_eps": config.layer_norm_eps, "pad_token_id": PAD_ID,
        "tie_word_embeddings": config.tie_mlm_weights, "initializer_range": 0.02, "torch_dtype": "float32",
    }
    if layout.model_type == "bert":
        hf["position_embedding_type"] = "absolute"
    if layout.model_type == "roberta-prelayernorm":  # its defaults (0 and 2) are <unk> and [CLS] here
        hf.update(bos_token_id=CLS_ID, eos_token_id=SEP_ID)
    return hf


def _tokenizer_files(vocab_or_tokenizer, max_len):
    """{file name: text} of the tokenizer files ``AutoTokenizer.from_pretrained`` reads."""
    if isinstance(vocab_or_tokenizer, WordPieceTokenizer):
        tokenizer, unk = vocab_or_tokenizer.tokenizer, vocab_or_tokenizer.unk_token
        files = {"vocab.txt": "".join(f"{t}\n" for t in vocab_or_tokenizer.idx_to_token)}
    elif isinstance(vocab_or_tokenizer, Vocab):
        tokenizer, unk, files = word_level_tokenizer(vocab_or_tokenizer), RESERVED_TOKENS[0], {}
    else:
        raise ValueError(f"vocab_or_tokenizer must be a Vocab or a WordPieceTokenizer, got "
                         f"{type(vocab_or_tokenizer).__name__}")
    specials = dict(zip(("unk_token", "pad_token", "cls_token", "sep_token", "mask_token"),
                        (unk, *RESERVED_TOKENS[1:])))
    # PreTrainedTokenizerFast loads tokenizer.json as it is (a BERT tokenizer class would rebuild
    # its own pipeline, which a word-level vocabulary does not fit).
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
              "model_input_names": ["input_ids", "token_type_ids", "attention_mask"], **specials}
    files.update({TOKENIZER_FILE: tokenizer.to_str(pretty=True),
                  "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
                  "special_tokens_map.json": json.dumps(specials, indent=2) + "\n"})
    return files


def _safetensors():
    try:
        import safetensors
        import safetensors.numpy
    except ImportError:
        raise ImportError("Hugging Face export and import need the 'safetensors' package: "
                          "pip install 'bertpretrain[hf]'") from None
    return safetensors


def export_huggingface(net, vocab_or_tokenizer, folder):
    """Write ``net`` and its tokenizer as a Hugging Face folder; return the folder.

    Args:
        net: a :class:`~bertpretrain.model.BERTModel` of an architecture transformers expresses (see
            :data:`LAYOUTS`): BERT's (post-LN with the embedding LayerNorm) as ``BertForPreTraining``,
            pre-LN with the embedding LayerNorm and GELU as ``RobertaPreLayerNormForMaskedLM``, pre-LN
            without it as ``MegatronBertForPreTraining``; tied or untied decoder.
        vocab_or_tokenizer: the :class:`~bertpretrain.data.Vocab` or
            :class:`~bertpretrain.data.WordPieceTokenizer` the model was trained with.
        folder: created or replaced as a whole (atomically).
    The folder holds ``config.json``, ``model.safetensors`` (float32, Hugging Face names; a tied decoder is
    not stored, as ``transformers`` writes it; an untied one stores its bias under both names; the NSP
    classifier's rows in transformers' order, class 0 = "B follows A"), ``tokenizer.json``,
    ``tokenizer_config.json``, ``special_tokens_map.json`` and, for WordPiece, ``vocab.txt``. The
    RoBERTa-PreLayerNorm class has no next-sentence head: ours is left out (a warning says so).

    Raises:
        ValueError: the model has no exact transformers equivalent, or the tokenizer does not fit it.
        OSError: ``folder`` cannot be written (a file is there, a read-only disk, ...), naming it.
    """
    if not isinstance(net, BERTModel):
        raise ValueError(f"net must be a BERTModel (pass `.bert` of a BERTForPretraining), got {type(net).__name__}")
    config = net.config
    layout = layout_of(config)
    if len(vocab_or_tokenizer) != config.vocab_size:
        raise ExportError(f"the tokenizer has {len(vocab_or_tokenizer)} ids but the model's vocab_size is "
                         f"{config.vocab_size}: pass the vocabulary the model was trained with")
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ExportError(f"cannot export to {folder}: it is a file, not a folder; choose another path or "
                          "remove the file")
    tensors = {name: _to_hf(param.data().asnumpy().astype(np.float32), kind, layout)
               for name, param, kind in _tensors(net, layout)}
    if not config.tie_mlm_weights:  # transformers ties the decoder's bias to the head's bias only with tied weights
        tensors[f"{layout.mlm}decoder.bias"] = tensors[f"{layout.mlm}bias"]
    if not layout.nsp:
        logger.warning("%s has no next-sentence head: the exported model leaves out this model's NSP pooler and "
                       "classifier (MLM head and encoder only)", layout.hf_class)
    files = _tokenizer_files(vocab_or_tokenizer, config.max_len)
    safetensors = _safetensors()
    try:
        with atomic_folder(folder) as staging:
            with open(os.path.join(staging, CONFIG_FILE), "w") as f:
                json.dump(_hf_config(config, layout), f, indent=2, sort_keys=True)
            safetensors.numpy.save_file(tensors, os.path.join(staging, WEIGHTS_FILE), metadata={"format": "pt"})
            for name, text in files.items():
                with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                    f.write(text)
    except OSError as error:  # raised for a temporary name beside folder: name folder itself
        raise ExportError(f"cannot write the Hugging Face folder {folder}: {error.strerror or error}; choose a "
                          "writable place with free space") from error
    return folder


def _read_config(folder):
    """``(dict, path)`` of a folder's ``config.json``; DataError naming the file when it is missing or not JSON."""
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise DataError(f"{path} not found: a Hugging Face model folder holds {CONFIG_FILE} (pass a folder written "
                        "by export_huggingface / 'bertpretrain export-hf' or transformers' save_pretrained)")
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({error}): restore the file saved with the model") from None
    if not isinstance(hf, dict):
        raise DataError(f"{path} holds a JSON {type(hf).__name__}, not the object of a transformers configuration")
    return hf, path


def _bert_config(hf, path):
    """``(Layout, BERTConfig options)`` of a Hugging Face ``config.json`` dict; refuses what it cannot express."""
    layout = LAYOUTS.get(hf.get("model_type"))
    if layout is None:
        raise DataError(f"{path} describes a {hf.get('model_type')!r} model; bertpretrain imports "
                        f"{', '.join(repr(t) for t in LAYOUTS)}")
    missing = [key for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size") if key not in hf]
    if missing:
        raise DataError(f"{path} has no {', '.join(map(repr, missing))}: a {layout.model_type} configuration names "
                        "every size; restore the file saved with the model")
    activation = hf.get("hidden_act", "gelu")
    if activation not in _ACTIVATIONS or (layout.mlm_activation and activation != layout.mlm_activation):
        raise DataError(f"{path}: hidden_act={activation!r} has no exact bertpretrain equivalent in a "
                        f"{layout.model_type} model (supported: {layout.mlm_activation or list(_ACTIVATIONS)})")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise DataError(f"{path}: position_embedding_type={hf['position_embedding_type']!r} is not supported "
                        "(only 'absolute' position embeddings)")
    dropout = hf.get("hidden_dropout_prob", 0.1)
    if hf.get("attention_probs_dropout_prob", dropout) != dropout:
        logger.warning("%s: attention dropout %s differs from hidden dropout %s; bertpretrain uses one rate (%s)",
                       path, hf["attention_probs_dropout_prob"], dropout, dropout)
    offset = layout.position_offset
    if layout.model_type == "roberta-prelayernorm":  # positions start after the padding id's
        pad = hf.get("pad_token_id", PAD_ID)
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise DataError(f"{path}: pad_token_id={pad!r}; a {layout.model_type} model needs a token id")
        offset = pad + 1
    positions = hf.get("max_position_embeddings", 512)
    options = dict(vocab_size=hf["vocab_size"], num_hiddens=hf["hidden_size"], ffn_num_hiddens=hf["intermediate_size"],
                   num_heads=hf["num_attention_heads"], num_layers=hf["num_hidden_layers"], dropout=dropout,
                   max_len=positions - offset if isinstance(positions, int) else positions,
                   num_segments=hf.get("type_vocab_size", 2), activation=activation,
                   embedding_layer_norm=layout.embedding_layer_norm, pre_layer_norm=layout.pre_layer_norm,
                   layer_norm_eps=hf.get("layer_norm_eps", 1e-12))
    try:
        BERTConfig(**options)
    except (TypeError, ValueError) as error:
        raise DataError(f"{path} describes no model bertpretrain can build: {error}") from None
    if offset != layout.position_offset:
        layout = dataclasses.replace(layout, position_offset=offset)
    return layout, options


def _shard_files(folder):
    """The safetensors files of a folder: ``model.safetensors``, or the shards its index names, all inside it."""
    single, index = os.path.join(folder, WEIGHTS_FILE), os.path.join(folder, INDEX_FILE)
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                names = sorted(set(json.load(f)["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
            raise DataError(f"{index} is not a safetensors index ({type(error).__name__}: {error}); expected "
                            "{\"weight_map\": {tensor name: file name}}") from None
        for name in names:
            # Shards are files of the folder itself: a path leaving it (absolute, or through "..") is refused. The
            # files may be symbolic links (the Hugging Face cache links its snapshots to blobs).
            relative = os.path.normpath(name) if isinstance(name, str) and not os.path.isabs(name) else os.pardir
            if relative == os.pardir or relative.startswith(os.pardir + os.sep):
                raise DataError(f"{index} names the shard {name!r}, which lies outside {folder}: import reads only "
                                "the files of the model's folder")
        missing = [name for name in names if not os.path.isfile(os.path.join(folder, name))]
        if missing:
            raise DataError(f"{index} names {missing[:3]}, not found in {folder}: copy every shard into the folder")
        return [os.path.join(folder, name) for name in names]
    if os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
        raise DataError(f"{folder} holds pytorch_model.bin only (a PyTorch pickle), which bertpretrain does not read "
                        "(it would need torch and can run code on load): " + _CONVERT_HINT.format(folder))
    raise DataError(f"{folder} has no {WEIGHTS_FILE}: expected a folder written by export_huggingface or "
                    "transformers' save_pretrained")


def _normalise(name, layout):
    """A stored tensor name as :func:`_tensors` spells it (older BERT files say gamma/beta; a base model's file
    has no base prefix)."""
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    return name if name.startswith((layout.base, layout.mlm, "cls.")) else layout.base + name


class _Weights:
    """The tensors of a folder's safetensors files, by normalised name: shapes from the headers (nothing loaded),
    values on :meth:`load`. A file that is not safetensors (random, truncated) raises DataError naming it."""

    def __init__(self, files, layout):
        safetensors = _safetensors()
        self.where, self.shapes = {}, {}
        for path in files:
            try:
                with safetensors.safe_open(path, framework="numpy") as f:
                    for key in f.keys():
                        info = f.get_slice(key)
                        if info.get_dtype() not in _FLOAT_DTYPES:
                            raise DataError(f"{path}: {key} is stored as {info.get_dtype()}; bertpretrain reads "
                                            f"{'/'.join(_FLOAT_DTYPES)}: save the model in float32 "
                                            "(model.float().save_pretrained(folder) in transformers)")
                        name = _normalise(key, layout)
                        self.where[name], self.shapes[name] = (path, key), tuple(info.get_shape())
            except safetensors.SafetensorError as error:
                raise DataError(f"{path} is not a readable safetensors file ({error}): it is damaged or "
                                "truncated; export or download it again") from None

    def __contains__(self, name):
        return name in self.where

    def alias(self, name, stored):
        """Read the tensor ``stored`` under ``name`` too."""
        self.where[name], self.shapes[name] = self.where[stored], self.shapes[stored]

    def load(self, names):
        """{name: float32 array} of ``names``, each file opened once."""
        safetensors, arrays = _safetensors(), {}
        for path in sorted({self.where[name][0] for name in names}):
            with safetensors.safe_open(path, framework="numpy") as f:
                for name in names:
                    if self.where[name][0] == path:
                        arrays[name] = f.get_tensor(self.where[name][1]).astype(np.float32)
        return arrays


def import_huggingface(folder, device=None):
    """Read a Hugging Face folder of one of the :data:`LAYOUTS` into ``(BERTModel, tokenizer)``.

    Args:
        folder: written by :func:`export_huggingface` or by ``save_pretrained`` of ``transformers``
            (``config.json`` with ``model_type`` bert, megatron-bert or roberta-prelayernorm, and
            ``model.safetensors`` or shards listed in ``model.safetensors.index.json``, all inside the folder).
            A folder without the next-sentence head (RoBERTa-PreLayerNorm's, or a masked-LM-only BERT)
            gives a freshly initialised one (normal, std ``initializer_range``), and a warning says so.
        device: MXNet context of the parameters (default: the current one).
    Returns:
        ``(net, tokenizer)``: a :class:`BERTModel` of the folder's architecture and a
        :class:`~bertpretrain.data.WordPieceTokenizer` (or the :class:`~bertpretrain.data.Vocab` of a
        word-level export), or None when the folder holds no tokenizer (token ids are then the
        checkpoint's own). When the tokenizer keeps its reserved tokens at other ids than bertpretrain
        (``[PAD]`` 0, ``[UNK]`` 100, ... in Google's vocabularies), those ids are swapped into 0-4 and the
        model's token rows are reordered alike, so the pair gives the same outputs for the same text.
    Raises:
        DataError: naming the file and what is wrong (invalid or incomplete ``config.json``, sizes that do
            not match the tensors, a damaged weights file, a shard outside the folder, ...), checked before
            any parameter is allocated.
    """
    folder = os.fspath(folder)
    hf, config_path = _read_config(folder)
    layout, options = _bert_config(hf, config_path)
    weights = _Weights(_shard_files(folder), layout)
    decoder = f"{layout.mlm}decoder.weight"
    net = BERTModel(tie_mlm_weights=hf.get("tie_word_embeddings", True) or decoder not in weights, **options)
    tensors = _tensors(net, layout)  # the parameters are declared, not allocated yet
    if f"{layout.mlm}bias" not in weights and f"{layout.mlm}decoder.bias" in weights:  # one name of a tied pair
        weights.alias(f"{layout.mlm}bias", f"{layout.mlm}decoder.bias")
    nsp = {id(param) for param in net.nsp.collect_params().values()}
    missing = [name for name, param, _ in tensors if name not in weights and id(param) not in nsp]
    if missing:
        raise DataError(f"{folder} lacks {len(missing)} parameter(s) of {layout.hf_class}, e.g. {missing[:3]}: "
                        f"import needs the encoder and the MLM head (a folder saved from {layout.hf_class})")
    tensors = [(name, param, kind) for name, param, kind in tensors if name in weights]
    for name, param, kind in tensors:  # sizes against the files' headers before anything is allocated
        expected = _hf_shape(param.shape, kind, layout)
        if weights.shapes[name] != expected:
            raise DataError(f"{weights.where[name][0]}: {name} has shape {weights.shapes[name]} but {config_path} "
                            f"implies {expected}: the configuration does not describe these weights")

    tokenizer = None
    if any(os.path.isfile(os.path.join(folder, name)) for name in (TOKENIZER_FILE, "vocab.txt")):
        tokenizer = load_tokenizer(folder)
        if len(tokenizer) != options["vocab_size"]:
            raise DataError(f"the tokenizer in {folder} has {len(tokenizer)} ids but {config_path} says vocab_size="
                            f"{options['vocab_size']}")
    else:
        logger.warning("%s holds no tokenizer (tokenizer.json or vocab.txt): returning the model alone; token ids "
                       "are the checkpoint's own", folder)

    arrays = weights.load([name for name, _, _ in tensors])
    device = device or mx.current_context()
    net.initialize(ctx=device)
    order = tokenizer.source_order if tokenizer is not None else None
    for name, param, kind in tensors:
        param.set_data(mx.np.array(_from_hf(arrays[name], kind, layout, order), dtype=np.float32, ctx=device))
    loaded = {id(param) for _, param, _ in tensors}
    fresh = [param for param in net.nsp.collect_params().values() if id(param) not in loaded]
    if fresh:  # as transformers initialises a Linear layer
        std = hf.get("initializer_range", 0.02)
        for param in fresh:
            param.set_data(mx.np.random.normal(0, std, size=param.shape, ctx=device) if len(param.shape) > 1
                           else mx.np.zeros(param.shape, ctx=device))
        logger.warning("%s holds no next-sentence head (%s has none, or it was not saved): the model gets a fresh "
                       "one (normal, std %s), which continued pretraining trains", folder, layout.hf_class, std)
    return net, tokenizer


def exported_class(folder):
    """The transformers class name of an exported folder (``architectures`` of its ``config.json``)."""
    hf, _ = _read_config(os.fspath(folder))
    return (hf.get("architectures") or ["?"])[0]


def export_run(run_or_model_dir, folder):
    """Export a model saved by bertpretrain (a run folder of ``bertpretrain pretrain``, or its ``model/``).

    The model folder holds what :func:`bertpretrain.load_pretrained` reads (``config.json``, ``model.params``
    and the vocabulary). Returns the exported folder (see :func:`export_huggingface`).
    """
    model_dir = os.path.join(run_or_model_dir, "model")
    if not os.path.isfile(os.path.join(model_dir, CONFIG_FILE)):
        model_dir = run_or_model_dir
    net, vocab = load_pretrained(model_dir)
    return export_huggingface(net, vocab, folder)
