// bp::sgemm and bp::gemm_bf16 (see gemm.h): packed panels, a register-blocked micro-kernel, OpenMP
// over blocks of c. One schedule serves both; a "kernel" (Float32, Bfloat16 below) supplies the
// element type of the packed operands, the packing and the micro-kernel.
//
// c is cut into tasks (up to kMC rows x up to kNC columns), shared by the threads dynamically. A
// task walks the depth in blocks of K::kKC; for each, the panels of kNR columns of op(b) (packed
// depth-major, zero-padded) and inside each panel (it stays in L1 or L2) its row tiles of kMR
// rows (the task's rows of a stay in L2); the micro-kernel accumulates a (kMR, kNR) tile of c in
// registers over the depth block before touching c once. A small c over a long depth (weight
// gradients) splits the depth among the threads instead (run_split_depth).
//
// float32: a plain (not transposed) a is read in place, row by row: packing it would cost as much
// as the product when k is small. A transposed a (and an edge tile of a plain one) is packed into
// depth-major (kc, kMR) tiles, a copy of short rows. Each thread packs the panels of op(b) it
// uses (see run).
#include "gemm.h"

#include <omp.h>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

namespace bp {
namespace {

// Vector width in floats and micro-tile rows: 2 * kMR accumulators, 2 panel vectors and a
// broadcast fit the 32 AVX-512 registers (kMR = 12) or the 16 AVX2 ones (kMR = 6).
#if defined(__AVX512F__)
constexpr int kVec = 16;
constexpr int kMR = 12;
#elif defined(__AVX__)
constexpr int kVec = 8;
constexpr int kMR = 6;
#else
constexpr int kVec = 4;
constexpr int kMR = 6;
#endif
constexpr int kNR = 2 * kVec;     // micro-tile columns
constexpr int64_t kLongDepth = 512;  // depth past which a small c splits it (see below)
constexpr int64_t kMC = 96;       // most rows of c per task (a multiple of kMR)
constexpr int64_t kNC = 512;      // most columns of c per task (a multiple of kNR)
constexpr int64_t kSplitKC = 256;  // depth block when the threads split the depth (see below)
constexpr int64_t kSplitMaxC = 1024;  // ... which they do for c at most this many rows and columns
constexpr int64_t kSerialWork = 1 << 18;  // m * n * k below which one thread does it all
constexpr int64_t kLargePanels = int64_t{8} << 20;  // bytes of shared packed op(b) past which ...
constexpr int64_t kOneRowTask = 4 * kMC;            // ... at most this many rows are one row task

// Work memory of at least kKeptBytes is kept by the thread that frees it, for its next calls,
// instead of going back to the system: a fresh block of tens of MB (op(b) packed once per call,
// the MLM decoder's weight) is mapped anew and zeroed page by page by the OS on every call, a few
// percent of a bfloat16 BERT-base step. Each thread keeps at most kKeptBlocks, the largest.
constexpr size_t kKeptBytes = size_t{1} << 20;
constexpr size_t kKeptBlocks = 4;

struct Block {
  void* data;
  size_t bytes;
};

struct KeptBlocks {
  std::vector<Block> blocks;
  ~KeptBlocks() {
    for (const Block& block : blocks) std::free(block.data);
  }
};
thread_local KeptBlocks kept;

// A block of at least `bytes` (a multiple of 64) aligned to a cache line: the smallest kept one
// that fits, else a new one.
Block take_block(size_t bytes) {
  auto& blocks = kept.blocks;
  auto best = blocks.end();
  if (bytes >= kKeptBytes)
    for (auto it = blocks.begin(); it != blocks.end(); ++it)
      if (it->bytes >= bytes && (best == blocks.end() || it->bytes < best->bytes)) best = it;
  if (best == blocks.end()) return {std::aligned_alloc(64, bytes ? bytes : 64), bytes};
  const Block block = *best;
  blocks.erase(best);
  return block;
}

void give_block(Block block) {
  if (block.bytes < kKeptBytes) return std::free(block.data);
  auto& blocks = kept.blocks;
  blocks.push_back(block);
  if (blocks.size() <= kKeptBlocks) return;
  const auto by_size = [](const Block& x, const Block& y) { return x.bytes < y.bytes; };
  const auto smallest = std::min_element(blocks.begin(), blocks.end(), by_size);
  std::free(smallest->data);
  blocks.erase(smallest);
}

template <class T>
struct GiveBack {
  size_t bytes;
  void operator()(T* p) const { give_block({p, bytes}); }
};
template <class T>
using Buffer = std::unique_ptr<T[], GiveBack<T>>;

// `count` uninitialised elements aligned to a cache line.
template <class T>
Buffer<T> allocate(int64_t count) {
  const Block block = take_block((static_cast<size_t>(count) * sizeof(T) + 63) / 64 * 64);
  return Buffer<T>(static_cast<T*>(block.data), GiveBack<T>{block.bytes});
}

// Everything one call needs: the operands, the bias (n,) added to every row of c (nullptr: none)
// and what is done with each final block of c (nullptr: nothing).
struct Plan {
  bool trans_a, trans_b;
  int64_t m, n, k;
  float alpha;
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float beta;
  float* c;
  int64_t ldc;
  const float* bias;
  const Epilogue* epilogue;
};

// Plan g's epilogue (if any) on the rows [i0, i0 + rows) of c, in blocks of kNR columns.
void finish_rows(const Plan& g, int64_t i0, int64_t rows) {
  if (!g.epilogue) return;
  for (int64_t j = 0; j < g.n; j += kNR)
    (*g.epilogue)(g.c + i0 * g.ldc + j, g.ldc, i0, j, rows, std::min<int64_t>(kNR, g.n - j));
}

// Where the micro-kernel reads a task's row tiles of op(a) for one depth block, as a kernel's
// pack_a leaves them: the first `direct_rows` rows in place (row i at direct + i * direct_ld), the
// others from the packed copy (its row ir - direct_rows at packed + (ir - direct_rows) * depth),
// read with row stride packed_ld, 0 when they are packed as depth-major (depth, kMR) tiles.
template <class E>
struct ARows {
  const E* direct;
  int64_t direct_ld, direct_rows;
  const E* packed;
  int64_t packed_ld, depth;

