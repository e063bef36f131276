"""Run bertpretrain.launch as a subprocess in tests: collect its messages as they come, bound every
run by a timeout, and make sure no process of the job is left behind on this shared machine.

On a timeout or a failed wait the launcher gets SIGTERM (it stops its job), then every process
group it reported is killed.
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
RUN_TIMEOUT_S = 60


def launcher_env(**extra):
    """This environment, with this checkout's src/ first on PYTHONPATH and ``extra`` added."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def started_pids(log):
    """{process name: pid} from the launcher's "started NAME (pid N)" messages."""
    return {name: int(pid) for name, pid in re.findall(r"started (.+?) \(pid (\d+)\)", log)}


def running(pids):
    """The pids (or process groups) among ``pids`` that still have a running, non-zombie process,
    read from /proc, independently of the launcher's own check."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rsplit(b")", 1)[1].split()[:3]
        if state not in (b"Z", b"X"):
            found |= {int(entry), int(pgrp)} & set(pids)
    return found


def kill_leftovers(pids):
    """Last resort after a failed test: SIGKILL the process groups of ``pids``."""
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


class Launcher:
    """A launcher subprocess whose stderr is collected as it comes (to wait for messages)."""

    def __init__(self, args, cwd, env=None, program=(sys.executable, "-m", "bertpretrain.launch")):
        self.proc = subprocess.Popen([*program, *args], cwd=cwd,
                                     env=env or launcher_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.started = time.monotonic()
        self.out, self.err = [], []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line)

    @property
    def log(self):
        return "".join(self.err)

    @property
    def output(self):
        return "".join(self.out)

    def wait_for(self, pattern, timeout=RUN_TIMEOUT_S):
        """Wait until the launcher's messages match ``pattern``; fail (stopping it) on timeout."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.log):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.abort()
                pytest.fail(f"launcher never said {pattern!r}; it said:\n{self.log}")
            time.sleep(0.05)

    def finish(self, timeout=RUN_TIMEOUT_S):
        """Wait for the launcher to exit; returns (exit status, seconds since it started)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.abort()
            pytest.fail(f"launcher still running after {timeout} s; it said:\n{self.log}")
        for reader in self._readers:
            reader.join(timeout=5)
        return self.proc.returncode, time.monotonic() - self.started

    def abort(self):
        """Stop the launcher (which stops its job), then kill whatever it reported."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        kill_leftovers(started_pids(self.log).values())


def run_launcher(args, cwd, env=None, timeout=RUN_TIMEOUT_S, **options):
    """Run the launcher to the end; returns (exit status, seconds, Launcher).  ``options`` go to
    :class:`Launcher`."""
    launcher = Launcher(args, cwd, env, **options)
    status, seconds = launcher.finish(timeout)
    return status, seconds, launcher


def assert_nothing_left(launcher, extra_pids=()):
    pids = set(started_pids(launcher.log).values()) | set(extra_pids)
    assert pids, f"the launcher reported no process:\n{launcher.log}"
    left = running(pids)
    kill_leftovers(left)
    assert not left, f"processes left running: {sorted(left)}\n{launcher.log}"


def horovod_env(python):
    """The environment to run Horovod with ``python``: its bin folder first on PATH (its horovodrun and
    bertpretrain), this checkout's src/ first on PYTHONPATH (this checkout's code runs), one OpenMP thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PATH"] = os.pathsep.join([str(Path(python).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env
