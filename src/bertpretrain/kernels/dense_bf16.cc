// A dense layer with its activation, whose products run in bfloat16 with float32 accumulation
// (bp::gemm_bf16).
//
//   bp_dense_bf16(x, weight, bias; act) -> y               act "none" (default) or "relu"
//   bp_dense_bf16(x, weight, bias; act="gelu") -> (y, pre)
//     x: (..., K) float32;  weight: (N, K) float32;  bias: (N,) float32;
//     pre = x weight^T + bias, (..., N) float32, the products of x and weight rounded to bfloat16;
//     y = act(pre): pre, max(pre, 0), or the exact GELU pre * Phi(pre) (Phi the standard normal CDF,
//     through erf, as MXNet's leaky_relu "gelu"). With gelu, pre is a second output, kept for
//     backward; relu's backward reads y (y > 0 exactly where pre > 0).
//   Backward: g = dy * act'(pre) (float32, in MXNet's scratch space), dbias = its column sums (in
//   the same pass), dx = g weight and dweight = g^T x with bfloat16 operands and float32
//   accumulation, written in float32.
//
// Why an operator of its own: MXNet 1.9.1 runs FullyConnected on bfloat16 arrays (oneDNN), but its
// outputs and gradients are bfloat16 too, so a float32 model pays a cast of every operand and
// result, and the weight gradient reaches the optimizer rounded to bfloat16. Here every array
// stays float32 in memory: only the GEMM's packed panels are bfloat16 (benchmarks/bench_dense_bf16.py
// measures both). The activation is part of the operator because an operator of this library hands
// its backward all its inputs and outputs: a separate activation after it would keep the
// pre-activation alive until backward (67 MB more at d2l's step), where FullyConnected + ReLU free it.
// Needs a build with AVX512_BF16 (gemm.h's kHasBf16); without it the operator exists but fails
// with a message naming the instruction set.
#include <algorithm>

#include "common.h"
#include "gemm.h"

namespace bp {
namespace {

const char* const kOp = "bp_dense_bf16";

enum Input { kX, kWeight, kBias, kNumInputs };
enum Output { kY, kPre };  // kPre with act="gelu" only: one output, or two

enum class Act { kNone, kRelu, kGelu };

int num_outputs(Act act) { return act == Act::kGelu ? 2 : 1; }

bool parse_act(const Attrs& attrs, Act* act) {
  auto it = attrs.find("act");
  const std::string name = it == attrs.end() ? "none" : it->second;
  if (name == "none") {
    *act = Act::kNone;
  } else if (name == "relu") {
    *act = Act::kRelu;
  } else if (name == "gelu") {
    *act = Act::kGelu;
  } else {
    MX_ERROR_MSG << kOp << ": attribute act='" << name << "' must be 'none', 'relu' or 'gelu'";
    return false;
  }
  return true;
}

MXReturnValue parse(const Attrs& attrs, int* num_in, int* num_out) {
  Act act;
  if (!parse_act(attrs, &act)) return MX_FAIL;
  *num_in = kNumInputs;
  *num_out = num_outputs(act);
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  Act act;
  if (!parse_act(attrs, &act)) return MX_FAIL;
  const auto& x = (*in)[kX];
  const auto& w = (*in)[kWeight];
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
  if (!known((*in)[kBias])) (*in)[kBias] = units;
  if ((*in)[kBias] != units) {
    MX_ERROR_MSG << kOp << ": 'bias' has shape " << shape_str((*in)[kBias]) << ", expected "
                 << shape_str(units) << " (one per row of 'weight')";
    return MX_FAIL;
  }
  std::vector<unsigned int> y = x;
  y.back() = w[0];
  for (auto& shape : *out) shape = y;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if (!require_float32(in, kX, kOp, "x") || !require_float32(in, kWeight, kOp, "weight") ||
      !require_float32(in, kBias, kOp, "bias"))
    return MX_FAIL;
  for (auto& t : *out) t = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

bool require_bf16() {
  if (kHasBf16) return true;
  MX_ERROR_MSG << kOp << ": the kernels were built for a CPU without the AVX512_BF16 "
               << "instructions (vdpbf16ps); use float32 (precision='fp32')";
  return false;
}

constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

// Phi(x), the standard normal CDF, and exp(-x^2 / 2), vectorisable: erfc by Abramowitz & Stegun
// 7.1.26 (absolute error below 1.5e-7 in erf), written for |x| so that no 1 - erfc cancels.
inline float normal_cdf(float x, float* gauss) {
  const float z = std::fabs(x) * kSqrtHalf;
  const float t = 1.0f / (1.0f + 0.3275911f * z);
  const float e = fast_exp(-z * z);
  const float erfc = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f +
                     t * (-1.453152027f + t * 1.061405429f)))) * e;
  *gauss = e;
  return x >= 0.0f ? 1.0f - 0.5f * erfc : 0.5f * erfc;
}

// The activation, applied by the GEMM to each final block of y while it is in the cache (instead
// of a pass over all of y after it): y = act(y) in place; with gelu, pre (row stride ld) = y first.
class Activation final : public Epilogue {
 public:
  Activation(Act act, float* pre, int64_t ld) : act_(act), pre_(pre), ld_(ld) {}

