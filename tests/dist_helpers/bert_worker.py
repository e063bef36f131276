"""A worker for the distributed train_bert tests: trains a tiny BERT on the bundled sample.

Usage: bert_worker.py OUT_DIR STEPS OPTIMIZER LR KVSTORE [CHECKPOINT_DIR] (KVSTORE: dist_sync under
bertpretrain.launch, or horovod under horovodrun; with CHECKPOINT_DIR, checkpoints there every step
and resumes from it). Writes OUT_DIR/bert-rank<R>.npz: the per-step MLM losses of this worker's
shard, and for rank 0 the parameters in order (p0, p1, ...).
"""
import os
import sys

import bertpretrain  # noqa: F401  (its numpy fixes must precede `import mxnet`)
import mxnet as mx
import numpy as onp

from bertpretrain import distributed
from bertpretrain.data import load_data_wiki
from bertpretrain.model import BERTModel
from bertpretrain.train import train_bert
from bertpretrain.train.strategy import make_strategy

# The model `bertpretrain pretrain` trains (BERTModel's default sizes), short sequences, no dropout.
# Not smaller: with a 1-layer model the last step's gradient push was quick enough that a job whose
# workers left train_bert with it still queued did not hang, and the test missed that hang.
MODEL = dict(max_len=32, dropout=0.0)


def main(out_dir, steps, optimizer, lr, kvstore, checkpoint_dir=None):
    strategy = make_strategy(kvstore, [mx.cpu()])
    with distributed.exit_on_error(strategy.distributed):
        train_iter, vocab = load_data_wiki(16, 32, dataset="wikitext-2-sample", seed=0)
        net = BERTModel(len(vocab), **MODEL)
        history = train_bert(train_iter, net, strategy=strategy, num_steps=steps, seed=1, progress=False,
                             optimizer=optimizer, lr=lr, precision="fp32", checkpoint_dir=checkpoint_dir,
                             checkpoint_interval=1 if checkpoint_dir else None, resume=bool(checkpoint_dir))
    # Only rank 0 reads its parameters, after train_bert (as `bertpretrain pretrain` saves the model):
    # a worker that waited for its own arrays here would send its last gradients before it exits,
    # and so hide a job that hangs when workers leave train_bert with work still queued.
    params = [p.data().asnumpy() for p in net.collect_params().values()] if history.rank == 0 else []
    onp.savez(os.path.join(out_dir, f"bert-rank{history.rank}.npz"), mlm_loss=history["mlm_loss"],
              **{f"p{i}": p for i, p in enumerate(params)})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5], *sys.argv[6:7])
