"""BERT with its pretraining losses inside the (hybridizable) graph."""
from mxnet import np as mx_np
from mxnet.gluon import HybridBlock

from ..kernels import fused
from . import ops
from .bert import check_inputs


class BERTForPretraining(HybridBlock):
    """Wraps a :class:`BERTModel` to compute the masked-LM and next-sentence losses in one graph.

    ``net(tokens, segments, valid_lens, pred_positions, mlm_weights, mlm_labels, nsp_labels)``
    takes a whole pretraining batch (B sequences, P prediction slots; ``mlm_weights`` (B, P) float32,
    1 for real predictions and 0 for padding slots) and returns float32 scalars (shape ()), all
    SUMS over this batch, so that a trainer can normalise over the global batch:

    0. ``mlm_loss_sum``: sum over slots of ``mlm_weights * cross_entropy(mlm_logits, mlm_labels)``;
    1. ``mlm_num_preds``: ``sum(mlm_weights)``, the number of real predictions;
    2. ``nsp_loss_sum``: sum over sequences of ``cross_entropy(nsp_logits, nsp_labels)``;

    and, only when built with ``count_correct=True`` (the default),

    3. ``mlm_num_correct``: weighted count of slots whose arg-max equals the label;
    4. ``nsp_num_correct``: count of sequences whose NSP arg-max equals the label.

    The pretraining loss is ``mlm_loss_sum / total_mlm_preds + nsp_loss_sum / total_sequences``
    with totals over the global batch (all devices), which are known from the batch before the
    forward pass; backward that scalar. Outputs 1, 3 and 4 carry no gradient.

    Computing the losses inside the hybridized graph was measured ~9% faster per step than
    computing them outside. On MXNet's builtin operators the MLM arg-max over the vocabulary
    costs ~3% of a d2l step (with the fused CPU kernels the counts are free): a
    trainer can use ``count_correct=False`` for training steps and a second wrapper of the same
    ``bert`` with counts for evaluation. The wrapped model stays available as ``net.bert``.
    Where :func:`bertpretrain.kernels.fused.usable` says so, the MLM decoder and its cross-entropy
    run as one kernel in vocabulary blocks (see :class:`MaskedLMHead`): same sums, without the
    (B * P, vocab) logits and their gradient in memory.
    """

    def __init__(self, bert, count_correct=True, **kwargs):
        super().__init__(**kwargs)
        self.bert = bert
        self._count_correct = count_correct

    def forward(self, tokens, segments, valid_lens, pred_positions, mlm_weights, mlm_labels,
                nsp_labels):
        if isinstance(tokens, mx_np.ndarray):
            check_inputs(self.bert.config, tokens, segments, valid_lens, pred_positions,
                         check_token_ids=self.bert.check_token_ids)
            if mlm_weights.shape != pred_positions.shape or mlm_labels.shape != pred_positions.shape:
                raise ValueError(f"mlm_weights and mlm_labels must have the shape of pred_positions "
                                 f"{pred_positions.shape}, got {mlm_weights.shape} and "
                                 f"{mlm_labels.shape}")
            if nsp_labels.shape != valid_lens.shape:
                raise ValueError(f"nsp_labels must have shape {valid_lens.shape}, got {nsp_labels.shape}")
        return super().forward(tokens, segments, valid_lens, pred_positions, mlm_weights, mlm_labels,
                               nsp_labels)

    def hybrid_forward(self, F, tokens, segments, valid_lens, pred_positions, mlm_weights, mlm_labels,
                       nsp_labels):
        count = self._count_correct
        if fused.usable(F, tokens):  # the MLM decoder and its loss as one blockwise kernel
            _, (mlm_losses, mlm_correct), nsp_logits = self.bert(tokens, segments, valid_lens,
                                                                 pred_positions, mlm_labels,
                                                                 mlm_weights)
            mlm = (mlm_losses, F.np.sum(mlm_correct)) if count else mlm_losses  # (B, P)
        else:
            _, mlm_logits, nsp_logits = self.bert(tokens, segments, valid_lens, pred_positions)
            mlm = ops.softmax_cross_entropy(F, mlm_logits, mlm_labels, mlm_weights, count)  # (B, P)
        nsp = ops.softmax_cross_entropy(F, nsp_logits, nsp_labels, None, count)  # (B,)
        if not count:
            return F.np.sum(mlm), F.np.sum(mlm_weights), F.np.sum(nsp)
        (mlm_losses, mlm_correct), (nsp_losses, nsp_correct) = mlm, nsp
        return (F.np.sum(mlm_losses), F.np.sum(mlm_weights), F.np.sum(nsp_losses), mlm_correct,
                nsp_correct)
