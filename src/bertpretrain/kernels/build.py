"""Compile the kernel sources into a shared library, cached by content.

What: find a C++ compiler, compile every ``*.cc`` next to this file together with the
installed MXNet's ``src/lib_api.cc`` against its ``include/`` (OpenMP on, ``-O3``), and
keep the result in a cache folder under a name that hashes everything the binary
depends on: the kernel sources, MXNet's extension API files and version, the compiler
and its flags, and the CPU (the flags include ``-march=native``).

Why: the pip wheel of MXNet ships the extension API but no way to build against it,
and the user's machine decides which compiler and vector instructions exist. A
content-keyed cache means the ~10 s compile happens once per source change, and a
library built for another CPU or MXNet is never picked up by mistake.

Cache folder: ``$BERTPRETRAIN_HOME/kernels`` when set, else
``$XDG_CACHE_HOME/bertpretrain/kernels`` (default ``~/.cache/bertpretrain/kernels``).
The library is written to a temporary file in that folder and renamed into place, so
concurrent processes never load a half-written file, and its size and sha256 are recorded
beside it (``<library>.json``, a manifest of :mod:`bertpretrain.files`): a cached library that
does not match its record (truncated, overwritten, or from before records or manifests) is
rebuilt, with one log line, rather than loaded, since loading a truncated library kills the
process with a bus error. Builds into one cache take
turns under a lock; the next build removes the temporary files of a killed one. The compiler
and everything it starts run in their own process group, killed when the build fails or
times out, and by a small guard process when this one dies, even by ``kill -9``.
"""
import contextlib
import hashlib
import logging
import os
import platform
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import mxnet

from ..files import (atomic_path, cache_root, exclusive_lock, file_problem, file_record, read_manifest, remove_stale,
                     write_manifest)

SOURCE_DIR = Path(__file__).resolve().parent
# -fno-trapping-math lets loops with a conditional (a clamp, a select) vectorise; no kernel
# relies on floating-point traps.
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
# Extra compiler flags, appended to FLAGS (and part of the cache key): e.g. "-mno-avx512bf16" builds
# the kernels as for a CPU without bfloat16 instructions (tests do), "-march=x86-64-v3" for an older one.
FLAGS_ENV_VAR = "BERTPRETRAIN_KERNELS_CXXFLAGS"
COMPILE_TIMEOUT_S = 600
LIBRARY_PREFIX = "libbertpretrain_kernels-"
logger = logging.getLogger("bertpretrain.kernels")
# Kills the compiler's process group (pgid $1) when its stdin closes: when the building process dies.
_GUARD = 'read _; kill -9 -"$1"'


class BuildError(RuntimeError):
    """The kernel library cannot be built here (no compiler, or the compile failed)."""


def flags():
    """The compiler flags: FLAGS, then those of ``$BERTPRETRAIN_KERNELS_CXXFLAGS`` (shell-split)."""
    return list(FLAGS) + shlex.split(os.environ.get(FLAGS_ENV_VAR, ""))


def find_compiler():
    """The compiler command as a list: ``$CXX`` if set (may hold arguments), else g++ or c++."""
    cxx = os.environ.get("CXX", "").strip()
    if cxx:
        command = shlex.split(cxx)
        if shutil.which(command[0]) is None:
            raise BuildError(f"the C++ compiler CXX={cxx!r} was not found; "
                             "point CXX at an installed compiler or unset it")
        return command
    for name in ("g++", "c++"):
        path = shutil.which(name)
        if path:
            return [path]
    raise BuildError("no C++ compiler found (tried $CXX, g++, c++); "
                     "install g++ (e.g. apt-get install g++) or set CXX")


def cache_dir():
    """The folder holding built libraries (see the module docstring for the lookup order)."""
    return Path(cache_root()) / "kernels"


def mxnet_api_files():
    """The installed MXNet's ``include/`` folder and ``src/lib_api.cc``, checked to exist."""
    root = Path(mxnet.__file__).resolve().parent
    include, lib_api = root / "include", root / "src" / "lib_api.cc"
    if not (include / "mxnet" / "lib_api.h").is_file() or not lib_api.is_file():
        raise BuildError(f"this MXNet install ({root}) lacks include/mxnet/lib_api.h or "
                         "src/lib_api.cc, needed to build custom operators; install the "
                         "mxnet==1.9.1 wheel from PyPI")
    return include, lib_api


def kernel_sources(source_dir=SOURCE_DIR):
    """The C++ sources and headers that make up the library, in a stable order."""
    return sorted(p for p in Path(source_dir).iterdir() if p.suffix in (".cc", ".h"))


def _cpuinfo_lines(keys):
    """The distinct lines of /proc/cpuinfo that start with one of ``keys``, sorted (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return sorted({line for line in f if line.startswith(keys)})
    except OSError:
        return None


def _cpu_fingerprint():
    """Text identifying the CPU's model and instruction set (what -march=native depends on)."""
    lines = _cpuinfo_lines(("model name", "flags", "Features"))
    return "".join(lines) if lines is not None else platform.machine() + platform.processor()


def cpu_flags():
    """The instruction-set flags of this CPU (/proc/cpuinfo's ``flags``), empty where they are unknown."""
    lines = _cpuinfo_lines(("flags",)) or []
    return set(lines[0].split(":", 1)[1].split()) if lines else set()


