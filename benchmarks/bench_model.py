"""Benchmark one BERT pretraining step (forward + backward + Adam) at d2l's configuration or BERT's.

Compares the model's paths in the same process, each a model with the same initial parameters on
one backend of the op layer (bertpretrain.model.ops) at one precision: "fused" (the fused kernels:
attention, MLM decoder, layer norms, dropout, NSP cross-entropy) in float32, "fused-bf16" (the
same with the matrix products in bfloat16, float32 sums: ``precision="bf16"``, on CPUs with
AVX512_BF16) and "builtin" (MXNet's builtin operators); their steps are interleaved so that other
load on the machine hits all alike. Prints, for 1 and 2 OpenMP threads (each measured in a fresh
process, since MXNet reads OMP_NUM_THREADS at import): sequences/s of each path and the speed-ups,
the model's floating point operations per step, two ceilings measured in the same process -- the
float32 GEMM rate of a large FullyConnected, and the time the model's own GEMM shapes (as the
fused path runs them) take forward and backward at oneDNN's float32 rates -- and the model FLOP
utilisation against each; then a per-operator profile of a few steps of each path (MXNet's
profiler, aggregate statistics, top operators by total time). It also prints the MLM and NSP
losses at the start and the end of the timed steps for every path: a speed figure is meaningless
unless the loss falls (the model actually trains). The batches are synthetic, in
bertpretrain.data's layout, with Zipf-distributed words so that the masked LM has something to
learn.

``--config`` picks the shapes: ``d2l`` (the default: 2 x 128, T 64, batch 512, d2l's options, the
vocabulary of the real WikiText-2 splits), ``mini`` (4 x 256) and ``small`` (4 x 512) (T 128,
batch 128), ``base`` (12 x 768, T 128, batch 32), the last three with the original BERT's options
(GELU, embedding LayerNorm, tied decoder, LayerNorm epsilon 1e-12, dropout 0.1), a 30,522-word
vocabulary and Adam at 1e-4. ``--paths`` chooses among fused and builtin (default: both at d2l's
size; fused alone, without the profile, at BERT's: each path's model takes ~5 GB at base, and
the profile's second trace of every graph about doubles that), ``--precision fp32 bf16`` the
fused path's precisions.

``--torch PYTHON`` (default: $BERTPRETRAIN_HF_PYTHON when set) also runs benchmarks/torch_reference.py
in that interpreter (it needs torch, which never goes beside MXNet) with the same shapes, batches,
loss, thread count and clock: PyTorch float32 eager and under ``torch.autocast('cpu',
torch.bfloat16)``. With ``--baseline REF`` the same body also runs on the library of commit REF
(checked out into a temporary git worktree, see benchmarks/common.py; a commit from before
bfloat16 runs its fp32 paths only). Each library and the PyTorch reference run one process per
round, taking turns over ``--rounds`` rounds; the speed ratios (this checkout's bf16 over PyTorch's
bf16 autocast and over its own fp32, fp32 over PyTorch fp32, now over REF) are printed per round and
the worst of them (the machine may be shared).

Usage (one benchmark at a time on a shared machine):
    flock /tmp/bertpretrain-bench.lock python benchmarks/bench_model.py [--threads 1 2]
        [--baseline c41b35a --rounds 3]
    flock /tmp/bertpretrain-bench.lock python benchmarks/bench_model.py --config base --threads 2 \
        --paths fused --precision fp32 bf16 --torch /path/to/python-with-torch --rounds 3 --clock cpu
"""
import argparse
import collections
import functools
import json
import os
import pathlib
import statistics

from common import (WIKITEXT2, add_baseline_arguments, add_clock_argument, alternating, child_json, header,
                    import_library, interleaved, precision_options, sources, use_clock)

NUM_SPECIAL_TOKENS = 5  # <unk>, [PAD], [CLS], [SEP], [MASK]
PAD, CLS, SEP, MASK = 1, 2, 3, 4
#: The model options (BERTConfig fields) of the two layouts: d2l's, and the original BERT's (as
#: bertpretrain.model.config.ARCHITECTURES["bert"] has them, with BERT's dropout); written out here so that
#: an earlier library (--baseline) and the PyTorch reference build the same model.
D2L_OPTIONS = dict(activation="relu", embedding_layer_norm=False, tie_mlm_weights=False, layer_norm_eps=1e-5,
                   dropout=0.2)
