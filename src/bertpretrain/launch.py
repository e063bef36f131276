"""Start, watch and stop the processes of a distributed (parameter-server) MXNet training job.

Usage::

    python -m bertpretrain.launch -n WORKERS [-s SERVERS] [options] -- COMMAND [ARGS...]

starts one scheduler, SERVERS servers (default 1) and WORKERS workers that each run COMMAND, with the
``DMLC_*`` variables ps-lite (MXNet's ``dist_*`` kvstores) reads.  The scheduler and the servers are
a Python that imports MXNet (through ``bertpretrain``, which applies its numpy fixes first): MXNet
runs the server loop on import when ``DMLC_ROLE`` is ``server`` or ``scheduler``.  MXNet's own
``tools/launch.py`` does not run on Python >= 3.9, and it does not notice dead processes.

Why a watchdog: in a ``dist_sync`` job every worker waits for the gradients of all the others, so
one dead process leaves the rest waiting forever.  The launcher polls its processes; as soon as one
exits with a non-zero code or is killed, it stops the whole job (SIGTERM to every process group,
SIGKILL after ``--grace`` seconds, so that children of the commands die too) and exits non-zero,
naming the process that died.  When every worker has exited 0 it stops what is left of the
scheduler and servers (normally they have exited by themselves) and exits 0.  SIGTERM or SIGHUP to
the launcher stop the job the same way.  Ctrl-C (SIGINT) is passed on to the workers instead, as if
each had been pressed Ctrl-C: ``train_bert`` stops them all after the same step, rank 0 saves a
checkpoint, and the launcher waits for them to exit (a worker silent for ``--timeout`` seconds, or a
second Ctrl-C, stops the job at once) and exits 130.

Progress watchdog: a worker that is alive but stuck (stopped with SIGSTOP, waiting on a peer that
is) would hang the job just the same, and nothing dies.  So the launcher tells every worker (the
``BERTPRETRAIN_LAUNCH_PROGRESS`` variable) to report its progress: ``train_bert`` writes a line
``@bertpretrain-progress step N`` to stderr after every step, evaluation and checkpoint, and
``... done`` once every worker has finished training (:func:`bertpretrain.distributed.report_progress`).
The launcher takes these lines out of the relayed output.  A worker that has reported once and
then reports nothing for ``--timeout`` seconds (default 300; 0 turns the watchdog off) stops the
job: the launcher names every silent worker, its last report, and the processes the system shows
as stopped, and exits with 124.  A worker before its first report (loading data, compiling the
kernels) or after ``done`` (rank 0 saving the model) is not watched, nor is a command that never
reports.

Where processes run:

* Without ``--hostfile`` everything runs on this machine and talks over ``--host-ip`` (default
  127.0.0.1, the loopback interface): it is the scheduler's address (``DMLC_PS_ROOT_URI``) and the
  address every server and worker binds (``DMLC_NODE_HOST``).
* With ``--hostfile`` the scheduler runs here, listening on ``--host-ip`` (required: the address of
  this machine that the hosts can reach); workers and servers run on the hosts over ``ssh``, in
  the same working directory as here (a shared file system is assumed), with the launcher's
  variables exported.  ps-lite picks each remote process's address itself, on the first network
  interface that is up, or on ``--interface`` (``DMLC_INTERFACE``).  ``ssh`` runs with
  ``BatchMode=yes`` (no password prompts: set up keys) and ``-tt``, so that closing the connection
  hangs up the remote command; ports, users and keys belong in ``~/.ssh/config``.

Host file format: one host per line, ``HOST[:SLOTS]``, where HOST is an ssh destination (``node1``,
``user@node1``, an alias from ``~/.ssh/config``; no IPv6 literals) and SLOTS (default 1) is how
many workers it runs.  ``#`` starts a comment; blank lines are ignored.  Workers fill the hosts in
file order, SLOTS at a time; servers go one per host in turn::

    # 2 machines, 4 workers
    gpu-node-1:2
    gpu-node-2:2   # second machine

Each worker's environment also has ``BERTPRETRAIN_LAUNCH_INDEX`` (0 .. WORKERS-1, the launch order
used in the launcher's messages and output prefixes).  It is *not* the kvstore rank: the scheduler
assigns ranks as workers connect; use ``kvstore.rank`` (:mod:`bertpretrain.distributed`).

Exit status: 0 when every worker exited 0; the exit code of the first process that failed (128 + N
if signal N killed it); 124 when the watchdog stopped a job that made no progress; 128 + N when
the launcher got signal N (130 for Ctrl-C); 127 when a process could not be started; 2 for usage
errors.
"""
import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from .distributed import PROGRESS_ENV, PROGRESS_MARK

