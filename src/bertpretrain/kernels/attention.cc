// Fused multi-head self-attention from a packed q/k/v projection to the context.
//
//   bp_attention(qkv, lengths, key; num_heads, scale, p) -> (context, lse)
//     qkv: (B, T, 3H) float32, the query, key and value projections side by side: columns
//          [0, H) queries, [H, 2H) keys, [2H, 3H) values; head h owns columns h*d .. h*d+d-1
//          of each (d = H / num_heads), addressed by stride, never copied out to a transposed array.
//     lengths: (B,) int32/int64/float32, the valid length L of each sequence (clamped to [0, T]);
//     key: (64,) float32 dropout key (see DropoutMask in common.h).
//     bf16 (attribute, default 0): 1 computes every product with bfloat16 operands and float32
//       accumulation (bp::gemm_bf16_serial); the softmax, the logsumexp and all arrays stay float32.
//     context: (B, T, H), context[b, i, h*d + c] = sum_{j < L} P[b, h, i, j] * v[b, j, h*d + c]
//       with P = dropout(softmax_j(scale * q[b, i, head h] . k[b, j, head h]), p) over keys j < L.
//       Every query row is computed (padding queries too); a sequence with L = 0 gets context 0.
//     lse: (B, num_heads, T) the logsumexp of each row of scaled scores (0 where L = 0); saved
//       for backward, which recomputes the probabilities from it instead of storing (B, heads, T, T).
//
// The dropout mask of P[b, h, i, j] is the hash of its flat index ((b * heads + h) * T + i) * T + j,
// so backward recomputes it and seeded runs are reproducible whatever the thread count.
// Work is split over (sequence, head) blocks; each block's products (scores, context and, in
// backward, the four gradients' products) are small GEMMs on the calling thread
// (bp::sgemm_serial, or bp::gemm_bf16_serial with bf16=1), reading the head's columns of qkv in place; only the (T, T) scores and
// their gradient live in per-thread buffers.
// `lse` is not differentiable; lengths and the key get zero gradient.
#include <algorithm>

#include "common.h"
#include "gemm.h"

