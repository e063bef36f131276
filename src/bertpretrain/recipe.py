"""The end-to-end pretraining recipe behind ``bertpretrain pretrain`` and ``examples/pretrain_wikitext2.py``.

d2l's BERT chapter as one job: get WikiText-2, build the pretraining data, build a small BERT,
pretrain, evaluate on the validation split, save the model and vocabulary, draw the loss curves,
and print BERT encodings of a sentence and of a sentence pair. The default options are the best
recipe measured by ``benchmarks/bench_quality.py``; ``preset_options('d2l')`` (``--preset d2l``)
is d2l's published run, which learns nothing a unigram model does not know.
"""
import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass

from . import distributed
from .data import (DATA_HUB, NUM_RESERVED, DataError, DownloadError, download_extract, load_data_wiki, load_tokenizer,
                   split_file, train_wordpiece)
from .encoding import get_bert_encoding
from .files import TOKENIZER_FILE, atomic_folder, atomic_write
from .model import BERTModel, check_max_len, save_pretrained
from .train import TrainingConfig, parse_devices, train_bert
from .train.checkpoint import check_writable
from .train.loop import reading_shard
from .train.plot import plot_history

logger = logging.getLogger(__name__)

SAMPLE = "wikitext-2-sample"


@dataclass
class PretrainOptions:
    """Options of the recipe.

    The defaults are the best recipe measured on held-out text (``benchmarks/bench_quality.py``,
    README "What to expect"): d2l's small BERT with the original BERT's GELU, embedding LayerNorm,
    tied decoder and initialisation (normal, std 0.02), pre-LN layers; 1,100 steps of batch 128 at lr
    3e-3 with 10% warm-up and linear decay; masks, NSP pairs and negatives drawn anew every epoch.
    ``PRESETS['d2l']`` holds d2l's published run (50 steps of batch 512 at lr 0.01).
    """
    dataset: str = "wikitext-2"
    data_dir: str = None
    verify_data: bool = False
    num_steps: int = 1100
    batch_size: int = 128
    max_len: int = 64
    lr: float = 3e-3
    warmup_steps: int = 110
    lr_decay: str = "linear"
    devices: str = None
    output_dir: str = os.path.join("runs", "wikitext-2")
    resume: bool = False
    fallback: bool = True
    seed: int = 0
    checkpoint_interval: int = None
    progress: bool = None
    kvstore: str = "device"
    tokenizer: str = "word"
    vocab_size: int = 30522
    whole_word_masking: bool = False
    architecture: str = "bert-preln"
    init_from_hf: str = None
    initializer: str = "bert"
    dynamic_masking: bool = True
    dynamic_pairs: bool = True
    truncate_pairs: bool = True
    unk_targets: bool = True
    drop_last: bool = False

    def __post_init__(self):
        """Check every option before anything is downloaded or trained; a bad one raises ValueError naming its
        command-line flag, what was expected and what was given."""
        def integer(name, least):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {least}, got {value!r}")

        for name, least in (("num_steps", 1), ("batch_size", 1), ("max_len", 5), ("warmup_steps", 0)):
            integer(name, least)
        if self.checkpoint_interval is not None:
            integer("checkpoint_interval", 1)
        if self.tokenizer == "wordpiece":
            integer("vocab_size", NUM_RESERVED + 1)
        if not self.init_from_hf:  # a Hugging Face model's own positions are checked once it is read
            check_max_len(self.max_len, self.batch_size, "--max-len")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a finite number > 0, got {self.lr!r}")
        if self.data_dir is None and self.dataset not in DATA_HUB:
            raise ValueError(f"unknown dataset {self.dataset!r} (--dataset): choose one of "
                             f"{', '.join(sorted(DATA_HUB))}, or pass --data-dir with your own split files")
        if self.devices:
            parse_devices(self.devices)
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r} (--architecture): choose one of "
                             f"{', '.join(sorted(ARCHITECTURES))}")

    def training_config(self, kvstore=None):
        """The :class:`~bertpretrain.train.TrainingConfig` of these options (checkpoints in
        ``output_dir/checkpoints``); ``kvstore``: the KVStore already created for a ``dist_*`` run
        (default: the ``kvstore`` option's name)."""
        return TrainingConfig(num_steps=self.num_steps, lr=self.lr, warmup_steps=self.warmup_steps,
                              lr_decay=self.lr_decay, checkpoint_dir=os.path.join(self.output_dir, "checkpoints"),
                              checkpoint_interval=self.checkpoint_interval, resume=self.resume,
                              progress=self.progress, seed=self.seed, initializer=self.initializer,
                              kvstore=self.kvstore if kvstore is None else kvstore)


