"""Build (or find in the cache) and load the kernels, and say whether they are usable.

Run ``python -m bertpretrain.kernels`` to compile ahead of time, e.g. in a container build.
Exits with status 1 when the kernels are unavailable.
"""
import sys

from .loader import load

status = load()
print(f"bertpretrain kernels: {status.path}" if status.available
      else f"bertpretrain kernels unavailable: {status.reason}")
sys.exit(0 if status.available else 1)
