// The masked-LM decoder and its softmax cross-entropy in one operator, computed in chunks of rows
// so that neither the (N, V) logits nor their gradient ever exist in memory, with the gradients
// computed in the training forward (three GEMMs per step instead of four).
//
//   bp_mlm_ce(hidden, weight, bias, labels, weights, key; chunk) -> (loss, correct, gw, gb, gh)
//     hidden: (N, K) float32, the transformed states at the predicted positions;
//     weight: (V, K) float32, the decoder (or tied embedding) weight;  bias: (V,) float32;
//     labels: (N,) int32/int64/float32 in [0, V);  weights: (N,) float32 (no gradient);
//     key: (64,) float32, builtin dropout of ones: says whether MXNet runs in training mode
//       (see training_mode in common.h), which lib_api.h does not tell an operator.
//     logits = hidden weight^T + bias (never stored whole);
//     loss[i] = weights[i] * (logsumexp(logits[i]) - logits[i, labels[i]]);
//     correct[i] = weights[i] if the first arg-max of logits[i] is labels[i], else 0;
//     gw (V, K), gb (V,), gh (N, K): in training mode the gradients of sum(loss) with respect to
//       weight, bias and hidden; zeros in inference mode (evaluation never runs backward).
//     `chunk` (default 2^22) bounds the logits held at a time: max(1, chunk / V) rows.
//     `bf16` (default 0): 1 computes the three GEMMs with bfloat16 operands and float32
//       accumulation (bp::gemm_bf16, the weight packed once per call); all arrays stay float32.
//
// Rows of weight 0 (padding prediction slots) are left out of every product: the active rows
// are gathered first. Per chunk of active rows: the (rows, V) logits (one GEMM), each row's
// logsumexp, loss and arg-max; in training, the logits' gradient weights * (softmax - onehot)
// in place, then gh rows = G weight and gw += G^T hidden (two GEMMs), gb += column sums of G.
// The loss is sum(loss) / num_preds (model/pretraining.py, train/step.py): its upstream gradient
// is the same for every row, so backward only scales gw, gb and gh. Any other upstream gradient,
// or a forward in inference mode, makes backward recompute the chunks with weights * dloss as the
// rows' scale (three GEMMs). All GEMMs are bp::sgemm's (kernels/gemm.h: 1.5x the wheel's
// OpenBLAS here), or bp::gemm_bf16's with bf16=1, called outside any OpenMP region so that the
// GEMM parallelises itself.
#include <algorithm>

#include "gemm.h"
#include "common.h"

