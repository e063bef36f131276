"""Helpers a training loop calls to train data-parallel on MXNet's parameter-server kvstore.

Run the training script under the launcher (:mod:`bertpretrain.launch`), which starts the
scheduler, the servers and the workers with the ``DMLC_*`` variables ps-lite reads::

    python -m bertpretrain.launch -n 2 -s 1 -- python train.py --kvstore dist_sync

and in the training loop::

    from bertpretrain import distributed

    kv = distributed.create_kvstore(args.kvstore)        # "device", "dist_sync", ...
    rank, workers = distributed.worker_rank(kv), distributed.num_workers(kv)
    my_batches = distributed.shard(all_batches, rank, workers)
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-4},
                            kvstore=kv, update_on_kvstore=False)
    distributed.sync_initial_params(trainer)             # before the first forward pass
    ...
    trainer.step(distributed.step_batch_size(local_batch_size, kv))
    distributed.report_progress(f"step {step}")          # for the launcher's watchdog
    if rank == 0:
        save_checkpoint(...)
    ...
    distributed.finish_together(kv)                      # every worker, after rank 0's last save

Why these exist:

* ``dist_*`` kvstores only work inside processes started by a launcher; creating one in a plain
  process fails with an obscure ``MXNetError: Check notnull: ...("DMLC_NUM_WORKER")``, so
  :func:`create_kvstore` checks first and says how to launch.
* The rank comes from the kvstore (the ps-lite scheduler assigns it when the workers connect), not
  from the order the launcher started the workers in.
* With ``dist_sync`` and ``update_on_kvstore=False`` the gradients of all workers are **summed**,
  then ``trainer.step(n)`` divides by ``n``: ``n`` must be the *global* batch size (the sum of the
  workers' batches), or the effective learning rate is multiplied by the number of workers.
* MXNet 1.9.1's Trainer sets up its kvstore lazily, in the first ``step`` (or ``allreduce_grads``,
  ``load_states``): it then broadcasts rank 0's parameters to the other workers, and that broadcast
  races with the first gradient exchange: workers other than rank 0 sometimes get the summed
  gradient instead of the weights, and drift apart for good (3 to 5 runs in 10 of a 2-worker job
  on one Dense layer).
  :func:`sync_initial_params` does that set-up before training starts, and waits for it.
* A worker that raises an exception does not exit: at interpreter exit MXNet's kvstore waits in a
  barrier for the other workers, which themselves wait for its gradients, so the whole job hangs
  and the launcher sees nothing die.  :func:`exit_on_error` makes such a worker exit at once.
* Workers must also leave training together.  MXNet runs the last step's gradient push
  asynchronously; a worker that returns from training and exits at once can shut its engine down
  before the push is sent, while rank 0 waits for that push (in its final evaluation or save)
  and the exiting worker waits for rank 0 in the kvstore's exit barrier: the job hangs forever
  after its last step.  :func:`finish_together` waits for this worker's queued work, then for
  every other worker.
* The launcher's watchdog stops a job whose workers stop making progress (a stopped or stuck
  process); :func:`report_progress` is how a worker tells it that it is still going.
"""
import contextlib
import importlib.util
import os
import shlex
import shutil
import sys
import traceback

from ._mxnet import mxnet as mx  # MXNet, imported after bertpretrain's numpy fixes
from . import kernels
from .errors import UserError

# The progress protocol between workers and the launcher's watchdog (bertpretrain.launch): a worker whose
# environment has PROGRESS_ENV=1 writes lines PROGRESS_MARK + " step 5" (or " done" once it has finished
# training) to stderr, which the launcher takes out of the output it relays.
PROGRESS_ENV = "BERTPRETRAIN_LAUNCH_PROGRESS"
PROGRESS_MARK = "@bertpretrain-progress"


class NotLaunchedError(UserError, RuntimeError):
    """A ``dist_*`` kvstore was asked for in a process that the launcher did not start."""


def is_distributed(kvstore):
    """Whether ``kvstore`` (a KVStore, a kvstore type name such as ``"dist_sync"``, or None) is a
    multi-process ``dist_*`` kvstore."""
    if kvstore is None:
        return False
    kind = kvstore if isinstance(kvstore, str) else kvstore.type
    return kind.startswith("dist")


def create_kvstore(kind="device"):
    """Create the kvstore ``kind`` (``"device"``, ``"local"``, ``"dist_sync"``, ...).

    For a ``dist_*`` kind, first check that this process was started by a launcher (``DMLC_ROLE``
    is set); otherwise raise a RuntimeError that says how to launch, instead of MXNet's error.
    """
    if is_distributed(kind) and "DMLC_ROLE" not in os.environ:
        launcher, command = _launch_this_command()
        raise NotLaunchedError(
            f"kvstore {kind!r} needs the scheduler, servers and workers that the launcher starts: run this "
            f"command under it, e.g.  {shlex.join([*launcher, '-n', '2', '--', *command])}  (2 workers and a "
            "server on this machine), or use a local kvstore ('device', --kvstore device) to train in one process")
    return mx.kv.create(kind)


def _launch_this_command():
    """(the launcher's argv, this process's command line), both runnable as they are: ``bertpretrain launch`` and
    ``bertpretrain ...`` for the console script (its path where ``bertpretrain`` on PATH is another one),
    ``python -m bertpretrain.launch`` and ``python -m MODULE ...`` or ``python SCRIPT ...`` otherwise."""
    argv = list(sys.argv) if sys.argv and sys.argv[0] else ["train.py", "..."]
    python = sys.executable or "python"
    if os.path.basename(argv[0]) == "bertpretrain":  # the console script
        found = shutil.which("bertpretrain")
        same = found is not None and os.path.exists(argv[0]) and os.path.samefile(found, argv[0])
        program = "bertpretrain" if same else argv[0]
        return [program, "launch"], [program, *argv[1:]]
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name != "__main__":  # python -m MODULE
        module = spec.name[:-len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        argv = ["-m", module, *argv[1:]]
    return [python, "-m", "bertpretrain.launch"], [python, *argv]


HOROVOD_INSTALL = ("HOROVOD_WITH_MXNET=1 pip install --no-build-isolation horovod  (after MXNet; add "
                   "HOROVOD_GPU_OPERATIONS=NCCL for GPUs)")


def import_horovod():
    """``horovod.mxnet``, initialised; an ImportError with the build command when it is missing.

    Horovod is an alternative to the parameter server: run the training command under
    ``horovodrun -np N ...`` (or mpirun) instead of :mod:`bertpretrain.launch`. The fused CPU
    kernels are turned off in the process (see below): import Horovod through this function, before
    any model is traced.
    """
    missing = ImportError(f"kvstore='horovod' needs Horovod built with MXNet support: {HOROVOD_INSTALL}; "
                          "or use kvstore='dist_sync' with bertpretrain.launch")
    if importlib.util.find_spec("horovod") is None:
        raise missing
    # Horovod's MXNet extension and bertpretrain's kernel library cannot share a process (with
    # Horovod 0.28.1 and MXNet 1.9.1: SIGFPE when the library loads after `import horovod.mxnet`,
    # heap corruption in the first step when it loads before). Horovod runs on GPUs, where the
    # kernels are not used anyway.
    kernels.keep_off("Horovod's MXNet extension cannot share a process with the kernel library")
    try:
        import horovod.mxnet as hvd
    except ImportError as error:
        raise missing from error
    hvd.init()
    return hvd


def worker_rank(kvstore):
    """This worker's rank, 0 .. num_workers-1 (0 without a kvstore)."""
    return 0 if kvstore is None else kvstore.rank


def num_workers(kvstore):
    """How many workers train together (1 without a kvstore)."""
    return 1 if kvstore is None else kvstore.num_workers


def shard(items, rank, workers):
    """Worker ``rank``'s share of ``items`` (a sequence): every ``workers``-th item from ``rank``.

    With equal-sized local batches cut from each worker's shard, the i-th local batches of all
    workers together hold exactly the items of the i-th global batch (``workers`` times larger)
    cut from ``items``, so distributed training sees the same global batches as one process.
    Every shard has ``len(items) // workers`` items (the last ``len(items) % workers`` items are
    left out), so that every worker makes the same number of steps: a worker with one step more
    would wait forever for the others' gradients.
    """
    if not 0 <= rank < workers:
        raise ValueError(f"rank must be in 0..{workers - 1} for {workers} workers, got {rank}")
    per_worker = len(items) // workers
    return items[rank::workers][:per_worker]


def step_batch_size(local_batch_size, kvstore):
    """The batch size to pass to ``trainer.step``: the global batch of one synchronous step.

    ``dist_sync`` sums the gradients of all workers before the update, so the update must be
    divided by the number of samples of all workers, not of this one.  Assumes every worker uses
    the same local batch size.
    """
    if is_distributed(kvstore) and "async" not in kvstore.type:
        return local_batch_size * kvstore.num_workers
    return local_batch_size


def sync_initial_params(trainer):
    """Set up ``trainer``'s kvstore now and give every worker rank 0's parameters, and wait for it.

    Call it once, after creating the Trainer (and after loading a checkpoint into the model), before
    the first forward pass; see the module docstring for the race it avoids.  Parameters must be
    initialised (not deferred: give layers their input sizes, or run one forward pass first).
    Harmless without a kvstore or with a local one.
    """
    # Trainer.step does the same two calls on first use; MXNet 1.9 has no public API for them.
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    deferred = [param.name for param in trainer._params_to_init]
    if deferred:
        raise RuntimeError(f"parameters {', '.join(deferred)} are not initialised yet (deferred "
                           "initialisation): give their layers input sizes, or run one forward pass "
                           "before sync_initial_params")
    mx.nd.waitall()


def finish_together(kvstore):
    """Wait until this worker's queued engine work (the last gradient push) is done, then until every
    worker gets here (a kvstore barrier).  Call it on every worker at the end of training, after
    rank 0's final evaluation and checkpoint, so that no worker exits while another one still needs
    it.  Only for ``dist_*`` kvstores."""
    mx.nd.waitall()
    kvstore._barrier()  # MXNet 1.9 has no public barrier; the kvstore uses this one itself at exit


def report_progress(what):
    """Tell the launcher's watchdog that this worker made progress: ``what`` is ``"step 5"``,
    ``"eval 5"``, ``"checkpoint 5"``, or ``"done"`` once it has finished training (no longer
    watched).  Writes one line to stderr, only in a worker started by :mod:`bertpretrain.launch`
    (which takes these lines out of the output); does nothing elsewhere."""
    if os.environ.get(PROGRESS_ENV) == "1":
        print(f"{PROGRESS_MARK} {what}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def exit_on_error(enabled=True, report=None):
    """Wrap a worker's training so that an exception ends the process at once, with exit code 1 (130 for
    Ctrl-C, as a shell reports it).

    Without it, an exception in one worker of a job of several processes leaves every process waiting on
    the others forever (see the module docstring).  With it, the traceback is printed (or, when
    ``report(error)`` returns True, what ``report`` printed instead: the one-paragraph message of an error
    the user can fix), the process exits, and the launcher sees the failure and stops the job.
    ``enabled=False`` (one process, e.g. a strategy's ``not distributed``) lets exceptions through.
    """
    try:
        yield
    except BaseException as error:  # SystemExit and KeyboardInterrupt too: any way out hangs
        if not enabled or (isinstance(error, SystemExit) and not error.code):
            raise
        if isinstance(error, SystemExit):
            if not isinstance(error.code, int):
                print(error.code, file=sys.stderr)  # sys.exit("message"), as Python would print it
        elif report is None or not report(error):
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        if isinstance(error, SystemExit):
            os._exit(error.code if isinstance(error.code, int) else 1)
        os._exit(130 if isinstance(error, KeyboardInterrupt) else 1)  # 130: as a shell reports Ctrl-C