  void operator()(float* y, int64_t ldy, int64_t i, int64_t j, int64_t rows,
                  int64_t cols) const override {
    for (int64_t r = 0; r < rows; ++r) {
      float* yr = y + r * ldy;
      if (act_ == Act::kRelu) {
#pragma omp simd
        for (int64_t q = 0; q < cols; ++q) yr[q] = yr[q] > 0.0f ? yr[q] : 0.0f;
        continue;
      }
      float* pr = pre_ + (i + r) * ld_ + j;
#pragma omp simd
      for (int64_t q = 0; q < cols; ++q) {
        float gauss;
        pr[q] = yr[q];
        yr[q] = pr[q] * normal_cdf(pr[q], &gauss);
      }
    }
  }

 private:
  Act act_;
  float* pre_;
  int64_t ld_;
};

// g (n, m) = dy * act'(pre) (g is dy itself for "none", and not written), and dbias (m,) its
// column sums (when not nullptr), in one pass.
[[maybe_unused]] void activation_grad(Act act, const float* dy, const float* y, const float* pre,
                                      int64_t n, int64_t m, float* g, float* dbias) {
  const int threads = n * m < (1 << 16) ? 1 : omp_get_max_threads();
  std::vector<float> partial(dbias ? threads * m : 0, 0.0f);
#pragma omp parallel num_threads(threads)
  {
    float* sum = dbias ? partial.data() + omp_get_thread_num() * m : nullptr;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float* dyi = dy + i * m;
      float* gi = act == Act::kNone ? nullptr : g + i * m;
      if (act == Act::kRelu) {
        const float* yi = y + i * m;
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) gi[j] = yi[j] > 0.0f ? dyi[j] : 0.0f;
      } else if (act == Act::kGelu) {
        const float* pi = pre + i * m;
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) {
          float gauss;
          const float cdf = normal_cdf(pi[j], &gauss);
          gi[j] = dyi[j] * (cdf + pi[j] * kInvSqrt2Pi * gauss);
        }
      }
      if (sum) {
        const float* src = gi ? gi : dyi;
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) sum[j] += src[j];
      }
    }
  }
  if (!dbias) return;
  std::fill(dbias, dbias + m, 0.0f);
  for (int t = 0; t < threads; ++t)
    for (int64_t j = 0; j < m; ++j) dbias[j] += partial[t * m + j];
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                      const OpResource&) {
  Act act;
  if (!parse_act(attrs, &act) || !require_bf16()) return MX_FAIL;
#if defined(__AVX512BF16__)
  const MXTensor& x = (*in)[kX];
  const int64_t n = leading_size(x.shape), k = x.shape.back(), m = (*in)[kWeight].shape[0];
  float* y = (*out)[kY].data<float>();
  const Activation activation(act, act == Act::kGelu ? (*out)[kPre].data<float>() : nullptr, m);
  gemm_bf16(false, true, n, m, k, 1.0f, in_ptr(x), k, in_ptr((*in)[kWeight]), k, 0.0f, y, m,
            in_ptr((*in)[kBias]), act == Act::kNone ? nullptr : &activation);
#endif
  return MX_SUCCESS;
}

// Backward inputs: [dy, (dpre,) x, weight, bias, y, (pre)], as BackwardArgs of the forward's
// kNumOutputs (1, or 2 with gelu) addresses them; outputs: [dx, dweight, dbias].
template <int kNumOutputs>
MXReturnValue backward_of(Act act, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                          const OpResource& resource) {
#if defined(__AVX512BF16__)
  using Backward = BackwardArgs<kNumInputs, kNumOutputs>;
  const float* dy = in_ptr((*in)[Backward::output_grad(kY)]);
  const MXTensor& x_t = (*in)[Backward::input(kX)];
  const int64_t n = leading_size(x_t.shape), k = x_t.shape.back();
  const int64_t m = (*in)[Backward::input(kWeight)].shape[0];
  const float* weight = in_ptr((*in)[Backward::input(kWeight)]);
  const float* y = in_ptr((*in)[Backward::output(kY)]);
  const float* pre = kNumOutputs > kPre ? in_ptr((*in)[Backward::output(kPre)]) : nullptr;
  float* dx = out_ptr(&(*out)[kX]);
  float* dweight = out_ptr(&(*out)[kWeight]);
  float* dbias = out_ptr(&(*out)[kBias]);
  // MXNet's scratch space: kept between calls, so no page faults for a (rows, units) buffer.
  float* g_buffer = act == Act::kNone
                        ? nullptr
                        : static_cast<float*>(resource.alloc_cpu(n * m * sizeof(float)));
  if (act != Act::kNone || dbias) activation_grad(act, dy, y, pre, n, m, g_buffer, dbias);
  const float* g = act == Act::kNone ? dy : g_buffer;
  if (dx) gemm_bf16(false, false, n, k, m, 1.0f, g, m, weight, k, 0.0f, dx, k);
  if (dweight) gemm_bf16(true, false, m, k, n, 1.0f, g, m, in_ptr(x_t), k, 0.0f, dweight, k);
#else
  (void)act, (void)in, (void)out, (void)resource;
#endif
  return MX_SUCCESS;
}

MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                       const OpResource& resource) {
  Act act;
  if (!parse_act(attrs, &act) || !require_bf16()) return MX_FAIL;
  return num_outputs(act) == 2 ? backward_of<2>(act, in, out, resource)
                               : backward_of<1>(act, in, out, resource);
}

}  // namespace
}  // namespace bp

REGISTER_OP(bp_dense_bf16)
    .setParseAttrs(bp::parse)
    .setInferType(bp::infer_type)
    .setInferShape(bp::infer_shape)
    .setForward(bp::forward, "cpu")
    .setBackward(bp::backward, "cpu");
