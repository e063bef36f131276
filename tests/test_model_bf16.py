"""bfloat16 precision (issue 23): the kernels' bfloat16 operators against float64 numpy on rounded
operands or against their float32 selves, the model trained in bf16 against fp32, how a precision is
chosen ('auto', 'bf16' refused where it cannot run), and a kernel build without AVX512_BF16.

Tolerances: a bf16 product rounds each operand to 8 significant bits (relative error up to 2^-9),
so a layer's output differs from float32 by ~0.3% of its scale; over 8 Adam steps of the tiny
models here the summed losses stay within 2% of float32's (measured: < 0.5%).
"""
import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as onp
import pytest

import bertpretrain  # noqa: F401  (MXNet with numpy semantics)
import mxnet as mx
from mxnet import autograd, gluon, init, np

from bertpretrain import kernels
from bertpretrain.kernels import ops as kernel_ops
from bertpretrain.model import BERTForPretraining, BERTModel, ops
from bertpretrain.model.layers import Dense

from kernel_checks import rand, run
from test_kernels_fused import mlm_inputs, seq_lengths
from test_kernels_gemm import to_bfloat16
from test_model import BERT_STYLE, TINY, VOCAB
from test_model_kernels import BATCHES, graph_ops, train

# Losses of 8 steps, bf16 against fp32 (see the module docstring).
LOSS_RTOL = 2e-2


@pytest.fixture
def bf16(kernels_available):
    if not kernels.bf16().available:
        pytest.skip(f"no bfloat16 here: {kernels.bf16().reason}")


def rounded64(x):
    return to_bfloat16(x.asnumpy()).astype("float64")


def test_dense_bf16_is_the_product_of_rounded_operands(bf16):
    """Forward and all three gradients: float32 accuracy on bfloat16-rounded operands (the bias
    and its gradient in float32), for a 3-d input of odd sizes."""
    x, w, b = rand(2, 13, 37, seed=1), rand(29, 37, seed=2), rand(29, seed=3)
    out, (dx, dw, db) = run(lambda x, w, b: kernel_ops.dense_bf16(mx.nd, x, w, b), [x, w, b],
                            [0, 1, 2], head_seed=4)
    head = rand(2, 13, 29, seed=4).asnumpy().astype("float64")
    xr, wr = rounded64(x).reshape(26, 37), rounded64(w)
    dy = to_bfloat16(head.astype("float32")).astype("float64").reshape(26, 29)

    def close(got, want):
        assert onp.abs(got - want).max() <= 1e-5 * (onp.abs(want).max() + 1), (got, want)

    close(out.reshape(26, 29), xr @ wr.T + b.asnumpy())
    close(dx.reshape(26, 37), dy @ wr)
    close(dw, dy.T @ xr)
    close(db, head.reshape(26, 29).sum(axis=0))
    with pytest.raises(AssertionError):  # really rounded: unrounded operands differ by far more
        close(out.reshape(26, 29), x.asnumpy().reshape(26, 37).astype("float64") @ w.asnumpy().T.astype("float64") + b.asnumpy())


@pytest.mark.parametrize("tokens, features", [(40, 24), (40, 700), (1100, 600)],
                         ids=["one-block", "split-depth", "tasks-over-two-blocks"])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_dense_bf16_activation_and_its_gradient(bf16, act, tokens, features):
    """The fused activation (relu; exact, erf-based gelu), applied by the GEMM to each finished block
    of the output whatever its schedule, and its gradient, against float64 numpy on the rounded
    operands (g = dy * act'(pre) rounded to bfloat16 for dx and dweight)."""
    import math
    x, w, b = rand(tokens, features, seed=1), rand(36, features, seed=2, scale=0.3), rand(36, seed=3)
    out, (dx, dw, db) = run(lambda x, w, b: kernel_ops.dense_bf16(mx.nd, x, w, b, act=act),
                            [x, w, b], [0, 1, 2], head_seed=4)
    dy = rand(tokens, 36, seed=4).asnumpy().astype("float64")
    xr, wr = rounded64(x), rounded64(w)
    pre = xr @ wr.T + b.asnumpy()
    if act == "relu":
        y, slope = onp.maximum(pre, 0), (pre > 0).astype("float64")
    else:
        cdf = 0.5 * (1 + onp.vectorize(math.erf)(pre / math.sqrt(2)))
        y, slope = pre * cdf, cdf + pre * onp.exp(-pre ** 2 / 2) / math.sqrt(2 * math.pi)
    g = dy * slope
    gr = to_bfloat16(g.astype("float32")).astype("float64")
    for got, want in [(out, y), (dx, gr @ wr), (dw, gr.T @ xr), (db, g.sum(axis=0))]:
        assert onp.abs(got - want).max() <= 2e-3 * (onp.abs(want).max() + 1), act


