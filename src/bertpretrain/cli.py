"""The ``bertpretrain`` command: ``bertpretrain pretrain [options]``, ``bertpretrain launch ...`` and
``bertpretrain export-hf RUN_OR_MODEL_DIR OUT``."""
import argparse
import errno
import logging
import os
import sys

from . import distributed
from .errors import UserError
from .recipe import ARCHITECTURES, PRESETS, PretrainOptions, run_pretraining

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def add_pretrain_arguments(parser):
    """The options of ``bertpretrain pretrain`` (and of ``examples/pretrain_wikitext2.py``)."""
    defaults = PretrainOptions()
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="start from a preset's options instead of the defaults (d2l: d2l's published run, "
                             "50 steps, batch 512, lr 0.01); the other options given override it")
    parser.add_argument("--dataset", default=defaults.dataset,
                        help="DATA_HUB dataset to download (wikitext-2, wikitext-103, wikitext-2-sample)")
    parser.add_argument("--data-dir", help="folder already holding wiki.train.tokens and wiki.valid.tokens "
                                           "(no download)")
    parser.add_argument("--verify-data", action="store_true",
                        help="hash the cached dataset files again instead of trusting their recorded size and mtime")
    parser.add_argument("--num-steps", type=int, default=defaults.num_steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-len", type=int, default=defaults.max_len)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps,
                        help="steps of linear learning-rate warm-up")
    parser.add_argument("--lr-decay", choices=("none", "linear"), default=defaults.lr_decay,
                        help="after warm-up: constant (d2l) or linear decay to zero (BERT)")
    parser.add_argument("--devices", help="e.g. cpu, gpu, cpu:0,cpu:1 or gpu:0,gpu:1 (default: all GPUs, else cpu)")
    parser.add_argument("--output-dir", default=defaults.output_dir,
                        help="where the model, checkpoints, loss curves and history go")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output-dir")
    parser.add_argument("--checkpoint-interval", type=int, help="also checkpoint every N steps")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--kvstore", default=defaults.kvstore,
                        help="how gradients are combined: device (one process), or dist_sync under "
                             "'bertpretrain launch' (several processes or machines)")
    parser.add_argument("--no-fallback", dest="fallback", action="store_false",
                        help="fail when the dataset cannot be downloaded instead of using the bundled sample")
    parser.add_argument("--progress", dest="progress", action="store_true", default=None,
                        help="always show the progress bar (default: only on a terminal)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--tokenizer", default=defaults.tokenizer,
                        help="word (d2l's word vocabulary), wordpiece (BERT's, trained on the training split), "
                             "or a tokenizer.json / vocab.txt file")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size,
                        help="ids of the WordPiece vocabulary trained with --tokenizer wordpiece")
    parser.add_argument("--whole-word-masking", action="store_true",
                        help="mask all pieces of a chosen word together (WordPiece)")
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default=defaults.architecture,
                        help="the layout of d2l's small BERT: d2l's own; bert, BERT's (GELU, LayerNorm after the "
                             "embeddings, tied MLM decoder), which 'bertpretrain export-hf' exports to Hugging "
                             "Face; bert-preln (the default), BERT's with pre-LN layers, which learns best in a "
                             "short run but does not export")
    parser.add_argument("--init-from-hf", metavar="DIR",
                        help="start from a Hugging Face BERT folder (model.safetensors and its tokenizer) "
                             "instead of a fresh model; its sizes and tokenizer are used")
    return parser


def export_hf_main(argv=None, prog=None):
    """``export-hf RUN_OR_MODEL_DIR OUT``: write a bertpretrain model as a Hugging Face BERT folder."""
    parser = argparse.ArgumentParser(prog=prog, description="Export a model trained with bertpretrain as a "
                                     "folder that transformers' BertForPreTraining and AutoTokenizer load.")
    parser.add_argument("model_dir", metavar="RUN_OR_MODEL_DIR",
                        help="a run folder of 'bertpretrain pretrain' (--output-dir) or its model/ folder")
    parser.add_argument("out", metavar="OUT", help="the folder to write (replaced if it exists)")
    args = parser.parse_args(argv)
    from .hf import export_run
    try:
        folder = export_run(args.model_dir, args.out)
    except (ValueError, ImportError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"exported {args.model_dir} to {folder}: load it with transformers' "
          f"BertForPreTraining.from_pretrained({folder!r}) and AutoTokenizer.from_pretrained({folder!r})")
    return 0


