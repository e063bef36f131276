// Shared helpers for the bertpretrain CPU kernels: attribute parsing, type and shape checks,
// naming a backward's tensors, a vectorisable exp and the softmax row loops built on it, and the
// counter-based dropout mask.
//
// Every kernel works on float32, row-major, dense CPU tensors. Gradients are
// always written (never accumulated): the Python wrappers make sure that a
// parameter with grad_req='add' reaches a kernel through a builtin identity op.
#ifndef BERTPRETRAIN_KERNELS_COMMON_H_
#define BERTPRETRAIN_KERNELS_COMMON_H_

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

namespace bp {

using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using Attrs = std::unordered_map<std::string, std::string>;
using Shapes = std::vector<std::vector<unsigned int>>;

constexpr int kUnknownType = -1;

// The attribute `key` as a float, `fallback` when absent.
inline float attr_float(const Attrs& attrs, const char* key, float fallback) {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : std::stof(it->second);
}

// The dropout probability attribute "p", which must lie in [0, 1).
inline bool parse_p(const Attrs& attrs, const char* op, float* p) {
  *p = attr_float(attrs, "p", 0.0f);
  if (!(*p >= 0.0f && *p < 1.0f)) {
    MX_ERROR_MSG << op << ": dropout probability p=" << *p << " must be in [0, 1)";
    return false;
  }
  return true;
}

inline const char* type_name(int t) {
  switch (t) {
    case mxnet::ext::kFloat32: return "float32";
    case mxnet::ext::kFloat64: return "float64";
    case mxnet::ext::kFloat16: return "float16";
    case mxnet::ext::kUint8: return "uint8";
    case mxnet::ext::kInt32: return "int32";
    case mxnet::ext::kInt8: return "int8";
    case mxnet::ext::kInt64: return "int64";
    default: return "unknown";
  }
}

// Checks that input `i` (called `name`) is float32, or sets it when unknown.
inline bool require_float32(std::vector<int>* types, size_t i, const char* op, const char* name) {
  int& t = (*types)[i];
  if (t == kUnknownType) t = mxnet::ext::kFloat32;
  if (t != mxnet::ext::kFloat32) {
    MX_ERROR_MSG << op << ": input '" << name << "' must be float32, got " << type_name(t)
                 << " (cast it with .astype('float32'))";
    return false;
  }
  return true;
}

// Checks that input `i` (called `name`) holds integers: int32, int64 or integral float32.
inline bool require_index(const std::vector<int>& types, size_t i, const char* op,
                          const char* name) {
  int t = types[i];
  if (t == kUnknownType || t == mxnet::ext::kInt32 || t == mxnet::ext::kInt64 ||
      t == mxnet::ext::kFloat32) {
    return true;
  }
  MX_ERROR_MSG << op << ": input '" << name << "' must be int32, int64 or float32, got "
               << type_name(t);
  return false;
}

// Reads element i of an index tensor (int32, int64 or float32) as int64.
inline int64_t read_index(const MXTensor& t, int64_t i) {
  switch (t.dtype) {
    case mxnet::ext::kInt32: return static_cast<const int32_t*>(t.data_ptr)[i];
    case mxnet::ext::kInt64: return static_cast<const int64_t*>(t.data_ptr)[i];
    default: return static_cast<int64_t>(static_cast<const float*>(t.data_ptr)[i]);
  }
}

inline std::string shape_str(const std::vector<unsigned int>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

// Product of the dimensions of `shape` before its last one (the number of rows).
inline int64_t leading_size(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) n *= shape[i];
  return n;
}

// The float32 data of an input tensor.
inline const float* in_ptr(const MXTensor& t) { return static_cast<const float*>(t.data_ptr); }

// The data of an output tensor, or nullptr when MXNet gave it no storage
// (an input whose gradient nobody asked for).
inline float* out_ptr(MXTensor* t) {
  return (t->data_ptr == nullptr || t->size() == 0) ? nullptr : t->data<float>();
}

// Zeroes an output tensor, if MXNet gave it storage (see out_ptr): the gradient of an input that
// gets none (lengths, labels, weights, a dropout key).
inline void zero_output(MXTensor* t) {
  if (float* p = out_ptr(t)) std::memset(p, 0, t->size() * sizeof(float));
}

// Where an operator's backward finds its tensors. MXNet passes it [the gradients of the forward
// outputs, the forward inputs, the forward outputs] and expects one gradient per forward input.
// Each operator names its inputs and outputs in two enums, ending in their counts, used by its
// forward and its backward alike: (*in)[Backward::input(kWeights)] instead of (*in)[9].
template <int kNumInputs, int kNumOutputs>
struct BackwardArgs {
  static constexpr int output_grad(int output) { return output; }
  static constexpr int input(int input) { return kNumOutputs + input; }
  static constexpr int output(int output) { return kNumOutputs + kNumInputs + output; }
};

// exp(x) in float32 to ~2 ulp, written branch-free so that loops calling it vectorise.
// Inputs below -87 give ~2^-126 instead of a denormal; NaN stays NaN.
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693145751953125f;  // ln 2, split in two for accuracy
  r = r - n * 1.428606765330187045e-06f;
  float q = 1.0f / 5040.0f;
  q = q * r + 1.0f / 720.0f;
  q = q * r + 1.0f / 120.0f;
  q = q * r + 1.0f / 24.0f;
  q = q * r + 1.0f / 6.0f;
  q = q * r + 0.5f;
  q = q * r + 1.0f;
  q = q * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return q * scale;
}

