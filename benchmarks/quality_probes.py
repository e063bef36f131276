"""Probes of what a saved model does with held-out text, without transformers (issue 20 items 3 and 5).

- **Fill-mask**: the first ``count`` held-out sentences of 8-30 words that have a content word the
  vocabulary knows get one such word (drawn with an explicit seed) replaced by ``[MASK]``; the model's
  top-5 tokens at that position, and how often its first guess is the unknown token, the answer is
  among the five, and how many different first guesses the sentences get (a model that answers one
  list of frequent words for every sentence has learned no context).
- **Clean-sentence collapse**: the mean cosine between the encodings of different positions of a
  sentence (the tokens between ``[CLS]`` and ``[SEP]``, through ``get_bert_encoding``, as a user sees
  them), over the first ``count`` held-out sentences of 8-30 words; 1.0: every position has the same
  vector. ``bench_quality.py``'s own collapse reads masked training pairs instead.

Sentences are read as training reads them (``bertpretrain.data.iter_paragraphs``: lower-cased, split
on ``' . '``), in file order. Each function takes the network and the vocabulary of
``bertpretrain.load_pretrained(folder)`` (a word-level Vocab or a WordPiece tokenizer) and returns
JSON-serialisable values, for ``bench_quality.py``'s result files::

    from quality_probes import heldout_sentences, fill_mask_report, clean_sentence_collapse
    net, vocab = bertpretrain.load_pretrained(model_dir)
    sentences = heldout_sentences("wiki.test.tokens")
    report = fill_mask_report(net, vocab, sentences)      # {"examples": [...], "unk_first": 0.0, ...}
    collapse = clean_sentence_collapse(net, vocab, sentences)
"""
import itertools

import numpy as np

MIN_WORDS, MAX_WORDS = 8, 30
# Function words never masked: the probe asks for content (nouns, verbs, adjectives, adverbs).
FUNCTION_WORDS = frozenset("""
a about above after again against all also although am an and any are as at be because been before being
below between both but by can could did do does doing down during each either few for from further had has
have having he her here hers herself him himself his how however i if in into is it its itself just me more
most my myself neither no nor not now of off on once one only or other our ours ourselves out over own same
she should so some such than that the their theirs them themselves then there these they this those through
thus to too two under until up upon very was we were what when where whether which while who whom whose why
will with within without would yet you your yours yourself yourselves
""".split())


def heldout_sentences(path):
    """The sentences of a WikiText split file as training reads them (lower-case strings), in file order."""
    from bertpretrain.data import iter_paragraphs
    return [sentence.strip() for paragraph in iter_paragraphs(path, progress=False) for sentence in paragraph]


def _pieces(vocab, sentence):
    """The model's tokens of a sentence: WordPiece pieces, or whitespace-separated words."""
    return vocab.tokenize(sentence) if hasattr(vocab, "tokenize") else sentence.split()


def _clean(sentences, net, vocab):
    """(sentence, tokens) of the sentences of MIN_WORDS-MAX_WORDS words whose tokens fit the model."""
    for sentence in sentences:
        if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
            tokens = _pieces(vocab, sentence)
            if len(tokens) + 2 <= net.config.max_len:
                yield sentence, tokens


def masked_examples(net, vocab, sentences, count=10, seed=0):
    """``count`` fill-mask questions: dicts with ``tokens`` (one of them ``[MASK]``), ``position`` (its index
    in ``tokens``) and ``answer`` (the masked token).

    The candidates of a sentence are its content words (letters only, at least 3, not in
    :data:`FUNCTION_WORDS`) that are one known token of ``vocab`` (not the unknown token, not split into
    pieces); sentences without one are skipped, and one candidate is drawn with ``np.random.default_rng(seed)``.
    """
    from bertpretrain.data import MASK, UNK_ID
    from bertpretrain.data.tokenizer import CONTINUATION_PREFIX
    rng, examples = np.random.default_rng(seed), []
    for _, tokens in _clean(sentences, net, vocab):
        whole = [i + 1 == len(tokens) or not tokens[i + 1].startswith(CONTINUATION_PREFIX) for i in range(len(tokens))]
        candidates = [i for i, token in enumerate(tokens) if whole[i] and token.isalpha() and len(token) >= 3
                      and token not in FUNCTION_WORDS and vocab[token] != UNK_ID]
        if not candidates:
            continue
        position = candidates[int(rng.integers(len(candidates)))]
        examples.append({"tokens": tokens[:position] + [MASK] + tokens[position + 1:], "position": position,
                         "answer": tokens[position]})
        if len(examples) == count:
            break
    return examples


