// The Hopper kernel (sm_90a): warp-specialised wgmma, a loading warpgroup feeding two MMA warpgroups
// through mbarriers.
// Private to sparse_attention.cu, the one translation unit that includes it (internal linkage).
#pragma once

#include "tail_merge.cuh"
#include "../wgmma.cuh"

namespace dhsa {
namespace cuda {
namespace {

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
  named_sync(kMmaSync, 256);
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    const int c = (lane % 4) * 2;
    *reinterpret_cast<uint32_t*>(stage + swz<D>(r0, dt) * 8 + c) = pack2<T>(o[dt][0] * inv0, o[dt][1] * inv0);
    *reinterpret_cast<uint32_t*>(stage + swz<D>(r1, dt) * 8 + c) = pack2<T>(o[dt][2] * inv1, o[dt][3] * inv1);
  }
  named_sync(kMmaSync, 256);
  for (int x = tid; x < kBM * (D / 8); x += 256) {
    const int r = x / (D / 8), ch = x % (D / 8);
    const RowInfo ri = row_info(p, w, r);
    if (ri.head < 0) continue;
    const int hq = w.hk * p.group + ri.head;
    T* dst = static_cast<T*>(p.out) + query_row(p, w.b, hq, ri.t) * D + ch * 8;
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(stage + swz<D>(r, ch) * 8);
  }
}

// Hopper kernel, warp-specialised as in FlashAttention-3. All threads copy Q, then warpgroup 0
// gathers the selected K / V tiles with cp.async into 128-byte swizzled panels and announces each
// through an mbarrier; warpgroups 1 and 2 (64 query rows each) run QK^T with Q and K from shared
// memory and PV with P from registers. Each issues QK(t) together with PV(t-1) and runs tile t's
// softmax while PV(t-1) is on the tensor cores; the two run unsynchronised (making them take turns,
// FlashAttention-3's ping-pong, measured no faster here). Stages are handed back through "empty"
// mbarriers: no barrier spans the CTA.
template <typename T, int D, int SK>
__device__ __forceinline__ void wgmma_cta(const Params& p, bool gather) {
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
    mbar_init(q_full, TL::kThreads);
    for (int st = 0; st < SK; ++st) mbar_init(k_full + st, 256), mbar_init(k_empty + st, 256);
    for (int st = 0; st < SV; ++st) mbar_init(v_full + st, 128), mbar_init(v_empty + st, 256);
  }
  __syncthreads();
  // Every thread copies a share of Q: the MMA warpgroups would only wait for it, and 128 threads
  // issuing 64 KB of 16-byte copies (a row lookup each) kept them waiting ~6 % of their time.
  load_q<T, D, true, TL::kThreads>(p, w, q_s, tid);
  mbar_arrive_on_copies(q_full);

