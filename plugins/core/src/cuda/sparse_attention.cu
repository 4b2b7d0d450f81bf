// DhsaSparseAttention on the GPU, flash-style: a CTA holds 128 query rows of one kv-head group
// (all heads of the group share the gathered keys), streams the block's selected K/V tiles through
// shared memory with cp.async (multi-stage, swizzled), computes QK^T and PV on the tensor cores
// (warpgroup wgmma on Hopper, mma.sync elsewhere) and keeps an online softmax in registers. The dense instruction tail
// runs the same kernel over a contiguous key range split across CTAs (flash-decoding style), then
// a small kernel merges the splits. float32 and unusual head dims take a simple warp-per-row path.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "common.cuh"
#include "dhsa/cuda.h"
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
  // gather mode: grid.x = sparse_blocks * row_tiles
  int row_tiles;
  // tail mode: grid.x = tail_row_tiles * splits
  int tail_rows, splits, split_keys, key_lo;
  float* part_o;   // (B, Hq, T, splits, D)
  float* part_ml;  // (B, Hq, T, splits, 2)
};

// ---- PTX wrappers ------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

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

// BN keys per tile (bounds the S registers), S pipeline stages (bounded by the device's shared memory);
// wgmma tiles need a 1024-byte aligned base (the swizzle pattern repeats every 8 rows of 128 bytes).
template <int D, int BN, int S, bool kWgmma = false>
struct Tiles {
  static constexpr int kBN = BN, kChunks = D / 8;
  static constexpr int kRowStep = kThreads / kChunks;      // a thread copies one 16-byte column of
  static constexpr int kRows = kBN * kChunks / kThreads;  // kRows K/V rows, kRowStep apart
  static_assert(kThreads % kChunks == 0 && kBN % kRowStep == 0 && S >= 2, "tile shape");
  static constexpr size_t kQBytes = size_t(kBM) * D * 2;
  static constexpr size_t kKVBytes = size_t(kBN) * D * 2;
  static constexpr size_t kSmem = kQBytes + 2 * S * kKVBytes + S * kBN * sizeof(int) + (kWgmma ? 1024 : 0);
};

struct RowInfo {
  int head;  // query head, -1 if the row is inactive
  int t;     // query position
};

template <bool kGather>
__device__ __forceinline__ RowInfo row_info(const Params& p, int tile_row0, int r, int block_i) {
  const int rr = tile_row0 + r;
  if constexpr (kGather) {
    const int g = rr / p.block, t = block_i * p.block + rr % p.block;
    const int end = min((block_i + 1) * p.block, p.tail0);
    return (g < p.group && t < end) ? RowInfo{g, t} : RowInfo{-1, 0};
  } else {
    const int g = rr / p.tail_rows, t = p.tail0 + rr % p.tail_rows;
    return (g < p.group && t < p.seq) ? RowInfo{g, t} : RowInfo{-1, 0};
  }
}

