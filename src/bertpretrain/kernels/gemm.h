// A float32 GEMM tuned for the model's shapes, callable from any kernel source:
//
//   bp::sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
//     c (m, n) = alpha * op(a) (m, k) op(b) (k, n) + beta * c, row-major, the same arguments
//     as cblas_sgemm(CblasRowMajor, ...): op(a) is a (m, k) with row stride lda, or with
//     trans_a the transpose of a (k, m) with row stride lda; likewise b. With beta == 0, c is
//     only written (it may hold NaN or garbage before).
//
// Why: the MLM decoder's products (kernels/mlm_ce.cc) need a GEMM they can call from C++ on the
// model's shapes, whose inner dimension is mostly small (k = 128). It packs panels of op(b) (and of
// op(a) only when it is transposed or at an edge; rows of a plain a are read in place), runs a
// register-blocked micro-kernel (12 x 32 tiles with AVX-512, 6 x 16 with AVX2/FMA, 6 x 8 otherwise:
// whatever -march=native gives), and shares blocks of c among the OpenMP threads without barriers,
// or, for a small c over a long depth (weight gradients), the depth. Measured by
// benchmarks/bench_gemm.py: about as fast as MXNet's oneDNN at the model's shapes (when oneDNN
// writes into preallocated memory) and faster than the wheel's OpenBLAS at most of them (1.2-1.4x
// at the MLM decoder's). Call it outside OpenMP parallel regions.
#ifndef BERTPRETRAIN_KERNELS_GEMM_H_
#define BERTPRETRAIN_KERNELS_GEMM_H_

#include <cstdint>

namespace bp {

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc);

// The same product computed by the calling thread alone, for small products made inside an
// OpenMP parallel region (e.g. one per attention block); same arguments and meaning.
void sgemm_serial(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc);

// Whether this build has the bfloat16 GEMMs below: the compiler's target (-march) has
// AVX512_BF16 (AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids and later).
#if defined(__AVX512BF16__)
constexpr bool kHasBf16 = true;

// The product of bp::sgemm (same arguments and meaning) with op(a) and op(b) rounded to
// bfloat16 (to nearest even) and their products accumulated in float32 (vdpbf16ps): twice the
// float32 multiply-add rate. a, b and c are float32 in memory; only the packed copies are
// bfloat16. Not in a build without AVX512_BF16 (see kHasBf16).
void gemm_bf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
               const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
               int64_t ldc);

// gemm_bf16 on the calling thread alone (see sgemm_serial).
void gemm_bf16_serial(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                      float* c, int64_t ldc);
#else
constexpr bool kHasBf16 = false;
#endif

}  // namespace bp

#endif  // BERTPRETRAIN_KERNELS_GEMM_H_
