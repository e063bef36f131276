"""BERT's optimizer: the AdamW that train_bert builds takes PyTorch's steps, and decays no LayerNorm or bias."""
import subprocess

import numpy as np
import pytest

import mxnet as mx
from mxnet import autograd

from bertpretrain.data import load_data_wiki
from bertpretrain.model import BERTForPretraining, BERTModel
from bertpretrain.train import TrainingConfig
from bertpretrain.train.loop import _parameters_by_structure
from bertpretrain.train.optimizer import make_trainer
from bertpretrain.train.strategy import LocalStrategy

TINY = dict(num_hiddens=32, ffn_num_hiddens=64, num_heads=2, num_layers=1, max_len=32, dropout=0.0,
            activation="gelu", embedding_layer_norm=True, tie_mlm_weights=True, pre_layer_norm=True)


def test_adamw_steps_equal_torch_adamw_on_the_same_parameters_and_gradients(tmp_path):
    from test_hf import REFERENCE, _reference_python
    python = _reference_python()
    if python is None:
        pytest.skip("transformers and CPU torch are not installed where tests/test_hf.py looks")
    train_iter, vocab = load_data_wiki(16, 32, dataset="wikitext-2-sample", seed=0)
    model = BERTForPretraining(BERTModel(len(vocab), **TINY))
    model.initialize(mx.init.Normal(0.05))
    params = _parameters_by_structure(model)
    config = TrainingConfig(optimizer="adamw", lr=2e-3, weight_decay=0.1)
    trainer = make_trainer(params, config, LocalStrategy("device", [mx.cpu()]), config.lr)
    arrays = {f"p:{name}": p.data().asnumpy() for name, p in params.items()}
    arrays.update(lr=config.lr, weight_decay=config.decay(), steps=3)
    for step, batch in zip(range(1, 4), train_iter):  # real gradients of the pretraining loss
        with autograd.record():
            out = model(*batch)
            loss = out.mlm_loss_sum / out.mlm_num_preds + out.nsp_loss_sum / batch.tokens.shape[0]
        loss.backward()
        arrays.update({f"g{step}:{name}": p.grad().asnumpy() for name, p in params.items()})
        trainer.update(1)
    np.savez(tmp_path / "in.npz", **arrays)
    done = subprocess.run([python, str(REFERENCE), "adamw", str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = np.load(tmp_path / "out.npz")
    undecayed = [name for name, p in params.items() if p.wd_mult == 0]
    assert undecayed and all(params[name].data().ndim == 1 for name in undecayed)  # biases and LayerNorm
    for name, p in params.items():
        start = arrays[f"p:{name}"]
        assert not np.allclose(p.data().asnumpy(), start), name
        np.testing.assert_allclose(p.data().asnumpy(), expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
