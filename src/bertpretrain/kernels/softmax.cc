// Softmax kernels that never materialise more than their outputs.
//
//   bp_masked_softmax(scores, lengths, key; p) -> (probs, lse)
//     scores, probs: (..., K) float32;  lengths: (...) int32/int64/float32;
//     key: (64,) float32 dropout key (see DropoutMask in common.h).
//     probs[r, j] = dropout(softmax(scores[r, :L]))[j] for j < L, 0 for j >= L,
//     L = clamp(lengths[r], 0, K); a row with L = 0 is all zeros.
//   bp_softmax_ce(logits, labels, weights) -> (loss, lse, correct)
//     logits: (N, V) float32;  labels: (N,) int32/int64/float32 in [0, V);
//     weights: (N,) float32;  loss[i] = weights[i] * (logsumexp(logits[i]) - logits[i, labels[i]]);
//     correct[i] = weights[i] if the first arg-max of logits[i] is labels[i], else 0.
//     Rows with weight 0 are skipped (loss 0, correct 0, zero gradient).
//
// `lse` (per-row logsumexp, 0 where a row was skipped) is saved for backward only.
// `lse` and `correct` are not differentiable: their incoming gradients are ignored. Labels, lengths,
// weights and the key get no gradient: the Python wrappers stop gradients there.
#include "common.h"

namespace bp {
namespace {

inline float row_max(const float* x, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// Writes exp(x - m) to e (may alias nothing) and returns its sum.
inline float exp_sum(const float* x, float m, int64_t n, float* e) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) {
    e[j] = fast_exp(x[j] - m);
    s += e[j];
  }
  return s;
}

inline float sum_exp(const float* x, float m, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += fast_exp(x[j] - m);
  return s;
}

void zero_output(MXTensor* t) {
  if (float* p = out_ptr(t)) std::memset(p, 0, t->size() * sizeof(float));
}

// ---------------------------------------------------------------- masked softmax

MXReturnValue ms_parse(const Attrs& attrs, int* num_in, int* num_out) {
  float p;
  if (!parse_p(attrs, "bp_masked_softmax", &p)) return MX_FAIL;
  *num_in = 3;
  *num_out = 2;
  return MX_SUCCESS;
}

MXReturnValue ms_shape(const Attrs&, Shapes* in, Shapes* out) {
  const char* op = "bp_masked_softmax";
  if (!require_ndim(*in, 0, 2, op, "scores")) return MX_FAIL;
  const auto& s = (*in)[0];
  const std::vector<unsigned int> rows(s.begin(), s.end() - 1);
  if (!known((*in)[1])) (*in)[1] = rows;  // unknown yet: take it from scores
  if ((*in)[1] != rows) {
    MX_ERROR_MSG << op << ": 'lengths' has shape " << shape_str((*in)[1]) << ", expected "
                 << shape_str(rows) << " (one length per row of 'scores' " << shape_str(s)
                 << "; broadcast per-sequence lengths first)";
    return MX_FAIL;
  }
  (*out)[0] = s;
  (*out)[1] = rows;
  return MX_SUCCESS;
}

MXReturnValue ms_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  const char* op = "bp_masked_softmax";
  if (!require_float32(in, 0, op, "scores") || !require_index(*in, 1, op, "lengths") ||
      !require_float32(in, 2, op, "key"))
    return MX_FAIL;
  (*out)[0] = (*out)[1] = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

inline int64_t clamp_length(const MXTensor& lengths, int64_t r, int64_t k) {
  const int64_t len = read_index(lengths, r);
  return len < 0 ? 0 : (len > k ? k : len);
}

MXReturnValue ms_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                         std::vector<MXTensor>* out, const OpResource&) {
  float p;
  if (!parse_p(attrs, "bp_masked_softmax", &p)) return MX_FAIL;
  const MXTensor& scores = (*in)[0];
  const MXTensor& lengths = (*in)[1];
  const DropoutMask mask((*in)[2], p);
  const int64_t k = scores.shape.back();
  const int64_t n = leading_size(scores.shape);
  const float* x = in_ptr(scores);
  float* y = (*out)[0].data<float>();
  float* lse = (*out)[1].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const int64_t len = clamp_length(lengths, r, k);
    const float* xr = x + r * k;
    float* yr = y + r * k;
    std::memset(yr + len, 0, (k - len) * sizeof(float));
    if (len == 0) {
      lse[r] = 0.0f;
      continue;
    }
    const float m = row_max(xr, len);
    const float s = exp_sum(xr, m, len, yr);
    lse[r] = m + std::log(s);
    const float inv = 1.0f / s;
    if (mask.active()) {
      const DropoutMask m = mask;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) yr[j] *= inv * m.factor(r * k + j);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) yr[j] *= inv;
    }
  }
  return MX_SUCCESS;
}

