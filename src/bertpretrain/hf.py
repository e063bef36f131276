"""Hugging Face interop: export a BERTModel as a ``transformers`` BERT folder, and import one back.

:func:`export_huggingface` writes what ``transformers.BertForPreTraining.from_pretrained(folder)``
and ``AutoTokenizer.from_pretrained(folder)`` load with no code of ours: ``config.json``,
``model.safetensors`` (Hugging Face parameter names) and the tokenizer files. :func:`import_huggingface`
reads such a folder (also one written by ``save_pretrained`` in ``transformers``) into a
:class:`~bertpretrain.model.BERTModel` and its tokenizer, so pretraining can continue from a
published checkpoint. Only ``safetensors`` and ``tokenizers`` are needed (``pip install
'bertpretrain[hf]'``), never ``transformers`` or ``torch``.

Like :mod:`bertpretrain.train`, this module sits above :mod:`bertpretrain.model` and
:mod:`bertpretrain.data` and joins them.
"""
import json
import logging
import os

import mxnet as mx
import numpy as np

from .data import (PAD_ID, RESERVED_TOKENS, DataError, Vocab, WordPieceTokenizer, load_saved_vocab, load_tokenizer,
                   word_level_tokenizer)
from .data.tokenizer import TOKENIZER_FILE
from .files import atomic_folder
from .model import BERTModel

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_ACTIVATIONS = {"gelu": "gelu", "relu": "relu"}  # bertpretrain -> Hugging Face hidden_act (same functions)
_CONVERT_HINT = ("convert it to safetensors with transformers installed: python -c \"from transformers import "
                 "BertForPreTraining as M; M.from_pretrained('{0}').save_pretrained('{0}', safe_serialization=True)\"")


def _safetensors_numpy():
    try:
        from safetensors import numpy as safetensors_numpy
    except ImportError:
        raise ImportError("Hugging Face export and import need the 'safetensors' package: "
                          "pip install 'bertpretrain[hf]'") from None
    return safetensors_numpy


def _parameters(net):
    """(Hugging Face name, Gluon Parameter) for every parameter of ``net``, in a fixed order.

    A tied MLM decoder has no entry of its own (it is the word embedding matrix).
    """
    enc, emb = net.encoder, net.encoder.embeddings
    pairs = [("bert.embeddings.word_embeddings.weight", emb.token_embedding.weight),
             ("bert.embeddings.position_embeddings.weight", emb.position_embedding.weight),
             ("bert.embeddings.token_type_embeddings.weight", emb.segment_embedding.weight),
             ("bert.embeddings.LayerNorm.weight", emb.norm.gamma),
             ("bert.embeddings.LayerNorm.bias", emb.norm.beta)]
    for i, layer in enumerate(enc.layers):
        prefix, att = f"bert.encoder.layer.{i}.", layer.attention
        for hf_name, ours in (("self.query", "query"), ("self.key", "key"), ("self.value", "value"),
                              ("output.dense", "proj")):
            pairs += [(f"{prefix}attention.{hf_name}.weight", getattr(att, f"{ours}_weight")),
                      (f"{prefix}attention.{hf_name}.bias", getattr(att, f"{ours}_bias"))]
        pairs += [(f"{prefix}attention.output.LayerNorm.weight", layer.attention_norm.gamma),
                  (f"{prefix}attention.output.LayerNorm.bias", layer.attention_norm.beta),
                  (f"{prefix}intermediate.dense.weight", layer.ffn_in.weight),
                  (f"{prefix}intermediate.dense.bias", layer.ffn_in.bias),
                  (f"{prefix}output.dense.weight", layer.ffn_out.weight),
                  (f"{prefix}output.dense.bias", layer.ffn_out.bias),
                  (f"{prefix}output.LayerNorm.weight", layer.ffn_norm.gamma),
                  (f"{prefix}output.LayerNorm.bias", layer.ffn_norm.beta)]
    mlm, nsp = net.mlm, net.nsp
    pairs += [("bert.pooler.dense.weight", nsp.pooler.weight), ("bert.pooler.dense.bias", nsp.pooler.bias),
              ("cls.seq_relationship.weight", nsp.classifier.weight),
              ("cls.seq_relationship.bias", nsp.classifier.bias),
              ("cls.predictions.transform.dense.weight", mlm.transform.weight),
              ("cls.predictions.transform.dense.bias", mlm.transform.bias),
              ("cls.predictions.transform.LayerNorm.weight", mlm.norm.gamma),
              ("cls.predictions.transform.LayerNorm.bias", mlm.norm.beta)]
    if mlm.decoder is None:
        pairs.append(("cls.predictions.bias", mlm.decoder_bias))
    else:
        pairs += [("cls.predictions.decoder.weight", mlm.decoder.weight), ("cls.predictions.bias", mlm.decoder.bias)]
    return pairs


