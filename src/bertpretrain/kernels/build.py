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
concurrent processes never load a half-written file.
"""
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import mxnet

from ..files import cache_root

SOURCE_DIR = Path(__file__).resolve().parent
# -fno-trapping-math lets loops with a conditional (a clamp, a select) vectorise; no kernel
# relies on floating-point traps.
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
BLAS_LIBRARY = "libopenblas.so.0"
COMPILE_TIMEOUT_S = 600
LIBRARY_PREFIX = "libbertpretrain_kernels-"


class BuildError(RuntimeError):
    """The kernel library cannot be built here (no compiler, or the compile failed)."""


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
    """The installed MXNet's ``include/`` folder, ``src/lib_api.cc`` and the OpenBLAS it ships
    (the GEMMs of the fused MLM decoder call it), checked to exist."""
    root = Path(mxnet.__file__).resolve().parent
    include, lib_api, blas = root / "include", root / "src" / "lib_api.cc", root / BLAS_LIBRARY
    if not (include / "mxnet" / "lib_api.h").is_file() or not lib_api.is_file():
        raise BuildError(f"this MXNet install ({root}) lacks include/mxnet/lib_api.h or "
                         "src/lib_api.cc, needed to build custom operators; install the "
                         "mxnet==1.9.1 wheel from PyPI")
    if not blas.is_file():
        raise BuildError(f"this MXNet install ({root}) lacks {BLAS_LIBRARY}, which the kernels "
                         "link against; install the mxnet==1.9.1 wheel from PyPI")
    return include, lib_api, blas


def kernel_sources(source_dir=SOURCE_DIR):
    """The C++ sources and headers that make up the library, in a stable order."""
    return sorted(p for p in Path(source_dir).iterdir() if p.suffix in (".cc", ".h"))


def _cpu_fingerprint():
    """Text identifying the CPU's model and instruction set (what -march=native depends on)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


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
    include, lib_api, blas = api_files
    add("blas", str(blas).encode())
    add("lib_api.h", (include / "mxnet" / "lib_api.h").read_bytes())
    add("lib_api.cc", lib_api.read_bytes())
    add("mxnet", mxnet.__version__.encode())
    add("flags", " ".join(FLAGS).encode())
    add("compiler", _compiler_identity(compiler).encode())
    add("cpu", _cpu_fingerprint().encode())
    return digest.hexdigest()


def build(source_dir=SOURCE_DIR, cache=None):
    """Path to the compiled kernel library, compiling it first when not cached.

    ``source_dir`` and ``cache`` (default :func:`cache_dir`) exist for tests.
    Raises :class:`BuildError` naming the problem when the library cannot be built.
    """
    compiler = find_compiler()
    api_files = mxnet_api_files()
    sources = kernel_sources(source_dir)
    if not any(p.suffix == ".cc" for p in sources):
        raise BuildError(f"no kernel sources (*.cc) in {source_dir}; the install is incomplete")
    cache = Path(cache) if cache is not None else cache_dir()
    target = cache / f"{LIBRARY_PREFIX}{library_key(compiler, sources, api_files)[:24]}.so"
    if target.is_file():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=cache)
        os.close(fd)
    except OSError as error:
        raise BuildError(f"cannot write to the kernel cache folder {cache}: {error}; "
                         "set BERTPRETRAIN_HOME to a writable folder") from error
    include, lib_api, blas = api_files
    command = (compiler + list(FLAGS) + ["-I", str(include)]
               + [str(p) for p in sources if p.suffix == ".cc"] + [str(lib_api)]
               + [str(blas), f"-Wl,-rpath,{blas.parent}", "-o", tmp])
    try:
        result = subprocess.run(command, capture_output=True, text=True,
                                timeout=COMPILE_TIMEOUT_S)
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise BuildError(f"compiling the kernels failed (exit {result.returncode}):\n"
                             f"{' '.join(command)}\n{tail}")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as error:
        raise BuildError(f"running the C++ compiler failed: {error}") from error
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target

