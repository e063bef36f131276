"""``bertpretrain pretrain ARGS`` in one process of a ``horovodrun`` job, keeping this rank's parameters.

Usage (under horovodrun): horovod_pretrain.py OUT_DIR [pretrain options...]. Runs the command's own entry
point (``bertpretrain.cli.main``, what the ``bertpretrain`` console script calls) and then writes
OUT_DIR/params-rank<R>.npz: the model's parameters by structural name, so that a test can compare the
ranks with each other and with the model rank 0 saved. Exits with the command's status.
"""
import os
import sys

import bertpretrain  # noqa: F401  (its numpy fixes must precede `import mxnet`)
import numpy as onp

from bertpretrain import cli, recipe


def main(out_dir, args):
    nets = []
    train_bert = recipe.train_bert

    def keeping_the_model(train_iter, net, *positional, **options):
        nets.append(net)
        return train_bert(train_iter, net, *positional, **options)

    recipe.train_bert = keeping_the_model
    status = cli.main(["pretrain", *args])
    (net,) = nets
    params = {name: param.data().asnumpy() for name, param in net._collect_params_with_prefix().items()}
    onp.savez(os.path.join(out_dir, f"params-rank{os.environ['HOROVOD_RANK']}.npz"), **params)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
