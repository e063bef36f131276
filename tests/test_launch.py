"""Tests of the distributed launcher (bertpretrain.launch) and the training-loop helpers
(bertpretrain.distributed).

The end-to-end tests start real dist_sync jobs on the loopback interface (scheduler, 1 server,
2 workers) with the scripts in tests/dist_helpers/.  Every launcher run is bounded by a timeout
after which the test stops the launcher and the processes it reported, and every test that
starts processes checks that none is left behind.
"""
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as onp
import pytest

from bertpretrain import distributed, launch

HELPERS = Path(__file__).resolve().parent / "dist_helpers"
sys.path.insert(0, str(HELPERS))
import tiny_model  # noqa: E402
from jobs import (RUN_TIMEOUT_S, Launcher, assert_nothing_left, launcher_env, run_launcher,  # noqa: E402
                  started_pids)

WORKER = [sys.executable, str(HELPERS / "train_worker.py")]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


# --------------------------------------------------------------------------------- end to end

def test_two_workers_train_like_one_process(tmp_path):
    status, _, launcher = run_launcher(["-n", "2", "-s", "1", "--", *WORKER, str(tmp_path)], tmp_path)

    assert status == 0, launcher.log + launcher.output
    assert "job done: all 2 workers exited with code 0" in launcher.log
    assert re.search(r"^\[worker [01]\] worker rank 0 of 2: done$", launcher.output, re.M)
    assert_nothing_left(launcher)
    results = [onp.load(tmp_path / f"rank{rank}.npz") for rank in (0, 1)]
    assert [int(result["num_workers"]) for result in results] == [2, 2]
    reference = tiny_model.train(None)  # one process, same init, the same global batches
    for name in ("weight", "bias"):
        onp.testing.assert_array_equal(results[0][name], results[1][name])
        onp.testing.assert_allclose(results[0][name], reference[name], rtol=1e-5, atol=1e-6)
        # it trained: a wrong batch size (the local one) would not match, but neither would no step
        assert not onp.allclose(reference[name], getattr(tiny_model.make_net(), name).data().asnumpy())


@pytest.mark.parametrize("how, status, words", [
    ("exit3", 3, "exited with code 3"),
    ("sigkill", 128 + signal.SIGKILL, "was killed by signal 9 (SIGKILL)"),
    ("raise", 1, "exited with code 1"),  # an exception, turned into an exit by exit_on_error
])
def test_a_dead_worker_stops_the_whole_job(tmp_path, how, status, words):
    env = launcher_env(TINY_FAIL=f"1:1:{how}", TINY_GRANDCHILD=str(tmp_path / "grandchild"))
    got, seconds, launcher = run_launcher(["-n", "2", "-s", "1", "--grace", "3", "--", *WORKER,
                                           str(tmp_path)], tmp_path, env)

    assert got == status, launcher.log
    assert seconds < 30
    pids = started_pids(launcher.log)
    died = re.search(rf"job FAILED: (worker [01]) \(pid (\d+)\) {re.escape(words)}", launcher.log)
    assert died, launcher.log
    assert pids[died[1]] == int(died[2])
    # the workers' own children (a `sleep` each) are stopped with their process group
    grandchildren = [int(path.read_text()) for path in tmp_path.glob("grandchild.*")]
    assert len(grandchildren) == 2
    assert_nothing_left(launcher, grandchildren)


@pytest.mark.parametrize("signum, says", [
    (signal.SIGINT, "got SIGINT: passing it on to the workers"),  # they die of it: nothing more to wait for
    (signal.SIGTERM, "got SIGTERM: stopping the job"),
])
def test_a_signal_to_the_launcher_stops_the_job(tmp_path, signum, says):
    launcher = Launcher(["-n", "2", "-s", "1", "--", *SLEEPER], tmp_path)
    launcher.wait_for(r"started worker 1 \(pid")
    time.sleep(1)  # let the scheduler and server get into their server loop
    launcher.proc.send_signal(signum)
    status, _ = launcher.finish(timeout=30)

    assert status == 128 + signum, launcher.log
    assert says in launcher.log
    assert_nothing_left(launcher)


