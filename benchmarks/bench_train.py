"""train_bert's overhead: its sequences/s against the bare hybridized step, and its peak RSS, per backend.

Both run d2l's configuration (batch 512, max_len 64, small BERT, Adam) on the real WikiText-2
validation + test splits, once per backend of the op layer: "fused" (the new kernels: fused
attention and MLM decoder), "fused-v1" (the previous per-op kernels) and "builtin" (MXNet's
operators), all in the same run, in float32; "fused-bf16" is the fused backend computing its
matrix products in bfloat16 (``precision="bf16"``, CPUs with AVX512_BF16):
- the bare step: forward + backward + update of the hybridized model with in-graph losses,
  reading the loss once per step (what any loop must do to log it);
- ``train_bert``: the library loop, data loading, seeding, metrics, history and progress included.
The two take turns step by step, on the same batches, both models fresh and the same age: the
batch iterator given to ``train_bert`` runs one bare step before handing over each batch, and
``train_bert``'s step is the time between two hand-overs. Each step is timed with its update done
(``waitall``), in wall-clock and in process CPU seconds. The CPU time is what to compare on a
shared machine: OpenMP threads wait passively here (``OMP_WAIT_POLICY=PASSIVE`` unless set), so a
neighbour's load stretches the wall-clock time of a step (1.2 s to 5 s on 2 shared cores) but
hardly its CPU time. Peak RSS is that of a fresh process running ``train_bert`` alone, per backend.

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py [--steps 20] [--rounds 3] [--backends fused fused-bf16]

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


SKIPPED = 2  # the first steps of a new model build its graph and fill its memory
BACKENDS = ["fused", "fused-bf16", "fused-v1", "builtin"]


def backend_and_precision(label):
    """("fused", "bf16") for "fused-bf16", else (label, "fp32")."""
    return ("fused", "bf16") if label == "fused-bf16" else (label, "fp32")


def clocks():
    """(wall, process CPU) seconds now."""
    return time.perf_counter(), time.process_time()


def lockstep(loader, vocab, label, steps):
    """``steps`` steps of ``train_bert`` and of the bare step, taking turns (see the module docstring).

    Returns ``({"bare": [(wall, cpu), ...], "train_bert": [...]}, mlm losses of train_bert)``: the seconds
    of each step after the first :data:`SKIPPED`, update included.
    """
    import mxnet as mx
    from mxnet import autograd, gluon, init

    from bertpretrain.model import BERTForPretraining, BERTModel
    from bertpretrain.train import train_bert

    backend, precision = backend_and_precision(label)
    mx.random.seed(0)
    bare = BERTForPretraining(BERTModel(len(vocab), backend=backend, precision=precision))
    bare.initialize(init.Xavier())
    bare.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(bare.collect_params(), "adam", {"learning_rate": 0.01})
    times = {"bare": [], "train_bert": []}
    handed = []  # clocks when the last batch went to train_bert

    def bare_step(batch):
        with autograd.record():
            out = bare(*batch)
            loss = (out.mlm_loss_sum / float(batch.mlm_weights.sum())
                    + out.nsp_loss_sum / batch.tokens.shape[0])
        loss.backward()
        trainer.step(1)
        loss.item()

    def batches():
        for batch in loader:  # reading the batch counts for train_bert, as in its own loop
            mx.nd.waitall()  # train_bert's step, update included, is done
            now = clocks()
            if handed:
                times["train_bert"].append((now[0] - handed[-1][0], now[1] - handed[-1][1]))
            bare_step(batch)
            mx.nd.waitall()
            done = clocks()
            times["bare"].append((done[0] - now[0], done[1] - now[1]))
            handed.append(clocks())
            yield batch

    class Batches:  # a new pass over the loader per epoch, as train_bert asks
        def __iter__(self):
            return batches()

    # one more step than timed: the last one is never followed by a hand-over
    history = train_bert(Batches(), BERTModel(len(vocab), backend=backend), [mx.cpu()], SKIPPED + steps + 1,
                         progress=False, seed=0, precision=precision)
    return ({name: times[name][SKIPPED:SKIPPED + steps] for name in times}, history["mlm_loss"])


def measure_speed(args, folder):
    """{backend: (per-step medians {"bare": (wall, cpu), "train_bert": (wall, cpu)}, median of the per-step
    ratios train_bert / bare as (wall, cpu), train_bert's mlm losses)}, over ``args.rounds`` lockstep runs."""
    from bertpretrain.data import load_data_wiki  # first: bertpretrain's numpy fixes precede MXNet's import

    loader, vocab = load_data_wiki(512, 64, data_dir=folder, seed=0, drop_last=True)
    pooled = {backend: {"bare": [], "train_bert": []} for backend in args.backends}
    losses = {}
    for _ in range(args.rounds):
        for backend in args.backends:
            times, losses[backend] = lockstep(loader, vocab, backend, args.steps)
            for name, steps in times.items():
                pooled[backend][name].extend(steps)
    results = {}
    for backend, times in pooled.items():
        medians = {name: tuple(statistics.median(t[i] for t in steps) for i in (0, 1))
                   for name, steps in times.items()}
        ratios = tuple(statistics.median(loop[i] / bare[i] for loop, bare in zip(times["train_bert"], times["bare"]))
                       for i in (0, 1))
        results[backend] = (medians, ratios, losses[backend])
    return results


RSS_CHILD = """
import json, resource, sys
import bertpretrain  # its numpy fixes first
import mxnet as mx
from bertpretrain.data import load_data_wiki
from bertpretrain.model import BERTModel
from bertpretrain.train import train_bert
loader, vocab = load_data_wiki(512, 64, data_dir=sys.argv[1], seed=0)
backend, precision = ("fused", "bf16") if sys.argv[3] == "fused-bf16" else (sys.argv[3], "fp32")
train_bert(loader, BERTModel(len(vocab), backend=backend), [mx.cpu()], int(sys.argv[2]), progress=False,
           seed=0, precision=precision)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=SPLITS, help="folder with wiki.valid.tokens and wiki.test.tokens")
    parser.add_argument("--backends", nargs="+", default=["fused", "fused-v1", "builtin"],
                        choices=BACKENDS,
                        help="op-layer backends to compare: new kernels (in float32, or bf16), "
                             "previous kernels, builtin")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before MXNet starts OpenMP: CPU time is work, not spinning
    with tempfile.TemporaryDirectory() as folder:
        make_data(folder, args.data_dir)
        # First, while this process is small: a child's peak RSS counts the pages it inherits at fork.
        rss = {backend: json.loads(subprocess.run(
            [sys.executable, "-c", RSS_CHILD, folder, str(args.steps), backend], check=True,
            capture_output=True, text=True).stdout.strip().splitlines()[-1]) for backend in args.backends}
        results = measure_speed(args, folder)
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset (MXNet: 1)')}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, batch 512, max_len 64, "
          f"{args.rounds} x {args.steps} steps each, medians per step")
    for backend, (medians, (wall_ratio, cpu_ratio), losses) in results.items():
        (bare_wall, bare_cpu), (loop_wall, loop_cpu) = medians["bare"], medians["train_bert"]
        print(f"[{backend}] bare hybridized step: {512 / bare_wall:.0f} seq/s, {bare_cpu:.3f} CPU s; train_bert: "
              f"{512 / loop_wall:.0f} seq/s, {loop_cpu:.3f} CPU s; train_bert's step costs "
              f"{100 * (cpu_ratio - 1):+.1f}% CPU time ({100 * (wall_ratio - 1):+.1f}% wall-clock) against the bare "
              f"step's; MLM loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps; peak RSS of a "
              f"train_bert process ({args.steps} steps): {rss[backend]:.0f} MB")


if __name__ == "__main__":
    main()