template <typename T, int D, int BN, int S, bool kGather, bool kWgmma>
__global__ void __launch_bounds__(kThreads, 1) FlashKernel(Params p) {
  using TL = Tiles<D, BN, S, kWgmma>;
  constexpr int kBN = TL::kBN, kChunks = TL::kChunks, kRows = TL::kRows, kRowStep = TL::kRowStep;
  static_assert(!kWgmma || (kBN == 64 && D % 64 == 0 && kWarps == 8), "wgmma tiles: two warpgroups, 64 keys");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* smem = smem_raw;
  if constexpr (kWgmma) smem += (1024 - smem_addr(smem_raw) % 1024) % 1024;
  T* q_s = reinterpret_cast<T*>(smem);
  T* k_s = reinterpret_cast<T*>(smem + TL::kQBytes);  // S stages each
  T* v_s = reinterpret_cast<T*>(smem + TL::kQBytes + S * TL::kKVBytes);
  int* pos_s = reinterpret_cast<int*>(smem + TL::kQBytes + 2 * S * TL::kKVBytes);

  const int b = blockIdx.y / p.hkv, hk = blockIdx.y % p.hkv;
  int block_i = 0, tile_row0, split = 0, n_keys, key0 = 0;
  const int32_t* idx = nullptr;
  if constexpr (kGather) {
    block_i = blockIdx.x / p.row_tiles;
    tile_row0 = (blockIdx.x % p.row_tiles) * kBM;
    const int nqb = (p.seq + p.block - 1) / p.block;
    n_keys = min(max(p.counts[static_cast<int64_t>(b) * nqb + block_i], 0), p.nb);
    idx = p.indices + (static_cast<int64_t>(b) * nqb + block_i) * p.nb;
  } else {
    tile_row0 = (blockIdx.x / p.splits) * kBM;
    split = blockIdx.x % p.splits;
    key0 = p.key_lo + split * p.split_keys;
    n_keys = max(0, min(p.split_keys, p.seq - key0));
  }
  const T* qg = static_cast<const T*>(p.q);
  const T* kg = static_cast<const T*>(p.k) + (static_cast<int64_t>(b) * p.hkv + hk) * p.seq * D;
  const T* vg = static_cast<const T*>(p.v) + (static_cast<int64_t>(b) * p.hkv + hk) * p.seq * D;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  // Q tile (rows of inactive queries are zero-filled).
  for (int c = tid; c < kBM * kChunks; c += kThreads) {
    const int r = c / kChunks, ch = c % kChunks;
    const RowInfo ri = row_info<kGather>(p, tile_row0, r, block_i);
    const int hq = hk * p.group + max(ri.head, 0);
    const T* src = qg + ((static_cast<int64_t>(b) * p.hq + hq) * p.seq + ri.t) * D + ch * 8;
    cp_async16(q_s + tile_off<D, kWgmma>(r, ch, kBM), src, ri.head >= 0);
  }
  // Key positions of a tile are read one tile before its copy is issued, so the dependent index
  // load never stalls the warps between the barrier and the tensor-core work.
  const int my_ch = tid % kChunks, my_r0 = tid / kChunks;
  auto fetch_positions = [&](int tile, int (&pos)[kRows]) {
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int j = tile * kBN + my_r0 + i * kRowStep;
      pos[i] = j < n_keys ? (kGather ? idx[j] : key0 + j) : kNoKey;
    }
  };
  auto issue_tile = [&](int stage, const int (&pos)[kRows]) {
    T* kd = k_s + stage * kBN * D;
    T* vd = v_s + stage * kBN * D;
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int r = my_r0 + i * kRowStep;
      const bool ok = pos[i] >= 0 && pos[i] < p.seq;
      const int64_t row = ok ? pos[i] : 0;
      cp_async16(kd + tile_off<D, kWgmma>(r, my_ch, kBN), kg + row * D + my_ch * 8, ok);
      cp_async16(vd + tile_off<D, kWgmma>(r, my_ch, kBN), vg + row * D + my_ch * 8, ok);
      if (my_ch == 0) pos_s[stage * kBN + r] = ok ? pos[i] : kNoKey;
    }
  };
  const int n_tiles = (n_keys + kBN - 1) / kBN;
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
  const RowInfo r0 = row_info<kGather>(p, tile_row0, warp * 16 + lane / 4, block_i);
  const RowInfo r1 = row_info<kGather>(p, tile_row0, warp * 16 + lane / 4 + 8, block_i);
  const int t0 = r0.head >= 0 ? r0.t : -1, t1 = r1.head >= 0 ? r1.t : -1;
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  const float scale_l2 = p.scale * kLog2e;

  for (int tile = 0; tile < n_tiles; ++tile) {
    cp_async_wait<S - 2>();  // this tile's group has landed
    if constexpr (kWgmma) FenceProxyAsync();
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
    const int* pt = pos_s + stage * kBN;

    float s[kBN / 8][4];
#pragma unroll
    for (int i = 0; i < kBN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
    if constexpr (kWgmma) {
      // Warpgroup w multiplies query rows 64w..64w+63; a K-major k-step is 32 bytes into a panel.
      const uint32_t qa = smem_addr(q_s) + (warp / 4) * 64 * 128, ka = smem_addr(kt);
      WgmmaPin(s);
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
        WgmmaSS<T, kBN>(s, WgmmaDesc(qa + (kk / 4) * kBM * 128 + (kk % 4) * 32, 16, 1024),
                        WgmmaDesc(ka + (kk / 4) * kBN * 128 + (kk % 4) * 32, 16, 1024), kk > 0);
      WgmmaCommit();
      WgmmaWait<0>();
      WgmmaPin(s);
    } else {
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
    }
    // Scale, soft-cap, mask (causal, sliding window, padding) in the log2 domain.
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int pos = pt[nt * 8 + (lane % 4) * 2 + (e & 1)];
        const int t = e < 2 ? t0 : t1;
        float x = s[nt][e];
        if (p.softcap > 0.f) x = p.softcap * tanhf(x * p.scale / p.softcap) * kLog2e;
        else x *= scale_l2;
        const bool ok = pos <= t && (p.window == 0 || pos > t - p.window);
        x = ok ? x : -INFINITY;
        s[nt][e] = x;
        if (e < 2) mx0 = fmaxf(mx0, x); else mx1 = fmaxf(mx1, x);
      }
    }