def _compiler_identity(compiler):
    """The compiler's own ``--version`` text, so that upgrading it invalidates the cache."""
    try:
        result = subprocess.run(compiler + ["--version"], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        raise BuildError(f"cannot run the C++ compiler {' '.join(compiler)}: {error}") from error
    return " ".join(compiler) + "\n" + result.stdout


def library_key(compiler, sources, api_files):
    """sha256 over everything the built library depends on, as hex."""
    digest = hashlib.sha256()

    def add(label, data):
        digest.update(label.encode() + b"\0" + data + b"\0")

    for path in sources:
        add("source:" + path.name, path.read_bytes())
    include, lib_api = api_files
    add("lib_api.h", (include / "mxnet" / "lib_api.h").read_bytes())
    add("lib_api.cc", lib_api.read_bytes())
    add("mxnet", mxnet.__version__.encode())
    add("flags", " ".join(flags()).encode())
    add("compiler", _compiler_identity(compiler).encode())
    add("cpu", _cpu_fingerprint().encode())
    return digest.hexdigest()


def record_path(library):
    """Where the size and sha256 of ``library`` are recorded: ``<library>.json`` beside it."""
    return library.with_name(library.name + ".json")


def _damage(library):
    """Why the cached ``library`` cannot be trusted, or None when it matches its recorded size and sha256."""
    try:
        record = read_manifest(record_path(library))["files"].get(library.name)
    except FileNotFoundError:
        return "it has no recorded size and sha256"
    except (OSError, ValueError) as error:  # unreadable, or a record of another layout (before manifests)
        return f"its record {record_path(library)} is unreadable ({error})"
    if record is None:
        return f"its record {record_path(library)} does not name it"
    return file_problem(library, record)


def _run_compiler(command):
    """Run ``command`` in a process group of its own; return ``(exit status, stdout, stderr)``.

    The group (the compiler driver and the compiler, assembler and linker it starts) is killed
    when this function is left early (timeout, Ctrl-C) and, through a guard process reading a
    pipe only this process holds, when this process dies.
    """
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
    except OSError as error:
        raise BuildError(f"cannot run the C++ compiler {command[0]}: {error}") from error
    guard = subprocess.Popen(["sh", "-c", _GUARD, "guard", str(process.pid)], stdin=subprocess.PIPE,
                             start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BuildError(f"compiling the kernels took longer than {COMPILE_TIMEOUT_S} s; stopped it:\n"
                         f"{' '.join(command)}") from None
    finally:
        if process.returncode is None:  # not yet reaped, so the group id is still its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        guard.kill()
        guard.wait()
        guard.stdin.close()
    return process.returncode, stdout, stderr


def _compile(command, target):
    """Compile with ``command`` (its output path last) into ``target``, recording its size and sha256."""
    with atomic_path(target) as tmp:
        returncode, stdout, stderr = _run_compiler(command + [tmp])
        if returncode != 0:
            tail = "\n".join((stderr or stdout).strip().splitlines()[-15:])
            raise BuildError(f"compiling the kernels failed (exit {returncode}):\n"
                             f"{' '.join(command + [str(target)])}\n{tail}")
        write_manifest(record_path(target), {target.name: file_record(tmp)})


def discard(library):
    """Remove the cached ``library`` and its record (one that cannot be loaded), so that the next
    :func:`build` compiles it again."""
    library = Path(library)
    with exclusive_lock(library.parent / ".build.lock"):
        for path in (library, record_path(library)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def build(source_dir=SOURCE_DIR, cache=None, report=False):
    """Path to the compiled kernel library, compiling it first when not cached or not intact.

    ``source_dir`` and ``cache`` (default :func:`cache_dir`) exist for tests. ``report=True`` returns
    ``(path, built)``, with ``built`` False when the library came from the cache.
    Raises :class:`BuildError` naming the problem when the library cannot be built.
    """
    path, built = _build(source_dir, cache)
    return (path, built) if report else path


def _build(source_dir, cache):
    compiler = find_compiler()
    api_files = mxnet_api_files()
    sources = kernel_sources(source_dir)
    if not any(p.suffix == ".cc" for p in sources):
        raise BuildError(f"no kernel sources (*.cc) in {source_dir}; the install is incomplete")
    cache = Path(cache) if cache is not None else cache_dir()
    target = cache / f"{LIBRARY_PREFIX}{library_key(compiler, sources, api_files)[:24]}.so"
    if target.is_file() and _damage(target) is None:
        return target, False
    include, lib_api = api_files
    command = (compiler + flags() + ["-I", str(include)]
               + [str(p) for p in sources if p.suffix == ".cc"] + [str(lib_api), "-o"])
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(cache / ".build.lock") as locked:
            if target.is_file():  # damaged, or built by another process while this one waited
                damage = _damage(target)
                if damage is None:
                    return target, False
                logger.warning("the cached kernel library %s is damaged (%s): rebuilding it", target, damage)
            # Under the lock no other build runs, so every temporary file is a killed one's.
            for stale in remove_stale(cache, older_than=0 if locked else 2 * COMPILE_TIMEOUT_S):
                logger.info("removed %s, left in %s by an interrupted build", stale, cache)
            _compile(command, target)
    except OSError as error:
        raise BuildError(f"cannot build the kernels in the cache folder {cache}: {error}; "
                         "set BERTPRETRAIN_HOME to a writable folder") from error
    return target, True
