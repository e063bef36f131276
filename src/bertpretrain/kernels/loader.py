"""Decide once per process whether the fused kernels are usable, and load them.

What: :func:`load` reads ``BERTPRETRAIN_KERNELS``, builds (or finds in the cache) the
kernel library and registers its operators with ``mx.library.load``, at most once per
process. It returns a :class:`KernelStatus`; when the kernels are off it logs one line
on the ``bertpretrain.kernels`` logger saying why.

Why: MXNet refuses to register the same operators twice, a build is slow, and the
model must keep working (on MXNet's builtin operators) where no compiler exists.

``BERTPRETRAIN_KERNELS``: ``0`` turns the kernels off, ``1`` makes their absence an
error (:class:`KernelsUnavailableError`), unset or empty uses them when possible.

A cached library that matches its recorded size and sha256 but cannot be loaded (overwritten together
with its record, or built against something that changed) is removed and built again, once, with one
log line; a library that still cannot be loaded is named in the reason, with the way to remove it.
"""
import ctypes
import logging
import os
import threading
from dataclasses import dataclass
from typing import Optional

import mxnet

from ..errors import UserError
from . import build

ENV_VAR = "BERTPRETRAIN_KERNELS"
logger = logging.getLogger("bertpretrain.kernels")


class KernelsUnavailableError(UserError, RuntimeError):
    """``BERTPRETRAIN_KERNELS=1`` was set but the kernels cannot be built or loaded."""


class KernelsSettingError(UserError, ValueError):
    """``BERTPRETRAIN_KERNELS`` holds something other than 0, 1 or nothing."""


@dataclass(frozen=True)
class KernelStatus:
    """Whether the kernels are loaded; if not, ``reason`` says why; ``path`` is the library."""

    available: bool
    reason: str
    path: Optional[str] = None


_lock = threading.Lock()
_status = None
_warned_contexts = set()


def _mode():
    value = os.environ.get(ENV_VAR, "").strip()
    if value not in ("", "0", "1"):
        raise KernelsSettingError(f"{ENV_VAR}={value!r} is not understood: set it to 0 (off) or 1 (required), "
                                  "or unset it (use the fused kernels when they can be built)")
    return value


def _try_load():
    """Build and load the library; a :class:`KernelStatus` either way. A cached library that does not load
    is removed and built again, once."""
    for attempt in (1, 2):
        try:
            path, built = build.build(report=True)
        except build.BuildError as error:
            return KernelStatus(False, f"the kernel library could not be built: {error}")
        try:
            mxnet.library.load(str(path), False)
        except (mxnet.base.MXNetError, OSError) as error:
            problem = _first_line(error)
            if attempt == 1 and not built:
                logger.warning("the cached kernel library %s cannot be loaded (%s): removing it and building it "
                               "again", path, problem)
                try:
                    build.discard(path)
                except OSError as removal:
                    return KernelStatus(False, f"the cached kernel library {path} cannot be loaded ({problem}) nor "
                                               f"removed ({removal}): remove it by hand (rm {path}*)")
                continue
            return KernelStatus(False, f"loading the kernel library {path}, just built, failed ({problem}); remove "
                                       f"it (rm {path}*) to build it anew on the next run")
        return KernelStatus(True, "loaded", str(path))


def _first_line(error):
    """The first line of an error's message (MXNet's carry a C++ stack trace after it)."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def load():
    """The process-wide :class:`KernelStatus`, building and loading the library on first call.

    Raises :class:`KernelsUnavailableError` when ``BERTPRETRAIN_KERNELS=1`` and the kernels
    cannot be used, and :class:`KernelsSettingError` (a ValueError) for any other value than 0, 1 or unset.
    """
    global _status
    with _lock:
        if _status is None:
            mode = _mode()
            if mode == "0":
                status = KernelStatus(False, f"turned off by {ENV_VAR}=0")
                logger.info("bertpretrain kernels off, using MXNet's builtin operators: %s",
                            status.reason)
            else:
                status = _try_load()
                if not status.available:
                    if mode == "1":
                        raise KernelsUnavailableError(
                            f"{ENV_VAR}=1 requires the fused kernels, but {status.reason}. Or set {ENV_VAR}=0 (or "
                            "unset it) to train on MXNet's builtin operators")
                    logger.warning("bertpretrain kernels off, using MXNet's builtin "
                                   "operators: %s (set %s=0 to silence this)",
                                   status.reason, ENV_VAR)
            _status = status
        return _status


def keep_off(reason):
    """Use MXNet's builtin operators for the rest of this process, because of ``reason``.

    For uses the kernel library cannot share a process with (Horovod's MXNet extension). Call it
    before any model is traced; an error if the library is already loaded, since MXNet cannot
    unload it. Logs one line, like :func:`load` does when the kernels are off.
    """
    global _status
    with _lock:
        if _status is not None and _status.available:
            raise RuntimeError(f"the fused kernels are already loaded in this process, but {reason}: "
                               f"set {ENV_VAR}=0 before starting it")
        if _mode() == "1":
            raise KernelsUnavailableError(f"{ENV_VAR}=1 requires the fused kernels, but {reason}")
        if _status is None:
            _status = KernelStatus(False, reason)
            logger.info("bertpretrain kernels off, using MXNet's builtin operators: %s", reason)


def wanted():
    """False when ``BERTPRETRAIN_KERNELS=0`` turns the kernels off; ValueError for an unknown value.

    Reads the variable only: whether the kernels can be built and loaded is :func:`load`'s question.
    """
    return _mode() != "0"


def available():
    """True when the kernels are loaded in this process (see :func:`load`)."""
    return load().available


@dataclass(frozen=True)
class Bf16Support:
    """Whether the loaded kernels compute in bfloat16 (``bp::gemm_bf16``); if not, ``reason`` says why."""

    available: bool
    reason: str


_bf16 = None


def bf16():
    """The process-wide :class:`Bf16Support`: the kernels are loaded and were built for a target
    with the AVX512_BF16 instructions (``vdpbf16ps``; AMD Zen 4 and later, Intel Cooper Lake, Sapphire
    Rapids and later), which the library itself reports (``bp_has_bf16``)."""
    global _bf16
    status = load()
    with _lock:
        if _bf16 is None:
            if not status.available:
                _bf16 = Bf16Support(False, f"the fused kernels are not loaded ({status.reason})")
            elif ctypes.CDLL(status.path).bp_has_bf16():
                _bf16 = Bf16Support(True, "the kernels have AVX512_BF16 (vdpbf16ps)")
            elif "avx512_bf16" not in build.cpu_flags():
                _bf16 = Bf16Support(False, "this CPU lacks the AVX512_BF16 instructions "
                                           "(vdpbf16ps; no avx512_bf16 in /proc/cpuinfo)")
            else:
                _bf16 = Bf16Support(False, "the kernels were built without the AVX512_BF16 "
                                           f"instructions (vdpbf16ps): compiler flags "
                                           f"{' '.join(build.flags())!r}")
        return _bf16


def usable_on(ctx):
    """True when the kernels are loaded and ``ctx`` is a CPU context (they are CPU-only).

    Logs once per non-CPU context that MXNet's builtin operators are used there.
    """
    if not available():
        return False
    if ctx.device_type == "cpu" or ctx.device_type == "cpu_pinned":
        return True
    with _lock:
        if str(ctx) not in _warned_contexts:
            _warned_contexts.add(str(ctx))
            logger.info("bertpretrain kernels are CPU-only: using MXNet's builtin operators "
                        "on %s", ctx)
    return False
