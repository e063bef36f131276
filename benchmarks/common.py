"""What the benchmarks share: the machine they ran on, timing, the test data, child processes and
an earlier version of the library to compare with.

- :func:`header` prints the line every benchmark starts with: what it measures, the CPU (absolute
  speeds compare only on one CPU, in one run) and the load average (how shared the machine was).
- :func:`interleaved` times variants in turns, so that other work on the machine slows each alike.
- :data:`TEST_DATA`, :data:`WIKITEXT2`: the test suite's data (the real WikiText-2 validation and
  test splits, the Grimm tales).
- :func:`run_child` runs a script in a fresh process (OpenMP and MXNet read their settings at
  start-up) that imports the library from a chosen :class:`Source`, or in another interpreter (the
  PyTorch reference's); :func:`child_json` reads the JSON line it ends with.
- :func:`precision_options`: in a child, how to ask the library it imported for a precision (fp32
  or bf16), or why it cannot (a version from before bfloat16, a CPU without it).
- :func:`sources` gives this checkout and, with ``--baseline REF``, the commit REF checked out into
  a temporary git worktree: the same benchmark body then runs on both in one run (its children
  import REF's ``src`` through ``PYTHONPATH`` and build REF's kernels under a temporary cache root),
  and nothing is installed. The body must use only library calls that exist in both versions.
"""
import contextlib
import dataclasses
import inspect
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SRC = REPO / "src"
#: The test suite's data; in it, the real WikiText-2 validation and test splits.
TEST_DATA = REPO / "tests" / "data"
WIKITEXT2 = TEST_DATA / "wikitext-2"
#: Set in a child's environment: the ``src`` folder its ``bertpretrain`` must come from.
SOURCE_ENV = "BENCH_LIBRARY_SRC"


# ---------------------------------------------------------------------------------------- machine

_LSCPU_FIELDS = {"Model name": "model name", "CPU family": "cpu family", "Model": "model", "Flags": "flags"}
#: The instruction sets that decide the kernels' speed, named when the CPU has them.
_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_description():
    """The CPU as ``lscpu`` names it, with the instruction sets of :data:`_FLAGS` it has, e.g. ``'AMD EPYC
    (cpu family 26, model 2), 2 logical CPUs, avx2 avx512f avx512_bf16'`` (from /proc/cpuinfo, else the
    platform, where there is no lscpu)."""
    fields = {}  # named as /proc/cpuinfo names them
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30,
                                env=dict(os.environ, LC_ALL="C")).stdout
    except (OSError, subprocess.SubprocessError):
        output = ""
    for line in output.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in _LSCPU_FIELDS:
            fields[_LSCPU_FIELDS[key.strip()]] = value.strip()
    if "model name" not in fields:
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    ids = ", ".join(f"{key} {fields[key]}" for key in ("cpu family", "model") if fields.get(key))
    flags = " ".join(flag for flag in _FLAGS if flag in fields.get("flags", "").split())
    return f"{name}{f' ({ids})' if ids else ''}, {os.cpu_count()} logical CPUs{f', {flags}' if flags else ''}"


def header(title):
    """Print ``title``, then the CPU and the load average: every benchmark's first lines."""
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{title}\nCPU: {cpu_description()}; load average (1, 5, 15 min) {load} at the start "
          "(above 0 means other work shares the machine)", flush=True)


# ---------------------------------------------------------------------------------------- timing

def clocks():
    """(wall-clock, process CPU) seconds now."""
    return time.perf_counter(), time.process_time()


#: The clocks a benchmark can time with: wall-clock, or the CPU time of the process (all its threads),
#: which other work on a shared machine stretches far less (with OMP_WAIT_POLICY=PASSIVE, so that
#: waiting OpenMP threads do not spin).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def add_clock_argument(parser, timed):
    """Add ``--clock wall|cpu`` to a benchmark's ``parser``: what its ``timed`` things (calls, steps) are
    timed by."""
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help=f"time {timed} in wall-clock seconds, or in the process's CPU seconds (less stretched "
                             "by other work on a shared machine; OpenMP threads then wait passively)")


def use_clock(clock):
    """Prepare this process's children for ``clock`` (with ``cpu``, OMP_WAIT_POLICY=PASSIVE unless set:
    CPU time is then work, not spinning); return a description of the setting for the header."""
    if clock == "cpu":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return f"{clock} clock, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"


def interleaved(variants, repeats, warmup=1, sync=None, clock="wall"):
    """Time every function of ``variants``: ``warmup`` untimed rounds, then ``repeats`` timed ones, each
    calling the variants once in turn, so that load from other processes hits them alike. ``sync``
    (e.g. ``mx.nd.waitall``), when given, runs before each clock read so that asynchronous work is
    counted where it was started; ``clock`` names one of :data:`CLOCKS`. Returns per variant the list
    of its seconds."""
    sync, now = sync or (lambda: None), CLOCKS[clock]
    for _ in range(warmup):
        for run in variants:
            run()
    times = [[] for _ in variants]
    for _ in range(repeats):
        for run, bucket in zip(variants, times):
            sync()
            start = now()
            run()
            sync()
            bucket.append(now() - start)
    return times


def median_best_ms(seconds):
    """``(median, best)`` of a list of seconds, in milliseconds."""
    return 1e3 * statistics.median(seconds), 1e3 * min(seconds)


# ---------------------------------------------------------------------------------------- versions

@dataclasses.dataclass(frozen=True)
class Source:
    """A version of the library to run a benchmark body on: ``name`` (shown in the results), its
    ``src`` folder, and the cache root of its kernel builds (None: the user's, as any run's)."""

    name: str
    src: pathlib.Path
    home: str = None


def _git(*args, check=True):
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                          check=check).stdout.strip()


