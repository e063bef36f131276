"""The end-to-end pretraining recipe behind ``bertpretrain pretrain`` and ``examples/pretrain_wikitext2.py``.

d2l's BERT chapter as one job: get WikiText-2, build the pretraining data, build a small BERT,
pretrain, evaluate on the validation split, save the model and vocabulary, draw the loss curves,
and encode a sentence and a sentence pair (which the command prints). Its options are declared once, in
the dataclasses of their owners (:data:`SECTIONS`), whose defaults are d2l's; the command applies the
preset ``recipe``, the best recipe measured by ``benchmarks/bench_quality.py``, unless ``--preset d2l``
(d2l's published run, which learns nothing a unigram model does not know).
"""
import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from . import distributed
from .data import (DataConfig, DataError, DownloadError, describe, download_extract, load_data, load_tokenizer,
                   resolve_files, split_file, train_wordpiece)
from .encoding import get_bert_encoding
from .files import TOKENIZER_FILE, atomic_folder, atomic_write
from .model import BERTModel, ModelOptions, check_max_len, save_pretrained
from .options import OptionError, option, split_by_owner, validate
from .train import TrainingConfig, parse_devices, train_bert
from .train.checkpoint import check_writable
from .train.loop import reading_shard
from .train.plot import plot_history
from .train.strategy import make_strategy

logger = logging.getLogger(__name__)

SAMPLE = "wikitext-2-sample"


def _devices(value):
    """The check of ``devices``: None, or what :func:`~bertpretrain.train.parse_devices` reads."""
    if value is None:
        return None
    try:
        parse_devices(value)
    except ValueError as error:
        return f"a device list such as cpu, gpu:0,gpu:1 or cpu:0,cpu:1 ({error})"
    return None


@dataclass
class RunOptions:
    """Where and how the command runs, besides the data, model and training options."""
    output_dir: str = option(os.path.join("runs", "wikitext-2"), "where the model, checkpoints, loss curves and "
                             "history go", metavar="DIR")
    devices: Optional[str] = option(None, "e.g. cpu, gpu, cpu:0,cpu:1 or gpu:0,gpu:1 (none: all GPUs, else the CPU)",
                                    check=_devices)
    fallback: bool = option(True, "use the bundled sample when the dataset cannot be downloaded",
                            flag="--no-fallback")
    init_from_hf: Optional[str] = option(None, "start from a Hugging Face BERT folder (model.safetensors and its "
                                         "tokenizer) instead of a fresh model; its sizes and tokenizer are used",
                                         metavar="DIR")

    def __post_init__(self):
        validate(self)


#: The option sections of the command, in ``--help`` order: (title, dataclass).
SECTIONS = (("data", DataConfig), ("model", ModelOptions), ("training", TrainingConfig), ("run", RunOptions))

#: Named sets of options, applied over the dataclasses' defaults (which are d2l's Python defaults):
#: ``recipe`` (the command's default) is the best recipe measured on held-out text with the protocol of
#: ``benchmarks/bench_quality.py`` (docs/quality.md: 3 seeds, WikiText-2's validation and test splits both ways):
#: d2l's small BERT in the ``bert-preln`` layout (the original BERT's GELU, embedding LayerNorm, tied decoder and
#: initialisation, pre-LN layers and a final LayerNorm; exported as RoBERTa-PreLN); a WordPiece tokenizer of 4,000
#: pieces trained on the training split, whose unknown token (WikiText's ``<unk>``) is never a masked-LM target;
#: 1,100 steps of batch 128 at lr 2.5e-3 with 10% warm-up and linear decay, the next-sentence loss counted
#: twice; masks, next-sentence pairs and negatives drawn anew every epoch. ``d2l`` is d2l's published run (the
#: defaults: word vocabulary, 50 steps of batch 512 at lr 0.01). Both seed the run with 0. ``tokenizers`` does not
#: train the same WordPiece twice (ties between pieces follow its hash order), so two fresh runs of ``recipe``
#: differ slightly; a run's own ``tokenizer.json`` (``--tokenizer runs/.../tokenizer.json``) makes it repeatable,
#: as ``--resume`` does.
PRESETS = {
    "recipe": dict(batch_size=128, dynamic_masking=True, dynamic_pairs=True, truncate_pairs=True,
                   tokenizer="wordpiece", vocab_size=4000, unk_targets=False, architecture="bert-preln",
                   num_steps=1100, lr=2.5e-3, warmup_steps=110, lr_decay="linear", initializer="bert", nsp_weight=2.0,
                   seed=0),
    "d2l": dict(seed=0),
}
DEFAULT_PRESET = "recipe"


def preset_values(preset, init_from_hf=None):
    """{option: value} that ``preset`` (a name of :data:`PRESETS`, or None) sets; with ``init_from_hf`` the
    Hugging Face folder brings its own tokenizer, so the preset's tokenizer options give way."""
    values = dict(PRESETS[preset]) if preset else {}
    if init_from_hf:
        for name in ("tokenizer", "vocab_size"):
            values.pop(name, None)
    return values


