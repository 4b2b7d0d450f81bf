// DhsaSparseAttention on the GPU, flash-style: a CTA holds 128 query rows of one kv-head group
// (all heads of the group share the gathered keys), streams the block's selected K/V tiles through
// shared memory with cp.async (swizzled, multi-stage), computes QK^T and PV on the tensor cores and
// keeps an online softmax in registers. Hopper (sm_90a builds) takes a warp-specialised wgmma kernel
// (a loading warpgroup feeds two MMA warpgroups through mbarriers); other GPUs an ldmatrix + mma.sync
// kernel.
// The dense instruction tail runs in the same grid over key splits (flash-decoding style), then a
// small kernel merges the splits (inside DhsaSelectAttention, the last split to finish does). float32
// and unusual head dims take a simple warp-per-row path.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "common.cuh"
#include "dhsa/cuda.h"
#include "select_attention.h"
#include "wgmma.cuh"

namespace dhsa {
namespace cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kBM = kWarps * 16;  // query rows per CTA
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kNoKey = 0x7fffffff;  // position of padding / invalid keys: always masked

struct Params {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  const int32_t* indices;
  const int32_t* counts;
  int nb, hq, hkv, seq, group, block, window, tail0;
  float scale, softcap;
  // Per kv head: tail_ctas (tail_tiles row tiles x key splits), then the sparse blocks x row_tiles (see
  // cta_item for the grid's order).
  int row_tiles, tail_tiles, tail_ctas, ctas_per_head;
  // After the selection kernel (DhsaSelectAttention): the first fit_blocks blocks, whose eligible keys
  // all fit the budget, attend to that whole range without reading indices; with the tail they are
  // the independent CTAs, which start while the selection still runs.
  int early, fit_blocks, fit_ctas;
  int late_ctas;  // the fitting blocks' shortest CTAs (per kv head), dispatched after the sparse blocks
  int tail_rows, splits, split_keys, key_lo;
  float* part_o;   // (B, Hq, T, splits, D)
  float* part_ml;  // (B, Hq, T, splits, 2)
  // Per (b, kv head, tail row tile), zeroed by an earlier kernel of the op (DhsaSelectAttention): the
  // last of a tile's splits to finish merges them, instead of a kernel after the grid.
  int* merge_counters;
};

// Row tiles of a kv head's dense tail: its query heads' tail rows, kBM to a tile.
__host__ __device__ constexpr int64_t TailTiles(int64_t group, int64_t tail_rows) { return (group * tail_rows + kBM - 1) / kBM; }

// Row of query head hq at position t in Q and the output, (B, Hq, L, D).
__device__ __forceinline__ int64_t query_row(const Params& p, int b, int hq, int t) {
  return (static_cast<int64_t>(b) * p.hq + hq) * p.seq + t;
}

// Row of the tail's split partials (part_o / part_ml, before the split index) for query head hq at
// position t >= tail0.
__device__ __forceinline__ int64_t tail_slot(const Params& p, int b, int hq, int t) {
  return (static_cast<int64_t>(b) * p.hq + hq) * p.tail_rows + (t - p.tail0);
}

// ---- PTX wrappers ------------------------------------------------------------------------------
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

// Swizzled tile of rows x D elements: 16-byte chunk c of row r lives at chunk c ^ (r & 7).
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * (D / 8) + (chunk ^ (row & 7));
}

// Element offset of 16-byte chunk `ch` of row `r` in a tile of `rows` rows. mma.sync reads whole
// swizzled rows through ldmatrix; wgmma wants 64-element panels of 128-byte rows (wgmma.cuh).
template <int D, bool kPanels>
__device__ __forceinline__ int tile_off(int r, int ch, int rows) {
  if constexpr (kPanels) return ((ch / 8) * rows + r) * 64 + ((ch % 8) ^ (r & 7)) * 8;
  else return swz<D>(r, ch) * 8;
}

// BN keys per tile (bounds the S registers), S pipeline stages (bounded by the device's shared memory).
template <int D, int BN, int S>
struct Tiles {
  static constexpr int kBN = BN, kChunks = D / 8;
  static constexpr int kRowStep = kThreads / kChunks;      // a thread copies one 16-byte column of
  static constexpr int kRows = kBN * kChunks / kThreads;  // kRows K/V rows, kRowStep apart
  static_assert(kThreads % kChunks == 0 && kBN % kRowStep == 0 && S >= 2, "tile shape");
  static constexpr size_t kQBytes = size_t(kBM) * D * 2;
  static constexpr size_t kKVBytes = size_t(kBN) * D * 2;
  static constexpr size_t kSmem = kQBytes + 2 * S * kKVBytes + S * kBN * sizeof(int);
};

// wgmma kernel: 64-key tiles at D = 256, 128-key tiles below (the S accumulators fit the registers
// there, and each QK^T instruction then reads less shared memory per MAC); SK stages of K with their
// positions and position spans, kSV of V; the pipeline's mbarriers; 1024 bytes of alignment (the
// swizzle atom).
template <int D, int SK>
struct WgmmaTiles {
  static constexpr int kSV = 2;  // measured at D = 256: 3 K + 2 V stages beat 2 K + 3 V by 4-5 %
  static constexpr int kBN = D >= 256 ? 64 : 128, kThreads = 3 * 128;  // a loading warpgroup, two MMA warpgroups
  static constexpr int kLoadWarps = 4;  // each copies kBN / 4 rows of a tile and records their position span
  // Registers per thread after setmaxnreg (128 x load + 256 x MMA <= 64512): the fewest that keep
  // the loader free of spills, the rest to the MMA warpgroups.
  static constexpr int kLoadRegs = D >= 256 ? 40 : 56, kMmaRegs = D >= 256 ? 232 : 224;
  static constexpr size_t kQBytes = size_t(kBM) * D * 2, kTileBytes = size_t(kBN) * D * 2;
  static constexpr size_t kSmem = 1024 + kQBytes + (SK + kSV) * kTileBytes + SK * (kBN + 2 * kLoadWarps) * sizeof(int) +
                                  (1 + 2 * SK + 2 * kSV) * sizeof(uint64_t);
};

struct RowInfo {
  int head;  // query head, -1 if the row is inactive
  int t;     // query position
};

// What a CTA works on: query rows [tile_row0, +kBM) of a sparse block's gathered keys, or of one
// key split of the dense tail. One grid holds both: per kv head the tail's CTAs first (they stream
// the most keys), then the sparse blocks, latest (most keys) first, so short causal-prefix blocks fill
// the last wave's gaps. With `early`, the fitting blocks (longest first) follow the tail, and the
// independent CTAs of every head come before all others, so that they are the ones that run beside
// the selection kernel; all but the shortest fitting blocks, which go last (they fill the gaps the
// sparse blocks' last wave leaves).
struct CtaWork {
  bool gather;
  int b, hk, block_i, tile_row0, split, n_keys, key0;
  const int32_t* idx;
};

// (item within its kv head, kv head, batch) of this CTA.
__device__ __forceinline__ int3 cta_item(const Params& p) {
  if (!p.early) return make_int3(blockIdx.x, blockIdx.y % p.hkv, blockIdx.y / p.hkv);
  const int x = static_cast<int>(blockIdx.x), nf = p.tail_ctas + p.fit_ctas, ni = nf - p.late_ctas;
  if (x < ni * p.hkv) return make_int3(x % ni, x / ni, blockIdx.y);
  const int xs = x - ni * p.hkv, ns = p.ctas_per_head - nf;
  if (xs < ns * p.hkv) return make_int3(nf + xs % ns, xs / ns, blockIdx.y);
  const int xl = xs - ns * p.hkv;  // longest first, the kv heads taking turns
  return make_int3(ni + xl / p.hkv, xl % p.hkv, blockIdx.y);
}

