// LayerNorm over the last axis with affine parameters, and the post-LN block
// LayerNorm(dropout(x) + residual) fused into one pass.
//
//   bp_layer_norm(x, gamma, beta; eps) -> y
//   bp_add_layer_norm(x, residual, gamma, beta, key; eps, p) -> y
//     x, residual, y: (..., D) float32;  gamma, beta: (D,) float32;
//     key: (64,) float32 dropout key (see DropoutMask in common.h).
//
// Forward writes the pre-norm sum into y and normalises it in place; backward
// recomputes the sum and the row statistics from the inputs instead of saving
// them (one extra read of x, cheaper than MXNet's builtin backward).
#include "common.h"

namespace bp {
namespace {

struct RowStats {
  float mean;
  float rstd;
};

inline RowStats row_stats(const float* h, int64_t d, float eps) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < d; ++j) sum += h[j];
  const float mean = sum / d;
  float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < d; ++j) {
    const float c = h[j] - mean;
    sq += c * c;
  }
  return {mean, 1.0f / std::sqrt(sq / d + eps)};
}

// Pre-norm row h = x * dropout factor + residual, and the factors themselves.
inline void residual_row(const float* x, const float* res, const DropoutMask& mask,
                         uint64_t offset, int64_t d, float* h, float* factors) {
  if (mask.active()) {
    const DropoutMask m = mask;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) {
      factors[j] = m.factor(offset + j);
      h[j] = x[j] * factors[j] + res[j];
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) {
      factors[j] = 1.0f;
      h[j] = x[j] + res[j];
    }
  }
}

// Indices of the tensors in the forward inputs of either op.
struct Layout {
  bool residual;
  int x, res, gamma, beta, key;
};
constexpr Layout kPlain{false, 0, -1, 1, 2, -1};
constexpr Layout kResidual{true, 0, 1, 2, 3, 4};

MXReturnValue forward(const Layout& l, const Attrs& attrs, std::vector<MXTensor>* in,
                      std::vector<MXTensor>* out) {
  const MXTensor& x = (*in)[l.x];
  const int64_t d = x.shape.back();
  const int64_t n = leading_size(x.shape);
  const float eps = attr_float(attrs, "eps", 1e-5f);
  float p = 0.0f;
  if (l.residual && !parse_p(attrs, "bp_add_layer_norm", &p)) return MX_FAIL;
  const DropoutMask mask = l.residual ? DropoutMask((*in)[l.key], p) : DropoutMask();
  const float* xs = in_ptr(x);
  const float* res = l.residual ? in_ptr((*in)[l.res]) : nullptr;
  const float* gamma = in_ptr((*in)[l.gamma]);
  const float* beta = in_ptr((*in)[l.beta]);
  float* y = (*out)[0].data<float>();
#pragma omp parallel
  {
    std::vector<float> factors(l.residual ? d : 0);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      float* yr = y + r * d;
      const float* h = xs + r * d;
      if (l.residual) {
        residual_row(h, res + r * d, mask, r * d, d, yr, factors.data());
        h = yr;
      }
      const RowStats s = row_stats(h, d, eps);
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) yr[j] = (h[j] - s.mean) * s.rstd * gamma[j] + beta[j];
    }
  }
  return MX_SUCCESS;
}

// Backward inputs: [dy, forward inputs..., y]; outputs: one gradient per forward input.
MXReturnValue backward(const Layout& l, const Attrs& attrs, std::vector<MXTensor>* in,
                       std::vector<MXTensor>* out, const OpResource& resource) {
  const MXTensor& x = (*in)[1 + l.x];
  const int64_t d = x.shape.back();
  const int64_t n = leading_size(x.shape);
  const float eps = attr_float(attrs, "eps", 1e-5f);
  float p = 0.0f;
  if (l.residual && !parse_p(attrs, "bp_add_layer_norm", &p)) return MX_FAIL;
  const DropoutMask mask = l.residual ? DropoutMask((*in)[1 + l.key], p) : DropoutMask();
  const float* dy = in_ptr((*in)[0]);
  const float* xs = in_ptr(x);
  const float* res = l.residual ? in_ptr((*in)[1 + l.res]) : nullptr;
  const float* gamma = in_ptr((*in)[1 + l.gamma]);
  float* dx = out_ptr(&(*out)[l.x]);
  float* dres = l.residual ? out_ptr(&(*out)[l.res]) : nullptr;
  float* dgamma = out_ptr(&(*out)[l.gamma]);
  float* dbeta = out_ptr(&(*out)[l.beta]);
  if (l.residual) {
    float* dkey = out_ptr(&(*out)[l.key]);
    if (dkey) std::memset(dkey, 0, (*out)[l.key].size() * sizeof(float));
  }

  // Per thread: pre-norm row, dropout factors, partial dgamma, partial dbeta.
  const int threads = omp_get_max_threads();
  float* scratch = static_cast<float*>(resource.alloc_cpu(threads * 4 * d * sizeof(float)));
  std::memset(scratch, 0, threads * 4 * d * sizeof(float));
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    float* h_buf = scratch + t * 4 * d;
    float* factors = h_buf + d;
    float* dg = factors + d;
    float* db = dg + d;
    for (int64_t r = n * t / nt; r < n * (t + 1) / nt; ++r) {
      const float* dyr = dy + r * d;
      const float* h = xs + r * d;
      if (l.residual) {
        residual_row(h, res + r * d, mask, r * d, d, h_buf, factors);
        h = h_buf;
      }
      const RowStats s = row_stats(h, d, eps);
      float sum_g = 0.0f, sum_gx = 0.0f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t j = 0; j < d; ++j) {
        const float xhat = (h[j] - s.mean) * s.rstd;
        const float g = dyr[j] * gamma[j];
        sum_g += g;
        sum_gx += g * xhat;
        dg[j] += dyr[j] * xhat;
        db[j] += dyr[j];
      }
      const float a = sum_g / d, b = sum_gx / d;
      float* dxr = dx ? dx + r * d : nullptr;
      float* dresr = dres ? dres + r * d : nullptr;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) {
        const float xhat = (h[j] - s.mean) * s.rstd;
        const float dh = s.rstd * (dyr[j] * gamma[j] - a - xhat * b);
        if (dxr) dxr[j] = l.residual ? dh * factors[j] : dh;
        if (dresr) dresr[j] = dh;
      }
    }
  }
  for (int64_t j = 0; j < d; ++j) {
    float g = 0.0f, b = 0.0f;
    for (int t = 0; t < threads; ++t) {
      g += scratch[t * 4 * d + 2 * d + j];
      b += scratch[t * 4 * d + 3 * d + j];
    }
    if (dgamma) dgamma[j] = g;
    if (dbeta) dbeta[j] = b;
  }
  return MX_SUCCESS;
}