#pragma unroll
    for (int o_ = 1; o_ <= 2; o_ <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o_));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o_));
    }
    const float new0 = fmaxf(m0, mx0), new1 = fmaxf(m1, mx1);
    const float use0 = new0 == -INFINITY ? 0.f : new0, use1 = new1 == -INFINITY ? 0.f : new1;
    const float alpha0 = exp2f(m0 - use0), alpha1 = exp2f(m1 - use1);
    m0 = new0;
    m1 = new1;
    float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - use0);
      s[nt][1] = exp2f(s[nt][1] - use0);
      s[nt][2] = exp2f(s[nt][2] - use1);
      s[nt][3] = exp2f(s[nt][3] - use1);
      sum0 += s[nt][0] + s[nt][1];
      sum1 += s[nt][2] + s[nt][3];
    }
    l0 = l0 * alpha0 + sum0;
    l1 = l1 * alpha1 + sum1;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      o[i][0] *= alpha0;
      o[i][1] *= alpha0;
      o[i][2] *= alpha1;
      o[i][3] *= alpha1;
    }
    // O += P V: the S accumulators are the A fragments of the next product.
    if constexpr (kWgmma) {
      // V is the MN-major operand: 16 keys = 2048 bytes down a panel, panels kBN * 128 bytes apart.
      uint32_t a[kBN / 16][4];
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) {
        a[kk][0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
        a[kk][1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
        a[kk][2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        a[kk][3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      }
      const uint32_t va = smem_addr(vt);
      WgmmaPin(o);
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) WgmmaRS<T, D>(o, a[kk], WgmmaDesc(va + kk * 16 * 128, kBN * 128, 1024));
      WgmmaCommit();
      WgmmaWait<0>();
      WgmmaPin(o);
    } else {
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
      a[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
      a[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dt = 0; dt < D / 8; dt += 2) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, vt + swz<D>(kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8, dt + lane / 16) * 8);
        mma16816<T>(o[dt], a, bv[0], bv[1]);
        mma16816<T>(o[dt + 1], a, bv[2], bv[3]);
      }
    }
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int o_ = 1; o_ <= 2; o_ <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, o_);
    l1 += __shfl_xor_sync(0xffffffffu, l1, o_);
  }
  const RowInfo rows[2] = {r0, r1};
  const float ls[2] = {l0, l1}, ms[2] = {m0, m1};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (rows[h].head < 0) continue;
    const int hq = hk * p.group + rows[h].head;
    if constexpr (kGather) {
      T* dst = static_cast<T*>(p.out) + ((static_cast<int64_t>(b) * p.hq + hq) * p.seq + rows[h].t) * D;
      const float inv = ls[h] > 0.f ? 1.f / ls[h] : 0.f;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        const int d = dt * 8 + (lane % 4) * 2;
        dst[d] = from_float<T>(o[dt][2 * h] * inv);
        dst[d + 1] = from_float<T>(o[dt][2 * h + 1] * inv);
      }
    } else {
      const int64_t slot =
          ((static_cast<int64_t>(b) * p.hq + hq) * p.tail_rows + (rows[h].t - p.tail0)) * p.splits + split;
      float* dst = p.part_o + slot * D;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        const int d = dt * 8 + (lane % 4) * 2;
        dst[d] = o[dt][2 * h];
        dst[d + 1] = o[dt][2 * h + 1];
      }
      if (lane % 4 == 0) {
        p.part_ml[slot * 2] = ms[h];
        p.part_ml[slot * 2 + 1] = ls[h];
      }
    }
  }
}

