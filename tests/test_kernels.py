"""The raw fused CPU kernels against MXNet's builtin operators (outputs, gradients, modes).

Compiles the kernel library once per session (into the user's cache); every test that
needs it is skipped, with the reason, where it cannot be built. The build, cache and
fallback machinery is tested in tests/test_kernels_build.py.
"""

import numpy as onp
import pytest

import bertpretrain  # noqa: F401  (MXNet with numpy semantics)
import mxnet as mx
from mxnet import autograd, gluon, np, npx

from bertpretrain import kernels
from bertpretrain.kernels import ops

RTOL, ATOL = 1e-4, 1e-5


from kernel_checks import finite_difference_check, rand, run  # noqa: E402  (tests/ is on sys.path)

pytestmark = pytest.mark.usefixtures("kernels_available")


class Builtin:
    """Each raw op of ``bertpretrain.kernels.ops``, same signature, as MXNet builtin operators:
    the reference the kernels must match."""

    @staticmethod
    def layer_norm(F, x, gamma, beta, eps=1e-5):
        return F.npx.layer_norm(x, gamma, beta, axis=-1, eps=eps)

    @staticmethod
    def add_layer_norm(F, x, residual, gamma, beta, p=0.0, eps=1e-5):
        return F.npx.layer_norm(Builtin.dropout(F, x, p) + residual, gamma, beta, axis=-1, eps=eps)

    @staticmethod
    def dropout(F, x, p):
        return F.npx.dropout(x, p=p) if p > 0 else x

    @staticmethod
    def softmax_ce(F, logits, labels, weights, return_correct=False):
        weights = F.stop_gradient(weights.as_nd_ndarray()).as_np_ndarray()
        loss = -F.npx.pick(F.npx.log_softmax(logits, axis=-1), labels, axis=-1) * weights
        if not return_correct:
            return loss
        hits = F.np.equal(F.np.argmax(logits, axis=-1).astype("int32"), labels.astype("int32"))
        return loss, hits.astype("float32") * weights


def both_paths(fn, inputs, grad_of):
    """``fn(impl, *inputs)`` with the kernels and with builtin operators: ((out, grads), (out, grads))."""
    fused = run(lambda *a: fn(ops, *a), inputs, grad_of)
    builtin = run(lambda *a: fn(Builtin, *a), inputs, grad_of)
    return fused, builtin


def assert_same(fused, builtin, rtol=RTOL, atol=ATOL):
    onp.testing.assert_allclose(fused[0], builtin[0], rtol=rtol, atol=atol)
    for g_fused, g_builtin in zip(fused[1], builtin[1]):
        onp.testing.assert_allclose(g_fused, g_builtin, rtol=rtol, atol=atol)


# ------------------------------------------------------------------ against builtin

@pytest.mark.parametrize("shape", [(1, 1), (3, 5, 7), (17, 128), (2, 1, 33)])
def test_layer_norm_matches_builtin(shape):
    x, g, b = rand(*shape), rand(shape[-1], seed=1), rand(shape[-1], seed=2)
    fused, builtin = both_paths(lambda impl, x, g, b: impl.layer_norm(mx.nd, x, g, b), [x, g, b],
                                [0, 1, 2])
    assert_same(fused, builtin, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5, 7), (17, 128)])
def test_add_layer_norm_matches_builtin(shape):
    x, r = rand(*shape), rand(*shape, seed=3)
    g, b = rand(shape[-1], seed=1), rand(shape[-1], seed=2)
    fn = lambda impl, x, r, g, b: impl.add_layer_norm(mx.nd, x, r, g, b, eps=1e-3)  # noqa: E731
    fused, builtin = both_paths(fn, [x, r, g, b], [0, 1, 2, 3])
    assert_same(fused, builtin, atol=1e-4)


