"""The ``bertpretrain`` command: ``bertpretrain pretrain [options]`` and ``bertpretrain launch ...``."""
import argparse
import logging
import sys

from . import distributed
from .data import DataError, DownloadError
from .train import NonFiniteLossError, parse_devices
from .recipe import PRESETS, PretrainOptions, run_pretraining


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
    return parser


def pretrain_main(argv=None, prog=None):
    """Parse ``pretrain`` options and run the recipe; return the exit status (130 when interrupted)."""
    parser = add_pretrain_arguments(argparse.ArgumentParser(prog=prog, description=__doc__))
    args = parser.parse_args(argv)
    if args.preset:
        parser.set_defaults(**PRESETS[args.preset])
        args = parser.parse_args(argv)
    try:
        parse_devices(args.devices)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    options = PretrainOptions(**{name: value for name, value in vars(args).items() if name != "preset"})
    try:
        with distributed.exit_on_error(options.kvstore):
            summary = run_pretraining(options)
    except (DataError, DownloadError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if summary["interrupted"]:
        print(f"interrupted at step {summary['steps']}; resume with --resume (checkpoint {summary['checkpoint']})")
        return 130
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"pretrain": "pretrain BERT on WikiText (--preset d2l: d2l's run)",
                "launch": "start distributed training with MXNet's parameter server"}
    if not argv or argv[0] not in commands:
        print("usage: bertpretrain {pretrain,launch} [options]\n\n" +
              "\n".join(f"  {name:10s} {text}" for name, text in commands.items()) +
              "\n\n'bertpretrain COMMAND --help' lists a command's options.", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    if argv[0] == "launch":
        from .launch import main as launch_main
        return launch_main(argv[1:], prog="bertpretrain launch")
    return pretrain_main(argv[1:], prog="bertpretrain pretrain")


if __name__ == "__main__":
    sys.exit(main())
