"""``train_bert``: pretraining with progress, history, evaluation, checkpoints and exact resumption.

The jobs live apart: the options in :class:`~.config.TrainingConfig`, the way gradients are added in
a strategy (:mod:`.strategy`), checkpoints in :class:`~.checkpoint.Checkpointer`, the record in
:class:`~.history.TrainingHistory`; this module holds the loop and its progress reports.
"""
import contextlib
import dataclasses
import logging
import signal
import threading
import time
import warnings

import mxnet as mx
import numpy as np
from tqdm.auto import tqdm

from .. import distributed
from ..model import BERTForPretraining
from ..model.bert import check_token_range
from .checkpoint import Checkpointer
from .config import TrainingConfig, make_initializer
from .evaluate import evaluate_bert
from .history import TrainingHistory
from .step import summarise, train_step
from .strategy import make_strategy

logger = logging.getLogger(__name__)


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



@contextlib.contextmanager
def reading_shard(loader, rank, workers):
    """Make ``loader`` read only share ``rank`` of ``workers`` inside the block, and give it back its
    previous share afterwards (the caller's loader is left as it was passed). One worker: nothing to do.

    Raises:
        ValueError: several workers, but ``loader`` cannot be sharded (it is no PretrainingLoader).
    """
    if workers == 1:
        yield loader
        return
    if not hasattr(loader, "shard"):
        raise ValueError("training over several processes needs each one to read its own share of the data: "
                         "pass a PretrainingLoader (from load_data_wiki), whose shard() train_bert calls by rank")
    previous = (getattr(loader, "shard_index", 0), getattr(loader, "num_shards", 1))
    loader.shard(rank, workers)
    try:
        yield loader
    finally:
        loader.shard(*previous)


@contextlib.contextmanager
def _logging_if(enabled):
    """Silence this module's logger inside the block unless ``enabled`` (one worker logs), then restore it."""
    disabled = logger.disabled
    logger.disabled = disabled or not enabled
    try:
        yield
    finally:
        logger.disabled = disabled


class _Progress:
    """The progress bar, a log line every ``log_interval`` steps (and at the last) with the sequences/s
    since the previous line, and the launcher's progress reports."""

    def __init__(self, num_steps, first_step, show, log_interval):
        self.num_steps, self.log_interval = num_steps, log_interval
        self.bar = tqdm(total=num_steps, initial=first_step, unit="step", dynamic_ncols=True,
                        disable=None if show is None else not show)
        self.tick = self.logged_since = time.perf_counter()
        self.logged_sequences = 0

    def step(self, step, batch_size, metrics, lr):
        """Report a finished step; return its sequences/s (since the previous step ended)."""
        now = time.perf_counter()
        seq_per_sec, self.tick = batch_size / (now - self.tick), now
        self.bar.update(1)
        distributed.report_progress(f"step {step}")
        self.bar.set_postfix(mlm=f"{metrics['mlm_loss']:.3f}", nsp=f"{metrics['nsp_loss']:.3f}",
                             seq_s=f"{seq_per_sec:.0f}", refresh=False)
        self.logged_sequences += batch_size
        if (self.log_interval and step % self.log_interval == 0) or step == self.num_steps:
            logger.info("step %d/%d: mlm loss %.3f (acc %.3f), nsp loss %.3f (acc %.3f), lr %.3g, %.0f seq/s",
                        step, self.num_steps, metrics["mlm_loss"], metrics["mlm_acc"], metrics["nsp_loss"],
                        metrics["nsp_acc"], lr, self.logged_sequences / (now - self.logged_since))
            self.logged_sequences, self.logged_since = 0, now
        return seq_per_sec


