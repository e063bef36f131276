"""Benchmark one BERT pretraining step (forward + backward + Adam) at d2l's configuration or BERT's.

Compares the model's three paths in the same process, each a model with the same initial
parameters on one backend of the op layer (bertpretrain.model.ops): "kernels" (the ``"fused"``
backend: fused attention and MLM decoder kernels plus the per-op ones), "previous" (the
``"fused-v1"`` backend: only the per-op kernels that preceded those two) and "builtin" (MXNet's
builtin operators); their steps are interleaved so that other load on the machine hits all
alike. Prints, for 1 and 2 OpenMP threads (each measured in a fresh process, since MXNet reads OMP_NUM_THREADS at import): sequences/s of each path and the
speed-up, the model's floating point operations per step, two ceilings measured in the same
process -- the float32 GEMM rate of a large FullyConnected, and the time the model's own GEMM
shapes take (forward and backward) at oneDNN's rates -- and the model FLOP utilisation against
each; then a per-operator profile of a few steps of each path (MXNet's profiler, aggregate
statistics, top operators by total time). It also prints the MLM and NSP losses at the start and
the end of the timed steps for every path: a speed figure is meaningless unless the loss falls
(the model actually trains).
The batches are synthetic, in bertpretrain.data's layout, with Zipf-distributed words so that the
masked LM has something to learn; the vocabulary size is that of the real WikiText-2 splits.

``--config`` picks the shapes of issue 23: ``d2l`` (the default: 2 x 128, T 64, batch 512, d2l's
options), ``mini`` (4 x 256), ``small`` (4 x 512) (T 128, batch 128) and ``base`` (12 x 768, T 128,
batch 32), the last three with the original BERT's options (GELU, embedding LayerNorm, tied
decoder, dropout 0.1) and a 30,522-word vocabulary. ``--precision fp32 bf16`` measures the kernels
path in each precision (bf16: the matrix products in bfloat16, on CPUs with AVX512_BF16), in the
same process, interleaved; ``--paths`` chooses among kernels, previous and builtin. ``--torch
PYTHON`` (default: $BERTPRETRAIN_HF_PYTHON when set) then runs benchmarks/torch_reference.py in
that interpreter (it needs torch: never beside MXNet) with the same shapes, batches, loss and
thread count: PyTorch float32 eager and under ``torch.autocast('cpu', torch.bfloat16)``;
``--rounds`` alternates the MXNet and PyTorch processes that many times (the machine may be
shared) and prints every round and the worst ratios.

Usage (one benchmark at a time on a shared machine):
    flock /tmp/bertpretrain-bench.lock python benchmarks/bench_model.py [--threads 1 2]
    flock /tmp/bertpretrain-bench.lock python benchmarks/bench_model.py --config base --threads 2 \
        --paths kernels --precision fp32 bf16 --profile-steps 0 --torch /path/to/torch/python
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import time

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "wikitext-2")
NUM_SPECIAL_TOKENS = 5  # <unk>, [PAD], [CLS], [SEP], [MASK]
BERT_OPTIONS = dict(activation="gelu", embedding_layer_norm=True, tie_mlm_weights=True,
                    layer_norm_eps=1e-12, dropout=0.1)
# --config: shapes and model options (vocab_size 0: WikiText-2 valid+test's, as d2l builds it)
CONFIGS = {
    "d2l": dict(batch_size=512, max_len=64, num_hiddens=128, ffn_num_hiddens=256, num_heads=2,
                num_layers=2, vocab_size=0, lr=0.01, model={"dropout": 0.2}),
    "mini": dict(batch_size=128, max_len=128, num_hiddens=256, ffn_num_hiddens=1024, num_heads=4,
                 num_layers=4, vocab_size=30522, lr=1e-4, model=BERT_OPTIONS),
    "small": dict(batch_size=128, max_len=128, num_hiddens=512, ffn_num_hiddens=2048, num_heads=8,
                  num_layers=4, vocab_size=30522, lr=1e-4, model=BERT_OPTIONS),
    "base": dict(batch_size=32, max_len=128, num_hiddens=768, ffn_num_hiddens=3072, num_heads=12,
                 num_layers=12, vocab_size=30522, lr=1e-4, model=BERT_OPTIONS),
}
PATHS = {"kernels": "fused", "previous": "fused-v1", "builtin": "builtin"}
PAD, CLS, SEP, MASK = 1, 2, 3, 4


def wikitext_vocab_size(data_dir=DATA_DIR, min_freq=5):
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


def model_gemms(batch_size, max_len, num_preds, vocab_size, hiddens, ffn_hiddens, heads, layers):
    """The model's matrix products per forward pass, as it runs them: (name, kind, shape, count).

    kind "fc": input (M, K) times weight (N, K)^T; kind "bmm": batch of (M, K) x (K, N).
    The attention projections run per head (see MultiHeadSelfAttention).
    """
    tokens, preds, head_size = batch_size * max_len, batch_size * num_preds, hiddens // heads
    return [
        ("q/k/v projections", "fc", (tokens, hiddens, head_size), 3 * heads * layers),
        ("output projection", "fc", (tokens, head_size, hiddens), heads * layers),
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
    times = []
    for index in range(warmup + repeats):
        npx.waitall()
        start = time.perf_counter()
        run()
        npx.waitall()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


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
    """Run in a process whose OMP_NUM_THREADS is already set; returns a dict of results."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    import numpy as onp
    from bertpretrain import kernels  # first: bertpretrain's numpy fixes precede MXNet's import
    from bertpretrain.model import BERTForPretraining, BERTModel
    import mxnet as mx
    from mxnet import autograd, gluon, init, np, npx

    vocab_size = args.vocab_size or wikitext_vocab_size()
    num_preds = round(0.15 * args.max_len)
    # (label, backend, precision) of each measured path; the kernels path once per precision
    paths = []
    for path in args.paths if kernels.available() else ["builtin"]:
        for precision in (args.precision if path == "kernels" else ["fp32"]):
            label = path if precision == "fp32" else f"{path}-{precision}"
            paths.append((label, PATHS[path], precision))
    backends = {label: (backend, precision) for label, backend, precision in paths}
    paths = [label for label, _, _ in paths]
    model_options = dict(CONFIGS[args.config]["model"], max_len=args.max_len)
    mx.random.seed(0)
    nets = []
    for path in paths:
        backend, precision = backends[path]
        net = BERTModel(vocab_size, backend=backend, precision=precision,
                        num_hiddens=args.num_hiddens,
                        ffn_num_hiddens=args.ffn_num_hiddens, num_heads=args.num_heads,
                        num_layers=args.num_layers, check_token_ids=not args.no_check_token_ids,
                        **model_options)
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
               synthetic_batches(4, args.batch_size, args.max_len, vocab_size)]

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
    cpu_times = {path: [] for path in paths}
    for step in range(args.warmup + args.steps):
        for path in (paths if step % 2 == 0 else paths[::-1]):  # interleaved, alternating order
            npx.waitall()
            start, cpu_start = time.perf_counter(), time.process_time()
            mlm_sum, nsp_sum, num_real_preds = train_step(path, batches[step % 4])
            npx.waitall()
            if step >= args.warmup:
                times[path].append(time.perf_counter() - start)
                cpu_times[path].append(time.process_time() - cpu_start)
            losses[path].append((mlm_sum.item() / num_real_preds, nsp_sum.item() / args.batch_size))
    step_seconds = {path: sorted(t)[len(t) // 2] for path, t in times.items()}
    step_cpu_seconds = {path: sorted(t)[len(t) // 2] for path, t in cpu_times.items()}

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

    gemms = model_gemms(args.batch_size, args.max_len, num_preds, vocab_size, args.num_hiddens,
                        args.ffn_num_hiddens, args.num_heads, args.num_layers)
    step_flops = 3 * sum(gemm_flops(kind, shape) * count for _, kind, shape, count in gemms)
    if args.no_ceilings:
        gemm_seconds, peak = {name: float("nan") for name, _, _, _ in gemms}, float("nan")
    else:
        gemm_seconds = {name: gemm_shape_seconds(kind, shape) * count
                        for name, kind, shape, count in gemms}
        peak = peak_gemm_rate()
    per_path = {}
    for path in paths:
        seconds = step_seconds[path]
        per_path[path] = {
            "step_ms": 1e3 * seconds,
            "sequences_per_s": args.batch_size / seconds,
            "step_cpu_s": step_cpu_seconds[path],
            "achieved_gflops": step_flops / seconds / 1e9,
            "mfu_vs_peak": step_flops / seconds / peak,
            "mfu_vs_gemm_shapes": sum(gemm_seconds.values()) / seconds,
            "first_losses": onp.mean(losses[path][:3], axis=0).round(3).tolist(),
            "last_losses": onp.mean(losses[path][-3:], axis=0).round(3).tolist(),
            "profile": [(name, round(ms, 2), round(count, 1)) for name, ms, count in
                        profiles.get(path, [])],
            "profile_total_ms": profile_totals.get(path, 0.0),
        }
    return {
        "config": args.config,
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")),
        "count_correct": args.count_correct,
        "vocab_size": vocab_size,
        "kernels": kernels.load().reason,
        "paths": per_path,
        "step_gflop": step_flops / 1e9,
        "peak_gemm_gflops": peak / 1e9,
        "gemm_shapes_ms": 1e3 * sum(gemm_seconds.values()),
        "gemm_bound_sequences_per_s": args.batch_size / sum(gemm_seconds.values()),
        "gemm_shapes_breakdown_ms": {k: round(1e3 * v, 1) for k, v in gemm_seconds.items()},
    }


def report(result):
    counts = "with" if result["count_correct"] else "without"
    paths = result["paths"]
    print(f"--- OMP_NUM_THREADS={result['threads']} (vocab {result['vocab_size']}, loss in the graph, "
          f"{counts} accuracy counts; kernels: {result['kernels']})")
    print(f"  {result['step_gflop']:.1f} GFLOP per step (forward+backward); ceiling 1, large "
          f"float32 FullyConnected: {result['peak_gemm_gflops']:.1f} GFLOP/s; ceiling 2, the "
          f"model's GEMM shapes alone (fwd+bwd): {result['gemm_shapes_ms']:.0f} ms per step "
          f"(<= {result['gemm_bound_sequences_per_s']:.0f} sequences/s)")
    print(f"    {result['gemm_shapes_breakdown_ms']}")
    for path, r in paths.items():
        falls = r["last_losses"][0] < r["first_losses"][0] - 1.0
        print(f"  {path:>8}: step {r['step_ms']:.0f} ms ({r['step_cpu_s']:.2f} CPU s) = "
              f"{r['sequences_per_s']:.0f} sequences/s, "
              f"{r['achieved_gflops']:.1f} GFLOP/s, utilisation {100 * r['mfu_vs_peak']:.1f}% of "
              f"ceiling 1, {100 * r['mfu_vs_gemm_shapes']:.1f}% of ceiling 2")
        print(f"            (MLM, NSP) loss, first 3 steps {r['first_losses']} -> last 3 "
              f"{r['last_losses']}: the MLM loss "
              f"{'falls, the model trains' if falls else 'does NOT fall: this speed is meaningless'}")
    if {"kernels", "builtin", "previous"} <= set(paths):
        print(f"  speed-up of the kernels: x{paths['builtin']['step_ms'] / paths['kernels']['step_ms']:.2f}"
              f" over builtin, x{paths['previous']['step_ms'] / paths['kernels']['step_ms']:.2f} over "
              "the previous per-op kernels")
    if {"kernels", "kernels-bf16"} <= set(paths):
        print(f"  bf16 over fp32 (kernels): "
              f"x{paths['kernels']['step_ms'] / paths['kernels-bf16']['step_ms']:.2f}")
    for path, r in paths.items():
        if not r["profile"]:
            continue
        print(f"  top operators, {path} path (profiler, no bulk execution; ms and calls per step; "
              f"all operators {r['profile_total_ms']:.0f} ms per step):")
        for name, ms, count in r["profile"]:
            print(f"    {ms:8.2f} ms  {count:5.1f}x  {name}")


def torch_reference(args, threads, python):
    """The PyTorch reference's results (torch_reference.py in ``python``) at these shapes."""
    options = dict(CONFIGS[args.config]["model"])
    options = {"dropout": options.get("dropout", 0.2), "activation": options.get("activation", "relu"),
               "embedding_layer_norm": options.get("embedding_layer_norm", False),
               "tie_mlm_weights": options.get("tie_mlm_weights", False),
               "layer_norm_eps": options.get("layer_norm_eps", 1e-5),
               "vocab_size": args.vocab_size or wikitext_vocab_size(), "batch_size": args.batch_size,
               "max_len": args.max_len, "num_hiddens": args.num_hiddens,
               "ffn_num_hiddens": args.ffn_num_hiddens, "num_heads": args.num_heads,
               "num_layers": args.num_layers, "lr": args.lr, "warmup": args.warmup,
               "steps": args.steps, "modes": ["fp32", "bf16"]}
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_reference.py")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    output = subprocess.run([python, script, json.dumps(options)], env=env, check=True,
                            capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def report_torch(result, ours):
    print(f"  PyTorch {result['torch']} reference, same shapes, batches and loss:")
    for mode, label in (("fp32", "fp32 eager"), ("bf16", "bf16 autocast")):
        r = result[mode]
        print(f"    {label:>13}: step {r['step_ms']:.0f} ms ({r['step_cpu_s']:.2f} CPU s) = "
              f"{r['sequences_per_s']:.1f} sequences/s; "
              f"(MLM, NSP) loss {r['first_losses']} -> {r['last_losses']}")
    for path in ("kernels", "kernels-bf16"):
        if path in ours:
            rate, cpu = ours[path]["sequences_per_s"], ours[path]["step_cpu_s"]
            print(f"    {path} over PyTorch: x{rate / result['fp32']['sequences_per_s']:.2f} fp32 eager, "
                  f"x{rate / result['bf16']['sequences_per_s']:.2f} bf16 autocast (CPU time: "
                  f"x{result['fp32']['step_cpu_s'] / cpu:.2f}, x{result['bf16']['step_cpu_s'] / cpu:.2f})")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="d2l",
                        help="shapes and model options (see the module docstring); the size options "
                             "below override its values")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-len", type=int)
    parser.add_argument("--num-hiddens", type=int)
    parser.add_argument("--ffn-num-hiddens", type=int)
    parser.add_argument("--num-heads", type=int)
    parser.add_argument("--num-layers", type=int)
    parser.add_argument("--vocab-size", type=int, help="0: WikiText-2 valid+test (d2l's default)")
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS),
                        help="model paths to measure (default: all three)")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                        help="precisions of the kernels path, measured side by side")
    parser.add_argument("--torch", default=os.environ.get("BERTPRETRAIN_HF_PYTHON"),
                        help="a Python with torch for the PyTorch reference (default: "
                             "$BERTPRETRAIN_HF_PYTHON; none: no reference)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the MXNet and PyTorch measurements this many times")
    parser.add_argument("--no-ceilings", action="store_true",
                        help="skip the GEMM-rate ceilings (slow at BERT sizes)")
    parser.add_argument("--lr", type=float, help="Adam's learning rate (d2l 0.01, BERT sizes 1e-4)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-check-token-ids", action="store_true")
    parser.add_argument("--profile-steps", type=int, default=3,
                        help="steps of each path run under the profiler (0: no profile)")
    parser.add_argument("--profile-top", type=int, default=12, help="operators listed per path")
    parser.add_argument("--count-correct", action="store_true",
                        help="also count correct MLM/NSP predictions (the arg-max costs ~3%%)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name, value in CONFIGS[args.config].items():
        if name != "model" and getattr(args, name) is None:
            setattr(args, name, value)
    if args.child:
        print(json.dumps(measure(args)))
        return
    print(f"CPU: {cpu_name()}; config {args.config}; per step: median wall-clock and process CPU "
          "time (OMP_WAIT_POLICY=PASSIVE unless set: on a shared machine CPU time is the fairer "
          "comparison of two processes measured one after the other)")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for threads in args.threads:
        worst = {}
        for round_index in range(args.rounds):
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            output = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                                     *sys.argv[1:]], env=env, check=True, capture_output=True,
                                    text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            if args.rounds > 1:
                print(f"=== round {round_index + 1} of {args.rounds}")
            report(result)
            if not args.torch:
                continue
            reference = torch_reference(args, threads, args.torch)
            report_torch(reference, result["paths"])
            for path in ("kernels", "kernels-bf16"):
                if path in result["paths"]:
                    rate = result["paths"][path]["sequences_per_s"]
                    cpu = result["paths"][path]["step_cpu_s"]
                    for mode in ("fp32", "bf16"):
                        ratio = rate / reference[mode]["sequences_per_s"]
                        worst[(path, mode)] = min(worst.get((path, mode), ratio), ratio)
                        ratio = reference[mode]["step_cpu_s"] / cpu
                        worst[(path, mode + ", CPU time")] = min(
                            worst.get((path, mode + ", CPU time"), ratio), ratio)
            if {"kernels", "kernels-bf16"} <= set(result["paths"]):
                ratio = result["paths"]["kernels"]["step_ms"] / result["paths"]["kernels-bf16"]["step_ms"]
                worst[("bf16", "fp32")] = min(worst.get(("bf16", "fp32"), ratio), ratio)
        if worst:
            print(f"worst of {args.rounds} rounds, {threads} threads: " + ", ".join(
                f"{a} / {'ours fp32' if a == 'bf16' else 'PyTorch ' + b} x{r:.2f}"
                for (a, b), r in worst.items()))


if __name__ == "__main__":
    main()
