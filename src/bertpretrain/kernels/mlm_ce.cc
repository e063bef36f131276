// The masked-LM decoder and its softmax cross-entropy in one operator, computed in blocks of
// the vocabulary so that neither the (N, V) logits nor their gradient ever exist in memory.
//
//   bp_mlm_ce(hidden, weight, bias, labels, weights; block) -> (loss, lse, correct)
//     hidden: (N, K) float32, the transformed states at the predicted positions;
//     weight: (V, K) float32, the decoder (or tied embedding) weight;  bias: (V,) float32;
//     labels: (N,) int32/int64/float32 in [0, V);  weights: (N,) float32 (no gradient).
//     logits = hidden weight^T + bias (never stored);
//     loss[i] = weights[i] * (logsumexp(logits[i]) - logits[i, labels[i]]);
//     correct[i] = weights[i] if the first arg-max of logits[i] is labels[i], else 0;
//     lse[i] = logsumexp(logits[i]) (0 for rows of weight 0), saved for backward.
//     `block` (default 1024) is the number of vocabulary entries per block.
//
// Rows of weight 0 (padding prediction slots) are left out of every product: the active rows
// are gathered first. Forward does one GEMM per block with an online logsumexp; backward
// recomputes each block's logits (one GEMM), turns them into the logits' gradient in place and
// accumulates the hidden gradient and writes the weight gradient of that block (two GEMMs).
// The GEMMs are OpenBLAS's (the library MXNet's FullyConnected uses), called outside any
// OpenMP region so that it parallelises them itself.
#include <algorithm>

#include "blas.h"
#include "common.h"

namespace bp {
namespace {

const char* const kOp = "bp_mlm_ce";
constexpr int64_t kDefaultBlock = 1024;

bool parse_block(const Attrs& attrs, int64_t* block) {
  *block = static_cast<int64_t>(attr_float(attrs, "block", kDefaultBlock));
  if (*block < 1) {
    MX_ERROR_MSG << kOp << ": attribute block=" << *block << " must be a positive integer";
    return false;
  }
  return true;
}

MXReturnValue parse(const Attrs& attrs, int* num_in, int* num_out) {
  int64_t block;
  if (!parse_block(attrs, &block)) return MX_FAIL;
  *num_in = 5;
  *num_out = 3;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs&, Shapes* in, Shapes* out) {
  const auto& h = (*in)[0];
  const auto& w = (*in)[1];
  if (h.size() != 2) {
    MX_ERROR_MSG << kOp << ": 'hidden' has shape " << shape_str(h)
                 << ", expected (N, K); reshape it to (-1, K) first";
    return MX_FAIL;
  }
  if (w.size() != 2 || w[1] != h[1]) {
    MX_ERROR_MSG << kOp << ": 'weight' has shape " << shape_str(w) << ", expected (V, " << h[1]
                 << ") to match 'hidden' " << shape_str(h);
    return MX_FAIL;
  }
  const std::vector<unsigned int> vocab{w[0]}, rows{h[0]};
  const char* names[] = {"", "", "bias", "labels", "weights"};
  for (int i : {2, 3, 4}) {
    const auto& want = i == 2 ? vocab : rows;
    if (!known((*in)[i])) (*in)[i] = want;
    if ((*in)[i] != want) {
      MX_ERROR_MSG << kOp << ": '" << names[i] << "' has shape " << shape_str((*in)[i])
                   << ", expected " << shape_str(want)
                   << (i == 2 ? " (one per row of 'weight')" : " (one per row of 'hidden')");
      return MX_FAIL;
    }
  }
  (*out)[0] = (*out)[1] = (*out)[2] = rows;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if (!require_float32(in, 0, kOp, "hidden") || !require_float32(in, 1, kOp, "weight") ||
      !require_float32(in, 2, kOp, "bias") || !require_index(*in, 3, kOp, "labels") ||
      !require_float32(in, 4, kOp, "weights"))
    return MX_FAIL;
  (*out)[0] = (*out)[1] = (*out)[2] = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

// The rows whose scale (weights, or dloss * weights) is non-zero, and their states gathered
// into a contiguous (rows.size(), K) array.
struct ActiveRows {
  std::vector<int64_t> rows;
  std::vector<float> hidden;
  ActiveRows(const float* scale, const float* h, int64_t n, int64_t k) {
    for (int64_t r = 0; r < n; ++r)
      if (scale[r] != 0.0f) rows.push_back(r);
    hidden.resize(rows.size() * k);
    const int64_t m = rows.size();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(hidden.data() + i * k, h + rows[i] * k, k * sizeof(float));
  }
};

// logits (m, vb) = hidden (m, k) weight[v0 : v0 + vb]^T, without the bias: the row loops that
// read the block add it (one parallel region fewer per block).
void block_logits(const std::vector<float>& hidden, int64_t m, int64_t k, const float* weight,
                  int64_t v0, int64_t vb, float* logits) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, vb, k, 1.0f, hidden.data(), k,
              weight + v0 * k, k, 0.0f, logits, vb);
}

inline void add_bias(float* x, const float* b, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) x[j] += b[j];
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                      const OpResource&) {
  int64_t block;
  if (!parse_block(attrs, &block)) return MX_FAIL;
  const int64_t n = (*in)[0].shape[0], k = (*in)[0].shape[1], v = (*in)[1].shape[0];
  const float* weight = in_ptr((*in)[1]);
  const float* bias = in_ptr((*in)[2]);
  const MXTensor& labels = (*in)[3];
  const float* w = in_ptr((*in)[4]);
  float* loss = (*out)[0].data<float>();
  float* lse = (*out)[1].data<float>();
  float* correct = (*out)[2].data<float>();
  for (int64_t r = 0; r < n; ++r) {
    const int64_t label = read_index(labels, r);
    if (w[r] != 0.0f && (label < 0 || label >= v)) {
      MX_ERROR_MSG << kOp << ": label " << label << " of row " << r << " is outside [0, " << v
                   << ")";
      return MX_FAIL;
    }
  }
  std::fill(loss, loss + n, 0.0f);
  std::fill(lse, lse + n, 0.0f);
  std::fill(correct, correct + n, 0.0f);
  const ActiveRows act(w, in_ptr((*in)[0]), n, k);
  const int64_t m = act.rows.size();
  if (m == 0) return MX_SUCCESS;
  block = std::min(block, v);
  // Per active row: running max, first index of it, running sum of exp(x - max), label logit.
  std::vector<float> run_max(m, -INFINITY), run_sum(m, 0.0f), label_logit(m, 0.0f);
  std::vector<int64_t> arg(m, 0);
  std::vector<float> logits(m * block);
  for (int64_t v0 = 0; v0 < v; v0 += block) {
    const int64_t vb = std::min(block, v - v0);
    block_logits(act.hidden, m, k, weight, v0, vb, logits.data());
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
      float* x = logits.data() + i * vb;
      add_bias(x, bias + v0, vb);
      float bm = -INFINITY;
#pragma omp simd reduction(max : bm)
      for (int64_t j = 0; j < vb; ++j) bm = x[j] > bm ? x[j] : bm;
      const int64_t label = read_index(labels, act.rows[i]);
      if (label >= v0 && label < v0 + vb) label_logit[i] = x[label - v0];
      const float new_max = std::max(run_max[i], bm);
      if (bm > run_max[i]) arg[i] = v0 + (std::find(x, x + vb, bm) - x);
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < vb; ++j) s += fast_exp(x[j] - new_max);
      run_sum[i] = run_sum[i] * fast_exp(run_max[i] - new_max) + s;
      run_max[i] = new_max;
    }
  }
  for (int64_t i = 0; i < m; ++i) {
    const int64_t r = act.rows[i];
    lse[r] = run_max[i] + std::log(run_sum[i]);
    loss[r] = w[r] * (lse[r] - label_logit[i]);
    correct[r] = arg[i] == read_index(labels, r) ? w[r] : 0.0f;
  }
  return MX_SUCCESS;
}

