"""How gradients are added up: one strategy object per way (devices of one process, ps-lite, Horovod).

Each knows the ``devices`` this process trains on, this worker's ``rank`` and the number of ``workers``,
creates the Trainer, sums per-worker counts into global ones, and holds the workers together at the
end. :func:`make_strategy` makes the one of a run from its ``kvstore`` option, once, at the entry point
(``train_bert``, or the recipe, which needs the rank before training and passes it on).
"""
import mxnet as mx
import numpy as np
from mxnet import gluon

from .. import distributed
from .devices import check_runnable, default_devices

_COUNTS_KEY = 1 << 30  # kvstore keys no parameter uses (the Trainer numbers them from 0)
_TEXT_KEYS = {"size": _COUNTS_KEY + 1, "bytes": _COUNTS_KEY + 2}


def _share_text(text, lead, broadcast):
    """Rank 0's ``text`` on every worker (``lead``: this is rank 0), sent as two float32 arrays through
    ``broadcast(array, part)``, which returns rank 0's array of ``array``'s shape: the length of its UTF-8
    encoding (``part`` ``"size"``), then its bytes (``"bytes"``; 0-255 are exact in float32)."""
    data = mx.nd.array(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.float32)) if lead else None
    size = broadcast(mx.nd.array([data.size if lead else 0]), "size")
    if not lead:
        data = mx.nd.zeros(int(size.asscalar()))
    return broadcast(data, "bytes").asnumpy().astype(np.uint8).tobytes().decode("utf-8")


class LocalStrategy:
    """One process: the kvstore (``'device'``, ``'local'``, or None for one device) adds the gradients of
    ``devices``."""
    rank, workers = 0, 1
    distributed = False  # several processes, which must leave together (see distributed.exit_on_error)
    update_batch_size = 1  # what trainer.update divides the gradients by: the loss is already normalised

    def __init__(self, kvstore, devices):
        if len(devices) > 1 and kvstore is None:
            raise ValueError("kvstore=None does not add up gradients across devices, so replicas would drift "
                             "apart: use kvstore='device' (or 'local') with several devices")
        self.kvstore, self.devices = kvstore, list(devices)

    @property
    def lead(self):
        """Whether this worker is the one that logs, evaluates and writes files (rank 0); all train."""
        return self.rank == 0

    def make_trainer(self, params, optimizer, optimizer_params):
        """A Trainer over ``params`` ({name: Parameter}) that leaves the update to this process."""
        return gluon.Trainer(params, optimizer, optimizer_params, kvstore=self.kvstore, update_on_kvstore=False)

    def share_text(self, text):
        """Rank 0's ``text`` (a str; anything on the other workers), returned on every worker: what rank 0
        alone makes and all must use (e.g. a tokenizer trained on the text, which another worker could train
        differently). Every worker must call it, at the same point."""
        return text

    def start(self, trainer):
        """Called once the model holds its first parameters (fresh or resumed), before the first step."""

    def global_counts(self, num_preds, batch_size, stop=False):
        """(predictions, examples, stop) of the global batch: this worker's counts summed over workers, as
        floats, and whether any worker asked to stop (Ctrl-C) before this step, so that all stop after it."""
        return float(num_preds), float(batch_size), bool(stop)

    def finish(self):
        """Called on every worker after its last step, evaluation and checkpoint."""


