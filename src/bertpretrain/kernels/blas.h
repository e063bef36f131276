// The two CBLAS routines the kernels call, declared here because the MXNet wheel ships
// OpenBLAS (libopenblas.so.0, which MXNet's own FullyConnected uses) without its headers.
// The enumeration values are those of the CBLAS standard. build.py links the wheel's OpenBLAS.
#ifndef BERTPRETRAIN_KERNELS_BLAS_H_
#define BERTPRETRAIN_KERNELS_BLAS_H_

extern "C" {
enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };

// c (m, n) = alpha * op(a) (m, k) op(b) (k, n) + beta * c.
void cblas_sgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, int m, int n,
                 int k, float alpha, const float* a, int lda, const float* b, int ldb, float beta,
                 float* c, int ldc);

// y = alpha * op(a) x + beta * y, a (m, n).
void cblas_sgemv(CBLAS_ORDER order, CBLAS_TRANSPOSE trans, int m, int n, float alpha,
                 const float* a, int lda, const float* x, int incx, float beta, float* y,
                 int incy);
}

#endif  // BERTPRETRAIN_KERNELS_BLAS_H_
