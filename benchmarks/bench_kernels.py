"""Time each fused CPU kernel against MXNet's builtin operators at BERT's shapes.

What: for every operator with a fused kernel, the median and best time of a training-mode
forward, and of forward + backward, through the model's op layer (:mod:`bertpretrain.model.ops`)
on its two backends: the fused kernel, and the builtin formulation the model uses without it
(interleaved, so that other load hits both alike), at 1 and 2 OpenMP threads (each thread count
in its own process, since OpenMP reads OMP_NUM_THREADS at start-up).

Shapes are those of d2l's small BERT (batch 512, max_len 64, hidden 128, 2 heads, vocab 6,898,
10 MLM slots): LayerNorm over 32768 x 128, dropout over 4M elements, softmax cross-entropy over
5120 x 6898.

Then the two whole-block kernels against the builtin paths they replace, interleaved in one
process. Self-attention: the model's whole MultiHeadSelfAttention block (batch 512, T 64, H 128,
2 heads, attention dropout 0.1; valid lengths uniform in [1, 64]), one per backend. MLM decoder:
projection of 5,120 states (512 x 10 predictions, all weight 1) of width 128 onto 6,899 words +
weighted softmax cross-entropy, for a few chunk sizes (logits per chunk); and the fused kernel
made to recompute its gradients in backward ("fused, recompute": its forward traced in inference
mode, one GEMM, then three in backward). Columns: training-mode forward (for the fused MLM
kernel, with its gradients), inference-mode forward (what evaluation runs), forward + backward.

With ``--baseline REF`` every measurement also runs on the library of commit REF (checked out into
a temporary git worktree, see benchmarks/common.py), in turns with this checkout's over
``--rounds`` rounds, and a last table sets the two side by side: the kernels before and after.

Usage (the machine is shared: take the benchmark lock)::

    flock /tmp/bertpretrain-bench.lock python benchmarks/bench_kernels.py [--threads 1 2]
        [--only-blocks] [--baseline c41b35a --rounds 2]
"""
import argparse
import collections
import functools
import json
import sys

from common import (add_baseline_arguments, add_clock_argument, alternating, child_json, header, import_library,
                    interleaved, median_best_ms, sources, use_clock)

# A row's timed columns, per table: training-mode forward, inference-mode forward, forward + backward.
COLUMNS = {"ops": ("fwd", "fwd+bwd"), "blocks": ("fwd", "fwd (inference)", "fwd+bwd")}


def op_cases(mx, np):
    """(name, make_inputs, fn(ops, F, *inputs), indices of inputs that need gradients)."""
    rng = mx.np.random

    def ln_inputs():
        return [rng.normal(size=(32768, 128)), rng.normal(size=(128,)), rng.normal(size=(128,))]

    def aln_inputs():
        return [rng.normal(size=(32768, 128)), rng.normal(size=(32768, 128)),
                rng.normal(size=(128,)), rng.normal(size=(128,))]

    def ce_inputs():
        labels = rng.randint(0, 6898, size=(5120,)).astype("int32")
        return [rng.normal(size=(5120, 6898)), labels, np.ones((5120,))]

    return [
        ("layer_norm 32768x128", ln_inputs,
         lambda ops, F, x, g, b: ops.layer_norm(F, x, g, b, 1e-5, 128), [0, 1, 2]),
        ("add_layer_norm p=0.1 32768x128", aln_inputs,
         lambda ops, F, x, r, g, b: ops.add_layer_norm(F, x, r, g, b, 1e-5, 128, 0.1),
         [0, 1, 2, 3]),
        ("dropout p=0.1 4M", lambda: [rng.normal(size=(1024, 64, 64))],
         lambda ops, F, x: ops.dropout(F, x, 0.1), [0]),
        ("softmax_ce 5120x6898", ce_inputs,
         lambda ops, F, x, y, w: ops.softmax_cross_entropy(F, x, y, w), [0]),
    ]