__device__ __forceinline__ CtaWork cta_work(const Params& p, bool gather) {
  const int3 item = cta_item(p);
  CtaWork w{gather, item.z, item.y, 0, 0, 0, 0, 0, nullptr};
  const int x = item.x;
  if (gather) {
    const int sparse_blocks = (p.tail0 + p.block - 1) / p.block, nqb = (p.seq + p.block - 1) / p.block;
    const int xs = x - p.tail_ctas;
    if (xs < p.fit_ctas) {  // keys [lo, hi) of block_i, as the selection lists them
      w.block_i = p.fit_blocks - 1 - xs / p.row_tiles;
      w.tile_row0 = (xs % p.row_tiles) * kBM;
      const BlockRange r = block_range(w.block_i, p.seq, p.block, p.window, p.seq - p.tail0);
      w.key0 = static_cast<int>(r.lo);
      w.n_keys = static_cast<int>(r.hi - r.lo);
    } else {
      w.block_i = sparse_blocks - 1 - (xs - p.fit_ctas) / p.row_tiles;
      w.tile_row0 = ((xs - p.fit_ctas) % p.row_tiles) * kBM;
      w.n_keys = min(max(p.counts[static_cast<int64_t>(w.b) * nqb + w.block_i], 0), p.nb);
      w.idx = p.indices + (static_cast<int64_t>(w.b) * nqb + w.block_i) * p.nb;
    }
  } else {
    w.tile_row0 = (x / p.splits) * kBM;
    w.split = x % p.splits;
    w.key0 = p.key_lo + w.split * p.split_keys;
    w.n_keys = max(0, min(p.split_keys, p.seq - w.key0));
  }
  return w;
}

// The CTA's work item as trace records name it (TraceRecord in dhsa/cuda.h).
__device__ __forceinline__ uint32_t trace_item(const Params& p) {
  const int3 item = cta_item(p);
  const int xs = item.x - p.tail_ctas, sparse_blocks = (p.tail0 + p.block - 1) / p.block;
  const uint32_t cls = xs < 0 ? 0 : (xs < p.fit_ctas ? 1 : 2);
  const int v = xs < 0 ? item.x : (xs < p.fit_ctas ? p.fit_blocks - 1 - xs / p.row_tiles
                                                   : sparse_blocks - 1 - (xs - p.fit_ctas) / p.row_tiles);
  return cls << 28 | static_cast<uint32_t>(item.y) << 20 | static_cast<uint32_t>(v);
}

__device__ __forceinline__ RowInfo row_info(const Params& p, const CtaWork& w, int r) {
  const int rr = w.tile_row0 + r;
  if (w.gather) {
    const int g = rr / p.block, t = w.block_i * p.block + rr % p.block;
    const int end = min((w.block_i + 1) * p.block, p.tail0);
    return (g < p.group && t < end) ? RowInfo{g, t} : RowInfo{-1, 0};
  }
  const int g = rr / p.tail_rows, t = p.tail0 + rr % p.tail_rows;
  return (g < p.group && t < p.seq) ? RowInfo{g, t} : RowInfo{-1, 0};
}

// A CTA that started without waiting for the selection (p.early, no indices read) waits before it
// stores: the output may be Q's buffer, whose rows the selection's representations kernel may still
// be reading; and the attention grid then ends only after the selection.
__device__ __forceinline__ void before_store(const Params& p, const CtaWork& w) {
  if (p.early && !(w.gather && w.idx)) WaitForPredecessor();
}

// Key position of the CTA's j-th key (kNoKey past its keys): the block's j-th selected index, or
// the j-th key of a fitting block's range or of the split.
__device__ __forceinline__ int key_at(const CtaWork& w, int j) {
  return j < w.n_keys ? (w.gather && w.idx ? w.idx[j] : w.key0 + j) : kNoKey;
}

// A thread's key positions of one tile: rows my_r0 + i * kRowStep.
template <int kBN, int kRowStep, int kRows>
__device__ __forceinline__ void tile_positions(const CtaWork& w, int tile, int my_r0, int (&pos)[kRows]) {
#pragma unroll
  for (int i = 0; i < kRows; ++i) pos[i] = key_at(w, tile * kBN + my_r0 + i * kRowStep);
}

// Copies the CTA's Q rows into shared memory (rows of inactive queries are zero-filled); kN threads,
// each copying one 16-byte column of every (kN / (D / 8))-th row.
template <typename T, int D, bool kPanels, int kN>
__device__ __forceinline__ void load_q(const Params& p, const CtaWork& w, T* q_s, int tid) {
  constexpr int kChunks = D / 8;
  static_assert(kN % kChunks == 0, "whole rows per pass");
  const T* qg = static_cast<const T*>(p.q);
  const int ch = tid % kChunks;
#pragma unroll 4
  for (int r = tid / kChunks; r < kBM; r += kN / kChunks) {
    const RowInfo ri = row_info(p, w, r);
    const int hq = w.hk * p.group + max(ri.head, 0);
    const T* src = qg + query_row(p, w.b, hq, ri.t) * D + ch * 8;
    cp_async16(q_s + tile_off<D, kPanels>(r, ch, kBM), src, ri.head >= 0);
  }
}

// 2^x on the special-function unit (2 ulp; 2^-inf = 0), without exp2f's denormal handling.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// The running max of a row moves only when a tile's max exceeds it by more than this (log2 units),
// so most tiles skip rescaling the output accumulators (FlashAttention-4's conditional rescale).
// Probabilities then reach up to 2^8 before normalisation, which the bf16 / fp16 P fragments and the
// fp32 sums hold with the same relative precision.
constexpr float kRescaleSlack = 8.f;

// Online softmax over one tile of scores for this thread's two rows (positions t0, t1; -1 =
// inactive): mask (causal, sliding window, padding), then s <- 2^(s * scale * log2(e) - m) with one
// FFMA per score (soft-capped or non-positive scales are mapped to the log2 domain first), l updated;
// returns the factors the running output must be scaled by (exactly 1 when m stayed). kMask = false
// when the caller knows every key of the tile is visible to every row of the warp.
template <int kBN, bool kMask = true>
__device__ __forceinline__ float2 online_softmax(const Params& p, float (&s)[kBN / 8][4], const int* pt, int t0,
                                                 int t1, float& m0, float& m1, float& l0, float& l1) {
  const int lane = threadIdx.x % 32;
  float c = p.scale * kLog2e;  // log2-domain factor of the raw scores
  if (p.softcap > 0.f || !(c > 0.f)) {  // the max of c * s is c times the max of s only for c > 0
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        s[nt][e] = p.softcap > 0.f ? p.softcap * tanhf(s[nt][e] * p.scale / p.softcap) * kLog2e : s[nt][e] * c;
    c = 1.f;
  }
  float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
  for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float x = s[nt][e];
      if constexpr (kMask) {
        const int pos = pt[nt * 8 + (lane % 4) * 2 + (e & 1)];
        const int t = e < 2 ? t0 : t1;
        const bool ok = pos <= t && (p.window == 0 || pos > t - p.window);
        x = ok ? x : -INFINITY;
        s[nt][e] = x;
      }
      if (e < 2) mx0 = fmaxf(mx0, x); else mx1 = fmaxf(mx1, x);
    }
  }
