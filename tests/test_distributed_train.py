"""train_bert over 2 processes on loopback: dist_sync (2 workers + 1 server, under bertpretrain.launch)
and, where Horovod is installed, horovod (under horovodrun)."""
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from bertpretrain import launch
from bertpretrain.data import PretrainingBatch, load_data_wiki
from bertpretrain.model import BERTModel
from bertpretrain.train import train_bert

HELPERS = Path(__file__).resolve().parent / "dist_helpers"
sys.path.insert(0, str(HELPERS))
from bert_worker import MODEL  # noqa: E402
from jobs import assert_nothing_left, horovod_env, kill_leftovers, run_launcher  # noqa: E402

STEPS = 3
JOB_TIMEOUT_S = 240  # a job that reaches its last step used to hang forever


class CombinedShards:
    """The global batches of a 2-worker job: worker 0's batch followed by worker 1's, step by step."""

    def __init__(self, loaders):
        self.loaders = loaders

    def __iter__(self):
        for parts in zip(*self.loaders):
            yield PretrainingBatch(*(mx.np.concatenate([part[i] for part in parts]) for i in range(7)))


def _run_job(backend, out_dir, steps, optimizer, lr, *checkpoint_dir, python=sys.executable):
    """Run bert_worker.py on 2 workers (with Horovod: under the horovodrun of ``python``, a Python with Horovod);
    the parameters of rank 0 (the others leave without reading theirs, as `bertpretrain pretrain` does) and every
    rank's per-step losses."""
    out_dir.mkdir(exist_ok=True)
    worker = [python, str(HELPERS / "bert_worker.py"), str(out_dir), str(steps), optimizer, str(lr),
              backend, *map(str, checkpoint_dir)]
    if backend == "dist_sync":
        status, _, launcher = run_launcher(["-n", "2", "-s", "1", "--", *worker], out_dir, timeout=JOB_TIMEOUT_S)
        assert status == 0, launcher.log + launcher.output
        assert_nothing_left(launcher)
    else:
        horovodrun = [str(Path(python).with_name("horovodrun")), "-np", "2", "-H", "localhost:2", "--gloo",
                      "--network-interface", "lo"]
        job = subprocess.Popen([*horovodrun, *worker], env=horovod_env(python), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = job.communicate(timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill_leftovers([job.pid])
            output, _ = job.communicate()
            pytest.fail(f"horovodrun still running after {JOB_TIMEOUT_S} s:\n{output}")
        assert job.returncode == 0, output
    return [dict(np.load(out_dir / f"bert-rank{r}.npz")) for r in (0, 1)]


@pytest.mark.parametrize("backend", ["dist_sync", "horovod"])
def test_two_workers_train_like_one_process_on_the_same_global_batches(tmp_path, backend, request):
    # Plain SGD: unlike Adam, its update scales with the loss, so a wrong normalisation would show.
    python = request.getfixturevalue("horovod_python") if backend == "horovod" else sys.executable
    ranks = _run_job(backend, tmp_path, STEPS, "sgd", 2.0, python=python)
    assert not np.allclose(ranks[0]["mlm_loss"], ranks[1]["mlm_loss"]), "both workers read the same data"

    shards = [load_data_wiki(16, 32, dataset="wikitext-2-sample", seed=0)[0].shard(r, 2) for r in (0, 1)]
    net = BERTModel(shards[0].dataset.vocab_size, **MODEL)
    mx.random.seed(1)  # what train_bert does before initialising: the workers start from these values
    net.initialize(mx.init.Xavier(), ctx=[mx.cpu(0), mx.cpu(1)])
    initial = [p.data().asnumpy() for p in net.collect_params().values()]
    train_bert(CombinedShards(shards), net, devices=[mx.cpu(0), mx.cpu(1)], num_steps=STEPS, seed=1, progress=False,
               optimizer="sgd", lr=2.0, precision="fp32")  # as the workers (Horovod's have no kernels: fp32)
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
    for name in (n for n in straight[0] if n.startswith("p")):
        np.testing.assert_allclose(resumed[0][name], straight[0][name], rtol=1e-4, atol=1e-6)


def test_train_bert_reports_its_progress_to_the_launcher(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(launch.PROGRESS_ENV, "1")  # what the launcher sets for its workers
    train_iter, vocab = load_data_wiki(16, 32, dataset="wikitext-2-sample", seed=0)
    eval_iter, _ = load_data_wiki(16, 32, dataset="wikitext-2-sample", split="valid", vocab=vocab, shuffle=False)
    train_bert(train_iter, BERTModel(len(vocab), **MODEL), devices=[mx.cpu()], num_steps=2, seed=1, progress=False,
               eval_iter=eval_iter, checkpoint_dir=tmp_path)
    reports = [line.split(" ", 1)[1] for line in capsys.readouterr().err.splitlines()
               if line.startswith(launch.PROGRESS_MARK + " ")]
    assert reports == ["step 1", "step 2", "eval 2", "checkpoint 2", "done"]