  // The tile of rows [ir, ir + kMR) (ir a multiple of kMR) and its row stride (0: a packed tile).
  const E* tile(int64_t ir) const {
    return ir < direct_rows ? direct + ir * direct_ld : packed + (ir - direct_rows) * depth;
  }
  int64_t ld(int64_t ir) const { return ir < direct_rows ? direct_ld : packed_ld; }
};

// c (rows, cols), row stride ldc, = alpha * A panel + beta * c (+ bias[j] when not nullptr) for
// one tile: kernel K's micro-kernel straight into c for a full tile, else into `tile` (kMR, kNR),
// of which the valid part is then written. kd is the tile's depth in K's packed elements; lda > 0:
// the rows of a are read with that stride; lda == 0: a is a packed (kd, kMR) tile.
template <class K, class E = typename K::Elem>
void tile_product(int64_t kd, const E* a, int64_t lda, const E* panel, float alpha, float beta,
                  const float* bias, float* c, int64_t ldc, int64_t rows, int64_t cols,
                  float* tile) {
  const bool edge = rows < kMR || cols < kNR;
  float* out = edge ? tile : c;
  const int64_t ld = edge ? kNR : ldc;
  const float* full_bias = edge ? nullptr : bias;
  if (lda > 0)
    K::template micro_kernel<false>(kd, a, lda, panel, edge ? 1.0f : alpha, edge ? 0.0f : beta,
                                    full_bias, out, ld);
  else
    K::template micro_kernel<true>(kd, a, 0, panel, edge ? 1.0f : alpha, edge ? 0.0f : beta,
                                   full_bias, out, ld);
  if (!edge) return;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      float v = beta == 0.0f ? alpha * tile[i * kNR + j]
                             : alpha * tile[i * kNR + j] + beta * c[i * ldc + j];
      if (bias) v += bias[j];
      c[i * ldc + j] = v;
    }
}

// How c is cut into tasks: row blocks of mc rows x runs of per_task panels of kNR columns.
struct Tasks {
  int64_t mc;          // rows per task (a multiple of kMR); the last row block may have fewer
  int64_t row_tasks;   // ceil(m / mc)
  int64_t panels;      // ceil(n / kNR)
  int64_t per_task;    // panels per task, at most the kernel's kTaskPanels
  int64_t col_tasks;   // ceil(panels / per_task)
};

// Enough tasks to keep `threads` busy when some run slower (the machine may be shared).
// `shared_bytes`: the size of op(b) packed once for all tasks (0 if it is not). Every row task
// reads all of it once: when it is large (the MLM decoder's 30,522-word weight, 47 MB at
// BERT-base in bfloat16) and c has few rows (a chunk of 137 predictions), reading it once per row
// block of kMC made the product memory-bound. Then all rows are one task and the threads share
// the columns. `max_panels`: the most panels of a task (K::kTaskPanels): a task packs its rows of
// op(a) once per depth block, for all its panels.
Tasks cut(int64_t m, int64_t n, int threads, int64_t shared_bytes, int64_t max_panels) {
  Tasks t;
  const int64_t want = threads > 1 ? 4 * threads : 1;
  t.panels = (n + kNR - 1) / kNR;
  if (m <= kOneRowTask && shared_bytes > kLargePanels) {
    t.mc = (m + kMR - 1) / kMR * kMR;
    t.row_tasks = 1;
    t.per_task = std::max<int64_t>(1, std::min(max_panels, (t.panels + want - 1) / want));
  } else {
    t.mc = kMC;
    if ((m + t.mc - 1) / t.mc < want)
      t.mc = std::max<int64_t>(kMR, ((m + want - 1) / want + kMR - 1) / kMR * kMR);
    t.row_tasks = (m + t.mc - 1) / t.mc;
    const int64_t splits = std::max((t.panels + max_panels - 1) / max_panels,
                                    std::min(t.panels, (want + t.row_tasks - 1) / t.row_tasks));
    t.per_task = (t.panels + splits - 1) / splits;
  }
  t.col_tasks = (t.panels + t.per_task - 1) / t.per_task;
  return t;
}

// op(b) packed by kernel K for the task schedule: per depth block of K::kKC, its panels of kNR
// columns, each (K::depth(min(K::kKC, k)), kNR) elements (the last block's only partly used).
template <class K>
struct Panels {
  int64_t blocks, panels, panel_size;
  Panels(int64_t k, int64_t n)
      : blocks((k + K::kKC - 1) / K::kKC), panels((n + kNR - 1) / kNR),
        panel_size(K::depth(std::min(K::kKC, k)) * kNR) {}
  int64_t size() const { return blocks * panels * panel_size; }

