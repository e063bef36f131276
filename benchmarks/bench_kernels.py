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

Then the two whole-block kernels (fused attention, fused MLM decoder + cross-entropy) against the
per-op paths they replace, three ways in one process (interleaved), one per backend of the op
layer: builtin operators (``"builtin"``), the previous per-op kernels (``"fused-v1"``), the fused
kernel (``"fused"``). Self-attention: the model's whole MultiHeadSelfAttention block (batch 512,
T 64, H 128, 2 heads, attention dropout 0.1; valid lengths uniform in [1, 64]), one per backend.
MLM decoder: projection of 5,120 states (512 x 10 predictions, all weight 1) of width 128 onto
6,899 words + weighted softmax cross-entropy, for a few chunk sizes (logits per chunk); and the
fused kernel made to recompute its gradients in backward ("fused, recompute": its forward traced in
inference mode, one GEMM, then three in backward: the four-GEMM schedule of the kernel before the
gradients moved into the forward). Columns: training-mode forward (for the fused MLM kernel, with
its gradients), inference-mode forward (what evaluation runs), forward + backward.

Usage (the machine is shared: take the benchmark lock)::

    flock /tmp/bertpretrain-bench.lock python benchmarks/bench_kernels.py [--threads 1 2]
        [--only-fused]
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


def fused_cases(mx, kernel_ops, model_ops, MultiHeadSelfAttention, chunks):
    """(name, {variant: forward function returning the output to differentiate}).

    Variants: "builtin", "previous" and "fused", the op layer's backends ``"builtin"``,
    ``"fused-v1"`` (the per-op kernels) and ``"fused"``; for the MLM decoder also the raw kernel
    at other chunk sizes, and made to recompute its gradients in backward. Each attention variant
    has its own hybridized block.
    """
    rng = mx.np.random
    batch, t, hidden, heads, vocab, preds = 512, 64, 128, 2, 6899, 10
    backends = {"builtin": "builtin", "previous": "fused-v1", "fused": "fused"}
    x = rng.normal(size=(batch, t, hidden))
    valid_lens = rng.randint(1, t + 1, size=(batch,)).astype("int32")
    mask = model_ops.for_backend("builtin").attention_mask(mx.nd, valid_lens, mx.np.arange(t))

    def attention_variant(backend):
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

    def mlm_variant(backend):
        layer = model_ops.for_backend(backend)
        return lambda: layer.mlm_cross_entropy(mx.nd, states, weight, bias, labels, weights, vocab)

    def mlm_chunk(chunk):
        return lambda: kernel_ops.mlm_cross_entropy(
            mx.nd, states.reshape(-1, hidden), weight, bias, labels.reshape(-1),
            weights.reshape(-1), chunk=chunk)

    def mlm_recompute():
        fused = mlm_variant("fused")

        def run():
            with mx.autograd.predict_mode():  # still recorded, but no gradients in the forward
                return fused()
        return run

    mlm = {name: functools.partial(mlm_variant, backend) for name, backend in backends.items()}
    mlm["fused, recompute"] = mlm_recompute
    mlm.update({f"fused chunk 2^{chunk.bit_length() - 1}": functools.partial(mlm_chunk, chunk)
                for chunk in chunks if chunk != kernel_ops.MLM_CHUNK})
    attention = {name: functools.partial(attention_variant, backend)
                 for name, backend in backends.items()}
    return [("self-attention block 512x64x128, 2 heads, p=0.1", attention),
            (f"MLM decoder + CE 5120x128 -> 6899 (fused: chunk 2^{kernel_ops.MLM_CHUNK.bit_length() - 1})",
             mlm)]


def measure_fused(repeats, chunks):
    """The fused ops against the paths they replace; one row per (case, variant)."""
    import bertpretrain  # noqa: F401  (MXNet with numpy semantics)
    import mxnet as mx
    from mxnet import autograd

    from bertpretrain import kernels
    from bertpretrain.kernels import ops as kernel_ops
    from bertpretrain.model import ops as model_ops
    from bertpretrain.model.attention import MultiHeadSelfAttention

    status = kernels.load()
    if not status.available:
        sys.exit(f"fused kernels unavailable: {status.reason}")
    threads = os.environ["OMP_NUM_THREADS"]
    mx.random.seed(0)
    for name, variants in fused_cases(mx, kernel_ops, model_ops, MultiHeadSelfAttention, chunks):
        made = {variant: make() for variant, make in variants.items()}

        def forward(fn):
            with autograd.train_mode():
                fn().wait_to_read()

        def forward_inference(fn):
            with autograd.predict_mode():
                fn().wait_to_read()

        def forward_backward(fn):
            with autograd.record():
                out = fn()
            out.backward()
            mx.nd.waitall()

        steps = [functools.partial(step, made[v])
                 for step in (forward, forward_inference, forward_backward) for v in made]
        results = timings_ms(steps, repeats)
        count = len(made)
        base_fb = results[2 * count][0]
        for i, variant in enumerate(made):
            (f, f_min), (e, e_min), (fb, fb_min) = results[i], results[count + i], results[2 * count + i]
            print(f"| {name} | {variant} | {threads} | {f:.1f} ({f_min:.1f}) | {e:.1f} ({e_min:.1f}) | "
                  f"{fb:.1f} ({fb_min:.1f}) | {base_fb / fb:.2f}x |", flush=True)


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
    parser.add_argument("--only-fused", action="store_true",
                        help="measure only the whole-block kernels (attention, MLM decoder) against their paths")
    parser.add_argument("--mlm-chunks", type=int, nargs="+", default=[1 << 20, 1 << 21, 1 << 23],
                        help="other chunk sizes (logits per chunk) of the fused MLM decoder to measure")
    parser.add_argument("--child", choices=["ops", "fused"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "ops":
        measure(args.repeats)
        return
    if args.child == "fused":
        measure_fused(args.repeats, args.mlm_chunks)
        return
    if not args.only_fused:
        measure_ops(args)
    print("\nFused ops against the paths they replace: ms per call, median (best); speed-up of "
          "forward + backward against the builtin path\n")
    print("| case | path | threads | fwd (training) | fwd (inference) | fwd+bwd | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for threads in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, __file__, "--child", "fused", "--repeats", str(args.repeats),
                        "--mlm-chunks", *map(str, args.mlm_chunks)], env=env, check=True)


def measure_ops(args):
    """The table of the per-op kernels against builtin operators, one process per thread count."""
    print("ms per call, median (best) of the timed runs; fwd = training-mode forward, "
          "fwd+bwd = forward + backward\n")
    print("| operator | threads | builtin fwd | fused fwd | builtin fwd+bwd | fused fwd+bwd "
          "| speed-up (fwd+bwd) |")
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for threads in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, __file__, "--child", "ops", "--repeats", str(args.repeats)],
                       env=env, check=True)


if __name__ == "__main__":
    main()