PROG = "python -m bertpretrain.launch"
LOCAL = None  # Task.host of processes that run on this machine
DEFAULT_GRACE_S = 5.0
DEFAULT_TIMEOUT_S = 300.0
WATCHDOG_STATUS = 124  # the launcher's exit status when the watchdog stops a job (as timeout(1))
POLL_S = 0.1
# Variables of the launcher's environment that remote (ssh) processes get too; local ones get all.
FORWARDED_PREFIXES = ("BERTPRETRAIN_", "MXNET_", "OMP_", "PS_")
SSH_OPTIONS = ("-tt", "-o", "BatchMode=yes")


# ---------------------------------------------------------------------------------------- hosts

@dataclass(frozen=True)
class Host:
    """A line of the host file: an ssh destination and how many workers it runs."""

    name: str
    slots: int = 1


def parse_hostfile(text, source="host file"):
    """The hosts listed in ``text`` (the host file format of this module's docstring).

    Raises ValueError naming ``source``, the line and the problem for a malformed line, and when
    no host is listed.
    """
    hosts = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        where = f"{source}, line {number} ({line.strip()!r})"
        name, colon, slots = entry.partition(":")
        if not name or any(char.isspace() for char in name) or ":" in slots:
            raise ValueError(f"{where}: expected HOST or HOST:SLOTS, one host per line "
                             "(IPv6 addresses are not supported: use a name from ~/.ssh/config)")
        if colon and not (slots.isdigit() and int(slots) > 0):
            raise ValueError(f"{where}: SLOTS must be a whole number of workers >= 1, got {slots!r}")
        hosts.append(Host(name, int(slots) if colon else 1))
    if not hosts:
        raise ValueError(f"{source} lists no host: write one HOST[:SLOTS] per line")
    return hosts


def read_hostfile(path):
    """The hosts of the host file at ``path``; ValueError if it cannot be read or is malformed."""
    try:
        with open(path, encoding="utf-8") as file:
            return parse_hostfile(file.read(), source=path)
    except OSError as error:
        raise ValueError(f"cannot read host file {path}: {error.strerror}") from error


def place_workers(hosts, num_workers):
    """The host of each worker: hosts in order, each filled with its SLOTS workers."""
    slots = [host.name for host in hosts for _ in range(host.slots)]
    if num_workers > len(slots):
        raise ValueError(f"the host file has {len(slots)} worker slots for {num_workers} workers: "
                         "add hosts or slots (HOST:SLOTS), or lower -n")
    return slots[:num_workers]


# ---------------------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class Task:
    """One process of the job: what to run, where, and the variables it adds to the environment."""

    role: str  # "scheduler", "server" or "worker"
    index: int  # launch order within the role
    command: tuple
    env: dict = field(default_factory=dict)
    host: str = LOCAL  # ssh destination, or LOCAL

    @property
    def name(self):
        """How messages and output prefixes call this process: "worker 1", "server 0@node2"."""
        label = "scheduler" if self.role == "scheduler" else f"{self.role} {self.index}"
        return label if self.host is LOCAL else f"{label}@{self.host}"


