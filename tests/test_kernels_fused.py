"""The fused attention and masked-LM decoder kernels against builtin MXNet computations.

bp_attention (packed q/k/v -> context) and bp_mlm_ce (decoder projection + cross-entropy in
chunks of rows, its gradients computed in the training forward): outputs and gradients against the
same math in builtin operators, with uniform and non-uniform upstream gradients, finite differences,
grad_req='add' inside a hybridized block, dropout modes and seeded reproducibility.
"""
import json
import subprocess
import sys
import textwrap

import numpy as onp
import pytest

import bertpretrain  # noqa: F401  (MXNet with numpy semantics)
import mxnet as mx
from mxnet import autograd, gluon, np, npx

from bertpretrain.kernels import ops as kernel_ops

from kernel_checks import finite_difference_check, rand, run  # noqa: E402  (tests/ is on sys.path)

pytestmark = pytest.mark.usefixtures("kernels_available")


def assert_same(a, b, rtol=1e-4, atol=1e-5):
    onp.testing.assert_allclose(a[0], b[0], rtol=rtol, atol=atol)
    for ga, gb in zip(a[1], b[1]):
        onp.testing.assert_allclose(ga, gb, rtol=rtol, atol=atol)


# ------------------------------------------------------------------ attention

def builtin_attention(qkv, lens, heads, scale=None):
    """The same attention from builtin operators: split, transpose, batch_dot, length softmax."""
    b, t, h3 = qkv.shape
    h = h3 // 3
    d = h // heads
    scale = 1.0 / d ** 0.5 if scale is None else scale

    def split(part):  # (B, T, H) slice -> (B * heads, T, d)
        x = qkv[:, :, part * h:(part + 1) * h].reshape(b, t, heads, d)
        return np.transpose(x, (0, 2, 1, 3)).reshape(b * heads, t, d)

    q, k, v = split(0), split(1), split(2)
    scores = npx.batch_dot(q, k, transpose_b=True) * scale  # (B * heads, T, T)
    row_lens = np.repeat(lens.astype("int32"), heads * t).reshape(b * heads, t)
    probs = npx.softmax(scores, length=row_lens, use_length=True, axis=-1)
    ctx = npx.batch_dot(probs, v).reshape(b, heads, t, d)
    return np.transpose(ctx, (0, 2, 1, 3)).reshape(b, t, h)


def seq_lengths(batch, t, seed=0):
    """Lengths in [1, t] with the first 1 and the last t."""
    lens = onp.random.RandomState(seed).randint(1, t + 1, size=batch)
    lens[0], lens[-1] = 1, t
    return np.array(lens.astype("int32"), dtype="int32")


@pytest.mark.parametrize("batch,t,hidden,heads", [(2, 1, 3, 1), (3, 7, 10, 2), (4, 13, 12, 3),
                                                  (2, 64, 128, 2)])
def test_attention_matches_builtin(batch, t, hidden, heads):
    qkv, lens = rand(batch, t, 3 * hidden), seq_lengths(batch, t)
    got = run(lambda x: kernel_ops.attention(mx.nd, x, lens, heads), [qkv], [0])
    want = run(lambda x: builtin_attention(x, lens, heads), [qkv], [0])
    assert_same(got, want)


def test_attention_explicit_scale_and_length_zero():
    qkv, lens = rand(3, 5, 12), np.array([0, 5, 2], dtype="int32")
    got = run(lambda x: kernel_ops.attention(mx.nd, x, lens, 2, scale=0.3), [qkv], [0])
    assert (got[0][0] == 0).all() and (got[1][0][0] == 0).all()
    nonzero = np.array([1, 5, 2], dtype="int32")
    want = run(lambda x: builtin_attention(x, nonzero, 2, scale=0.3), [qkv], [0])
    assert_same((got[0][1:], [got[1][0][1:]]), (want[0][1:], [want[1][0][1:]]))


def test_attention_dropout_acts_on_the_probabilities():
    """With values = identity, the context is the dropped-out probability matrix itself."""
    t, p = 8, 0.4
    scores_part = rand(1, t, 2 * t, seed=3)
    qkv = np.concatenate([scores_part, np.eye(t).reshape(1, t, t)], axis=-1)  # (1, T, 3H), H = T
    lens = np.array([6], dtype="int32")
    mx.random.seed(5)
    with autograd.train_mode():
        dropped = kernel_ops.attention(mx.nd, qkv, lens, 1, p=p).asnumpy()[0]
    probs = kernel_ops.attention(mx.nd, qkv, lens, 1).asnumpy()[0]  # inference: no dropout
    kept = dropped != 0
    assert 0 < kept[:, :6].mean() < 1 and not kept[:, 6:].any()
    onp.testing.assert_allclose(dropped[kept], probs[kept] / (1 - p), rtol=1e-5)


