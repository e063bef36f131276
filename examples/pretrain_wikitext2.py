"""Pretrain a small BERT on WikiText-2, end to end.

    python examples/pretrain_wikitext2.py [--num-steps 1100] [--batch-size 128] [--devices cpu] ...
    python examples/pretrain_wikitext2.py --preset d2l     # d2l's published run: 50 steps, batch 512, lr 0.01

Downloads and verifies WikiText-2 (offline: says so loudly and uses the bundled sample, unless
--no-fallback), builds the MLM + NSP pretraining data, pretrains with the best recipe measured on
held-out text (see the README's "What to expect"), evaluates on the validation split, and writes
into --output-dir (default runs/wikitext-2): model/ (config, parameters, vocabulary), checkpoints/,
loss_curves.png and history.json; then prints the BERT encodings of a sentence and a sentence pair.
The same job is the ``bertpretrain pretrain`` command; the steps are in bertpretrain/recipe.py.
"""
import sys

from bertpretrain.cli import pretrain_main

if __name__ == "__main__":
    sys.exit(pretrain_main(prog="pretrain_wikitext2.py"))