namespace bp {
namespace {

const char* const kOp = "bp_mlm_ce";
enum Input { kHidden, kWeight, kBias, kLabels, kWeights, kKey, kNumInputs };
// gw, gb, gh: the gradients of sum(loss) computed in the training forward (not differentiable).
enum Output { kLoss, kCorrect, kGradWeight, kGradBias, kGradHidden, kNumOutputs };
using Backward = BackwardArgs<kNumInputs, kNumOutputs>;
// Logits per chunk: 16 MiB, 607 rows at d2l's vocabulary of 6,899 (see kernels/ops.py MLM_CHUNK).
constexpr int64_t kDefaultChunk = int64_t{1} << 22;

bool parse_chunk(const Attrs& attrs, int64_t* chunk) {
  *chunk = static_cast<int64_t>(attr_float(attrs, "chunk", kDefaultChunk));
  if (*chunk < 1) {
    MX_ERROR_MSG << kOp << ": attribute chunk=" << *chunk
                 << " must be a positive number of logits";
    return false;
  }
  return true;
}

// The attribute bf16 (products in bfloat16), refused by a build without AVX512_BF16.
bool parse_bf16(const Attrs& attrs, bool* bf16) {
  *bf16 = attr_float(attrs, "bf16", 0.0f) != 0.0f;
  if (*bf16 && !kHasBf16) {
    MX_ERROR_MSG << kOp << ": bf16=1" << kNoBf16Message;
    return false;
  }
  return true;
}

MXReturnValue parse(const Attrs& attrs, int* num_in, int* num_out) {
  int64_t chunk;
  bool bf16;
  if (!parse_chunk(attrs, &chunk) || !parse_bf16(attrs, &bf16)) return MX_FAIL;
  *num_in = kNumInputs;
  *num_out = kNumOutputs;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs&, Shapes* in, Shapes* out) {
  const auto& h = (*in)[kHidden];
  const auto& w = (*in)[kWeight];
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
  const char* names[kNumInputs] = {"hidden", "weight", "bias", "labels", "weights", "key"};
  for (int i : {kBias, kLabels, kWeights}) {
    const auto& want = i == kBias ? vocab : rows;
    if (!known((*in)[i])) (*in)[i] = want;
    if ((*in)[i] != want) {
      MX_ERROR_MSG << kOp << ": '" << names[i] << "' has shape " << shape_str((*in)[i])
                   << ", expected " << shape_str(want)
                   << (i == kBias ? " (one per row of 'weight')" : " (one per row of 'hidden')");
      return MX_FAIL;
    }
  }
  (*out)[kLoss] = (*out)[kCorrect] = rows;
  (*out)[kGradWeight] = w;
  (*out)[kGradBias] = vocab;
  (*out)[kGradHidden] = h;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if (!require_float32(in, kHidden, kOp, "hidden") || !require_float32(in, kWeight, kOp, "weight") ||
      !require_float32(in, kBias, kOp, "bias") || !require_index(*in, kLabels, kOp, "labels") ||
      !require_float32(in, kWeights, kOp, "weights") || !require_float32(in, kKey, kOp, "key"))
    return MX_FAIL;
  for (auto& t : *out) t = mxnet::ext::kFloat32;
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

// The operator's arrays, as one pass over the chunks reads and writes them. Outputs that are
// nullptr are not computed: loss and correct (backward), the three gradients (inference), or a
// gradient nobody asked for.
struct Pass {
  const float* weight;  // (V, K)
  const float* bias;    // (V,)
  const MXTensor* labels;
  const float* weights;  // (N,), for loss and correct
  const float* scale;    // (N,): each row's factor of its gradient (weights, or dloss * weights)
  float* loss;           // (N,)
  float* correct;        // (N,)
  float* dhidden;        // (N, K), rows of scale 0 left untouched
  float* dweight;        // (V, K), written
  float* dbias;          // (V,), added to (zeroed by the caller)
};

// The decoder's three products for run_chunks: bp::sgemm, or bp::gemm_bf16 with the weight
// packed once per call, for the logits and for the hidden gradient, rather than once per chunk
// (at BERT-base's 30,522 x 768 a packing costs about one chunk's product).
class DecoderGemms {
 public:
  DecoderGemms(const float* weight, int64_t v, int64_t k, bool bf16, bool hidden_grad)
      : weight_(weight), v_(v), k_(k) {
#if defined(__AVX512BF16__)
    if (!bf16) return;
    transposed_.reset(new PackedBf16(true, k, v, weight, k));
    if (hidden_grad) plain_.reset(new PackedBf16(false, v, k, weight, k));
#else
    (void)bf16;
    (void)hidden_grad;
#endif
  }

  // out (rows, V) = h (rows, K) weight^T
  void logits(int64_t rows, const float* h, float* out) const {
#if defined(__AVX512BF16__)
    if (transposed_) return gemm_bf16(false, rows, 1.0f, h, k_, *transposed_, 0.0f, out, v_);
#endif
    sgemm(false, true, rows, v_, k_, 1.0f, h, k_, weight_, k_, 0.0f, out, v_);
  }

  // out (rows, K) = g (rows, V) weight
  void hidden_grad(int64_t rows, const float* g, float* out) const {
#if defined(__AVX512BF16__)
    if (plain_) return gemm_bf16(false, rows, 1.0f, g, v_, *plain_, 0.0f, out, k_);
#endif
    sgemm(false, false, rows, k_, v_, 1.0f, g, v_, weight_, k_, 0.0f, out, k_);
  }

  // out (V, K) = g^T (V, rows) h (rows, K) + beta out
  void weight_grad(int64_t rows, const float* g, const float* h, float beta, float* out) const {
#if defined(__AVX512BF16__)
    if (transposed_) return gemm_bf16(true, false, v_, k_, rows, 1.0f, g, v_, h, k_, beta, out, k_);
#endif
    sgemm(true, false, v_, k_, rows, 1.0f, g, v_, h, k_, beta, out, k_);
  }

 private:
  const float* weight_;
  int64_t v_, k_;
#if defined(__AVX512BF16__)
  std::unique_ptr<PackedBf16> transposed_, plain_;  // op(b) = weight^T (K, V); weight (V, K)
#endif
};

// One pass over the active rows, `rows` at a time (see the top of the file). The gradients
// are computed when any of p.dhidden, p.dweight, p.dbias is set. Few parallel regions per chunk
// (the GEMMs' own and one row loop): on a machine shared with other work each is a point where
// a thread may wait for a descheduled one. So the bias gradient is summed per thread inside the
// row loop, and the hidden gradient is scattered to its rows once, at the end.
void run_chunks(const Pass& p, const ActiveRows& act, int64_t v, int64_t k, int64_t rows,
                bool bf16 = false) {
  const int64_t m = act.rows.size();
  const bool grads = p.dhidden || p.dweight || p.dbias;
  const DecoderGemms gemms(p.weight, v, k, bf16, p.dhidden != nullptr);
  const int threads = omp_get_max_threads();
  std::vector<float> logits(std::min(rows, m) * v), dh(p.dhidden ? m * k : 0);
  std::vector<float> bias_parts(p.dbias ? threads * v : 0, 0.0f);  // (threads, V)
  for (int64_t c0 = 0; c0 < m; c0 += rows) {
    const int64_t cr = std::min(rows, m - c0);
    const float* h = act.hidden.data() + c0 * k;
    gemms.logits(cr, h, logits.data());
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < cr; ++i) {
      float* x = logits.data() + i * v;
      const int64_t r = act.rows[c0 + i];
      const float* b = p.bias;
#pragma omp simd
      for (int64_t j = 0; j < v; ++j) x[j] += b[j];
      const float top = row_max(x, v);
      const int64_t label = read_index(*p.labels, r);
      const float label_logit = x[label];
      if (p.correct) p.correct[r] = std::find(x, x + v, top) - x == label ? p.weights[r] : 0.0f;
      const float sum = exp_sum(x, top, v, x);
      if (p.loss) p.loss[r] = p.weights[r] * (top + std::log(sum) - label_logit);
      if (!grads) continue;
      // x -> scale * (softmax - onehot(label)), added to this thread's bias gradient
      const float g = p.scale[r], f = g / sum;
      if (p.dbias) {
        float* part = bias_parts.data() + omp_get_thread_num() * v;
#pragma omp simd
        for (int64_t j = 0; j < v; ++j) {
          x[j] *= f;
          part[j] += x[j];
        }
        part[label] -= g;
      } else {
#pragma omp simd
        for (int64_t j = 0; j < v; ++j) x[j] *= f;
      }
      x[label] -= g;
    }
    if (p.dhidden)
      gemms.hidden_grad(cr, logits.data(), dh.data() + c0 * k);
    if (p.dweight)
      gemms.weight_grad(cr, logits.data(), h, c0 ? 1.0f : 0.0f, p.dweight);
  }
  if (p.dhidden) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(p.dhidden + act.rows[i] * k, dh.data() + i * k, k * sizeof(float));
  }
  if (p.dbias) {
    for (int t = 0; t < threads; ++t) {
      const float* part = bias_parts.data() + t * v;
#pragma omp simd
      for (int64_t j = 0; j < v; ++j) p.dbias[j] += part[j];
    }
  }
}

// y = s * x over n elements.
void scale_into(const float* x, float s, int64_t n, float* y) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = s * x[i];
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                      const OpResource&) {
  int64_t chunk;
  bool bf16;
  if (!parse_chunk(attrs, &chunk) || !parse_bf16(attrs, &bf16)) return MX_FAIL;
  const int64_t n = (*in)[kHidden].shape[0], k = (*in)[kHidden].shape[1];
  const int64_t v = (*in)[kWeight].shape[0];
  const MXTensor& labels = (*in)[kLabels];
  const float* w = in_ptr((*in)[kWeights]);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t label = read_index(labels, r);
    if (w[r] != 0.0f && (label < 0 || label >= v)) {
      MX_ERROR_MSG << kOp << ": label " << label << " of row " << r << " is outside [0, " << v
                   << ")";
      return MX_FAIL;
    }
  }
  for (auto& t : *out) zero_output(&t);
  const ActiveRows act(w, in_ptr((*in)[kHidden]), n, k);
  if (act.rows.empty()) return MX_SUCCESS;
  const bool training = training_mode((*in)[kKey]);
  const Pass pass{in_ptr((*in)[kWeight]), in_ptr((*in)[kBias]), &labels, w, w,
                  (*out)[kLoss].data<float>(), (*out)[kCorrect].data<float>(),
                  training ? (*out)[kGradHidden].data<float>() : nullptr,
                  training ? (*out)[kGradWeight].data<float>() : nullptr,
                  training ? (*out)[kGradBias].data<float>() : nullptr};
  run_chunks(pass, act, v, k, std::max<int64_t>(1, chunk / v), bf16);
  return MX_SUCCESS;
}