BERT_OPTIONS = dict(activation="gelu", embedding_layer_norm=True, tie_mlm_weights=True, layer_norm_eps=1e-12,
                    dropout=0.1)
#: --config: the shapes, Adam's learning rate and model options (vocab_size 0: WikiText-2 valid+test's, as d2l
#: builds it). Adam at 1e-4 at BERT's sizes: 1e-3 made BERT-base's post-LN losses jump within five steps.
CONFIGS = {
    "d2l": dict(batch_size=512, max_len=64, num_hiddens=128, ffn_num_hiddens=256, num_heads=2, num_layers=2,
                vocab_size=0, lr=0.01, model=D2L_OPTIONS),
    "mini": dict(batch_size=128, max_len=128, num_hiddens=256, ffn_num_hiddens=1024, num_heads=4, num_layers=4,
                 vocab_size=30522, lr=1e-4, model=BERT_OPTIONS),
    "small": dict(batch_size=128, max_len=128, num_hiddens=512, ffn_num_hiddens=2048, num_heads=8, num_layers=4,
                  vocab_size=30522, lr=1e-4, model=BERT_OPTIONS),
    "base": dict(batch_size=32, max_len=128, num_hiddens=768, ffn_num_hiddens=3072, num_heads=12, num_layers=12,
                 vocab_size=30522, lr=1e-4, model=BERT_OPTIONS),
}
SHAPE_TYPES = dict(batch_size=int, max_len=int, num_hiddens=int, ffn_num_hiddens=int, num_heads=int, num_layers=int,
                   vocab_size=int, lr=float)
PATHS = ("fused", "builtin")
PRECISIONS = ("fp32", "bf16")


def wikitext_vocab_size(data_dir=WIKITEXT2, min_freq=5):
    """Vocabulary size of WikiText-2 valid+test as d2l builds it (6,899).

    d2l keeps only lines with at least two " . "-separated parts (and drops those periods),
    lower-cases and splits on whitespace; words seen >= min_freq times plus the special tokens
    (the corpus's own "<unk>" is the vocabulary's unknown token).
    """
    counts = collections.Counter()
    for split in ("wiki.valid.tokens", "wiki.test.tokens"):
        with open(os.path.join(data_dir, split), encoding="utf-8") as file:
            for line in file:
                if len(line.split(" . ")) >= 2:  # d2l tests the unstripped line
                    for sentence in line.strip().lower().split(" . "):
                        counts.update(sentence.split())
    counts.pop("<unk>", None)
    return NUM_SPECIAL_TOKENS + sum(count >= min_freq for count in counts.values())


def synthetic_batches(num_batches, batch_size, max_len, vocab_size, seed=0):
    """Batches in bertpretrain.data's layout with Zipf-distributed words (so the MLM can learn).

    Returns numpy arrays (tokens, segments, valid_lens, pred_positions, mlm_weights, mlm_labels,
    nsp_labels) per batch; 15% of the valid non-special tokens are replaced by [MASK] and predicted.
    """
    import numpy as onp
    rng = onp.random.RandomState(seed)
    num_preds = round(0.15 * max_len)
    words = onp.arange(NUM_SPECIAL_TOKENS, vocab_size)
    zipf = 1.0 / onp.arange(1, len(words) + 1)
    zipf /= zipf.sum()
    batches = []
    for _ in range(num_batches):
        tokens = onp.full((batch_size, max_len), PAD, dtype="int32")
        segments = onp.zeros((batch_size, max_len), dtype="int32")
        valid_lens = rng.randint(max_len // 2, max_len + 1, size=batch_size).astype("int32")
        positions = onp.zeros((batch_size, num_preds), dtype="int32")
        weights = onp.zeros((batch_size, num_preds), dtype="float32")
        labels = onp.zeros((batch_size, num_preds), dtype="int32")
        for row, length in enumerate(valid_lens):
            len_a = rng.randint(1, length - 3)
            tokens[row, :length] = rng.choice(words, size=length, p=zipf)
            tokens[row, [0, len_a + 1, length - 1]] = [CLS, SEP, SEP]
            segments[row, len_a + 2:length] = 1
            candidates = [i for i in range(1, length - 1) if i != len_a + 1]
            count = min(num_preds, max(1, round(0.15 * length)))
            chosen = rng.choice(candidates, size=count, replace=False)
            positions[row, :count] = chosen
            weights[row, :count] = 1.0
            labels[row, :count] = tokens[row, chosen]
            tokens[row, chosen] = MASK
        nsp_labels = rng.randint(0, 2, size=batch_size).astype("int32")
        batches.append((tokens, segments, valid_lens, positions, weights, labels, nsp_labels))
    return batches


def add_shape_arguments(parser):
    """The options that fix the model and its run, shared with torch_reference.py: ``--config`` and the sizes
    that override its values, the learning rate, the warm-up and timed steps."""
    parser.add_argument("--config", choices=list(CONFIGS), default="d2l",
                        help="shapes, learning rate and model options (see bench_model.py's docstring); the options "
                             "below override its values")
    for name, kind in SHAPE_TYPES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind,
                            help="0: WikiText-2 valid+test's (d2l's)" if name == "vocab_size" else None)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per path (default: 3)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per path (default: 20)")


