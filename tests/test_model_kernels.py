"""The model routed through the fused CPU kernels: same training as the builtin path, seeded
dropout, gradient accumulation, parameters shared across backends, export/import, and
tests/test_model.py with the kernels off.

Each comparison builds models with identical parameters in one process, on the ``"fused"``
backend and the ``"builtin"`` backend, and checks that the graphs really differ (the fused
backend's ``bp_*`` operators in its graph, none in the builtin one). Skipped, with the reason, where
the kernels cannot be built.
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as onp
import pytest

import bertpretrain  # noqa: F401  (MXNet with numpy semantics)
import mxnet as mx
from mxnet import autograd, gluon, init

from bertpretrain import kernels
from bertpretrain.model import BERTForPretraining, BERTModel
from bertpretrain.model import export as export_model

from test_model import BERT_STYLE, TINY, VOCAB, make_batch

TESTS = pathlib.Path(__file__).resolve().parent
# the kernels in a BERTForPretraining graph
FUSED_OPS = {"bp_layer_norm", "bp_add_layer_norm", "bp_attention", "bp_mlm_ce", "bp_softmax_ce"}
# what each backend's graph must hold (pre-LN layers have no bp_add_layer_norm)
BACKEND_OPS = {"fused": FUSED_OPS - {"bp_add_layer_norm"}, "builtin": set()}
PRE_LN = dict(BERT_STYLE, pre_layer_norm=True)


pytestmark = pytest.mark.usefixtures("kernels_available")


def make_nets(options, dropout=0.0, backends=("fused", "builtin")):
    """One BERTModel per backend, with the same initial parameters (copied from the first)."""
    nets = []
    for index, backend in enumerate(backends):
        mx.random.seed(index)
        net = BERTModel(VOCAB, backend=backend, **dict(TINY, dropout=dropout, **options))
        net.initialize(init.Xavier())
        if nets:
            for mine, reference in zip(net.collect_params().values(),
                                       nets[0].collect_params().values()):
                mine.set_data(reference.data())
        nets.append(net)
    return nets


def graph_ops(block):
    """The operator names of a hybridized block's traced graph."""
    return {node["op"] for node in json.loads(block._cached_graph[1].tojson())["nodes"]}


def train(model, batches, steps, seed=None, lr=0.01):
    """Adam steps as train_step does them; per step the five sums as float64 numpy."""
    model.hybridize(static_alloc=True, static_shape=True)
    model(*batches[0])  # trace (inference mode: draws no random numbers)
    trainer = gluon.Trainer(model.collect_params(), "adam", {"learning_rate": lr})
    if seed is not None:
        mx.random.seed(seed)
    history = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        num_preds, num_examples = float(batch[4].sum()), batch[0].shape[0]
        with autograd.record():
            sums = model(*batch)
            loss = sums.mlm_loss_sum / num_preds + sums.nsp_loss_sum / num_examples
        loss.backward()
        trainer.step(1)
        history.append(onp.array([s.item() for s in sums], dtype="float64"))
    return onp.stack(history)


BATCHES = [make_batch(seed=seed) for seed in range(3)]


@pytest.mark.parametrize("options", [{}, BERT_STYLE, PRE_LN])
def test_every_backend_gives_the_same_outputs_and_gradients(options):
    models = [BERTForPretraining(net) for net in make_nets(options)]
    results = []
    for model in models:
        model.hybridize(static_alloc=True, static_shape=True)
        model(*BATCHES[0])
        with autograd.record():
            sums = model(*BATCHES[0])
            (sums.mlm_loss_sum / 10 + sums.nsp_loss_sum / 4).backward()
        results.append(([s.item() for s in sums],
                        [p.grad().asnumpy().copy() for p in model.collect_params().values()]))
    for model in models:
        kernels_used = {op for op in graph_ops(model) if op.startswith("bp_")}
        assert BACKEND_OPS[model.bert.backend] <= kernels_used <= FUSED_OPS, model.bert.backend
        assert bool(kernels_used) == (model.bert.backend != "builtin"), model.bert.backend
    builtin_sums, builtin_grads = results[-1]
    names = list(models[0].collect_params().keys())
    for model, (sums, grads) in zip(models[:-1], results[:-1]):
        onp.testing.assert_allclose(sums, builtin_sums, rtol=1e-5, err_msg=model.bert.backend)
        for name, got, want in zip(names, grads, builtin_grads):
            onp.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5,
                                        err_msg=f"{model.bert.backend}: {name}")


@pytest.mark.parametrize("options", [{}, BERT_STYLE, PRE_LN])
def test_every_backend_trains_to_the_same_losses(options):
    fused, builtin = (train(BERTForPretraining(net), BATCHES, steps=8) for net in make_nets(options))
    onp.testing.assert_allclose(fused[:, :3], builtin[:, :3], rtol=2e-4)  # losses, preds
    onp.testing.assert_allclose(fused[:, 3:], builtin[:, 3:], atol=1.0)  # rare arg-max ties
    assert fused[-3:, 0].mean() < 0.9 * fused[:3, 0].mean(), "the MLM loss does not fall"