#pragma unroll
  for (int o_ = 1; o_ <= 2; o_ <<= 1) {
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o_));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o_));
  }
  mx0 *= c;
  mx1 *= c;
  const float new0 = mx0 > m0 + kRescaleSlack ? mx0 : m0, new1 = mx1 > m1 + kRescaleSlack ? mx1 : m1;
  const float use0 = new0 == -INFINITY ? 0.f : new0, use1 = new1 == -INFINITY ? 0.f : new1;
  const float2 alpha =
      make_float2(new0 == m0 ? 1.f : fast_exp2(m0 - use0), new1 == m1 ? 1.f : fast_exp2(m1 - use1));
  m0 = new0;
  m1 = new1;
  float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
  for (int nt = 0; nt < kBN / 8; ++nt) {
    s[nt][0] = fast_exp2(fmaf(s[nt][0], c, -use0));
    s[nt][1] = fast_exp2(fmaf(s[nt][1], c, -use0));
    s[nt][2] = fast_exp2(fmaf(s[nt][2], c, -use1));
    s[nt][3] = fast_exp2(fmaf(s[nt][3], c, -use1));
    sum0 += s[nt][0] + s[nt][1];
    sum1 += s[nt][2] + s[nt][3];
  }
  l0 = l0 * alpha.x + sum0;
  l1 = l1 * alpha.y + sum1;
  return alpha;
}

template <int R>
__device__ __forceinline__ void zero(float (&x)[R][4]) {
#pragma unroll
  for (int i = 0; i < R; ++i) x[i][0] = x[i][1] = x[i][2] = x[i][3] = 0.f;
}

template <int D>
__device__ __forceinline__ void rescale(float (&o)[D / 8][4], float2 alpha) {
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
    o[i][0] *= alpha.x;
    o[i][1] *= alpha.x;
    o[i][2] *= alpha.y;
    o[i][3] *= alpha.y;
  }
}

// Probabilities as the A fragments (16 keys each) of P V, in the mma.sync / wgmma register layout.
template <typename T, int kBN>
__device__ __forceinline__ void pack_p(const float (&s)[kBN / 8][4], uint32_t (&a)[kBN / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < kBN / 16; ++kk) {
    a[kk][0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
    a[kk][1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
    a[kk][2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[kk][3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}

// A row's softmax denominators, summed over the 4 lanes that share it.
__device__ __forceinline__ void row_sums(float& l0, float& l1) {
#pragma unroll
  for (int o_ = 1; o_ <= 2; o_ <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, o_);
    l1 += __shfl_xor_sync(0xffffffffu, l1, o_);
  }
}

// Normalised rows to the output (sparse blocks), or un-normalised rows with (m, l) to the split
// partials (dense tail).
template <typename T, int D>
__device__ __forceinline__ void store_rows(const Params& p, const CtaWork& w, float (&o)[D / 8][4], RowInfo r0,
                                           RowInfo r1, float m0, float m1, float l0, float l1) {
  const int lane = threadIdx.x % 32;
  row_sums(l0, l1);
  const RowInfo rows[2] = {r0, r1};
  const float ls[2] = {l0, l1}, ms[2] = {m0, m1};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (rows[h].head < 0) continue;
    const int hq = w.hk * p.group + rows[h].head;
    if (w.gather) {
      T* dst = static_cast<T*>(p.out) + query_row(p, w.b, hq, rows[h].t) * D;
      const float inv = ls[h] > 0.f ? 1.f / ls[h] : 0.f;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt)
        *reinterpret_cast<uint32_t*>(dst + dt * 8 + (lane % 4) * 2) = pack2<T>(o[dt][2 * h] * inv, o[dt][2 * h + 1] * inv);
    } else {
      // Column pairs as 8-byte stores: each warp store then fills whole 32-byte sectors.
      const int64_t slot = tail_slot(p, w.b, hq, rows[h].t) * p.splits + w.split;
      float* dst = p.part_o + slot * D;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt)
        *reinterpret_cast<float2*>(dst + dt * 8 + (lane % 4) * 2) = make_float2(o[dt][2 * h], o[dt][2 * h + 1]);
      if (lane % 4 == 0) reinterpret_cast<float2*>(p.part_ml)[slot] = make_float2(ms[h], ls[h]);
    }
  }
}

constexpr int kMaxSplits = 16;  // TailSplits' cap

// One tail row's merge, planned before the column loop: where its split partials start, where its
// output row goes, and each split's weight 2^(m_s - M) / sum_s l_s 2^(m_s - M).
struct MergeRow {
  const float* src;  // nullptr: inactive row
  void* dst;
  float f[kMaxSplits];
};

// Rows r0 .. r0 + n - 1 of the tail row tile w (kBM rows of kv head w.hk's query heads), their key
// splits merged into the output: out = sum_s o_s f_s. 256 threads (tid): first each row's plan
// (`rows`: n MergeRows in shared memory), then each thread one 16-byte column of rows 256 / (D / 4)
// apart, several rows' loads in flight together. The loop runs in one CTA at a time per tile, with
// few warps on the SM, so it is kept to a load, a shared broadcast and four FMAs per split and row.
// The partials come from other CTAs: read past L1.
template <typename T, int D, typename Sync>
__device__ __forceinline__ void merge_tail_rows(const Params& p, const CtaWork& w, int r0, int n, MergeRow* rows,
                                                int tid, Sync sync) {
  const int splits = p.splits;
  for (int r = tid; r < n; r += 256) {
    MergeRow& mr = rows[r];
    const RowInfo ri = row_info(p, w, r0 + r);
    mr.src = nullptr;
    if (ri.head < 0) continue;
    const int hq = w.hk * p.group + ri.head;
    const int64_t slot = tail_slot(p, w.b, hq, ri.t) * splits;
    mr.src = p.part_o + slot * D;
    mr.dst = static_cast<T*>(p.out) + query_row(p, w.b, hq, ri.t) * D;
    const float2* ml = reinterpret_cast<const float2*>(p.part_ml) + slot;
    float2 x[kMaxSplits];
    float mx = -INFINITY;
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s) {
      x[s] = s < splits ? __ldcg(ml + s) : make_float2(-INFINITY, 0.f);
      mx = fmaxf(mx, x[s].x);
    }
    const float use = mx == -INFINITY ? 0.f : mx;
    float denom = 0.f;
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s) {
      x[s].x = exp2f(x[s].x - use);
      denom += x[s].y * x[s].x;
    }
    const float inv = denom > 0.f ? 1.f / denom : 0.f;
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s)
      if (s < splits) mr.f[s] = x[s].x * inv;
  }
  sync();
  constexpr int kChunks = D / 4, kStep = 256 / kChunks, kAtOnce = D >= 256 ? 8 : 4;
  static_assert(256 % kChunks == 0, "a pass covers whole rows");
  const int c = tid % kChunks;
  for (int rb = tid / kChunks; rb < n; rb += kStep * kAtOnce) {
    const float* src[kAtOnce];
    float4 acc[kAtOnce];
#pragma unroll
    for (int j = 0; j < kAtOnce; ++j) {
      const int r = rb + j * kStep;
      src[j] = r < n ? rows[r].src : nullptr;
      acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll 2
    for (int s = 0; s < splits; ++s) {
      float4 o[kAtOnce];
#pragma unroll
      for (int j = 0; j < kAtOnce; ++j)
        if (src[j]) o[j] = __ldcg(reinterpret_cast<const float4*>(src[j] + s * D) + c);
#pragma unroll
      for (int j = 0; j < kAtOnce; ++j)
        if (src[j]) {
          const float x = rows[rb + j * kStep].f[s];
          acc[j].x += o[j].x * x, acc[j].y += o[j].y * x, acc[j].z += o[j].z * x, acc[j].w += o[j].w * x;
        }
    }
#pragma unroll
    for (int j = 0; j < kAtOnce; ++j)
      if (src[j])
        *reinterpret_cast<uint2*>(static_cast<T*>(rows[rb + j * kStep].dst) + c * 4) =
            make_uint2(pack2<T>(acc[j].x, acc[j].y), pack2<T>(acc[j].z, acc[j].w));
  }
}

