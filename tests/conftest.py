"""Test-wide settings and fixtures.

One OpenMP thread: MXNet's speed collapses when processes share a core. The real WikiText-2
validation and test splits live in ``tests/data/wikitext-2`` inside the repository (see its
README for their CC BY-SA attribution), so that a fresh clone has everything its tests read.
"""
import importlib.util
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

import bertpretrain  # noqa: E402,F401  (its numpy fixes must precede every test module's `import mxnet`)

ROOT = pathlib.Path(__file__).resolve().parents[1]
WIKITEXT2 = ROOT / "tests" / "data" / "wikitext-2"


@pytest.fixture(scope="session")
def wikitext2_splits():
    """Folder of the real WikiText-2 validation and test splits."""
    if not (WIKITEXT2 / "wiki.valid.tokens").is_file():
        pytest.fail(f"the real WikiText-2 splits are missing: expected {WIKITEXT2}/wiki.valid.tokens, "
                    f"which the repository ships; restore it with `git checkout -- tests/data`")
    return WIKITEXT2


@pytest.fixture(scope="session")
def wiki_dir(tmp_path_factory, wikitext2_splits):
    """A data_dir whose train split is the real validation + test text (455K words)."""
    folder = tmp_path_factory.mktemp("wikitext-2")
    text = b"".join((wikitext2_splits / f"wiki.{s}.tokens").read_bytes() for s in ("valid", "test"))
    (folder / "wiki.train.tokens").write_bytes(text)
    for split in ("valid", "test"):
        (folder / f"wiki.{split}.tokens").write_bytes((wikitext2_splits / f"wiki.{split}.tokens").read_bytes())
    return folder


@pytest.fixture(scope="session")
def kernels_available():
    """Load the fused CPU kernels once; skip the test (with the reason) where they cannot be used."""
    from bertpretrain import kernels
    status = kernels.load()
    if not status.available:
        pytest.skip(f"fused kernels unavailable here: {status.reason}")
    return status


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(name, options)``: mount a small tmpfs (e.g. ``"size=1m"``, ``"size=1m,ro"``) at
    ``tmp_path / name`` for the test and return the folder: a full or read-only disk, which chmod cannot
    give root. Skips the test (with the reason) where mounting is impossible (not root)."""
    mounted = []

    def mount(name, options):
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                              text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture(scope="session")
def horovod_python():
    """A Python with Horovod's MXNet extension built with Gloo: ``$BERTPRETRAIN_HOROVOD_PYTHON``, else
    ``.venv-horovod-check/bin/python`` in the checkout (which ``.ci/run`` makes), else this Python if it has
    Horovod. Horovod must be built against MXNet, so it lives in a venv of its own; skips saying how to make one."""
    candidates = [os.environ.get("BERTPRETRAIN_HOROVOD_PYTHON"), str(ROOT / ".venv-horovod-check" / "bin" / "python")]
    if importlib.util.find_spec("horovod") is not None:  # not imported here: see distributed.import_horovod
        candidates.append(sys.executable)
    from dist_helpers.jobs import horovod_env
    for python in filter(None, candidates):
        if os.path.isfile(python) and subprocess.run(
                [python, "-c", "import bertpretrain, horovod.mxnet as hvd; assert hvd.gloo_built()"],
                capture_output=True, env=horovod_env(python)).returncode == 0:
            return python
    pytest.skip("no Python with Horovod's MXNet extension (Gloo) found: run .ci/run, or make a venv with "
                "tests/requirements-horovod-check.txt, build Horovod in it (HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 "
                "HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 pip install "
                "--no-build-isolation horovod==0.28.1), pip install -e . there, and set BERTPRETRAIN_HOROVOD_PYTHON "
                "to its python")
