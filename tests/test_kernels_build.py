"""Building, caching and loading the fused kernels, and the fallback when that is impossible.

Needs no C++ compiler: the cache tests use a fake compiler script, and the fallback
tests run in fresh processes (a kernel library can be loaded only once per process).
"""
import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import bertpretrain  # noqa: F401  (MXNet with numpy semantics)
from bertpretrain import files
from bertpretrain.kernels import build

SRC = Path(bertpretrain.__file__).resolve().parent.parent

FAKE_CXX = """#!/bin/sh
# A stand-in compiler: prints a version, or logs the call and writes the -o file.
if [ "$1" = "--version" ]; then echo "fake-c++ 1.0"; exit 0; fi
echo "$@" >> "$FAKE_CXX_LOG"
[ -n "$FAKE_CXX_FAIL" ] && { echo "error: $FAKE_CXX_FAIL" >&2; exit 1; }
while [ $# -gt 0 ]; do
  if [ "$1" = "-o" ]; then echo "library" > "$2"; fi
  shift
done
"""


@pytest.fixture
def fake_cxx(tmp_path, monkeypatch):
    """A fake compiler as $CXX; returns a function giving how many compiles it ran."""
    script = tmp_path / "fake-cxx"
    script.write_text(FAKE_CXX)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "cxx.log"
    monkeypatch.setenv("CXX", str(script))
    monkeypatch.setenv("FAKE_CXX_LOG", str(log))
    return lambda: len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def sources(tmp_path):
    """A copy of the kernel sources that a test may edit."""
    target = tmp_path / "src"
    target.mkdir()
    for path in build.kernel_sources():
        shutil.copy(path, target / path.name)
    return target


def test_cache_reused_and_rebuilt_when_a_source_changes(fake_cxx, sources, tmp_path):
    cache = tmp_path / "cache"
    first = build.build(sources, cache)
    assert first.is_file() and fake_cxx() == 1
    assert build.build(sources, cache) == first and fake_cxx() == 1  # cache hit
    header = sources / "common.h"
    header.write_text(header.read_text() + "\n// changed\n")
    second = build.build(sources, cache)
    assert second != first and second.is_file() and fake_cxx() == 2
    assert sorted(p.name for p in cache.glob("*.so")) == sorted([first.name, second.name])


