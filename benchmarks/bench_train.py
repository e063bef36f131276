"""train_bert's overhead: its sequences/s against the bare hybridized step, and its peak RSS, per backend.

Both run d2l's configuration (batch 512, max_len 64, small BERT, Adam) on the real WikiText-2
validation + test splits, once per backend of the op layer: "fused" (the fused kernels) and
"builtin" (MXNet's operators), in float32, and "fused-bf16", the fused backend computing its
matrix products in bfloat16 (``precision="bf16"``, CPUs with AVX512_BF16), all in the same run:
- the bare step: forward + backward + update of the hybridized model with in-graph losses,
  reading the loss once per step (what any loop must do to log it);
- ``train_bert``: the library loop, data loading, seeding, metrics, history and progress included.
The two take turns step by step, on the same batches, both models fresh and the same age: the
batch iterator given to ``train_bert`` runs one bare step before handing over each batch, and
``train_bert``'s step is the time between two hand-overs. Each step is timed with its update done
(``waitall``), in wall-clock and in process CPU seconds. The CPU time is what to compare on a
shared machine: OpenMP threads wait passively here (``OMP_WAIT_POLICY=PASSIVE`` unless set), so a
neighbour's load stretches the wall-clock time of a step (1.2 s to 5 s on 2 shared cores) but
hardly its CPU time. Each round runs in a fresh process; peak RSS is that of a fresh process
running ``train_bert`` alone, per backend and round, and the highest of the rounds counts.

With ``--baseline REF`` the rounds also run on the library of commit REF (checked out into a
temporary git worktree, see benchmarks/common.py; a commit from before bfloat16 runs no
"fused-bf16"), taking turns with this checkout's, and ``train_bert``'s step now is set against REF's.

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py [--steps 20] [--rounds 3]
        [--backends fused fused-bf16 builtin] [--baseline c41b35a]

Targets: train_bert within 5% of the bare step; peak RSS under 1 GB.
"""
import argparse
import json
import os
import pathlib
import resource
import statistics
import tempfile

from common import (WIKITEXT2, add_baseline_arguments, alternating, child_json, clocks, header, import_library,
                    precision_options, sources)

#: label: (op-layer backend, precision)
BACKENDS = {"fused": ("fused", "fp32"), "fused-bf16": ("fused", "bf16"), "builtin": ("builtin", "fp32")}


def make_data(folder, splits):
    text = b"".join((pathlib.Path(splits) / f"wiki.{s}.tokens").read_bytes() for s in ("valid", "test"))
    (pathlib.Path(folder) / "wiki.train.tokens").write_bytes(text)


SKIPPED = 2  # the first steps of a new model build its graph and fill its memory


def lockstep(loader, vocab, backend, precision, steps):
    """``steps`` steps of ``train_bert`` and of the bare step, taking turns (see the module docstring), both
    on ``backend`` with ``precision`` (the keywords of :func:`common.precision_options`).

    Returns ``({"bare": [(wall, cpu), ...], "train_bert": [...]}, mlm losses of train_bert)``: the seconds
    of each step after the first :data:`SKIPPED`, update included.
    """
    import mxnet as mx
    from mxnet import autograd, gluon, init

    from bertpretrain.model import BERTForPretraining, BERTModel
    from bertpretrain.train import train_bert

    mx.random.seed(0)
    bare = BERTForPretraining(BERTModel(len(vocab), backend=backend, **precision))
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
    history = train_bert(Batches(), BERTModel(len(vocab), backend=backend), devices=[mx.cpu()],
                         num_steps=SKIPPED + steps + 1, progress=False, seed=0, **precision)
    return ({name: times[name][SKIPPED:SKIPPED + steps] for name in times}, history["mlm_loss"])


def runnable(labels):
    """In a child: ({label: (backend, precision keywords)} of the ``labels`` the imported library can run,
    {label: why not} of the others)."""
    runs, skipped = {}, {}
    for label in labels:
        backend, precision = BACKENDS[label]
        keywords, reason = precision_options(precision)
        if keywords is None:
            skipped[label] = reason
        else:
            runs[label] = backend, keywords
    return runs, skipped


def measure_speed(args):
    """In a child: one lockstep run per backend label; {label: {"bare": [(wall, cpu), ...], "train_bert": [...],
    "mlm_loss": [...]} or {"skipped": why}}."""
    import_library()  # first: bertpretrain's numpy fixes precede MXNet's import
    from bertpretrain.data import load_data_wiki

    loader, vocab = load_data_wiki(512, 64, data_dir=args.data_dir, seed=0, drop_last=True)
    runs, skipped = runnable(args.backends)
    results = {label: {"skipped": reason} for label, reason in skipped.items()}
    for label, (backend, precision) in runs.items():
        times, losses = lockstep(loader, vocab, backend, precision, args.steps)
        results[label] = dict(times, mlm_loss=list(losses))
    return results