// Shared memory merge_tail_rows needs for a whole row tile.
constexpr size_t kMergeSmem = kBM * sizeof(MergeRow);

// A tail CTA after its partials are stored (p.merge_counters): the tile's last split to finish merges
// all of them. `sync` is a barrier of the 256 storing threads (tid); `scratch`: kMergeSmem + 16 bytes
// of shared memory this CTA no longer uses.
template <typename T, int D, typename Sync>
__device__ __forceinline__ void merge_if_last(const Params& p, const CtaWork& w, int tid, void* scratch, Sync sync) {
  int* flag = static_cast<int*>(scratch);
  __threadfence();  // this CTA's partials before its arrival
  sync();
  if (tid == 0) {
    int* c = p.merge_counters + (static_cast<int64_t>(w.b) * p.hkv + w.hk) * p.tail_tiles + w.tile_row0 / kBM;
    *flag = atomicAdd(c, 1) == p.splits - 1;
    __threadfence();  // the others' partials before ours are read
  }
  sync();
  if (*flag)
    merge_tail_rows<T, D>(p, w, 0, kBM, reinterpret_cast<MergeRow*>(static_cast<char*>(scratch) + 16), tid, sync);
}

// Named barrier of the wgmma kernel's two MMA warpgroups (0 is __syncthreads).
constexpr int kMmaSync = 1;

// Sparse-block rows of the two MMA warpgroups (thread `tid` of 256, warp `warp` of 8) through shared
// memory (`stage`: kBM x D, free once both are done with Q), so each output row leaves as 16-byte
// stores instead of one 4-byte store per thread and column pair.
template <typename T, int D>
__device__ __forceinline__ void store_rows_staged(const Params& p, const CtaWork& w, float (&o)[D / 8][4],
                                                  float l0, float l1, T* stage, int warp, int tid) {
  const int lane = tid % 32;
  row_sums(l0, l1);
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  const int r0 = warp * 16 + lane / 4, r1 = r0 + 8;
  NamedSync(kMmaSync, 256);
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    const int c = (lane % 4) * 2;
    *reinterpret_cast<uint32_t*>(stage + swz<D>(r0, dt) * 8 + c) = pack2<T>(o[dt][0] * inv0, o[dt][1] * inv0);
    *reinterpret_cast<uint32_t*>(stage + swz<D>(r1, dt) * 8 + c) = pack2<T>(o[dt][2] * inv1, o[dt][3] * inv1);
  }
  NamedSync(kMmaSync, 256);
  for (int x = tid; x < kBM * (D / 8); x += 256) {
    const int r = x / (D / 8), ch = x % (D / 8);
    const RowInfo ri = row_info(p, w, r);
    if (ri.head < 0) continue;
    const int hq = w.hk * p.group + ri.head;
    T* dst = static_cast<T*>(p.out) + query_row(p, w.b, hq, ri.t) * D + ch * 8;
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(stage + swz<D>(r, ch) * 8);
  }
}

// Portable kernel: 8 warps x 16 query rows, ldmatrix + mma.sync, K and V of a tile in one stage.
template <typename T, int D, int BN, int S>
__device__ __forceinline__ void FlashCta(const Params& p, bool gather) {
  using TL = Tiles<D, BN, S>;
  constexpr int kBN = TL::kBN, kChunks = TL::kChunks, kRows = TL::kRows, kRowStep = TL::kRowStep;
  extern __shared__ __align__(128) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem);
  T* k_s = reinterpret_cast<T*>(smem + TL::kQBytes);  // S stages each
  T* v_s = reinterpret_cast<T*>(smem + TL::kQBytes + S * TL::kKVBytes);
  int* pos_s = reinterpret_cast<int*>(smem + TL::kQBytes + 2 * S * TL::kKVBytes);

  const CtaWork w = cta_work(p, gather);
  const T* kg = static_cast<const T*>(p.k) + (static_cast<int64_t>(w.b) * p.hkv + w.hk) * p.seq * D;
  const T* vg = static_cast<const T*>(p.v) + (static_cast<int64_t>(w.b) * p.hkv + w.hk) * p.seq * D;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  load_q<T, D, false, kThreads>(p, w, q_s, tid);
  // Key positions of a tile are read one tile before its copy is issued, so the dependent index
  // load never stalls the warps between the barrier and the tensor-core work.
  const int my_ch = tid % kChunks, my_r0 = tid / kChunks;
  auto fetch_positions = [&](int tile, int (&pos)[kRows]) { tile_positions<kBN, kRowStep>(w, tile, my_r0, pos); };
  auto issue_tile = [&](int stage, const int (&pos)[kRows]) {
    T* kd = k_s + stage * kBN * D;
    T* vd = v_s + stage * kBN * D;
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int r = my_r0 + i * kRowStep;
      const bool ok = pos[i] >= 0 && pos[i] < p.seq;
      const int64_t row = ok ? pos[i] : 0;
      cp_async16(kd + swz<D>(r, my_ch) * 8, kg + row * D + my_ch * 8, ok);
      cp_async16(vd + swz<D>(r, my_ch) * 8, vg + row * D + my_ch * 8, ok);
      if (my_ch == 0) pos_s[stage * kBN + r] = ok ? pos[i] : kNoKey;
    }
  };
  const int n_tiles = (w.n_keys + kBN - 1) / kBN;
  int pos[kRows];
  fetch_positions(0, pos);
#pragma unroll
  for (int st = 0; st < S - 1; ++st) {  // prologue: tiles 0 .. S-2 in flight (the Q tile joins group 0)
    if (st < n_tiles) {
      issue_tile(st, pos);
      fetch_positions(st + 1, pos);
    }
    cp_async_commit();
  }

  // This thread's two rows (lane / 4 and lane / 4 + 8 of the warp's 16).
  const RowInfo r0 = row_info(p, w, warp * 16 + lane / 4), r1 = row_info(p, w, warp * 16 + lane / 4 + 8);
  const int t0 = r0.head >= 0 ? r0.t : -1, t1 = r1.head >= 0 ? r1.t : -1;
  float o[D / 8][4], m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  zero(o);

  for (int tile = 0; tile < n_tiles; ++tile) {
    cp_async_wait<S - 2>();  // this tile's group has landed
    __syncthreads();         // ... for every thread, and every thread is done with tile - 1's stage
    const int ahead = tile + S - 1;
    if (ahead < n_tiles) {
      issue_tile(ahead % S, pos);
      fetch_positions(ahead + 1, pos);
    }
    cp_async_commit();
    const int stage = tile % S;
    const T* kt = k_s + stage * kBN * D;
    const T* vt = v_s + stage * kBN * D;

    float s[kBN / 8][4];
    zero(s);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      ldmatrix_x4(a, q_s + swz<D>(warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8, kk * 2 + lane / 16) * 8);
#pragma unroll
      for (int nt = 0; nt < kBN / 8; nt += 2) {
        uint32_t bk[4];
        ldmatrix_x4(bk, kt + swz<D>(nt * 8 + (lane / 16) * 8 + lane % 8, kk * 2 + (lane / 8) % 2) * 8);
        mma16816<T>(s[nt], a, bk[0], bk[1]);
        mma16816<T>(s[nt + 1], a, bk[2], bk[3]);
      }
    }
    rescale<D>(o, online_softmax<kBN>(p, s, pos_s + stage * kBN, t0, t1, m0, m1, l0, l1));
    // O += P V: the S accumulators are the A fragments of the next product.
    uint32_t a[kBN / 16][4];
    pack_p<T, kBN>(s, a);
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
#pragma unroll
      for (int dt = 0; dt < D / 8; dt += 2) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, vt + swz<D>(kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8, dt + lane / 16) * 8);
        mma16816<T>(o[dt], a[kk], bv[0], bv[1]);
        mma16816<T>(o[dt + 1], a[kk], bv[2], bv[3]);
      }
    }
  }
  cp_async_wait<0>();
  before_store(p, w);
  store_rows<T, D>(p, w, o, r0, r1, m0, m1, l0, l1);
  static_assert(kMergeSmem + 16 <= TL::kQBytes, "the merge's scratch fits in Q's tile");
  if (!gather && p.merge_counters) merge_if_last<T, D>(p, w, tid, q_s, [] { __syncthreads(); });
}

