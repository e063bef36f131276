"""Build (or find in the cache) and load the kernels, and say whether they are usable (and whether
they compute in bfloat16 here).

Run ``python -m bertpretrain.kernels`` to compile ahead of time, e.g. in a container build.
Exits with status 1 when the kernels are unavailable.
"""
import sys

from .loader import bf16, load

status = load()
print(f"bertpretrain kernels: {status.path}" if status.available
      else f"bertpretrain kernels unavailable: {status.reason}")
if status.available:
    print(f"bfloat16: {'yes' if bf16().available else 'no'} ({bf16().reason})")
sys.exit(0 if status.available else 1)
