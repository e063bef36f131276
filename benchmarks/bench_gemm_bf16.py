"""The two bfloat16 routes against float32, GEMM by GEMM, at the model's shapes (issue 23, stage 1).

What: for each configuration (d2l's small BERT; BERT-mini, -small and -base at T = 128) and each of
its dense layers y = x W^T (x (M, K) tokens, W (N, K)): the q/k/v projection (H -> 3H), the
output projection (H -> H), FFN in (H -> FFN), FFN out (FFN -> H) and the MLM decoder (its
prediction rows onto the vocabulary), the three GEMMs of a training step: fwd y = x W^T, dX
dx = dy W, dW dW = dy^T x, each computed by

- oneDNN fp32: MXNet's FullyConnected in float32 (C = A B^T, on transposed copies of the operands
  where the GEMM needs them, made outside the timing), into a preallocated output;
- bp::sgemm fp32: the kernels' float32 GEMM (``bp_sgemm``, ctypes, numpy arrays);
- oneDNN bf16: the same FullyConnected on bfloat16 operands (cast outside the timing) into a
  preallocated bfloat16 output: MXNet 1.9.1's own bfloat16 route, the GEMM alone;
- oneDNN bf16 + casts: the same with what the route costs in a float32 model: both operands cast
  from float32 to bfloat16 (``amp_cast``) and the product back to float32, into preallocated
  arrays (every model op around a Dense layer takes float32: the kernels' MXNet API has no bfloat16);
- bp bf16: the kernels' ``bp::gemm_bf16`` (``bp_gemm_bf16``), float32 in and out, rounding to
  bfloat16 while it packs.

All variants of a row run interleaved in one process; each figure is the median of ``--repeats``
rounds (the machine may be shared); GFLOP/s = 2 M N K / time. Then the median over the rows of
each variant's rate relative to oneDNN fp32. Threads: ``--threads`` (OMP_NUM_THREADS for MXNet's
oneDNN and the kernels alike). Prints the CPU (benchmarks/common.py).

Usage (one benchmark at a time on a shared machine):
    flock /tmp/bertpretrain-bench.lock python benchmarks/bench_gemm_bf16.py [--configs d2l base]
"""
import argparse
import ctypes
import statistics
import sys

from bench_gemm import bind_gemm, gemm_call, layer_gemms
from common import header, import_library, interleaved, run_child

# name: (tokens M, hidden H, FFN width, MLM rows, vocabulary)
CONFIGS = {
    "d2l": (512 * 64, 128, 256, 512 * 10, 6899),
    "mini": (128 * 128, 256, 1024, 128 * 19, 30522),
    "small": (128 * 128, 512, 2048, 128 * 19, 30522),
    "base": (32 * 128, 768, 3072, 32 * 19, 30522),
}
VARIANTS = ("oneDNN fp32", "bp::sgemm fp32", "oneDNN bf16", "oneDNN bf16 + casts", "bp bf16")


def layers(config):
    """(layer name, M, K, N) of each dense layer y = x W^T of ``config``."""
    tokens, hidden, ffn, preds, vocab = CONFIGS[config]
    return [("q/k/v", tokens, hidden, 3 * hidden), ("output proj", tokens, hidden, hidden),
            ("FFN in", tokens, hidden, ffn), ("FFN out", tokens, ffn, hidden),
            ("MLM decoder", preds, hidden, vocab)]


def median_seconds(variants, repeats, sync):
    """Per variant, the median of ``repeats`` timed calls, the variants interleaved (one untimed round first)."""
    return [statistics.median(seconds) for seconds in interleaved(variants, repeats, sync=sync)]