// Hopper kernel, warp-specialised as in FlashAttention-3. All threads copy Q, then warpgroup 0
// gathers the selected K / V tiles with cp.async into 128-byte swizzled panels and announces each
// through an mbarrier; warpgroups 1 and 2 (64 query rows each) run QK^T with Q and K from shared
// memory and PV with P from registers. Each issues QK(t) together with PV(t-1) and runs tile t's
// softmax while PV(t-1) is on the tensor cores; the two run unsynchronised (making them take turns,
// FlashAttention-3's ping-pong, measured no faster here). Stages are handed back through "empty"
// mbarriers: no barrier spans the CTA.
template <typename T, int D, int SK>
__device__ __forceinline__ void WgmmaCta(const Params& p, bool gather) {
  using TL = WgmmaTiles<D, SK>;
  constexpr int kBN = TL::kBN, kChunks = D / 8, SV = TL::kSV;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + (1024 - smem_addr(smem_raw) % 1024) % 1024;  // swizzle atoms: 1024 B
  T* q_s = reinterpret_cast<T*>(smem);
  T* k_s = reinterpret_cast<T*>(smem + TL::kQBytes);                      // SK stages
  T* v_s = reinterpret_cast<T*>(smem + TL::kQBytes + SK * TL::kTileBytes);  // SV stages
  int* pos_s = reinterpret_cast<int*>(smem + TL::kQBytes + (SK + SV) * TL::kTileBytes);  // with K: SK stages
  int2* span_s = reinterpret_cast<int2*>(pos_s + SK * kBN);  // per stage and loading warp: (min, max) position
  uint64_t* q_full = reinterpret_cast<uint64_t*>(span_s + TL::kLoadWarps * SK);
  uint64_t* k_full = q_full + 1;
  uint64_t* k_empty = k_full + SK;
  uint64_t* v_full = k_empty + SK;
  uint64_t* v_empty = v_full + SV;

  const CtaWork w = cta_work(p, gather);
  const int n_tiles = (w.n_keys + kBN - 1) / kBN;
  // The warpgroup index through a shuffle: the compiler then knows it is warp-uniform and keeps the
  // MMA warpgroups' wgmma path free of divergence.
  const int tid = threadIdx.x, lane = tid % 32, wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  if (tid == 0) {
    // Full: one arrival per copying thread when its copies land (Q: every thread; K and V: the
    // loading warpgroup, for K one more once it has written the positions); empty: one per MMA
    // thread. An arrival releases only its own thread's accesses, so every thread that touched the
    // stage arrives.
    MbarInit(q_full, TL::kThreads);
    for (int st = 0; st < SK; ++st) MbarInit(k_full + st, 256), MbarInit(k_empty + st, 256);
    for (int st = 0; st < SV; ++st) MbarInit(v_full + st, 128), MbarInit(v_empty + st, 256);
  }
  __syncthreads();
  // Every thread copies a share of Q: the MMA warpgroups would only wait for it, and 128 threads
  // issuing 64 KB of 16-byte copies (a row lookup each) kept them waiting ~6 % of their time.
  load_q<T, D, true, TL::kThreads>(p, w, q_s, tid);
  MbarArriveOnCopies(q_full);

  if (wg == 0) {  // loading warpgroup: warp lw copies rows kWarpRows * lw .. + kWarpRows - 1 of every tile
    SetMaxRegistersDec<TL::kLoadRegs>();
    const T* kg = static_cast<const T*>(p.k) + (static_cast<int64_t>(w.b) * p.hkv + w.hk) * p.seq * D;
    const T* vg = static_cast<const T*>(p.v) + (static_cast<int64_t>(w.b) * p.hkv + w.hk) * p.seq * D;
    constexpr int kWarpRows = kBN / TL::kLoadWarps;
    const int lw = tid / 32;
    // Lane j < kWarpRows holds row j's key position (kNoKey: padding), read two tiles ahead of its
    // copy; the copies take it by shuffle, so no shared-memory round trip or barrier is in their way.
    // It is range-checked only when its tile is copied: checked at once, the load's latency stalled
    // the loader every tile.
    auto position = [&](int tile) { return lane < kWarpRows ? key_at(w, tile * kBN + lw * kWarpRows + lane) : kNoKey; };
    auto copy_rows = [&](T* dst, const T* src, int my_pos) {  // a row per kChunks lanes, 16 bytes each
      constexpr int kPer = 32 / kChunks;
      const int ch = lane % kChunks;
#pragma unroll
      for (int i = 0; i < kWarpRows / kPer; ++i) {
        const int j = i * kPer + lane / kChunks;
        const int pos = __shfl_sync(0xffffffffu, my_pos, j);
        cp_async16(dst + tile_off<D, true>(lw * kWarpRows + j, ch, kBN),
                   src + (pos != kNoKey ? pos : 0) * int64_t{D} + ch * 8, pos != kNoKey);
      }
    };
    int cur = position(0), next = position(1), prev = kNoKey;
    for (int t = 0; t <= n_tiles; ++t) {
      const int after = position(t + 2);
      if (t < n_tiles) {
        cur = cur >= 0 && cur < p.seq ? cur : kNoKey;
        const int st = t % SK;
        if (t >= SK) MbarWait(k_empty + st, (t / SK - 1) & 1);
        copy_rows(k_s + st * kBN * D, kg, cur);
        MbarArriveOnCopies(k_full + st);
        // The positions and their span, for the softmax's mask (released by the arrival below).
        if (lane < kWarpRows) pos_s[st * kBN + lw * kWarpRows + lane] = cur;
        int lo = lane < kWarpRows ? (cur != kNoKey ? cur : -1) : kNoKey, hi = lane < kWarpRows ? cur : -1;
#pragma unroll
        for (int o_ = 16; o_ > 0; o_ >>= 1) {
          lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o_));
          hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o_));
        }
        if (lane == 0) span_s[st * TL::kLoadWarps + lw] = make_int2(lo, hi);
        MbarArrive(k_full + st);
      }
      if (t > 0) {  // V one tile behind K: the order in which the MMA warpgroups use them
        const int u = t - 1;
        if (u >= SV) MbarWait(v_empty + u % SV, (u / SV - 1) & 1);
        copy_rows(v_s + (u % SV) * kBN * D, vg, prev);
        MbarArriveOnCopies(v_full + u % SV);
      }
      prev = cur;
      cur = next;
      next = after;
    }
    return;
  }

  SetMaxRegistersInc<TL::kMmaRegs>();
  const int mtid = tid - 128, warp = mtid / 32, mg = wg - 1;  // MMA thread, warp (16 rows), warpgroup
  const RowInfo r0 = row_info(p, w, warp * 16 + lane / 4), r1 = row_info(p, w, warp * 16 + lane / 4 + 8);
  const int t0 = r0.head >= 0 ? r0.t : -1, t1 = r1.head >= 0 ? r1.t : -1;
  float o[D / 8][4], m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  zero(o);
  uint32_t pa[kBN / 16][4];  // P(t-1)
  // Descriptors: one per operand tile, each k-step's a constant further on.
  const uint64_t qd = WgmmaDesc(smem_addr(q_s) + mg * 64 * 128, 16, 1024);  // this warpgroup's 64 query rows
  auto issue_pv = [&](int tile) {  // V is MN-major: 16 keys = 2048 bytes down a panel, panels kBN * 128 apart
    const uint64_t vd = WgmmaDesc(smem_addr(v_s + (tile % SV) * kBN * D), kBN * 128, 1024);
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) WgmmaRS<T, D>(o, pa[kk], WgmmaDescAdd(vd, kk * 16 * 128));
  };
  MbarWait(q_full, 0);

  // One key tile: QK(tile) and PV(tile - 1) go to the tensor cores as two commit groups, and the
  // softmax of S(tile) runs while PV(tile - 1) is still in flight. The first tile (no PV yet) is its
  // own instantiation: with a conditional PV, ptxas commits an empty group through a dummy wgmma on
  // every path, and waiting for S then also waited for PV.
  auto step = [&](int tile, auto first) {
    constexpr bool kFirst = decltype(first)::value;
    const int st = tile % SK;
    MbarWait(k_full + st, (tile / SK) & 1);
    if (!kFirst) MbarWait(v_full + (tile - 1) % SV, ((tile - 1) / SV) & 1);
    FenceProxyAsync();  // cp.async wrote through the generic proxy; wgmma reads through the async one
    float s[kBN / 8][4];
    const uint64_t kd = WgmmaDesc(smem_addr(k_s + st * kBN * D), 16, 1024);
    WgmmaPin(s);
    WgmmaPin(o);
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)  // a K-major k-step is 32 bytes into a 64-element panel
      WgmmaSS<T, kBN>(s, WgmmaDescAdd(qd, (kk / 4) * kBM * 128 + (kk % 4) * 32),
                      WgmmaDescAdd(kd, (kk / 4) * kBN * 128 + (kk % 4) * 32), kk > 0);
    WgmmaCommit();
    if constexpr (kFirst) {
      WgmmaWait<0>();
    } else {
      issue_pv(tile - 1);
      WgmmaCommit();
      WgmmaWait<1>();  // S(tile) ready; PV(tile - 1) may still run
    }
    WgmmaPin(s);
    int lo = kNoKey, hi = -1;