#: BERTModel options of each ``architecture`` (d2l's small BERT's sizes in all): ``d2l``, its own layout;
#: ``bert``, the original BERT's layout (GELU, LayerNorm after the embeddings, tied decoder; exportable to
#: Hugging Face); ``bert-preln``, the same with pre-LN layers, which learns best in a short CPU budget
#: (README "What to expect") but which Hugging Face's BERT cannot express.
ARCHITECTURES = {"d2l": {}, "bert": dict(activation="gelu", embedding_layer_norm=True, tie_mlm_weights=True,
                                         layer_norm_eps=1e-12),
                 "bert-preln": dict(activation="gelu", embedding_layer_norm=True, tie_mlm_weights=True,
                                    pre_layer_norm=True)}

# d2l's published run, whatever the defaults of PretrainOptions become: ``--preset d2l``.
PRESETS = {
    "d2l": dict(num_steps=50, batch_size=512, max_len=64, lr=0.01, warmup_steps=0, lr_decay="none",
                initializer="xavier", architecture="d2l", dynamic_masking=False, dynamic_pairs=False,
                truncate_pairs=False, unk_targets=True, drop_last=False),
}


def preset_options(name, **overrides):
    """The :class:`PretrainOptions` of preset ``name`` (see :data:`PRESETS`), with ``overrides`` on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    return PretrainOptions(**{**PRESETS[name], **overrides})


def _data_folder(options):
    """The folder of the split files: ``data_dir``, a download, or, offline, the bundled sample (loudly)."""
    if options.data_dir:
        return options.data_dir, options.dataset
    try:
        return download_extract(options.dataset, verify=options.verify_data), options.dataset
    except DownloadError as error:
        if not options.fallback or options.dataset == SAMPLE:
            raise
        banner = "!" * 78
        print(f"\n{banner}\n!! Could not download {options.dataset!r}:\n{error}\n!! FALLING BACK to the small "
              f"bundled sample {SAMPLE!r} (about 59K words): results will NOT match a WikiText-2 run.\n!! "
              f"Pass --no-fallback to fail instead, or --data-dir to use files you downloaded.\n{banner}\n",
              file=sys.stderr, flush=True)
        return download_extract(SAMPLE), SAMPLE


def _tokenizer_and_model(options, folder, kvstore):
    """The tokenizer to encode the data with (None: count a word vocabulary) and the model, if already made.

    ``init_from_hf``: the model and tokenizer of a Hugging Face folder; ``tokenizer``: ``'word'``, ``'wordpiece'``
    (trained on the training split, ``vocab_size`` ids) or a ``tokenizer.json`` / ``vocab.txt`` file.
    """
    if options.init_from_hf:
        if options.tokenizer != "word":
            raise DataError("--init-from-hf uses the tokenizer in its folder: drop --tokenizer")
        from .hf import import_huggingface
        net, tokenizer = import_huggingface(options.init_from_hf)
        if tokenizer is None:
            raise DataError(f"{options.init_from_hf} holds no tokenizer (tokenizer.json or vocab.txt): pretraining "
                            "needs the one the model was trained with; copy it into the folder")
        return tokenizer, net
    if options.tokenizer == "word":
        return None, None
    if options.tokenizer == "wordpiece":
        # Training is not reproducible (ties between pieces), so a run keeps its tokenizer for --resume.
        path = os.path.join(options.output_dir, TOKENIZER_FILE)
        if options.resume and os.path.isfile(path):
            return load_tokenizer(path)[0], None
        if distributed.num_workers(kvstore if distributed.is_distributed(options.kvstore) else None) > 1:
            raise DataError("--tokenizer wordpiece trains a tokenizer, which several workers would each do "
                            "differently: train it once (bertpretrain.train_wordpiece(files).save('tokenizer.json')) "
                            "and pass --tokenizer tokenizer.json")
        tokenizer = train_wordpiece([split_file(folder, "train")], vocab_size=options.vocab_size)
        os.makedirs(options.output_dir, exist_ok=True)
        tokenizer.save(path)
        return tokenizer, None
    return load_tokenizer(options.tokenizer)[0], None


def _sequences_seen(loader, steps):
    """Training examples read in ``steps`` batches of ``loader`` from the start (short last batches counted)."""
    examples, per_epoch = loader._examples_per_epoch(), len(loader)
    epochs, rest = divmod(steps, per_epoch)
    return epochs * min(examples, per_epoch * loader.batch_size) + min(rest * loader.batch_size, examples)


def print_encodings(net, vocab, device):
    """Encode a sentence and a sentence pair as d2l's chapter does, and print a few numbers of each."""
    net_tokens = vocab.tokenize if hasattr(vocab, "tokenize") else str.split  # subword pieces or words
    tokens_a = net_tokens("a crane is flying")
    encoded = get_bert_encoding(net, tokens_a, vocab=vocab, device=device)
    print(f"encoding of {' '.join(tokens_a)!r}: shape {encoded.shape}; [CLS] {encoded[0, 0, :3]}, "
          f"'crane' {encoded[0, 2, :3]}")
    tokens_a, tokens_b = net_tokens("a crane driver came"), net_tokens("he just left")
    encoded = get_bert_encoding(net, tokens_a, tokens_b, vocab=vocab, device=device)
    print(f"encoding of the pair {' '.join(tokens_a)!r} / {' '.join(tokens_b)!r}: shape {encoded.shape}; "
          f"[CLS] {encoded[0, 0, :3]}, 'crane' {encoded[0, 2, :3]}")


