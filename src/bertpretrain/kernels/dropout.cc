// Dropout whose mask is a hash of the element index and a key drawn from
// MXNet's RNG, so backward recomputes the mask and nothing is stored.
//
//   bp_dropout(x, key; p) -> y
//     x, y: any shape, float32;  key: (64,) float32 (see DropoutMask in common.h).
//   y = x * mask / (1 - p) in training (key entries 0 or 2), y = x in inference (key all 1).
#include "common.h"

namespace bp {
namespace {

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
  if (!parse_p(attrs, "bp_dropout", &p)) return MX_FAIL;
  *num_in = 2;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue shape(const Attrs&, Shapes* in, Shapes* out) {
  (*out)[0] = (*in)[0];
  return MX_SUCCESS;
}

MXReturnValue type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if (!require_float32(in, 0, "bp_dropout", "x") || !require_float32(in, 1, "bp_dropout", "key"))
    return MX_FAIL;
  (*out)[0] = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* in,
                      std::vector<MXTensor>* out, const OpResource&) {
  float p;
  if (!parse_p(attrs, "bp_dropout", &p)) return MX_FAIL;
  const MXTensor& x = (*in)[0];
  apply(DropoutMask((*in)[1], p), in_ptr(x), (*out)[0].data<float>(), x.size());
  return MX_SUCCESS;
}

// Backward inputs: [dy, x, key, y]; outputs: [dx, dkey].
MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* in,
                       std::vector<MXTensor>* out, const OpResource&) {
  float p;
  if (!parse_p(attrs, "bp_dropout", &p)) return MX_FAIL;
  if (float* dx = out_ptr(&(*out)[0]))
    apply(DropoutMask((*in)[2], p), in_ptr((*in)[0]), dx, (*in)[0].size());
  if (float* dkey = out_ptr(&(*out)[1])) std::memset(dkey, 0, (*out)[1].size() * sizeof(float));
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