def free_port(address):
    """A TCP port free on ``address`` now (the kernel's pick for port 0), for the scheduler."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
            return sock.getsockname()[1]
    except OSError as error:
        raise ValueError(f"cannot listen on --host-ip {address}: {error.strerror}; give an address "
                         "of this machine (127.0.0.1 for a job on this machine only)") from error


def plan(num_workers, num_servers, command, *, host_ip, port, python, hosts=None, interface=None):
    """The tasks of a job, scheduler first, then servers, then workers.

    ``hosts`` (from the host file) places servers and workers on other machines; without it every
    process runs here and binds ``host_ip``.  ``python`` runs the scheduler and servers.
    """
    common = {
        "DMLC_PS_ROOT_URI": host_ip,
        "DMLC_PS_ROOT_PORT": str(port),
        "DMLC_NUM_SERVER": str(num_servers),
        "DMLC_NUM_WORKER": str(num_workers),
        "PYTHONUNBUFFERED": "1",  # so that output shows up line by line, not when buffers fill
    }
    if interface:
        common["DMLC_INTERFACE"] = interface
    local_env = {} if hosts else {"DMLC_NODE_HOST": host_ip}
    worker_hosts = place_workers(hosts, num_workers) if hosts else [LOCAL] * num_workers
    server_hosts = [hosts[i % len(hosts)].name if hosts else LOCAL for i in range(num_servers)]
    server_command = (python, "-c", "import bertpretrain")
    tasks = [Task("scheduler", 0, server_command, {**common, "DMLC_ROLE": "scheduler"})]
    tasks += [Task("server", i, server_command, {**common, **local_env, "DMLC_ROLE": "server"}, host)
              for i, host in enumerate(server_hosts)]
    tasks += [Task("worker", i, tuple(command),
                   {**common, **local_env, "DMLC_ROLE": "worker", "BERTPRETRAIN_LAUNCH_INDEX": str(i),
                    PROGRESS_ENV: "1"},
                   host)
              for i, host in enumerate(worker_hosts)]
    return tasks


def ssh_command(host, env, command, cwd):
    """The argv that runs ``command`` on ``host`` over ssh, in directory ``cwd``, with ``env``."""
    assignments = [f"{name}={value}" for name, value in sorted(env.items())]
    remote = f"cd {shlex.quote(cwd)} && exec {shlex.join(['env', *assignments, *command])}"
    return ["ssh", *SSH_OPTIONS, host, remote]


def process_args(task, base_env, cwd):
    """The argv and full environment to start ``task`` with, from this machine."""
    if task.host is LOCAL:
        return list(task.command), {**base_env, **task.env}
    forwarded = {name: value for name, value in base_env.items()
                 if name.startswith(FORWARDED_PREFIXES)}
    return ssh_command(task.host, {**forwarded, **task.env}, task.command, cwd), dict(base_env)


# ---------------------------------------------------------------------------------- supervision

def describe_exit(returncode):
    """A returncode in words: "exited with code 3", "was killed by signal 9 (SIGKILL)"."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    number = -returncode
    try:
        return f"was killed by signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"was killed by signal {number}"


def exit_status(returncode):
    """The launcher's exit status for a failed process's returncode (shell style for signals)."""
    return returncode if returncode > 0 else 128 - returncode


def _signal_group(pgid, signum):
    """Send ``signum`` to process group ``pgid``; False if no process is left in it."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # the group is gone and its id taken by someone else's processes
        return False
    return True


def _group_alive(pgid):
    """Whether a process of group ``pgid`` is still running.  Zombies do not count: they are dead
    and only wait to be reaped by their parent, which for orphans is an init that may be slow to
    do so, or never does (a container without one)."""
    if not os.path.isdir("/proc/self"):  # no procfs (macOS): zombies count as running
        return _signal_group(pgid, 0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                stat = file.read()
        except OSError:  # exited meanwhile
            continue
        state, _ppid, pgrp = stat.rsplit(b")", 1)[1].split()[:3]  # after "pid (command)"
        if int(pgrp) == pgid and state not in (b"Z", b"X"):
            return True
    return False


def _is_stopped(pid):
    """Whether process ``pid`` (on this machine) is stopped (state T: SIGSTOP, SIGTSTP, a debugger)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
    except (OSError, IndexError):  # gone, or no procfs
        return False


@dataclass
class Progress:
    """What the watchdog knows of a worker: when it last reported, what, and whether it is done."""

    since: float  # time.monotonic() of the last report
    last: str
    done: bool = False