@pytest.mark.parametrize("options", [{}, PRE_LN])
def test_parameters_saved_on_one_backend_load_on_every_other(tmp_path, options):
    """Same parameter names and shapes on every backend: a file saved by one loads in the others."""
    nets = make_nets(options)
    for net in nets[1:]:  # other values than the saved ones, to be overwritten by the load
        for param in net.collect_params().values():
            param.set_data(param.data() * 0.5 + 0.1)
    batch = make_batch()[:4]
    for saved in nets:
        path = str(tmp_path / f"{saved.backend}.params")
        saved.save_parameters(path)
        want = [out.asnumpy() for out in saved(*batch)]
        for loaded in nets:
            loaded.load_parameters(path)
            for got, expected in zip(loaded(*batch), want):
                onp.testing.assert_allclose(got.asnumpy(), expected, rtol=1e-4, atol=1e-5,
                                            err_msg=f"{saved.backend} -> {loaded.backend}")


def test_seeded_dropout_training_is_reproducible_with_the_kernels():
    nets = make_nets(BERT_STYLE, dropout=0.3, backends=("fused",) * 3)
    runs = [train(BERTForPretraining(net), BATCHES, steps=4, seed=seed)
            for net, seed in zip(nets, (7, 7, 8))]
    onp.testing.assert_array_equal(runs[0], runs[1])
    assert not onp.allclose(runs[0][:, 0], runs[2][:, 0], rtol=1e-4)
    # dropout is on in training and off in inference
    model = BERTForPretraining(nets[0])
    assert model(*BATCHES[0]).mlm_loss_sum.item() == model(*BATCHES[0]).mlm_loss_sum.item()
    with autograd.record():
        trained_twice = [model(*BATCHES[0]).mlm_loss_sum.item() for _ in range(2)]
    assert trained_twice[0] != trained_twice[1]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gradient_accumulation_with_grad_req_add(precision):
    """Parameters feed the kernels (LayerNorm's, the decoder's; every dense layer's in bfloat16),
    whose backward overwrites: 'add' must accumulate, also when it is set after the graph was
    traced without the copies that 'write' does not need."""
    if precision == "bf16" and not kernels.bf16().available:
        pytest.skip(f"no bfloat16 here: {kernels.bf16().reason}")
    net, = make_nets(BERT_STYLE, backends=("fused",))
    net.set_precision(precision)
    model = BERTForPretraining(net)
    model.hybridize(static_alloc=True, static_shape=True)
    model(*BATCHES[0])
    assert FUSED_OPS <= graph_ops(model)
    assert "_np_copy" not in graph_ops(model)  # no gradient accumulates: the parameters as they are

    def backward():
        with autograd.record():
            sums = model(*BATCHES[0])
            (sums.mlm_loss_sum + sums.nsp_loss_sum).backward()

    params = model.collect_params()
    backward()
    once = {name: p.grad().asnumpy().copy() for name, p in params.items()}
    for p in params.values():
        p.grad_req = "add"
        p.grad()[:] = 0  # (Parameter.zero_grad fails on numpy arrays in MXNet 1.9.1)
    backward()
    backward()
    assert "_np_copy" in graph_ops(model)
    for name, p in params.items():
        onp.testing.assert_allclose(p.grad().asnumpy(), 2 * once[name], rtol=1e-4, atol=1e-6,
                                    err_msg=name)


IMPORT_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as onp
    import bertpretrain
    from bertpretrain import kernels
    import mxnet as mx
    from mxnet import gluon, np
    prefix, load_kernels = sys.argv[1], sys.argv[2] == "1"
    if load_kernels:
        assert kernels.load().available
    inputs = [np.array(a) for a in onp.load(prefix + "-inputs.npz").values()]
    block = gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data0", "data1", "data2", "data3"],
                                      prefix + "-0000.params")
    onp.savez(prefix + "-outputs.npz", *[out.asnumpy() for out in block(*inputs)])
""")


@pytest.mark.filterwarnings("ignore:Cannot decide type")  # SymbolBlock.imports on untyped inputs
@pytest.mark.parametrize("builtin_ops", [False, True])
def test_export_imports_in_this_and_a_fresh_process(tmp_path, builtin_ops):
    net, = make_nets(BERT_STYLE, backends=("fused",))
    batch = make_batch()[:4]
    expected = [out.asnumpy() for out in net(*batch)]
    prefix = str(tmp_path / "bert")
    symbol_file, params_file = export_model(net, prefix, *batch, builtin_ops=builtin_ops)
    with open(symbol_file) as file:
        exported_ops = {node["op"] for node in json.load(file)["nodes"]}
    assert bool(FUSED_OPS & exported_ops) != builtin_ops
    net(*batch)
    assert {"bp_layer_norm", "bp_add_layer_norm", "bp_attention"} <= graph_ops(net), \
        "not traced with the kernels again"

    imported = gluon.SymbolBlock.imports(symbol_file, ["data0", "data1", "data2", "data3"], params_file)
    for got, want in zip(imported(*batch), expected):
        onp.testing.assert_allclose(got.asnumpy(), want, rtol=1e-5, atol=1e-5)

    # A fresh process: the kernels' graph needs kernels.load() first; the builtin one needs nothing.
    onp.savez(prefix + "-inputs.npz", *[a.asnumpy() for a in batch])
    script = tmp_path / "import_graph.py"
    script.write_text(IMPORT_SCRIPT)
    env = dict(os.environ, BERTPRETRAIN_KERNELS="0" if builtin_ops else "")
    done = subprocess.run([sys.executable, str(script), prefix, "0" if builtin_ops else "1"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    outputs = onp.load(prefix + "-outputs.npz")
    for got, want in zip(outputs.values(), expected):
        onp.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_model_tests_pass_with_the_kernels_turned_off():
    env = dict(os.environ, BERTPRETRAIN_KERNELS="0", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(TESTS / "test_model.py")], cwd=str(TESTS.parent), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout
