"""Import MXNet once, with the fixes MXNet 1.9.1 needs on current Python and numpy.

MXNet 1.9.1 (the last release) still refers to ``numpy.bool``, an alias numpy removed in 1.24.
On Python <= 3.11 the package pins numpy < 1.24; on Python 3.12 no such numpy exists, so numpy
1.26 is used and the alias is put back here, before MXNet is imported.
"""
import logging

import numpy

if "bool" not in numpy.__dict__:
    numpy.bool = bool  # the alias MXNet 1.9.1 still uses; numpy < 1.24 had it

_INSTALL_HINT = (
    "bertpretrain needs MXNet 1.9.1, which is not installed in this Python environment. "
    "Install the CPU build with:  pip install 'bertpretrain[cpu]'  (or: pip install mxnet==1.9.1). "
    "For an NVIDIA GPU install the build for your CUDA instead, e.g.:  pip install mxnet-cu112==1.9.1  "
    "(do not install both: they provide the same `mxnet` module)."
)

try:
    import mxnet  # noqa: F401  (re-exported for the package)
except ImportError as error:
    if error.name == "mxnet":
        raise ImportError(_INSTALL_HINT) from error
    raise

# bertpretrain's blocks use MXNet's numpy interface. set_np() announces itself through the root
# logger's module-level functions, which would also install a root handler (logging.basicConfig) as
# a side effect, so that the user's own basicConfig later does nothing. A temporary NullHandler
# keeps both the announcement and the side effect out.
_quiet = logging.NullHandler()
_root_had_handlers = bool(logging.root.handlers)
if not _root_had_handlers:
    logging.root.addHandler(_quiet)
_disabled = logging.root.manager.disable
logging.disable(logging.INFO)
try:
    mxnet.npx.set_np()
finally:
    logging.disable(_disabled)
    logging.root.removeHandler(_quiet)