// Merge the tail's key splits: out = sum_s o_s 2^(m_s - M) / sum_s l_s 2^(m_s - M).
template <typename T>
__global__ void MergeSplitsKernel(const float* __restrict__ part_o, const float* __restrict__ part_ml, int splits,
                                  int dim, int seq, int tail0, int tail_rows, int hq, T* __restrict__ out) {
  const int row = blockIdx.x;  // (b * hq + h) * tail_rows + tt
  const int tt = row % tail_rows, bh = row / tail_rows;
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, part_ml[(static_cast<int64_t>(row) * splits + s) * 2]);
  const float use = mx == -INFINITY ? 0.f : mx;
  float denom = 0.f;
  for (int s = 0; s < splits; ++s) {
    const float* ml = part_ml + (static_cast<int64_t>(row) * splits + s) * 2;
    denom += ml[1] * exp2f(ml[0] - use);
  }
  T* dst = out + (static_cast<int64_t>(bh) * seq + tail0 + tt) * dim;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < splits; ++s) {
      const int64_t slot = static_cast<int64_t>(row) * splits + s;
      acc += part_o[slot * dim + d] * exp2f(part_ml[slot * 2] - use);
    }
    dst[d] = from_float<T>(denom > 0.f ? acc / denom : 0.f);
  }
  (void)hq;
}

// Simple path (float32, or head dims the tensor-core kernel does not cover): one warp per query row.
template <typename T>
__global__ void RowKernel(Params p, int dim) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  const int64_t rows = static_cast<int64_t>(gridDim.y) * p.hq * p.seq;
  (void)rows;
  const int b = blockIdx.y;
  if (warp >= p.hq * p.seq) return;
  const int hq = warp / p.seq, t = warp % p.seq, hk = hq / p.group;
  const T* qrow = static_cast<const T*>(p.q) + ((static_cast<int64_t>(b) * p.hq + hq) * p.seq + t) * dim;
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
  T* dst = static_cast<T*>(p.out) + ((static_cast<int64_t>(b) * p.hq + hq) * p.seq + t) * dim;
  for (int i = 0; i < per; ++i) {
    const int d = lane + 32 * i;
    if (d < dim) dst[d] = from_float<T>(l > 0.f ? acc[i] / l : 0.f);
  }
}

// Key splits of the dense tail: enough CTAs to fill the GPU at short L, at most 64 (workspace).
int TailSplits(int range, int* split_keys) {
  int splits = std::max(1, std::min(64, (range + 511) / 512));
  *split_keys = (range + splits - 1) / splits;
  *split_keys = (*split_keys + 63) / 64 * 64;
  splits = std::max(1, (range + *split_keys - 1) / *split_keys);
  return splits;
}