def test_attention_dropout_is_reproducible_under_seed_and_off_in_inference():
    qkv, lens = rand(3, 9, 24), seq_lengths(3, 9)

    def draw(seed):
        mx.random.seed(seed)
        return run(lambda x: kernel_ops.attention(mx.nd, x, lens, 2, p=0.5), [qkv], [0])

    first, again, other = draw(1), draw(1), draw(2)
    assert_same(first, again, rtol=0, atol=0)
    assert not onp.array_equal(first[0], other[0])
    with autograd.predict_mode():
        onp.testing.assert_allclose(kernel_ops.attention(mx.nd, qkv, lens, 2, p=0.5).asnumpy(),
                                    builtin_attention(qkv, lens, 2).asnumpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ MLM decoder + cross-entropy

def builtin_mlm(hidden, weight, bias, labels, weights):
    """Dense logits, log-softmax, pick; and the first-arg-max accuracy count."""
    logits = npx.fully_connected(hidden, weight, bias, num_hidden=weight.shape[0], flatten=False)
    loss = -npx.pick(npx.log_softmax(logits, axis=-1), labels, axis=-1) * weights
    hits = np.equal(np.argmax(logits, axis=-1).astype("int32"), labels.astype("int32"))
    return loss, hits.astype("float32") * weights


def mlm_inputs(n, k, v, seed=0):
    rng = onp.random.RandomState(seed)
    labels = np.array(rng.randint(0, v, size=n).astype("int32"), dtype="int32")
    weights = np.array(((rng.rand(n) < 0.7) * rng.uniform(0.5, 2, size=n)).astype("float32"))
    return [rand(n, k, seed=seed + 1), rand(v, k, seed=seed + 2, scale=0.5),
            rand(v, seed=seed + 3), labels, weights]


@pytest.mark.parametrize("n,k,v,chunk", [(1, 1, 2, 512), (7, 5, 33, 8), (20, 16, 301, 3 * 301),
                                         (50, 32, 1000, 7 * 1000), (50, 32, 1000, 1 << 21)])
def test_mlm_cross_entropy_matches_builtin(n, k, v, chunk):
    """One row per chunk, several with a shorter last one, and all rows in one chunk."""
    inputs = mlm_inputs(n, k, v)
    got = run(lambda h, w, b, y, c: kernel_ops.mlm_cross_entropy(mx.nd, h, w, b, y, c, chunk=chunk),
              inputs, [0, 1, 2])
    want = run(lambda h, w, b, y, c: builtin_mlm(h, w, b, y, c)[0], inputs, [0, 1, 2])
    assert_same(got, want)


def test_mlm_correct_count_matches_builtin():
    h, w, b, y, c = mlm_inputs(200, 8, 50, seed=4)
    y = np.array(onp.argmax((h @ w.T + b).asnumpy(), axis=-1)[:100].tolist()
                 + y.asnumpy()[100:].tolist(), dtype="int32")  # half the rows are hits
    loss, correct = kernel_ops.mlm_cross_entropy(mx.nd, h, w, b, y, c, return_correct=True, chunk=16 * 50)
    want_loss, want_correct = builtin_mlm(h, w, b, y, c)
    onp.testing.assert_allclose(loss.asnumpy(), want_loss.asnumpy(), rtol=1e-4, atol=1e-5)
    onp.testing.assert_array_equal(correct.asnumpy(), want_correct.asnumpy())
    assert correct.asnumpy()[:100].sum() > 0


def test_mlm_rejects_out_of_range_labels():
    h, w, b, y, c = mlm_inputs(4, 3, 10)
    bad = np.array([0, 10, 1, 2], dtype="int32")
    with pytest.raises(mx.base.MXNetError, match=r"label 10 of row 1 is outside \[0, 10\)"):
        kernel_ops.mlm_cross_entropy(mx.nd, h, w, b, bad, np.ones((4,))).asnumpy()


# What builtin dropout of ones (the kernels' mode key, see DropoutMask in common.h) gives in training
# (entries 0 or 2) and in inference (all 1).
TRAINING_KEY, INFERENCE_KEY = np.full((64,), 2.0), np.ones((64,))


def builtin_mlm_grads(inputs, head, train_mode=True):
    """Gradients of sum(builtin loss * head) w.r.t. hidden, weight and bias."""
    params = [a.copy() for a in inputs[:3]]
    for a in params:
        a.attach_grad()
    with autograd.record(train_mode=train_mode):
        (builtin_mlm(*params, *inputs[3:])[0] * head).sum().backward()
    return [a.grad.asnumpy() for a in params]


def fused_mlm(inputs, head, train_mode=True, chunk=5 * 57):
    """Loss and gradients (hidden, weight, bias) of sum(fused loss * head)."""
    params = [a.copy() for a in inputs[:3]]
    for a in params:
        a.attach_grad()
    with autograd.record(train_mode=train_mode):
        loss = kernel_ops.mlm_cross_entropy(mx.nd, *params, *inputs[3:], chunk=chunk)
        (loss * head).sum().backward()
    return loss.asnumpy(), [a.grad.asnumpy() for a in params]


def test_mlm_training_forward_returns_the_gradients_of_the_summed_loss():
    """In training mode the forward also computes the gradients of sum(loss) (upstream gradient 1
    on every row), which backward scales when the upstream gradient is uniform; in inference mode
    it skips that work and returns zeros."""
    inputs = mlm_inputs(30, 6, 41, seed=7)
    want = builtin_mlm_grads(inputs, np.ones((30,)))
    want_loss = builtin_mlm(*inputs)[0].asnumpy()
    for key in (TRAINING_KEY, INFERENCE_KEY):
        loss, correct, gw, gb, gh = mx.nd.bp_mlm_ce(*(a.as_nd_ndarray() for a in inputs + [key]),
                                                    chunk=4 * 41)
        onp.testing.assert_allclose(loss.asnumpy(), want_loss, rtol=1e-4, atol=1e-5)
        assert correct.shape == (30,)
        for got, expected in zip((gh, gw, gb), want):
            assert got.shape == expected.shape
            if key is TRAINING_KEY:
                onp.testing.assert_allclose(got.asnumpy(), expected, rtol=1e-4, atol=1e-5)
            else:
                assert not got.asnumpy().any()


@pytest.mark.parametrize("train_mode", [True, False])
@pytest.mark.parametrize("upstream", ["uniform", "uniform on weighted rows", "non-uniform"])
def test_mlm_gradients_for_uniform_and_non_uniform_upstream_gradients(upstream, train_mode):
    """A uniform upstream gradient (a summed, normalised loss) scales the forward's gradients; any
    other, or a forward in inference mode, recomputes them; the results agree with builtin."""
    inputs = mlm_inputs(40, 8, 57, seed=3)
    weighted = inputs[4].asnumpy() != 0
    noise = onp.random.RandomState(5).normal(size=40)
    head = np.array({"uniform": onp.full(40, 0.37), "non-uniform": noise,
                     "uniform on weighted rows": onp.where(weighted, 0.37, noise)}[upstream]
                    .astype("float32"))
    loss, got = fused_mlm(inputs, head, train_mode)
    want = builtin_mlm_grads(inputs, head, train_mode)
    onp.testing.assert_allclose(loss, builtin_mlm(*inputs)[0].asnumpy(), rtol=1e-4, atol=1e-5)
    for g, w in zip(got, want):
        onp.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("train_mode", [True, False])
def test_mlm_rows_of_weight_zero_cost_nothing_and_get_no_gradient(train_mode):
    """Rows of weight 0 (padding slots, whose labels are not even checked) give loss 0 and a zero
    hidden gradient; the others match builtin; all rows of weight 0 give zero gradients."""
    h, w, b, y, c = mlm_inputs(12, 4, 9, seed=2)
    padding = onp.array([0, 5, 6, 11])
    weights = onp.ones(12, dtype="float32")
    weights[padding] = 0
    labels = y.asnumpy()
    labels[padding] = [-1, 9, 1000, 0]
    valid_labels = labels.copy()
    valid_labels[padding] = 0
    c, y = np.array(weights), np.array(labels, dtype="int32")
    for head in (np.ones((12,)), rand(12, seed=8)):
        loss, got = fused_mlm([h, w, b, y, c], head, train_mode, chunk=5 * 9)
        want = builtin_mlm_grads([h, w, b, np.array(valid_labels, dtype="int32"), c], head)
        assert not loss[padding].any() and not got[0][padding].any()
        for g, expected in zip(got, want):
            onp.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-5)
        loss, got = fused_mlm([h, w, b, y, np.zeros((12,))], head, train_mode)
        assert not loss.any() and not any(g.any() for g in got)


