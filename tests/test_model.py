"""Tests of bertpretrain.model: shapes, masking, hybridization, heads, save/load/export, learning."""
import json

import numpy as onp
import pytest

import bertpretrain  # noqa: F401  (sets up MXNet's numpy mode)
import mxnet as mx
from mxnet import autograd, gluon, init, np
from bertpretrain.model import (BERTConfig, BERTForPretraining, BERTModel, PretrainingOutput, bert_base,
                                bert_d2l_small, bert_mini, bert_small, bert_tiny, load_pretrained,
                                save_pretrained)
from bertpretrain.model import export as export_model

VOCAB = 40
TINY = dict(num_hiddens=16, ffn_num_hiddens=24, num_heads=2, num_layers=2, max_len=24)
BERT_STYLE = dict(activation="gelu", embedding_layer_norm=True, tie_mlm_weights=True)


def make_batch(batch_size=4, seq_len=12, num_preds=3, vocab_size=VOCAB, seed=0):
    """A batch in bertpretrain.data's layout: [CLS] a [SEP] b [SEP] then [PAD] (id 1)."""
    rng = onp.random.RandomState(seed)
    tokens = onp.ones((batch_size, seq_len), dtype="int32")
    segments = onp.zeros((batch_size, seq_len), dtype="int32")
    valid_lens = rng.randint(seq_len // 2, seq_len + 1, size=batch_size).astype("int32")
    valid_lens[0] = seq_len
    positions = onp.zeros((batch_size, num_preds), dtype="int32")
    weights = onp.zeros((batch_size, num_preds), dtype="float32")
    for row, length in enumerate(valid_lens):
        tokens[row, :length] = rng.randint(5, vocab_size, size=length)
        tokens[row, [0, length // 2, length - 1]] = [2, 3, 3]
        segments[row, length // 2 + 1:length] = 1
        count = num_preds - (row % 2)  # some rows have a padding slot
        positions[row, :count] = rng.choice(onp.arange(1, length - 1), size=count, replace=False)
        weights[row, :count] = 1
    labels = rng.randint(5, vocab_size, size=(batch_size, num_preds)).astype("int32")
    nsp_labels = rng.randint(0, 2, size=batch_size).astype("int32")
    return tuple(np.array(a) for a in (tokens, segments, valid_lens, positions, weights, labels,
                                        nsp_labels))


def make_net(seed=0, **options):
    mx.random.seed(seed)
    kwargs = dict(TINY, dropout=0.0)
    kwargs.update(options)
    net = BERTModel(VOCAB, **kwargs)
    net.initialize(init.Xavier())
    return net


@pytest.mark.parametrize("options, seq_len, num_preds", [
    ({}, 12, 3),
    (BERT_STYLE, 12, 3),
    (dict(num_heads=4, num_layers=1, ffn_num_hiddens=8), 24, 4),
    (dict(num_hiddens=12, num_heads=3, num_layers=3), 7, 1),
])
def test_output_shapes(options, seq_len, num_preds):
    net = make_net(**options)
    tokens, segments, valid_lens, positions, *_ = make_batch(seq_len=seq_len, num_preds=num_preds)
    encoded, mlm_logits, nsp_logits = net(tokens, segments, valid_lens, positions)
    hiddens = net.config.num_hiddens
    assert encoded.shape == (4, seq_len, hiddens)
    assert mlm_logits.shape == (4, num_preds, VOCAB)
    assert nsp_logits.shape == (4, 2)
    encoded_only, no_mlm, nsp_only = net(tokens, segments, valid_lens)
    assert no_mlm is None
    onp.testing.assert_allclose(encoded_only.asnumpy(), encoded.asnumpy(), rtol=1e-6)
    onp.testing.assert_allclose(nsp_only.asnumpy(), nsp_logits.asnumpy(), rtol=1e-6)


def test_default_configuration_is_d2l():
    config = BERTModel(VOCAB).config
    assert (config.num_hiddens, config.ffn_num_hiddens, config.num_heads, config.num_layers,
            config.dropout, config.max_len, config.activation) == (128, 256, 2, 2, 0.2, 512, "relu")
    assert not config.embedding_layer_norm and not config.tie_mlm_weights


@pytest.mark.parametrize("options", [{}, BERT_STYLE])
def test_padding_tokens_do_not_change_valid_outputs(options):
    net = make_net(**options)
    tokens, segments, valid_lens, positions, *_ = make_batch()
    before = net(tokens, segments, valid_lens, positions)
    noisy = tokens.asnumpy().copy()
    lens = valid_lens.asnumpy()
    rng = onp.random.RandomState(1)
    for row, length in enumerate(lens):
        noisy[row, length:] = rng.randint(0, VOCAB, size=noisy.shape[1] - length)
    after = net(np.array(noisy), segments, valid_lens, positions)
    for row, length in enumerate(lens):
        onp.testing.assert_allclose(after[0][row, :length].asnumpy(), before[0][row, :length].asnumpy(),
                                    rtol=1e-5, atol=1e-6)
    onp.testing.assert_allclose(after[1].asnumpy(), before[1].asnumpy(), rtol=1e-5, atol=1e-6)
    onp.testing.assert_allclose(after[2].asnumpy(), before[2].asnumpy(), rtol=1e-5, atol=1e-6)


def test_mlm_logits_are_those_of_the_encoder_output_at_each_position():
    net = make_net()
    tokens, segments, valid_lens, positions, *_ = make_batch()
    encoded, mlm_logits, _ = net(tokens, segments, valid_lens, positions)
    batch_size, seq_len = tokens.shape
    every_position = np.array(onp.tile(onp.arange(seq_len, dtype="int32"), (batch_size, 1)))
    all_logits = net.mlm(encoded, every_position).asnumpy()  # (B, T, V)
    pos = positions.asnumpy()
    expected = onp.stack([all_logits[row, pos[row]] for row in range(batch_size)])
    onp.testing.assert_allclose(mlm_logits.asnumpy(), expected, rtol=1e-5, atol=1e-6)


def _outputs_and_gradients(model, batch):
    params = model.collect_params()
    with autograd.record():
        outputs = model(*batch)
        total = sum(out.astype("float32").sum() for out in outputs if out is not None)
    total.backward()
    return ([out.asnumpy() for out in outputs if out is not None],
            {name: param.grad().asnumpy().copy() for name, param in params.items()})


@pytest.mark.parametrize("options", [{}, BERT_STYLE])
@pytest.mark.parametrize("with_loss", [False, True])
def test_hybridized_matches_imperative(options, with_loss):
    batch = make_batch()
    net = make_net(**options)
    model = BERTForPretraining(net) if with_loss else net
    inputs = batch if with_loss else batch[:4]
    imperative = _outputs_and_gradients(model, inputs)
    model.hybridize(static_alloc=True, static_shape=True)
    hybridized = _outputs_and_gradients(model, inputs)
    for got, expected in zip(hybridized[0], imperative[0]):
        onp.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert hybridized[1].keys() == imperative[1].keys()
    for name, grad in imperative[1].items():
        assert onp.abs(grad).max() > 0 or "segment" in name, f"no gradient for {name}"
        onp.testing.assert_allclose(hybridized[1][name], grad, rtol=1e-4, atol=1e-5, err_msg=name)


def test_pretraining_sums_match_a_numpy_computation():
    net = make_net()
    batch = make_batch()
    tokens, segments, valid_lens, positions, weights, labels, nsp_labels = batch
    mlm_sum, num_preds, nsp_sum, mlm_correct, nsp_correct = BERTForPretraining(net)(*batch)
    _, mlm_logits, nsp_logits = net(tokens, segments, valid_lens, positions)

    def cross_entropy(logits, targets):
        logits = logits - logits.max(axis=-1, keepdims=True)
        log_probs = logits - onp.log(onp.exp(logits).sum(axis=-1, keepdims=True))
        return -onp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]

    mlm_logits, nsp_logits = mlm_logits.asnumpy(), nsp_logits.asnumpy()
    weights, labels, nsp_labels = weights.asnumpy(), labels.asnumpy(), nsp_labels.asnumpy()
    assert num_preds.shape == () and num_preds.item() == weights.sum()
    onp.testing.assert_allclose(mlm_sum.item(), (cross_entropy(mlm_logits, labels) * weights).sum(),
                                rtol=1e-5)
    onp.testing.assert_allclose(nsp_sum.item(), cross_entropy(nsp_logits, nsp_labels).sum(), rtol=1e-5)
    assert mlm_correct.item() == ((mlm_logits.argmax(-1) == labels) * weights).sum()
    assert nsp_correct.item() == (nsp_logits.argmax(-1) == nsp_labels).sum()


@pytest.mark.parametrize("options", [{}, BERT_STYLE])
def test_save_and_load_reproduce_outputs_exactly(tmp_path, options):
    net = make_net(**options)
    batch = make_batch()[:4]
    expected = [out.asnumpy() for out in net(*batch)]
    save_pretrained(net, str(tmp_path / "bert"))
    assert sorted(p.name for p in (tmp_path / "bert").iterdir()) == ["config.json", "model.params"]
    with open(tmp_path / "bert" / "config.json") as file:
        assert BERTConfig.from_dict(json.load(file)) == net.config
    loaded = load_pretrained(str(tmp_path / "bert"))
    assert loaded.config == net.config
    for got, want in zip(loaded(*batch), expected):
        onp.testing.assert_array_equal(got.asnumpy(), want)


def test_load_pretrained_explains_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_pretrained(str(tmp_path / "nothing"))


@pytest.mark.filterwarnings("ignore:Cannot decide type")  # SymbolBlock.imports on untyped inputs
def test_export_loads_with_symbolblock_and_gives_the_same_numbers(tmp_path):
    net = make_net(**BERT_STYLE)
    batch = make_batch()[:4]
    expected = [out.asnumpy() for out in net(*batch)]
    symbol_file, params_file = export_model(net, str(tmp_path / "bert"), *batch)
    imported = gluon.SymbolBlock.imports(symbol_file, ["data0", "data1", "data2", "data3"], params_file)
    for got, want in zip(imported(*batch), expected):
        onp.testing.assert_allclose(got.asnumpy(), want, rtol=1e-5, atol=1e-6)


def test_a_few_adam_steps_on_one_batch_drive_both_losses_down():
    mx.random.seed(0)
    net = BERTModel(VOCAB, **dict(TINY, dropout=0.1))
    net.initialize(init.Xavier())
    model = BERTForPretraining(net)
    model.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(model.collect_params(), "adam", {"learning_rate": 0.01})
    batch = make_batch(batch_size=8)
    num_preds, batch_size = float(batch[4].sum()), batch[0].shape[0]
    history = []
    for _ in range(40):
        with autograd.record():
            mlm_sum, _, nsp_sum, _, _ = model(*batch)
            loss = mlm_sum / num_preds + nsp_sum / batch_size
        loss.backward()
        trainer.step(1)
        history.append((mlm_sum.item() / num_preds, nsp_sum.item() / batch_size))
    (mlm_first, nsp_first), (mlm_last, nsp_last) = history[0], history[-1]
    assert mlm_last < 0.2 * mlm_first, history
    assert nsp_last < 0.2 * nsp_first, history


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_hiddens=10, num_heads=3), "num_hiddens \\(10, --hidden-size\\) must be divisible by num_heads \\(3, "),
    (dict(dropout=1.0), "dropout \\(--dropout\\) must be a finite number >= 0 and < 1, got 1.0"),
    (dict(activation="swish"), "activation must be one of 'relu', 'gelu', got 'swish'"),
    (dict(num_layers=0), "num_layers \\(--num-layers\\) must be an integer >= 1, got 0"),
])
def test_invalid_configurations_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BERTModel(VOCAB, **kwargs)