  // Packs panel `index` (block index / panels, panel index % panels) of op(b) into its place.
  void pack(const Plan& g, int64_t index, typename K::Elem* dst) const {
    const int64_t blk = index / panels, jp = index % panels;
    K::pack_b(g, blk * K::kKC, std::min(K::kKC, g.k - blk * K::kKC), jp * kNR,
              std::min<int64_t>(kNR, g.n - jp * kNR), dst + index * panel_size);
  }
};

// A small c over a long depth (a weight gradient dW = dy^T x summed over all tokens): the threads
// split the depth instead of c. Each streams its share of a and b once, block by block (a whole
// (kSplitKC, m) block of op(a) and (kSplitKC, n) block of op(b) packed, then every tile of c),
// into its own copy of c (thread 0 into c itself, with beta and the bias, with its first block);
// after one barrier the copies are summed into c, rows shared among the threads.
// Cutting c instead would read b once per row block of c (k = 32768 rows of it) from memory.
template <class K>
void run_split_depth(const Plan& g, int threads) {
  using E = typename K::Elem;
  const int64_t blocks = (g.k + kSplitKC - 1) / kSplitKC, kd_max = K::depth(kSplitKC);
  const int64_t panels = (g.n + kNR - 1) / kNR, m_tiles = (g.m + kMR - 1) / kMR;
  threads = static_cast<int>(std::min<int64_t>(threads, blocks));
  std::vector<Buffer<float>> copies;  // of threads 1, 2, ...: taken and given back by this thread
  for (int t = 1; t < threads; ++t) copies.push_back(allocate<float>(g.m * g.n));
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t b0 = blocks * t / nt, b1 = blocks * (t + 1) / nt;
    float* out = t == 0 ? g.c : copies[t - 1].get();
    const int64_t ldo = t == 0 ? g.ldc : g.n;
    Buffer<E> b_pack = allocate<E>(panels * kd_max * kNR);
    Buffer<E> a_pack = allocate<E>(m_tiles * kMR * kd_max);
    Buffer<float> tile = allocate<float>(kMR * kNR);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t pc = blk * kSplitKC, kc = std::min(kSplitKC, g.k - pc), kd = K::depth(kc);
      const float beta = blk > b0 ? 1.0f : t == 0 ? g.beta : 0.0f;
      const float* bias = t == 0 && blk == b0 ? g.bias : nullptr;
      for (int64_t jp = 0; jp < panels; ++jp)
        K::pack_b(g, pc, kc, jp * kNR, std::min<int64_t>(kNR, g.n - jp * kNR),
                  b_pack.get() + jp * kd * kNR);
      const ARows<E> a = K::pack_a(g, 0, g.m, pc, kc, false, a_pack.get());
      for (int64_t jp = 0; jp < panels; ++jp)
        for (int64_t ir = 0; ir < g.m; ir += kMR)
          tile_product<K>(kd, a.tile(ir), a.ld(ir), b_pack.get() + jp * kd * kNR, g.alpha, beta,
                          bias ? bias + jp * kNR : nullptr, out + ir * ldo + jp * kNR, ldo,
                          std::min<int64_t>(kMR, g.m - ir), std::min<int64_t>(kNR, g.n - jp * kNR),
                          tile.get());
    }
#pragma omp barrier
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < m_tiles; ++it) {
      const int64_t i0 = it * kMR, rows = std::min<int64_t>(kMR, g.m - i0);
      for (int s = 1; s < nt; ++s)
        for (int64_t i = i0; i < i0 + rows; ++i) {
          const float* src = copies[s - 1].get() + i * g.n;
          float* dst = g.c + i * g.ldc;
#pragma omp simd
          for (int64_t j = 0; j < g.n; ++j) dst[j] += src[j];
        }
      finish_rows(g, i0, rows);
    }
  }
}