class _Run:
    """One training run's state (model, trainer, strategy, checkpointer, history, step, seed) and the jobs of
    a step, an evaluation and a checkpoint; :func:`train_bert` drives it."""

    def __init__(self, train_iter, net, devices, config, strategy, eval_iter, vocab):
        self.train_iter, self.devices, self.config, self.strategy = train_iter, devices, config, strategy
        self.vocab = vocab
        self.seed = int(np.random.SeedSequence().entropy % (2 ** 31)) if config.seed is None else int(config.seed)
        self.model = net if isinstance(net, BERTForPretraining) else BERTForPretraining(net)
        _place_parameters(self.model, devices, self.seed, config.initializer)
        self.model.hybridize(static_alloc=True, static_shape=True)
        self.schedule = config.schedule()
        self.trainer = strategy.make_trainer(_parameters_by_structure(self.model), config.optimizer,
                                             {"learning_rate": self.schedule(1), **(config.optimizer_params or {})})
        self.lead = strategy.rank == 0  # one worker writes checkpoints, logs, evaluates and shows progress; all train
        self.eval_iter = eval_iter if self.lead else None
        self.checkpointer = Checkpointer(config.checkpoint_dir, config.checkpoint_interval, config.keep_checkpoints,
                                         writes=self.lead)
        self.history, self.step = TrainingHistory(rank=strategy.rank, workers=strategy.workers), 0

    def resume(self):
        """Continue from the latest checkpoint (every worker reads it), if there is one."""
        resumed = self.checkpointer.resume(self.model.bert, self.trainer, self.devices, self.vocab)
        if resumed:
            source, state, self.vocab = resumed
            self.step, self.seed = state["step"], state["seed"]
            self.history = dataclasses.replace(TrainingHistory.from_dict(state["history"]), interrupted=False,
                                               checkpoint=None, rank=self.strategy.rank,
                                               workers=self.strategy.workers)
            if state.get("data") is not None and hasattr(self.train_iter, "load_state_dict"):
                self.train_iter.load_state_dict(state["data"])
            logger.info("resumed from %s at step %d", source, self.step)
        else:
            logger.info("no checkpoint in %s yet: starting from step 0", self.config.checkpoint_dir)

    def train_step(self, batch, check_ids):
        """One optimiser step (``self.step``) on ``batch``, a PretrainingBatch of B examples ((B, T) tokens, (B, P)
        MLM weights), split over the devices; return its metrics (mean losses and accuracies).

        ``check_ids``: check the (B, T) token ids against the vocabulary on the host first.
        Raises NonFiniteLossError when a loss is NaN or infinite (nothing saved for this step)."""
        batch_size = batch.tokens.shape[0]
        self.trainer.set_learning_rate(self.schedule(self.step))
        _seed_devices(self.seed, self.step, self.devices)
        # The batch is in host memory (numpy, or MXNet arrays on the CPU): reading it waits for no device.
        num_preds = float(_host(batch.mlm_weights).sum())
        if check_ids:
            tokens = _host(batch.tokens)
            check_token_range(self.model.bert.config.vocab_size, int(tokens.min()), int(tokens.max()))
        sums = train_step(self.model, self.trainer, batch, self.devices,
                          self.strategy.global_counts(num_preds, batch_size), self.config.use_nsp,
                          self.config.clip_global_norm, update_batch_size=self.strategy.update_batch_size)
        metrics = summarise(sums, batch_size)
        if not np.isfinite([metrics["mlm_loss"], metrics["nsp_loss"]]).all():
            raise NonFiniteLossError(
                f"the loss became non-finite at step {self.step} (mlm {metrics['mlm_loss']}, nsp "
                f"{metrics['nsp_loss']}) with lr {self.trainer.learning_rate:g}: lower lr, add warmup_steps or "
                f"clip_global_norm. No checkpoint was written for it; the last good one is "
                f"{self.checkpointer.latest() if self.lead else None}")
        return metrics

    def evaluation_due(self):
        """Whether ``eval_interval`` asks for an evaluation after this step (the last step is evaluated anyway)."""
        interval = self.config.eval_interval
        return (self.eval_iter is not None and bool(interval) and self.step % interval == 0
                and self.step < self.config.num_steps)

    def evaluate(self):
        """Evaluate on ``eval_iter`` and record the result in the history."""
        metrics = evaluate_bert(self.model, self.eval_iter, self.devices)
        self.history.eval.append({"step": self.step, **metrics})
        logger.info("step %d eval: mlm loss %.3f (acc %.3f, perplexity %.1f), nsp loss %.3f (acc %.3f)", self.step,
                    metrics["mlm_loss"], metrics["mlm_acc"], metrics["mlm_perplexity"], metrics["nsp_loss"],
                    metrics["nsp_acc"])
        distributed.report_progress(f"eval {self.step}")

    def save(self):
        """Checkpoint this step (rank 0, with a checkpoint folder), with the loader's position and the history."""
        data = self.train_iter.state_dict() if hasattr(self.train_iter, "state_dict") else None
        state = {"step": self.step, "seed": self.seed, "data": data, "history": self.history.to_dict()}
        folder = self.checkpointer.save(self.step, self.model.bert, self.trainer, state, self.vocab)
        if folder is not None:  # rank 0, with a checkpoint folder
            self.history.checkpoint = folder
            logger.info("checkpoint saved: %s", folder)
            distributed.report_progress(f"checkpoint {self.step}")