class Job:
    """The started processes of a job: output relay, watchdog and shutdown.

    Every process gets its own session (so its own process group, whose id is its pid), so that a
    stop reaches the children of the command too, and so that a Ctrl-C in the terminal reaches only
    the launcher, which then stops the processes in order.
    """

    def __init__(self, out, log, grace_s=DEFAULT_GRACE_S, timeout_s=DEFAULT_TIMEOUT_S):
        self.out = out  # where the processes' output goes, each line prefixed with their name
        self.log = log  # where the launcher's own messages go
        self.grace_s = grace_s
        self.timeout_s = timeout_s  # the watchdog's limit on a worker's silence (0: no watchdog)
        self.progress = {}  # task name: Progress, from the worker's first report on
        self.procs = []  # (task, Popen), in start order
        self.readers = []
        self.interrupt = None  # the signal number the launcher received, if any
        self.signals = 0  # how many it received
        self._out_lock = threading.Lock()

    def say(self, message):
        """Print one of the launcher's own messages."""
        with self._out_lock:
            print(f"[launch] {message}", file=self.log, flush=True)

    def start(self, task, argv, env, cwd):
        """Start one task; its output is relayed line by line, prefixed with ``[its name]``."""
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((task, proc))
        where = "this machine" if task.host is LOCAL else task.host
        self.say(f"started {task.name} (pid {proc.pid}) on {where}: {shlex.join(task.command)}")
        reader = threading.Thread(target=self._relay, args=(task, proc.stdout), daemon=True)
        reader.start()
        self.readers.append(reader)

    def _relay(self, task, stream):
        """Copy ``task``'s output lines to ``out`` with its prefix; take progress reports out."""
        prefix = f"[{task.name}] "
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\r\n")  # ssh -tt ends lines with \r\n
            shown, _, report = line.rpartition("\r")[2].partition(PROGRESS_MARK + " ")
            if report and not shown and task.role == "worker":  # a report, alone on its line
                self.progress[task.name] = Progress(time.monotonic(), report, done=report == "done")
                continue
            with self._out_lock:
                try:
                    self.out.write(prefix + line + "\n")
                    self.out.flush()
                except (OSError, ValueError):  # output closed: keep draining so no process blocks
                    pass
        stream.close()

    def on_signal(self, signum, _frame):
        """Signal handler: ask the watch loop to stop the job, or for a first SIGINT to pass it on to
        the workers (a second signal: kill at once)."""
        if self.interrupt is not None:
            self.grace_s = 0
        self.interrupt = signum
        self.signals += 1

    def watch(self):
        """Wait until every worker exited 0, a process failed, or the launcher got a signal;
        stop what is still running, and return the launcher's exit status.

        After a first SIGINT (Ctrl-C), passed on to the workers, a worker that exits with 0 or 130
        or dies of that SIGINT is not a failure: the launcher waits for every worker to exit so,
        then stops the rest and returns 130."""
        workers = [proc for task, proc in self.procs if task.role == "worker"]
        interrupted_at = None  # when a SIGINT was passed on to the workers
        while True:
            if self.interrupt is not None:
                if self.interrupt == signal.SIGINT and self.signals == 1:
                    if interrupted_at is None:
                        interrupted_at = time.monotonic()
                        self._interrupt_workers()
                else:
                    again = " again" if self.interrupt == signal.SIGINT and self.signals > 1 else ""
                    self.say(f"got {signal.Signals(self.interrupt).name}{again}: stopping the job")
                    self.stop()
                    return 128 + self.interrupt
            for task, proc in self.procs:
                returncode = proc.poll()
                stopped = (interrupted_at is not None and task.role == "worker"
                           and returncode in (130, -signal.SIGINT))
                if returncode and not stopped:
                    others = sum(p.poll() is None for _, p in self.procs)
                    self.say(f"{task.name} (pid {proc.pid}) {describe_exit(returncode)}; "
                             f"stopping the job ({others} processes still running)")
                    self.stop()
                    self.say(f"job FAILED: {task.name} (pid {proc.pid}) {describe_exit(returncode)}")
                    return exit_status(returncode)
            silent = self._silent_workers(since=interrupted_at)
            if silent:
                return self._stop_silent(silent)
            if interrupted_at is not None and all(proc.returncode is not None for proc in workers):
                self._wait(self.grace_s)
                self.stop()
                self.say(f"job interrupted (SIGINT): all {len(workers)} workers have stopped")
                return 128 + signal.SIGINT
            if all(proc.returncode == 0 for proc in workers):
                self._wait(self.grace_s)  # the scheduler and servers exit by themselves, normally
                self.stop()
                self.say(f"job done: all {len(workers)} workers exited with code 0")
                return 0
            time.sleep(POLL_S)

    def _interrupt_workers(self):
        """Pass a Ctrl-C on to every running worker's process group (the scheduler and the servers keep
        running: the workers still need them to finish their step together)."""
        self.say("got SIGINT: passing it on to the workers, which stop after their current step (rank 0 "
                 "saves a checkpoint); press Ctrl-C again to stop the job at once")
        for task, proc in self.procs:
            if task.role == "worker" and proc.poll() is None:
                _signal_group(proc.pid, signal.SIGINT)

    def _silent_workers(self, since=None):
        """The (task, process) of every running worker that is not done and has not reported
        progress for longer than ``timeout_s``: since its last report, or since ``since`` (a
        SIGINT passed on, which every worker must answer), whichever came later; before its first
        report a worker is not watched unless ``since`` is given."""
        if not self.timeout_s:
            return []
        now = time.monotonic()
        silent = []
        for task, proc in self.procs:
            if task.role != "worker" or proc.poll() is not None:
                continue
            progress = self.progress.get(task.name)
            if progress is not None and progress.done:
                continue
            last = max(filter(None, [progress and progress.since, since]), default=None)
            if last is not None and now - last > self.timeout_s:
                silent.append((task, proc))
        return silent

    def _stop_silent(self, silent):
        """The watchdog's verdict: name the silent workers and the stopped processes, stop the job."""
        for task, proc in silent:
            last = self.progress[task.name].last if task.name in self.progress else "nothing"
            self.say(f"{task.name} (pid {proc.pid}) made no progress for {self.timeout_s:g} s "
                     f"(last: {last})")
        for task, proc in self.procs:
            if task.host is LOCAL and proc.poll() is None and _is_stopped(proc.pid):
                self.say(f"{task.name} (pid {proc.pid}) is stopped (SIGSTOP?): it cannot go on "
                         "until it gets SIGCONT")
        names = ", ".join(task.name for task, _ in silent)
        self.say(f"stopping the job: no progress from {names} for {self.timeout_s:g} s; if a step "
                 "legitimately takes longer, raise --timeout (0 turns the watchdog off)")
        self.stop()
        self.say(f"job FAILED: no progress from {names} for {self.timeout_s:g} s (--timeout)")
        return WATCHDOG_STATUS

    def _wait(self, seconds):
        """Wait up to ``seconds`` for every process group to be empty; whether they all are."""
        deadline = time.monotonic() + seconds
        while True:
            # poll() first: a process that exited stays in its group until it is reaped.
            alive = [proc for _, proc in self.procs
                     if proc.poll() is None or _group_alive(proc.pid)]
            if not alive:
                return True
            if time.monotonic() >= deadline or self.grace_s == 0:  # 0: a second signal came
                return False
            time.sleep(POLL_S / 2)

    def stop(self):
        """Stop every process group: SIGTERM, then SIGKILL to what is left after the grace period.
        Returns once every started process is reaped and its output relayed."""
        started = time.monotonic()
        signalled = [proc for _, proc in self.procs if _signal_group(proc.pid, signal.SIGTERM)]
        for proc in signalled:  # a stopped process acts on SIGTERM only once it runs again
            _signal_group(proc.pid, signal.SIGCONT)
        if not self._wait(self.grace_s):
            killed = [task.name for task, proc in self.procs
                      if _group_alive(proc.pid) and _signal_group(proc.pid, signal.SIGKILL)]
            self.say(f"killed (SIGKILL) {', '.join(killed)}: still running {self.grace_s:g} s "
                     "after SIGTERM")
        for _, proc in self.procs:
            proc.wait()
        for reader in self.readers:
            reader.join(timeout=self.grace_s + 1)
        if signalled:
            self.say(f"stopped {len(signalled)} process groups in {time.monotonic() - started:.2f} s")


