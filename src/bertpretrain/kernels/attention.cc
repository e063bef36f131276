// Fused multi-head self-attention from a packed q/k/v projection to the context.
//
//   bp_attention(qkv, lengths, key; num_heads, scale, p) -> (context, lse)
//     qkv: (B, T, 3H) float32, the query, key and value projections side by side: columns
//          [0, H) queries, [H, 2H) keys, [2H, 3H) values; head h owns columns h*d .. h*d+d-1
//          of each (d = H / num_heads), addressed by stride, never copied out to a transposed array.
//     lengths: (B,) int32/int64/float32, the valid length L of each sequence (clamped to [0, T]);
//     key: (64,) float32 dropout key (see DropoutMask in common.h).
//     context: (B, T, H), context[b, i, h*d + c] = sum_{j < L} P[b, h, i, j] * v[b, j, h*d + c]
//       with P = dropout(softmax_j(scale * q[b, i, head h] . k[b, j, head h]), p) over keys j < L.
//       Every query row is computed (padding queries too); a sequence with L = 0 gets context 0.
//     lse: (B, num_heads, T) the logsumexp of each row of scaled scores (0 where L = 0); saved
//       for backward, which recomputes the probabilities from it instead of storing (B, heads, T, T).
//
// The dropout mask of P[b, h, i, j] is the hash of its flat index ((b * heads + h) * T + i) * T + j,
// so backward recomputes it and seeded runs are reproducible whatever the thread count.
// Work is split over (sequence, head) blocks; each block copies its queries, keys and values
// (T x d each) into thread-local buffers and does every product while they sit in cache.
// `lse` is not differentiable; lengths and the key get zero gradient.
#include <algorithm>

#include "common.h"

namespace bp {
namespace {

const char* const kOp = "bp_attention";

struct Params {
  int64_t heads;
  float scale;  // NaN when absent: 1 / sqrt(head size)
  float p;
};

bool parse_params(const Attrs& attrs, Params* out) {
  out->heads = static_cast<int64_t>(attr_float(attrs, "num_heads", 0.0f));
  if (out->heads < 1) {
    MX_ERROR_MSG << kOp << ": attribute num_heads=" << out->heads << " must be a positive integer";
    return false;
  }
  out->scale = attr_float(attrs, "scale", NAN);
  return parse_p(attrs, kOp, &out->p);
}

MXReturnValue parse(const Attrs& attrs, int* num_in, int* num_out) {
  Params params;
  if (!parse_params(attrs, &params)) return MX_FAIL;
  *num_in = 3;
  *num_out = 2;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  Params params;
  if (!parse_params(attrs, &params)) return MX_FAIL;
  const auto& s = (*in)[0];
  if (s.size() != 3 || s[2] % (3 * params.heads) != 0) {
    MX_ERROR_MSG << kOp << ": 'qkv' has shape " << shape_str(s) << ", expected (B, T, 3H) with H "
                 << "divisible by num_heads=" << params.heads
                 << " (one projection of width 3H: queries, keys, values)";
    return MX_FAIL;
  }
  const std::vector<unsigned int> batch{s[0]};
  if (!known((*in)[1])) (*in)[1] = batch;
  if ((*in)[1] != batch) {
    MX_ERROR_MSG << kOp << ": 'lengths' has shape " << shape_str((*in)[1]) << ", expected "
                 << shape_str(batch) << " (one valid length per sequence of 'qkv' " << shape_str(s)
                 << ")";
    return MX_FAIL;
  }
  (*out)[0] = {s[0], s[1], s[2] / 3};
  (*out)[1] = {s[0], static_cast<unsigned int>(params.heads), s[1]};
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if (!require_float32(in, 0, kOp, "qkv") || !require_index(*in, 1, kOp, "lengths") ||
      !require_float32(in, 2, kOp, "key"))
    return MX_FAIL;
  (*out)[0] = (*out)[1] = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

// The geometry of one call: batch, sequence length, hidden size, heads, head size.
struct Dims {
  int64_t b, t, h, heads, d;
  Dims(const MXTensor& qkv, int64_t num_heads)
      : b(qkv.shape[0]), t(qkv.shape[1]), h(qkv.shape[2] / 3), heads(num_heads),
        d(qkv.shape[2] / 3 / num_heads) {}
  float scale(const Params& p) const { return std::isnan(p.scale) ? 1.0f / std::sqrt(float(d)) : p.scale; }
};

// Copies head `hd` of rows [0, rows) of the q/k/v part `part` (0, 1, 2) of sequence `seq`
// into dst (rows x d), contiguous.
inline void load_head(const float* qkv, const Dims& g, int64_t seq, int64_t hd, int part,
                      int64_t rows, float* dst) {
  const float* src = qkv + seq * g.t * 3 * g.h + part * g.h + hd * g.d;
  for (int64_t i = 0; i < rows; ++i) std::memcpy(dst + i * g.d, src + i * 3 * g.h, g.d * sizeof(float));
}

// s (T x L, row stride T) = scale * q (T x d) k^T, from kt = k^T (d x L, row stride T).
inline void scores(const float* q, const float* kt, const Dims& g, int64_t len, float scale,
                   float* s) {
  for (int64_t i = 0; i < g.t; ++i) {
    float* si = s + i * g.t;
    std::fill(si, si + len, 0.0f);
    for (int64_t c = 0; c < g.d; ++c) {
      const float a = q[i * g.d + c] * scale;
      const float* kc = kt + c * g.t;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) si[j] += a * kc[j];
    }
  }
}

inline void transpose(const float* x, int64_t rows, int64_t cols, int64_t ld_out, float* out) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < cols; ++c) out[c * ld_out + i] = x[i * cols + c];
}