@dataclass
class PretrainOptions:
    """Every option of the recipe, by owner: data, model, training and the run. Make one with :meth:`create`
    (flat option names over a preset), as the command does."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelOptions = field(default_factory=ModelOptions)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    run: RunOptions = field(default_factory=RunOptions)

    def __post_init__(self):
        if self.run.init_from_hf and self.data.tokenizer != "word":
            raise OptionError("init_from_hf (--init-from-hf) uses the tokenizer in its folder: drop --tokenizer")
        if not self.run.init_from_hf:  # a Hugging Face model's own positions are checked once it is read
            check_max_len(self.data.max_len, self.data.batch_size, "--max-len")

    @classmethod
    def create(cls, preset=DEFAULT_PRESET, **options):
        """The options of ``preset`` (a name of :data:`PRESETS`, or None for the defaults) with ``options``
        ({option name: value}, any section's) on top. Checkpoints go to ``output_dir/checkpoints``.

        Raises:
            OptionError: an unknown preset or option, or an invalid value (naming its flag).
        """
        if preset is not None and preset not in PRESETS:
            raise OptionError(f"unknown preset {preset!r} (--preset): choose one of {', '.join(PRESETS)}")
        values = {**preset_values(preset, options.get("init_from_hf")), **options}
        data, model, training, run = split_by_owner([section for _, section in SECTIONS], values)
        run = RunOptions(**run)
        training.setdefault("checkpoint_dir", os.path.join(run.output_dir, "checkpoints"))
        return cls(DataConfig(**data), ModelOptions(**model), TrainingConfig(**training), run)

    def flat(self):
        """{option name: value} of every section (JSON-serialisable: what ``history.json`` records)."""
        return {name: value for title, _ in SECTIONS
                for name, value in dataclasses.asdict(getattr(self, title)).items()}


def _data_folder(data, run):
    """The folder of the split files: ``data_dir``, a download, or, offline, the bundled sample (loudly)."""
    if data.data_dir:
        return data.data_dir, data.dataset
    try:
        return download_extract(data.dataset, verify=data.verify), data.dataset
    except DownloadError as error:
        if not run.fallback or data.dataset == SAMPLE:
            raise
        banner = "!" * 78
        logger.warning("\n%s\n!! Could not download %r:\n%s\n!! FALLING BACK to the small bundled sample %r (about "
                       "59K words): results will NOT match a WikiText-2 run.\n!! Pass --no-fallback to fail instead, "
                       "or --data-dir to use files you downloaded.\n%s", banner, data.dataset, error, SAMPLE, banner)
        return download_extract(SAMPLE), SAMPLE


def _tokenizer_and_model(options, train_paths, strategy):
    """The tokenizer to encode the data with (None: count a word vocabulary) and the model, if already made.

    ``init_from_hf``: the model and tokenizer of a Hugging Face folder; ``tokenizer``: ``'word'``, ``'wordpiece'``
    (trained on the training files ``train_paths``, ``vocab_size`` ids) or a ``tokenizer.json`` / ``vocab.txt``.
    """
    data, run = options.data, options.run
    if run.init_from_hf:
        from .hf import import_huggingface
        net, tokenizer = import_huggingface(run.init_from_hf)
        if tokenizer is None:
            raise DataError(f"{run.init_from_hf} holds no tokenizer (tokenizer.json or vocab.txt): pretraining "
                            "needs the one the model was trained with; copy it into the folder")
        return tokenizer, net
    if data.tokenizer == "word":
        return None, None
    if data.tokenizer == "wordpiece":
        # Training is not reproducible (ties between pieces, in tokenizers' hash order), so rank 0 alone trains
        # it, every worker uses rank 0's, and the run keeps it for --resume.
        path = os.path.join(run.output_dir, TOKENIZER_FILE)
        if strategy.lead:
            if options.training.resume and os.path.isfile(path):
                tokenizer = load_tokenizer(path)
            else:
                tokenizer = train_wordpiece(train_paths, vocab_size=data.vocab_size,
                                            lowercase=data.lowercase is not False)
                os.makedirs(run.output_dir, exist_ok=True)
                tokenizer.save(path)
        if strategy.workers > 1:
            text = strategy.share_text(tokenizer.to_json() if strategy.lead else None)
            if not strategy.lead:
                tokenizer = load_tokenizer(text)
        return tokenizer, None
    return load_tokenizer(data.tokenizer), None


def _sequences_seen(loader, steps):
    """Training examples read in ``steps`` batches of ``loader`` from the start (short last batches counted)."""
    examples, per_epoch = loader._examples_per_epoch(), len(loader)
    epochs, rest = divmod(steps, per_epoch)
    return epochs * min(examples, per_epoch * loader.batch_size) + min(rest * loader.batch_size, examples)


def describe_encodings(net, vocab, device):
    """Encode a sentence and a sentence pair as d2l's chapter does: two lines with a few numbers of each."""
    net_tokens = vocab.tokenize if hasattr(vocab, "tokenize") else str.split  # subword pieces or words
    tokens_a = net_tokens("a crane is flying")
    encoded = get_bert_encoding(net, tokens_a, vocab=vocab, device=device)
    lines = [f"encoding of {' '.join(tokens_a)!r}: shape {encoded.shape}; [CLS] {encoded[0, 0, :3]}, "
             f"'crane' {encoded[0, 2, :3]}"]
    tokens_a, tokens_b = net_tokens("a crane driver came"), net_tokens("he just left")
    encoded = get_bert_encoding(net, tokens_a, tokens_b, vocab=vocab, device=device)
    lines.append(f"encoding of the pair {' '.join(tokens_a)!r} / {' '.join(tokens_b)!r}: shape {encoded.shape}; "
                 f"[CLS] {encoded[0, 0, :3]}, 'crane' {encoded[0, 2, :3]}")
    return lines


def run_pretraining(options, report=None):
    """Run the whole recipe of :class:`PretrainOptions` ``options``; return a summary dict (dataset used, final
    losses, evaluation, paths, and the ``encodings`` lines the command prints).

    The training strategy is made here, once: under the launcher with ``kvstore='dist_sync'`` (or
    ``horovodrun`` with ``'horovod'``) every worker trains, rank 0 alone writes files, and an error ends the
    worker's process at once (see :func:`bertpretrain.distributed.exit_on_error`, which calls ``report(error)``
    first: True when it reported the error, else the traceback is printed).
    """
    run = options.run
    strategy = make_strategy(options.training.kvstore, parse_devices(run.devices) if run.devices else None)
    with distributed.exit_on_error(strategy.distributed, report=report):
        return _pretrain(options, strategy)


def _pretrain(options, strategy):
    data, run, training = options.data, options.run, options.training
    if strategy.lead:  # the worker that writes: find an unwritable folder before any work
        check_writable(run.output_dir, "output folder")
    if data.train_files:  # your own files
        folder, train_paths = None, resolve_files(data.train_files, "--train-file")
        dataset = describe(train_paths)
        held_out = data.valid_files is not None
    else:
        folder, dataset = _data_folder(data, run)
        data, train_paths = dataclasses.replace(data, data_dir=folder), [split_file(folder, "train")]
        held_out = os.path.isfile(os.path.join(folder, "wiki.valid.tokens"))
    tokenizer, net = _tokenizer_and_model(options, train_paths, strategy)
    train_iter, vocab = load_data(data, "train", vocab=tokenizer, seed=training.seed)
    eval_iter = None
    if held_out:
        eval_iter, _ = load_data(data, "valid", vocab=vocab, seed=training.seed, shuffle=False)
    else:
        logger.warning("%s: no held-out text (%s): training without held-out evaluation", dataset,
                       "no --valid-file" if data.train_files else "no wiki.valid.tokens")
    if net is None:
        net = BERTModel.from_config(options.model.config(len(vocab), data.max_len))
    else:
        net.config.check_max_len(data.max_len, data.batch_size, "--max-len", source=run.init_from_hf)
    history = train_bert(train_iter, net, training, eval_iter=eval_iter, vocab=vocab, strategy=strategy)
    if not strategy.lead:
        return {"dataset": dataset, "rank": history.rank, "interrupted": history.interrupted}
    model_dir = os.path.join(run.output_dir, "model")
    with atomic_folder(model_dir) as staging:  # a failed save (a full disk) leaves no half-written model/
        save_pretrained(net, staging, vocab=vocab)
    steps = history["step"][-1] if history["step"] else 0
    with reading_shard(train_iter, history.rank, history.workers):  # the share this worker read
        sequences = _sequences_seen(train_iter, steps)
    summary = {"dataset": dataset, "data_dir": folder, "steps": steps, "sequences": sequences,
               "interrupted": history.interrupted, "model_dir": model_dir, "checkpoint": history.checkpoint,
               "options": options.flat()}
    if history["step"]:
        summary.update(mlm_loss=history["mlm_loss"][-1], nsp_loss=history["nsp_loss"][-1])
    if history["eval"]:
        summary["eval"] = history["eval"][-1]
    try:
        summary["loss_curves"] = plot_history(history, os.path.join(run.output_dir, "loss_curves.png"))
    except ImportError as error:
        logger.warning("%s; skipping the loss-curve plot", error)
    summary["encodings"] = describe_encodings(net, vocab, net.collect_params().list_ctx()[0])
    atomic_write(os.path.join(run.output_dir, "history.json"),
                 json.dumps({"history": history.to_dict(), "summary": summary}, indent=1))
    return summary
