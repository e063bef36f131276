// A float32 GEMM tuned for the model's shapes, callable from any kernel source:
//
//   bp::sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc[, bias])
//     c (m, n) = alpha * op(a) (m, k) op(b) (k, n) + beta * c, row-major, the same arguments
//     as cblas_sgemm(CblasRowMajor, ...): op(a) is a (m, k) with row stride lda, or with
//     trans_a the transpose of a (k, m) with row stride lda; likewise b. With beta == 0, c is
//     only written (it may hold NaN or garbage before). With `bias` (n,), c = alpha op(a) op(b)
//     + beta c + bias (a dense layer's bias, added while the tile is in registers).
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
//
// bp::gemm_bf16 (below, only in builds for a target with AVX512_BF16) is the same product, by the
// same schedule, with its operands rounded to bfloat16 while packing and multiplied by vdpbf16ps,
// accumulating in float32: 1.6-2.2x bp::sgemm at the model's shapes
// (benchmarks/bench_gemm_bf16.py, AMD EPYC Zen 5, 2 threads, a shared machine), ~900 GFLOP/s on
// large products against ~400-470.
#ifndef BERTPRETRAIN_KERNELS_GEMM_H_
#define BERTPRETRAIN_KERNELS_GEMM_H_

#include <cstdint>
#include <memory>

namespace bp {

// What a product does with each finished block of c while it is still in the cache (a dense
// layer's activation): called once for every element of c, by the thread that computed it, with
// the block at c (row stride ldc), its first row i and column j in c, and its size.
class Epilogue {
 public:
  virtual ~Epilogue() = default;
  virtual void operator()(float* c, int64_t ldc, int64_t i, int64_t j, int64_t rows,
                          int64_t cols) const = 0;
};

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc, const float* bias = nullptr);

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
// With `epilogue`, each block of c is handed to it once final (bias added).
void gemm_bf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
               const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
               int64_t ldc, const float* bias = nullptr, const Epilogue* epilogue = nullptr);

// gemm_bf16 on the calling thread alone (see sgemm_serial).
void gemm_bf16_serial(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                      float* c, int64_t ldc);

// op(b) (k, n) rounded to bfloat16 and packed once, for several products with the same b (the
// MLM decoder's weight, used by every chunk of rows): packing a 30,522 x 768 weight costs about
// as much as one chunk's product. Holds k * n / 2 32-bit words (rounded up to whole panels).
class PackedBf16 {
 public:
  PackedBf16(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb);
  bool trans_b() const { return trans_b_; }
  int64_t k() const { return k_; }
  int64_t n() const { return n_; }
  const uint32_t* data() const { return data_.get(); }

 private:
  bool trans_b_;
  int64_t k_, n_;
  std::shared_ptr<uint32_t> data_;
};

// gemm_bf16 with op(b) packed beforehand: c (m, b.n()) = alpha op(a) (m, b.k()) op(b) + beta c.
void gemm_bf16(bool trans_a, int64_t m, float alpha, const float* a, int64_t lda,
               const PackedBf16& b, float beta, float* c, int64_t ldc);
#else
constexpr bool kHasBf16 = false;
#endif

// A GEMM with sgemm_serial's arguments and meaning.
using SerialGemm = void (*)(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                            const float*, int64_t, float, float*, int64_t);

// sgemm_serial, or with `bf16` gemm_bf16_serial (nullptr in a build without it).
inline SerialGemm serial_gemm(bool bf16) {
#if defined(__AVX512BF16__)
  return bf16 ? gemm_bf16_serial : sgemm_serial;
#else
  return bf16 ? nullptr : sgemm_serial;
#endif
}

// The message for an operator asked to compute in bfloat16 by a build without it.
constexpr const char* kNoBf16Message =
    " needs the AVX512_BF16 instructions (vdpbf16ps), which these kernels were built without "
    "(the CPU or the compiler flags lack them): compute in float32 (precision='fp32')";

}  // namespace bp

#endif  // BERTPRETRAIN_KERNELS_GEMM_H_