#pragma unroll
    for (int x = 0; x < TL::kLoadWarps; ++x) {
      const int2 span = span_s[st * TL::kLoadWarps + x];
      lo = min(lo, span.x);
      hi = max(hi, span.y);
    }
    // Unmasked only if every active row of the warp sees the whole tile (inactive rows: never stored).
    auto sees = [&](int t) { return t < 0 || (hi <= t && (p.window == 0 || lo > t - p.window)); };
    const bool visible = sees(t0) && sees(t1);
    const float2 alpha = __all_sync(0xffffffffu, visible)
                             ? online_softmax<kBN, false>(p, s, nullptr, t0, t1, m0, m1, l0, l1)
                             : online_softmax<kBN, true>(p, s, pos_s + st * kBN, t0, t1, m0, m1, l0, l1);
    MbarArrive(k_empty + st);  // K(tile) and its positions are consumed
    if constexpr (!kFirst) {
      WgmmaWait<0>();
      WgmmaPin(o);
      MbarArrive(v_empty + (tile - 1) % SV);
    }
    if (!__all_sync(0xffffffffu, alpha.x == 1.f && alpha.y == 1.f)) rescale<D>(o, alpha);  // the max moved
    pack_p<T, kBN>(s, pa);
  };
  if (n_tiles > 0) step(0, std::true_type{});
  for (int tile = 1; tile < n_tiles; ++tile) step(tile, std::false_type{});
  if (n_tiles > 0) {
    MbarWait(v_full + (n_tiles - 1) % SV, ((n_tiles - 1) / SV) & 1);
    FenceProxyAsync();
    WgmmaPin(o);
    WgmmaFence();
    issue_pv(n_tiles - 1);
    WgmmaCommit();
    WgmmaWait<0>();
    WgmmaPin(o);
  }
  before_store(p, w);
  if (w.gather && reinterpret_cast<uintptr_t>(p.out) % 16 == 0) store_rows_staged<T, D>(p, w, o, l0, l1, q_s, warp, mtid);
  else store_rows<T, D>(p, w, o, r0, r1, m0, m1, l0, l1);
  static_assert(kMergeSmem + 16 <= TL::kQBytes, "the merge's scratch fits in Q's tile");
  if (!gather && p.merge_counters) merge_if_last<T, D>(p, w, mtid, q_s, [] { NamedSync(kMmaSync, 256); });
}

// A kv head's first tail_ctas CTAs run the dense tail; each path is compiled on its own (inlined
// with a constant), so neither pays for the other's branches inside the key loop. Independent CTAs
// (p.early) read only Q, K and V, which as DhsaSelectAttention's inputs were complete before its
// first kernel waited for its predecessor, so they start without waiting for the selection.
template <typename T, int D, int BN, int S>
__global__ void __launch_bounds__(kThreads, 1) FlashKernel(Params p) {
  CtaTrace trace(kTraceAttention);
  const int item = cta_item(p).x;
  if (p.early && item < p.tail_ctas + p.fit_ctas) LaunchDependents();  // waits in before_store
  else AfterPredecessor();
  trace.ready();
  trace.item = trace_item(p);
  if (item < p.tail_ctas) FlashCta<T, D, BN, S>(p, false);
  else FlashCta<T, D, BN, S>(p, true);
}

template <typename T, int D, int SK>
__global__ void __launch_bounds__(WgmmaTiles<D, SK>::kThreads, 1) WgmmaKernel(Params p) {
  CtaTrace trace(kTraceAttention, 128);  // an MMA thread: the loading warpgroup leaves first
  const int item = cta_item(p).x;
  if (p.early && item < p.tail_ctas + p.fit_ctas) LaunchDependents();  // waits in before_store
  else AfterPredecessor();
  trace.ready();
  trace.item = trace_item(p);
  if (item < p.tail_ctas) WgmmaCta<T, D, SK>(p, false);
  else WgmmaCta<T, D, SK>(p, true);
}