def measure_rss(args):
    """In a child, alone: ``train_bert`` for ``args.steps`` steps on the label ``args.backends[0]``; its peak RSS
    in MB, or why that label cannot run on this library."""
    import_library()
    runs, skipped = runnable(args.backends[:1])
    if skipped:
        return next(iter(skipped.values()))
    import mxnet as mx
    from bertpretrain.data import load_data_wiki
    from bertpretrain.model import BERTModel
    from bertpretrain.train import train_bert
    (backend, precision), = runs.values()
    loader, vocab = load_data_wiki(512, 64, data_dir=args.data_dir, seed=0)
    train_bert(loader, BERTModel(len(vocab), backend=backend), devices=[mx.cpu()], num_steps=args.steps,
               progress=False, seed=0, **precision)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarise(rounds):
    """Pool the children's lockstep runs of one library: {backend: (per-step medians {"bare": (wall, cpu),
    "train_bert": (wall, cpu)}, median of the per-step ratios train_bert / bare as (wall, cpu), mlm losses)}."""
    results = {}
    for backend in (label for label, result in rounds[0].items() if "skipped" not in result):
        steps = {name: [tuple(t) for r in rounds for t in r[backend][name]] for name in ("bare", "train_bert")}
        medians = {name: tuple(statistics.median(t[i] for t in times) for i in (0, 1)) for name, times in steps.items()}
        ratios = tuple(statistics.median(loop[i] / bare[i] for loop, bare in zip(steps["train_bert"], steps["bare"]))
                       for i in (0, 1))
        results[backend] = (medians, ratios, rounds[-1][backend]["mlm_loss"])
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data-dir", default=str(WIKITEXT2), help="folder with wiki.valid.tokens and wiki.test.tokens")
    parser.add_argument("--backends", nargs="+", default=["fused", "builtin"], choices=BACKENDS,
                        help="op-layer backends to compare: the fused kernels (in float32, or in bfloat16: "
                             "fused-bf16), MXNet's builtin operators (default: fused builtin)")
    add_baseline_arguments(parser, rounds=3)
    parser.add_argument("--child", choices=["speed", "rss"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_speed(args) if args.child == "speed" else measure_rss(args)))
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before MXNet starts OpenMP: CPU time is work, not spinning
    header(__doc__.splitlines()[0])
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset (MXNet: 1)')}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, batch 512, max_len 64, "
          f"{args.rounds} x {args.steps} steps each, medians per step", flush=True)
    child = [__file__, "--steps", args.steps]
    with tempfile.TemporaryDirectory() as folder, sources(args.baseline) as versions:
        make_data(folder, args.data_dir)
        child += ["--data-dir", folder]
        rss = {(source.name, backend): [] for source in versions for backend in args.backends}
        rounds = {source.name: [] for source in versions}
        for _, source in alternating(versions, args.rounds):
            for backend in args.backends:
                rss[source.name, backend].append(child_json(child + ["--child", "rss", "--backends", backend],
                                                            source=source))
            rounds[source.name].append(child_json(child + ["--child", "speed", "--backends", *args.backends],
                                                  source=source))
    report(args, rounds, rss)


def report(args, rounds, rss):
    """Print each library's and backend's results, ``rounds`` its children's speed results and ``rss`` (per
    library and backend) the peak RSS of each round's process (or why the backend did not run)."""
    loop_cpu, peak = {}, {}
    for name, results in rounds.items():
        for backend, result in results[0].items():
            if "skipped" in result:
                print(f"[{name} {backend}] not measured: {result['skipped']}")
        for backend, (medians, (wall_ratio, cpu_ratio), losses) in summarise(results).items():
            (bare_wall, bare_cpu), (loop_wall, loop_cpu[name, backend]) = medians["bare"], medians["train_bert"]
            peak[name, backend] = max(rss[name, backend])
            print(f"[{name} {backend}] bare hybridized step: {512 / bare_wall:.0f} seq/s, {bare_cpu:.3f} CPU s; "
                  f"train_bert: {512 / loop_wall:.0f} seq/s, {loop_cpu[name, backend]:.3f} CPU s; train_bert's step "
                  f"costs {100 * (cpu_ratio - 1):+.1f}% CPU time ({100 * (wall_ratio - 1):+.1f}% wall-clock) against "
                  f"the bare step's; MLM loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps; peak RSS "
                  f"of a train_bert process ({args.steps} steps), the highest of {len(rss[name, backend])}: "
                  f"{peak[name, backend]:.0f} MB ({', '.join(f'{mb:.0f}' for mb in rss[name, backend])})")
    names = list(rounds)
    for name in names:
        if (name, "fused") in peak and (name, "fused-bf16") in peak:
            bf16, fp32 = peak[name, "fused-bf16"], peak[name, "fused"]
            print(f"[{name}] peak RSS of train_bert, the highest of its rounds: fused-bf16 {bf16:.0f} MB, fused (fp32) "
                  f"{fp32:.0f} MB: {bf16 - fp32:+.0f} MB ({'not above' if bf16 <= fp32 else 'ABOVE'} fp32's); CPU "
                  f"s per step: fp32 over bf16 x{loop_cpu[name, 'fused'] / loop_cpu[name, 'fused-bf16']:.2f}")
    for backend in args.backends if len(names) == 2 else []:
        if (names[0], backend) in loop_cpu and (names[1], backend) in loop_cpu:
            now, before = loop_cpu[names[0], backend], loop_cpu[names[1], backend]
            print(f"[{backend}] train_bert's step: {now:.3f} CPU s with {names[0]}, {before:.3f} with {names[1]}: "
                  f"ratio {now / before:.3f} (< 1: faster now)")


if __name__ == "__main__":
    main()
