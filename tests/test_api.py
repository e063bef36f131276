"""The d2l-style face of the package and the corners a notebook user hits first."""
import logging
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import bertpretrain as bp
from bertpretrain import cli
from bertpretrain.data import load_data_wiki
from bertpretrain.model import BERTModel, save_pretrained
from bertpretrain.train import train_bert

TINY = dict(num_hiddens=32, ffn_num_hiddens=64, num_heads=2, num_layers=1, max_len=32, dropout=0.0)
D2L_FACE = ("load_data_wiki", "Vocab", "DATA_HUB", "download_extract", "BERTModel", "BERTForPretraining",
            "train_bert", "evaluate_bert", "get_bert_encoding", "save_pretrained", "load_pretrained",
            "data", "model", "train")


def sample_loader(batch_size=8):
    return load_data_wiki(batch_size, 32, dataset="wikitext-2-sample", seed=0)


def tiny_net(vocab_size):
    net = BERTModel(vocab_size, **TINY)
    net.initialize(mx.init.Xavier())
    return net


def test_the_d2l_names_are_attributes_of_the_package_and_are_imported_lazily():
    code = ("import sys, bertpretrain as bp; lazy = 'bertpretrain.train' not in sys.modules; "
            f"missing = [n for n in {D2L_FACE!r} if not hasattr(bp, n)]; print(lazy, missing)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "[]"], "names missing, or import bertpretrain imported train"
    assert bp.train_bert is train_bert and bp.model.BERTModel is BERTModel and bp.Vocab is bp.data.Vocab
    assert set(D2L_FACE) <= set(dir(bp))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        bp.no_such_name


def test_pred_positions_none_works_after_hybridize():
    net = tiny_net(50)
    net.hybridize(static_alloc=True, static_shape=True)
    tokens = mx.np.array(np.random.RandomState(0).randint(0, 50, (2, 8)), dtype="int32")
    segments, valid_lens = mx.np.zeros((2, 8), dtype="int32"), mx.np.array([8, 5], dtype="int32")
    positions = mx.np.array([[1, 2], [3, 4]], dtype="int32")
    encoded, mlm, nsp = net(tokens, segments, valid_lens, positions)  # the cached graph has 4 inputs
    encoded_alone, none, nsp_alone = net(tokens, segments, valid_lens)
    assert none is None and encoded_alone.shape == (2, 8, 32) and nsp_alone.shape == (2, 2)
    np.testing.assert_allclose(encoded_alone.asnumpy(), encoded.asnumpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nsp_alone.asnumpy(), nsp.asnumpy(), rtol=1e-5, atol=1e-6)
    again = net(tokens, segments, valid_lens, positions)[1]  # and back to the full graph
    np.testing.assert_allclose(again.asnumpy(), mlm.asnumpy(), rtol=1e-5, atol=1e-6)


def test_get_bert_encoding_requires_the_vocabulary_by_its_signature():
    with pytest.raises(TypeError, match="vocab"):
        bp.get_bert_encoding(tiny_net(50), ["a", "crane"])


def test_get_bert_encoding_computes_on_the_nets_device():
    _, vocab = sample_loader()
    net = BERTModel(len(vocab), **TINY)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu(1))
    with mx.Context(mx.cpu(2)):  # a current context the net has no parameters on
        encoded = bp.get_bert_encoding(net, ["a", "crane", "is", "flying"], ["it", "left"], vocab=vocab)
    assert encoded.shape == (1, 9, 32) and encoded.ctx == mx.cpu(1)


def test_load_pretrained_gives_back_the_model_and_its_vocabulary(tmp_path):
    _, vocab = sample_loader()
    net = tiny_net(len(vocab))
    save_pretrained(net, tmp_path / "model", vocab=vocab)
    loaded, loaded_vocab = bp.load_pretrained(tmp_path / "model")
    assert loaded_vocab.idx_to_token == vocab.idx_to_token
    tokens = ["a", "crane", "is", "flying"]
    np.testing.assert_allclose(bp.get_bert_encoding(loaded, tokens, vocab=loaded_vocab).asnumpy(),
                               bp.get_bert_encoding(net, tokens, vocab=vocab).asnumpy(), rtol=1e-6)


def test_load_pretrained_without_a_saved_vocabulary_says_how_to_save_one(tmp_path):
    save_pretrained(tiny_net(50), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"vocab\.json not found: .*save_pretrained\(net, folder, "
                                                r"vocab=vocab\)"):
        bp.load_pretrained(tmp_path)


def test_log_interval_zero_logs_only_the_last_step(caplog):
    train_iter, vocab = sample_loader()
    with caplog.at_level(logging.INFO, logger="bertpretrain.train.loop"):
        history = train_bert(train_iter, BERTModel(len(vocab), **TINY), devices=[mx.cpu()], num_steps=3, seed=0,
                             progress=False, log_interval=0)
    assert history["step"] == [1, 2, 3]
    assert [r.getMessage().split(":")[0] for r in caplog.records if "mlm loss" in r.getMessage()] == ["step 3/3"]


def test_train_bert_reads_each_device_back_once_per_step(monkeypatch):
    # Besides the batch itself (host memory), the step's sums are the one read-back a step needs;
    # checking token ids on the devices would add one per device.
    train_iter, vocab = sample_loader()
    net = BERTModel(len(vocab), **TINY)
    train_bert(train_iter, net, devices=[mx.cpu(0), mx.cpu(1)], num_steps=1, seed=0, progress=False)  # builds the graph
    batches = [batch for batch, _ in zip(train_iter, range(4))]
    host = {id(field) for batch in batches for field in batch}
    reads, real = [], mx.np.ndarray.asnumpy

    def counting_asnumpy(array):
        if id(array) not in host:
            reads.append(array.shape)
        return real(array)

    monkeypatch.setattr(mx.np.ndarray, "asnumpy", counting_asnumpy)
    train_bert(batches, net, devices=[mx.cpu(0), mx.cpu(1)], num_steps=4, seed=0, progress=False)
    assert reads == [(5,)] * 4, f"reads of computed arrays in 4 steps: {reads}"
    assert net.check_token_ids, "train_bert left the model's own token-id check off"


def test_train_bert_still_rejects_token_ids_beyond_the_vocabulary():
    train_iter, vocab = sample_loader()
    with pytest.raises(ValueError, match=r"tokens contains ids in \[0, \d+\] but vocab_size=10"):
        train_bert(train_iter, BERTModel(10, **TINY), devices=[mx.cpu()], num_steps=2, seed=0, progress=False)


def test_an_interrupted_worker_of_rank_above_0_exits_130(monkeypatch, capsys):
    monkeypatch.setattr(cli, "run_pretraining", lambda options, report: {"dataset": "x", "rank": 1, "interrupted": True})
    assert cli.pretrain_main(["--no-progress"]) == 130
    assert "worker 1 interrupted" in capsys.readouterr().out
