"""BERT representations of a sentence or a sentence pair (d2l's ``get_bert_encoding``).

Lives at the top level because it joins both halves of the package: the pair format and the
vocabulary of :mod:`bertpretrain.data` and the network of :mod:`bertpretrain.model`.
"""
from mxnet import np

from .data import get_tokens_and_segments


def get_bert_encoding(net, tokens_a, tokens_b=None, *, vocab, device=None):
    """Encode ``[CLS] tokens_a [SEP] (tokens_b [SEP])`` with ``net`` and return (1, T, H) states.

    Args:
        net: a :class:`~bertpretrain.model.BERTModel` (initialised or loaded).
        tokens_a, tokens_b: lists of (lower-cased) word tokens; ``tokens_b`` is optional.
        vocab: the :class:`~bertpretrain.data.Vocab` the model was trained with (d2l reads a global
            one; here it is a required keyword, e.g. from ``net, vocab = bertpretrain.load_pretrained(folder)``).
        device: the MXNet context to compute on (default: the one holding the net's parameters).

    Returns:
        The encoder output for every token of the sequence, shape (1, T, num_hiddens) with
        T = len(tokens_a) + 2, plus len(tokens_b) + 1 for a pair. Row 0 is the ``[CLS]`` state.
    """
    tokens, segments = get_tokens_and_segments(tokens_a, tokens_b)
    device = device or net.collect_params().list_ctx()[0]
    token_ids = np.array([vocab[tokens]], dtype="int32", ctx=device)
    segment_ids = np.array([segments], dtype="int32", ctx=device)
    valid_len = np.array([len(tokens)], dtype="int32", ctx=device)
    encoded, _, _ = net(token_ids, segment_ids, valid_len)
    return encoded