// Per-thread scratch for one (sequence, head) block.
struct Scratch {
  std::vector<float> q, k, v, kt, s, a, b;
  explicit Scratch(const Dims& g)
      : q(g.t * g.d), k(g.t * g.d), v(g.t * g.d), kt(g.d * g.t), s(g.t * g.t), a(g.t * g.d),
        b(g.t * g.d) {}
};

inline int64_t seq_length(const MXTensor& lengths, int64_t seq, int64_t t) {
  const int64_t len = read_index(lengths, seq);
  return len < 0 ? 0 : (len > t ? t : len);
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                      const OpResource&) {
  Params params;
  if (!parse_params(attrs, &params)) return MX_FAIL;
  const MXTensor& qkv_t = (*in)[0];
  const MXTensor& lengths = (*in)[1];
  const DropoutMask mask((*in)[2], params.p);
  const Dims g(qkv_t, params.heads);
  const float scale = g.scale(params);
  const float* qkv = in_ptr(qkv_t);
  float* ctx = (*out)[0].data<float>();
  float* lse = (*out)[1].data<float>();
#pragma omp parallel
  {
    Scratch w(g);
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < g.b * g.heads; ++blk) {
      const int64_t seq = blk / g.heads, hd = blk % g.heads;
      const int64_t len = seq_length(lengths, seq, g.t);
      float* lse_blk = lse + blk * g.t;
      float* ctx_blk = ctx + seq * g.t * g.h + hd * g.d;  // row stride H
      if (len == 0) {
        std::fill(lse_blk, lse_blk + g.t, 0.0f);
        for (int64_t i = 0; i < g.t; ++i) std::fill(ctx_blk + i * g.h, ctx_blk + i * g.h + g.d, 0.0f);
        continue;
      }
      load_head(qkv, g, seq, hd, 0, g.t, w.q.data());
      load_head(qkv, g, seq, hd, 1, len, w.k.data());
      load_head(qkv, g, seq, hd, 2, len, w.v.data());
      transpose(w.k.data(), len, g.d, g.t, w.kt.data());
      scores(w.q.data(), w.kt.data(), g, len, scale, w.s.data());
      const DropoutMask m = mask;
      for (int64_t i = 0; i < g.t; ++i) {
        float* si = w.s.data() + i * g.t;
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int64_t j = 0; j < len; ++j) mx = si[j] > mx ? si[j] : mx;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < len; ++j) {
          si[j] = fast_exp(si[j] - mx);
          sum += si[j];
        }
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
        float* ci = ctx_blk + i * g.h;
        std::fill(ci, ci + g.d, 0.0f);
        for (int64_t j = 0; j < len; ++j) {
          const float pij = si[j];
          const float* vj = w.v.data() + j * g.d;
#pragma omp simd
          for (int64_t c = 0; c < g.d; ++c) ci[c] += pij * vj[c];
        }
      }
    }
  }
  return MX_SUCCESS;
}

