"""One data-parallel pretraining step, and the forward-only pass that evaluation uses."""
import mxnet as mx
from mxnet import autograd, gluon
from mxnet import np as mnp

from ..model import PretrainingOutput

# What BERTForPretraining returns, in order: per-device sums over the batch slice.
SUM_NAMES = PretrainingOutput._fields


def split_batch(batch, devices):
    """Split every field of a batch along axis 0 over ``devices``: a list of per-device tuples.

    Uneven sizes are allowed; the batch must hold at least one example per device.
    """
    parts = [gluon.utils.split_and_load(field, devices, even_split=False) for field in batch]
    return list(zip(*parts))


def _gather_sums(outputs):
    """Add the per-device scalar sums on the CPU: a (5,) numpy array, in :data:`SUM_NAMES` order.

    One copy per device and one synchronisation in all, after every device's work is queued.
    """
    cpu = mx.cpu()
    stacked = [mnp.stack(list(out)).as_in_context(cpu) for out in outputs]
    total = stacked[0]
    for part in stacked[1:]:
        total = total + part
    return total.asnumpy()


def clip_gradients(params, devices, max_norm):
    """Scale every device's gradients so that their global L2 norm is at most ``max_norm``.

    After the all-reduce every device holds the same gradients, so each scales its own copy;
    nothing is read back to Python (no synchronisation).
    """
    for i in range(len(devices)):
        grads = [p.list_grad()[i] for p in params if p.grad_req != "null"]
        squares = [mnp.sum(g * g) for g in grads]
        total = squares[0]
        for s in squares[1:]:
            total = total + s
        scale = mnp.minimum(1.0, max_norm / (mnp.sqrt(total) + 1e-6))
        for g in grads:
            g *= scale


def train_step(model, trainer, batches, devices, totals, nsp_weight=1.0, clip_global_norm=None, update_batch_size=1):
    """Forward and backward on each of ``batches`` (split over ``devices``), then one update; return their sums.

    The loss is normalised over the GLOBAL batch, whose ``totals = (real predictions, examples)``
    cover every batch of the step, every device and every worker (when training is distributed): each
    device backpropagates ``mlm_loss_sum_d / total_predictions + nsp_weight * nsp_loss_sum_d / total_examples``
    (``nsp_weight`` 0: the masked-LM loss alone) and the
    gradients add up (over the batches: the parameters' ``grad_req`` is ``'add'`` when there are several, and
    they are zeroed after the update; over devices and workers: the kvstore), so the update, and the
    learning rate's meaning, depend neither on the number of devices nor on how the step is cut into
    batches. ``clip_global_norm``: clip the gradients' global L2 norm to it (None: no clipping).
    ``update_batch_size`` is what ``trainer.update`` divides the gradients by (1: they are final).
    """
    total_preds, total_examples = totals
    outputs = []
    for batch in batches:
        slices = split_batch(batch, devices)
        with autograd.record():
            batch_outputs = [model(*part) for part in slices]
            losses = [out.mlm_loss_sum / total_preds + nsp_weight * out.nsp_loss_sum / total_examples
                      if nsp_weight else out.mlm_loss_sum / total_preds for out in batch_outputs]
        autograd.backward(losses)
        outputs += batch_outputs
    trainer.allreduce_grads()
    if clip_global_norm:
        clip_gradients(list(model.collect_params().values()), devices, clip_global_norm)
    trainer.update(update_batch_size)
    if len(batches) > 1:  # Parameter.zero_grad takes no numpy-interface arrays in MXNet 1.9.1
        for param in model.collect_params().values():
            if param.grad_req == "add":
                for grad in param.list_grad():
                    grad[:] = 0
    return _gather_sums(outputs)


def forward_sums(model, batch, devices):
    """The sums of one batch without training (dropout off): a (5,) numpy array."""
    return _gather_sums([model(*part) for part in split_batch(batch, devices)])


def summarise(sums, num_examples):
    """Mean losses and accuracies from sums (a (5,) array in :data:`SUM_NAMES` order) over ``num_examples``."""
    mlm_loss_sum, num_preds, nsp_loss_sum, mlm_correct, nsp_correct = (float(v) for v in sums)
    return {"mlm_loss": mlm_loss_sum / num_preds, "mlm_acc": mlm_correct / num_preds,
            "nsp_loss": nsp_loss_sum / num_examples, "nsp_acc": nsp_correct / num_examples}
