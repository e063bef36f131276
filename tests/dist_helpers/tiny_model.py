"""A tiny Gluon regression (one Dense layer on fixed random data), trained the same way in one
process (the reference) and in every dist_sync worker, so that the tests can compare parameters."""
import numpy as onp
import bertpretrain  # noqa: F401  (its numpy fixes must precede `import mxnet`)
from mxnet import autograd, gluon, np

from bertpretrain import distributed

IN_UNITS, OUT_UNITS = 5, 3
GLOBAL_BATCH = 8  # rows per synchronous step, all workers together
STEPS = 5


def make_data():
    """Fixed inputs and targets for ``STEPS`` global batches, the same in every process."""
    rng = onp.random.RandomState(0)
    x = rng.uniform(-1, 1, size=(STEPS * GLOBAL_BATCH, IN_UNITS)).astype("float32")
    y = rng.uniform(-1, 1, size=(STEPS * GLOBAL_BATCH, OUT_UNITS)).astype("float32")
    return x, y


def make_net():
    """The Dense layer with fixed initial weights (not MXNet's random initialisers)."""
    net = gluon.nn.Dense(OUT_UNITS, in_units=IN_UNITS)
    net.initialize()
    rng = onp.random.RandomState(1)
    net.weight.set_data(np.array(rng.uniform(-1, 1, size=(OUT_UNITS, IN_UNITS)).astype("float32")))
    net.bias.set_data(np.array(rng.uniform(-1, 1, size=(OUT_UNITS,)).astype("float32")))
    return net


def train(kvstore, after_step=None):
    """Train ``STEPS`` SGD steps of ``GLOBAL_BATCH`` rows, this process on its shard (by kvstore
    rank; all of it without a kvstore).  Returns the parameters as numpy arrays."""
    rank, workers = distributed.worker_rank(kvstore), distributed.num_workers(kvstore)
    local_batch = GLOBAL_BATCH // workers
    x, y = (distributed.shard(array, rank, workers) for array in make_data())
    net = make_net()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9},
                            kvstore=kvstore, update_on_kvstore=False)
    distributed.sync_initial_params(trainer)
    loss_fn = gluon.loss.L2Loss()
    for step in range(STEPS):
        rows = slice(step * local_batch, (step + 1) * local_batch)
        with autograd.record():
            loss = loss_fn(net(np.array(x[rows])), np.array(y[rows]))
        loss.backward()
        trainer.step(distributed.step_batch_size(local_batch, kvstore))
        if after_step is not None:
            after_step(step, rank)
    return {"weight": net.weight.data().asnumpy(), "bias": net.bias.data().asnumpy()}