def test_config_round_trips_and_rejects_unknown_keys():
    config = BERTConfig(vocab_size=VOCAB, **BERT_STYLE)
    assert BERTConfig.from_dict(config.to_dict()) == config
    assert BERTModel.from_config(config.to_dict()).config == config
    with pytest.raises(ValueError, match="unknown BERTConfig keys \\['hidden_size'\\]"):
        BERTConfig.from_dict(dict(config.to_dict(), hidden_size=768))


def test_sequences_longer_than_the_position_table_are_rejected():
    net = make_net(max_len=8)
    tokens, segments, valid_lens, positions, *_ = make_batch(seq_len=12)
    with pytest.raises(ValueError, match="max_len=8"):
        net(tokens, segments, valid_lens, positions)


def test_token_ids_outside_the_vocabulary_are_rejected():
    net = make_net()
    tokens, segments, valid_lens, positions, weights, labels, nsp_labels = make_batch()
    bad = tokens.asnumpy().copy()
    bad[1, 2] = VOCAB
    with pytest.raises(ValueError, match=f"vocab_size={VOCAB}"):
        net(np.array(bad), segments, valid_lens, positions)
    model = BERTForPretraining(net)
    model.hybridize(static_alloc=True, static_shape=True)
    with pytest.raises(ValueError, match=f"vocab_size={VOCAB}"):
        model(np.array(bad), segments, valid_lens, positions, weights, labels, nsp_labels)


