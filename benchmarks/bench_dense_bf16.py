"""A bfloat16 dense layer, forward + backward, three ways, in hybridized blocks (issue 23, stage 2).

What: for each configuration (d2l's small BERT; BERT-mini, -small and -base at T = 128) and each
of its dense layers y = x W^T + b (x (M, K): q/k/v H -> 3H, output projection H -> H, FFN in
H -> FFN, FFN out FFN -> H, the MLM transform H -> H over the prediction rows), one forward and
backward (gradients of x, W and b) of a numpy-interface HybridBlock hybridized with
``static_alloc=True, static_shape=True``, as the model runs them:

- FC fp32: ``npx.fully_connected`` in float32 (oneDNN), today's model;
- FC bf16 + casts: MXNet 1.9.1's own bfloat16 route: x, W and b cast to bfloat16 (``amp_cast``),
  ``fully_connected`` on them (oneDNN, bfloat16 output) and the output cast back to float32 for
  the float32 ops around it; backward through the casts (so the gradients reach W and b in
  float32, from bfloat16 ones);
- bp_dense_bf16: the kernels' operator (``bp::gemm_bf16`` forward, dx and dW; float32 arrays).

Interleaved in one process, median of ``--repeats`` rounds (the machine may be shared); prints
ms per forward + backward and GFLOP/s (3 GEMMs of 2 M N K), and the CPU (benchmarks/common.py).
Threads: ``--threads``.

Usage (one benchmark at a time on a shared machine):
    flock /tmp/bertpretrain-bench.lock python benchmarks/bench_dense_bf16.py [--configs d2l base]
"""
import sys

from bench_gemm_bf16 import CONFIGS, command, median_seconds
from common import import_library

VARIANTS = ("FC fp32", "FC bf16 + casts", "bp_dense_bf16")


def layers(config):
    """(layer name, M, K, N) of each dense layer of ``config``."""
    tokens, hidden, ffn, preds, _ = CONFIGS[config]
    return [("q/k/v", tokens, hidden, 3 * hidden), ("output proj", tokens, hidden, hidden),
            ("FFN in", tokens, hidden, ffn), ("FFN out", tokens, ffn, hidden),
            ("MLM transform", preds, hidden, hidden)]


def measure(configs, repeats):
    """Runs in a child process with OMP_NUM_THREADS set; prints one table row per layer."""
    import_library()  # first: MXNet with numpy semantics
    import numpy as onp
    import mxnet as mx
    from mxnet import autograd, gluon, np
    from mxnet.contrib.amp.amp import bfloat16

    from bertpretrain import kernels
    from bertpretrain.kernels import ops as kernel_ops

    if not kernels.bf16().available:
        sys.exit(f"no bfloat16 kernels: {kernels.bf16().reason}")

    class Layer(gluon.HybridBlock):
        def __init__(self, variant, units, in_units):
            super().__init__()
            self._variant, self._units = variant, units
            self.weight = self.params.get("weight", shape=(units, in_units))
            self.bias = self.params.get("bias", shape=(units,), init="zeros")

        def hybrid_forward(self, F, x, weight, bias):
            if self._variant == "FC fp32":
                return F.npx.fully_connected(x, weight, bias, num_hidden=self._units, flatten=False)
            if self._variant == "FC bf16 + casts":
                cast = [F.amp_cast(a.as_nd_ndarray(), dtype=bfloat16) for a in (x, weight, bias)]
                y = F.FullyConnected(*cast, num_hidden=self._units, flatten=False)
                return F.amp_cast(y, dtype="float32").as_np_ndarray()
            return kernel_ops.dense_bf16(F, x, weight, bias)

    rng = onp.random.RandomState(0)
    for config in configs:
        for name, m, k, n in layers(config):
            x = np.array(rng.normal(size=(m, k)).astype("float32"))
            x.attach_grad()
            head = np.array(rng.normal(size=(m, n)).astype("float32"))
            blocks = []
            for variant in VARIANTS:
                block = Layer(variant, n, k)
                block.initialize(mx.init.Xavier())
                if blocks:
                    for mine, first in zip(block.collect_params().values(),
                                           blocks[0].collect_params().values()):
                        mine.set_data(first.data())
                block.hybridize(static_alloc=True, static_shape=True)
                blocks.append(block)

            def step(block):
                def run():
                    with autograd.record():
                        y = block(x)
                    y.backward(head)
                return run

            outputs = []
            for block in blocks:
                step(block)()
                outputs.append((x.grad.asnumpy().copy(), block.weight.grad().asnumpy().copy()))
            errors = [max(onp.abs(a - b).max() / (onp.abs(b).max() + 1e-30)
                          for a, b in zip(out, outputs[0])) for out in outputs[1:]]
            times = median_seconds([step(b) for b in blocks], repeats, mx.nd.waitall)
            flops = 3 * 2 * m * n * k
            print(f"| {config} | {name} | {m}x{k}x{n} | "
                  + " | ".join(f"{1e3 * t:.1f} ms ({flops / t / 1e9:.0f})" for t in times)
                  + f" | {times[0] / times[2]:.2f}x | {times[1] / times[2]:.2f}x | "
                  + " / ".join(f"{e:.1e}" for e in errors) + " |", flush=True)


def main():
    command(__file__, __doc__, measure, 7, "Forward + backward of one dense layer in a hybridized block (static "
            "memory), ms (GFLOP/s). Speed-ups of bp_dense_bf16 over FC fp32 and over FC bf16 + casts; largest "
            "relative difference of dx and dW from FC fp32 (bf16 + casts / bp_dense_bf16)",
            ["config", "layer", "M x K x N", *VARIANTS, "bp / fp32", "bp / bf16 + casts", "gradient difference"])


if __name__ == "__main__":
    main()
