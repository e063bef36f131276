"""train_bert's overhead: its sequences/s against the bare hybridized step, and its peak RSS.

Both run d2l's configuration (batch 512, max_len 64, small BERT, Adam) on the real WikiText-2
validation + test splits, in the same process and alternately, so machine noise hits both alike:
- the bare step: forward + backward + update of the hybridized model with in-graph losses, on
  batches loaded beforehand, reading the loss once per step (what any loop must do to log it);
- ``train_bert``: the library loop, data loading, metrics, history and progress included.
Peak RSS is that of a fresh process running ``train_bert`` alone.

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py [--steps 20] [--rounds 3]

Targets: train_bert within 5% of the bare step; peak RSS under 1 GB.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

SPLITS = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "wikitext-2"  # the real valid + test splits


def make_data(folder, splits):
    text = b"".join((pathlib.Path(splits) / f"wiki.{s}.tokens").read_bytes() for s in ("valid", "test"))
    (pathlib.Path(folder) / "wiki.train.tokens").write_bytes(text)


def bare_steps(model, trainer, batches, autograd):
    """Seconds per step of the plain hybridized step over ``batches``."""
    start = time.perf_counter()
    for batch in batches:
        with autograd.record():
            out = model(*batch)
            loss = (out.mlm_loss_sum / float(batch.mlm_weights.sum())
                    + out.nsp_loss_sum / batch.tokens.shape[0])
        loss.backward()
        trainer.step(1)
        loss.item()
    return (time.perf_counter() - start) / len(batches)


def measure_speed(args, folder):
    from bertpretrain.data import load_data_wiki  # first: bertpretrain's numpy fixes precede MXNet's import
    import mxnet as mx
    from mxnet import autograd, gluon, init

    from bertpretrain.model import BERTForPretraining, BERTModel
    from bertpretrain.train import train_bert

    loader, vocab = load_data_wiki(512, 64, data_dir=folder, seed=0)
    batches = [b for b, _ in zip(loader, range(args.steps))]
    mx.random.seed(0)
    bare = BERTForPretraining(BERTModel(len(vocab)))
    bare.initialize(init.Xavier())
    bare.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(bare.collect_params(), "adam", {"learning_rate": 0.01})
    bare_steps(bare, trainer, batches[:3], autograd)  # warm-up: graph building, memory pools
    net = BERTModel(len(vocab))
    train_bert(loader, net, [mx.cpu()], 3, progress=False, seed=0)  # warm-up
    bare_rates, loop_rates = [], []
    for _ in range(args.rounds):
        bare_rates.append(512 / bare_steps(bare, trainer, batches, autograd))
        history = train_bert(loader, BERTModel(len(vocab)), [mx.cpu()], args.steps + 2, progress=False, seed=0)
        steps = history["seq_per_sec"][2:]  # the first steps of a new model build its graph
        loop_rates.append(len(steps) / sum(1 / r for r in steps))
    return statistics.median(bare_rates), statistics.median(loop_rates), history["mlm_loss"]


RSS_CHILD = """
import json, resource, sys
import bertpretrain  # its numpy fixes first
import mxnet as mx
from bertpretrain.data import load_data_wiki
from bertpretrain.model import BERTModel
from bertpretrain.train import train_bert
loader, vocab = load_data_wiki(512, 64, data_dir=sys.argv[1], seed=0)
train_bert(loader, BERTModel(len(vocab)), [mx.cpu()], int(sys.argv[2]), progress=False, seed=0)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=SPLITS, help="folder with wiki.valid.tokens and wiki.test.tokens")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        make_data(folder, args.data_dir)
        # First, while this process is small: a child's peak RSS counts the pages it inherits at fork.
        rss = json.loads(subprocess.run([sys.executable, "-c", RSS_CHILD, folder, str(args.steps)], check=True,
                                        capture_output=True, text=True).stdout.strip().splitlines()[-1])
        bare, loop, losses = measure_speed(args, folder)
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset (MXNet: 1)')}, batch 512, max_len 64")
    print(f"bare hybridized step: {bare:.0f} seq/s")
    print(f"train_bert:           {loop:.0f} seq/s ({100 * (loop / bare - 1):+.1f}% vs the bare step)")
    print(f"train_bert MLM loss: {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps")
    print(f"peak RSS of a train_bert process ({args.steps} steps): {rss:.0f} MB")


if __name__ == "__main__":
    main()
