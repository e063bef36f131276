// Dropout whose mask is a hash of the element index and a key drawn from
// MXNet's RNG, so backward recomputes the mask and nothing is stored.
//
//   bp_dropout(x, key; p) -> y
//     x, y: any shape, float32;  key: (64,) float32 (see DropoutMask in common.h).
//   y = x * mask / (1 - p) in training (key entries 0 or 2), y = x in inference (key all 1).
#include "common.h"

namespace bp {
namespace {

const char* const kOp = "bp_dropout";
enum Input { kX, kKey, kNumInputs };
enum Output { kY, kNumOutputs };
using Backward = BackwardArgs<kNumInputs, kNumOutputs>;

// Elements per parallel chunk: large enough to amortise scheduling, small enough to
// stay in L1 while the inner loop vectorises.
constexpr int64_t kChunk = 4096;

void apply(const DropoutMask& mask, const float* src, float* dst, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const DropoutMask m = mask;
    const int64_t begin = c * kChunk, end = begin + kChunk < n ? begin + kChunk : n;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) dst[i] = src[i] * m.factor(i);
  }
}

MXReturnValue parse(const Attrs& attrs, int* num_in, int* num_out) {
  float p;
  if (!parse_p(attrs, kOp, &p)) return MX_FAIL;
  *num_in = kNumInputs;
  *num_out = kNumOutputs;
  return MX_SUCCESS;
}

MXReturnValue shape(const Attrs&, Shapes* in, Shapes* out) {
  (*out)[kY] = (*in)[kX];
  return MX_SUCCESS;
}

MXReturnValue type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if (!require_float32(in, kX, kOp, "x") || !require_float32(in, kKey, kOp, "key")) return MX_FAIL;
  (*out)[kY] = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* in,
                      std::vector<MXTensor>* out, const OpResource&) {
  float p;
  if (!parse_p(attrs, kOp, &p)) return MX_FAIL;
  const MXTensor& x = (*in)[kX];
  apply(DropoutMask((*in)[kKey], p), in_ptr(x), (*out)[kY].data<float>(), x.size());
  return MX_SUCCESS;
}

MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* in,
                       std::vector<MXTensor>* out, const OpResource&) {
  float p;
  if (!parse_p(attrs, kOp, &p)) return MX_FAIL;
  const MXTensor& dy = (*in)[Backward::output_grad(kY)];
  if (float* dx = out_ptr(&(*out)[kX]))
    apply(DropoutMask((*in)[Backward::input(kKey)], p), in_ptr(dy), dx, dy.size());
  zero_output(&(*out)[kKey]);
  return MX_SUCCESS;
}

}  // namespace
}  // namespace bp

REGISTER_OP(bp_dropout)
    .setParseAttrs(bp::parse)
    .setInferType(bp::type)
    .setInferShape(bp::shape)
    .setForward(bp::forward, "cpu")
    .setBackward(bp::backward, "cpu");