@pytest.mark.parametrize("n,v", [(1, 2), (13, 37), (40, 6898)])
def test_softmax_ce_matches_builtin(n, v):
    logits = rand(n, v, scale=2.0)
    rng = onp.random.RandomState(5)
    labels = rng.randint(0, v, size=n)
    labels[0], labels[-1] = 0, v - 1
    weights = (rng.rand(n) < 0.7).astype("float32") * rng.rand(n).astype("float32")
    weights[0] = 1.0
    labels, weights = np.array(labels, dtype="int32"), np.array(weights)
    fn = lambda impl, x, y, w: impl.softmax_ce(mx.nd, x, y, w)  # noqa: E731
    fused, builtin = both_paths(fn, [logits, labels, weights], [0])
    assert_same(fused, builtin)
    assert (fused[0][weights.asnumpy() == 0] == 0).all()


def test_softmax_ce_correct_count_matches_builtin():
    logits = rand(9, 11)
    logits[3, 4] = logits[3, 7] = 50.0  # a tie: the first arg-max counts
    labels = np.array(onp.argmax(logits.asnumpy(), -1), dtype="int32")
    labels[[1, 3]] = np.array([0, 7], dtype="int32")
    weights = np.array([1, 0, 2, 1, 1, 1, 0.5, 1, 0], dtype="float32")
    fused = ops.softmax_ce(mx.nd, logits, labels, weights, return_correct=True)
    builtin = Builtin.softmax_ce(mx.nd, logits, labels, weights, return_correct=True)
    onp.testing.assert_allclose(fused[0].asnumpy(), builtin[0].asnumpy(), rtol=RTOL, atol=ATOL)
    onp.testing.assert_array_equal(fused[1].asnumpy(), builtin[1].asnumpy())
    assert float(fused[1].sum()) == 6.5  # rows 0, 2, 4, 5, 6, 7; not 1, 3 (tie), 8 (weight 0)


def test_dropout_inference_is_identity():
    x = rand(5, 7)
    r, g, b = rand(5, 7, seed=1), rand(7, seed=2), rand(7, seed=3)
    for fn in (lambda impl: impl.dropout(mx.nd, x, 0.4),
               lambda impl: impl.add_layer_norm(mx.nd, x, r, g, b, p=0.4)):
        with autograd.predict_mode():
            out = fn(ops)
            expected = fn(Builtin)
        onp.testing.assert_allclose(out.asnumpy(), expected.asnumpy(), rtol=1e-6, atol=1e-5)


# ------------------------------------------------------------------ dropout

def test_dropout_mask_statistics_and_gradient():
    p, x = 0.3, np.ones((1000, 257))
    x.attach_grad()
    with autograd.record():
        y = ops.dropout(mx.nd, x, p)
        y.backward()
    y = y.asnumpy()
    assert set(onp.unique(y)) <= {0.0, onp.float32(1 / (1 - p))}
    assert abs((y == 0).mean() - p) < 0.01
    onp.testing.assert_array_equal(x.grad.asnumpy(), y)  # d(sum y)/dx = mask / (1 - p)


def key_for(p):
    """A training-mode dropout key, as the wrappers make it."""
    with autograd.train_mode():
        return ops._dropout_key(mx.nd, np.ones((1,)), p)


def test_fused_dropout_uses_the_same_mask_as_dropout():
    """add_layer_norm with dropout equals bp_dropout followed by the op."""
    p, key = 0.25, key_for(0.25).as_nd_ndarray()
    x, r, g, b = rand(6, 40), rand(6, 40, seed=1), rand(40, seed=2), rand(40, seed=3)

    def fused_ln(x, r, g, b):
        return mx.nd.bp_add_layer_norm(x.as_nd_ndarray(), r.as_nd_ndarray(), g.as_nd_ndarray(),
                                       b.as_nd_ndarray(), key, p=p).as_np_ndarray()

    def split_ln(x, r, g, b):
        dropped = mx.nd.bp_dropout(x.as_nd_ndarray(), key, p=p).as_np_ndarray()
        return npx.layer_norm(dropped + r, g, b, axis=-1)

    assert_same(run(fused_ln, [x, r, g, b], [0, 1, 2, 3]),
                run(split_ln, [x, r, g, b], [0, 1, 2, 3]), atol=1e-4)