def test_dense_layer_accumulates_gradients_with_grad_req_add(bf16):
    layer = Dense(7, 5, ops.for_backend("fused", "bf16"))
    layer.initialize(init.Xavier())
    layer.hybridize(static_alloc=True, static_shape=True)
    x = rand(3, 5)
    grads = []
    for req in ("write", "add"):
        layer.collect_params().setattr("grad_req", req)
        layer.collect_params().zero_grad()
        for _ in range(1 if req == "write" else 2):
            with autograd.record():
                layer(x).sum().backward()
        grads.append(layer.weight.grad().asnumpy().copy())
    assert "bp_dense_bf16" in graph_ops(layer)
    onp.testing.assert_allclose(grads[1], 2 * grads[0], rtol=1e-6)


@pytest.mark.parametrize("batch,t,hidden,heads", [(3, 7, 10, 2), (2, 64, 128, 2)])
def test_attention_bf16_is_close_to_float32(bf16, batch, t, hidden, heads):
    """Context and the packed q/k/v gradient within ~1% of the float32 kernel's, and not equal."""
    qkv, lens = rand(batch, t, 3 * hidden, seed=5), seq_lengths(batch, t)
    got, want = (run(lambda q: kernel_ops.attention(mx.nd, q, lens, heads, bf16=flag), [qkv], [0])
                 for flag in (True, False))
    for g, w in zip([got[0]] + got[1], [want[0]] + want[1]):
        error = onp.abs(g - w).max() / onp.abs(w).max()
        assert 0 < error < 2e-2, error


@pytest.mark.parametrize("train_mode", [True, False])
def test_mlm_bf16_is_close_to_float32(bf16, train_mode):
    """Losses and the three gradients in training mode (gradients made in the forward) and in
    inference mode (recomputed in backward), over several chunks sharing the packed weight."""
    inputs = mlm_inputs(50, 32, 1000)

    def fn(flag):
        def mlm(h, w, b, y, c):
            return kernel_ops.mlm_cross_entropy(mx.nd, h, w, b, y, c, chunk=7 * 1000, bf16=flag)
        if train_mode:
            return run(mlm, inputs, [0, 1, 2])
        with autograd.predict_mode():
            return run(mlm, inputs, [0, 1, 2])

    got, want = fn(True), fn(False)
    for g, w in zip([got[0]] + got[1], [want[0]] + want[1]):
        error = onp.abs(g - w).max() / onp.abs(w).max()
        assert 0 < error < 2e-2, error


def make_pair(options):
    """fp32 and bf16 models (fused backend, dropout 0) with the same initial parameters."""
    nets = []
    for precision in ("fp32", "bf16"):
        mx.random.seed(0)
        net = BERTModel(VOCAB, backend="fused", precision=precision, **dict(TINY, dropout=0.0, **options))
        net.initialize(init.Xavier())
        if nets:
            for mine, reference in zip(net.collect_params().values(), nets[0].collect_params().values()):
                mine.set_data(reference.data())
        nets.append(net)
    return nets


@pytest.mark.parametrize("options", [{}, BERT_STYLE])
def test_bf16_trains_to_the_losses_of_fp32(bf16, options):
    """8 Adam steps: the MLM and NSP loss sums of every step within LOSS_RTOL of fp32's; the bf16
    graph runs the dense layers on bp_dense_bf16 (the fp32 one never), and the loss falls."""
    models = [BERTForPretraining(net) for net in make_pair(options)]
    fp32, bf16_run = (train(model, BATCHES, steps=8) for model in models)
    onp.testing.assert_allclose(bf16_run[:, [0, 2]], fp32[:, [0, 2]], rtol=LOSS_RTOL)
    assert not onp.array_equal(bf16_run[:, 0], fp32[:, 0]), "bf16 computed exactly the fp32 losses"
    assert "bp_dense_bf16" in graph_ops(models[1]) and "bp_dense_bf16" not in graph_ops(models[0])
    assert bf16_run[-3:, 0].mean() < 0.9 * bf16_run[:3, 0].mean(), "the MLM loss does not fall"
    for param in models[1].collect_params().values():
        assert param.data().dtype == onp.float32 and param.grad().dtype == onp.float32, param.name


def test_precision_is_resolved_and_refused_clearly(bf16, caplog):
    with caplog.at_level(logging.INFO, logger="bertpretrain.model"):
        net = BERTModel(VOCAB, backend="fused", precision="auto", **TINY)
    assert net.precision == "bf16"
    assert [r.getMessage() for r in caplog.records] == [
        "precision auto: bf16 (the kernels have AVX512_BF16 (vdpbf16ps))"]
    assert net.set_precision("fp32") == "fp32" and net.ops.precision == "fp32"
    assert BERTModel(VOCAB, backend="builtin", precision="auto", **TINY).precision == "fp32"
    with pytest.raises(ops.PrecisionUnavailableError, match="'builtin' backend computes in float32"):
        BERTModel(VOCAB, backend="builtin", precision="bf16", **TINY)
    with pytest.raises(ValueError, match="precision must be one of"):
        BERTModel(VOCAB, precision="fp16", **TINY)


