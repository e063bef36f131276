"""Time each fused CPU kernel against MXNet's builtin operators at BERT's shapes.

What: for every operator with a fused kernel, the median and best time of a
training-mode forward, and of forward + backward, through the model's op layer
(:mod:`bertpretrain.model.ops`) on its two backends: the fused kernel, and the builtin
formulation the model uses without it (interleaved, so that other load hits both alike), at 1 and 2 OpenMP threads (each thread count in
its own process, since OpenMP reads OMP_NUM_THREADS at start-up).

Shapes are those of d2l's small BERT (batch 512, max_len 64, hidden 128, 2 heads,
vocab 6,898, 10 MLM slots): LayerNorm over 32768 x 128, dropout over 4M elements,
attention softmax over (1024, 64, 64) with valid lengths, MLM cross-entropy over
5120 x 6898.

Usage (the machine is shared: take the benchmark lock)::

    flock /tmp/bertpretrain-bench.lock python benchmarks/bench_kernels.py [--threads 1 2]
"""
import argparse
import functools
import os
import statistics
import subprocess
import sys
import time


def cases(np, mx, attention_mask):
    """(name, make_inputs, fn(ops, F, *inputs), indices of inputs that need gradients)."""
    rng = mx.np.random

    def ln_inputs():
        return [rng.normal(size=(32768, 128)), rng.normal(size=(128,)), rng.normal(size=(128,))]

    def aln_inputs():
        return [rng.normal(size=(32768, 128)), rng.normal(size=(32768, 128)),
                rng.normal(size=(128,)), rng.normal(size=(128,))]

    def softmax_inputs():
        lens = rng.randint(1, 65, size=(1024,)).astype("int32")
        return [rng.normal(size=(1024, 64, 64)),
                attention_mask(mx.nd, lens, np.arange(64).astype("int32"))]

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
        ("masked_softmax 1024x64x64", softmax_inputs,
         lambda ops, F, s, m: ops.masked_softmax(F, s, m, 0.0), [0]),
        ("masked_softmax+dropout p=0.1", softmax_inputs,
         lambda ops, F, s, m: ops.masked_softmax(F, s, m, 0.1), [0]),
        ("softmax_ce 5120x6898", ce_inputs,
         lambda ops, F, x, y, w: ops.softmax_cross_entropy(F, x, y, w), [0]),
    ]


def timings_ms(variants, repeats, warmup=3):
    """Per variant: (median, best) of `repeats` timed calls, the variants interleaved so
    that load from other processes hits them alike."""
    for fn in variants:
        for _ in range(warmup):
            fn()
    times = [[] for _ in variants]
    for _ in range(repeats):
        for fn, bucket in zip(variants, times):
            start = time.perf_counter()
            fn()
            bucket.append(1e3 * (time.perf_counter() - start))
    return [(statistics.median(t), min(t)) for t in times]


def measure(repeats):
    """Runs in a child process with OMP_NUM_THREADS set; prints one row per case."""
    import bertpretrain  # noqa: F401  (MXNet with numpy semantics)
    import mxnet as mx
    from mxnet import autograd, np

    from bertpretrain import kernels
    from bertpretrain.model import ops

    status = kernels.load()
    if not status.available:
        sys.exit(f"fused kernels unavailable: {status.reason}")
    threads = os.environ["OMP_NUM_THREADS"]
    mx.random.seed(0)
    layers = {True: ops.for_backend("builtin"), False: ops.for_backend("fused")}
    for name, make_inputs, fn, grad_of in cases(np, mx, layers[True].attention_mask):
        inputs = make_inputs()
        for i in grad_of:
            inputs[i].attach_grad()

        def forward(builtin):
            with autograd.train_mode():
                fn(layers[builtin], mx.nd, *inputs).wait_to_read()

        def forward_backward(builtin):
            with autograd.record():
                out = fn(layers[builtin], mx.nd, *inputs)
            out.backward()
            mx.nd.waitall()

        variants = [functools.partial(step, builtin)
                    for step in (forward, forward_backward) for builtin in (True, False)]
        (b_f, b_f_min), (k_f, k_f_min), (b_fb, b_fb_min), (k_fb, k_fb_min) = \
            timings_ms(variants, repeats)
        print(f"| {name} | {threads} | {b_f:.1f} ({b_f_min:.1f}) | {k_f:.1f} ({k_f_min:.1f}) | "
              f"{b_fb:.1f} ({b_fb_min:.1f}) | {k_fb:.1f} ({k_fb_min:.1f}) | "
              f"{b_fb / k_fb:.1f}x ({b_fb_min / k_fb_min:.1f}x) |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="OpenMP thread counts to measure (default: 1 2)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per median")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.repeats)
        return
    print("ms per call, median (best) of the timed runs; fwd = training-mode forward, "
          "fwd+bwd = forward + backward\n")
    print("| operator | threads | builtin fwd | fused fwd | builtin fwd+bwd | fused fwd+bwd "
          "| speed-up (fwd+bwd) |")
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for threads in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)],
                       env=env, check=True)


if __name__ == "__main__":
    main()