namespace bp {
namespace {

const char* const kOp = "bp_attention";
enum Input { kQkv, kLengths, kKey, kNumInputs };
enum Output { kContext, kLse, kNumOutputs };
using Backward = BackwardArgs<kNumInputs, kNumOutputs>;

struct Params {
  int64_t heads;
  float scale;  // NaN when absent: 1 / sqrt(head size)
  float p;
  bool bf16;    // products in bfloat16 (attribute bf16=1)
};

bool parse_params(const Attrs& attrs, Params* out) {
  out->heads = static_cast<int64_t>(attr_float(attrs, "num_heads", 0.0f));
  if (out->heads < 1) {
    MX_ERROR_MSG << kOp << ": attribute num_heads=" << out->heads << " must be a positive integer";
    return false;
  }
  out->scale = attr_float(attrs, "scale", NAN);
  out->bf16 = attr_float(attrs, "bf16", 0.0f) != 0.0f;
  if (out->bf16 && !kHasBf16) {
    MX_ERROR_MSG << kOp << ": bf16=1" << kNoBf16Message;
    return false;
  }
  return parse_p(attrs, kOp, &out->p);
}

MXReturnValue parse(const Attrs& attrs, int* num_in, int* num_out) {
  Params params;
  if (!parse_params(attrs, &params)) return MX_FAIL;
  *num_in = kNumInputs;
  *num_out = kNumOutputs;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  Params params;
  if (!parse_params(attrs, &params)) return MX_FAIL;
  const auto& s = (*in)[kQkv];
  if (s.size() != 3 || s[2] % (3 * params.heads) != 0) {
    MX_ERROR_MSG << kOp << ": 'qkv' has shape " << shape_str(s) << ", expected (B, T, 3H) with H "
                 << "divisible by num_heads=" << params.heads
                 << " (one projection of width 3H: queries, keys, values)";
    return MX_FAIL;
  }
  const std::vector<unsigned int> batch{s[0]};
  if (!known((*in)[kLengths])) (*in)[kLengths] = batch;
  if ((*in)[kLengths] != batch) {
    MX_ERROR_MSG << kOp << ": 'lengths' has shape " << shape_str((*in)[kLengths]) << ", expected "
                 << shape_str(batch) << " (one valid length per sequence of 'qkv' " << shape_str(s)
                 << ")";
    return MX_FAIL;
  }
  (*out)[kContext] = {s[0], s[1], s[2] / 3};
  (*out)[kLse] = {s[0], static_cast<unsigned int>(params.heads), s[1]};
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if (!require_float32(in, kQkv, kOp, "qkv") || !require_index(*in, kLengths, kOp, "lengths") ||
      !require_float32(in, kKey, kOp, "key"))
    return MX_FAIL;
  for (auto& t : *out) t = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

// The geometry of one call: batch, sequence length, hidden size, heads, head size.
struct Dims {
  int64_t b, t, h, heads, d;
  Dims(const MXTensor& qkv, int64_t num_heads)
      : b(qkv.shape[0]), t(qkv.shape[1]), h(qkv.shape[2] / 3), heads(num_heads),
        d(qkv.shape[2] / 3 / num_heads) {}
  float scale(const Params& p) const { return std::isnan(p.scale) ? 1.0f / std::sqrt(float(d)) : p.scale; }
  // Where (sequence, head) block `blk` starts in a (B, T, ...) array of row stride `ld` whose
  // heads own d columns each (qkv: its queries; the context and its gradient).
  int64_t at(int64_t blk, int64_t ld) const { return blk / heads * t * ld + blk % heads * d; }
};

// Prefetches into L2 the d floats of one row of the block a thread most likely takes next: rows
// lie 3H (or H) floats apart, a few cache lines each, which hardware prefetchers do not follow.
inline void prefetch_row(const float* row, int64_t d) {
  for (int64_t c = 0; c < d; c += 16) __builtin_prefetch(row + c, 0, 2);
}

// prefetch_row for one row of a block's queries, keys and values (H floats apart in qkv).
inline void prefetch_qkv_row(const float* row, const Dims& g) {
  for (int64_t part = 0; part < 3; ++part) prefetch_row(row + part * g.h, g.d);
}

// The valid length of sequence `seq`, clamped to [0, t].
inline int64_t seq_length(const MXTensor& lengths, int64_t seq, int64_t t) {
  const int64_t len = read_index(lengths, seq);
  return len < 0 ? 0 : (len > t ? t : len);
}

// Backward's (T, T) buffers of one thread, reused by each of its blocks: the probabilities, the
// gradient of the scores and, with dropout, the dropped-out probabilities.
struct Scratch {
  std::vector<float> s, dp, pf;
  Scratch(const Dims& g, bool dropout)
      : s(g.t * g.t), dp(g.t * g.t), pf(dropout ? g.t * g.t : 0) {}
};

// Every product below is a small GEMM (T x d x T at most) on the calling thread, reading the
// head's queries, keys and values in place from qkv (row stride 3H) and writing the context and
// the gradients in place (row strides H and 3H): no copies, no transposes.
MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                      const OpResource&) {
  Params params;
  if (!parse_params(attrs, &params)) return MX_FAIL;
  const MXTensor& qkv_t = (*in)[kQkv];
  const MXTensor& lengths = (*in)[kLengths];
  const DropoutMask mask((*in)[kKey], params.p);
  const Dims g(qkv_t, params.heads);
  const float scale = g.scale(params);
  const float* qkv = in_ptr(qkv_t);
  const SerialGemm gemm = serial_gemm(params.bf16);
  float* ctx = (*out)[kContext].data<float>();
  float* lse = (*out)[kLse].data<float>();
  const int64_t ld = 3 * g.h;
#pragma omp parallel
  {
    std::vector<float> scores(g.t * g.t);  // this thread's (T, T) scores, then probabilities
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < g.b * g.heads; ++blk) {
      const int64_t seq = blk / g.heads;
      const int64_t len = seq_length(lengths, seq, g.t);
      float* lse_blk = lse + blk * g.t;
      float* ctx_blk = ctx + g.at(blk, g.h);  // row stride H
      if (len == 0) {
        std::fill(lse_blk, lse_blk + g.t, 0.0f);
        for (int64_t i = 0; i < g.t; ++i) std::fill(ctx_blk + i * g.h, ctx_blk + i * g.h + g.d, 0.0f);
        continue;
      }
      const float* q = qkv + g.at(blk, ld);  // (T, d), row stride 3H
      const float* k = q + g.h;
      const float* v = q + 2 * g.h;
      float* s = scores.data();  // (T, len), row stride T
      gemm(false, true, g.t, len, g.d, scale, q, ld, k, ld, 0.0f, s, g.t);
      const DropoutMask m = mask;
      // This thread's next block is most likely blk + threads: its rows of q, k and v are
      // prefetched row by row while this block's softmax runs.
      const int64_t next = blk + omp_get_num_threads();
      const float* nq = next < g.b * g.heads ? qkv + g.at(next, ld) : nullptr;
      for (int64_t i = 0; i < g.t; ++i) {
        if (nq) prefetch_qkv_row(nq + i * ld, g);
        float* si = s + i * g.t;
        const float mx = row_max(si, len);
        const float sum = exp_sum(si, mx, len, si);
        lse_blk[i] = mx + std::log(sum);
        const float inv = 1.0f / sum;
        const uint64_t base = static_cast<uint64_t>(blk * g.t + i) * g.t;
        if (m.active()) {
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) si[j] *= inv * m.factor(base + j);
        } else {
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) si[j] *= inv;
        }
      }
      // context (T, d) = P (T, len) v (len, d)
      gemm(false, false, g.t, g.d, len, 1.0f, s, g.t, v, ld, 0.0f, ctx_blk, g.h);
    }
  }
  return MX_SUCCESS;
}

MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                       const OpResource&) {
  Params params;
  if (!parse_params(attrs, &params)) return MX_FAIL;
  const float* dctx = in_ptr((*in)[Backward::output_grad(kContext)]);
  const MXTensor& qkv_t = (*in)[Backward::input(kQkv)];
  const MXTensor& lengths = (*in)[Backward::input(kLengths)];
  const DropoutMask mask((*in)[Backward::input(kKey)], params.p);
  const float* lse = in_ptr((*in)[Backward::output(kLse)]);
  zero_output(&(*out)[kLengths]);
  zero_output(&(*out)[kKey]);
  float* dqkv = out_ptr(&(*out)[kQkv]);
  if (!dqkv) return MX_SUCCESS;
  const Dims g(qkv_t, params.heads);
  const float scale = g.scale(params);
  const float* qkv = in_ptr(qkv_t);
  const SerialGemm gemm = serial_gemm(params.bf16);
  const int64_t ld = 3 * g.h;
#pragma omp parallel
  {
    Scratch w(g, mask.active());
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < g.b * g.heads; ++blk) {
      const int64_t seq = blk / g.heads;
      const int64_t len = seq_length(lengths, seq, g.t);
      float* dq_out = dqkv + g.at(blk, ld);  // (T, d) each, row stride 3H
      float* dk_out = dq_out + g.h;
      float* dv_out = dq_out + 2 * g.h;
      for (int64_t i = len; i < g.t; ++i) {  // keys and values past the length get no gradient
        std::fill(dk_out + i * ld, dk_out + i * ld + g.d, 0.0f);
        std::fill(dv_out + i * ld, dv_out + i * ld + g.d, 0.0f);
      }
      if (len == 0) {
        for (int64_t i = 0; i < g.t; ++i) std::fill(dq_out + i * ld, dq_out + i * ld + g.d, 0.0f);
        continue;
      }
      const float* q = qkv + g.at(blk, ld);
      const float* k = q + g.h;
      const float* v = q + 2 * g.h;
      const float* dc = dctx + g.at(blk, g.h);  // (T, d), row stride H
      float* s = w.s.data();    // scores, then the softmax P (T, len), row stride T
      float* dp = w.dp.data();  // dcontext v^T, then the scores' gradient dS
      gemm(false, true, g.t, len, g.d, scale, q, ld, k, ld, 0.0f, s, g.t);
      gemm(false, true, g.t, len, g.d, 1.0f, dc, g.h, v, ld, 0.0f, dp, g.t);
      const float* lse_blk = lse + blk * g.t;
      const DropoutMask m = mask;
      const int64_t next = blk + omp_get_num_threads();  // prefetched as in forward, with dcontext
      const float* nq = next < g.b * g.heads ? qkv + g.at(next, ld) : nullptr;
      const float* nc = nq ? dctx + g.at(next, g.h) : nullptr;
      for (int64_t i = 0; i < g.t; ++i) {
        if (nq) {
          prefetch_qkv_row(nq + i * ld, g);
          prefetch_row(nc + i * g.h, g.d);
        }
        float* si = s + i * g.t;
        float* di = dp + i * g.t;
        const float l = lse_blk[i];
        const uint64_t base = static_cast<uint64_t>(blk * g.t + i) * g.t;
        float dot = 0.0f;
        if (m.active()) {
          float* pi = w.pf.data() + i * g.t;  // the dropped-out probabilities, for dv
#pragma omp simd reduction(+ : dot)
          for (int64_t j = 0; j < len; ++j) {
            const float f = m.factor(base + j);
            si[j] = fast_exp(si[j] - l);
            pi[j] = si[j] * f;
            di[j] *= f;  // now the gradient of the softmax itself
            dot += di[j] * si[j];
          }
        } else {
#pragma omp simd reduction(+ : dot)
          for (int64_t j = 0; j < len; ++j) {
            si[j] = fast_exp(si[j] - l);
            dot += di[j] * si[j];
          }
        }
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) di[j] = scale * si[j] * (di[j] - dot);
      }
      // dv (len, d) = P_dropped^T dcontext;  dq (T, d) = dS k;  dk (len, d) = dS^T q
      // (the score scale is already in dS).
      const float* pd = m.active() ? w.pf.data() : s;
      gemm(true, false, len, g.d, g.t, 1.0f, pd, g.t, dc, g.h, 0.0f, dv_out, ld);
      gemm(false, false, g.t, g.d, len, 1.0f, dp, g.t, k, ld, 0.0f, dq_out, ld);
      gemm(true, false, len, g.d, g.t, 1.0f, dp, g.t, q, ld, 0.0f, dk_out, ld);
    }
  }
  return MX_SUCCESS;
}

}  // namespace
}  // namespace bp

REGISTER_OP(bp_attention)
    .setParseAttrs(bp::parse)
    .setInferType(bp::infer_type)
    .setInferShape(bp::infer_shape)
    .setForward(bp::forward, "cpu")
    .setBackward(bp::backward, "cpu");