class ParameterServerStrategy(LocalStrategy):
    """Several processes under :mod:`bertpretrain.launch`: a ``dist_*`` kvstore (ps-lite) adds the workers'
    gradients; the counts go through the same kvstore under a key of their own."""
    distributed = True

    def __init__(self, kvstore, devices):
        super().__init__(distributed.create_kvstore(kvstore), devices)
        self.rank, self.workers = self.kvstore.rank, self.kvstore.num_workers

    def make_trainer(self, params, optimizer, optimizer_params):
        trainer = super().make_trainer(params, optimizer, optimizer_params)
        self.kvstore.init(_COUNTS_KEY, mx.nd.zeros(3))
        return trainer

    def start(self, trainer):
        distributed.sync_initial_params(trainer)  # before the first forward: see its docstring

    def share_text(self, text):
        if self.workers == 1:
            return text

        def broadcast(array, part):  # kvstore.init keeps rank 0's value and waits for every worker; pull reads it
            self.kvstore.init(_TEXT_KEYS[part], array)
            self.kvstore.pull(_TEXT_KEYS[part], out=array)
            return array

        return _share_text(text, self.lead, broadcast)

    def global_counts(self, num_preds, batch_size, stop=False):
        if self.workers == 1:
            return super().global_counts(num_preds, batch_size, stop)
        counts = mx.nd.array([num_preds, batch_size, float(stop)])
        self.kvstore.pushpull(_COUNTS_KEY, counts, out=counts)
        total_preds, total_examples, stops = counts.asnumpy()
        return float(total_preds), float(total_examples), bool(stops)

    def finish(self):
        distributed.finish_together(self.kvstore)  # no worker may exit while another still needs it


class HorovodStrategy(LocalStrategy):
    """One process per device under ``horovodrun``: Horovod's trainer all-reduces the gradients, and
    rank 0's initial parameters are broadcast to all."""
    distributed = True

    def __init__(self, devices):
        self.hvd = distributed.import_horovod()
        if len(devices) != 1:
            raise ValueError("with Horovod each process trains on one device: pass "
                             "devices=[mx.gpu(hvd.local_rank())]")
        self.devices = list(devices)
        self.rank, self.workers = self.hvd.rank(), self.hvd.size()
        # Horovod's trainer averages the workers' gradients; the loss is already normalised over the global
        # batch, so the update's batch size undoes the 1/workers.
        self.update_batch_size = 1 / self.workers

    @staticmethod
    def default_devices():
        """The device of this process: the GPU of its local rank (the CPU without GPUs)."""
        local_rank = distributed.import_horovod().local_rank()
        return [mx.gpu(local_rank)] if mx.context.num_gpus() else [mx.cpu()]

    def make_trainer(self, params, optimizer, optimizer_params):
        trainer = self.hvd.DistributedTrainer(params, optimizer, optimizer_params)
        self.hvd.broadcast_parameters(params, root_rank=0)
        return trainer

    def share_text(self, text):
        if self.workers == 1:
            return text
        return _share_text(text, self.lead, lambda array, part: self.hvd.broadcast(
            array, root_rank=0, name=f"bertpretrain_text_{part}"))

    def global_counts(self, num_preds, batch_size, stop=False):
        if self.workers == 1:
            return super().global_counts(num_preds, batch_size, stop)
        counts = self.hvd.allreduce(mx.nd.array([num_preds, batch_size, float(stop)]), average=False,
                                    name="bertpretrain_counts")
        total_preds, total_examples, stops = counts.asnumpy()
        return float(total_preds), float(total_examples), bool(stops)

    def finish(self):
        """Wait here until every worker has finished, as :func:`~bertpretrain.distributed.finish_together` does
        for the parameter server: a worker that exits shuts Horovod down for all, and rank 0 still needs it for
        the last step's gradients while it evaluates and saves. horovod.mxnet has no barrier, so a one-number
        all-reduce, waited for, is one."""
        mx.nd.waitall()
        if self.workers > 1:
            self.hvd.allreduce(mx.nd.zeros(1), average=False, name="bertpretrain_finish").asnumpy()


def make_strategy(kvstore, devices=None):
    """The strategy of ``kvstore`` (``'horovod'``, a ``dist_*`` name, or a local kvstore name or None) on
    ``devices`` (default: all GPUs, else the CPU; with Horovod, the GPU of the process's local rank), each
    checked to run. A ``dist_*`` kvstore is created here, once."""
    if kvstore == "horovod":
        devices = list(devices) if devices else HorovodStrategy.default_devices()
        check_runnable(devices)
        return HorovodStrategy(devices)
    devices = list(devices) if devices else default_devices()
    check_runnable(devices)
    if kvstore is not None and kvstore.startswith("dist"):
        return ParameterServerStrategy(kvstore, devices)
    return LocalStrategy(kvstore, devices)