def resolve_shapes(args):
    """Fill the shape options left unset from ``args.config`` (and a vocabulary size of 0 from WikiText-2's)."""
    for name in SHAPE_TYPES:
        if getattr(args, name) is None:
            setattr(args, name, CONFIGS[args.config][name])
    args.vocab_size = args.vocab_size or wikitext_vocab_size()
    return args


def shape_options(args):
    """The command-line options that give a child ``args``'s resolved shapes."""
    options = ["--config", args.config, "--warmup", args.warmup, "--steps", args.steps]
    for name in SHAPE_TYPES:
        options += [f"--{name.replace('_', '-')}", getattr(args, name)]
    return options


def model_gemms(batch_size, max_len, num_preds, vocab_size, hiddens, ffn_hiddens, heads, layers):
    """The model's matrix products per forward pass, as the fused path runs them: (name, kind, shape, count).

    kind "fc": input (M, K) times weight (N, K)^T; kind "bmm": batch of (M, K) x (K, N). The
    attention's queries, keys and values come from one packed projection (model/ops.py FusedOps);
    its scores and context run per (sequence, head) inside the attention kernel, counted here as
    batched products. The FLOP count is the same as per-head projections' (the builtin path's);
    the shapes, which ceiling 2 times, are not.
    """
    tokens, preds, head_size = batch_size * max_len, batch_size * num_preds, hiddens // heads
    return [
        ("packed q/k/v projection", "fc", (tokens, hiddens, 3 * hiddens), layers),
        ("output projection", "fc", (tokens, hiddens, hiddens), layers),
        ("FFN in", "fc", (tokens, hiddens, ffn_hiddens), layers),
        ("FFN out", "fc", (tokens, ffn_hiddens, hiddens), layers),
        ("attention scores", "bmm", (batch_size, max_len, head_size, max_len), heads * layers),
        ("attention context", "bmm", (batch_size, max_len, max_len, head_size), heads * layers),
        ("MLM transform", "fc", (preds, hiddens, hiddens), 1),
        ("MLM decoder", "fc", (preds, hiddens, vocab_size), 1),
        ("NSP pooler", "fc", (batch_size, hiddens, hiddens), 1),
        ("NSP classifier", "fc", (batch_size, hiddens, 2), 1),
    ]


def gemm_flops(kind, shape):
    if kind == "fc":
        rows, inner, cols = shape
        return 2 * rows * inner * cols
    batch, rows, inner, cols = shape
    return 2 * batch * rows * inner * cols


def _median_seconds(run, repeats, warmup=2):
    from mxnet import npx
    return statistics.median(interleaved([run], repeats, warmup, sync=npx.waitall)[0])


def peak_gemm_rate():
    """FLOP/s of a large float32 FullyConnected (8192 x 1024 by 1024 x 1024), forward only."""
    from mxnet import np, npx
    x, w = np.random.normal(size=(8192, 1024)), np.random.normal(size=(1024, 1024))
    seconds = _median_seconds(lambda: npx.fully_connected(x, w, num_hidden=1024, no_bias=True), 7)
    return 2 * 8192 * 1024 * 1024 / seconds