def pretrain_options(argv=None, prog=None):
    """The :class:`PretrainOptions` of ``pretrain``'s command line: a ``--preset``'s values, then the options
    given. A bad value exits with a usage message and status 2, as argparse does."""
    parser = add_pretrain_arguments(argparse.ArgumentParser(prog=prog, description=__doc__))
    args = parser.parse_args(argv)
    if args.preset:
        parser.set_defaults(**PRESETS[args.preset])
        args = parser.parse_args(argv)
    try:
        return PretrainOptions(**{name: value for name, value in vars(args).items() if name != "preset"})
    except ValueError as error:
        parser.error(str(error))


def user_error_message(error, output_dir):
    """The one paragraph the command prints for an error the user can cause and fix, or None for anything else
    (a bug, which keeps its traceback): a :class:`~bertpretrain.errors.UserError`, whose message names the file
    or argument and the way out, or a full disk (writing the outputs after the last checkpoint), which says
    whether the checkpoints in ``output_dir`` let ``--resume`` finish the job."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
        checkpoints = os.path.join(output_dir, "checkpoints")
        if os.path.isfile(os.path.join(checkpoints, "latest")):
            return (f"the disk is full: {error}. The checkpoints in {checkpoints} are kept: free some space and run "
                    "the same command with --resume to write the outputs")
        return (f"the disk is full: {error}. Free some space (or choose --output-dir on another disk) and run the "
                "command again")
    return None


def pretrain_main(argv=None, prog=None):
    """Parse ``pretrain`` options and run the recipe; return the exit status (130 when interrupted).

    An error the user can fix (:func:`user_error_message`) is printed as one paragraph, ``error: ...``, with
    exit status 1; on a ``dist_*`` worker too, which then exits at once (see :func:`distributed.exit_on_error`).
    """
    options = pretrain_options(argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def report(error):
        message = user_error_message(error, options.output_dir)
        if message is not None:
            print(f"error: {message}", file=sys.stderr, flush=True)
        return message is not None

    try:
        with distributed.exit_on_error(options.kvstore, report=report):
            summary = run_pretraining(options)
    except Exception as error:  # noqa: BLE001  (reported when the user can fix it, re-raised otherwise)
        if not report(error):
            raise
        return 1
    if summary["interrupted"]:
        if summary.get("rank", 0):  # rank 0 writes the checkpoint and reports it
            print(f"worker {summary['rank']} interrupted; resume with --resume")
        else:
            print(f"interrupted at step {summary['steps']}; resume with --resume (checkpoint {summary['checkpoint']})")
        return 130
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"pretrain": "pretrain BERT on WikiText (--preset d2l: d2l's run)",
                "launch": "start distributed training with MXNet's parameter server",
                "export-hf": "write a trained model as a Hugging Face (transformers) BERT folder"}
    if not argv or argv[0] not in commands:
        print("usage: bertpretrain {pretrain,launch,export-hf} [options]\n\n" +
              "\n".join(f"  {name:10s} {text}" for name, text in commands.items()) +
              "\n\n'bertpretrain COMMAND --help' lists a command's options.", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    if argv[0] == "export-hf":
        return export_hf_main(argv[1:], prog="bertpretrain export-hf")
    if argv[0] == "launch":
        from .launch import main as launch_main
        return launch_main(argv[1:], prog="bertpretrain launch")
    return pretrain_main(argv[1:], prog="bertpretrain pretrain")


if __name__ == "__main__":
    sys.exit(main())