def run_pretraining(options):
    """Run the whole recipe; return a summary dict (dataset used, final losses, evaluation, paths).

    Under the launcher with ``kvstore='dist_sync'`` every worker trains; rank 0 alone writes files.
    """
    devices = parse_devices(options.devices) if options.devices else None  # None: train_bert's default
    kvstore = (distributed.create_kvstore(options.kvstore) if distributed.is_distributed(options.kvstore)
               else options.kvstore)
    if getattr(kvstore, "rank", 0) == 0:  # the worker that writes: find an unwritable folder before any work
        check_writable(options.output_dir, "output folder")
    folder, dataset = _data_folder(options)
    tokenizer, net = _tokenizer_and_model(options, folder, kvstore)
    train_iter, vocab = load_data_wiki(options.batch_size, options.max_len, data_dir=folder, seed=options.seed,
                                       dynamic_masking=options.dynamic_masking, dynamic_pairs=options.dynamic_pairs,
                                       truncate_pairs=options.truncate_pairs, unk_targets=options.unk_targets,
                                       drop_last=options.drop_last, tokenizer=tokenizer,
                                       whole_word_masking=options.whole_word_masking)
    eval_iter = None
    if os.path.isfile(os.path.join(folder, "wiki.valid.tokens")):
        eval_iter, _ = load_data_wiki(options.batch_size, options.max_len, data_dir=folder, split="valid",
                                      tokenizer=vocab, seed=options.seed, shuffle=False,
                                      whole_word_masking=options.whole_word_masking)
    else:
        logger.warning("%s has no wiki.valid.tokens: training without held-out evaluation", folder)
    if net is None:
        net = BERTModel(len(vocab), max_len=options.max_len, **ARCHITECTURES[options.architecture])
    else:
        net.config.check_max_len(options.max_len, options.batch_size, "--max-len", source=options.init_from_hf)
    history = train_bert(train_iter, net, devices, eval_iter=eval_iter, vocab=vocab,
                         **options.training_config(kvstore).keywords())
    if history.rank != 0:
        return {"dataset": dataset, "rank": history.rank, "interrupted": history.interrupted}
    model_dir = os.path.join(options.output_dir, "model")
    with atomic_folder(model_dir) as staging:  # a failed save (a full disk) leaves no half-written model/
        save_pretrained(net, staging, vocab=vocab)
    steps = history["step"][-1] if history["step"] else 0
    with reading_shard(train_iter, history.rank, history.workers):  # the share this worker read
        sequences = _sequences_seen(train_iter, steps)
    summary = {"dataset": dataset, "data_dir": folder, "steps": steps, "sequences": sequences,
               "interrupted": history.interrupted, "model_dir": model_dir, "checkpoint": history.checkpoint,
               "options": asdict(options)}
    if history["step"]:
        summary.update(mlm_loss=history["mlm_loss"][-1], nsp_loss=history["nsp_loss"][-1])
    if history["eval"]:
        summary["eval"] = history["eval"][-1]
    try:
        summary["loss_curves"] = plot_history(history, os.path.join(options.output_dir, "loss_curves.png"))
    except ImportError as error:
        logger.warning("%s; skipping the loss-curve plot", error)
    atomic_write(os.path.join(options.output_dir, "history.json"),
                 json.dumps({"history": history.to_dict(), "summary": summary}, indent=1))
    print_encodings(net, vocab, net.collect_params().list_ctx()[0])
    return summary