def block_cases(mx, kernel_ops, model_ops, MultiHeadSelfAttention, chunks):
    """(name, {path: function making the forward function whose output is differentiated}).

    Paths: "builtin" and "fused", the op layer's two backends; for the MLM decoder also the raw
    kernel at other chunk sizes, and made to recompute its gradients in backward. Each attention
    path has its own hybridized block.
    """
    rng = mx.np.random
    batch, t, hidden, heads, vocab, preds = 512, 64, 128, 2, 6899, 10
    x = rng.normal(size=(batch, t, hidden))
    valid_lens = rng.randint(1, t + 1, size=(batch,)).astype("int32")
    mask = model_ops.for_backend("builtin").attention_mask(mx.nd, valid_lens, mx.np.arange(t))

    def attention_path(backend):
        mx.random.seed(0)
        block = MultiHeadSelfAttention(hidden, heads, 0.1, model_ops.for_backend(backend))
        block.initialize(mx.init.Xavier())
        block.hybridize(static_alloc=True, static_shape=True)
        block(x, mask)
        return lambda: block(x, mask)

    states = rng.normal(size=(batch, preds, hidden))
    weight = rng.normal(size=(vocab, hidden)) * 0.1
    bias = mx.np.zeros((vocab,))
    labels = rng.randint(0, vocab, size=(batch, preds)).astype("int32")
    weights = mx.np.ones((batch, preds))
    for a in (x, states, weight, bias):
        a.attach_grad()

    def mlm_path(backend):
        layer = model_ops.for_backend(backend)
        return lambda: layer.mlm_cross_entropy(mx.nd, states, weight, bias, labels, weights, vocab)

    def mlm_chunk(chunk):
        return lambda: kernel_ops.mlm_cross_entropy(
            mx.nd, states.reshape(-1, hidden), weight, bias, labels.reshape(-1),
            weights.reshape(-1), chunk=chunk)

    def mlm_recompute():
        fused = mlm_path("fused")

        def run():
            with mx.autograd.predict_mode():  # still recorded, but no gradients in the forward
                return fused()
        return run

    backends = ("builtin", "fused")
    mlm = {backend: functools.partial(mlm_path, backend) for backend in backends}
    mlm["fused, recompute"] = mlm_recompute
    mlm.update({f"fused chunk 2^{chunk.bit_length() - 1}": functools.partial(mlm_chunk, chunk)
                for chunk in chunks if chunk != kernel_ops.MLM_CHUNK})
    attention = {backend: functools.partial(attention_path, backend) for backend in backends}
    return [("self-attention block 512x64x128, 2 heads, p=0.1", attention),
            (f"MLM decoder + CE 5120x128 -> 6899 (fused: chunk 2^{kernel_ops.MLM_CHUNK.bit_length() - 1})",
             mlm)]


def measure(args):
    """In a child (OMP_NUM_THREADS set): every row of the tables asked for, as a JSON-ready list."""
    import_library()
    import mxnet as mx
    from mxnet import autograd, np

    from bertpretrain import kernels
    from bertpretrain.kernels import ops as kernel_ops
    from bertpretrain.model import ops as model_ops
    from bertpretrain.model.attention import MultiHeadSelfAttention

    status = kernels.load()
    if not status.available:
        sys.exit(f"fused kernels unavailable: {status.reason}")
    mx.random.seed(0)

    def forward(fn, mode=autograd.train_mode):
        with mode():
            fn().wait_to_read()

    def forward_backward(fn):
        with autograd.record():
            out = fn()
        out.backward()
        mx.nd.waitall()

    measures = {"fwd": forward, "fwd (inference)": functools.partial(forward, mode=autograd.predict_mode),
                "fwd+bwd": forward_backward}

    def rows(table, case, paths):
        """Every column of ``table`` for every path (a function making the output), interleaved."""
        steps = [functools.partial(measures[column], run) for column in COLUMNS[table] for run in paths.values()]
        times = iter(interleaved(steps, args.repeats, warmup=3, clock=args.clock))
        seconds = {path: {} for path in paths}
        for column in COLUMNS[table]:
            for path in paths:
                seconds[path][column] = next(times)
        return [dict(table=table, case=case, path=path, seconds=columns) for path, columns in seconds.items()]

    results = []
    if not args.only_blocks:
        layers = {"builtin": model_ops.for_backend("builtin"), "fused": model_ops.for_backend("fused")}
        for name, make_inputs, fn, grad_of in op_cases(mx, np):
            inputs = make_inputs()
            for i in grad_of:
                inputs[i].attach_grad()
            results += rows("ops", name, {path: functools.partial(fn, layer, mx.nd, *inputs)
                                          for path, layer in layers.items()})
    for name, paths in block_cases(mx, kernel_ops, model_ops, MultiHeadSelfAttention, args.mlm_chunks):
        results += rows("blocks", name, {path: make() for path, make in paths.items()})
    return results


