"""bp::sgemm and bp::sgemm_serial (kernels/gemm.cc) against numpy, through their C entry points
``bp_sgemm`` and ``bp_sgemm_serial`` (ctypes); and the bfloat16 GEMMs bp::gemm_bf16 and
bp::gemm_bf16_serial (``bp_gemm_bf16``, ``bp_gemm_bf16_serial``, built only for a target with
AVX512_BF16) against numpy on the same inputs rounded to bfloat16.

Every combination of transposes, sizes that are not multiples of the micro-tile (1, 7, 129, ...)
or that need several depth and column blocks (k > 512 in float32, k > 2048 in bfloat16 (see
test_bf16_model_shapes); n > 1024), alpha and beta, leading dimensions larger than the rows
(sub-matrices of a wider array), and with several OpenMP threads in a subprocess (this process
runs one, see conftest.py), since the split of c into tasks only happens there.
"""
import ctypes
import itertools
import os
import pathlib
import subprocess
import sys

import numpy as onp
import pytest

pytestmark = pytest.mark.usefixtures("kernels_available")

SHAPES = [(1, 1, 1), (7, 5, 3), (13, 33, 129), (129, 65, 7), (37, 1030, 9), (25, 70, 1100),
          (300, 40, 130)]


def library(path, name="bp_sgemm"):
    """The function ``name`` (``bp_sgemm``, ``bp_sgemm_serial``, ``bp_gemm_bf16`` or
    ``bp_gemm_bf16_serial``) of the kernel library at ``path``, with its argument types."""
    fn = getattr(ctypes.CDLL(str(path)), name)
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    fn.argtypes = [ctypes.c_int, ctypes.c_int, i64, i64, i64, f32, ptr, i64, ptr, i64, f32, ptr, i64]
    fn.restype = None
    return fn