// Merge of the tail's key splits after the grid (standalone DhsaSparseAttention): a CTA per
// kMergeRows rows of a row tile, so the merge's few rows still spread over the GPU.
constexpr int kMergeRows = 8;
template <typename T, int D>
__global__ void __launch_bounds__(256) MergeSplitsKernel(Params p) {
  CtaTrace trace(kTraceMerge);
  AfterPredecessor();
  trace.ready();
  __shared__ MergeRow rows[kMergeRows];
  constexpr int kParts = kBM / kMergeRows;
  const int x = static_cast<int>(blockIdx.x), part = x % kParts, tile = x / kParts % p.tail_tiles;
  const int hk = x / kParts / p.tail_tiles % p.hkv, b = x / kParts / p.tail_tiles / p.hkv;
  const CtaWork w{false, b, hk, 0, tile * kBM, 0, 0, 0, nullptr};
  merge_tail_rows<T, D>(p, w, part * kMergeRows, kMergeRows, rows, threadIdx.x, [] { __syncthreads(); });
}

// Simple path (float32, or head dims the tensor-core kernel does not cover): one warp per query row.
template <typename T>
__global__ void RowKernel(Params p, int dim) {
  AfterPredecessor();
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.y;
  if (warp >= p.hq * p.seq) return;
  const int hq = warp / p.seq, t = warp % p.seq, hk = hq / p.group;
  const T* qrow = static_cast<const T*>(p.q) + query_row(p, b, hq, t) * dim;
  const T* kg = static_cast<const T*>(p.k) + (static_cast<int64_t>(b) * p.hkv + hk) * p.seq * dim;
  const T* vg = static_cast<const T*>(p.v) + (static_cast<int64_t>(b) * p.hkv + hk) * p.seq * dim;
  constexpr int kMaxPerLane = 32;  // dim <= 1024
  float qv[kMaxPerLane], acc[kMaxPerLane];
  const int per = (dim + 31) / 32;
  for (int i = 0; i < per; ++i) {
    const int d = lane + 32 * i;
    qv[i] = d < dim ? to_float(qrow[d]) : 0.f;
    acc[i] = 0.f;
  }
  int n, lo = 0;
  const int32_t* idx = nullptr;
  if (t < p.tail0) {
    const int nqb = (p.seq + p.block - 1) / p.block, i = t / p.block;
    n = min(max(p.counts[static_cast<int64_t>(b) * nqb + i], 0), p.nb);
    idx = p.indices + (static_cast<int64_t>(b) * nqb + i) * p.nb;
  } else {
    lo = p.window > 0 ? max(0, t - p.window + 1) : 0;
    n = t + 1 - lo;
  }
  float m = -INFINITY, l = 0.f;
  for (int j = 0; j < n; ++j) {
    const int pos = idx ? idx[j] : lo + j;
    if (pos < 0 || pos >= p.seq || pos > t || (p.window > 0 && pos <= t - p.window)) continue;
    float dot = 0.f;
    for (int i = 0; i < per; ++i) {
      const int d = lane + 32 * i;
      if (d < dim) dot += qv[i] * to_float(kg[static_cast<int64_t>(pos) * dim + d]);
    }
    for (int o_ = 16; o_ > 0; o_ >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o_);
    float x = dot * p.scale;
    if (p.softcap > 0.f) x = tanhf(x / p.softcap) * p.softcap;
    const float nm = fmaxf(m, x), alpha = expf(m - nm), w = expf(x - nm);
    l = l * alpha + w;
    for (int i = 0; i < per; ++i) {
      const int d = lane + 32 * i;
      acc[i] = acc[i] * alpha + (d < dim ? w * to_float(vg[static_cast<int64_t>(pos) * dim + d]) : 0.f);
    }
    m = nm;
  }
  T* dst = static_cast<T*>(p.out) + query_row(p, b, hq, t) * dim;
  for (int i = 0; i < per; ++i) {
    const int d = lane + 32 * i;
    if (d < dim) dst[d] = from_float<T>(l > 0.f ? acc[i] / l : 0.f);
  }
}

// Key splits of the dense tail: at most kMaxSplits (the fp32 partials are the op's workspace), at least
// 2048 keys each. Its CTAs share the grid with the sparse blocks and start first, so a long split
// overlaps the sparse work instead of following it.
int TailSplits(int range, int* split_keys) {
  const int splits = std::max(1, std::min(kMaxSplits, range / 2048));
  *split_keys = ((range + splits - 1) / splits + 63) / 64 * 64;
  return std::max(1, (range + *split_keys - 1) / *split_keys);
}

using KernelFn = void (*)(Params);

// One launch for the dense tail's key splits and the sparse blocks, then the merge of the splits
// (unless the grid merges them itself).
template <typename T, int D>
Status RunKernels(Params p, int batch, cudaStream_t stream, void* workspace, size_t ws_bytes, size_t smem,
                  int max_smem, KernelFn kernel, int threads) {
  const char* op = kSparseAttention;
  if (smem > static_cast<size_t>(max_smem))
    return Status::Error(std::string(op) + ": head dim " + std::to_string(D) + " needs " + std::to_string(smem) +
                         " bytes of shared memory per block; this GPU offers " + std::to_string(max_smem));
  DHSA_CUDA_RETURN(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                   op, "cudaFuncSetAttribute");
  const int sparse_blocks = p.tail0 > 0 ? (p.tail0 + p.block - 1) / p.block : 0;
  p.row_tiles = (p.group * p.block + kBM - 1) / kBM;
  p.tail_tiles = static_cast<int>(TailTiles(p.group, p.tail_rows));
  p.tail_ctas = 0;
  Workspace ws(workspace, p.tail_rows > 0 ? ws_bytes : 0, stream, op);
  DHSA_RETURN_IF_ERROR(ws.status());
  if (p.tail_rows > 0) {
    p.key_lo = p.window > 0 ? std::max(0, p.tail0 - p.window + 1) : 0;
    p.splits = TailSplits(p.seq - p.key_lo, &p.split_keys);
    p.part_o = ws.take<float>(static_cast<size_t>(batch) * p.hq * p.tail_rows * p.splits * D);
    p.part_ml = ws.take<float>(static_cast<size_t>(batch) * p.hq * p.tail_rows * p.splits * 2);
    p.tail_ctas = p.tail_tiles * p.splits;
  }
  p.fit_ctas = p.fit_blocks * p.row_tiles;
  p.late_ctas = p.fit_blocks / 2 * p.row_tiles;
  p.ctas_per_head = p.tail_ctas + sparse_blocks * p.row_tiles;
  if (p.ctas_per_head > 0) {
    const dim3 grid = p.early ? dim3(p.ctas_per_head * p.hkv, batch) : dim3(p.ctas_per_head, batch * p.hkv);
    DHSA_CUDA_RETURN(LaunchKernel(kernel, grid, threads, smem, stream, p), op, "attention kernel");
  }
  if (p.tail_rows > 0 && !p.merge_counters) {
    const unsigned ctas = static_cast<unsigned>(batch * p.hkv * p.tail_tiles * (kBM / kMergeRows));
    DHSA_CUDA_RETURN(LaunchKernel(MergeSplitsKernel<T, D>, ctas, 256, 0, stream, p),
                     op, "MergeSplitsKernel");
  }
  return Status::Ok();
}

template <typename T, int D, int BN, int S>
Status RunTiles(Params p, int batch, cudaStream_t stream, void* workspace, size_t ws_bytes, int max_smem) {
  return RunKernels<T, D>(p, batch, stream, workspace, ws_bytes, Tiles<D, BN, S>::kSmem, max_smem,
                       FlashKernel<T, D, BN, S>, kThreads);
}

template <typename T, int D, int SK>
Status RunWgmma(Params p, int batch, cudaStream_t stream, void* workspace, size_t ws_bytes, int max_smem) {
  return RunKernels<T, D>(p, batch, stream, workspace, ws_bytes, WgmmaTiles<D, SK>::kSmem, max_smem,
                       WgmmaKernel<T, D, SK>, WgmmaTiles<D, SK>::kThreads);
}