template <typename T, int D, int BN, int S, bool kWgmma = false>
Status RunTiles(Params p, int batch, cudaStream_t stream, void* workspace, size_t ws_bytes, int max_smem) {
  const char* op = kSparseAttention;
  const size_t smem = Tiles<D, BN, S, kWgmma>::kSmem;
  if (smem > static_cast<size_t>(max_smem))
    return Status::Error(std::string(op) + ": head dim " + std::to_string(D) + " needs " + std::to_string(smem) +
                         " bytes of shared memory per block; this GPU offers " + std::to_string(max_smem));
  DHSA_CUDA_RETURN(cudaFuncSetAttribute(FlashKernel<T, D, BN, S, true, kWgmma>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                   op, "cudaFuncSetAttribute");
  DHSA_CUDA_RETURN(cudaFuncSetAttribute(FlashKernel<T, D, BN, S, false, kWgmma>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                   op, "cudaFuncSetAttribute");
  const int sparse_blocks = p.tail0 > 0 ? (p.tail0 + p.block - 1) / p.block : 0;
  p.row_tiles = (p.group * p.block + kBM - 1) / kBM;
  if (sparse_blocks > 0) {
    FlashKernel<T, D, BN, S, true, kWgmma><<<dim3(sparse_blocks * p.row_tiles, batch * p.hkv), kThreads, smem, stream>>>(p);
    DHSA_CUDA_RETURN(cudaGetLastError(), op, "FlashKernel (sparse blocks)");
  }
  if (p.tail_rows > 0) {
    Workspace ws(workspace, ws_bytes, stream, op);
    DHSA_RETURN_IF_ERROR(ws.status());
    p.key_lo = p.window > 0 ? std::max(0, p.tail0 - p.window + 1) : 0;
    p.splits = TailSplits(p.seq - p.key_lo, &p.split_keys);
    p.part_o = ws.take<float>(static_cast<size_t>(batch) * p.hq * p.tail_rows * p.splits * D);
    p.part_ml = ws.take<float>(static_cast<size_t>(batch) * p.hq * p.tail_rows * p.splits * 2);
    const int tiles = (p.group * p.tail_rows + kBM - 1) / kBM;
    FlashKernel<T, D, BN, S, false, kWgmma><<<dim3(tiles * p.splits, batch * p.hkv), kThreads, smem, stream>>>(p);
    DHSA_CUDA_RETURN(cudaGetLastError(), op, "FlashKernel (dense tail)");
    MergeSplitsKernel<T><<<batch * p.hq * p.tail_rows, std::min(D, 256), 0, stream>>>(
        p.part_o, p.part_ml, p.splits, D, p.seq, p.tail0, p.tail_rows, p.hq, static_cast<T*>(p.out));
    DHSA_CUDA_RETURN(cudaGetLastError(), op, "MergeSplitsKernel");
  }
  return Status::Ok();
}

// wgmma needs sm_90a code in this build and a compute capability 9.0 device.
bool HopperPath() {
#ifdef DHSA_HAS_SM90A
  int device = 0, major = 0, minor = 0;
  if (!g_hopper_kernels.load() || cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
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
    constexpr int kS = D == 256 ? 2 : 4;  // 64-key tiles: Q + 2 stages of K/V at D = 256 fill 227 KB
    if (fits(Tiles<D, 64, kS, true>::kSmem))
      return RunTiles<T, D, 64, kS, true>(p, batch, stream, workspace, ws_bytes, max_smem);
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
    RowKernel<T><<<dim3(static_cast<unsigned>((rows + warps_per_cta - 1) / warps_per_cta), batch),
                   warps_per_cta * 32, 0, stream>>>(p, dim);
    return CudaStatus(cudaGetLastError(), kSparseAttention, "RowKernel");
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

Status SparseAttention(const SparseAttentionAttrs& a, const Act4& q, const Act4& k, const Act4& v,
                       const int32_t* indices, const int32_t* counts, int64_t nb, void* out, void* stream,
                       void* workspace) {
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
  size_t ws_bytes = TensorCorePath(q.dtype, q.d) ? SparseAttentionWorkspace(a, q.b, q.h, q.l, q.d) : 0;
  return DispatchFloat<Launch>(q.dtype, p, static_cast<int>(q.b), static_cast<int>(q.d),
                               static_cast<cudaStream_t>(stream), workspace, ws_bytes);
}

}  // namespace cuda
}  // namespace dhsa
