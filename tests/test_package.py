"""Importing the package: the MXNet check, and no side effects on the user's logging."""
import subprocess
import sys


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_missing_mxnet_names_what_to_install():
    done = _run("import sys; sys.modules['mxnet'] = None; import bertpretrain")
    assert done.returncode != 0
    assert "ImportError: bertpretrain needs MXNet 1.9.1" in done.stderr
    assert "pip install 'bertpretrain[cpu]'" in done.stderr and "mxnet-cu112==1.9.1" in done.stderr


def test_importing_leaves_the_users_logging_alone():
    done = _run("import logging, bertpretrain; print(len(logging.root.handlers))")
    assert done.stdout.strip() == "0", "importing bertpretrain configured the root logger"
    assert "NumPy" not in done.stderr
