"""Test-wide settings and fixtures.

One OpenMP thread: MXNet's speed collapses when processes share a core. The real WikiText-2
validation and test splits live in ``tests/data/wikitext-2`` inside the repository (see its
README for their CC BY-SA attribution), so that a fresh clone has everything its tests read.
"""
import os
import pathlib
import subprocess

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

import bertpretrain  # noqa: E402,F401  (its numpy fixes must precede every test module's `import mxnet`)

WIKITEXT2 = pathlib.Path(__file__).resolve().parent / "data" / "wikitext-2"


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