// The task schedule (see the top), through kernel K; the bias is added with the first depth
// block. Where the panels of op(b) come from:
// - shared (K::kSharePanels, or `packed` given: op(b) packed beforehand, see PackedBf16): all of
//   op(b) packed once, by the threads together before the tasks (one barrier);
// - else each thread's own: the threads share nothing but c and never wait for each other before
//   the end (on a machine shared with other processes a thread can lose the CPU for a whole time
//   slice, and every barrier would then cost the others that slice). Each thread packs all of
//   op(b) once when the depth fits one block (k <= K::kKC, the model's small-k products, where
//   op(b) is a weight of at most a few MB), else one panel at a time inside each task, for each
//   block.
// With threads == 1 it all runs on the calling thread, also inside another parallel region.
template <class K>
void run(const Plan& g, int threads, const typename K::Elem* packed = nullptr) {
  using E = typename K::Elem;
  if (!packed && g.k > kLongDepth && g.m <= kSplitMaxC && g.n <= kSplitMaxC)
    return run_split_depth<K>(g, threads);
  const Panels<K> p(g.k, g.n);
  const bool shared = packed || K::kSharePanels;
  const bool per_panel = !shared && p.blocks > 1;  // each thread packs a panel at a time
  const Tasks t =
      cut(g.m, g.n, threads, shared ? p.size() * int64_t{sizeof(E)} : 0, K::kTaskPanels);
  Buffer<E> common = shared && !packed ? allocate<E>(p.size()) : Buffer<E>();
  if (common) packed = common.get();
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    Buffer<E> own = shared ? Buffer<E>() : allocate<E>(per_panel ? p.panel_size : p.size());
    if (common) {
#pragma omp for schedule(dynamic, 4)
      for (int64_t index = 0; index < p.blocks * p.panels; ++index)
        p.pack(g, index, common.get());
    } else if (own && !per_panel) {  // one depth block
      for (int64_t index = 0; index < p.panels; ++index) p.pack(g, index, own.get());
    }
    const E* b_pack = shared ? packed : own.get();
    Buffer<E> a_pack = allocate<E>(t.mc * (p.panel_size / kNR));  // what pack_a copies
    Buffer<float> tile = allocate<float>(kMR * kNR);                // an edge tile of c
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < t.row_tasks * t.col_tasks; ++task) {
      const int64_t rt = task / t.col_tasks, ct = task % t.col_tasks;
      const int64_t i0 = rt * t.mc, mc = std::min(t.mc, g.m - i0);
      const int64_t jp0 = ct * t.per_task, jp1 = std::min(t.panels, jp0 + t.per_task);
      for (int64_t blk = 0; blk < p.blocks; ++blk) {
        const int64_t pc = blk * K::kKC, kc = std::min(K::kKC, g.k - pc), kd = K::depth(kc);
        const float beta = blk == 0 ? g.beta : 1.0f;
        const float* bias = blk == 0 ? g.bias : nullptr;
        const ARows<E> a = K::pack_a(g, i0, mc, pc, kc, true, a_pack.get());
        for (int64_t jp = jp0; jp < jp1; ++jp) {
          const int64_t j0 = jp * kNR, cols = std::min<int64_t>(kNR, g.n - j0);
          const E* panel = per_panel ? own.get() : b_pack + (blk * p.panels + jp) * p.panel_size;
          if (per_panel) K::pack_b(g, pc, kc, j0, cols, own.get());
          for (int64_t ir = 0; ir < mc; ir += kMR) {
            float* c = g.c + (i0 + ir) * g.ldc + j0;
            const int64_t rows = std::min<int64_t>(kMR, mc - ir);
            tile_product<K>(kd, a.tile(ir), a.ld(ir), panel, g.alpha, beta,
                            bias ? bias + j0 : nullptr, c, g.ldc, rows, cols, tile.get());
            if (g.epilogue && blk == p.blocks - 1) (*g.epilogue)(c, g.ldc, i0 + ir, j0, rows, cols);
          }
        }
      }
    }
  }
}

// c = beta * c (zeros with beta == 0, over NaN too) + bias: a product with no depth or alpha == 0.
void scale_only(const Plan& g, bool parallel) {
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < g.m; ++i) {
    for (int64_t j = 0; j < g.n; ++j) {
      float* c = g.c + i * g.ldc + j;
      *c = g.beta == 0.0f ? 0.0f : g.beta * *c;
      if (g.bias) *c += g.bias[j];
    }
    finish_rows(g, i, 1);
  }
}

// The product of plan g through kernel K: on the calling thread alone (`serial`), else on as many
// OpenMP threads as it is worth; op(b) packed beforehand when `packed` is given.
template <class K>
void product(const Plan& g, bool serial, const typename K::Elem* packed = nullptr) {
  if (g.m <= 0 || g.n <= 0) return;
  if (g.k <= 0 || g.alpha == 0.0f) return scale_only(g, !serial && g.m * g.n > kSerialWork);
  run<K>(g, serial || g.m * g.n * g.k < kSerialWork ? 1 : omp_get_max_threads(), packed);
}

typedef float Vec __attribute__((vector_size(kVec * sizeof(float))));
typedef float VecU __attribute__((vector_size(kVec * sizeof(float)), aligned(4), may_alias));

inline Vec load(const float* p) { return *reinterpret_cast<const VecU*>(p); }
inline void store(float* p, Vec v) { *reinterpret_cast<VecU*>(p) = v; }

// The float32 kernel: op(a) and op(b) copied as they are, one float per depth.
struct Float32 {
  using Elem = float;
  // Each thread packs its own panels (see run): copying float32 is cheap next to a barrier.
  static constexpr bool kSharePanels = false;
  // Depth of a block: a panel of op(b) is (kKC, kNR) floats, 64 KB with AVX-512.
  static constexpr int64_t kKC = 512;
  // Columns of c per task: kNC (copying a is cheap; a task's block of c stays in L2).
  static constexpr int64_t kTaskPanels = kNC / kNR;

  // Packed elements per row of a depth block of kc.
  static int64_t depth(int64_t kc) { return kc; }

  // dst (kc, kNR) = op(b)[p0 : p0 + kc, j0 : j0 + cols], zero-padded to kNR columns.
  static void pack_b(const Plan& g, int64_t p0, int64_t kc, int64_t j0, int64_t cols, float* dst) {
    if (!g.trans_b) {
      for (int64_t p = 0; p < kc; ++p) {
        const float* src = g.b + (p0 + p) * g.ldb + j0;
        float* out = dst + p * kNR;
        if (cols == kNR) {  // a constant count: vector moves, not a slow-starting string copy
          for (int j = 0; j < kNR; ++j) out[j] = src[j];
          continue;
        }
        for (int64_t j = 0; j < cols; ++j) out[j] = src[j];
        for (int64_t j = cols; j < kNR; ++j) out[j] = 0.0f;
      }
      return;
    }
    // A transposed b: 16 depths at a time, so that the reads (16 floats of each row of b) and the
    // writes (16 rows of the panel) stay within a few cache lines.
    constexpr int64_t kStep = 16;
    for (int64_t pb = 0; pb < kc; pb += kStep) {
      const int64_t depth = std::min(kStep, kc - pb);
      for (int64_t j = 0; j < kNR; ++j) {
        float* out = dst + pb * kNR + j;
        if (j >= cols) {
          for (int64_t q = 0; q < depth; ++q) out[q * kNR] = 0.0f;
          continue;
        }
        const float* src = g.b + (j0 + j) * g.ldb + p0 + pb;
        for (int64_t q = 0; q < depth; ++q) out[q * kNR] = src[q];
      }
    }
  }