  if (wg == 0) {  // loading warpgroup: warp lw copies rows kWarpRows * lw .. + kWarpRows - 1 of every tile
    set_max_registers_dec<TL::kLoadRegs>();
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
        if (t >= SK) mbar_wait(k_empty + st, (t / SK - 1) & 1);
        copy_rows(k_s + st * kBN * D, kg, cur);
        mbar_arrive_on_copies(k_full + st);
        // The positions and their span, for the softmax's mask (released by the arrival below).
        if (lane < kWarpRows) pos_s[st * kBN + lw * kWarpRows + lane] = cur;
        int lo = lane < kWarpRows ? (cur != kNoKey ? cur : -1) : kNoKey, hi = lane < kWarpRows ? cur : -1;
#pragma unroll
        for (int o_ = 16; o_ > 0; o_ >>= 1) {
          lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o_));
          hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o_));
        }
        if (lane == 0) span_s[st * TL::kLoadWarps + lw] = make_int2(lo, hi);
        mbar_arrive(k_full + st);
      }
      if (t > 0) {  // V one tile behind K: the order in which the MMA warpgroups use them
        const int u = t - 1;
        if (u >= SV) mbar_wait(v_empty + u % SV, (u / SV - 1) & 1);
        copy_rows(v_s + (u % SV) * kBN * D, vg, prev);
        mbar_arrive_on_copies(v_full + u % SV);
      }
      prev = cur;
      cur = next;
      next = after;
    }
    return;
  }

  set_max_registers_inc<TL::kMmaRegs>();
  const int mtid = tid - 128, warp = mtid / 32, mg = wg - 1;  // MMA thread, warp (16 rows), warpgroup
  const RowInfo r0 = row_info(p, w, warp * 16 + lane / 4), r1 = row_info(p, w, warp * 16 + lane / 4 + 8);
  const int t0 = r0.head >= 0 ? r0.t : -1, t1 = r1.head >= 0 ? r1.t : -1;
  float o[D / 8][4], m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  zero(o);
  uint32_t pa[kBN / 16][4];  // P(t-1)
  // Descriptors: one per operand tile, each k-step's a constant further on.
  const uint64_t qd = wgmma_desc(smem_addr(q_s) + mg * 64 * 128, 16, 1024);  // this warpgroup's 64 query rows
  auto issue_pv = [&](int tile) {  // V is MN-major: 16 keys = 2048 bytes down a panel, panels kBN * 128 apart
    const uint64_t vd = wgmma_desc(smem_addr(v_s + (tile % SV) * kBN * D), kBN * 128, 1024);
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) wgmma_rs<T, D>(o, pa[kk], wgmma_desc_add(vd, kk * 16 * 128));
  };
  mbar_wait(q_full, 0);

  // One key tile: QK(tile) and PV(tile - 1) go to the tensor cores as two commit groups, and the
  // softmax of S(tile) runs while PV(tile - 1) is still in flight. The first tile (no PV yet) is its
  // own instantiation: with a conditional PV, ptxas commits an empty group through a dummy wgmma on
  // every path, and waiting for S then also waited for PV.
  auto step = [&](int tile, auto first) {
    constexpr bool kFirst = decltype(first)::value;
    const int st = tile % SK;
    mbar_wait(k_full + st, (tile / SK) & 1);
    if (!kFirst) mbar_wait(v_full + (tile - 1) % SV, ((tile - 1) / SV) & 1);
    fence_proxy_async();  // cp.async wrote through the generic proxy; wgmma reads through the async one
    float s[kBN / 8][4];
    const uint64_t kd = wgmma_desc(smem_addr(k_s + st * kBN * D), 16, 1024);
    wgmma_pin(s);
    wgmma_pin(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)  // a K-major k-step is 32 bytes into a 64-element panel
      wgmma_ss<T, kBN>(s, wgmma_desc_add(qd, (kk / 4) * kBM * 128 + (kk % 4) * 32),
                      wgmma_desc_add(kd, (kk / 4) * kBN * 128 + (kk % 4) * 32), kk > 0);
    wgmma_commit();
    if constexpr (kFirst) {
      wgmma_wait<0>();
    } else {
      issue_pv(tile - 1);
      wgmma_commit();
      wgmma_wait<1>();  // S(tile) ready; PV(tile - 1) may still run
    }
    wgmma_pin(s);
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
    mbar_arrive(k_empty + st);  // K(tile) and its positions are consumed
    if constexpr (!kFirst) {
      wgmma_wait<0>();
      wgmma_pin(o);
      mbar_arrive(v_empty + (tile - 1) % SV);
    }
    if (!__all_sync(0xffffffffu, alpha.x == 1.f && alpha.y == 1.f)) rescale<D>(o, alpha);  // the max moved
    pack_p<T, kBN>(s, pa);
  };
  if (n_tiles > 0) step(0, std::true_type{});
  for (int tile = 1; tile < n_tiles; ++tile) step(tile, std::false_type{});
  if (n_tiles > 0) {
    mbar_wait(v_full + (n_tiles - 1) % SV, ((n_tiles - 1) / SV) & 1);
    fence_proxy_async();
    wgmma_pin(o);
    wgmma_fence();
    issue_pv(n_tiles - 1);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_pin(o);
  }
  before_store(p, w);
  if (w.gather && reinterpret_cast<uintptr_t>(p.out) % 16 == 0) store_rows_staged<T, D>(p, w, o, l0, l1, q_s, warp, mtid);
  else store_rows<T, D>(p, w, o, r0, r1, m0, m1, l0, l1);
  static_assert(kMergeSmem + 16 <= TL::kQBytes, "the merge's scratch fits in Q's tile");
  if (!gather && p.merge_counters) merge_if_last<T, D>(p, w, mtid, q_s, [] { named_sync(kMmaSync, 256); });
}

template <typename T, int D, int SK>
__global__ void __launch_bounds__(WgmmaTiles<D, SK>::kThreads, 1) WgmmaKernel(Params p) {
  CtaTrace trace(kTraceAttention, 128);  // an MMA thread: the loading warpgroup leaves first
  const int item = cta_item(p).x;
  if (p.early && item < p.tail_ctas + p.fit_ctas) launch_dependents();  // waits in before_store
  else after_predecessor();
  trace.ready();
  trace.item = trace_item(p);
  if (item < p.tail_ctas) wgmma_cta<T, D, SK>(p, false);
  else wgmma_cta<T, D, SK>(p, true);
}

}  // namespace
}  // namespace cuda
}  // namespace dhsa
