"""Errors a user can cause, through the real command: one paragraph ``error: ...`` naming the file, argument or
setting and the way out, exit status 1, and never a traceback (issue 19)."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dist_helpers.jobs import Launcher, assert_nothing_left, launcher_env

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--dataset", "wikitext-2-sample", "--num-steps", "2", "--batch-size", "16", "--max-len", "32",
         "--no-progress"]
TIMEOUT_S = 240


def console_script():
    """This Python's ``bertpretrain`` console script (skip where the package is not installed with it)."""
    script = Path(sys.executable).with_name("bertpretrain")
    if not script.exists():
        pytest.skip(f"no bertpretrain console script beside {sys.executable}: pip install -e . first")
    return script


def command(args, cwd, **env):
    """Run ``bertpretrain ARGS`` found on PATH (this Python's bin folder first), with this checkout's code."""
    environ = launcher_env(PATH=os.pathsep.join([str(console_script().parent), os.environ.get("PATH", "")]), **env)
    done = subprocess.run(["bertpretrain", *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    return done.returncode, done.stdout, done.stderr


def assert_one_paragraph(stderr, *phrases):
    """stderr ends with one ``error: ...`` line holding every phrase, and holds no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


def test_kernels_required_without_a_compiler(tmp_path):
    status, _, err = command(["pretrain", *QUICK, "--output-dir", "run"], tmp_path, BERTPRETRAIN_KERNELS="1",
                             CXX="/nonexistent", BERTPRETRAIN_HOME=str(tmp_path / "home"))
    assert status == 1
    assert_one_paragraph(err, "BERTPRETRAIN_KERNELS=1 requires the fused kernels", "CXX='/nonexistent'",
                         "BERTPRETRAIN_KERNELS=0")


def test_a_kernels_setting_that_means_nothing(tmp_path):
    status, _, err = command(["pretrain", *QUICK, "--output-dir", "run"], tmp_path,
                             BERTPRETRAIN_KERNELS="yes-please")
    assert status == 1
    assert_one_paragraph(err, "BERTPRETRAIN_KERNELS='yes-please' is not understood", "0", "1", "unset it")


def test_dist_sync_without_the_launcher_names_a_command_that_runs(tmp_path):
    status, _, err = command(["pretrain", *QUICK, "--output-dir", "run", "--kvstore", "dist_sync"], tmp_path)
    assert status == 1
    line = assert_one_paragraph(err, "kvstore 'dist_sync' needs the scheduler, servers and workers",
                                "bertpretrain launch -n 2 -- bertpretrain pretrain --dataset", "--kvstore device")
    suggested = shlex.split(re.search(r"e\.g\.  (.*?)  \(", line).group(1))
    assert suggested[:5] == ["bertpretrain", "launch", "-n", "2", "--"] and "cli.py" not in line

    # The way out, as given: the job runs and rank 0 writes its outputs.
    environ = launcher_env(PATH=os.pathsep.join([str(console_script().parent), os.environ.get("PATH", "")]))
    done = subprocess.run(suggested, cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "job done: all 2 workers exited with code 0" in done.stderr
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert (tmp_path / "run" / "model" / "model.params").is_file()


def test_a_corrupted_checkpoint_resumed_under_dist_sync(tmp_path):
    console_script()
    assert command(["pretrain", *QUICK, "--output-dir", "run"], tmp_path)[0] == 0
    params = tmp_path / "run" / "checkpoints" / "step-00000002" / "model.params"
    data = bytearray(params.read_bytes())
    data[len(data) // 2] ^= 0xFF
    params.write_bytes(bytes(data))

    more = [a if a != "2" else "4" for a in QUICK]
    launcher = Launcher(["-n", "2", "--", "bertpretrain", "pretrain", *more, "--output-dir", "run", "--resume",
                         "--kvstore", "dist_sync"], tmp_path,
                        env=launcher_env(PATH=os.pathsep.join([str(console_script().parent),
                                                                os.environ.get("PATH", "")])))
    status, _ = launcher.finish(TIMEOUT_S)
    assert status == 1, launcher.log
    output = launcher.output
    assert "Traceback" not in output, output[-4000:]
    errors = [line for line in output.splitlines() if "] error: " in line]
    assert errors and all("checkpoint file run/checkpoints/step-00000002/model.params cannot be trusted" in line
                          for line in errors), output[-4000:]
    assert "there is no earlier complete checkpoint" in errors[0]
    assert_nothing_left(launcher)