def test_train_bert_sets_the_precision_and_saves_float32(bf16, tmp_path):
    from bertpretrain.data import load_data_wiki
    from bertpretrain.train import train_bert
    from bertpretrain.train.checkpoint import latest_checkpoint
    train_iter, vocab = load_data_wiki(16, 32, dataset="wikitext-2-sample", seed=0)
    net = BERTModel(len(vocab), dropout=0.0, num_hiddens=32, ffn_num_hiddens=64, num_heads=2,
                    num_layers=1, max_len=32)
    assert net.precision == "fp32"
    train_bert(train_iter, net, devices=[mx.cpu()], num_steps=2, seed=1, progress=False, checkpoint_dir=str(tmp_path))
    assert net.precision == "bf16"  # 'auto', the default, on this CPU
    saved = mx.nd.load(os.path.join(latest_checkpoint(str(tmp_path)), "model.params"))
    assert saved and all(a.dtype == onp.float32 for a in saved.values())
    with pytest.raises(ValueError, match=r"precision \(--precision\) must be one of"):
        train_bert(train_iter, net, devices=[mx.cpu()], num_steps=2, precision="half")


def test_a_build_without_avx512_bf16_refuses_bf16_and_auto_is_fp32(tmp_path):
    """Kernels built with -mno-avx512bf16 (as on a CPU without it), in a fresh process and cache."""
    code = textwrap.dedent("""
        import json, bertpretrain, mxnet as mx
        from bertpretrain import kernels
        from bertpretrain.kernels import ops as kernel_ops
        from bertpretrain.model import BERTModel, ops
        out = {"bf16": kernels.bf16().reason, "available": kernels.bf16().available,
               "auto": BERTModel(40, backend="fused", precision="auto", num_hiddens=16,
                                 ffn_num_hiddens=24, num_heads=2, max_len=24).precision}
        try:
            BERTModel(40, backend="fused", precision="bf16")
        except ops.PrecisionUnavailableError as error:
            out["refused"] = str(error)
        try:
            x = mx.np.ones((2, 3))
            kernel_ops.dense_bf16(mx.nd, x, mx.np.ones((4, 3)), mx.np.ones((4,))).asnumpy()
        except mx.base.MXNetError as error:
            out["operator"] = str(error)
        print(json.dumps(out))
    """)
    env = dict(os.environ, BERTPRETRAIN_HOME=str(tmp_path), BERTPRETRAIN_KERNELS="1",
               BERTPRETRAIN_KERNELS_CXXFLAGS="-mno-avx512bf16")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert not out["available"] and out["auto"] == "fp32"
    assert "AVX512_BF16" in out["bf16"] and "AVX512_BF16" in out["refused"]
    assert "precision='bf16' cannot run here" in out["refused"]
    assert "AVX512_BF16" in out["operator"], out["operator"]


def test_a_run_resumes_across_precisions_and_records_each(bf16, tmp_path, caplog):
    """bf16 steps, checkpointed, then resumed in fp32: the checkpoint (float32 parameters) loads, the history and
    each checkpoint's state record the precision, and the switch is logged."""
    from bertpretrain.data import load_data_wiki
    from bertpretrain.train import TrainingHistory, latest_checkpoint, train_bert
    sizes = dict(num_hiddens=32, ffn_num_hiddens=64, num_heads=2, num_layers=1, max_len=32)
    train_iter, vocab = load_data_wiki(16, 32, dataset="wikitext-2-sample", seed=0)
    first = train_bert(train_iter, BERTModel(len(vocab), **sizes), devices=[mx.cpu()], num_steps=2, seed=1,
                       progress=False, checkpoint_dir=str(tmp_path), precision="bf16")
    assert first.precision == "bf16"
    state = json.loads((tmp_path / "step-00000002" / "state.json").read_text())
    assert state["precision"] == "bf16" and TrainingHistory.from_dict(state["history"]).precision == "bf16"
    train_iter, vocab = load_data_wiki(16, 32, dataset="wikitext-2-sample", seed=0)
    with caplog.at_level(logging.INFO, logger="bertpretrain.train.loop"):
        resumed = train_bert(train_iter, BERTModel(len(vocab), **sizes), devices=[mx.cpu()], num_steps=4, seed=1,
                             progress=False, checkpoint_dir=str(tmp_path), resume=True, precision="fp32")
    assert resumed["step"] == [1, 2, 3, 4] and resumed.precision == "fp32"
    assert "the checkpoint was trained in bf16; continuing in fp32" in caplog.text
    assert json.loads((tmp_path / "step-00000004" / "state.json").read_text())["precision"] == "fp32"
    assert latest_checkpoint(str(tmp_path)).endswith("step-00000004")