# ------------------------------------------------------------------------------------------- CLI

def build_parser(prog=PROG):
    """The launcher's option parser (the command to run comes after ``--``, outside argparse)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} -n WORKERS [-s SERVERS] [options] -- COMMAND [ARGS...]",
        description="Run COMMAND as the workers of a distributed MXNet (dist_sync/dist_async "
                    "kvstore) job, with a scheduler and servers; stop everything when a process "
                    "dies.",
        epilog="Example: python -m bertpretrain.launch -n 2 -s 1 -- python train.py "
               "--kvstore dist_sync.  Host file lines: HOST[:SLOTS]; see the module docstring.")
    parser.add_argument("-n", "--num-workers", type=int, required=True, metavar="WORKERS",
                        help="how many workers run COMMAND (>= 1)")
    parser.add_argument("-s", "--num-servers", type=int, default=1, metavar="SERVERS",
                        help="how many parameter servers (>= 1; default 1)")
    parser.add_argument("-H", "--hostfile", metavar="FILE",
                        help="run workers and servers over ssh on the hosts of FILE "
                             "(one HOST[:SLOTS] per line) instead of on this machine")
    parser.add_argument("--host-ip", metavar="ADDR",
                        help="address of this machine for the scheduler (default 127.0.0.1; "
                             "required with --hostfile: an address the hosts can reach)")
    parser.add_argument("--interface", metavar="NAME",
                        help="network interface the remote processes use (DMLC_INTERFACE, "
                             "e.g. eth0; default: ps-lite picks the first one that is up)")
    parser.add_argument("--python", default=sys.executable, metavar="PATH",
                        help="Python with bertpretrain and MXNet that runs the scheduler and "
                             "servers (default: this one; the same path on every host)")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, metavar="SECONDS",
                        help="how long processes get to exit after SIGTERM before SIGKILL "
                             f"(default {DEFAULT_GRACE_S:g})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help="stop the job (exit 124) when a worker that has reported progress "
                             "reports none for this long, e.g. because it is stopped or stuck "
                             f"(default {DEFAULT_TIMEOUT_S:g}; 0: no watchdog)")
    return parser


def parse_args(argv, prog=PROG):
    """Options and command from ``argv``; argparse errors (SystemExit 2) for bad input."""
    parser = build_parser(prog)
    if "--" in argv:
        split = argv.index("--")
        options, command = argv[:split], argv[split + 1:]
    else:
        options, command = argv, []
    args = parser.parse_args(options)
    if not command:
        parser.error("no command to run: put it after `--`, e.g.  "
                     f"{prog} -n 2 -s 1 -- python train.py")
    if args.num_workers < 1:
        parser.error(f"-n/--num-workers must be at least 1, got {args.num_workers}")
    if args.num_servers < 1:
        parser.error(f"-s/--num-servers must be at least 1 (dist kvstores need a server), "
                     f"got {args.num_servers}")
    if args.grace < 0:
        parser.error(f"--grace must be >= 0 seconds, got {args.grace:g}")
    if not args.timeout >= 0:  # NaN too
        parser.error(f"--timeout must be >= 0 seconds (0: no watchdog), got {args.timeout:g}")
    if args.hostfile and not args.host_ip:
        parser.error("--hostfile needs --host-ip: the address of this machine that the hosts can "
                     "reach (the scheduler runs here)")
    args.command = command
    return args


def main(argv=None, prog=PROG):
    """Run the launcher with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv, prog)
    except SystemExit as exit_:  # usage errors and --help: argparse printed the message
        return exit_.code
    job = Job(out=sys.stdout, log=sys.stderr, grace_s=args.grace, timeout_s=args.timeout)
    host_ip = args.host_ip or "127.0.0.1"
    try:
        hosts = read_hostfile(args.hostfile) if args.hostfile else None
        tasks = plan(args.num_workers, args.num_servers, args.command, host_ip=host_ip,
                     port=free_port(host_ip), python=args.python, hosts=hosts,
                     interface=args.interface)
    except ValueError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.signal(signum, job.on_signal) for signum in handled} \
        if in_main_thread else {}
    try:
        cwd = os.getcwd()
        for task in tasks:
            argv_, env = process_args(task, dict(os.environ), cwd)
            try:
                job.start(task, argv_, env, cwd)
            except OSError as error:
                job.say(f"cannot start {task.name} ({shlex.join(argv_)}): {error}; "
                        "stopping the job")
                job.stop()
                return 127
        return job.watch()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