def current_source():
    """This checkout, named by its commit (``+changes`` when files differ from it)."""
    try:
        name = _git("rev-parse", "--short", "HEAD")
        if _git("status", "--porcelain", "--untracked-files=no", "--", "src"):
            name += "+changes"
    except (OSError, subprocess.CalledProcessError):
        name = "current"
    return Source(name, SRC)


@contextlib.contextmanager
def sources(baseline=None):
    """Yield ``[this checkout]``, or with ``baseline`` (a commit, tag or branch) ``[this checkout, baseline]``:
    the baseline checked out (detached) into a temporary git worktree with its own kernel cache root,
    both removed on exit."""
    current = current_source()
    if not baseline:
        yield [current]
        return
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{baseline}^{{commit}}")
    except (OSError, subprocess.CalledProcessError):
        sys.exit(f"error: --baseline {baseline!r} is not a commit of {REPO} (git rev-parse found none): "
                 "give a commit, tag or branch, e.g. --baseline HEAD~3")
    with tempfile.TemporaryDirectory(prefix="bertpretrain-baseline-") as folder:
        tree = pathlib.Path(folder, "tree")
        _git("worktree", "prune")  # registrations of worktrees whose folder is gone (a killed run's)
        _git("worktree", "add", "--detach", "--quiet", str(tree), commit)
        try:
            if not (tree / "src" / "bertpretrain").is_dir():
                sys.exit(f"error: --baseline {baseline} has no src/bertpretrain to import")
            name = baseline if commit.startswith(baseline) else f"{baseline} ({commit[:7]})"
            yield [current, Source(name, tree / "src", str(pathlib.Path(folder, "home")))]
        finally:
            _git("worktree", "remove", "--force", str(tree), check=False)
            _git("worktree", "prune", check=False)


def add_baseline_arguments(parser, rounds=1):
    """Add ``--baseline REF`` and ``--rounds N`` (default ``rounds``) to a benchmark's ``parser``."""
    parser.add_argument("--baseline", metavar="REF",
                        help="also run on the library of commit REF (checked out into a temporary git "
                             "worktree, its kernels built apart; nothing is installed), in the same run")
    parser.add_argument("--rounds", type=int, default=rounds,
                        help=f"child processes per library (and thread count), taking turns (default: {rounds})")


def alternating(items, rounds):
    """``(round, item)`` for ``rounds`` rounds over ``items``, every other round in reverse order, so
    that no item always runs first (on a machine whose load drifts)."""
    for index in range(rounds):
        for item in (items if index % 2 == 0 else items[::-1]):
            yield index, item


# ---------------------------------------------------------------------------------------- children

def run_child(args, threads=None, source=None, capture=True, python=None):
    """Run ``python *args`` in a fresh process; return its stdout (None when not ``capture``d).

    The child imports ``bertpretrain`` from ``source`` (default: this checkout) through ``PYTHONPATH``
    (checked by :func:`import_library`), builds its kernels under ``source.home`` when set, and runs
    ``threads`` OpenMP threads when given (else as this process's environment says). ``python`` is the
    interpreter (default: this one; another for a reference that must not share MXNet's, e.g. one with
    torch). Its stderr passes through. A failing child stops the benchmark with its exit status.
    """
    source = source or current_source()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(source.src)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env[SOURCE_ENV] = str(source.src)
    if source.home:
        env["BERTPRETRAIN_HOME"] = source.home
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    try:
        result = subprocess.run([python or sys.executable, *map(str, args)], env=env, text=True,
                                stdout=subprocess.PIPE if capture else None)
    except OSError as error:
        sys.exit(f"error: cannot start {python or sys.executable} for {args[0]}: {error}")
    if result.returncode != 0:
        where = python or source.name
        sys.exit(f"error: the child process {' '.join(map(str, args[:3]))} ... on {where} failed "
                 f"(exit status {result.returncode}); its messages are above")
    return result.stdout


def child_json(args, threads=None, source=None, python=None):
    """The JSON value on the last line of a :func:`run_child`'s output (the lines before pass through)."""
    lines = run_child(args, threads, source, python=python).strip().splitlines()
    if lines[:-1]:
        print("\n".join(lines[:-1]), flush=True)
    return json.loads(lines[-1])


def import_library():
    """Import ``bertpretrain`` (before MXNet, as it must be) in a child of :func:`run_child`, checking
    that it comes from the source the parent asked for; return the module."""
    import bertpretrain
    expected = os.environ.get(SOURCE_ENV)
    if expected and pathlib.Path(expected).resolve() not in pathlib.Path(bertpretrain.__file__).resolve().parents:
        sys.exit(f"error: bertpretrain was imported from {bertpretrain.__file__}, not from {expected}: an "
                 "installed copy shadows PYTHONPATH; run the benchmark from a virtual environment where "
                 "bertpretrain is installed in editable mode (pip install -e .) or not at all")
    return bertpretrain


def precision_options(precision):
    """In a child, after :func:`import_library`: ``(keywords, None)``, the keywords that ask the library for
    ``precision`` (``"fp32"`` or ``"bf16"``) in ``BERTModel(...)`` and ``train_bert(...)``, or ``(None, why
    not)``. A version from before bfloat16 computes in float32 only and takes no ``precision`` (its fp32
    keywords are none); ``train_bert``'s default is ``"auto"`` where it has one, so fp32 is always asked
    for by name there."""
    from bertpretrain.model import BERTModel
    if "precision" not in inspect.signature(BERTModel).parameters:
        if precision == "fp32":
            return {}, None
        return None, "this version of the library has no precision option (float32 only)"
    if precision == "bf16":
        from bertpretrain import kernels
        support = kernels.bf16()
        if not support.available:
            return None, support.reason
    return {"precision": precision}, None