// Backward inputs: [dcontext, dlse, qkv, lengths, key, context, lse];
// outputs: [dqkv, dlengths, dkey].
MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                       const OpResource&) {
  Params params;
  if (!parse_params(attrs, &params)) return MX_FAIL;
  const float* dctx = in_ptr((*in)[0]);
  const MXTensor& qkv_t = (*in)[2];
  const MXTensor& lengths = (*in)[3];
  const DropoutMask mask((*in)[4], params.p);
  const float* lse = in_ptr((*in)[6]);
  for (int i : {1, 2})
    if (float* z = out_ptr(&(*out)[i])) std::memset(z, 0, (*out)[i].size() * sizeof(float));
  float* dqkv = out_ptr(&(*out)[0]);
  if (!dqkv) return MX_SUCCESS;
  const Dims g(qkv_t, params.heads);
  const float scale = g.scale(params);
  const float* qkv = in_ptr(qkv_t);
#pragma omp parallel
  {
    Scratch w(g);  // a: dcontext of the block, b: dv then dk; s: probabilities then dscores
    std::vector<float> dp(g.t), vt(g.d * g.t), dq(g.d);
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < g.b * g.heads; ++blk) {
      const int64_t seq = blk / g.heads, hd = blk % g.heads;
      const int64_t len = seq_length(lengths, seq, g.t);
      float* dq_out = dqkv + seq * g.t * 3 * g.h + hd * g.d;  // row stride 3H
      float* dk_out = dq_out + g.h;
      float* dv_out = dq_out + 2 * g.h;
      for (int64_t i = 0; i < g.t; ++i) {
        std::fill(dq_out + i * 3 * g.h, dq_out + i * 3 * g.h + g.d, 0.0f);
        if (i >= len) {
          std::fill(dk_out + i * 3 * g.h, dk_out + i * 3 * g.h + g.d, 0.0f);
          std::fill(dv_out + i * 3 * g.h, dv_out + i * 3 * g.h + g.d, 0.0f);
        }
      }
      if (len == 0) continue;
      load_head(qkv, g, seq, hd, 0, g.t, w.q.data());
      load_head(qkv, g, seq, hd, 1, len, w.k.data());
      load_head(qkv, g, seq, hd, 2, len, w.v.data());
      transpose(w.k.data(), len, g.d, g.t, w.kt.data());
      transpose(w.v.data(), len, g.d, g.t, vt.data());
      for (int64_t i = 0; i < g.t; ++i)
        std::memcpy(w.a.data() + i * g.d, dctx + (seq * g.t + i) * g.h + hd * g.d,
                    g.d * sizeof(float));
      scores(w.q.data(), w.kt.data(), g, len, scale, w.s.data());
      float* dv = w.b.data();
      std::fill(dv, dv + len * g.d, 0.0f);
      const float* lse_blk = lse + blk * g.t;
      const DropoutMask m = mask;
      for (int64_t i = 0; i < g.t; ++i) {
        float* si = w.s.data() + i * g.t;  // scores -> softmax -> dscores, in place
        const float* dci = w.a.data() + i * g.d;
        const float l = lse_blk[i];
        const uint64_t base = static_cast<uint64_t>(blk * g.t + i) * g.t;
        // dp = dcontext_i . v_j (the gradient of the dropped-out probabilities), from v^T.
        std::fill(dp.begin(), dp.begin() + len, 0.0f);
        for (int64_t c = 0; c < g.d; ++c) {
          const float a = dci[c];
          const float* vc = vt.data() + c * g.t;
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) dp[j] += a * vc[j];
        }
        float dot = 0.0f;
        if (m.active()) {
#pragma omp simd reduction(+ : dot)
          for (int64_t j = 0; j < len; ++j) {
            const float f = m.factor(base + j);
            si[j] = fast_exp(si[j] - l);
            dp[j] *= f;  // now the gradient of the softmax itself
            dot += dp[j] * si[j];
          }
        } else {
#pragma omp simd reduction(+ : dot)
          for (int64_t j = 0; j < len; ++j) {
            si[j] = fast_exp(si[j] - l);
            dot += dp[j] * si[j];
          }
        }
        // dv_j += P_ij * dcontext_i, with P the dropped-out probabilities (softmax * factor).
        for (int64_t j = 0; j < len; ++j) {
          const float pij = m.active() ? si[j] * m.factor(base + j) : si[j];
          float* dvj = dv + j * g.d;
#pragma omp simd
          for (int64_t c = 0; c < g.d; ++c) dvj[c] += pij * dci[c];
        }
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) si[j] = scale * si[j] * (dp[j] - dot);
      }
      for (int64_t j = 0; j < len; ++j)
        std::memcpy(dv_out + j * 3 * g.h, dv + j * g.d, g.d * sizeof(float));
      // dq_i = sum_j ds_ij k_j ;  dk_j = sum_i ds_ij q_i  (the scale is already in ds).
      float* dk = w.b.data();
      std::fill(dk, dk + len * g.d, 0.0f);
      for (int64_t i = 0; i < g.t; ++i) {
        const float* si = w.s.data() + i * g.t;
        const float* qi = w.q.data() + i * g.d;
        std::fill(dq.begin(), dq.end(), 0.0f);
        for (int64_t j = 0; j < len; ++j) {
          const float sij = si[j];
          const float* kj = w.k.data() + j * g.d;
          float* dkj = dk + j * g.d;
#pragma omp simd
          for (int64_t c = 0; c < g.d; ++c) {
            dq[c] += sij * kj[c];
            dkj[c] += sij * qi[c];
          }
        }
        std::memcpy(dq_out + i * 3 * g.h, dq.data(), g.d * sizeof(float));
      }
      for (int64_t j = 0; j < len; ++j)
        std::memcpy(dk_out + j * 3 * g.h, dk + j * g.d, g.d * sizeof(float));
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