  // op(a)[i0 : i0 + rows, p0 : p0 + kc] for the micro-kernel: with `in_place`, the whole tiles
  // of a plain a are read in place and only its last rows packed; else all packed, as consecutive
  // (kc, kMR) tiles (the last zero-padded) into dst.
  static ARows<float> pack_a(const Plan& g, int64_t i0, int64_t rows, int64_t p0, int64_t kc,
                             bool in_place, float* dst) {
    const int64_t direct = in_place && !g.trans_a ? rows / kMR * kMR : 0;
    pack_rows(g, i0 + direct, rows - direct, p0, kc, dst);
    return {direct ? g.a + i0 * g.lda + p0 : nullptr, g.lda, direct, dst, 0, kc};
  }

  // tile (kMR, kNR) = sum_p A(i, p) * b[p * kNR + j] over p < kc, then c = alpha * tile + beta * c
  // (+ bias[j] when not nullptr; c only written when beta == 0). A(i, p) is a[p * kMR + i] for a
  // packed tile, else a[i * lda + p]. `b` is a packed panel.
  template <bool kTiled>
  static inline void micro_kernel(int64_t kc, const float* __restrict a, int64_t lda,
                                  const float* __restrict b, float alpha, float beta,
                                  const float* bias, float* c, int64_t ldc) {
    Vec acc0[kMR], acc1[kMR];
#pragma GCC unroll 16
    for (int i = 0; i < kMR; ++i) acc0[i] = acc1[i] = Vec{};
    for (int64_t p = 0; p < kc; ++p) {
      const Vec b0 = load(b + p * kNR), b1 = load(b + p * kNR + kVec);
#pragma GCC unroll 16
      for (int i = 0; i < kMR; ++i) {
        const float x = kTiled ? a[p * kMR + i] : a[i * lda + p];
        acc0[i] += x * b0;
        acc1[i] += x * b1;
      }
    }
    const Vec bias0 = bias ? load(bias) : Vec{}, bias1 = bias ? load(bias + kVec) : Vec{};
#pragma GCC unroll 16
    for (int i = 0; i < kMR; ++i) {
      float* row = c + i * ldc;
      Vec r0 = alpha * acc0[i], r1 = alpha * acc1[i];
      if (beta != 0.0f) {
        r0 += beta * load(row);
        r1 += beta * load(row + kVec);
      }
      if (bias) {
        r0 += bias0;
        r1 += bias1;
      }
      store(row, r0);
      store(row + kVec, r1);
    }
  }

 private:
  // dst (kc, kMR) = op(a)[i0 : i0 + rows, p0 : p0 + kc] transposed, zero-padded to kMR rows.
  static void pack_tile(const Plan& g, int64_t i0, int64_t rows, int64_t p0, int64_t kc,
                        float* dst) {
    for (int64_t p = 0; p < kc; ++p) {
      float* out = dst + p * kMR;
      if (g.trans_a) {
        const float* src = g.a + (p0 + p) * g.lda + i0;
        if (rows == kMR) {  // a constant count: vector moves, not a slow-starting string copy
          for (int i = 0; i < kMR; ++i) out[i] = src[i];
          continue;
        }
        for (int64_t i = 0; i < rows; ++i) out[i] = src[i];
      } else {
        for (int64_t i = 0; i < rows; ++i) out[i] = g.a[(i0 + i) * g.lda + p0 + p];
      }
      for (int64_t i = rows; i < kMR; ++i) out[i] = 0.0f;
    }
  }

  // The rows [i0, i0 + rows) of op(a), depth [p0, p0 + kc), packed as consecutive (kc, kMR) tiles
  // (the last zero-padded). A transposed a is read row by row of a (contiguous runs across all the
  // tiles), which the hardware prefetches well; a tile at a time would walk down its columns.
  static void pack_rows(const Plan& g, int64_t i0, int64_t rows, int64_t p0, int64_t kc,
                        float* dst) {
    const int64_t full = g.trans_a ? rows / kMR * kMR : 0;
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = g.a + (p0 + p) * g.lda + i0;
      for (int64_t ir = 0; ir < full; ir += kMR) {
        float* out = dst + ir * kc + p * kMR;
        for (int i = 0; i < kMR; ++i) out[i] = src[ir + i];
      }
    }
    for (int64_t ir = full; ir < rows; ir += kMR)
      pack_tile(g, i0 + ir, std::min<int64_t>(kMR, rows - ir), p0, kc, dst + ir * kc);
  }
};

}  // namespace

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc, const float* bias) {
  product<Float32>(Plan{trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias},
                   false);
}

void sgemm_serial(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc) {
  product<Float32>(Plan{trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, nullptr},
                   true);
}

}  // namespace bp