MEMORY_CHILD = textwrap.dedent("""
    import json, resource
    import bertpretrain  # noqa: F401  (its numpy fixes first)
    import mxnet as mx
    from mxnet import autograd, np
    from bertpretrain import kernels
    from bertpretrain.kernels import ops as kernel_ops

    assert kernels.load().available
    k, v = 4, 65536

    def train(n):  # forward, a uniform backward (scaled) and a non-uniform one (recomputed)
        h, w, b = np.random.normal(size=(n, k)), np.random.normal(size=(v, k)), np.zeros((v,))
        y, c = np.random.randint(0, v, size=(n,)).astype("int32"), np.ones((n,))
        for a in (h, w, b):
            a.attach_grad()
        for head in (np.ones((n,)), np.random.uniform(size=(n,))):
            with autograd.record():
                loss = (kernel_ops.mlm_cross_entropy(mx.nd, h, w, b, y, c) * head).sum()
            loss.backward()
            mx.nd.waitall()

    train(16)  # the library, MXNet's pools and the (V, K) arrays
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train(2048)
    print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024))
""")


def test_mlm_memory_stays_far_below_the_logits():
    """2,048 rows x 65,536 words: the (N, V) logits would take 512 MiB; the kernel's peak memory
    grows by less than a quarter of that (its chunk of logits is 16 MiB)."""
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    growth = json.loads(done.stdout.strip().splitlines()[-1])
    assert growth < 2048 * 65536 * 4 / 4, f"peak RSS grew by {growth / 2 ** 20:.0f} MiB"