def gemm_shape_seconds(kind, shape):
    """Forward + backward (both input gradients) time of one of the model's GEMM shapes."""
    from mxnet import autograd, np, npx
    if kind == "fc":
        rows, inner, cols = shape
        x, w = np.random.normal(size=(rows, inner)), np.random.normal(size=(cols, inner))

        def product():
            return npx.fully_connected(x, w, num_hidden=cols, no_bias=True)
    else:
        batch, rows, inner, cols = shape
        x, w = np.random.normal(size=(batch, rows, inner)), np.random.normal(size=(batch, inner, cols))

        def product():
            return npx.batch_dot(x, w)
    x.attach_grad()
    w.attach_grad()

    def step():
        with autograd.record():
            out = product()
        out.backward()
    return _median_seconds(step, 5)


def _profile(model_step, steps):
    """Aggregate per-operator times (ms per step) of ``steps`` calls of ``model_step``."""
    import mxnet as mx
    from mxnet import npx
    mx.profiler.set_config(profile_symbolic=True, profile_imperative=True, profile_memory=False,
                           profile_api=False, aggregate_stats=True,
                           filename=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                 f"bench_model_profile_{os.getpid()}.json"))
    npx.waitall()
    mx.profiler.set_state("run")
    for _ in range(steps):
        model_step()
    npx.waitall()
    mx.profiler.set_state("stop")
    stats = json.loads(mx.profiler.dumps(reset=True, format="json"))
    operators = stats.get("Time", {}).get("operator", {})
    rows = [(name, values["Total"] / steps, values["Count"] / steps)
            for name, values in operators.items()]
    return sorted(rows, key=lambda row: -row[1])