// The largest of x[0 .. n) (-inf when n = 0): the first step of a softmax or logsumexp.
inline float row_max(const float* x, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// The sum of exp(x[j] - m) over j < n, each term also written to e[j] unless e is nullptr (e may
// be x: in place). With m = row_max(x, n): the row's logsumexp is m + log(sum), its softmax
// e / sum.
inline float exp_sum(const float* x, float m, int64_t n, float* e) {
  float s = 0.0f;
  if (e) {
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) {
      e[j] = fast_exp(x[j] - m);
      s += e[j];
    }
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) s += fast_exp(x[j] - m);
  }
  return s;
}

// Whether MXNet runs in training mode, read from a "key" input made by builtin dropout
// (p=0.5) of ones (see DropoutMask): in training its entries are 0 or 2, in inference all 1.
// lib_api.h passes an operator no training flag; this is how a kernel tells.
inline bool training_mode(const MXTensor& key) {
  const float* k = static_cast<const float*>(key.data_ptr);
  const int64_t n = key.size() < 64 ? key.size() : 64;
  for (int64_t i = 0; i < n; ++i)
    if (k[i] != 1.0f) return true;
  return false;
}

// Dropout mask computed from an element's flat index, so backward recomputes it
// instead of storing it, and the result does not depend on the thread count.
//
// The "key" input holds 64 floats produced by builtin dropout (p=0.5) of ones:
// in training every entry is 0 or 2 (64 random bits from MXNet's seeded RNG); in
// inference every entry is 1 and the mask keeps everything.
class DropoutMask {
 public:
  // A mask that keeps everything.
  DropoutMask() : active_(false), k0_(0), k1_(0), threshold_(0), scale_(1.0f) {}

  DropoutMask(const MXTensor& key, float p) {
    const float* k = static_cast<const float*>(key.data_ptr);
    const int64_t n = key.size() < 64 ? key.size() : 64;
    uint64_t bits = 0;
    for (int64_t i = 0; i < n; ++i) bits |= static_cast<uint64_t>(k[i] != 0.0f) << i;
    active_ = training_mode(key) && p > 0.0f;
    k0_ = static_cast<uint32_t>(bits);
    k1_ = static_cast<uint32_t>(bits >> 32);
    const double t = active_ ? std::floor(static_cast<double>(p) * 4294967296.0) : 0.0;
    threshold_ = t > 4294967295.0 ? 4294967295u : static_cast<uint32_t>(t);
    scale_ = active_ ? 1.0f / (1.0f - p) : 1.0f;
  }

  bool active() const { return active_; }

  // The factor element `i` is multiplied by: 0 (dropped) or 1 / (1 - p); 1 when inactive
  // (threshold 0). Hot loops should call it on a local copy of the mask: a float member
  // reached through a reference may alias the output and stops vectorisation.
  inline float factor(uint64_t i) const {
    uint32_t h = mix(static_cast<uint32_t>(i) ^ k0_);
    h = mix(h + k1_ + static_cast<uint32_t>(i >> 32) * 0x9E3779B9u);
    return h >= threshold_ ? scale_ : 0.0f;
  }

 private:
  // A 32-bit integer hash with good avalanche (xorshift-multiply rounds).
  static inline uint32_t mix(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
  }

  bool active_;
  uint32_t k0_, k1_, threshold_;
  float scale_;
};

// False for a shape MXNet does not know yet: no dimensions, or an unknown (-1) one.
inline bool known(const std::vector<unsigned int>& shape) {
  if (shape.empty()) return false;
  for (unsigned int d : shape) {
    if (d == static_cast<unsigned int>(-1)) return false;
  }
  return true;
}

// Checks that input `i` (called `name`) has at least `min_ndim` dimensions.
inline bool require_ndim(const Shapes& shapes, size_t i, size_t min_ndim, const char* op,
                         const char* name) {
  if (shapes[i].size() < min_ndim) {
    MX_ERROR_MSG << op << ": input '" << name << "' has shape " << shape_str(shapes[i])
                 << ", needs at least " << min_ndim << " dimension(s)";
    return false;
  }
  return true;
}

}  // namespace bp

#endif  // BERTPRETRAIN_KERNELS_COMMON_H_