#if defined(__AVX512BF16__)
// bp::gemm_bf16 (see gemm.h): the schedule of bp::sgemm with bfloat16 operands. Packing rounds
// float32 to bfloat16 (to nearest even, vcvtne2ps2bf16) and interleaves the depth by two: a 32-bit
// "pair" holds (x[p], x[p + 1]) of one row or column, what one lane of vdpbf16ps multiplies
// (acc += x[p] y[p] + x[p + 1] y[p + 1] in float32). An odd depth is padded with a zero.
//
// - op(b) is packed once per call into panels of kNR columns, (pairs, kNR) each, per depth block,
//   shared by the threads (one pass in parallel, then one barrier): converting it per task, as
//   bp::sgemm copies it, would cost a third of the bfloat16 product at the model's shapes.
// - op(a) is converted per task and depth block: a plain a into rows of pairs (its rows are
//   contiguous in the depth: a straight conversion), a transposed a into (pairs, kMR) tiles.
// - The micro-kernel keeps a (kMR, kNR) = (12, 32) tile in 24 registers and adds, per pair of
//   depths, 2 x 12 vdpbf16ps: 32 multiply-adds each, twice the float32 FMA's 16.
namespace bp {
namespace {

using Pair = uint32_t;

// Rows of a plain op(a) prefetched ahead of the one being converted (bp_gemm_bf16's packing reads
// 2 KB of each row, then jumps lda floats: a new stream for the hardware prefetchers every row).
constexpr int64_t kPrefetchRows = 4;
// Depth pairs prefetched ahead where the packing interleaves two rows `ld` apart (a plain op(b),
// a transposed op(a)): it reads a short run of each, then jumps to the next pair of rows.
constexpr int64_t kPrefetchPairs = 4;

// Prefetches the `count` floats at x0 of the two rows kPrefetchPairs pairs after the pair (x0,
// x0 + ld) being converted, if the depth block (kc rows from depth 2q) has them.
inline void prefetch_pair_ahead(const float* x0, int64_t ld, int64_t q, int64_t kc,
                                int64_t count) {
  if (2 * (q + kPrefetchPairs) + 1 >= kc) return;
  const float* row = x0 + 2 * kPrefetchPairs * ld;
  for (int64_t j = 0; j < count; j += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(row + j), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(row + ld + j), _MM_HINT_T0);
  }
}

inline int64_t pairs_of(int64_t depth) { return (depth + 1) / 2; }

// The first `count` of 16 lanes (none when count <= 0).
inline __mmask16 first(int64_t count) {
  return count <= 0 ? 0 : count >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << count) - 1);
}

// 16 pairs (x[2t], x[2t + 1]) from the 32 floats at x, of which only the first `count` are read
// (zeros beyond): a row whose depth is contiguous.
inline __m512i pairs_along(const float* x, int64_t count) {
  const __m512 lo = _mm512_maskz_loadu_ps(first(count), x);
  const __m512 hi = _mm512_maskz_loadu_ps(first(count - 16), x + 16);
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
}