def train_bert(train_iter, net, devices=None, num_steps=50, *, lr=0.01, optimizer="adam", optimizer_params=None,
               warmup_steps=0, lr_decay="none", clip_gradient=None, use_nsp=True, eval_iter=None,
               eval_interval=None, checkpoint_dir=None, checkpoint_interval=None, keep_checkpoints=2,
               resume=False, kvstore="device", progress=None, seed=None, vocab=None, log_interval=10,
               initializer="xavier", clip_global_norm=None, precision="auto"):
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
        clip_global_norm: clip the gradients' global L2 norm to this value (None: no clipping). Not MXNet's
            ``optimizer_params={'clip_gradient': c}``, which clips each gradient element to [-c, c].
        clip_gradient: deprecated name of ``clip_global_norm`` (the same global-norm clipping; it warns).
        use_nsp: add the next-sentence loss to the masked-LM loss (False: MLM alone).
        eval_iter, eval_interval: held-out batches, evaluated every ``eval_interval`` steps and at the end.
        checkpoint_dir, checkpoint_interval, keep_checkpoints: where and how often to checkpoint
            (always at the end and on Ctrl-C when a directory is given), and how many to keep.
        resume: continue from the latest checkpoint in ``checkpoint_dir`` (if there is one).
        kvstore: how gradients are added across devices (``'device'``, ``'local'``) and processes
            (``'dist_sync'`` under :mod:`bertpretrain.launch`, or ``'horovod'`` under ``horovodrun``,
            one device per process); each process then reads its own shard of ``train_iter`` during
            training (its previous shard is restored afterwards).
        progress: show a progress bar (None: only when the output is a terminal).
        seed: seeds initialisation and dropout (None: a random seed, logged).
        vocab: saved with each checkpoint so that it is self-contained.
        log_interval: log a line through ``logging`` every this many steps (0 or None: the last step only),
            with the sequences/s over those steps.
        initializer: how uninitialised weights start: ``'xavier'`` (d2l) or ``'bert'`` (normal, std
            0.02; see :func:`~bertpretrain.train.config.make_initializer`).
        precision: ``'auto'`` (bfloat16 matrix products where the CPU has AVX512_BF16 and the fused
            kernels are loaded, float32 elsewhere; logged), ``'bf16'`` (an error where it cannot
            run) or ``'fp32'``; set on ``net`` (:meth:`~bertpretrain.model.BERTModel.set_precision`).
            Weights, gradients, optimizer states and checkpoints are float32 either way.

    The options but the data, model, devices and vocabulary form a
    :class:`~bertpretrain.train.config.TrainingConfig` (``train_bert(..., **config.keywords())``).
    Returns:
        :class:`TrainingHistory`: per-step ``step``, ``mlm_loss``, ``nsp_loss``, ``mlm_acc``, ``nsp_acc``,
        ``lr``, ``seq_per_sec``, and ``eval`` (a dict per evaluation, with its ``step``).
    Raises:
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        CheckpointError: the checkpoint folder cannot be written (found before the first step), the disk
            filled up while saving (the previous checkpoint is kept), or the checkpoint to resume is damaged
            or was saved with another model configuration or vocabulary.
    """
    if clip_gradient is not None:
        if clip_global_norm is not None:
            raise ValueError("pass clip_global_norm alone: clip_gradient is its deprecated name")
        warnings.warn("train_bert's clip_gradient is deprecated: it clips the global norm, so pass "
                      "clip_global_norm instead (MXNet's optimizer_params clip_gradient clips each element)",
                      DeprecationWarning, stacklevel=2)
        clip_global_norm = clip_gradient
    config = TrainingConfig(
        num_steps=num_steps, lr=lr, optimizer=optimizer, optimizer_params=optimizer_params,
        warmup_steps=warmup_steps, lr_decay=lr_decay, clip_global_norm=clip_global_norm, use_nsp=use_nsp,
        eval_interval=eval_interval, checkpoint_dir=checkpoint_dir, checkpoint_interval=checkpoint_interval,
        keep_checkpoints=keep_checkpoints, resume=resume, kvstore=kvstore, progress=progress, seed=seed,
        log_interval=log_interval, initializer=initializer, precision=precision)
    strategy, devices = make_strategy(kvstore, devices)
    # after the strategy: Horovod's keeps the kernels off, which 'auto' must see before loading them
    (net.bert if isinstance(net, BERTForPretraining) else net).set_precision(precision)
    run = _Run(train_iter, net, devices, config, strategy, eval_iter, vocab)
    with reading_shard(train_iter, strategy.rank, strategy.workers), _logging_if(run.lead):
        run.checkpointer.check_writable()  # before the first step: a read-only folder must not cost the run
        if resume:
            run.resume()
        strategy.start(run.trainer)
        logger.info("training on %s%s for %d steps (seed %d)", ", ".join(map(str, devices)),
                    f" x {strategy.workers} workers" if strategy.workers > 1 else "", num_steps, run.seed)
        batches, history = _batches_forever(train_iter), run.history
        reporter = _Progress(num_steps, run.step, progress if run.lead else False, log_interval)
        with _stop_on_ctrl_c() as stop_requested, reporter.bar, _token_ids_checked_on_host(run.model.bert) as check:
            while run.step < num_steps and not stop_requested.is_set():
                batch = next(batches)
                if batch.tokens.shape[0] < len(devices):
                    logger.warning("skipping a batch of %d examples: fewer than the %d devices",
                                   batch.tokens.shape[0], len(devices))
                    continue
                run.step += 1
                metrics = run.train_step(batch, check)
                seq_per_sec = reporter.step(run.step, batch.tokens.shape[0], metrics, run.trainer.learning_rate)
                history.record(run.step, run.trainer.learning_rate, seq_per_sec, metrics)
                if run.evaluation_due():
                    run.evaluate()
                if run.checkpointer.due(run.step, num_steps):
                    run.save()
            history.interrupted = stop_requested.is_set()
        if history.interrupted:
            logger.warning("interrupted at step %d of %d", run.step, num_steps)
        elif run.eval_iter is not None and (not history.eval or history.eval[-1]["step"] != run.step):
            run.evaluate()
        if run.checkpointer.saved_step != run.step:
            run.save()
    strategy.finish()
    distributed.report_progress("done")
    return history
