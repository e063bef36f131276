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

from .. import distributed
from ..display import progress_bar
from ..errors import UserError
from ..model import BERTForPretraining
from ..model.bert import check_token_range
from .checkpoint import Checkpointer
from .config import TrainingConfig, make_initializer
from .evaluate import describe_perplexity, evaluate_bert
from .history import TrainingHistory
from .optimizer import make_trainer
from .plot import live_plot
from .step import summarise, train_step
from .strategy import make_strategy

logger = logging.getLogger(__name__)


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or infinite; training stopped without overwriting any checkpoint."""


def _host(array):
    """A batch field as a numpy array (MXNet arrays are copied out)."""
    return array.asnumpy() if isinstance(array, mx.np.ndarray) else np.asarray(array)


class _StepBatches:
    """The batches of each optimiser step, across epochs: ``next_step()`` gives the next ``accumulate`` batches.

    Batches are taken one at a time, so the loader's position is exact. A batch with fewer examples than the
    ``num_devices`` it is split over (an epoch's short last batch) is skipped, with a warning the first time;
    ``skipped`` counts them.
    """

    def __init__(self, train_iter, accumulate, num_devices):
        self.accumulate, self.num_devices, self.skipped = accumulate, num_devices, 0
        self._batches = self._forever(train_iter)

    @staticmethod
    def _forever(train_iter):
        while True:
            empty = True
            for batch in train_iter:
                empty = False
                yield batch
            if empty:
                raise ValueError("train_iter gave no batch: the training data is empty")

    def next_step(self):
        group = []
        while len(group) < self.accumulate:
            batch = next(self._batches)
            if batch.tokens.shape[0] >= self.num_devices:
                group.append(batch)
                continue
            self.skipped += 1  # an epoch's short last batch, maybe every epoch: warned about once
            if self.skipped == 1:
                logger.warning("skipping a batch of %d examples: fewer than the %d devices (so is every such "
                               "batch; drop_last=True in load_data_wiki leaves them out)", batch.tokens.shape[0],
                               self.num_devices)
        return group


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
    since the previous line, the launcher's progress reports, and the live plot (a
    :class:`~.plot.LivePlot` or None) redrawn every ``log_interval`` steps and at the end."""

    def __init__(self, num_steps, first_step, show, log_interval, plot=None):
        self.num_steps, self.log_interval, self.plot = num_steps, log_interval, plot
        self.bar = progress_bar(show, total=num_steps, initial=first_step, unit="step", dynamic_ncols=True)
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

    def redraw(self, history, final=False):
        """Redraw the live plot, if any, at a ``log_interval`` step before the last, or ``final``ly (after the last
        evaluation), then release it."""
        if self.plot is None:
            return
        step = history["step"][-1] if history["step"] else 0
        if final or (self.log_interval and step % self.log_interval == 0 and step < self.num_steps):
            self.plot.update(history, final=final)
        if final:
            self.plot.close()


class _Run:
    """One training run's state (model, trainer, strategy, checkpointer, history, step, seed) and the jobs of
    a step, an evaluation and a checkpoint; :func:`train_bert` drives it."""

    def __init__(self, train_iter, net, config, strategy, eval_iter, vocab):
        self.train_iter, self.devices, self.config, self.strategy = train_iter, strategy.devices, config, strategy
        self.vocab = vocab
        self.seed = int(np.random.SeedSequence().entropy % (2 ** 31)) if config.seed is None else int(config.seed)
        self.model = net if isinstance(net, BERTForPretraining) else BERTForPretraining(net)
        _place_parameters(self.model, self.devices, self.seed, config.initializer)
        self.model.hybridize(static_alloc=True, static_shape=True)
        self.schedule = config.schedule()
        self.trainer = make_trainer(_parameters_by_structure(self.model), config, strategy, self.schedule(1))
        self.lead = strategy.lead  # one worker writes checkpoints, logs, evaluates and shows progress; all train
        self.eval_iter = eval_iter if self.lead else None
        self.checkpointer = Checkpointer(config.checkpoint_dir, config.checkpoint_interval, config.keep_checkpoints,
                                         writes=self.lead)
        self.history = TrainingHistory(rank=strategy.rank, workers=strategy.workers, precision=self.model.bert.precision)
        self.step = 0
        self.warned_diverging = False
        self.stop_agreed = False  # a worker's Ctrl-C, shared with all in a step's counts

    def resume(self):
        """Continue from the latest checkpoint (every worker reads it), if there is one."""
        resumed = self.checkpointer.resume(self.model.bert, self.trainer, self.devices, self.vocab)
        if resumed:
            source, state, self.vocab = resumed
            self.step, self.seed = state["step"], state["seed"]
            # The resumed checkpoint stays the run's last one until a later step is saved (rank 0 writes them).
            saved = TrainingHistory.from_dict(state["history"])
            if saved.precision not in (None, self.history.precision):  # the saved parameters are float32 anyway
                logger.info("the checkpoint was trained in %s; continuing in %s", saved.precision,
                            self.history.precision)
            self.history = dataclasses.replace(saved, interrupted=False, checkpoint=source if self.lead else None,
                                               rank=self.strategy.rank, workers=self.strategy.workers,
                                               precision=self.history.precision)
            if state.get("data") is not None and hasattr(self.train_iter, "load_state_dict"):
                self.train_iter.load_state_dict(state["data"])
            logger.info("resumed from %s at step %d", source, self.step)
        else:
            logger.info("no checkpoint in %s yet: starting from step 0", self.config.checkpoint_dir)

    def should_stop(self, requested):
        """Whether to stop before the next step, ``requested`` being this worker's Ctrl-C: at once with one worker;
        with several, once a request has reached every worker in a step's counts, so that all stop after the same
        step (a worker that stopped alone would leave the others waiting for its gradients)."""
        return self.stop_agreed if self.strategy.workers > 1 else requested

    def train_step(self, batches, check_ids, stop_requested=False):
        """One optimiser step (``self.step``) on ``batches``: the ``accumulate_steps`` PretrainingBatches whose
        gradients add up to one update, each of B examples ((B, T) tokens, (B, P) MLM weights) split over the
        devices; return the step's metrics (mean losses and accuracies over all of them).

        ``check_ids``: check the (B, T) token ids against the vocabulary on the host first. ``stop_requested``:
        this worker's Ctrl-C, shared with the others in the step's counts (see :meth:`should_stop`).
        Raises NonFiniteLossError when a loss is NaN or infinite (nothing saved for this step)."""
        num_examples = sum(batch.tokens.shape[0] for batch in batches)
        self.trainer.set_learning_rate(self.schedule(self.step))
        _seed_devices(self.seed, self.step, self.devices)
        # The batches are in host memory (numpy, or MXNet arrays on the CPU): reading them waits for no device.
        num_preds = sum(float(_host(batch.mlm_weights).sum()) for batch in batches)
        if check_ids:
            for batch in batches:
                tokens = _host(batch.tokens)
                check_token_range(self.model.bert.config.vocab_size, int(tokens.min()), int(tokens.max()))
        total_preds, total_examples, self.stop_agreed = self.strategy.global_counts(num_preds, num_examples,
                                                                                    stop_requested)
        nsp_weight = self.config.nsp_weight if self.config.use_nsp else 0.0
        sums = train_step(self.model, self.trainer, batches, self.devices, (total_preds, total_examples),
                          nsp_weight, self.config.clip_global_norm, self.strategy.update_batch_size)
        metrics = summarise(sums, num_examples)
        if not np.isfinite([metrics["mlm_loss"], metrics["nsp_loss"]]).all():
            raise NonFiniteLossError(
                f"the loss became non-finite at step {self.step} (mlm {metrics['mlm_loss']}, nsp "
                f"{metrics['nsp_loss']}) with lr {self.trainer.learning_rate:g}: lower lr, add warmup_steps or "
                f"clip_global_norm. No checkpoint was written for it; {self._last_good_checkpoint()}")
        self._warn_if_diverging(metrics["mlm_loss"])
        return metrics

    def _last_good_checkpoint(self):
        """A sentence naming the checkpoint a failed run can resume from."""
        latest = self.checkpointer.latest() if self.lead else None
        return f"the last good one is {latest}" if latest else "no checkpoint had been written yet"

    def _warn_if_diverging(self, loss):
        """Log one loud warning when the MLM loss climbs far above its first value: more than twice it and 5 nats
        above. A learning rate far too high makes the loss huge but finite (1e19 at lr 1e9), which the NaN check
        never catches, so the run would otherwise go on quietly."""
        first = self.history["mlm_loss"][:1]
        if self.warned_diverging or not first or not (loss > 2 * first[0] and loss > first[0] + 5):
            return
        self.warned_diverging = True
        logger.warning("!! the training loss is diverging: mlm loss %.4g at step %d, far above its first value %.3f "
                       "at step %d. The learning rate is too high (lr %g at its peak, %.3g now): lower it (lr, "
                       "--lr), add warm-up steps (warmup_steps) or clip the gradients (clip_global_norm)", loss,
                       self.step, first[0], self.history["step"][0], self.config.lr, self.trainer.learning_rate)

    def evaluation_due(self):
        """Whether ``eval_interval`` asks for an evaluation after this step (the last step is evaluated anyway)."""
        interval = self.config.eval_interval
        return (self.eval_iter is not None and bool(interval) and self.step % interval == 0
                and self.step < self.config.num_steps)

    def evaluate(self):
        """Evaluate on ``eval_iter`` and record the result in the history."""
        metrics = evaluate_bert(self.model, self.eval_iter, self.devices)
        self.history.eval.append({"step": self.step, **metrics})
        logger.info("step %d eval: mlm loss %.3f (acc %.3f, %s), nsp loss %.3f (acc %.3f)", self.step,
                    metrics["mlm_loss"], metrics["mlm_acc"], describe_perplexity(metrics["mlm_perplexity"]),
                    metrics["nsp_loss"], metrics["nsp_acc"])
        distributed.report_progress(f"eval {self.step}")

    def save(self):
        """Checkpoint this step (rank 0, with a checkpoint folder), with the loader's position and the history."""
        data = self.train_iter.state_dict() if hasattr(self.train_iter, "state_dict") else None
        state = {"step": self.step, "seed": self.seed, "data": data, "precision": self.history.precision,
                 "history": self.history.to_dict()}
        folder = self.checkpointer.save(self.step, self.model.bert, self.trainer, state, self.vocab)
        if folder is not None:  # rank 0, with a checkpoint folder
            self.history.checkpoint = folder
            logger.info("checkpoint saved: %s", folder)
            distributed.report_progress(f"checkpoint {self.step}")


def train_bert(train_iter, net, config=None, *, devices=None, eval_iter=None, vocab=None, strategy=None,
               **options):
    """Pretrain ``net`` on ``train_iter`` for exactly ``config.num_steps`` optimiser steps.

    Args:
        train_iter: batches (:class:`~bertpretrain.data.PretrainingBatch`), e.g. from ``load_data_wiki``;
            iterated over as many epochs as needed. A :class:`~bertpretrain.data.PretrainingLoader`
            also has its position saved in checkpoints, for exact resumption.
        net: a :class:`~bertpretrain.model.BERTModel` (uninitialised parameters get ``config.initializer``).
        config: the :class:`~bertpretrain.train.TrainingConfig` of the run (None: its defaults, d2l's run).
        devices: MXNet contexts (default: all GPUs, else the CPU; with Horovod, the GPU of the process's
            local rank). Each batch is split over them.
        eval_iter: held-out batches, evaluated every ``config.eval_interval`` steps and at the end.
        vocab: saved with each checkpoint so that it is self-contained.
        strategy: how gradients are added up (:func:`~bertpretrain.train.strategy.make_strategy`), when the
            caller already made it (it holds the devices); default: made here from ``config.kvstore``.
        **options: fields of :class:`~bertpretrain.train.TrainingConfig` (``num_steps=1000, lr=1e-4``, ...):
            the d2l keyword form. They replace the fields of ``config`` (or of the defaults); the config is
            made and checked once. ``clip_gradient`` is the deprecated name of ``clip_global_norm``.

    With a ``dist_*`` kvstore or Horovod each process reads its own shard of ``train_iter`` during
    training (its previous shard is restored afterwards); rank 0 alone logs, evaluates and writes.
    Returns:
        :class:`TrainingHistory`: per-step ``step``, ``mlm_loss``, ``nsp_loss``, ``mlm_acc``, ``nsp_acc``,
        ``lr``, ``seq_per_sec``, and ``eval`` (a dict per evaluation, with its ``step``).
    Raises:
        OptionError: an option is invalid (naming it).
        NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
        CheckpointError: the checkpoint folder cannot be written (found before the first step), the disk
            filled up while saving (the previous checkpoint is kept), or the checkpoint to resume is damaged
            or was saved with another model configuration or vocabulary.
    """
    if "clip_gradient" in options:
        if "clip_global_norm" in options:
            raise ValueError("pass clip_global_norm alone: clip_gradient is its deprecated name")
        warnings.warn("train_bert's clip_gradient is deprecated: it clips the global norm, so pass "
                      "clip_global_norm instead (MXNet's optimizer_params clip_gradient clips each element)",
                      DeprecationWarning, stacklevel=2)
        options["clip_global_norm"] = options.pop("clip_gradient")
    if config is not None and not isinstance(config, TrainingConfig):
        raise TypeError(f"train_bert's third argument is a TrainingConfig, got {type(config).__name__}: pass "
                        "devices=... and num_steps=... as keywords")
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(TrainingConfig)})
    if unknown:
        raise TypeError(f"train_bert() got unknown options {unknown}: its options are the fields of TrainingConfig")
    config = dataclasses.replace(config, **options) if config is not None else TrainingConfig(**options)
    if strategy is None:
        strategy = make_strategy(config.kvstore, devices)
    elif devices is not None:
        raise ValueError("pass devices or a strategy (which holds its devices), not both")
    # after the strategy: Horovod's keeps the kernels off, which 'auto' must see before loading them
    (net.bert if isinstance(net, BERTForPretraining) else net).set_precision(config.precision)
    run = _Run(train_iter, net, config, strategy, eval_iter, vocab)
    num_steps = config.num_steps
    with reading_shard(train_iter, strategy.rank, strategy.workers), _logging_if(run.lead):
        run.checkpointer.check_writable()  # before the first step: a read-only folder must not cost the run
        if config.resume:
            run.resume()
        strategy.start(run.trainer)
        logger.info("training on %s%s for %d steps (seed %d)", ", ".join(map(str, run.devices)),
                    f" x {strategy.workers} workers" if strategy.workers > 1 else "", num_steps, run.seed)
        batches, history = _StepBatches(train_iter, config.accumulate_steps, len(run.devices)), run.history
        reporter = _Progress(num_steps, run.step, config.progress if run.lead else False, config.log_interval,
                             live_plot(config.plot, num_steps) if run.lead else None)
        with _stop_on_ctrl_c() as stop_requested, reporter.bar, _token_ids_checked_on_host(run.model.bert) as check:
            while run.step < num_steps and not run.should_stop(stop_requested.is_set()):
                group = batches.next_step()
                run.step += 1
                metrics = run.train_step(group, check, stop_requested.is_set())
                seq_per_sec = reporter.step(run.step, sum(batch.tokens.shape[0] for batch in group), metrics,
                                            run.trainer.learning_rate)
                history.record(run.step, run.trainer.learning_rate, seq_per_sec, metrics)
                if run.evaluation_due():
                    run.evaluate()
                reporter.redraw(history)
                if run.checkpointer.due(run.step, num_steps):
                    run.save()
            history.interrupted = run.should_stop(stop_requested.is_set())
        if batches.skipped > 1:
            logger.info("skipped %d batches of fewer examples than devices", batches.skipped)
        if history.interrupted:
            logger.warning("interrupted at step %d of %d", run.step, num_steps)
        elif run.eval_iter is not None and (not history.eval or history.eval[-1]["step"] != run.step):
            run.evaluate()
        reporter.redraw(history, final=True)
        if run.checkpointer.saved_step != run.step:
            run.save()
    strategy.finish()
    distributed.report_progress("done")
    return history