def measure(args):
    """Run in a child whose OMP_NUM_THREADS is already set; returns a dict of results."""
    import_library()  # first: bertpretrain's numpy fixes precede MXNet's import
    import numpy as onp
    from bertpretrain import kernels
    from bertpretrain.model import BERTForPretraining, BERTModel
    import mxnet as mx
    from mxnet import autograd, gluon, init, np, npx

    num_preds = round(0.15 * args.max_len)
    backends, skipped = {}, {}  # per path label: (backend, precision keywords), or why it cannot run here
    for backend in args.paths:
        for precision in args.precision if backend == "fused" else ["fp32"]:
            label = backend if precision == "fp32" else f"{backend}-{precision}"
            keywords, reason = precision_options(precision)
            if backend == "fused" and not kernels.available():
                skipped[label] = f"no fused kernels ({kernels.load().reason})"
            elif keywords is None:
                skipped[label] = reason
            else:
                backends[label] = backend, keywords
    paths = list(backends)
    mx.random.seed(0)
    nets = []
    for path in paths:
        backend, keywords = backends[path]
        net = BERTModel(args.vocab_size, backend=backend, num_hiddens=args.num_hiddens,
                        ffn_num_hiddens=args.ffn_num_hiddens, num_heads=args.num_heads,
                        num_layers=args.num_layers, max_len=args.max_len,
                        check_token_ids=not args.no_check_token_ids, **CONFIGS[args.config]["model"],
                        **keywords)
        net.initialize(init.Xavier())
        if nets:  # the same initial parameters on every path
            for mine, first in zip(net.collect_params().values(), nets[0].collect_params().values()):
                mine.set_data(first.data())
        nets.append(net)
    models = {path: BERTForPretraining(net, count_correct=args.count_correct)
              for path, net in zip(paths, nets)}
    trainers = {}
    for path, model in models.items():
        model.hybridize(static_alloc=True, static_shape=True)
        trainers[path] = gluon.Trainer(model.collect_params(), "adam", {"learning_rate": args.lr})
    batches = [tuple(np.array(a) for a in batch) for batch in
               synthetic_batches(4, args.batch_size, args.max_len, args.vocab_size)]

    def train_step(path, batch):
        tokens, segments, valid_lens, positions, weights, labels, nsp_labels = batch
        num_real_preds = float(weights.sum())  # known before the step (global count)
        with autograd.record():
            out = models[path](tokens, segments, valid_lens, positions, weights, labels, nsp_labels)
            mlm_sum, nsp_sum = out.mlm_loss_sum, out.nsp_loss_sum
            loss = mlm_sum / num_real_preds + nsp_sum / args.batch_size
        loss.backward()
        trainers[path].step(1)
        return mlm_sum, nsp_sum, num_real_preds

    for path in reversed(paths):  # trace, the builtin graph first
        train_step(path, batches[0])

    losses = {path: [] for path in paths}
    times = {path: [] for path in paths}
    for index in range(args.warmup + args.steps):
        order = paths if index % 2 == 0 else paths[::-1]  # interleaved, alternating order
        sums = {}

        def run(path):
            sums[path] = train_step(path, batches[index % 4])

        seconds = interleaved([functools.partial(run, path) for path in order], 1, warmup=0, sync=npx.waitall,
                              clock=args.clock)
        for path, (step_seconds,) in zip(order, seconds):
            if index >= args.warmup:
                times[path].append(step_seconds)
            mlm_sum, nsp_sum, num_real_preds = sums[path]
            losses[path].append((mlm_sum.item() / num_real_preds, nsp_sum.item() / args.batch_size))

    # Profile: each graph traced again without bulk execution, so that the profiler sees every
    # operator (bulked segments are reported as one entry); the timings above are with bulking.
    profiles, profile_totals = {}, {}
    for path in paths if args.profile_steps > 0 else []:
        models[path].hybridize(static_alloc=True, static_shape=True, forward_bulk_size=1,
                               backward_bulk_size=1)
        train_step(path, batches[0])
        train_step(path, batches[1])
        profile_batches = iter(range(args.profile_steps))
        rows = _profile(lambda: train_step(path, batches[next(profile_batches) % 4]),
                        args.profile_steps)
        profiles[path] = rows[:args.profile_top]
        profile_totals[path] = sum(ms for _, ms, _ in rows)

    gemms = model_gemms(args.batch_size, args.max_len, num_preds, args.vocab_size, args.num_hiddens,
                        args.ffn_num_hiddens, args.num_heads, args.num_layers)
    result = {
        "count_correct": args.count_correct,
        "kernels": kernels.load().reason,
        "skipped": skipped,
        "step_gflop": 3 * sum(gemm_flops(kind, shape) * count for _, kind, shape, count in gemms) / 1e9,
        "paths": {path: {
            "step_seconds": times[path],
            "first_losses": onp.mean(losses[path][:3], axis=0).round(3).tolist(),
            "last_losses": onp.mean(losses[path][-3:], axis=0).round(3).tolist(),
            "profile": [(name, round(ms, 2), round(count, 1)) for name, ms, count in profiles.get(path, [])],
            "profile_total_ms": profile_totals.get(path, 0.0),
        } for path in paths},
    }
    if args.ceilings:
        gemm_seconds = {name: gemm_shape_seconds(kind, shape) * count for name, kind, shape, count in gemms}
        result.update(peak_gemm_gflops=peak_gemm_rate() / 1e9, gemm_shapes_ms=1e3 * sum(gemm_seconds.values()),
                      gemm_shapes_breakdown_ms={k: round(1e3 * v, 1) for k, v in gemm_seconds.items()})
    return result


#: The speed ratios printed, per round and the worst: (numerator, denominator, what it shows), each side
#: (library, path); "ours" is this checkout, "PyTorch" the reference of --torch.
RATIOS = [
    (("ours", "fused"), ("ours", "builtin"), "speed-up of the kernels over builtin"),
    (("ours", "fused-bf16"), ("ours", "fused"), "bf16 over fp32 (fused)"),
    (("ours", "fused-bf16"), ("PyTorch", "bf16 autocast"), "ours bf16 over PyTorch bf16 autocast"),
    (("ours", "fused"), ("PyTorch", "fp32 eager"), "ours fp32 over PyTorch fp32 eager"),
    (("ours", "fused"), ("PyTorch", "bf16 autocast"), "ours fp32 over PyTorch bf16 autocast"),
]


def step_medians(results, path):
    """Per round (child), the median step time of ``path`` in seconds."""
    return [statistics.median(r["paths"][path]["step_seconds"]) for r in results]