def measure(configs, repeats):
    """Runs in a child process with OMP_NUM_THREADS set; prints one table row per GEMM."""
    import_library()  # first: MXNet with numpy semantics
    import numpy as onp
    import mxnet as mx
    from mxnet.contrib.amp.amp import bfloat16

    from bertpretrain import kernels

    support = kernels.bf16()
    if not support.available:
        sys.exit(f"no bp::gemm_bf16 to measure: {support.reason}")
    lib = ctypes.CDLL(kernels.load().path)
    gemms = {name: bind_gemm(lib, name) for name in ("bp_sgemm", "bp_gemm_bf16")}

    def to_bf16(x, out=None):
        return mx.nd.amp_cast(x, dtype=bfloat16, out=out)

    rng = onp.random.RandomState(0)
    ratios = {v: [] for v in VARIANTS}
    for config in configs:
        for name, m, k, n in layers(config):
            x, w, dy = (rng.normal(size=s).astype("float32") for s in ((m, k), (n, k), (m, n)))
            for gemm, a_nt, b_nt, (trans_a, trans_b, a, b) in layer_gemms(x, w, dy):
                rows, cols = a_nt.shape[0], b_nt.shape[0]
                mx_a, mx_b = mx.nd.array(a_nt), mx.nd.array(b_nt)
                mx_c = mx.nd.zeros((rows, cols))
                bf_a, bf_b = to_bf16(mx_a), to_bf16(mx_b)
                bf_c = to_bf16(mx_c)
                c = onp.empty((rows, cols), "float32")

                def casts_and_product():
                    to_bf16(mx_a, out=bf_a)
                    to_bf16(mx_b, out=bf_b)
                    mx.nd.FullyConnected(bf_a, bf_b, no_bias=True, num_hidden=cols, out=bf_c)
                    mx.nd.amp_cast(bf_c, dtype="float32", out=mx_c)

                variants = [
                    lambda: mx.nd.FullyConnected(mx_a, mx_b, no_bias=True, num_hidden=cols, out=mx_c),
                    gemm_call(gemms["bp_sgemm"], trans_a, trans_b, a, b, c),
                    lambda: mx.nd.FullyConnected(bf_a, bf_b, no_bias=True, num_hidden=cols, out=bf_c),
                    casts_and_product,
                    gemm_call(gemms["bp_gemm_bf16"], trans_a, trans_b, a, b, c),
                ]
                times = median_seconds(variants, repeats, mx.nd.waitall)
                rates = [2 * m * n * k / t / 1e9 for t in times]
                for variant, rate in zip(VARIANTS, rates):
                    ratios[variant].append(rate / rates[0])
                print(f"| {config} | {name} | {m}x{k}x{n} | {gemm.split()[0]} | "
                      + " | ".join(f"{r:.0f}" for r in rates)
                      + f" | {rates[4] / rates[1]:.2f}x | {rates[4] / max(rates[2], rates[3]):.2f}x |",
                      flush=True)
                del mx_a, mx_b, mx_c, bf_a, bf_b, bf_c
    print("\nMedian over the rows, relative to oneDNN fp32: " + ", ".join(
        f"{v} {statistics.median(r):.2f}x" for v, r in ratios.items()), flush=True)


def command(script, doc, measure, repeats, legend, columns):
    """The command of a benchmark over :data:`CONFIGS`' layers (this one's and bench_dense_bf16's), ``script``
    with docstring ``doc``: options ``--configs``, ``--threads``, ``--repeats`` (default ``repeats``); prints the
    header, ``legend`` and a Markdown table of ``columns`` whose rows ``measure(configs, repeats)`` prints in a
    child process (``script --child``) with ``--threads`` OpenMP threads."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=repeats,
                        help=f"timed rounds; the median counts (default: {repeats})")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.configs, args.repeats)
        return
    header(doc.split("\n\n")[0])
    print(f"{args.threads} threads; median of {args.repeats} interleaved rounds. {legend}\n")
    print("| " + " | ".join(columns) + " |")
    print("| --- " * len(columns) + "|", flush=True)
    run_child([script, "--child", "--repeats", args.repeats, "--configs", *args.configs], args.threads,
              capture=False)


def main():
    command(__file__, __doc__, measure, 5, "GFLOP/s. Shapes M x K x N of the layer y = x W^T, x (M, K), W (N, K). '+ casts': "
            "operands float32 -> bfloat16 and the product back, in the timing. Last two columns: bp bf16 over "
            "bp::sgemm fp32, and over the faster oneDNN bf16 figure",
            ["config", "layer", "M x K x N", "GEMM", *VARIANTS, "bp bf16 / bp fp32", "bp bf16 / oneDNN bf16"])


if __name__ == "__main__":
    main()