// Whether dloss is the same on every row of non-zero weight (rows of weight 0 have no
// gradient); *value is that gradient (0 when there is no such row).
bool uniform_over_weighted_rows(const float* dloss, const float* w, int64_t n, float* value) {
  *value = 0.0f;
  bool seen = false;
  for (int64_t r = 0; r < n; ++r) {
    if (w[r] == 0.0f) continue;
    if (seen && dloss[r] != *value) return false;
    *value = dloss[r];
    seen = true;
  }
  return true;
}

// The outputs gw, gb, gh and correct have no gradient of their own (they are not differentiable
// quantities the model uses): backward reads only the loss's.
MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                       const OpResource&) {
  int64_t chunk;
  bool bf16;
  if (!parse_chunk(attrs, &chunk) || !parse_bf16(attrs, &bf16)) return MX_FAIL;
  const float* dloss = in_ptr((*in)[Backward::output_grad(kLoss)]);
  const MXTensor& hidden_t = (*in)[Backward::input(kHidden)];
  const MXTensor& weight_t = (*in)[Backward::input(kWeight)];
  const int64_t n = hidden_t.shape[0], k = hidden_t.shape[1], v = weight_t.shape[0];
  const float* w = in_ptr((*in)[Backward::input(kWeights)]);
  float* dhidden = out_ptr(&(*out)[kHidden]);
  float* dweight = out_ptr(&(*out)[kWeight]);
  float* dbias = out_ptr(&(*out)[kBias]);
  float uniform;
  if (training_mode((*in)[Backward::input(kKey)]) &&
      uniform_over_weighted_rows(dloss, w, n, &uniform)) {
    for (int i : {kLabels, kWeights, kKey}) zero_output(&(*out)[i]);
    if (dhidden) scale_into(in_ptr((*in)[Backward::output(kGradHidden)]), uniform, n * k, dhidden);
    if (dweight) scale_into(in_ptr((*in)[Backward::output(kGradWeight)]), uniform, v * k, dweight);
    if (dbias) scale_into(in_ptr((*in)[Backward::output(kGradBias)]), uniform, v, dbias);
    return MX_SUCCESS;
  }
  for (auto& t : *out) zero_output(&t);
  std::vector<float> g(n);
  for (int64_t r = 0; r < n; ++r) g[r] = dloss[r] * w[r];
  const ActiveRows act(g.data(), in_ptr(hidden_t), n, k);
  if (act.rows.empty()) return MX_SUCCESS;
  const Pass pass{in_ptr(weight_t), in_ptr((*in)[Backward::input(kBias)]),
                  &(*in)[Backward::input(kLabels)], w, g.data(), nullptr, nullptr, dhidden, dweight,
                  dbias};
  run_chunks(pass, act, v, k, std::max<int64_t>(1, chunk / v), bf16);
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
