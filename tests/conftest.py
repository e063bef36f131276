"""Test-wide settings: one OpenMP thread (MXNet's speed collapses when processes share a core)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