def test_a_second_ctrl_c_stops_the_job_at_once(tmp_path):
    ignoring = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                                      "print('ready', flush=True); time.sleep(600)"]
    launcher = Launcher(["-n", "2", "-s", "1", "--grace", "1", "--", *ignoring], tmp_path)
    launcher.wait_for(r"started worker 1 \(pid")
    while launcher.output.count("ready") < 2:
        time.sleep(0.05)
    launcher.proc.send_signal(signal.SIGINT)
    launcher.wait_for("passing it on to the workers")
    time.sleep(1)
    assert launcher.proc.poll() is None, "the launcher waits for the workers to stop after their step"
    launcher.proc.send_signal(signal.SIGINT)
    status, _ = launcher.finish(timeout=30)
    assert status == 130 and "got SIGINT again: stopping the job" in launcher.log, launcher.log
    assert_nothing_left(launcher)


def test_ctrl_c_on_the_launcher_lets_rank_0_checkpoint(tmp_path):
    # As Ctrl-C on `bertpretrain pretrain`: the workers stop after the same step, rank 0 saves a checkpoint, all
    # exit together. The launcher used to SIGTERM them at once, and nothing was saved.
    pretrain = [*bertpretrain_command(), "pretrain", "--kvstore", "dist_sync", "--data-dir", str(SAMPLE),
                "--batch-size", "16", "--max-len", "32", "--num-steps", "100000", "--no-progress",
                "--output-dir", "run"]
    launcher = Launcher(["-n", "2", "-s", "1", "--", *pretrain], tmp_path,
                        program=(*bertpretrain_command(), "launch"))
    deadline = time.monotonic() + DOC_TIMEOUT_S
    while "step 20/100000" not in launcher.output:
        if time.monotonic() > deadline or launcher.proc.poll() is not None:
            launcher.abort()
            pytest.fail(f"no step 20:\n{launcher.log}\n{launcher.output}")
        time.sleep(0.05)
    launcher.proc.send_signal(signal.SIGINT)
    status, _ = launcher.finish(timeout=DOC_TIMEOUT_S)

    assert status == 130, launcher.log + launcher.output
    step = int(re.search(r"interrupted at step (\d+); resume with --resume", launcher.output).group(1))
    assert 20 <= step < 100000
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == f"step-{step:08d}"
    from bertpretrain.train import checkpoint
    folder = str(checkpoints / f"step-{step:08d}")
    checkpoint.verify_checkpoint(folder, checkpoint.read_state(folder))
    assert "Traceback" not in launcher.output and "job interrupted" in launcher.log
    assert_nothing_left(launcher)


def test_a_dead_server_stops_the_whole_job(tmp_path):
    launcher = Launcher(["-n", "2", "-s", "1", "--", *SLEEPER], tmp_path)
    launcher.wait_for(r"started worker 1 \(pid")
    server = started_pids(launcher.log)["server 0"]
    os.kill(server, signal.SIGKILL)
    status, _ = launcher.finish(timeout=30)

    assert status == 128 + signal.SIGKILL, launcher.log
    assert f"job FAILED: server 0 (pid {server}) was killed by signal 9 (SIGKILL)" in launcher.log
    assert_nothing_left(launcher)


STUBBORN = """
import os, signal, sys, time
if os.environ["BERTPRETRAIN_LAUNCH_INDEX"] == "0":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ignoring SIGTERM", flush=True)
    time.sleep(600)
time.sleep(1.5)
sys.exit(3)
"""


def test_processes_that_ignore_sigterm_are_killed_after_the_grace_period(tmp_path):
    status, seconds, launcher = run_launcher(["-n", "2", "--grace", "1", "--", sys.executable, "-c",
                                              STUBBORN], tmp_path)

    assert status == 3, launcher.log
    assert "[worker 0] ignoring SIGTERM" in launcher.output
    assert "killed (SIGKILL) worker 0: still running 1 s after SIGTERM" in launcher.log
    assert seconds < 20
    assert_nothing_left(launcher)