// 16 pairs (x0[t], x1[t]) for t < count (zeros beyond) from two depths of a contiguous row;
// x1 == nullptr: zeros (the padding of an odd depth).
inline __m512i pairs_across(const float* x0, const float* x1, int64_t count) {
  alignas(64) static const int16_t kInterleave[32] = {
      0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __mmask16 mask = first(count);
  const __m512 r0 = _mm512_maskz_loadu_ps(mask, x0);
  const __m512 r1 = x1 ? _mm512_maskz_loadu_ps(mask, x1) : _mm512_setzero_ps();
  const __m512i both = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(r1, r0));  // r0's, r1's
  return _mm512_permutexvar_epi16(_mm512_load_si512(kInterleave), both);
}
// Transposes the 16 x 16 matrix of 32-bit lanes r[row][lane] in place: four rounds, each swapping
// the off-diagonal blocks of size s (8, 4, 2, 1) of every 2s x 2s block.
inline void transpose16(__m512i r[16]) {
  alignas(64) static const int32_t kIndex[4][2][16] = {
      {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
       {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}},
      {{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
       {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31}},
      {{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
       {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}},
      {{0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
       {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}}};
  for (int round = 0; round < 4; ++round) {
    const int s = 8 >> round;
    const __m512i lo_index = _mm512_load_si512(kIndex[round][0]);
    const __m512i hi_index = _mm512_load_si512(kIndex[round][1]);
    for (int i = 0; i < 16; ++i) {
      if (i & s) continue;
      const __m512i lo = _mm512_permutex2var_epi32(r[i], lo_index, r[i + s]);
      const __m512i hi = _mm512_permutex2var_epi32(r[i], hi_index, r[i + s]);
      r[i] = lo;
      r[i + s] = hi;
    }
  }
}

// The bfloat16 kernel: op(a) and op(b) rounded to bfloat16 and packed as pairs along the depth.
struct Bfloat16 {
  using Elem = Pair;
  // op(b) is converted once per call and shared by the threads (see the top of this part).
  static constexpr bool kSharePanels = true;
  // Depth of a block, 4x float32's: c is read and written again once per further block
  // (BERT-base's products over 768 features: one block instead of two; over 2,304 or 3,072: two
  // instead of five or six). Measured on the bf16 step (same process, by turns, Zen 5): BERT-base
  // 2.2% faster than with 512 (768 alone gave 1.3-5.4%, more when the machine's memory was busy),
  // BERT-mini and -small 1%; 3,072 was no faster. A panel is (1,024 pairs, kNR), 128 KB, and a
  // task's rows of a up to 384 KB: both fit a 1 MB L2.
  static constexpr int64_t kKC = 2048;
  // Tasks as wide as the threads' balance allows: every task converts its rows of op(a), so tasks
  // of kNC columns converted a up to n / kNC times (6 times for BERT-base's FFN weight gradient,
  // whose (4096, 768) transposed operand then cost a quarter of the product's time).
  static constexpr int64_t kTaskPanels = int64_t{1} << 40;

  // Packed pairs per row of a depth block of kc.
  static int64_t depth(int64_t kc) { return pairs_of(kc); }

  // dst (pairs_of(kc), kNR) = op(b)[p0 : p0 + kc, j0 : j0 + cols] as pairs along the depth,
  // zero-padded to kNR columns (and to an even depth).
  static void pack_b(const Plan& g, int64_t p0, int64_t kc, int64_t j0, int64_t cols, Pair* dst) {
    const int64_t kq = pairs_of(kc);
    if (!g.trans_b) {  // depth p is row p of b: interleave two rows
      for (int64_t q = 0; q < kq; ++q) {
        const float* x0 = g.b + (p0 + 2 * q) * g.ldb + j0;
        const float* x1 = 2 * q + 1 < kc ? x0 + g.ldb : nullptr;
        prefetch_pair_ahead(x0, g.ldb, q, kc, kNR);
        for (int64_t h = 0; h < kNR; h += 16)
          _mm512_store_si512(dst + q * kNR + h,
                             pairs_across(x0 + h, x1 ? x1 + h : nullptr, cols - h));
      }
      return;
    }
    // column j of op(b) is row j of b, its pairs contiguous: convert 16 columns x 16 pairs, then
    // transpose them into the panel's rows
    for (int64_t h = 0; h < kNR; h += 16) {
      for (int64_t qb = 0; qb < kq; qb += 16) {
        __m512i r[16];
        for (int t = 0; t < 16; ++t)
          r[t] = h + t < cols ? pairs_along(g.b + (j0 + h + t) * g.ldb + p0 + 2 * qb, kc - 2 * qb)
                              : _mm512_setzero_si512();
        transpose16(r);
        const int64_t count = std::min<int64_t>(16, kq - qb);
        for (int64_t t = 0; t < count; ++t) _mm512_store_si512(dst + (qb + t) * kNR + h, r[t]);
      }
    }
  }

  // op(a)[i0 : i0 + rows, p0 : p0 + kc] as pairs into dst, all of it (a is float32: nothing is
  // read in place). A plain a: rows of kq = pairs_of(kc) pairs, zero rows added up to a multiple
  // of kMR. A transposed a: consecutive (kq, kMR) tiles, zero-padded, kMR * kq pairs apart.
  static ARows<Pair> pack_a(const Plan& g, int64_t i0, int64_t rows, int64_t p0, int64_t kc,
                            bool /*in_place*/, Pair* dst) {
    const int64_t kq = pairs_of(kc);
    const ARows<Pair> packed{nullptr, 0, 0, dst, g.trans_a ? 0 : kq, kq};
    if (!g.trans_a) {
      const int64_t padded = (rows + kMR - 1) / kMR * kMR;
      for (int64_t i = 0; i < padded; ++i) {
        Pair* out = dst + i * kq;
        if (i >= rows) {
          std::memset(out, 0, kq * sizeof(Pair));
          continue;
        }
        const float* src = g.a + (i0 + i) * g.lda + p0;
        if (i + kPrefetchRows < rows)  // rows lda apart: where hardware prefetchers lose the stream
          for (int64_t p = 0; p < kc; p += 16)
            _mm_prefetch(reinterpret_cast<const char*>(src + kPrefetchRows * g.lda + p),
                         _MM_HINT_T0);
        for (int64_t qb = 0; qb < kq; qb += 16)
          _mm512_mask_storeu_epi32(out + qb, first(kq - qb),
                                   pairs_along(src + 2 * qb, kc - 2 * qb));
      }
      return packed;
    }
    // Two rows of a (two depths) at a time, across all the tiles: each row is read once, left to
    // right. Rows lie ld floats apart (12 KB for BERT-base's FFN): every one starts a new page,
    // where hardware prefetchers stop, so the rows kPrefetchPairs pairs ahead are prefetched.
    for (int64_t q = 0; q < kq; ++q) {
      const float* x0 = g.a + (p0 + 2 * q) * g.lda + i0;
      const float* x1 = 2 * q + 1 < kc ? x0 + g.lda : nullptr;
      prefetch_pair_ahead(x0, g.lda, q, kc, rows);
      for (int64_t ir = 0; ir < rows; ir += kMR)
        _mm512_mask_storeu_epi32(dst + ir * kq + q * kMR, first(kMR),
                                 pairs_across(x0 + ir, x1 ? x1 + ir : nullptr,
                                              std::min<int64_t>(kMR, rows - ir)));
    }
    return packed;
  }

  // tile (kMR, kNR) = sum over pairs q < kq of A(i, q) . b[q * kNR + j] (two products each), then
  // c = alpha * tile + beta * c + bias[j] (c only written when beta == 0; no bias when nullptr).
  // A(i, q) is a[q * kMR + i] for a tile, else a[i * lda + q].
  template <bool kTiled>
  static inline void micro_kernel(int64_t kq, const Pair* __restrict a, int64_t lda,
                                  const Pair* __restrict b, float alpha, float beta,
                                  const float* bias, float* c, int64_t ldc) {
    __m512 acc0[kMR], acc1[kMR];
#pragma GCC unroll 16
    for (int i = 0; i < kMR; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
    for (int64_t q = 0; q < kq; ++q) {
      const __m512bh b0 = reinterpret_cast<__m512bh>(_mm512_load_si512(b + q * kNR));
      const __m512bh b1 = reinterpret_cast<__m512bh>(_mm512_load_si512(b + q * kNR + 16));
#pragma GCC unroll 16
      for (int i = 0; i < kMR; ++i) {
        const __m512bh x = reinterpret_cast<__m512bh>(
            _mm512_set1_epi32(static_cast<int>(kTiled ? a[q * kMR + i] : a[i * lda + q])));
        acc0[i] = _mm512_dpbf16_ps(acc0[i], x, b0);
        acc1[i] = _mm512_dpbf16_ps(acc1[i], x, b1);
      }
    }
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    const __m512 bias0 = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
    const __m512 bias1 = bias ? _mm512_loadu_ps(bias + 16) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int i = 0; i < kMR; ++i) {
      float* row = c + i * ldc;
      if (beta == 0.0f) {
        _mm512_storeu_ps(row, _mm512_fmadd_ps(va, acc0[i], bias0));
        _mm512_storeu_ps(row + 16, _mm512_fmadd_ps(va, acc1[i], bias1));
      } else {
        const __m512 c0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(row), bias0);
        const __m512 c1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(row + 16), bias1);
        _mm512_storeu_ps(row, _mm512_fmadd_ps(va, acc0[i], c0));
        _mm512_storeu_ps(row + 16, _mm512_fmadd_ps(va, acc1[i], c1));
      }
    }
  }
};

}  // namespace

