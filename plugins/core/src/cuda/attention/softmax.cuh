// The epilogue side of the mainloop: online softmax over a tile of scores, rescaling, P fragments,
// row sums and the stores of finished rows (normalised output, or a tail split's partials).
// Private to sparse_attention.cu, the one translation unit that includes it (internal linkage).
#pragma once

#include "scheduler.cuh"

namespace dhsa {
namespace cuda {
namespace {

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

}  // namespace
}  // namespace cuda
}  // namespace dhsa