def test_when_the_workers_are_done_the_scheduler_and_servers_are_stopped(tmp_path):
    # Workers that never connect: the scheduler and servers wait for them forever.
    status, _, launcher = run_launcher(["-n", "2", "-s", "2", "--grace", "1", "--", sys.executable,
                                        "-c", "print('hello')"], tmp_path)

    assert status == 0, launcher.log
    assert launcher.output.count("hello") == 2
    assert "[worker 0] hello\n" in launcher.output and "[worker 1] hello\n" in launcher.output
    assert_nothing_left(launcher)


def test_a_command_that_cannot_start_stops_the_job(tmp_path):
    status, _, launcher = run_launcher(["-n", "1", "--", "no-such-program-xyz"], tmp_path)

    assert status == 127
    assert re.search(r"cannot start worker 0 \(no-such-program-xyz\): .*No such file", launcher.log)
    assert_nothing_left(launcher)


def stand_in_ssh(folder):
    """A folder holding an `ssh` that logs its arguments to ``folder``/ssh.log and runs the remote
    command here, so that the whole remote path (placement, exported variables, quoting, cd) runs
    on the loopback interface; returns the environment that puts it first on PATH."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    fake_ssh = bin_dir / "ssh"
    fake_ssh.write_text(f"#!/bin/sh\necho \"$@\" >> {shlex.quote(str(folder / 'ssh.log'))}\n"
                        "for last; do :; done\nexec sh -c \"$last\"\n")
    fake_ssh.chmod(0o755)
    return launcher_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_hostfile_job_runs_over_ssh(tmp_path):
    env = stand_in_ssh(tmp_path)
    (tmp_path / "hosts").write_text("# two machines\nnode-a:1\n\nnode-b   # one worker slot\n")
    work_dir = tmp_path / "work dir"
    work_dir.mkdir()
    status, _, launcher = run_launcher(
        ["-n", "2", "-s", "2", "--hostfile", str(tmp_path / "hosts"), "--host-ip", "127.0.0.1",
         "--interface", "lo", "--", *WORKER, "."], work_dir, env)

    assert status == 0, launcher.log + launcher.output
    assert sorted(path.name for path in work_dir.iterdir()) == ["rank0.npz", "rank1.npz"]
    hosts = [line.split()[3] for line in (tmp_path / "ssh.log").read_text().splitlines()]
    assert sorted(hosts) == ["node-a", "node-a", "node-b", "node-b"]  # 1 server + 1 worker each
    assert "started worker 1@node-b (pid" in launcher.log
    assert_nothing_left(launcher)


# ------------------------------------------------------------- the documented launch commands (docs/distributed.md)

SAMPLE = Path(launch.__file__).resolve().parent / "data" / "sample"  # in the repository
DOC_TIMEOUT_S = 240  # a job that reaches its last step used to hang forever


def bertpretrain_command():
    """The `bertpretrain` console script of this Python (else the same entry point via -m)."""
    script = Path(sys.executable).with_name("bertpretrain")
    return (str(script),) if script.exists() else (sys.executable, "-m", "bertpretrain.cli")


def documented_launch_commands():
    """The two ``bertpretrain launch`` examples of docs/distributed.md, read from its text: a (launch arguments,
    pretrain arguments) pair each, split at ``--`` (continuation lines joined)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "distributed.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(# 2 workers \+ 1 server.*?)```", text, re.S).group(1)
    commands = [shlex.split(line) for line in re.sub(r"\\\n\s*", " ", block).splitlines()
                if line.startswith("bertpretrain launch ")]
    assert len(commands) == 2, block
    pairs = []
    for command in commands:
        cut = command.index("--")
        assert command[cut + 1:cut + 3] == ["bertpretrain", "pretrain"], command
        pairs.append((command[2:cut], command[cut + 3:]))
    return pairs