def _hf_config(config):
    """The ``config.json`` of ``transformers``' BertForPreTraining for a :class:`BERTConfig`."""
    return {
        "architectures": ["BertForPreTraining"], "model_type": "bert",
        "vocab_size": config.vocab_size, "hidden_size": config.num_hiddens,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "intermediate_size": config.ffn_num_hiddens, "hidden_act": _ACTIVATIONS[config.activation],
        "hidden_dropout_prob": config.dropout, "attention_probs_dropout_prob": config.dropout,
        "max_position_embeddings": config.max_len, "type_vocab_size": config.num_segments,
        "layer_norm_eps": config.layer_norm_eps, "pad_token_id": PAD_ID,
        "tie_word_embeddings": config.tie_mlm_weights, "position_embedding_type": "absolute",
        "initializer_range": 0.02, "torch_dtype": "float32",
    }


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


def export_huggingface(net, vocab_or_tokenizer, folder):
    """Write ``net`` and its tokenizer as a Hugging Face BERT folder; return the folder.

    Args:
        net: a :class:`~bertpretrain.model.BERTModel` built with ``embedding_layer_norm=True`` (the
            original BERT architecture; any activation of ``relu``/``gelu``, tied or untied decoder).
        vocab_or_tokenizer: the :class:`~bertpretrain.data.Vocab` or
            :class:`~bertpretrain.data.WordPieceTokenizer` the model was trained with.
        folder: created or replaced as a whole (atomically).
    The folder holds ``config.json``, ``model.safetensors`` (float32, Hugging Face names; a tied
    decoder is not stored, as ``transformers`` writes it; an untied one stores its bias under both names), ``tokenizer.json``, ``tokenizer_config.json``,
    ``special_tokens_map.json`` and, for WordPiece, ``vocab.txt``.
    """
    if not isinstance(net, BERTModel):
        raise ValueError(f"net must be a BERTModel (pass `.bert` of a BERTForPretraining), got {type(net).__name__}")
    config = net.config
    if not config.embedding_layer_norm:
        raise ValueError("this model has no LayerNorm after the embeddings (d2l's default), which Hugging Face's "
                         "BERT always applies, so it cannot be exported exactly: train with "
                         "embedding_layer_norm=True (BERTModel(..., embedding_layer_norm=True), or "
                         "'bertpretrain pretrain --architecture bert')")
    if config.pre_layer_norm:
        raise ValueError("this model has pre-LN layers (LayerNorm before each sublayer), while Hugging Face's BERT "
                         "is post-LN, so it cannot be exported exactly: train with pre_layer_norm=False "
                         "('bertpretrain pretrain --architecture bert')")
    if len(vocab_or_tokenizer) != config.vocab_size:
        raise ValueError(f"the tokenizer has {len(vocab_or_tokenizer)} ids but the model's vocab_size is "
                         f"{config.vocab_size}: pass the vocabulary the model was trained with")
    tensors = {name: param.data().asnumpy().astype(np.float32) for name, param in _parameters(net)}
    if not config.tie_mlm_weights:  # transformers ties the decoder's bias to cls.predictions.bias only with tied weights
        tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
    files = _tokenizer_files(vocab_or_tokenizer, config.max_len)
    safetensors_numpy = _safetensors_numpy()
    with atomic_folder(folder) as staging:
        with open(os.path.join(staging, CONFIG_FILE), "w") as f:
            json.dump(_hf_config(config), f, indent=2, sort_keys=True)
        safetensors_numpy.save_file(tensors, os.path.join(staging, WEIGHTS_FILE), metadata={"format": "pt"})
        for name, text in files.items():
            with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                f.write(text)
    return folder


def _bert_config(hf, path):
    """A :class:`BERTConfig` dict from a Hugging Face ``config.json`` dict; refuses what it cannot express."""
    if hf.get("model_type") != "bert":
        raise ValueError(f"{path} describes a {hf.get('model_type')!r} model; only 'bert' can be imported")
    activation = hf.get("hidden_act", "gelu")
    if activation not in _ACTIVATIONS.values():
        raise ValueError(f"{path}: hidden_act={activation!r} has no exact bertpretrain equivalent "
                         f"(supported: {sorted(_ACTIVATIONS.values())})")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: position_embedding_type={hf['position_embedding_type']!r} is not supported "
                         "(only 'absolute' position embeddings)")
    dropout = hf.get("hidden_dropout_prob", 0.1)
    if hf.get("attention_probs_dropout_prob", dropout) != dropout:
        logger.warning("%s: attention dropout %s differs from hidden dropout %s; bertpretrain uses one rate (%s)",
                       path, hf["attention_probs_dropout_prob"], dropout, dropout)
    return dict(vocab_size=hf["vocab_size"], num_hiddens=hf["hidden_size"], ffn_num_hiddens=hf["intermediate_size"],
                num_heads=hf["num_attention_heads"], num_layers=hf["num_hidden_layers"], dropout=dropout,
                max_len=hf.get("max_position_embeddings", 512), num_segments=hf.get("type_vocab_size", 2),
                activation=activation, embedding_layer_norm=True, layer_norm_eps=hf.get("layer_norm_eps", 1e-12))


