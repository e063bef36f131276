"""Time the kernels' float32 GEMM (bp::sgemm) against MXNet's at the BERT step's shapes.

What: for every dense layer of d2l's small BERT (batch 512 x max_len 64 = 32,768 tokens, hidden
128, FFN 256, the packed q/k/v projection, 5,120 MLM rows onto a 6,899-word vocabulary), the
three GEMMs of the layer y = x W^T (x (M, K), W (N, K)): fwd y = x W^T ("NT"), dX dx = dy W
("NN") and dW dW = dy^T x ("TN"), each computed by

- oneDNN: MXNet's FullyConnected (C = A B^T, on transposed copies of the operands where the GEMM
  needs them, made outside the timing), writing into a preallocated output (``out=``), as the
  operators of a hybridized model with static memory do;
- oneDNN, new output: the same, allocating its output per call, as imperative code (and the
  measurement in issue 12) does: for these small-K shapes the page faults of a fresh output cost
  about as much as the product itself, which makes oneDNN look twice slower than it is;
- OpenBLAS: mx.nd.dot (the wheel's OpenBLAS), into a preallocated output;
- bp::sgemm, through its C entry point ``bp_sgemm`` of the built kernel library (ctypes, on numpy
  arrays, preallocated output; ctypes releases the GIL and returns when the product is done).

All variants of a row run interleaved in one process, the best of ``--repeats`` rounds counts (the
machine may be shared: the best is the least disturbed), and they all use ``--threads`` OpenMP
threads (MXNet's oneDNN and OpenBLAS, and the kernels, read OMP_NUM_THREADS at start-up).
Prints GFLOP/s (2 M N K per GEMM) and the CPU.

Usage (one benchmark at a time on a shared machine):
    flock /tmp/bertpretrain-bench.lock python benchmarks/bench_gemm.py [--threads 2] [--repeats 7]
"""
import argparse
import ctypes
import os
import sys

from common import header, import_library, interleaved, run_child

# name: (M rows of x, K inputs, N outputs)
LAYERS = {
    "q/k/v projection": (32768, 128, 384),
    "attention output": (32768, 128, 128),
    "FFN in": (32768, 128, 256),
    "FFN out": (32768, 256, 128),
    "MLM transform": (5120, 128, 128),
    "MLM decoder": (5120, 128, 6899),
    "square 2048": (2048, 2048, 2048),
}


def bind_gemm(lib, name):
    """The kernel library ``lib``'s GEMM entry point ``name`` (``bp_sgemm``, ``bp_gemm_bf16``: C = alpha
    op(A) op(B) + beta C, row-major) with its ctypes signature."""
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    gemm = getattr(lib, name)
    gemm.argtypes = [ctypes.c_int, ctypes.c_int, i64, i64, i64, f32, ptr, i64, ptr, i64, f32, ptr, i64]
    gemm.restype = None
    return gemm


def gemm_call(gemm, trans_a, trans_b, a, b, c):
    """A call of ``gemm`` (see :func:`bind_gemm`) computing ``c = op(a) op(b)`` on numpy arrays, into ``c``."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    return lambda: gemm(trans_a, trans_b, m, n, k, 1.0, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1],
                        0.0, c.ctypes.data, n)


def layer_gemms(x, w, dy):
    """The three GEMMs of a layer y = x W^T (x (M, K), W (N, K), dy (M, N)) in a training step, as
    ``(name, a, b, (trans_a, trans_b, a_op, b_op))``: C (rows, cols) = a b^T, b (cols, depth), which is what
    FullyConnected computes (a and b are transposed copies where the GEMM needs them, made here, outside any
    timing), and the same C = op(a_op) op(b_op) for :func:`gemm_call`."""
    import numpy as onp
    return [("fwd  y = x W^T", x, w, (0, 1, x, w)),
            ("dX   dx = dy W", dy, onp.ascontiguousarray(w.T), (0, 0, dy, w)),
            ("dW   dW = dy^T x", onp.ascontiguousarray(dy.T), onp.ascontiguousarray(x.T), (1, 0, dy, x))]


def measure(repeats):
    """Runs in a child process with OMP_NUM_THREADS set; prints one table row per layer and GEMM."""
    import_library()  # first: MXNet with numpy semantics
    import numpy as onp
    import mxnet as mx

    from bertpretrain import kernels

    status = kernels.load()
    if not status.available:
        sys.exit(f"fused kernels unavailable: {status.reason}")
    sgemm = bind_gemm(ctypes.CDLL(status.path), "bp_sgemm")
    threads = os.environ["OMP_NUM_THREADS"]
    rng = onp.random.RandomState(0)
    for name, (m, k, n) in LAYERS.items():
        x, w, dy = (rng.normal(size=s).astype("float32") for s in ((m, k), (n, k), (m, n)))
        for gemm, a_nt, b_nt, (trans_a, trans_b, a, b) in layer_gemms(x, w, dy):
            rows, cols = a_nt.shape[0], b_nt.shape[0]
            mx_a, mx_b, mx_bt = mx.nd.array(a_nt), mx.nd.array(b_nt), mx.nd.array(onp.ascontiguousarray(b_nt.T))
            mx_c, c = mx.nd.zeros((rows, cols)), onp.empty((rows, cols), "float32")
            variants = [
                lambda: mx.nd.FullyConnected(mx_a, mx_b, no_bias=True, num_hidden=cols, out=mx_c),
                lambda: mx.nd.FullyConnected(mx_a, mx_b, no_bias=True, num_hidden=cols),
                lambda: mx.nd.dot(mx_a, mx_bt, out=mx_c),
                gemm_call(sgemm, trans_a, trans_b, a, b, c),
            ]
            times = [min(seconds) for seconds in interleaved(variants, repeats, sync=mx.nd.waitall)]
            rates = [2 * m * n * k / t / 1e9 for t in times]
            print(f"| {name} | {m}x{k}x{n} | {gemm} | {threads} | "
                  + " | ".join(f"{r:.0f}" for r in rates)
                  + f" | {rates[3] / max(rates[0], rates[2]):.2f}x |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2],
                        help="OpenMP thread counts to measure, each in its own process (default: 2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds; the best counts")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.repeats)
        return
    header(__doc__.split("\n\n")[0])
    print(f"GFLOP/s, best of {args.repeats} interleaved rounds. Shapes M x K x N "
          "of the layer y = x W^T, x (M, K), W (N, K). oneDNN = MXNet's FullyConnected, OpenBLAS = "
          "mx.nd.dot, both into a preallocated output; 'new output' = FullyConnected allocating its "
          "output per call (page faults included); speed-up = bp::sgemm over the faster of oneDNN "
          "and OpenBLAS\n")
    print("| layer | M x K x N | GEMM | threads | oneDNN | oneDNN, new output | OpenBLAS | bp::sgemm "
          "| speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for threads in args.threads:
        run_child([__file__, "--child", "--repeats", args.repeats], threads, capture=False)


if __name__ == "__main__":
    main()
