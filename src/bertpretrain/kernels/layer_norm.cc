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

// The two operators: their names and where each tensor stands among their inputs (-1: absent).
// Every function below is instantiated for each (a template on its Layout).
struct Layout {
  const char* op;
  bool residual;
  int x, res, gamma, beta, key, num_inputs;
};
constexpr Layout kPlain{"bp_layer_norm", false, 0, -1, 1, 2, -1, 3};
constexpr Layout kResidual{"bp_add_layer_norm", true, 0, 1, 2, 3, 4, 5};
constexpr int kY = 0, kNumOutputs = 1;  // either op's one output

template <const Layout& l>
MXReturnValue parse(const Attrs& attrs, int* num_in, int* num_out) {
  float p;
  if (l.residual && !parse_p(attrs, l.op, &p)) return MX_FAIL;
  *num_in = l.num_inputs;
  *num_out = kNumOutputs;
  return MX_SUCCESS;
}

template <const Layout& l>
MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                      const OpResource&) {
  const MXTensor& x = (*in)[l.x];
  const int64_t d = x.shape.back();
  const int64_t n = leading_size(x.shape);
  const float eps = attr_float(attrs, "eps", 1e-5f);
  float p = 0.0f;
  if (l.residual && !parse_p(attrs, l.op, &p)) return MX_FAIL;
  const DropoutMask mask = l.residual ? DropoutMask((*in)[l.key], p) : DropoutMask();
  const float* xs = in_ptr(x);
  const float* res = l.residual ? in_ptr((*in)[l.res]) : nullptr;
  const float* gamma = in_ptr((*in)[l.gamma]);
  const float* beta = in_ptr((*in)[l.beta]);
  float* y = (*out)[kY].data<float>();
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

template <const Layout& l>
MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                       const OpResource& resource) {
  using Backward = BackwardArgs<l.num_inputs, kNumOutputs>;
  const MXTensor& x = (*in)[Backward::input(l.x)];
  const int64_t d = x.shape.back();
  const int64_t n = leading_size(x.shape);
  const float eps = attr_float(attrs, "eps", 1e-5f);
  float p = 0.0f;
  if (l.residual && !parse_p(attrs, l.op, &p)) return MX_FAIL;
  const DropoutMask mask =
      l.residual ? DropoutMask((*in)[Backward::input(l.key)], p) : DropoutMask();
  const float* dy = in_ptr((*in)[Backward::output_grad(kY)]);
  const float* xs = in_ptr(x);
  const float* res = l.residual ? in_ptr((*in)[Backward::input(l.res)]) : nullptr;
  const float* gamma = in_ptr((*in)[Backward::input(l.gamma)]);
  float* dx = out_ptr(&(*out)[l.x]);
  float* dres = l.residual ? out_ptr(&(*out)[l.res]) : nullptr;
  float* dgamma = out_ptr(&(*out)[l.gamma]);
  float* dbeta = out_ptr(&(*out)[l.beta]);
  if (l.residual) zero_output(&(*out)[l.key]);

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
template <const Layout& l>
MXReturnValue infer_shape(const Attrs&, Shapes* in, Shapes* out) {
  if (l.residual && !known((*in)[l.x])) (*in)[l.x] = (*in)[l.res];
  if (!require_ndim(*in, l.x, 1, l.op, "x")) return MX_FAIL;
  const auto& xs = (*in)[l.x];
  if (l.residual && !known((*in)[l.res])) (*in)[l.res] = xs;
  for (int i : {l.gamma, l.beta}) {
    if (!known((*in)[i])) (*in)[i] = {xs.back()};
  }
  if (l.residual && (*in)[l.res] != xs) {
    MX_ERROR_MSG << l.op << ": 'residual' has shape " << shape_str((*in)[l.res])
                 << " but 'x' has shape " << shape_str(xs) << "; they must match";
    return MX_FAIL;
  }
  for (int i : {l.gamma, l.beta}) {
    if ((*in)[i].size() != 1 || (*in)[i][0] != xs.back()) {
      MX_ERROR_MSG << l.op << ": '" << (i == l.gamma ? "gamma" : "beta") << "' has shape "
                   << shape_str((*in)[i]) << ", expected (" << xs.back()
                   << ",) to match the last axis of 'x' " << shape_str(xs);
      return MX_FAIL;
    }
  }
  (*out)[kY] = xs;
  return MX_SUCCESS;
}

template <const Layout& l>
MXReturnValue infer_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  const char* names[] = {"x", "residual", "gamma", "beta", "key"};
  for (size_t i = 0; i < in->size(); ++i) {
    const char* name = l.residual ? names[i] : names[i == 0 ? 0 : i + 1];
    if (!require_float32(in, i, l.op, name)) return MX_FAIL;
  }
  (*out)[kY] = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

}  // namespace
}  // namespace bp

REGISTER_OP(bp_layer_norm)
    .setParseAttrs(bp::parse<bp::kPlain>)
    .setInferType(bp::infer_type<bp::kPlain>)
    .setInferShape(bp::infer_shape<bp::kPlain>)
    .setForward(bp::forward<bp::kPlain>, "cpu")
    .setBackward(bp::backward<bp::kPlain>, "cpu");

REGISTER_OP(bp_add_layer_norm)
    .setParseAttrs(bp::parse<bp::kResidual>)
    .setInferType(bp::infer_type<bp::kResidual>)
    .setInferShape(bp::infer_shape<bp::kResidual>)
    .setForward(bp::forward<bp::kResidual>, "cpu")
    .setBackward(bp::backward<bp::kResidual>, "cpu");
