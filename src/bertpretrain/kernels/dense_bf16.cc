// A dense layer whose products run in bfloat16 with float32 accumulation (bp::gemm_bf16).
//
//   bp_dense_bf16(x, weight, bias) -> y
//     x: (..., K) float32;  weight: (N, K) float32;  bias: (N,) float32;
//     y = x weight^T + bias, (..., N) float32, the products of x and weight rounded to bfloat16.
//   Backward: dx = dy weight and dweight = dy^T x, both with bfloat16 operands and float32
//   accumulation and written in float32; dbias = the column sums of dy, in float32.
//
// Why an operator of its own: MXNet 1.9.1 runs FullyConnected on bfloat16 arrays (oneDNN), but its
// outputs and gradients are bfloat16 too, so a float32 model pays a cast of every operand and
// result, and the weight gradient reaches the optimizer rounded to bfloat16. Here every array
// stays float32 in memory: only the GEMM's packed panels are bfloat16 (benchmarks/bench_dense_bf16.py
// measures both). Needs a build with AVX512_BF16 (gemm.h's kHasBf16); without it the operator
// exists but fails with a message naming the instruction set.
#include <algorithm>

#include "common.h"
#include "gemm.h"

namespace bp {
namespace {

const char* const kOp = "bp_dense_bf16";

MXReturnValue parse(const Attrs&, int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs&, Shapes* in, Shapes* out) {
  const auto& x = (*in)[0];
  const auto& w = (*in)[1];
  if (x.size() < 2) {
    MX_ERROR_MSG << kOp << ": 'x' has shape " << shape_str(x) << ", expected (..., K) with at "
                 << "least 2 dimensions";
    return MX_FAIL;
  }
  if (w.size() != 2 || w[1] != x.back()) {
    MX_ERROR_MSG << kOp << ": 'weight' has shape " << shape_str(w) << ", expected (N, " << x.back()
                 << ") to match the last axis of 'x' " << shape_str(x);
    return MX_FAIL;
  }
  const std::vector<unsigned int> units{w[0]};
  if (!known((*in)[2])) (*in)[2] = units;
  if ((*in)[2] != units) {
    MX_ERROR_MSG << kOp << ": 'bias' has shape " << shape_str((*in)[2]) << ", expected "
                 << shape_str(units) << " (one per row of 'weight')";
    return MX_FAIL;
  }
  std::vector<unsigned int> y = x;
  y.back() = w[0];
  (*out)[0] = y;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if (!require_float32(in, 0, kOp, "x") || !require_float32(in, 1, kOp, "weight") ||
      !require_float32(in, 2, kOp, "bias"))
    return MX_FAIL;
  (*out)[0] = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

bool require_bf16() {
  if (kHasBf16) return true;
  MX_ERROR_MSG << kOp << ": the kernels were built for a CPU without the AVX512_BF16 "
               << "instructions (vdpbf16ps); use float32 (precision='fp32')";
  return false;
}

// sums (m,) = the column sums of g (n, m), over the threads' partial sums.
[[maybe_unused]] void column_sums(const float* g, int64_t n, int64_t m, float* sums) {
  const int threads = n * m < (1 << 16) ? 1 : omp_get_max_threads();
  std::vector<float> partial(threads * m, 0.0f);
#pragma omp parallel num_threads(threads)
  {
    float* part = partial.data() + omp_get_thread_num() * m;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float* gi = g + i * m;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) part[j] += gi[j];
    }
  }
  std::fill(sums, sums + m, 0.0f);
  for (int t = 0; t < threads; ++t)
    for (int64_t j = 0; j < m; ++j) sums[j] += partial[t * m + j];
}

MXReturnValue forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                      const OpResource&) {
  if (!require_bf16()) return MX_FAIL;
#if defined(__AVX512BF16__)
  const MXTensor& x = (*in)[0];
  const int64_t n = leading_size(x.shape), k = x.shape.back(), m = (*in)[1].shape[0];
  gemm_bf16(false, true, n, m, k, 1.0f, in_ptr(x), k, in_ptr((*in)[1]), k, 0.0f,
            (*out)[0].data<float>(), m, in_ptr((*in)[2]));
#endif
  return MX_SUCCESS;
}

// Backward inputs: [dy, x, weight, bias, y]; outputs: [dx, dweight, dbias].
MXReturnValue backward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                       const OpResource&) {
  if (!require_bf16()) return MX_FAIL;
#if defined(__AVX512BF16__)
  const float* dy = in_ptr((*in)[0]);
  const MXTensor& x_t = (*in)[1];
  const int64_t n = leading_size(x_t.shape), k = x_t.shape.back(), m = (*in)[2].shape[0];
  float* dx = out_ptr(&(*out)[0]);
  float* dweight = out_ptr(&(*out)[1]);
  float* dbias = out_ptr(&(*out)[2]);
  if (dbias) column_sums(dy, n, m, dbias);
  if (dx) gemm_bf16(false, false, n, k, m, 1.0f, dy, m, in_ptr((*in)[2]), k, 0.0f, dx, k);
  if (dweight) gemm_bf16(true, false, m, k, n, 1.0f, dy, m, in_ptr(x_t), k, 0.0f, dweight, k);
#endif
  return MX_SUCCESS;
}

}  // namespace
}  // namespace bp

REGISTER_OP(bp_dense_bf16)
    .setParseAttrs(bp::parse)
    .setInferType(bp::infer_type)
    .setInferShape(bp::infer_shape)
    .setForward(bp::forward, "cpu")
    .setBackward(bp::backward, "cpu");
