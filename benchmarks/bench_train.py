"""train_bert's overhead: its sequences/s against the bare hybridized step, and its peak RSS, per backend.

Both run d2l's configuration (batch 512, max_len 64, small BERT, Adam) on the real WikiText-2
validation + test splits, in the same process and alternately, so machine noise hits both alike,
once per backend of the op layer: "fused" (the new kernels: fused attention and MLM decoder),
"fused-v1" (the previous per-op kernels) and "builtin" (MXNet's operators), all in the same run:
- the bare step: forward + backward + update of the hybridized model with in-graph losses, on
  batches loaded beforehand, reading the loss once per step (what any loop must do to log it);
- ``train_bert``: the library loop, data loading, metrics, history and progress included.
Peak RSS is that of a fresh process running ``train_bert`` alone, per backend.

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py [--steps 20] [--rounds 3] [--backends fused builtin]

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
    bare, trainers = {}, {}
    for backend in args.backends:
        mx.random.seed(0)
        bare[backend] = BERTForPretraining(BERTModel(len(vocab), backend=backend))
        bare[backend].initialize(init.Xavier())
        bare[backend].hybridize(static_alloc=True, static_shape=True)
        trainers[backend] = gluon.Trainer(bare[backend].collect_params(), "adam", {"learning_rate": 0.01})
        bare_steps(bare[backend], trainers[backend], batches[:3], autograd)  # warm-up: graph, memory pools
        train_bert(loader, BERTModel(len(vocab), backend=backend), [mx.cpu()], 3, progress=False, seed=0)
    bare_rates = {backend: [] for backend in args.backends}
    loop_rates = {backend: [] for backend in args.backends}
    losses = {}
    for _ in range(args.rounds):
        for backend in args.backends:
            bare_rates[backend].append(512 / bare_steps(bare[backend], trainers[backend], batches, autograd))
            history = train_bert(loader, BERTModel(len(vocab), backend=backend), [mx.cpu()], args.steps + 2,
                                 progress=False, seed=0)
            steps = history["seq_per_sec"][2:]  # the first steps of a new model build its graph
            loop_rates[backend].append(len(steps) / sum(1 / r for r in steps))
            losses[backend] = history["mlm_loss"]
    return {backend: (statistics.median(bare_rates[backend]), statistics.median(loop_rates[backend]),
                      losses[backend]) for backend in args.backends}


RSS_CHILD = """
import json, resource, sys
import bertpretrain  # its numpy fixes first
import mxnet as mx
from bertpretrain.data import load_data_wiki
from bertpretrain.model import BERTModel
from bertpretrain.train import train_bert
loader, vocab = load_data_wiki(512, 64, data_dir=sys.argv[1], seed=0)
train_bert(loader, BERTModel(len(vocab), backend=sys.argv[3]), [mx.cpu()], int(sys.argv[2]), progress=False,
           seed=0)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=SPLITS, help="folder with wiki.valid.tokens and wiki.test.tokens")
    parser.add_argument("--backends", nargs="+", default=["fused", "fused-v1", "builtin"],
                        choices=["fused", "fused-v1", "builtin"],
                        help="op-layer backends to compare: new kernels, previous kernels, builtin")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        make_data(folder, args.data_dir)
        # First, while this process is small: a child's peak RSS counts the pages it inherits at fork.
        rss = {backend: json.loads(subprocess.run(
            [sys.executable, "-c", RSS_CHILD, folder, str(args.steps), backend], check=True,
            capture_output=True, text=True).stdout.strip().splitlines()[-1]) for backend in args.backends}
        results = measure_speed(args, folder)
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset (MXNet: 1)')}, batch 512, max_len 64")
    for backend, (bare, loop, losses) in results.items():
        print(f"[{backend}] bare hybridized step: {bare:.0f} seq/s; train_bert: {loop:.0f} seq/s "
              f"({100 * (loop / bare - 1):+.1f}% vs the bare step); MLM loss {losses[0]:.3f} -> "
              f"{losses[-1]:.3f} over {len(losses)} steps; peak RSS of a train_bert process "
              f"({args.steps} steps): {rss[backend]:.0f} MB")


if __name__ == "__main__":
    main()
