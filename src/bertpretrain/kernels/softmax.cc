// The weighted softmax cross-entropy of rows of logits, without materialising the probabilities.
//
//   bp_softmax_ce(logits, labels, weights) -> (loss, lse, correct)
//     logits: (N, V) float32;  labels: (N,) int32/int64/float32 in [0, V);
//     weights: (N,) float32;  loss[i] = weights[i] * (logsumexp(logits[i]) - logits[i, labels[i]]);
//     correct[i] = weights[i] if the first arg-max of logits[i] is labels[i], else 0.
//     Rows with weight 0 are skipped (loss 0, correct 0, zero gradient).
//
// `lse` (per-row logsumexp, 0 where a row was skipped) is saved for backward only.
// `lse` and `correct` are not differentiable: their incoming gradients are ignored. Labels and
// weights get no gradient: the Python wrapper stops gradients there.
#include "common.h"

namespace bp {
namespace {

const char* const kOp = "bp_softmax_ce";
enum Input { kLogits, kLabels, kWeights, kNumInputs };
enum Output { kLoss, kLse, kCorrect, kNumOutputs };
using Backward = BackwardArgs<kNumInputs, kNumOutputs>;

MXReturnValue parse(const Attrs&, int* num_in, int* num_out) {
  *num_in = kNumInputs;
  *num_out = kNumOutputs;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs&, Shapes* in, Shapes* out) {
  const auto& s = (*in)[kLogits];
  if (s.size() != 2) {
    MX_ERROR_MSG << kOp << ": 'logits' has shape " << shape_str(s)
                 << ", expected (N, V); reshape it to (-1, V) first";
    return MX_FAIL;
  }
  const std::vector<unsigned int> rows{s[0]};
  for (int i : {kLabels, kWeights}) {
    if (!known((*in)[i])) (*in)[i] = rows;  // unknown yet: take it from logits
    if ((*in)[i] != rows) {
      MX_ERROR_MSG << kOp << ": '" << (i == kLabels ? "labels" : "weights") << "' has shape "
                   << shape_str((*in)[i]) << ", expected " << shape_str(rows)
                   << " (one per row of 'logits' " << shape_str(s) << ")";
      return MX_FAIL;
    }
  }
  (*out)[kLoss] = (*out)[kLse] = (*out)[kCorrect] = rows;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if (!require_float32(in, kLogits, kOp, "logits") || !require_index(*in, kLabels, kOp, "labels") ||
      !require_float32(in, kWeights, kOp, "weights"))
    return MX_FAIL;
  for (auto& t : *out) t = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

MXReturnValue forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                      const OpResource&) {
  const MXTensor& logits = (*in)[kLogits];
  const MXTensor& labels = (*in)[kLabels];
  const float* w = in_ptr((*in)[kWeights]);
  const int64_t n = logits.shape[0], v = logits.shape[1];
  const float* x = in_ptr(logits);
  float* loss = (*out)[kLoss].data<float>();
  float* lse = (*out)[kLse].data<float>();
  float* correct = (*out)[kCorrect].data<float>();
  int64_t bad_row = -1;
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t r = 0; r < n; ++r) {
    const int64_t label = read_index(labels, r);
    if (label < 0 || label >= v) {
#pragma omp atomic write
      bad_row = r;
      loss[r] = lse[r] = correct[r] = 0.0f;
      continue;
    }
    if (w[r] == 0.0f) {
      loss[r] = lse[r] = correct[r] = 0.0f;
      continue;
    }
    const float* xr = x + r * v;
    const float m = row_max(xr, v);
    lse[r] = m + std::log(exp_sum(xr, m, v, nullptr));
    loss[r] = w[r] * (lse[r] - xr[label]);
    // The label is the first arg-max iff it holds the max and no earlier entry does.
    bool hit = xr[label] == m;
    if (hit) {
      int64_t ties = 0;
#pragma omp simd reduction(+ : ties)
      for (int64_t j = 0; j < label; ++j) ties += xr[j] == m;
      hit = ties == 0;
    }
    correct[r] = hit ? w[r] : 0.0f;
  }
  if (bad_row >= 0) {
    MX_ERROR_MSG << kOp << ": label " << read_index(labels, bad_row) << " of row " << bad_row
                 << " is outside [0, " << v << ")";
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

MXReturnValue backward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                       const OpResource&) {
  const float* dloss = in_ptr((*in)[Backward::output_grad(kLoss)]);
  const MXTensor& logits = (*in)[Backward::input(kLogits)];
  const MXTensor& labels = (*in)[Backward::input(kLabels)];
  const float* w = in_ptr((*in)[Backward::input(kWeights)]);
  const float* lse = in_ptr((*in)[Backward::output(kLse)]);
  zero_output(&(*out)[kLabels]);
  zero_output(&(*out)[kWeights]);
  float* dx = out_ptr(&(*out)[kLogits]);
  if (!dx) return MX_SUCCESS;
  const int64_t n = logits.shape[0], v = logits.shape[1];
  const float* x = in_ptr(logits);
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t r = 0; r < n; ++r) {
    float* dxr = dx + r * v;
    const float g = dloss[r] * w[r];
    if (g == 0.0f) {
      std::memset(dxr, 0, v * sizeof(float));
      continue;
    }
    const float* xr = x + r * v;
    const float l = lse[r];
#pragma omp simd
    for (int64_t j = 0; j < v; ++j) dxr[j] = g * fast_exp(xr[j] - l);
    dxr[read_index(labels, r)] -= g;
  }
  return MX_SUCCESS;
}

}  // namespace
}  // namespace bp

REGISTER_OP(bp_softmax_ce)
    .setParseAttrs(bp::parse)
    .setInferType(bp::infer_type)
    .setInferShape(bp::infer_shape)
    .setForward(bp::forward, "cpu")
    .setBackward(bp::backward, "cpu");
