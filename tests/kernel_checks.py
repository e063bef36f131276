"""Checks shared by the kernel test modules: random inputs, output and gradients of a function, and a
finite-difference check of those gradients."""
import numpy as onp

import bertpretrain  # noqa: F401  (its numpy fixes precede MXNet)
from mxnet import autograd, np


def rand(*shape, seed=0, scale=1.0):
    return np.array(onp.random.RandomState(seed).normal(scale=scale, size=shape)
                    .astype("float32"))


def run(fn, inputs, grad_of, head_seed=99):
    """Output of fn(*inputs) and the gradients of sum(output * head) w.r.t. inputs[grad_of]."""
    inputs = [a.copy() for a in inputs]
    for i in grad_of:
        inputs[i].attach_grad()
    with autograd.record():
        out = fn(*inputs)
        head = rand(*out.shape, seed=head_seed)
        (out * head).sum().backward()
    return out.asnumpy(), [inputs[i].grad.asnumpy() for i in grad_of]


def finite_difference_check(fn, inputs, wrt, n_coords=6, step=1e-2, tol=2e-2):
    """Compare autograd's gradient of sum(fn * head) with central differences, in float32."""
    out, (grad,) = run(fn, inputs, [wrt])
    head = rand(*out.shape, seed=99).asnumpy().astype("float64")

    def objective(value):
        args = list(inputs)
        args[wrt] = np.array(value.astype("float32"))
        return float((fn(*args).asnumpy().astype("float64") * head).sum())

    base = inputs[wrt].asnumpy().astype("float64")
    rng = onp.random.RandomState(0)
    for flat in rng.choice(base.size, size=min(n_coords, base.size), replace=False):
        idx = onp.unravel_index(flat, base.shape)
        plus, minus = base.copy(), base.copy()
        plus[idx] += step
        minus[idx] -= step
        numeric = (objective(plus) - objective(minus)) / (2 * step)
        assert abs(numeric - grad[idx]) <= tol * max(1.0, abs(numeric)), (idx, numeric, grad[idx])
