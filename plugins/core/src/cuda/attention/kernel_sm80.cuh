// The portable tensor-core kernel (sm_80 and up): ldmatrix + mma.sync, 8 warps x 16 query rows.
// Private to sparse_attention.cu, the one translation unit that includes it (internal linkage).
#pragma once

#include "tail_merge.cuh"

namespace dhsa {
namespace cuda {
namespace {

// Portable kernel: 8 warps x 16 query rows, ldmatrix + mma.sync, K and V of a tile in one stage.
template <typename T, int D, int BN, int S>
__device__ __forceinline__ void flash_cta(const Params& p, bool gather) {
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

// A kv head's first tail_ctas CTAs run the dense tail; each path is compiled on its own (inlined
// with a constant), so neither pays for the other's branches inside the key loop. Independent CTAs
// (p.early) read only Q, K and V, which as DhsaSelectAttention's inputs were complete before its
// first kernel waited for its predecessor, so they start without waiting for the selection.
template <typename T, int D, int BN, int S>
__global__ void __launch_bounds__(kThreads, 1) FlashKernel(Params p) {
  CtaTrace trace(kTraceAttention);
  const int item = cta_item(p).x;
  if (p.early && item < p.tail_ctas + p.fit_ctas) launch_dependents();  // waits in before_store
  else after_predecessor();
  trace.ready();
  trace.item = trace_item(p);
  if (item < p.tail_ctas) flash_cta<T, D, BN, S>(p, false);
  else flash_cta<T, D, BN, S>(p, true);
}

}  // namespace
}  // namespace cuda
}  // namespace dhsa
