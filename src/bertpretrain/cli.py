"""The ``bertpretrain`` command: ``bertpretrain pretrain [options]``, ``bertpretrain launch ...`` and
``bertpretrain export-hf RUN_OR_MODEL_DIR OUT``."""
import argparse
import logging
import os
import sys

from . import options as opts
from .errors import UserError
from .files import DISK_FULL_ERRNOS
from .recipe import DEFAULT_PRESET, PRESETS, SECTIONS, PretrainOptions, preset_values, run_pretraining


def add_pretrain_arguments(parser):
    """The options of ``bertpretrain pretrain`` (and of ``examples/pretrain_wikitext2.py``), generated from the
    fields of the recipe's dataclasses (:data:`bertpretrain.recipe.SECTIONS`), one group each."""
    parser.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                        help=f"the named options the others start from (default: {DEFAULT_PRESET}): recipe, the best "
                             "recipe measured on held-out text; d2l, d2l's published run (50 steps of batch 512 at "
                             "lr 0.01, d2l's model). The options given override it")
    for title, section in SECTIONS:
        opts.add_arguments(parser.add_argument_group(f"{title} options"), section, PRESETS, DEFAULT_PRESET)
    return parser


def options_markdown():
    """The reference of ``pretrain``'s options, one markdown table per section, as docs/command.md holds it."""
    return "\n\n".join(f"### {title} options\n\n" + opts.markdown_table(section, PRESETS, DEFAULT_PRESET)
                       for title, section in SECTIONS)


def export_hf_main(argv=None, prog=None):
    """``export-hf RUN_OR_MODEL_DIR OUT``: write a bertpretrain model as a Hugging Face BERT folder."""
    parser = argparse.ArgumentParser(prog=prog, description="Export a model trained with bertpretrain as a "
                                     "folder that transformers' AutoModelForPreTraining and AutoTokenizer load "
                                     "(BertForPreTraining, RobertaPreLayerNormForMaskedLM or "
                                     "MegatronBertForPreTraining, after the model's architecture).")
    parser.add_argument("model_dir", metavar="RUN_OR_MODEL_DIR",
                        help="a run folder of 'bertpretrain pretrain' (--output-dir) or its model/ folder")
    parser.add_argument("out", metavar="OUT", help="the folder to write (replaced if it exists)")
    args = parser.parse_args(argv)
    from .hf import export_run, exported_class
    try:
        folder = export_run(args.model_dir, args.out)
    except Exception as error:  # noqa: BLE001  (reported when the user can fix it, re-raised otherwise)
        message = user_error_message(error, args.out)
        if message is None and isinstance(error, ImportError):  # a missing package: its message names it
            message = str(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(f"exported {args.model_dir} to {folder}: load it with transformers' "
          f"AutoModelForPreTraining.from_pretrained({folder!r}) (a {exported_class(folder)}) and "
          f"AutoTokenizer.from_pretrained({folder!r})")
    return 0


def pretrain_options(argv=None, prog=None):
    """The :class:`PretrainOptions` of ``pretrain``'s command line: a ``--preset``'s values, then the options
    given. A bad value exits with a usage message and status 2, as argparse does."""
    parser = add_pretrain_arguments(argparse.ArgumentParser(prog=prog, description=__doc__))
    args = parser.parse_args(argv)
    parser.set_defaults(**preset_values(args.preset, args.init_from_hf))
    args = parser.parse_args(argv)
    try:
        return PretrainOptions.create(None, **{name: value for name, value in vars(args).items() if name != "preset"})
    except UserError as error:  # an OptionError, or a --train-file that names no file
        parser.error(str(error))


def user_error_message(error, output_dir):
    """The one paragraph the command prints for an error the user can cause and fix, or None for anything else
    (a bug, which keeps its traceback): a :class:`~bertpretrain.errors.UserError`, whose message names the file
    or argument and the way out, or a full disk (writing the outputs after the last checkpoint), which says
    whether the checkpoints in ``output_dir`` let ``--resume`` finish the job."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
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
        message = user_error_message(error, options.run.output_dir)
        if message is not None:
            print(f"error: {message}", file=sys.stderr, flush=True)
        return message is not None

    try:
        summary = run_pretraining(options, report=report)
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
    for line in summary.get("encodings", ()):
        print(line)
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
