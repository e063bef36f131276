"""The fused dense kernel (bp_dense: GEMM + bias + activation) against builtin MXNet operators.

Outputs and the gradients of x, weight and bias against FullyConnected + activation, for odd
shapes and every activation; finite differences; grad_req='add' inside a hybridized block (the
model's Dense layer on the fused backend); clear errors for bad shapes and activations.
"""
import numpy as onp
import pytest

import bertpretrain  # noqa: F401  (MXNet with numpy semantics)
import mxnet as mx
from mxnet import autograd, gluon, npx

from bertpretrain.kernels import ops as kernel_ops
from bertpretrain.model import ops as model_ops
from bertpretrain.model.layers import Dense

from kernel_checks import finite_difference_check, rand, run  # noqa: E402  (tests/ is on sys.path)

pytestmark = pytest.mark.usefixtures("kernels_available")


def builtin_dense(x, weight, bias, act=None):
    out = npx.fully_connected(x, weight, bias, num_hidden=weight.shape[0], flatten=False)
    if act == "gelu":
        return npx.leaky_relu(out, act_type="gelu")
    return npx.activation(out, act_type=act) if act else out


@pytest.mark.parametrize("act", [None, "relu", "gelu"])
@pytest.mark.parametrize("x_shape, units", [((1, 1), 1), ((7, 3), 5), ((2, 9, 13), 33),
                                            ((3, 43, 128), 129), ((1000, 128), 384)])
def test_dense_matches_builtin(x_shape, units, act):
    inputs = [rand(*x_shape, seed=1), rand(units, x_shape[-1], seed=2, scale=0.3),
              rand(units, seed=3)]
    fused = run(lambda x, w, b: kernel_ops.dense(mx.nd, x, w, b, act), inputs, [0, 1, 2])
    builtin = run(lambda x, w, b: builtin_dense(x, w, b, act), inputs, [0, 1, 2])
    assert fused[0].shape == x_shape[:-1] + (units,)
    onp.testing.assert_allclose(fused[0], builtin[0], rtol=1e-4, atol=1e-5)
    for got, want in zip(fused[1], builtin[1]):
        onp.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * onp.abs(want).max())


def test_gelu_far_in_the_tails():
    """Large |pre-activation|: GELU is x or 0 to float precision, its slope 1 or 0."""
    x = mx.np.array([[-12.0, -6.0, -3.0, -0.5, 0.0, 0.5, 3.0, 6.0, 12.0]])
    identity, zero = mx.np.eye(1), mx.np.zeros((1,))
    fused = run(lambda v: kernel_ops.dense(mx.nd, v.T, identity, zero, "gelu"), [x], [0])
    builtin = run(lambda v: builtin_dense(v.T, identity, zero, "gelu"), [x], [0])
    onp.testing.assert_allclose(fused[0], builtin[0], rtol=1e-6, atol=1e-7)
    onp.testing.assert_allclose(fused[1][0], builtin[1][0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("act", [None, "relu", "gelu"])
def test_finite_differences(act):
    inputs = [rand(3, 4, 6, seed=1), rand(5, 6, seed=2, scale=0.5), rand(5, seed=3)]
    for wrt in (0, 1, 2):
        finite_difference_check(lambda x, w, b: kernel_ops.dense(mx.nd, x, w, b, act), inputs, wrt,
                                step=1e-3 if act == "relu" else 1e-2)


def test_gradient_accumulation_in_a_hybridized_block():
    """The model's Dense layer on the fused backend: grad_req='add' sums two steps' gradients."""

    class TwoLayers(gluon.HybridBlock):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            ops = model_ops.for_backend("fused")
            self.first = Dense(12, 7, ops, "gelu")
            self.second = Dense(5, 12, ops)

        def hybrid_forward(self, F, x):
            return self.second(self.first(x))

    def grads(grad_req):
        mx.random.seed(0)
        net = TwoLayers()
        net.initialize(mx.init.Normal(0.3))
        net.collect_params().setattr("grad_req", grad_req)
        net.hybridize(static_alloc=True, static_shape=True)
        result = []
        for seed in range(2):
            with autograd.record():
                (net(rand(2, 3, 7, seed=seed)) * rand(2, 3, 5, seed=9)).sum().backward()
            result.append([p.grad().asnumpy().copy() for p in net.collect_params().values()])
        return result

    (first, second), (_, accumulated) = grads("write"), grads("add")
    assert len(first) == 4 and all(onp.abs(g).sum() > 0 for g in first)
    for got, a, b in zip(accumulated, first, second):
        onp.testing.assert_allclose(got, a + b, rtol=1e-5, atol=1e-6)


def test_rejects_mismatched_shapes_and_unknown_activations():
    x, w, b = rand(4, 6), rand(5, 6), rand(5)
    with pytest.raises(mx.base.MXNetError, match=r"'weight' has shape \(5, 7\), expected \(M, 6\)"):
        kernel_ops.dense(mx.nd, x, rand(5, 7), b).asnumpy()
    with pytest.raises(mx.base.MXNetError, match=r"'bias' has shape \(4,\), expected \(5,\)"):
        kernel_ops.dense(mx.nd, x, w, rand(4)).asnumpy()
    with pytest.raises(ValueError, match="act='tanh' must be one of"):
        kernel_ops.dense(mx.nd, x, w, b, "tanh")