def speed_ratio(runs, faster, slower):
    """``(worst, per round)`` of the speed of ``faster`` over that of ``slower`` (their step times' ratio;
    > 1: ``faster`` is faster), pairing their runs round by round; None when either did not run."""
    (name_a, path_a), (name_b, path_b) = faster, slower
    if not all(name in runs and path in runs[name][0]["paths"] for name, path in (faster, slower)):
        return None
    rounds = [b / a for a, b in zip(step_medians(runs[name_a], path_a), step_medians(runs[name_b], path_b))]
    return min(rounds), rounds


def report(threads, runs, batch_size, clock):
    """Print the results of one thread count: ``runs`` maps a library name (this checkout's first, then the
    baseline's and PyTorch's where they ran) to its children's results, one per round; step times are in
    ``clock`` seconds (speeds from CPU seconds count the work of all threads)."""
    names = list(runs)
    first = runs[names[0]][0]
    counts = "with" if first["count_correct"] else "without"
    print(f"--- OMP_NUM_THREADS={threads} (loss in the graph, {counts} accuracy counts; kernels: {first['kernels']})")
    for name in names:
        if "library" in runs[name][0]:
            print(f"  {name}: {runs[name][0]['library']} (same shapes, batches and loss)")
        for path, reason in runs[name][0].get("skipped", {}).items():
            print(f"  {name} {path}: not measured: {reason}")
    ceilings = next((r for results in runs.values() for r in results if "peak_gemm_gflops" in r), None)
    print(f"  {first['step_gflop']:.1f} GFLOP per step (forward+backward)", end="")
    if ceilings:
        print(f"; ceiling 1, large float32 FullyConnected: {ceilings['peak_gemm_gflops']:.1f} GFLOP/s; ceiling 2, "
              f"the model's GEMM shapes alone in float32 (fwd+bwd): {ceilings['gemm_shapes_ms']:.0f} ms per step (<= "
              f"{1e3 * batch_size / ceilings['gemm_shapes_ms']:.0f} sequences/s)\n    "
              f"{ceilings['gemm_shapes_breakdown_ms']}")
    else:
        print()
    for name, results in runs.items():
        for path in results[0]["paths"]:
            pooled = [t for r in results for t in r["paths"][path]["step_seconds"]]
            ms = 1e3 * statistics.median(pooled)
            last = results[-1]["paths"][path]
            line = (f"  {name} {path:>13}: step {ms:.0f} ms of {clock} time (median of {len(pooled)} steps; per "
                    f"round {', '.join(f'{1e3 * s:.0f}' for s in step_medians(results, path))}) = "
                    f"{batch_size / ms * 1e3:.1f} sequences/s, {first['step_gflop'] / ms * 1e3:.1f} GFLOP/s")
            if ceilings and clock == "wall":  # the ceilings are wall-clock rates
                line += (f", utilisation {100 * first['step_gflop'] / ms * 1e3 / ceilings['peak_gemm_gflops']:.1f}% "
                         f"of ceiling 1, {100 * ceilings['gemm_shapes_ms'] / ms:.1f}% of ceiling 2")
            print(line)
            # A step that trains lowers the MLM loss: by ~2.6 nats over 13 steps at d2l's lr 0.01, by 0.3-1.5 at
            # BERT's lr 1e-4 (10 timed steps); a broken step leaves it where it started.
            fall = last["first_losses"][0] - last["last_losses"][0]
            print(f"            (MLM, NSP) loss, first 3 steps {last['first_losses']} -> last 3 "
                  f"{last['last_losses']}: the MLM loss "
                  + (f"falls by {fall:.2f}, the model trains" if fall > 0.1
                     else "does NOT fall: this speed is meaningless"))
    known = {"ours": names[0], "PyTorch": "PyTorch"}  # RATIOS' names of the libraries
    ratios = [((known[a], path_a), (known[b], path_b), what) for (a, path_a), (b, path_b), what in RATIOS]
    ratios += [((names[0], path), (baseline, path), f"{path}: {names[0]} over {baseline}")
               for baseline in names[1:] if baseline != "PyTorch" for path in first["paths"]]
    rounds = len(runs[names[0]])
    print(f"  speed ratios (> 1: the first is faster), the worst of {rounds} round(s), then each round's:")
    for faster, slower, what in ratios:
        ratio = speed_ratio(runs, faster, slower)
        if ratio:
            print(f"    {what}: x{ratio[0]:.2f} ({', '.join(f'{r:.2f}' for r in ratio[1])})")
    for name, results in runs.items():
        for path, r in results[0]["paths"].items():
            if not r.get("profile"):
                continue
            print(f"  top operators, {name} {path} path (profiler, no bulk execution; ms and calls per step; "
                  f"all operators {r['profile_total_ms']:.0f} ms per step):")
            for op, ms, count in r["profile"]:
                print(f"    {ms:8.2f} ms  {count:5.1f}x  {op}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_arguments(parser)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--paths", nargs="+", choices=PATHS,
                        help="op-layer backends to measure: the fused kernels, MXNet's builtin operators (default: "
                             "both at d2l's size, fused at BERT's: every path is a model in memory, ~5 GB at base)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"],
                        help="precisions of the fused path, measured side by side (bf16: on CPUs with AVX512_BF16)")
    parser.add_argument("--torch", metavar="PYTHON", default=os.environ.get("BERTPRETRAIN_HF_PYTHON"),
                        help="a Python with torch for the PyTorch reference (default: $BERTPRETRAIN_HF_PYTHON; "
                             "unset: no reference)")
    parser.add_argument("--no-check-token-ids", action="store_true")
    parser.add_argument("--profile-steps", type=int,
                        help="steps of each path run under the profiler, in the first run of this checkout (0: no "
                             "profile; default: 3 at d2l's size, 0 at BERT's: the profile's second trace of every "
                             "graph about doubles the memory, 1.9 -> 3.3 GB for one path at mini)")
    parser.add_argument("--profile-top", type=int, default=12, help="operators listed per path")
    parser.add_argument("--no-ceilings", action="store_true",
                        help="skip the float32 GEMM-rate ceilings (measured in the first run of this checkout; "
                             "slow at BERT's sizes)")
    parser.add_argument("--count-correct", action="store_true",
                        help="also count correct MLM/NSP predictions (the arg-max costs ~3%%)")
    add_clock_argument(parser, "steps")
    add_baseline_arguments(parser)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ceilings", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    resolve_shapes(args)
    d2l = args.config == "d2l"
    args.paths = args.paths or (list(PATHS) if d2l else ["fused"])
    args.profile_steps = (3 if d2l else 0) if args.profile_steps is None else args.profile_steps
    clock = use_clock(args.clock)
    header(__doc__.splitlines()[0])
    print(f"config {args.config}: {args.num_layers} x {args.num_hiddens} (FFN {args.ffn_num_hiddens}, "
          f"{args.num_heads} heads), batch {args.batch_size}, max_len {args.max_len}, vocabulary {args.vocab_size}, "
          f"Adam lr {args.lr}; paths {' '.join(args.paths)}, fused in {' '.join(args.precision)}; threads "
          f"{args.threads}, {args.warmup} + {args.steps} steps per path and round, "
          f"{args.rounds} round(s), {clock}", flush=True)
    options = shape_options(args) + ["--paths", *args.paths, "--precision", *args.precision,
                                     "--profile-top", args.profile_top, "--clock", args.clock]
    options += ["--no-check-token-ids"] * args.no_check_token_ids + ["--count-correct"] * args.count_correct
    reference = pathlib.Path(__file__).with_name("torch_reference.py")
    with sources(args.baseline) as versions:
        for threads in args.threads:
            runners = [(source.name, source) for source in versions] + [("PyTorch", None)] * bool(args.torch)
            runs = {name: [] for name, _ in runners}
            for index, (name, source) in alternating(runners, args.rounds):
                if source is None:
                    result = child_json([reference, *shape_options(args), "--clock", args.clock], threads,
                                        python=args.torch)
                else:
                    first = index == 0 and source is versions[0]  # profile and ceilings once
                    extra = (["--profile-steps", args.profile_steps if first else 0]
                             + ["--ceilings"] * (first and not args.no_ceilings))
                    result = child_json([__file__, "--child", *options, *extra], threads, source)
                runs[name].append(result)
            report(threads, runs, args.batch_size, args.clock)


if __name__ == "__main__":
    main()