// wgmma needs sm_90a code in this build and a compute capability 9.0 device.
bool HopperPath() {
#ifdef DHSA_HAS_SM90A
  int major = 0, minor = 0;
  if (!g_hopper_kernels.load() || DeviceAttribute(cudaDevAttrComputeCapabilityMajor, &major) != cudaSuccess ||
      DeviceAttribute(cudaDevAttrComputeCapabilityMinor, &minor) != cudaSuccess)
    return false;
  return major == 9 && minor == 0;
#else
  return false;
#endif
}

// The deepest pipeline that fits: 227 KB on sm_90, 163 KB on sm_80/87, 99 KB on sm_86/89/120.
template <typename T, int D>
Status RunTensorCore(Params p, int batch, cudaStream_t stream, void* workspace, size_t ws_bytes) {
  int max_smem = 0;
  DHSA_CUDA_RETURN(MaxSharedMemoryPerBlock(&max_smem), kSparseAttention, "cudaDeviceGetAttribute");
  const auto fits = [&](size_t bytes) { return bytes <= static_cast<size_t>(max_smem); };
  if (HopperPath()) {
    constexpr int kSK = D == 64 ? 4 : 3;  // at D = 128 and 256, Q + 3 K + 2 V tiles fill the 227 KB
    if (fits(WgmmaTiles<D, kSK>::kSmem)) return RunWgmma<T, D, kSK>(p, batch, stream, workspace, ws_bytes, max_smem);
  }
  if constexpr (D == 256) {
    if (fits(Tiles<256, 32, 4>::kSmem)) return RunTiles<T, 256, 32, 4>(p, batch, stream, workspace, ws_bytes, max_smem);
    if (fits(Tiles<256, 32, 3>::kSmem)) return RunTiles<T, 256, 32, 3>(p, batch, stream, workspace, ws_bytes, max_smem);
    return RunTiles<T, 256, 16, 2>(p, batch, stream, workspace, ws_bytes, max_smem);
  } else if constexpr (D == 128) {
    if (fits(Tiles<128, 64, 4>::kSmem)) return RunTiles<T, 128, 64, 4>(p, batch, stream, workspace, ws_bytes, max_smem);
    return RunTiles<T, 128, 64, 2>(p, batch, stream, workspace, ws_bytes, max_smem);
  } else {
    return RunTiles<T, D, 64, 4>(p, batch, stream, workspace, ws_bytes, max_smem);
  }
}

template <typename T>
struct Launch {
  static Status Run(Params p, int batch, int dim, cudaStream_t stream, void* workspace, size_t ws_bytes) {
    if constexpr (!std::is_same<T, float>::value) {
      switch (dim) {
        case 64: return RunTensorCore<T, 64>(p, batch, stream, workspace, ws_bytes);
        case 128: return RunTensorCore<T, 128>(p, batch, stream, workspace, ws_bytes);
        case 256: return RunTensorCore<T, 256>(p, batch, stream, workspace, ws_bytes);
        default: break;
      }
    }
    if (dim > 1024) return Status::Error("DhsaSparseAttention: head dim above 1024 is not supported on CUDA");
    const int warps_per_cta = 4;
    const int64_t rows = static_cast<int64_t>(p.hq) * p.seq;
    const dim3 grid(static_cast<unsigned>((rows + warps_per_cta - 1) / warps_per_cta), batch);
    return CudaStatus(LaunchKernel(RowKernel<T>, grid, warps_per_cta * 32, 0, stream, p, dim), kSparseAttention,
                      "RowKernel");
  }
};

bool TensorCorePath(DType t, int64_t dim) {
  return t != DType::kFloat32 && (dim == 64 || dim == 128 || dim == 256);
}

}  // namespace

void SetSharedMemoryLimit(int bytes) { g_shared_memory_cap.store(bytes > 0 ? bytes : 0); }

void UseHopperKernels(bool enabled) { g_hopper_kernels.store(enabled); }

const char* AttentionKernelName() { return HopperPath() ? "wgmma (sm_90a)" : "mma.sync"; }

size_t SparseAttentionWorkspace(const SparseAttentionAttrs& a, int64_t batch, int64_t hq, int64_t seq, int64_t dim) {
  const int64_t tail = seq - tail_start(seq, a.instruction_tokens);
  if (tail == 0) return 0;
  const int64_t lo = a.sliding_window > 0 ? std::max<int64_t>(0, tail_start(seq, a.instruction_tokens) -
                                                                      a.sliding_window + 1) : 0;
  int split_keys;
  const int64_t splits = TailSplits(static_cast<int>(seq - lo), &split_keys);
  return Workspace::Align(batch * hq * tail * splits * dim * sizeof(float)) +
         Workspace::Align(batch * hq * tail * splits * 2 * sizeof(float));
}

int64_t TailMergeCounters(const SparseAttentionAttrs& a, int64_t batch, int64_t hq, int64_t hkv, int64_t seq) {
  const int64_t tail = seq - tail_start(seq, a.instruction_tokens);
  return batch * hkv * TailTiles(hq / hkv, tail);
}

int64_t FusedFitBlocks(const SparseAttentionAttrs& a, const Act4& q, int64_t nb) {
  if (!ProgrammaticLaunch() || !TensorCorePath(q.dtype, q.d)) return 0;
  return leading_fit_blocks(q.l, a.block_size, a.sliding_window, a.instruction_tokens, nb);
}

Status SparseAttentionAfterSelection(const SparseAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v,
                                     const int32_t* indices, const int32_t* counts, int64_t nb, void* out,
                                     void* stream, void* workspace, bool early, int64_t fit_blocks,
                                     int32_t* merge_counters) {
  if (q.l > (1ll << 30) || nb > (1ll << 30))
    return Status::Error("DhsaSparseAttention: L or Nb above 2^30 is not supported on CUDA");
  Params p{};
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.out = out;
  p.indices = indices;
  p.counts = counts;
  p.nb = static_cast<int>(nb);
  p.hq = static_cast<int>(q.h);
  p.hkv = static_cast<int>(k.h);
  p.seq = static_cast<int>(q.l);
  p.group = static_cast<int>(q.h / k.h);
  p.block = static_cast<int>(a.block_size);
  p.window = static_cast<int>(a.sliding_window);
  p.tail0 = static_cast<int>(tail_start(q.l, a.instruction_tokens));
  p.scale = a.scale;
  p.softcap = a.softcap;
  p.tail_rows = p.seq - p.tail0;
  p.early = early && ProgrammaticLaunch();
  p.fit_blocks = p.early ? static_cast<int>(fit_blocks) : 0;
  p.merge_counters = merge_counters;
  size_t ws_bytes = TensorCorePath(q.dtype, q.d) ? SparseAttentionWorkspace(a, q.b, q.h, q.l, q.d) : 0;
  return DispatchFloat<Launch>(q.dtype, p, static_cast<int>(q.b), static_cast<int>(q.d),
                               static_cast<cudaStream_t>(stream), workspace, ws_bytes);
}

Status SparseAttention(const SparseAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v,
                       const int32_t* indices, const int32_t* counts, int64_t nb, void* out, void* stream,
                       void* workspace) {
  return SparseAttentionAfterSelection(a, q, k, v, indices, counts, nb, out, stream, workspace, false, 0, nullptr);
}

}  // namespace cuda
}  // namespace dhsa