// Backward inputs: [dprobs, dlse, scores, lengths, key, probs, lse];
// outputs: [dscores, dlengths, dkey].
MXReturnValue ms_backward(const Attrs& attrs, std::vector<MXTensor>* in,
                          std::vector<MXTensor>* out, const OpResource&) {
  float p;
  if (!parse_p(attrs, "bp_masked_softmax", &p)) return MX_FAIL;
  const float* dy = in_ptr((*in)[0]);
  const MXTensor& scores = (*in)[2];
  const MXTensor& lengths = (*in)[3];
  const DropoutMask mask((*in)[4], p);
  const float* y = in_ptr((*in)[5]);
  const float* lse = in_ptr((*in)[6]);
  zero_output(&(*out)[1]);
  zero_output(&(*out)[2]);
  float* dx = out_ptr(&(*out)[0]);
  if (!dx) return MX_SUCCESS;
  const int64_t k = scores.shape.back();
  const int64_t n = leading_size(scores.shape);
  const float* x = in_ptr(scores);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const int64_t len = clamp_length(lengths, r, k);
    const float* dyr = dy + r * k;
    const float* yr = y + r * k;
    float* dxr = dx + r * k;
    std::memset(dxr + len, 0, (k - len) * sizeof(float));
    if (!mask.active()) {
      // probs is the softmax itself: d = y * (dy - sum(dy * y)).
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < len; ++j) dot += dyr[j] * yr[j];
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) dxr[j] = yr[j] * (dyr[j] - dot);
    } else {
      // Dropped entries lost the softmax: recompute it from the saved logsumexp.
      // With g = dy * factor: sum(g * softmax) = sum(dy * probs).
      const float* xr = x + r * k;
      const float l = lse[r];
      const DropoutMask m = mask;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < len; ++j) dot += dyr[j] * yr[j];
#pragma omp simd
      for (int64_t j = 0; j < len; ++j)
        dxr[j] = fast_exp(xr[j] - l) * (dyr[j] * m.factor(r * k + j) - dot);
    }
  }
  return MX_SUCCESS;
}

// ---------------------------------------------------------------- softmax cross-entropy

MXReturnValue ce_parse(const Attrs&, int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 3;
  return MX_SUCCESS;
}

MXReturnValue ce_shape(const Attrs&, Shapes* in, Shapes* out) {
  const char* op = "bp_softmax_ce";
  const auto& s = (*in)[0];
  if (s.size() != 2) {
    MX_ERROR_MSG << op << ": 'logits' has shape " << shape_str(s)
                 << ", expected (N, V); reshape it to (-1, V) first";
    return MX_FAIL;
  }
  const std::vector<unsigned int> rows{s[0]};
  for (int i : {1, 2}) {
    if (!known((*in)[i])) (*in)[i] = rows;  // unknown yet: take it from logits
    if ((*in)[i] != rows) {
      MX_ERROR_MSG << op << ": '" << (i == 1 ? "labels" : "weights") << "' has shape "
                   << shape_str((*in)[i]) << ", expected " << shape_str(rows)
                   << " (one per row of 'logits' " << shape_str(s) << ")";
      return MX_FAIL;
    }
  }
  (*out)[0] = (*out)[1] = (*out)[2] = rows;
  return MX_SUCCESS;
}

MXReturnValue ce_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  const char* op = "bp_softmax_ce";
  if (!require_float32(in, 0, op, "logits") || !require_index(*in, 1, op, "labels") ||
      !require_float32(in, 2, op, "weights"))
    return MX_FAIL;
  (*out)[0] = (*out)[1] = (*out)[2] = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

MXReturnValue ce_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                         const OpResource&) {
  const MXTensor& logits = (*in)[0];
  const MXTensor& labels = (*in)[1];
  const float* w = in_ptr((*in)[2]);
  const int64_t n = logits.shape[0], v = logits.shape[1];
  const float* x = in_ptr(logits);
  float* loss = (*out)[0].data<float>();
  float* lse = (*out)[1].data<float>();
  float* correct = (*out)[2].data<float>();
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
    lse[r] = m + std::log(sum_exp(xr, m, v));
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
    MX_ERROR_MSG << "bp_softmax_ce: label " << read_index(labels, bad_row) << " of row "
                 << bad_row << " is outside [0, " << v << ")";
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

// Backward inputs: [dloss, dlse, dcorrect, logits, labels, weights, loss, lse, correct];
// outputs: [dlogits, dlabels, dweights].
MXReturnValue ce_backward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                          const OpResource&) {
  const float* dloss = in_ptr((*in)[0]);
  const MXTensor& logits = (*in)[3];
  const MXTensor& labels = (*in)[4];
  const float* w = in_ptr((*in)[5]);
  const float* lse = in_ptr((*in)[7]);
  zero_output(&(*out)[1]);
  zero_output(&(*out)[2]);
  float* dx = out_ptr(&(*out)[0]);
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

REGISTER_OP(bp_masked_softmax)
    .setParseAttrs(bp::ms_parse)
    .setInferType(bp::ms_type)
    .setInferShape(bp::ms_shape)
    .setForward(bp::ms_forward, "cpu")
    .setBackward(bp::ms_backward, "cpu");

REGISTER_OP(bp_softmax_ce)
    .setParseAttrs(bp::ce_parse)
    .setInferType(bp::ce_type)
    .setInferShape(bp::ce_shape)
    .setForward(bp::ce_forward, "cpu")
    .setBackward(bp::ce_backward, "cpu");
