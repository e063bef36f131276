"""Pretrain d2l's small BERT on WikiText-2, end to end.

    python examples/pretrain_wikitext2.py [--num-steps 50] [--batch-size 512] [--devices cpu] ...

Downloads and verifies WikiText-2 (offline: says so loudly and uses the bundled sample, unless
--no-fallback), builds the MLM + NSP pretraining data, pretrains for 50 steps with Adam at lr 0.01
(d2l's published run), evaluates on the validation split, and writes into --output-dir
(default runs/wikitext-2): model/ (config, parameters, vocabulary), checkpoints/, loss_curves.png
and history.json; then prints the BERT encodings of a sentence and a sentence pair.
The same job is the ``bertpretrain pretrain`` command; the steps are in bertpretrain/recipe.py.
"""
import sys

from bertpretrain.cli import pretrain_main

if __name__ == "__main__":
    sys.exit(pretrain_main(prog="pretrain_wikitext2.py"))