def test_cache_key_covers_flags_and_compiler(fake_cxx, sources, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = build.build(sources, cache)
    monkeypatch.setattr(build, "FLAGS", build.FLAGS + ("-DEXTRA",))
    assert build.build(sources, cache) != first and fake_cxx() == 2


def test_failed_compile_raises_and_leaves_nothing(fake_cxx, sources, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CXX_FAIL", "broken kernel")
    cache = tmp_path / "cache"
    with pytest.raises(build.BuildError, match="broken kernel"):
        build.build(sources, cache)
    assert [p.name for p in cache.iterdir()] == [".build.lock"]


def _library_files(cache):
    return sorted(p.name for p in cache.iterdir() if p.name != ".build.lock")


@pytest.mark.parametrize("damage", ["truncated", "garbage of the same size", "no record",
                                    "a record from before manifests"])
def test_damaged_cached_library_is_rebuilt_with_one_log_line(fake_cxx, sources, tmp_path, caplog, damage):
    cache = tmp_path / "cache"
    library = build.build(sources, cache)
    good = library.read_bytes()
    if damage == "truncated":
        os.truncate(library, 3)
    elif damage == "garbage of the same size":
        library.write_bytes(b"\x7fELF" + b"\0" * (len(good) - 4))
    elif damage == "no record":
        build.record_path(library).unlink()
    else:  # the layout of c41b35a and before: {"size": ..., "sha256": ...}
        build.record_path(library).write_text(json.dumps(
            {"size": len(good), "sha256": hashlib.sha256(good).hexdigest()}))
    caplog.set_level(logging.INFO, logger="bertpretrain.kernels")
    assert build.build(sources, cache) == library and fake_cxx() == 2
    assert library.read_bytes() == good
    lines = [r.getMessage() for r in caplog.records if r.name == "bertpretrain.kernels"]
    assert len(lines) == 1 and str(library) in lines[0] and "rebuilding" in lines[0], lines
    assert build.build(sources, cache) == library and fake_cxx() == 2, "the rebuilt library must be trusted"
    assert _library_files(cache) == [library.name, library.name + ".json"]


SLOW_CXX = """#!/bin/sh
# A compiler that starts a long-running child (as g++ starts cc1plus) and reports both process ids.
if [ "$1" = "--version" ]; then echo "slow-c++ 1.0"; exit 0; fi
sleep 120 &
echo "$$ $!" > "$SLOW_CXX_PIDS"
wait
"""

BUILD = "import sys; from bertpretrain.kernels import build; build.build(sys.argv[1], sys.argv[2])"


def _running(pid):
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_killed_build_takes_its_compiler_along_and_the_next_build_cleans_up(fake_cxx, sources, tmp_path,
                                                                            monkeypatch):
    script = tmp_path / "slow-cxx"
    script.write_text(SLOW_CXX)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    pids_file = tmp_path / "pids"
    cache = tmp_path / "cache"
    env = dict(os.environ, CXX=str(script), SLOW_CXX_PIDS=str(pids_file), PYTHONPATH=str(SRC))
    parent = subprocess.Popen([sys.executable, "-c", BUILD, str(sources), str(cache)], env=env)
    pids = []
    try:
        deadline = time.monotonic() + 120
        while not (pids_file.exists() and len(pids_file.read_text().split()) == 2):
            assert time.monotonic() < deadline and parent.poll() is None, "the slow compiler never started"
            time.sleep(0.05)
        pids = [int(p) for p in pids_file.read_text().split()]
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while any(_running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_running(p) for p in pids), "the compiler outlived the build killed with SIGKILL"
    finally:
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    assert _library_files(cache), "the killed build should have left its temporary file"
    library = build.build(sources, cache)  # the quick fake compiler of fake_cxx
    assert _library_files(cache) == [library.name, library.name + ".json"]


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(build.BuildError, match="CXX"):
        build.find_compiler()


def test_cache_dir_lookup(monkeypatch, tmp_path):
    monkeypatch.setenv("BERTPRETRAIN_HOME", str(tmp_path / "home"))
    assert build.cache_dir() == tmp_path / "home" / "kernels"
    monkeypatch.delenv("BERTPRETRAIN_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_dir() == tmp_path / "xdg" / "bertpretrain" / "kernels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert build.cache_dir() == Path.home() / ".cache" / "bertpretrain" / "kernels"


# A fresh process: report the kernel status, check that the model's fused op layer still matches
# builtin math, and that a raw kernel op says what is missing.
PROBE = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(name)s %(message)s")
    import bertpretrain, mxnet as mx
    from mxnet import np, npx
    from bertpretrain import kernels
    from bertpretrain.kernels import ops as raw
    from bertpretrain.model import ops
    try:
        status = kernels.load()
    except Exception as error:
        print("RAISED", type(error).__name__, error)
        sys.exit(0)
    print("AVAILABLE", status.available)
    x = np.arange(12, dtype="float32").reshape(3, 4)
    g, b = np.ones((4,)), np.zeros((4,))
    out = ops.for_backend("fused").layer_norm(mx.nd, x, g, b, 1e-5, 4)
    print("SAME", float(abs(out - npx.layer_norm(x, g, b, axis=-1)).max()) < 1e-5)
    if not status.available:
        try:
            raw.dropout(mx.nd, x, 0.5)
        except kernels.KernelsUnavailableError as error:
            print("RAW", error)
""")


def probe(tmp_path, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("CXX", "BERTPRETRAIN_KERNELS")}
    environ.update(PYTHONPATH=str(SRC), BERTPRETRAIN_HOME=str(tmp_path / "home"), **env)
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            env=environ, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_fallback_when_the_build_is_impossible(tmp_path):
    out = probe(tmp_path, CXX="/nonexistent/c++")
    assert "AVAILABLE False" in out and "SAME True" in out
    assert "RAW the fused operator bp_dropout is not registered: call bertpretrain.kernels.load()" in out
    log_lines = [l for l in out.splitlines() if l.startswith("LOG bertpretrain.kernels")]
    assert len(log_lines) == 1 and "CXX" in log_lines[0] and "builtin" in log_lines[0]


def test_env_off_skips_the_build(tmp_path):
    out = probe(tmp_path, BERTPRETRAIN_KERNELS="0", CXX="/nonexistent/c++")
    assert "AVAILABLE False" in out and "SAME True" in out
    assert "BERTPRETRAIN_KERNELS=0" in out
    assert not (tmp_path / "home").exists()


def test_env_required_makes_absence_an_error(tmp_path):
    out = probe(tmp_path, BERTPRETRAIN_KERNELS="1", CXX="/nonexistent/c++")
    assert "RAISED KernelsUnavailableError" in out and "CXX" in out


def test_env_rejects_unknown_values(tmp_path):
    out = probe(tmp_path, BERTPRETRAIN_KERNELS="yes")
    assert "RAISED KernelsSettingError BERTPRETRAIN_KERNELS='yes' is not understood" in out
    from bertpretrain.kernels import KernelsSettingError
    assert issubclass(KernelsSettingError, ValueError)


def test_a_cached_library_that_does_not_load_is_rebuilt_once(kernels_available, tmp_path):
    """A library overwritten together with its size/sha256 record passes the record check, but cannot be loaded:
    it is removed and built again (here by a stand-in compiler that copies the real library), with one log line,
    and the next run loads the new one quietly. It used to stay, with a warning on every run."""
    log = tmp_path / "cxx.log"
    script = tmp_path / "copying-cxx"
    script.write_text(f"""#!/bin/sh
if [ "$1" = "--version" ]; then echo "copying-c++ 1.0"; exit 0; fi
echo "$@" >> {log}
while [ $# -gt 0 ]; do
  if [ "$1" = "-o" ]; then cp {kernels_available.path} "$2"; fi
  shift
done
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    compiles = lambda: len(log.read_text().splitlines())  # noqa: E731
    assert "AVAILABLE True" in probe(tmp_path, CXX=str(script)) and compiles() == 1
    (library,) = (tmp_path / "home" / "kernels").glob("*.so")
    garbage = b"\x7fELF, or so it says" * 1000
    library.write_bytes(garbage)
    files.write_manifest(build.record_path(library), {library.name: files.file_record(library)})

    out = probe(tmp_path, CXX=str(script))
    assert "AVAILABLE True" in out and compiles() == 2
    warnings = [line for line in out.splitlines() if "cannot be loaded" in line]
    assert len(warnings) == 1 and str(library) in warnings[0] and "building it again" in warnings[0]
    out = probe(tmp_path, CXX=str(script))
    assert "AVAILABLE True" in out and "cannot be loaded" not in out and compiles() == 2


@pytest.mark.parametrize("where", ["under a file", "on a read-only disk"])
def test_a_cache_that_cannot_be_written_is_a_build_error_naming_it(fake_cxx, sources, tmp_path, tmpfs, where):
    """Root writes through chmod: the unwritable caches are a path below a regular file and a read-only tmpfs
    (whose folder exists, so the lock file is what fails)."""
    if where == "under a file":
        (tmp_path / "a-file").write_text("")
        cache = tmp_path / "a-file" / "kernels"
    else:
        cache = tmpfs("read-only", "size=1m,ro")
    with pytest.raises(build.BuildError, match=f"cannot build the kernels in the cache folder {cache}: .*; set "
                                               "BERTPRETRAIN_HOME to a writable folder"):
        build.build(sources, cache)
    assert fake_cxx() == 0
