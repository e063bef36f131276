"""The optional Horovod backend, run for real: ``horovodrun`` with 2 processes (Gloo) on this machine.

Horovod must be built against MXNet, so it lives in a Python of its own (the ``horovod_python`` fixture of
conftest.py: ``$BERTPRETRAIN_HOROVOD_PYTHON``, else ``.venv-horovod-check/bin/python``, which ``.ci/run``
makes from ``tests/requirements-horovod-check.txt``); without one the tests that run Horovod skip and say
how to build it. The checkout's ``src/`` comes first on that Python's path, so it is this checkout's code
that runs.
"""
import importlib.util
import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bertpretrain import distributed
from bertpretrain.model import load_pretrained
from dist_helpers.jobs import horovod_env

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "dist_helpers" / "horovod_pretrain.py"
TIMEOUT_S = 300
SIZES = ["--dataset", "wikitext-2-sample", "--num-steps", "6", "--batch-size", "16", "--max-len", "32",
         "--no-progress", "--output-dir", "run"]


def test_missing_horovod_says_how_to_build_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ImportError, match="HOROVOD_WITH_MXNET=1 pip install --no-build-isolation horovod"):
        distributed.import_horovod()


def documented_horovodrun_command():
    """The ``horovodrun ... bertpretrain pretrain ...`` command of docs/distributed.md, as argv."""
    text = (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8")
    (command,) = re.findall(r"^(horovodrun [^\n]*bertpretrain pretrain[^\n]*)$", text, re.M)
    return shlex.split(command)


def on_this_machine(command, processes=2):
    """``command`` (horovodrun ...) with ``processes`` processes on this machine over Gloo."""
    command = list(command)
    for flag, value in (("-np", str(processes)), ("-H", f"localhost:{processes}")):
        command[command.index(flag) + 1] = value
    return [command[0], "--gloo", *command[1:]]


def run(command, cwd, python):
    done = subprocess.run(command, cwd=cwd, env=horovod_env(python), capture_output=True, text=True, timeout=TIMEOUT_S)
    return done.returncode, done.stdout + done.stderr


def assert_rank_0_saved_everything(run_dir, steps):
    assert sorted(p.name for p in (run_dir / "model").iterdir()) == ["config.json", "model.params", "tokenizer.json"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{steps:08d}"
    assert (run_dir / "checkpoints" / f"step-{steps:08d}" / "state.json").is_file()
    saved = json.loads((run_dir / "history.json").read_text())
    assert saved["history"]["workers"] == 2 and saved["history"]["step"] == list(range(1, steps + 1))
    assert saved["summary"]["checkpoint"].endswith(f"step-{steps:08d}") and saved["summary"]["eval"]


def test_the_documented_horovodrun_command_finishes_and_saves(horovod_python, tmp_path):
    # Rank 1 used to leave after its last step and shut Horovod down under rank 0's final evaluation: exit 1
    # and nothing saved.
    command = on_this_machine(documented_horovodrun_command()) + SIZES
    assert command[command.index("--gloo") + 5:][:3] == ["bertpretrain", "pretrain", "--kvstore"], command
    status, output = run(command, tmp_path, horovod_python)
    assert status == 0, output[-6000:]
    assert "Horovod has been shut down" not in output and "Traceback" not in output
    assert "step 6 eval: mlm loss" in output
    assert_rank_0_saved_everything(tmp_path / "run", 6)


def test_two_horovod_processes_end_with_the_same_parameters_as_the_saved_model(horovod_python, tmp_path):
    command = on_this_machine(documented_horovodrun_command())
    cut = command.index("bertpretrain")
    assert command[cut + 1] == "pretrain"
    command = [*command[:cut], horovod_python, str(HELPER), str(tmp_path), *command[cut + 2:], *SIZES]
    status, output = run(command, tmp_path, horovod_python)
    assert status == 0, output[-6000:]
    assert_rank_0_saved_everything(tmp_path / "run", 6)
    ranks = [np.load(tmp_path / f"params-rank{rank}.npz") for rank in (0, 1)]
    assert sorted(ranks[0].files) == sorted(ranks[1].files) and ranks[0].files
    for name in ranks[0].files:
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
    saved = load_pretrained(str(tmp_path / "run" / "model"))._collect_params_with_prefix()
    assert sorted(saved) == sorted(ranks[1].files)
    for name, param in saved.items():
        np.testing.assert_array_equal(param.data().asnumpy(), ranks[1][name], err_msg=name)


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


def test_one_process_horovod_trains_like_plain_training(horovod_python):
    # A fresh process: Horovod cannot join one where the fused kernels are already loaded.
    done = subprocess.run([horovod_python, "-c", ONE_PROCESS], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=horovod_env(horovod_python))
    assert done.returncode == 0 and "same parameters" in done.stdout, done.stderr