def test_dropout_is_reproducible_under_mx_random_seed():
    x, r, g, b = rand(8, 16), rand(8, 16, seed=1), rand(16, seed=2), rand(16, seed=3)

    def draw(seed):
        mx.random.seed(seed)
        with autograd.train_mode():
            return [ops.dropout(mx.nd, x, 0.5).asnumpy(),
                    ops.add_layer_norm(mx.nd, x, r, g, b, p=0.5).asnumpy()]

    first, again, other = draw(11), draw(11), draw(12)
    for a, b_, c in zip(first, again, other):
        onp.testing.assert_array_equal(a, b_)
        assert not onp.array_equal(a, c)


# ------------------------------------------------------------------ finite differences

def test_finite_differences():
    x, r, g, b = rand(3, 8), rand(3, 8, seed=1), rand(8, seed=2), rand(8, seed=3)
    ln = lambda x, r, g, b: ops.add_layer_norm(mx.nd, x, r, g, b)  # noqa: E731
    for wrt in range(4):
        finite_difference_check(ln, [x, r, g, b], wrt)
    finite_difference_check(lambda x, g, b: ops.layer_norm(mx.nd, x, g, b), [x, g, b], 0)
    labels, weights = np.array([0, 7, 3], dtype="int32"), np.array([1.0, 0.5, 2.0])
    finite_difference_check(lambda z: ops.softmax_ce(mx.nd, z, labels, weights), [x], 0)


def test_finite_differences_with_a_fixed_dropout_mask():
    key = key_for(0.3).as_nd_ndarray()
    x, r, g, b = rand(3, 8), rand(3, 8, seed=1), rand(8, seed=2), rand(8, seed=3)

    def ln(x, r, g, b):
        return mx.nd.bp_add_layer_norm(*[a.as_nd_ndarray() for a in (x, r, g, b)], key,
                                       p=0.3).as_np_ndarray()

    for wrt in range(4):
        finite_difference_check(ln, [x, r, g, b], wrt)
    finite_difference_check(lambda z: mx.nd.bp_dropout(
        z.as_nd_ndarray(), key, p=0.3).as_np_ndarray(), [x], 0)


# ------------------------------------------------------------------ blocks, accumulation

class TinyBlock(gluon.HybridBlock):
    """Every op once, the way a BERT encoder layer and MLM head use them."""

    def __init__(self, dim, p, impl, **kwargs):
        super().__init__(**kwargs)
        self.p = p
        self.impl = impl
        self.dense = gluon.nn.Dense(dim, flatten=False, in_units=dim)
        self.gamma = self.params.get("gamma", shape=(dim,), init="ones")
        self.beta = self.params.get("beta", shape=(dim,), init="zeros")

    def hybrid_forward(self, F, x, lens, labels, weights, gamma, beta):
        ops = self.impl
        scores = F.npx.batch_dot(x, x, transpose_b=True)
        attn = ops.dropout(F, F.npx.softmax(scores, length=lens, use_length=True, axis=-1), self.p)
        h = ops.add_layer_norm(F, F.npx.batch_dot(attn, x), x, gamma, beta, p=self.p)
        h = ops.layer_norm(F, ops.dropout(F, self.dense(h), self.p) + h, gamma, beta)
        logits = F.np.reshape(h, (-1, h.shape[-1])) if F is mx.nd else F.npx.reshape(h, (-5, -2))
        loss, correct = ops.softmax_ce(F, logits, labels, weights, return_correct=True)
        return loss.sum() + 0 * correct.sum()


def block_inputs(batch=3, seq=5, dim=8, seed=0):
    rng = onp.random.RandomState(seed)
    x = rand(batch, seq, dim, seed=seed)
    lens = np.array(onp.repeat(rng.randint(1, seq + 1, size=(batch, 1)), seq, axis=1),
                    dtype="int32")
    labels = np.array(rng.randint(0, dim, size=batch * seq), dtype="int32")
    weights = np.array((rng.rand(batch * seq) < 0.8).astype("float32"))
    return x, lens, labels, weights


def make_block(p=0.0, hybridize=True, grad_req="write", builtin=False):
    mx.random.seed(0)
    net = TinyBlock(8, p, Builtin if builtin else ops)
    net.initialize(mx.init.Normal(0.5))
    net.collect_params().setattr("grad_req", grad_req)
    if hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    return net


def step(net, inputs):
    with autograd.record():
        loss = net(*inputs)
    loss.backward()
    return float(loss), {k[len(net.prefix):]: v.grad().asnumpy().copy()
                         for k, v in net.collect_params().items()}


@pytest.mark.parametrize("hybridize", [False, True])
def test_block_matches_builtin(hybridize):
    fused_net = make_block(hybridize=hybridize)
    builtin_net = make_block(hybridize=hybridize, builtin=True)
    for seed in range(2):
        inputs = block_inputs(seed=seed)
        loss_f, grads_f = step(fused_net, inputs)
        loss_b, grads_b = step(builtin_net, inputs)
        assert loss_f == pytest.approx(loss_b, rel=1e-5)
        for name in grads_f:
            onp.testing.assert_allclose(grads_f[name], grads_b[name], rtol=1e-4, atol=1e-5)


class NormBlock(gluon.HybridBlock):
    """Parameters that reach a kernel directly, each used once (no gradient summation).

    Their shape is deferred: the kernels' shape inference fills it in from x.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("g1", "b1", "g2", "b2"):
            setattr(self, name, self.params.get(name, shape=(0,), init="normal",
                                                allow_deferred_init=True))

    def hybrid_forward(self, F, x, r, g1, b1, g2, b2):
        return ops.add_layer_norm(F, ops.layer_norm(F, x, g1, b1), r, g2, b2)


@pytest.mark.parametrize("hybridize", [False, True])
def test_gradient_accumulation(hybridize):
    """grad_req='add' sums gradients over steps for parameters fed straight to kernels."""
    inputs = [(rand(4, 6, seed=s), rand(4, 6, seed=s + 10)) for s in range(2)]

    def grads(grad_req):
        mx.random.seed(0)
        net = NormBlock()
        net.initialize()
        net.collect_params().setattr("grad_req", grad_req)
        if hybridize:
            net.hybridize(static_alloc=True, static_shape=True)
        result = []
        for x, r in inputs:
            with autograd.record():
                (net(x, r) * rand(4, 6, seed=99)).sum().backward()
            result.append({k[len(net.prefix):]: v.grad().asnumpy().copy()
                           for k, v in net.collect_params().items()})
        return result

    (first, second), (_, accumulated) = grads("write"), grads("add")
    for name in first:
        onp.testing.assert_allclose(accumulated[name], first[name] + second[name],
                                    rtol=1e-5, atol=1e-6)


def test_hybridized_block_dropout_modes():
    """A hybridized block drops in training only, reproducibly under mx.random.seed."""
    net = make_block(p=0.3)
    inputs = block_inputs()

    def train_loss(seed):
        mx.random.seed(seed)
        with autograd.record():
            return float(net(*inputs))

    first, again, other = train_loss(3), train_loss(3), train_loss(4)
    assert first == again and first != other
    no_dropout = make_block(p=0.0)
    assert float(net(*inputs)) == pytest.approx(float(no_dropout(*inputs)), rel=1e-6)


# ------------------------------------------------------------------ errors

def test_rejects_unsupported_dtypes_and_shapes():
    x = rand(4, 6)
    with pytest.raises(TypeError, match="float32"):
        ops.layer_norm(mx.nd, x.astype("float64"), rand(6).astype("float64"),
                       rand(6).astype("float64"))
    with pytest.raises(mx.base.MXNetError, match="gamma"):
        ops.layer_norm(mx.nd, x, rand(5), rand(6)).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match="labels"):
        ops.softmax_ce(mx.nd, x, np.array([1, 2], dtype="int32"), np.ones((4,))).wait_to_read()
    with pytest.raises(ValueError, match="must be in"):
        ops.dropout(mx.nd, x, 1.0)


def test_non_cpu_context_uses_builtin_with_one_log_line(caplog):
    with caplog.at_level("INFO", logger="bertpretrain.kernels"):
        assert not kernels.usable_on(mx.gpu(0)) and not kernels.usable_on(mx.gpu(0))
    assert kernels.usable_on(mx.cpu())
    lines = [r.getMessage() for r in caplog.records if r.name == "bertpretrain.kernels"]
    assert len(lines) == 1 and "CPU-only" in lines[0] and "gpu(0)" in lines[0]