def with_values(args, **values):
    """``args`` with each ``--flag`` (underscores for dashes; ``n`` and ``s`` for ``-n``/``-s``) set to its
    value: replaced where the command gives it, added where it does not."""
    args = list(args)
    for name, value in values.items():
        flag = f"-{name}" if len(name) == 1 else "--" + name.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = str(value)
        else:
            args += [flag, str(value)]
    return args


def assert_rank_0_wrote_its_outputs(output_dir, steps):
    assert (output_dir / "checkpoints" / "latest").read_text().strip() == f"step-{steps:08d}"
    assert (output_dir / "model" / "tokenizer.json").is_file()  # the default recipe's WordPiece, trained by rank 0
    assert (output_dir / "history.json").is_file()


def test_documented_launch_on_this_machine_finishes_with_every_output(tmp_path):
    # The first documented command, with tiny sizes and the bundled sample (it has a validation split,
    # so rank 0 evaluates after the last step, which is where the job hung).
    (launch_args, pretrain_args), _ = documented_launch_commands()
    pretrain = [*bertpretrain_command(), "pretrain", *with_values(
        pretrain_args, data_dir=SAMPLE, batch_size=32, max_len=32, num_steps=3, output_dir="run")]
    status, _, launcher = run_launcher([*launch_args, "--", *pretrain], tmp_path,
                                       timeout=DOC_TIMEOUT_S,
                                       program=(*bertpretrain_command(), "launch"))

    assert status == 0, launcher.log + launcher.output
    assert "job done: all 2 workers exited with code 0" in launcher.log
    assert "step 3 eval: mlm loss" in launcher.output
    assert_rank_0_wrote_its_outputs(tmp_path / "run", 3)
    assert_nothing_left(launcher)