def gemm(fn, trans_a, trans_b, a, b, c, alpha=1.0, beta=0.0):
    """c = alpha * op(a) op(b) + beta * c in place; a, b, c float32 with unit column stride."""
    for x in (a, b, c):
        assert x.dtype == onp.float32 and x.strides[1] == 4
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    fn(int(trans_a), int(trans_b), m, n, k, alpha, a.ctypes.data, a.strides[0] // 4,
       b.ctypes.data, b.strides[0] // 4, beta, c.ctypes.data, c.strides[0] // 4)


def padded(rng, rows, cols, pad):
    """A (rows, cols) float32 view into a (rows, cols + pad) array: leading dimension > cols."""
    return rng.normal(size=(rows, cols + pad)).astype("float32")[:, :cols]


def to_bfloat16(x):
    """float32 ``x`` rounded to the nearest bfloat16 (ties to even), as float32 (no NaN here)."""
    bits = x.astype(onp.float32).view(onp.uint32).astype(onp.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(onp.uint32).view(onp.float32)


def has_bf16(path):
    """Whether the library at ``path`` was built with the bfloat16 GEMMs (``bp_has_bf16``)."""
    return bool(ctypes.CDLL(str(path)).bp_has_bf16())


def check(fn, m, n, k, trans_a, trans_b, alpha, beta, pad, seed=0, rounding=None):
    """``fn`` against float64 numpy for one case; an AssertionError naming it if they differ.

    ``rounding`` (e.g. :func:`to_bfloat16`) is applied to a and b for the reference: what a GEMM
    with rounded operands and float32 accumulation must match to float32 accuracy.
    """
    rng = onp.random.RandomState(seed)
    a = padded(rng, *((k, m) if trans_a else (m, k)), pad)
    b = padded(rng, *((n, k) if trans_b else (k, n)), pad)
    c = padded(rng, m, n, pad)
    if beta == 0.0:
        c[...] = onp.nan  # must be overwritten, never read
    ra, rb = (a, b) if rounding is None else (rounding(a), rounding(b))
    want = alpha * ((ra.T if trans_a else ra).astype("float64") @ (rb.T if trans_b else rb))
    if beta != 0.0:
        want += beta * c
    gemm(fn, trans_a, trans_b, a, b, c, alpha, beta)
    scale = onp.abs(want).max() + 1.0
    error = onp.abs(c - want).max() / scale
    assert error < 1e-5, (m, n, k, trans_a, trans_b, alpha, beta, pad, error)


def check_all(fn, rounding=None):
    for (m, n, k), trans_a, trans_b in itertools.product(SHAPES, (False, True), (False, True)):
        check(fn, m, n, k, trans_a, trans_b, 1.0, 0.0, pad=0, rounding=rounding)
        check(fn, m, n, k, trans_a, trans_b, -0.5, 2.0, pad=3, rounding=rounding)


@pytest.mark.parametrize("name", ["bp_sgemm", "bp_sgemm_serial"])
def test_all_transposes_odd_sizes_alpha_beta_and_leading_dimensions(kernels_available, name):
    """The parallel GEMM and the one-thread GEMM that kernels call inside their parallel regions."""
    check_all(library(kernels_available.path, name))


@pytest.mark.parametrize("trans_a, trans_b", [(False, True), (False, False), (True, False)])
def test_model_shapes(kernels_available, trans_a, trans_b):
    """A projection of 1,000 tokens of width 128 onto 384 outputs, and its two gradients' forms."""
    check(library(kernels_available.path), 1000, 384, 128, trans_a, trans_b, 1.0, 0.0, pad=0)


def test_no_product_scales_c(kernels_available):
    """k == 0 or alpha == 0: c = beta * c (and zeros with beta == 0, even over NaN)."""
    fn = library(kernels_available.path)
    rng = onp.random.RandomState(0)
    a, b = padded(rng, 5, 4, 0), padded(rng, 4, 6, 0)
    c = padded(rng, 5, 6, 2)
    want = 3.0 * c
    gemm(fn, False, False, a, b, c, 0.0, 3.0)
    onp.testing.assert_allclose(c, want, rtol=1e-6)
    c[...] = onp.nan
    gemm(fn, False, False, a[:, :0], b[:0], c, 1.0, 0.0)
    assert (c == 0).all()


def test_several_threads(kernels_available):
    """The same checks with 3 OpenMP threads: c split into tasks across threads, or the depth (the
    bias added once, by the first thread)."""
    tests = pathlib.Path(__file__).resolve().parent
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_kernels_gemm as t; "
            "t.check_all(t.library(sys.argv[2])); t.check_all(t.library(sys.argv[2], 'bp_sgemm_serial')); "
            "t.check_bias(t.ctypes.CDLL(sys.argv[2]).bp_sgemm_bias); "
            "[t.check(t.library(sys.argv[2]), 3000, 384, 128, ta, tb, 1.0, 0.5, 1) "
            "for ta in (False, True) for tb in (False, True)]")
    env = dict(os.environ, OMP_NUM_THREADS="3")
    done = subprocess.run([sys.executable, "-c", code, str(tests), str(kernels_available.path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("isa_flags", [["-march=native", "-mno-avx512f"], ["-march=x86-64"]],
                         ids=["avx2", "sse2"])
def test_other_instruction_sets(tmp_path, isa_flags):
    """gemm.cc alone, built for a CPU without AVX-512 (AVX2/FMA tiles, on x86 machines that have
    AVX2) and for baseline x86-64 (the portable 4-wide tiles): the same results."""
    from bertpretrain.kernels import build
    if os.uname().machine != "x86_64":
        pytest.skip("these instruction-set flags are x86's")
    target = tmp_path / "libgemm.so"
    flags = [f for f in build.FLAGS if f != "-march=native"] + isa_flags
    done = subprocess.run(build.find_compiler() + flags
                          + [str(build.SOURCE_DIR / "gemm.cc"), "-o", str(target)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if "-mno-avx512f" in isa_flags and "avx2" not in pathlib.Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU cannot run AVX2 code")
    check_all(library(target))


@pytest.fixture
def bf16_library(kernels_available):
    """The kernel library's path when it has the bfloat16 GEMMs; skips the test otherwise."""
    if not has_bf16(kernels_available.path):
        pytest.skip("the kernels were built without AVX512_BF16 (this CPU lacks it)")
    return kernels_available.path


@pytest.mark.parametrize("name", ["bp_gemm_bf16", "bp_gemm_bf16_serial"])
def test_bf16_all_transposes_odd_sizes_alpha_beta_and_leading_dimensions(bf16_library, name):
    """Odd depths (an unpaired last depth), edges of 16-column and 16-pair blocks, several depth
    blocks (k = 1030, 1100), every transpose: float32 accuracy on bfloat16-rounded operands."""
    check_all(library(bf16_library, name), rounding=to_bfloat16)


def test_bf16_rounds_its_operands(bf16_library):
    """The bfloat16 GEMM really rounds: against the unrounded float32 product it is off by about
    bfloat16's precision (2^-9 relative per operand), far more than float32 accumulation."""
    with pytest.raises(AssertionError):
        check(library(bf16_library, "bp_gemm_bf16"), 64, 64, 256, False, True, 1.0, 0.0, pad=0)
    check(library(bf16_library, "bp_gemm_bf16"), 64, 64, 256, False, True, 1.0, 0.0, pad=0,
          rounding=to_bfloat16)


@pytest.mark.parametrize("shape", [(1000, 384, 128), (300, 300, 2000), (1500, 64, 3000),
                                   (400, 1500, 4301), (50, 30000, 160)],
                         ids=["projection", "split-depth", "several-depth-blocks", "wide-tasks", "large-panels"])
def test_bf16_model_shapes(bf16_library, shape):
    """A projection of 1,000 tokens (and its gradients' forms), a weight gradient whose depth the
    threads split, a product over several depth blocks with op(b) packed once, tasks wider than
    512 columns over an odd depth of three blocks (a transposed a read two rows at a time, with
    prefetches), and few rows on a large op(b) (> 8 MB packed: one row task, the threads sharing
    the columns, as the MLM decoder's chunks)."""
    fn = library(bf16_library, "bp_gemm_bf16")
    for trans_a, trans_b in [(False, True), (False, False), (True, False)]:
        check(fn, *shape, trans_a, trans_b, 1.0, 0.0, pad=0, rounding=to_bfloat16)


def check_bias(fn, rounding=None):
    """``fn`` (``bp_sgemm_bias`` or ``bp_gemm_bf16_bias``): the dense layer's form, a bias added to
    every row, with beta, at edges too, over one depth block, over several where the depth is split
    among the threads and over several where c is."""
    rng = onp.random.RandomState(1)
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    fn.argtypes = [ctypes.c_int, ctypes.c_int, i64, i64, i64, f32, ptr, i64, ptr, i64, f32, ptr,
                   i64, ptr]
    rounding = rounding or (lambda x: x)
    for m, n, k, beta in [(100, 70, 129, 0.0), (30, 33, 1100, 0.5), (1100, 40, 2300, 0.5)]:
        a, b = padded(rng, m, k, 0), padded(rng, n, k, 0)
        c, bias = padded(rng, m, n, 0), rng.normal(size=n).astype("float32")
        want = rounding(a).astype("float64") @ rounding(b).T + beta * c + bias
        fn(0, 1, m, n, k, 1.0, a.ctypes.data, k, b.ctypes.data, k, beta, c.ctypes.data, n,
           bias.ctypes.data)
        assert onp.abs(c - want).max() / (onp.abs(want).max() + 1) < 1e-5, (m, n, k, beta)


def test_bias(kernels_available):
    """bp::sgemm with a bias, as bp::gemm_bf16 takes it (the same arguments)."""
    check_bias(ctypes.CDLL(str(kernels_available.path)).bp_sgemm_bias)


def test_bf16_bias_and_packed_operand(bf16_library):
    """The dense layer's form (see check_bias) and a product through a PackedBf16 (op(b) packed
    once, as the MLM kernel reuses its weight), also over several depth blocks where the plain call
    would split the depth."""
    check_bias(ctypes.CDLL(str(bf16_library)).bp_gemm_bf16_bias, to_bfloat16)
    packed = library(bf16_library, "bp_gemm_bf16_packed")
    for (m, n, k), trans_a, trans_b in itertools.product([(37, 70, 9), (300, 200, 1100)],
                                                         (False, True), (False, True)):
        check(packed, m, n, k, trans_a, trans_b, -0.5, 2.0, pad=3, rounding=to_bfloat16)


def test_bf16_several_threads(bf16_library):
    """The bfloat16 checks with 3 OpenMP threads: op(b) packed by all threads, c split in tasks, or
    the depth (the bias added once)."""
    tests = pathlib.Path(__file__).resolve().parent
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_kernels_gemm as t; "
            "fn = t.library(sys.argv[2], 'bp_gemm_bf16'); t.check_all(fn, t.to_bfloat16); "
            "t.check_bias(t.ctypes.CDLL(sys.argv[2]).bp_gemm_bf16_bias, t.to_bfloat16); "
            "[t.check(fn, 3000, 384, 128, ta, tb, 1.0, 0.5, 1, rounding=t.to_bfloat16) "
            "for ta in (False, True) for tb in (False, True)]; "
            "t.check(fn, 300, 500, 5000, True, False, 1.0, 0.0, 0, rounding=t.to_bfloat16); "
            "t.check(fn, 50, 30000, 160, False, True, 1.0, 0.5, 0, rounding=t.to_bfloat16); "
            "t.check(t.library(sys.argv[2], 'bp_gemm_bf16_packed'), 37, 20000, 300, False, False, "
            "1.0, 0.0, 0, rounding=t.to_bfloat16)")
    env = dict(os.environ, OMP_NUM_THREADS="3")
    done = subprocess.run([sys.executable, "-c", code, str(tests), str(bf16_library)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_build_without_bf16_has_no_bf16_gemm(tmp_path):
    """gemm.cc built for a target without AVX512_BF16 compiles, says so (bp_has_bf16() == 0),
    has no bfloat16 entry points, and its float32 GEMM is unchanged."""
    from bertpretrain.kernels import build
    if os.uname().machine != "x86_64":
        pytest.skip("these instruction-set flags are x86's")
    target = tmp_path / "libgemm.so"
    done = subprocess.run(build.find_compiler() + list(build.FLAGS) + ["-mno-avx512bf16"]
                          + [str(build.SOURCE_DIR / "gemm.cc"), "-o", str(target)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not has_bf16(target)
    with pytest.raises(AttributeError):
        library(target, "bp_gemm_bf16")
    check(library(target), 129, 65, 300, False, True, 1.0, 0.0, pad=0)
