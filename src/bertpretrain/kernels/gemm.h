// A float32 GEMM tuned for the model's shapes, callable from any kernel source:
//
//   bp::sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc[, epilogue])
//     c (m, n) = alpha * op(a) (m, k) op(b) (k, n) + beta * c, row-major, the same arguments
//     as cblas_sgemm(CblasRowMajor, ...): op(a) is a (m, k) with row stride lda, or with
//     trans_a the transpose of a (k, m) with row stride lda; likewise b. With beta == 0, c is
//     only written (it may hold NaN or garbage before).
//
// Why: the BERT step's GEMMs mostly have a small inner dimension (k = 128: the q/k/v, output and
// FFN-in projections, the MLM decoder), where MXNet's oneDNN and OpenBLAS reach about half of
// the machine's peak. This one packs panels of op(b) (and of op(a) only when it is transposed or
// at an edge; rows of a plain a are read in place), and runs a register-blocked micro-kernel:
// 12 x 32 tiles with AVX-512, 6 x 16 with AVX2/FMA (whatever -march=native gives), over blocks
// of c split across the OpenMP threads. Call it outside OpenMP parallel regions.
//
// The optional epilogue is called once for every finished block of c, from the thread that
// computed it while the block is still in its cache, as epilogue(row0, rows, col0, cols): the
// block c[row0 : row0 + rows, col0 : col0 + cols]. The blocks tile c exactly once, and different
// threads get different blocks. Use it for a bias, an activation or column sums.
#ifndef BERTPRETRAIN_KERNELS_GEMM_H_
#define BERTPRETRAIN_KERNELS_GEMM_H_

#include <cstdint>
#include <functional>

namespace bp {

using GemmEpilogue = std::function<void(int64_t row0, int64_t rows, int64_t col0, int64_t cols)>;

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc, const GemmEpilogue& epilogue = nullptr);

}  // namespace bp

#endif  // BERTPRETRAIN_KERNELS_GEMM_H_