// Backward inputs: [dloss, dlse, dcorrect, hidden, weight, bias, labels, weights, loss, lse,
// correct]; outputs: [dhidden, dweight, dbias, dlabels, dweights].
MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                       const OpResource&) {
  int64_t block;
  if (!parse_block(attrs, &block)) return MX_FAIL;
  const float* dloss = in_ptr((*in)[0]);
  const MXTensor& hidden_t = (*in)[3];
  const int64_t n = hidden_t.shape[0], k = hidden_t.shape[1], v = (*in)[4].shape[0];
  const float* weight = in_ptr((*in)[4]);
  const float* bias = in_ptr((*in)[5]);
  const MXTensor& labels = (*in)[6];
  const float* w = in_ptr((*in)[7]);
  const float* lse = in_ptr((*in)[9]);
  float* dhidden = out_ptr(&(*out)[0]);
  float* dweight = out_ptr(&(*out)[1]);
  float* dbias = out_ptr(&(*out)[2]);
  for (int i = 0; i < 5; ++i)
    if (float* z = out_ptr(&(*out)[i])) std::memset(z, 0, (*out)[i].size() * sizeof(float));
  std::vector<float> g(n);
  for (int64_t r = 0; r < n; ++r) g[r] = dloss[r] * w[r];
  const ActiveRows act(g.data(), in_ptr(hidden_t), n, k);
  const int64_t m = act.rows.size();
  if (m == 0) return MX_SUCCESS;
  block = std::min(block, v);
  std::vector<float> logits(m * block), dh(dhidden ? m * k : 0, 0.0f), ones(m, 1.0f);
  for (int64_t v0 = 0; v0 < v; v0 += block) {
    const int64_t vb = std::min(block, v - v0);
    block_logits(act.hidden, m, k, weight, v0, vb, logits.data());
    // logits -> their gradient: g * (softmax - onehot(label)).
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
      float* x = logits.data() + i * vb;
      const int64_t r = act.rows[i];
      const float gi = g[r], l = lse[r];
      const float* b = bias + v0;
#pragma omp simd
      for (int64_t j = 0; j < vb; ++j) x[j] = gi * fast_exp(x[j] + b[j] - l);
      const int64_t label = read_index(labels, r);
      if (label >= v0 && label < v0 + vb) x[label - v0] -= gi;
    }
    if (dh.size())
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, k, vb, 1.0f, logits.data(), vb,
                  weight + v0 * k, k, 1.0f, dh.data(), k);
    if (dweight)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, vb, k, m, 1.0f, logits.data(), vb,
                  act.hidden.data(), k, 0.0f, dweight + v0 * k, k);
    if (dbias)
      cblas_sgemv(CblasRowMajor, CblasTrans, m, vb, 1.0f, logits.data(), vb, ones.data(), 1,
                  0.0f, dbias + v0, 1);
  }
  if (dhidden) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(dhidden + act.rows[i] * k, dh.data() + i * k, k * sizeof(float));
  }
  return MX_SUCCESS;
}

}  // namespace
}  // namespace bp

REGISTER_OP(bp_mlm_ce)
    .setParseAttrs(bp::parse)
    .setInferType(bp::infer_type)
    .setInferShape(bp::infer_shape)
    .setForward(bp::forward, "cpu")
    .setBackward(bp::backward, "cpu");