def test_documented_launch_with_a_hostfile_finishes_with_every_output(tmp_path):
    # The second documented command on loopback: the hosts are this machine under two names, reached
    # by the stand-in ssh; a data folder without a validation split (rank 0 saves right after the
    # last step); --devices cpu for gpu.
    env = stand_in_ssh(tmp_path)
    (tmp_path / "hosts").write_text("localhost:1\n127.0.0.1:1\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "wiki.train.tokens").write_bytes((SAMPLE / "wiki.train.tokens").read_bytes())
    work_dir = tmp_path / "shared"
    work_dir.mkdir()
    _, (launch_args, pretrain_args) = documented_launch_commands()
    pretrain = [*bertpretrain_command(), "pretrain", *with_values(
        pretrain_args, devices="cpu", data_dir=data, batch_size=32, max_len=32, num_steps=3,
        output_dir=work_dir / "run")]
    launch_args = with_values(launch_args, n=2, hostfile=tmp_path / "hosts", host_ip="127.0.0.1", interface="lo")
    status, _, launcher = run_launcher(
        [*launch_args, "--", *pretrain], work_dir, env, timeout=DOC_TIMEOUT_S,
        program=(*bertpretrain_command(), "launch"))

    assert status == 0, launcher.log + launcher.output
    assert "job done: all 2 workers exited with code 0" in launcher.log
    hosts = [line.split()[3] for line in (tmp_path / "ssh.log").read_text().splitlines()]
    assert sorted(hosts) == ["127.0.0.1", "127.0.0.1", "localhost", "localhost"]
    assert_rank_0_wrote_its_outputs(work_dir / "run", 3)
    assert_nothing_left(launcher)


# ------------------------------------------------------------------------ progress watchdog

def test_a_stopped_pretrain_worker_stops_the_documented_job(tmp_path):
    # The first documented command, training long enough to stop one of its workers with SIGSTOP.
    pretrain = [*bertpretrain_command(), "pretrain", "--kvstore", "dist_sync", "--data-dir", str(SAMPLE),
                "--batch-size", "32", "--max-len", "32", "--num-steps", "100000", "--output-dir", "run"]
    launcher = Launcher(["-n", "2", "-s", "1", "--timeout", "5", "--grace", "2", "--", *pretrain], tmp_path,
                        program=(*bertpretrain_command(), "launch"))
    wait_for_output(launcher, "bertpretrain.train.loop: step 10/100000", timeout=DOC_TIMEOUT_S)
    worker = started_pids(launcher.log)["worker 1"]
    os.kill(worker, signal.SIGSTOP)
    status, _ = launcher.finish(timeout=60)

    assert status == 124, launcher.log
    assert f"worker 1 (pid {worker}) is stopped (SIGSTOP?)" in launcher.log
    # worker 0 waits for worker 1's gradients: silent from about the same step on, so either one
    # (or both) may be the first past the limit; the stopped one is named as such
    assert re.search(r"job FAILED: no progress from worker [01](, worker 1)? for 5 s \(--timeout\)", launcher.log)
    assert_nothing_left(launcher)



# A worker that reports progress as train_bert does, every 0.1 s; "STALL" makes it stop reporting
# (but keep running) after its first report.
REPORTER = """
import os, sys, time
from bertpretrain import distributed
for step in range(1, 6000):
    distributed.report_progress(f"step {step}")
    if step == 1:
        print("reported", flush=True)
    if step == 1 and os.environ["BERTPRETRAIN_LAUNCH_INDEX"] in sys.argv[1:]:
        time.sleep(600)  # alive but silent
    time.sleep(0.1)
"""


def wait_for_output(launcher, text, timeout=RUN_TIMEOUT_S):
    """Wait until the workers' relayed output holds ``text``; fail (stopping the job) otherwise."""
    deadline = time.monotonic() + timeout
    while text not in launcher.output:
        if time.monotonic() > deadline or launcher.proc.poll() is not None:
            launcher.abort()
            pytest.fail(f"the workers never printed {text!r}:\n{launcher.log}{launcher.output}")
        time.sleep(0.05)


def test_a_stopped_worker_is_named_and_the_job_stopped(tmp_path):
    launcher = Launcher(["-n", "2", "-s", "1", "--timeout", "3", "--grace", "1", "--", sys.executable,
                         "-c", REPORTER], tmp_path)
    wait_for_output(launcher, "[worker 1] reported")
    worker = started_pids(launcher.log)["worker 1"]
    os.kill(worker, signal.SIGSTOP)
    status, _ = launcher.finish(timeout=30)

    assert status == 124, launcher.log
    assert re.search(r"worker 1 \(pid \d+\) made no progress for 3 s \(last: step 1\)", launcher.log)
    assert f"worker 1 (pid {worker}) is stopped (SIGSTOP?)" in launcher.log
    assert "job FAILED: no progress from worker 1 for 3 s (--timeout)" in launcher.log
    assert "worker 0 (pid" not in launcher.log.split("made no progress")[1]  # it kept reporting
    assert "@bertpretrain" not in launcher.output  # progress reports are not relayed
    assert_nothing_left(launcher)


@pytest.mark.parametrize("timeout, command, status", [
    ("1", [sys.executable, "-c", REPORTER, "1"], 124),  # worker 1 alive, silent after step 1
    ("0", [sys.executable, "-c", "from bertpretrain import distributed; import time; "
                                 "distributed.report_progress('step 1'); time.sleep(3)"], 0),  # off
    ("1", ["sleep", "3"], 0),  # a command that never reports is not watched
])
def test_the_watchdog_only_stops_workers_silent_after_their_first_report(tmp_path, timeout, command,
                                                                          status):
    got, _, launcher = run_launcher(["-n", "2", "-s", "1", "--timeout", timeout, "--grace", "1", "--",
                                     *command], tmp_path)

    assert got == status, launcher.log
    if status:
        assert re.search(r"worker 1 \(pid \d+\) made no progress for 1 s \(last: step 1\)", launcher.log)
        assert "job FAILED: no progress from worker 1 for 1 s (--timeout)" in launcher.log
        assert "is stopped" not in launcher.log  # it is running: stuck, not stopped
    assert_nothing_left(launcher)


def test_report_progress_writes_only_under_the_launcher(monkeypatch, capsys):
    monkeypatch.delenv(launch.PROGRESS_ENV, raising=False)
    distributed.report_progress("step 1")
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv(launch.PROGRESS_ENV, "1")
    distributed.report_progress("step 2")
    assert capsys.readouterr().err == f"{launch.PROGRESS_MARK} step 2\n"


def test_workers_are_told_to_report_progress():
    tasks = launch.plan(1, 1, ["python"], host_ip="127.0.0.1", port=9000, python="py")
    assert [task.env.get(launch.PROGRESS_ENV) for task in tasks] == [None, None, "1"]


# ---------------------------------------------------------------------------- command line

@pytest.mark.parametrize("argv, message", [
    (["-n", "2"], "no command to run: put it after `--`"),
    (["-n", "2", "--"], "no command to run: put it after `--`"),
    (["-n", "2", "python", "train.py"], "unrecognized arguments: python train.py"),
    (["-n", "0", "--", "python"], "-n/--num-workers must be at least 1, got 0"),
    (["-n", "2", "-s", "0", "--", "python"], "-s/--num-servers must be at least 1"),
    (["--", "python"], "the following arguments are required: -n/--num-workers"),
    (["-n", "1", "--hostfile", "hosts", "--", "python"], "--hostfile needs --host-ip"),
    (["-n", "1", "--grace", "-1", "--", "python"], "--grace must be >= 0 seconds"),
    (["-n", "1", "--timeout", "-5", "--", "python"], "--timeout must be >= 0 seconds (0: no watchdog)"),
])
def test_usage_errors_say_what_is_wrong(capsys, argv, message):
    assert launch.main(argv) == 2
    assert message in capsys.readouterr().err


def test_unreadable_hostfile_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert launch.main(["-n", "1", "-H", str(missing), "--host-ip", "127.0.0.1", "--", "x"]) == 2
    assert f"error: cannot read host file {missing}: No such file or directory" in capsys.readouterr().err


def test_command_keeps_its_own_double_dash():
    args = launch.parse_args(["-n", "3", "-s", "2", "--", "python", "train.py", "--", "-n", "1"])
    assert (args.num_workers, args.num_servers) == (3, 2)
    assert args.command == ["python", "train.py", "--", "-n", "1"]


# --------------------------------------------------------------------------------- host file

def test_parse_hostfile_reads_hosts_slots_comments_and_blank_lines():
    text = "# cluster\n\nnode1\nnode2:4  # big one\n  user@node3:2\n"
    assert launch.parse_hostfile(text) == [launch.Host("node1", 1), launch.Host("node2", 4),
                                           launch.Host("user@node3", 2)]


@pytest.mark.parametrize("line, message", [
    ("node1:0", "SLOTS must be a whole number of workers >= 1, got '0'"),
    ("node1:x", "SLOTS must be a whole number of workers >= 1, got 'x'"),
    ("fe80::1", "expected HOST or HOST:SLOTS"),
    ("node1 node2", "expected HOST or HOST:SLOTS"),
    (":2", "expected HOST or HOST:SLOTS"),
])
def test_parse_hostfile_names_the_bad_line(line, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        launch.parse_hostfile(f"ok\n{line}\n", source="hosts.txt")
    assert f"hosts.txt, line 2 ({line!r})" in str(error.value)


def test_parse_hostfile_needs_a_host():
    with pytest.raises(ValueError, match="lists no host"):
        launch.parse_hostfile("# nothing\n\n")


def test_workers_fill_the_hosts_in_order():
    hosts = [launch.Host("a", 2), launch.Host("b", 1)]
    assert launch.place_workers(hosts, 3) == ["a", "a", "b"]
    with pytest.raises(ValueError, match="3 worker slots for 4 workers: add hosts or slots"):
        launch.place_workers(hosts, 4)


# -------------------------------------------------------------------------------- job plan

def test_local_plan_sets_the_dmlc_variables():
    tasks = launch.plan(2, 1, ["python", "train.py"], host_ip="127.0.0.1", port=9000,
                        python="/py/bin/python")

    assert [task.name for task in tasks] == ["scheduler", "server 0", "worker 0", "worker 1"]
    common = {"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "9000", "DMLC_NUM_SERVER": "1",
              "DMLC_NUM_WORKER": "2"}
    for task in tasks:
        assert task.host is launch.LOCAL
        assert task.env.items() >= common.items()
        assert task.env["DMLC_ROLE"] == task.role
    assert tasks[0].command == tasks[1].command == ("/py/bin/python", "-c", "import bertpretrain")
    assert tasks[2].command == ("python", "train.py")
    assert all(task.env["DMLC_NODE_HOST"] == "127.0.0.1" for task in tasks[1:])
    assert [task.env["BERTPRETRAIN_LAUNCH_INDEX"] for task in tasks[2:]] == ["0", "1"]


def test_hostfile_plan_spreads_servers_and_lets_ps_lite_pick_remote_addresses():
    hosts = [launch.Host("a", 2), launch.Host("b", 2)]
    tasks = launch.plan(3, 3, ["python", "train.py"], host_ip="10.0.0.1", port=9000, python="py",
                        hosts=hosts, interface="eth0")

    assert [task.name for task in tasks] == ["scheduler", "server 0@a", "server 1@b", "server 2@a",
                                             "worker 0@a", "worker 1@a", "worker 2@b"]
    assert tasks[0].host is launch.LOCAL
    assert all(task.env["DMLC_PS_ROOT_URI"] == "10.0.0.1" for task in tasks)
    assert all(task.env["DMLC_INTERFACE"] == "eth0" for task in tasks)
    assert not any("DMLC_NODE_HOST" in task.env for task in tasks)


def test_ssh_command_exports_the_variables_and_quotes_everything():
    argv = launch.ssh_command("user@node1", {"B": "x y", "A": "1"},
                              ("python", "train.py", "--name", "it's $HOME"), "/data/my dir")

    assert argv[:-1] == ["ssh", "-tt", "-o", "BatchMode=yes", "user@node1"]
    assert shlex.split(argv[-1]) == ["cd", "/data/my dir", "&&", "exec", "env", "A=1", "B=x y",
                                     "python", "train.py", "--name", "it's $HOME"]


def test_ssh_remote_line_runs_in_a_shell_as_intended(tmp_path):
    work_dir = tmp_path / "it's a dir"
    work_dir.mkdir()
    show = (sys.executable, "-c", "import os, sys; print(os.getcwd(), os.environ['V'], sys.argv[1:])",
            "$HOME", "a b")
    remote = launch.ssh_command("host", {"V": "x 'y' $z"}, show, str(work_dir))[-1]
    done = subprocess.run(["sh", "-c", remote], capture_output=True, text=True, timeout=30)
    assert done.stdout == f"{work_dir} x 'y' $z ['$HOME', 'a b']\n", done.stderr


def test_remote_processes_get_the_job_variables_and_forwarded_settings():
    task = launch.Task("worker", 0, ("python", "t.py"), {"DMLC_ROLE": "worker"}, host="n1")
    base = {"HOME": "/home/me", "MXNET_ENGINE_TYPE": "NaiveEngine", "OMP_NUM_THREADS": "4",
            "PATH": "/usr/bin"}
    argv, env = launch.process_args(task, base, "/w")
    assert argv[:5] == ["ssh", "-tt", "-o", "BatchMode=yes", "n1"]
    remote = shlex.split(argv[-1])
    assert "DMLC_ROLE=worker" in remote and "MXNET_ENGINE_TYPE=NaiveEngine" in remote
    assert "OMP_NUM_THREADS=4" in remote and not any(word.startswith("HOME=") for word in remote)
    assert env == base  # the local ssh process itself runs in the launcher's environment


def test_local_processes_get_the_launcher_environment_plus_the_job_variables():
    task = launch.Task("worker", 0, ("python", "t.py"), {"DMLC_ROLE": "worker"})
    assert launch.process_args(task, {"HOME": "/h"}, "/w") == (
        ["python", "t.py"], {"HOME": "/h", "DMLC_ROLE": "worker"})


def test_exit_descriptions():
    assert launch.describe_exit(3) == "exited with code 3"
    assert launch.describe_exit(-9) == "was killed by signal 9 (SIGKILL)"
    assert (launch.exit_status(3), launch.exit_status(-15)) == (3, 143)


def test_free_port_is_bindable_and_bad_address_is_explained():
    port = launch.free_port("127.0.0.1")
    assert 0 < port < 65536
    with pytest.raises(ValueError, match="cannot listen on --host-ip 192.0.2.1"):
        launch.free_port("192.0.2.1")  # TEST-NET-1: not an address of this machine


# ------------------------------------------------------------------------ training helpers

def fake_kvstore(kind, rank=0, workers=1):
    return types.SimpleNamespace(type=kind, rank=rank, num_workers=workers)


def test_is_distributed():
    assert distributed.is_distributed("dist_sync") and distributed.is_distributed("dist_async")
    assert distributed.is_distributed(fake_kvstore("dist_sync_device"))
    assert not distributed.is_distributed("device") and not distributed.is_distributed(None)
    assert not distributed.is_distributed(fake_kvstore("local"))


def test_rank_and_workers_default_to_one_process():
    assert (distributed.worker_rank(None), distributed.num_workers(None)) == (0, 1)
    kv = fake_kvstore("dist_sync", rank=2, workers=4)
    assert (distributed.worker_rank(kv), distributed.num_workers(kv)) == (2, 4)


def test_shards_interleave_so_local_batches_make_up_the_global_batches():
    items = list(range(10))
    shards = [distributed.shard(items, rank, 3) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # equal sizes: the extra item is dropped
    first_local_batches = sorted(item for shard in shards for item in shard[:2])
    assert first_local_batches == items[:6]  # = the first global batch of 3 workers x 2
    with pytest.raises(ValueError, match="rank must be in 0..2 for 3 workers, got 3"):
        distributed.shard(items, 3, 3)


def test_step_batch_size_is_the_global_batch_under_dist_sync():
    assert distributed.step_batch_size(16, fake_kvstore("dist_sync", workers=4)) == 64
    assert distributed.step_batch_size(16, fake_kvstore("dist_device_sync", workers=4)) == 64
    assert distributed.step_batch_size(16, fake_kvstore("dist_async", workers=4)) == 16
    assert distributed.step_batch_size(16, fake_kvstore("device")) == 16
    assert distributed.step_batch_size(16, None) == 16


def test_create_dist_kvstore_outside_the_launcher_says_how_to_launch(monkeypatch):
    monkeypatch.delenv("DMLC_ROLE", raising=False)
    with pytest.raises(RuntimeError, match=r"needs the scheduler.*python -m bertpretrain\.launch -n 2"):
        distributed.create_kvstore("dist_sync")
    assert distributed.create_kvstore("local").type == "local"


def test_sync_initial_params_refuses_deferred_parameters():
    pending = types.SimpleNamespace(name="dense0_weight")
    trainer = types.SimpleNamespace(_kv_initialized=True, _params_to_init=[pending],
                                    _init_params=lambda: None)  # a kvstore skips deferred params
    with pytest.raises(RuntimeError, match="parameters dense0_weight are not initialised yet"):
        distributed.sync_initial_params(trainer)


@pytest.mark.parametrize("body, status, message", [
    ("raise ValueError('bad value')", 1, "ValueError: bad value"),
    ("sys.exit(4)", 4, ""),
    ("sys.exit('bad config')", 1, "bad config"),
])
def test_exit_on_error_ends_a_distributed_worker_at_once(body, status, message):
    script = ("import sys\nfrom bertpretrain import distributed\n"
              f"with distributed.exit_on_error('dist_sync'):\n    {body}\n")
    done = subprocess.run([sys.executable, "-c", script], env=launcher_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == status, done.stderr
    assert message in done.stderr


def test_exit_on_error_leaves_local_errors_alone():
    with pytest.raises(KeyError):
        with distributed.exit_on_error(None):
            raise KeyError("local training raises as usual")