// Checks the input shapes; fills in those of residual, gamma and beta when still unknown
// (see known()), so that deferred-initialised parameters get their shape from x.
MXReturnValue infer_shape(const Layout& l, const char* op, Shapes* in, Shapes* out) {
  if (l.residual && !known((*in)[l.x])) (*in)[l.x] = (*in)[l.res];
  if (!require_ndim(*in, l.x, 1, op, "x")) return MX_FAIL;
  const auto& xs = (*in)[l.x];
  if (l.residual && !known((*in)[l.res])) (*in)[l.res] = xs;
  for (int i : {l.gamma, l.beta}) {
    if (!known((*in)[i])) (*in)[i] = {xs.back()};
  }
  if (l.residual && (*in)[l.res] != xs) {
    MX_ERROR_MSG << op << ": 'residual' has shape " << shape_str((*in)[l.res])
                 << " but 'x' has shape " << shape_str(xs) << "; they must match";
    return MX_FAIL;
  }
  for (int i : {l.gamma, l.beta}) {
    if ((*in)[i].size() != 1 || (*in)[i][0] != xs.back()) {
      MX_ERROR_MSG << op << ": '" << (i == l.gamma ? "gamma" : "beta") << "' has shape "
                   << shape_str((*in)[i]) << ", expected (" << xs.back()
                   << ",) to match the last axis of 'x' " << shape_str(xs);
      return MX_FAIL;
    }
  }
  (*out)[0] = xs;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Layout& l, const char* op, std::vector<int>* in,
                         std::vector<int>* out) {
  const char* names[] = {"x", "residual", "gamma", "beta", "key"};
  for (size_t i = 0; i < in->size(); ++i) {
    const char* name = l.residual ? names[i] : names[i == 0 ? 0 : i + 1];
    if (!require_float32(in, i, op, name)) return MX_FAIL;
  }
  (*out)[0] = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

// ---- bp_layer_norm ----
MXReturnValue ln_parse(const Attrs&, int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 1;
  return MX_SUCCESS;
}
MXReturnValue ln_shape(const Attrs&, Shapes* in, Shapes* out) {
  return infer_shape(kPlain, "bp_layer_norm", in, out);
}
MXReturnValue ln_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  return infer_type(kPlain, "bp_layer_norm", in, out);
}
MXReturnValue ln_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                         std::vector<MXTensor>* out, const OpResource&) {
  return forward(kPlain, attrs, in, out);
}
MXReturnValue ln_backward(const Attrs& attrs, std::vector<MXTensor>* in,
                          std::vector<MXTensor>* out, const OpResource& res) {
  return backward(kPlain, attrs, in, out, res);
}

// ---- bp_add_layer_norm ----
MXReturnValue aln_parse(const Attrs& attrs, int* num_in, int* num_out) {
  float p;
  if (!parse_p(attrs, "bp_add_layer_norm", &p)) return MX_FAIL;
  *num_in = 5;
  *num_out = 1;
  return MX_SUCCESS;
}
MXReturnValue aln_shape(const Attrs&, Shapes* in, Shapes* out) {
  return infer_shape(kResidual, "bp_add_layer_norm", in, out);
}
MXReturnValue aln_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  return infer_type(kResidual, "bp_add_layer_norm", in, out);
}
MXReturnValue aln_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                          std::vector<MXTensor>* out, const OpResource&) {
  return forward(kResidual, attrs, in, out);
}
MXReturnValue aln_backward(const Attrs& attrs, std::vector<MXTensor>* in,
                           std::vector<MXTensor>* out, const OpResource& res) {
  return backward(kResidual, attrs, in, out, res);
}

}  // namespace
}  // namespace bp

REGISTER_OP(bp_layer_norm)
    .setParseAttrs(bp::ln_parse)
    .setInferType(bp::ln_type)
    .setInferShape(bp::ln_shape)
    .setForward(bp::ln_forward, "cpu")
    .setBackward(bp::ln_backward, "cpu");

REGISTER_OP(bp_add_layer_norm)
    .setParseAttrs(bp::aln_parse)
    .setInferType(bp::aln_type)
    .setInferShape(bp::aln_shape)
    .setForward(bp::aln_forward, "cpu")
    .setBackward(bp::aln_backward, "cpu");