void gemm_bf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
               const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
               int64_t ldc, const float* bias, const Epilogue* epilogue) {
  product<Bfloat16>(
      Plan{trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, epilogue}, false);
}

void gemm_bf16_serial(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                      float* c, int64_t ldc) {
  product<Bfloat16>(Plan{trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, nullptr},
                    true);
}

PackedBf16::PackedBf16(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb)
    : trans_b_(trans_b), k_(k), n_(n) {
  if (k <= 0 || n <= 0) return;
  const Plan g{false, trans_b, 0, n, k, 1.0f, nullptr, 0, b, ldb, 0.0f, nullptr, 0, nullptr};
  const Panels<Bfloat16> p(k, n);
  Buffer<Pair> buffer = allocate<Pair>(p.size());
  Pair* data = buffer.get();
  data_.reset(buffer.release(), buffer.get_deleter());
#pragma omp parallel for schedule(dynamic, 4) if (p.blocks * p.panels * p.panel_size > kSerialWork)
  for (int64_t index = 0; index < p.blocks * p.panels; ++index) p.pack(g, index, data);
}

void gemm_bf16(bool trans_a, int64_t m, float alpha, const float* a, int64_t lda,
               const PackedBf16& b, float beta, float* c, int64_t ldc) {
  product<Bfloat16>(Plan{trans_a, b.trans_b(), m, b.n(), b.k(), alpha, a, lda, nullptr, 0, beta, c,
                         ldc, nullptr},
                    false, b.data());
}

}  // namespace bp

extern "C" void bp_gemm_bf16(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                             float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
                             float beta, float* c, int64_t ldc) {
  bp::gemm_bf16(trans_a != 0, trans_b != 0, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// gemm_bf16 with a bias (n,) added to every row of c.
extern "C" void bp_gemm_bf16_bias(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                                  float alpha, const float* a, int64_t lda, const float* b,
                                  int64_t ldb, float beta, float* c, int64_t ldc,
                                  const float* bias) {
  bp::gemm_bf16(trans_a != 0, trans_b != 0, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias);
}

// gemm_bf16 through a PackedBf16 of op(b) (for tests).
extern "C" void bp_gemm_bf16_packed(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                                    float alpha, const float* a, int64_t lda, const float* b,
                                    int64_t ldb, float beta, float* c, int64_t ldc) {
  const bp::PackedBf16 packed(trans_b != 0, k, n, b, ldb);
  bp::gemm_bf16(trans_a != 0, m, alpha, a, lda, packed, beta, c, ldc);
}

extern "C" void bp_gemm_bf16_serial(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                                    float alpha, const float* a, int64_t lda, const float* b,
                                    int64_t ldb, float beta, float* c, int64_t ldc) {
  bp::gemm_bf16_serial(trans_a != 0, trans_b != 0, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
#endif  // __AVX512BF16__

// Whether this build has bp::gemm_bf16 (the target had AVX512_BF16): 1 or 0.
extern "C" int bp_has_bf16() { return bp::kHasBf16 ? 1 : 0; }

// The same GEMMs with C linkage, for tests and benchmarks that load the library with ctypes.
extern "C" void bp_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                         const float* a, int64_t lda, const float* b, int64_t ldb, float beta,
                         float* c, int64_t ldc) {
  bp::sgemm(trans_a != 0, trans_b != 0, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// sgemm with a bias (n,) added to every row of c.
extern "C" void bp_sgemm_bias(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                              float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
                              float beta, float* c, int64_t ldc, const float* bias) {
  bp::sgemm(trans_a != 0, trans_b != 0, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias);
}

extern "C" void bp_sgemm_serial(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                                float alpha, const float* a, int64_t lda, const float* b,
                                int64_t ldb, float beta, float* c, int64_t ldc) {
  bp::sgemm_serial(trans_a != 0, trans_b != 0, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
