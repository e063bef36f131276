"""Evaluation on a held-out split: MLM loss, accuracy and perplexity, NSP loss and accuracy."""
import math

import numpy as np

from ..model import BERTForPretraining
from .devices import default_devices
from .step import SUM_NAMES, forward_sums, summarise

#: Perplexities above this say only that the model is lost: guessing uniformly over the largest vocabularies in
#: use (about 250,000 tokens) gives 250,000.
MEANINGFUL_PERPLEXITY = 1e6


def describe_perplexity(perplexity):
    """``'perplexity 486.0'``, or, above :data:`MEANINGFUL_PERPLEXITY` (a diverged model: up to e^700, 305 digits),
    ``'perplexity too large to mean anything (over 1e+06)'``."""
    if perplexity <= MEANINGFUL_PERPLEXITY:
        return f"perplexity {perplexity:.1f}"
    return f"perplexity too large to mean anything (over {MEANINGFUL_PERPLEXITY:.0e})"


def evaluate_bert(net, eval_iter, devices=None):
    """Evaluate ``net`` on every batch of ``eval_iter`` (one epoch), with dropout off.

    Make ``eval_iter`` with static masks, a fixed seed and ``shuffle=False`` (e.g.
    ``load_data_wiki(..., split='valid', vocab=vocab, seed=0, shuffle=False)``) so that numbers are
    comparable across runs. ``net`` is a :class:`~bertpretrain.model.BERTModel` or a
    :class:`~bertpretrain.model.BERTForPretraining`.

    Returns:
        dict with ``mlm_loss`` (mean over real predictions), ``mlm_acc``, ``mlm_perplexity``
        (``exp(mlm_loss)``), ``nsp_loss``, ``nsp_acc`` and ``num_examples``.
    """
    model = net if isinstance(net, BERTForPretraining) else BERTForPretraining(net)
    devices = devices or default_devices()
    sums, num_examples = np.zeros(len(SUM_NAMES)), 0
    for batch in eval_iter:
        used = devices[:batch.tokens.shape[0]]
        sums += forward_sums(model, batch, used)
        num_examples += batch.tokens.shape[0]
    if not num_examples:
        raise ValueError("eval_iter gave no batch: evaluate on a split with at least one example")
    metrics = summarise(sums, num_examples)
    metrics["mlm_perplexity"] = math.exp(min(metrics["mlm_loss"], 700.0))
    metrics["num_examples"] = num_examples
    return metrics
