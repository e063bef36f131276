"""Time the kernels' float32 GEMM (bp::sgemm) against MXNet's at the BERT step's shapes.

What: for every dense layer of d2l's small BERT (batch 512 x max_len 64 = 32,768 tokens, hidden
128, FFN 256, the packed q/k/v projection, 5,120 MLM rows onto a 6,899-word vocabulary), the
three GEMMs of the layer y = x W^T (x (M, K), W (N, K)):

- fwd: y = x W^T, "NT" (MXNet: FullyConnected, i.e. oneDNN; and mx.nd.dot with transpose_b,
  i.e. the wheel's OpenBLAS);
- dX: dx = dy W, "NN" (mx.nd.dot);
- dW: dW = dy^T x, "TN" (mx.nd.dot with transpose_a);
- and the whole layer's forward + backward: FullyConnected under autograd (what the model runs
  today) against the three bp::sgemm calls.

bp::sgemm is called through its C entry point ``bp_sgemm`` of the built kernel library (ctypes,
on numpy arrays; ctypes releases the GIL and the call returns when the product is done). All
variants of a row run interleaved in one process, the best of ``--repeats`` rounds counts (the
machine may be shared: the best is the least disturbed), and they all use ``--threads`` OpenMP
threads (MXNet's oneDNN and OpenBLAS, and the kernels, read OMP_NUM_THREADS at start-up).
Prints GFLOP/s (2 M N K per GEMM) and the CPU's model name.

Usage (one benchmark at a time on a shared machine):
    flock /tmp/bertpretrain-bench.lock python benchmarks/bench_gemm.py [--threads 2] [--repeats 7]
"""
import argparse
import ctypes
import os
import platform
import subprocess
import sys
import time

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


def cpu_name():
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_seconds(variants, repeats):
    """Per variant, the shortest of ``repeats`` timed calls, the variants interleaved."""
    for fn in variants:
        fn()
    best = [float("inf")] * len(variants)
    for _ in range(repeats):
        for i, fn in enumerate(variants):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def measure(repeats):
    """Runs in a child process with OMP_NUM_THREADS set; prints one table row per layer and GEMM."""
    import numpy as onp

    import bertpretrain  # noqa: F401  (MXNet with numpy semantics)
    import mxnet as mx
    from mxnet import autograd

    from bertpretrain import kernels

    status = kernels.load()
    if not status.available:
        sys.exit(f"fused kernels unavailable: {status.reason}")
    sgemm = ctypes.CDLL(status.path).bp_sgemm
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    sgemm.argtypes = [ctypes.c_int, ctypes.c_int, i64, i64, i64, f32, ptr, i64, ptr, i64, f32, ptr, i64]
    sgemm.restype = None

    def ours(trans_a, trans_b, a, b, c):
        m, n = c.shape
        k = a.shape[0] if trans_a else a.shape[1]
        return lambda: sgemm(trans_a, trans_b, m, n, k, 1.0, a.ctypes.data, a.shape[1],
                             b.ctypes.data, b.shape[1], 0.0, c.ctypes.data, n)

    def synced(fn):
        def run():
            fn()
            mx.nd.waitall()
        return run

    threads = os.environ["OMP_NUM_THREADS"]
    rng = onp.random.RandomState(0)
    for name, (m, k, n) in LAYERS.items():
        x, w, dy = (rng.normal(size=s).astype("float32") for s in ((m, k), (n, k), (m, n)))
        y, dx, dw = onp.empty((m, n), "float32"), onp.empty((m, k), "float32"), onp.empty((n, k), "float32")
        mx_x, mx_w, mx_dy = (mx.nd.array(a) for a in (x, w, dy))
        mx_x.attach_grad()
        mx_w.attach_grad()

        def fc_forward_backward():
            with autograd.record():
                out = mx.nd.FullyConnected(mx_x, mx_w, no_bias=True, num_hidden=n)
            out.backward(mx_dy)

        ours_fwd, ours_dx, ours_dw = ours(0, 1, x, w, y), ours(0, 0, dy, w, dx), ours(1, 0, dy, x, dw)
        rows = [
            ("fwd  y = x W^T", [synced(lambda: mx.nd.FullyConnected(mx_x, mx_w, no_bias=True, num_hidden=n)),
                                synced(lambda: mx.nd.dot(mx_x, mx_w, transpose_b=True)), ours_fwd]),
            ("dX   dx = dy W", [None, synced(lambda: mx.nd.dot(mx_dy, mx_w)), ours_dx]),
            ("dW   dW = dy^T x", [None, synced(lambda: mx.nd.dot(mx_dy, mx_x, transpose_a=True)), ours_dw]),
            ("fwd+bwd (3 GEMMs)", [synced(fc_forward_backward), None,
                                   lambda: (ours_fwd(), ours_dx(), ours_dw())]),
        ]
        for gemm, variants in rows:
            present = [v for v in variants if v is not None]
            times = iter(best_seconds(present, repeats))
            flop = 2 * m * n * k * (3 if gemm.startswith("fwd+bwd") else 1)
            rates = [f"{flop / next(times) / 1e9:.0f}" if v is not None else "-" for v in variants]
            print(f"| {name} | {m}x{k}x{n} | {gemm} | {threads} | " + " | ".join(rates)
                  + f" | {float(rates[2]) / max(float(r) for r in rates[:2] if r != '-'):.2f}x |",
                  flush=True)


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
    print(f"CPU: {cpu_name()}; GFLOP/s, best of {args.repeats} interleaved rounds. "
          "Shapes M x K x N of the layer y = x W^T, x (M, K), W (N, K). MXNet 'FC' = FullyConnected "
          "(oneDNN), 'dot' = mx.nd.dot (OpenBLAS); speed-up = bp::sgemm over the faster MXNet\n")
    print("| layer | M x K x N | GEMM | threads | MXNet FC | MXNet dot | bp::sgemm | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for threads in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)],
                       env=env, check=True)


if __name__ == "__main__":
    main()