def collect(args, versions):
    """{(table, case, path, threads, source name): {column: (median, best) ms over every round's calls}}."""
    pooled = collections.defaultdict(lambda: collections.defaultdict(list))
    child = [__file__, "--child", "--repeats", args.repeats, "--clock", args.clock, "--mlm-chunks", *args.mlm_chunks]
    child += ["--only-blocks"] if args.only_blocks else []
    for threads in args.threads:
        for _, source in alternating(versions, args.rounds):
            for row in child_json(child, threads, source):
                key = (row["table"], row["case"], row["path"], threads, source.name)
                for column, seconds in row["seconds"].items():
                    pooled[key][column].extend(seconds)
    return {key: {column: median_best_ms(seconds) for column, seconds in columns.items()}
            for key, columns in pooled.items()}


def report(args, versions, results):
    """The tables (markdown): per-op kernels, whole blocks, and with a baseline, before against after."""
    names = [source.name for source in versions]
    cell = "{:.1f} ({:.1f})".format
    keys = list(results)
    if not args.only_blocks:
        print(f"\nPer-op kernels against builtin operators through the op layer: ms ({args.clock} clock) per call, "
              "median (best); fwd = training-mode forward, fwd+bwd = forward + backward\n")
        print("| operator | threads | library | builtin fwd | fused fwd | builtin fwd+bwd | fused fwd+bwd "
              "| speed-up (fwd+bwd) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for table, case, path, threads, name in keys:
            if table != "ops" or path != "fused":
                continue
            fused, builtin = results[table, case, "fused", threads, name], results[table, case, "builtin", threads, name]
            print(f"| {case} | {threads} | {name} | {cell(*builtin['fwd'])} | {cell(*fused['fwd'])} | "
                  f"{cell(*builtin['fwd+bwd'])} | {cell(*fused['fwd+bwd'])} | "
                  f"{builtin['fwd+bwd'][0] / fused['fwd+bwd'][0]:.1f}x |")
    print(f"\nWhole-block kernels against the builtin paths they replace: ms ({args.clock} clock) per call, median "
          "(best); speed-up of forward + backward against the builtin path\n")
    print("| case | path | threads | library | fwd (training) | fwd (inference) | fwd+bwd | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for table, case, path, threads, name in keys:
        if table == "blocks":
            row, builtin = results[table, case, path, threads, name], results[table, case, "builtin", threads, name]
            print(f"| {case} | {path} | {threads} | {name} | "
                  + " | ".join(cell(*row[column]) for column in COLUMNS["blocks"])
                  + f" | {builtin['fwd+bwd'][0] / row['fwd+bwd'][0]:.2f}x |")
    if len(names) == 2:
        print(f"\nThis checkout ({names[0]}) against {names[1]}: forward + backward, ms ({args.clock} clock) per "
              f"call, median (best) over {args.rounds} round(s) in turns; ratio < 1: faster now\n")
        print(f"| case | path | threads | {names[0]} | {names[1]} | ratio |")
        print("| --- | --- | --- | --- | --- | --- |")
        for table, case, path, threads, name in keys:
            other = (table, case, path, threads, names[1])
            if name == names[0] and other in results:
                now, before = results[table, case, path, threads, name]["fwd+bwd"], results[other]["fwd+bwd"]
                print(f"| {case} | {path} | {threads} | {cell(*now)} | {cell(*before)} | {now[0] / before[0]:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="OpenMP thread counts to measure, each in its own process (default: 1 2)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per round")
    parser.add_argument("--only-blocks", action="store_true",
                        help="measure only the whole-block kernels (attention, MLM decoder) against their paths")
    parser.add_argument("--mlm-chunks", type=int, nargs="+", default=[1 << 20, 1 << 21, 1 << 23],
                        help="other chunk sizes (logits per chunk) of the fused MLM decoder to measure")
    add_clock_argument(parser, "calls")
    add_baseline_arguments(parser)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    clock = use_clock(args.clock)
    header(__doc__.split("\n\n")[0])
    print(f"threads {args.threads}, {args.repeats} timed calls per round, {args.rounds} round(s), {clock}",
          flush=True)
    with sources(args.baseline) as versions:
        results = collect(args, versions)
    report(args, versions, results)


if __name__ == "__main__":
    main()