def top_tokens(net, vocab, tokens, position, top_k=5):
    """The ``top_k`` (token, probability) the model predicts at ``tokens[position]`` of ``[CLS] tokens [SEP]``."""
    from mxnet import np as mx_np
    from bertpretrain.data import get_tokens_and_segments
    sequence, segments = get_tokens_and_segments(tokens)
    device = net.collect_params().list_ctx()[0]
    _, logits, _ = net(mx_np.array([vocab[sequence]], dtype="int32", ctx=device),
                       mx_np.array([segments], dtype="int32", ctx=device),
                       mx_np.array([len(sequence)], dtype="int32", ctx=device),
                       mx_np.array([[position + 1]], dtype="int32", ctx=device))  # + 1: after [CLS]
    logits = logits.asnumpy()[0, 0].astype(np.float64)  # (V,)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    best = np.argsort(-probabilities, kind="stable")[:top_k]
    return [(vocab.to_tokens(int(i)), float(probabilities[i])) for i in best]


def fill_mask_report(net, vocab, sentences, count=10, top_k=5, seed=0):
    """Fill-mask answers of ``net`` for :func:`masked_examples` of ``sentences``.

    Returns a dict: ``examples`` (each with its ``text``, ``answer`` and ``top``: ``top_k`` [token,
    probability] pairs), ``unk_first`` (fraction whose first guess is the unknown token), ``top_k_hits``
    (fraction whose answer is among the ``top_k``), ``distinct_first`` (how many different first guesses).
    """
    from bertpretrain.data import UNK_ID
    from bertpretrain.data.tokenizer import CONTINUATION_PREFIX
    examples = []
    for question in masked_examples(net, vocab, sentences, count, seed):
        top = top_tokens(net, vocab, question["tokens"], question["position"], top_k)
        text = " ".join(question["tokens"]).replace(" " + CONTINUATION_PREFIX, "")  # pieces joined into words
        examples.append({"text": text, "answer": question["answer"],
                         "top": [[token, round(p, 4)] for token, p in top]})
    return answer_report(examples, vocab.to_tokens(UNK_ID))


def answer_report(examples, unknown):
    """``{"examples", "unk_first", "top_k_hits", "distinct_first"}`` of fill-mask ``examples`` (dicts with the
    ``answer`` and the ``top`` [token, probability] pairs, best first) whose unknown token is ``unknown``: the
    summary of :func:`fill_mask_report`, also of answers that come from elsewhere (transformers' pipeline)."""
    n = max(len(examples), 1)
    return {"examples": examples,
            "unk_first": sum(e["top"][0][0] == unknown for e in examples) / n,
            "top_k_hits": sum(e["answer"] in [t for t, _ in e["top"]] for e in examples) / n,
            "distinct_first": len({e["top"][0][0] for e in examples})}


def clean_sentence_collapse(net, vocab, sentences, count=20):
    """Mean over the first ``count`` clean sentences (MIN_WORDS-MAX_WORDS words) of the mean cosine between the
    encodings of its different positions between ``[CLS]`` and ``[SEP]`` (1.0: all the same vector)."""
    from bertpretrain.encoding import get_bert_encoding
    values = []
    for _, tokens in itertools.islice(_clean(sentences, net, vocab), count):
        states = get_bert_encoding(net, tokens, vocab=vocab).asnumpy()[0, 1:-1].astype(np.float64)  # (n, H)
        units = states / np.maximum(np.linalg.norm(states, axis=-1, keepdims=True), 1e-12)
        n = len(units)
        values.append(((units @ units.T).sum() - np.trace(units @ units.T)) / (n * (n - 1)))
    return float(np.mean(values))
