"""train_bert over 2 processes on loopback: dist_sync (2 workers + 1 server, under bertpretrain.launch)
and, where Horovod is installed, horovod (under horovodrun)."""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from bertpretrain.data import PretrainingBatch, load_data_wiki
from bertpretrain.model import BERTModel
from bertpretrain.train import train_bert

HELPERS = Path(__file__).resolve().parent / "dist_helpers"
SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(HELPERS))
from bert_worker import TINY  # noqa: E402

STEPS = 3


class CombinedShards:
    """The global batches of a 2-worker job: worker 0's batch followed by worker 1's, step by step."""

    def __init__(self, loaders):
        self.loaders = loaders

    def __iter__(self):
        for parts in zip(*self.loaders):
            yield PretrainingBatch(*(mx.np.concatenate([part[i] for part in parts]) for i in range(7)))


def _launcher(backend):
    if backend == "dist_sync":
        return [sys.executable, "-m", "bertpretrain.launch", "-n", "2", "-s", "1", "--"]
    runner = Path(sys.executable).with_name("horovodrun")  # the one of this environment, else on PATH
    runner = str(runner) if runner.exists() else shutil.which("horovodrun")
    if importlib.util.find_spec("horovod") is None or not runner:
        pytest.skip("Horovod with MXNet support is not installed")
    return [runner, "-np", "2", "-H", "localhost:2", "--gloo", "--network-interface", "lo"]


def _run_job(backend, out_dir, steps, optimizer, lr, *checkpoint_dir):
    out_dir.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([*_launcher(backend), sys.executable, str(HELPERS / "bert_worker.py"), str(out_dir),
                           str(steps), optimizer, str(lr), backend, *map(str, checkpoint_dir)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return [np.load(out_dir / f"bert-rank{r}.npz") for r in (0, 1)]


@pytest.mark.parametrize("backend", ["dist_sync", "horovod"])
def test_two_workers_train_like_one_process_on_the_same_global_batches(tmp_path, backend):
    # Plain SGD: unlike Adam, its update scales with the loss, so a wrong normalisation would show.
    ranks = _run_job(backend, tmp_path, STEPS, "sgd", 2.0)
    names = [n for n in ranks[0].files if n.startswith("p")]
    for name in names:
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg="workers ended with different parameters")
    assert not np.allclose(ranks[0]["mlm_loss"], ranks[1]["mlm_loss"]), "both workers read the same data"

    shards = [load_data_wiki(16, 32, dataset="wikitext-2-sample", seed=0)[0].shard(r, 2) for r in (0, 1)]
    net = BERTModel(shards[0].dataset.vocab_size, **TINY)
    mx.random.seed(1)  # what train_bert does before initialising: the workers start from these values
    net.initialize(mx.init.Xavier(), ctx=[mx.cpu(0), mx.cpu(1)])
    initial = [p.data().asnumpy() for p in net.collect_params().values()]
    train_bert(CombinedShards(shards), net, [mx.cpu(0), mx.cpu(1)], STEPS, seed=1, progress=False,
               optimizer="sgd", lr=2.0)
    for i, (p0, reference) in enumerate(zip(initial, (p.data().asnumpy() for p in net.collect_params().values()))):
        change, worker_change = reference - p0, ranks[0][f"p{i}"] - p0
        assert np.linalg.norm(worker_change - change) <= 1e-2 * np.linalg.norm(change) + 1e-7


def test_every_worker_resumes_from_rank_0s_checkpoint(tmp_path):
    straight = _run_job("dist_sync", tmp_path / "straight", 4, "adam", 0.01)
    first = _run_job("dist_sync", tmp_path / "first", 2, "adam", 0.01, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step-00000002"
    resumed = _run_job("dist_sync", tmp_path / "resumed", 4, "adam", 0.01, tmp_path / "ckpt")
    np.testing.assert_allclose(resumed[0]["mlm_loss"], straight[0]["mlm_loss"], rtol=1e-5)
    for rank in (0, 1):  # the history of steps 1-2 is rank 0's (from the checkpoint); 3-4 each worker's own
        np.testing.assert_allclose(resumed[rank]["mlm_loss"][2:], straight[rank]["mlm_loss"][2:], rtol=1e-5)
        np.testing.assert_allclose(first[rank]["mlm_loss"], straight[rank]["mlm_loss"][:2], rtol=1e-5)
        for name in (n for n in straight[rank].files if n.startswith("p")):
            np.testing.assert_allclose(resumed[rank][name], straight[rank][name], rtol=1e-4, atol=1e-6)
