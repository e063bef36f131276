"""``train_bert``: pretraining with progress, history, evaluation, checkpoints and exact resumption."""
import contextlib
import logging
import os
import signal
import threading
import time
import warnings

import mxnet as mx
import numpy as np
from mxnet import gluon, init
from tqdm.auto import tqdm

from .. import distributed
from ..data import Vocab
from ..model import BERTForPretraining
from ..model.bert import check_token_range
from . import checkpoint as ckpt
from .devices import default_devices
from .evaluate import evaluate_bert
from .schedule import LearningRateSchedule
from .step import summarise, train_step

logger = logging.getLogger(__name__)

_COUNTS_KEY = 1 << 30  # a kvstore key no parameter uses (the Trainer numbers them from 0)
HISTORY_KEYS = ("step", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "seq_per_sec")


class TrainingHistory(dict):
    """Per-step lists under :data:`HISTORY_KEYS` (equal lengths), and ``'eval'``: a list of dicts.

    ``interrupted`` is True when Ctrl-C stopped the run; ``checkpoint`` is the last checkpoint
    written (or None); ``rank`` is this worker's rank (0 unless training is distributed). Each worker
    records the losses of its own shard; after a resume, the steps before it are rank 0's (the
    checkpoint's).
    """

    def __init__(self, lists=None, evals=None):
        super().__init__({key: list((lists or {}).get(key, [])) for key in HISTORY_KEYS})
        self["eval"] = list(evals or [])
        self.interrupted = False
        self.checkpoint = None
        self.rank = 0


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped without overwriting any checkpoint."""


def _host(array):
    """A batch field as a numpy array (MXNet arrays are copied out)."""
    return array.asnumpy() if isinstance(array, mx.np.ndarray) else np.asarray(array)


def _batches_forever(train_iter):
    """Batches across epochs; consumed one at a time, so the loader's position is exact."""
    while True:
        empty = True
        for batch in train_iter:
            empty = False
            yield batch
        if empty:
            raise ValueError("train_iter gave no batch: the training data is empty")


@contextlib.contextmanager
def _token_ids_checked_on_host(bert):
    """Turn off the model's own token-id check (one synchronisation per device and step) while the
    loop checks each batch's host array instead; yield whether the model asked for the check."""
    checking = bert.check_token_ids
    bert.check_token_ids = False
    try:
        yield checking
    finally:
        bert.check_token_ids = checking