def test_mismatched_batch_shapes_are_rejected():
    net = make_net()
    tokens, segments, valid_lens, positions, *_ = make_batch()
    with pytest.raises(ValueError, match="segments must have the shape of tokens"):
        net(tokens, segments[:, :5], valid_lens, positions)
    with pytest.raises(ValueError, match="valid_lens must have shape"):
        net(tokens, segments, valid_lens[:2], positions)


@pytest.mark.parametrize("backend", ["fused", "builtin"])
def test_attention_matches_a_reference_multi_head_attention(backend):
    from bertpretrain.model.attention import MultiHeadSelfAttention
    from bertpretrain.model import ops

    mx.random.seed(3)
    hiddens, heads, batch_size, seq_len = 12, 3, 2, 5
    layer = ops.for_backend(backend)
    attention = MultiHeadSelfAttention(hiddens, heads, dropout=0.0, ops=layer)
    attention.initialize(init.Normal(0.5))
    for name, param in attention.collect_params().items():
        if name.endswith("bias"):
            param.set_data(np.random.normal(size=param.shape))
    x = np.random.normal(size=(batch_size, seq_len, hiddens))
    valid_lens = np.array([5, 2], dtype="int32")
    mask = layer.attention_mask(mx.nd, valid_lens, np.arange(seq_len).astype("int32"))
    got = attention(x, mask).asnumpy()

    p = {name.split("_", 1)[1]: param.data().asnumpy() for name, param in
         attention.collect_params().items()}

    def project(inputs, name):
        return inputs @ p[f"{name}_weight"].T + p[f"{name}_bias"]

    def split(a):  # (B, T, H) -> (B, heads, T, d)
        return a.reshape(batch_size, seq_len, heads, -1).transpose(0, 2, 1, 3)

    xs = x.asnumpy()
    q, k, v = (split(project(xs, name)) for name in ("query", "key", "value"))
    keep = onp.arange(seq_len)[None, None, None, :] < valid_lens.asnumpy()[:, None, None, None]
    scores = onp.where(keep, q @ k.transpose(0, 1, 3, 2) / onp.sqrt(hiddens // heads), -onp.inf)
    weights = onp.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    context = (weights @ v).transpose(0, 2, 1, 3).reshape(batch_size, seq_len, hiddens)
    onp.testing.assert_allclose(got, project(context, "proj"), rtol=1e-4, atol=1e-5)


def test_pretraining_without_counts_returns_the_three_sums():
    net = make_net()
    batch = make_batch()
    with_counts = BERTForPretraining(net)(*batch)
    without = BERTForPretraining(net, count_correct=False)(*batch)
    assert without.mlm_num_correct is None and without.nsp_num_correct is None
    assert with_counts.mlm_num_correct is not None and with_counts.nsp_num_correct is not None
    for got, want in zip(without[:3], with_counts[:3]):
        assert got.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("options", [{}, BERT_STYLE])
def test_a_second_wrapper_of_a_hybridized_model_gives_the_same_sums(options):
    """An evaluation wrapper (counts on, not hybridized) of a model that a hybridized training
    wrapper traced, then the model alone: its blocks run as graphs of their own."""
    net = make_net(**options)
    batch = make_batch()
    training = BERTForPretraining(net, count_correct=False)
    training.hybridize(static_alloc=True, static_shape=True)
    trained = training(*batch)
    evaluated = BERTForPretraining(net)(*batch)
    for got, want in zip(evaluated[:3], trained):
        assert got.item() == pytest.approx(want.item(), rel=1e-5)
    encoded, mlm_logits, _ = net(*batch[:4])
    assert mlm_logits.shape == batch[3].shape + (VOCAB,)


@pytest.mark.parametrize("hybridize", [False, True])
def test_pretraining_outputs_are_named(hybridize):
    net = make_net()
    model = BERTForPretraining(net)
    if hybridize:
        model.hybridize(static_alloc=True, static_shape=True)
    batch = make_batch()
    out = model(*batch)
    assert isinstance(out, PretrainingOutput)
    assert out.mlm_num_preds.item() == float(batch[4].sum())
    assert out.nsp_num_correct.item() == pytest.approx(out[4].item())
    assert out.mlm_loss_sum.item() == pytest.approx(out[0].item())


@pytest.mark.parametrize("factory, layers, hiddens", [
    (bert_tiny, 2, 128), (bert_mini, 4, 256), (bert_small, 4, 512), (bert_base, 12, 768)])
def test_named_configurations_are_the_original_bert_sizes(factory, layers, hiddens):
    config = factory(30522)
    assert (config.vocab_size, config.num_layers, config.num_hiddens, config.num_heads,
            config.ffn_num_hiddens, config.max_len) == (30522, layers, hiddens, hiddens // 64,
                                                        4 * hiddens, 512)
    assert (config.activation, config.embedding_layer_norm, config.tie_mlm_weights,
            config.layer_norm_eps, config.dropout) == ("gelu", True, True, 1e-12, 0.1)
    assert factory(100, max_len=64, dropout=0.0) == BERTConfig.from_dict(
        dict(factory(100).to_dict(), max_len=64, dropout=0.0))


def test_d2l_small_is_the_default_and_from_config_builds_it():
    assert bert_d2l_small(VOCAB) == BERTModel(VOCAB).config == BERTConfig(vocab_size=VOCAB)
    net = BERTModel.from_config(bert_tiny(VOCAB, num_layers=1), check_token_ids=False,
                                backend="builtin")
    assert net.config == bert_tiny(VOCAB, num_layers=1)
    assert not net.check_token_ids and net.backend == "builtin"
    assert len(net.encoder.layers) == 1 and net.mlm.decoder is None  # tied decoder
    with pytest.raises(TypeError, match="config must be a BERTConfig or a dict"):
        BERTModel.from_config(["vocab_size", VOCAB])


def test_backend_is_fixed_per_model_and_checked(monkeypatch):
    monkeypatch.setenv("BERTPRETRAIN_KERNELS", "0")
    assert BERTModel(VOCAB).backend == "builtin"
    assert BERTModel(VOCAB, backend="fused").backend == "fused"
    monkeypatch.delenv("BERTPRETRAIN_KERNELS")
    assert BERTModel(VOCAB).backend == "fused"
    assert BERTModel(VOCAB, backend="builtin").backend == "builtin"
    with pytest.raises(ValueError, match="backend must be one of \\('fused', 'builtin'\\)"):
        BERTModel(VOCAB, backend="cuda")
    with pytest.raises(ValueError, match="got 'fused-v1'"):  # the per-op kernels of c41b35a and before
        BERTModel(VOCAB, backend="fused-v1")
    monkeypatch.setenv("BERTPRETRAIN_KERNELS", "yes")
    with pytest.raises(ValueError, match="BERTPRETRAIN_KERNELS='yes' is not understood"):
        BERTModel(VOCAB)


def test_attention_mask_is_one_typed_value():
    from bertpretrain.model import ops

    valid_lens, positions = np.array([3, 1], dtype="int32"), np.arange(4).astype("int32")
    for backend in ops.BACKENDS:
        mask = ops.for_backend(backend).attention_mask(mx.nd, valid_lens, positions)
        assert isinstance(mask, ops.AttentionMask)
        assert mask.valid_lens.dtype == onp.int32
        onp.testing.assert_array_equal(mask.valid_lens.asnumpy(), [3, 1])
        keep = mask.bias.asnumpy() == 0
        assert mask.bias.shape == (2, 4, 4) and (mask.bias.asnumpy()[~keep] <= -1e30).all()
        onp.testing.assert_array_equal(keep, onp.arange(4)[None, None, :] < [[[3]], [[1]]]
                                       + onp.zeros((2, 4, 1)))


def test_get_bert_encoding_encodes_a_sentence_and_a_pair():
    from bertpretrain.data import Vocab
    from bertpretrain.encoding import get_bert_encoding

    vocab = Vocab(["a", "crane", "is", "flying", "he", "just", "left"], min_freq=1)
    net = BERTModel(len(vocab), **dict(TINY, dropout=0.0))
    net.initialize(init.Xavier())
    single = get_bert_encoding(net, ["a", "crane", "is", "flying"], vocab=vocab)
    assert single.shape == (1, 6, TINY["num_hiddens"])
    pair = get_bert_encoding(net, ["a", "crane", "driver", "came"], ["he", "just", "left"], vocab=vocab)
    assert pair.shape == (1, 10, TINY["num_hiddens"])


@pytest.mark.parametrize("backend", ["fused", "builtin"])
def test_pre_layer_norm_layers_compute_x_plus_sublayer_of_layer_norm(backend):
    from bertpretrain.model.encoder import TransformerEncoderLayer
    from bertpretrain.model import ops
    config = BERTConfig(VOCAB, **dict(TINY, dropout=0.0), pre_layer_norm=True)
    op_layer = ops.for_backend(backend)
    layer = TransformerEncoderLayer(config, op_layer)
    mx.random.seed(5)
    layer.initialize(init.Normal(0.5))
    for name, param in layer.collect_params().items():  # LayerNorm scales and shifts away from 1 and 0
        if "gamma" in name or "beta" in name:
            param.set_data(np.random.normal(size=param.shape))
    x = np.random.normal(size=(2, 6, TINY["num_hiddens"]))
    mask = op_layer.attention_mask(mx.nd, np.array([6, 3], dtype="int32"), np.arange(6).astype("int32"))
    got = layer(x, mask).asnumpy()

    def norm(block, a):
        mean, var = a.mean(-1, keepdims=True), a.var(-1, keepdims=True)
        return (a - mean) / onp.sqrt(var + config.layer_norm_eps) * block.gamma.data().asnumpy() + \
            block.beta.data().asnumpy()

    def dense(block, a):
        return a @ block.weight.data().asnumpy().T + block.bias.data().asnumpy()

    xs = x.asnumpy()
    h = xs + layer.attention(np.array(norm(layer.attention_norm, xs)), mask).asnumpy()
    expected = h + dense(layer.ffn_out, onp.maximum(dense(layer.ffn_in, norm(layer.ffn_norm, h)), 0))
    onp.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    post = TransformerEncoderLayer(BERTConfig(VOCAB, **dict(TINY, dropout=0.0)), op_layer)  # same weights, post-LN
    post.initialize()
    for mine, theirs in zip(post.collect_params().values(), layer.collect_params().values()):
        mine.set_data(theirs.data())
    assert not onp.allclose(post(x, mask).asnumpy(), expected, atol=1e-2)


@pytest.mark.parametrize("with_loss", [False, True])
def test_pre_layer_norm_model_hybridizes_and_saves(tmp_path, with_loss):
    test_hybridized_matches_imperative(dict(pre_layer_norm=True), with_loss)
    net = make_net(pre_layer_norm=True)
    folder = save_pretrained(net, str(tmp_path / "m"))
    again = load_pretrained(folder)
    assert again.config.pre_layer_norm
    batch = make_batch()
    onp.testing.assert_allclose(again(*batch[:4])[1].asnumpy(), net(*batch[:4])[1].asnumpy(), rtol=1e-6)


def test_pre_layer_norm_models_end_in_a_layer_norm_and_post_ln_ones_do_not():
    assert BERTConfig(VOCAB, pre_layer_norm=True).final_layer_norm
    assert not BERTConfig(VOCAB).final_layer_norm and not BERTConfig(VOCAB, **BERT_STYLE).final_layer_norm
    assert not BERTConfig(VOCAB, pre_layer_norm=True, final_layer_norm=False).final_layer_norm
    with pytest.raises(ValueError, match="final_layer_norm=True needs pre_layer_norm=True"):
        BERTConfig(VOCAB, final_layer_norm=True)

    net = make_net(pre_layer_norm=True)
    norm = net.encoder.final_norm
    norm.gamma.set_data(np.random.normal(size=norm.gamma.shape))
    norm.beta.set_data(np.random.normal(size=norm.beta.shape))
    tokens, segments, valid_lens, positions, *_ = make_batch()
    encoded = net(tokens, segments, valid_lens, positions)[0].asnumpy()
    # the same model without its final LayerNorm gives the residual stream it normalises
    raw = BERTModel(VOCAB, **dict(TINY, dropout=0.0), pre_layer_norm=True, final_layer_norm=False)
    raw.initialize()
    for name, param in raw._collect_params_with_prefix().items():
        param.set_data(net._collect_params_with_prefix()[name].data())
    stream = raw(tokens, segments, valid_lens, positions)[0].asnumpy()
    mean, var = stream.mean(-1, keepdims=True), stream.var(-1, keepdims=True)
    expected = (stream - mean) / onp.sqrt(var + net.config.layer_norm_eps) * norm.gamma.data().asnumpy() + \
        norm.beta.data().asnumpy()
    onp.testing.assert_allclose(encoded, expected, rtol=1e-4, atol=1e-4)
    assert not onp.allclose(stream, expected, atol=1e-2)
    assert make_net().encoder.final_norm is None


def test_a_pre_ln_model_saved_before_final_layer_norm_existed_loads_without_one(tmp_path):
    old = make_net(pre_layer_norm=True, final_layer_norm=False)
    folder = tmp_path / "old"
    save_pretrained(old, str(folder))
    config = json.loads((folder / "config.json").read_text())
    del config["final_layer_norm"]  # the config.json of a model saved by an earlier version
    (folder / "config.json").write_text(json.dumps(config))
    again = load_pretrained(str(folder))
    assert again.config.pre_layer_norm and not again.config.final_layer_norm
    assert again.encoder.final_norm is None
    batch = make_batch()
    onp.testing.assert_allclose(again(*batch[:4])[0].asnumpy(), old(*batch[:4])[0].asnumpy(), rtol=1e-6)
    # and a checkpoint's old configuration compares equal to the same model today
    from bertpretrain.train.checkpoint import check_compatible
    check_compatible(str(folder), old.config, None)
    with pytest.raises(Exception, match="final_layer_norm: False in the checkpoint, True now"):
        check_compatible(str(folder), BERTConfig(VOCAB, **dict(TINY, dropout=0.0), pre_layer_norm=True), None)


def test_pre_ln_models_drop_out_their_embeddings_like_megatron():
    """Dropout after the embeddings: BERT (after its LayerNorm) and every pre-LN model; d2l has none."""
    from bertpretrain.model.encoder import BERTEmbeddings
    from bertpretrain.model import ops
    tokens = np.array(onp.random.RandomState(0).randint(0, VOCAB, (8, 24)), dtype="int32")
    positions = np.zeros_like(tokens) + np.arange(24, dtype="int32")
    for options, dropped in (({}, False), (BERT_STYLE, True), (dict(pre_layer_norm=True), True)):
        embeddings = BERTEmbeddings(BERTConfig(VOCAB, **dict(TINY, dropout=0.5), **options),
                                    ops.for_backend("builtin"))
        embeddings.initialize(init.Normal(1.0))
        with autograd.record(train_mode=True):
            out = embeddings(tokens, np.zeros_like(tokens), positions).asnumpy()
        assert ((out == 0).mean() > 0.3) == dropped, options


def test_a_sequence_length_beyond_the_positions_is_refused_with_a_memory_estimate():
    from bertpretrain.model import DEFAULT_POSITIONS, SequenceLengthError, check_max_len, estimate_step_memory
    check_max_len(DEFAULT_POSITIONS, batch_size=128)
    with pytest.raises(SequenceLengthError, match=r"max_len 100000 is more than the 512 positions .* 128 sequences "
                                                  r"of 100000 tokens would need about 302 GB of memory\. Use max_len "
                                                  r"512 or less"):
        check_max_len(100_000, batch_size=128)
    config = BERTConfig(vocab_size=100, max_len=2048)  # a configuration with more positions
    config.check_max_len(2048, batch_size=4)
    with pytest.raises(ValueError, match="--max-len 4096 is more than the 2048 positions of hf-folder"):
        config.check_max_len(4096, batch_size=4, name="--max-len", source="hf-folder")
    # linear in the tokens of a batch, plus one (T, T) score matrix
    small = BERTConfig(vocab_size=100)
    assert estimate_step_memory(small, 64, 512) == 2 * estimate_step_memory(small, 32, 512) - 4 * 512 * 512