# ------------------------------------------------------------------ finite differences

def test_finite_differences():
    lens = np.array([3, 5], dtype="int32")
    finite_difference_check(lambda x: kernel_ops.attention(mx.nd, x, lens, 2), [rand(2, 5, 12)], 0,
                            n_coords=12)
    inputs = mlm_inputs(6, 4, 23)
    for wrt in (0, 1, 2):
        finite_difference_check(lambda h, w, b, y, c: kernel_ops.mlm_cross_entropy(
            mx.nd, h, w, b, y, c, chunk=4 * 23), inputs, wrt)


def test_finite_differences_attention_with_a_fixed_dropout_mask():
    key = (np.array(onp.random.RandomState(0).randint(0, 2, size=64) * 2.0).astype("float32")).as_nd_ndarray()
    lens = np.array([4, 5], dtype="int32").as_nd_ndarray()

    def attn(x, key=key):
        return mx.nd.bp_attention(x.as_nd_ndarray(), lens, key, num_heads=2, p=0.3)[0].as_np_ndarray()

    x = rand(2, 5, 12)
    no_dropout = attn(x, mx.nd.ones((64,))).asnumpy()
    assert not onp.allclose(attn(x).asnumpy(), no_dropout)  # the mask drops something
    finite_difference_check(attn, [x], 0, n_coords=12)


# ------------------------------------------------------------------ in a block, grad_req='add'

class TiedHead(gluon.HybridBlock):
    """Attention on a packed projection, then the MLM loss through a decoder tied to an embedding."""

    def __init__(self, vocab, dim, heads, tied, **kwargs):
        super().__init__(**kwargs)
        self.heads = heads
        self.embedding = gluon.nn.Embedding(vocab, dim)
        self.qkv = gluon.nn.Dense(3 * dim, flatten=False, in_units=dim)
        self.decoder_weight = (self.embedding.weight if tied else
                               self.params.get("decoder_weight", shape=(vocab, dim)))
        self.decoder_bias = self.params.get("decoder_bias", shape=(vocab,), init="zeros")

    def hybrid_forward(self, F, tokens, lens, labels, weights, decoder_weight, decoder_bias):
        x = self.embedding(tokens)  # (B, T, D)
        ctx = kernel_ops.attention(F, self.qkv(x), lens, self.heads)
        hidden = F.np.reshape(ctx + x, (-1, ctx.shape[-1])) if F is mx.nd else \
            F.npx.reshape(ctx + x, (-5, -2))
        return kernel_ops.mlm_cross_entropy(F, hidden, decoder_weight, decoder_bias, labels, weights,
                                            chunk=7 * 30).sum()


def head_inputs(seed):
    rng = onp.random.RandomState(seed)
    tokens = np.array(rng.randint(0, 30, size=(3, 6)).astype("float32"))
    lens = np.array([1, 6, 4], dtype="int32")
    labels = np.array(rng.randint(0, 30, size=18).astype("int32"), dtype="int32")
    return tokens, lens, labels, np.array((rng.rand(18) < 0.6).astype("float32"))


@pytest.mark.parametrize("tied", [True, False])
def test_gradient_accumulation_in_a_hybridized_block(tied):
    def grads(grad_req):
        mx.random.seed(0)
        net = TiedHead(30, 8, 2, tied)
        net.initialize(mx.init.Normal(0.3))
        net.collect_params().setattr("grad_req", grad_req)
        net.hybridize(static_alloc=True, static_shape=True)
        result = []
        for seed in range(2):
            with autograd.record():
                net(*head_inputs(seed)).backward()
            result.append([p.grad().asnumpy().copy() for p in net.collect_params().values()])
        return result

    (first, second), (_, accumulated) = grads("write"), grads("add")
    assert all(onp.abs(g).sum() > 0 for g in first)
    for got, a, b in zip(accumulated, first, second):
        onp.testing.assert_allclose(got, a + b, rtol=1e-5, atol=1e-6)