@contextlib.contextmanager
def _stop_on_ctrl_c():
    """Turn the first Ctrl-C into a request to stop at the next step boundary (a second one aborts)."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        logger.warning("Ctrl-C: stopping after this step and saving a checkpoint (press again to abort)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


INITIALIZERS = ("xavier", "bert")


def make_initializer(name):
    """The initializer of the weights named ``name``: ``'xavier'`` (d2l: Xavier uniform) or ``'bert'``
    (the original BERT: normal with standard deviation 0.02). Biases and LayerNorm shifts start at 0 and
    LayerNorm scales at 1 either way (their own initializers)."""
    if name == "xavier":
        return init.Xavier()
    if name == "bert":
        return init.Normal(0.02)
    raise ValueError(f"initializer must be one of {INITIALIZERS}, got {name!r}")


def _place_parameters(model, devices, seed, initializer):
    """Initialise (seeded) any uninitialised parameter and put all of them on ``devices``."""
    mx.random.seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*already initialized")  # the user's own init is kept
        model.initialize(make_initializer(initializer), ctx=devices)
    model.collect_params().reset_ctx(devices)


def _parameters_by_structure(model):
    """{structural name: Parameter}, each parameter once (tied weights appear under two names).

    Gluon names parameters from process-wide counters (``dense12_weight``), and the Trainer numbers
    them in sorted name order; structural names (``bert.encoder...``) give every model of the same
    configuration the same order, so optimizer states saved from one load into another, even
    in the same process.
    """
    unique, seen = {}, set()
    for name, param in sorted(model._collect_params_with_prefix().items()):
        if id(param) not in seen:
            seen.add(id(param))
            unique[name] = param
    return unique


def _seed_devices(seed, step, devices):
    """Seed the random generators from (seed, step), so that dropout depends on the step alone, not on the
    history: what makes a resumed run reproduce an uninterrupted one.

    CPU generators (which also initialise deferred parameters, whatever the device list) get the
    step's seed; each GPU gets its own, so GPUs draw different dropout masks.
    """
    base = int(np.random.SeedSequence([seed, step]).generate_state(1)[0]) % (2 ** 31 - len(devices))
    mx.random.seed(base, ctx=mx.cpu())
    for i, device in enumerate(devices):
        mx.random.seed(base + i if device.device_type == "gpu" else base, ctx=device)


def _check_arguments(num_steps, devices, kvstore, clip_gradient, checkpoint_dir, checkpoint_interval, resume):
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if len(devices) > 1 and kvstore is None:
        raise ValueError("kvstore=None does not add up gradients across devices, so replicas would drift "
                         "apart: use kvstore='device' (or 'local') with several devices")
    if clip_gradient is not None and not clip_gradient > 0:
        raise ValueError(f"clip_gradient must be a positive norm or None, got {clip_gradient!r}")
    if checkpoint_interval is not None and (not isinstance(checkpoint_interval, int) or checkpoint_interval < 1):
        raise ValueError(f"checkpoint_interval must be an integer >= 1 or None, got {checkpoint_interval!r}")
    if (resume or checkpoint_interval) and checkpoint_dir is None:
        raise ValueError("resume and checkpoint_interval need checkpoint_dir: the folder to keep checkpoints in")


def train_bert(train_iter, net, devices=None, num_steps=50, *, lr=0.01, optimizer="adam", optimizer_params=None,
               warmup_steps=0, lr_decay="none", clip_gradient=None, use_nsp=True, eval_iter=None,
               eval_interval=None, checkpoint_dir=None, checkpoint_interval=None, keep_checkpoints=2,
               resume=False, kvstore="device", progress=None, seed=None, vocab=None, log_interval=10,
               initializer="xavier"):
    """Pretrain ``net`` on ``train_iter`` for exactly ``num_steps`` optimiser steps.

    Args:
        train_iter: batches (:class:`~bertpretrain.data.PretrainingBatch`), e.g. from ``load_data_wiki``;
            iterated over as many epochs as needed. A :class:`~bertpretrain.data.PretrainingLoader`
            also has its position saved in checkpoints, for exact resumption.
        net: a :class:`~bertpretrain.model.BERTModel` (uninitialised parameters get ``initializer``).
        devices: MXNet contexts (default: all GPUs, else the CPU; with Horovod, the GPU of the process's
            local rank). Each batch is split over them.
        num_steps: optimiser steps to reach (counted from the start, resumed steps included).
        lr, optimizer, optimizer_params: any MXNet optimiser by name (Adam and lr 0.01, as d2l).
        warmup_steps, lr_decay: linear warm-up, then ``'none'`` (constant) or ``'linear'`` decay.
        clip_gradient: clip the gradients' global L2 norm to this value (None: no clipping).
        use_nsp: add the next-sentence loss to the masked-LM loss (False: MLM alone).
        eval_iter, eval_interval: held-out batches, evaluated every ``eval_interval`` steps and at the end.
        checkpoint_dir, checkpoint_interval, keep_checkpoints: where and how often to checkpoint
            (always at the end and on Ctrl-C when a directory is given), and how many to keep.
        resume: continue from the latest checkpoint in ``checkpoint_dir`` (if there is one).
        kvstore: how gradients are added across devices (``'device'``, ``'local'``) and processes
            (``'dist_sync'`` under :mod:`bertpretrain.launch`, or ``'horovod'`` under ``horovodrun``,
            one device per process); each process then reads its own shard of ``train_iter``.
        progress: show a progress bar (None: only when the output is a terminal).
        seed: seeds initialisation and dropout (None: a random seed, logged).
        vocab: saved with each checkpoint so that it is self-contained.
        log_interval: log a line through ``logging`` every this many steps (0 or None: the last step only),
            with the sequences/s over those steps.
        initializer: how uninitialised weights start: ``'xavier'`` (d2l) or ``'bert'`` (normal, std
            0.02; see :func:`make_initializer`).
    Returns:
        :class:`TrainingHistory`: per-step ``step``, ``mlm_loss``, ``nsp_loss``, ``mlm_acc``, ``nsp_acc``,
        ``lr``, ``seq_per_sec``, and ``eval`` (a dict per evaluation, with its ``step``).
    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        CheckpointError: the checkpoint folder cannot be written (found before the first step), the disk
            filled up while saving (the previous checkpoint is kept), or the checkpoint to resume is damaged
            or was saved with another model configuration or vocabulary.
    """
    if kvstore == "horovod" and not devices:  # one process per GPU: the one of its local rank
        local_rank = distributed.import_horovod().local_rank()
        devices = [mx.gpu(local_rank)] if mx.context.num_gpus() else [mx.cpu()]
    devices = list(devices) if devices else default_devices()
    _check_arguments(num_steps, devices, kvstore, clip_gradient, checkpoint_dir, checkpoint_interval, resume)
    schedule = LearningRateSchedule(lr, num_steps, warmup_steps, lr_decay)
    make_initializer(initializer)  # a bad name fails before any work
    seed = int(np.random.SeedSequence().entropy % (2 ** 31)) if seed is None else int(seed)
    model = net if isinstance(net, BERTForPretraining) else BERTForPretraining(net)
    _place_parameters(model, devices, seed, initializer)
    model.hybridize(static_alloc=True, static_shape=True)
    optimizer_params = {"learning_rate": schedule(1), **(optimizer_params or {})}
    params = _parameters_by_structure(model)
    horovod = kvstore == "horovod"
    dist = distributed.is_distributed(kvstore)
    if horovod:
        hvd = distributed.import_horovod()
        if len(devices) != 1:
            raise ValueError("with Horovod each process trains on one device: pass devices=[mx.gpu(hvd.local_rank())]")
        rank, workers = hvd.rank(), hvd.size()
        trainer = hvd.DistributedTrainer(params, optimizer, optimizer_params)
        hvd.broadcast_parameters(params, root_rank=0)
    else:
        if dist and isinstance(kvstore, str):
            kvstore = distributed.create_kvstore(kvstore)
        rank, workers = (kvstore.rank, kvstore.num_workers) if dist else (0, 1)
        trainer = gluon.Trainer(params, optimizer, optimizer_params, kvstore=kvstore,
                                update_on_kvstore=False)
    if dist:
        kvstore.init(_COUNTS_KEY, mx.nd.zeros(2))
    if workers > 1:
        if not hasattr(train_iter, "shard"):
            raise ValueError("training over several processes needs each one to read its own share of the data: "
                             "pass a PretrainingLoader (from load_data_wiki), whose shard() train_bert calls by rank")
        train_iter.shard(rank, workers)

    def global_counts(num_preds, batch_size):
        """(predictions, examples) of the global batch: this worker's counts summed over all workers."""
        counts = mx.nd.array([num_preds, batch_size])
        if horovod:
            counts = hvd.allreduce(counts, average=False, name="bertpretrain_counts")
        elif dist:
            kvstore.pushpull(_COUNTS_KEY, counts, out=counts)
        total_preds, total_examples = counts.asnumpy()
        return float(total_preds), float(total_examples)

    history, step, saved_step = TrainingHistory(), 0, None
    source = ckpt.latest_checkpoint(checkpoint_dir) if resume else None  # every worker resumes
    if rank != 0:  # one worker writes checkpoints, logs, evaluates and shows progress; all train
        checkpoint_dir, progress, eval_iter = None, False, None
        logger.disabled = True
    if checkpoint_dir is not None:  # before the first step: a read-only folder must not cost the run
        ckpt.check_writable(checkpoint_dir)
    if source:
        state = ckpt.read_state(source)
        ckpt.verify_checkpoint(source, state)
        ckpt.check_compatible(source, model.bert.config, vocab)
        model.bert.load_parameters(f"{source}/{ckpt.PARAMS_FILE}", ctx=devices)
        trainer.load_states(f"{source}/{ckpt.TRAINER_FILE}")
        step, seed = state["step"], state["seed"]
        saved_step = step
        history = TrainingHistory(state["history"], state["history"].get("eval"))
        if vocab is None and os.path.isfile(f"{source}/{ckpt.VOCAB_FILE}"):
            vocab = Vocab.load(f"{source}/{ckpt.VOCAB_FILE}")
        if state.get("data") is not None and hasattr(train_iter, "load_state_dict"):
            train_iter.load_state_dict(state["data"])
        logger.info("resumed from %s at step %d", source, step)
    elif resume:
        logger.info("no checkpoint in %s yet: starting from step 0", checkpoint_dir)
    history.rank = rank
    if dist:
        distributed.sync_initial_params(trainer)  # before the first forward: see its docstring
    logger.info("training on %s%s for %d steps (seed %d)", ", ".join(map(str, devices)),
                f" x {workers} workers" if workers > 1 else "", num_steps, seed)

    def save():
        nonlocal saved_step
        if checkpoint_dir is None:  # no directory, or not rank 0
            return
        data = train_iter.state_dict() if hasattr(train_iter, "state_dict") else None
        history.checkpoint = ckpt.save_checkpoint(
            checkpoint_dir, step, model.bert, trainer,
            {"step": step, "seed": seed, "data": data, "history": history}, vocab, keep_checkpoints)
        saved_step = step
        logger.info("checkpoint saved: %s", history.checkpoint)
        distributed.report_progress(f"checkpoint {step}")

    def evaluate():
        metrics = evaluate_bert(model, eval_iter, devices)
        history["eval"].append({"step": step, **metrics})
        logger.info("step %d eval: mlm loss %.3f (acc %.3f, perplexity %.1f), nsp loss %.3f (acc %.3f)", step,
                    metrics["mlm_loss"], metrics["mlm_acc"], metrics["mlm_perplexity"], metrics["nsp_loss"],
                    metrics["nsp_acc"])
        distributed.report_progress(f"eval {step}")

    batches = _batches_forever(train_iter)
    bar = tqdm(total=num_steps, initial=step, unit="step", disable=None if progress is None else not progress,
               dynamic_ncols=True)
    with _stop_on_ctrl_c() as stop_requested, bar, _token_ids_checked_on_host(model.bert) as check_ids:
        tick = logged_since = time.perf_counter()
        logged_sequences = 0
        while step < num_steps and not stop_requested.is_set():
            batch = next(batches)
            batch_size = batch.tokens.shape[0]
            if batch_size < len(devices):
                logger.warning("skipping a batch of %d examples: fewer than the %d devices", batch_size,
                               len(devices))
                continue
            step += 1
            trainer.set_learning_rate(schedule(step))
            _seed_devices(seed, step, devices)
            # The batch is in host memory (numpy, or MXNet arrays on the CPU): reading it waits for no device.
            num_preds = float(_host(batch.mlm_weights).sum())
            if check_ids:
                tokens = _host(batch.tokens)
                check_token_range(model.bert.config.vocab_size, int(tokens.min()), int(tokens.max()))
            totals = global_counts(num_preds, batch_size) if workers > 1 else (num_preds, batch_size)
            # Horovod's trainer averages the workers' gradients; the loss is already normalised over
            # the global batch, so undo the 1/workers with the update's batch size.
            sums = train_step(model, trainer, batch, devices, totals, use_nsp, clip_gradient,
                              update_batch_size=1 / workers if horovod else 1)
            metrics = summarise(sums, batch_size)
            if not np.isfinite([metrics["mlm_loss"], metrics["nsp_loss"]]).all():
                raise NonFiniteLossError(
                    f"the loss became non-finite at step {step} (mlm {metrics['mlm_loss']}, nsp "
                    f"{metrics['nsp_loss']}) with lr {trainer.learning_rate:g}: lower lr, add warmup_steps or "
                    f"clip_gradient. No checkpoint was written for it; the last good one is "
                    f"{ckpt.latest_checkpoint(checkpoint_dir) if checkpoint_dir else None}")
            now = time.perf_counter()
            for key, value in (("step", step), ("lr", trainer.learning_rate),
                               ("seq_per_sec", batch_size / (now - tick)), *metrics.items()):
                history[key].append(value)
            tick = now
            bar.update(1)
            distributed.report_progress(f"step {step}")
            bar.set_postfix(mlm=f"{metrics['mlm_loss']:.3f}", nsp=f"{metrics['nsp_loss']:.3f}",
                            seq_s=f"{history['seq_per_sec'][-1]:.0f}", refresh=False)
            logged_sequences += batch_size
            if (log_interval and step % log_interval == 0) or step == num_steps:  # the rate since the last line
                logger.info("step %d/%d: mlm loss %.3f (acc %.3f), nsp loss %.3f (acc %.3f), lr %.3g, %.0f seq/s",
                            step, num_steps, metrics["mlm_loss"], metrics["mlm_acc"], metrics["nsp_loss"],
                            metrics["nsp_acc"], trainer.learning_rate, logged_sequences / (now - logged_since))
                logged_sequences, logged_since = 0, now
            if eval_iter is not None and eval_interval and step % eval_interval == 0 and step < num_steps:
                evaluate()
            if checkpoint_interval and step % checkpoint_interval == 0 and step < num_steps:
                save()
        history.interrupted = stop_requested.is_set()
    if history.interrupted:
        logger.warning("interrupted at step %d of %d", step, num_steps)
    elif eval_iter is not None and (not history["eval"] or history["eval"][-1]["step"] != step):
        evaluate()
    if saved_step != step:
        save()
    if dist:  # no worker may exit while another still needs it: see finish_together
        distributed.finish_together(kvstore)
    distributed.report_progress("done")
    return history
