"""The optional Horovod backend (skipped unless Horovod is installed with MXNet support)."""
import importlib.util
import subprocess
import sys

import pytest

from bertpretrain import distributed


def test_missing_horovod_says_how_to_build_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ImportError, match="HOROVOD_WITH_MXNET=1 pip install --no-build-isolation horovod"):
        distributed.import_horovod()


ONE_PROCESS = """
import numpy as np
import bertpretrain
import mxnet as mx
from bertpretrain.data import load_data_wiki
from bertpretrain.model import BERTModel
from bertpretrain.train import train_bert
params = []
for kvstore in ("horovod", "device"):  # Horovod first: it keeps the fused kernels off (both runs builtin)
    train_iter, vocab = load_data_wiki(16, 32, dataset="wikitext-2-sample", seed=0)
    net = BERTModel(len(vocab), num_hiddens=32, ffn_num_hiddens=64, num_heads=2, num_layers=1, max_len=32,
                    dropout=0.0)
    train_bert(train_iter, net, devices=[mx.cpu()], num_steps=3, seed=1, progress=False, kvstore=kvstore,
               optimizer="sgd", lr=2.0)
    params.append([p.data().asnumpy() for p in net.collect_params().values()])
for a, b in zip(*params):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
print("same parameters")
"""


def test_one_process_horovod_trains_like_plain_training():
    if importlib.util.find_spec("horovod") is None:  # not imported here: see distributed.import_horovod
        pytest.skip("Horovod with MXNet support is not installed")
    # A fresh process: Horovod cannot join one where the fused kernels are already loaded.
    done = subprocess.run([sys.executable, "-c", ONE_PROCESS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "same parameters" in done.stdout, done.stderr