def _read_weights(folder):
    """{name: array} of a folder's safetensors weights (one file or shards), names normalised."""
    safetensors_numpy = _safetensors_numpy()
    single, index = os.path.join(folder, WEIGHTS_FILE), os.path.join(folder, WEIGHTS_FILE + ".index.json")
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as f:
            files = [os.path.join(folder, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
    elif os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
        raise ValueError(f"{folder} holds pytorch_model.bin only (PyTorch pickle), which bertpretrain does not read "
                         "(it would need torch and can run code on load): " + _CONVERT_HINT.format(folder))
    else:
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}: expected a folder written by export_huggingface "
                                "or transformers' save_pretrained")
    weights = {}
    for path in files:
        for name, array in safetensors_numpy.load_file(path).items():
            name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
            weights[name if name.startswith(("bert.", "cls.")) else f"bert.{name}"] = array
    return weights


def import_huggingface(folder, device=None):
    """Read a Hugging Face BERT folder into ``(BERTModel, tokenizer)``.

    Args:
        folder: written by :func:`export_huggingface` or by ``save_pretrained`` of ``transformers``
            (``config.json`` and ``model.safetensors``, pretraining heads included, as
            ``BertForPreTraining`` saves them).
        device: MXNet context of the parameters (default: the current one).
    Returns:
        ``(net, tokenizer)``: a BERT-architecture :class:`BERTModel` and a
        :class:`~bertpretrain.data.WordPieceTokenizer` (or the :class:`~bertpretrain.data.Vocab` of a
        word-level export), or None when the folder holds no tokenizer (token ids are then the
        checkpoint's own). When the tokenizer keeps its reserved tokens at other ids than bertpretrain
        (``[PAD]`` 0, ``[UNK]`` 100, ... in Google's vocabularies), those ids are swapped into 0-4 and the
        model's token rows are reordered alike, so the pair gives the same outputs for the same text.
    """
    config_path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} not found: a Hugging Face model folder holds {CONFIG_FILE}")
    with open(config_path) as f:
        hf = json.load(f)
    options = _bert_config(hf, config_path)
    weights = _read_weights(folder)
    decoder = weights.get("cls.predictions.decoder.weight")
    tied = hf.get("tie_word_embeddings", True) or decoder is None
    net = BERTModel(tie_mlm_weights=tied, **options)
    expected = dict(_parameters(net))
    if "cls.predictions.bias" not in weights and "cls.predictions.decoder.bias" in weights:
        weights["cls.predictions.bias"] = weights["cls.predictions.decoder.bias"]
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ValueError(f"{folder} lacks {len(missing)} parameter(s) of BertForPreTraining, e.g. {missing[:3]}; "
                         "import needs both pretraining heads (a folder saved from BertForPreTraining, "
                         "not BertModel)")

    tokenizer, order = None, None
    if any(os.path.isfile(os.path.join(folder, name)) for name in (TOKENIZER_FILE, "vocab.txt")):
        tokenizer, order = load_tokenizer(folder)
        if len(tokenizer) != options["vocab_size"]:
            raise DataError(f"the tokenizer in {folder} has {len(tokenizer)} ids but config.json says vocab_size="
                            f"{options['vocab_size']}")
    else:
        logger.warning("%s holds no tokenizer (tokenizer.json or vocab.txt): returning the model alone; token ids "
                       "are the checkpoint's own", folder)
    if order is not None:
        for name in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias",
                     "cls.predictions.decoder.weight"):
            if name in weights:
                weights[name] = weights[name][order]

    device = device or mx.current_context()
    net.initialize(ctx=device)
    for name, param in expected.items():
        array = weights[name]
        if array.shape != param.shape:
            raise ValueError(f"{folder}: {name} has shape {array.shape}, config.json implies {param.shape}")
        param.set_data(mx.np.array(array, dtype=np.float32, ctx=device))
    return net, tokenizer


def export_run(run_or_model_dir, folder):
    """Export a model saved by bertpretrain (a run folder of ``bertpretrain pretrain``, or its ``model/``).

    The model folder holds ``config.json`` and ``model.params`` (see
    :func:`~bertpretrain.model.save_pretrained`) and the tokenizer: ``vocab.json`` (word level) or
    ``tokenizer.json`` (WordPiece). Returns the exported folder (see :func:`export_huggingface`).
    """
    from .model import load_pretrained

    model_dir = os.path.join(run_or_model_dir, "model")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        model_dir = run_or_model_dir
    vocab = load_saved_vocab(model_dir)
    if vocab is None:
        raise FileNotFoundError(f"{model_dir} holds no vocab.json or {TOKENIZER_FILE}: pass a run folder of "
                                "'bertpretrain pretrain' or the model folder inside it")
    return export_huggingface(load_pretrained(model_dir), vocab, folder)
